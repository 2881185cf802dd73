"""vikhr.runtime: megatron version pin, the CPU compatibility layer, single-process start-up."""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterator

import pytest
import torch

from vikhr.errors import VikhrError
from vikhr.runtime import cpu_compat, init_distributed, shutdown
from vikhr.runtime import megatron as vmegatron


@pytest.fixture
def single_process() -> Iterator[None]:
    yield
    shutdown()
    cpu_compat.remove()


def test_megatron_version_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    assert vmegatron.megatron_version_problem() is None
    real = md.version
    monkeypatch.setattr(md, "version", lambda d: "0.15.0" if d == "megatron-core" else real(d))
    problem = vmegatron.megatron_version_problem()
    assert "0.15.0" in problem and vmegatron.MEGATRON_CORE_VERSION in problem
    with pytest.raises(VikhrError, match="pip install megatron-core=="):
        vmegatron.require_megatron()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU layer is a no-op where CUDA exists")
def test_cpu_compat_redirects_cuda_requests(single_process: None) -> None:
    cpu_compat.apply()
    assert torch.cuda.current_device() == torch.device("cpu")
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.ones(1).cuda().device.type == "cpu"
    assert torch.ones(1).to("cuda").device.type == "cpu"
    cpu_compat.remove()
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(1, device="cuda")


def test_rng_tracker_forks_are_reproducible_and_isolated(single_process: None) -> None:
    init_distributed(tp_size=1, seed=7, device="cpu")
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before), "forking must not disturb the default stream"
    with tracker.fork():
        b = torch.rand(4)
    assert not torch.equal(a, b), "the forked stream must advance"
    init_distributed(tp_size=1, seed=7, device="cpu")
    with get_cuda_rng_tracker().fork():
        a2 = torch.rand(4)
    assert torch.equal(a, a2), "same seed, same forked stream"


def test_single_process_start_and_seeding(single_process: None) -> None:
    env = init_distributed(tp_size=1, seed=3, device="cpu")
    assert (env.rank, env.world_size, env.tp_size, env.dp_size) == (0, 1, 1, 1)
    assert env.device == torch.device("cpu") and env.backend == "gloo" and env.is_main
    x = torch.rand(3)
    init_distributed(tp_size=1, seed=3, device="cpu")
    assert torch.equal(torch.rand(3), x)


def test_tp_must_divide_world(single_process: None) -> None:
    with pytest.raises(VikhrError, match="does not divide the world size"):
        init_distributed(tp_size=2, device="cpu")
