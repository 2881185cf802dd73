"""SLERP and linear interpolation of two tensors, as mergekit defines them (Goddard et al. 2024).

Both are `c_a·a + c_b·b` with scalar coefficients. Linear: `c_a = 1 − t`, `c_b = t`. SLERP treats
each tensor as one flat vector: the angle θ between a and b comes from their normalised copies
(a norm ≤ EPS is left as is), and `c_a = sin((1 − t)θ) / sin θ`, `c_b = sin(tθ) / sin θ` are
applied to the unnormalised tensors; nearly colinear tensors (|cos θ| > DOT_THRESHOLD) fall back
to linear interpolation. Work goes a chunk at a time, so a tensor costs its result plus a few
chunk-sized temporaries: the dot product and norms in float64 (one float32 dot over millions of
elements drifts by ~1e-4, relative), the combination in float32 (float64 for float64 inputs). The
result takes the dtype of `a`; values past that dtype's range (float16's ±65504 where b is bfloat16 or
float32, or where SLERP's coefficients add up to more than 1) are refused, not written as inf. The
sums do not depend on the number of threads: each chunk's is taken on one thread in a fixed order
and the chunks' are added in order, so a merge gives the same bits whatever torch's thread count.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from vikhr.errors import VikhrError

Method = Literal["slerp", "linear"]
METHODS: tuple[Method, ...] = ("slerp", "linear")
DOT_THRESHOLD = 0.9995  # mergekit's: past it, sin θ is too small to divide by
EPS = 1e-8  # norms at or below it are not divided by (a zero tensor stays zero)
CHUNK_ELEMENTS = 1 << 22


def slerp_coefficients(t: float, dot: float, norm_a: float, norm_b: float) -> tuple[float, float]:
    """(c_a, c_b) such that SLERP(t; a, b) = c_a·a + c_b·b, from a·b and the norms of a and b."""
    cos = dot / ((norm_a if norm_a > EPS else 1.0) * (norm_b if norm_b > EPS else 1.0))
    if abs(cos) > DOT_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(cos)
    sin_theta = math.sin(theta)
    return math.sin(theta - theta * t) / sin_theta, math.sin(theta * t) / sin_theta


def dot_and_norms(a: Any, b: Any) -> tuple[float, float, float]:
    """a·b, |a| and |b| of two same-shaped tensors as flat vectors, in float64, the same whatever the
    number of threads."""
    import numpy as np
    import torch

    def dot(x: np.ndarray, y: np.ndarray) -> float:
        # numpy's einsum (without `optimize`) sums on one thread in a fixed order; torch.dot (BLAS)
        # splits the sum among threads, so its last bits, and SLERP's angle, changed with their number.
        return float(np.einsum("i,i->", x, y))

    flat_a, flat_b = a.detach().reshape(-1), b.detach().reshape(-1)
    total_ab = total_aa = total_bb = 0.0
    for s in range(0, flat_a.numel(), CHUNK_ELEMENTS):
        x = flat_a[s : s + CHUNK_ELEMENTS].to(torch.float64).numpy()
        y = flat_b[s : s + CHUNK_ELEMENTS].to(torch.float64).numpy()
        total_ab += dot(x, y)
        total_aa += dot(x, x)
        total_bb += dot(y, y)
    return total_ab, math.sqrt(total_aa), math.sqrt(total_bb)


NOT_FINITE = "the tensors hold inf or NaN values (a model with them is broken: nothing to merge)"


def _out_of_range(result: Any, a: Any, b: Any) -> VikhrError:
    """The error for finite merged values that `result`, in a's dtype, cannot hold (they became inf)."""
    import torch

    largest = torch.finfo(result.dtype).max
    fix = (
        f"model B's {str(b.dtype).removeprefix('torch.')} holds them: give B as model A, with each t "
        "replaced by 1 − t"
        if torch.finfo(b.dtype).max > largest
        else "a bfloat16 or float32 copy of model A would hold them"
    )
    return VikhrError(
        f"merged values exceed {str(result.dtype).removeprefix('torch.')}'s range (±{largest:g}), model A's "
        f"dtype, in which the merge is written ({fix})"
    )


def interpolate(a: Any, b: Any, t: float, method: Method = "slerp") -> Any:
    """`method` interpolation of two floating-point tensors of one shape at `t` in [0, 1], in a's dtype.

    t = 0 gives `a` itself and t = 1 gives `b` in a's dtype: the endpoints are the inputs bit for
    bit (the formula would turn −0.0 into +0.0 and carry the other side's inf/NaN through 0·x).
    """
    import torch

    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    if not 0.0 <= t <= 1.0:
        raise VikhrError(f"t = {t} is outside [0, 1]")
    if method not in METHODS:
        raise VikhrError(f"unknown merge method {method!r} (choose {' or '.join(METHODS)})")
    if t == 0.0:
        return a
    if t == 1.0:
        at_b = b.to(a.dtype)
        if torch.finfo(a.dtype).max < torch.finfo(b.dtype).max:  # a narrower dtype: B's values may not fit
            flat_b, flat_at_b = b.reshape(-1), at_b.reshape(-1)
            for s in range(0, flat_b.numel(), CHUNK_ELEMENTS):  # chunked: no tensor-sized masks
                chunk = slice(s, s + CHUNK_ELEMENTS)
                # B's own inf and NaN are kept, as at t = 0 A's (the endpoints are the inputs)
                if bool((torch.isinf(flat_at_b[chunk]) & torch.isfinite(flat_b[chunk])).any()):
                    raise _out_of_range(at_b, a, b)
        return at_b
    if method == "linear":
        c_a, c_b = 1.0 - t, t
    else:
        dot, norm_a, norm_b = dot_and_norms(a, b)
        if not all(math.isfinite(v) for v in (dot, norm_a, norm_b)):
            raise VikhrError(NOT_FINITE)
        c_a, c_b = slerp_coefficients(t, dot, norm_a, norm_b)
    compute = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    out = torch.empty(flat_a.numel(), dtype=a.dtype)
    for s in range(0, flat_a.numel(), CHUNK_ELEMENTS):
        part = flat_a[s : s + CHUNK_ELEMENTS].to(compute, copy=True).mul_(c_a)  # a copy: `a` stays
        part.add_(flat_b[s : s + CHUNK_ELEMENTS].to(compute), alpha=c_b)
        written = out[s : s + CHUNK_ELEMENTS]
        written.copy_(part)
        if not bool(torch.isfinite(written).all()):
            # slerp's norms found the inputs' inf and NaN above; else a finite value overflowed a's dtype
            if method == "linear" and not bool(torch.isfinite(part).all()):
                raise VikhrError(NOT_FINITE)
            raise _out_of_range(written, a, b)
    return out.reshape(a.shape)
