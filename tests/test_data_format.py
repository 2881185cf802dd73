"""MMIDIDX output: byte-identical to megatron-core's IndexedDatasetBuilder and readable by megatron-core;
the `vikhr.data.indexed` facade (writer, reader, validation, naming, dtype rule)."""

from __future__ import annotations

import gzip
import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import sentencepiece

from vikhr.assets import MISTRAL_TOKENIZER, RU_SAMPLE
from vikhr.data import inspect, merge, preprocess
from vikhr.data.indexed import (
    IndexedReader,
    IndexedWriter,
    ValidationRecord,
    dataset_prefix,
    token_dtype,
    validate,
    write_indexed,
)
from vikhr.errors import VikhrError


def _megatron_write(prefix: str, documents: list[list[int]], vocab_size: int, dtype=None) -> None:
    """What Megatron-LM's preprocess_data.py does with the ids: one add_document per line."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    dtype = DType.optimal_dtype(vocab_size) if dtype is None else dtype
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in documents:
        builder.add_document(doc, [len(doc)] if doc else [])
    builder.finalize(prefix + ".idx")


def _read(prefix: str) -> tuple[bytes, bytes]:
    return Path(prefix + ".bin").read_bytes(), Path(prefix + ".idx").read_bytes()


@pytest.fixture(scope="module")
def ru_texts() -> list[str]:
    with gzip.open(RU_SAMPLE, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:300]
    # Megatron's handling of empty documents is part of the format contract.
    return [*texts[:10], "", *texts[10:], ""]


def test_preprocess_output_is_byte_identical_to_megatron_builder(tmp_path: Path, ru_texts: list[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ru_texts))
    summary = preprocess([src], tmp_path / "ours", MISTRAL_TOKENIZER, append_eod=True, workers=2)
    assert summary.documents == len(ru_texts) and summary.empty_documents == 2

    sp = sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    docs = [[*sp.encode(t), sp.eos_id()] if t else [] for t in ru_texts]
    _megatron_write(str(tmp_path / "megatron"), docs, sp.vocab_size())
    assert _read(str(tmp_path / "ours_text_document")) == _read(str(tmp_path / "megatron"))


@pytest.mark.parametrize("vocab_size", [32000, 65500, 128256])
def test_writer_matches_megatron_for_both_dtypes(tmp_path: Path, vocab_size: int) -> None:
    rng = np.random.default_rng(vocab_size)
    docs = [rng.integers(0, vocab_size, size=int(n)).tolist() for n in rng.integers(0, 50, size=200)]
    write_indexed(tmp_path / "ours", docs, token_dtype(vocab_size))
    _megatron_write(str(tmp_path / "megatron"), docs, vocab_size)
    assert _read(str(tmp_path / "ours")) == _read(str(tmp_path / "megatron"))
    assert inspect(tmp_path / "ours").dtype == ("uint16" if vocab_size < 65500 else "int32")


def test_uint8_masks_match_megatron_and_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    docs = [rng.integers(0, 2, size=int(n)).tolist() for n in rng.integers(1, 40, size=50)]
    with IndexedWriter(tmp_path / "ours", "uint8") as writer:
        for doc in docs:
            writer.add_document(np.asarray(doc, dtype=np.int64))  # numpy arrays are accepted too
    _megatron_write(str(tmp_path / "megatron"), docs, 0, dtype=np.uint8)
    assert _read(str(tmp_path / "ours")) == _read(str(tmp_path / "megatron"))
    reader = IndexedReader(tmp_path / "ours")
    assert reader.info.dtype == "uint8" and [reader.document(i) for i in range(len(reader))] == docs
    with pytest.raises(VikhrError, match="does not fit uint8"), IndexedWriter(tmp_path / "bad", "uint8") as w:
        w.add_document([1, 256])
    assert not list(tmp_path.glob("bad*"))  # nothing left behind


def test_naming_dtype_rule_and_validation(tmp_path: Path) -> None:
    assert dataset_prefix("data/ru", "text") == "data/ru_text_document"
    assert (token_dtype(65499), token_dtype(65500)) == ("uint16", "int32")
    write_indexed(tmp_path / "d", [[5, 6, 7], [], [31999]], "uint16")
    info = validate(tmp_path / "d", vocab_size=32000)
    assert (info.documents, info.tokens, info.max_token_id) == (3, 4, 31999)
    with pytest.raises(VikhrError, match="token id 31999 is outside the vocabulary of 1000 ids"):
        validate(tmp_path / "d", vocab_size=1000)
    write_indexed(tmp_path / "empty", [[], []], "uint16")
    with pytest.raises(VikhrError, match="holds no token"):
        validate(tmp_path / "empty")
    with pytest.raises(VikhrError, match="not found"):
        validate(tmp_path / "missing")


def _written_long_ago(prefix: Path, stamp_ns: int = 1_000_000_000) -> None:
    """Date `prefix`'s files back: files of the last seconds are read anew and not recorded."""
    for suffix in (".bin", ".idx"):
        os.utime(f"{prefix}{suffix}", ns=(stamp_ns, stamp_ns))


def test_validation_record_skips_rereading_an_unchanged_bin(tmp_path: Path, monkeypatch) -> None:
    scans = []
    real_scan = IndexedReader.max_token_id
    monkeypatch.setattr(
        IndexedReader, "max_token_id", lambda self: scans.append(self.prefix) or real_scan(self)
    )
    path = tmp_path / "cache" / "data-check.json"
    write_indexed(tmp_path / "d", [[5, 6, 7], [31999]], "uint16")
    _written_long_ago(tmp_path / "d")
    record = ValidationRecord(path)
    assert validate(tmp_path / "d", vocab_size=32000, record=record).max_token_id == 31999
    assert len(scans) == 1 and not path.exists()  # written only when saved
    record.save()
    # A restart: the record answers, the .bin is not read again, and the vocabulary check still holds.
    record = ValidationRecord(path)
    assert validate(tmp_path / "d", vocab_size=32000, record=record).max_token_id == 31999
    with pytest.raises(VikhrError, match="token id 31999 is outside the vocabulary of 1000 ids"):
        validate(tmp_path / "d", vocab_size=1000, record=record)
    assert len(scans) == 1
    # The dataset written again (other ids, same size): its changed stamp makes it read again.
    write_indexed(tmp_path / "d", [[5, 6, 7], [40000]], "uint16")
    _written_long_ago(tmp_path / "d", stamp_ns=1)
    with pytest.raises(VikhrError, match="token id 40000"):
        validate(tmp_path / "d", vocab_size=32000, record=ValidationRecord(path))
    assert len(scans) == 2
    # A damaged record is no error: it is read as empty and written anew.
    path.write_text("{not json")
    record = ValidationRecord(path)
    assert validate(tmp_path / "d", record=record).max_token_id == 40000
    record.save()
    assert len(scans) == 3 and json.loads(path.read_text())["version"] == 1
    # A record that cannot be written only costs the next check a read.
    record = ValidationRecord(tmp_path / "d.bin" / "no-such-dir" / "r.json")
    validate(tmp_path / "d", record=record)
    record.save()


def test_a_first_scan_reads_the_index_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`validate` on a dataset not yet checked read its `.idx` twice: once to inspect it, once more
    when the reader opened it for the `.bin` scan (a corpus of 100M documents has a ~2 GB index).
    Now the reader's validation is the only one; a later `inspect` reuses it."""
    from vikhr import _core
    from vikhr.data import indexed

    write_indexed(tmp_path / "d", [[5, 6, 7], [31999]], "uint16")
    _written_long_ago(tmp_path / "d")
    reads = []
    inspect_index, reader_class = _core.inspect_index, _core.IndexedDatasetReader
    monkeypatch.setattr(_core, "inspect_index", lambda prefix: reads.append(prefix) or inspect_index(prefix))
    monkeypatch.setattr(
        _core, "IndexedDatasetReader", lambda prefix: reads.append(prefix) or reader_class(prefix)
    )
    monkeypatch.setattr(indexed, "_INSPECTED", {})  # as in a new process
    record = ValidationRecord(tmp_path / "data-check.json")
    assert validate(tmp_path / "d", vocab_size=32000, record=record).max_token_id == 31999
    assert len(reads) == 1
    assert indexed.inspect(tmp_path / "d").tokens == 4 and len(reads) == 1
    record.save()
    # A restart: the record answers for the .bin, the index is validated once, by inspect.
    monkeypatch.setattr(indexed, "_INSPECTED", {})
    assert validate(tmp_path / "d", record=ValidationRecord(tmp_path / "data-check.json")).tokens == 4
    assert len(reads) == 2


def test_a_dataset_written_again_within_a_time_stamp_s_tick_is_inspected_anew(tmp_path: Path) -> None:
    """The counts of a validated dataset were cached by its files' inode, size and mtime: files
    written again in place (or renamed onto freed inodes) with the same sizes within one tick of the
    file system's clock kept their identity, and `inspect` gave the old counts."""
    from vikhr.data import indexed

    write_indexed(tmp_path / "d", [[1, 2, 3, 4]], "uint16")  # 8 bytes of .bin
    write_indexed(tmp_path / "other", [[1, 2]], "int32")  # 8 bytes too, and an index of the same size
    stamps = {s: (tmp_path / f"d{s}").stat().st_mtime_ns for s in (".bin", ".idx")}
    assert indexed.inspect(tmp_path / "d").tokens == 4
    for suffix, stamp in stamps.items():
        (tmp_path / f"d{suffix}").write_bytes((tmp_path / f"other{suffix}").read_bytes())  # in place
        os.utime(tmp_path / f"d{suffix}", ns=(stamp, stamp))  # and within the same tick
    info = indexed.inspect(tmp_path / "d")
    assert (info.tokens, info.dtype) == (2, "int32")


def test_a_dataset_checked_within_seconds_of_its_writing_is_not_recorded(tmp_path: Path) -> None:
    """The validation record kept a dataset by its files' size and mtime: one written again in place
    with the same size within one tick of the file system's clock was taken as already checked, and
    its new token ids were never scanned. A dataset written in the last seconds is checked again."""
    path = tmp_path / "data-check.json"
    write_indexed(tmp_path / "d", [[1, 2, 3, 4]], "uint16")
    record = ValidationRecord(path)
    assert validate(tmp_path / "d", record=record).max_token_id == 4
    record.save()
    assert record.lookup(str(tmp_path / "d")) == (False, None) and not path.exists()
    stamps = {s: (tmp_path / f"d{s}").stat().st_mtime_ns for s in (".bin", ".idx")}
    write_indexed(tmp_path / "d", [[1, 2, 3, 40000]], "uint16")  # the same sizes
    for suffix, stamp in stamps.items():
        os.utime(tmp_path / f"d{suffix}", ns=(stamp, stamp))  # within the same tick
    with pytest.raises(VikhrError, match="token id 40000"):
        validate(tmp_path / "d", vocab_size=32000, record=ValidationRecord(path))
    # Written a while ago, it is recorded as before.
    _written_long_ago(tmp_path / "d")
    record = ValidationRecord(path)
    assert validate(tmp_path / "d", record=record).max_token_id == 40000
    record.save()
    assert ValidationRecord(path).lookup(str(tmp_path / "d")) == (True, 40000)


def test_validation_records_of_two_runs_sharing_a_cache_keep_both_runs_entries(tmp_path: Path) -> None:
    """Two runs on one data cache, each checking its own dataset: the later save kept only its own
    entries, and the next start of the other run read its corpus again."""
    path = tmp_path / "cache" / "data-check.json"
    for name, ids in (("a", [5, 6, 7]), ("b", [8, 9])):
        write_indexed(tmp_path / name, [ids], "uint16")
        _written_long_ago(tmp_path / name)
    first, second = ValidationRecord(path), ValidationRecord(path)  # both read before either saved
    validate(tmp_path / "a", record=first)
    validate(tmp_path / "b", record=second)
    first.save()
    second.save()
    record = ValidationRecord(path)
    assert record.lookup(str(tmp_path / "a")) == (True, 7)
    assert record.lookup(str(tmp_path / "b")) == (True, 9)
    assert sorted(p.name for p in path.parent.iterdir()) == ["data-check.json"]  # no lock file left


def test_megatron_reads_our_output_exactly(tmp_path: Path, ru_texts: list[str]) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ru_texts))
    preprocess([src], tmp_path / "ours", MISTRAL_TOKENIZER, append_eod=True, workers=2)
    prefix = str(tmp_path / "ours_text_document")
    ds = IndexedDataset(prefix)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    nonempty = [t for t in ru_texts if t]
    assert len(ds) == len(nonempty)  # one sequence per non-empty document
    assert len(ds.document_indices) == len(ru_texts) + 1
    for i, text in enumerate(nonempty):
        assert ds[i].tolist() == [*sp.encode(text), sp.eos_id()]


def test_gpt_dataset_reads_our_output(tmp_path: Path, ru_texts: list[str]) -> None:
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import Split

    class IdsOnly:
        eod = 2
        eos = 2
        vocab_size = None

        def __init__(self) -> None:
            self.unique_identifiers = {"class": "test-ids", "eod": 2}

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ru_texts[:50]))
    preprocess([src], tmp_path / "ours", MISTRAL_TOKENIZER, append_eod=True, workers=1)
    prefix = str(tmp_path / "ours_text_document")
    indexed = IndexedDataset(prefix)
    config = GPTDatasetConfig(
        random_seed=1,
        sequence_length=64,
        split="1,0,0",
        path_to_cache=str(tmp_path / "cache"),
        tokenizer=IdsOnly(),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    # GPTDataset (like BlendedMegatronDatasetBuilder) indexes sequences; empty documents have none.
    docs = np.arange(len(indexed), dtype=np.int32)
    ds = GPTDataset(indexed, prefix, docs, None, Split.train, config)
    # One epoch without shuffling would be the concatenation; check every sample is a window of it.
    stream = np.concatenate([indexed[i] for i in range(len(indexed))])
    text = stream.tobytes()
    assert len(ds) >= 1
    for i in range(min(len(ds), 10)):
        tokens = ds[i]["tokens"].numpy().astype(stream.dtype)
        assert tokens.tobytes() in text


def test_merge_is_byte_identical_to_megatron(tmp_path: Path) -> None:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    parts = []
    for k in range(3):
        docs = [rng.integers(0, 32000, size=int(n)).tolist() for n in rng.integers(0, 30, size=40 + k)]
        write_indexed(tmp_path / f"part{k}", docs, token_dtype(32000))
        parts.append(str(tmp_path / f"part{k}"))
    summary = merge(parts, tmp_path / "merged")
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=DType.optimal_dtype(32000))
    for p in parts:
        builder.add_index(p)
    builder.finalize(str(tmp_path / "ref.idx"))
    assert _read(str(tmp_path / "merged")) == _read(str(tmp_path / "ref"))
    assert summary.documents == 40 + 41 + 42
    # The output may not be an input, however the path is spelled.
    before = (tmp_path / "part1.bin").read_bytes()
    with pytest.raises(VikhrError, match="is also an input"):
        merge(parts, tmp_path / "sub" / ".." / "part1")
    assert (tmp_path / "part1.bin").read_bytes() == before


def test_merge_of_a_folder_is_megatron_s_merge_of_the_datasets_in_it(tmp_path: Path, capsys) -> None:
    """Megatron-LM's tools/merge_datasets.py takes --input DIR and merges its datasets in name order;
    vikhr data merge refused a folder ("give the prefix of a dataset in it")."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from vikhr.cli import main as vikhr_main

    folder = tmp_path / "parts"
    rng = np.random.default_rng(1)
    for name in ("b", "a", "c"):  # written out of name order
        docs = [rng.integers(0, 32000, size=int(n)).tolist() for n in rng.integers(0, 30, size=20)]
        write_indexed(folder / name, docs, token_dtype(32000))
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=DType.optimal_dtype(32000))
    for name in ("a", "b", "c"):
        builder.add_index(str(folder / name))
    builder.finalize(str(tmp_path / "ref.idx"))
    out = tmp_path / "merged"
    assert vikhr_main(["data", "merge", "--input", str(folder), "--output-prefix", str(out)]) == 0
    assert "merged 3 datasets" in capsys.readouterr().out
    assert _read(str(out)) == _read(str(tmp_path / "ref"))
    (tmp_path / "empty").mkdir()
    assert vikhr_main(["data", "merge", "--input", str(tmp_path / "empty"), "--output-prefix", str(out)]) == 2
    assert "is a folder without datasets" in capsys.readouterr().err


def test_a_merge_of_a_folder_into_that_folder_run_again_leaves_its_earlier_output_out(
    tmp_path: Path, capsys
) -> None:
    """`--input DIR --output-prefix DIR/merged` run a second time took the first run's DIR/merged for
    an input and was refused ("the merge output ... is also an input"), naming no folder. The output's
    own dataset is now left out of the folder's, with a note, and the rerun writes the first run's
    merge again."""
    from vikhr.cli import main as vikhr_main

    folder = tmp_path / "parts"
    for name, docs in (("a", [[1, 2, 3]]), ("b", [[4, 5], [6]])):
        write_indexed(folder / name, docs, token_dtype(32000))
    out = folder / "merged"
    argv = ["data", "merge", "--input", str(folder), "--output-prefix", str(out)]
    assert vikhr_main(argv) == 0
    first = _read(str(out))
    assert "merged 2 datasets" in capsys.readouterr().out
    assert vikhr_main(argv) == 0
    said = capsys.readouterr()
    assert said.out.startswith(f"merged 2 datasets -> {out}: 3 documents, 6 tokens")
    assert said.err == (
        f"note: {out} is this merge's output, written by an earlier merge: it is left out of the datasets "
        f"of {folder}, and replaced\n"
    )
    assert _read(str(out)) == first
    only_output = tmp_path / "only"
    write_indexed(only_output / "merged", [[1]], token_dtype(32000))
    argv = ["data", "merge", "--input", str(only_output), "--output-prefix", str(only_output / "merged")]
    assert vikhr_main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"vikhr data merge: error: {only_output} is a folder without datasets (.bin/.idx) but the merge's "
        f"output {only_output / 'merged'}: give it datasets or their prefixes"
    )


def test_merge_of_mixed_dtypes_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """An int32 input after uint16 ones failed only once the earlier inputs were copied, with no advice."""
    write_indexed(tmp_path / "small", [[1, 2, 3]], token_dtype(32000))
    write_indexed(tmp_path / "big", [[70000, 4]], token_dtype(131072))
    with pytest.raises(
        VikhrError, match=r"differ in token dtype \(int32: .*big; uint16: .*small\).*one tokenizer"
    ):
        merge([tmp_path / "small", tmp_path / "small", tmp_path / "big"], tmp_path / "out" / "m")
    assert not (tmp_path / "out").exists()
    # One prefix given as a string is that prefix, not its characters.
    assert merge(str(tmp_path / "small"), tmp_path / "one").tokens == 3


def test_merge_refuses_datasets_of_two_tokenizers_and_records_the_tokenizer_of_agreeing_ones(
    tmp_path: Path, capsys
) -> None:
    """Datasets written with two tokenizers of one vocabulary size (same dtype) were merged silently:
    half the merged ids meant other pieces. Their records now refuse it in one line, before anything is
    written; inputs of one tokenizer give the output their record, and an input without one gives none."""
    from tests.helpers import sentencepiece_with_other_ids
    from vikhr.cli import main as vikhr_main
    from vikhr.data import tokenization

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "Привет, мир"}\n{"text": "Ещё один документ"}\n', encoding="utf-8")
    other = sentencepiece_with_other_ids(tmp_path / "other" / "tokenizer.model")
    preprocess([src], tmp_path / "a", MISTRAL_TOKENIZER, append_eod=True)
    preprocess([src], tmp_path / "b", MISTRAL_TOKENIZER)
    preprocess([src], tmp_path / "c", other, append_eod=True)
    a, b, c = (f"{tmp_path}/{name}_text_document" for name in "abc")
    argv = ["data", "merge", "--inputs", a, b, c, "--output-prefix", str(tmp_path / "out" / "m")]
    assert vikhr_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{a} was tokenized with {MISTRAL_TOKENIZER} (sha256 " in err
    assert f"but {c} with {other} (sha256 " in err and "pre-tokenize them all with one tokenizer" in err
    assert not (tmp_path / "out").exists()

    merge([a, b], tmp_path / "ab")
    record = tokenization.read_record(tmp_path / "ab")
    assert record is not None and record.tokenizer_sha256 == tokenization.read_record(a).tokenizer_sha256
    assert (record.documents, record.append_eod, record.json_key) == (
        4,
        None,
        "text",
    )  # a ends with EOD, b not
    write_indexed(tmp_path / "unrecorded", [[5, 6]], token_dtype(32000))
    merge([a, tmp_path / "unrecorded"], tmp_path / "ab")  # over the merge above: its record goes
    assert not tokenization.record_path(tmp_path / "ab").exists()


def test_merge_says_each_field_it_drops_from_the_record_and_refuses_two_eod_ids(
    tmp_path: Path, capsys
) -> None:
    """A merge of inputs with and without EOD, or with and without BOS, recorded the field as null
    without a word: the merged documents of some inputs run together. Each dropped field is now one
    note naming two inputs and what each has; inputs whose documents end with two EOD ids are refused
    in one line, before anything is written."""
    from vikhr.cli import main as vikhr_main
    from vikhr.data import tokenization

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "Привет, мир"}\n{"text": "Ещё один документ"}\n', encoding="utf-8")
    preprocess([src], tmp_path / "a", MISTRAL_TOKENIZER, append_eod=True)
    preprocess([src], tmp_path / "b", MISTRAL_TOKENIZER)
    preprocess(
        [src], tmp_path / "c", MISTRAL_TOKENIZER, tokenizer_type="Llama2Tokenizer", legacy_tokenizer=True
    )
    a, b, c = (f"{tmp_path}/{name}_text_document" for name in "abc")
    assert vikhr_main(["data", "merge", "--inputs", a, b, c, "--output-prefix", str(tmp_path / "m")]) == 0
    notes = capsys.readouterr().err.splitlines()
    assert notes == [
        f"note: tokenizer_type differs: {a} was tokenized as SentencePieceTokenizer, but {c} was tokenized "
        "as Llama2Tokenizer: the merged record names no tokenizer_type",
        f"note: append_eod differs: {a} ends each document with EOD 2, but {b} has no EOD between "
        "documents: the merged record names no append_eod",
        f"note: convention differs: {a} holds megatron-core ids (no BOS), but {c} holds megatron-legacy "
        "ids (BOS before every document): the merged record names no convention",
    ]
    record = tokenization.read_record(tmp_path / "m")
    assert record is not None and (record.tokenizer_type, record.append_eod, record.convention) == (None,) * 3
    # Inputs that agree: nothing to say.
    assert vikhr_main(["data", "merge", "--inputs", a, a, "--output-prefix", str(tmp_path / "aa")]) == 0
    assert capsys.readouterr().err == ""
    # The same tokenizer recorded with another EOS (another file of its pieces may name another one).
    other_eos = tmp_path / "d_text_document"
    preprocess([src], tmp_path / "d", MISTRAL_TOKENIZER, append_eod=True)
    path = tokenization.record_path(other_eos)
    path.write_text(json.dumps({**json.loads(path.read_text()), "eod_id": 1}))
    out = tmp_path / "out" / "m"
    assert vikhr_main(["data", "merge", "--inputs", a, b, str(other_eos), "--output-prefix", str(out)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"vikhr data merge: error: eod_id differs: {a} ends documents with EOD id 2, but {other_eos} ends "
        "documents with EOD id 1: the merged documents would end with two ids; pre-tokenize them all with "
        "one tokenizer file"
    )
    assert not out.parent.exists()


def test_merge_of_a_model_and_its_tokenizer_json_keeps_the_record_or_says_why_not(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs pre-tokenized with a `.model` and with its exported `tokenizer.json` (other files, the
    same pieces at the same ids) were merged into a dataset without a record, silently: a blend of it
    was then not checked. The record is now kept, naming the first input's file; where a file is
    gone or changed by the time the record is written, one note says why the merged dataset has none.
    The two tokenizers are loaded once, to compare their pieces (they were loaded again to write the
    record); the files are then only told unchanged by their sha256."""
    from vikhr.cli import main as vikhr_main
    from vikhr.data import indexed, tokenization
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    tokenizer_load = importlib.import_module("vikhr.tokenizer.load")  # the package's `load` is its function

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "Привет, мир"}\n{"text": "Ещё один документ"}\n', encoding="utf-8")
    exported, _ = write_hf_tokenizer(MISTRAL_TOKENIZER, tmp_path / "mistral-hf")
    preprocess([src], tmp_path / "a", MISTRAL_TOKENIZER, append_eod=True)
    preprocess([src], tmp_path / "b", exported, tokenizer_type="HuggingFaceTokenizer", append_eod=True)
    a, b = f"{tmp_path}/a_text_document", f"{tmp_path}/b_text_document"
    recorded = [tokenization.read_record(p) for p in (a, b)]
    assert recorded[0] is not None and recorded[1] is not None
    assert recorded[0].tokenizer_sha256 != recorded[1].tokenizer_sha256
    loaded: list[Path] = []
    load_tokenizer = tokenizer_load.load

    def counted_load(path, *args, **kwargs):
        loaded.append(Path(path))
        return load_tokenizer(path, *args, **kwargs)

    monkeypatch.setattr(tokenizer_load, "load", counted_load)
    assert vikhr_main(["data", "merge", "--inputs", a, b, "--output-prefix", str(tmp_path / "m")]) == 0
    assert sorted(map(str, loaded)) == sorted([str(MISTRAL_TOKENIZER), str(exported)])
    assert capsys.readouterr().err.splitlines() == [
        f"note: tokenizer_type differs: {a} was tokenized as SentencePieceTokenizer, but {b} was tokenized "
        "as HuggingFaceTokenizer: the merged record names no tokenizer_type"
    ]
    record = tokenization.read_record(tmp_path / "m")
    assert record is not None
    first = recorded[0]
    assert (record.tokenizer, record.tokenizer_sha256) == (first.tokenizer, first.tokenizer_sha256)
    assert (record.append_eod, record.eod_id, record.documents) == (True, 2, 4)
    # The tokenizer.json gone while the merge ran (after its inputs were compared): it cannot be told.
    merge_files = indexed.merge

    def merge_losing_the_tokenizer_json(*args, **kwargs):
        exported.rename(str(exported) + ".kept")
        return merge_files(*args, **kwargs)

    monkeypatch.setattr(indexed, "merge", merge_losing_the_tokenizer_json)
    out = tmp_path / "n"
    assert vikhr_main(["data", "merge", "--inputs", a, b, "--output-prefix", str(out)]) == 0
    [note] = capsys.readouterr().err.splitlines()
    assert note == (
        f"note: {out} is written without a tokenization record: its inputs were tokenized with "
        f"{recorded[0].tokenizer_line()} and {recorded[1].tokenizer_line()}, not told to be one tokenizer "
        f"({exported} is no longer there)"
    )
    assert not tokenization.record_path(out).exists()
    # The tokenizer.json there again but changed while the merge ran: told by its sha256.
    exported_text = json.dumps(json.loads(Path(str(exported) + ".kept").read_text(encoding="utf-8")))

    def merge_changing_the_tokenizer_json(*args, **kwargs):
        exported.write_text(exported_text, encoding="utf-8")  # other bytes, the same tokenizer
        return merge_files(*args, **kwargs)

    Path(str(exported) + ".kept").rename(exported)
    monkeypatch.setattr(indexed, "merge", merge_changing_the_tokenizer_json)
    assert vikhr_main(["data", "merge", "--inputs", a, b, "--output-prefix", str(out)]) == 0
    [note] = capsys.readouterr().err.splitlines()
    assert note.endswith(f"not told to be one tokenizer ({exported} has changed since it was recorded)")
    assert not tokenization.record_path(out).exists()


def test_inspect_says_what_merged_inputs_differ_in(tmp_path: Path, capsys) -> None:
    """A merge of inputs with and without EOD was shown as "no EOD appended" (its first document ends
    with EOD), and one of two keys as "key None"."""
    from vikhr.cli import main as vikhr_main

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "Привет, мир", "title": "Мир"}\n', encoding="utf-8")
    preprocess([src], tmp_path / "a", MISTRAL_TOKENIZER, json_keys=("text", "title"), append_eod=True)
    preprocess([src], tmp_path / "b", MISTRAL_TOKENIZER)
    a_text, a_title, b_text = (f"{tmp_path}/{name}_document" for name in ("a_text", "a_title", "b_text"))
    for inputs, said in (
        ([a_text, b_text], "key text, EOD appended in some merged inputs only"),
        ([a_text, a_title], "keys of the merged inputs differ, EOD 2 appended"),
        ([a_text], "key text, EOD 2 appended"),
        ([b_text], "key text, no EOD appended"),
    ):
        merge(inputs, tmp_path / "m")
        assert vikhr_main(["data", "inspect", str(tmp_path / "m")]) == 0
        [line] = [line for line in capsys.readouterr().out.splitlines() if "tokenizer:" in line]
        assert line.endswith(f"…), {said}")


def test_a_damaged_merge_input_is_one_line_naming_its_file_and_the_fix(tmp_path: Path, capsys) -> None:
    """A merge input whose .bin was cut short (an interrupted copy) said what was wrong but not what
    to do; the Rust merge's read errors named no file."""
    from vikhr.cli import main as vikhr_main

    write_indexed(tmp_path / "a", [[1, 2, 3]], token_dtype(32000))
    write_indexed(tmp_path / "b", [[4, 5]], token_dtype(32000))
    bin_b = tmp_path / "b.bin"
    bin_b.write_bytes(bin_b.read_bytes()[:3])
    argv = ["data", "merge", "--inputs", str(tmp_path / "a"), str(tmp_path / "b"), "--output-prefix"]
    assert vikhr_main([*argv, str(tmp_path / "m")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"{tmp_path / 'b.idx'}: .bin is 3 bytes but the index describes 2 tokens" in line
    assert line.endswith(
        f"(an input of the merge: copy or write {tmp_path / 'b'} again, or leave it out of the merge)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.idx", "b.bin", "b.idx"]


def test_merge_reports_its_count_of_inputs_in_words(tmp_path: Path, capsys) -> None:
    """One input was reported as "merged 1 datasets"."""
    from vikhr.cli import main as vikhr_main

    write_indexed(tmp_path / "a", [[1, 2, 3]], token_dtype(32000))
    assert (
        vikhr_main(["data", "merge", "--inputs", str(tmp_path / "a"), "--output-prefix", str(tmp_path / "m")])
        == 0
    )
    assert capsys.readouterr().out.startswith(f"merged 1 dataset -> {tmp_path / 'm'}: 1 document, 3 tokens")
    assert (
        vikhr_main(
            [
                "data",
                "merge",
                "--inputs",
                str(tmp_path / "a"),
                str(tmp_path / "m"),
                "--output-prefix",
                str(tmp_path / "n"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith(f"merged 2 datasets -> {tmp_path / 'n'}: 2 documents, 6 tokens")


def test_inspect_reports_counts_and_rejects_a_truncated_bin(tmp_path: Path) -> None:
    docs = [[5, 6, 7], [], [8]]
    prefix = tmp_path / "d"
    write_indexed(prefix, docs, token_dtype(32000))
    s = inspect(prefix, MISTRAL_TOKENIZER, n_tokens=2)
    assert (s.documents, s.empty_documents, s.sequences, s.tokens) == (3, 1, 2, 4)
    assert s.first_tokens == [5, 6]
    assert s.first_text == sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER)).decode(
        [5, 6]
    )
    with open(str(prefix) + ".bin", "r+b") as f:
        f.truncate(4)
    with pytest.raises(VikhrError, match="bin is 4 bytes"):
        inspect(prefix)


def test_inspect_does_not_decode_a_loss_mask(tmp_path: Path) -> None:
    """An SFT mask dataset (uint8 0/1) decoded with --tokenizer-model printed ids 0/1 as text."""
    mask = tmp_path / "chats_mask_document"
    write_indexed(mask, [[0, 0, 1, 1]], "uint8")
    assert inspect(mask).first_tokens == [0, 0, 1, 1]
    with pytest.raises(VikhrError, match=f"not token ids: decode {tmp_path}/chats_text_document, or leave"):
        inspect(mask, MISTRAL_TOKENIZER)


def test_inspect_takes_sft_prepares_record_for_its_chats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`data inspect` of `sft prepare`'s datasets said "tokenizer: not recorded (written by
    Megatron-LM's tools or an older vikhr)" and decoded the chats with any other tokenizer, exit 0,
    while `sft show` refuses that: the `_sft.json` beside them is their record."""
    from vikhr.assets import RU_SEED_CHATS
    from vikhr.cli import main

    prefix = tmp_path / "chats"
    argv = ["sft", "prepare", "--input", str(RU_SEED_CHATS), "--tokenizer", str(MISTRAL_TOKENIZER)]
    assert main([*argv, "--output-prefix", str(prefix), "--no-progress"]) == 0
    capsys.readouterr()
    other = MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.model"  # every id of the chats is below its 40k
    text = f"{prefix}_text_document"
    assert main(["data", "inspect", text, "--tokenizer-model", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{text} was tokenized with {MISTRAL_TOKENIZER} (sha256 " in err, err
    assert err.endswith(f"its ids would decode to other text (give --tokenizer-model {MISTRAL_TOKENIZER})\n")
    assert main(["data", "inspect", text, "--tokenizer-model", str(MISTRAL_TOKENIZER), "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert f"chats of vikhr sft prepare ({prefix}_sft.json)" in out and "not recorded" not in out
    assert "decoded: '[INST]'" in out
    assert main(["data", "inspect", f"{prefix}_mask_document"]) == 0
    assert f"  loss mask of vikhr sft prepare ({prefix}_sft.json): 1 on the tokens trained on\n" in (
        capsys.readouterr().out
    )
    # metadata of another preparation (other counts) is not taken for these datasets' record
    meta = json.loads((tmp_path / "chats_sft.json").read_text())
    (tmp_path / "chats_sft.json").write_text(json.dumps({**meta, "chats": 1}))
    assert main(["data", "inspect", text]) == 0
    assert "tokenizer: not recorded" in capsys.readouterr().out


def test_compare_tokenizers_tells_same_pieces_other_pieces_and_what_it_cannot_tell(tmp_path: Path) -> None:
    """One rule for "is this the recorded tokenizer?" (blend, merge, inspect, convert, model.init,
    SFT blend): the same file, or another of the same pieces where the recorded file is still there
    as recorded; the first differing id with both pieces; "cannot tell" where a file moved or changed."""
    import shutil

    from tests.helpers import sentencepiece_with_other_ids
    from vikhr.data.tokenization import compare_tokenizers
    from vikhr.sft.layout import check_sft_blend
    from vikhr.tokenizer.corpus import corpus_sha256
    from vikhr.tokenizer.hf_export import write_hf_tokenizer
    from vikhr.tokenizer.load import load

    model = tmp_path / "tok" / "tokenizer.model"
    model.parent.mkdir()
    shutil.copyfile(MISTRAL_TOKENIZER, model)
    sha = corpus_sha256(model)
    tokenizer_json, _ = write_hf_tokenizer(model, tmp_path / "hf")
    other = sentencepiece_with_other_ids(tmp_path / "other" / "tokenizer.model")

    assert compare_tokenizers(model, sha, model).same is True
    assert compare_tokenizers(model, sha, tokenizer_json).same is True
    assert compare_tokenizers(model, sha, load(tokenizer_json)).same is True  # a loaded one too
    differs = compare_tokenizers(model, sha, other)
    assert (differs.same, differs.differing_id) == (False, 1000)
    assert (
        differs.difference("A", "B")
        == f"id 1000 is {differs.pieces[1]!r} in B but {differs.pieces[0]!r} in A"
    )
    assert differs.pieces[0] == load(model).id_to_piece(1000) != differs.pieces[1]
    changed_other = compare_tokenizers(model, sha, tokenizer_json, other_sha256="0" * 64)
    assert (
        changed_other.same is None
        and changed_other.why == f"{tokenizer_json} has changed since it was recorded"
    )

    # The SFT blend check is the same rule: a .model and its tokenizer.json prepare one blend.
    metas = [("data.train[0].prefix", {"tokenizer": str(model), "tokenizer_sha256": sha})]
    metas.append(
        (
            "data.train[1].prefix",
            {"tokenizer": str(tokenizer_json), "tokenizer_sha256": corpus_sha256(tokenizer_json)},
        )
    )
    check_sft_blend(metas)
    metas.append(
        ("data.train[2].prefix", {"tokenizer": str(other), "tokenizer_sha256": corpus_sha256(other)})
    )
    with pytest.raises(VikhrError, match=r"data.train\[2\].prefix: prepared with tokenizer .*\(id 1000 is "):
        check_sft_blend(metas)

    model.write_bytes(other.read_bytes())  # the recorded file changed since: pieces cannot be compared
    changed = compare_tokenizers(model, sha, tokenizer_json)
    assert changed.same is None and changed.why == f"{model} has changed since it was recorded"
    model.unlink()
    gone = compare_tokenizers(model, sha, tokenizer_json)
    assert gone.same is None and gone.why == f"{model} is no longer there to compare pieces with"
    assert compare_tokenizers(model, sha, MISTRAL_TOKENIZER).same is True  # same file, by its sha256


def test_merge_writes_and_removes_its_output_record_while_holding_the_output_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`data merge` wrote the output's tokenization record after releasing the output's write lock:
    a second writer of that prefix in between got a record that is not its dataset's."""
    from vikhr.data import indexed, tokenization

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "Привет, мир"}\n', encoding="utf-8")
    preprocess([src], tmp_path / "a", MISTRAL_TOKENIZER, append_eod=True)
    a = f"{tmp_path}/a_text_document"
    lock = Path(f"{tmp_path}/ab.lock")
    held = []
    write_records, record_path = tokenization.write_records, tokenization.record_path

    def watched_write(records: dict) -> None:
        held.append(("write", lock.exists()))
        write_records(records)

    def watched_path(prefix: str) -> Path:
        held.append(("path", lock.exists()))
        return record_path(prefix)

    monkeypatch.setattr(tokenization, "write_records", watched_write)
    merge([a], tmp_path / "ab")
    assert held == [("write", True)] and tokenization.read_record(tmp_path / "ab") is not None
    write_indexed(tmp_path / "unrecorded", [[5, 6]], token_dtype(32000))
    held.clear()
    monkeypatch.setattr(indexed, "record_path", watched_path)
    merge([a, tmp_path / "unrecorded"], tmp_path / "ab")  # its record, of the merge before, goes
    assert ("path", True) in held and not record_path(tmp_path / "ab").exists()
