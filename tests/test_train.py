"""End-to-end tests of pretrain_vikhr.py on the CPU (gloo): parallel equivalence, resume, KL, learning.

Data: Russian (the shared corpus when present, else the bundled sample) and English text,
tokenized with the bundled Mistral SentencePiece model, with the ids folded into the tiny
preset's 512-token vocabulary (the 509 most frequent ids keep their own slot, the rest share
one), written as megatron .bin/.idx by megatron-core's own builder.

This file is also a script (`python tests/test_train.py kl-check CONFIG STEP_DIR OUT`) that
recomputes a logged CE and KL independently, with the float64 reference op.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.distributed.launcher.api import LaunchConfig

from tests.conftest import REPO, child_env, launch_torchrun, run_torchrun, torchrun_command
from tests.helpers import VOCAB, make_corpus, running_versions, write_config
from vikhr.jsonl import read_jsonl
from vikhr.train.monitor import read_metrics

PRETRAIN = REPO / "pretrain_vikhr.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _launch(config: Path, nproc: int, *overrides: str) -> subprocess.CompletedProcess:
    return launch_torchrun(PRETRAIN, "--config", str(config), *overrides, nproc=nproc)


@pytest.fixture(scope="module")
def parallel_runs(corpus: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 8-step job (λ = 0.5) at TP=1 (1 rank), TP=2 and DP=2 (2 ranks each)."""
    runs = {}
    for name, nproc, tensor in (("tp1", 1, 1), ("tp2", 2, 2), ("dp2", 2, 1)):
        tmp = tmp_path_factory.mktemp(name)
        config = write_config(
            tmp / "c.yaml", corpus, tmp / "run", parallel={"tensor": tensor, "device": "cpu"}
        )
        run_torchrun(PRETRAIN, "--config", str(config), nproc=nproc)
        runs[name] = tmp / "run"
    return runs


@pytest.mark.distributed
def test_tp2_and_dp2_match_tp1(parallel_runs: dict[str, Path]) -> None:
    base, base_valid = read_metrics(parallel_runs["tp1"])
    assert sorted(base) == list(range(1, 9))
    # The job learns: otherwise matching losses would prove little.
    assert base[8]["ce"] < base[1]["ce"] - 0.3
    for name in ("tp2", "dp2"):
        train, valid = read_metrics(parallel_runs[name])
        assert sorted(train) == sorted(base)
        for step, row in base.items():
            for key in ("loss", "ce", "kl", "lr"):
                assert train[step][key] == pytest.approx(row[key], rel=2e-5, abs=2e-6), (name, step, key)
            assert train[step]["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-4), (name, step)
        for step, row in base_valid.items():
            for key in ("loss_ru", "loss_en"):
                assert valid[step][key] == pytest.approx(row[key], rel=2e-5), (name, step, key)


@pytest.mark.distributed
def test_sequence_parallel_matches_tp1(
    corpus: dict[str, str], parallel_runs: dict[str, Path], tmp_path: Path
) -> None:
    """parallel.sequence at TP=2: the norms work on half the sequence each, their weight gradients
    are summed over TP, and the job gives TP=1's losses."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, parallel={"tensor": 2, "sequence": True})
    proc = _launch(config, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "TP=2 (+SP)" in proc.stderr
    train, _ = read_metrics(run_dir)
    base, _ = read_metrics(parallel_runs["tp1"])
    for step, row in base.items():
        for key in ("loss", "ce", "kl"):
            assert train[step][key] == pytest.approx(row[key], rel=2e-5, abs=2e-6), (step, key)
        assert train[step]["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-4), step


@pytest.mark.distributed
def test_qk_norm_model_at_tp2_matches_tp1(corpus: dict[str, str], tmp_path: Path) -> None:
    """Qwen3's per-head query/key norms: each TP rank holds different heads, so megatron sums their
    weight gradients over TP (by name; under sequence parallelism the weights are also marked
    sequence-parallel, and are still summed once): TP=2, with and without SP, gives TP=1's losses."""
    model = {"preset": "tiny", "attention": "sdpa", "overrides": {"qk_norm": True, "kv_channels": 32}}
    runs = {}
    for tp, sp in ((1, False), (2, False), (2, True)):
        run_dir = tmp_path / f"tp{tp}-sp{sp}"
        parallel = {"tensor": tp, "sequence": sp}
        config = write_config(tmp_path / f"c{tp}{sp}.yaml", corpus, run_dir, model=model, parallel=parallel)
        proc = _launch(config, tp)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[tp, sp], _ = read_metrics(run_dir)
    base = runs.pop((1, False))
    assert base[8]["ce"] < base[1]["ce"] - 0.3
    for name, train in runs.items():
        for step, row in base.items():
            for key in ("loss", "ce", "kl"):
                assert train[step][key] == pytest.approx(row[key], rel=2e-5, abs=2e-6), (name, step, key)
            assert train[step]["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-4), (name, step)


@pytest.mark.distributed
def test_a_tied_model_with_qkv_biases_trains_and_exports_alike_at_tp2_and_tp1(
    corpus: dict[str, str], tmp_path: Path
) -> None:
    """Qwen2.5-0.5B's layout from its HF checkpoint: tied embeddings and q/k/v biases. At TP=2 the
    tied matrix (embedding and LM head at once) is cut by vocabulary rows, padded otherwise than at
    TP=1 (600 rows: 768 against 640), and each bias by heads; with λ = 0.5 against the start the job
    gives TP=1's losses, and each run's step exports to a tied Qwen2 model with TP=1's weights, its
    biases and tied matrix moved."""
    from safetensors.torch import load_file

    from tests.helpers import FAMILIES, tiny_hf_model
    from vikhr.convert import hf_to_megatron, megatron_to_hf

    def nonzero_biases(model: torch.nn.Module) -> None:  # HF starts them at 0: a lost one would not show
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5)

    arch, fields = FAMILIES["qwen2"]
    hf = tmp_path / "hf"
    tiny_hf_model(hf, 600, arch=arch, weights=nonzero_biases, **fields)
    start = hf_to_megatron(hf, tmp_path / "start", tp_size=2)
    runs = {}
    for tp in (1, 2):
        run_dir = tmp_path / f"tp{tp}"
        config = write_config(
            tmp_path / f"c{tp}.yaml",
            corpus,
            run_dir,
            model={"preset": "init", "init": str(start)},
            parallel={"tensor": tp},
            train={"steps": 4},
        )
        proc = _launch(config, tp)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[tp], _ = read_metrics(run_dir)
    assert runs[1][4]["ce"] < runs[1][1]["ce"] and runs[1][4]["kl"] > 1e-4
    for step, row in runs[1].items():
        for key in ("loss", "ce", "kl"):
            assert runs[2][step][key] == pytest.approx(row[key], rel=2e-5, abs=2e-6), (step, key)
        assert runs[2][step]["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-4), step

    # Each run's step exported: tied, nothing missing, the same weights (the TP=2 tied rows and biases
    # gathered whole); test_convert checks an export's transformers logits.
    hf_weights = load_file(hf / "model.safetensors")
    exported = {}
    for tp in (1, 2):
        out = megatron_to_hf(tmp_path / f"tp{tp}" / "step_000004", tmp_path / f"out{tp}")
        assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
        exported[tp] = load_file(out / "model.safetensors")
        assert set(exported[tp]) == set(hf_weights) and "lm_head.weight" not in exported[tp]
    # Within 1 % of the ~1e-2 the weights moved: Adam turns the rounding in near-zero gradients (a key
    # bias's is zero in exact arithmetic, softmax ignoring a shift shared by all keys) into whole steps.
    for name, tensor in exported[1].items():
        torch.testing.assert_close(exported[2][name], tensor, rtol=0, atol=1e-4, msg=name)
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.bias"):
        assert not torch.equal(exported[2][name], hf_weights[name]), name


@pytest.mark.distributed
def test_kl_is_zero_at_step_0_with_reference_equal_to_model(parallel_runs: dict[str, Path]) -> None:
    for run in parallel_runs.values():
        train, _ = read_metrics(run)
        assert train[1]["kl"] == pytest.approx(0.0, abs=1e-7)
        assert train[1]["loss"] == pytest.approx(train[1]["ce"], abs=1e-6)
        # Once the model moves away from its frozen starting copy the KL grows, and enters the loss.
        assert all(train[s]["kl"] > 1e-4 for s in range(3, 9))
        assert train[8]["loss"] == pytest.approx(train[8]["ce"] + 0.5 * train[8]["kl"], rel=1e-6)


@pytest.mark.distributed
def test_logged_kl_is_the_ops(parallel_runs: dict[str, Path], tmp_path: Path) -> None:
    """Recompute step 5's CE and KL from the step-4 checkpoint and the initial weights with the
    float64 reference op, and step 1's CE from the initial weights alone."""
    run = parallel_runs["tp1"]
    out = tmp_path / "kl.json"
    run_torchrun(
        Path(__file__), "kl-check", str(run.parent / "c.yaml"), str(run / "step_000004"), str(out), nproc=1
    )
    got = json.loads(out.read_text())
    train, _ = read_metrics(run)
    assert got["ce_step1"] == pytest.approx(train[1]["ce"], rel=1e-5)
    assert got["ce"] == pytest.approx(train[5]["ce"], rel=1e-5)
    assert got["kl"] == pytest.approx(train[5]["kl"], rel=1e-4)
    assert got["kl"] > 1e-4


@pytest.mark.distributed
def test_global_batch_changes_on_resume(
    corpus: dict[str, str], parallel_runs: dict[str, Path], tmp_path: Path
) -> None:
    """Steps 1-4 with 8 samples each (the TP=1 job), then steps 5-6 with 16 on 2 ranks: the run reads
    on from sample 32, not from step × 16 — step 5's logged CE and KL are the float64 reference's
    for the step-4 weights on samples 32-47 — and its checkpoint counts 64 samples."""
    saved = parallel_runs["tp1"] / "step_000004"
    saved_meta = json.loads((saved / "meta.json").read_text())
    assert saved_meta["consumed_samples"] == 32
    assert saved_meta["cwd"] == str(REPO)  # where the config's relative paths start (torchrun's cwd)
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, train={"steps": 6, "global_batch": 16})
    proc = _launch(config, 2, f"checkpoint.resume={saved}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "train.global_batch 8 -> 16 from step 5: the run reads on from sample 32" in proc.stderr
    assert "settings changed since step_000004: train.global_batch 8 -> 16, train.steps 8 -> 6" in proc.stderr
    assert "warning: resuming from step_000004: step 5 trains at lr " in proc.stderr  # 6 steps decay faster
    train, _ = read_metrics(run_dir)
    assert sorted(train) == [5, 6]
    assert json.loads((run_dir / "step_000006" / "meta.json").read_text())["consumed_samples"] == 64
    out = tmp_path / "kl.json"
    run_torchrun(Path(__file__), "kl-check", str(config), str(saved), str(out), nproc=1)
    got = json.loads(out.read_text())
    assert got["ce"] == pytest.approx(train[5]["ce"], rel=1e-5)
    assert got["kl"] == pytest.approx(train[5]["kl"], rel=1e-4)


@pytest.mark.distributed
def test_start_and_reference_from_a_checkpoint(parallel_runs: dict[str, Path], tmp_path: Path) -> None:
    """model.init and kl.reference load a checkpoint of this trainer (here: the TP=1 run's last)."""
    trained = parallel_runs["tp1"]
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        _corpus_of(trained),
        run_dir,
        model={"init": str(trained)},
        kl={"weight": 0.5, "reference": str(trained / "step_000008")},
        train={"steps": 1},
    )
    proc = _pretrain_cli("--config", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    train, _ = read_metrics(run_dir)
    before, _ = read_metrics(trained)
    assert train[1]["kl"] == pytest.approx(0.0, abs=1e-7)  # reference == starting weights
    assert train[1]["ce"] < before[1]["ce"] - 0.3  # it starts from the trained weights, not from scratch


def test_a_resume_reads_model_init_only_for_the_kl_reference(
    parallel_runs: dict[str, Path], tmp_path: Path
) -> None:
    """Every resume loaded model.init's weights, then overwrote them with the checkpoint's: a resume
    failed where the start weights had been moved away. Now they are read only as the KL reference
    (kl.reference: init), straight into it: the resumed steps equal an uninterrupted run's."""
    start = tmp_path / "start"
    shutil.copytree(parallel_runs["tp1"], start)
    corpus = _corpus_of(parallel_runs["tp1"])

    def config(name: str, steps: int, **kl: Any) -> Path:
        sections = {"model": {"init": str(start)}, "train": {"steps": steps}, "checkpoint": {"save_every": 1}}
        return write_config(tmp_path / f"{name}.yaml", corpus, tmp_path / name, kl=kl, **sections)

    for name, steps in (("whole", 3), ("resumed", 2), ("resumed", 3)):
        proc = _pretrain_cli("--config", str(config(name, steps)))
        assert proc.returncode == 0, proc.stderr[-3000:]
    whole, resumed = read_metrics(tmp_path / "whole")[0], read_metrics(tmp_path / "resumed")[0]
    assert resumed[3]["kl"] > 0
    assert all(resumed[3][key] == whole[3][key] for key in ("loss", "ce", "kl", "lr", "grad_norm"))
    assert _pretrain_cli("--config", str(config("plain", 1, weight=0.0))).returncode == 0
    start.rename(tmp_path / "moved")
    proc = _pretrain_cli("--config", str(config("plain", 2, weight=0.0)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and sorted(read_metrics(tmp_path / "plain")[0]) == [1, 2]
    proc = _pretrain_cli("--config", str(config("resumed", 4)))  # its KL reference is model.init
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.endswith(f"config key model.init: checkpoint not found: {start} (or use 'random')")
    assert not (tmp_path / "resumed" / "step_000004").exists()


def _corpus_of(run_dir: Path) -> dict[str, str]:
    cfg = yaml.safe_load((run_dir.parent / "c.yaml").read_text())
    return {e["name"]: e["prefix"] for e in cfg["data"]["train"]}


@pytest.mark.distributed
def test_kill_and_resume_matches_uninterrupted(
    corpus: dict[str, str], parallel_runs: dict[str, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir)
    killed = _launch(config, 2, "debug.kill_at_step=6")
    assert killed.returncode != 0, "the run should have been killed"
    assert (run_dir / "latest").is_file(), killed.stderr[-4000:]  # it saved before it was killed
    assert (run_dir / "latest").read_text().strip() == "step_000004"
    assert not list(run_dir.glob("*.tmp"))
    interrupted, _ = read_metrics(run_dir)
    assert max(interrupted) == 6  # steps 5 and 6 ran, and are lost with the process
    resumed = _launch(config, 2, "checkpoint.keep_last=1")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr and "step_000004" in resumed.stderr
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_000008"]  # keep_last=1
    _assert_same_run(run_dir, parallel_runs["dp2"])  # the same job, never interrupted


def _assert_same_run(run_dir: Path, reference_dir: Path) -> None:
    """Every step's metrics and the final validation losses equal the reference run's, bit for bit."""
    train, valid = read_metrics(run_dir)
    reference, reference_valid = read_metrics(reference_dir)
    assert sorted(train) == sorted(reference)
    for step in sorted(reference):
        for key in ("loss", "ce", "kl", "lr", "grad_norm"):
            assert train[step][key] == reference[step][key], (step, key)
    last = max(reference)
    assert valid[last] == reference_valid[last]


def _stop_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if ": stopped on SIG" in line]
    assert len(lines) == 1, stderr[-4000:]  # rank 0's alone
    return lines[0]


@pytest.mark.distributed
def test_a_signal_to_one_rank_saves_that_step_and_resumes_exactly(
    corpus: dict[str, str], parallel_runs: dict[str, Path], tmp_path: Path
) -> None:
    """A cluster's SIGTERM may reach one rank before (or instead of) the others: after the step the
    ranks agree, all save that step and stop; the resumed run equals the uninterrupted one."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir)
    stopped = _launch(config, 2, "debug.signal_at_step=5")  # the last rank signals itself
    assert stopped.returncode != 0, "a stopped run has not finished"
    assert _stop_line(stopped.stderr) == (
        f"pretrain_vikhr.py: stopped on SIGTERM after step 5 of 8, saved in {run_dir / 'step_000005'}; "
        "run the same command again to resume"
    )
    assert (run_dir / "latest").read_text().strip() == "step_000005"
    assert max(read_metrics(run_dir)[0]) == 5
    resumed = _launch(config, 2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from {run_dir / 'step_000005'}" in resumed.stderr
    _assert_same_run(run_dir, parallel_runs["dp2"])  # the same job, never stopped


# torchrun's own flags for SLURM's early notice: pass SIGUSR1 on, and give the ranks 15 minutes to
# save (torchrun kills them 30 s after a signal by default).
FORWARD_USR1 = ["--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "--shutdown-timeout=900"]


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("sig", "launcher_flags", "received"),
    [
        (signal.SIGTERM, [], "SIGTERM"),  # passed on by torchrun
        (signal.SIGUSR1, FORWARD_USR1, "SIGUSR1"),  # passed on, with time to save
        (signal.SIGUSR1, [], "SIGTERM"),  # ends torchrun; its ranks get SIGTERM from the kernel
    ],
    ids=["sigterm", "sigusr1-forwarded", "sigusr1-kills-torchrun"],
)
def test_a_signal_to_torchrun_saves_the_step_its_ranks_were_in(
    corpus: dict[str, str], tmp_path: Path, sig: signal.Signals, launcher_flags: list[str], received: str
) -> None:
    """What SLURM does at a time limit (SIGTERM) or ahead of it (`--signal=USR1@600`): whatever the
    launcher does with the signal, the ranks save the step they were in and stop."""
    if launcher_flags and "shutdown_timeout" not in inspect.signature(LaunchConfig).parameters:
        pytest.skip("this torchrun has no --shutdown-timeout")
    run_dir = tmp_path / "run"
    steps = 2000  # far more than run before the signal
    config = write_config(
        tmp_path / "c.yaml", corpus, run_dir, train={"steps": steps}, checkpoint={"save_every": steps}
    )
    cmd = [*torchrun_command(2), *launcher_flags, str(PRETRAIN), "--config", str(config)]
    log = tmp_path / "stderr.txt"  # a file, not a pipe nobody reads while the run goes on
    with log.open("w") as err, subprocess.Popen(cmd, env=child_env(), cwd=REPO, stderr=err) as launcher:
        deadline = time.monotonic() + 300
        while not (run_dir / "metrics.jsonl").is_file() or len(read_metrics(run_dir)[0]) < 3:
            assert launcher.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        launcher.send_signal(sig)
        launcher.wait(timeout=120)
    deadline = time.monotonic() + 120  # ranks whose torchrun died finish saving after it
    while ": stopped on SIG" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    train, _ = read_metrics(run_dir)
    last = max(train)
    assert 3 <= last < steps
    stop = f"pretrain_vikhr.py: stopped on {received} after step {last} of {steps},"
    assert _stop_line(log.read_text()).startswith(stop)
    assert (run_dir / "latest").read_text().strip() == f"step_{last:06d}"
    assert [p.name for p in run_dir.iterdir() if p.name.startswith("step_")] == [f"step_{last:06d}"]


def test_vikhr_pretrain_stops_on_sigusr1_with_its_shell_status(
    corpus: dict[str, str], tmp_path: Path
) -> None:
    """One process (`vikhr pretrain`): SLURM's early notice (`--signal=USR1@120`) saves and ends the run
    with status 128 + 10, so a job script can tell it from a finished run and requeue."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, train={"steps": 4})
    proc = _pretrain_cli(
        "--config", str(config), "checkpoint.save_on_signals=[SIGUSR1]", "debug.signal_at_step=2"
    )
    assert proc.returncode == 128 + signal.SIGUSR1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"vikhr pretrain: stopped on SIGUSR1 after step 2 of 4, saved in {run_dir / 'step_000002'}; "
        "run the same command again to resume"
    )
    assert (run_dir / "latest").read_text().strip() == "step_000002"


def test_a_signal_in_the_setup_ends_the_run_at_once_with_its_status_and_record(
    corpus: dict[str, str], tmp_path: Path
) -> None:
    """Before the first step a stop signal had its default action: no line, no stopped.json, so a
    job script took a preempted setup (minutes for a 7B model) for a crash. Fresh and resumed."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, train={"steps": 4})
    usr1 = ("checkpoint.save_on_signals=[SIGUSR1]", "debug.signal_at_step=0")
    proc = _pretrain_cli("--config", str(config), *usr1)
    assert proc.returncode == 128 + signal.SIGUSR1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "vikhr pretrain: stopped on SIGUSR1 before step 1 of 4, in its setup (nothing new to save); "
        "run the same command again to resume"
    )
    stopped = json.loads((run_dir / "stopped.json").read_text(encoding="utf-8"))
    assert stopped == {"step": 0, "steps": 4, "reason": "on SIGUSR1", "status": 128 + signal.SIGUSR1}
    assert not list(run_dir.glob("step_*"))
    assert _pretrain_cli("--config", str(config), "train.steps=2").returncode == 0
    proc = _pretrain_cli(
        "--config", str(config), "checkpoint.save_on_signals=[SIGTERM]", "debug.signal_at_step=2"
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "stopped on SIGTERM before step 3 of 4, in its setup" in proc.stderr.strip().splitlines()[-1]
    assert json.loads((run_dir / "stopped.json").read_text(encoding="utf-8"))["step"] == 2
    assert (run_dir / "latest").read_text().strip() == "step_000002"


def test_vikhr_pretrain_stops_at_its_time_limit(corpus: dict[str, str], tmp_path: Path) -> None:
    """checkpoint.stop_after_minutes (--exit-duration-in-mins) counts from the start, setup included:
    a limit the setup alone exceeds stops the run after its first step, saved, with status 75."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, train={"steps": 4})
    proc = _pretrain_cli("--config", str(config), "--exit-duration-in-mins", "0.001")
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "vikhr pretrain: stopped at the time limit (checkpoint.stop_after_minutes = 0.001) after step 1 "
        f"of 4, saved in {run_dir / 'step_000001'}; run the same command again to resume"
    )
    assert (run_dir / "latest").read_text().strip() == "step_000001"
    # torchrun exits 1 whatever its ranks' status: the run says it stopped unfinished in a file
    stopped = json.loads((run_dir / "stopped.json").read_text(encoding="utf-8"))
    assert stopped == {"step": 1, "steps": 4, "reason": stopped["reason"], "status": 75}
    assert stopped["reason"].startswith("at the time limit")
    finished = _pretrain_cli("--config", str(config))
    assert finished.returncode == 0
    assert not (run_dir / "stopped.json").exists()
    # pre-training's loss takes every target: global batch × seq_len a step, kept across the resume
    train, _ = read_metrics(run_dir)
    assert {step: row["loss_tokens"] for step, row in train.items()} == {step: 8 * 64 for step in range(1, 5)}
    assert f"trained: the loss was taken over {4 * 8 * 64:,} target tokens in 4 steps" in finished.stderr


def test_a_resume_of_a_checkpoint_without_a_loss_token_count_says_which_steps_it_counted(
    corpus: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint written before the count was kept: the resumed run counts its own steps and says
    which. Resumed at the last step, it said "steps 3-2"; it now says it trained no step."""
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml", corpus, run_dir, train={"steps": 2}, checkpoint={"save_every": 1}
    )
    _train_here(config)
    for meta_path in run_dir.glob("step_*/meta.json"):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        del meta["loss_tokens"]
        meta_path.write_text(json.dumps(meta), encoding="utf-8")
    capsys.readouterr()
    assert _train_here(config)["loss_tokens"] == 0
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith("trained: no step in this run (resumed at its last step, 2, from a checkpoint ")
    shutil.rmtree(run_dir / "step_000002")
    (run_dir / "latest").write_text("step_000001\n", encoding="utf-8")
    assert _train_here(config)["loss_tokens"] == 8 * 64
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == f"trained: the loss was taken over {8 * 64:,} target tokens in step 2"


def test_a_checkpoint_records_what_made_it_and_a_resume_by_other_versions_says_so(
    corpus: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing recorded which vikhr checkout, torch or megatron-core saved a checkpoint, so a figure
    that no longer reproduced named no code to go back to. meta.json now records them; a resume of a
    checkpoint saved by other ones says so in one note line naming both, and an older checkpoint
    without the record resumes without one."""
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml", corpus, run_dir, train={"steps": 1}, checkpoint={"save_every": 1}
    )
    _train_here(config)
    meta_path = run_dir / "step_000001" / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    assert meta["provenance"] == running_versions()
    capsys.readouterr()
    meta["provenance"] |= {"commit": "0123abc", "torch": "2.6.0"}
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    _train_here(config)
    notes = [line for line in capsys.readouterr().err.splitlines() if "may differ" in line]
    now = running_versions()
    assert notes == [
        f"note: the checkpoint resumed ({run_dir / 'step_000001'}) was made with other code or libraries "
        f"than this run (vikhr commit 0123abc -> {now['commit']}, torch 2.6.0 -> {now['torch']}): its "
        "figures may differ from the earlier ones"
    ]
    del meta["provenance"]
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    _train_here(config)
    assert "may differ" not in capsys.readouterr().err


def _train_here(config: Path, *overrides: str) -> dict[str, Any]:
    """The trainer in this process, as `vikhr pretrain` (and `vikhr ablate`'s arms) run it."""
    from vikhr.train.config import load_config
    from vikhr.train.trainer import run

    return run(load_config(str(config), list(overrides)))


@pytest.mark.parametrize("save_every", [4, 2], ids=["previous-step-unsaved", "previous-step-saved"])
def test_a_signal_during_a_step_of_one_process_stops_at_the_next_micro_batch(
    corpus: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, save_every: int
) -> None:
    """A SIGTERM in a step waited for the step's other micro-batches, the validation pass due after
    it and a save, even where the step before was saved already: more than a cluster's grace time
    for a large model. One process now drops the step at its next micro-batch (no update made: the
    step before is whole), saves that step unless it is saved, and stops; the resumed run is the
    uninterrupted one, bit for bit."""
    import vikhr.train.trainer as trainer
    from vikhr.errors import RunStopped

    def config(name: str) -> Path:
        return write_config(
            tmp_path / f"{name}.yaml",
            corpus,
            tmp_path / name,
            train={"steps": 4, "micro_batch": 1, "global_batch": 4},  # 4 micro-batches a step
            checkpoint={"save_every": save_every},
            logging={"eval_every": 1, "tensorboard": False},  # a validation pass after every step
        )

    _train_here(config("whole"))
    run_dir, forward = tmp_path / "stopped", trainer.forward_loss
    seen: dict[str, Any] = {"train": 0, "after_signal": 0}

    def signalling_forward(*args: Any, **kwargs: Any) -> Any:
        if "saved" in seen:
            seen["after_signal"] += 1
        elif torch.is_grad_enabled():
            seen["train"] += 1
            if seen["train"] == 2 * 4 + 2:  # step 3's second micro-batch
                seen["saved"] = {p: p.stat().st_mtime_ns for p in run_dir.glob("step_*/*")}
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(*args, **kwargs)

    monkeypatch.setattr(trainer, "forward_loss", signalling_forward)
    with pytest.raises(RunStopped) as stopped:
        _train_here(config("stopped"))
    assert str(stopped.value) == f"stopped on SIGTERM after step 2 of 4, saved in {run_dir / 'step_000002'}"
    assert stopped.value.status == 128 + signal.SIGTERM
    assert seen["after_signal"] == 0  # no micro-batch more, no validation pass
    assert sorted(read_metrics(run_dir)[0]) == [1, 2]
    assert json.loads((run_dir / "stopped.json").read_text(encoding="utf-8"))["step"] == 2
    assert (run_dir / "latest").read_text().strip() == "step_000002"
    if save_every == 2:  # saved at step 2 already: not written again
        assert {p: p.stat().st_mtime_ns for p in run_dir.glob("step_*/*")} == seen["saved"]
    monkeypatch.setattr(trainer, "forward_loss", forward)
    _train_here(config("stopped"))
    _assert_same_run(run_dir, tmp_path / "whole")
    assert read_metrics(run_dir)[1] == read_metrics(tmp_path / "whole")[1]


def test_a_signal_in_the_first_step_of_one_process_saves_nothing(
    corpus: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropped, the first step leaves the start's weights: no checkpoint of step 0, as in the setup."""
    import vikhr.train.trainer as trainer
    from vikhr.errors import RunStopped

    run_dir, forward = tmp_path / "run", trainer.forward_loss

    def signalling_forward(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(*args, **kwargs)

    monkeypatch.setattr(trainer, "forward_loss", signalling_forward)
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, train={"steps": 4})
    with pytest.raises(RunStopped) as stopped:
        _train_here(config)
    assert str(stopped.value) == "stopped on SIGTERM in step 1 of 4, before its update (nothing new to save)"
    assert not list(run_dir.glob("step_*"))
    assert json.loads((run_dir / "stopped.json").read_text(encoding="utf-8"))["step"] == 0


def test_a_stop_after_a_step_skips_its_validation_and_the_resumed_run_does_it_first(
    corpus: dict[str, str], tmp_path: Path
) -> None:
    """A stop agreed after a step ran the validation pass due there before saving (minutes on a
    large validation set, within the cluster's grace time). It now saves at once; the checkpoint
    says its validation is pending, and the resumed run does it before its first step."""
    from vikhr.errors import RunStopped

    def config(name: str) -> Path:
        return write_config(
            tmp_path / f"{name}.yaml",
            corpus,
            tmp_path / name,
            train={"steps": 4},
            checkpoint={"save_every": 4},
            logging={"eval_every": 2, "tensorboard": False},
        )

    _train_here(config("whole"))
    run_dir = tmp_path / "stopped"
    with pytest.raises(RunStopped) as stopped:
        _train_here(config("stopped"), "debug.signal_at_step=2")
    assert str(stopped.value).startswith("stopped on SIGTERM after step 2 of 4, saved in ")
    assert sorted(read_metrics(run_dir)[1]) == [0]  # the validation of step 2 was not run
    _train_here(config("stopped"))
    assert read_metrics(run_dir)[1] == read_metrics(tmp_path / "whole")[1]  # steps 0, 2 and 4
    _assert_same_run(run_dir, tmp_path / "whole")


def test_validation_reads_the_device_once_per_pass_and_gives_the_plain_loop_s_losses(
    corpus: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validation pass read each micro-batch's CE (`.item()`) and its count of labelled tokens
    from the device: two host syncs per micro-batch, each waiting for the GPU to drain. It now sums
    on the device and reads the losses once per pass; they are a plain loop's to the bit."""
    import vikhr.train.trainer as trainer
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.config import load_config
    from vikhr.train.data import IGNORE_INDEX, collate

    path = write_config(tmp_path / "c.yaml", corpus, tmp_path / "run", data={"valid_samples": 12})
    cfg = load_config(str(path))
    micro = cfg.train.micro_batch
    with distributed_env(tp_size=1, seed=cfg.train.seed, device="cpu") as env:
        t = trainer.Trainer(cfg, env)
        t.train_step()  # weights other than the initial ones
        expected = {}
        with torch.no_grad():
            t.model.eval()
            for name, dataset in t.data.valid.items():
                total, count, n = 0.0, 0, min(cfg.data.valid_samples, len(dataset))
                assert n > micro  # several micro-batches
                for first in range(0, n, micro):
                    batch = collate([dataset[i] for i in range(first, min(first + micro, n))])
                    ce = trainer.forward_loss(t.model, batch, t.validation_loss_fn).metrics["ce"]
                    labelled = int((batch.labels != IGNORE_INDEX).sum())
                    total, count = total + ce.item() * labelled, count + labelled
                expected[name] = total / max(count, 1)
            t.model.train()
        assert len(expected) == 2
        reads = _count_tensor_reads(monkeypatch, trainer)
        losses = t.evaluate()
        monkeypatch.undo()
    assert losses == expected
    assert reads == [1], reads  # one `.tolist()` of the pass's losses


def _count_tensor_reads(monkeypatch: pytest.MonkeyPatch, trainer: Any) -> list[int]:
    """From now, the number of tensor values the trainer reads into Python (each a host sync on a
    GPU), in a list of one; its count of a micro-batch's labelled tokens, made on the host before the
    batch moves, is left out (as are the CPU-only checks of the ops it calls)."""
    reads = [0]

    def counting(read: Any) -> Any:
        def counted(self: torch.Tensor, *args: Any) -> Any:
            caller = sys._getframe(1).f_code
            reads[0] += caller.co_filename == trainer.__file__ and caller.co_name != "_labelled"
            return read(self, *args)

        return counted

    for method in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, method, counting(getattr(torch.Tensor, method)))
    return reads


DISTRIBUTED = {"distributed": True, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "decay": "cosine"}


@pytest.fixture(scope="module")
def distributed_run(corpus: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DP=2 job of `parallel_runs` with optim.distributed (8 steps, a checkpoint at step 4)."""
    run_dir = tmp_path_factory.mktemp("distributed") / "run"
    proc = _launch(write_config(run_dir.parent / "c.yaml", corpus, run_dir, optim=DISTRIBUTED), 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


@pytest.mark.distributed
def test_distributed_optimizer_matches_and_resumes_exactly(
    corpus: dict[str, str], parallel_runs: dict[str, Path], distributed_run: Path, tmp_path: Path
) -> None:
    """optim.distributed shards the optimizer state over DP=2: the losses are the replicated
    optimizer's (up to the float rounding of the grad norm summed by shards), each DP rank
    saves its own part, and kill + resume reproduces the uninterrupted run bit for bit."""
    train, _ = read_metrics(distributed_run)
    replicated, _ = read_metrics(parallel_runs["dp2"])
    assert sorted(train) == sorted(replicated)
    for step in sorted(train):
        for key in ("loss", "ce", "kl", "grad_norm"):
            assert train[step][key] == pytest.approx(replicated[step][key], rel=1e-5), (step, key)
    step_dir = distributed_run / "step_000004"
    assert sorted(p.name for p in step_dir.glob("optim_*")) == ["optim_tp00_dp000.pt", "optim_tp00_dp001.pt"]
    # Together the parts hold 12 B per parameter (fp32 weights and two moments), the weights file
    # 4 B: no part drags in the whole parameter buffer its fp32 main weights are views of.
    optim_bytes = sum(p.stat().st_size for p in step_dir.glob("optim_*"))
    assert optim_bytes < 3.3 * (step_dir / "model_tp00.safetensors").stat().st_size

    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, optim=DISTRIBUTED)
    killed = _launch(config, 2, "debug.kill_at_step=6")
    assert killed.returncode != 0 and (run_dir / "latest").read_text().strip() == "step_000004"
    wrong = _launch(config, 2, "optim.distributed=false")
    assert wrong.returncode != 0
    assert "saved with optim.distributed = true; resume with the same setting" in wrong.stderr
    resumed = _launch(config, 2, "checkpoint.keep_last=1")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr and "step_000004" in resumed.stderr
    assert "random states start from" not in resumed.stderr  # same layout: the saved RNG states are restored
    assert sorted(p.name for p in run_dir.glob("step_*")) == ["step_000008"]  # keep_last=1
    after, _ = read_metrics(run_dir)
    for step in sorted(train):
        for key in ("loss", "ce", "kl", "lr", "grad_norm"):
            assert after[step][key] == train[step][key], (step, key)


def _assert_continues(run_dir: Path, whole: Path) -> None:
    """Steps 5-8 of a run resumed from step 4 in another layout are those of the uninterrupted
    run `whole`, up to the float rounding another TP or DP size brings."""
    train, valid = read_metrics(run_dir)
    reference, reference_valid = read_metrics(whole)
    for step in (5, 6, 7, 8):
        for key in ("loss", "ce", "kl", "lr"):
            expected = pytest.approx(reference[step][key], rel=2e-5, abs=2e-6)
            assert train[step][key] == expected, (run_dir.name, step, key)
        assert train[step]["grad_norm"] == pytest.approx(reference[step]["grad_norm"], rel=1e-4)
    for key in ("loss_ru", "loss_en"):
        assert valid[8][key] == pytest.approx(reference_valid[8][key], rel=2e-5), (run_dir.name, key)


def _assert_continues_exactly(run_dir: Path, whole: Path) -> None:
    """Steps 5-8 of a run resumed from step 4 are those of the uninterrupted run `whole`, bit for bit
    (same layout: the same float operations)."""
    train, _ = read_metrics(run_dir)
    reference, _ = read_metrics(whole)
    for step in (5, 6, 7, 8):
        for key in ("loss", "lr", "grad_norm"):
            assert train[step][key] == reference[step][key], (run_dir.name, step, key)


@pytest.mark.distributed
@pytest.mark.parametrize("optimizer", ["replicated", "distributed"])
def test_resume_on_another_number_of_processes(
    corpus: dict[str, str],
    parallel_runs: dict[str, Path],
    distributed_run: Path,
    optimizer: str,
    tmp_path: Path,
) -> None:
    """A node lost or added: a checkpoint saved by 2 processes resumes on 1, and one saved by 1 on
    2. The optimizer state is redistributed over the new DP ranks (with optim.distributed, each
    rank's part is cut from the pieces the old ranks saved), so steps 5-8 are those of the
    uninterrupted DP=2 run, up to the float rounding of another DP size."""
    optim = DISTRIBUTED if optimizer == "distributed" else {}
    whole = distributed_run if optimizer == "distributed" else parallel_runs["dp2"]
    shrunk, grown = tmp_path / "shrunk", tmp_path / "grown"
    proc = _launch(
        write_config(tmp_path / "shrunk.yaml", corpus, shrunk, optim=optim),
        1,
        f"checkpoint.resume={whole / 'step_000004'}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "saved by 2 processes (TP=1 DP=2), this run has 1" in proc.stderr
    assert ("redistributed for TP=1 DP=1" in proc.stderr) == (optimizer == "distributed")
    config = write_config(tmp_path / "grown.yaml", corpus, grown, optim=optim)
    assert _launch(config, 1, "debug.kill_at_step=6").returncode != 0
    proc = _launch(config, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "saved by 1 process (TP=1 DP=1), this run has 2" in proc.stderr and "step_000004" in proc.stderr
    for run_dir in (shrunk, grown):
        _assert_continues(run_dir, whole)


@pytest.mark.distributed
def test_resume_at_another_tensor_parallel_size(
    corpus: dict[str, str], distributed_run: Path, tmp_path: Path
) -> None:
    """With the distributed optimizer a checkpoint resumes at another parallel.tensor: TP=1 DP=2
    -> TP=2 DP=1, and a TP=2 run killed after step 6 -> TP=1 DP=2 (weights, fp32 master weights
    and moments merged and cut again, the vocabulary padded for the new size); steps 5-8 are the
    uninterrupted run's up to float rounding."""
    to_tp2 = tmp_path / "to_tp2"
    config = write_config(
        tmp_path / "to_tp2.yaml", corpus, to_tp2, optim=DISTRIBUTED, parallel={"tensor": 2, "device": "cpu"}
    )
    proc = _launch(config, 2, f"checkpoint.resume={distributed_run / 'step_000004'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(TP=1 DP=2), this run has 2: the optimizer state is redistributed for TP=2 DP=1" in proc.stderr
    assert (
        "kl.reference is the random initialisation, drawn again for parallel.tensor = 2 on cpu" in proc.stderr
    )

    to_tp1 = tmp_path / "to_tp1"
    config = write_config(
        tmp_path / "to_tp1.yaml", corpus, to_tp1, optim=DISTRIBUTED, parallel={"tensor": 2, "device": "cpu"}
    )
    assert _launch(config, 2, "debug.kill_at_step=6").returncode != 0
    proc = _launch(config, 2, "parallel.tensor=1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(TP=2 DP=1), this run has 2: the optimizer state is redistributed for TP=1 DP=2" in proc.stderr
    for run_dir in (to_tp2, to_tp1):
        _assert_continues(run_dir, distributed_run)


@pytest.mark.distributed
def test_replicated_optimizer_resumes_at_another_tensor_parallel_size(
    corpus: dict[str, str], parallel_runs: dict[str, Path], tmp_path: Path
) -> None:
    """The replicated optimizer's state (megatron's state dict per TP rank) moves between TP sizes
    too: step 4 of the TP=2 run resumes at TP=1, step 4 of the TP=1 run at TP=2, and steps 5-8
    are the uninterrupted runs'."""
    for source, tensor, nproc in (("tp2", 1, 1), ("tp1", 2, 2)):
        run_dir = tmp_path / f"from_{source}"
        parallel = {"tensor": tensor, "device": "cpu"}
        config = write_config(tmp_path / f"{source}.yaml", corpus, run_dir, parallel=parallel)
        proc = _launch(config, nproc, f"checkpoint.resume={parallel_runs[source] / 'step_000004'}")
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert f"the optimizer state is redistributed for TP={tensor} DP=1" in proc.stderr
        _assert_continues(run_dir, parallel_runs[source])


def _as_saved_on_gpu(step_dir: Path, copy: Path) -> Path:
    """A copy of a CPU checkpoint as a bf16 GPU run would have saved it: meta.json's device and
    dtype, the weights file rounded to bf16, the fp32 master weights in the optimizer state (the
    distributed optimizer's pieces hold them already; the replicated optimizer's state becomes
    megatron's bf16 format, the fp32 weights as the copies beside the moments)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(step_dir, copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "device": "cuda", "params_dtype": "bfloat16"}))
    for path in copy.glob("model_tp*.safetensors"):
        weights = load_file(path)
        save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(path))
        optimizer_file = copy / path.name.replace("model", "optim").replace(".safetensors", ".pt")
        if not meta["distributed_optimizer"]:
            state = torch.load(optimizer_file, weights_only=True)
            groups = [[weights[name] for name in group] for group in _megatron_param_groups()]
            torch.save({"optimizer": state, "fp32_from_fp16_params": groups}, optimizer_file)
    return copy


def _megatron_param_groups() -> list[list[str]]:
    """The names of the tiny model's parameters in each of megatron's optimizer groups, in order (as
    megatron-core groups them for the trainer: weight decay or not)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from vikhr.model.config import preset
    from vikhr.model.gpt import build_gpt_model
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.checkpoint import canonical_name

    with distributed_env(tp_size=1, device="cpu"):
        model = build_gpt_model(preset("tiny"), 1)
        ddp = DistributedDataParallel(
            model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model
        )
        optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=1e-3, weight_decay=0.1), [ddp]
        )
        names = {p: canonical_name(n) for n, p in model.named_parameters()}
        inner = optimizer.chained_optimizers[0] if hasattr(optimizer, "chained_optimizers") else optimizer
        return [[names[p] for p in group["params"]] for group in inner.optimizer.param_groups]


@pytest.mark.distributed
def test_optimizer_state_moves_between_devices(
    corpus: dict[str, str], parallel_runs: dict[str, Path], distributed_run: Path, tmp_path: Path
) -> None:
    """A bf16 GPU checkpoint (made from the CPU run's step 4) resumes on the CPU in fp32, with the
    distributed optimizer and with the replicated one (its state converted from megatron's bf16
    format): the weights come from the fp32 master weights, not the rounded file, so steps 5-8 are
    the uninterrupted run's exactly."""
    gpu_like = _as_saved_on_gpu(distributed_run / "step_000004", tmp_path / "gpu" / "step_000004")
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, optim=DISTRIBUTED)
    proc = _launch(config, 2, f"checkpoint.resume={gpu_like}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(TP=1 DP=2, cuda bfloat16), this run has 2 (cpu float32)" in proc.stderr
    _assert_continues_exactly(run_dir, distributed_run)

    replicated = _as_saved_on_gpu(parallel_runs["dp2"] / "step_000004", tmp_path / "gpu2" / "step_000004")
    run_dir = tmp_path / "r"
    proc = _launch(write_config(tmp_path / "r.yaml", corpus, run_dir), 2, f"checkpoint.resume={replicated}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(TP=1 DP=2, cuda bfloat16), this run has 2 (cpu float32)" in proc.stderr
    _assert_continues_exactly(run_dir, parallel_runs["dp2"])


def test_wsd_run_is_extended_on_resume(corpus: dict[str, str], tmp_path: Path) -> None:
    """optim.decay=wsd: a 6-step run (decay over its last 2) stopped after its step-4 checkpoint,
    before the decay, resumes with train.steps=8 and gives exactly the 8-step run's steps 5-8 —
    held learning rate, then the decay of the longer run."""
    wsd = {"decay": "wsd", "decay_steps": 2, "warmup_steps": 2, "min_lr": 3e-4}
    whole = tmp_path / "whole"
    proc = _launch(write_config(tmp_path / "whole.yaml", corpus, whole, optim=wsd), 1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, optim=wsd, train={"steps": 6})
    assert _launch(config, 1, "debug.kill_at_step=5").returncode != 0
    proc = _launch(config, 1, "train.steps=8")
    assert proc.returncode == 0, proc.stderr[-4000:]
    reference, _ = read_metrics(whole)
    assert [reference[s]["lr"] for s in range(3, 7)] == [3e-3] * 4 and reference[8]["lr"] < 3e-3
    _assert_continues_exactly(run_dir, whole)


def test_recompute_trains_to_the_same_losses(
    corpus: dict[str, str], parallel_runs: dict[str, Path], tmp_path: Path
) -> None:
    """train.recompute: full reaches the trainer: the TP=1 job gives the same losses with it."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, train={"recompute": "full"})
    proc = _launch(config, 1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    train, _ = read_metrics(run_dir)
    reference, _ = read_metrics(parallel_runs["tp1"])
    for step in sorted(reference):
        for key in ("loss", "ce", "kl", "grad_norm"):
            assert train[step][key] == pytest.approx(reference[step][key], rel=1e-5), (step, key)


def test_a_loss_plugs_into_the_trainer(corpus: dict[str, str], tmp_path: Path) -> None:
    """A LossFn replaces CE + λ·KL without a change to the loop: it gets the logits (and the
    reference's when kl.weight > 0), and its terms are what the run logs."""
    import torch.nn.functional as F

    from vikhr.train.config import load_config
    from vikhr.train.trainer import LossTerms, run

    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml", corpus, run_dir, train={"steps": 2}, logging={"eval_every": 100}
    )
    seen: list[tuple[int, bool]] = []

    def cross_entropy_with_z(
        logits: torch.Tensor, reference_logits: torch.Tensor | None, labels: torch.Tensor
    ) -> LossTerms:
        seen.append((logits.shape[-1], reference_logits is not None))
        ce = F.cross_entropy(logits[:, :VOCAB].float(), labels, ignore_index=-100)
        z = logits.float().logsumexp(-1).square().mean()
        return LossTerms(ce + 1e-4 * z, {"ce": ce.detach(), "z": z.detach()})

    result = run(load_config(config), loss_fn=cross_entropy_with_z)
    assert result["step"] == 2
    assert seen == [(VOCAB, True)] * 8  # 2 steps × 4 micro-batches, the reference's logits with λ = 0.5
    train, _ = read_metrics(run_dir)
    assert sorted(train) == [1, 2] and sorted(train[1]) == sorted(
        ["step", "kind", "loss", "ce", "z", "lr", "grad_norm", "tokens_per_s", "mfu", "loss_tokens"]
    )
    assert train[1]["loss"] == pytest.approx(train[1]["ce"] + 1e-4 * train[1]["z"], rel=1e-6)


def test_no_weight_decay_on_norms_and_biases(corpus: dict[str, str], tmp_path: Path, monkeypatch) -> None:
    """AdamW decays the matrices only: the norms' weights (and biases) sit in megatron's wd_mult=0
    groups, which the trainer applies each step (megatron's own scheduler is not used)."""
    from vikhr.train import trainer as trainer_module
    from vikhr.train.config import load_config

    config = write_config(
        tmp_path / "c.yaml", corpus, tmp_path / "run", train={"steps": 1}, logging={"eval_every": 100}
    )
    seen: list[tuple[int, float, float]] = []
    optimizer_step = trainer_module.Trainer.optimizer_step

    def spying_step(self: trainer_module.Trainer, loss: float) -> float:
        for group in self.optimizer.param_groups:
            seen.extend((p.dim(), group["weight_decay"], group["lr"]) for p in group["params"])
        return optimizer_step(self, loss)

    monkeypatch.setattr(trainer_module.Trainer, "optimizer_step", spying_step)
    cfg = load_config(config)
    trainer_module.run(cfg)
    assert {dim for dim, _, _ in seen} == {1, 2}
    assert all(wd == (0.0 if dim == 1 else cfg.optim.weight_decay) for dim, wd, _ in seen), seen
    assert cfg.optim.weight_decay > 0 and len({lr for _, _, lr in seen}) == 1


@pytest.mark.distributed
def test_validation_loss_decreases_on_russian(corpus: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        corpus,
        run_dir,
        train={"steps": 30},
        kl={"weight": 0.0},
        checkpoint={"dir": str(run_dir), "save_every": 100},
        logging={"log_every": 10, "eval_every": 15, "tensorboard": True},
    )
    run_torchrun(PRETRAIN, "--config", str(config), nproc=1)
    _, valid = read_metrics(run_dir)
    assert sorted(valid) == [0, 15, 30]
    assert valid[15]["loss_ru"] < valid[0]["loss_ru"]
    assert valid[30]["loss_ru"] < valid[0]["loss_ru"] - 0.5  # from ln(512) ≈ 6.24 towards the data
    assert "loss_en" in valid[30]  # the forgetting monitor reports English separately
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "latest").read_text().strip() == "step_000030"


@pytest.mark.gpu
@pytest.mark.parametrize("distributed", [False, True])
def test_trains_on_gpu_in_bf16_and_resumes(corpus: dict[str, str], tmp_path: Path, distributed: bool) -> None:
    """The GPU path: bf16 weights with fp32 master copies (megatron's optimizer, replicated or
    distributed), nccl, SDPA/TE."""
    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        corpus,
        run_dir,
        parallel={"tensor": 1, "device": "cuda"},
        model={"attention": "auto"},
        optim={"distributed": distributed},
    )
    killed = _launch(config, 1, "debug.kill_at_step=6")
    assert killed.returncode != 0
    assert (run_dir / "latest").read_text().strip() == "step_000004", killed.stderr[-4000:]
    before, _ = read_metrics(run_dir)
    assert max(before) == 6  # killed by debug.kill_at_step, not by a crash before it
    resumed = _launch(config, 1)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from {run_dir / 'step_000004'} at step 4" in resumed.stderr
    train, valid = read_metrics(run_dir)
    # Steps 5-6 ran twice: the resumed run continues from the fp32 master weights and moments (were
    # they not restored, step 6 would start again from the initial weights), up to bf16 kernels'
    # run-to-run rounding.
    for step in (5, 6):
        assert train[step]["loss"] == pytest.approx(before[step]["loss"], rel=1e-2), step
    assert sorted(train) == list(range(1, 9)) and all(math.isfinite(r["loss"]) for r in train.values())
    assert train[1]["kl"] == pytest.approx(0.0, abs=1e-3)  # bf16 logits of two identical models
    assert valid[8]["loss_ru"] < valid[0]["loss_ru"]
    if any(name in torch.cuda.get_device_name() for name in ("H100", "H200", "A100")):
        assert 0 < train[8]["mfu"] < 1


@pytest.mark.gpu
@pytest.mark.parametrize("distributed", [False, True])
def test_cpu_checkpoint_resumes_on_gpu(corpus: dict[str, str], tmp_path: Path, distributed: bool) -> None:
    """Step 4 of a CPU (fp32) run continues on the GPU in bf16, with either optimizer (the replicated
    one's state converted into megatron's bf16 format): steps 5-8 follow the CPU run's up to bf16
    rounding (λ = 0: a random-init KL reference would be drawn again on the GPU)."""
    settings = {"optim": {"distributed": distributed}, "kl": {"weight": 0.0}}
    cpu_dir = tmp_path / "cpu"
    proc = _launch(write_config(tmp_path / "cpu.yaml", corpus, cpu_dir, **settings), 1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    gpu_dir = tmp_path / "gpu"
    on_gpu = {"parallel": {"tensor": 1, "device": "cuda"}, "model": {"attention": "auto"}}
    config = write_config(tmp_path / "gpu.yaml", corpus, gpu_dir, **settings, **on_gpu)
    proc = _launch(config, 1, f"checkpoint.resume={cpu_dir / 'step_000004'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(TP=1 DP=1, cpu float32), this run has 1 (cuda bfloat16)" in proc.stderr
    train, _ = read_metrics(gpu_dir)
    reference, _ = read_metrics(cpu_dir)
    for step in (5, 6, 7, 8):
        assert train[step]["loss"] == pytest.approx(reference[step]["loss"], rel=2e-2), step


def _pretrain_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vikhr", "pretrain", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("parallel.tensor=3", "parallel.tensor = 3 does not divide the model's num_attention_heads = 4"),
        ("kl.direction=sideways", "kl.direction"),
        ("train.global_batch=7", "train.global_batch = 7"),
        # megatron's TE layer spec failed with a NameError traceback after the data cache was built
        ("model.attention=te", "model.attention = te needs a GPU"),
        # `vikhr pretrain` is one process: the line says how to start the processes TP needs, with
        # a launch an installed vikhr has (pretrain_vikhr.py is in the checkout only)
        (
            "parallel.tensor=2",
            "does not divide the world size 1 (the processes of the job): start a multiple of 2 with "
            "torchrun --nproc_per_node=N -m vikhr pretrain,",
        ),
    ],
)
def test_bad_config_is_one_line_before_allocation(
    corpus: dict[str, str], tmp_path: Path, override: str, message: str
) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir)
    proc = _pretrain_cli("--config", str(config), override)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not run_dir.exists()  # nothing was started, so nothing was written


def test_a_gpu_run_without_a_cuda_toolkit_is_refused_before_its_setup(
    corpus: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU machine without nvcc: the run built its datasets and model (minutes for a 7B) and ended
    at its first loss, whose CUDA kernels the ops build could not compile. It is refused before
    anything is written, naming the setting and the ways out."""
    from torch.utils import cpp_extension

    from vikhr.errors import VikhrError
    from vikhr.ops import build
    from vikhr.train import trainer as trainer_module
    from vikhr.train.config import load_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.setattr(build, "pip_toolkit", lambda: None)
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, parallel={"tensor": 1, "device": "cuda"})
    said = (
        r"^config key parallel\.device = cuda: the run is on the GPU, whose csrc kernels \(the CE\+KL "
        r"loss\) are built on first use with a CUDA toolkit \(nvcc\), and none is found here: install one "
        r"and set CUDA_HOME, pip install 'cuda-toolkit\[nvcc,cccl\][^']*', or set parallel\.device=cpu$"
    )
    with pytest.raises(VikhrError, match=said):
        trainer_module.run(load_config(config))
    assert not run_dir.exists()


def test_a_gpu_run_with_cuda_architectures_torch_cannot_compile_for_is_refused_before_its_setup(
    corpus: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A TORCH_CUDA_ARCH_LIST that torch does not know ("9.5"): the run built its datasets and model
    and ended at its first loss in torch's ValueError, a traceback. `vikhr pretrain` refuses it in one
    line, exit 2, before anything is written."""
    from vikhr import cli
    from vikhr.ops import build

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "cuda_toolkit_found", lambda: True)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.5")
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, parallel={"tensor": 1, "device": "cuda"})
    assert cli.main(["pretrain", "--config", str(config)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "vikhr pretrain: error: config key parallel.device = cuda: TORCH_CUDA_ARCH_LIST='9.5' "
    )
    assert line.endswith('(e.g. "9.0" for H100/H200, "8.0" for A100) and retry')
    assert not run_dir.exists()


def test_a_cpu_run_with_the_distributed_optimizer_shows_no_torch_warning(
    corpus: dict[str, str], tmp_path: Path
) -> None:
    """megatron's distributed optimizer asks for the `.grad` of its fp32 shards (views); torch's
    warning about it, attributed to the CPU layer its calls pass through, escaped the filter of
    megatron's own warnings: a UserWarning and its source line on every rank's stderr."""
    config = write_config(
        tmp_path / "c.yaml", corpus, tmp_path / "run", train={"steps": 1}, optim={"distributed": True}
    )
    proc = _pretrain_cli("--config", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "UserWarning" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.attention=te", "data.isolate_documents=true"], "needs model.attention sdpa or auto"),
        (["model.attention=local", "data.kind=sft"], "got 'local' with a sliding window"),
    ],
)
def test_document_isolation_needs_an_attention_that_takes_a_mask(overrides: list[str], message: str) -> None:
    from vikhr.errors import VikhrError
    from vikhr.train.config import load_config

    base = ["data.train=[{prefix: x}]", "data.seq_len=128", "model.overrides.sliding_window=64"]
    with pytest.raises(VikhrError, match=r"data\.isolate_documents") as err:
        load_config(None, [*base, *overrides], check_files=False)
    assert message in str(err.value)
    # Off by default for pre-training, on for SFT; sdpa takes the mask under a window too.
    assert not load_config(None, base, check_files=False).data.documents_isolated()
    assert load_config(None, [*base, "data.kind=sft"], check_files=False).data.documents_isolated()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["parallel.sequence=true"], "parallel.sequence needs parallel.tensor > 1"),
        (["parallel.sequence=true", "parallel.tensor=2", "data.seq_len=127"], "must be a multiple of"),
    ],
)
def test_sequence_parallel_layout_is_checked(overrides: list[str], message: str) -> None:
    from vikhr.errors import VikhrError
    from vikhr.train.config import load_config

    with pytest.raises(VikhrError) as err:
        load_config(None, ["data.train=[{prefix: x}]", "data.seq_len=128", *overrides], check_files=False)
    assert message in str(err.value)


def test_training_loss_writes_the_gradient_over_the_logits() -> None:
    """The trainer's loss leaves no second [tokens, vocab] buffer: after backward the logits'
    storage holds d(loss)/d(logits), the same gradient a separate buffer would have received."""
    from vikhr.ops import cross_entropy_kl
    from vikhr.train.config import KLSection
    from vikhr.train.trainer import CrossEntropyKL

    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(12, 8, generator=g, requires_grad=True)
    head = torch.randn(8, 40, generator=g)
    reference = torch.randn(12, 40, generator=g)
    labels = torch.randint(0, 37, (12,), generator=g)
    labels[3] = -100
    loss_fn = CrossEntropyKL(37, None, KLSection(weight=0.2))
    logits = hidden @ head
    loss_fn(logits, reference, labels).loss.backward()
    z = (hidden @ head).detach().requires_grad_()
    separate = cross_entropy_kl(z, reference, labels, kl_weight=0.2, valid_vocab_size=37)
    (expected,) = torch.autograd.grad(separate.loss, z)
    torch.testing.assert_close(logits.detach(), expected, rtol=0, atol=0)
    torch.testing.assert_close(hidden.grad, expected @ head.T)


def test_the_training_loss_reports_kl_only_when_it_computes_it() -> None:
    """At kl.weight 0 the op computes no KL (it reports 0): the logged terms leave kl out."""
    from vikhr.train.config import KLSection
    from vikhr.train.trainer import CrossEntropyKL

    g = torch.Generator().manual_seed(5)
    logits, reference = torch.randn(6, 40, generator=g), torch.randn(6, 40, generator=g)
    labels = torch.randint(0, 37, (6,), generator=g)
    without = CrossEntropyKL(37, None, KLSection(weight=0.0))(logits.clone(), None, labels)
    with_kl = CrossEntropyKL(37, None, KLSection(weight=0.2))(logits.clone(), reference, labels)
    assert sorted(without.metrics) == ["ce"] and sorted(with_kl.metrics) == ["ce", "kl"]
    assert float(with_kl.metrics["kl"]) > 0


def test_pretraining_documents_end_with_their_eod() -> None:
    from vikhr.model.attention import document_attention_mask, segments_from_eod

    tokens = torch.tensor([[5, 2, 7, 8, 2, 9], [2, 4, 4, 4, 4, 2]])
    segments = segments_from_eod(tokens, eod_id=2)
    assert segments.tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]]
    allowed = ~document_attention_mask(segments)[0, 0]
    assert allowed[4].tolist() == [False, False, True, True, True, False]  # EOD sees its own document
    assert allowed[5].tolist() == [False] * 5 + [True]
    windowed = ~document_attention_mask(segments, sliding_window=2)[1, 0]
    assert windowed[5].tolist() == [False] * 4 + [True, True]


def test_missing_dataset_is_named(corpus: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    missing = dict(corpus, en=str(tmp_path / "nope" / "en"))
    config = write_config(tmp_path / "c.yaml", missing, run_dir)
    proc = _pretrain_cli("--config", str(config))
    assert proc.returncode == 2
    expected = f"config key data.train[1].prefix: dataset file not found: {tmp_path}/nope/en.bin"
    assert proc.stderr.strip().splitlines() == [f"vikhr pretrain: error: {expected}"]
    assert not run_dir.exists()


def test_a_blend_of_datasets_that_differ_in_eod_or_bos_is_told_one_line_per_field(
    tmp_path: Path, capsys
) -> None:
    """A blend of datasets of one tokenizer, one written with --append-eod and one without (whose
    documents run together), one with BOS before each document and one without, trained without a
    word, at the start and in --dry-run. Each differing field is now one warning naming two datasets
    and what each has; documents that end with two EOD ids are refused in one line, met alike by
    every process (said once per node under torchrun). A dataset without a record is not compared."""
    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.data import preprocess, tokenization
    from vikhr.errors import VikhrError
    from vikhr.train.cli import main as pretrain_main
    from vikhr.train.config import doubtful_settings, load_config

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"Привет, мир номер {i}"}) + "\n" for i in range(40)))
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, append_eod=True)
    preprocess(
        [src], tmp_path / "en", MISTRAL_TOKENIZER, tokenizer_type="Llama2Tokenizer", legacy_tokenizer=True
    )
    ru, en = f"{tmp_path}/ru_text_document", f"{tmp_path}/en_text_document"
    model = {"overrides": {"vocab_size": 32000}}
    config = write_config(
        tmp_path / "c.yaml", {"ru": ru, "en": en}, tmp_path / "run", model=model, train={"steps": 4}
    )
    first, second = f"config key data.train[0] (ru, {ru})", f"config key data.train[1] (en, {en})"
    expected = [
        f"data.train: append_eod differs: {first} ends each document with EOD 2, but {second} has no EOD "
        "between documents (documents without EOD run together with no boundary in the packed windows; "
        "pre-tokenize with --append-eod unless that is meant)",
        f"data.train: convention differs: {first} holds megatron-core ids (no BOS), but {second} holds "
        "megatron-legacy ids (BOS before every document) (pre-tokenize both with, or both without, "
        "--legacy-tokenizer unless that is meant)",
    ]
    assert [d for d in doubtful_settings(load_config(config)) if d.startswith("data.train")] == expected
    assert pretrain_main(["--config", str(config), "--dry-run", "--gpus", "1"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if "data.train" in line] == [
        f"warning: {line}" for line in expected
    ]
    # The same tokenizer recorded with another EOS: data.eod_id splits the documents of one only.
    path = tokenization.record_path(en)
    path.write_text(json.dumps({**json.loads(path.read_text()), "append_eod": True, "eod_id": 1}))
    for dry_run in ([], ["--dry-run"]):
        with pytest.raises(VikhrError) as refused:
            pretrain_main(["--config", str(config), *dry_run])
        assert str(refused.value) == (
            f"eod_id differs: {first} ends documents with EOD id 2, but {second} ends documents with EOD "
            f"id 1: the documents of one run end with one EOD id, data.eod_id = 2 (pre-tokenize both with "
            "one tokenizer file, whose EOS that is)"
        )
        assert refused.value.alike_on_every_process
    # A dataset without a record (an older one, Megatron-LM's) is not compared, as before.
    path.unlink()
    assert [d for d in doubtful_settings(load_config(config)) if d.startswith("data.train")] == []


def test_data_eod_id_is_the_one_the_datasets_record(tmp_path: Path, capsys) -> None:
    """data.eod_id (default 2, Mistral's </s>) was never compared with the EOD id the datasets'
    records name: a config of another tokenizer's run (or none set) split windows at an id the
    documents do not end with, silently unless data.isolate_documents was on. A config that sets
    another id is now refused in one line naming the dataset, both ids with their pieces and the fix,
    in the run and in --dry-run, met alike by every process; one that sets none takes the records'
    id, said in one note."""
    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.data import preprocess, tokenization
    from vikhr.errors import VikhrError
    from vikhr.train.cli import main as pretrain_main
    from vikhr.train.config import load_config, validate

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"Привет, мир номер {i}"}) + "\n" for i in range(40)))
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, append_eod=True)
    ru = f"{tmp_path}/ru_text_document"
    model = {"overrides": {"vocab_size": 32000}}
    datasets = {"ru": ru, "en": ru}
    config = write_config(tmp_path / "c.yaml", datasets, tmp_path / "run", model=model, data={"eod_id": 1})
    for dry_run in ([], ["--dry-run"]):
        with pytest.raises(VikhrError) as refused:
            pretrain_main(["--config", str(config), *dry_run])
        assert str(refused.value) == (
            f"data.eod_id differs: the config sets 1 ('<s>'), but config key data.train[0] (ru, {ru}) ends "
            "its documents with EOD id 2 ('</s>'), as its tokenization record says: set data.eod_id=2, or "
            "leave it out to take the datasets' id"
        )
        assert refused.value.alike_on_every_process
    # The config sets none: the records' id, said once; the default where it is that one.
    unset = yaml.safe_load(config.read_text())
    del unset["data"]["eod_id"]
    config.write_text(yaml.safe_dump(unset))
    cfg = load_config(config)
    assert (cfg.data.eod_id, cfg.notes()) == (2, [])
    path = tokenization.record_path(ru)
    path.write_text(json.dumps({**json.loads(path.read_text()), "eod_id": 1}))
    cfg = load_config(config)
    note = (
        f"data.eod_id = 1 (the config sets none): the EOD id the documents of config key data.train[0] "
        f"(ru, {ru}) end with, as its tokenization record says"
    )
    assert (cfg.data.eod_id, cfg.notes()) == (1, [note])
    validate(cfg)  # the run validates the loaded config again: nothing to say twice
    assert cfg.notes() == [note]
    capsys.readouterr()
    assert pretrain_main(["--config", str(config), "--dry-run", "--gpus", "1"]) == 0
    assert f"note: {note}" in capsys.readouterr().err.splitlines()


def test_an_eod_id_taken_from_the_records_outside_the_vocabulary_names_the_record(tmp_path: Path) -> None:
    """An EOD id the datasets' records name (the config setting none) that the model's vocabulary lacks
    was refused as "config key data.eod_id = N is outside the vocabulary": the config sets no such key.
    The refusal now names the dataset whose record gave the id, its tokenizer, and the fix; an id the
    config sets is still said as the config's."""
    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.data import preprocess, tokenization
    from vikhr.errors import VikhrError
    from vikhr.train.cli import main as pretrain_main

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"Привет, мир номер {i}"}) + "\n" for i in range(40)))
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, append_eod=True)
    ru = f"{tmp_path}/ru_text_document"
    path = tokenization.record_path(ru)
    path.write_text(json.dumps({**json.loads(path.read_text()), "eod_id": 32000}))  # one past the model's
    record = tokenization.read_record(ru)
    model = {"overrides": {"vocab_size": 32000}}
    config = write_config(tmp_path / "c.yaml", {"ru": ru, "en": ru}, tmp_path / "run", model=model)
    unset = yaml.safe_load(config.read_text())
    unset["data"].pop("eod_id", None)
    config.write_text(yaml.safe_dump(unset))
    with pytest.raises(VikhrError) as refused:
        pretrain_main(["--config", str(config), "--dry-run"])
    assert str(refused.value) == (
        f"data.eod_id = 32000 (the config sets none), the EOD id the documents of config key data.train[0] "
        f"(ru, {ru}) end with as its tokenization record says, is outside the model's vocabulary "
        f"[0, 32000): that dataset was pre-tokenized with {record.tokenizer_line()} (32000 ids), not the "
        "model's tokenizer: pre-tokenize it again with the model's tokenizer"
    )
    path.unlink()  # no record: an id the config sets is the config's
    unset["data"]["eod_id"] = 32000
    config.write_text(yaml.safe_dump(unset))
    with pytest.raises(VikhrError, match=r"^config key data.eod_id = 32000 is outside the vocabulary"):
        pretrain_main(["--config", str(config), "--dry-run"])


def test_a_blend_of_datasets_of_two_tokenizers_is_refused_in_one_line(tmp_path: Path) -> None:
    """Two datasets pre-tokenized with two tokenizers of one vocabulary size (the new tokenizer and
    the old, both uint16) trained silently on ids that mean different pieces. Their records now refuse
    the blend before any work; a dataset without a record (an older one, Megatron-LM's) is accepted."""
    from tests.helpers import sentencepiece_with_other_ids
    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.data import preprocess
    from vikhr.data.indexed import write_indexed
    from vikhr.train.config import load_config

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"Привет, мир номер {i}"}) + "\n" for i in range(40)))
    other = sentencepiece_with_other_ids(tmp_path / "old" / "tokenizer.model")
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, append_eod=True)
    preprocess([src], tmp_path / "en", other, append_eod=True)
    ru, en = f"{tmp_path}/ru_text_document", f"{tmp_path}/en_text_document"
    run_dir = tmp_path / "run"
    # A model of the tokenizers' vocabulary: every id fits it, so nothing else stops the run.
    model = {"overrides": {"vocab_size": 32000}}
    config = write_config(tmp_path / "c.yaml", {"ru": ru, "en": en}, run_dir, model=model, train={"steps": 1})
    proc = _pretrain_cli("--config", str(config))
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert f"config key data.train[0] (ru, {ru}) was tokenized with {MISTRAL_TOKENIZER} (sha256 " in line
    assert f"but config key data.train[1] (en, {en}) with {other} (sha256 " in line
    assert line.endswith("(pre-tokenize both with one tokenizer)")
    assert not run_dir.exists()
    # Written with the .model's own tokenizer.json (another file, the same pieces): one tokenizer.
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    exported, _ = write_hf_tokenizer(MISTRAL_TOKENIZER, tmp_path / "mistral-hf")
    preprocess([src], tmp_path / "en", exported, tokenizer_type="HuggingFaceTokenizer", append_eod=True)
    load_config(config)
    # The en dataset written again by a tool that records nothing: the blend is accepted as before.
    preprocess([src], tmp_path / "en", other, append_eod=True)
    write_indexed(en, [[5, 6, 2]] * 4, "uint16")
    load_config(config)


def test_data_of_another_tokenizer_than_model_inits_is_refused(tmp_path: Path) -> None:
    """Data pre-tokenized with the old tokenizer fits an adapted model's larger vocabulary: a run from
    it trained on ids that mean other pieces, silently. The tokenizer model.init was converted with
    (its lineage's) is now compared with the one each dataset records, before any work."""
    from tests.helpers import sentencepiece_with_other_ids, tiny_hf_model
    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.convert import hf_to_megatron
    from vikhr.convert.hf_tokenizer import recorded_in_lineage
    from vikhr.data import preprocess
    from vikhr.errors import VikhrError
    from vikhr.train.config import load_config
    from vikhr.train.trainer import _check_data_tokenizer

    hf = tmp_path / "hf"
    tiny_hf_model(hf, vocab_size=32000)
    shutil.copyfile(MISTRAL_TOKENIZER, hf / "tokenizer.model")
    init = hf_to_megatron(hf, tmp_path / "init")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"Привет, мир номер {i}"}) + "\n" for i in range(20)))
    other = sentencepiece_with_other_ids(tmp_path / "old" / "tokenizer.model")
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, append_eod=True)
    preprocess([src], tmp_path / "en", other, append_eod=True)

    def cfg(prefix: str) -> Any:
        blend = f"data.train=[{{prefix: {tmp_path}/{prefix}_text_document}}]"
        return load_config(None, [blend, f"model.init={init}", "data.seq_len=64"], check_files=False)

    recorded = recorded_in_lineage(init).tokenizer  # the tokenizer model.init was converted with
    copy = init / "tokenizer" / "tokenizer.model"  # as the checkpoint holds it
    start = (f"model.init ({init})", "model.init's")
    _check_data_tokenizer(cfg("ru"), recorded, *start)
    with pytest.raises(VikhrError) as e:
        _check_data_tokenizer(cfg("en"), recorded, *start)
    assert str(e.value) == (
        f"config key data.train[0] (en_text_document) was tokenized with {other}, but model.init ({init}) "
        f"was trained with {copy} (recorded in {init}/meta.json; id 1000 is 'ла' in "
        f"model.init's but '▁co' in the data's): pre-tokenize the data with {copy}"
    )
    # The same through the trainer's command: one line, before anything is written.
    en = f"{tmp_path}/en_text_document"
    model = {"init": str(init), "overrides": {"vocab_size": 32000}}
    config = write_config(tmp_path / "c.yaml", {"ru": en, "en": en}, tmp_path / "run", model=model)
    proc = _pretrain_cli("--config", str(config))
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    [line] = proc.stderr.strip().splitlines()
    assert line.endswith(f"in the data's): pre-tokenize the data with {copy}")


def test_a_resume_on_chats_of_another_own_template_names_both_texts() -> None:
    """Chats prepared again with the tokenizer's own template, its text changed since, were named
    alike on both sides ("trained on chats of chat template own: ... now records own"): the warning
    now gives each text's sha256, as the export's does. The same template is no warning."""
    from vikhr.convert.hf_tokenizer import RecordedTokenizer
    from vikhr.train.trainer import _template_changed

    trained = RecordedTokenizer(Path("/tok/tokenizer.json"), "/run/step_000020/meta.json", "own", "a" * 64)
    now = RecordedTokenizer(Path("/tok/tokenizer.json"), "/data/rulm_sft.json", "own", "b" * 64)
    step = Path("/run/step_000020")
    assert _template_changed(step, trained, trained) == []
    assert _template_changed(step, trained, now) == [
        f"resuming from {step}, trained on chats of chat template own (sha256 {'a' * 12}…): "
        f"/data/rulm_sft.json now records own (sha256 {'b' * 12}…), so the model learns both from here, "
        f"and the export of the steps to come carries own (sha256 {'b' * 12}…)"
    ]


def test_a_resume_of_chats_on_plain_text_says_so_in_words() -> None:
    """A checkpoint trained on chats resumed by a pre-training run (data.kind changed; its datasets'
    tokenization record names no template) was warned of as "... now records None, so the model
    learns both ... carries None": the warning says the data is plain text, and what the export keeps."""
    from vikhr.convert.hf_tokenizer import RecordedTokenizer
    from vikhr.train.trainer import _template_changed

    trained = RecordedTokenizer(Path("/tok/tokenizer.model"), "/run/step_000020/meta.json", "mistral")
    now = RecordedTokenizer(Path("/tok/tokenizer.model"), "/data/ru_text_document.tokenization.json")
    step = Path("/run/step_000020")
    [line] = _template_changed(step, trained, now)
    assert line == (
        f"resuming from {step}, trained on chats of chat template mistral: "
        "/data/ru_text_document.tokenization.json records plain text, of no chat template, so the export of "
        "the steps to come carries none but a chat template kept with the tokenizer, where it has one"
    )
    assert _template_changed(step, now, trained) == []  # pre-training resumed on chats: nothing changes back


@pytest.mark.parametrize(
    ("overrides", "on_gpu", "with_te", "said"),
    [
        ([], False, True, "attention=sdpa (auto)"),
        ([], True, True, "attention=te (auto)"),
        ([], True, False, "attention=sdpa (auto)"),
        (["data.isolate_documents=true"], True, True, "attention=sdpa (auto)"),
        (["model.attention=sdpa"], True, True, "attention=sdpa,"),
    ],
)
def test_the_run_s_description_names_the_attention_its_model_is_built_with(
    overrides: list[str], on_gpu: bool, with_te: bool, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's first line said "attention=auto", the config's word, not the backend it resolves to
    on this device (TE on a GPU with Transformer Engine, else SDPA; SDPA for isolated documents)."""
    from types import SimpleNamespace

    from vikhr.model import gpt
    from vikhr.train.config import load_config
    from vikhr.train.trainer import Trainer

    monkeypatch.setattr(gpt, "have_transformer_engine", lambda: with_te)
    data = ["data.seq_len=128", "data.train=[{prefix: /data/ru, weight: 1}]"]
    cfg = load_config(None, ["model.preset=tiny", *data, *overrides], check_files=False)
    env = SimpleNamespace(tp_size=1, dp_size=1, backend="nccl" if on_gpu else "gloo", on_gpu=on_gpu)
    trainer = SimpleNamespace(cfg=cfg, env=env, num_params=10**6, model_described=cfg.model.described())
    line = Trainer.describe(trainer)
    assert said in line


def test_a_dataset_too_small_for_a_held_out_part_trains_without_validating_it(tmp_path: Path) -> None:
    """20 documents under data.split 98,2,0: the held-out part gets none (megatron-core looped
    forever building an index over it), so the run trains without a validation set for that
    dataset and says so; a split whose train part gets no document is one line before anything is built."""
    from tests.helpers import EOD
    from vikhr.data.indexed import write_indexed

    prefix = tmp_path / "small_text_document"
    write_indexed(prefix, [[(7 * i + j) % 500 + 3 for j in range(18)] + [EOD] for i in range(20)], "uint16")
    small = {"train": [{"prefix": str(prefix), "name": "small"}], "split": "98,2,0"}
    run_dir = tmp_path / "run"
    both = {"ru": str(prefix), "en": str(prefix)}  # replaced by data.train below
    config = write_config(tmp_path / "c.yaml", both, run_dir, data=small, train={"steps": 2})
    proc = subprocess.run(
        [sys.executable, "-m", "vikhr", "pretrain", "--config", str(config)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    train, valid = read_metrics(run_dir)
    assert sorted(train) == [1, 2] and all(math.isfinite(r["loss"]) for r in train.values())
    assert all("loss_small" not in row for row in valid.values())
    assert "no validation loss for small: the held-out part of data.split '98,2,0' gets none" in proc.stderr

    proc = _pretrain_cli("--config", str(config), "data.split=2,98,0", f"checkpoint.dir={tmp_path / 'run2'}")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "config key data.train[0] (small): the train part of data.split '2,98,0' holds no token" in line
    assert "(0 of the dataset's 20 documents)" in line
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.init=HF", "config key model.init: HF is a Hugging Face model directory, not a vikhr"),
        ("kl.reference=EMPTY", "config key kl.reference: no checkpoint in EMPTY"),
        ("checkpoint.resume=EMPTY", "config key checkpoint.resume: no checkpoint in EMPTY"),
        ("data.cache_dir=FILE", "data.cache_dir FILE is a file, not a directory"),
    ],
)
def test_a_start_that_names_no_checkpoint_or_an_unusable_cache_is_one_line(
    corpus: dict[str, str], tmp_path: Path, override: str, message: str
) -> None:
    """Starting weights, a KL reference or a resume step that is no vikhr checkpoint (an HF model
    directory: with the conversion to run; an empty directory: was a silent fresh start), or a data
    cache that cannot be written (was megatron's traceback), stop the start before anything is built."""
    places = {"HF": tmp_path / "hf", "EMPTY": tmp_path / "empty", "FILE": tmp_path / "file"}
    places["HF"].mkdir()
    (places["HF"] / "config.json").write_text("{}")
    places["EMPTY"].mkdir()
    places["FILE"].write_text("")
    for name, place in places.items():
        override, message = override.replace(name, str(place)), message.replace(name, str(place))
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir)
    proc = _pretrain_cli("--config", str(config), override)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert message in line
    assert not run_dir.exists()


def test_isolated_documents_must_end_with_the_eod_id(corpus: dict[str, str], tmp_path: Path) -> None:
    """data.isolate_documents splits pre-training windows at data.eod_id: a dataset whose documents
    end with another id (here: the config names 3, the corpus appends 2) is refused in one line."""
    from vikhr.train.config import load_config
    from vikhr.train.trainer import check_data

    isolated = {"isolate_documents": True}
    check_data(load_config(write_config(tmp_path / "ok.yaml", corpus, tmp_path / "ok", data=isolated)))
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, data={**isolated, "eod_id": 3})
    proc = _pretrain_cli("--config", str(config))
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("vikhr pretrain: error: config key data.train[0] (ru): data.isolate_documents")
    sampled = line.split("but ")[1].split(" documents sampled")[0].split(" of ")
    assert sampled[0] == sampled[1]  # every document ends with 2
    assert f"documents sampled from {corpus['ru']} end otherwise (most often with 2)" in line
    assert not run_dir.exists()


@pytest.mark.distributed
def test_bad_layout_under_torchrun_fails_on_every_rank_before_allocation(
    corpus: dict[str, str], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", corpus, run_dir, train={"global_batch": 6, "micro_batch": 2})
    proc = _launch(config, 2)  # DP=2 × micro-batch 2 does not divide 6
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pretrain_vikhr.py: error:")]
    # Each rank checks on its own; torchrun stops the other once one has exited, sometimes before it
    # has printed its line (on a loaded machine), so one or two lines.
    assert 1 <= len(errors) <= 2 and all("train.global_batch = 6" in e for e in errors), proc.stderr[-3000:]
    assert f'File "{PRETRAIN}"' not in proc.stderr  # no traceback from the trainer (torchrun adds its own)
    assert not run_dir.exists()


def test_nonfinite_loss_skips_the_update_then_aborts(corpus: dict[str, str], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        corpus,
        run_dir,
        train={"steps": 3},
        kl={"weight": 0.0},
        checkpoint={"dir": str(run_dir), "save_every": 1},
        logging={"eval_every": 100},
    )
    proc = _pretrain_cli("--config", str(config), "debug.nonfinite_at_steps=[2]")  # one process, no torchrun
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2: non-finite loss nan; skipping the update" in proc.stderr
    train, _ = read_metrics(run_dir)
    assert (
        math.isnan(train[2]["loss"]) and math.isfinite(train[1]["loss"]) and math.isfinite(train[3]["loss"])
    )
    weights = [load_file(run_dir / f"step_00000{s}" / "model_tp00.safetensors") for s in (1, 2, 3)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # step 2 changed nothing
    assert not all(torch.equal(weights[1][k], weights[2][k]) for k in weights[0])  # step 3 trained

    run_dir = tmp_path / "run2"
    config = write_config(tmp_path / "c2.yaml", corpus, run_dir, kl={"weight": 0.0})
    proc = _pretrain_cli("--config", str(config), "debug.nonfinite_at_steps=[1,2]", "logging.max_nonfinite=2")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("vikhr pretrain: error: 2 non-finite losses in a row (logging.max_nonfinite)")
    )


@pytest.fixture(scope="module")
def four_step_run(corpus: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run (one process) that validates and saves every 2 steps, with TensorBoard."""
    from vikhr.train.config import load_config
    from vikhr.train.trainer import run

    tmp = tmp_path_factory.mktemp("four_steps")
    config = write_config(
        tmp / "c.yaml",
        corpus,
        tmp / "run",
        train={"steps": 4},
        checkpoint={"dir": str(tmp / "run"), "save_every": 2},
        logging={"eval_every": 2, "tensorboard": True},
    )
    run(load_config(config))
    return tmp / "run"


def _run_again(finished: Path, run_dir: Path, *overrides: str) -> None:
    """`finished` copied to `run_dir`, then its job run there with `overrides`."""
    from vikhr.train.config import load_config
    from vikhr.train.trainer import run

    shutil.copytree(finished, run_dir)
    run(load_config(finished.parent / "c.yaml", [f"checkpoint.dir={run_dir}", *overrides]))


def test_a_finished_run_started_again_says_there_is_nothing_to_train(
    four_step_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same command again after the run ended printed that it resumed, then ended silently."""
    capsys.readouterr()
    _run_again(four_step_run, tmp_path / "run")
    said = capsys.readouterr().err
    assert "nothing to train: the run is at step 4 and train.steps = 4 (raise train.steps" in said
    assert read_metrics(tmp_path / "run") == read_metrics(four_step_run)


def _scalar_steps(tensorboard_dir: Path, tag: str) -> list[int]:
    """The steps of a TensorBoard scalar as TensorBoard shows them (a restart purges later steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    return [event.step for event in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def test_a_fresh_run_over_an_earlier_one_logs_only_itself(four_step_run: Path, tmp_path: Path) -> None:
    """checkpoint.resume=never in a used directory: the earlier run's metrics.jsonl, tensorboard/
    and curves.png move to previous/1, and the new run's history is its own alone."""
    run_dir = tmp_path / "run"
    _run_again(four_step_run, run_dir, "checkpoint.resume=never", "train.steps=2", "train.seed=99")
    train, valid = read_metrics(run_dir)
    earlier, earlier_valid = read_metrics(four_step_run)
    assert sorted(train) == [1, 2] and sorted(valid) == [0, 2]
    assert train[1]["loss"] != earlier[1]["loss"]  # another seed: the rows are the new run's
    assert read_metrics(run_dir / "previous" / "1") == (earlier, earlier_valid)
    assert (run_dir / "previous" / "1" / "curves.png").is_file() and (run_dir / "curves.png").is_file()
    assert _scalar_steps(run_dir / "tensorboard", "train/loss") == [1, 2]
    assert _scalar_steps(run_dir / "previous" / "1" / "tensorboard", "train/loss") == [1, 2, 3, 4]


def test_a_resume_from_an_earlier_step_drops_the_steps_after_it(four_step_run: Path, tmp_path: Path) -> None:
    """A run resumed at step 2 of a 4-step history and ended at step 3: the abandoned steps 4 (train
    and validation) leave metrics.jsonl; steps 1-2 stay as they ran."""
    run_dir = tmp_path / "run"
    _run_again(four_step_run, run_dir, f"checkpoint.resume={run_dir / 'step_000002'}", "train.steps=3")
    train, valid = read_metrics(run_dir)
    earlier, earlier_valid = read_metrics(four_step_run)
    assert sorted(train) == [1, 2, 3] and sorted(valid) == [0, 2, 3]
    assert [train[s] for s in (1, 2)] == [earlier[s] for s in (1, 2)] and valid[2] == earlier_valid[2]
    rows = [row for _, row in read_jsonl(run_dir / "metrics.jsonl", allow_nan=True)]
    assert len(rows) == len(train) + len(valid)  # one row per step and kind: nothing left to shadow


def test_tensorboard_shows_a_replayed_step_once(four_step_run: Path, tmp_path: Path) -> None:
    """A run resumed at step 2 replays steps 3-4 of the earlier attempt: TensorBoard shows each once."""
    run_dir = tmp_path / "run"
    _run_again(four_step_run, run_dir, f"checkpoint.resume={run_dir / 'step_000002'}")
    assert _scalar_steps(run_dir / "tensorboard", "train/loss") == [1, 2, 3, 4]
    assert _scalar_steps(run_dir / "tensorboard", "valid/loss_ru") == [0, 2, 4]


def test_a_run_ended_by_nonfinite_losses_logs_that_step_and_draws_its_curves(
    corpus: dict[str, str], tmp_path: Path
) -> None:
    """The step that reaches logging.max_nonfinite is in metrics.jsonl, and curves.png is drawn."""
    from vikhr.errors import VikhrError
    from vikhr.train.config import load_config
    from vikhr.train.trainer import run

    run_dir = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        corpus,
        run_dir,
        train={"steps": 3},
        kl={"weight": 0.0},
        logging={"eval_every": 100, "max_nonfinite": 2},
    )
    with pytest.raises(VikhrError, match="2 non-finite losses in a row"):
        run(load_config(config, ["debug.nonfinite_at_steps=[2,3]"]))
    train, _ = read_metrics(run_dir)
    assert sorted(train) == [1, 2, 3] and math.isnan(train[3]["loss"])
    assert (run_dir / "curves.png").is_file()


def test_dry_run_mistral_7b_on_8_gpus() -> None:
    def table(*overrides: str) -> tuple[str, dict[int, str]]:
        config = str(REPO / "configs" / "mistral-7b-v0.2.yaml")
        proc = _pretrain_cli("--config", config, "--dry-run", "--gpus", "8", *overrides)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, {int(line.split()[0]): line for line in proc.stdout.splitlines()[2:]}

    _, rows = table("optim.distributed=false")
    assert sorted(rows) == [1, 2, 4, 8]
    assert rows[1].endswith("no") and rows[2].endswith("no") and rows[8].endswith("yes")
    # The distributed optimizer (the config's default) shards 12 B/param over DP: TP=2 (DP=4) fits.
    text, sharded = table()
    assert "distributed optimizer" in text and sharded[2].endswith("yes")
    # The TP=1 row is without sequence parallelism, which needs TP > 1: the header said it was on.
    assert "sequence parallel at TP > 1, " in text.splitlines()[0]
    optim = {tp: float(rows[tp].split()[5].rstrip("Gi")) for tp in rows}
    assert float(sharded[2].split()[5].rstrip("Gi")) == pytest.approx(optim[2] / 4, abs=0.1)


def test_dry_run_counts_a_cards_memory_in_gib() -> None:
    """--gpu-memory-gb 80 allowed 0.9 × 80e9 bytes (67 GiB) of an 80 GB card's 80 GiB: a layout
    needing 48.1 GiB was "no" on 55 GB cards (46.1 GiB allowed); 0.9 × 55 GiB = 49.5 GiB fit it."""
    config = str(REPO / "configs" / "mistral-7b-v0.2.yaml")
    proc = _pretrain_cli("--config", config, "--dry-run", "--gpus", "8", "--gpu-memory-gb", "55")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].endswith("8 GPUs of 55 GiB")
    rows = {int(line.split()[0]): line for line in proc.stdout.splitlines()[2:]}
    assert rows[2].split()[-2:] == ["48.1Gi", "yes"] and rows[1].endswith("no")


def test_dry_run_marks_layouts_the_trainer_would_refuse() -> None:
    """A global batch of 8 over 16 GPUs at micro-batch 4: every layout but TP 8 (DP 2) was marked
    "fits: yes", and the trainer refused them."""
    config = str(REPO / "configs" / "mistral-7b-v0.2.yaml")
    proc = _pretrain_cli("--config", config, "--dry-run", "--gpus", "16", "train.global_batch=8")
    assert proc.returncode == 0, proc.stderr
    rows = {int(line.split()[0]): line for line in proc.stdout.splitlines()[2:]}
    for tp in (1, 2, 4):
        assert rows[tp].endswith(
            f"not possible: train.global_batch = 8 is not divisible by micro_batch × data-parallel size "
            f"= 4 × {16 // tp}"
        ), rows[tp]
    assert rows[8].split()[:2] == ["8", "2"] and rows[8].endswith(("yes", "no"))


def test_overrides_may_follow_options() -> None:
    """`--dry-run --gpus 8 data.seq_len=2048`: an override after an option is an override (argparse
    left it over as an unrecognized argument), in vikhr pretrain and pretrain_vikhr.py alike."""
    config = str(REPO / "configs" / "mistral-7b-v0.2.yaml")
    args = ["--config", config, "data.seq_len=512", "--dry-run", "--gpus", "8", "data.seq_len=2048"]
    command = [sys.executable, str(PRETRAIN), *args]
    script = subprocess.run(command, capture_output=True, text=True, env=child_env())
    for proc in (_pretrain_cli(*args), script):
        assert proc.returncode == 0, proc.stderr
        assert "micro-batch 4 × 2048 tokens" in proc.stdout.splitlines()[0]  # the later override wins


# --------------------------------------------------------------------------- script mode


def _kl_check(config_path: str, step_dir: str, out: str) -> None:
    """Write {"ce_step1", "ce", "kl"}: CE of the initial weights on step 1's batch, and CE/KL of the
    checkpoint `step_dir` against the initial weights on the batch after the samples it consumed
    (float64), with the config's global batch."""
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.checkpoint import read_meta
    from vikhr.train.config import load_config
    from vikhr.train.trainer import build_datasets, train_samples

    cfg = load_config(config_path)
    mcfg = cfg.model.shape()
    meta = read_meta(Path(step_dir))
    with distributed_env(tp_size=1, seed=cfg.train.seed, device="cpu"):
        # The trainer's order: data first, then the model (the same seeded initialisation).
        data = build_datasets(cfg, train_samples(cfg, meta["step"], meta["consumed_samples"]))
        result = _ce_and_kl(cfg, mcfg, data, Path(step_dir), meta["consumed_samples"])
    Path(out).write_text(json.dumps(result))


def _ce_and_kl(cfg, mcfg, data, step_dir: Path, consumed: int) -> dict[str, float]:

    from vikhr.model import build_gpt_model
    from vikhr.ops.reference import cross_entropy_kl_reference
    from vikhr.train import checkpoint
    from vikhr.train.data import step_micro_batches

    def model() -> torch.nn.Module:
        return build_gpt_model(
            mcfg, 1, vocab_multiple=cfg.model.vocab_multiple, attention=cfg.model.attention
        ).eval()

    initial = model()
    trained = model()
    checkpoint.load_model(trained, step_dir, 0, 1)

    def batch(at: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts = step_micro_batches(data.train, at, cfg.train.global_batch, cfg.train.micro_batch, 0, 1)
        return torch.cat([p.tokens for p in parts]), torch.cat([p.labels for p in parts])

    def logits(m: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        b, s = tokens.shape
        with torch.no_grad():
            z = m(tokens, torch.arange(s).expand(b, s), attention_mask=None)
        return z.reshape(b * s, -1)

    tokens, labels = batch(0)
    first = cross_entropy_kl_reference(
        logits(initial, tokens), None, labels.reshape(-1), valid_vocab_size=VOCAB
    )
    tokens, labels = batch(consumed)
    out_ = cross_entropy_kl_reference(
        logits(trained, tokens),
        logits(initial, tokens),
        labels.reshape(-1),
        kl_weight=cfg.kl.weight,
        kl_direction=cfg.kl.direction,
        temperature=cfg.kl.temperature,
        valid_vocab_size=VOCAB,
    )
    return {"ce_step1": float(first.ce), "ce": float(out_.ce), "kl": float(out_.kl)}


if __name__ == "__main__":
    if sys.argv[1] == "kl-check":
        _kl_check(sys.argv[2], sys.argv[3], sys.argv[4])


def test_model_flops_count_matmuls_attention_and_the_reference_forward() -> None:
    """MFU's numerator by hand: 6·N + 6·L·w·s per token, and 8·N + 8·L·w·s with the KL reference's
    forward pass, w the attention width heads·head_dim (Qwen3-0.6B: 16·128 = 2048 for a hidden size
    of 1024; the hidden size was used); the peak by device name, NVL and PCIe cards before SXM ones."""
    import dataclasses

    from vikhr.model.config import preset
    from vikhr.train.monitor import peak_flops, train_flops_per_token

    cfg = dataclasses.replace(preset("tiny"), hidden_size=64, num_attention_heads=4, kv_channels=32)
    n, layers, width, seq = 1_000_000, cfg.num_layers, 4 * 32, 128
    assert train_flops_per_token(cfg, n, seq, reference=False) == 6 * n + 6 * layers * width * seq
    assert train_flops_per_token(cfg, n, seq, reference=True) == pytest.approx(
        8 * n + 8 * layers * width * seq
    )
    assert peak_flops("NVIDIA H200") == peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12 and peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H200 NVL") == 835e12  # was the SXM H200's 989e12: MFU read 15 % low
    assert peak_flops("NVIDIA A10G") is None and peak_flops("NVIDIA A10") == 125e12
    assert peak_flops("Some Other GPU") is None


def test_start_up_checks_read_each_dataset_index_once_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start-up checks (the config's, repeated by the trainer; the blend's tokenizers; the data
    check) each read every dataset's `.idx` in full, on every rank: ~2 GB a time for a corpus of
    100M documents. Now once per process; the `.bin` scan reads it once more, on the first run only."""
    from vikhr import _core
    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.data import indexed, preprocess
    from vikhr.train.config import load_config, validate
    from vikhr.train.trainer import check_data

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"Привет, мир номер {i}"}) + "\n" for i in range(40)))
    corpus = {}
    for name in ("ru", "en"):
        preprocess([src], tmp_path / name, MISTRAL_TOKENIZER, append_eod=True)
        corpus[name] = f"{tmp_path}/{name}_text_document"
        for suffix in (".bin", ".idx"):  # written a while ago: files of the last seconds are read anew
            os.utime(corpus[name] + suffix, ns=(1_000_000_000, 1_000_000_000))
    model = {"overrides": {"vocab_size": 32000}}
    config = write_config(tmp_path / "c.yaml", corpus, tmp_path / "run", model=model)
    reads = {"inspect": 0, "reader": 0}
    inspect_index, reader_class = _core.inspect_index, _core.IndexedDatasetReader

    def counted_inspect(prefix: str) -> dict:
        reads["inspect"] += 1
        return inspect_index(prefix)

    def counted_reader(prefix: str) -> Any:
        reads["reader"] += 1
        return reader_class(prefix)

    monkeypatch.setattr(_core, "inspect_index", counted_inspect)
    monkeypatch.setattr(_core, "IndexedDatasetReader", counted_reader)
    for run in ("first", "restart"):
        monkeypatch.setattr(indexed, "_INSPECTED", {}, raising=False)  # a new process
        reads.update(inspect=0, reader=0)
        cfg = load_config(config)  # what pretrain_vikhr.py does before the run
        validate(cfg, world_size=1)
        check_data(cfg)
        scans = 2 if run == "first" else 0  # the largest token id, recorded in the data cache after
        assert reads == {"inspect": 2, "reader": scans}, run
