"""Fake (meta) kernels of the `torch.ops.vikhr` ops: their outputs' shapes and dtypes, which is all
torch.compile needs to trace them. The schemas are in csrc/bindings.cpp, the row layouts in
csrc/cekl_math.h; `vikhr.ops.build.load_ops` registers these right after loading the library.
"""

from __future__ import annotations

import functools

import torch

# Columns of the CE+KL per-row tensors (csrc/cekl_math.h: kMaxCols, kSumCols, kStatCols, kRowCols).
MAX_COLS, SUM_COLS, ROW_COLS = 3, 5, 5
STAT_COLS = MAX_COLS + SUM_COLS


def _float_rows(like: torch.Tensor, cols: int) -> torch.Tensor:
    return like.new_empty((like.shape[0], cols), dtype=torch.float32)


def _logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0],), dtype=torch.float32)


def _cekl_forward(
    logits,
    ref_logits,
    target,
    row_scale,
    inv_temperature,
    kl_coef,
    kl_mode,
    valid_cols,
    grad_out,
    schedule=0,
    blocks_per_sm=0,
    packs_per_step=1,
) -> torch.Tensor:
    return _float_rows(logits, ROW_COLS)


def _cekl_stats(logits, ref_logits, target, row_scale, inv_temperature, kl_mode, valid_cols) -> torch.Tensor:
    return _float_rows(logits, STAT_COLS)


def _cekl_rescale(stats, maxima) -> torch.Tensor:
    return _float_rows(stats, SUM_COLS)


def _cekl_finish(maxima, sums, row_scale, kl_mode) -> torch.Tensor:
    return _float_rows(sums, ROW_COLS)


def _cekl_backward(
    logits, ref_logits, target, row_scale, rows, inv_temperature, kl_coef, kl_mode, valid_cols, grad_out
) -> None:
    return None


def _cekl_scale_grad(grad, factor) -> None:
    return None


def _cekl_prepare(labels, ignore_index, start, local_cols, vocab, grad_scale):
    n = labels.shape[0]
    scales = [labels.new_empty((n,), dtype=torch.float32) for _ in range(2)]
    return labels.new_empty((n,), dtype=torch.int64), *scales, labels.new_empty((2,), dtype=torch.int64)


def _cekl_total(rows, counts, kl_factor):
    return tuple(rows.new_empty((), dtype=torch.float32) for _ in range(3))


@functools.cache
def register_fake_kernels() -> None:
    """Registers the fake kernels (once; the ops must already be defined by the loaded library)."""
    for name, fake in (
        ("logsumexp_rows", _logsumexp_rows),
        ("cekl_forward", _cekl_forward),
        ("cekl_stats", _cekl_stats),
        ("cekl_rescale", _cekl_rescale),
        ("cekl_finish", _cekl_finish),
        ("cekl_backward", _cekl_backward),
        ("cekl_scale_grad", _cekl_scale_grad),
        ("cekl_prepare", _cekl_prepare),
        ("cekl_total", _cekl_total),
    ):
        torch.library.register_fake(f"vikhr::{name}", fake)
