"""The megatron-core version vikhr is written for, checked before it is used."""

from __future__ import annotations

import importlib.metadata as md
import warnings

from vikhr.errors import VikhrError

# vikhr.runtime.cpu_compat and the model builders touch megatron-core internals of this release.
MEGATRON_CORE_VERSION = "0.16.1"


def megatron_version_problem() -> str | None:
    """A sentence describing what is wrong with the installed megatron-core, or None when it is right."""
    try:
        installed = md.version("megatron-core")
    except md.PackageNotFoundError:
        return f"megatron-core is not installed; pip install megatron-core=={MEGATRON_CORE_VERSION}"
    if installed != MEGATRON_CORE_VERSION:
        return (
            f"megatron-core {installed} is installed but vikhr is written for {MEGATRON_CORE_VERSION}; "
            f"pip install megatron-core=={MEGATRON_CORE_VERSION}"
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
    quiet_megatron_warnings()


def quiet_megatron_warnings() -> None:
    """Hide megatron-core's import-time warnings (entry points call this before importing it)."""
    for category in (UserWarning, DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"megatron\.")
