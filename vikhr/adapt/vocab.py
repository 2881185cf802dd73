"""`vikhr adapt-vocab`: new embeddings and LM head for a new tokenizer on an HF Mistral/Llama/Qwen model.

For each token of the new vocabulary:
* copied   — the same piece exists in the old vocabulary (normal, byte `<0xXX>` and special pieces
             are matched by their string, so `▁` stays part of the piece; between a SentencePiece and
             a byte-level vocabulary normal and byte pieces are matched by the bytes they stand for:
             `<0xD0>` is byte-level `Ð`, `▁мир` is `ĠÐ¼Ð¸ÑĢ`): its row is copied bit for bit.
             A prune-extend tokenizer moved the base pieces it kept to new ids; its `id_map.json`
             (vikhr.tokenizer.prune, found beside the new tokenizer or given) says which old row each
             new id copies, and is checked against both vocabularies piece by piece;
* averaged — otherwise the piece's text is encoded by the old tokenizer and the row is the mean of the
             old rows of those pieces ("byte-fallback" when some of them are byte tokens). A byte-level
             piece (Llama-3, Qwen2.5, tekken) stands for bytes: valid UTF-8 text is encoded, stray
             bytes of a partial character become the old single-byte tokens (vikhr.adapt.vocab_source);
* random   — with `init="random"`: drawn from N(mean, std) of the old tokens' rows, per dimension (seeded);
* mean-of-all — with `init="mean-of-all"`: the mean of all old tokens' rows;
* padding  — rows added by `pad_to_multiple` get the mean of all old tokens' rows;
* unused   — an id with no token in both vocabularies (a `tokenizer.json` with gaps in its ids, which
             an extension keeps) keeps its row; one the old vocabulary has a token at starts as
             mean-of-all, as a new special token does.
The mean and std are over the rows of the old tokens only: the rows of a padded checkpoint past its old
tokenizer's tokens (Qwen2.5: 151,665 tokens, 151,936 rows) and those of the gaps in an old
tokenizer.json's ids belong to no token (zeros or untrained).
The input embedding and the LM head are adapted separately, each from its own old rows.

Only those two tensors are held in memory; all others are copied as raw bytes shard by shard
(vikhr.adapt.safetensors_io). Output is written to a temporary directory renamed at the end.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vikhr.adapt.safetensors_io import (
    SafetensorsHeader,
    SafetensorsWriter,
    checkpoint_headers,
    load_tensor,
    safetensors_dtype,
)
from vikhr.adapt.vocab_source import (
    ADDED_TOKENS_FILE,
    SPIECE_UNDERLINE,
    Vocabulary,
    added_token_ids,
    load_vocabulary,
    with_added_tokens,
)
from vikhr.atomic import output_dir
from vikhr.convert.tied import how_tying_is_set, ties_word_embeddings
from vikhr.errors import (
    VikhrError,
    not_an_hf_model_dir,
    overlap,
    read_json_object,
    require_dir,
    require_output_dir,
)
from vikhr.tokenizer.load import (
    CHAT_TEMPLATE_FILE,
    Tokenizer,
    carry_chat_template,
    load,
    pad_id,
    resolve_tokenizer_file,
)
from vikhr.tokenizer.prune import ID_MAP_FILE, IdMap, read_id_map

Init = Literal["mean", "random", "mean-of-all"]
WhitespacePolicy = Literal["mean", "space"]
SUPPORTED_MODEL_TYPES = ("mistral", "llama", "qwen2", "qwen3")
EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
INIT_LOG = "vocab_init_log.json"
MAX_PADDING_ROWS = 512
# The share of common ids on which --old-tokenizer may name other pieces than the tokenizer kept in the
# model's directory (a renamed control piece, say) before it is taken for another tokenizer: its rows
# would be copied for other tokens.
MAX_OTHER_PIECES = 0.01
BYTE_LEVEL_SPACE = "Ġ"  # the space byte in a byte-level vocabulary
SUMMARY = "vocab_init_summary.json"
# Files of the old tokenizer that must not survive into the output (the new one replaces them).
OLD_TOKENIZER_FILES = {
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    ADDED_TOKENS_FILE,
    "vocab.json",  # a BPE's vocabulary and merges as two files (Qwen, GPT-2)
    "merges.txt",
    "tekken.json",  # mistral-common's (Mistral-NeMo, Ministral), which transformers prefers when present
    "params.json",  # the Mistral-native checkpoint's config, with the old vocabulary size
    CHAT_TEMPLATE_FILE,
}


def _old_tokenizer_file(name: str) -> bool:
    """A file of the old tokenizer, left out of the output (transformers or mistral-common would
    load it instead of the new one): the names above and mistral-common's tokenizer.model.v1/v3."""
    return name in OLD_TOKENIZER_FILES or name.startswith("tokenizer.model.v")


# Files beside a new tokenizer.json that go with it into the output.
NEW_TOKENIZER_SIDE_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    CHAT_TEMPLATE_FILE,
)


@dataclass(frozen=True)
class TokenInit:
    """How one row of the new matrices is initialised."""

    token: str
    method: str  # one of METHODS (see the module doc)
    old_ids: tuple[int, ...]


def plan_rows(
    old: Vocabulary,
    new: Vocabulary,
    init: Init = "mean",
    whitespace: WhitespacePolicy = "mean",
    padded_size: int | None = None,
    id_map: IdMap | None = None,
) -> list[TokenInit]:
    """How every new row starts (see module doc); VikhrError if the old tokenizer cannot encode a piece.

    With `id_map` (checked by `check_id_map`), exactly the ids it maps are copied, from the old ids it
    names; without it, pieces are matched by their string, or by their bytes between a SentencePiece
    and a byte-level vocabulary."""
    old_index = old.index()
    by_bytes = old.byte_level != new.byte_level
    old_by_key = old.piece_index(by_bytes)
    copy_from = id_map.new_to_old() if id_map is not None else None
    plan: list[TokenInit] = []
    for new_id, (piece, kind) in enumerate(zip(new.pieces, new.kinds, strict=True)):
        if kind == "none":  # no token: nothing to match by its (empty) piece, which every gap shares
            if new_id < old.size and old.kinds[new_id] == "none":
                plan.append(TokenInit(piece, "unused", (new_id,)))
            else:
                plan.append(TokenInit(piece, "mean-of-all", ()))
            continue
        key = new.piece_key(new_id) if by_bytes else piece
        source = copy_from.get(new_id) if copy_from is not None else old_by_key.get(key)
        if source is not None:
            plan.append(TokenInit(piece, "copied", (source,)))
            continue
        if init in ("random", "mean-of-all"):
            plan.append(TokenInit(piece, init, ()))
            continue
        if kind in ("control", "unknown", "unused", "byte"):
            # A special or byte token the old model never had: no text to encode, so it starts
            # from the average row.
            plan.append(TokenInit(piece, "mean-of-all", ()))
            continue
        old_space = BYTE_LEVEL_SPACE if old.byte_level else SPIECE_UNDERLINE
        new_space = BYTE_LEVEL_SPACE if new.byte_level else SPIECE_UNDERLINE
        if whitespace == "space" and set(piece) == {new_space} and old_space in old_index:
            plan.append(TokenInit(piece, "whitespace-space", (old_index[old_space],)))
            continue
        ids, stray_bytes = _old_ids(old, new, piece)
        is_bytes = stray_bytes or any(old.kinds[i] == "byte" for i in ids)
        plan.append(TokenInit(piece, "byte-fallback" if is_bytes else "averaged", tuple(ids)))
    for _ in range(len(new.pieces), padded_size or 0):
        plan.append(TokenInit("", "padding", ()))
    return plan


def check_id_map(id_map: IdMap, old: Vocabulary, new: Vocabulary) -> None:
    """VikhrError (one line) unless `id_map` maps `old` onto `new`: sizes agree and every mapped pair is
    the same piece."""
    where = f"id map {id_map.path}"
    if len(id_map.old_to_new) != old.size:
        raise VikhrError(
            f"{where} is for a base of {len(id_map.old_to_new)} tokens but --old-tokenizer {old.path} has "
            f"{old.size} (pass the base the tokenizer was pruned from)"
        )
    if id_map.new_vocab_size != new.size:
        raise VikhrError(
            f"{where} is for a tokenizer of {id_map.new_vocab_size} tokens but {new.path} has {new.size} "
            "(use the id_map.json written with this tokenizer)"
        )
    for old_id, new_id in enumerate(id_map.old_to_new):
        if new_id is not None and old.pieces[old_id] != new.pieces[new_id]:
            raise VikhrError(
                f"{where} maps old id {old_id} ({old.pieces[old_id]!r}) to new id {new_id}, which is "
                f"{new.pieces[new_id]!r} (the map does not belong to these tokenizers)"
            )


def find_id_map(new: Vocabulary, id_map_path: str | Path | None) -> IdMap | None:
    """The id map given, or the one beside the new tokenizer; VikhrError when a prune-extend tokenizer
    (its manifest says so) has none."""
    if id_map_path is not None:
        return read_id_map(id_map_path)
    beside = Path(new.path).parent / ID_MAP_FILE
    if beside.is_file():
        return read_id_map(beside)
    manifest = Path(new.path).parent / "manifest.json"
    if manifest.is_file() and read_json_object(manifest).get("mode") == "prune-extend":
        raise VikhrError(
            f"{new.path} was made by prune-extend, whose kept pieces moved, but {beside} is missing "
            "(copy it from the training output or pass --id-map)"
        )
    return None


def _old_ids(old: Vocabulary, new: Vocabulary, piece: str) -> tuple[list[int], bool]:
    """Old ids whose rows make the row of new `piece`, and whether stray bytes (not valid UTF-8) were
    taken as single-byte tokens (vikhr.adapt.vocab_source)."""
    ids: list[int] = []
    stray = False
    for run in new.piece_runs(piece):
        if isinstance(run, str):
            ids += old.encode_raw(run)
            continue
        byte_id = old.byte_token(run)
        if byte_id is None:
            raise VikhrError(
                f"new piece {piece!r} holds the byte 0x{run:02X} outside valid UTF-8, and the old tokenizer "
                f"{old.path} has no token for it (no byte fallback); use --init random"
            )
        ids.append(byte_id)
        stray = True
    if not ids or (old.unk_id is not None and old.unk_id in ids):
        raise VikhrError(
            f"the old tokenizer {old.path} cannot encode new piece {piece!r} (it yields "
            f"{'nothing' if not ids else '<unk>'}); use --init random or an old tokenizer with "
            "byte fallback"
        )
    return ids, stray


def _column_stats(rows: Any, ids: Any, chunk: int = 4096) -> tuple[Any, Any]:
    """Per-dimension float32 mean and std of the rows `ids` of `rows`, a chunk of rows at a time (no
    full float32 copy)."""
    import torch

    total = torch.zeros(rows.shape[1], dtype=torch.float64)
    total_sq = torch.zeros(rows.shape[1], dtype=torch.float64)
    for start in range(0, ids.shape[0], chunk):
        block = rows.index_select(0, ids[start : start + chunk]).to(torch.float64)
        total += block.sum(0)
        total_sq += (block * block).sum(0)
    n = ids.shape[0]
    mean = total / max(1, n)
    var = (total_sq - n * mean * mean) / max(1, n - 1)
    return mean.to(torch.float32), var.clamp_min(0).sqrt().to(torch.float32)


def build_matrix(
    old_rows: Any, plan: list[TokenInit], seed: int = 0, token_ids: Sequence[int] | None = None
) -> Any:
    """The new matrix (len(plan) × hidden, dtype of `old_rows`) following `plan`. The mean of the
    "mean-of-all" and "padding" rows and the N(mean, std) of "random" ones are over the old rows
    `token_ids` (default: all), those of the old tokens: a padded checkpoint's rows past its
    tokenizer's tokens and the rows of the gaps in a tokenizer.json's ids belong to no token (zeros or
    untrained) and would pull every such row towards them."""
    import torch

    hidden = old_rows.shape[1]
    out = torch.empty((len(plan), hidden), dtype=old_rows.dtype)
    # Copied rows (most of them) move in blocks: bit-identical, no dtype round trip, bounded scratch.
    copied = [i for i, step in enumerate(plan) if step.method in KEPT_ROWS]
    for start in range(0, len(copied), COPY_BLOCK_ROWS):
        dst = torch.tensor(copied[start : start + COPY_BLOCK_ROWS])
        src = torch.tensor([plan[i].old_ids[0] for i in copied[start : start + COPY_BLOCK_ROWS]])
        out.index_copy_(0, dst, old_rows.index_select(0, src))
    stat_ids = torch.arange(old_rows.shape[0]) if token_ids is None else torch.tensor(list(token_ids))
    all_mean: Any = None
    gen = torch.Generator().manual_seed(seed)
    stats: tuple[Any, Any] | None = None
    for i, step in enumerate(plan):
        if step.method in KEPT_ROWS:
            continue
        elif step.method in ("averaged", "byte-fallback"):
            out[i] = old_rows[list(step.old_ids)].to(torch.float32).mean(0).to(old_rows.dtype)
        elif step.method in ("padding", "mean-of-all"):
            if all_mean is None:
                all_mean = _column_stats(old_rows, stat_ids)[0]
            out[i] = all_mean.to(old_rows.dtype)
        elif step.method == "random":
            if stats is None:
                stats = _column_stats(old_rows, stat_ids)
            noise = torch.randn(hidden, generator=gen, dtype=torch.float32)
            out[i] = (stats[0] + stats[1] * noise).to(old_rows.dtype)
        else:  # pragma: no cover - plan_rows only produces the methods above
            raise AssertionError(step.method)
    return out


def _adapted_matrix(
    src: SafetensorsHeader, name: str, plan: list[TokenInit], seed: int, token_ids: list[int]
) -> Any:
    """The new `name` matrix, built from the old one (read now and freed on return; its rows
    `token_ids` are the old tokens', see build_matrix)."""
    import torch

    # Row copies and small means are memory-bound: intra-op threads only add OpenMP spin-waits
    # (10x slower on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_matrix(load_tensor(src.tensors[name], src.path), plan, seed=seed, token_ids=token_ids)
    finally:
        torch.set_num_threads(threads)


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple or multiple <= 1 else -(-n // multiple) * multiple


def _load_config(model_dir: Path) -> dict[str, Any]:
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise not_an_hf_model_dir(model_dir)
    cfg = read_json_object(cfg_path)
    if (model_dir / "generation_config.json").is_file():  # rewritten after the shards: read it now
        read_json_object(model_dir / "generation_config.json")
    if cfg.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise VikhrError(
            f"{cfg_path}: model_type {cfg.get('model_type')!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return cfg


def _locate(headers: list[SafetensorsHeader], name: str) -> SafetensorsHeader | None:
    return next((h for h in headers if name in h.tensors), None)


def _check_vocab_sizes(old: Vocabulary, rows: int, cfg_vocab: int | None, model_dir: Path) -> None:
    if cfg_vocab is not None and cfg_vocab != rows:
        raise VikhrError(
            f"{model_dir}: config.json says vocab_size={cfg_vocab} but {EMBED} has {rows} rows "
            "(broken checkpoint)"
        )
    # Padded checkpoints have a few hundred extra rows at most (Qwen2.5: 151,665 tokens, 151,936 rows);
    # anything else means the wrong old tokenizer.
    if rows < old.size or rows - old.size >= MAX_PADDING_ROWS:
        raise VikhrError(
            f"old tokenizer {old.path} has {old.size} tokens but the model's embedding has {rows} rows "
            "(pass the tokenizer the model was trained with as --old-tokenizer)"
        )


def _check_old_tokenizer_is_the_models(old: Vocabulary, model_dir: Path, rows: int) -> None:
    """VikhrError when the model's directory holds a tokenizer that gives other pieces than `old` on
    more than MAX_OTHER_PIECES of their common ids: a tokenizer of the same size but not the model's
    (Llama 2's for Mistral) passes the size check and copies every row for another token; or one of
    another size where the model has a row for each of its tokens (`rows`). A directory without a
    readable tokenizer has nothing to compare with."""
    try:
        own_path = resolve_tokenizer_file(model_dir)
        if own_path.resolve() == old.path.resolve():
            return
        own = load_vocabulary(own_path)
    except VikhrError:
        return
    common = min(own.size, old.size)
    other = [i for i in range(common) if own.pieces[i] != old.pieces[i]]
    if len(other) > MAX_OTHER_PIECES * common:
        i = other[0]
        raise VikhrError(
            f"--old-tokenizer {old.path} is not the model's tokenizer {own_path}: {len(other)} of their "
            f"first {common} ids are other pieces (id {i}:"
            f" {old.pieces[i]!r}, the model's {own.pieces[i]!r}); "
            f"{_models_tokenizer_advice(model_dir, rows)}"
        )
    # An extension of the model's tokenizer passes the row check on a padded checkpoint (Qwen2.5: 271
    # spare rows): its new tokens would be taken as trained and get the untrained padding rows. Tokens
    # the directory's added_tokens.json gives the same ids are the model's own (a slow tokenizer's
    # chat tokens past its .model, with trained rows).
    added = added_token_ids(model_dir) if old.size > own.size else {}
    owned = own.size
    while owned < old.size and added.get(owned) == old.pieces[owned]:
        owned += 1
    if old.size > owned:
        also = " with its added_tokens.json" if owned > own.size else ""
        listed = f"; its added_tokens.json gives that id to {added[owned]!r}" if owned in added else ""
        raise VikhrError(
            f"--old-tokenizer {old.path} has {old.size - owned} more tokens than the model's tokenizer "
            f"{own_path}{also} ({old.size} vs {owned}; id {owned}: {old.pieces[owned]!r}{listed}), so "
            f"the model has no trained rows for them (an extended tokenizer given as the old one?); "
            f"{_models_tokenizer_advice(model_dir, rows)}"
        )
    # The base's tokenizer given for an adapted model whose few hundred new rows pass the row check as
    # padding: their trained rows would be replaced by means of the base's.
    if old.size < own.size <= rows:
        raise VikhrError(
            f"--old-tokenizer {old.path} has {own.size - old.size} fewer tokens than the model's tokenizer "
            f"{own_path} ({old.size} vs {own.size}; id {old.size}: {own.pieces[old.size]!r}), whose rows "
            f"the model has (the base's tokenizer given for an adapted model?); "
            f"{_models_tokenizer_advice(model_dir, rows)}"
        )


def _check_old_tokenizer_has_the_added_tokens(old: Vocabulary, model_dir: Path, rows: int) -> None:
    """VikhrError when the model directory's added_tokens.json gives ids past the old tokenizer's end to
    tokens: their rows are trained, and would be taken for padding and replaced (a slow tokenizer's
    .model given without the added_tokens.json beside it)."""
    added = added_token_ids(model_dir)
    lacking = sorted(i for i in added if old.size <= i < rows)
    if lacking:
        i = lacking[0]
        raise VikhrError(
            f"--old-tokenizer {old.path} has {old.size} tokens, but the model's {ADDED_TOKENS_FILE} gives "
            f"id {i} to {added[i]!r} ({len(lacking)} such ids among its {rows} rows), whose trained rows "
            f"would be taken for padding; {_models_tokenizer_advice(model_dir, rows)}"
        )


def _models_tokenizer_advice(model_dir: Path, rows: int) -> str:
    """The advice of a refusal: the tokenizer in the model's directory, as --old-tokenizer takes it
    (with the tokens of the added_tokens.json beside it that the model's `rows` hold, as transformers
    loads that directory)."""
    try:
        own = load_vocabulary(model_dir)
    except VikhrError:
        return "pass the tokenizer the model was trained with as --old-tokenizer"
    added = with_added_tokens(own, rows).size - own.size
    also = f": its {own.path.name} and the {added} tokens its {ADDED_TOKENS_FILE} adds" if added else ""
    return f"pass the tokenizer the model was trained with (--old-tokenizer {model_dir}{also})"


def _write_tokenizer(new_path: Path, out: Path) -> None:
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    src = new_path.parent
    if new_path.suffix == ".json":
        shutil.copy2(new_path, out / "tokenizer.json")
        for name in NEW_TOKENIZER_SIDE_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
    else:
        shutil.copy2(new_path, out / "tokenizer.model")
        write_hf_tokenizer(new_path, out)
        carry_chat_template(src, out)


COPY_BLOCK_ROWS = 8192  # rows copied per block by build_matrix
METHODS = (
    "copied", "averaged", "byte-fallback", "random", "whitespace-space", "mean-of-all", "padding", "unused"
)  # fmt: skip
KEPT_ROWS = ("copied", "whitespace-space", "unused")  # rows copied bit for bit from the old id they name


def _check_paths(
    model_dir: str | Path, out_dir: str | Path, init: str, overwrite: bool, inputs: list[str | Path | None]
) -> tuple[Path, Path]:
    model_dir = require_dir(model_dir, "model directory")
    if overlap(Path(out_dir), model_dir):
        raise VikhrError("--out must differ from --model (the input is read while the output is written)")
    others = [p for p in inputs if p is not None]
    out_dir = require_output_dir(out_dir, overwrite, inputs=[model_dir, *others])
    if init not in ("mean", "random", "mean-of-all"):
        raise VikhrError(f"unknown --init {init!r} (choose mean, random or mean-of-all)")
    return model_dir, out_dir


def _embedding_sources(
    headers: list[SafetensorsHeader], cfg: dict[str, Any], model_dir: Path
) -> tuple[SafetensorsHeader, SafetensorsHeader | None]:
    """The shards holding the input embedding and (untied) LM head, shapes checked."""
    embed_src = _locate(headers, EMBED)
    if embed_src is None:
        raise VikhrError(f"tensor {EMBED} not found in {model_dir} (is this a Mistral/Llama checkpoint?)")
    head_src = _locate(headers, LM_HEAD)
    if head_src is None and not ties_word_embeddings(cfg, model_dir / "config.json"):
        raise VikhrError(
            f"tensor {LM_HEAD} not found in {model_dir} and its config.json {how_tying_is_set(cfg)}: set "
            "tie_word_embeddings to true there if the model ties its head to the embedding"
        )
    if head_src is not None and head_src.tensors[LM_HEAD].shape != embed_src.tensors[EMBED].shape:
        raise VikhrError(f"{LM_HEAD} and {EMBED} have different shapes in {model_dir}")
    return embed_src, head_src


def _write_shards(
    headers: list[SafetensorsHeader],
    replacements: dict[str, Callable[[], Any]],
    rows: int,
    work: Path,
    show_progress: bool,
) -> dict[str, int]:
    """Stream every shard to `work`, swapping in the replaced tensors (`rows` rows each); returns the
    shard sizes. A replacement is built when its shard is written and dropped after it, so at most
    one shard's new matrices are in memory (the embedding and LM head usually sit in different shards)."""
    from vikhr.progress_bar import progress_bar

    def nbytes(e: Any) -> int:
        return (e.end - e.start) // max(1, e.shape[0]) * rows if e.name in replacements else e.end - e.start

    total = sum(nbytes(e) for h in headers for e in h.tensors.values())
    sizes = {}
    with progress_bar(
        total=total, unit="B", unit_scale=True, desc="writing shards", show=show_progress
    ) as bar:
        for h in headers:
            mine = {k: build() for k, build in replacements.items() if k in h.tensors}
            sizes[h.path.name] = _write_shard(h, work / h.path.name, mine, bar.update)
            del mine
    return sizes


def _write_shard(
    src: SafetensorsHeader, path: Path, replacements: dict[str, Any], progress: Callable[[int], Any]
) -> int:
    """Write the shard `src` to `path` with the named tensors replaced by in-memory torch tensors;
    every other tensor is copied byte for byte. Returns the data size in bytes."""
    layout = {
        name: (safetensors_dtype(replacements[name].dtype), tuple(replacements[name].shape))
        if name in replacements
        else entry
        for name, entry in src.tensors.items()
    }
    with open(src.path, "rb") as fin, SafetensorsWriter(path, layout, src.metadata) as out:
        for name, entry in src.tensors.items():
            if name in replacements:
                progress(out.add(name, replacements[name]))
            else:
                out.copy(entry, fin, progress)
        out.finish()
    return out.size


def _write_side_files(
    model_dir: Path, work: Path, sizes: dict[str, int], new: Vocabulary, added_parameters: int
) -> None:
    """The shard index with its new total size (and parameter count, where transformers wrote one: the
    old one plus `added_parameters`), every other non-weight file, and the new tokenizer."""
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        metadata = index.setdefault("metadata", {})
        metadata["total_size"] = sum(sizes.values())
        if type(metadata.get("total_parameters")) is int:
            metadata["total_parameters"] += added_parameters
        (work / index_path.name).write_text(json.dumps(index, indent=2), encoding="utf-8")
    for item in model_dir.iterdir():
        skip = (
            item.name.endswith((".safetensors", ".bin", ".pt", ".pth"))
            or _old_tokenizer_file(item.name)
            or item.name in ("config.json", index_path.name)
            or item.name.startswith(".")  # hidden: VCS files, and our own lock when --out is inside
        )
        if item.is_file() and not skip:
            shutil.copy2(item, work / item.name)
    _write_tokenizer(Path(new.path), work)


def _write_model_config(
    cfg: dict[str, Any], work: Path, padded: int, old: Vocabulary, tok: Tokenizer, pad: int | None
) -> None:
    """config.json (and generation_config.json when present) with the new vocabulary's size and the
    ids of the new tokenizer `tok` (`pad`: its PAD). Both files move their ids alike: generate()
    reads generation_config.json alone."""
    cfg["vocab_size"] = padded
    _move_special_ids(cfg, old, tok, pad)
    (work / "config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    gen_cfg = work / "generation_config.json"
    if gen_cfg.is_file():
        g = read_json_object(gen_cfg)
        _move_special_ids(g, old, tok, pad)
        gen_cfg.write_text(json.dumps(g, indent=2), encoding="utf-8")


def _move_special_ids(section: dict[str, Any], old: Vocabulary, tok: Tokenizer, pad: int | None) -> None:
    """BOS and PAD: the new tokenizer's, where it names none the old id's token at its new id; EOS: the
    new tokenizer's with the model's other stop tokens (see _stop_ids). An id the file lacks is added
    only where the new tokenizer names one."""
    for key, named in (("bos_token_id", tok.bos_id), ("pad_token_id", pad)):
        if named is not None:
            section[key] = named
        elif key in section:
            section[key] = _new_id(section[key], old, tok)
    if tok.eos_id is not None or "eos_token_id" in section:
        section["eos_token_id"] = _stop_ids(section.get("eos_token_id"), tok.eos_id, old, tok)


def _new_id(old_id: Any, old: Vocabulary, tok: Tokenizer) -> int | None:
    """The new id of the old vocabulary's token `old_id` (a replaced vocabulary moves it), None
    where the new vocabulary lacks it or `old_id` names no token."""
    if isinstance(old_id, bool) or not isinstance(old_id, int) or not 0 <= old_id < len(old.pieces):
        return None
    return tok.piece_to_id(old.pieces[old_id])


def _stop_ids(before: Any, eos_id: int | None, old: Vocabulary, tok: Tokenizer) -> int | list[int] | None:
    """The new tokenizer's EOS; where the model stopped on a list of tokens (Llama-3 instruct models
    stop on <|eot_id|>, <|eom_id|> and <|end_of_text|>), that list with each token's new id (the
    tokens the new vocabulary lacks dropped) and the EOS in it. Where the new tokenizer names no
    EOS, the old stop ids moved to their tokens' new ids (None where none is left)."""
    if not isinstance(before, list):
        return eos_id if eos_id is not None else _new_id(before, old, tok)
    ids = []
    for i in before:
        new_id = _new_id(i, old, tok)
        if new_id is not None and new_id not in ids:
            ids.append(new_id)
    if eos_id is None:
        return ids or None
    return ids if eos_id in ids else [*ids, eos_id]


def _write_init_log(work: Path, plan: list[TokenInit], old: Vocabulary) -> Counter:
    """How every row of the new matrices was made (INIT_LOG); returns the count per method."""
    log = [
        {"id": i, "token": s.token, "method": s.method, "source_pieces": [old.pieces[j] for j in s.old_ids]}
        for i, s in enumerate(plan)
    ]
    (work / INIT_LOG).write_text(json.dumps(log, ensure_ascii=False, indent=0), encoding="utf-8")
    return Counter(s.method for s in plan)


def adapt_vocab(
    model_dir: str | Path,
    old_tokenizer: str | Path,
    new_tokenizer: str | Path,
    out_dir: str | Path,
    init: Init = "mean",
    pad_to_multiple: int | None = None,
    whitespace: WhitespacePolicy = "mean",
    seed: int = 0,
    overwrite: bool = False,
    show_progress: bool = True,
    id_map_path: str | Path | None = None,
) -> dict[str, Any]:
    """Adapt the checkpoint in `model_dir` to `new_tokenizer`, writing `out_dir`; returns the summary."""
    model_dir, out_dir = _check_paths(
        model_dir, out_dir, init, overwrite, [old_tokenizer, new_tokenizer, id_map_path]
    )
    cfg = _load_config(model_dir)
    from vikhr.convert.mistral import check_hf_tensors  # (the converter's layout; imports torch)

    check_hf_tensors(model_dir, cfg)  # a tensor the config implies and the shards lack is not copied
    headers = checkpoint_headers(model_dir)
    tied = ties_word_embeddings(cfg, model_dir / "config.json")
    embed_src, head_src = _embedding_sources(headers, cfg, model_dir)
    rows = embed_src.tensors[EMBED].shape[0]
    # A slow tokenizer's .model is the model's with the tokens its added_tokens.json adds.
    old = with_added_tokens(load_vocabulary(old_tokenizer), rows)
    new = load_vocabulary(new_tokenizer)
    new_tok = load(new.path)
    new_pad = pad_id(new_tok)  # (a tokenizer_config.json naming a PAD its vocabulary lacks: refused now)
    _check_vocab_sizes(old, rows, cfg.get("vocab_size"), model_dir)
    _check_old_tokenizer_is_the_models(old, model_dir, rows)
    _check_old_tokenizer_has_the_added_tokens(old, model_dir, rows)
    id_map = find_id_map(new, id_map_path)
    if id_map is not None:
        check_id_map(id_map, old, new)
    padded = _round_up(new.size, pad_to_multiple)
    plan = plan_rows(old, new, init, whitespace, padded, id_map)

    # The rows of old tokens: not a padded checkpoint's spare rows past them, nor the gaps in their ids.
    token_ids = [i for i, kind in enumerate(old.kinds) if kind != "none"]
    replacements = {EMBED: functools.partial(_adapted_matrix, embed_src, EMBED, plan, seed, token_ids)}
    if head_src is not None:
        # A tied model that also stores the head keeps it equal to the embedding (random rows
        # drawn apart would untie it); an untied head draws its own.
        head = (embed_src, EMBED, seed) if tied else (head_src, LM_HEAD, seed + 1)
        replacements[LM_HEAD] = functools.partial(_adapted_matrix, head[0], head[1], plan, head[2], token_ids)

    with output_dir(out_dir) as work:
        sizes = _write_shards(headers, replacements, len(plan), work, show_progress)
        # transformers counts a tied model's one matrix once
        added_parameters = (len(plan) - rows) * embed_src.tensors[EMBED].shape[1] * (1 if tied else 2)
        _write_side_files(model_dir, work, sizes, new, added_parameters)
        _write_model_config(cfg, work, padded, old, new_tok, new_pad)
        counts = _write_init_log(work, plan, old)
        summary: dict[str, Any] = {
            "old_vocab_size": old.size,
            "new_vocab_size": new.size,
            "padded_vocab_size": padded,
            "init": init,
            "whitespace_pieces": whitespace,
            "seed": seed,
            "tied_embeddings": tied,
            "adapted_tensors": sorted(replacements),
            "counts": {m: counts.get(m, 0) for m in METHODS},
            "model": str(model_dir),
            "old_tokenizer": str(old.path),
            "new_tokenizer": str(new.path),
            "id_map": str(id_map.path) if id_map is not None else None,
        }
        (work / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return summary
