"""Distributed start-up that works under `torchrun` and as a plain single process.

GPU runs use nccl with one device per local rank; CPU runs use gloo and the megatron-core
compatibility layer (vikhr.runtime.cpu_compat). Megatron's model-parallel groups and its
RNG tracker are set up here, so model code can assume both exist.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from vikhr.errors import VikhrError
from vikhr.runtime import cpu_compat
from vikhr.runtime.megatron import require_megatron


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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU, CUDA and megatron's per-TP-rank RNG tracker)."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def init_distributed(tp_size: int = 1, seed: int = 1234, device: str = "auto") -> DistEnv:
    """Initialise torch.distributed and megatron-core's parallel state, then seed.

    Reads RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); without them it starts a
    one-process group. `device` is "auto" (CUDA when available), "cuda" or "cpu".
    """
    require_megatron()
    from megatron.core import parallel_state

    if device not in ("auto", "cuda", "cpu"):
        raise VikhrError(f"device must be auto, cuda or cpu, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise VikhrError("device=cuda was asked for but torch sees no CUDA device; use device=cpu")
    if not use_cuda:
        cpu_compat.apply(force=torch.cuda.is_available())

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size % tp_size != 0:
        raise VikhrError(f"tensor parallel size {tp_size} does not divide the world size {world_size}")

    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")

    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        elif world_size == 1:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            raise VikhrError("WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with torchrun")

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp_size)
    seed_everything(seed)

    return DistEnv(
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


def shutdown() -> None:
    """Tear down megatron's groups and the process group (safe to call twice)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
