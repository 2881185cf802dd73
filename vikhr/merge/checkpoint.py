"""`vikhr merge`: two HF safetensors checkpoints of one architecture and vocabulary merged tensor by tensor.

The output has model A's shard layout: each of A's shards is rewritten with every tensor
interpolated between A and B (vikhr.merge.slerp) at the t the schedule gives its name
(vikhr.merge.schedule), one tensor pair in memory at a time (vikhr.adapt.safetensors_io). Every
check — same config architecture, tensor names, shapes and dtypes, the same vocabulary (files of one
name compared, else the tokenizers' pieces) — runs before anything is written (a NaN or inf weight,
found while merging, stops it with nothing written); a tied model's stored head is taken as its
embedding, and so is a tied model's head beside an untied one (the merge is untied, see `_untie`); the
output directory, outside both models' directories, appears only when complete (vikhr.atomic).
config.json comes from A (from B when A lacks one); where the two contexts
(max_position_embeddings) differ, config.json gets the longer. The chat files (CHAT_FILES: the chat
template, the special tokens' names, the generation config) and the vocabulary files they are read
with come from the model whose chat template
the merge takes: the one that has a template where only one has (a base model and its
instruction-tuned successor), `chat_template_from` where given (a model with a template), else A;
two different templates (compared as Jinja reads them: a final newline is none) need
`chat_template_from`. Where the two models stop at different EOS ids (generation_config.json's, else
config.json's), generation_config.json and config.json both list the ids of both models, so that a
merge stops where either model learnt to, whichever of the two files a tool reads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from vikhr.adapt.safetensors_io import (
    INDEX,
    SafetensorsHeader,
    TensorEntry,
    checkpoint_headers,
    load_tensor,
    write_computed,
)
from vikhr.atomic import output_dir
from vikhr.convert.tied import TIE_WORD_EMBEDDINGS, how_tying_is_set, ties_word_embeddings
from vikhr.errors import (
    VikhrError,
    not_an_hf_model_dir,
    overlap,
    read_json_object,
    require_dir,
    require_output_dir,
)
from vikhr.merge.schedule import Schedule
from vikhr.merge.slerp import METHODS, Method, interpolate
from vikhr.sft.hf_chat import as_jinja_reads, chat_template_in
from vikhr.tokenizer.load import CHAT_TEMPLATE_FILE

SUMMARY = "merge_summary.json"
# config.json fields that must agree for the two checkpoints to be one architecture. Tying the LM head to
# the embedding (TIE_WORD_EMBEDDINGS) may differ: the tied side's head is its embedding (`_untie`).
ARCHITECTURE_KEYS = (
    "model_type",
    "architectures",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "hidden_act",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "sliding_window",
)
# Files that define the vocabulary: both models must have the same ones where both have them.
VOCABULARY_FILES = ("tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json")
GENERATION_CONFIG = "generation_config.json"
SIDE_FILES = (
    "config.json",
    GENERATION_CONFIG,
    *VOCABULARY_FILES,
    "tokenizer_config.json",
    "special_tokens_map.json",
    CHAT_TEMPLATE_FILE,
)
# Why the chat files are A's where neither model's template decides (merge_summary.json's chat_files).
SAME_TEMPLATE = "the same in both"
NO_TEMPLATE = "neither model has one"
# Files that go with the chat template: all from one model (see the module doc).
CHAT_FILES = (GENERATION_CONFIG, "tokenizer_config.json", "special_tokens_map.json", CHAT_TEMPLATE_FILE)
VOCABULARY_TENSORS = ("embed_tokens", "lm_head")
HEAD, EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"
# merge_summary.json's key for the model whose tied head the merge unties (`_untie`).
UNTIED_FROM = "lm_head_untied_from"
# The context length: may differ between the models; the merge takes the longer.
CONTEXT_KEY = "max_position_embeddings"
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def _check_paths(
    model_a: str | Path, model_b: str | Path, out: str | Path, overwrite: bool
) -> tuple[Path, Path, Path]:
    a, b = require_dir(model_a, "model A directory"), require_dir(model_b, "model B directory")
    if a.resolve() == b.resolve():  # a copy at any t: surely a mistyped path
        raise VikhrError(f"model A and model B are the same directory ({a}); give the two models to merge")
    # Inside a model's directory the merge's shards would be read as that model's by a later glob of its
    # *.safetensors, or by a rerun of this merge. The outermost such model is named (one may hold the other).
    holding = [
        (model, name, where)
        for model, name in ((a, "A"), (b, "B"))
        if (where := overlap(Path(out), model, input_whole=True)) is not None
    ]
    if holding:
        model, name, where = min(holding, key=lambda held: len(held[0].resolve().parts))
        beside = model.resolve().parent / f"{model.resolve().name}-merged"
        raise VikhrError(
            f"--out {out} {'is' if where == 'is' else 'is inside'} model {name}'s directory {model}, which "
            f"the merge reads: give a directory outside both models, e.g. --out {beside}"
        )
    return a, b, require_output_dir(out, overwrite, inputs=[a, b])


def _check_configs(a: Path, b: Path) -> tuple[int, int | None, tuple[bool, bool]]:
    """The number of decoder layers, once A's and B's config.json agree on the architecture, the
    merged model's context: the longer of the two when they differ (else None), and whether A and B
    tie their LM head to the embedding. The context is no shape — RoPE has no weights per position —
    and an instruction-tuned successor is often trained on longer sequences than the model it started
    from. Tying may differ too: a fine-tune may untie its base's head (see `_untie`)."""
    configs = []
    for d in (a, b):
        if not (d / "config.json").is_file():
            raise not_an_hf_model_dir(d)
        configs.append(read_json_object(d / "config.json"))
    cfg_a, cfg_b = configs
    contexts = (cfg_a.get(CONTEXT_KEY), cfg_b.get(CONTEXT_KEY))
    longer = None
    if contexts[0] != contexts[1] and all(isinstance(n, int) and n > 0 for n in contexts):
        longer = max(contexts)
    shapes = _model_shapes(a, b, cfg_a, cfg_b)
    # A family vikhr runs is compared as it reads (defaults filled in, RoPE, activation and
    # sliding window included: the merge takes A's config.json); another by its keys as written.
    pairs = {key: (cfg_a.get(key), cfg_b.get(key)) for key in ("model_type", "architectures")}
    pairs.update(shapes or {key: (cfg_a.get(key), cfg_b.get(key)) for key in ARCHITECTURE_KEYS})
    pairs.pop(TIE_WORD_EMBEDDINGS, None)  # may differ (`_untie`)
    ties = (ties_word_embeddings(cfg_a, a / "config.json"), ties_word_embeddings(cfg_b, b / "config.json"))
    for key, (value_a, value_b) in pairs.items():
        if value_a != value_b:
            if key == "vocab_size":
                raise VikhrError(
                    f"config.json differs in vocab_size: {value_a!r} in {a}, {value_b!r} in {b}: different "
                    f"vocabularies; {_vocabulary_fix(a, b)}"
                )
            raise VikhrError(
                f"config.json differs in {key}: {value_a!r} in {a}, {value_b!r} in {b} "
                "(different architectures; merging needs the same architecture and vocabulary)"
            )
    layers = cfg_a.get("num_hidden_layers")
    if not isinstance(layers, int) or layers < 1:
        raise VikhrError(f"{a / 'config.json'}: num_hidden_layers is {layers!r}, not a positive integer")
    return layers, longer, ties


# config.json's name of each field of vikhr's model config that it names otherwise: a difference is
# told in the key the user finds in the file.
_CONFIG_JSON_NAMES = {
    "num_layers": "num_hidden_layers",
    "ffn_hidden_size": "intermediate_size",
    "num_kv_heads": "num_key_value_heads",
    "kv_channels": "head_dim",
    "norm_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
    "rope_scaling_factor": "rope_scaling factor",
    "rope_low_freq_factor": "rope_scaling low_freq_factor",
    "rope_high_freq_factor": "rope_scaling high_freq_factor",
    "rope_original_max_seq_len": "rope_scaling original_max_position_embeddings",
}


def _model_shapes(a: Path, b: Path, cfg_a: dict[str, Any], cfg_b: dict[str, Any]) -> dict[str, tuple]:
    """(A's, B's) value of each field of vikhr's model config when both configs read as one of
    its families, else {}; by config.json's names, the head width as read (written or implied)."""
    from dataclasses import asdict

    from vikhr.convert import hf_config_to_model_config

    try:
        model_a = hf_config_to_model_config(cfg_a, str(a / "config.json"))
        model_b = hf_config_to_model_config(cfg_b, str(b / "config.json"))
    except VikhrError:
        return {}
    shape_a = {**asdict(model_a), "kv_channels": model_a.head_dim}
    shape_b = {**asdict(model_b), "kv_channels": model_b.head_dim}
    # Neither the initialisation's scale nor the context (CONTEXT_KEY, read as max_seq_len) shapes a weight.
    unshaped = ("init_std", "max_seq_len")
    return {
        _CONFIG_JSON_NAMES.get(key, key): (value, shape_b[key])
        for key, value in shape_a.items()
        if key not in unshaped
    }


def _vocabulary_fix(a: Path, b: Path) -> str:
    """How to merge two models of other vocabularies: the paper's merge of an adapted model back toward
    its original takes the original in the adapted vocabulary, the model adapt-vocab wrote to start the
    adapted one from, with as many rows as the adapted model has (`_padding`). The original is the model
    of fewer embedding rows, else of fewer tokenizer tokens, whichever order the two are given in; where
    their sizes cannot tell, both sizes are said and the command for either way round. It ends in a
    command: an error line's tail, copied as it is."""
    sizes = {model: _vocabulary_sizes(model) for model in (a, b)}
    for which in (0, 1):  # the rows, then the tokens
        size_a, size_b = sizes[a][which], sizes[b][which]
        if size_a is not None and size_b is not None and size_a != size_b:
            original, adapted = (a, b) if size_a < size_b else (b, a)
            command, unmatched = _adapt_vocab_command(original, adapted, *sizes[adapted])
            return (
                "merging needs one vocabulary: to merge a model with its successor in an adapted vocabulary, "
                f"merge the successor with the original in that vocabulary, as adapt-vocab writes it"
                f"{unmatched}: {command}"
            )
    told = "; ".join(
        f"{model}: {'?' if rows is None else rows} embedding rows, {'?' if tokens is None else tokens} tokens"
        for model, (rows, tokens) in sizes.items()
    )
    commands = [
        _adapt_vocab_command(original, adapted, *sizes[adapted]) for original, adapted in ((a, b), (b, a))
    ]
    return (
        f"merging needs one vocabulary, and the sizes do not tell which model's was adapted from the "
        f"other's ({told}): merge the successor with the original in its vocabulary, as adapt-vocab "
        f"writes it; where {b} is the successor{commands[0][1]}: {commands[0][0]}; where {a} is"
        f"{commands[1][1]}: {commands[1][0]}"
    )


def _vocabulary_sizes(model: Path) -> tuple[int | None, int | None]:
    """The model's embedding rows and its tokenizer's tokens (None: not read)."""
    from vikhr.adapt.vocab_source import load_vocabulary

    rows = tokens = None
    # Either unread, the refusal is said all the same: only its choice of the original has less to go by.
    with contextlib.suppress(Exception):
        rows = next(
            h.tensors[EMBEDDING].shape[0] for h in checkpoint_headers(model) if EMBEDDING in h.tensors
        )
    with contextlib.suppress(Exception):
        tokens = load_vocabulary(model).size
    return rows, tokens


def _adapt_vocab_command(
    original: Path, adapted: Path, rows: int | None, tokens: int | None
) -> tuple[str, str]:
    """The adapt-vocab command that writes `original` in the vocabulary of `adapted` (of `rows` embedding
    rows and `tokens` tokens), padded as `_padding` says, and what to say where no padding gives them."""
    padding, unmatched = _padding(adapted, rows, tokens)
    command = shlex.join(
        [
            "vikhr",
            "adapt-vocab",
            "--model",
            str(original),
            "--old-tokenizer",
            str(original),
            "--new-tokenizer",
            str(adapted),
            *padding,
            "--out",
            str(original.resolve().parent / f"{original.resolve().name}-in-{adapted.resolve().name}-vocab"),
        ]
    )
    return command, unmatched


def _padding(adapted: Path, rows: int | None, tokens: int | None) -> tuple[list[str], str]:
    """(the `--pad-to-multiple N` that gives adapt-vocab's output the adapted model's embedding `rows`
    where these are more than its tokenizer's `tokens`, as `adapt-vocab --pad-to-multiple` wrote them;
    what to say where no N up to MAX_PAD_MULTIPLE gives them). Nothing where either is unknown."""
    from vikhr.tokenizer.train import MAX_PAD_MULTIPLE

    if rows is None or tokens is None or rows <= tokens:
        return [], ""
    multiple = pad_multiple_for(tokens, rows, MAX_PAD_MULTIPLE)
    if multiple is None:
        return [], (
            f" (no --pad-to-multiple up to {MAX_PAD_MULTIPLE} rounds the {tokens} tokens of {adapted}'s "
            f"tokenizer up to its {rows} embedding rows: the command writes {tokens} rows, to pad to {rows} "
            "before the merge)"
        )
    return ["--pad-to-multiple", str(multiple)], ""


def pad_multiple_for(tokens: int, rows: int, largest: int) -> int | None:
    """The `--pad-to-multiple` N ≤ `largest` that rounds `tokens` up to exactly `rows`: the smallest
    power of two that does, else the smallest N that does (None: none does). N rounds them up to
    `rows` when it divides `rows` and `rows - N < tokens`."""

    def rounds(n: int) -> bool:
        return rows % n == 0 and rows - n < tokens

    powers = (1 << k for k in range(largest.bit_length()) if 1 << k <= largest)
    return next((n for n in powers if rounds(n)), None) or next(
        (n for n in range(rows - tokens + 1, min(rows, largest) + 1) if rounds(n)), None
    )


def _vocabulary_content(path: Path) -> Any:
    """What of a vocabulary file defines the ids: tokenizer.json's model and added tokens, else the bytes."""
    if path.name != "tokenizer.json":
        return path.read_bytes()
    spec = read_json_object(path)
    added = [(t.get("id"), t.get("content")) for t in spec.get("added_tokens") or [] if isinstance(t, dict)]
    return spec.get("model"), added


def _check_vocabulary_files(a: Path, b: Path) -> None:
    """The vocabulary files both models have must define the same ids; where they share none (a
    `.model` beside a tokenizer.json), the vocabularies are loaded and compared piece by piece, and so
    is each `.model` or tokenizer.json only one model has (the merge may take it, see _copy_side_files)
    where that model is read with it: a `.model` beside the tokenizer.json that adds tokens to it
    (ChatML's <|im_end|>) is not, and its export through Megatron carries the tokenizer.json alone."""
    compared = False
    for name in VOCABULARY_FILES:
        both = (a / name).is_file() and (b / name).is_file()
        compared |= both
        if both and _vocabulary_content(a / name) != _vocabulary_content(b / name):
            raise VikhrError(
                f"{name} differs between {a} and {b}: the models have different vocabularies; "
                f"{_vocabulary_fix(a, b)}"
            )
    if not all(any((m / n).is_file() for n in VOCABULARY_FILES) for m in (a, b)):
        return
    pieces_of = functools.cache(_pieces)  # each tokenizer file loaded once: a large one takes seconds

    def pieces(model: Path) -> list[str] | None:
        file = _tokenizer_file(model)
        return None if file is None else pieces_of(file)

    if not compared:
        pieces_a, pieces_b = pieces(a), pieces(b)
        if pieces_a is not None and pieces_b is not None and pieces_a != pieces_b:
            raise VikhrError(
                f"{a} and {b} have different vocabularies (their tokenizer files give other pieces "
                f"to the same ids): {_vocabulary_fix(a, b)}"
            )
        return
    for model, other in ((a, b), (b, a)):
        for name in ("tokenizer.model", "tokenizer.json"):
            if (
                (model / name).is_file()
                and not (other / name).is_file()
                and _tokenizer_file(model) == model / name
            ):
                mine, others = pieces(model / name), pieces(other)
                if mine is not None and others is not None and mine != others:
                    raise VikhrError(
                        f"{a} and {b} have different vocabularies ({name} of {model} gives other pieces "
                        f"to the same ids than {other}'s tokenizer): {_vocabulary_fix(a, b)}"
                    )


def _tokenizer_file(model: Path) -> Path | None:
    """The tokenizer file vikhr reads for `model`, a directory or a tokenizer file (None: none)."""
    from vikhr.tokenizer.load import resolve_tokenizer_file

    try:
        return resolve_tokenizer_file(model)
    except VikhrError:
        return None  # vocab.json / merges.txt only: its files were compared by name above


def _pieces(file: Path) -> list[str] | None:
    """The piece of every id of the tokenizer `file` (None: not one vikhr reads)."""
    from vikhr.tokenizer.load import load

    try:
        tok = load(file)
    except VikhrError:
        return None
    return [tok.id_to_piece(i) for i in range(tok.vocab_size)]


def _entries_by_name(headers: list[SafetensorsHeader]) -> dict[str, tuple[TensorEntry, Path]]:
    return {name: (e, h.path) for h in headers for name, e in h.tensors.items()}


def _tied_head_aliased(
    entries_a: dict[str, tuple[TensorEntry, Path]], entries_b: dict[str, tuple[TensorEntry, Path]]
) -> bool:
    """Tied models (the same `tie_word_embeddings` in both, checked before): one may store its head as
    well, which transformers replaces with the embedding on load. A head A stores is the merge of the
    two embeddings (at the embedding's t: the output stays tied), one only B stores is left out (the
    output has A's tensors). Whether A's head is now the embeddings' merge."""
    if HEAD in entries_b and HEAD not in entries_a:
        del entries_b[HEAD]
    if HEAD in entries_a and EMBEDDING in entries_a and EMBEDDING in entries_b:
        entries_a[HEAD], entries_b[HEAD] = entries_a[EMBEDDING], entries_b[EMBEDDING]
        return True
    return False


def _untie(
    headers_a: list[SafetensorsHeader],
    entries_a: dict[str, tuple[TensorEntry, Path]],
    entries_b: dict[str, tuple[TensorEntry, Path]],
    ties: tuple[bool, bool],
    a: Path,
    b: Path,
) -> tuple[list[SafetensorsHeader], dict[str, str]]:
    """One model ties its head to the embedding, the other does not (a fine-tune that untied its base's):
    the tied side's head is its embedding, as transformers loads it (a head it stores is ignored), and
    the merge stores a head of its own, merged at the head's t. Returns A's shard layout with the head
    beside the embedding where A (tied) stores none, and the shard that holds it then (for the index)."""
    untied, untied_entries = (b, entries_b) if ties[0] else (a, entries_a)
    if HEAD not in untied_entries:
        said = how_tying_is_set(read_json_object(untied / "config.json"))
        raise VikhrError(
            f"{untied / 'config.json'} {said} but {untied} stores no {HEAD}: set {TIE_WORD_EMBEDDINGS} to "
            "true there if the model ties its head to the embedding"
        )
    tied_entries = entries_a if ties[0] else entries_b
    if EMBEDDING not in tied_entries:
        return headers_a, {}  # told by _check_tensors, as another architecture
    stored = HEAD in tied_entries
    tied_entries[HEAD] = tied_entries[EMBEDDING]
    if not ties[0] or stored:
        return headers_a, {}
    layout = []
    added = {}
    for header in headers_a:
        tensors = header.tensors
        if EMBEDDING in tensors:
            embedding = tensors[EMBEDDING]
            head = TensorEntry(HEAD, embedding.dtype, embedding.shape, embedding.start, embedding.end)
            tensors = {**tensors, HEAD: head}  # written after the embedding; read as it (entries_a)
            added[HEAD] = header.path.name
        layout.append(SafetensorsHeader(header.path, header.metadata, tensors))
    return layout, added


def _check_tensors(
    entries_a: dict[str, tuple[TensorEntry, Path]],
    entries_b: dict[str, tuple[TensorEntry, Path]],
    a: Path,
    b: Path,
) -> None:
    only = {
        model: sorted(mine.keys() - theirs.keys())
        for model, mine, theirs in ((a, entries_a, entries_b), (b, entries_b, entries_a))
    }
    if only[a] or only[b]:
        # Both sides, each with its count: a fix for the first name alone met the next on the rerun.
        said = [
            f"{names[0]}{f' and {len(names) - 1} more' if len(names) > 1 else ''} only in {model}"
            for model, names in only.items()
            if names
        ]
        raise VikhrError(
            f"the models hold other tensors: {', '.join(said)} (merging needs the same architecture)"
        )
    for name in sorted(entries_a):
        ea, eb = entries_a[name][0], entries_b[name][0]
        if ea.shape != eb.shape:
            hint = (
                f"different vocabularies; {_vocabulary_fix(a, b)}"
                if any(v in name for v in VOCABULARY_TENSORS)
                else "different architectures"
            )
            raise VikhrError(
                f"tensor {name} has shape {list(ea.shape)} in {a} but {list(eb.shape)} in {b}: {hint}"
            )
        floats = (ea.dtype in FLOAT_DTYPES, eb.dtype in FLOAT_DTYPES)
        if floats != (True, True) and ea.dtype != eb.dtype:
            raise VikhrError(f"tensor {name} is {ea.dtype} in {a} but {eb.dtype} in {b} (cannot interpolate)")


def _merged_tensor(
    in_a: tuple[TensorEntry, Path], in_b: tuple[TensorEntry, Path], t: float, method: Method
) -> Any:
    import torch

    entry = in_a[0]
    tensor_a, tensor_b = load_tensor(*in_a), load_tensor(*in_b)
    if entry.dtype not in FLOAT_DTYPES:  # integer buffers: nothing to interpolate, they must agree
        if not torch.equal(tensor_a, tensor_b):
            raise VikhrError(
                f"tensor {entry.name} ({entry.dtype}) differs between the models (cannot interpolate)"
            )
        return tensor_a
    try:
        return interpolate(tensor_a, tensor_b, t, method)
    except VikhrError as e:
        raise VikhrError(f"tensor {entry.name}: {e}") from None


def _chat_side(a: Path, b: Path, chat_template_from: str | None) -> tuple[Path, str]:
    """The model whose CHAT_FILES the merge takes, and why (SAME_TEMPLATE or NO_TEMPLATE where the
    two carry one template, or none: A's files)."""
    if chat_template_from not in (None, "a", "b"):
        raise VikhrError(f"chat_template_from must be 'a' or 'b', got {chat_template_from!r}")
    found = {model: chat_template_in(model) for model in (a, b)}
    # compared as Jinja reads them: a final newline (an editor's, a chat_template.jinja's) renders nothing
    templates = {model: as_jinja_reads(f[0]) if f is not None else None for model, f in found.items()}
    if chat_template_from is not None:
        chosen, other = (a, b) if chat_template_from == "a" else (b, a)
        if templates[chosen] is None:
            # The merge would get no template at all (the other's is left out): a swapped A and B.
            elsewhere = (
                f"model {'B' if chosen == a else 'A'} has one, in {found[other][1]}"
                if found[other] is not None
                else "neither model has one: leave the option out"
            )
            raise VikhrError(
                f"--chat-template-from {chat_template_from}: model {chat_template_from.upper()} ({chosen}) "
                f"has no chat template ({elsewhere})"
            )
        return chosen, f"--chat-template-from {chat_template_from}"
    if templates[a] == templates[b]:
        return a, SAME_TEMPLATE if templates[a] is not None else NO_TEMPLATE
    if templates[a] is None or templates[b] is None:
        has, lacks = (b, "A") if templates[a] is None else (a, "B")
        return has, f"model {lacks} has none"
    raise VikhrError(
        f"the models carry different chat templates ({found[a][1]}, {found[b][1]}): give "
        "--chat-template-from a or b, the model whose template the merge is to be prompted in (e.g. the "
        "instruction-tuned one)"
    )


def _stop_ids(model: Path) -> list[int]:
    """The EOS ids the model's generation stops at: its generation_config.json's (one or a list),
    else config.json's, which transformers takes where there is no generation config."""
    value = None
    for name in (GENERATION_CONFIG, "config.json"):
        if (model / name).is_file():
            value = read_json_object(model / name).get("eos_token_id")
            break
    return [i for i in (value if isinstance(value, list) else [value]) if type(i) is int]


def _merged_stops(a: Path, b: Path, chat: Path) -> list[int] | None:
    """Both models' stop ids, `chat`'s first, where the two stop at different ids (else None)."""
    chat_stops, other_stops = _stop_ids(chat), _stop_ids(b if chat == a else a)
    if set(chat_stops) == set(other_stops):
        return None
    return chat_stops + [i for i in other_stops if i not in chat_stops]


def _write_stops(work: Path, stops: list[int]) -> None:
    """generation_config.json and config.json of the merge list `stops` as eos_token_id: transformers'
    generate reads the first, tools that read the model's EOS from config.json the second (a list,
    as in Llama-3.1's config.json; one id where there is one)."""
    value = stops if len(stops) > 1 else stops[0]
    for name in (GENERATION_CONFIG, "config.json"):
        path = work / name
        content = read_json_object(path) if path.is_file() else None
        if content is not None and content.get("eos_token_id") != value:
            _write_json(path, {**content, "eos_token_id": value})


def _copy_side_files(
    a: Path, b: Path, work: Path, sizes: dict[str, int], chat: Path, heads_added: dict[str, str]
) -> None:
    """The shard index (A's, with the output's total size and the shard of each tensor in
    `heads_added`, which A does not store) and SIDE_FILES, from A or else from B;
    CHAT_FILES from `chat` (see `_chat_side`) or else the other model, without that one's chat
    template; the vocabulary files all from one model: `chat`'s if it has any, since its
    tokenizer_config.json says how transformers reads them (B's beside A's bare tokenizer.model gave
    other ids than B's own), else the other's."""
    if (a / INDEX).is_file():
        index = read_json_object(a / INDEX)
        index.setdefault("metadata", {})["total_size"] = sum(sizes.values())
        index["weight_map"] = {**index["weight_map"], **heads_added}
        (work / INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
    other = b if chat == a else a
    vocabulary_of = chat if any((chat / name).is_file() for name in VOCABULARY_FILES) else other
    for name in SIDE_FILES:
        if name in VOCABULARY_FILES:
            sources = [vocabulary_of]
        elif name == CHAT_TEMPLATE_FILE:
            sources = [chat]  # the other's template is not the merge's
        else:
            sources = [chat, other] if name in CHAT_FILES else [a, b]
        source = next((m / name for m in sources if (m / name).is_file()), None)
        if source is not None:
            shutil.copy2(source, work / name)
    config = work / "tokenizer_config.json"
    if config.is_file() and not (chat / config.name).is_file():  # the other's, without its template
        _write_json(config, {k: v for k, v in read_json_object(config).items() if k != "chat_template"})


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _with_context(work: Path, context: int | None) -> None:
    """config.json with the longer context, where the models' differ (see `_check_configs`)."""
    if context is not None:
        _write_json(work / "config.json", {**read_json_object(work / "config.json"), CONTEXT_KEY: context})


def merge_checkpoints(
    model_a: str | Path,
    model_b: str | Path,
    out_dir: str | Path,
    schedule: Schedule,
    method: Method = "slerp",
    overwrite: bool = False,
    show_progress: bool = True,
    chat_template_from: str | None = None,
) -> dict[str, Any]:
    """Merge `model_b` into `model_a` (t = 0 is A, t = 1 is B) into `out_dir`; returns the summary.
    `chat_template_from`: "a" or "b", the model whose chat files the merge takes (module doc)."""
    from vikhr.progress_bar import progress_bar

    if method not in METHODS:
        raise VikhrError(f"unknown merge method {method!r} (choose {' or '.join(METHODS)})")
    a, b, out = _check_paths(model_a, model_b, out_dir, overwrite)
    num_layers, context, ties = _check_configs(a, b)
    _check_vocabulary_files(a, b)
    chat, chat_reason = _chat_side(a, b, chat_template_from)
    headers_a = checkpoint_headers(a)
    entries_a, entries_b = _entries_by_name(headers_a), _entries_by_name(checkpoint_headers(b))
    head_is_embedding = all(ties) and _tied_head_aliased(entries_a, entries_b)
    heads_added: dict[str, str] = {}
    if ties[0] != ties[1]:
        headers_a, heads_added = _untie(headers_a, entries_a, entries_b, ties, a, b)
    _check_tensors(entries_a, entries_b, a, b)
    # A tied model's stored head is its embedding: no t of its own (a filter naming it alone names nothing).
    scheduled = [name for name in entries_a if not (head_is_embedding and name == HEAD)]
    schedule.check_filters(scheduled)
    t_of = {name: schedule.t_for(name, num_layers) for name in scheduled}
    if head_is_embedding:
        t_of[HEAD] = t_of[EMBEDDING]

    def merged(entry: TensorEntry) -> Any:
        return _merged_tensor(entries_a[entry.name], entries_b[entry.name], t_of[entry.name], method)

    total = sum(e.end - e.start for e, _ in entries_a.values())
    with output_dir(out) as work:
        with progress_bar(total=total, unit="B", unit_scale=True, desc="merging", show=show_progress) as bar:
            sizes = {
                h.path.name: write_computed(h, work / h.path.name, merged, bar.update) for h in headers_a
            }
        _copy_side_files(a, b, work, sizes, chat, heads_added)
        _with_context(work, context)
        if ties[0] != ties[1]:
            _write_json(
                work / "config.json", {**read_json_object(work / "config.json"), TIE_WORD_EMBEDDINGS: False}
            )
        stops = _merged_stops(a, b, chat)
        if stops is not None:
            _write_stops(work, stops)
        chat_files = {"from": "model_a" if chat == a else "model_b", "why": chat_reason}
        summary = {
            "method": method,
            "model_a": str(a.resolve()),  # where the inputs were, whatever directory the merge ran from
            "model_b": str(b.resolve()),
            "schedule": schedule.describe(),
            "num_hidden_layers": num_layers,
            **({CONTEXT_KEY: context} if context is not None else {}),
            # Where one model ties its head and the other does not: the merge's head is untied.
            **({UNTIED_FROM: "model_a" if ties[0] else "model_b"} if ties[0] != ties[1] else {}),
            "chat_files": chat_files,
            # Where the two stop at other ids: what the merge stops at.
            **({"eos_token_id": stops} if stops is not None else {}),
            "t": t_of,
        }
        (work / SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
