"""Chat JSONL → two aligned megatron indexed datasets: token ids and the assistant loss mask.

    {prefix}_text_document.bin/.idx   token ids, one document per chat (uint16, or int32 from 65,500 ids)
    {prefix}_mask_document.bin/.idx   one uint8 per token: 1 = assistant token (trained), 0 = context
    {prefix}_sft.json                 template, tokenizer (path, sha256, BOS/EOS), counts, max token id

Both datasets are written through `vikhr.data.indexed` (bytes identical to megatron-core's
`IndexedDatasetBuilder`) and appear only once every chat has been encoded; the metadata is written
last, so a failed run leaves nothing that looks valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

from vikhr.atomic import scratch_file
from vikhr.data import indexed
from vikhr.errors import VikhrError, overlap, require_output_prefix, sigterm_as_interrupt, stops_held
from vikhr.jsonl import record_lines
from vikhr.processes import process_pool
from vikhr.sft.layout import CHAT_ENCODING, read_prepared_sft, sft_datasets, sft_files
from vikhr.sft.own_template import own_template
from vikhr.sft.sources import refuse_a_collection_file
from vikhr.sft.template import (
    AUTO,
    OWN,
    TRIMMED_UNANSWERED,
    Message,
    chat_at,
    control_ids,
    encode_chat,
    load_chat_tokenizer,
    load_for_chats,
    load_for_template,
    template_token_ids,
)
from vikhr.tokenizer.corpus import corpus_sha256
from vikhr.tokenizer.load import Tokenizer, recorded_path


@dataclass
class PrepareSummary:
    prefix: str
    template: str
    tokenizer: str
    tokenizer_sha256: str
    bos_id: int | None  # None: the tokenizer has none (Qwen has no BOS; llama3, Qwen's chatml need no EOS)
    eos_id: int | None
    vocab_size: int
    chats: int
    tokens: int
    loss_tokens: int
    max_token_id: int
    # of the chats, those whose user turns after the last answer (nobody answered them) were left out
    trimmed_unanswered: int = 0
    template_from: str | None = None  # the tokenizer's file whose chat template chose `template`
    template_sha256: str | None = None  # of the Jinja text, for ``own`` (`convert` checks it)
    chat_encoding: int = CHAT_ENCODING  # see vikhr.sft.layout

    def line(self) -> str:
        share = self.loss_tokens / max(self.tokens, 1)
        origin = f" (the tokenizer's own, in {Path(self.template_from).name})" if self.template_from else ""
        trimmed = f" ({self.trimmed_unanswered:,} {TRIMMED_UNANSWERED})" if self.trimmed_unanswered else ""
        return (
            f"{self.prefix}: {self.chats:,} chats{trimmed}, {self.tokens:,} tokens, "
            f"{self.loss_tokens:,} assistant tokens ({100 * share:.1f}%), template {self.template}{origin}"
        )


def _empty_trained_answer(m: Message) -> bool:
    """An answer that teaches the model to end at once (one of weight 0 teaches nothing)."""
    return m.role == "assistant" and m.trained and not m.content.strip() and not m.tool_calls


def prepare_sft(
    input_path: str | Path,
    tokenizer: str | Path,
    output_prefix: str | Path,
    template: str = AUTO,
    max_chats: int | None = None,
    progress: bool = False,
    workers: int = 1,
) -> PrepareSummary:
    """Encode every chat of `input_path` in `template` (AUTO: see `resolve_template`) and write the
    SFT dataset at `output_prefix`, encoding in `workers` processes (the output does not depend on it).

    A malformed chat stops the run with "file:line: problem" (see `vikhr.sft.template.parse_chat`).
    """
    require_output_prefix(output_prefix)
    paths = sft_files(output_prefix)
    _refuse_replacing_an_input(paths, output_prefix, {"--input": input_path, "--tokenizer": tokenizer})
    refuse_a_collection_file(input_path, "sft prepare")
    tok, template, template_from = load_for_chats(tokenizer, template)
    # Hashed as loaded: a tokenizer file replaced while the chats are encoded is not the data's.
    tokenizer_sha256 = corpus_sha256(tok.path)
    paths["meta"].parent.mkdir(parents=True, exist_ok=True)
    # SIGTERM (a `kill`, a job scheduler's stop) stops the run as Ctrl-C does: the writers' scratch
    # files and locks go, the encoding processes are stopped, a dataset at the prefix stays as it was.
    with sigterm_as_interrupt():
        text_writer = indexed.IndexedWriter(
            indexed.dataset_prefix(output_prefix, "text"), indexed.token_dtype(tok.vocab_size)
        )
        try:
            mask_writer = indexed.IndexedWriter(indexed.dataset_prefix(output_prefix, "mask"), "uint8")
        except BaseException:
            text_writer.abort()
            raise
        scratch = contextlib.ExitStack()  # after the writers, which refuse a dataset in use
        tmp_meta = scratch.enter_context(scratch_file(paths["meta"]))  # the metadata, renamed last
        try:
            batches = _line_batches(input_path, max_chats)
            # Closed by `scratch` even on an error: that stops the encoding processes.
            encoded = scratch.enter_context(
                contextlib.closing(_encoded_batches(input_path, batches, tokenizer, tok, template, workers))
            )
            counts = _write_chats(encoded, text_writer, mask_writer, progress, max_chats)
            if counts.chats == 0:
                raise VikhrError(f"{input_path}: no chats found")
            _warn_of(counts, input_path, tok, template)
            summary = PrepareSummary(
                prefix=str(output_prefix),
                template=template,
                tokenizer=str(recorded_path(tok.path)),
                tokenizer_sha256=tokenizer_sha256,
                bos_id=tok.bos_id,
                eos_id=tok.eos_id,
                vocab_size=tok.vocab_size,
                chats=counts.chats,
                tokens=counts.tokens,
                loss_tokens=counts.loss_tokens,
                max_token_id=counts.max_id,
                trimmed_unanswered=counts.trimmed_unanswered,
                template_from=None if template_from is None else str(recorded_path(template_from)),
                template_sha256=own_template(tok).sha256 if template == OWN else None,
            )
            tmp_meta.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
            # The metadata goes last: a dataset without it is incomplete (the trainer refuses it). A
            # stop waits for all three: between them, new ids stood beside the old mask.
            with stops_held():
                paths["meta"].unlink(missing_ok=True)
                text_writer.finish()
                mask_writer.finish()
                tmp_meta.replace(paths["meta"])
        except BaseException:
            text_writer.abort()
            mask_writer.abort()
            raise
        finally:
            scratch.close()
    return summary


def _warn_of(counts: _ChatCounts, input_path: str | Path, tok: Tokenizer, template: str) -> None:
    """Warning lines on chats that train otherwise than they read: empty answers, and system messages
    an ``own`` template drops (it renders a chat alike without them: trained and served without)."""
    if counts.empty_answers:
        print(
            f"warning: {counts.empty_answers} of {counts.chats} chats of {input_path} have an empty "
            "assistant turn: the model learns to end its answer at once there (vikhr sft build drops "
            "such chats)",
            file=sys.stderr,
        )
    if template != OWN or not counts.system_chats:
        return
    own = own_template(tok)
    if not own.writes_system:
        print(
            f"warning: {counts.system_chats} of {counts.chats} chats of {input_path} have a system "
            f"message, which {own.source.name}'s chat template does not write: the model "
            "is trained (and its export serves) without them; put such instructions into the first user "
            "message, or train with one of vikhr's templates (--template NAME), which write them",
            file=sys.stderr,
        )


def _refuse_replacing_an_input(
    paths: dict[str, Path], output_prefix: str | Path, inputs: dict[str, str | Path]
) -> None:
    """VikhrError, before any work, when a file the run writes is one it reads (chats named
    `mix_sft.json`, prepared with the prefix `mix`): the output would replace it."""
    for flag, given in inputs.items():
        for path in paths.values():
            if overlap(path, Path(given)):
                raise VikhrError(
                    f"--output-prefix {output_prefix} writes {path}, which is the {flag} file: the run "
                    "would replace its input (choose another --output-prefix)"
                )


def _write_chats(
    batches: Iterator[_EncodedBatch],
    text_writer: indexed.IndexedWriter,
    mask_writer: indexed.IndexedWriter,
    progress: bool,
    total: int | None,
) -> _ChatCounts:
    """Each chat's ids and mask added to the writers, in order; the counts over all of them."""
    bar = None
    if progress:
        from vikhr.progress_bar import progress_bar

        bar = progress_bar(desc="sft prepare", unit=" chats", total=total)
    counts = _ChatCounts()
    for encoded in batches:
        for ids, mask in encoded.chats:
            text_writer.add_document(ids.tolist() if isinstance(ids, array) else ids)
            mask_writer.add_document(mask.tolist() if isinstance(mask, array) else mask)
        counts.add(encoded.counts)
        if bar is not None:
            bar.update(len(encoded.chats))
    if bar is not None:
        bar.close()
    return counts


# Chats a task of an encoding process takes: enough that passing them costs little next to
# encoding them, few enough that the tasks under way (PENDING_PER_WORKER a process) keep memory flat.
BATCH_CHATS = 256
PENDING_PER_WORKER = 2


@dataclass
class _ChatCounts:
    chats: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    max_id: int = 0
    empty_answers: int = 0  # chats with an empty trained answer (see `_empty_trained_answer`)
    system_chats: int = 0  # chats with a system message
    trimmed_unanswered: int = 0  # chats whose user turns after the last answer were left out

    def add(self, other: _ChatCounts) -> None:
        self.chats += other.chats
        self.tokens += other.tokens
        self.loss_tokens += other.loss_tokens
        self.max_id = max(self.max_id, other.max_id)
        self.empty_answers += other.empty_answers
        self.system_chats += other.system_chats
        self.trimmed_unanswered += other.trimmed_unanswered


@dataclass
class _EncodedBatch:
    """The ids and loss mask of each chat of a batch, in order (lists, or arrays from a worker)."""

    chats: list[tuple[Sequence[int], Sequence[int]]]
    counts: _ChatCounts
    error: str | None = None  # a worker's "file:line: problem", raised where the batch is written


def _line_batches(
    input_path: str | Path, max_chats: int | None
) -> Iterator[list[tuple[int, str]] | VikhrError]:
    """The first `max_chats` chat lines of `input_path` (line number, text) in batches of
    BATCH_CHATS; a line that cannot be read (not UTF-8, damaged .gz) ends them with its error, after
    the lines before it (an earlier bad chat is reported first, as one process reports it)."""
    lines = islice(record_lines(input_path), max_chats)
    batch: list[tuple[int, str]] = []
    while True:
        try:
            line = next(lines, None)
        except VikhrError as e:
            if batch:
                yield batch
            yield e
            return
        if line is None:
            break
        batch.append(line)
        if len(batch) == BATCH_CHATS:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode_batch(
    input_path: str | Path, lines: list[tuple[int, str]], tok: Tokenizer, template: str
) -> _EncodedBatch:
    """Each chat of `lines` encoded; one that cannot be: VikhrError "file:line: problem"."""
    chats, counts = [], _ChatCounts()
    for line_no, line in lines:
        messages = chat_at(input_path, line_no, line)
        try:
            enc = encode_chat(messages, tok, template)
        except VikhrError as e:
            raise VikhrError(f"{input_path}:{line_no}: {e}") from e
        chats.append((enc.ids, enc.mask))
        counts.chats += 1
        counts.tokens += len(enc.ids)
        counts.loss_tokens += sum(enc.mask)
        counts.max_id = max(counts.max_id, max(enc.ids))
        counts.empty_answers += any(_empty_trained_answer(m) for m in messages)
        counts.system_chats += messages[0].role == "system"
        counts.trimmed_unanswered += messages.trimmed > 0
    return _EncodedBatch(chats, counts)


def _encoded_batches(
    input_path: str | Path,
    batches: Iterator[list[tuple[int, str]] | VikhrError],
    tokenizer: str | Path,
    tok: Tokenizer,
    template: str,
    workers: int,
) -> Iterator[_EncodedBatch]:
    """`batches` encoded in order: here with `tok`, or by `workers` processes, each with its own copy
    of the tokenizer; the first bad chat or line in input order raises its error either way."""
    if workers == 1:
        for batch in batches:
            if isinstance(batch, VikhrError):
                raise batch
            yield _encode_batch(input_path, batch, tok, template)
        return
    # Each worker loads the tokenizer once (`_start_worker`).
    pool = process_pool(workers, _start_worker, (tokenizer, template))
    try:
        pending: deque[Future[_EncodedBatch] | VikhrError] = deque()
        for batch in batches:
            task = (
                batch if isinstance(batch, VikhrError) else pool.submit(_encode_in_worker, input_path, batch)
            )
            pending.append(task)
            if len(pending) >= PENDING_PER_WORKER * workers:
                yield _batch_result(pending.popleft())
        while pending:
            yield _batch_result(pending.popleft())
    finally:
        # An error or Ctrl-C drops the batches not started; those under way end within a batch.
        pool.shutdown(wait=False, cancel_futures=True)


def _batch_result(task: Future[_EncodedBatch] | VikhrError) -> _EncodedBatch:
    if isinstance(task, VikhrError):
        raise task
    try:
        encoded = task.result()
    except BrokenProcessPool:
        raise VikhrError(
            "an encoding process ended abruptly (killed, e.g. for lack of memory, or it could not start): "
            "run again with fewer --workers"
        ) from None
    if encoded.error is not None:
        raise VikhrError(encoded.error)
    return encoded


# An encoding process's tokenizer and template (set once, by `_start_worker`).
_worker_tokenizer: tuple[Tokenizer, str] | None = None


def _start_worker(tokenizer: str | Path, template: str) -> None:
    global _worker_tokenizer
    # Ctrl-C, and SIGTERM sent to the whole process group (a job scheduler's stop): the parent stops
    # the pool, with one message; a process ended here would be "an encoding process ended abruptly".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread a process: the processes share the cores
    _worker_tokenizer = (load_for_template(tokenizer, template), template)


def _encode_in_worker(input_path: str | Path, lines: list[tuple[int, str]]) -> _EncodedBatch:
    """`_encode_batch` in an encoding process, with the chats packed as arrays (cheaper to send back)."""
    assert _worker_tokenizer is not None
    try:
        encoded = _encode_batch(input_path, lines, *_worker_tokenizer)
    except VikhrError as e:
        return _EncodedBatch([], _ChatCounts(), error=str(e))
    encoded.chats = [(array("i", ids), array("B", mask)) for ids, mask in encoded.chats]
    return encoded


def mask_runs(ids: list[int], mask: list[int]) -> list[tuple[bool, list[int]]]:
    """(trained, ids) of each maximal run of equal mask values, in order."""
    runs: list[tuple[bool, list[int]]] = []
    for token, m in zip(ids, mask, strict=True):
        if runs and runs[-1][0] == bool(m):
            runs[-1][1].append(token)
        else:
            runs.append((bool(m), [token]))
    return runs


def render_prepared(prefix: str | Path, index: int, tokenizer: str | Path | None = None) -> str:
    """Chat `index` of a prepared dataset, decoded, with the trained spans as [[...]].

    BOS, EOS and the template's control tokens are shown as their pieces (`decode` drops them).
    """
    meta = read_prepared_sft(prefix)
    template = meta["template"]  # read_prepared_sft checked it is there
    tok = load_chat_tokenizer(tokenizer or meta["tokenizer"], template)
    if meta.get("tokenizer_sha256") not in (None, corpus_sha256(tok.path)):
        given = f"--tokenizer {tokenizer}" if tokenizer is not None else f"{tok.path} (the recorded path)"
        raise VikhrError(
            f"{given} is not the tokenizer {prefix} was prepared with ({meta['tokenizer']}, by its "
            "sha256): its ids would decode to other text; give that tokenizer with --tokenizer"
        )
    shown = {i: tok.id_to_piece(i) for i in control_ids(tok, template_token_ids(tok, template))}
    text_prefix, mask_prefix = sft_datasets(prefix)
    text, mask = indexed.IndexedReader(text_prefix), indexed.IndexedReader(mask_prefix)
    if not 0 <= index < len(text):
        raise VikhrError(f"--index {index} is outside the dataset's {len(text)} chats")
    ids_of_chat, mask_of_chat = text.document(index), mask.document(index)
    if len(text) != len(mask) or len(ids_of_chat) != len(mask_of_chat):
        raise VikhrError(f"{prefix}: token and mask datasets are not aligned (re-run `vikhr sft prepare`)")
    parts = []
    for trained, ids in mask_runs(ids_of_chat, mask_of_chat):
        decoded = _decode_showing(tok, ids, shown)
        parts.append(f"[[{decoded}]]" if trained else decoded)
    return f"--- chat {index} ({len(ids_of_chat)} tokens)\n" + "".join(parts)


def _decode_showing(tok: Tokenizer, ids: list[int], shown: dict[int, str]) -> str:
    """`tok.decode(ids)` with each id of `shown` written as its piece."""
    out, run = [], []
    for i in ids:
        if i in shown:
            out.extend([tok.decode(run), shown[i]] if run else [shown[i]])
            run = []
        else:
            run.append(i)
    if run:
        out.append(tok.decode(run))
    return "".join(out)
