"""Custom ops compiled from `csrc/` (CPU C++ and CUDA), registered as `torch.ops.vikhr.*`.

Each op has one module here holding the function that calls it (`cross_entropy_kl`,
`logsumexp_rows`); `vikhr.ops.reference` holds their plain-PyTorch versions, which the tests
compare against and `tools/bench_kernels.py` times against. `vikhr.ops.build` compiles and loads
the library, `vikhr.ops.fake` gives torch.compile the ops' output shapes.
"""

from vikhr.ops.cross_entropy_kl import CEKLOutput, cross_entropy_kl
from vikhr.ops.logsumexp import logsumexp_rows

__all__ = ["CEKLOutput", "cross_entropy_kl", "logsumexp_rows"]
