"""tools/device_check.sh in its dry-run mode: every step of the GPU check runs on the CPU at tiny
sizes (the GPU tests collected but skipped) and reports, so a broken step shows up before a GPU
machine is used."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA
from tests.helpers import load_tool

# The order of the summary: eval-bench runs alongside the build (it does not need it) and is
# recorded after it; the optional profile, then the activation benchmark (no build needed) come last.
STEPS = [
    "env",
    "build",
    "eval-bench",
    "op-tests",
    "kernel-sweep",
    "kernel-bench",
    "train-tests",
    "train-bench",
    "kernel-ncu",
    "swiglu-bench",
]


def _environment(out: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    # The wheels for a GPU machine (Python 3.12) that tools/device_wheels.sh may have left in .whl/
    # need not suit this interpreter: the dry run uses this environment's packages.
    no_wheels = out.parent / "no-wheels"
    no_wheels.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "OMP_NUM_THREADS": "1", "DEVICE_CHECK_WHEELS": str(no_wheels), **(env or {})}


# Above the dry run's own budget (540 s × 3): a run that slow still reports, and its report says why.
DRY_RUN_TIMEOUT_S = 1800


def _dry_run(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "tools" / "device_check.sh"), *args, str(out)],
        capture_output=True,
        text=True,
        timeout=DRY_RUN_TIMEOUT_S,
        env=_environment(out, env),
        cwd=REPO,
    )


@pytest.mark.slow
def test_dry_run_runs_and_reports_every_step(tmp_path: Path) -> None:
    # Part of the evaluation data, as a GPU run may carry it: the tasks of what came are added.
    eval_data = tmp_path / "eval-data"
    eval_data.mkdir()
    carried = SHARED_DATA / "eval" / "terra"
    if carried.is_dir():
        (eval_data / "terra").symlink_to(carried)
    out = tmp_path / "out"
    proc = _dry_run(out, "--dry-run", env={"DEVICE_CHECK_EVAL_DATA": str(eval_data)})
    summary = json.loads((out / "summary.json").read_text())
    report = f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}\n{json.dumps(summary, indent=1)}"
    assert proc.returncode == 0, report
    assert summary["dry_run"] is True and summary["finished"] is True, report
    assert [s["step"] for s in summary["steps"]] == STEPS, report
    for s in summary["steps"]:
        assert s["status"] == "passed", report
        assert (out / s["log"]).stat().st_size > 0, s
    # `vikhr doctor` imported every module before any step ran.
    assert "vikhr modules" in (out / "env.log").read_text() and "import" in (out / "env.log").read_text()
    # The GPU tests were collected (and skipped here), not absent.
    for name in ("op-tests", "train-tests"):
        assert "skipped" in (out / f"{name}.log").read_text(), name
    rows = json.loads((out / "kernel-bench.json").read_text())
    measured = [r for r in rows if "median_ms" in r]
    assert {r["impl"] for r in measured} >= {"vikhr fused", "vikhr fused/buf", "eager"}
    assert all("failed" not in r for r in rows)
    swept = json.loads((out / "kernel-sweep.json").read_text())
    assert [r["schedule"] for r in swept][:3] == ["row", "persistent", "persistent:1"]
    assert all(r["kernel_ms"] > 0 and r["bitwise_equal"] is True for r in swept)
    # The CPU kernel ignores the schedules: the rows say they timed it, not the schedules.
    assert all(r["schedule_applied"] is False for r in swept)
    assert "the schedules are CUDA-only" in (out / "kernel-sweep.log").read_text()
    assert "lm-eval task machinery: imports" in (out / "env.log").read_text()
    profiled = (out / "kernel-ncu.log").read_text()
    assert "no schedule is profiled" in profiled and "schedule row" not in profiled, profiled
    for name in ("row", "persistent", "smem"):
        for packs in ("1 pack", "2 packs"):
            assert f"profiled: CPU kernel, settings passed, ignored: {name}, {packs}," in profiled, profiled
    assert "tokens/s" in (out / "train-bench.log").read_text()
    assert "vikhr swiglu" in (out / "swiglu-bench.log").read_text()
    evaluated = json.loads((out / "eval-bench.json").read_text())
    fixtures = {"mmlu_ru", "rsg_terra", "rsg_muserc", "mera_chegeka", "bpc"}
    assert set(evaluated["tasks"]) == fixtures | ({"terra"} if carried.is_dir() else set())
    assert all(r["tokens_per_s"] > 0 for per_batch in evaluated["rates"].values() for r in per_batch.values())
    # Written after each batch size (a run cut short keeps what it measured), finished at the end; each
    # task's estimate is its fastest batch size's seconds per document times its full document count
    # plus that batch size's batch-size search (none on a CPU).
    assert evaluated["finished"] is True and set(evaluated["rates"]) == {"1", "2"}
    for task, row in evaluated["tasks"].items():
        per_batch = [r[task] for r in evaluated["rates"].values()]
        assert all(r["probe_seconds"] == 0 for r in per_batch)
        fastest = min(r["s_per_doc"] * row["full_documents"] + r["probe_seconds"] for r in per_batch)
        assert row["estimate_s"] == pytest.approx(fastest)
    assert evaluated["suite_estimate_s"] == pytest.approx(
        sum(r["estimate_s"] for r in evaluated["tasks"].values())
    )
    log = (out / "eval-bench.log").read_text()
    assert "batch 1: s/doc" in log and "batch 2: s/doc" in log
    # It ran beside the build, and timed nothing before the build had ended (its log's last write).
    assert evaluated["timed_after"] and evaluated["timing_started_unix"] > (out / "build.log").stat().st_mtime
    assert not (out / "cache").exists()  # the build cache stays out of OUT_DIR


@pytest.mark.slow
def test_the_eval_benchmark_times_nothing_before_the_build_has_ended(tmp_path: Path) -> None:
    """The eval-bench step timed `vikhr eval` while the ops build kept the CPUs busy beside it: its
    rates were the build's as much as the model's. It now makes its model and runs its warm-up
    meanwhile, times nothing before the file the script creates at the build's end exists, and its
    report says when timing began."""
    marker, report = tmp_path / "build-ended", tmp_path / "eval.json"
    cmd = [sys.executable, str(REPO / "tools" / "bench_eval.py"), "--random", "tiny", "--device", "cpu"]
    cmd += ["--tasks", "bpc", "--limit", "1", "--batch-sizes", "1", "2", "--repeats", "1"]
    cmd += ["--json", str(report), "--timed-after", str(marker)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stderr is not None
    seen = []
    while not seen or not seen[-1].startswith("warmed up; timing nothing before"):
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen) + (proc.stdout.read() if proc.stdout else "")
    time.sleep(1.0)
    assert proc.poll() is None and not report.exists()  # waiting: nothing timed, nothing written
    released = time.time()
    marker.touch()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, "".join(seen) + err
    written = json.loads(report.read_text())
    assert written["timed_after"] == str(marker) and written["timing_started_unix"] >= released
    assert written["waited_s"] >= 1.0 and written["finished"] is True and set(written["rates"]) == {"1", "2"}


def test_spent_budget_reports_steps_as_not_run(tmp_path: Path) -> None:
    proc = _dry_run(tmp_path, env={"DEVICE_CHECK_DRY_RUN": "1", "DEVICE_CHECK_BUDGET_S": "0"})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert proc.returncode == 1
    assert summary["finished"] is True
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert {s["status"] for s in summary["steps"]} == {"not run"}
    assert summary["failed_steps"] == len(STEPS)


def test_an_interrupted_run_stops_its_steps_and_reports_them(tmp_path: Path) -> None:
    """SIGTERM (a `timeout` around the script, or Ctrl-C's SIGINT) reaches the steps, which `timeout`
    puts in process groups of their own: they stop, and the summary says which were interrupted."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        ["bash", str(REPO / "tools" / "device_check.sh"), "--dry-run", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_environment(out),
        cwd=REPO,
    )
    deadline = time.monotonic() + 300
    summary_txt = out / "summary.txt"
    while "== build" not in (summary_txt.read_text() if summary_txt.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is False
    statuses = {s["step"]: s["status"] for s in summary["steps"]}
    assert statuses["env"] == "passed"
    assert statuses["build"] == statuses["eval-bench"] == "interrupted", statuses
    time.sleep(2.0)
    # No step process outlives the script: nothing still runs with this run's output directory in
    # its command line (the evaluation benchmark's --json names it).
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(out) not in ps, ps


def test_usage_error(tmp_path: Path) -> None:
    proc = _dry_run(tmp_path, "--dry-run", "extra")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


def test_a_failing_benchmark_worker_fails_the_kernel_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(REPO / "tools" / "bench_kernels.py"), "--device", "cpu", "--n", "8"]
    cmd += ["--vocab", "64", "--runs", "1", "--threads", "1", "--impls", "eager", "--timeout", "0.01"]
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout
    assert "failed" in json.loads(out.read_text())[0]


def _bench_kernels_with_workers(monkeypatch, tmp_path: Path, failing: dict[str, str]):
    """bench_kernels' main over two vocabulary sizes with each worker replaced: the implementations
    in `failing` fail with their reason, the others measure 1 ms. Returns (exit status, JSON rows,
    the (impl, V) run, stderr)."""
    bench = load_tool("bench_kernels")
    ran = []

    def worker(args, impl: str, v: int) -> dict:
        ran.append((impl, v))
        return {"failed": failing[impl]} if impl in failing else {"median_ms": 1.0, "peak_extra_mib": 0.0}

    monkeypatch.setattr(bench, "_run_worker", worker)
    out = tmp_path / "rows.json"
    argv = ["bench_kernels.py", "--device", "cpu", "--n", "8", "--vocab", "64", "128", "--bandwidth", "100"]
    monkeypatch.setattr(sys, "argv", [*argv, "--no-compile", "--json", str(out)])
    code = bench.main()
    return code, json.loads(out.read_text()), ran


def test_a_failing_baseline_leaves_vikhrs_rows_measured_and_says_so(
    monkeypatch, tmp_path: Path, capsys
) -> None:
    """Liger-Kernel that cannot run (triton not built for this torch's CUDA) failed the whole kernel
    benchmark: vikhr's rows are measured and written, the baseline's row says why, exit status 3."""
    reason = "ImportError: triton does not support CUDA 13"
    code, rows, ran = _bench_kernels_with_workers(monkeypatch, tmp_path, {"liger": reason})
    err = capsys.readouterr().err
    assert code == 3, err
    measured = {(r["impl"], r["vocab"]) for r in rows if "median_ms" in r}
    own = ("vikhr fused", "vikhr persistent", "vikhr smem", "vikhr fused/buf", "eager")
    assert measured == {(impl, v) for impl in own for v in (64, 128)}
    liger = [r for r in rows if r["impl"] == "liger"]
    assert [r["failed"] for r in liger] == [reason, f"not run, failed at V=64: {reason}"]
    assert ("liger", 128) not in ran  # not run again at the next size
    assert f"baseline failed: liger V=64: {reason}" in err.splitlines()
    assert "\nFAILED" not in err


def test_vikhrs_own_failing_row_still_fails_the_kernel_benchmark(monkeypatch, tmp_path: Path, capsys) -> None:
    failing = {"liger": "ImportError: triton", "vikhr smem": "RuntimeError: CUDA error"}
    code, rows, _ = _bench_kernels_with_workers(monkeypatch, tmp_path, failing)
    assert code == 1
    assert "FAILED: vikhr smem V=64, vikhr smem V=128" in capsys.readouterr().err
    assert sum("median_ms" in r for r in rows) == 8


def test_the_kernel_benchmark_writes_each_row_as_it_is_measured(monkeypatch, tmp_path: Path) -> None:
    """kernel-bench.json was written after each vocabulary size: a step stopped at its limit during
    the first (six workers at N=8192 on a GPU) left no row at all. It is rewritten after each row."""
    bench = load_tool("bench_kernels")
    out = tmp_path / "rows.json"

    def worker(args, impl: str, v: int) -> dict:
        if impl == "eager":  # the step's limit, reached during the fourth worker
            raise KeyboardInterrupt
        return {"median_ms": 1.0, "peak_extra_mib": 0.0}

    monkeypatch.setattr(bench, "_run_worker", worker)
    argv = ["bench_kernels.py", "--device", "cpu", "--n", "8", "--vocab", "64", "--bandwidth", "100"]
    monkeypatch.setattr(sys, "argv", [*argv, "--no-compile", "--json", str(out)])
    with pytest.raises(KeyboardInterrupt):
        bench.main()
    rows = json.loads(out.read_text())
    assert [r["impl"] for r in rows] == ["vikhr fused", "vikhr persistent", "vikhr smem", "vikhr fused/buf"]
    assert all(r["vocab"] == 64 and r["median_ms"] == 1.0 for r in rows)


def test_liger_installed_but_failing_to_import_is_its_failure_not_a_skip(monkeypatch, tmp_path: Path) -> None:
    """An import error inside an installed liger_kernel (its triton unfit for this torch) was taken
    for "not installed" and the row skipped; the worker now fails with that error."""
    package = tmp_path / "liger_kernel"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('triton: no CUDA 13 support')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bench = load_tool("bench_kernels")
    with pytest.raises(ImportError, match="no CUDA 13 support"):
        bench._make_step("liger", "cuda")


def _fake_run(
    tmp_path: Path,
    bench_kernels: str,
    ncu: str,
    *args: str,
    first: str = "",
    env: dict[str, str] | None = None,
) -> tuple[dict, str, Path]:
    """device_check.sh (a "GPU" run, or with `args` such as --dry-run) whose python is a script that
    runs `first` (bash), then passes every step but runs `bench_kernels` (bash) for the kernel
    benchmark, with `ncu` (bash) as Nsight Compute on the PATH and `env` added: the run's
    summary.json, summary.txt and output directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(
        f"#!/usr/bin/env bash\n{first}\n"
        f'case " $* " in *--profile-schedules*|*--sweep-schedules*) exit 0;; esac\n'
        f'case " $* " in *" tools/bench_kernels.py "*) {bench_kernels};; esac\nexit 0\n'
    )
    (bin_dir / "ncu").write_text(f"#!/usr/bin/env bash\n{ncu}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    out = tmp_path / "out"
    env = {"PYTHON": str(python), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    env.setdefault("CUDA_HOME", str(tmp_path / "no-cuda"))
    proc = _dry_run(out, *args, env=env)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True, proc.stdout + proc.stderr
    return summary, (out / "summary.txt").read_text(), out


def _fake_gpu_run(tmp_path: Path, bench_kernels: str, ncu: str) -> tuple[dict, str]:
    summary, text, _ = _fake_run(tmp_path, bench_kernels, ncu)
    assert summary["dry_run"] is False
    return summary, text


def test_the_dry_runs_time_limits_fit_a_loaded_machine_and_the_gpu_runs_stay_tight(tmp_path: Path) -> None:
    """The dry run had the GPU run's limits: on a loaded 2-core CI machine a kernel-benchmark worker
    (60 s) or a step tripped its limit, a failure of nothing. Its limits, budget and the kernel
    benchmark's per-worker timeout are now 3 times the GPU run's at least; the GPU run's stay as
    tight as they were, each within its budget."""

    def limits(args: tuple[str, ...]) -> tuple[dict[str, int], int, float]:
        run = tmp_path / ("dry" if args else "gpu")
        run.mkdir()
        summary, _, out = _fake_run(run, "exit 0", "exit 0", *args)
        command = (out / "kernel-bench.log").read_text().splitlines()[0].split()
        worker_timeout = float(command[command.index("--timeout") + 1])
        return {s["step"]: s["limit_s"] for s in summary["steps"]}, summary["budget_s"], worker_timeout

    gpu, gpu_budget, gpu_worker = limits(())
    dry, dry_budget, dry_worker = limits(("--dry-run",))
    assert list(dry) == list(gpu) == STEPS
    assert all(0 < gpu[step] <= gpu_budget and dry[step] >= 3 * gpu[step] for step in STEPS), (gpu, dry)
    assert dry_budget >= 3 * gpu_budget and dry_worker >= 3 * gpu_worker, (gpu_worker, dry_worker)
    assert dry_budget + 60 < DRY_RUN_TIMEOUT_S


def test_wheels_that_do_not_install_are_a_failed_step_with_a_summary(tmp_path: Path) -> None:
    """A wheel that pip could not install (a broken download, one for another Python) ended the script
    with exit status 1 before summary.json was written: nothing said what happened. The install is
    a step of its own, recorded as failed with pip's words in wheels.log, and no other step runs."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip archive")
    out = tmp_path / "out"
    proc = _dry_run(out, "--dry-run", env={"DEVICE_CHECK_WHEELS": str(wheels), "PYTHON": sys.executable})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True and [s["step"] for s in summary["steps"]] == ["wheels", *STEPS]
    statuses = {s["step"]: s["status"] for s in summary["steps"]}
    assert statuses.pop("wheels") == "failed" and set(statuses.values()) == {"not run"}, statuses
    assert "broken-1.0-py3-none-any.whl" in (out / "wheels.log").read_text()
    assert "the wheels did not install" in (out / "env.log").read_text()


def test_each_run_installs_the_wheels_into_a_directory_of_its_own_removed_at_its_end(tmp_path: Path) -> None:
    """The wheels were installed into a fixed /tmp/vikhr-device-check-site: two runs on one machine
    installed into one directory, and a run imported what an earlier one (other versions) had left
    there. Each run installs into a new directory of its own under TMPDIR, first on PYTHONPATH after
    the checkout, and removes it when it ends."""
    wheels, scratch, targets = tmp_path / "wheels", tmp_path / "tmp", tmp_path / "targets"
    wheels.mkdir()
    scratch.mkdir()
    (wheels / "package-1.0-py3-none-any.whl").write_bytes(b"")
    # pip records where it installs; `vikhr doctor` (the env step) says what Python imports from.
    record = (
        'previous=; for arg in "$@"; do\n'
        f'  [[ $previous != --target ]] || {{ echo "$arg" >> "{targets}"; mkdir -p "$arg"; }}\n'
        '  previous=$arg\ndone\ncase " $* " in *" -m vikhr doctor "*) echo "PYTHONPATH=$PYTHONPATH";; esac'
    )
    env = {"DEVICE_CHECK_WHEELS": str(wheels), "TMPDIR": str(scratch)}
    imported_from = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        summary, _, out = _fake_run(tmp_path / run, "exit 0", "exit 0", "--dry-run", first=record, env=env)
        assert {s["status"] for s in summary["steps"]} == {"passed"}, summary
        said = [line for line in (out / "env.log").read_text().splitlines() if line.startswith("PYTHONPATH=")]
        imported_from.append(said[0].removeprefix("PYTHONPATH=").split(os.pathsep))
    sites = targets.read_text().splitlines()
    assert len(sites) == 2 and sites[0] != sites[1], sites
    for site, path in zip(sites, imported_from, strict=True):
        assert Path(site).parent.parent == scratch and path[:2] == [str(REPO), site], (site, path)
    assert not any(scratch.iterdir())  # each run removed its own


# The build step's own Python, as a GPU machine would run it, with what it finds there simulated
# by code run before it: here, a GPU that torch sees and no toolkit anywhere (pip's included).
SEES_A_GPU_WITHOUT_A_TOOLKIT = (
    "import torch, vikhr.ops.build as b; torch.cuda.is_available = lambda: True; "
    "torch.cuda.device_count = lambda: 1; b.pip_toolkit = lambda: None"
)


@pytest.mark.parametrize("missing", ["device", "toolkit"])
def test_a_gpu_run_without_a_gpu_or_a_toolkit_fails_its_build_in_one_line(
    tmp_path: Path, missing: str
) -> None:
    """The build step's checks of the GPU and of the CUDA toolkit were asserts: a GPU machine missing
    either ended build.log with an AssertionError traceback. Its last line now says what is missing
    and what to do, with no traceback, and the steps that need the build are not run."""
    before = "" if missing == "device" else SEES_A_GPU_WITHOUT_A_TOOLKIT
    build = f'[[ -z ${{VIKHR_CHECK_DEVICE:-}} ]] || exec "{sys.executable}" -c "{before}"$\'\\n\'"$2"'
    env = {"CUDA_VISIBLE_DEVICES": ""}  # no GPU for torch, even on a machine with one
    summary, _, out = _fake_run(tmp_path, "exit 0", "exit 0", first=build, env=env)
    statuses = {s["step"]: s["status"] for s in summary["steps"]}
    assert statuses["build"] == "failed" and statuses["op-tests"] == "not run", statuses
    lines = (out / "build.log").read_text().splitlines()
    said = {
        "device": r"vikhr: torch \S+ \(CUDA \S+\) sees no CUDA device \(CUDA_VISIBLE_DEVICES=''; "
        r".* or --dry-run .*",
        "toolkit": r"vikhr: the GPU check: .* a CUDA toolkit \(nvcc\), and none is found here: "
        r"install one .*",
    }[missing]
    assert re.fullmatch(said, lines[-1]) and "Traceback" not in "\n".join(lines), lines[-12:]


def test_device_check_records_a_missing_baseline_as_passed_with_its_reason(tmp_path: Path) -> None:
    reason = "baseline failed: liger V=40000: ImportError: triton does not support CUDA 13"
    summary, text = _fake_gpu_run(tmp_path, f"echo '{reason}' >&2; exit 3", "exit 0")
    statuses = {s["step"]: s["status"] for s in summary["steps"]}
    assert statuses["kernel-bench"] == "passed, baseline failed", statuses
    assert summary["failed_steps"] == 0
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("kernel-bench: passed, baseline failed"))
    assert lines[at + 1] == f"  {reason}", text


NO_COUNTERS = (
    "==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU Performance "
    "Counters on the target device 0."
)


@pytest.mark.parametrize("ncu_exit", [0, 1])
def test_ncu_without_access_to_the_counters_is_a_skip_with_its_reason(tmp_path: Path, ncu_exit: int) -> None:
    """ncu in a container that may not read the performance counters failed the kernel-ncu step
    (its ==ERROR== lines, whatever its exit status): the step is skipped, with ncu's line."""
    ncu = f'for _ in 1 2 3; do echo "==PROF== Connected"; echo "{NO_COUNTERS}"; done\nexit {ncu_exit}'
    summary, text = _fake_gpu_run(tmp_path, "exit 0", ncu)
    statuses = {s["step"]: s["status"] for s in summary["steps"]}
    assert statuses["kernel-ncu"] == "skipped", statuses
    assert summary["failed_steps"] == 0
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("kernel-ncu: skipped"))
    assert lines[at + 1] == f"  {NO_COUNTERS}" and text.count(NO_COUNTERS) == 1, text  # once, not per launch


@pytest.mark.parametrize(
    "ncu",
    [
        f'echo "{NO_COUNTERS}"; echo "==ERROR== An error was reported by the driver"',
        'echo "==ERROR== Failed to profile kernel"',
        "exit 1",
    ],
)
def test_other_ncu_errors_still_fail_the_kernel_ncu_step(tmp_path: Path, ncu: str) -> None:
    summary, _ = _fake_gpu_run(tmp_path, "exit 0", ncu)
    statuses = {s["step"]: s["status"] for s in summary["steps"]}
    assert statuses["kernel-ncu"] == "failed", statuses


@pytest.mark.slow
def test_the_schedule_sweep_on_the_cpu_says_every_row_timed_the_cpu_kernel(tmp_path: Path) -> None:
    """The CPU kernel ignores the CUDA schedules: its timings were printed under the schedules' names
    (persistent:2, smem, ...) as if each had been measured. Each variant still runs its steps, as the
    dry run needs, and the table and the JSON rows name what was timed."""
    out = tmp_path / "sweep.json"
    cmd = [sys.executable, str(REPO / "tools" / "bench_kernels.py"), "--sweep-schedules", "--device", "cpu"]
    cmd += ["--n", "8", "--vocab", "64", "--runs", "1", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# CPU: the schedules are CUDA-only; the CPU kernel ignores VIKHR_CEKL_SCHEDULE" in proc.stdout
    table = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert table[0].split()[:2] == ["timed", "settings"], proc.stdout
    assert len(table) == 15 and all(line.startswith("CPU kernel ") for line in table[1:]), proc.stdout
    rows = json.loads(out.read_text())
    variants = {(r["schedule"], r["packs"]) for r in rows}
    assert variants == {(s, p) for s in load_tool("bench_kernels").SWEEP for p in (1, 2)}
    assert all(r["schedule_applied"] is False and r["bitwise_equal"] is True for r in rows)


def test_the_schedule_profile_on_the_cpu_says_no_schedule_was_profiled(tmp_path: Path) -> None:
    """--profile-schedules on the CPU printed "profiled: forward kernel, schedule smem, 2 packs" for
    each CUDA schedule, though the CPU kernel ignores them: its launches now name the CPU kernel and
    the settings it ignored, under a note, in the same order (what a profiler's launch count needs)."""
    cmd = [sys.executable, str(REPO / "tools" / "bench_kernels.py"), "--profile-schedules", "--device", "cpu"]
    cmd += ["--n", "8", "--vocab", "64", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    note = [line for line in proc.stdout.splitlines() if line.startswith("#")]
    assert note[0].startswith("# CPU: the schedules are CUDA-only") and "no schedule is profiled" in note[1]
    launches = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    from vikhr.ops.cross_entropy_kl import CUDA_SCHEDULES as schedules

    assert launches == [
        f"{round_name}: CPU kernel, settings passed, ignored: {schedule}, {packs}, N=8, V=64"
        for round_name in ("warm-up", "profiled")
        for packs in ("1 pack", "2 packs")
        for schedule in schedules
    ], proc.stdout


@pytest.mark.parametrize(
    "bad,message",
    [
        (["--n", "0"], "argument --n: expected a positive int, got '0'"),
        (["--vocab", "4096", "0"], "argument --vocab: expected a positive int, got '0'"),
        (["--runs", "0"], "argument --runs: expected a positive int, got '0'"),
        (["--threads", "0"], "argument --threads: expected a positive int, got '0'"),
        (["--timeout", "-1"], "argument --timeout: expected a positive float, got '-1'"),
        (["--bandwidth", "nan"], "argument --bandwidth: expected a positive float, got 'nan'"),
    ],
)
def test_the_kernel_benchmark_refuses_a_bad_size_in_one_line(bad: list[str], message: str) -> None:
    """A zero size or count was a ZeroDivisionError or a torch traceback after the header."""
    cmd = [sys.executable, str(REPO / "tools" / "bench_kernels.py"), "--device", "cpu", *bad]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.splitlines() == [
        f"bench_kernels.py: error: {message} (see 'bench_kernels.py --help')"
    ]


def test_the_kernel_benchmark_on_cuda_without_a_gpu_is_one_line() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    cmd = [sys.executable, str(REPO / "tools" / "bench_kernels.py"), "--device", "cuda"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "bench_kernels.py: error: --device cuda: torch sees no CUDA device here (run with --device cpu) "
        "(see 'bench_kernels.py --help')"
    ], proc.stderr


def test_every_dependency_is_on_the_gpu_image_or_carried_as_a_wheel() -> None:
    """A dependency added to pyproject.toml must be fetched by tools/device_wheels.sh unless a GPU
    image holds it, or the GPU run fails on an import (as its training steps did without pydantic)."""
    import re
    import tomllib

    proc = subprocess.run(
        ["bash", str(REPO / "tools" / "device_wheels.sh"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    lists = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())

    def name(requirement: str) -> str:
        return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    available = {name(r) for r in lists["image"].split() + lists["fetched"].split()}
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    missing = sorted({name(r) for r in dependencies} - available)
    assert not missing, f"add to tools/device_wheels.sh: {missing}"


def test_suite_estimate_charges_each_tasks_batch_size_search_once() -> None:
    """`auto` on a GPU searches once per task: the search is added to a task's estimate, not spread
    over its documents, and a short task may then be faster at a fixed batch size."""
    bench_eval = load_tool("bench_eval")
    rates = {
        "1": {
            "long": {"s_per_doc": 0.5, "probe_seconds": 0.0},
            "short": {"s_per_doc": 0.5, "probe_seconds": 0.0},
        },
        "auto": {
            "long": {"s_per_doc": 0.1, "probe_seconds": 30.0},
            "short": {"s_per_doc": 0.1, "probe_seconds": 30.0},
        },
    }
    rows, total = bench_eval.suite_estimate(rates, {"long": 1000, "short": 10})
    assert rows["long"]["estimate_s"] == pytest.approx(0.1 * 1000 + 30.0)  # auto: 130 s against 500 s
    assert rows["short"]["estimate_s"] == pytest.approx(0.5 * 10)  # batch 1: 5 s against 31 s
    assert total == pytest.approx(135.0)
