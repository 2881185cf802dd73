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


@dataclass(frozen=True)
class HFSource:
    """What `hf-to-megatron` recorded of the HF model a lineage was converted from."""

    config: dict[str, Any]  # its config.json
    generation_config: dict[str, Any] | None  # its generation_config.json
    tokenizer: Path | None  # the tokenizer file it was converted with


def hf_source(ancestor: Ancestor) -> HFSource | None:
    """What `hf-to-megatron` recorded in this checkpoint of a lineage (None: it is not a conversion)."""
    meta = ancestor.meta
    if not isinstance(meta.get("hf_config"), dict):
        return None
    generation, tokenizer = meta.get("hf_generation_config"), meta.get("tokenizer")
    return HFSource(
        meta["hf_config"],
        generation if isinstance(generation, dict) else None,
        Path(tokenizer) if isinstance(tokenizer, str) else None,
    )
