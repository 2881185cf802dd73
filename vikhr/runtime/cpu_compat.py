"""CPU compatibility layer for megatron-core, in one place.

megatron-core has no CPU path: it asks `torch.cuda.current_device()` where to put tensors,
keeps its RNG streams in CUDA generators, and has a few CUDA-only calls on its training path.
With `use_cpu_initialization=True`, the local layer spec and fused kernels off, everything else
already works on CPU with gloo; this module supplies the missing pieces:

- `torch.cuda.current_device()` answers `torch.device("cpu")`, so megatron's
  `device=torch.cuda.current_device()` allocations land on the CPU;
- the CUDA RNG tracker is replaced by one that keeps CPU generator states (same names, same
  seeds, same fork semantics), so dropout and initialisation stay reproducible per TP rank;
- stream/synchronisation calls used on megatron's DDP and optimizer paths become no-ops;
- the `device="cuda"` literals scattered through megatron (causal masks, optimizer flags,
  grad-norm buffers) are redirected to the CPU by a torch function mode, rather than by
  patching each function that has one, so new literals in the same paths are covered too;
  the same mode names CPU tensors' types as CUDA ones (`t.type()`), which megatron's
  distributed optimizer uses to sort parameters.

It is applied only when CUDA is unavailable (or when forced) and only once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False
_CPU = torch.device("cpu")
_MODE: TorchFunctionMode | None = None
# (object, attribute name, original value) for every patch, so remove() can undo them.
_PATCHES: list[tuple[object, str, object]] = []


def _patch(obj: object, name: str, value: object) -> None:
    _PATCHES.append((obj, name, getattr(obj, name)))
    setattr(obj, name, value)


def is_applied() -> bool:
    return _APPLIED


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


def _make_cpu_rng_tracker_class() -> type:
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


def _patch_clip_grads() -> None:
    """megatron's clip_grad_by_total_norm_fp32 asserts grads are `torch.cuda.FloatTensor`.

    Added for the trainer (vikhr.train): the same scaling (grads × max_norm / (norm + 1e-6) when
    that is below 1), without the device assertion.
    """
    import importlib

    # By module path: the package megatron.core.optimizer rebinds the name `optimizer`.
    moptimizer = importlib.import_module("megatron.core.optimizer.optimizer")

    def clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):  # type: ignore[no-untyped-def]
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        attr = "decoupled_grad" if use_decoupled_grad else "grad"
        grads = [getattr(p, attr, None) for p in parameters]
        grads = [g.detach() for g in grads if g is not None]
        clip_coeff = max_norm / (total_norm + 1.0e-6)
        if clip_coeff < 1.0:
            torch._foreach_mul_(grads, clip_coeff)

    _patch(moptimizer, "clip_grad_by_total_norm_fp32", clip_grad_by_total_norm_fp32)


def apply(force: bool = False) -> None:
    """Patch torch.cuda and megatron-core for CPU execution. No-op when CUDA is available."""
    global _APPLIED, _MODE
    if _APPLIED or (torch.cuda.is_available() and not force):
        return

    _patch(torch.cuda, "current_device", lambda: _CPU)
    _patch(torch.cuda, "synchronize", lambda device=None: None)
    _patch(torch.cuda, "Stream", _NullStream)
    _patch(torch.cuda, "current_stream", lambda device=None: _NullStream())
    _patch(torch.cuda, "default_stream", lambda device=None: _NullStream())
    _patch(torch.cuda, "stream", _null_stream_ctx)
    # model_parallel_cuda_manual_seed seeds "the CUDA generator" first: on CPU that is a no-op.
    _patch(torch.cuda, "manual_seed", lambda seed: None)

    from megatron.core.tensor_parallel import random as mrandom

    tracker_cls = _make_cpu_rng_tracker_class()

    def initialize_rng_tracker(*args: object, force_reset: bool = False, **kwargs: object) -> None:
        if force_reset or not isinstance(mrandom._CUDA_RNG_STATE_TRACKER, tracker_cls):
            mrandom._CUDA_RNG_STATE_TRACKER = tracker_cls()
            mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    _patch(mrandom, "initialize_rng_tracker", initialize_rng_tracker)
    _patch(mrandom, "_get_cuda_rng_state", lambda *a, **k: torch.get_rng_state())
    _patch(mrandom, "_set_cuda_rng_state", lambda state, *a, **k: torch.set_rng_state(state))
    _patch_clip_grads()
    # Entered for the life of the run (until remove()): CPU mode is a property of the whole process.
    _MODE = _CudaToCpuMode()
    _MODE.__enter__()
    _APPLIED = True


def remove() -> None:
    """Undo apply(): restore every patched attribute and leave the device mode (for tests)."""
    global _APPLIED, _MODE
    if not _APPLIED:
        return
    if _MODE is not None:
        _MODE.__exit__(None, None, None)
        _MODE = None
    while _PATCHES:
        obj, name, value = _PATCHES.pop()
        setattr(obj, name, value)
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._CUDA_RNG_STATE_TRACKER = None
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = False
    _APPLIED = False
