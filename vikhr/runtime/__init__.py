"""Process start-up: distributed groups, seeding, and megatron-core on CPU."""

from vikhr.runtime.distributed import DistEnv, init_distributed, seed_everything, shutdown

__all__ = ["DistEnv", "init_distributed", "seed_everything", "shutdown"]
