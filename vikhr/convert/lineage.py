"""A checkpoint's lineage: the checkpoint, the one its run started from (config `model.init`), that
one's starting point, and so on.

Training keeps the vocabulary and architecture of its starting point, so what `hf-to-megatron`
recorded at the root of a lineage (the tokenizer file, copied into the checkpoint with its
companions, and the source's config.json and generation_config.json) holds for every checkpoint
trained from it: the export of a trained run finds them here. A run records at its start what its
starting point's lineage holds (meta.json `inherited`, vikhr.convert.hf_tokenizer.Recorded) and
each checkpoint it saves keeps a copy of the tokenizer files named there (`carry_tokenizers`), so
that it is self-contained: its lineage ends there, and the HF source and the start may be deleted,
moved or left on another machine. A file a checkpoint holds is recorded relative to it; one
recorded by an absolute path (checkpoints of older versions) is read there.
Checkpoints of older versions have no such record: their lineage goes on to their start, and ends
where that start is gone (`Ancestor.missing_start`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError, read_json_object

_CHAIN_LIMIT = 16  # model.init links followed at most (a longer chain is a loop)
# meta.json key of a trained checkpoint: what the lineage of its run's start records.
INHERITED = "inherited"
# The directory of a checkpoint holding its copy of the tokenizer files it records (`carry_tokenizer`),
# and where a trained one keeps the HF source's when they are another tokenizer's.
TOKENIZER_DIR = "tokenizer"
SOURCE_TOKENIZER_DIR = "source_tokenizer"
# The files of an HF tokenizer that an export reads beside the tokenizer file: its special tokens, chat
# template, stop ids (config.json, generation_config.json).
TOKENIZER_COMPANIONS = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
)


def recorded_in(step_dir: Path, recorded: str) -> Path:
    """A file a checkpoint's meta.json records: relative to the checkpoint (its own copy, which moves
    with it), or an absolute path (checkpoints of older versions, records of datasets)."""
    path = Path(recorded)
    return path if path.is_absolute() else step_dir / path


def tokenizer_files(tokenizer: Path) -> dict[str, bytes]:
    """The contents of the tokenizer file and of its companions beside it (`TOKENIZER_COMPANIONS`),
    by name: what a checkpoint keeps a copy of, so that its export needs no other directory."""
    paths = [tokenizer.parent / name for name in dict.fromkeys((tokenizer.name, *TOKENIZER_COMPANIONS))]
    return {path.name: path.read_bytes() for path in paths if path.is_file()}


def carry_tokenizers(record: dict[str, Any], base: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """`record` (meta.json `INHERITED`; its relative paths are relative to checkpoint `base`) as each
    checkpoint of a run records it, and the files each keeps (path in the checkpoint → contents):
    the tokenizer, and the HF source's where it is another file, with their companions, recorded
    relative to the checkpoint, so that neither the HF source nor the start is needed to export it.
    Read once, at the run's start: the start may be deleted, or pruned (checkpoint.keep_last),
    while the run goes on. A file not found keeps its record as an absolute path."""
    record = copy.deepcopy(record)
    files: dict[str, bytes] = {}
    carried: dict[Path, str] = {}
    source = record.get("hf_source")
    for holder, key, directory in (
        (record.get("tokenizer"), "path", TOKENIZER_DIR),
        (source, "tokenizer", SOURCE_TOKENIZER_DIR),
    ):
        if not isinstance(holder, dict) or not isinstance(holder.get(key), str):
            continue
        path = Path(os.path.abspath(recorded_in(base, holder[key])))
        if path.resolve() in carried:
            holder[key] = carried[path.resolve()]
        elif path.is_file():
            files.update((f"{directory}/{name}", data) for name, data in tokenizer_files(path).items())
            holder[key] = carried[path.resolve()] = f"{directory}/{path.name}"
        else:
            holder[key] = str(path)
    return record, files


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


def _source_of(step_dir: Path, config: Any, generation: Any, tokenizer: Any) -> HFSource | None:
    if not isinstance(config, dict):
        return None
    return HFSource(
        config,
        generation if isinstance(generation, dict) else None,
        recorded_in(step_dir, tokenizer) if isinstance(tokenizer, str) else None,
    )


def hf_source(ancestor: Ancestor) -> HFSource | None:
    """What `hf-to-megatron` recorded in this checkpoint of a lineage, or what it inherits of that
    (None: neither)."""
    meta = ancestor.meta
    if isinstance(meta.get("hf_config"), dict):  # a conversion
        config, generation = meta["hf_config"], meta.get("hf_generation_config")
        return _source_of(ancestor.step_dir, config, generation, meta.get("tokenizer"))
    record = (ancestor.inherited or {}).get("hf_source")
    if not isinstance(record, dict):
        return None
    config, generation = record.get("config"), record.get("generation_config")
    return _source_of(ancestor.step_dir, config, generation, record.get("tokenizer"))
