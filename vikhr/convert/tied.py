"""Whether an HF model's LM head is tied to its embedding, read as transformers reads config.json.

One reading for every verb that reads an HF model (conversion, adapt-vocab, merge): the key where
config.json has it, else the default of the model_type's config class, which ties for some families
(gemma, gpt2) and not for others (mistral, llama, qwen2, qwen3).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from vikhr.errors import VikhrError

TIE_WORD_EMBEDDINGS = "tie_word_embeddings"


def ties_word_embeddings(cfg: dict[str, Any], config_json: str | Path) -> bool:
    """Whether transformers ties the LM head of the model whose config.json (`config_json`, named in
    errors) parsed to `cfg` to its embedding. A value other than true or false (a string "false",
    which Python reads as true, a number, null) is a VikhrError naming the file and the key."""
    if TIE_WORD_EMBEDDINGS in cfg:
        value = cfg[TIE_WORD_EMBEDDINGS]
        if not isinstance(value, bool):
            raise VikhrError(
                f"{config_json}: {TIE_WORD_EMBEDDINGS} must be true or false, got {json.dumps(value)}: "
                "write true or false, without quotes"
            )
        return value
    return family_ties_by_default(cfg.get("model_type"))


@functools.cache
def family_ties_by_default(model_type: Any) -> bool:
    """The tie_word_embeddings of `model_type`'s transformers config class: what a config.json without
    the key gets. A model_type transformers does not know is untied (its base config has no such
    attribute, and transformers' modelling reads a config without it as untied)."""
    from transformers import AutoConfig

    try:
        defaults = AutoConfig.for_model(str(model_type))
    except (ValueError, KeyError, TypeError):
        return False
    return getattr(defaults, TIE_WORD_EMBEDDINGS, False) is True


def how_tying_is_set(cfg: dict[str, Any]) -> str:
    """Where `cfg`'s tying comes from, after "config.json": the key, or the family's default where the
    key is left out (a message saying "has tie_word_embeddings false" sent the user to a key not there)."""
    tied = ties_word_embeddings(cfg, "config.json")
    if TIE_WORD_EMBEDDINGS in cfg:
        return f"has {TIE_WORD_EMBEDDINGS} {json.dumps(tied)}"
    return (
        f"leaves {TIE_WORD_EMBEDDINGS} out, which model_type {cfg.get('model_type')!r} reads as "
        f"{json.dumps(tied)}"
    )
