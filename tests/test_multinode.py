"""Two torchrun "nodes" on one machine give the losses of one node with the same ranks.

Each node is its own `torchrun --nnodes 2 --nproc_per_node 1` agent; they meet through torchrun's
c10d rendezvous on 127.0.0.1 (the first node hosts the store) and train one DP=2 job over gloo,
exactly as two machines of a cluster would (docs/scaling.md). The reference is the same config
started as `torchrun --nproc_per_node 2` on a single node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import REPO, child_env, free_port, launch_torchrun
from tests.helpers import make_corpus, write_config
from vikhr.train.monitor import read_metrics

PRETRAIN = REPO / "pretrain_vikhr.py"
STEPS = 4
JOIN_TIMEOUT_S = 120  # a node that never arrives fails the rendezvous after this long
RUN_TIMEOUT_S = 420  # a job that hangs after the rendezvous is killed after this long


def _small_job(path: Path, corpus: dict[str, str], run_dir: Path) -> Path:
    return write_config(
        path,
        corpus,
        run_dir,
        train={"steps": STEPS},
        checkpoint={"dir": str(run_dir), "save_every": STEPS, "resume": "auto"},
        logging={"log_every": 1, "eval_every": STEPS, "tensorboard": False},
    )


def _node_command(node: int, port: int, config: Path, overrides: Sequence[str] = ()) -> list[str]:
    """One node's torchrun: 1 process of a 2-node job, c10d rendezvous on 127.0.0.1:port; `overrides`
    (config keys) for this node alone.

    c10d hands out the node ranks itself (torchrun ignores --node_rank with it); `is_host` only
    says which agent serves the rendezvous store.
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        "--rdzv_id=vikhr-multinode-test",
        # Both agents see 127.0.0.1 as their own address: say which one hosts the store.
        f"--rdzv_conf=is_host={int(node == 0)},join_timeout={JOIN_TIMEOUT_S}",
        "--local_addr=127.0.0.1",  # the workers' master address (else the machine's hostname)
        "--max_restarts=0",
        str(PRETRAIN),
        "--config",
        str(config),
        *overrides,
    ]


def _run_two_nodes(
    config: Path, timeout: float, overrides: Sequence[Sequence[str]] = ((), ())
) -> list[subprocess.CompletedProcess]:
    """Start both nodes at once and wait for both; on timeout kill both and fail with their output.
    `overrides[node]`: config keys given to that node alone (what differs between two machines)."""
    port = free_port()
    env = child_env()
    logs = [config.parent / f"node{rank}.log" for rank in (0, 1)]
    procs = []
    try:
        for rank, log in enumerate(logs):
            with log.open("w") as out:
                procs.append(
                    subprocess.Popen(
                        _node_command(rank, port, config, overrides[rank]),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=REPO,
                        start_new_session=True,  # its own process group: the agent and its worker
                    )
                )
        codes = [proc.wait(timeout=timeout) for proc in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    outputs = [log.read_text(errors="replace") for log in logs]
    if codes is None:
        tails = "\n".join(f"--- node {rank}:\n{text[-4000:]}" for rank, text in enumerate(outputs))
        pytest.fail(f"the two-node job did not finish within {timeout:.0f} s:\n{tails}")
    return [
        subprocess.CompletedProcess(proc.args, code, text, "")
        for proc, code, text in zip(procs, codes, outputs, strict=True)
    ]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_match_one_node_with_two_ranks(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")

    single = tmp_path / "single" / "run"
    single.parent.mkdir()
    proc = launch_torchrun(
        PRETRAIN, "--config", str(_small_job(single.parent / "c.yaml", corpus, single)), timeout=RUN_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    nodes = tmp_path / "nodes" / "run"  # one directory for both nodes: the shared storage of a cluster
    nodes.parent.mkdir()
    runs = _run_two_nodes(_small_job(nodes.parent / "c.yaml", corpus, nodes), timeout=RUN_TIMEOUT_S)
    for rank, run in enumerate(runs):
        assert run.returncode == 0, f"node {rank} failed ({run.returncode}):\n{run.stdout[-4000:]}"
    log = "".join(run.stdout for run in runs)
    assert "TP=1 DP=2" in log  # one job of two ranks, not two jobs of one

    base, base_valid = read_metrics(single)
    train, valid = read_metrics(nodes)
    assert sorted(base) == sorted(train) == list(range(1, STEPS + 1))
    for step, row in base.items():
        for key in ("loss", "ce", "kl", "lr"):
            assert train[step][key] == pytest.approx(row[key], rel=2e-5, abs=2e-6), (step, key)
        assert train[step]["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-4), step
    assert sorted(valid) == sorted(base_valid)
    for step, row in base_valid.items():
        for key in ("loss_ru", "loss_en"):
            assert valid[step][key] == pytest.approx(row[key], rel=2e-5), (step, key)

    # Both nodes wrote into the one checkpoint: each rank its RNG state, rank 0 the rest.
    last = nodes / f"step_{STEPS:06d}"
    assert (nodes / "latest").read_text().strip() == last.name
    assert sorted(p.name for p in last.glob("rng_rank*.pt")) == ["rng_rank0000.pt", "rng_rank0001.pt"]


@pytest.mark.distributed
def test_a_checkpoint_dir_local_to_each_node_is_refused_before_the_first_step(tmp_path: Path) -> None:
    """checkpoint.dir at the same path on every node, but on each node's own disk (two directories
    here): every rank writes its part of a checkpoint where rank 0 made the step's folder, so the
    job failed at its first save, after the steps before it, with a traceback of the node that
    could not write. Now both nodes stop before the first step, naming the key and the fix."""
    corpus = make_corpus(tmp_path / "corpus")
    shared = tmp_path / "shared"  # the data cache on shared storage, the checkpoints not
    config = write_config(
        tmp_path / "c.yaml",
        corpus,
        shared / "unused",
        train={"steps": STEPS},
        data={"cache_dir": str(shared / "cache")},
        checkpoint={"save_every": 1},
        logging={"log_every": 1, "eval_every": STEPS, "tensorboard": False},
    )
    local = [tmp_path / f"node{node}-disk" / "run" for node in (0, 1)]
    runs = _run_two_nodes(config, RUN_TIMEOUT_S, [[f"checkpoint.dir={d}"] for d in local])
    for node, run in enumerate(runs):
        assert run.returncode != 0, f"node {node} trained:\n{run.stdout[-3000:]}"
        errors = [line for line in run.stdout.splitlines() if "pretrain_vikhr.py: error:" in line]
        assert len(errors) == 1, run.stdout[-3000:]
        assert f"checkpoint.dir = {local[node]}" in errors[0]
        assert "rank 1" in errors[0] and "every node sees at the same path" in errors[0]
        assert "step      1" not in run.stdout  # refused before training, not at the first save
    assert not any(d.exists() for d in local)  # the refused start leaves no run behind


@pytest.mark.distributed
def test_a_node_that_fails_its_setup_ends_the_others_at_the_join_timeout(tmp_path: Path) -> None:
    """Node 1 meets an error in its setup (a path missing there) and ends; node 0 had passed its own
    and waited for it in the process group's start for the hour of a collective, silent. Now it
    stops after parallel.join_timeout_minutes, naming the rank that did not come."""
    corpus = make_corpus(tmp_path / "corpus")
    config = _small_job(tmp_path / "c.yaml", corpus, tmp_path / "run")
    join_timeout_s = 15
    missing = tmp_path / "not-on-node1"
    started = time.monotonic()
    runs = _run_two_nodes(
        config,
        RUN_TIMEOUT_S,
        [[f"parallel.join_timeout_minutes={join_timeout_s / 60}"], [f"kl.reference={missing}"]],
    )
    assert time.monotonic() - started < RUN_TIMEOUT_S / 2
    assert runs[1].returncode != 0 and str(missing) in runs[1].stdout
    assert runs[0].returncode != 0
    errors = [line for line in runs[0].stdout.splitlines() if "pretrain_vikhr.py: error:" in line]
    assert len(errors) == 1, runs[0].stdout[-3000:]
    assert "1 of 2 ranks did not join the job" in errors[0] and "(rank 1)" in errors[0]
    assert "parallel.join_timeout_minutes = 0.25" in errors[0]
