"""CPU compatibility layer for megatron-core, in one place.

megatron-core has no CPU path: it asks `torch.cuda.current_device()` where to put tensors,
keeps its RNG streams in CUDA generators, and has a few CUDA-only calls on its training path.
With `use_cpu_initialization=True`, the local layer spec and fused kernels off, everything else
already works on CPU with gloo; `megatron_on_cpu()` supplies the missing pieces for as long as
it is entered:

- `torch.cuda.current_device()` answers `torch.device("cpu")`, so megatron's
  `device=torch.cuda.current_device()` allocations land on the CPU;
- the CUDA RNG tracker is replaced by one that keeps CPU generator states (same names, same
  seeds, same fork semantics), so dropout and initialisation stay reproducible per TP rank;
- stream/synchronisation calls used on megatron's DDP and optimizer paths become no-ops;
- megatron's grad clipping loses its assertion that gradients are CUDA tensors;
- the `device="cuda"` literals scattered through megatron (causal masks, optimizer flags,
  grad-norm buffers) are redirected to the CPU by a torch function mode, rather than by
  patching each function that has one, so new literals in the same paths are covered too;
  the same mode names CPU tensors' types as CUDA ones (`t.type()`), which megatron's
  distributed optimizer uses to sort parameters.

The patches are process-wide by nature (they replace attributes of torch and megatron), so
there is one owner: the distributed environment (`vikhr.runtime.distributed_env`) enters this
context for a CPU run and leaves it at the end, which restores every patched attribute.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import warnings
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

from vikhr.errors import VikhrError

_CPU = torch.device("cpu")

# torch's C++ warnings are attributed to the innermost Python frame, which for every call megatron
# makes through `_CudaToCpuMode` is this module's, so vikhr.runtime.megatron's filter of megatron's
# own warnings misses them. This one is megatron's distributed optimizer on fp32 parameters, whose
# shards are views (non-leaf): its zero_grad asks their `.grad` once per rank and run.
warnings.filterwarnings(
    "ignore",
    message=r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed",
    category=UserWarning,
    module=r"vikhr\.runtime\.cpu_compat",
)


class _NullStream:
    """Stands in for torch.cuda.Stream on CPU: work is synchronous there."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def wait_stream(self, other: object) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, event: object = None) -> None:
        return None


@contextlib.contextmanager
def _null_stream_ctx(stream: object = None) -> Iterator[None]:
    yield


def _is_cuda(device: object) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, int) and not isinstance(device, bool)  # a bare index means a CUDA device


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects tensors requested on CUDA (factories, `.to`, `.cuda()`) to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # megatron's optimizers sort parameters by type name ('torch.cuda.FloatTensor').
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs["device"] = _CPU
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


def _cpu_rng_tracker_class() -> type:
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """megatron's RNG tracker with CPU generator states instead of CUDA ones."""

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    return CpuRNGStatesTracker


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):  # type: ignore[no-untyped-def]
    """megatron's clip_grad_by_total_norm_fp32 without its assertion that grads are
    `torch.cuda.FloatTensor`: grads × max_norm / (norm + 1e-6) when that is below 1."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr, None) for p in parameters]
    grads = [g.detach() for g in grads if g is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        torch._foreach_mul_(grads, clip_coeff)


_NORM_CHUNK = 1 << 22  # elements squared in float64 at a time (32 MiB)


def _l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):  # type: ignore[no-untyped-def]
    """megatron's fallback multi_tensor_l2norm (no TE, no apex): the L2 norm of every tensor of
    `tensor_lists`, as a one-element float32 tensor. megatron's own calls `torch.norm` in float32,
    which on the CPU falls short on large tensors (1.3 % on a 131M-element output layer: the logged
    grad norm, and the clipping it decides); here squares are summed in float64, a chunk at a time."""
    del chunk_size, noop_flag, per_tensor, args
    total = 0.0
    for tensors in tensor_lists:
        for tensor in tensors:
            for chunk in tensor.detach().reshape(-1).split(_NORM_CHUNK):
                total += float(chunk.double().square().sum())
    return torch.tensor([math.sqrt(total)], dtype=torch.float32), None


class _Patches:
    """Attributes replaced for the life of the context, restored in reverse order on exit."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, object]] = []

    def set(self, obj: object, name: str, value: object) -> None:
        self._saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore(self) -> None:
        while self._saved:
            obj, name, value = self._saved.pop()
            setattr(obj, name, value)


_active = False  # the patches are process-wide: one owner at a time


@contextlib.contextmanager
def megatron_on_cpu() -> Iterator[None]:
    """Run megatron-core on the CPU inside this context; everything is restored on exit."""
    global _active
    if _active:
        raise VikhrError("megatron_on_cpu() is already active in this process (it does not nest)")
    from megatron.core.tensor_parallel import random as mrandom

    # By module path: the package megatron.core.optimizer rebinds the name `optimizer`.
    moptimizer = importlib.import_module("megatron.core.optimizer.optimizer")
    clip_grads = importlib.import_module("megatron.core.optimizer.clip_grads")
    tracker_cls = _cpu_rng_tracker_class()

    def initialize_rng_tracker(*args: object, force_reset: bool = False, **kwargs: object) -> None:
        if force_reset or not isinstance(mrandom._CUDA_RNG_STATE_TRACKER, tracker_cls):
            mrandom._CUDA_RNG_STATE_TRACKER = tracker_cls()
            mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    patches = _Patches()
    patches.set(torch.cuda, "current_device", lambda: _CPU)
    patches.set(torch.cuda, "synchronize", lambda device=None: None)
    patches.set(torch.cuda, "Stream", _NullStream)
    patches.set(torch.cuda, "current_stream", lambda device=None: _NullStream())
    patches.set(torch.cuda, "default_stream", lambda device=None: _NullStream())
    patches.set(torch.cuda, "stream", _null_stream_ctx)
    # model_parallel_cuda_manual_seed seeds "the CUDA generator" first: on CPU that is a no-op.
    patches.set(torch.cuda, "manual_seed", lambda seed: None)
    patches.set(mrandom, "initialize_rng_tracker", initialize_rng_tracker)
    patches.set(mrandom, "_get_cuda_rng_state", lambda *a, **k: torch.get_rng_state())
    patches.set(mrandom, "_set_cuda_rng_state", lambda state, *a, **k: torch.set_rng_state(state))
    patches.set(moptimizer, "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm_fp32)
    patches.set(clip_grads, "l2_norm_impl", _l2_norm)
    # The tracker holding CPU states must not outlive the context.
    patches.set(mrandom, "_CUDA_RNG_STATE_TRACKER", None)
    patches.set(mrandom, "_CUDA_RNG_STATE_TRACKER_INITIALIZED", False)
    mode = _CudaToCpuMode()
    _active = True
    try:
        with mode:
            yield
    finally:
        patches.restore()
        _active = False
