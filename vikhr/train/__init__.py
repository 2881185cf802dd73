"""Continued pre-training on megatron-core: config, data, checkpoints, monitoring, the loop."""
