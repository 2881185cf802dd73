"""Distributed start-up that works under `torchrun` and as a plain single process.

`distributed_env()` is the one place where a process joins a job: it starts torch.distributed
(nccl with one GPU per rank, no two ranks on one; gloo on CPU, inside megatron's CPU compatibility
layer `vikhr.runtime.cpu_compat`), builds megatron's model-parallel groups and seeds every RNG,
so model code can assume all of these exist. Leaving the context tears all of it down again.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.distributed as dist

from vikhr.errors import VikhrError, same_on_every_process
from vikhr.processes import end_with_parent
from vikhr.runtime import cpu_compat
from vikhr.runtime.megatron import require_megatron

Device = Literal["auto", "cuda", "cpu"]
DEVICES: tuple[str, ...] = get_args(Device)


# How long a collective waits for the slowest rank: rank 0 alone writes the replicated optimizer's
# checkpoint and builds the datasets' index caches while the others wait in a barrier, which for a
# 7B on slow storage outlasts NCCL's default of 10 minutes (gloo's is 30).
COLLECTIVE_TIMEOUT = timedelta(hours=1)

# How long the ranks that reached the process group wait for the others (parallel.join_timeout_minutes):
# a node whose setup failed (a file missing there) has ended, and torchrun's agents do not tell the
# others, which would otherwise wait a collective's hour in silence.
JOIN_TIMEOUT = timedelta(minutes=20)  # parallel.join_timeout_minutes's default
# After this long, rank 0 says once which ranks it is waiting for.
JOIN_NOTE_AFTER_S = 60.0
# torchrun keeps its store across the restarts of --max-restarts (the static rendezvous and the c10d one's
# shared store alike) and does not separate the workers' keys by attempt, so each attempt of the job joins
# under its own number, kept in _ATTEMPT. Neither a rank's own count of its starts (a rank whose node failed
# before joining in one attempt counts one fewer than the others from then on) nor TORCHELASTIC_RESTART_COUNT
# (only the failing node's agent counts a restart) is the same on every rank. What every rank sees alike is
# the store: an attempt that all ranks joined is over, and so is one whose waiting ranks have all ended
# (torchrun stops every worker before the next attempt's start). A rank that finds the last attempt over
# opens the next; one that finds ranks still waiting in it joins them.
_ATTEMPT = "vikhr/attempt"
# vikhr/joined/{attempt}: how many joined it; .../{rank}: that rank's host; .../beats: its waiters' polls
_JOINED = "vikhr/joined"
# How long an arriving rank watches the last attempt's waiting ranks for a poll (they poll each second
# at most) before it takes them for ended.
WAITERS_POLL_WITHIN_S = 5.0


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job."""

    rank: int
    world_size: int
    local_rank: int
    tp_size: int
    tp_rank: int
    dp_size: int
    dp_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        """Whether this run computes on a CUDA device (else on the CPU, through cpu_compat)."""
        return self.device.type == "cuda"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU, CUDA and megatron's per-TP-rank RNG tracker)."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


@contextlib.contextmanager
def _deterministic_algorithms() -> Iterator[None]:
    """CPU runs are bit-reproducible (resume and parallel-layout tests compare them exactly)."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def uses_cuda(device: str) -> bool:
    """Whether a run with `parallel.device` = `device` trains on CUDA; VikhrError where it cannot."""
    if device not in DEVICES:
        raise VikhrError(f"config key parallel.device must be auto, cuda or cpu, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise VikhrError(
            "config key parallel.device = cuda, but torch sees no CUDA device (set parallel.device=cpu)"
        )
    return use_cuda


def _fewer_gpus_advice(gpus: int) -> str:
    """What to start on a node where the job has `gpus` GPUs."""
    processes = "processes" if gpus > 1 else "process"
    fewer = f"start at most {gpus} {processes} per node (torchrun --nproc_per_node={gpus})"
    return fewer + ", or set parallel.device=cpu"


def local_gpu() -> int:
    """This process's GPU on its node, or VikhrError when the node has fewer GPUs than processes.

    Where torch sees one GPU, that one: a scheduler that binds one GPU to each task (`srun
    --gpus-per-task=1`, `--gpu-bind=single:1`) shows each rank its own as device 0 whatever its
    LOCAL_RANK; two processes sharing it are found after start-up by `refuse_shared_gpus`. Where it
    sees several, LOCAL_RANK (torchrun's) picks one (torch's own error for a missing one was a
    traceback naming a device ordinal).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise VikhrError(
            f"process {local_rank} of this node has no GPU: torch sees none here (check CUDA_VISIBLE_DEVICES "
            "and the job's GPU request), or set parallel.device=cpu"
        )
    if gpus == 1:
        return 0
    if local_rank >= gpus:
        raise VikhrError(
            f"process {local_rank} of this node has no GPU: torch sees {gpus} here; "
            + _fewer_gpus_advice(gpus)
        )
    return local_rank


def _gather_gpu_placements(dev: torch.device) -> list[tuple[str, str]]:
    """(host, GPU uuid) of every rank, by rank; a collective of the whole job."""
    here = (socket.gethostname(), str(torch.cuda.get_device_properties(dev).uuid))
    placements: list[tuple[str, str]] = [here] * dist.get_world_size()
    dist.all_gather_object(placements, here)
    return placements


def refuse_shared_gpus(placements: list[tuple[str, str]]) -> None:
    """VikhrError when two ranks use one GPU; `placements[rank]` is (host, GPU uuid) of each rank.

    Two processes on one GPU would each size their batch for the whole of its memory and then run
    out of it, or crawl, with no word of why.
    """
    first_rank: dict[tuple[str, str], int] = {}
    for rank, placement in enumerate(placements):
        if placement in first_rank:
            host, uuid = placement
            gpus = len({gpu for h, gpu in placements if h == host})
            raise VikhrError(
                f"ranks {first_rank[placement]} and {rank} share one GPU ({uuid}) on {host}, where the job "
                f"uses {gpus}; {_fewer_gpus_advice(gpus)}"
            )
        first_rank[placement] = rank


def require_shared_dir(directory: str | Path, key: str) -> None:
    """VikhrError on every rank when some rank does not see a file rank 0 writes in `directory`
    (a collective of the whole job): a directory local to each node. Every rank writes its part of a
    checkpoint where rank 0 made the step's folder, so such a job failed at its first save, hours in."""
    if dist.get_world_size() == 1:
        return
    root, rank = Path(directory), dist.get_rank()
    probe: Path | None = None
    unwritable: str | None = None
    if rank == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            # A new name each time: no node has looked it up before (NFS caches a name's absence).
            probe = root / f".vikhr-shared-{os.getpid()}-{time.time_ns()}"
            probe.write_text(socket.gethostname() + "\n", encoding="utf-8")
        except OSError as e:
            unwritable, probe = f"{type(e).__name__}: {e.strerror or e}", None
    said = [probe.name if probe is not None else None, unwritable, socket.gethostname()]
    dist.broadcast_object_list(said, src=0)
    if said[1] is not None:  # every rank says it alike: not a directory local to each node
        raise VikhrError(
            f"{key} = {root}: rank 0 (on {said[2]}) cannot write there ({said[1]}); give a directory it "
            "may write in, on storage every node sees at the same path"
        )
    seen = said[0] is not None and (root / said[0]).is_file()
    views: list[tuple[str, bool]] = [("", False)] * dist.get_world_size()
    dist.all_gather_object(views, (socket.gethostname(), seen))
    if probe is not None:
        probe.unlink(missing_ok=True)
    blind = [r for r, (_, saw) in enumerate(views) if not saw]
    if blind:
        hosts = sorted({views[r][0] for r in blind})
        raise VikhrError(
            f"{key} = {root}: rank 0 (on {views[0][0]}) wrote a file there that {_ranks_named(blind)} "
            f"(on {', '.join(hosts)}) did not see: a directory local to each node; put {key} on storage "
            "every node sees at the same path (NFS, Lustre, GPFS)"
        )


def end_with_the_launcher() -> None:
    """Under torchrun (Linux), have the kernel send this rank SIGTERM when the launcher dies.

    torchrun starts its ranks in sessions of their own, so when the launcher alone is killed (kill -9,
    the OOM killer, a scheduler) they would train on and go on writing checkpoints where a rerun
    writes. A plain process (`vikhr pretrain`, perhaps under nohup) is left alone.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    end_with_parent(os.getppid(), signal.SIGTERM)
    if os.getppid() == 1 and not _pid_1_is_a_launcher():  # the launcher died first: init adopted this rank
        os.kill(os.getpid(), signal.SIGTERM)


# Launchers are Python programs (torchrun, `python -m torch.distributed.run`, accelerate, deepspeed);
# a container's or a machine's init (tini, dumb-init, systemd, a shell) is not.
_LAUNCHER_NAMES = ("torchrun", "accelerate", "deepspeed")


def _pid_1_is_a_launcher(cmdline: Path = Path("/proc/1/cmdline")) -> bool:
    """Whether process 1 is the launcher itself (`docker run IMAGE torchrun ...`: torchrun is the
    container's first process, the parent of every rank) rather than an init that adopted a rank
    whose launcher died. Where process 1's command line cannot be read, it is taken for the launcher:
    a rank wrongly ended stops the run, one wrongly kept only waits for the rendezvous to fail."""
    try:
        argv = cmdline.read_bytes().split(b"\0")
    except OSError:
        return True
    names = [os.path.basename(a.decode(errors="replace")) for a in argv if a]
    return any(n.startswith("python") or n in _LAUNCHER_NAMES for n in names)


def _rank_spans(ranks: list[int]) -> str:
    """`[0, 1, 2, 5]` -> "0-2, 5"."""
    spans: list[list[int]] = []
    for r in ranks:
        if spans and spans[-1][1] == r - 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _ranks_named(ranks: list[int]) -> str:
    """The ranks as said in a message: `rank 3`, `ranks 0-2, 5`."""
    return f"rank{'s' if len(ranks) > 1 else ''} {_rank_spans(ranks)}"


def _absent_ranks(store: dist.Store, attempt: int, world_size: int) -> list[int]:
    return [r for r in range(world_size) if not store.check([f"{_JOINED}/{attempt}/{r}"])]


def _has_waiters(store: dist.Store, attempt: int) -> bool:
    """Whether a rank still waits in `attempt`: its polls count up within WAITERS_POLL_WITHIN_S."""
    beats = f"{_JOINED}/{attempt}/beats"
    seen, until = store.add(beats, 0), time.monotonic() + WAITERS_POLL_WITHIN_S
    while time.monotonic() < until:
        time.sleep(0.1)
        if store.add(beats, 0) != seen:
            return True
    return False


def _this_attempt(store: dist.Store, world_size: int) -> int:
    """The attempt this rank joins: the last one while ranks wait in it for the others, else the next."""
    attempt = int(store.compare_set(_ATTEMPT, "", "0"))  # 0 on a new store
    joined = store.add(f"{_JOINED}/{attempt}", 0)
    if joined == 0 or (joined < world_size and _has_waiters(store, attempt)):
        return attempt
    # Ranks arriving together open the next attempt once: the others get the number the first set.
    return int(store.compare_set(_ATTEMPT, str(attempt), str(attempt + 1)))


def _sign_in(store: dist.Store, attempt: int, rank: int) -> int:
    """Mark `rank` as joined in `attempt`; how many ranks have joined it."""
    store.set(f"{_JOINED}/{attempt}/{rank}", socket.gethostname())
    return store.add(f"{_JOINED}/{attempt}", 1)


def _join_the_job(rank: int, world_size: int, join_timeout: timedelta) -> dist.Store:
    """The job's store (torchrun's, at MASTER_ADDR:MASTER_PORT), once every rank has reached it;
    VikhrError naming the ranks absent after `join_timeout`. Each rank's setup (its checks of the
    config, the checkpoints and the datasets) comes before: a node whose setup failed never arrives."""
    wait = join_timeout.total_seconds()
    minutes = f"parallel.join_timeout_minutes = {wait / 60:g}"
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    started = time.monotonic()
    # Without torchrun's agent (one process a task under srun) rank 0 hosts the store; it waits for the
    # others below, where it can name the absent ones, not in the store's start (which names none).
    # (A missing or malformed MASTER_PORT is left to torch's rendezvous, which says so.)
    port = os.environ.get("MASTER_PORT", "")
    hosts = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True) and port.isdigit()
    try:
        if hosts:
            store: dist.Store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(port),
                world_size,
                is_master=True,
                timeout=join_timeout,
                wait_for_workers=False,
                multi_tenant=True,
            )
        else:
            store, _, _ = next(
                dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=join_timeout)
            )
    except dist.DistError as e:
        with same_on_every_process():
            if hosts:
                raise VikhrError(
                    f"rank 0 could not start the job's store at {where} (MASTER_ADDR:MASTER_PORT): "
                    f"{str(e).splitlines()[0]}; give a MASTER_PORT that is free on rank 0's node"
                ) from None
            raise VikhrError(
                f"rank {rank} could not reach the job's store at {where} (MASTER_ADDR:MASTER_PORT) within "
                f"{minutes}: {str(e).splitlines()[0]}; check that rank 0's node started and that this "
                "node reaches that address"
            ) from None
    try:
        _wait_for_the_others(store, rank, world_size, wait, minutes, started)
    except dist.DistError as e:  # the store's host ended (it gave up on the absent ranks first)
        raise VikhrError(
            f"rank {rank} lost the job's store at {where} (MASTER_ADDR:MASTER_PORT) while it waited for "
            f"the other ranks to join: {str(e).splitlines()[0]}; the store's host (rank 0, or the first "
            "node's torchrun) has ended: its log says why"
        ) from None
    store.set_timeout(COLLECTIVE_TIMEOUT)  # from now on the store serves the process group
    return store


def _wait_for_the_others(
    store: dist.Store, rank: int, world_size: int, wait: float, minutes: str, started: float
) -> None:
    """Return once every rank has joined the job's `store`; VikhrError naming the ranks absent once
    `wait` seconds have passed since `started`."""
    attempt = _this_attempt(store, world_size)
    joined, pause, noted = _sign_in(store, attempt, rank), 0.01, False
    while joined < world_size:
        waited = time.monotonic() - started
        if waited > wait:
            absent = _absent_ranks(store, attempt, world_size)
            with same_on_every_process():  # every rank that arrived sees the same absent ones
                raise VikhrError(
                    f"{len(absent)} of {world_size} ranks did not join the job within {minutes} "
                    f"({_ranks_named(absent)}): their node failed in its setup (its own log says why) "
                    "or did not start; fix that and start the job again on every node"
                )
        if rank == 0 and not noted and waited > JOIN_NOTE_AFTER_S:
            absent = _absent_ranks(store, attempt, world_size)
            print(
                f"note: waiting for {len(absent)} of {world_size} ranks to join the job "
                f"({_ranks_named(absent)}): still in their setup, or failed in it (their node's log says "
                f"why); giving up after {minutes}",
                file=sys.stderr,
                flush=True,
            )
            noted = True
        store.add(f"{_JOINED}/{attempt}/beats", 1)
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
        joined = store.add(f"{_JOINED}/{attempt}", 0)
        latest = int(store.get(_ATTEMPT))
        if joined < world_size and latest != attempt:
            # A rank arrived while this one stalled past WAITERS_POLL_WITHIN_S and opened the next
            # attempt: join the ranks there.
            attempt, joined = latest, _sign_in(store, latest, rank)


@contextlib.contextmanager
def distributed_env(
    tp_size: int = 1, seed: int = 1234, device: str = "auto", join_timeout: timedelta = JOIN_TIMEOUT
) -> Iterator[DistEnv]:
    """Join the job: torch.distributed, megatron-core's parallel state, seeds; undone on exit.

    Reads RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); without them it starts a
    one-process group. `device` is "auto" (CUDA when available), "cuda" or "cpu"; on the CPU
    the context also holds megatron's CPU compatibility layer and deterministic algorithms.
    `join_timeout`: how long to wait for the other ranks to arrive (`_join_the_job`).
    """
    require_megatron()
    from megatron.core import parallel_state

    end_with_the_launcher()

    use_cuda = uses_cuda(device)
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size % tp_size != 0:
        raise VikhrError(f"tensor parallel size {tp_size} does not divide the world size {world_size}")

    with contextlib.ExitStack() as stack:
        if use_cuda:
            gpu = local_gpu()
            torch.cuda.set_device(gpu)
            dev, backend = torch.device("cuda", gpu), "nccl"
        else:
            stack.enter_context(cpu_compat.megatron_on_cpu())
            stack.enter_context(_deterministic_algorithms())
            dev, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            if "MASTER_ADDR" in os.environ:
                dist.init_process_group(
                    backend=backend,
                    store=_join_the_job(rank, world_size, join_timeout),
                    rank=rank,
                    world_size=world_size,
                    timeout=COLLECTIVE_TIMEOUT,
                )
            elif world_size == 1:
                dist.init_process_group(
                    backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=COLLECTIVE_TIMEOUT
                )
            else:
                raise VikhrError("WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with torchrun")
            stack.callback(dist.destroy_process_group)
        if use_cuda:
            refuse_shared_gpus(_gather_gpu_placements(dev))
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp_size)
        stack.callback(parallel_state.destroy_model_parallel)
        seed_everything(seed)
        yield DistEnv(
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            tp_size=tp_size,
            tp_rank=parallel_state.get_tensor_model_parallel_rank(),
            dp_size=parallel_state.get_data_parallel_world_size(),
            dp_rank=parallel_state.get_data_parallel_rank(),
            device=dev,
            backend=backend,
        )
