"""The trainer (continued pre-training and SFT) on megatron-core: config, data, checkpoints, the loop."""
