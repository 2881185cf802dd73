"""vikhr.runtime: megatron version pin, the CPU compatibility layer, single-process start-up."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from vikhr.errors import VikhrError
from vikhr.runtime import cpu_compat
from vikhr.runtime import megatron as vmegatron
from vikhr.runtime.distributed import distributed_env


def test_megatron_version_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    assert vmegatron.megatron_version_problem() is None
    real = md.version
    monkeypatch.setattr(md, "version", lambda d: "0.15.0" if d == "megatron-core" else real(d))
    problem = vmegatron.megatron_version_problem()
    assert "0.15.0" in problem and vmegatron.MEGATRON_CORE_REQUIREMENT in problem
    with pytest.raises(VikhrError, match="pip install 'megatron-core>="):
        vmegatron.require_megatron()
    for newer in ("0.17.1", "0.19.2"):  # the tested range
        monkeypatch.setattr(md, "version", lambda d, v=newer: v if d == "megatron-core" else real(d))
        assert vmegatron.megatron_version_problem() is None
    monkeypatch.setattr(md, "version", lambda d: "0.20.0" if d == "megatron-core" else real(d))
    assert "0.20.0 is installed" in vmegatron.megatron_version_problem()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA requests are real where CUDA exists")
def test_cpu_compat_redirects_cuda_requests_while_entered() -> None:
    current_device = torch.cuda.current_device
    with cpu_compat.megatron_on_cpu():
        assert torch.cuda.current_device() == torch.device("cpu")
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.ones(1).cuda().device.type == "cpu"
        assert torch.ones(1).to("cuda").device.type == "cpu"
        with pytest.raises(VikhrError, match="already active"), cpu_compat.megatron_on_cpu():
            pass
    assert torch.cuda.current_device is current_device  # every patch is undone on exit
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(1, device="cuda")


def test_cpu_environment_is_entered_and_left() -> None:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mrandom

    deterministic = torch.are_deterministic_algorithms_enabled()
    with distributed_env(tp_size=1, seed=7, device="cpu") as env:
        assert not env.on_gpu and env.backend == "gloo"
        assert torch.are_deterministic_algorithms_enabled()
        assert parallel_state.model_parallel_is_initialized()
    assert not torch.distributed.is_initialized() and not parallel_state.model_parallel_is_initialized()
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert (
        mrandom._CUDA_RNG_STATE_TRACKER is None or "Cpu" not in type(mrandom._CUDA_RNG_STATE_TRACKER).__name__
    )


def test_rng_tracker_forks_are_reproducible_and_isolated() -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    with distributed_env(tp_size=1, seed=7, device="cpu"):
        tracker = get_cuda_rng_tracker()
        before = torch.get_rng_state()
        with tracker.fork():
            a = torch.rand(4)
        assert torch.equal(torch.get_rng_state(), before), "forking must not disturb the default stream"
        with tracker.fork():
            b = torch.rand(4)
        assert not torch.equal(a, b), "the forked stream must advance"
    with distributed_env(tp_size=1, seed=7, device="cpu"), get_cuda_rng_tracker().fork():
        a2 = torch.rand(4)
    assert torch.equal(a, a2), "same seed, same forked stream"


def test_grad_norm_on_cpu_is_exact_for_large_tensors() -> None:
    """megatron's fallback norm (no TE, no apex) is torch.norm in float32, which on the CPU falls
    short on large tensors: the logged grad norm (and the clipping it decides) was 2.5e-4 low at 8M
    elements, 1.3 % at a 7B output layer's 131M."""
    from megatron.core.optimizer import clip_grads

    torch.manual_seed(0)
    grads = [torch.randn(1 << 23), torch.randn(1000, 3)]
    exact = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
    with distributed_env(tp_size=1, seed=0, device="cpu"):
        got = float(clip_grads.get_grad_norm_fp32(grads))
    assert got == pytest.approx(exact, rel=1e-6)
    assert float(torch.norm(torch.stack([torch.norm(g) for g in grads]))) < exact * (1 - 1e-5)  # torch's


def test_single_process_start_and_seeding() -> None:
    with distributed_env(tp_size=1, seed=3, device="cpu") as env:
        assert (env.rank, env.world_size, env.tp_size, env.dp_size) == (0, 1, 1, 1)
        assert env.device == torch.device("cpu") and env.backend == "gloo" and env.is_main
        x = torch.rand(3)
    with distributed_env(tp_size=1, seed=3, device="cpu"):
        assert torch.equal(torch.rand(3), x)


def test_collectives_wait_an_hour_for_the_slowest_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL's default (10 min) would kill a run while rank 0 alone saves a 7B's optimizer state."""
    import datetime

    import torch.distributed as dist

    asked: dict[str, Any] = {}
    init = dist.init_process_group

    def recording_init(*args: Any, **kwargs: Any) -> None:
        asked.update(kwargs)
        init(*args, **kwargs)

    monkeypatch.setattr(dist, "init_process_group", recording_init)
    with distributed_env(tp_size=1, seed=0, device="cpu"):
        pass
    assert asked["timeout"] == datetime.timedelta(hours=1)


def test_tp_must_divide_world() -> None:
    with (
        pytest.raises(VikhrError, match="does not divide the world size"),
        distributed_env(tp_size=2, device="cpu"),
    ):
        pass
    assert not torch.distributed.is_initialized()


def test_compile_on_first_call_defers_and_forwards_the_arguments() -> None:
    calls: list[tuple[object, dict]] = []

    def fake_compile(fn: Any, **kwargs: Any) -> Any:  # stands in for torch.compile
        calls.append((fn, kwargs))
        return lambda *a, **k: ("compiled", fn(*a, **k))

    deferred = vmegatron.compile_on_first_call(fake_compile)

    @deferred
    def add(x: int, y: int = 1) -> int:
        return x + y

    @deferred(dynamic=False)
    def twice(x: int) -> int:
        return 2 * x

    assert calls == [] and add.__name__ == "add"  # nothing compiled at decoration
    assert add(2, y=3) == ("compiled", 5) and add(1) == ("compiled", 2)
    assert twice(4) == ("compiled", 8)
    assert [(fn.__name__, kwargs) for fn, kwargs in calls] == [("add", {}), ("twice", {"dynamic": False})]


def test_megatron_import_leaves_the_compiler_stack_unloaded() -> None:
    """A fresh process importing the trainer as the entry points do has not imported torch's
    compiler stack (seconds of start-up); megatron-core's fusion decorator is the deferred one."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from vikhr.runtime.megatron import import_megatron_core\n"
        "import_megatron_core()\n"
        "import vikhr.train.trainer, megatron.core.jit as jit\n"
        "assert 'torch._dynamo' not in sys.modules and 'torch._inductor' not in sys.modules\n"
        "assert jit.jit_fuser is not torch.compile and torch.compile.__module__.startswith('torch')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_ranks_end_when_the_torchrun_launcher_is_killed(tmp_path: Path) -> None:
    """torchrun starts ranks in sessions of their own: with the launcher killed -9 they trained on,
    writing checkpoints, until the run's end. Each rank now gets SIGTERM when the launcher dies."""
    import signal
    import subprocess
    import time

    from tests.conftest import REPO, child_env, torchrun_command

    script = tmp_path / "rank.py"
    script.write_text(
        "import os, sys, time\n"
        "from vikhr.runtime.distributed import end_with_the_launcher\n"
        "end_with_the_launcher()\n"
        "open(os.path.join(sys.argv[1], f'rank{os.environ[\"RANK\"]}.pid'), 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n",
        encoding="utf-8",
    )
    launcher = subprocess.Popen(
        [*torchrun_command(2), str(script), str(tmp_path)],
        env=child_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("rank*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        ranks = [int(p.read_text()) for p in sorted(tmp_path.glob("rank*.pid"))]
        assert len(ranks) == 2, "the ranks did not start"
        launcher.kill()
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_running(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(pid) for pid in ranks)
    finally:
        launcher.kill()
        for p in tmp_path.glob("rank*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(p.read_text()), signal.SIGKILL)


def test_ranks_of_a_launcher_that_is_the_first_process_run(tmp_path: Path) -> None:
    """`docker run IMAGE torchrun ...`: torchrun is process 1 of its PID namespace, the parent of
    every rank. A rank whose parent was process 1 was taken for one adopted by init after its
    launcher died, and ended itself at once: no run started. Process 1's command line tells them
    apart; an init that did adopt a rank (a shell, tini) is still no launcher."""
    import subprocess

    from tests.conftest import REPO, child_env, torchrun_command
    from vikhr.runtime.distributed import _pid_1_is_a_launcher

    def cmdline(*argv: str) -> Path:
        path = tmp_path / f"cmdline{len(list(tmp_path.glob('cmdline*')))}"
        path.write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        return path

    assert _pid_1_is_a_launcher(cmdline("/usr/bin/python3", "/usr/local/bin/torchrun", "train.py"))
    assert _pid_1_is_a_launcher(cmdline("/opt/venv/bin/python3.11", "-m", "torch.distributed.run", "x"))
    assert not _pid_1_is_a_launcher(cmdline("/sbin/tini", "--", "sh", "-c", "torchrun x.py"))
    assert not _pid_1_is_a_launcher(cmdline("/bin/sh", "-c", "sleep 1"))

    namespace = ["unshare", "--pid", "--fork", "--mount-proc"]
    probe = subprocess.run([*namespace, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("a PID namespace of its own needs unshare and the rights to use it (root)")
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, sys\n"
        "from vikhr.runtime.distributed import end_with_the_launcher\n"
        "assert os.getppid() == 1  # the launcher is process 1\n"
        "end_with_the_launcher()\n"
        "open(os.path.join(sys.argv[1], f'rank{os.environ[\"RANK\"]}.ran'), 'w').close()\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [*namespace, *torchrun_command(2), str(script), str(tmp_path)],
        env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("rank*.ran")) == ["rank0.ran", "rank1.ran"]


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not yet reaped by init, is not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_more_processes_on_a_node_than_gpus_is_said_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun --nproc_per_node=3 on a node of two GPUs: the third process's memory check (and then
    torch.cuda.set_device) ended in a traceback naming an invalid device ordinal."""
    from vikhr.train.memory import memory_here

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    said = (
        r"^process 2 of this node has no GPU: torch sees 2 here; start at most 2 processes per node "
        r"\(torchrun --nproc_per_node=2\), or set parallel\.device=cpu$"
    )
    with pytest.raises(VikhrError, match=said):
        memory_here(on_cuda=True)
    with pytest.raises(VikhrError, match=said), distributed_env(tp_size=1, seed=0, device="cuda"):
        pass


def test_each_process_takes_its_gpu_under_per_task_binding_and_none_is_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`srun --gpus-per-task=1` shows each rank one GPU, as device 0, with LOCAL_RANK 0..7: such ranks
    were refused ("start at most 1 process per node"); a process that sees no GPU was told to start
    "at most 0 process" per node."""
    from vikhr.runtime.distributed import local_gpu

    monkeypatch.setenv("LOCAL_RANK", "5")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert local_gpu() == 0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert local_gpu() == 5
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(VikhrError, match=r"^process 5 of this node has no GPU: torch sees none here \("):
        local_gpu()


def test_two_ranks_on_one_gpu_are_refused_in_one_line() -> None:
    from vikhr.runtime.distributed import refuse_shared_gpus

    bound = [(f"node0{r // 4}", f"GPU-{r}") for r in range(8)]  # two nodes, one GPU per task
    refuse_shared_gpus(bound)
    refuse_shared_gpus([("node01", "GPU-0"), ("node02", "GPU-0")])  # hosts are told apart
    shared = [("node01", "GPU-a"), ("node01", "GPU-b"), ("node01", "GPU-a")]
    with pytest.raises(VikhrError) as refused:
        refuse_shared_gpus(shared)
    assert str(refused.value) == (
        "ranks 0 and 2 share one GPU (GPU-a) on node01, where the job uses 2; start at most 2 processes "
        "per node (torchrun --nproc_per_node=2), or set parallel.device=cpu"
    )


def test_the_job_start_refuses_ranks_sharing_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun --nproc_per_node=2 on a node of one GPU: both ranks take device 0, and the start,
    which gathers each rank's (host, GPU uuid), refuses them in one line before anything is built."""
    import re
    import socket
    from types import SimpleNamespace

    import torch.distributed as dist

    asked: list[object] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", asked.append)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: asked.append(d) or SimpleNamespace(uuid="GPU-x")
    )
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # as if torchrun's group were up
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)

    def all_gather_object(out: list[Any], here: Any) -> None:
        out[:] = [here, here]  # the other rank is on this host and sees the same GPU

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    host = socket.gethostname()
    said = (
        rf"^ranks 0 and 1 share one GPU \(GPU-x\) on {re.escape(host)}, where the job uses 1; "
        r"start at most 1 process per node"
    )
    with pytest.raises(VikhrError, match=said), distributed_env(tp_size=1, seed=0, device="cuda"):
        pass
    assert asked == [0, torch.device("cuda", 0)]


_JOIN_RANK = """
import sys
from datetime import timedelta
from vikhr.errors import VikhrError
from vikhr.runtime.distributed import _join_the_job
try:
    _join_the_job(int(sys.argv[1]), 3, timedelta(seconds=float(sys.argv[2])))
except VikhrError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


def test_a_rank_absent_from_a_job_without_torchrun_is_named_by_the_rank_hosting_the_store() -> None:
    """Started without torchrun (srun per task: rank 0 hosts the store), rank 0 of a job one of whose
    ranks never comes names that rank at the join timeout, and the rank that came is not told rank 0
    is absent. Rank 0 waited for the others inside the store's start, then said it "could not reach
    the job's store" it hosts, and the other rank named rank 0 among the absent ones."""
    import subprocess
    import sys

    from tests.conftest import child_env, free_port

    env = {k: v for k, v in child_env().items() if not k.startswith("TORCHELASTIC_")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    host = subprocess.Popen(
        [sys.executable, "-c", _JOIN_RANK, "0", "4"], env=env, stderr=subprocess.PIPE, text=True
    )
    other = subprocess.run(
        [sys.executable, "-c", _JOIN_RANK, "1", "6"], env=env, capture_output=True, text=True, timeout=120
    )
    _, host_err = host.communicate(timeout=120)
    assert host.returncode == 2, host_err
    assert "1 of 3 ranks did not join the job" in host_err and "(rank 2)" in host_err, host_err
    assert other.returncode == 2, other.stderr
    assert "ranks 0, 2" not in other.stderr, other.stderr
    assert "lost the job's store" in other.stderr, other.stderr


def _an_attempt(ranks: list[int], world_size: int, join_timeout_s: float) -> dict[int, str]:
    """One attempt of a torchrun job: `ranks` join it side by side (the first a little ahead, as one
    node may be); for each rank, "" once it joined, else the error it ended with."""
    import threading
    import time
    from datetime import timedelta

    from vikhr.runtime.distributed import _join_the_job

    ended: dict[int, str] = {}

    def join(rank: int) -> None:
        try:
            _join_the_job(rank, world_size, timedelta(seconds=join_timeout_s))
            ended[rank] = ""
        except VikhrError as e:
            ended[rank] = str(e)

    threads = [threading.Thread(target=join, args=(rank,)) for rank in ranks]
    for thread in threads:
        thread.start()
        time.sleep(0.5)
    for thread in threads:
        thread.join(timeout=120)
    return ended


def test_a_rank_absent_from_an_attempt_torchrun_restarted_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun --max-restarts keeps its store across the attempts of a job, and the ranks counted
    their arrivals there for all of them: once one attempt had every rank, a later attempt missing a
    rank passed the join at once, naming nobody. Each attempt now joins apart: a rank absent from it
    is named at the join timeout, also after an attempt the rank was absent from and then came first."""
    import torch.distributed as dist

    from vikhr.runtime import distributed

    monkeypatch.setattr(distributed, "WAITERS_POLL_WITHIN_S", 2.5)
    agent_store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent_store.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", str(True))  # as torchrun's workers
    every_rank = dict.fromkeys([0, 1, 2], "")

    assert _an_attempt([0, 1, 2], 3, 60) == every_rank
    for without_2 in ([0, 1], [1, 0]):
        ended = _an_attempt(without_2, 3, 3)
        assert sorted(ended) == sorted(without_2), ended
        for said in ended.values():
            assert said.startswith("1 of 3 ranks did not join the job within") and "(rank 2)" in said, ended
        assert _an_attempt([2, 0, 1], 3, 60) == every_rank  # rank 2, absent before, comes first


def test_ranks_taken_for_ended_join_the_attempt_opened_after_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting rank whose polls stalled longer than an arriving rank watches for them is taken for
    ended, and the arriving rank opens the next attempt: the waiting one joins it there, so the
    job still starts (here every arriving rank takes the waiting ones for ended)."""
    import torch.distributed as dist

    from vikhr.runtime import distributed

    monkeypatch.setattr(distributed, "WAITERS_POLL_WITHIN_S", 0.0)
    agent_store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent_store.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", str(True))
    assert _an_attempt([0, 1, 2], 3, 60) == dict.fromkeys([0, 1, 2], "")
    assert int(agent_store.get(distributed._ATTEMPT)) == 2  # each rank after the first opened one


_SHARED_DIR_RANK = """
import sys
import torch.distributed as dist
from vikhr.errors import VikhrError
from vikhr.runtime.distributed import require_shared_dir
rank, store, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
try:
    require_shared_dir(directory, "checkpoint.dir")
except VikhrError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


def test_a_checkpoint_dir_rank_0_cannot_write_is_said_as_such_not_as_local_to_each_node(
    tmp_path: Path,
) -> None:
    """Where rank 0 cannot write in checkpoint.dir (here a file is in its place), every rank says so
    with the cause; it was said as "a directory local to each node", which sent users to their
    storage's sharing rather than to the path or its permissions."""
    import subprocess
    import sys

    from tests.conftest import child_env

    taken = tmp_path / "ckpt"
    taken.write_text("not a directory\n", encoding="utf-8")
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _SHARED_DIR_RANK, str(r), str(tmp_path / "store"), str(taken)],
            env=child_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    for proc in ranks:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        [line] = err.strip().splitlines()
        assert line.startswith(f"checkpoint.dir = {taken}: rank 0 (on "), line
        assert ") cannot write there (FileExistsError: " in line, line
        assert "local to each node" not in line, line
