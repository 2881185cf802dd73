"""`vikhr ablate`: config validation, a micro grid end to end, determinism and the base-model cache."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import running_versions
from vikhr.ablate.config import Arm, load_ablate_config, trainer_config
from vikhr.errors import RunStopped, VikhrError

# The micro grid: the bundled samples cut to a few documents, a tiny model, a few steps, one seed.
MICRO = {
    "seeds": [7],
    "data": {"eval_docs": 2},
    "tokenizer": {"vocab_size": 600},
    "base": {"steps": 3},
    "train": {"steps": 3, "seq_len": 32, "micro_batch": 2, "global_batch": 4, "log_every": 1},
    "arms": [
        {"name": "base-tokenizer", "group": "vocabulary", "tokenizer": "base", "budget": "chars"},
        {"name": "adapted", "group": "vocabulary", "kl_weight": 0.5},
        {"name": "merge", "group": "slerp", "slerp_of": "adapted", "slerp_t": 0.5},
    ],
}


def _small_corpus(src: Path, out: Path, docs: int, chars: int) -> str:
    from vikhr.jsonl import read_texts

    with gzip.open(out, "wt", encoding="utf-8") as f:
        for i, text in enumerate(read_texts(src)):
            if i == docs:
                break
            f.write(json.dumps({"id": f"d{i}", "text": text[:chars]}, ensure_ascii=False) + "\n")
    return str(out)


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"arms": [{"name": "a", "tokenizer": "bpe"}]},
            "arms[0].tokenizer must be base, adapted, replace or extend",
        ),
        ({"arms": [{"name": "a", "lambda": 0.1}]}, "unknown config key 'arms[0].lambda' (known: name, group"),
        ({"trian": {"steps": 3}}, "unknown config key 'trian' (did you mean 'train'?)"),
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "arm 'a' is named twice"),
        ({"arms": [{"name": "a", "tokenizer": "base", "init": "random"}]}, "init applies to the adapted"),
        ({"arms": [{"name": "m", "slerp_of": "x", "slerp_t": 0.5}]}, "slerp_of names no arm"),
        ({"arms": [{"name": "m", "slerp_t": 0.5}]}, "needs both slerp_of and slerp_t"),
        # accepted, and shown in the table as if they had applied
        ({"arms": [{"name": "a", "budget": "chars"}]}, "budget chars applies to base-tokenizer arms only"),
        (
            {"arms": [{"name": "a"}, {"name": "m", "slerp_of": "a", "slerp_t": 0.5, "kl_weight": 1.0}]},
            "a merge arm trains nothing, so kl_weight would not apply",
        ),
        ({"arms": [{"name": "a", "kl_weight": -1}]}, "config key arms[0].kl_weight must be >= 0, got -1"),
        # an infinite λ ran the preparation and the base, then the trainer refused "kl.weight"; an
        # infinite learning rate was refused as "optim.lr", a key the grid has not got
        (
            {"arms": [{"name": "a", "kl_weight": float("inf")}]},
            "config key arms[0].kl_weight must be a finite",
        ),
        ({"train": {"lr": float("inf")}}, "config key train.lr must be a finite number, got inf"),
        ({"base": {"lr": float("inf")}}, "config key base.lr must be a finite number, got inf"),
        ({"seeds": []}, "config key seeds must have at least 1 item, got []"),
        (
            {"train": {"save_every": True}},
            "config key train.save_every: expected a number, not a yes/no value",
        ),
        ({"seeds": [True, 2]}, "config key seeds: expected a number, not a yes/no value"),
        ({"arms": [{"name": "a/b"}]}, "config key arms[0].name: String should match pattern"),
        ({"model": {"preset": "huge"}}, "unknown model.preset 'huge'"),
        # the trainer's preset init was called an unknown preset, named in no list of choices
        (
            {"model": {"preset": "init"}},
            "ablate.yaml: config key model.preset = init takes the model's shape from a checkpoint, but "
            "without base.init the grid pre-trains its base from random weights (base.steps), so there "
            "is none to take it from: give base.init (an HF model directory) to start the grid from that "
            "model in its own shape",
        ),
        # numpy's seeding refused it after the base model had trained
        ({"seeds": [-1]}, "config key seeds[0] must be >= 0, got -1"),
        ({"base": {"seed": 2**32}}, "config key base.seed must be < 4294967296"),
        # the trainer's own checks, which ran after the tokenizer and the data had been prepared
        ({"train": {"micro_batch": 16, "global_batch": 4}}, "is not a multiple of train.micro_batch = 16"),
        ({"model": {"overrides": {"bogus": 1}}}, "model.overrides.bogus"),
        # the trainer's key was named (data.seq_len), which the grid's file has not got
        (
            {"model": {"overrides": {"max_seq_len": 16}}},
            "ablate.yaml: config key train.seq_len = 32 exceeds the model's max_seq_len 16 "
            "(model.overrides.max_seq_len): lower train.seq_len to 16 or less, or raise",
        ),
        # it replaced every run's vocabulary: the base's training stopped on token ids of its data
        # outside it, after the tokenizer and the data had been prepared
        ({"model": {"overrides": {"vocab_size": 1000}}}, "config key model.overrides.vocab_size cannot be"),
        # a fresh grid empties out_dir/work: "" was the directory it was started from
        ({"out_dir": ""}, "config key out_dir"),
        ({"out_dir": "x", "cache_dir": "x"}, "out_dir and cache_dir are both x"),
        # refused by the tokenizer's training, after an earlier grid's work had been cleared
        (
            {"tokenizer": {"vocab_size": 100}},
            "config key tokenizer.vocab_size = 100 is too small: give at least 359",
        ),
        # refused by the tokenizer's training (its flag named), after an earlier grid's work was cleared
        (
            {"tokenizer": {"vocab_size": 2**23}},
            "config key tokenizer.vocab_size = 8,388,608 is above 4,194,304",
        ),
        # each adapted tokenizer's size key and no other's, as `vikhr tokenizer train` takes them
        ({"tokenizer": {"mode": "prune-extend"}}, "config key tokenizer.mode must be replace or extend"),
        (
            {"tokenizer": {"mode": "extend"}},
            "ablate.yaml: config key tokenizer.mode extend needs tokenizer.new_tokens (how many Russian "
            "tokens to add to the base's vocabulary",
        ),
        (
            {"arms": [{"name": "r"}, {"name": "e", "tokenizer": "extend"}]},
            "ablate.yaml: config key arms[1].tokenizer extend needs tokenizer.new_tokens (how many Russian "
            "tokens",
        ),
        (
            {"tokenizer": {"vocab_size": 600}, "arms": [{"name": "e", "tokenizer": "extend"}]},
            "config key tokenizer.vocab_size is the size of a replace tokenizer, but no arm trains with one "
            "(the arms' adapted tokenizers: extend; `adapted` is tokenizer.mode's): drop vocab_size, or "
            "give an arm tokenizer: replace",
        ),
        (
            {
                "tokenizer": {"vocab_size": 100, "new_tokens": 60},
                "arms": [{"name": "r", "tokenizer": "replace"}],
            },
            "config key tokenizer.new_tokens is the size of an extend tokenizer, but no arm trains with one",
        ),
        (
            {"tokenizer": {"mode": "extend", "new_tokens": 0}},
            "config key tokenizer.new_tokens must be positive, got 0",
        ),
        (
            {"tokenizer": {"mode": "extend", "new_tokens": 2**23}},
            "config key tokenizer.new_tokens = 8,388,608 is above 4,194,304 ids",
        ),
        (
            {"tokenizer": {"mode": "extend", "vocab_size": 40000, "new_tokens": 100}},
            "config key tokenizer.vocab_size is the size of a replace tokenizer, but no arm trains with one "
            "(the arms' adapted tokenizers: extend;",
        ),
        (
            {"tokenizer": {"vocab_size": 600, "new_tokens": 100}},
            "config key tokenizer.new_tokens is the size of an extend tokenizer, but no arm trains with one "
            "(the arms' adapted tokenizers: replace;",
        ),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, change: dict, message: str) -> None:
    path = _write(tmp_path / "ablate.yaml", {**MICRO, **change})
    with pytest.raises(VikhrError) as e:
        load_ablate_config(path)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_train_seq_len_too_long_for_this_machine_s_memory_is_refused_before_any_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It trained the tokenizer and pre-tokenized the corpora, then the base's trainer ended in a CPU
    out-of-memory traceback; the refusal names the grid file's key."""
    from vikhr.cli import main

    out = tmp_path / "out"
    long = {"model": {"overrides": {"max_seq_len": 10_000_000}}, "out_dir": str(out)}
    path = _write(
        tmp_path / "ablate.yaml", {**MICRO, **long, "train": {**MICRO["train"], "seq_len": 10_000_000}}
    )
    assert main(["ablate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "vikhr ablate: error: config key train.seq_len = 10000000 does not fit in memory: train.micro_batch "
        "× train.seq_len = 2 × 10000000 tokens need about "
    )
    assert re.search(r"lower train\.seq_len to \d+ or less \(or train\.micro_batch\)\n$", err)
    assert not out.exists()  # the grid's lock made it: it was left behind, empty


def test_more_eval_docs_than_held_out_documents_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bits per character were measured on the held-out documents there were, fewer than
    data.eval_docs asked for, without a word."""
    from vikhr.ablate.runner import Ablation

    cfg = {**MICRO, "out_dir": str(tmp_path / "out"), "data": {"eval_docs": 100_000}}
    ablation = Ablation(load_ablate_config(_write(tmp_path / "ablate.yaml", cfg)))
    ablation.prepare()
    err = capsys.readouterr().err
    for lang in ("RU", "EN"):
        assert f"warning: data.eval_docs is 100000, but the {lang} corpus keeps " in err, err


def test_a_cuda_grid_without_a_gpu_is_refused_before_any_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """train.device: cuda on a machine without one stopped only when the base model's training
    began, after the tokenizer had been trained and the corpora tokenized."""
    import torch

    from vikhr.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    cfg = {**MICRO, "out_dir": str(out), "train": {**MICRO["train"], "device": "cuda"}}
    path = _write(tmp_path / "ablate.yaml", cfg)
    load_ablate_config(path)  # the file itself is valid anywhere
    assert main(["ablate", str(path)]) == 2
    assert "config key train.device is cuda, but torch sees no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def test_a_cuda_grid_without_a_cuda_toolkit_is_refused_before_any_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """train.device: cuda on a GPU machine without nvcc stopped when the base model's first loss
    could not build its CUDA kernels, after the tokenizer had been trained and the corpora
    tokenized."""
    import torch
    from torch.utils import cpp_extension

    from vikhr.cli import main
    from vikhr.ops import build

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.setattr(build, "pip_toolkit", lambda: None)
    out = tmp_path / "out"
    cfg = {**MICRO, "out_dir": str(out), "train": {**MICRO["train"], "device": "cuda"}}
    path = _write(tmp_path / "ablate.yaml", cfg)
    assert main(["ablate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "config key train.device is cuda: the run is on the GPU, whose csrc kernels" in err, err
    assert err.rstrip().endswith("or set train.device: cpu") and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("key", ["out_dir", "cache_dir"])
def test_an_out_dir_or_cache_dir_that_is_a_file_is_refused_before_any_stage(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file at out_dir failed as "cannot access …: File exists", naming no key; a file at cache_dir
    only once the base model was to be cached, after the preparation had replaced the earlier grid's
    work (its finished runs, which --resume reloads)."""
    from vikhr.cli import main

    out, cache = tmp_path / "out", tmp_path / "cache"
    (out / "work" / "results").mkdir(parents=True)
    (out / "work" / "results" / "a.json").write_text("{}")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    cfg = {**MICRO, "out_dir": str(out), "cache_dir": str(cache), key: str(a_file)}
    path = _write(tmp_path / "ablate.yaml", cfg)
    assert main(["ablate", "--no-progress", str(path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"vikhr ablate: error: {path}: config key {key} {a_file} is a file, not a directory (give the key "
        "another path)"
    )
    assert a_file.read_text() == "mine" and (out / "work" / "results" / "a.json").read_text() == "{}"
    assert not cache.exists()


def test_a_ctrl_c_says_that_resume_continues_the_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C said only "vikhr: interrupted": the same command again starts the grid over and
    removes the runs the interrupted one finished."""
    import vikhr.ablate.runner
    from vikhr.cli import main

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(vikhr.ablate.runner, "run_ablation", interrupted)
    path = _write(tmp_path / "my grid.yaml", {**MICRO, "out_dir": str(tmp_path / "out")})
    assert main(["ablate", str(path)]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vikhr: interrupted; `vikhr ablate --resume '{path}'` continues the grid from the runs it finished "
        "(without --resume it starts over)"
    ]


def test_cli_reports_a_bad_config_in_one_line_before_running(tmp_path: Path) -> None:
    path = _write(tmp_path / "ablate.yaml", {**MICRO, "out_dir": str(tmp_path / "out"), "bogus": 1})
    proc = subprocess.run(
        [sys.executable, "-m", "vikhr", "ablate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown config key 'bogus'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_too_small_vocabulary_leaves_an_earlier_grid_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tokenizer.vocab_size below what byte fallback takes emptied out_dir/work (the finished runs a
    later --resume reloads) and then stopped on `--vocab-size 100`, a flag the user never gave."""
    from vikhr.cli import main

    out = tmp_path / "out"
    (out / "work" / "results").mkdir(parents=True)
    (out / "work" / "results" / "a.json").write_text("{}")
    path = _write(tmp_path / "ablate.yaml", {**MICRO, "out_dir": str(out), "tokenizer": {"vocab_size": 100}})
    assert main(["ablate", str(path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "tokenizer.vocab_size = 100 is too small" in line and "--vocab-size" not in line
    assert (out / "work" / "results" / "a.json").read_text() == "{}"


def test_a_corpus_without_text_fields_names_no_flag_the_grid_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corpus whose records keep their text under another field stopped the grid with "choose the
    field with --text-key", a flag `vikhr ablate` does not have."""
    from vikhr.cli import main

    corpus = tmp_path / "ru.jsonl"
    corpus.write_text('{"id": "a", "body": "Привет"}\n', encoding="utf-8")
    cfg = {**MICRO, "out_dir": str(tmp_path / "out"), "data": {**MICRO["data"], "ru_corpus": str(corpus)}}
    assert main(["ablate", "--no-progress", str(_write(tmp_path / "ablate.yaml", cfg))]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"{corpus}:1: no string field 'text'" in line and "--text-key" not in line, line
    assert not (tmp_path / "out").exists()  # its half-made preparation was left in out_dir/work


def test_a_base_model_that_fails_leaves_no_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base model's training, refused or failed, left the cache_dir made for its entry, empty."""
    from vikhr.ablate.runner import Ablation

    def refused(*args: Any, **kwargs: Any) -> None:
        raise VikhrError("refused")

    cache = tmp_path / "caches" / "ablate"
    cfg = {**MICRO, "out_dir": str(tmp_path / "out"), "cache_dir": str(cache)}
    ablation = Ablation(load_ablate_config(_write(tmp_path / "ablate.yaml", cfg)))
    ablation.en_train = ablation.en
    monkeypatch.setattr(Ablation, "_train", refused)
    with pytest.raises(VikhrError, match="refused"):
        ablation.base_model()
    assert not (tmp_path / "caches").exists()


def test_a_second_grid_on_an_out_dir_in_use_is_refused(tmp_path: Path) -> None:
    """A fresh grid empties out_dir/work: started while another grid runs there, it deleted that
    grid's files under it. It is refused in one line naming the running grid, nothing touched."""
    from vikhr.ablate.runner import grid_lock

    out = tmp_path / "out"
    (out / "work").mkdir(parents=True)
    (out / "work" / "grid.json").write_text("{}")
    path = _write(tmp_path / "ablate.yaml", {**MICRO, "out_dir": str(out)})
    with grid_lock(out):
        proc = subprocess.run(
            [sys.executable, "-m", "vikhr", "ablate", str(path)], capture_output=True, text=True, timeout=300
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert f"out_dir {out} is in use by another ablation grid (pid {os.getpid()} on " in line
    assert (out / "work" / "grid.json").read_text() == "{}"


def test_a_base_that_is_no_tokenizer_is_refused_before_an_earlier_grid_is_removed(tmp_path: Path) -> None:
    from vikhr.ablate.runner import GRID_STATE, run_ablation

    work = tmp_path / "out" / "work"
    (work / "results").mkdir(parents=True)
    (work / GRID_STATE).write_text("{}")
    (work / "results" / "a.json").write_text("{}")
    not_a_tokenizer = _write(tmp_path / "base.yaml", {"a": 1})
    path = _write(
        tmp_path / "ablate.yaml",
        {**MICRO, "out_dir": str(tmp_path / "out"), "tokenizer": {"base": str(not_a_tokenizer)}},
    )
    with pytest.raises(VikhrError, match=r"base\.yaml"):
        run_ablation(load_ablate_config(path), show_progress=False)
    assert (work / "results" / "a.json").is_file()


def test_shipped_configs_validate() -> None:
    root = Path(__file__).resolve().parents[1]
    for name in ("ablate-cpu.yaml", "ablate-gpu.yaml"):
        cfg = load_ablate_config(root / "configs" / name)
        assert len(cfg.seeds) >= 3
        groups = {a.group for a in cfg.arms}
        assert {"vocabulary", "init", "regularisation", "slerp"} <= groups


def test_the_base_cache_key_is_the_one_grids_written_before_base_init_used() -> None:
    """`base.init` joined the base section; its None went into the hash of a pre-trained base's cache
    entry, so every base cached before (configs/ablate-cpu.yaml's among them) was missed and a
    resumed grid pre-trained its base again. The key is computed as it was without `base.init`."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    cfg = load_ablate_config(root / "configs" / "ablate-cpu.yaml")
    t = cfg.train
    before = {  # the key's payload as grids were cached before base.init existed
        "model": cfg.model.model_dump(),
        "base": {"steps": cfg.base.steps, "lr": cfg.base.lr, "seed": cfg.base.seed},
        "shape": [t.seq_len, t.micro_batch, t.global_batch, t.device],
        "en_corpus": "en",
        "tokenizer": "tok",
    }
    old_key = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.base_key("en", "tok") == old_key


def test_the_shipped_tokenizers_grid_compares_base_replace_and_extend_on_the_cpu_grid_s_base() -> None:
    """configs/ablate-tokenizers-cpu.yaml continues ablate-cpu.yaml's cached base (the same cache entry)
    with the same training settings and seeds, its arms the base tokenizer, replace and extend: its
    replace arm is ablate-cpu.yaml's adapted arm, and its extend arm differs from it by the mode alone."""
    root = Path(__file__).resolve().parents[1]
    cpu = load_ablate_config(root / "configs" / "ablate-cpu.yaml")
    both = load_ablate_config(root / "configs" / "ablate-tokenizers-cpu.yaml")
    assert both.adapted_modes() == ["replace", "extend"] and both.tokenizer.base is None  # Mistral's .model
    assert both.cache_dir == cpu.cache_dir and both.out_dir != cpu.out_dir
    assert both.base_key("en", "tokenizer") == cpu.base_key("en", "tokenizer")
    for section in ("seeds", "data", "train"):
        assert getattr(both, section) == getattr(cpu, section), section
    arms = {a.name: a for a in both.arms}
    adapted = next(a for a in cpu.arms if a.name == "adapted")
    assert arms["replace"].run_key() == adapted.run_key()
    assert [both.tokenizer_of(arms[n]) for n in ("replace", "extend")] == ["replace", "extend"]
    differ = {k for k in Arm.model_fields if getattr(arms["replace"], k) != getattr(arms["extend"], k)}
    assert differ == {"name", "tokenizer"}
    kinds = {(both.tokenizer_of(a), a.budget) for a in both.arms}
    assert {("base", "compute"), ("base", "chars"), ("replace", "compute"), ("extend", "compute")} <= kinds


def test_an_arm_saves_on_a_signal_only_where_resume_continues_from_the_save() -> None:
    """Without train.save_every, --resume starts an unfinished arm again: a SIGTERM then just ends it."""
    root = Path(__file__).resolve().parents[1]
    blend = [("ru", "ru", 1.0)]
    for name, signals in (("ablate-cpu.yaml", []), ("ablate-gpu.yaml", ["SIGTERM", "SIGUSR1"])):
        cfg = load_ablate_config(root / "configs" / name)
        run = trainer_config(cfg, Path("grid/runs/a"), blend, 512, 10, check_files=False, seed=1)
        assert run.checkpoint.save_on_signals == signals, name


@pytest.fixture(scope="module")
def micro_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:
    """The micro grid run twice into two output directories sharing one base-model cache."""
    from vikhr import assets
    from vikhr.ablate.report import write_report
    from vikhr.ablate.runner import run_ablation
    from vikhr.tokenizer.train import TrainSettings, train_tokenizer

    tmp = tmp_path_factory.mktemp("ablate")
    data = {
        **MICRO["data"],
        "ru_corpus": _small_corpus(assets.RU_SAMPLE, tmp / "ru.jsonl.gz", 40, 1500),
        "en_corpus": _small_corpus(assets.EN_SAMPLE, tmp / "en.jsonl.gz", 40, 1500),
    }
    # A small English base tokenizer keeps the micro models and their HF exports small.
    settings = TrainSettings(vocab_size=400, split_by_script=False, verify_lines_per_file=20)
    train_tokenizer([data["en_corpus"]], tmp / "base-tokenizer", settings)
    base_tokenizer = str(next((tmp / "base-tokenizer").glob("*.model")))
    outs, results = [], []
    for n in (1, 2):
        out = tmp / f"out{n}"
        cfg_path = _write(
            tmp / f"ablate{n}.yaml",
            {
                **MICRO,
                "data": data,
                "tokenizer": {**MICRO["tokenizer"], "base": base_tokenizer},
                "out_dir": str(out),
                "cache_dir": str(tmp / "cache"),
            },
        )
        result = run_ablation(load_ablate_config(cfg_path), show_progress=False)
        write_report(result)
        outs.append(out)
        results.append(result)
    return outs[0], outs[1], results


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "ablation.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_micro_grid_writes_table_csv_and_plots(micro_runs: tuple[Path, Path, list]) -> None:
    out, _, results = micro_runs
    rows = _rows(out)
    assert [(r["arm"], r["seed"]) for r in rows] == [
        ("base-tokenizer", "7"),
        ("adapted", "7"),
        ("merge", "7"),
    ]
    base_tok, adapted, merge = rows
    assert base_tok["tokenizer"] == "base" and adapted["kl_weight"] == "0.5"
    # Equal characters: the base-tokenizer arm trains the steps that see the adapted arm's characters.
    cpt = results[0].chars_per_token
    assert adapted["steps"] == "3" and adapted["tokens_seen"] == str(3 * 4 * 32)
    assert int(adapted["chars_seen"]) == round(3 * 4 * 32 * cpt["replace"])
    assert int(base_tok["steps"]) == max(1, round(3 * cpt["replace"] / cpt["base"]))
    assert int(base_tok["chars_seen"]) == round(int(base_tok["steps"]) * 4 * 32 * cpt["base"])
    # The merge starts where its source arm starts and lands on its own bpc.
    assert merge["slerp_t"] == "0.5" and merge["slerp_of"] == "adapted" and merge["kl_weight"] == "0.5"
    assert merge["wall_train_s"] == "" and float(adapted["wall_train_s"]) > 0  # a merge trains nothing
    assert merge["ru_bpc_start"] == adapted["ru_bpc_start"]
    assert merge["ru_bpc"] != adapted["ru_bpc"]
    for r in rows:
        for col in ("ru_bpc_start", "ru_bpc", "en_bpc"):
            assert 0 < float(r[col]) < 20
    # The base-tokenizer arm starts from the base model itself.
    assert float(base_tok["ru_bpc_start"]) == pytest.approx(results[0].base_bpc["ru"], abs=1e-6)
    md = (out / "ablation.md").read_text(encoding="utf-8")
    assert "## vocabulary" in md and "## slerp" in md
    assert "| base-tokenizer |" in md and "| adapted |" in md and "| merge |" in md
    assert " ± " in md and "| EN bpc at step 0 |" in md
    for png in ("loss_curves.png", "tradeoff.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_micro_grid_is_deterministic_apart_from_wall_times(micro_runs: tuple[Path, Path, list]) -> None:
    first, second, _ = micro_runs

    def without_wall(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if not k.startswith("wall_")} for r in rows]

    a, b = _rows(first), _rows(second)
    assert without_wall(a) == without_wall(b)
    assert all(float(r["wall_train_s"]) > 0 for r in a if not r["slerp_t"])


def test_second_run_reuses_the_cached_base(micro_runs: tuple[Path, Path, list]) -> None:
    _, _, (first, second) = micro_runs
    assert not first.base_cached
    assert second.base_cached
    assert first.base_bpc == second.base_bpc


def test_adapt_init_mean_of_all_starts_every_new_row_from_the_mean() -> None:
    from vikhr import assets
    from vikhr.adapt.vocab import plan_rows
    from vikhr.adapt.vocab_source import load_vocabulary

    old, new = (
        load_vocabulary(assets.MISTRAL_TOKENIZER),
        load_vocabulary(assets.ASSETS / "tokenizers" / "vikhr-ru-40k.model"),
    )
    methods = {row.method for row in plan_rows(old, new, init="mean-of-all")}
    assert methods == {"copied", "mean-of-all"}


def test_frontier_keeps_the_points_nothing_beats_on_both_axes() -> None:
    from vikhr.ablate.report import mean_std, pareto_front

    points = [(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (2.5, 2.5), (1.5, 3.5)]
    assert pareto_front(points) == [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0]) == (4.0, 0.0)


def _copy_grid(src_out: Path, dst_out: Path, change: dict | None = None) -> Path:
    """A copy of a finished micro grid in another out_dir, with its config (optionally changed)."""
    import shutil

    shutil.copytree(src_out, dst_out)
    cfg = yaml.safe_load((src_out.parent / "ablate1.yaml").read_text(encoding="utf-8"))
    cfg["out_dir"] = str(dst_out)
    for section, values in (change or {}).items():
        cfg[section] = {**cfg[section], **values}
    return _write(dst_out.parent / f"{dst_out.name}.yaml", cfg)


def test_resume_runs_only_what_did_not_finish(
    micro_runs: tuple[Path, Path, list], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vikhr.ablate.report import write_report
    from vikhr.ablate.runner import Ablation, run_ablation

    first, _, _ = micro_runs
    out = first.parent / "resumed"
    cfg_path = _copy_grid(first, out)
    # An interruption while the adapted arm trained: the base-tokenizer run finished (its record
    # stays), the adapted run left files but no record, the merge never ran. A damaged record (was a
    # traceback) counts as none.
    records = sorted((out / "work" / "results").glob("*.json"))
    assert len(records) == 3
    adapted_dir = next((out / "work" / "runs").glob("adapted-*-s7"))
    for record in records:
        hf = json.loads(record.read_text(encoding="utf-8"))["hf"]
        if hf.startswith("runs/adapted-"):
            record.write_text(record.read_text(encoding="utf-8")[:40], encoding="utf-8")
            damaged = record
        elif not hf.startswith("runs/base-tokenizer-"):
            record.unlink()
    assert adapted_dir.is_dir()
    # Leftovers of an arm since renamed (no record) and of a killed conversion: pruned on resume.
    leftovers = [out / "work" / "runs" / "renamed-0123456789ab-s7", out / "work" / "runs" / ".tmp-x1y2"]
    for leftover in leftovers:
        leftover.mkdir()
        (leftover / "part.bin").write_bytes(b"0" * 16)
    trained: list[str] = []
    train = Ablation._train

    def counting_train(self: Ablation, run_dir: Path, *args: object, **kw: object) -> Path:
        trained.append(run_dir.name)
        return train(self, run_dir, *args, **kw)

    monkeypatch.setattr(Ablation, "_train", counting_train)
    write_report(run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True))
    assert trained == [adapted_dir.name]  # the cached base and the finished run are not trained again
    err = capsys.readouterr().err
    assert f"warning: {damaged} is damaged (JSONDecodeError" in err
    assert "optim.warmup_steps" not in err  # a 3-step grid: warmup below its steps (was a warning per run)
    assert not any(leftover.exists() for leftover in leftovers)
    assert {p.name for p in (out / "work" / "runs").iterdir()} == {
        p.name for p in (first / "work" / "runs").iterdir()
    }
    rows, original = _rows(out), _rows(first)
    assert [{k: v for k, v in r.items() if k != "wall_eval_s" and k != "wall_train_s"} for r in rows] == [
        {k: v for k, v in r.items() if k != "wall_eval_s" and k != "wall_train_s"} for r in original
    ]
    # The finished run's figures are the recorded ones, wall time included.
    assert rows[0]["wall_train_s"] == original[0]["wall_train_s"]
    assert len(list((out / "work" / "results").glob("*.json"))) == 3

    # The base was trained by the grid's first run, not taken from the cache: so says the report still.
    def base_line(out_dir: Path) -> str:
        md = (out_dir / "ablation.md").read_text(encoding="utf-8")
        return next(line for line in md.splitlines() if line.startswith("Base model:"))

    assert base_line(out) == base_line(first) and "(from the cache)" not in base_line(out)


def test_resume_continues_an_interrupted_arm_from_its_last_checkpoint(
    micro_runs: tuple[Path, Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With train.save_every, an arm interrupted after a checkpoint continues from it on --resume;
    the figures are the uninterrupted grid's (made without save_every), and a run keeps its newest
    checkpoint only. save_every is not a grid setting: a grid may be resumed with it added."""
    from vikhr.ablate.report import write_report
    from vikhr.ablate.runner import run_ablation
    from vikhr.train.trainer import Trainer

    first, _, _ = micro_runs
    out = first.parent / "saving"
    cfg = yaml.safe_load((first.parent / "ablate1.yaml").read_text(encoding="utf-8"))
    cfg_path = _write(first.parent / "saving.yaml", {**cfg, "out_dir": str(out), "train": cfg["train"]})

    save, resume = Trainer.save, Trainer.resume

    def interrupting_save(self: Trainer) -> Path:
        path = save(self)
        if self.step == 2 and Path(self.cfg.checkpoint.dir).name.startswith("adapted-"):
            os.kill(os.getpid(), signal.SIGTERM)  # a cluster's notice right after the checkpoint at step 2
        return path

    monkeypatch.setattr(Trainer, "save", interrupting_save)
    with_saves = {**cfg, "out_dir": str(out), "train": {**cfg["train"], "save_every": 1}}
    _write(cfg_path, with_saves)
    digests = ("ru", "en", "tokenizer")
    assert load_ablate_config(cfg_path).grid_settings(*digests) == load_ablate_config(
        first.parent / "ablate1.yaml"
    ).grid_settings(*digests)
    with pytest.raises(RunStopped) as stopped:  # the trainer stops at the step it just saved
        run_ablation(load_ablate_config(cfg_path), show_progress=False)
    assert str(stopped.value).startswith("stopped on SIGTERM after step 2 of 3, saved in ")
    assert stopped.value.hint.startswith("`vikhr ablate --resume` with the same config continues")
    run_dir = next((out / "work" / "runs").glob("adapted-*-s7"))
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_000002"]  # checkpoint.keep_last=1

    resumed_from: list[str] = []

    def recording_resume(self: Trainer, step_dir: Path) -> None:
        resumed_from.append(step_dir.name)
        resume(self, step_dir)

    monkeypatch.setattr(Trainer, "save", save)
    monkeypatch.setattr(Trainer, "resume", recording_resume)
    write_report(run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True))
    assert resumed_from == ["step_000002"]
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_000003"]
    no_walls = [{k: v for k, v in r.items() if not k.startswith("wall_")} for r in _rows(out)]
    assert no_walls == [{k: v for k, v in r.items() if not k.startswith("wall_")} for r in _rows(first)]


# `vikhr ablate CONFIG --resume` in a process that sends itself a signal (a scheduler's stop,
# `timeout`, `docker stop`; or a Ctrl-C) after step 1 of the training whose run directory's name
# starts with argv[2]: an arm's ("adapted-"), or the base's ("run", in the cache entry's scratch).
_SIGNALLED_IN_A_TRAINING = """
import os, sys
from pathlib import Path
from vikhr.cli import run
from vikhr.train.trainer import Trainer

real = Trainer.train_step

def train_step(self):
    metrics = real(self)
    if self.step == 1 and Path(self.cfg.checkpoint.dir).name.startswith(sys.argv[2]):
        os.kill(os.getpid(), int(sys.argv[1]))
    return metrics

Trainer.train_step = train_step
sys.exit(run(["ablate", sys.argv[3], "--resume", "--no-progress"]))
"""


@pytest.mark.parametrize(
    ("signum", "status", "said"),
    [(signal.SIGTERM, 143, "vikhr ablate: terminated (SIGTERM)"), (signal.SIGINT, 130, "vikhr: interrupted")],
)
def test_a_signal_in_an_arm_stops_the_grid_and_resume_finishes_it(
    micro_runs: tuple[Path, Path, list], signum: int, status: int, said: str
) -> None:
    """SIGTERM (a scheduler's stop, `timeout`, `docker stop`) ended a grid at once, in the middle of
    an arm: no word, no lock released. It stops the grid as Ctrl-C does: one line saying that
    --resume continues it, the shell's status for the signal, only finished runs recorded; --resume
    then finishes the grid with the figures of one never stopped."""
    from vikhr.ablate.report import write_report
    from vikhr.ablate.runner import run_ablation

    first, _, _ = micro_runs
    out = first.parent / f"signalled-{signal.Signals(signum).name}"
    cfg_path = _copy_grid(first, out)
    for record in (out / "work" / "results").glob("*.json"):
        if not json.loads(record.read_text(encoding="utf-8"))["hf"].startswith("runs/base-tokenizer-"):
            record.unlink()  # the adapted arm and its merge are to run
    state = (out / "work" / "grid.json").read_bytes()
    proc = _signalled_in_a_training(signum, "adapted-", cfg_path)
    assert proc.returncode == status, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"{said}; `vikhr ablate --resume {shlex.quote(str(cfg_path))}` continues the grid from the runs it "
        "finished (without --resume it starts over)"
    )
    assert not (out / ".ablate.lock").exists()
    assert (out / "work" / "grid.json").read_bytes() == state
    records = [json.loads(p.read_text(encoding="utf-8"))["hf"] for p in (out / "work" / "results").iterdir()]
    assert len(records) == 1 and records[0].startswith("runs/base-tokenizer-")

    write_report(run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True))
    no_walls = [{k: v for k, v in r.items() if not k.startswith("wall_")} for r in _rows(out)]
    assert no_walls == [{k: v for k, v in r.items() if not k.startswith("wall_")} for r in _rows(first)]


def _signalled_in_a_training(signum: int, run_name: str, cfg_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _SIGNALLED_IN_A_TRAINING, str(int(signum)), run_name, str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def test_a_sigterm_while_the_base_trains_leaves_no_cache_entry_nor_its_scratch(
    micro_runs: tuple[Path, Path, list],
) -> None:
    """SIGTERM while the grid trained its English base ended the process at once: the cache entry's
    scratch directory stayed until a later grid's base came to replace it, with no word on how to go
    on. It is removed now, as on Ctrl-C, and the line says that --resume continues the grid."""
    first, _, _ = micro_runs
    cfg = yaml.safe_load((first.parent / "ablate1.yaml").read_text(encoding="utf-8"))
    cache, out = first.parent / "terminated-cache", first.parent / "terminated-base"
    cfg_path = _write(
        first.parent / "terminated-base.yaml", {**cfg, "out_dir": str(out), "cache_dir": str(cache)}
    )
    proc = _signalled_in_a_training(signal.SIGTERM, "run", cfg_path)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"vikhr ablate: terminated (SIGTERM); `vikhr ablate --resume {shlex.quote(str(cfg_path))}` continues "
        "the grid from the runs it finished (without --resume it starts over)"
    )
    assert not cache.exists()  # made by this grid for the entry it did not finish
    assert not (out / ".ablate.lock").exists() and not list((out / "work" / "results").glob("*"))


def test_an_arm_s_model_optimizer_and_data_are_freed_before_the_next_arm_starts(
    micro_runs: tuple[Path, Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The arms train one after another in one process: megatron's DDP and the model it wraps refer
    to each other, so an arm's model, gradient buffers and optimizer waited for Python's cycle
    collector, and a grid of 7B arms on one GPU ran out of memory at its second arm. They are freed
    when an arm's training returns (and, on a GPU, the CUDA cache emptied)."""
    import weakref

    from vikhr.ablate.runner import run_ablation
    from vikhr.train.trainer import Trainer

    first, _, _ = micro_runs
    out = first.parent / "freed"
    cfg_path = _copy_grid(first, out)
    for record in (out / "work" / "results").glob("*.json"):
        record.unlink()  # both trained arms run again, one after the other
    earlier: list[dict[str, weakref.ref]] = []
    alive_at_start: list[list[str]] = []
    init = Trainer.__init__

    def recording_init(self: Trainer, *args: Any, **kwargs: Any) -> None:
        alive_at_start.append([name for refs in earlier for name, ref in refs.items() if ref() is not None])
        init(self, *args, **kwargs)
        held = {"model": self.model, "ddp": self.ddp, "optimizer": self.optimizer, "data": self.data.train}
        earlier.append({name: weakref.ref(thing) for name, thing in held.items()})

    monkeypatch.setattr(Trainer, "__init__", recording_init)
    run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    assert alive_at_start == [[], []]  # nothing of the first arm's training when the second starts
    assert all(ref() is None for refs in earlier for ref in refs.values())


def test_the_models_an_arm_s_evaluation_loads_are_freed_before_the_next_arm_starts(
    micro_runs: tuple[Path, Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each arm's bits per character load HF models (its start, its trained export) through lm-eval's
    wrapper, on the training's device: none of them may still be held (by a reference or a cycle
    left to Python's cycle collector) when the next arm's training allocates its model. Each is loaded
    once for both its RU and EN bits per character (it was loaded once per text)."""
    import gc
    import weakref

    from vikhr.ablate.runner import run_ablation
    from vikhr.eval.lm import VikhrLM
    from vikhr.train.trainer import Trainer

    first, _, _ = micro_runs
    out = first.parent / "eval-freed"
    cfg_path = _copy_grid(first, out)
    for record in (out / "work" / "results").glob("*.json"):
        record.unlink()  # both trained arms (and their evaluations) run again, one after the other
    evaluated: list[weakref.ref] = []
    loaded: list[str] = []  # the model directory of each load
    alive_at_start: list[int] = []
    lm_init, trainer_init = VikhrLM.__init__, Trainer.__init__

    def recording_lm_init(self: VikhrLM, *args: Any, **kwargs: Any) -> None:
        lm_init(self, *args, **kwargs)
        loaded.append(str(kwargs["pretrained"]))
        evaluated.extend([weakref.ref(self), weakref.ref(self.model)])

    def recording_trainer_init(self: Trainer, *args: Any, **kwargs: Any) -> None:
        alive_at_start.append(sum(ref() is not None for ref in evaluated))
        trainer_init(self, *args, **kwargs)

    monkeypatch.setattr(VikhrLM, "__init__", recording_lm_init)
    monkeypatch.setattr(Trainer, "__init__", recording_trainer_init)
    # Without the cycle collector's own passes: what is freed is freed when it is no longer used.
    gc.disable()
    try:
        run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    finally:
        gc.enable()
    assert len(alive_at_start) == 2 and len(set(loaded)) >= 2, (alive_at_start, loaded)
    assert len(loaded) == len(set(loaded)), loaded
    assert alive_at_start == [0, 0]  # no evaluated model of an earlier arm (or start) when an arm trains
    assert all(ref() is None for ref in evaluated)


def test_resume_refuses_a_grid_made_with_other_settings(micro_runs: tuple[Path, Path, list]) -> None:
    from vikhr.ablate.runner import run_ablation

    first, _, _ = micro_runs
    out = first.parent / "changed"
    cfg_path = _copy_grid(first, out, {"train": {"lr": 1e-3}})
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "vikhr", "ablate", str(cfg_path), "--resume", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "grid.json" in proc.stderr
    assert "other train settings" in proc.stderr and "without --resume" in proc.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing removed or run
    (out / "work" / "grid.json").write_text('{"settings": {}}', encoding="utf-8")
    with pytest.raises(VikhrError, match=r"grid\.json: not a record of a grid \(KeyError: 'prepared'\)"):
        run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)


def test_resume_finds_the_runs_of_a_grid_written_before_tokenizer_modes_and_base_init(
    micro_runs: tuple[Path, Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grid.json written before tokenizer.mode and base.init existed (its tokenizer settings without
    a mode, its base settings without init: a replace tokenizer, a pre-trained base) was refused by
    --resume ("other base, tokenizer settings"). It is read as such a config's now, and the grid
    resumes without training anything again."""
    from vikhr.ablate.report import write_report
    from vikhr.ablate.runner import run_ablation

    first, _, _ = micro_runs
    out, cfg_path, runs, tokenizers = _resumed(
        first, first.parent / "ablate1.yaml", "resumed-before-modes", monkeypatch
    )
    _as_grids_before_tokenizer_modes_wrote_it(out / "work" / "grid.json")
    write_report(run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True))
    assert runs == tokenizers == []
    assert _bpc_by_arm(out) == _bpc_by_arm(first)
    # It recorded the release alone that made its runs (a setting then): the report says so, and
    # names this run's versions.
    md = (out / "ablation.md").read_text(encoding="utf-8")
    now = running_versions()["vikhr"]
    assert f"Made with vikhr {now} (no other versions recorded); resumed with vikhr {now}" in md


def test_a_grid_records_what_made_it_and_a_resume_by_other_versions_says_so(
    micro_runs: tuple[Path, Path, list], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither grid.json nor the report named the vikhr checkout, torch or megatron-core that made the
    figures. grid.json records them and ablation.md says them in one line; a resume by other ones says
    so in one note naming both, trains nothing again, and the report names both in turn."""
    from vikhr.ablate.report import write_report
    from vikhr.ablate.runner import run_ablation
    from vikhr.provenance import describe

    first, _, _ = micro_runs
    now = running_versions()
    state = json.loads((first / "work" / "grid.json").read_text(encoding="utf-8"))
    assert state["made_with"] == [now] and "vikhr" not in state["settings"]
    assert f"Made with vikhr {now['vikhr']}" in (first / "ablation.md").read_text(encoding="utf-8")
    out, cfg_path, runs, tokenizers = _resumed(
        first, first.parent / "ablate1.yaml", "resumed-by-other", monkeypatch
    )
    earlier = {**now, "commit": "0123abc", "threads": now["threads"] + 1}
    (out / "work" / "grid.json").write_text(json.dumps({**state, "made_with": [earlier]}), encoding="utf-8")
    capsys.readouterr()
    write_report(run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True))
    assert runs == tokenizers == []
    notes = [line for line in capsys.readouterr().err.splitlines() if "may differ" in line]
    assert notes == [
        f"vikhr ablate: --resume: note: the grid in {out / 'work'} was made with other code or libraries "
        f"than this run (vikhr commit 0123abc -> {now['commit']}, threads {now['threads'] + 1} -> "
        f"{now['threads']}): its figures may differ from the earlier ones"
    ]
    assert json.loads((out / "work" / "grid.json").read_text(encoding="utf-8"))["made_with"] == [earlier, now]
    md = (out / "ablation.md").read_text(encoding="utf-8")
    assert f"Made with {describe(earlier)}; resumed with {describe(now)}." in md
    assert f"(commit {now['commit']}), torch {now['torch']}, megatron-core {now['megatron-core']}" in md


@pytest.mark.parametrize("written_by", ["now", "release-a-setting", "before-made-with"])
def test_a_grid_made_by_another_vikhr_release_resumes_with_a_note_naming_both(
    written_by: str,
    micro_runs: tuple[Path, Path, list],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The vikhr release was one of a grid's settings: a resume by another release was refused ("other
    vikhr settings") and the grid was lost, where another commit, torch or megatron-core is a note. A
    grid.json made by another release (recorded in `made_with`; or, written when the release was a
    setting, in its settings too, or there alone before `made_with` existed) resumes, trains nothing
    again, and says so in one note naming both releases; the state records the release in `made_with`
    alone from then on."""
    from vikhr.ablate.report import write_report
    from vikhr.ablate.runner import run_ablation
    from vikhr.provenance import describe

    first, _, _ = micro_runs
    now = running_versions()
    out, cfg_path, runs, tokenizers = _resumed(
        first, first.parent / "ablate1.yaml", f"resumed-by-another-release-{written_by}", monkeypatch
    )
    grid_json = out / "work" / "grid.json"
    state = json.loads(grid_json.read_text(encoding="utf-8"))
    release = f"{now['vikhr']}.earlier"
    earlier: dict[str, Any] = {**now, "vikhr": release}
    state["made_with"] = [earlier]
    if written_by != "now":
        state["settings"]["vikhr"] = release
    if written_by == "before-made-with":
        del state["made_with"]
        earlier = {"vikhr": release}
    grid_json.write_text(json.dumps(state), encoding="utf-8")
    capsys.readouterr()
    write_report(run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True))
    assert runs == tokenizers == []
    assert _bpc_by_arm(out) == _bpc_by_arm(first)
    notes = [line for line in capsys.readouterr().err.splitlines() if "may differ" in line]
    assert notes == [
        f"vikhr ablate: --resume: note: the grid in {out / 'work'} was made with other code or libraries "
        f"than this run (vikhr {release} -> {now['vikhr']}): its figures may differ from the earlier ones"
    ]
    resumed = json.loads(grid_json.read_text(encoding="utf-8"))
    assert resumed["made_with"] == [earlier, now] and "vikhr" not in resumed["settings"]
    md = (out / "ablation.md").read_text(encoding="utf-8")
    assert f"Made with {describe(earlier)}; resumed with {describe(now)}." in md


def _as_grids_before_tokenizer_modes_wrote_it(path: Path) -> None:
    """Rewrite grid.json `path` of a grid of a replace tokenizer and a pre-trained base in the layout
    vikhr wrote before tokenizer.mode and base.init existed: tokenizer settings of vocab_size and base
    digest, base settings without init, the vikhr release a setting, its tokenizer "new_tok", its blend
    and figures "adapted", no adapted_rows nor made_with."""
    state = json.loads(path.read_text(encoding="utf-8"))
    settings, prepared = state["settings"], state["prepared"]
    settings["vikhr"] = running_versions()["vikhr"]
    [(mode, tokenizer)] = prepared["tokenizers"].items()
    assert mode == "replace" and settings["base"]["init"] is None
    settings["tokenizer"] = {k: settings["tokenizer"][k] for k in ("vocab_size", "base")}
    settings["base"] = {k: v for k, v in settings["base"].items() if k != "init"}
    old_prepared = {k: prepared[k] for k in ("ru_train", "ru_held", "en_train", "en_held")}
    old_prepared["new_tok"] = tokenizer
    for key in ("blend", "chars_per_token"):
        old_prepared[key] = {"base": prepared[key]["base"], "adapted": prepared[key][mode]}
    old = {"settings": settings, "prepared": old_prepared, "base_cached": state["base_cached"]}
    path.write_text(json.dumps(old, indent=2, ensure_ascii=False), encoding="utf-8")


def test_a_fresh_start_over_finished_runs_names_resume(
    micro_runs: tuple[Path, Path, list], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same command rerun after an interrupt (without --resume) trained the whole grid again
    without a word that its finished runs could have been reused."""
    from vikhr.ablate.runner import Ablation, run_ablation

    first, _, _ = micro_runs
    out = first.parent / "started-over"
    cfg_path = _copy_grid(first, out)

    def stop(self: Ablation) -> None:
        raise RuntimeError("stopped before preparing")

    monkeypatch.setattr(Ablation, "prepare", stop)
    with pytest.raises(RuntimeError, match="stopped before preparing"):
        run_ablation(load_ablate_config(cfg_path), show_progress=False)
    err = capsys.readouterr().err
    assert "starting the grid over" in err and "held 3 finished run(s)" in err and "--resume" in err, err


@pytest.mark.parametrize("resume", [False, True])
def test_a_fresh_grid_stopped_in_its_first_arm_leaves_no_earlier_report(
    micro_runs: tuple[Path, Path, list],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    resume: bool,
) -> None:
    """A fresh grid (without --resume) interrupted in its first arm left the earlier grid's
    ablation.md, .csv and plots beside its emptied work/, to be read as its own report. A resumed
    grid continues that earlier one: its report stays until the grid rewrites it."""
    from vikhr.ablate.runner import REPORT_FILES, Ablation, run_ablation

    first, _, _ = micro_runs
    out = first.parent / f"interrupted-{resume}"
    cfg_path = _copy_grid(first, out)
    report = {name: (out / name).read_bytes() for name in REPORT_FILES}

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Ablation, "train_arm", interrupted)
    monkeypatch.setattr(Ablation, "merge_arm", interrupted)
    cfg = load_ablate_config(cfg_path)
    if resume:
        for record in (out / "work" / "results").glob("train-*.json"):
            record.unlink()  # the arms did not finish: the grid trains one, and is stopped
    with pytest.raises(KeyboardInterrupt):
        run_ablation(cfg, show_progress=False, resume=resume)
    err = capsys.readouterr().err
    removed = f"vikhr ablate: removed the earlier grid's report from {out} ({', '.join(REPORT_FILES)}); "
    if resume:
        assert {name: (out / name).read_bytes() for name in REPORT_FILES} == report
        assert removed not in err
    else:
        assert not any((out / name).exists() for name in REPORT_FILES)
        assert removed + "this grid writes its own when it ends\n" in err
        assert (out / "work" / "grid.json").is_file() and not list((out / "work" / "results").glob("*"))


def test_a_fresh_grid_leaves_files_it_does_not_know_for_a_grid_s_report(
    micro_runs: tuple[Path, Path, list], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh grid removed ablation.md, ablation.csv and the plots from any out_dir when it started,
    so a grid given a directory of the user's own (no work/ of a grid in it) deleted their files of
    those names even when it stopped at once. Only the report of a grid whose work/ it clears goes."""
    import shutil

    from vikhr.ablate.runner import Ablation, run_ablation

    first, _, _ = micro_runs
    out = first.parent / "notes"
    cfg_path = _copy_grid(first, out)
    shutil.rmtree(out)
    out.mkdir()
    (out / "ablation.md").write_text("my own notes", encoding="utf-8")

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Ablation, "train_arm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(load_ablate_config(cfg_path), show_progress=False)
    assert (out / "ablation.md").read_text(encoding="utf-8") == "my own notes"
    assert "removed the earlier grid's report" not in capsys.readouterr().err
    assert (out / "work" / "grid.json").is_file()


def test_loss_curves_of_one_step_are_drawn() -> None:
    """train.steps: 1 gives each arm one point: a marker, since a line needs two."""
    import matplotlib.pyplot as plt

    from tests.test_monitor import marked_points
    from vikhr.ablate.config import AblateConfig, Arm
    from vikhr.ablate.report import loss_curves_figure
    from vikhr.ablate.runner import AblationResult, RunResult

    arm = Arm(name="adapted")
    runs = [
        RunResult(arm, seed, 1, 128, 400, 3.0, 2.0, 2.5, 2.1, train_losses={1: 5.0 + seed}) for seed in (1, 2)
    ]
    cfg = AblateConfig(arms=[arm], seeds=[1, 2])
    result = AblationResult(cfg, {"ru": 3.0, "en": 2.0}, False, {"base": 3.0, "replace": 4.0}, runs)
    fig = loss_curves_figure(result)
    (line,) = fig.axes[0].get_lines()
    plt.close(fig)
    assert list(line.get_ydata()) == [6.5] and marked_points(line) == [0]


def _grid_result(arms: int, steps: int) -> Any:
    from vikhr.ablate.config import AblateConfig, Arm
    from vikhr.ablate.runner import AblationResult, RunResult

    # Each arm its own settings: arms of equal settings share one run, drawn once.
    names = [Arm(name=f"arm{i:02d}", group=f"group{i % 3}", kl_weight=0.1 * i) for i in range(arms)]
    runs = [
        RunResult(
            arm,
            1,
            steps,
            128,
            400,
            3.0,
            2.0,
            2.0 + 0.05 * i,
            2.6 - 0.04 * i,
            train_losses={s: 6.0 - 0.2 * s - 0.01 * i for s in range(1, steps + 1)},
        )
        for i, arm in enumerate(names)
    ]
    return AblationResult(
        AblateConfig(arms=names, seeds=[1]),
        {"ru": 3.0, "en": 2.0},
        False,
        {"base": 3.0, "replace": 4.0},
        runs,
    )


def test_loss_curves_of_a_short_run_read_whole_steps() -> None:
    """A five-step grid's step axis reads 1, 2, 3 …, not 1.5, 2.5, …"""
    import matplotlib.pyplot as plt

    from vikhr.ablate.report import loss_curves_figure

    fig = loss_curves_figure(_grid_result(2, 5))
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    plt.close(fig)
    assert len(ticks) >= 2 and all(float(tick).is_integer() for tick in ticks), ticks


def test_the_legends_of_a_grid_cover_no_curve_and_no_arm(tmp_path: Path) -> None:
    """With a dozen arms the legend stands beside the axes of both charts, over none of the data, and
    the saved image widens to hold it whole."""
    import matplotlib.image
    import matplotlib.pyplot as plt

    from vikhr.ablate.report import loss_curves_figure, plot, tradeoff_figure

    result = _grid_result(12, 6)
    drawn_inches = {}
    for figure, png in ((loss_curves_figure, "loss_curves.png"), (tradeoff_figure, "tradeoff.png")):
        fig = figure(result)
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent()
        axes_box = ax.get_window_extent()
        drawn_inches[png] = fig.get_tightbbox().width  # the axes, their labels and the legend
        plt.close(fig)
        assert legend.x0 >= axes_box.x1, (figure.__name__, legend, axes_box)
        assert len(ax.get_legend().get_texts()) >= 12
    plot(result, tmp_path)
    for png, inches in drawn_inches.items():
        assert matplotlib.image.imread(tmp_path / png).shape[1] >= round(inches * 110), png


def test_arms_that_share_a_run_are_drawn_once_under_all_their_names() -> None:
    """adapted, init-mean and kl-0 of the shipped grids train one run: each was drawn at the same
    place, the last covering the others, and the legend listed colours no curve or point had."""
    import matplotlib.pyplot as plt

    from vikhr.ablate.config import AblateConfig, Arm
    from vikhr.ablate.report import loss_curves_figure, tradeoff_figure
    from vikhr.ablate.runner import AblationResult, RunResult

    shared = RunResult(Arm(name="adapted"), 1, 4, 128, 400, 3.0, 2.0, 2.5, 2.1, train_losses={1: 5.0, 2: 4.0})
    regularised = dataclasses.replace(shared, arm=Arm(name="kl-0.5", kl_weight=0.5), ru_bpc=2.7, en_bpc=2.0)
    arms = [
        Arm(name="adapted", group="vocabulary"),
        Arm(name="init-mean", group="init", init="mean"),
        Arm(name="kl-0", group="regularisation", kl_weight=0.0),
        regularised.arm,
        Arm(name="slerp-a", group="slerp", slerp_of="kl-0", slerp_t=0.5),
        Arm(name="slerp-b", group="slerp", slerp_of="init-mean", slerp_t=0.5),
    ]
    merged = dataclasses.replace(shared, ru_bpc=2.8, en_bpc=1.9, trained=arms[0], train_losses={})
    runs = [dataclasses.replace(shared, arm=arm) for arm in arms[:3]] + [regularised]
    runs += [dataclasses.replace(merged, arm=arm) for arm in arms[4:]]
    result = AblationResult(
        AblateConfig(arms=arms, seeds=[1]), {"ru": 3.0, "en": 2.0}, False, {"base": 3.0, "replace": 4.0}, runs
    )
    curves = loss_curves_figure(result)
    [ax] = curves.axes
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        "adapted = init-mean = kl-0",
        "kl-0.5",
    ]
    assert len(ax.get_lines()) == 2
    plt.close(curves)
    tradeoff = tradeoff_figure(result)
    [ax] = tradeoff.axes
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    plt.close(tradeoff)
    assert [label for label in labels if "base" not in label and "frontier" not in label] == [
        "adapted = init-mean = kl-0",
        "kl-0.5",
        "slerp-a = slerp-b",
    ]


def test_an_arm_whose_bpc_is_not_finite_is_reported_not_a_traceback() -> None:
    """statistics.stdev cannot take NaN or inf: a diverged arm's seeds lost the whole grid's report
    after every run had finished."""
    import math

    import matplotlib.pyplot as plt

    from vikhr.ablate.report import markdown, mean_std, tradeoff_figure

    result = _grid_result(3, 4)
    diverged = result.runs[1]
    result.runs.append(dataclasses.replace(diverged, seed=2, ru_bpc=math.nan, en_bpc=math.inf))
    result.config.seeds.append(2)
    assert math.isnan(mean_std([1.0, math.nan])[1]) and math.isinf(mean_std([1.0, math.inf])[0])
    table = markdown(result)
    assert "| arm01 |" in table and "nan" in table
    fig = tradeoff_figure(result)
    plt.close(fig)


def test_a_merge_row_has_no_training_time_and_the_tradeoff_plot_names_its_error_bars() -> None:
    """ablation.csv gave a merge row wall_train_s 0.00 where ablation.md shows "—" (it trained
    nothing); tradeoff.png did not say that its error bars are the standard deviation over the seeds."""
    import matplotlib.pyplot as plt

    from vikhr.ablate.config import AblateConfig, Arm
    from vikhr.ablate.report import csv_text, markdown, tradeoff_figure
    from vikhr.ablate.runner import AblationResult, RunResult

    trained = Arm(name="kl-0", group="regularisation")
    merge = Arm(name="slerp-0.5", group="slerp", slerp_of="kl-0", slerp_t=0.5)
    runs = []
    for seed in (1, 2):
        run = RunResult(
            trained, seed, 4, 128, 400, 3.0, 2.0, 2.5, 2.1, train_losses={1: 5.0}, wall_train_s=12.5
        )
        runs += [run, dataclasses.replace(run, arm=merge, trained=trained, train_losses={}, wall_train_s=0.0)]
    runs.sort(key=lambda r: r.arm.name)
    cfg = AblateConfig(arms=[trained, merge], seeds=[1, 2])
    result = AblationResult(cfg, {"ru": 3.0, "en": 2.0}, False, {"base": 3.0, "replace": 4.0}, runs)
    rows = list(csv.DictReader(csv_text(result).splitlines()))
    assert [(r["arm"], r["wall_train_s"]) for r in rows] == [
        ("kl-0", "12.50"),
        ("kl-0", "12.50"),
        ("slerp-0.5", ""),
        ("slerp-0.5", ""),
    ]
    table = markdown(result)
    assert "| 12.5 ± 0.0 |" in table and table.count("| — |") == 1
    fig = tradeoff_figure(result)
    title = fig.axes[0].get_title()
    plt.close(fig)
    assert title == "mean over 2 seeds; error bars: ± sample standard deviation"
    result.config.seeds.pop()
    result.runs[:] = [r for r in result.runs if r.seed == 1]
    fig = tradeoff_figure(result)
    assert fig.axes[0].get_title() == "one seed: no error bars"
    plt.close(fig)


# --- base.init: the grid's base is an HF model of the user's, not one pre-trained from random weights


def _hf_config_dir(path: Path, vocab_size: int = 400) -> str:
    """A directory holding a tiny model's config.json alone (what the config's checks read)."""
    from tests.helpers import tiny_hf_config

    tiny_hf_config(vocab_size).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # the keys of the pre-training base.init replaces, and the shape its config.json gives
        (
            {"base": {"init": "MODEL", "steps": 3}},
            "ablate.yaml: config key base.init starts the grid from that model, so base.steps (the "
            "pre-training of a base from random weights) would not apply; drop it",
        ),
        (
            {"base": {"init": "MODEL", "lr": 1e-3, "seed": 1}},
            "so base.lr, base.seed (the pre-training of a base from random weights) would not apply; "
            "drop them",
        ),
        (
            {"base": {"init": "MODEL"}, "model": {"preset": "init", "overrides": {"num_layers": 1}}},
            "ablate.yaml: config key base.init gives the base's shape (its config.json), which every arm "
            "keeps, so model.overrides, model.preset would not apply; drop the model section",
        ),
        ({"base": {"init": "MISSING"}}, "config key base.init: not found or not a directory: "),
        ({"base": {"init": "EMPTY"}}, "has no config.json (give an HF model directory)"),
        (
            {"base": {"init": "MODEL"}, "train": {**MICRO["train"], "seq_len": 512}},
            "config key train.seq_len = 512 exceeds base.init's context of 256 tokens (max_position_"
            "embeddings of its config.json): lower train.seq_len to 256 or less",
        ),
    ],
)
def test_base_init_config_errors_are_one_line(tmp_path: Path, change: dict, message: str) -> None:
    dirs = {"MODEL": _hf_config_dir(tmp_path / "model"), "MISSING": str(tmp_path / "no-such-model")}
    (tmp_path / "empty").mkdir()
    dirs["EMPTY"] = str(tmp_path / "empty")
    base = {k: dirs.get(v, v) if k == "init" else v for k, v in change["base"].items()}
    path = _write(tmp_path / "ablate.yaml", {**MICRO, **change, "base": base})
    with pytest.raises(VikhrError) as e:
        load_ablate_config(path)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_base_init_shape_is_the_model_s_own() -> None:
    """The arms' runs take base.init's shape (every field), with each run's own vocabulary."""
    import tempfile

    from vikhr.ablate.config import AblateConfig, Arm

    with tempfile.TemporaryDirectory() as tmp:
        from tests.helpers import tiny_hf_config

        tiny_hf_config(400, num_layers=1, hidden_size=32, max_seq_len=96).save_pretrained(tmp)
        cfg = AblateConfig(arms=[Arm(name="a")], base={"init": tmp}, train={"seq_len": 64})
        run = trainer_config(cfg, Path("grid/runs/a"), [("ru", "ru", 1.0)], 600, 3, check_files=False, seed=1)
    shape = run.model.shape()
    assert (shape.num_layers, shape.hidden_size, shape.max_seq_len, shape.vocab_size) == (1, 32, 96, 600)


@pytest.mark.parametrize("case", ["no tokenizer", "another tokenizer", "weights missing"])
def test_base_init_s_tokenizer_must_be_the_model_s_before_any_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    from tests.helpers import tiny_hf_model
    from vikhr import assets
    from vikhr.cli import main

    model = tmp_path / "model"
    tiny_hf_model(model, 400)
    cfg: dict[str, Any] = {**MICRO, "out_dir": str(tmp_path / "out"), "base": {"init": str(model)}}
    if case == "another tokenizer":
        cfg["tokenizer"] = {**MICRO["tokenizer"], "base": str(assets.MISTRAL_TOKENIZER)}
    elif case == "weights missing":
        (model / "model.safetensors").unlink()
    capsys.readouterr()  # the model's saving
    assert main(["ablate", "--no-progress", str(_write(tmp_path / "ablate.yaml", cfg))]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    expected = {
        "no tokenizer": f"config key base.init: {model} holds no tokenizer.model or tokenizer.json: name "
        "the model's tokenizer with tokenizer.base",
        "another tokenizer": f"config key tokenizer.base: the tokenizer {assets.MISTRAL_TOKENIZER} has 32000 "
        f"tokens but the model {model} has a 400-token vocabulary (config.json vocab_size): it is not this "
        "model's tokenizer (name base.init's own tokenizer, or drop tokenizer.base to use it)",
        "weights missing": f"config key base.init: {model} has no model.safetensors or model.safetensors."
        "index.json",
    }[case]
    assert line.startswith(f"vikhr ablate: error: {expected}"), line
    assert not (tmp_path / "out").exists()


def _init_grid(
    tmp: Path, tokenizer: dict[str, Any], arms: list[dict[str, Any]] | None = None
) -> tuple[Path, Path, Any, Path]:
    """The micro grid (with this `tokenizer` section, and these `arms` where given) started from a tiny
    model laid out like Qwen2.5's (a byte-level tokenizer.json in its directory, tied embeddings, more
    rows than tokens) and of another shape than the tiny preset (one layer, hidden 32): (out_dir,
    config, result, model directory)."""
    from tests.helpers import tiny_hf_model
    from tests.test_tokenizer_byte_bpe import make_byte_level_base
    from vikhr import assets
    from vikhr.ablate.report import write_report
    from vikhr.ablate.runner import run_ablation
    from vikhr.tokenizer import load

    data = {
        **MICRO["data"],
        "ru_corpus": _small_corpus(assets.RU_SAMPLE, tmp / "ru.jsonl.gz", 30, 1500),
        "en_corpus": _small_corpus(assets.EN_SAMPLE, tmp / "en.jsonl.gz", 30, 1500),
    }
    model = tmp / "model"
    make_byte_level_base(model, "qwen2")
    rows = load(model).vocab_size + 13  # padded past the tokenizer, as Qwen2.5's embeddings are
    tiny_hf_model(model, rows, arch="qwen2", tied=True, num_layers=1, hidden_size=32)
    base = {k: v for k, v in MICRO.items() if k != "base"}
    cfg = {
        **base,
        "data": data,
        "tokenizer": tokenizer,
        "arms": arms or MICRO["arms"],
        "base": {"init": str(model)},
        "out_dir": str(tmp / "out"),
    }
    cfg["cache_dir"] = str(tmp / "cache")
    cfg_path = _write(tmp / "ablate.yaml", cfg)
    result = run_ablation(load_ablate_config(cfg_path), show_progress=False)
    write_report(result)
    return tmp / "out", cfg_path, result, model


@pytest.fixture(scope="module")
def init_grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, Path]:
    """The micro grid from a Qwen2.5-like model, its adapted tokenizer a new one (replace)."""
    return _init_grid(tmp_path_factory.mktemp("ablate-init"), MICRO["tokenizer"])


def test_a_grid_starts_from_base_init_s_model(init_grid: tuple[Path, Path, Any, Path]) -> None:
    from vikhr.demo import bits_per_char

    out, _, result, model = init_grid
    rows = _rows(out)
    assert [r["arm"] for r in rows] == ["base-tokenizer", "adapted", "merge"]
    base_tok, adapted, merge = rows
    # The base row is the model's own bits per character (its tokenizer, the held-out documents).
    held = {lang: out / "work" / "corpora" / f"{lang}-heldout.jsonl.gz" for lang in ("ru", "en")}
    assert all(p.is_file() for p in held.values()), sorted((out / "work" / "corpora").iterdir())
    assert bits_per_char(model, model / "tokenizer.json", held, 2, 32, "cpu") == result.base_bpc
    assert float(base_tok["ru_bpc_start"]) == pytest.approx(result.base_bpc["ru"], abs=1e-6)
    assert adapted["ru_bpc_start"] == merge["ru_bpc_start"] != base_tok["ru_bpc_start"]
    assert float(adapted["wall_train_s"]) > 0 and merge["wall_train_s"] == ""
    # Every run keeps the model's shape (one layer, hidden 32), not the tiny preset's.
    for hf in (out / "work" / "runs").glob("*-hf"):
        config = json.loads((hf / "config.json").read_text(encoding="utf-8"))
        assert (config["num_hidden_layers"], config["hidden_size"]) == (1, 32), hf
    assert not result.base_cached and not Path(result.config.cache_dir).exists()  # nothing pre-trained
    md = (out / "ablation.md").read_text(encoding="utf-8")
    assert f"Base model `{model}` (base.init), in its own shape; 3 steps of 4 × 32 tokens." in md
    assert "pre-trained" not in md
    assert (
        "Adapted tokenizer: replace, a new SentencePiece BPE of 600 pieces; of its 600 embedding rows" in md
    )
    state = json.loads((out / "work" / "grid.json").read_text(encoding="utf-8"))["settings"]["base"]
    assert state["init"] == str(model.resolve())
    assert set(state["files"]) == {"config.json", "model.safetensors"}


def test_resume_refuses_a_base_init_model_written_again(
    init_grid: tuple[Path, Path, Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--resume reuses the runs of the same base.init model; a model written again since (a new
    download in its place) is another base: refused in one line, nothing touched."""
    from vikhr.ablate.runner import run_ablation

    first, cfg_path, _, model = init_grid
    out, cfg_path, runs, tokenizers = _resumed(first, cfg_path, "resumed", monkeypatch)
    resumed = run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    assert runs == tokenizers == []
    assert _bpc_by_arm(resumed) == _bpc_by_arm(first)
    weights = model / "model.safetensors"
    stat = weights.stat()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    try:
        with pytest.raises(VikhrError) as e:
            run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "other base settings or data" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# --- tokenizer.mode extend: the adapted arms' tokenizer is the base's, with Russian tokens added

NEW_TOKENS = 60


@pytest.fixture(scope="module")
def extend_grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, Path]:
    """The micro grid from the Qwen2.5-like model, its byte-level tokenizer extended by NEW_TOKENS."""
    tokenizer = {"mode": "extend", "new_tokens": NEW_TOKENS}
    return _init_grid(tmp_path_factory.mktemp("ablate-extend"), tokenizer)


def test_an_extend_grid_keeps_the_base_s_tokens_and_rows(extend_grid: tuple[Path, Path, Any, Path]) -> None:
    from safetensors import safe_open
    from tokenizers import Tokenizer

    out, _, result, model = extend_grid
    base = Tokenizer.from_file(str(model / "tokenizer.json"))
    adapted = Tokenizer.from_file(str(out / "work" / "tokenizer" / "extend" / "tokenizer.json"))
    base_size = base.get_vocab_size()
    added = adapted.get_vocab_size() - base_size
    assert 0 < added <= NEW_TOKENS
    # Every base token keeps its id; the new ones follow, and hold Cyrillic.
    assert [adapted.id_to_token(i) for i in range(base_size)] == [
        base.id_to_token(i) for i in range(base_size)
    ]
    new = [adapted.decode([i]) for i in range(base_size, base_size + added)]
    assert all(re.search("[а-яё]", t, re.IGNORECASE) for t in new), new
    # The adapted arm's start and export: the base's rows copied, one new row per new token (the
    # model's spare rows past its tokenizer are not carried over).
    assert result.adapted_rows == {"extend": {"tokens": base_size + added, "copied": base_size, "new": added}}
    [export] = (out / "work" / "runs").glob("adapted-*-hf")
    config = json.loads((export / "config.json").read_text(encoding="utf-8"))
    with safe_open(str(export / "model.safetensors"), "np") as f:
        rows = f.get_slice("model.embed_tokens.weight").get_shape()[0]
    assert config["vocab_size"] == rows == base_size + added
    md = (out / "ablation.md").read_text(encoding="utf-8")
    assert (
        f"Adapted tokenizer: extend, the base's with {NEW_TOKENS} new tokens asked for; of its "
        f"{base_size + added:,} embedding rows, {base_size:,} are copied from the base model's and {added} "
        "are new" in md
    )
    state = json.loads((out / "work" / "grid.json").read_text(encoding="utf-8"))["settings"]["tokenizer"]
    assert {k: v for k, v in state.items() if k != "base"} == {"mode": "extend", "new_tokens": NEW_TOKENS}


def test_resume_refuses_an_extend_grid_changed_to_replace(extend_grid: tuple[Path, Path, Any, Path]) -> None:
    """The mode is one of the grid's tokenizer settings: `--resume` with another is refused."""
    import shutil

    from vikhr.ablate.runner import run_ablation

    first, cfg_path, _, _ = extend_grid
    out = first.parent / "replaced"
    shutil.copytree(first, out)
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    cfg_path = _write(
        first.parent / "replaced.yaml", {**cfg, "out_dir": str(out), "tokenizer": {"vocab_size": 600}}
    )
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(VikhrError) as e:
        run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    assert "other tokenizer settings or data" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# --- one grid compares the base tokenizer, a replace and an extend tokenizer

BOTH_ARMS = [
    {"name": "base-tokenizer", "group": "vocabulary", "tokenizer": "base", "budget": "chars"},
    {"name": "replaced", "group": "vocabulary", "tokenizer": "replace"},
    {"name": "extended", "group": "vocabulary", "tokenizer": "extend", "kl_weight": 0.5},
    {"name": "merge", "group": "slerp", "slerp_of": "extended", "slerp_t": 0.5},
]


@pytest.fixture(scope="module")
def both_modes_grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any, Path]:
    """The micro grid from the Qwen2.5-like model with a replace arm and an extend arm."""
    tokenizer = {"vocab_size": 600, "new_tokens": NEW_TOKENS}
    return _init_grid(tmp_path_factory.mktemp("ablate-both"), tokenizer, BOTH_ARMS)


def test_one_grid_compares_replace_with_extend(both_modes_grid: tuple[Path, Path, Any, Path]) -> None:
    """A grid's tokenizer mode was grid-wide: replace and extend took two grids. Each arm now names its
    tokenizer; the preparation trains both, and each arm trains, is evaluated and reported with its own."""
    from tokenizers import Tokenizer

    out, _, result, model = both_modes_grid
    rows = _rows(out)
    assert [(r["arm"], r["tokenizer"]) for r in rows] == [
        ("base-tokenizer", "base"),
        ("replaced", "replace"),
        ("extended", "extend"),
        ("merge", "extend"),
    ]
    base_tok, replaced, extended, merge = rows
    base_size = Tokenizer.from_file(str(model / "tokenizer.json")).get_vocab_size()
    extend_size = Tokenizer.from_file(str(out / "work" / "tokenizer" / "extend" / "tokenizer.json"))
    added = extend_size.get_vocab_size() - base_size
    assert 0 < added <= NEW_TOKENS
    # Each arm's model has its tokenizer's vocabulary, and counts its characters by it.
    for arm, vocab in (("replaced", 600), ("extended", base_size + added)):
        [export] = (out / "work" / "runs").glob(f"{arm}-*-hf")
        assert json.loads((export / "config.json").read_text(encoding="utf-8"))["vocab_size"] == vocab
    cpt = result.chars_per_token
    assert set(cpt) == {"base", "replace", "extend"} and cpt["replace"] != cpt["extend"]
    assert int(replaced["chars_seen"]) == round(3 * 4 * 32 * cpt["replace"])
    assert int(extended["chars_seen"]) == round(3 * 4 * 32 * cpt["extend"])
    # budget chars matches tokenizer.mode's (replace, the default) characters
    assert int(base_tok["steps"]) == max(1, round(3 * cpt["replace"] / cpt["base"]))
    assert replaced["ru_bpc_start"] != extended["ru_bpc_start"] == merge["ru_bpc_start"]
    assert set(result.adapted_rows) == {"replace", "extend"}
    assert result.adapted_rows["extend"] == {"tokens": base_size + added, "copied": base_size, "new": added}
    md = (out / "ablation.md").read_text(encoding="utf-8")
    assert (
        "Adapted tokenizer: replace, a new SentencePiece BPE of 600 pieces; of its 600 embedding rows" in md
    )
    assert (
        f"Adapted tokenizer: extend, the base's with {NEW_TOKENS} new tokens asked for; of its "
        f"{base_size + added:,} embedding rows, {base_size:,} are copied" in md
    )
    assert f"replace {cpt['replace']:.3f}, extend {cpt['extend']:.3f}." in md
    assert "| replaced | replace | 3 |" in md and "| extended | extend | 3 |" in md
    state = json.loads((out / "work" / "grid.json").read_text(encoding="utf-8"))
    tokenizer = {k: v for k, v in state["settings"]["tokenizer"].items() if k != "base"}
    assert tokenizer == {"mode": "replace", "vocab_size": 600, "new_tokens": NEW_TOKENS}
    assert set(state["prepared"]["tokenizers"]) == {"replace", "extend"}


def test_resume_of_a_grid_of_both_modes_trains_nothing_again(
    both_modes_grid: tuple[Path, Path, Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--resume finds both tokenizers' preparation and every finished run; an arm naming the grid's
    tokenizer.mode is the `adapted` arm's run."""
    from vikhr.ablate.runner import run_ablation

    first, cfg_path, _, _ = both_modes_grid
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    arms = [{**a, "tokenizer": "adapted"} if a["name"] == "replaced" else a for a in cfg["arms"]]
    _, cfg_path, runs, tokenizers = _resumed(first, cfg_path, "resumed", monkeypatch, arms=arms)
    resumed = run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    assert runs == tokenizers == []
    assert _bpc_by_arm(resumed) == _bpc_by_arm(first)


@pytest.mark.parametrize("grid", ["init_grid", "extend_grid"])
def test_resume_finds_a_one_mode_grid_s_runs_in_the_state_it_was_written_with(
    grid: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grid of one adapted tokenizer, replace or extend, its state written before arms could name
    their tokenizer (its tokenizer "new_tok", its blend and figures "adapted"), resumes without
    training anything again."""
    from vikhr.ablate.runner import run_ablation

    first, cfg_path, first_result, _ = request.getfixturevalue(grid)
    out, cfg_path, runs, tokenizers = _resumed(first, cfg_path, "resumed-one-mode", monkeypatch)
    _as_one_mode_grids_wrote_it(out / "work" / "grid.json")
    resumed = run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    assert runs == tokenizers == []
    assert _bpc_by_arm(resumed) == _bpc_by_arm(first)
    assert resumed.adapted_rows == first_result.adapted_rows
    assert set(resumed.adapted_rows) == {first_result.config.tokenizer.mode}


def _bpc_by_arm(grid: Any) -> list[tuple[str, Any]]:
    """(arm, RU bpc) of each run of `grid`: a result of run_ablation, or the out_dir of its report
    (its ablation.csv, to 3 decimals, so compared approximately)."""
    if isinstance(grid, Path):
        return [(row["arm"], pytest.approx(float(row["ru_bpc"]), abs=1e-3)) for row in _rows(grid)]
    return [(r.arm.name, r.ru_bpc) for r in grid.runs]


def _as_one_mode_grids_wrote_it(path: Path) -> None:
    """Rewrite grid.json `path` of a grid of one adapted tokenizer as it was written before arms could
    name their tokenizer: its tokenizer "new_tok", its blend, figures and rows "adapted"."""
    state = json.loads(path.read_text(encoding="utf-8"))
    prepared = state["prepared"]
    [(mode, tokenizer)] = prepared.pop("tokenizers").items()
    prepared["new_tok"] = tokenizer
    for by_label in (prepared["blend"], prepared["chars_per_token"]):
        by_label["adapted"] = by_label.pop(mode)
    state["adapted_rows"] = state["adapted_rows"][mode]
    path.write_text(json.dumps(state), encoding="utf-8")


def _resumed(
    first: Path, cfg_path: Path, name: str, monkeypatch: pytest.MonkeyPatch, **change: Any
) -> tuple[Path, Path, list[str], list[str]]:
    """A copy of grid `first` in out_dir `name` with its config changed by `change` (sections
    replaced), and the lists that its Ablation's run trainings and tokenizer trainings append to:
    (out_dir, config, trained runs, trained tokenizers)."""
    import shutil

    import vikhr.tokenizer.train as tokenizer_train
    from vikhr.ablate.runner import Ablation

    out = first.parent / name
    shutil.copytree(first, out)
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    cfg_path = _write(first.parent / f"{name}.yaml", {**cfg, **change, "out_dir": str(out)})
    runs: list[str] = []
    tokenizers: list[str] = []
    train, train_tokenizer = Ablation._train, tokenizer_train.train_tokenizer

    def counting_train(self: Ablation, run_dir: Path, *args: object, **kw: object) -> Path:
        runs.append(run_dir.name)
        return train(self, run_dir, *args, **kw)

    def counting_tokenizer(corpora: Any, out_dir: Path, settings: Any, *args: Any) -> Any:
        tokenizers.append(settings.mode)
        return train_tokenizer(corpora, out_dir, settings, *args)

    monkeypatch.setattr(Ablation, "_train", counting_train)
    monkeypatch.setattr(tokenizer_train, "train_tokenizer", counting_tokenizer)
    return out, cfg_path, runs, tokenizers


def test_resume_with_an_arm_of_another_tokenizer_trains_that_tokenizer_and_keeps_the_rest(
    init_grid: tuple[Path, Path, Any, Path],
    both_modes_grid: tuple[Path, Path, Any, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An extend arm added to a grid of replace arms changed the grid's tokenizer settings: `--resume`
    refused it ("other tokenizer settings") and the whole grid had to start over. It now trains the
    extend tokenizer and the added arm alone; the replace tokenizer and the finished runs are kept."""
    from vikhr.ablate.report import write_report
    from vikhr.ablate.runner import run_ablation

    first, cfg_path, first_result, _ = init_grid
    arms = [
        *MICRO["arms"],
        {"name": "extended", "group": "vocabulary", "tokenizer": "extend", "kl_weight": 0.5},
    ]
    tokenizer = {**MICRO["tokenizer"], "new_tokens": NEW_TOKENS}
    out, cfg_path, runs, tokenizers = _resumed(
        first, cfg_path, "added-extend", monkeypatch, arms=arms, tokenizer=tokenizer
    )
    replace_model = out / "work" / "tokenizer" / "replace" / "tokenizer.model"
    replace_bytes = replace_model.read_bytes()
    result = run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    write_report(result)
    assert tokenizers == ["extend"]
    assert [r.split("-")[0] for r in runs] == ["extended"]  # the finished runs are found
    assert "training the extend tokenizer that arms added since use" in capsys.readouterr().err
    assert replace_model.read_bytes() == replace_bytes
    assert [(r.arm.name, r.ru_bpc) for r in result.runs[:3]] == [
        (r.arm.name, r.ru_bpc) for r in first_result.runs
    ]
    # The added tokenizer and arm are those of a grid that had both from its start.
    both = {r.arm.name: r for r in both_modes_grid[2].runs}
    assert result.chars_per_token == both_modes_grid[2].chars_per_token
    assert result.adapted_rows == both_modes_grid[2].adapted_rows
    assert result.runs[3].ru_bpc == pytest.approx(both["extended"].ru_bpc, abs=1e-6)
    state = json.loads((out / "work" / "grid.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in state["settings"]["tokenizer"].items() if k != "base"} == {
        "mode": "replace",
        "vocab_size": 600,
        "new_tokens": NEW_TOKENS,
    }
    assert set(state["prepared"]["tokenizers"]) == {"replace", "extend"}
    # The grid as it is now resumes with nothing to train; a changed size of a tokenizer in use is
    # still refused.
    runs.clear(), tokenizers.clear()
    run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    assert runs == tokenizers == []
    changed = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    changed["tokenizer"]["new_tokens"] = NEW_TOKENS + 1
    with pytest.raises(VikhrError, match="other tokenizer settings or data"):
        run_ablation(load_ablate_config(_write(cfg_path, changed)), show_progress=False, resume=True)


# A `vikhr ablate --resume` that adds the extend tokenizer, stopped at `point` by `signum`: inside the
# tokenizer's training (its tokenizer.json written, the rest not yet), or once the tokenizer is in
# place but before its datasets and the grid's state are written.
_STOP_AT = {
    "tokenizer": "vikhr.tokenizer.train_byte_bpe:_write_config",
    "data": "vikhr.ablate.runner:Ablation.continued_data",
}
_STOPPED_RESUME = """
import functools, importlib, os, signal, sys
module, _, name = sys.argv[1].partition(":")
owner = importlib.import_module(module)
*path, attr = name.split(".")
for part in path:
    owner = getattr(owner, part)
real = getattr(owner, attr)

@functools.wraps(real)
def stopped(*args, **kw):
    if sys.argv[1].endswith("_write_config"):
        real(*args, **kw)  # the training's first files are written, under its temporary name
    os.kill(os.getpid(), int(sys.argv[2]))

setattr(owner, attr, stopped)
from vikhr.cli import run
sys.exit(run(["ablate", sys.argv[3], "--resume", "--no-progress"]))
"""


@pytest.mark.parametrize(("point", "signum"), [("tokenizer", signal.SIGTERM), ("data", signal.SIGKILL)])
def test_resume_trains_again_an_added_tokenizer_whose_training_was_stopped(
    init_grid: tuple[Path, Path, Any, Path],
    both_modes_grid: tuple[Path, Path, Any, Path],
    monkeypatch: pytest.MonkeyPatch,
    point: str,
    signum: int,
) -> None:
    """A resume that trains an added arm's tokenizer, killed while it trains it or prepares its data,
    records no such tokenizer: the next `--resume` trains it again, and it is, to the byte, the one a
    grid that had it from its start trained (its figures those of that grid)."""
    from vikhr.ablate.runner import run_ablation

    first, cfg_path, _, _ = init_grid
    arms = [
        *MICRO["arms"],
        {"name": "extended", "group": "vocabulary", "tokenizer": "extend", "kl_weight": 0.5},
    ]
    tokenizer = {**MICRO["tokenizer"], "new_tokens": NEW_TOKENS}
    out, cfg_path, runs, tokenizers = _resumed(
        first, cfg_path, f"stopped-in-{point}", monkeypatch, arms=arms, tokenizer=tokenizer
    )
    proc = subprocess.run(
        [sys.executable, "-c", _STOPPED_RESUME, _STOP_AT[point], str(int(signum)), str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    tok_dir = out / "work" / "tokenizer"
    left = {p.name for p in tok_dir.iterdir()}
    if signum == signal.SIGKILL:
        assert proc.returncode == -signum, proc.stderr[-2000:]
        assert left > {"replace"}, left  # what the killed training wrote is there
    else:  # stopped as Ctrl-C stops it: what the training wrote is removed
        assert proc.returncode == 128 + signum, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("vikhr ablate: terminated (SIGTERM); ")
        assert left == {"replace"}, left
    state = json.loads((out / "work" / "grid.json").read_text(encoding="utf-8"))
    assert set(state["prepared"]["tokenizers"]) == {"replace"}  # but not taken as trained

    result = run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    assert tokenizers == ["extend"]
    assert [r.split("-")[0] for r in runs] == ["extended"]
    assert {p.name for p in tok_dir.iterdir()} == {"replace", "extend"}  # no scratch left
    whole = both_modes_grid[0] / "work" / "tokenizer" / "extend"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tok_dir / "extend" / name).read_bytes() == (whole / name).read_bytes(), name
    assert result.chars_per_token == both_modes_grid[2].chars_per_token
    assert result.adapted_rows == both_modes_grid[2].adapted_rows
    extended = next(r for r in both_modes_grid[2].runs if r.arm.name == "extended")
    assert result.runs[3].ru_bpc == pytest.approx(extended.ru_bpc, abs=1e-6)
    state = json.loads((out / "work" / "grid.json").read_text(encoding="utf-8"))
    assert set(state["prepared"]["tokenizers"]) == {"replace", "extend"}


def test_a_fresh_grid_stopped_while_its_tokenizer_trains_is_prepared_again_on_resume(
    init_grid: tuple[Path, Path, Any, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fresh grid stopped (Ctrl-C) in its tokenizer's training, part of the tokenizer's files
    written in its directory, has no grid state: `--resume` starts the grid again, and its tokenizer
    and figures are those of an uninterrupted run."""
    import shutil

    import vikhr.tokenizer.train as tokenizer_train
    from vikhr.ablate.runner import run_ablation

    first, cfg_path, first_result, _ = init_grid
    out = first.parent / "stopped-fresh"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    cfg_path = _write(first.parent / "stopped-fresh.yaml", {**cfg, "out_dir": str(out)})
    whole = first / "work" / "tokenizer" / "replace"

    def stopped(corpora: Any, out_dir: Path, settings: Any, *args: Any) -> Any:
        out_dir.mkdir(parents=True)
        model = (whole / "tokenizer.model").read_bytes()
        (out_dir / "tokenizer.model").write_bytes(model[: len(model) // 2])
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(tokenizer_train, "train_tokenizer", stopped)
        with pytest.raises(KeyboardInterrupt):
            run_ablation(load_ablate_config(cfg_path), show_progress=False)
    assert (out / "work" / "tokenizer" / "replace" / "tokenizer.model").is_file()
    capsys.readouterr()
    result = run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    assert "no earlier run of this grid" in capsys.readouterr().err
    for path in sorted(p for p in whole.iterdir() if p.name != "manifest.json"):
        assert (out / "work" / "tokenizer" / "replace" / path.name).read_bytes() == path.read_bytes(), path
    assert _bpc_by_arm(result) == _bpc_by_arm(first_result)
    assert result.chars_per_token == first_result.chars_per_token
    shutil.rmtree(out)


def test_resume_of_a_base_only_grid_written_when_every_grid_trained_a_tokenizer(
    init_grid: tuple[Path, Path, Any, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A grid of base-tokenizer arms no longer trains an adapted tokenizer, so its settings lost the
    size key: `--resume` of one written before (its state with the trained tokenizer and vocab_size)
    was refused as "other tokenizer settings", and its config, which gives tokenizer.vocab_size, was
    refused as a key no arm uses. Both resume and find the grid's runs; the key is said to be unused."""
    from vikhr.ablate.report import markdown
    from vikhr.ablate.runner import run_ablation

    first, cfg_path, _, _ = init_grid
    base_only = [{"name": "base-compute", "group": "vocabulary", "tokenizer": "base"}]
    # The grid with a base arm at equal compute added, its state then as an earlier vikhr wrote it
    # (every grid trained tokenizer.mode's tokenizer and recorded its size).
    out, cfg_path, runs, tokenizers = _resumed(
        first, cfg_path, "base-only", monkeypatch, arms=[*MICRO["arms"], *base_only]
    )
    run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    assert [r.split("-")[:2] for r in runs] == [["base", "compute"]] and tokenizers == []
    _as_one_mode_grids_wrote_it(out / "work" / "grid.json")
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    for tokenizer in ({k: v for k, v in cfg["tokenizer"].items() if k != "vocab_size"}, cfg["tokenizer"]):
        runs.clear()
        path = _write(cfg_path, {**cfg, "tokenizer": tokenizer, "arms": base_only})
        result = run_ablation(load_ablate_config(path), show_progress=False, resume=True)
        assert runs == tokenizers == []
        assert [r.arm.name for r in result.runs] == ["base-compute"]
        assert set(result.chars_per_token) == {"base"}
        assert "Adapted tokenizer: none" in markdown(result)
        note = f"note: {path}: config key tokenizer.vocab_size is unused: every arm keeps the base tokenizer"
        assert (note in capsys.readouterr().err) == ("vocab_size" in tokenizer)
    # The tokenizer and its runs are kept: the adapted arms put back find theirs.
    result = run_ablation(load_ablate_config(_write(cfg_path, cfg)), show_progress=False, resume=True)
    assert runs == tokenizers == []
    assert len(result.runs) == 4


def test_resume_of_a_base_only_grid_accepts_another_tokenizer_mode(
    init_grid: tuple[Path, Path, Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """tokenizer.mode is the tokenizer `adapted` arms take (and budget chars measures against): a grid
    of base-tokenizer arms alone was refused on --resume with another mode ("other tokenizer
    settings"), though none of its runs depends on it. It resumes. The adapted runs the grid made
    before stay bound to the mode they were made with: adapted arms under the other mode are refused,
    under the recorded one they find their runs."""
    from vikhr.ablate.runner import run_ablation

    first, cfg_path, _, _ = init_grid
    base_only = [{"name": "base-compute", "group": "vocabulary", "tokenizer": "base"}]
    out, cfg_path, runs, tokenizers = _resumed(
        first, cfg_path, "base-only-mode", monkeypatch, arms=[*MICRO["arms"], *base_only]
    )
    run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    runs.clear()
    _as_one_mode_grids_wrote_it(out / "work" / "grid.json")  # read by the mode it records, not the config's
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    extend = {"mode": "extend", "new_tokens": NEW_TOKENS}
    path = _write(cfg_path, {**cfg, "tokenizer": extend, "arms": base_only})
    result = run_ablation(load_ablate_config(path), show_progress=False, resume=True)
    assert runs == tokenizers == [] and [r.arm.name for r in result.runs] == ["base-compute"]
    state = json.loads((out / "work" / "grid.json").read_text(encoding="utf-8"))
    assert state["settings"]["tokenizer"]["mode"] == "replace"
    assert set(state["prepared"]["tokenizers"]) == {"replace"}
    with pytest.raises(VikhrError, match="other tokenizer settings or data"):
        run_ablation(load_ablate_config(_write(cfg_path, {**cfg, "tokenizer": extend})), False, resume=True)
    result = run_ablation(load_ablate_config(_write(cfg_path, cfg)), show_progress=False, resume=True)
    assert runs == tokenizers == [] and len(result.runs) == 4


def test_a_base_only_grid_resumed_with_arms_of_another_mode_takes_that_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grid of base-tokenizer arms trains no adapted tokenizer, so no run of it was made with its
    recorded tokenizer.mode: adapted arms added under another mode were refused on --resume ("other
    tokenizer settings"). They run, and the grid then holds to that mode."""
    from vikhr.ablate.runner import run_ablation

    base_only = [{"name": "base-compute", "group": "vocabulary", "tokenizer": "base"}]
    first, cfg_path, _, _ = _init_grid(tmp_path, {}, base_only)
    adapted = [*base_only, {"name": "adapted", "group": "vocabulary"}]
    extend = {"mode": "extend", "new_tokens": NEW_TOKENS}
    out, cfg_path, runs, tokenizers = _resumed(
        first, cfg_path, "with-adapted", monkeypatch, arms=adapted, tokenizer=extend
    )
    result = run_ablation(load_ablate_config(cfg_path), show_progress=False, resume=True)
    assert tokenizers == ["extend"] and [r.split("-")[0] for r in runs] == ["adapted"]
    assert set(result.adapted_rows) == {"extend"}
    state = json.loads((out / "work" / "grid.json").read_text(encoding="utf-8"))
    assert state["settings"]["tokenizer"]["mode"] == "extend"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    replace = _write(cfg_path, {**cfg, "tokenizer": MICRO["tokenizer"]})
    with pytest.raises(VikhrError, match="other tokenizer settings or data"):
        run_ablation(load_ablate_config(replace), show_progress=False, resume=True)


@pytest.mark.parametrize(
    ("tokenizer", "key"),
    [({"vocab_size": 600}, "vocab_size"), ({"mode": "extend", "new_tokens": 60}, "new_tokens")],
)
def test_a_base_only_grid_says_that_tokenizer_mode_s_size_key_is_unused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tokenizer: dict, key: str
) -> None:
    """A config of base-tokenizer arms with tokenizer.mode's size key (which every grid used before arms
    named their tokenizer) was refused as "a key no arm uses"; it loads, and a note says the key is
    unused. The other mode's key was refused before, and still is."""
    arms = [{"name": "base-tokenizer", "tokenizer": "base"}]
    path = _write(tmp_path / "ablate.yaml", {**MICRO, "tokenizer": tokenizer, "arms": arms})
    assert load_ablate_config(path).adapted_modes() == []
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"note: {path}: config key tokenizer.{key} is unused: every arm keeps the base")
    other = {"vocab_size": ("new_tokens", 60), "new_tokens": ("vocab_size", 600)}[key]
    _write(path, {**MICRO, "tokenizer": {**tokenizer, other[0]: other[1]}, "arms": arms})
    with pytest.raises(VikhrError, match=f"config key tokenizer.{other[0]} is the size of an? "):
        load_ablate_config(path)


def test_an_extend_grid_extends_the_bundled_sentencepiece_base(tmp_path: Path) -> None:
    """Without base.init the base tokenizer is Mistral's .model: extended as a SentencePiece model."""
    from vikhr import assets
    from vikhr.ablate.runner import run_ablation
    from vikhr.tokenizer import load

    data = {
        **MICRO["data"],
        "ru_corpus": _small_corpus(assets.RU_SAMPLE, tmp_path / "ru.jsonl.gz", 30, 1500),
        "en_corpus": _small_corpus(assets.EN_SAMPLE, tmp_path / "en.jsonl.gz", 30, 1500),
    }
    cfg = {
        **MICRO,
        "data": data,
        "tokenizer": {"mode": "extend", "new_tokens": NEW_TOKENS},
        "arms": [{"name": "adapted"}],
        "out_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
    }
    result = run_ablation(load_ablate_config(_write(tmp_path / "ablate.yaml", cfg)), show_progress=False)
    base, adapted = (
        load(assets.MISTRAL_TOKENIZER),
        load(tmp_path / "out" / "work" / "tokenizer" / "extend" / "tokenizer.model"),
    )
    added = adapted.vocab_size - base.vocab_size
    assert 0 < added <= NEW_TOKENS
    assert [adapted.id_to_piece(i) for i in range(base.vocab_size)] == [
        base.id_to_piece(i) for i in range(base.vocab_size)
    ]
    rows = {"tokens": base.vocab_size + added, "copied": base.vocab_size, "new": added}
    assert result.adapted_rows == {"extend": rows}
    [export] = (tmp_path / "out" / "work" / "runs").glob("adapted-*-hf")
    assert (
        json.loads((export / "config.json").read_text(encoding="utf-8"))["vocab_size"]
        == base.vocab_size + added
    )


@pytest.mark.parametrize("start", ["bundled base tokenizer", "base.init"])
def test_an_extend_grid_s_runs_are_checked_at_the_base_s_vocabulary_plus_the_new_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """The trainer's checks on the config alone took tokenizer.vocab_size (8000, a replace setting) as
    every run's vocabulary: an extend grid's runs were checked at another size than they train at."""
    import vikhr.ablate.config as ablate_config
    from vikhr import assets
    from vikhr.ablate.runner import Ablation
    from vikhr.tokenizer import load

    cfg: dict[str, Any] = {
        **MICRO,
        "tokenizer": {"mode": "extend", "new_tokens": 5000},
        "out_dir": str(tmp_path / "out"),
        "arms": [{"name": "base-tokenizer", "tokenizer": "base"}, {"name": "extended", "kl_weight": 0.5}],
    }
    if start == "base.init":  # the base's vocabulary is the model's embedding rows
        base_vocab = 400
        cfg = {**cfg, "base": {"init": _hf_config_dir(tmp_path / "model", base_vocab)}}
    else:
        base_vocab = load(assets.MISTRAL_TOKENIZER).vocab_size
    checked: dict[str, set[int]] = {"config": set(), "memory": set()}
    stage = "config"

    def recording(grid: Any, run_dir: Path, blend: Any, vocab: int, *args: Any, **kw: Any) -> Any:
        checked[stage].add(vocab)
        return trainer_config(grid, run_dir, blend, vocab, *args, **kw)

    monkeypatch.setattr(ablate_config, "trainer_config", recording)
    grid = load_ablate_config(_write(tmp_path / "ablate.yaml", cfg))
    expected = {base_vocab, base_vocab + 5000}
    assert checked["config"] == expected
    if start == "base.init":
        return  # its directory holds a config.json alone: the memory check runs where the model is whole
    stage = "memory"
    Ablation(grid)  # the memory check, before any stage
    assert checked["memory"] == expected


def test_extend_and_replace_train_their_tokenizers_with_the_same_settings(tmp_path: Path) -> None:
    """Extend took `vikhr tokenizer train`'s defaults (SentencePiece's script splitting on) where replace
    takes the grid's (off): the two modes' arms differed by more than the mode."""
    from vikhr import assets
    from vikhr.ablate.runner import Ablation

    data = {
        **MICRO["data"],
        "ru_corpus": _small_corpus(assets.RU_SAMPLE, tmp_path / "ru.jsonl.gz", 30, 1500),
        "en_corpus": _small_corpus(assets.EN_SAMPLE, tmp_path / "en.jsonl.gz", 30, 1500),
    }
    settings = {}
    for mode, tokenizer in (
        ("replace", MICRO["tokenizer"]),
        ("extend", {"mode": "extend", "new_tokens": 60}),
    ):
        cfg = {**MICRO, "data": data, "tokenizer": tokenizer, "out_dir": str(tmp_path / mode)}
        grid = Ablation(load_ablate_config(_write(tmp_path / f"{mode}.yaml", cfg)))
        grid.prepare()
        manifest = json.loads((grid.work / "tokenizer" / mode / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["mode"] == mode
        settings[mode] = manifest["settings"]
    # What names the mode and its size, and the base extend builds on; every other setting alike
    differ = {"mode", "vocab_size", "new_tokens", "base_model"}
    replace, extend = ({k: v for k, v in s.items() if k not in differ} for s in settings.values())
    assert extend == replace
    assert extend["split_by_script"] is False


def test_an_extend_grid_over_a_base_tokenizer_extend_mode_cannot_take_is_refused_before_any_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SentencePiece base without byte fallback was refused by the tokenizer's training, naming
    --base-model, after an earlier grid's work had been cleared."""
    import sentencepiece as spm

    from vikhr import assets
    from vikhr.cli import main
    from vikhr.jsonl import read_texts

    prefix = tmp_path / "no-byte-fallback"
    lines = [t[:500] for t in read_texts(assets.EN_SAMPLE)][:50]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(prefix),
        vocab_size=300,
        model_type="bpe",
        minloglevel=2,
    )
    out = tmp_path / "out"
    (out / "work" / "results").mkdir(parents=True)
    (out / "work" / "results" / "earlier.json").write_text("{}", encoding="utf-8")
    tokenizer = {"mode": "extend", "new_tokens": NEW_TOKENS, "base": f"{prefix}.model"}
    cfg = _write(tmp_path / "ablate.yaml", {**MICRO, "tokenizer": tokenizer, "out_dir": str(out)})
    assert main(["ablate", "--no-progress", str(cfg)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"vikhr ablate: error: config key tokenizer.mode extend: {prefix}.model: the base tokenizer must "
        "have <unk>=0, <s>=1, </s>=2 and byte fallback"
    ), line
    assert "--base-model" not in line
    assert (out / "work" / "results" / "earlier.json").is_file()
