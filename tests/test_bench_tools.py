"""The benchmark scripts in tools/ refuse a bad option in one line on stderr, exit status 2, before
anything is built, measured or printed to stdout (they were tracebacks, a ZeroDivisionError, an
empty median after the table's header, or a silently wrong table)."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import load_tool


def _refusal(script: str, args: list[str], env: dict[str, str] | None = None) -> str:
    """Run tools/SCRIPT with `args`; assert exit status 2, no stdout and one stderr line; return it."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{script}: error: ")
    return lines[0]


def _no_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--runs", "0"], "argument --runs: expected a positive int, got '0'"),
        (["--shapes", "0x8"], "argument --shapes: expected TOKENSxFFN of two positive integers"),
        (["--shapes", "abc"], "argument --shapes: expected TOKENSxFFN of two positive integers"),
        (["--device", "foo"], "--device foo: not a torch device (give cpu or cuda)"),
    ],
)
def test_bench_swiglu_refuses_a_bad_option(args: list[str], message: str) -> None:
    assert message in _refusal("bench_swiglu.py", args)


def test_bench_swiglu_on_cuda_without_a_gpu_is_one_line() -> None:
    _no_cuda()
    line = _refusal("bench_swiglu.py", ["--device", "cuda"])
    assert "--device cuda: torch sees no CUDA device here (run with --device cpu)" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--repeats", "0"], "argument --repeats: expected a positive int, got '0'"),
        # the memory column is the warm-up's peak: 0 for every stack without one
        (["--warmup", "0"], "argument --warmup: expected a positive int, got '0'"),
        # 0 was read as "the default" and the table showed another shape
        (["--batch", "0"], "argument --batch: expected a positive int, got '0'"),
        (["--layers", "-1"], "argument --layers: expected a positive int, got '-1'"),
        (["--seq", "1"], "argument --seq: 1 token leaves no next token to predict"),
        (["--specs", "bogus"], "argument --specs: invalid choice: 'bogus'"),
        # was a traceback after the table's first lines
        (["--specs", "sdpa", "te"], "argument --specs: te needs a GPU (Transformer Engine's kernels)"),
    ],
)
def test_bench_train_refuses_a_bad_option(args: list[str], message: str) -> None:
    assert message in _refusal("bench_train.py", ["--cpu-small", *args])


def test_bench_train_without_a_gpu_names_cpu_small() -> None:
    _no_cuda()
    assert "no CUDA device: run with --cpu-small" in _refusal("bench_train.py", [])


def test_bench_kernels_refuses_a_json_path_in_a_missing_directory() -> None:
    """The JSON is written after the first vocabulary size: a missing directory was a traceback
    there, after that size had been measured."""
    tiny = ["--device", "cpu", "--n", "8", "--vocab", "16", "--runs", "1", "--impls", "eager"]
    line = _refusal("bench_kernels.py", [*tiny, "--json", "/nonexistent-dir/k.json"])
    assert "--json /nonexistent-dir/k.json: no directory /nonexistent-dir" in line


_EVAL = ["--random", "tiny", "--device", "cpu", "--tasks", "terra", "--limit", "2", "--batch-sizes", "1"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--repeats", "0"], "argument --repeats: expected a positive int, got '0'"),
        (["--limit", "0"], "argument --limit: expected a positive int, got '0'"),
        # 0 layers built the shape's full depth
        (["--layers", "0"], "argument --layers: expected a positive int, got '0'"),
        (["--batch-sizes", "0"], "argument --batch-sizes: expected a positive integer or 'auto', got '0'"),
        (["--batch-sizes", "1", "1"], "argument --batch-sizes: a batch size given twice: 1 1"),
        (
            ["--json", "/nonexistent-dir/r.json"],
            "--json /nonexistent-dir/r.json: no directory /nonexistent-dir",
        ),
        (["--tasks", "nosuch"], "unknown task 'nosuch' in --tasks"),
        (["--data-dir", "/nonexistent-dir"], "data file not found: /nonexistent-dir/terra/val.jsonl"),
    ],
)
def test_bench_eval_refuses_a_bad_option(args: list[str], message: str) -> None:
    assert message in _refusal("bench_eval.py", [*_EVAL, *args])


def test_bench_eval_without_the_shared_data_names_vikhr_shared_data(tmp_path: Path) -> None:
    """The missing default data was a 'data file not found' that did not say where the default
    comes from."""
    line = _refusal("bench_eval.py", _EVAL, env={"VIKHR_SHARED_DATA": str(tmp_path / "nowhere")})
    assert f"no evaluation data in {tmp_path / 'nowhere' / 'eval'}" in line and "VIKHR_SHARED_DATA" in line


def test_bench_eval_finds_the_shared_data_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default --data-dir was ../shared/data/eval from the current directory: run from anywhere
    but the repository's root, the benchmark looked in the wrong place."""
    monkeypatch.delenv("VIKHR_SHARED_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    bench_eval = load_tool("bench_eval")
    monkeypatch.setattr(sys, "argv", ["bench_eval.py", "--random", "tiny", "--tasks", "bpc"])
    _, args = bench_eval.parse_args()
    assert args.data_dir == REPO.parent / "shared" / "data" / "eval"


@pytest.mark.parametrize("size", ["0", "-3", "big", "auto:4"])
def test_bench_eval_refuses_the_batch_sizes_vikhr_eval_refuses_in_its_words(size: str) -> None:
    """The benchmark checks --batch-sizes with `vikhr eval --batch-size`'s own argparse type, by its
    public name (it imported a private one), and keeps a good value as given."""
    from vikhr.eval.cli import batch_size_arg

    bench_eval = load_tool("bench_eval")
    with pytest.raises(argparse.ArgumentTypeError) as eval_says:
        batch_size_arg(size)
    with pytest.raises(argparse.ArgumentTypeError) as bench_says:
        bench_eval.batch_size_text(size)
    assert str(bench_says.value) == str(eval_says.value)
    assert [bench_eval.batch_size_text(v) for v in ("auto", "8")] == ["auto", "8"]


def test_bench_eval_refuses_layers_with_a_model_directory(tmp_path: Path) -> None:
    line = _refusal("bench_eval.py", ["--model", str(tmp_path), "--layers", "2"])
    assert "argument --layers: only with --random" in line


def test_bench_eval_refuses_a_model_that_is_not_an_hf_directory_in_vikhr_evals_words(tmp_path: Path) -> None:
    """A missing --model directory was refused as 'tokenizer not found'."""
    args = ["--tasks", "bpc", "--limit", "1", "--batch-sizes", "1", "--repeats", "1", "--device", "cpu"]
    line = _refusal("bench_eval.py", ["--model", str(tmp_path / "nowhere"), *args])
    assert f"--model: model directory not found: {tmp_path / 'nowhere'}" in line
    line = _refusal("bench_eval.py", ["--model", str(tmp_path), *args])
    assert f"--model: {tmp_path} has no config.json" in line


def test_bench_eval_on_cuda_without_a_gpu_is_one_line() -> None:
    _no_cuda()
    line = _refusal("bench_eval.py", [*_EVAL, "--device", "cuda"])
    assert "--device cuda: torch sees no CUDA device here" in line


def test_bench_eval_table_with_one_batch_size_has_a_cell_per_column() -> None:
    bench_eval = load_tool("bench_eval")
    rates = {"1": {"terra": {"documents": 2, "s_per_doc": 0.1, "tokens_per_s": 100.0}}}
    rows = {"terra": {"full_documents": 307, "estimate_s": 30.7}}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench_eval.print_table(["terra"], ["1"], rates, rows)
    head, rule, row = out.getvalue().splitlines()
    assert head.count("|") == rule.count("|") == row.count("|") == 7
    assert "|  |" not in head


@pytest.mark.parametrize(
    "args,message",
    [
        (["--runs", "0"], "argument --runs: expected a positive int, got '0'"),
        (["--layers", "1", "0"], "argument --layers: expected a positive int, got '0'"),
        (["--old-tokenizer", "/nonexistent.model"], "--old-tokenizer /nonexistent.model: no such file"),
        # the default tokenizers are Mistral-7B's: the first adapt-vocab run failed on this shape
        (
            ["--shape", "mistral-nemo-12b"],
            "32,000 pieces, but --shape mistral-nemo-12b's embedding has 131,072",
        ),
    ],
)
def test_bench_adapt_refuses_a_bad_option(args: list[str], message: str, tmp_path: Path) -> None:
    assert message in _refusal("bench_adapt.py", ["--work", str(tmp_path / "work"), *args])
    assert not (tmp_path / "work").exists()  # no checkpoint written


def test_bench_adapt_and_merge_refuse_a_work_directory_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("", encoding="utf-8")
    for script in ("bench_adapt.py", "bench_merge.py"):
        line = _refusal(script, ["--work", str(tmp_path / "file" / "work")])
        assert f"{tmp_path / 'file'} is a file, not a directory" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--runs", "0"], "argument --runs: expected a positive int, got '0'"),
        (["--layers", "-1"], "argument --layers: expected a positive int, got '-1'"),
        # `vikhr merge --t`'s own words, and one t: the baseline merges every tensor at it
        (["--t", "1.5"], "argument --t: '1.5': t = 1.5 is outside [0, 1] (0 keeps model A, 1 takes model B)"),
        (["--t", "0,1"], "argument --t: one t for the whole model (the load-everything baseline takes no"),
    ],
)
def test_bench_merge_refuses_a_bad_option(args: list[str], message: str, tmp_path: Path) -> None:
    assert message in _refusal("bench_merge.py", ["--work", str(tmp_path / "work"), *args])
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("t", ["1.5", "-0.1", "nan", "half", "0.5,"])
def test_bench_merge_refuses_the_t_vikhr_merge_refuses_in_its_words(t: str) -> None:
    """The benchmark's --t is `vikhr merge --t`'s argparse type (it had its own rule and words)."""
    from vikhr.merge.cli import t_arg

    bench_merge = load_tool("bench_merge")
    with pytest.raises(argparse.ArgumentTypeError) as merge_says:
        t_arg(t)
    with pytest.raises(argparse.ArgumentTypeError) as bench_says:
        bench_merge.interpolation(t)
    assert str(bench_says.value) == str(merge_says.value)
    assert [bench_merge.interpolation(v) for v in ("0", "0.25", "[1]")] == [0.0, 0.25, 1.0]


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("bench_sft_dedup.py", ["--runs", "0"], "argument --runs: expected a positive int, got '0'"),
        ("bench_sft_dedup.py", ["--chats", "0"], "argument --chats: expected a positive int, got '0'"),
        ("bench_sft_dedup.py", ["--build-runs", "-1"], "argument --build-runs: expected a positive int"),
        ("bench_sft_dedup.py", ["--skip", "vikhr", "datasketch", "build"], "every measurement skipped"),
        ("bench_sft_templates.py", ["--runs", "0"], "argument --runs: expected a positive int, got '0'"),
        ("bench_sft_templates.py", ["--chats", "0"], "argument --chats: expected a positive int, got '0'"),
        (
            "bench_sft_templates.py",
            ["--workers", "0"],
            "argument --workers: expected a positive int, got '0'",
        ),
    ],
)
def test_the_sft_benchmarks_refuse_a_bad_option(script: str, args: list[str], message: str) -> None:
    assert message in _refusal(script, args)


def test_bench_sft_templates_with_one_worker_has_no_repeated_rows(tmp_path: Path) -> None:
    """--workers 1 repeated the three one-process rows' first and last, and the ratios of the first
    rows were taken against the repeats (a 1-worker llama3 row 0.94x llama3)."""
    bench = load_tool("bench_sft_templates")
    one, many = (bench.table_cases(tmp_path / "a", tmp_path / "b", workers) for workers in (1, 2))
    assert [(name, workers) for name, _, _, workers in one] == [
        ("llama3", 1),
        ("own, same template", 1),
        ("own, Llama-3.1", 1),
    ]
    assert many[:3] == one and [(name, workers) for name, _, _, workers in many[3:]] == [
        ("llama3", 2),
        ("own, Llama-3.1", 2),
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--mb", "0"], "argument --mb: expected a positive int, got '0'"),
        (["--threads", "1", "0"], "argument --threads: expected a positive int, got '0'"),
        (["--repeats", "0"], "argument --repeats: expected a positive int, got '0'"),
        (["--slow-repeats", "0"], "argument --slow-repeats: expected a positive int, got '0'"),
        (["--process-repeats", "-1"], "argument --process-repeats: expected an integer from 0, got '-1'"),
        (["--model", "/nonexistent.model"], "--model /nonexistent.model: no such file"),
        (["--model", "/"], "--model /: is a directory, not a file"),
        (
            ["--family", "byte-bpe", "--tools", "vikhr", "megatron-style"],
            "megatron-style not in the byte-bpe",
        ),
    ],
)
def test_bench_preprocess_refuses_a_bad_option(args: list[str], message: str, shared_data: Path) -> None:
    assert message in _refusal("bench_preprocess.py", args, {"VIKHR_SHARED_DATA": str(shared_data)})


@pytest.mark.parametrize("family", ["sentencepiece", "byte-bpe"])
def test_bench_preprocess_without_the_corpora_names_the_variable(family: str, tmp_path: Path) -> None:
    """With no corpus under VIKHR_SHARED_DATA the byte-level benchmark converted tekken and then ended
    with a bare 'no corpus' line, exit status 1; the SentencePiece one named only --model."""
    (tmp_path / "tokenizers").mkdir()
    (tmp_path / "tokenizers" / "mistral-7b-v0.1.model").write_bytes(b"")
    line = _refusal("bench_preprocess.py", ["--family", family], {"VIKHR_SHARED_DATA": str(tmp_path)})
    assert f"no corpus in {tmp_path}/corpus/ru (set VIKHR_SHARED_DATA to the shared data directory)" in line


def test_bench_preprocess_without_a_baseline_installed_says_so_like_its_other_refusals(
    shared_data: Path,
) -> None:
    """A missing gigatoken was 'bench_preprocess: ...', not the script's one-line error format."""
    import importlib.util

    if importlib.util.find_spec("gigatoken") is not None:
        pytest.skip("gigatoken is installed")
    line = _refusal("bench_preprocess.py", ["--tools", "vikhr", "gigatoken"])
    assert "gigatoken not installed: pip install -e '.[bench]' (or leave them out of --tools)" in line


def _corpus_lines(name: str, count: int) -> list[bytes]:
    """`count` JSONL documents of about 22 kB each, numbered and named after their file."""
    return [
        json.dumps({"text": f"{name} {i} " + "слово " * 2000}, ensure_ascii=False).encode() + b"\n"
        for i in range(count)
    ]


@pytest.mark.parametrize("per_file", [60, 10])  # 1.3 MB files, or 0.2 MB ones cycled to reach 1 MB
def test_bench_preprocess_builds_a_corpus_of_about_the_size_asked_for(
    per_file: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--mb N` copied whole corpus files (115 MB at --mb 100, a whole file at --mb 1): the corpus
    now ends at the first line that reaches N MB, in name order, cycling, the same bytes every run."""
    corpora = tmp_path / "shared" / "corpus" / "ru"
    corpora.mkdir(parents=True)
    sources = {name: _corpus_lines(name, per_file) for name in ("b", "a")}
    for name, lines in sources.items():
        with gzip.GzipFile(corpora / f"{name}.jsonl.gz", "wb", mtime=0) as f:
            f.write(b"".join(lines))
    bench_preprocess = load_tool("bench_preprocess")
    monkeypatch.setattr(bench_preprocess, "SHARED", tmp_path / "shared")
    nbytes, docs = bench_preprocess.build_corpus(tmp_path / "corpus.jsonl", 1)
    written = (tmp_path / "corpus.jsonl").read_bytes()
    expected = list(itertools.islice(itertools.cycle(sources["a"] + sources["b"]), docs))
    assert written == b"".join(expected) and nbytes == len(written)
    assert len(written) - len(expected[-1]) < 1_000_000 <= len(written)
    assert bench_preprocess.build_corpus(tmp_path / "again.jsonl", 1) == (nbytes, docs)
    assert (tmp_path / "again.jsonl").read_bytes() == written


def test_bench_preprocess_keeps_a_corpus_file_s_last_line_without_a_newline_one_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corpus file whose last line had no final newline was joined with the next file's first line
    (cycling, with its own first line): two JSON documents on one line of the benchmark's JSONL."""
    corpora = tmp_path / "corpus" / "ru"
    corpora.mkdir(parents=True)
    sources = {name: _corpus_lines(name, 10) for name in ("a", "b")}
    for name, lines in sources.items():
        with gzip.GzipFile(corpora / f"{name}.jsonl.gz", "wb", mtime=0) as f:
            f.write(b"".join(lines).removesuffix(b"\n"))
    bench_preprocess = load_tool("bench_preprocess")
    monkeypatch.setattr(bench_preprocess, "SHARED", tmp_path)
    nbytes, docs = bench_preprocess.build_corpus(tmp_path / "corpus.jsonl", 1)
    written = (tmp_path / "corpus.jsonl").read_bytes()
    assert written.endswith(b"\n") and nbytes == len(written)
    expected = list(itertools.islice(itertools.cycle(sources["a"] + sources["b"]), docs))
    assert written == b"".join(expected) and docs > 20  # every file's end, and a cycle back to the first
    assert [json.loads(line)["text"] for line in written.splitlines()] == [
        json.loads(line)["text"] for line in expected
    ]


def test_bench_preprocess_refuses_empty_corpora_instead_of_cycling_them_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpora = tmp_path / "corpus" / "ru"
    corpora.mkdir(parents=True)
    with gzip.GzipFile(corpora / "empty.jsonl.gz", "wb", mtime=0):
        pass
    bench_preprocess = load_tool("bench_preprocess")
    monkeypatch.setattr(bench_preprocess, "SHARED", tmp_path)
    with pytest.raises(SystemExit, match=r"corpus/ru/\*\.jsonl\.gz hold no lines"):
        bench_preprocess.build_corpus(tmp_path / "corpus.jsonl", 1)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--sizes", "0"], "argument --sizes: expected a positive int, got '0'"),
        (["--threads", "0"], "argument --threads: expected a positive int, got '0'"),
        (["--byte-bpe", "--leave-one-out"], "argument --leave-one-out: not allowed with argument --byte-bpe"),
        (["--byte-bpe", "--ship"], "argument --ship: only with the default benchmark"),
        # was an empty table, exit status 0
        (["--loo-scripts"], "--loo-scripts: no leave-one-out tokenizers in"),
        (["--reuse"], "--reuse: no "),
    ],
)
def test_bench_tokenizer_refuses_a_bad_option(
    args: list[str], message: str, tmp_path: Path, shared_data: Path
) -> None:
    line = _refusal(
        "bench_tokenizer.py", ["--out", str(tmp_path / "out"), *args], {"VIKHR_SHARED_DATA": str(shared_data)}
    )
    assert message in line


def test_bench_tokenizer_without_the_corpora_names_the_variable(tmp_path: Path) -> None:
    line = _refusal("bench_tokenizer.py", ["--out", str(tmp_path)], {"VIKHR_SHARED_DATA": str(tmp_path)})
    assert "set VIKHR_SHARED_DATA to the shared data directory" in line


def test_make_sample_corpus_checks_every_source_before_writing(tmp_path: Path) -> None:
    """A missing source was a traceback (after rebuilding the samples read before it)."""
    (tmp_path / "corpus" / "ru").mkdir(parents=True)
    line = _refusal("make_sample_corpus.py", ["--shared", str(tmp_path)])
    assert f"--shared {tmp_path}/corpus/ru/ruslit.jsonl.gz: no such file" in line


def test_make_sample_corpus_reads_the_shared_data_the_other_benchmarks_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--shared defaulted to ../shared/data beside the repository whatever VIKHR_SHARED_DATA said."""
    monkeypatch.setenv("VIKHR_SHARED_DATA", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["make_sample_corpus.py"])
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        load_tool("make_sample_corpus").parse_args()
    assert f"--shared {tmp_path}/corpus/ru/ruslit.jsonl.gz: no such file" in err.getvalue()


def _docs_table_headers(heading: str) -> list[list[str]]:
    """The header cells of each Markdown table in docs/benchmarks.md from the line `heading` to the
    next heading (code blocks skipped)."""
    lines = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(heading) + 1
    headers, in_code, previous = [], False, ""
    for line in lines[start:]:
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            break
        elif not in_code and line.startswith("|") and not previous.startswith("|"):
            headers.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        previous = "" if in_code else line
    return headers


# Each docs section that shows a script's table, and the columns the script prints there: a reader
# who runs the script sees the header the docs show.
DOCS_TABLES = [
    ("### Vocabulary adaptation (`tools/bench_adapt.py`)", "bench_adapt", "TABLE_COLUMNS", 2),
    ("## Checkpoint merging (`tools/bench_merge.py`)", "bench_merge", "TABLE_COLUMNS", 1),
    ("## Checkpoint conversion (`tools/bench_convert.py`)", "bench_convert", "TABLE_COLUMNS", 1),
    (
        "### CPU: 2-core x86-64 (AMD EPYC, AVX-512), no GPU, 2 threads, torch 2.15",
        "bench_kernels",
        "TABLE_COLUMNS",
        1,
    ),
    ("### vikhr against gigatoken (5 runs each, median)", "bench_preprocess", "TOOL_COLUMNS", 1),
    (
        "### All four tools (3 runs of vikhr and gigatoken, 1 run of the two slow baselines)",
        "bench_preprocess",
        "TOOL_COLUMNS",
        1,
    ),
    ("### Whole processes, start-up included", "bench_preprocess", "PROCESS_COLUMNS", 1),
]


@pytest.mark.parametrize("heading,script,constant,tables", DOCS_TABLES)
def test_the_docs_tables_have_the_columns_the_script_prints(
    heading: str, script: str, constant: str, tables: int
) -> None:
    columns = list(getattr(load_tool(script), constant))
    assert _docs_table_headers(heading) == [columns] * tables


def test_the_docs_byte_level_preprocess_tables_have_the_scripts_columns() -> None:
    bench_preprocess = load_tool("bench_preprocess")
    heading = "### Byte-level BPE: Mistral-NeMo's tekken as tokenizer.json (`--family byte-bpe`)"
    expected = [list(bench_preprocess.TOOL_COLUMNS), list(bench_preprocess.PROCESS_COLUMNS)]
    assert _docs_table_headers(heading) == expected


def test_the_docs_eval_table_has_the_columns_bench_eval_prints() -> None:
    columns = load_tool("bench_eval").table_columns(["1", "8", "auto"])
    assert _docs_table_headers("### CPU: tiny random model") == [columns]


def test_the_docs_training_tables_have_the_columns_bench_train_prints_on_a_cpu() -> None:
    columns = load_tool("bench_train").table_columns(cuda=False)
    assert _docs_table_headers("### CPU figures") == [columns, columns]


def test_bench_train_gives_a_tied_model_hf_s_weights_and_its_loss() -> None:
    """The weights went through a stand-in for the converter's reader that lacked its tied-head
    check: a tied config stopped with an AttributeError before anything was measured."""
    import torch

    from vikhr.model import preset
    from vikhr.runtime.distributed import distributed_env

    bench = load_tool("bench_train")
    with distributed_env(tp_size=1, seed=1, device="cpu") as env:
        cfg = preset("tiny", tie_embeddings=True)
        hf = bench.hf_model(cfg, torch.float32, env.device)
        assert hf.lm_head.weight is hf.model.embed_tokens.weight  # tied in HF too
        data = bench.micro_batch(cfg, 2, 16, env.device)
        vikhr = bench.vikhr_stack("vikhr", cfg, "local", torch.float32, env, hf, data)
        rows = vikhr.model.embedding.word_embeddings.weight[: cfg.vocab_size]
        assert torch.equal(rows, hf.model.embed_tokens.weight)
        bench.check_losses([bench.hf_stack("HF", hf, data[0]), vikhr], torch.float32)  # exits on a mismatch


def test_bench_convert_names_the_work_it_keeps_after_a_failed_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round trip that does not hold the source's tensors stops the benchmark; the work directory
    (source and outputs) stays for a look, and the error line says where it is."""
    bench_convert = load_tool("bench_convert")
    ran: list[list[str]] = []
    monkeypatch.setattr(bench_convert, "run_once", lambda cmd, out: ran.append(cmd) or (0.0, 0.0))
    monkeypatch.setattr(bench_convert, "differing_tensors", lambda got, want: ["lm_head.weight", "x"])
    work = tmp_path / "layers-1"
    with pytest.raises(SystemExit) as stop:
        bench_convert.checked_outputs("vikhr", work / "hf", work, [1, 2], 1)
    message = str(stop.value.code)
    assert ran and "tensor lm_head.weight (and 1 more) differs" in message
    assert f"kept in {work} for a look" in message


def test_bench_convert_names_the_work_it_keeps_after_a_failed_command(tmp_path: Path) -> None:
    """A conversion command that fails (here: no such script) stops the benchmark with its stderr; the
    last line names the work directory kept (it ended with the child's stderr alone)."""
    bench_convert = load_tool("bench_convert")
    work = tmp_path / "layers-1"
    (work / "hf").mkdir(parents=True)
    with pytest.raises(SystemExit) as stop:
        bench_convert.checked_outputs(sys.executable, work / "hf", work, [1], 1)
    lines = str(stop.value.code).splitlines()
    assert "failed" in lines[0] and "hf-to-megatron" in lines[0]
    assert lines[-1] == f"(the source and the outputs are kept in {work} for a look)"
    assert (work / "hf").is_dir()


def test_bench_merge_names_the_work_it_keeps_after_the_merges_disagree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two merges that disagree beyond rounding stop the benchmark; the line names the work directory
    that keeps both checkpoints and both outputs."""
    bench_merge = load_tool("bench_merge")
    monkeypatch.setattr(bench_merge, "measure", lambda cmd: (0.0, 0.0))
    monkeypatch.setattr(bench_merge, "compare_outputs", lambda got, want: (0.5, 1.0, 7))
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as stop:
        bench_merge.checked_merges(
            work / "a-1", work / "b-1", work / "out-1", work / "baseline-1", "vikhr", 0.5
        )
    message = str(stop.value.code)
    assert "disagree on 7 values" in message and f"kept in {work} for a look" in message
