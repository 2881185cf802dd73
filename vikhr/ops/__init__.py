"""Custom ops compiled from `csrc/` (CPU C++ and CUDA), each with a plain-PyTorch reference.

Every op lives in one module of this package under its own name, holding the dispatching
function and `<op>_reference`; tests compare the two and `tools/bench_kernels.py` times them.
"""

from vikhr.ops.cross_entropy_kl import CEKLOutput, cross_entropy_kl, cross_entropy_kl_reference
from vikhr.ops.logsumexp import logsumexp_rows, logsumexp_rows_reference

__all__ = [
    "CEKLOutput",
    "cross_entropy_kl",
    "cross_entropy_kl_reference",
    "logsumexp_rows",
    "logsumexp_rows_reference",
]
