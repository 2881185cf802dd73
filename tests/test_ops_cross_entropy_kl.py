"""The fused CE + KL op (csrc/ kernel) against the float64 reference, on CPU and (marked gpu) CUDA;
torch.compile tracing it through its fake kernels.

Run as a script under torchrun (see test_vocab_parallel_matches_single_rank), this module is
also the 2-rank vocab-parallel worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import run_torchrun
from vikhr.errors import VikhrError
from vikhr.ops import build, cross_entropy_kl
from vikhr.ops.build import load_ops
from vikhr.ops.cross_entropy_kl import CUDA_SCHEDULES, PACKS_ENV, SCHEDULE_ENV, cuda_schedule
from vikhr.ops.reference import cross_entropy_kl_reference

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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inplace", [False, True])
def test_grad_scale_is_folded_into_the_gradient(device, inplace):
    """Announcing the loss scale gives the same gradient as scaling the loss, and the same values."""
    z, r, labels = _inputs(n=7, v=130, seed=13)
    full = _run_op(z, r, labels, torch.float32, device, kl_weight=0.3)[3]
    for grad_scale, backward_scale in ((0.375, 0.375), (3.0, 3.0), (0.375, 1.0), (2.0, 0.5)):
        logits = z.to(device, copy=True).requires_grad_()
        leaf = logits
        if inplace:
            logits = logits.clone()
        out = cross_entropy_kl(
            logits,
            r.to(device),
            labels.to(device),
            kl_weight=0.3,
            grad_scale=grad_scale,
            inplace_backward=inplace,
        )
        plain = cross_entropy_kl(z.to(device), r.to(device), labels.to(device), kl_weight=0.3)
        for name in ("loss", "ce", "kl"):
            assert float(getattr(out, name).detach()) == float(getattr(plain, name).detach())
        (out.loss * backward_scale).backward()
        torch.testing.assert_close(leaf.grad.double().cpu(), backward_scale * full, rtol=1e-6, atol=1e-9)


def test_grad_scale_must_be_positive():
    z, r, labels = _inputs(n=3, v=20, seed=14)
    z.requires_grad_(True)
    # 1e-46 / 3 rows underflows the kernel's float32 row scale: every row looked ignored, loss 0.
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e-46, 1e40):
        with pytest.raises(ValueError, match="grad_scale"):
            cross_entropy_kl(z, r, labels, grad_scale=bad)


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


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_reference_matches_torch_functional(direction):
    # The reference everything else is checked against, checked against torch's own losses.
    z, r, labels = _inputs(n=7, v=211, seed=13)
    z, r = z.double(), r.double()
    out = cross_entropy_kl_reference(z, r, labels, kl_weight=0.3, kl_direction=direction, temperature=2.0)
    import torch.nn.functional as F

    logq, logr = F.log_softmax(z / 2.0, dim=1), F.log_softmax(r / 2.0, dim=1)
    inp, tgt = (logr, logq) if direction == "reverse" else (logq, logr)
    kl_rows = F.kl_div(inp, tgt, reduction="none", log_target=True).sum(1)
    valid = labels != -100
    torch.testing.assert_close(out.kl, kl_rows[valid].mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.ce, F.cross_entropy(z, labels), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,temperature", [(0, 1.0), (1, 1.0), (1, 2.0), (2, 0.5)])
def test_vocab_parallel_building_blocks_match_fused_kernel(device, mode, temperature):
    """Three in-process 'ranks' through stats → MAX → rescale → SUM → finish → backward."""
    load_ops()
    ops = torch.ops.vikhr
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
    fused = ops.cekl_forward(z, ref, target(0, 900), row_scale, inv_t, coef, mode, vocab, fused_grad)

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
    stats = [ops.cekl_stats(zs, rs, t, row_scale, inv_t, mode, vc) for zs, rs, t, vc in shards]
    maxima = torch.stack([s[:, :3] for s in stats]).amax(0).contiguous()
    sums = sum(ops.cekl_rescale(s, maxima) for s in stats)
    rows = ops.cekl_finish(maxima, sums.contiguous(), row_scale, mode)
    torch.testing.assert_close(rows, fused, rtol=2e-6, atol=2e-6)
    grads = []
    for zs, rs, t, vc in shards:
        g = torch.empty_like(zs)
        ops.cekl_backward(zs, rs, t, row_scale, rows, inv_t, coef, mode, vc, g)
        grads.append(g)
    # Each path merges its own log-sum-exps (on the GPU with fast-math exp and another split of the
    # row over threads): one ulp of those is ~1e-7 of the gradient here.
    torch.testing.assert_close(
        torch.cat(grads, 1), fused_grad, rtol=0, atol=2e-6 * float(fused_grad.abs().max())
    )


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
        # NaN/inf options: a NaN loss beside a CE-only gradient, or a non-finite gradient.
        (lambda z, r, y: (z, r, y, {"temperature": float("inf")}), ValueError, "temperature"),
        (lambda z, r, y: (z, r, y, {"kl_weight": float("nan")}), ValueError, "kl_weight"),
        (lambda z, r, y: (z, r, y, {"kl_weight": float("inf")}), ValueError, "kl_weight"),
        (lambda z, r, y: (z[:, :0], r, y, {}), ValueError, r"a vocabulary \(V >= 1\)"),
        (lambda z, r, y: (z, r, y, {"ignore_index": 2**63}), ValueError, "ignore_index must be an int64"),
        (lambda z, r, y: (z, r, y, {"ignore_index": -100.0}), ValueError, "ignore_index must be an int64"),
        # True == 1 in Python: the token of id 1 would be ignored, silently.
        (lambda z, r, y: (z, r, y, {"ignore_index": True}), ValueError, "ignore_index must be an int64"),
    ],
)
def test_bad_input_raises_a_clear_error(make, error, match):
    z, r, labels = _inputs(n=4, v=20, seed=15, ignore=0)
    labels = labels.clamp(min=5)
    logits, ref, y, kw = make(z, r, labels)
    with pytest.raises(error, match=match):
        cross_entropy_kl(logits, ref, y, **kw)


def test_kernel_rejects_bad_arguments_when_called_directly():
    load_ops()
    forward = torch.ops.vikhr.cekl_forward
    z = torch.randn(3, 10)
    target = torch.zeros(3, dtype=torch.int64)
    scale = torch.ones(3)
    grad = torch.empty_like(z)
    with pytest.raises(RuntimeError, match="valid_cols"):
        forward(z, None, target, scale, 1.0, 0.0, 0, 11, grad)
    with pytest.raises(RuntimeError, match="needs ref_logits"):
        forward(z, None, target, scale, 1.0, 0.1, 1, 10, grad)
    with pytest.raises(RuntimeError, match="target must be"):
        forward(z, None, target.int(), scale, 1.0, 0.0, 0, 10, grad)
    with pytest.raises(RuntimeError, match="contiguous"):
        forward(z.t(), None, target, scale, 1.0, 0.0, 0, 10, grad.t())
    with pytest.raises(RuntimeError, match=r"maxima must be \[N, 3\]"):
        torch.ops.vikhr.cekl_rescale(torch.zeros(3, 8), torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match="unknown schedule 3"):
        forward(z, None, target, scale, 1.0, 0.0, 0, 10, grad, 3)
    with pytest.raises(RuntimeError, match="blocks_per_sm must be >= 0"):
        forward(z, None, target, scale, 1.0, 0.0, 0, 10, grad, 1, -1)
    with pytest.raises(RuntimeError, match="packs_per_step must be 1 or 2"):
        forward(z, None, target, scale, 1.0, 0.0, 0, 10, grad, 0, 0, 4)


def test_unknown_schedule_in_the_environment_is_one_clear_line(monkeypatch):
    z, r, labels = _inputs(n=4, v=20, seed=16)
    monkeypatch.setenv(SCHEDULE_ENV, "tiles")
    with pytest.raises(ValueError, match="VIKHR_CEKL_SCHEDULE='tiles'") as err:
        cross_entropy_kl(z, r, labels, kl_weight=0.1)
    assert "\n" not in str(err.value) and "row, persistent, smem" in str(err.value)
    for bad in (
        "persistent:0",
        "persistent:x",
        "row:2",
        "smem:1",
        "row:",
        "persistent:",
        "persistent:²",
        "persistent:99999",
    ):
        monkeypatch.setenv(SCHEDULE_ENV, bad)
        with pytest.raises(ValueError, match="persistent:K"):
            cuda_schedule()
    # Empty counts as unset: the default schedule.
    for value, parsed in [
        ("", (0, 0, 1)),
        ("row", (0, 0, 1)),
        ("persistent", (1, 0, 1)),
        ("persistent:3", (1, 3, 1)),
    ]:
        monkeypatch.setenv(SCHEDULE_ENV, value)
        assert cuda_schedule() == parsed, value
    monkeypatch.setenv(SCHEDULE_ENV, "smem")
    monkeypatch.setenv(PACKS_ENV, "2")
    assert cuda_schedule() == (2, 0, 2)
    monkeypatch.setenv(PACKS_ENV, "3")
    with pytest.raises(ValueError, match="VIKHR_CEKL_PACKS='3': set it to 1 or 2"):
        cuda_schedule()


def test_missing_device_kernels_give_one_line_telling_how_to_fix(monkeypatch):
    # A CUDA device without nvcc: the library was built for the CPU only.
    monkeypatch.setattr(build, "compiled_ops", lambda: {"cross_entropy_kl": ["cpu"]})
    with pytest.raises(VikhrError, match="install the CUDA toolkit and set CUDA_HOME") as err:
        build.require_kernels("cross_entropy_kl", torch.device("cuda"))
    assert "\n" not in str(err.value) and "pip install 'cuda-toolkit[nvcc,cccl]" in str(err.value)


@pytest.mark.parametrize(
    "kw",
    [{}, {"kl_weight": 0.3, "temperature": 1.5, "kl_direction": "forward"}, {"inplace_backward": True}],
    ids=["ce", "forward-T1.5", "inplace"],
)
def test_torch_compile_fullgraph_matches_eager(kw):
    z, r, labels = _inputs(n=6, v=97, seed=17)

    def loss(logits, ref, labels):
        out = cross_entropy_kl(logits, ref, labels, valid_vocab_size=90, **kw)
        return 2.0 * out.loss, out.ce, out.kl

    def run(fn):
        logits = z.clone().requires_grad_()
        total, ce, kl = fn(logits * 1.0, r, labels)  # a non-leaf, as the output layer's logits are
        total.backward()
        return total.detach(), ce, kl, logits.grad

    torch._dynamo.reset()
    compiled_loss = torch.compile(loss, fullgraph=True)
    for got, want in zip(run(compiled_loss), run(loss), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    with torch.no_grad():  # evaluation: no gradient buffer, the statistics path
        for got, want in zip(compiled_loss(z, r, labels), loss(z, r, labels), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        with pytest.raises(RuntimeError, match=r"labels must be in \[0, 90\)"):
            compiled_loss(z, r, torch.full_like(labels, 95))  # checked inside the graph


def test_fake_kernels_agree_with_the_kernels():
    # torch.library.opcheck: schema (incl. the mutated grad_out), fake kernels, dispatch.
    load_ops()
    z, r, labels = _inputs(n=5, v=64, seed=18, ignore=1)
    valid = labels != -100
    target = torch.where(valid, labels, torch.full_like(labels, -1))
    scale = (valid.float() / valid.sum()).contiguous()
    ops = torch.ops.vikhr
    stats = ops.cekl_stats(z, r, target, scale, 1.0, 1, 64)
    maxima = stats[:, :3].contiguous()
    sums = ops.cekl_rescale(stats, maxima)
    rows = ops.cekl_finish(maxima, sums, scale, 1)
    calls = [
        (ops.cekl_forward, (z, r, target, scale, 0.5, 0.3, 1, 64, torch.empty_like(z))),
        (ops.cekl_forward, (z, None, target, scale, 1.0, 0.0, 0, 60, torch.empty_like(z))),
        (ops.cekl_stats, (z, r, target, scale, 1.0, 2, 64)),
        (ops.cekl_rescale, (stats, maxima)),
        (ops.cekl_finish, (maxima, sums, scale, 1)),
        (ops.cekl_backward, (z, r, target, scale, rows, 1.0, 0.3, 1, 64, torch.empty_like(z))),
        (ops.logsumexp_rows, (z,)),
        (ops.cekl_prepare, (labels, -100, 0, 64, 64, 0.5)),
        (ops.cekl_prepare, (labels.int(), -100, 32, 32, 64, 1.0)),
        (ops.cekl_total, (rows, torch.tensor([4, -1]), 0.3)),
    ]
    for op, args in calls:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
def test_prepare_turns_labels_into_targets_and_row_scales(device, label_dtype):
    """Hand-checked: this rank holds columns [4, 8) of a 10-id vocabulary; labels 10 and -3 are
    bad (counted, no target, the first one's index reported); -100 is ignored."""
    load_ops()
    labels = torch.tensor([5, -100, 2, 7, 10, 4, -3, 9], dtype=label_dtype, device=device)
    target, row_scale, grad_row_scale, counts = torch.ops.vikhr.cekl_prepare(labels, -100, 4, 4, 10, 3.0)
    assert target.tolist() == [1, -1, -1, 3, -1, 0, -1, -1]
    assert counts.tolist() == [7, 4]
    counted = torch.tensor([1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.float64)
    assert torch.equal(row_scale.cpu(), (counted / 7).float())
    assert torch.equal(grad_row_scale.cpu(), (counted * (3.0 / 7)).float())
    good = labels.clone()
    good[4], good[6] = 8, -100
    assert torch.ops.vikhr.cekl_prepare(good, -100, 4, 4, 10, 1.0)[3].tolist() == [6, -1]
    none = torch.full((3,), -100, dtype=label_dtype, device=device)
    _, row_scale, _, counts = torch.ops.vikhr.cekl_prepare(none, -100, 0, 10, 10, 1.0)
    assert counts.tolist() == [0, -1] and row_scale.abs().sum() == 0
    empty = torch.ops.vikhr.cekl_prepare(none[:0], -100, 0, 10, 10, 1.0)
    assert empty[0].shape == (0,) and empty[3].tolist() == [0, -1]


@pytest.mark.parametrize("device", DEVICES)
def test_total_is_the_mean_over_counted_rows(device):
    load_ops()
    g = torch.Generator().manual_seed(19)
    rows = torch.rand(300, 5, generator=g).to(device)
    loss, ce, kl = torch.ops.vikhr.cekl_total(rows, torch.tensor([240, -1], device=device), 0.75)
    sums = rows[:, :2].double().sum(0).cpu() / 240
    assert abs(float(ce) - float(sums[0])) <= 1e-7 * float(sums[0])
    assert abs(float(kl) - float(sums[1])) <= 1e-7 * float(sums[1])
    assert float(loss) == float(torch.tensor(float(ce)) + torch.tensor(0.75) * torch.tensor(float(kl)))
    assert ce.shape == () and ce.dtype == torch.float32
    zero = torch.ops.vikhr.cekl_total(rows[:0], torch.tensor([0, -1], device=device), 0.75)
    assert [float(t) for t in zero] == [0.0, 0.0, 0.0]


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


# Real sizes on the GPU: rows of 40000 bf16 (80000 bytes, so the 16-byte vectorised path), the
# trainer's padded vocabulary, vocab parallel over NCCL, and a batch of more than 2^31 elements.
REAL_N, REAL_V, REAL_V_PADDED = 512, 40000, 40064


def _real_inputs(n: int, v: int, valid: int, seed: int):
    """bf16 logits and reference on the GPU; garbage in the padding columns; labels in [0, valid)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    z = torch.randn(n, v, generator=g, device="cuda") * 3
    # In place: two float32 N×V buffers at most (the >2^31 case is 8 GiB each).
    r = torch.randn(n, v, generator=g, device="cuda").mul_(1.5).add_(z).bfloat16()
    z = z.bfloat16()
    z[:, valid:], r[:, valid:] = 1e3, -1e3
    labels = torch.randint(0, valid, (n,), generator=g, device="cuda")
    labels[::7] = -100
    return z, r, labels


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", CUDA_SCHEDULES)
@pytest.mark.parametrize("v", [REAL_V, REAL_V_PADDED], ids=["V40000", "V40064-padded"])
@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("inplace", [False, True], ids=["buffer", "inplace"])
def test_real_sizes_in_bf16_on_gpu_match_float64(v, direction, inplace, schedule, monkeypatch):
    # At N=512 the persistent grid (rows in half of the L2) has fewer blocks than rows, so its
    # blocks loop; the smem schedule keeps both 80 KB rows in shared memory.
    monkeypatch.setenv(SCHEDULE_ENV, schedule)
    z, r, labels = _real_inputs(REAL_N, v, REAL_V, seed=21)
    kw = {"kl_weight": 0.3, "kl_direction": direction, "valid_vocab_size": REAL_V}
    leaf = z.clone().requires_grad_()
    logits = leaf.clone() if inplace else leaf  # the in-place op may not overwrite a leaf
    out = cross_entropy_kl(logits, r, labels, inplace_backward=inplace, grad_scale=0.5, **kw)
    (out.loss * 0.5).backward()
    got = [t.detach().double().cpu() for t in (out.loss, out.ce, out.kl, leaf.grad / 0.5)]
    ref_logits = z.double().requires_grad_()
    want = cross_entropy_kl_reference(ref_logits, r.double(), labels, **kw)
    want.loss.backward()
    want = [t.detach().cpu() for t in (want.loss, want.ce, want.kl, ref_logits.grad)]
    assert torch.equal(got[3][:, REAL_V:], torch.zeros_like(got[3][:, REAL_V:]))
    _assert_matches(got, want, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("kl_weight", [0.0, 0.4], ids=["ce-only", "kl"])
def test_cuda_schedules_give_bitwise_identical_results(kl_weight, monkeypatch):
    """Each thread does the same arithmetic in the same order under every schedule: only where
    the second read of a row comes from (and which block runs it) and how many packs a thread
    loads per step differ. persistent:64 asks for more blocks per SM than fit (clamped)."""
    z, r, labels = _real_inputs(2048, REAL_V_PADDED, REAL_V, seed=24)
    kw = {"kl_weight": kl_weight, "valid_vocab_size": REAL_V}
    kinds = [*CUDA_SCHEDULES, "persistent:1", "persistent:2", "persistent:64"]
    schedules = [f"{kind}/{packs}" for packs in ("1", "2") for kind in kinds]
    results = {}
    for schedule in schedules:
        kind, packs = schedule.split("/")
        monkeypatch.setenv(SCHEDULE_ENV, kind)
        monkeypatch.setenv(PACKS_ENV, packs)
        results[schedule] = _run_op(z, r, labels, torch.bfloat16, "cuda", **kw)
    results["row"] = results["row/1"]
    for schedule in schedules[1:]:
        for name, got, want in zip(
            ("loss", "ce", "kl", "grad"), results[schedule], results["row"], strict=True
        ):
            assert torch.equal(got, want), f"{schedule}: {name} differs from the row schedule"


@pytest.mark.gpu
def test_real_size_on_gpu_matches_the_cpu_kernel():
    z, r, labels = _real_inputs(REAL_N, REAL_V_PADDED, REAL_V, seed=22)
    kw = {"kl_weight": 0.5, "temperature": 2.0, "valid_vocab_size": REAL_V}
    got = _run_op(z, r, labels, torch.bfloat16, "cuda", **kw)
    want = _run_op(z.cpu(), r.cpu(), labels.cpu(), torch.bfloat16, "cpu", **kw)
    for g, w in zip(got[:3], want[:3], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    # Both round the same fp32 gradient to bf16: at most one bf16 step apart.
    torch.testing.assert_close(got[3], want[3], rtol=1e-2, atol=1e-7)


def _chunked_reference_loss(z, r, labels, chunk: int = 1024, **kw) -> float:
    """The float32 reference loss of a batch too large for one N×V float temporary."""
    valid = labels != -100
    total = 0.0
    for start in range(0, z.shape[0], chunk):
        rows = slice(start, start + chunk)
        n_rows = int(valid[rows].sum())
        if n_rows:
            out = cross_entropy_kl_reference(
                z[rows], r[rows], labels[rows], compute_dtype=torch.float32, **kw
            )
            total += float(out.loss) * n_rows
    return total / int(valid.sum())


def _spot_gradient(z_spots, r_spots, label_spots, n_valid: int, **kw) -> torch.Tensor:
    """d(mean loss over n_valid rows)/dz of a few rows, in float64 (each row's gradient is its own)."""
    logits = z_spots.double().requires_grad_()
    out = cross_entropy_kl_reference(logits, r_spots.double(), label_spots, **kw)
    (out.loss * len(label_spots) / n_valid).backward()
    return logits.grad


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["row", "persistent"])
def test_more_than_2_31_elements_on_gpu(schedule, monkeypatch):
    """N×V > 2^31 (64-bit offsets everywhere): the loss against a chunked float32 reference, and
    the gradient of rows on both sides of the 2^31st element against float64. (Rows of 131072
    bf16 do not fit in shared memory: smem runs as row.)"""
    monkeypatch.setenv(SCHEDULE_ENV, schedule)
    n, v = 16500, 131072
    assert n * v > 2**31
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    if free < 32 * 2**30:  # two float32 N×V buffers while the inputs are made, the reference's chunks
        pytest.skip(f"needs 32 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    z, r, labels = _real_inputs(n, v, v, seed=23)
    kw = {"kl_weight": 0.3}
    want_loss = _chunked_reference_loss(z, r, labels, **kw)
    spots = torch.tensor([1, 8191, 16383, 16384, 16385, n - 2, n - 1], device="cuda")
    spots = spots[labels[spots] != -100]
    want_grad = _spot_gradient(z[spots], r[spots], labels[spots], int((labels != -100).sum()), **kw)
    leaf = z.requires_grad_()
    work = leaf.clone()  # the op writes the gradient over this copy (a leaf may not be overwritten)
    out = cross_entropy_kl(work, r, labels, inplace_backward=True, **kw)
    (grad,) = torch.autograd.grad(out.loss, leaf)
    assert abs(float(out.loss) - want_loss) <= 1e-4 * max(1.0, abs(want_loss)), (float(out.loss), want_loss)
    err = float((grad[spots].double() - want_grad).abs().max())
    assert err <= GRAD_RTOL[torch.bfloat16] * float(want_grad.abs().max()) + 1e-12, err


@pytest.mark.gpu
@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_vocab_parallel_over_nccl_matches_single_rank():
    run_torchrun(Path(__file__), "--vocab-parallel-nccl-worker", nproc=2, timeout=300)


def _vocab_parallel_nccl_worker() -> None:
    """Two GPUs, each with half of the padded 40064-column vocabulary, in bf16 at N=512."""
    import os

    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl")
    world = dist.get_world_size()
    group = dist.new_group(list(range(world)))
    width = REAL_V_PADDED // world
    cols = slice(rank * width, (rank + 1) * width)
    for i, direction in enumerate(("reverse", "forward")):
        z, r, labels = _real_inputs(REAL_N, REAL_V_PADDED, REAL_V, seed=30 + i)
        kw = {"kl_weight": 0.3, "kl_direction": direction, "valid_vocab_size": REAL_V}
        local = z[:, cols].clone().requires_grad_()
        out = cross_entropy_kl(local, r[:, cols].contiguous(), labels, process_group=group, **kw)
        out.loss.backward()
        single = z.clone().requires_grad_()
        want = cross_entropy_kl(single, r, labels, **kw)
        want.loss.backward()
        for name in ("loss", "ce", "kl"):
            got_v, want_v = float(getattr(out, name)), float(getattr(want, name))
            assert abs(got_v - want_v) <= 1e-5 * max(1.0, abs(want_v)), (i, rank, name, got_v, want_v)
        torch.testing.assert_close(local.grad, single.grad[:, cols], rtol=1e-2, atol=1e-7)
    dist.destroy_process_group()


if __name__ == "__main__" and "--vocab-parallel-worker" in sys.argv:
    _vocab_parallel_worker()
if __name__ == "__main__" and "--vocab-parallel-nccl-worker" in sys.argv:
    _vocab_parallel_nccl_worker()
