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
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

from vikhr.atomic import scratch_file
from vikhr.data import indexed
from vikhr.errors import VikhrError, require_output_prefix
from vikhr.sft.layout import CHAT_ENCODING, missing_sft_file, read_sft_meta, sft_datasets, sft_files
from vikhr.sft.own_template import own_template
from vikhr.sft.sources import refuse_a_collection_file
from vikhr.sft.template import (
    AUTO,
    OWN,
    EncodedChat,
    Message,
    control_ids,
    encode_chat,
    load_chat_tokenizer,
    load_for_chats,
    read_chats,
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
    template_from: str | None = None  # the tokenizer's file whose chat template chose `template`
    template_sha256: str | None = None  # of the Jinja text, for ``own`` (`convert` checks it)
    chat_encoding: int = CHAT_ENCODING  # see vikhr.sft.layout

    def line(self) -> str:
        share = self.loss_tokens / max(self.tokens, 1)
        origin = f" (the tokenizer's own, in {Path(self.template_from).name})" if self.template_from else ""
        return (
            f"{self.prefix}: {self.chats:,} chats, {self.tokens:,} tokens, "
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
) -> PrepareSummary:
    """Encode every chat of `input_path` in `template` (AUTO: see `resolve_template`) and write the
    SFT dataset at `output_prefix`.

    A malformed chat stops the run with "file:line: problem" (see `vikhr.sft.template.parse_chat`).
    """
    require_output_prefix(output_prefix)
    refuse_a_collection_file(input_path, "sft prepare")
    tok, template, template_from = load_for_chats(tokenizer, template)
    paths = sft_files(output_prefix)
    paths["meta"].parent.mkdir(parents=True, exist_ok=True)
    text_writer = indexed.IndexedWriter(
        indexed.dataset_prefix(output_prefix, "text"), indexed.token_dtype(tok.vocab_size)
    )
    mask_writer = indexed.IndexedWriter(indexed.dataset_prefix(output_prefix, "mask"), "uint8")
    scratch = contextlib.ExitStack()  # after the writers, which refuse a dataset in use
    tmp_meta = scratch.enter_context(scratch_file(paths["meta"]))  # the metadata, renamed last
    chats = tokens = loss_tokens = max_id = empty_answers = 0
    try:
        bar = None
        if progress:
            from vikhr.progress_bar import progress_bar

            bar = progress_bar(desc="sft prepare", unit=" chats", total=max_chats)
        for messages, enc in islice(_encoded_chats(input_path, tok, template), max_chats):
            text_writer.add_document(enc.ids)
            mask_writer.add_document(enc.mask)
            chats += 1
            empty_answers += any(_empty_trained_answer(m) for m in messages)
            tokens += len(enc.ids)
            loss_tokens += sum(enc.mask)
            max_id = max(max_id, max(enc.ids))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        if chats == 0:
            raise VikhrError(f"{input_path}: no chats found")
        if empty_answers:
            print(
                f"warning: {empty_answers} of {chats} chats of {input_path} have an empty assistant turn: "
                "the model learns to end its answer at once there (vikhr sft build drops such chats)",
                file=sys.stderr,
            )
        summary = PrepareSummary(
            prefix=str(output_prefix),
            template=template,
            tokenizer=str(recorded_path(tok.path)),
            tokenizer_sha256=corpus_sha256(tok.path),
            bos_id=tok.bos_id,
            eos_id=tok.eos_id,
            vocab_size=tok.vocab_size,
            chats=chats,
            tokens=tokens,
            loss_tokens=loss_tokens,
            max_token_id=max_id,
            template_from=None if template_from is None else str(recorded_path(template_from)),
            template_sha256=own_template(tok).sha256 if template == OWN else None,
        )
        tmp_meta.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
        # The metadata goes last: a dataset without it is incomplete (the trainer refuses it).
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


def _encoded_chats(
    input_path: str | Path, tok: Tokenizer, template: str
) -> Iterator[tuple[list[Message], EncodedChat]]:
    """(messages, encoding) of each chat of `input_path`; one that cannot be encoded: "file:line: problem"."""
    for line_no, messages in read_chats(input_path):
        try:
            enc = encode_chat(messages, tok, template)
        except VikhrError as e:
            raise VikhrError(f"{input_path}:{line_no}: {e}") from e
        yield messages, enc


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
    files = sft_files(prefix)
    missing = missing_sft_file(prefix)
    if missing is not None:
        raise VikhrError(missing)
    meta = read_sft_meta(files["meta"])
    template = meta.get("template", "mistral")
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
