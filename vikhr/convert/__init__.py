"""HF <-> Megatron checkpoint conversion for the Mistral/Llama/Qwen2/Qwen3 layouts, with TP resharding."""

from typing import Any

__all__ = [
    "hf_config_to_model_config",
    "hf_to_megatron",
    "load_hf_weights",
    "megatron_to_hf",
    "model_config_to_hf_config",
]


def __getattr__(name: str) -> Any:
    # The converter imports torch: load it on first use, so that `vikhr --help` stays light.
    if name in __all__:
        from vikhr.convert import mistral

        return getattr(mistral, name)
    raise AttributeError(f"module 'vikhr.convert' has no attribute {name!r}")
