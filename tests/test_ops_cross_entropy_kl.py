"""The fused CE + KL op (csrc/ kernel) against the float64 reference, on CPU and (marked gpu) CUDA.

Run as a script under torchrun (see test_vocab_parallel_matches_single_rank), this module is
also the 2-rank vocab-parallel worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import run_torchrun
from vikhr.ops import cross_entropy_kl, cross_entropy_kl_reference
from vikhr.ops.build import load_ops
from vikhr.ops.cross_entropy_kl import _cross_entropy_kl_torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# Tolerances of the op against float64 on the same (rounded) inputs. The op accumulates in fp32;
# bf16/fp16 gradients are additionally rounded to 8/11 mantissa bits when stored.
LOSS_RTOL = {torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _inputs(n: int, v: int, seed: int, scale: float = 3.0, ignore: int = 2):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=g) * scale
    # A reference close to the model (as after vocabulary adaptation) plus some disagreement.
    r = z + torch.randn(n, v, generator=g) * scale * 0.5
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.randperm(n, generator=g)[:ignore]] = -100
    return z, r, labels


def _run_op(z, r, labels, dtype, device, **kw):
    """Loss, ce, kl and d(loss)/d(logits) from the op, all as float64 on the CPU."""
    logits = z.to(device=device, dtype=dtype, copy=True).requires_grad_()
    ref = r.to(device=device, dtype=dtype) if r is not None else None
    out = cross_entropy_kl(logits, ref, labels.to(device), **kw)
    out.loss.backward()
    return [t.detach().double().cpu() for t in (out.loss, out.ce, out.kl, logits.grad)]


def _run_reference(z, r, labels, dtype, **kw):
    """The float64 reference on the same values the op saw (rounded to `dtype`)."""
    logits = z.to(dtype).double().detach().requires_grad_()
    ref = r.to(dtype).double() if r is not None else None
    out = cross_entropy_kl_reference(logits, ref, labels, **kw)
    out.loss.backward()
    return [t.detach() for t in (out.loss, out.ce, out.kl, logits.grad)]


def _assert_matches(got, want, dtype, grad_scale=None):
    names = ("loss", "ce", "kl")
    for name, g, w in zip(names, got[:3], want[:3], strict=True):
        torch.testing.assert_close(g, w, rtol=LOSS_RTOL[dtype], atol=1e-6, msg=f"{name}: {g} vs {w}")
    grad, grad_ref = got[3], want[3]
    scale = grad_scale if grad_scale is not None else float(grad_ref.abs().max())
    # Every column's error is bounded relative to the largest gradient entry of the batch.
    err = float((grad - grad_ref).abs().max())
    assert err <= GRAD_RTOL[dtype] * scale + 1e-9, f"gradient error {err} vs scale {scale}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"kl_weight": 0.3},
        {"kl_weight": 0.3, "kl_direction": "forward"},
        {"kl_weight": 0.5, "temperature": 2.0},
        {"kl_weight": 0.5, "temperature": 0.7, "kl_direction": "forward"},
    ],
    ids=["ce", "reverse", "forward", "reverse-T2", "forward-T0.7"],
)
def test_matches_float64_reference(device, dtype, kw):
    # V = 1001: not a multiple of the CPU chunk (512) nor of any vector width (4, 8).
    z, r, labels = _inputs(n=13, v=1001, seed=1)
    got = _run_op(z, r, labels, dtype, device, **kw)
    want = _run_reference(z, r, labels, dtype, **kw)
    _assert_matches(got, want, dtype)
    if "kl_weight" in kw:
        assert float(want[2]) > 0.01  # the KL term is really exercised


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gradient_is_the_rounded_fp32_gradient(dtype):
    # Same values in fp32 give the same fp32 math; the stored gradient must be its exact
    # round-to-nearest-even (the CPU kernel converts bf16 by bit manipulation).
    z, r, labels = _inputs(n=6, v=777, seed=16)
    z, r = z.to(dtype), r.to(dtype)
    kw = {"kl_weight": 0.3, "temperature": 1.3}
    half = _run_op(z, r, labels, dtype, "cpu", **kw)[3]
    full = _run_op(z.float(), r.float(), labels, torch.float32, "cpu", **kw)[3]
    assert torch.equal(half, full.to(dtype).double())


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_inputs(device):
    z, r, labels = _inputs(n=5, v=300, seed=2)
    got = _run_op(z, r, labels, torch.float16, device, kl_weight=0.4)
    _assert_matches(got, _run_reference(z, r, labels, torch.float16, kl_weight=0.4), torch.float16)


@pytest.mark.parametrize("device", DEVICES)
def test_all_labels_ignored_gives_zero_loss_and_gradient(device):
    z, r, labels = _inputs(n=6, v=50, seed=3, ignore=6)
    loss, ce, kl, grad = _run_op(z, r, labels, torch.float32, device, kl_weight=0.5)
    assert float(loss) == 0.0 and float(ce) == 0.0 and float(kl) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_extreme_logits(device, direction):
    g = torch.Generator().manual_seed(4)
    n, v = 8, 700
    z = torch.randn(n, v, generator=g) * 1e4
    z[:, ::7] = 1e4  # many ties at the top
    z[:, 1::5] = -1e4
    r = torch.randn(n, v, generator=g) * 1e4
    r[:, ::7] = 1e4 - 1.0  # the reference agrees on the tied top logits (finite KL)
    labels = torch.arange(n) * 7
    kw = {"kl_weight": 0.2, "kl_direction": direction}
    got = _run_op(z, r, labels, torch.float32, device, **kw)
    want = _run_reference(z, r, labels, torch.float32, **kw)
    assert all(torch.isfinite(t).all() for t in got)
    _assert_matches(got, want, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad_value", [float("-inf"), 50.0])
def test_padded_columns_get_zero_probability(device, pad_value):
    z, r, labels = _inputs(n=9, v=1024, seed=5)
    labels = labels.clamp(max=999)
    labels[0] = 999  # the last real column
    z[:, 1000:] = pad_value  # whatever sits in the padding must not matter
    r[:, 1000:] = pad_value
    kw = {"kl_weight": 0.3, "valid_vocab_size": 1000}
    got = _run_op(z, r, labels, torch.float32, device, **kw)
    want = _run_reference(z, r, labels, torch.float32, **kw)
    assert torch.equal(got[3][:, 1000:], torch.zeros(9, 24, dtype=torch.float64))
    _assert_matches(got, want, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_minus_inf_logits_inside_the_vocabulary(device):
    # Masked columns (−inf in both model and reference) behave like absent ones.
    z, r, labels = _inputs(n=4, v=64, seed=6)
    labels = labels.clamp(min=10)
    z[:, :10] = float("-inf")
    r[:, :10] = float("-inf")
    for direction in ("reverse", "forward"):
        kw = {"kl_weight": 0.5, "kl_direction": direction}
        got = _run_op(z, r, labels, torch.float32, device, **kw)
        want = _run_reference(z[:, 10:], r[:, 10:], labels - 10, torch.float32, **kw)
        assert torch.equal(got[3][:, :10], torch.zeros(4, 10, dtype=torch.float64))
        got[3] = got[3][:, 10:]
        _assert_matches(got, want, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_kl_weight_equals_cross_entropy(device):
    z, r, labels = _inputs(n=10, v=333, seed=7)
    loss, ce, kl, grad = _run_op(z, r, labels, torch.float32, device, kl_weight=0.0)
    x = z.double().requires_grad_()
    expected = torch.nn.functional.cross_entropy(x, labels, ignore_index=-100)
    expected.backward()
    assert float(kl) == 0.0
    torch.testing.assert_close(loss, expected.detach(), rtol=2e-6, atol=0)
    torch.testing.assert_close(ce, expected.detach(), rtol=2e-6, atol=0)
    torch.testing.assert_close(grad, x.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_identical_model_and_reference_give_zero_kl(device, direction, temperature):
    z, _, labels = _inputs(n=7, v=517, seed=8)
    kw = {"kl_weight": 0.8, "kl_direction": direction, "temperature": temperature}
    loss, _, kl, grad = _run_op(z, z, labels, torch.float32, device, **kw)
    assert abs(float(kl)) < 1e-6
    ce_only = _run_op(z, None, labels, torch.float32, device)
    torch.testing.assert_close(loss, ce_only[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ce_only[3], rtol=0, atol=1e-6)  # the KL gradient vanishes too


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_writes_the_same_gradient_over_the_logits(device, dtype):
    z, r, labels = _inputs(n=6, v=200, seed=9)
    kw = {"kl_weight": 0.4, "temperature": 1.5}
    base = z.to(device=device, dtype=dtype, copy=True).requires_grad_()
    logits = base * 1  # a non-leaf, as the output layer's logits are
    out = cross_entropy_kl(
        logits, r.to(device=device, dtype=dtype), labels.to(device), inplace_backward=True, **kw
    )
    buffer = logits.detach()
    (3.0 * out.loss).backward()
    # The separate-buffer path gives bitwise the same gradient (same kernel, same rounding).
    expected = _run_op(z, r, labels, dtype, device, **kw)[3]
    assert torch.equal(buffer.double().cpu(), 3.0 * expected) or torch.allclose(
        buffer.double().cpu(), 3.0 * expected, rtol=GRAD_RTOL[dtype], atol=1e-7
    )
    torch.testing.assert_close(base.grad.double().cpu(), buffer.double().cpu(), rtol=0, atol=0)


def test_inplace_backward_is_refused_when_autograd_saved_the_logits():
    z, r, labels = _inputs(n=3, v=40, seed=10)
    base = z.clone().requires_grad_()
    logits = base * 1
    other = logits.sin()  # saves logits for its backward
    out = cross_entropy_kl(logits, r, labels, kl_weight=0.1, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (out.loss + other.sum()).backward()


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_is_scaled_by_the_incoming_gradient(device):
    z, r, labels = _inputs(n=5, v=90, seed=11)
    logits = z.to(device, copy=True).requires_grad_()
    out = cross_entropy_kl(logits, r.to(device), labels.to(device), kl_weight=0.2)
    (0.25 * out.loss).backward()
    full = _run_op(z, r, labels, torch.float32, device, kl_weight=0.2)[3]
    torch.testing.assert_close(logits.grad.double().cpu(), 0.25 * full, rtol=1e-6, atol=1e-9)


def test_forward_without_grad_and_deterministic_across_thread_counts():
    z, r, labels = _inputs(n=64, v=3000, seed=12)
    results = []
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            with torch.no_grad():
                out = cross_entropy_kl(z, r, labels, kl_weight=0.3, temperature=1.3)
            logits = z.clone().requires_grad_()
            cross_entropy_kl(logits, r, labels, kl_weight=0.3, temperature=1.3).loss.backward()
            results.append((out.loss, out.kl, logits.grad))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(results[0], results[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kw", [{}, {"kl_weight": 0.3, "temperature": 2.0}, {"kl_weight": 0.3, "kl_direction": "forward"}]
)
def test_pytorch_fallback_matches_reference(kw):
    z, r, labels = _inputs(n=7, v=211, seed=13)
    logits = z.clone().requires_grad_()
    out = _cross_entropy_kl_torch(
        logits,
        r if kw else None,
        labels,
        kw.get("kl_weight", 0.0),
        kw.get("kl_direction", "reverse"),
        kw.get("temperature", 1.0),
        -100,
        211,
        None,
    )
    out.loss.backward()
    got = [t.detach().double() for t in (out.loss, out.ce, out.kl, logits.grad)]
    _assert_matches(got, _run_reference(z, r, labels, torch.float32, **kw), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,temperature", [(0, 1.0), (1, 1.0), (1, 2.0), (2, 0.5)])
def test_vocab_parallel_building_blocks_match_fused_kernel(device, mode, temperature):
    """Three in-process 'ranks' through stats → MAX → rescale → SUM → finish → backward."""
    ops = load_ops()
    z, r, labels = _inputs(n=11, v=900, seed=14)
    z, r, labels = z.to(device), r.to(device), labels.to(device)
    vocab = 850  # the last shard is partly padding
    valid = labels != -100
    labels = torch.where(valid, labels.clamp(max=vocab - 1), labels)
    row_scale = (valid.double() / valid.sum()).float()
    inv_t, coef = 1.0 / temperature, 0.4 * temperature
    ref = r if mode else None

    def target(start, width):
        local = labels - start
        return torch.where(valid & (local >= 0) & (local < width), local, torch.full_like(local, -1))

    fused_grad = torch.empty_like(z)
    fused = getattr(ops, f"cekl_forward_{device}")(
        z, ref, target(0, 900), row_scale, inv_t, coef, mode, vocab, fused_grad
    )

    bounds = [(0, 300), (300, 300), (600, 300)]
    shards = [
        (
            z[:, s : s + w].contiguous(),
            r[:, s : s + w].contiguous() if mode else None,
            target(s, w),
            min(w, vocab - s),
        )
        for s, w in bounds
    ]
    stats = [
        getattr(ops, f"cekl_stats_{device}")(zs, rs, t, row_scale, inv_t, mode, vc)
        for zs, rs, t, vc in shards
    ]
    maxima = torch.stack([s[:, :3] for s in stats]).amax(0).contiguous()
    sums = sum(getattr(ops, f"cekl_rescale_{device}")(s, maxima) for s in stats)
    rows = getattr(ops, f"cekl_finish_{device}")(maxima, sums.contiguous(), row_scale, mode)
    torch.testing.assert_close(rows, fused, rtol=2e-6, atol=2e-6)
    grads = []
    for zs, rs, t, vc in shards:
        g = torch.empty_like(zs)
        getattr(ops, f"cekl_backward_{device}")(zs, rs, t, row_scale, rows, inv_t, coef, mode, vc, g)
        grads.append(g)
    torch.testing.assert_close(torch.cat(grads, 1), fused_grad, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda z, r, y: (z, r[:, :-1], y, {"kl_weight": 0.1}), ValueError, "ref_logits shape"),
        (lambda z, r, y: (z, r, y[:-1], {}), ValueError, "labels must be"),
        (lambda z, r, y: (z[0], r, y, {}), ValueError, "logits must be"),
        (lambda z, r, y: (z.long(), r, y, {}), TypeError, "floating point"),
        (lambda z, r, y: (z.double(), r.double(), y, {}), TypeError, "float32, bfloat16 or float16"),
        (lambda z, r, y: (z, r.bfloat16(), y, {"kl_weight": 0.1}), TypeError, "ref_logits dtype"),
        (lambda z, r, y: (z, r, y.float(), {}), TypeError, "labels must be int64"),
        (lambda z, r, y: (z, r, torch.full_like(y, 20), {}), ValueError, r"labels must be in \[0, 20\)"),
        (lambda z, r, y: (z, r, torch.full_like(y, -5), {}), ValueError, r"labels\[0\] = -5"),
        (lambda z, r, y: (z, r, y, {"valid_vocab_size": 3}), ValueError, r"labels must be in \[0, 3\)"),
        (lambda z, r, y: (z, r, y, {"valid_vocab_size": 21}), ValueError, "valid_vocab_size"),
        (lambda z, r, y: (z, None, y, {"kl_weight": 0.1}), ValueError, "needs ref_logits"),
        (lambda z, r, y: (z, r, y, {"kl_direction": "sideways"}), ValueError, "kl_direction"),
        (lambda z, r, y: (z, r, y, {"temperature": 0.0}), ValueError, "temperature"),
    ],
)
def test_bad_input_raises_a_clear_error(make, error, match):
    z, r, labels = _inputs(n=4, v=20, seed=15, ignore=0)
    labels = labels.clamp(min=5)
    logits, ref, y, kw = make(z, r, labels)
    with pytest.raises(error, match=match):
        cross_entropy_kl(logits, ref, y, **kw)


def test_kernel_rejects_bad_arguments_when_called_directly():
    ops = load_ops()
    z = torch.randn(3, 10)
    target = torch.zeros(3, dtype=torch.int64)
    scale = torch.ones(3)
    with pytest.raises(RuntimeError, match="valid_cols"):
        ops.cekl_forward_cpu(z, None, target, scale, 1.0, 0.0, 0, 11, None)
    with pytest.raises(RuntimeError, match="needs ref_logits"):
        ops.cekl_forward_cpu(z, None, target, scale, 1.0, 0.1, 1, 10, None)
    with pytest.raises(RuntimeError, match="target must be"):
        ops.cekl_forward_cpu(z, None, target.int(), scale, 1.0, 0.0, 0, 10, None)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.cekl_forward_cpu(z.t(), None, target, scale, 1.0, 0.0, 0, 10, None)


# ---------------------------------------------------------------- vocab parallel, 2 ranks (gloo)

PARALLEL_CASES = [
    ({"kl_weight": 0.0}, torch.float32),
    ({"kl_weight": 0.3}, torch.float32),
    ({"kl_weight": 0.3, "temperature": 2.0}, torch.float32),
    ({"kl_weight": 0.5, "kl_direction": "forward", "temperature": 0.8}, torch.float32),
    ({"kl_weight": 0.3}, torch.bfloat16),
]


@pytest.mark.distributed
def test_vocab_parallel_matches_single_rank():
    run_torchrun(Path(__file__), "--vocab-parallel-worker", nproc=2, timeout=300)


def _vocab_parallel_worker() -> None:
    """Each rank holds half the (padded) vocabulary; results must equal the single-rank op."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(world)))
    n, v_pad, vocab = 12, 2 * 256, 500  # rank 1's last 12 columns are padding
    for i, (kw, dtype) in enumerate(PARALLEL_CASES):
        z, r, labels = _inputs(n=n, v=v_pad, seed=100 + i)
        labels = torch.where(labels == -100, labels, labels.clamp(max=vocab - 1))
        labels[0], labels[1] = 3, vocab - 1  # one label in each shard for sure
        z, r = z.to(dtype), r.to(dtype)
        z[:, vocab:] = 1e3  # garbage in the padding must not matter
        width = v_pad // world
        cols = slice(rank * width, (rank + 1) * width)
        local = z[:, cols].clone().requires_grad_()
        out = cross_entropy_kl(
            local, r[:, cols].clone(), labels, valid_vocab_size=vocab, process_group=group, **kw
        )
        out.loss.backward()
        single = z.clone().requires_grad_()
        want = cross_entropy_kl(single, r, labels, valid_vocab_size=vocab, **kw)
        want.loss.backward()
        for name in ("loss", "ce", "kl"):
            got_v, want_v = float(getattr(out, name)), float(getattr(want, name))
            assert abs(got_v - want_v) <= 2e-6 * max(1.0, abs(want_v)), (i, rank, name, got_v, want_v)
        torch.testing.assert_close(
            local.grad, single.grad[:, cols], rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-7
        )
    dist.destroy_process_group()


if __name__ == "__main__" and "--vocab-parallel-worker" in sys.argv:
    _vocab_parallel_worker()
