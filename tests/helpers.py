"""Test helpers shared by several test files (imported as `from tests.helpers import ...`).

Tiny HF models take their shape from vikhr's presets through the converter's
`model_config_to_hf_config`, so that the tests and vikhr agree on what a Mistral config holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vikhr.convert.mistral import model_config_to_hf_config
from vikhr.model import preset


def tiny_hf_config(
    vocab_size: int, arch: str = "mistral", tied: bool = False, preset_name: str = "tiny", **overrides: Any
) -> Any:
    """A transformers config of the preset's shape (`overrides`: ModelConfig fields) as Mistral or Llama."""
    from transformers import AutoConfig

    fields = model_config_to_hf_config(preset(preset_name, vocab_size=vocab_size, **overrides))
    fields["tie_word_embeddings"] = tied
    if arch == "llama":
        fields.update(model_type="llama", architectures=["LlamaForCausalLM"])
        fields.pop("sliding_window")
    elif arch != "mistral":
        raise ValueError(f"arch {arch!r}: mistral or llama")
    return AutoConfig.for_model(**fields)


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
