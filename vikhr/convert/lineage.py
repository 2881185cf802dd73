"""A checkpoint's lineage: the checkpoint, the one its run started from (config `model.init`), that
one's starting point, and so on.

Training keeps the vocabulary and architecture of its starting point, so what `hf-to-megatron`
recorded at the root of a lineage (the tokenizer file, the source's config.json and
generation_config.json) holds for every checkpoint trained from it: the export of a trained run
finds them here. A run records at its start what its starting point's lineage holds (meta.json
`inherited`, vikhr.convert.hf_tokenizer.Recorded), so that each checkpoint it saves is
self-contained: its lineage ends there, and the start may be deleted or left on another machine.
Checkpoints of older versions have no such record: their lineage goes on to their start, and ends
where that start is gone (`Ancestor.missing_start`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError, read_json_object

_CHAIN_LIMIT = 16  # model.init links followed at most (a longer chain is a loop)
# meta.json key of a trained checkpoint: what the lineage of its run's start records.
INHERITED = "inherited"


@dataclass(frozen=True)
class Ancestor:
    """One checkpoint of a lineage."""

    step_dir: Path
    meta: dict[str, Any]  # its meta.json
    cwd: Path  # where its run trained: the relative paths of its config start there
    missing_start: Path | None = None  # its model.init, not found: the lineage is cut here

    @property
    def inherited(self) -> dict[str, Any] | None:
        """What its run recorded of its start's lineage (None: a checkpoint of an older version)."""
        record = self.meta.get(INHERITED)
        return record if isinstance(record, dict) else None


def lineage(step_dir: Path) -> Iterator[Ancestor]:
    """`step_dir`, then each starting point in turn, while the next one is needed and can be found
    (a checkpoint recording what it inherits, a `random` start, a starting point gone or a loop
    ends the lineage)."""
    from vikhr.train.checkpoint import find_checkpoint

    seen = {step_dir.resolve()}
    for _ in range(_CHAIN_LIMIT):
        meta = read_json_object(step_dir / "meta.json", "fix or remove it")
        # Where the run trained (checkpoints of older versions: the current directory).
        cwd = Path(meta["cwd"]) if isinstance(meta.get("cwd"), str) else Path()
        init = (meta.get("config") or {}).get("model", {}).get("init")
        if isinstance(meta.get(INHERITED), dict) or not isinstance(init, str) or init == "random":
            yield Ancestor(step_dir, meta, cwd)
            return
        try:
            start = find_checkpoint(str(cwd / init))
        except VikhrError:
            start = None  # the starting point is damaged: nothing recorded there can be used
        if start is None:
            yield Ancestor(step_dir, meta, cwd, missing_start=cwd / init)
            return
        yield Ancestor(step_dir, meta, cwd)
        if start.resolve() in seen:
            return
        seen.add(start.resolve())
        step_dir = start


@dataclass(frozen=True)
class HFSource:
    """What `hf-to-megatron` recorded of the HF model a lineage was converted from."""

    config: dict[str, Any]  # its config.json
    generation_config: dict[str, Any] | None  # its generation_config.json
    tokenizer: Path | None  # the tokenizer file it was converted with

    def to_json(self) -> dict[str, Any]:
        """The record of it that a trained checkpoint's meta.json holds (`INHERITED`)."""
        tokenizer = str(self.tokenizer) if self.tokenizer is not None else None
        return {"config": self.config, "generation_config": self.generation_config, "tokenizer": tokenizer}


def _source_of(config: Any, generation: Any, tokenizer: Any) -> HFSource | None:
    if not isinstance(config, dict):
        return None
    return HFSource(
        config,
        generation if isinstance(generation, dict) else None,
        Path(tokenizer) if isinstance(tokenizer, str) else None,
    )


def hf_source(ancestor: Ancestor) -> HFSource | None:
    """What `hf-to-megatron` recorded in this checkpoint of a lineage, or what it inherits of that
    (None: neither)."""
    meta = ancestor.meta
    if isinstance(meta.get("hf_config"), dict):  # a conversion
        return _source_of(meta["hf_config"], meta.get("hf_generation_config"), meta.get("tokenizer"))
    record = (ancestor.inherited or {}).get("hf_source")
    if not isinstance(record, dict):
        return None
    return _source_of(record.get("config"), record.get("generation_config"), record.get("tokenizer"))
