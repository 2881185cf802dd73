"""Test helpers shared by several test files (imported as `from tests.helpers import ...`).

Tiny HF models take their shape from vikhr's presets through the converter's
`model_config_to_hf_config`, so that the tests and vikhr agree on what each family's config holds.
`FAMILIES` names tiny shapes of each family the converter knows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vikhr.convert.mistral import model_config_to_hf_config
from vikhr.model import preset

# family -> (HF architecture, ModelConfig fields over the "tiny" preset: hidden 64, 4 heads of 16).
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "mistral": ("mistral", {}),
    # theta 500k and llama3 scaling; an original context of 64 puts the 8 frequencies of a 16-wide
    # head in all three bands (kept, interpolated, divided by the factor).
    "llama3": (
        "llama",
        {
            "rope_theta": 500_000.0,
            "rope_scaling_factor": 8.0,
            "rope_low_freq_factor": 1.0,
            "rope_high_freq_factor": 4.0,
            "rope_original_max_seq_len": 64,
        },
    ),
    "qwen2": ("qwen2", {"qkv_bias": True, "tie_embeddings": True, "norm_eps": 1e-6, "rope_theta": 1e6}),
    # 8 heads of 16 on a 64-wide residual stream: head_dim is not hidden / heads.
    "nemo": ("mistral", {"num_attention_heads": 8, "num_kv_heads": 2, "kv_channels": 16}),
}


def tiny_hf_config(
    vocab_size: int, arch: str = "mistral", tied: bool = False, preset_name: str = "tiny", **overrides: Any
) -> Any:
    """A transformers config of the preset's shape (`overrides`: ModelConfig fields) as Mistral,
    Llama or Qwen2 (which has QKV biases)."""
    from transformers import AutoConfig

    if arch not in ("mistral", "llama", "qwen2"):
        raise ValueError(f"arch {arch!r}: mistral, llama or qwen2")
    if arch == "qwen2":
        overrides["qkv_bias"] = True
    if arch == "llama":
        overrides["sliding_window"] = None
    overrides["tie_embeddings"] = tied or overrides.get("tie_embeddings", False)
    shape = preset(preset_name, vocab_size=vocab_size, **overrides)
    return AutoConfig.for_model(**model_config_to_hf_config(shape, {"model_type": arch}))


def tiny_hf_model(
    path: Path,
    vocab_size: int,
    arch: str = "mistral",
    tied: bool = False,
    seed: int = 0,
    max_shard_size: str = "10GB",
    weights: Callable[[torch.nn.Module], None] | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """A random tiny HF model saved (safetensors) at `path`; the model, in eval mode.

    `weights` changes the parameters (under no_grad) before saving; `max_shard_size` as in
    `save_pretrained` (a small one gives a sharded checkpoint with an index).
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(vocab_size, arch, tied, **overrides)).eval()
    if weights is not None:
        with torch.no_grad():
            weights(model)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    return model
