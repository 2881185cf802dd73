"""logsumexp_rows (csrc/) against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from vikhr.ops import logsumexp_rows
from vikhr.ops.reference import logsumexp_rows_reference

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-5), (torch.float16, 1e-5)])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (17, 1000), (3, 32001)])
def test_matches_reference(device: str, dtype: torch.dtype, tol: float, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = (torch.randn(*shape) * 5).to(device=device, dtype=dtype)
    got = logsumexp_rows(x)
    want = logsumexp_rows_reference(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_and_infinite_values(device: str) -> None:
    x = torch.tensor(
        [
            [1e4, -1e4, 0.0],
            [float("-inf"), 2.0, float("-inf")],
            [float("-inf")] * 3,
            [-1e4, -1e4, -1e4],
            [float("inf"), float("inf"), 0.0],  # was NaN (inf - inf in the running sum)
        ],
        device=device,
    )
    got = logsumexp_rows(x).cpu()
    want = logsumexp_rows_reference(x.cpu())
    torch.testing.assert_close(got, want)
    assert got[2] == float("-inf") and got[4] == float("inf")


def test_a_wide_row_keeps_float32_accuracy() -> None:
    """The CPU sum of exponentials in float32, one column at a time, was 2e-4 off at 131,072 columns
    (Mistral-NeMo's vocabulary) and 1e-3 at 2^20."""
    torch.manual_seed(0)
    x = torch.randn(2, 1 << 20) * 5
    torch.testing.assert_close(logsumexp_rows(x), logsumexp_rows_reference(x), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gradient_is_the_softmax(device: str, dtype: torch.dtype) -> None:
    """The op had no backward: autograd gave its input no gradient (x.grad stayed None)."""
    torch.manual_seed(0)
    x = (torch.randn(5, 37) * 3).to(device=device, dtype=dtype).requires_grad_()
    weights = torch.randn(5, device=device)
    (logsumexp_rows(x) * weights).sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype
    want = weights[:, None] * torch.softmax(x.detach().double(), dim=-1)
    torch.testing.assert_close(x.grad.double(), want, rtol=1e-2, atol=1e-5)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        logsumexp_rows(torch.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        logsumexp_rows(torch.zeros(2, 2, dtype=torch.int64))


def test_torch_compile_fullgraph_matches_eager() -> None:
    x = torch.randn(4, 33) * 3
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: logsumexp_rows(t * 2), fullgraph=True)
    torch.testing.assert_close(compiled(x), logsumexp_rows(x * 2))
