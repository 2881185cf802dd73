"""HF <-> Megatron checkpoint conversion for the Mistral/Llama layout, with TP resharding."""

from vikhr.convert.mistral import (
    hf_config_to_model_config,
    hf_to_megatron,
    megatron_to_hf,
    model_config_to_hf_config,
)

__all__ = ["hf_config_to_model_config", "hf_to_megatron", "megatron_to_hf", "model_config_to_hf_config"]
