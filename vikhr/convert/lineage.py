"""A checkpoint's lineage: the checkpoint, the one its run started from (config `model.init`), that
one's starting point, and so on.

Training keeps the vocabulary and architecture of its starting point, so what `hf-to-megatron`
recorded at the root of a lineage (the tokenizer file, the source's config.json and
generation_config.json) holds for every checkpoint trained from it: the export of a trained run
finds them here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError, read_json_object

_CHAIN_LIMIT = 16  # model.init links followed at most (a longer chain is a loop)


@dataclass(frozen=True)
class Ancestor:
    """One checkpoint of a lineage."""

    step_dir: Path
    meta: dict[str, Any]  # its meta.json
    cwd: Path  # where its run trained: the relative paths of its config start there


def lineage(step_dir: Path) -> Iterator[Ancestor]:
    """`step_dir`, then each starting point in turn, while the next one can be found (a `random`
    start, a starting point gone or a loop ends the lineage)."""
    from vikhr.train.checkpoint import find_checkpoint

    seen = {step_dir.resolve()}
    for _ in range(_CHAIN_LIMIT):
        meta = read_json_object(step_dir / "meta.json", "fix or remove it")
        # Where the run trained (checkpoints of older versions: the current directory).
        cwd = Path(meta["cwd"]) if isinstance(meta.get("cwd"), str) else Path()
        yield Ancestor(step_dir, meta, cwd)
        init = (meta.get("config") or {}).get("model", {}).get("init")
        if not isinstance(init, str) or init == "random":
            return
        try:
            start = find_checkpoint(str(cwd / init))
        except VikhrError:
            return  # the starting point is gone: nothing recorded that can be used
        if start is None or start.resolve() in seen:
            return
        seen.add(start.resolve())
        step_dir = start


def recorded_hf_source(step_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(config.json, generation_config.json) of the HF model the lineage of `step_dir` was converted
    from, as `hf-to-megatron` recorded them (None for what it did not)."""
    for ancestor in lineage(step_dir):
        config = ancestor.meta.get("hf_config")
        if isinstance(config, dict):
            generation = ancestor.meta.get("hf_generation_config")
            return config, generation if isinstance(generation, dict) else None
    return None, None
