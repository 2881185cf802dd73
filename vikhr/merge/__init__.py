"""Merging two HF checkpoints by SLERP or linear interpolation (see vikhr.merge.checkpoint)."""
