"""The megatron-core version vikhr is written for, checked before it is used."""

from __future__ import annotations

import functools
import importlib.metadata as md
import sys
import warnings
from collections.abc import Callable
from typing import Any

from vikhr.errors import VikhrError

# The megatron-core releases vikhr is tested with (vikhr.runtime.cpu_compat and the model builders
# touch its internals): CI runs the oldest, the only one with a wheel for Python 3.11; the newest
# is tested on Python 3.12 (the CPU tests and the GPU check).
MEGATRON_CORE_MIN = "0.16.1"
MEGATRON_CORE_BELOW = "0.20"
MEGATRON_CORE_REQUIREMENT = f"megatron-core>={MEGATRON_CORE_MIN},<{MEGATRON_CORE_BELOW}"


def megatron_version_problem() -> str | None:
    """A sentence describing what is wrong with the installed megatron-core, or None when it is right."""
    from packaging.version import Version

    try:
        installed = md.version("megatron-core")
    except md.PackageNotFoundError:
        return f"megatron-core is not installed; pip install '{MEGATRON_CORE_REQUIREMENT}'"
    if not Version(MEGATRON_CORE_MIN) <= Version(installed) < Version(MEGATRON_CORE_BELOW):
        return (
            f"megatron-core {installed} is installed but vikhr supports {MEGATRON_CORE_MIN} up to (not "
            f"including) {MEGATRON_CORE_BELOW}; pip install '{MEGATRON_CORE_REQUIREMENT}'"
        )
    return None


def require_megatron() -> None:
    """Raise VikhrError unless the pinned megatron-core version is installed; quiet its import noise.

    megatron-core warns at import about every absent optional accelerator (Apex, Transformer
    Engine) and about deprecations inside itself; `vikhr doctor` reports what is present instead.
    """
    problem = megatron_version_problem()
    if problem:
        raise VikhrError(problem)
    import_megatron_core()


def import_megatron_core() -> None:
    """Import megatron-core the way vikhr's entry points do (call it before its first import).

    Its import-time warnings (every absent optional accelerator, deprecations inside itself) are
    hidden. Its import-time `torch.compile` calls are deferred: megatron-core binds
    `jit_fuser = torch.compile` and decorates its fusion helpers with it as it is imported, which
    imports torch's compiler stack (dynamo, inductor) — ~4.5 s of every process's start-up on a
    2-core CPU, for helpers vikhr's models never call (their fusions are off). Deferred, a helper
    is compiled on its first call instead, which is when torch.compile traces it anyway.
    """
    for category in (UserWarning, DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"megatron\.")
    if "megatron.core" in sys.modules or megatron_version_problem() is not None:
        return  # already imported, or require_megatron will say what is wrong
    import torch

    real = torch.compile
    torch.compile = compile_on_first_call(real)  # only while megatron-core's modules execute
    try:
        import megatron.core
        import megatron.core.jit  # noqa: F401  (holds the deferred decorator from now on)
    finally:
        torch.compile = real


def compile_on_first_call(compile_fn: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in for `torch.compile` (`compile_fn`) that compiles a function on its first call,
    with the same arguments; as a decorator with or without arguments."""

    def deferred(fn: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        if fn is None:
            return lambda f: deferred(f, **kwargs)
        compiled: Callable[..., Any] | None = None

        @functools.wraps(fn)
        def call(*args: Any, **kw: Any) -> Any:
            nonlocal compiled
            if compiled is None:
                compiled = compile_fn(fn, **kwargs)
            return compiled(*args, **kw)

        return call

    return deferred
