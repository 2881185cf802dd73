"""The pre-tokenization pipeline: inputs, threads, bad lines, interruption, CLI, HF tokenizers."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentencepiece
import zstandard

from tests.conftest import SHARED_DATA
from vikhr.assets import ASSETS, MISTRAL_TOKENIZER, RU_SAMPLE
from vikhr.cli import main as vikhr_main
from vikhr.data import indexed, preprocess, tokenization
from vikhr.errors import VikhrError
from vikhr.jsonl import read_jsonl

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lines() -> list[str]:
    """~3,000 JSONL lines: sample paragraphs with an id and a title, some empty texts."""
    with gzip.open(RU_SAMPLE, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    paragraphs = [p for t in texts for p in t.split("\n\n")][:3000]
    return [
        json.dumps({"id": i, "title": p[:20], "text": "" if i % 97 == 0 else p}, ensure_ascii=False)
        for i, p in enumerate(paragraphs)
    ]


def _files(prefix: Path, keys: tuple[str, ...] = ("text",)) -> list[bytes]:
    return [Path(f"{prefix}_{k}_document{ext}").read_bytes() for k in keys for ext in (".bin", ".idx")]


def test_output_is_the_same_for_1_2_and_8_threads(tmp_path: Path, lines: list[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    outputs = []
    for threads in (1, 2, 8):
        # Small batches so that many are in flight and finish out of order.
        preprocess(
            [src], tmp_path / f"t{threads}", MISTRAL_TOKENIZER, json_keys=("text", "title"),
            append_eod=True, workers=threads, batch_bytes=4096,
        )  # fmt: skip
        outputs.append(_files(tmp_path / f"t{threads}", ("text", "title")))
    assert outputs[0] == outputs[1] == outputs[2]


def test_compressed_split_and_globbed_inputs_equal_one_plain_file(tmp_path: Path, lines: list[str]) -> None:
    plain = tmp_path / "all.jsonl"
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    third = len(lines) // 3
    parts = tmp_path / "parts"
    parts.mkdir()
    with gzip.open(parts / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[:third]) + "\n")
    (parts / "b.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(("\n".join(lines[third : 2 * third]) + "\n").encode())
    )
    # no trailing newline on the last file
    (parts / "c.jsonl").write_text("\n".join(lines[2 * third :]), encoding="utf-8")
    preprocess([plain], tmp_path / "plain", MISTRAL_TOKENIZER, append_eod=True, workers=2)
    s = preprocess(
        [str(parts / "*.jsonl*")], tmp_path / "parts", MISTRAL_TOKENIZER, append_eod=True, workers=2
    )
    assert s.documents == len(lines)
    assert _files(tmp_path / "plain") == _files(tmp_path / "parts")


def test_an_existing_file_with_glob_characters_in_its_name_is_that_file(
    tmp_path: Path, lines: list[str]
) -> None:
    """ "корпус [1].jsonl" was read as a pattern (the class [1]) and refused: "matches no file"."""
    named = tmp_path / "дир с пробелом=1" / "корпус [1]?.jsonl"
    named.parent.mkdir()
    named.write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = preprocess([str(named)], tmp_path / "o", MISTRAL_TOKENIZER, append_eod=True, workers=1)
    assert s.documents == len(lines)


def test_a_glob_skips_the_folders_it_matches(tmp_path: Path, lines: list[str]) -> None:
    """'corpus/*' over a corpus with a subfolder failed on the folder after the files before it."""
    corpus = tmp_path / "corpus"
    (corpus / "zz" / "deeper").mkdir(parents=True)
    (corpus / "a.jsonl").write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    (corpus / "zz" / "b.jsonl").write_text("\n".join(lines[40:50]) + "\n", encoding="utf-8")
    assert preprocess([str(corpus / "*")], tmp_path / "one", MISTRAL_TOKENIZER).documents == 40
    assert preprocess([str(corpus / "**")], tmp_path / "all", MISTRAL_TOKENIZER).documents == 50
    with pytest.raises(VikhrError, match="matches no file"):
        preprocess([str(corpus / "z*")], tmp_path / "none", MISTRAL_TOKENIZER)


def test_one_input_and_one_key_given_as_strings(tmp_path: Path, lines: list[str]) -> None:
    """A str was taken as a sequence of one-character paths and keys ("input file a not found")."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:30]) + "\n", encoding="utf-8")
    s = preprocess(str(src), tmp_path / "o", MISTRAL_TOKENIZER, json_keys="title")
    assert s.documents == 30
    assert Path(f"{tmp_path / 'o'}_title_document.idx").is_file()


def test_a_file_named_twice_is_written_twice_with_a_warning(tmp_path: Path, lines: list[str], capsys) -> None:
    """Overlapping globs repeat a file: kept (upsampling may be meant), but said once per file."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "ru.jsonl").write_text("\n".join(lines[:50]) + "\n", encoding="utf-8")
    (data / "en.jsonl").write_text("\n".join(lines[50:80]) + "\n", encoding="utf-8")
    s = preprocess([str(data / "*.jsonl"), str(data / "ru*.jsonl")], tmp_path / "out", MISTRAL_TOKENIZER)
    assert s.documents == 50 + 30 + 50
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning:")] == [
        f"warning: --input names {(data / 'ru.jsonl').resolve()} 2 times: its documents are written 2 times "
        "(drop the repeat unless that is meant)"
    ]


def test_bad_lines_are_named_or_skipped_and_counted(tmp_path: Path, lines: list[str], capsys) -> None:
    bad = list(lines[:100])
    bad[9] = '{"text": "unterminated'
    bad[41] = '{"title": "no text key"}'
    src = tmp_path / "bad.jsonl"
    data = ("\n".join(bad) + "\n").encode()
    # line 77 is not UTF-8
    data_lines = data.split(b"\n")
    data_lines[76] = b'{"text": "\xff\xfe"}'
    src.write_bytes(b"\n".join(data_lines))
    args = [
        "data", "preprocess", "--input", str(src), "--output-prefix", str(tmp_path / "out"),
        "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER),
        "--workers", "2",
    ]  # fmt: skip
    assert vikhr_main(args) == 2
    err = capsys.readouterr().err
    assert f"{src}:10: not valid JSON" in err and err.count("\n") == 1
    assert not list(tmp_path.glob("out*"))  # nothing half-written
    assert vikhr_main([*args, "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "documents 97," in out and "skipped 3," in out
    bad[9] = bad[10]
    src.write_text("\n".join(bad[:50]), encoding="utf-8")
    with pytest.raises(VikhrError, match=r"bad.jsonl:42: no string field \"text\""):
        preprocess([src], tmp_path / "out2", MISTRAL_TOKENIZER)


def test_a_key_the_first_record_lacks_is_named_as_the_wrong_json_key(tmp_path: Path, capsys) -> None:
    """--json-keys naming no field of the corpus said "fix the line, or pass --skip-invalid", which
    skipped every line."""
    src = tmp_path / "chats.jsonl"
    src.write_text('{"id": "a", "messages": []}\n{"id": "b", "text": "x"}\n', encoding="utf-8")
    args = [
        "data", "preprocess", "--input", str(src), "--output-prefix", str(tmp_path / "out"),
        "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER),
    ]  # fmt: skip
    assert vikhr_main(args) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        f"{src}:1: no string field 'text' (choose the field with --json-keys; the record's fields: id, "
        "messages)\n"
    )
    assert not list(tmp_path.glob("out*"))
    assert vikhr_main([*args, "--skip-invalid"]) == 0  # a first line skipped on purpose: the reader counts it
    assert "documents 1," in capsys.readouterr().out


def test_the_first_record_checked_for_the_json_keys_may_be_in_a_later_file(tmp_path: Path) -> None:
    """Only the first input was read for it: after an empty file (or one of blank lines) a wrong key
    was "fix the line, or pass --skip-invalid", which skipped every line."""
    (tmp_path / "a.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"\n  \n"))
    src = tmp_path / "c.jsonl"
    src.write_text('{"id": "a", "content": "x"}\n', encoding="utf-8")
    with pytest.raises(VikhrError) as e:
        preprocess([str(tmp_path / "*.jsonl*")], tmp_path / "out", MISTRAL_TOKENIZER)
    assert str(e.value) == (
        f"{src}:1: no string field 'text' (choose the field with --json-keys; the record's fields: id, "
        "content)"
    )
    assert not list(tmp_path.glob("out*"))
    s = preprocess([str(tmp_path / "*.jsonl*")], tmp_path / "out", MISTRAL_TOKENIZER, json_keys="content")
    assert s.documents == 1


def test_a_chat_under_json_keys_is_said_as_a_chat_with_the_command_that_encodes_it(
    tmp_path: Path, capsys
) -> None:
    """A chat file under --json-keys messages said "no string field 'messages' (…; the record's fields:
    messages)": a field that is there, named as missing. A value that is not a string is said as what
    it is; a chat names `vikhr sft prepare`, on the first line and deeper in the file alike."""
    chat = {
        "messages": [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте"}]
    }
    src = tmp_path / "chats.jsonl"
    src.write_text(f"{json.dumps(chat)}\n{json.dumps({'messages': 'просто текст'})}\n", encoding="utf-8")
    args = [
        "--input", str(src), "--output-prefix", str(tmp_path / "out"), "--json-keys", "messages",
        "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER),
    ]  # fmt: skip
    said = (
        f'{src}:1: field "messages" is a list of chat messages (role/content), not a string: chats are '
        "encoded with vikhr sft prepare, not pre-tokenized as text; see docs/sft.md\n"
    )
    assert vikhr_main(["data", "preprocess", *args]) == 2
    assert capsys.readouterr().err == f"vikhr data preprocess: error: {said}"
    script = [sys.executable, str(REPO / "tools" / "preprocess_data.py"), *args]
    proc = subprocess.run(script, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr == f"preprocess_data.py: error: {said}"
    assert not list(tmp_path.glob("out*"))
    # --skip-invalid skips the chat and counts it.
    assert vikhr_main(["data", "preprocess", *args, "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("documents 1,") and " skipped 1," in out
    # A chat after a first line of text: the reader's own line, the same words.
    src.write_text(f"{json.dumps({'messages': 'текст'})}\n{json.dumps(chat)}\n", encoding="utf-8")
    assert (
        vikhr_main(["data", "preprocess", *args[:2], "--output-prefix", str(tmp_path / "o2"), *args[4:]]) == 2
    )
    assert capsys.readouterr().err == (
        f"vikhr data preprocess: error: {said.replace(':1:', ':2:').rstrip()} (fix the line, or pass "
        "--skip-invalid to skip such lines)\n"
    )
    # ShareGPT turns name the command that converts them; another value, what it is.
    src.write_text(json.dumps({"conversations": [{"from": "human", "value": "x"}], "n": 3}) + "\n")
    for key, what in [
        ("conversations", "is a list of ShareGPT turns (from/value), not a string: chats are converted "
         "with vikhr sft build and encoded with vikhr sft prepare, not pre-tokenized as text; "
         "see docs/sft.md"),
        ("n", "is a number, not a string (choose the field with --json-keys; the record's fields: "
         "conversations, n)"),
    ]:  # fmt: skip
        assert vikhr_main(["data", "preprocess", *args[:5], key, *args[6:]]) == 2
        assert (
            capsys.readouterr().err
            == f"vikhr data preprocess: error: {src}:1: field {json.dumps(key)} {what}\n"
        )


def test_a_text_kept_as_a_list_of_strings_is_said_with_how_to_join_it(
    tmp_path: Path, capsys, lines: list[str]
) -> None:
    """A corpus keeping each document as a list of sentences or paragraphs was refused with "choose the
    field with --json-keys": the field is the right one, its value is a list. Now the line says so, with
    the command that joins them; the corpus so joined is read."""
    docs = [[p, p[::-1]] for p in (json.loads(line)["text"] for line in lines[1:4])]
    src = tmp_path / "pieces.jsonl"
    records = "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs))
    src.write_text(records, encoding="utf-8")
    args = [
        "--input", str(src), "--output-prefix", str(tmp_path / "out"),
        "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER),
    ]  # fmt: skip
    join = "jq -c '.text |= join(\"\\n\")' IN.jsonl > OUT.jsonl"
    said = (
        f'{src}:1: field "text" is a list of 2 strings, not one string: join them into one string per '
        f"document, e.g. {join}\n"
    )
    assert vikhr_main(["data", "preprocess", *args]) == 2
    assert capsys.readouterr().err == f"vikhr data preprocess: error: {said}"
    script = [sys.executable, str(REPO / "tools" / "preprocess_data.py"), *args]
    proc = subprocess.run(script, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr == f"preprocess_data.py: error: {said}"
    assert sorted(tmp_path.iterdir()) == [src]
    # Past the first line, the native reader's own line: the same words.
    text_first = tmp_path / "text_first.jsonl"
    text_first.write_text(f"{lines[0]}\n" + src.read_text(encoding="utf-8"), encoding="utf-8")
    assert vikhr_main(["data", "preprocess", *args[:1], str(text_first), *args[2:]]) == 2
    assert capsys.readouterr().err == (
        f"vikhr data preprocess: error: {said.replace(f'{src}:1:', f'{text_first}:2:').rstrip()} (fix the "
        "line, or pass --skip-invalid to skip such lines)\n"
    )
    assert not list(tmp_path.glob("out*"))
    if not shutil.which("jq"):
        return
    joined = tmp_path / "joined.jsonl"
    command = join.replace("IN.jsonl", shlex.quote(str(src))).replace("OUT.jsonl", shlex.quote(str(joined)))
    subprocess.run(command, shell=True, check=True)
    assert vikhr_main(["data", "preprocess", "--input", str(joined), *args[2:]]) == 0
    written = indexed.IndexedReader(tmp_path / "out_text_document")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    assert [written.document(i) for i in range(len(written))] == [sp.encode("\n".join(d)) for d in docs]


_CHOOSE_TEXT = "not a string (choose the field with --json-keys; the record's fields: text)"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("1e400", f"is a number, {_CHOOSE_TEXT}"),
        ("9" * 5000, f"is a number, {_CHOOSE_TEXT}"),
        ("[-1e400]", f"is a list, {_CHOOSE_TEXT}"),
        (
            '[{"role": "user", "content": "x", "n": 1e400}]',
            "is a list of chat messages (role/content), not a string: chats are encoded with vikhr sft "
            "prepare, not pre-tokenized as text; see docs/sft.md",
        ),
    ],
    ids=["1e400", "int-past-digits", "list", "chat"],
)
def test_a_first_record_holding_a_number_past_a_double_is_said_in_one_line(
    tmp_path: Path, capsys, value: str, said: str
) -> None:
    """Python's json reads such a number as inf, and the first-record check wrote it back as Infinity
    for the native reader to describe: a ValueError traceback."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": ' + value + "}\n", encoding="utf-8")
    args = [
        "data", "preprocess", "--input", str(src), "--output-prefix", str(tmp_path / "out"),
        "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER),
    ]  # fmt: skip
    assert vikhr_main(args) == 2
    assert capsys.readouterr().err == f'vikhr data preprocess: error: {src}:1: field "text" {said}\n'
    assert list(tmp_path.iterdir()) == [src]


@pytest.mark.parametrize(
    ("line", "said"),
    [
        # The column in characters, without serde_json's "line 1" beside the file's line.
        ('{"text": "ёж", "x": oops}'.encode(), "not valid JSON (expected value at column 21)"),
        # Python's json.dumps writes NaN and Infinity; Megatron's json.loads reads them.
        (
            b'{"text": "x", "score": NaN}',
            "not valid JSON (NaN at column 24: NaN and Infinity are not JSON (Python's json.dumps writes "
            "them unless allow_nan=False); write null instead)",
        ),
        (
            b'{"text": "\\ud83d lone"}',
            "not valid JSON (unpaired UTF-16 surrogate escape \\ud83d at column 11 (half of a pair, "
            "without its other half))",
        ),
        ('{"text": "Привет"}'.encode("cp1251"), "not UTF-8 (byte 0xcf); re-encode it as UTF-8, e.g. iconv"),
    ],
    ids=["column", "nan", "surrogate", "cp1251"],
)
def test_a_bad_line_is_said_with_its_cause(tmp_path: Path, line: bytes, said: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "a"}\n' + line + b"\n")
    with pytest.raises(VikhrError) as e:
        preprocess([src], tmp_path / "out", MISTRAL_TOKENIZER)
    assert str(e.value).startswith(f"{src}:2: {said}"), str(e.value)


def test_megatron_flags_rejected_clearly(tmp_path: Path, capsys) -> None:
    base = [
        "data", "preprocess", "--input", str(RU_SAMPLE), "--output-prefix", str(tmp_path / "o"),
        "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER),
    ]  # fmt: skip
    assert vikhr_main([*base, "--split-sentences"]) == 2
    assert "--split-sentences is not supported: vikhr writes each document as one sequence" in (
        capsys.readouterr().err
    )
    refused = {
        ("--partitions", "4"): "--partitions 4 without --keep-sequential-samples interleaves the documents "
        "in Megatron-LM; vikhr keeps them in input order, streaming the inputs in one pass: add "
        "--keep-sequential-samples, or drop --partitions (--workers sets the parallelism)",
        ("--partitions", "0", "--keep-sequential-samples"): "--partitions must be 1 or more, got 0",
        ("--dataset-impl", "lazy"): "--dataset-impl lazy is not supported: vikhr writes the mmap format "
        "(.bin/.idx), the only one megatron-core reads; give --dataset-impl mmap or drop it",
        ("--dataset-impl", "cached"): "--dataset-impl cached is not supported: vikhr writes the mmap",
        ("--chunk-size", "0"): "--chunk-size must be 1 or more, got 0",
        ("--vocab-extra-ids", "-1"): "--vocab-extra-ids must be 0 or more, got -1",
    }
    for flags, said in refused.items():
        assert vikhr_main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith(f"vikhr data preprocess: error: {said}") and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_megatron_flags_whose_output_is_vikhr_s_are_accepted(tmp_path: Path, lines: list[str]) -> None:
    """Flags of Megatron-LM's releases before megatron-core 0.5 (--dataset-impl mmap, --chunk-size),
    --vocab-extra-ids (its preprocess_data.py sets 0), 0.16's --tokenizer-hf-use-fast and --partitions
    with --keep-sequential-samples (the same documents in input order) were "unrecognized arguments" or
    refused; they now give the bytes vikhr writes without them."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:50]) + "\n", encoding="utf-8")
    common = ["--input", str(src), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model"]
    common += [str(HF_TOKENIZER), "--append-eod", "--no-progress"]
    assert vikhr_main(["data", "preprocess", *common, "--output-prefix", str(tmp_path / "plain")]) == 0
    megatron = [
        *common, "--output-prefix", str(tmp_path / "flags"), "--dataset-impl", "mmap", "--chunk-size", "25",
        "--vocab-extra-ids", "100", "--tokenizer-hf-use-fast", "--workers", "4", "--partitions", "4",
        "--keep-sequential-samples", "--log-interval", "1000", "--lang", "russian", "--keep-newlines",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "preprocess_data.py"), *megatron],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for suffix in ("_text_document.bin", "_text_document.idx"):
        assert (tmp_path / f"flags{suffix}").read_bytes() == (tmp_path / f"plain{suffix}").read_bytes()


def test_log_interval_prints_megatron_s_progress_lines(tmp_path: Path, lines: list[str], capsys) -> None:
    """--log-interval was accepted and ignored: a batch job's log (no terminal, so no progress bar)
    showed nothing until the end. Now it prints Megatron-LM's progress line; 0 is refused."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:50]) + "\n", encoding="utf-8")
    common = ["data", "preprocess", "--input", str(src), "--output-prefix", str(tmp_path / "out")]
    common += ["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER)]
    assert vikhr_main([*common, "--log-interval", "10"]) == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Processed ")]
    assert progress and progress[-1].startswith("Processed 50 documents ("), progress
    assert progress[-1].endswith(" MB/s).")
    for path in tmp_path.glob("out_*"):
        path.unlink()
    assert vikhr_main([*common, "--log-interval", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--log-interval must be 1 or more" in err, err
    assert not list(tmp_path.glob("out_*"))


def test_megatron_tokenizer_types_vikhr_lacks_say_what_to_give_instead(tmp_path: Path, capsys) -> None:
    """Megatron-LM's own GPT-2 example (GPT2BPETokenizer with --vocab-file/--merge-file) and its other
    types were "invalid choice", listing vikhr's four with no way from the user's files to one of them
    (and GPT2BPETokenizer, which takes no --tokenizer-model, would next have been told to add one)."""
    from vikhr.data.preprocess import MEGATRON_ONLY_TOKENIZER_TYPES

    megatron_readme = [
        "--input", str(RU_SAMPLE), "--output-prefix", str(tmp_path / "my-gpt2"), "--vocab-file",
        "gpt2-vocab.json", "--tokenizer-type", "GPT2BPETokenizer", "--merge-file", "gpt2-merges.txt",
        "--append-eod",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "preprocess_data.py"), *megatron_readme],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(
        "preprocess_data.py: error: argument --tokenizer-type: GPT2BPETokenizer is not implemented in vikhr: "
        "a vocab.json with its merges.txt is one tokenizer.json"
    ), proc.stderr
    assert "as --tokenizer-model with --tokenizer-type HuggingFaceTokenizer" in proc.stderr
    advice = {
        "BertWordPieceCase": "models vikhr does not train; give a GPT-style model's tokenizer",
        "TikTokenizer": "vikhr tokenizer import-tekken TEKKEN_JSON OUT_DIR",
        "NullTokenizer": "vikhr.data.indexed.write_indexed",
        "MultimodalTokenizer": "vikhr trains text-only models",
        "SFTTokenizer": "chats are encoded with vikhr sft prepare",
    }
    for tokenizer_type in MEGATRON_ONLY_TOKENIZER_TYPES:
        argv = ["data", "preprocess", *megatron_readme[:4], "--tokenizer-type", tokenizer_type]
        with pytest.raises(SystemExit) as e:
            vikhr_main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert f"--tokenizer-type: {tokenizer_type} is not implemented in vikhr: " in err
        assert advice.get(tokenizer_type, "") in err
    with pytest.raises(VikhrError, match=r"TikTokenizer is not implemented in vikhr: .* import-tekken"):
        preprocess([RU_SAMPLE], tmp_path / "o", MISTRAL_TOKENIZER, tokenizer_type="TikTokenizer")
    # Beside a type vikhr has, the GPT-2 files are said as not read, the vocabulary being the model's.
    hf = [*megatron_readme[:4], "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "x"]
    assert vikhr_main(["data", "preprocess", *hf, "--merge-file", "gpt2-merges.txt"]) == 2
    assert capsys.readouterr().err == (
        "vikhr data preprocess: error: --merge-file is not read: the vocabulary comes from --tokenizer-model "
        "(a tokenizer.json holds the vocabulary and merges); drop it\n"
    )
    assert not list(tmp_path.iterdir())


HF_TOKENIZER = MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.tokenizer.json"


def test_recent_megatron_flags_asking_for_what_vikhr_does_are_accepted(
    tmp_path: Path, lines: list[str]
) -> None:
    """--legacy-tokenizer and --tokenizer-hf-include-special-tokens ask for what HuggingFaceTokenizer
    does (the post-processor's special tokens, as Megatron-LM's legacy tokenizers); --use-gigatoken (a
    faster encoder) changes no id: they were "unrecognized arguments"; the output is the same as
    without them."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:50]) + "\n", encoding="utf-8")
    common = ["--input", str(src), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model"]
    common += [str(HF_TOKENIZER), "--append-eod", "--workers", "2", "--no-progress"]
    assert vikhr_main(["data", "preprocess", *common, "--output-prefix", str(tmp_path / "plain")]) == 0
    megatron = [*common, "--output-prefix", str(tmp_path / "flags"), "--legacy-tokenizer", "--use-gigatoken"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "preprocess_data.py"), *megatron,
         "--tokenizer-hf-include-special-tokens"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for suffix in ("_text_document.bin", "_text_document.idx"):
        assert (tmp_path / f"flags{suffix}").read_bytes() == (tmp_path / f"plain{suffix}").read_bytes()


@pytest.mark.filterwarnings("ignore")  # megatron.core's import-time warnings of optional packages
def test_tokenizer_sentencepiece_legacy_writes_megatron_lms_ids_or_is_refused(
    tmp_path: Path, lines: list[str], capsys
) -> None:
    """--tokenizer-sentencepiece-legacy was accepted and ignored with any flags. Megatron-LM's legacy
    mode of its SentencePiece wrapper writes the same ids (vikhr's, checked here against megatron.core's
    own wrapper) but knows no EOD without --tokenizer-special-tokens, so its --append-eod run fails; its
    legacy tokenizers (--legacy-tokenizer) and HuggingFaceTokenizer do not read the flag. It is now
    taken where Megatron-LM writes those ids, and refused in one line, nothing written, where its run
    fails or it is not read for the type given."""
    from megatron.core.tokenizers import MegatronTokenizer

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:30]) + "\n", encoding="utf-8")
    megatron = MegatronTokenizer.from_pretrained(
        tokenizer_path=str(MISTRAL_TOKENIZER),
        metadata_path={"library": "sentencepiece"},
        legacy=True,
        special_tokens=None,
    )
    with pytest.raises(AttributeError):
        megatron.eod  # noqa: B018 - the EOD Megatron-LM's --append-eod asks its legacy mode for
    common = ["data", "preprocess", "--input", str(src), "--tokenizer-model", str(MISTRAL_TOKENIZER)]
    common += ["--tokenizer-type", "GPTSentencePieceTokenizer", "--no-progress"]
    flag = "--tokenizer-sentencepiece-legacy"
    for name, flags in (("plain", []), ("legacy", [flag]), ("old", ["--legacy-tokenizer", "--append-eod"])):
        assert vikhr_main([*common, *flags, "--output-prefix", str(tmp_path / name)]) == 0
    written = indexed.IndexedReader(f"{tmp_path}/legacy_text_document")
    texts = [json.loads(line)["text"] for line in lines[:30]]
    assert [written.document(i) for i in range(len(written))] == [megatron.tokenize(t) for t in texts]
    for suffix in ("_text_document.bin", "_text_document.idx"):
        assert (tmp_path / f"legacy{suffix}").read_bytes() == (tmp_path / f"plain{suffix}").read_bytes()
    # --legacy-tokenizer's tokenizers do not read it: the same dataset with it as without.
    argv = [*common, "--legacy-tokenizer", "--append-eod", flag, "--output-prefix", str(tmp_path / "old2")]
    assert vikhr_main(argv) == 0
    for suffix in ("_text_document.bin", "_text_document.idx"):
        assert (tmp_path / f"old2{suffix}").read_bytes() == (tmp_path / f"old{suffix}").read_bytes()
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    hf = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(HF_TOKENIZER)]
    for flags, said in (
        (["--append-eod"], "with --append-eod: Megatron-LM's SentencePiece wrapper in its legacy mode"),
        (hf, "is not read with --tokenizer-type HuggingFaceTokenizer: it switches the legacy mode of "),
    ):
        assert vikhr_main([*common, flag, *flags, "--output-prefix", str(tmp_path / "refused")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: {flag} {said}" in err and "drop" in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (
            ["--tokenizer-hf-no-include-special-tokens"],
            'a copy of the tokenizer.json with "post_processor": null',
        ),
        (["--trust-remote-code"], "runs no code from a model repository; give the tokenizer's local"),
        (["--tokenizer-special-tokens", "<a>", "<b>"], "the tokenizer's own special tokens"),
        (
            ["--find-optimal-num-workers"],
            "does not benchmark worker counts; drop it (--workers 0, the default",
        ),
        (["--workers-to-check", "4", "8", "--max-documents", "100"], "goes with --find-optimal-num-workers"),
        (["--tokenizer-hf-no-use-fast"], "encodes with the tokenizer.json, the fast tokenizer"),
        (["--no-tokenizer-sentencepiece-ignore-extra-whitespaces"], "runs of spaces as the .model's"),
        (["--disable-tokenizer-sentencepiece-ignore-extra-whitespaces"], "as the .model's normalizer says"),
        (["--tokenizer-metadata", "meta.json"], "kind from --tokenizer-type and its files"),
        (["--chat-template", "{{ messages }}"], "no chat template; chats go through vikhr sft"),
        (["--padded-vocab-size", "40064"], "the trainer pads the embedding table itself); drop it"),
        (["--no-pad-vocab-size"], "the ids do not depend on it"),
        (["--tiktoken-pattern", "v2"], "goes with --tokenizer-type TikTokenizer, which is not implemented in "
         "vikhr: its vocabulary is in Mistral's tekken format: convert the model's tekken.json with vikhr "
         "tokenizer import-tekken"),
        (["--tiktoken-num-special-tokens", "1000"], "goes with --tokenizer-type TikTokenizer"),
        (["--null-tokenizer-eod-id", "2"], "goes with --tokenizer-type NullTokenizer, which"),
        (["--tiktoken-special-tokens", "<unk>", "<s>"], "goes with --tokenizer-type TikTokenizer, which"),
    ],
    ids=[
        "no-special-tokens", "remote-code", "special-tokens", "optimal-workers", "workers-to-check",
        "no-use-fast", "no-ignore-spaces", "disable-ignore-spaces", "metadata", "chat-template",
        "padded-vocab", "no-pad-vocab", "tiktoken-pattern", "tiktoken-specials", "null-eod",
        "tiktoken-special-tokens",
    ],
)  # fmt: skip
def test_recent_megatron_flags_vikhr_does_not_honour_say_what_to_do(
    tmp_path: Path, capsys, flags: list[str], said: str
) -> None:
    """Each was argparse's "unrecognized arguments: ... (see --help)", which said nothing of what to do."""
    argv = [
        "data", "preprocess", "--input", str(RU_SAMPLE), "--output-prefix", str(tmp_path / "o"),
        "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(HF_TOKENIZER), *flags,
    ]  # fmt: skip
    assert vikhr_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vikhr data preprocess: error: {flags[0]} is not supported: "), err
    assert said in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_a_tokenizer_of_the_other_kind_than_the_type_names_the_type_to_give(tmp_path: Path, capsys) -> None:
    """The README's SentencePiece command given a byte-level model's tokenizer.json (a Llama-3 user
    copying it), or HuggingFaceTokenizer given a .model: the error said "check --tokenizer-type and
    --tokenizer-model"; it names the type that reads the file. Nothing is written."""
    byte_level = tmp_path / "llama3-tok"
    byte_level.mkdir()
    (byte_level / "tokenizer.json").write_text(
        (ASSETS / "tokenizers" / "vikhr-ru-40k.tokenizer.json").read_text(encoding="utf-8"), encoding="utf-8"
    )
    prefix = ["data", "preprocess", "--input", str(RU_SAMPLE), "--output-prefix", str(tmp_path / "ru")]
    for tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer"):
        argv = [*prefix, "--tokenizer-type", tokenizer_type, "--tokenizer-model", str(byte_level)]
        assert vikhr_main([*argv, "--append-eod"]) == 2
        assert capsys.readouterr().err == (
            f"vikhr data preprocess: error: --tokenizer-type {tokenizer_type} needs a SentencePiece .model, "
            f"but {byte_level / 'tokenizer.json'} is an HF tokenizer.json: give --tokenizer-type "
            "HuggingFaceTokenizer for it, or a SentencePiece .model as --tokenizer-model\n"
        )
    argv = [*prefix, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER)]
    assert vikhr_main(argv) == 2
    assert capsys.readouterr().err == (
        f"vikhr data preprocess: error: --tokenizer-type HuggingFaceTokenizer needs a tokenizer.json, but "
        f"{MISTRAL_TOKENIZER} is not a .json file: give a SentencePiece type for it (--tokenizer-type "
        "GPTSentencePieceTokenizer, Llama2Tokenizer or SentencePieceTokenizer), or a tokenizer.json as "
        "--tokenizer-model\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama3-tok"]


SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")


def _megatron_sentencepiece_ids(
    sp: sentencepiece.SentencePieceProcessor, text: str, append_eod: bool, bos: bool
) -> list[int]:
    """The ids Megatron-LM's tools/preprocess_data.py writes for one document (no sentence split):
    the tokenizer's tokenize(text), then EOD (the .model's EOS) where --append-eod and that gave ids.
    megatron.core.tokenizers' SentencePieceTokenizer.text_to_ids is the .model's encode_as_ids for
    every SentencePiece type; the legacy _Llama2Tokenizer.tokenize puts BOS before it."""
    ids = ([sp.bos_id()] if bos else []) + sp.encode_as_ids(text)
    return [*ids, sp.eos_id()] if append_eod and ids else ids


def test_sentencepiece_types_write_the_ids_of_megatron_lms_current_tokenizers(
    tmp_path: Path, lines: list[str]
) -> None:
    """Llama2Tokenizer prepended BOS to every document (Megatron-LM's legacy tokenizers, its only ones
    up to core_v0.14), while Megatron-LM's current tools/preprocess_data.py (megatron.core.tokenizers)
    adds none for any SentencePiece type: a user's training script read other ids than Megatron-LM's
    own tool writes with the same flags. Every type writes the .model's pieces alone, and the record
    and inspect say whose ids they are. Special-token strings in the text stay text."""
    docs = [json.loads(line)["text"] for line in lines[:30]] + ["<s> </s> <EOD> <CLS> <pad> text", ""]
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), encoding="utf-8"
    )
    sp = sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    for tokenizer_type in SENTENCEPIECE_TYPES:
        for append_eod in (False, True):
            prefix = tmp_path / f"{tokenizer_type}-{append_eod}"
            preprocess([src], prefix, MISTRAL_TOKENIZER, tokenizer_type=tokenizer_type, append_eod=append_eod)
            reader = indexed.IndexedReader(f"{prefix}_text_document")
            written = [reader.document(i) for i in range(len(reader))]
            expected = [_megatron_sentencepiece_ids(sp, t, append_eod, bos=False) for t in docs]
            assert written == expected, (tokenizer_type, append_eod)
    for idx in tmp_path.glob("*_text_document.idx"):
        record = tokenization.read_record(str(idx).removesuffix(".idx"))
        assert record.convention == tokenization.MEGATRON_CORE
    proc = subprocess.run(
        [sys.executable, "-m", "vikhr", "data", "inspect", f"{tmp_path}/Llama2Tokenizer-True_text_document"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    assert f"ids follow: {tokenization.CONVENTIONS[tokenization.MEGATRON_CORE]}\n" in proc.stdout


def test_legacy_tokenizer_flag_writes_the_ids_of_megatron_lms_legacy_tokenizers(
    tmp_path: Path, lines: list[str], capsys
) -> None:
    """--legacy-tokenizer (Megatron-LM core_v0.15 and 0.16) was accepted and changed nothing: it now
    gives its legacy tokenizers' ids, BOS before every Llama2Tokenizer document (an empty one too),
    recorded as such; GPTSentencePieceTokenizer's are the same either way. The legacy
    SentencePieceTokenizer, whose ids vikhr does not implement, is refused with nothing written."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:30]) + "\n", encoding="utf-8")
    texts = [json.loads(line)["text"] for line in lines[:30]]
    assert "" in texts
    sp = sentencepiece.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    common = ["data", "preprocess", "--input", str(src), "--tokenizer-model", str(MISTRAL_TOKENIZER)]
    common += ["--append-eod", "--legacy-tokenizer", "--no-progress"]
    for tokenizer_type, bos in (("Llama2Tokenizer", True), ("GPTSentencePieceTokenizer", False)):
        prefix = tmp_path / tokenizer_type
        assert vikhr_main([*common, "--tokenizer-type", tokenizer_type, "--output-prefix", str(prefix)]) == 0
        reader = indexed.IndexedReader(f"{prefix}_text_document")
        written = [reader.document(i) for i in range(len(reader))]
        assert written == [_megatron_sentencepiece_ids(sp, t, True, bos=bos) for t in texts]
        assert tokenization.read_record(f"{prefix}_text_document").convention == tokenization.MEGATRON_LEGACY
    capsys.readouterr()
    assert vikhr_main(["data", "inspect", f"{tmp_path}/Llama2Tokenizer_text_document"]) == 0
    assert (
        f"ids follow: {tokenization.CONVENTIONS[tokenization.MEGATRON_LEGACY]}\n" in capsys.readouterr().out
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [*common, "--tokenizer-type", "SentencePieceTokenizer", "--output-prefix", str(tmp_path / "spt")]
    assert vikhr_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--legacy-tokenizer --tokenizer-type SentencePieceTokenizer" in err
    assert "drop --legacy-tokenizer" in err and "GPTSentencePieceTokenizer" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_record_written_before_it_named_its_convention_reads_as_the_ids_it_holds(
    tmp_path: Path, lines: list[str]
) -> None:
    """A record of an older vikhr has no convention: its Llama2Tokenizer datasets began each document
    with BOS (Megatron-LM's legacy ids), its other types wrote the current ones."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    for tokenizer_type, convention in (
        ("Llama2Tokenizer", tokenization.MEGATRON_LEGACY),
        ("GPTSentencePieceTokenizer", tokenization.MEGATRON_CORE),
    ):
        prefix = f"{tmp_path}/{tokenizer_type}_text_document"
        preprocess([src], tmp_path / tokenizer_type, MISTRAL_TOKENIZER, tokenizer_type=tokenizer_type)
        path = tokenization.record_path(prefix)
        older = json.loads(path.read_text(encoding="utf-8"))
        del older["convention"]
        path.write_text(json.dumps(older), encoding="utf-8")
        assert tokenization.read_record(prefix).convention == convention


def test_tools_script_and_inspect(tmp_path: Path, lines: list[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    cmd = [
        sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(src),
        "--output-prefix", str(tmp_path / "ru"), "--tokenizer-type", "GPTSentencePieceTokenizer",
        "--tokenizer-model", str(MISTRAL_TOKENIZER), "--append-eod", "--workers", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
    assert "documents 200," in proc.stdout and "tokens/s" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "vikhr", "data", "inspect", str(tmp_path / "ru_text_document"),
         "--tokenizer-model", str(MISTRAL_TOKENIZER)],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    assert "documents 200 (empty 3)" in proc.stdout and "decoded:" in proc.stdout


@contextlib.contextmanager
def _writing_into(
    fifo: Path, proc: subprocess.Popen, lines: list[str], dataset: Path, timeout: float = 60
) -> Iterator[None]:
    """`lines` written into `fifo`, the input of the run `proc`, and its end kept open (the run still
    reading) until the block ends; the block starts once the run writes `dataset`'s .bin scratch file."""
    deadline = time.monotonic() + timeout
    while True:  # the run opens its end of the FIFO once it has started: no blocking open
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run never opened its input"
            time.sleep(0.05)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        if lines:  # none: a writer that sends nothing
            f.write("\n".join(lines) + "\n")
            f.flush()
        scratch = f"{dataset.name}.bin*.partial"
        while not list(dataset.parent.glob(scratch)) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield


# megatron's IndexedDataset.__del__ trips over its own failed __init__; that noise is expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_kill_9_leaves_no_output_that_loads(tmp_path: Path, lines: list[str]) -> None:
    """Feed the run through a FIFO, kill it mid-stream, and look for loadable datasets."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    prefix = tmp_path / "out"
    cmd = [
        sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(fifo),
        "--output-prefix", str(prefix), "--tokenizer-type", "GPTSentencePieceTokenizer",
        "--tokenizer-model", str(MISTRAL_TOKENIZER), "--json-keys", "text", "title", "--workers", "2",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with _writing_into(fifo, proc, lines[:2000], tmp_path / "out_text_document"):
            time.sleep(0.5)  # let it tokenize and write some batches
            assert proc.poll() is None, "the run ended although its input is still open"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    except BrokenPipeError:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list(tmp_path.glob("out_title_document*.partial")), "expected the run to have started writing"
    for key in ("text", "title"):
        p = f"{prefix}_{key}_document"
        assert not Path(p + ".idx").exists() and not Path(p + ".bin").exists()
        with pytest.raises(Exception):  # noqa: B017 - any failure to load is the point
            IndexedDataset(p)
    # The next run writing these datasets takes over the killed run's scratch files.
    src = tmp_path / "again.jsonl"
    src.write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
    preprocess([src], prefix, MISTRAL_TOKENIZER, json_keys=("text", "title"), workers=1)
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_while_the_input_fifo_sends_nothing_ends_the_run(
    tmp_path: Path, signum: int, status: int
) -> None:
    """A SIGTERM or Ctrl-C while the reader waited on a FIFO (or stdin) whose writer keeps it open and
    sends nothing took effect only once the writer sent more or closed it: the run went on waiting.
    It now stops within a moment, one line, nothing left behind."""
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    cmd = [
        sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(fifo),
        "--output-prefix", str(tmp_path / "out"), "--tokenizer-type", "GPTSentencePieceTokenizer",
        "--tokenizer-model", str(MISTRAL_TOKENIZER), "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with _writing_into(fifo, proc, [], tmp_path / "out_text_document"):
            time.sleep(0.3)
            assert proc.poll() is None, "the run ended although its input is still open"
            proc.send_signal(signum)
            proc.wait(timeout=30)  # the FIFO still open: the stop alone ends the run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()
    assert proc.returncode == status, err
    assert err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_sigterm_mid_run_stops_cleanly_and_keeps_the_dataset_written_there_before(
    tmp_path: Path, lines: list[str]
) -> None:
    """A SIGTERM (kill, a job scheduler's stop) ended the run at once: its scratch files and lock
    stayed, and the record of the dataset already at the prefix, moved aside for the run, was lost
    (the old ids then said "tokenizer: not recorded"). Now it stops as Ctrl-C does, one line, status 143."""
    from vikhr.data import tokenization

    prefix = tmp_path / "out"
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
    preprocess([old], prefix, MISTRAL_TOKENIZER)
    before = _files(prefix)
    record = tokenization.load_record(f"{prefix}_text_document")
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    cmd = [
        sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(fifo),
        "--output-prefix", str(prefix), "--tokenizer-type", "GPTSentencePieceTokenizer",
        "--tokenizer-model", str(MISTRAL_TOKENIZER), "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with _writing_into(fifo, proc, lines[:2000], tmp_path / "out_text_document"):
            time.sleep(0.3)
            assert proc.poll() is None, "the run ended although its input is still open"
            proc.send_signal(signal.SIGTERM)
            time.sleep(1)  # it stops once its reader returns: at the end of the input, closed below
        proc.wait(timeout=30)
    except BrokenPipeError:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.count("\n") == 1 and "terminated (SIGTERM)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.jsonl",
        "old.jsonl",
        "out_text_document.bin",
        "out_text_document.idx",
        "out_text_document.tokenization.json",
    ]
    assert _files(prefix) == before
    assert tokenization.load_record(f"{prefix}_text_document") == record


def test_sigterm_raises_in_a_writing_block_only_where_the_program_left_its_default_action(capsys) -> None:
    """`data preprocess` and `data merge` turn SIGTERM into `Terminated` (their clean-up then runs, and
    the CLI ends with 143); a program that set its own SIGTERM handler keeps it, and the default action
    is back after the block."""
    from vikhr.errors import Terminated, report_ending, sigterm_as_interrupt

    with pytest.raises(Terminated) as stopped, sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here, at once
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert report_ending("vikhr data merge", stopped.value) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == f"vikhr data merge: {stopped.value}\n"
    noted: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: noted.append(signum))
    try:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
        assert noted == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_record_a_killed_run_had_moved_aside_is_put_back_by_the_next_run(
    tmp_path: Path, lines: list[str]
) -> None:
    """A run killed with SIGKILL (the out-of-memory killer) left the record of the dataset already at
    its prefix hidden under a scratch name for good: the old ids read as unrecorded, and a next run
    that failed kept it so. The next run at that prefix now puts it back where it still describes
    the dataset there (and removes it where not)."""
    from vikhr.data import tokenization

    prefix = tmp_path / "out"
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
    preprocess([src], prefix, MISTRAL_TOKENIZER)
    dataset = f"{prefix}_text_document"
    record = tokenization.load_record(dataset)
    killed = (
        "import os, signal; from vikhr.data import indexed\n"
        f"with indexed.writing([{dataset!r}]), indexed.replacing_records([{dataset!r}]):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run([sys.executable, "-c", killed], cwd=REPO, env=env).returncode == -signal.SIGKILL
    assert tokenization.load_record(dataset) is None  # moved aside by the killed run
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n{oops\n", encoding="utf-8")
    with pytest.raises(VikhrError, match=r"bad\.jsonl:2"):
        preprocess([bad], prefix, MISTRAL_TOKENIZER)
    assert tokenization.load_record(dataset) == record
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    # Killed once its new dataset was in place: the old record describes other ids and goes.
    assert subprocess.run([sys.executable, "-c", killed], cwd=REPO, env=env).returncode == -signal.SIGKILL
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(lines[20:30]) + "\n", encoding="utf-8")
    preprocess([other], tmp_path / "new", MISTRAL_TOKENIZER)
    for suffix in (".bin", ".idx"):
        os.replace(f"{tmp_path}/new_text_document{suffix}", dataset + suffix)
    with pytest.raises(VikhrError, match=r"bad\.jsonl:2"):
        preprocess([bad], prefix, MISTRAL_TOKENIZER)
    assert tokenization.load_record(dataset) is None
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_run_leaves_the_working_files_of_other_runs_in_the_folder_alone(
    tmp_path: Path, lines: list[str]
) -> None:
    """Starting `--output-prefix out/ru` removed every `out/ru_*_document` scratch file: those of
    `out/ru_lit` and of other keys of `out/ru` being written, which then failed at their end with
    "No such file or directory" naming no file."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
    others = [f"{tmp_path}/ru_lit_text_document", f"{tmp_path}/ru_body_document"]
    with (
        indexed.IndexedWriter(others[0], "uint16") as lit,
        indexed.IndexedWriter(others[1], "uint16") as body,
    ):
        for w in (lit, body):
            w.add_document([1, 2])
        preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, json_keys=("text", "title"), workers=1)
        for w in (lit, body):
            w.add_document([3])
    for prefix in others:
        assert indexed.IndexedReader(prefix).document(1) == [3]
    assert not list(tmp_path.glob("*.partial"))


def test_a_run_removes_the_scratch_files_a_killed_run_of_another_dataset_left(
    tmp_path: Path, lines: list[str]
) -> None:
    """A killed run's scratch files of another dataset in the folder stayed until that dataset was
    written again. Now a run removes them when the dataset's lock names a process of this host that is
    gone and no one holds it; a dataset being written, another host's, or scratch without a lock file
    (a writer that takes none) are left alone."""
    from vikhr.locks import exclusive

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    host = os.uname().nodename
    # Each dataset's lock file, by the holder line in it (None: no lock file).
    locks = {
        "killed": f"pid {int(gone.stdout)} on {host}",
        "elsewhere": f"pid {int(gone.stdout)} on another-{host}",
        "alive": f"pid {os.getpid()} on {host}",
        "unlocked": None,
        "held": None,  # held below
    }
    scratch = (".bin.tmp.partial", ".idx.lengths.partial")
    for name, holder in locks.items():
        for suffix in scratch:
            (tmp_path / f"{name}_text_document{suffix}").write_bytes(b"x")
        if holder is not None:
            (tmp_path / f"{name}_text_document.lock").write_text(holder + "\n", encoding="utf-8")
    with exclusive(tmp_path / "held_text_document.lock", "busy", remove=True):
        preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, workers=1)
    kept = ("elsewhere", "alive", "unlocked", "held")
    assert sorted(p.name for p in tmp_path.glob("*.partial")) == sorted(
        f"{name}_text_document{suffix}" for name in kept for suffix in scratch
    )
    assert sorted(p.name for p in tmp_path.glob("*.lock")) == [
        "alive_text_document.lock",
        "elsewhere_text_document.lock",
    ]


def test_an_error_writing_one_key_publishes_no_key(tmp_path: Path, lines: list[str]) -> None:
    """The keys' datasets were published one by one: an I/O error (a full disk) while the title's
    .idx was written left the new text dataset beside the old title dataset, both valid."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
    keys = ("text", "title")
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, json_keys=keys, workers=1)
    old = _files(tmp_path / "ru", keys)
    blocked = tmp_path / "ru_title_document.idx.tmp.partial"
    blocked.mkdir()  # the title's .idx cannot be written
    src.write_text("\n".join(lines[20:40]) + "\n", encoding="utf-8")
    with pytest.raises(VikhrError, match=f"^{blocked}: "):
        preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, json_keys=keys, workers=1)
    assert _files(tmp_path / "ru", keys) == old
    blocked.rmdir()
    assert not list(tmp_path.glob("*.partial"))


def test_blank_lines_are_skipped(tmp_path: Path, lines: list[str]) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[1:11]) + "\n", encoding="utf-8")
    preprocess([src], tmp_path / "plain", MISTRAL_TOKENIZER, append_eod=True, workers=1)
    # A trailing blank line, blank lines between documents, one with spaces and a CR.
    src.write_text("\n".join(lines[1:6]) + "\n\n  \r\n" + "\n".join(lines[6:11]) + "\n\n", encoding="utf-8")
    s = preprocess([src], tmp_path / "blank", MISTRAL_TOKENIZER, append_eod=True, workers=1)
    assert (s.documents, s.skipped) == (10, 0)
    assert _files(tmp_path / "plain") == _files(tmp_path / "blank")


def test_a_byte_order_mark_opening_a_file_is_dropped(tmp_path: Path, lines: list[str]) -> None:
    """A UTF-8 BOM (files saved on Windows) before line 1 — in a plain and a gzip file — gives the
    same dataset as the file without it (was 'line 1: not valid JSON'), as the Python readers do."""
    text = "\n".join(lines[1:11]) + "\n"
    (tmp_path / "plain.jsonl").write_text(text, encoding="utf-8")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    with gzip.open(tmp_path / "bom.jsonl.gz", "wb") as f:
        f.write(b"\xef\xbb\xbf" + text.encode())
    for name in ("plain.jsonl", "bom.jsonl", "bom.jsonl.gz"):
        preprocess([tmp_path / name], tmp_path / name.replace(".", "-"), MISTRAL_TOKENIZER, append_eod=True)
    plain = _files(tmp_path / "plain-jsonl")
    assert _files(tmp_path / "bom-jsonl") == plain and _files(tmp_path / "bom-jsonl-gz") == plain


def test_a_byte_order_mark_opening_a_later_line_is_said_as_one(tmp_path: Path) -> None:
    """Files that each open with a BOM, joined with cat: the Rust reader said "not valid JSON
    (expected value at column 1)" of a line that looks valid (the mark is invisible), Python "decode
    using utf-8-sig". Both readers now name the mark and where it comes from."""
    from vikhr.jsonl import bom_said

    src = tmp_path / "joined.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n{"text": "b"}\n\xef\xbb\xbf{"text": "c"}\n')
    said = f"{src}:3: not valid JSON ({bom_said(1)})"
    with pytest.raises(VikhrError) as rust:
        preprocess([src], tmp_path / "out", MISTRAL_TOKENIZER)
    assert str(rust.value).startswith(said + " (fix the line")
    with pytest.raises(VikhrError) as python:
        list(read_jsonl(src))
    assert str(python.value).startswith(said)
    assert "sed -i 's/^\\xEF\\xBB\\xBF//' FILE" in said


@pytest.mark.timeout(300)
def test_many_input_files_give_the_dataset_of_their_concatenation(tmp_path: Path, lines: list[str]) -> None:
    """More files than batches in flight (2 × workers + 2): the end of each file kept one of those
    places, and the run hung for good at the fifth file with one worker."""
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, line in enumerate(lines[:12]):
        (parts / f"p{i:02}.jsonl").write_text(line + "\n", encoding="utf-8")
    (tmp_path / "all.jsonl").write_text("\n".join(lines[:12]) + "\n", encoding="utf-8")
    summary = preprocess(
        sorted(parts.iterdir()), tmp_path / "many", MISTRAL_TOKENIZER, workers=1, append_eod=True
    )
    preprocess([tmp_path / "all.jsonl"], tmp_path / "one", MISTRAL_TOKENIZER, workers=1, append_eod=True)
    assert summary.documents == 12
    assert _files(tmp_path / "many") == _files(tmp_path / "one")


def test_gzip_members_and_zero_padding_read_as_gzip_reads_them(tmp_path: Path, lines: list[str]) -> None:
    """A .gz of several members (concatenated files, parallel gzip) with zero padding between and
    after them (tape and block-device copies) gives the plain file's dataset, as gzip -d and the
    Python readers read it (the zeros were refused as a damaged member)."""
    first, second = "\n".join(lines[:6]) + "\n", "\n".join(lines[6:12]) + "\n"
    (tmp_path / "plain.jsonl").write_text(first + second, encoding="utf-8")
    padded = gzip.compress(first.encode()) + bytes(700) + gzip.compress(second.encode()) + bytes(512)
    (tmp_path / "padded.jsonl.gz").write_bytes(padded)
    assert [r for _, r in read_jsonl(tmp_path / "padded.jsonl.gz")] == [json.loads(x) for x in lines[:12]]
    for name in ("plain.jsonl", "padded.jsonl.gz"):
        preprocess([tmp_path / name], tmp_path / name.replace(".", "-"), MISTRAL_TOKENIZER, append_eod=True)
    assert _files(tmp_path / "padded-jsonl-gz") == _files(tmp_path / "plain-jsonl")


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_truncated_compressed_input_is_named_as_damaged(
    tmp_path: Path, lines: list[str], suffix: str
) -> None:
    """A .gz / .zst cut short (an interrupted copy) is one line naming the file as damaged or
    truncated — was the decoder's message with a hint to check the paths."""
    text = ("\n".join(lines) + "\n").encode()
    whole = gzip.compress(text) if suffix == ".gz" else zstandard.ZstdCompressor().compress(text)
    cut = tmp_path / f"cut.jsonl{suffix}"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VikhrError) as e:
        preprocess([cut], tmp_path / "out", MISTRAL_TOKENIZER, append_eod=True)
    message = str(e.value)
    assert message.startswith(f"{cut}: ") and "\n" not in message
    assert "the compressed file is damaged or truncated: test it with gzip -t or zstd -t" in message
    assert "check the input and output paths" not in message
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_compressed_input_of_no_bytes_holds_no_line_in_both_readers(tmp_path: Path, suffix: str) -> None:
    """An empty shard written as 0 bytes: a .zst was "incomplete frame … damaged or truncated" to
    data preprocess while the Python readers (tokenizer train, the --json-keys check) and the .gz
    reader read it as no line."""
    from vikhr.jsonl import read_jsonl

    empty = tmp_path / f"empty.jsonl{suffix}"
    empty.write_bytes(b"")
    src = tmp_path / "b.jsonl"
    src.write_text('{"text": "Привет"}\n', encoding="utf-8")
    assert list(read_jsonl(empty)) == []
    summary = preprocess([empty, src], tmp_path / "out", MISTRAL_TOKENIZER, append_eod=True)
    preprocess([src], tmp_path / "alone", MISTRAL_TOKENIZER, append_eod=True)
    assert summary.documents == 1 and _files(tmp_path / "out") == _files(tmp_path / "alone")


def test_a_parquet_or_json_array_input_is_named_as_such(
    tmp_path: Path, lines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A Parquet corpus (an HF dataset's files) said "not UTF-8 (byte 0x..); re-encode it … iconv -f
    cp1251"; one JSON array "not valid JSON" with --skip-invalid advised, which skips it whole. The
    Python reader (tokenizer train / compare) says the same."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vikhr.jsonl import read_jsonl

    texts = [json.loads(line)["text"] for line in lines[:3]]
    parquet = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"text": texts}), parquet)
    array = tmp_path / "корпус с пробелом.jsonl"  # an array under a JSONL name, a BOM before it
    array.write_text("\ufeff [\n" + ",\n".join(json.dumps({"text": t}) for t in texts) + "\n]\n")
    said = {
        parquet: f"{parquet} is a Parquet file, not JSON Lines (one JSON object a line): write its rows as "
        "JSONL first",
        array: f"{array} is one JSON array, not JSON Lines (one JSON object a line): write it as JSONL "
        f"first, e.g. jq -c '.[]' '{array}' > '{tmp_path}/корпус с пробелом.records.jsonl'",
    }
    tok = ["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER)]
    for path, line in said.items():
        argv = ["data", "preprocess", "--input", str(path), "--output-prefix", str(tmp_path / "o"), *tok]
        assert vikhr_main([*argv, "--skip-invalid"]) == 2
        assert capsys.readouterr().err == f"vikhr data preprocess: error: {line}\n"
        with pytest.raises(VikhrError) as e:
            next(read_jsonl(path))
        assert str(e.value) == line
    assert not list(tmp_path.glob("o_*"))


def test_compressed_data_under_a_plain_name_is_named(tmp_path: Path, lines: list[str]) -> None:
    """As the Python reader says it, before any output is written (was "not valid JSON" at line 1;
    xz data "not UTF-8 (byte 0xfd)"). The Rust reader says it too, of a file only it reads (a pipe)."""
    import lzma
    import threading

    data = ("\n".join(lines) + "\n").encode()
    hidden = tmp_path / "ru.jsonl"
    hidden.write_bytes(gzip.compress(data))
    with pytest.raises(VikhrError, match=r"ru\.jsonl holds gzip-compressed data: name it ru\.jsonl\.gz$"):
        preprocess([hidden], tmp_path / "out", MISTRAL_TOKENIZER, append_eod=True)
    hidden.write_bytes(lzma.compress(data))
    undecoded = "which the readers do not decode: decompress it, or recompress it with gzip/zstd"
    with pytest.raises(VikhrError, match=rf"ru\.jsonl holds xz-compressed data, {undecoded}$"):
        preprocess([hidden], tmp_path / "out", MISTRAL_TOKENIZER, append_eod=True)
    fifo = tmp_path / "pipe.jsonl"
    for packed, said in ((gzip.compress(data), "gzip-compressed data: name it pipe.jsonl.gz"),
                         (lzma.compress(data), f"xz-compressed data, {undecoded}")):  # fmt: skip
        os.mkfifo(fifo)

        def feed(packed: bytes = packed) -> None:
            with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as f:
                f.write(packed)

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        with pytest.raises(VikhrError) as e:
            preprocess([fifo], tmp_path / "out", MISTRAL_TOKENIZER, append_eod=True)
        assert str(e.value) == f"{fifo} holds {said}"
        writer.join(timeout=30)
        fifo.unlink()
    assert not list(tmp_path.glob("out*"))


def test_an_input_in_a_compression_the_readers_do_not_decode_is_named(
    tmp_path: Path, lines: list[str]
) -> None:
    """An .xz input was read as plain text: "not valid UTF-8 (fix the line, or pass --skip-invalid)"."""
    import lzma

    plain = tmp_path / "a.jsonl"
    plain.write_text("\n".join(lines[:10]) + "\n", encoding="utf-8")
    packed = tmp_path / "b.jsonl.xz"
    packed.write_bytes(lzma.compress(plain.read_bytes()))
    message = f"{packed}: unsupported compression (.xz); decompress it or recompress with gzip/zstd"
    with pytest.raises(VikhrError) as e:
        preprocess([plain, packed], tmp_path / "out", MISTRAL_TOKENIZER)
    assert str(e.value) == message
    assert not list(tmp_path.glob("out*"))


def test_a_sentencepiece_unigram_model_is_named_as_one(tmp_path: Path, lines: list[str]) -> None:
    """It was "not a SentencePiece model: only BPE models are supported (model_type 1 ...)"."""
    import io

    model = io.BytesIO()
    texts = [json.loads(line)["text"] for line in lines[:300]]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type="unigram", vocab_size=500, minloglevel=2
    )
    path = tmp_path / "uni.model"
    path.write_bytes(model.getvalue())
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:10]) + "\n", encoding="utf-8")
    with pytest.raises(VikhrError) as e:
        preprocess([src], tmp_path / "out", path)
    assert str(e.value) == (
        f"{path} is a SentencePiece Unigram model: vikhr encodes SentencePiece BPE models only (give a BPE "
        "model, or the tokenizer's tokenizer.json with --tokenizer-type HuggingFaceTokenizer)"
    )


def test_input_without_documents_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    src = tmp_path / "blank.jsonl"
    src.write_text("\n\n", encoding="utf-8")
    args = [
        "data", "preprocess", "--input", str(src), "--output-prefix", str(tmp_path / "out"),
        "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER),
    ]  # fmt: skip
    assert vikhr_main(args) == 2
    err = capsys.readouterr().err
    assert "no documents in 1 input file(s)" in err and err.count("\n") == 1, err
    src.write_text(json.dumps({"text": ""}) + "\n", encoding="utf-8")
    with pytest.raises(VikhrError, match='all 1 documents have an empty "text"'):
        preprocess([src], tmp_path / "out", MISTRAL_TOKENIZER)
    assert not list(tmp_path.glob("out*"))


def test_huggingface_tokenizer_json(tmp_path: Path, lines: list[str]) -> None:
    import tokenizers
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    texts = [json.loads(line)["text"] for line in lines[:400]]
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<s>"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:300]) + "\n", encoding="utf-8")
    preprocess(
        [src], tmp_path / "hf", tmp_path, tokenizer_type="HuggingFaceTokenizer", append_eod=True, workers=2
    )
    ds = IndexedDataset(str(tmp_path / "hf_text_document"))
    seq = ds.document_indices
    for i, line in enumerate(lines[:300]):
        text = json.loads(line)["text"]
        want = [*tok.encode(text).ids, 0] if text else []
        # Megatron's HF tokenizer keeps the post-processor's BOS even for an empty text.
        if not text:
            want = [1, 0]
        got = ds[int(seq[i])].tolist() if seq[i + 1] > seq[i] else []
        assert got == want, i


@pytest.mark.parametrize("model", ["WordLevel", "byte-level BPE"])
def test_truncation_and_padding_in_a_tokenizer_json_play_no_part(
    tmp_path: Path, lines: list[str], model: str
) -> None:
    """transformers turns both off for a call that asks for neither, as Megatron's tokenizer calls it:
    a WordLevel file had every document cut to its max_length and padded, a byte-level one was
    refused."""
    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    texts = [json.loads(line)["text"] for line in lines[:200]]
    if model == "WordLevel":
        words = sorted({w for t in texts for w in t.split()})
        tok = tokenizers.Tokenizer(
            models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, "[UNK]")
        )
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, show_progress=False))
    want = [tok.encode(t).ids for t in texts]
    tok.enable_truncation(4)
    tok.enable_padding(length=4096, pad_id=0)
    tok.save(str(tmp_path / "tokenizer.json"))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    preprocess([src], tmp_path / "hf", tmp_path, tokenizer_type="HuggingFaceTokenizer")
    ds = indexed.IndexedReader(tmp_path / "hf_text_document")
    assert [ds.document(i) for i in range(len(ds))] == want


def test_a_tokenizer_json_with_a_gap_in_its_ids_gets_a_dtype_that_holds_the_largest(tmp_path: Path) -> None:
    """The dtype followed the number of tokens (3: uint16) rather than the largest id: the run
    failed at the first "b" with "token id 70000 does not fit uint16 (check the input and output
    paths)"."""
    import tokenizers
    from tokenizers import models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 70000}, "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a b c"}\n', encoding="utf-8")
    summary = preprocess([src], tmp_path / "gap", tmp_path, tokenizer_type="HuggingFaceTokenizer")
    assert summary.dtype == "int32"
    assert indexed.IndexedReader(tmp_path / "gap_text_document").document(0) == [1, 70000, 0]


@pytest.mark.skipif(not (SHARED_DATA / "corpus" / "ru").is_dir(), reason="needs ../shared/data/corpus/ru")
def test_the_benchmark_times_only_the_tools_asked_for(tmp_path: Path) -> None:
    """`--tools vikhr` also limits the whole-process table (it ran gigatoken's process anyway, a
    failed row where gigatoken is not installed)."""
    bench = ["--mb", "1", "--threads", "1", "--repeats", "1", "--tools", "vikhr"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_preprocess.py"), *bench],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert any(row.startswith("| vikhr | 1 | 1 |") for row in rows)
    assert any(row.startswith("| vikhr data preprocess | 1 | 1 |") for row in rows)
    assert not any("gigatoken" in row for row in rows)


def test_a_second_writer_of_a_dataset_is_refused_while_the_first_writes(
    tmp_path: Path, lines: list[str]
) -> None:
    """Two processes writing one dataset at once shared its scratch files: one published a mix of
    both as a success. Every writer (preprocess, merge, sft prepare) holds the dataset's lock: the
    second is refused in one line naming the first, and the first's output is whole."""
    from vikhr.assets import RU_SEED_CHATS

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    preprocess([corpus], tmp_path / "in", MISTRAL_TOKENIZER, append_eod=True)
    out = tmp_path / "out"
    dataset = f"{out}_text_document"
    tok = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(MISTRAL_TOKENIZER)]
    chats = ["--input", str(RU_SEED_CHATS), "--tokenizer", str(MISTRAL_TOKENIZER)]
    second_writers = {
        "preprocess": ["data", "preprocess", "--input", str(corpus), *tok, "--output-prefix", str(out)],
        "merge": ["data", "merge", "--inputs", f"{tmp_path}/in_text_document", "--output-prefix", dataset],
        "sft prepare": ["sft", "prepare", *chats, "--output-prefix", str(out)],
    }
    busy = f"{dataset}.bin/.idx is being written by another process (pid {os.getpid()} on"
    with indexed.IndexedWriter(dataset, "uint16") as first:
        first.add_document([1, 2, 3])
        for verb, argv in second_writers.items():
            proc = subprocess.run(
                [sys.executable, "-m", "vikhr", *argv], capture_output=True, text=True, cwd=REPO, timeout=300
            )
            assert proc.returncode == 2, (verb, proc.stderr)
            [line] = proc.stderr.strip().splitlines()
            assert busy in line, verb
            assert not Path(f"{dataset}.bin").exists(), verb
    assert indexed.IndexedReader(dataset).document(0) == [1, 2, 3]
    assert not Path(f"{dataset}.lock").exists()  # no lock file left beside the dataset


def test_a_ctrl_c_either_stops_with_nothing_written_or_comes_too_late_to_stop_anything(
    tmp_path: Path,
) -> None:
    """The native pipeline notices a Ctrl-C when it polls (every 0.2 s, with the progress call). One
    noticed after the outputs were renamed in place turned a finished run into "interrupted" (exit
    130) beside its complete output; one noticed before the rename must leave nothing."""
    from vikhr import _core

    native = _core.Tokenizer("sentencepiece", str(MISTRAL_TOKENIZER), add_special_tokens=False)
    files = [str(RU_SAMPLE)] * 12  # long enough for the progress call to come while it works

    def run(prefix: Path, interrupt_when) -> bool:
        def progress(*counts: int) -> None:
            if interrupt_when(prefix):
                raise KeyboardInterrupt

        try:
            _core.preprocess(files, str(prefix), ["text"], native, threads=1, progress=progress)
        except KeyboardInterrupt:
            return True
        return False

    early = tmp_path / "early" / "x"
    early.parent.mkdir()
    assert run(early, lambda prefix: True)  # at the first poll: stopped
    assert list(early.parent.iterdir()) == []
    late = tmp_path / "late" / "x"
    late.parent.mkdir()
    written = lambda prefix: Path(f"{prefix}_text_document.idx").exists()  # noqa: E731
    assert not run(late, written)  # after the rename: the run's own result, complete
    reference = tmp_path / "reference" / "x"
    reference.parent.mkdir()
    assert not run(reference, lambda prefix: False)
    for suffix in ("_text_document.bin", "_text_document.idx"):
        assert Path(f"{late}{suffix}").read_bytes() == Path(f"{reference}{suffix}").read_bytes()
    assert sorted(p.name for p in late.parent.iterdir()) == ["x_text_document.bin", "x_text_document.idx"]


def test_each_dataset_records_the_tokenizer_that_wrote_it(tmp_path: Path, lines: list[str]) -> None:
    """A dataset was only its .bin/.idx: nothing said which tokenizer wrote it, so datasets of two
    tokenizers could be blended or merged unnoticed. Each now has a record beside it, which
    Megatron's reader leaves alone and which describes only the dataset it was written with."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from vikhr.data import tokenization
    from vikhr.tokenizer.corpus import corpus_sha256

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:50]) + "\n", encoding="utf-8")
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, json_keys=("text", "title"), append_eod=True)
    for key in ("text", "title"):
        prefix = f"{tmp_path}/ru_{key}_document"
        record = tokenization.read_record(prefix)
        assert (
            record is not None
            and tokenization.record_path(prefix).name == f"ru_{key}_document.tokenization.json"
        )
        assert (record.tokenizer, record.tokenizer_sha256) == (
            str(MISTRAL_TOKENIZER),
            corpus_sha256(MISTRAL_TOKENIZER),
        )
        assert (record.json_key, record.append_eod, record.eod_id, record.vocab_size) == (key, True, 2, 32000)
        assert record.documents == 50 and len(IndexedDataset(prefix)) == indexed.inspect(prefix).sequences
    # Another dataset written over the text one without a record (Megatron-LM's tools): the record left
    # there is not taken as its own.
    indexed.write_indexed(f"{tmp_path}/ru_text_document", [[5, 6, 7]], "uint16")
    assert tokenization.read_record(f"{tmp_path}/ru_text_document") is None
    assert not list(tmp_path.glob("*tokenizer*"))  # nothing that a tokenizer look-up would take


def test_inspect_shows_the_recorded_tokenizer_and_decodes_only_with_it(
    tmp_path: Path, lines: list[str], capsys
) -> None:
    """`data inspect` said nothing of the tokenizer a dataset records, and decoded its ids with any
    --tokenizer-model given: another tokenizer's text was shown as the dataset's."""
    from vikhr.cli import main

    other = MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.model"

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, append_eod=True)
    prefix = f"{tmp_path}/ru_text_document"
    assert main(["data", "inspect", prefix, "--tokenizer-model", str(MISTRAL_TOKENIZER)]) == 0
    out = capsys.readouterr().out
    assert f"  tokenizer: {MISTRAL_TOKENIZER} (sha256 " in out and "key text, EOD 2 appended" in out
    assert "  decoded: " in out
    assert main(["data", "inspect", prefix, "--tokenizer-model", str(other)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"{prefix} was tokenized with {MISTRAL_TOKENIZER} (sha256 " in line
    assert line.endswith(f"its ids would decode to other text (give --tokenizer-model {MISTRAL_TOKENIZER})")
    indexed.write_indexed(prefix, [[5, 6, 7]], "uint16")  # a dataset of Megatron-LM's tools
    assert main(["data", "inspect", prefix]) == 0
    assert (
        "  tokenizer: not recorded (written by Megatron-LM's tools or an older vikhr)"
        in capsys.readouterr().out
    )


def test_a_reused_prefix_never_keeps_the_record_of_the_dataset_written_there_before(
    tmp_path: Path, lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that published its dataset and then failed writing its record (a full disk, a kill) left
    the record of the dataset written there before, naming the old tokenizer, beside the new ids. Now
    a run that fails before publishing keeps the old record of the old dataset; one that fails after
    leaves none; a writer that records nothing (`write_indexed`, `sft prepare`) drops it."""
    from vikhr.data import tokenization

    other = MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.model"
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:50]) + "\n", encoding="utf-8")
    prefix = f"{tmp_path}/ru_text_document"
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER)
    recorded = tokenization.load_record(prefix)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n{oops\n", encoding="utf-8")
    with pytest.raises(VikhrError, match=r"bad\.jsonl:2"):
        preprocess([bad], tmp_path / "ru", other)
    assert tokenization.read_record(prefix) == recorded  # nothing published: the old pair and its record

    def disk_full(records: dict) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokenization, "write_records", disk_full)
    with pytest.raises(VikhrError, match="No space left on device"):
        preprocess([src], tmp_path / "ru", other)
    monkeypatch.undo()
    assert recorded is not None and indexed.inspect(prefix).tokens != recorded.tokens  # the new ids are there
    assert tokenization.load_record(prefix) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.jsonl",
        "in.jsonl",
        "ru_text_document.bin",
        "ru_text_document.idx",
    ]
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER)
    indexed.write_indexed(prefix, [[5, 6, 7]], "uint16")
    assert tokenization.load_record(prefix) is None


def test_the_record_names_the_tokenizer_as_it_was_when_loaded(
    tmp_path: Path, lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokenizer file was hashed after the run: one replaced while a corpus was tokenized (a
    tokenizer trained again into the same place) was recorded as the dataset's tokenizer."""
    import shutil

    from vikhr import _core
    from vikhr.data import tokenization
    from vikhr.tokenizer.corpus import corpus_sha256

    tok = tmp_path / "tok" / "tokenizer.model"
    tok.parent.mkdir()
    shutil.copy(MISTRAL_TOKENIZER, tok)
    run = _core.preprocess

    def replaced_meanwhile(*args: object, **kwargs: object) -> dict:
        summary = run(*args, **kwargs)
        shutil.copy(MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.model", tok)
        return summary

    monkeypatch.setattr(_core, "preprocess", replaced_meanwhile)
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
    preprocess([src], tmp_path / "ru", tok)
    record = tokenization.load_record(f"{tmp_path}/ru_text_document")
    assert record is not None and record.tokenizer_sha256 == corpus_sha256(MISTRAL_TOKENIZER)
