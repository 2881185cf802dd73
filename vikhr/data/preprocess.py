"""Python API of the pre-tokenizer (the work itself is in `vikhr._core`)."""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vikhr.errors import VikhrError

# Megatron's --tokenizer-type values that vikhr implements, and how each one tokenizes:
# (tokenizer file kind, prepend BOS). Megatron's Llama2Tokenizer prepends BOS to every document;
# its HuggingFaceTokenizer applies the tokenizer's post-processor (add_special_tokens=True).
TOKENIZER_TYPES: dict[str, tuple[str, bool]] = {
    "SentencePieceTokenizer": ("sentencepiece", False),
    "GPTSentencePieceTokenizer": ("sentencepiece", False),
    "Llama2Tokenizer": ("sentencepiece", True),
    "HuggingFaceTokenizer": ("huggingface", False),
}

_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>")


@dataclass
class PreprocessSummary:
    """What one pre-tokenization run wrote."""

    documents: int
    empty_documents: int
    skipped: int
    bytes: int
    tokens: int
    seconds: float
    threads: int
    dtype: str
    outputs: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (
            f"documents {self.documents:,}, tokens {self.tokens:,}, skipped {self.skipped:,}, "
            f"empty {self.empty_documents:,}, {self.mb_per_s:.1f} MB/s, {self.tokens_per_s:,.0f} tokens/s, "
            f"{self.seconds:.1f} s, {self.threads} threads -> {', '.join(self.outputs)}"
        )


@dataclass
class IndexSummary:
    """Counts of one `{prefix}.bin/.idx` pair (validated against each other)."""

    prefix: str
    dtype: str
    documents: int
    empty_documents: int
    sequences: int
    tokens: int
    bin_bytes: int
    first_tokens: list[int] = field(default_factory=list)
    first_text: str | None = None


def expand_inputs(patterns: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files named by paths or glob patterns, in the given order (each glob sorted)."""
    files: list[Path] = []
    for pattern in patterns:
        p = str(pattern)
        if any(c in p for c in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise VikhrError(f"--input pattern matches no file: {p}")
            files.extend(Path(m) for m in matches)
        else:
            path = Path(p)
            # Any readable non-directory will do (a named pipe, /dev/stdin).
            if not path.exists() or path.is_dir():
                raise VikhrError(f"input file not found: {p} (check --input)")
            files.append(path)
    if not files:
        raise VikhrError("no input files (give --input)")
    return files


def _hf_tokenizer_file(path: Path) -> Path:
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise VikhrError(f"tokenizer.json not found: {path} (give the file or its directory)")
    return path


def _hf_eos_id(path: Path) -> int | None:
    """EOS id of a tokenizer.json: tokenizer_config.json's eos_token if present, else a usual name."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(path))
    names: list[str] = []
    config = path.parent / "tokenizer_config.json"
    if config.is_file():
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str):
            names.append(eos)
    for name in [*names, *_EOS_CANDIDATES]:
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return int(token_id)
    return None


def preprocess(
    inputs: Sequence[str | os.PathLike[str]],
    output_prefix: str | os.PathLike[str],
    tokenizer_model: str | os.PathLike[str],
    *,
    tokenizer_type: str = "SentencePieceTokenizer",
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    workers: int = 0,
    skip_invalid: bool = False,
    progress: bool | Callable[[int, int, int, int], None] = False,
    batch_bytes: int = 1 << 20,
) -> PreprocessSummary:
    """Tokenize JSONL `inputs` into `{output_prefix}_{key}_document.bin/.idx`, one pair per key.

    `workers` tokenizer threads (0 = all cores); the output does not depend on it. A bad line
    (invalid JSON or UTF-8, key missing or not a string) raises VikhrError naming file and line,
    unless `skip_invalid`, which skips and counts it. `progress=True` shows a tqdm bar.
    """
    from vikhr import _core

    if tokenizer_type not in TOKENIZER_TYPES:
        raise VikhrError(
            f"--tokenizer-type {tokenizer_type} is not supported; use one of {', '.join(TOKENIZER_TYPES)}"
        )
    kind, prepend_bos = TOKENIZER_TYPES[tokenizer_type]
    files = expand_inputs(inputs)
    model = Path(tokenizer_model)
    eod_id: int | None = None
    if kind == "huggingface":
        model = _hf_tokenizer_file(model)
        if append_eod:
            eod_id = _hf_eos_id(model)
            if eod_id is None:
                raise VikhrError(f"{model}: no EOS token found for --append-eod (add tokenizer_config.json)")
    elif not model.is_file():
        raise VikhrError(f"tokenizer model not found: {model} (check --tokenizer-model)")
    if not json_keys:
        raise VikhrError("--json-keys needs at least one key")
    if len(set(json_keys)) != len(json_keys):
        raise VikhrError(f"--json-keys has duplicates: {' '.join(json_keys)}")

    bar = None
    callback: Callable[[int, int, int, int], None] | None = None
    if callable(progress):
        callback = progress
    elif progress:
        from tqdm import tqdm

        bar = tqdm(unit=" docs", desc="tokenizing", smoothing=0.1, dynamic_ncols=True)
        started = time.perf_counter()

        def callback(documents: int, nbytes: int, tokens: int, skipped: int) -> None:
            bar.update(documents - bar.n)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{nbytes / 1e6 / elapsed:.1f} MB/s, skipped {skipped}", refresh=False)

    try:
        raw = _core.preprocess(
            [str(f) for f in files],
            str(output_prefix),
            list(json_keys),
            kind,
            str(model),
            append_eod=append_eod,
            eod_id=eod_id,
            prepend_bos=prepend_bos,
            add_special_tokens=kind == "huggingface",
            threads=workers,
            skip_invalid=skip_invalid,
            batch_bytes=batch_bytes,
            progress=callback,
        )
    except ValueError as e:
        raise VikhrError(str(e)) from None
    except OSError as e:
        raise VikhrError(f"{e} (check the input and output paths)") from None
    finally:
        if bar is not None:
            bar.close()
    return PreprocessSummary(**raw)


def _first_sequence(prefix: str, dtype: str, n_tokens: int) -> list[int]:
    import numpy as np

    header = 9 + 8 + 1 + 8 + 8
    with open(prefix + ".idx", "rb") as f:
        f.seek(9 + 8 + 1)
        sequences = int(np.frombuffer(f.read(8), dtype="<u8")[0])
        if sequences == 0:
            return []
        f.seek(header)
        length = int(np.frombuffer(f.read(4), dtype="<i4")[0])
    count = min(length, n_tokens)
    data = np.fromfile(prefix + ".bin", dtype=np.dtype(dtype).newbyteorder("<"), count=count)
    return [int(x) for x in data]


def _decode(tokenizer_model: Path, ids: list[int]) -> str:
    if tokenizer_model.suffix == ".json" or tokenizer_model.is_dir():
        import tokenizers

        return tokenizers.Tokenizer.from_file(str(_hf_tokenizer_file(tokenizer_model))).decode(ids)
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_model)).decode(ids)


def inspect(
    prefix: str | os.PathLike[str],
    tokenizer_model: str | os.PathLike[str] | None = None,
    n_tokens: int = 32,
) -> IndexSummary:
    """Validate `{prefix}.idx` against `{prefix}.bin` and return its counts and first tokens."""
    from vikhr import _core

    prefix = str(prefix)
    for suffix in (".idx", ".bin"):
        if not Path(prefix + suffix).is_file():
            raise VikhrError(f"{prefix}{suffix} not found (give the prefix without .bin/.idx)")
    try:
        info = _core.inspect_index(prefix)
    except ValueError as e:
        raise VikhrError(f"invalid indexed dataset: {e}") from None
    summary = IndexSummary(
        prefix=prefix,
        dtype=info["dtype"],
        documents=info["documents"],
        empty_documents=info["empty_documents"],
        sequences=info["sequences"],
        tokens=info["tokens"],
        bin_bytes=info["bin_bytes"],
    )
    summary.first_tokens = _first_sequence(prefix, summary.dtype, n_tokens)
    if tokenizer_model is not None and summary.first_tokens:
        summary.first_text = _decode(Path(tokenizer_model), summary.first_tokens)
    return summary


def merge(prefixes: Sequence[str | os.PathLike[str]], output_prefix: str | os.PathLike[str]) -> IndexSummary:
    """Concatenate indexed datasets (same dtype) into one, as Megatron's merge tool does."""
    from vikhr import _core

    names = [str(p) for p in prefixes]
    if not names:
        raise VikhrError("nothing to merge (give at least one input prefix)")
    for name in names:
        if not (Path(name + ".idx").is_file() and Path(name + ".bin").is_file()):
            raise VikhrError(f"{name}.bin/.idx not found (give prefixes without .bin/.idx)")
    if str(output_prefix) in names:
        raise VikhrError(f"the merge output {output_prefix} is also an input; choose another prefix")
    try:
        _core.merge_datasets(names, str(output_prefix))
    except OSError as e:
        raise VikhrError(f"merge failed: {e}") from None
    return inspect(output_prefix)
