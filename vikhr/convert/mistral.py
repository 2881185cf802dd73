"""HF Mistral/Llama/Qwen2/Qwen3 checkpoints <-> vikhr's megatron-core checkpoints, any tensor-parallel size.

The megatron side is a model-only checkpoint directory of the trainer (vikhr.train.checkpoint):
`meta.json` + `model_tp{r:02d}.safetensors`, usable as `model.init` or `kl.reference`.
Parameter layout (see vikhr.model.config):

    HF                                         megatron (per TP rank r of T)
    model.embed_tokens.weight [V, H]           embedding.word_embeddings.weight  rows of V_pad, chunk r
    q/k/v_proj.weight                          self_attention.linear_qkv.weight  per KV group g:
                                               [q heads of g; k_g; v_g], groups chunk r
    q/k/v_proj.bias (Qwen2)                    self_attention.linear_qkv.bias, the same grouping
    q_norm / k_norm [d] (Qwen3)                self_attention.q_layernorm / k_layernorm (replicated)
    o_proj.weight [H, Q·d]                     self_attention.linear_proj.weight columns chunk r
    gate_proj / up_proj [F, H]                 mlp.linear_fc1.weight  [gate chunk r; up chunk r]
    down_proj [H, F]                           mlp.linear_fc2.weight  columns chunk r
    input_layernorm / post_attention_layernorm input_layernorm / pre_mlp_layernorm (replicated)
    model.norm.weight                          decoder.final_layernorm.weight
    lm_head.weight [V, H]                      output_layer.weight  rows of V_pad, chunk r
                                               (none when tie_word_embeddings: the embedding serves)

Padded vocabulary rows are zero. Before anything is written, every tensor of the input is
accounted for: each one must be a tensor of this layout with the shape the config implies (a
layer beyond the config's count, a tensor of another size or an unknown tensor is an error), and
none may be missing. Every output tensor's name, dtype and shape follow from the input headers
and the config, so each output file's header is written first; then tensors are read one at a
time from their shards and each converted tensor's data are written (once) before the next is
made, so a conversion holds about one tensor, the largest being the embedding or [gate; up],
whatever the number of layers.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import math
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from vikhr.adapt.safetensors_io import (
    Layout,
    SafetensorsHeader,
    SafetensorsWriter,
    checkpoint_headers,
    load_tensor,
    read_header,
    safetensors_dtype,
    torch_dtype,
)
from vikhr.atomic import output_dir, write_errors_as_os_errors
from vikhr.convert.tied import ties_word_embeddings
from vikhr.errors import (
    VikhrError,
    not_an_hf_model_dir,
    read_json_object,
    require_dir,
    require_output_dir,
)
from vikhr.model.config import ModelConfig, padded_vocab_size
from vikhr.model.tp_layout import is_vocab_rows, merge, shard, split_of

_MEG_LAYER = "decoder.layers.{i}."
_HF_LAYER = "model.layers.{i}."
_HF_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.")
_MEG_LAYER_RE = re.compile(r"decoder\.layers\.(\d+)\.")
# A buffer some older Llama exports save; transformers recomputes it from rope_theta.
_HF_DERIVED_RE = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
_POSITIVE_INTS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "vocab_size",
)
# The config fields that set each kind of tensor's shape (named in shape errors).
_HF_FAMILIES = ("mistral", "llama", "qwen2", "qwen3")
_HF_ARCHITECTURES = {
    "mistral": "MistralForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# transformers' config class of each family: its defaults are what a key config.json leaves out means.
_HF_CONFIG_CLASSES = {
    "mistral": "MistralConfig",
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
}
# The keys read with a default (the others are required).
_DEFAULTED_KEYS = (
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "rms_norm_eps",
    "initializer_range",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
)
# config.json's name of each ModelConfig field a tensor-parallel size must divide.
_HF_TP_KEYS = {
    "num_attention_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "ffn_hidden_size": "intermediate_size",
}
_HF_SHAPE_FIELDS = {
    "embed_tokens": "vocab_size, hidden_size",
    "lm_head": "vocab_size, hidden_size",
    "self_attn.": "hidden_size, num_attention_heads, num_key_value_heads, head_dim",
    "mlp.": "hidden_size, intermediate_size",
    "norm": "hidden_size",
}
_MEG_SHAPE_FIELDS = {
    "embedding": "vocab_size, hidden_size",
    "output_layer": "vocab_size, hidden_size",
    "self_attention": "hidden_size, num_attention_heads, num_kv_heads, kv_channels",
    "mlp.": "hidden_size, ffn_hidden_size",
    "norm": "hidden_size",
}


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    """The parsed `config.json` of an HF model directory; VikhrError naming the file if it is unusable."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise not_an_hf_model_dir(model_dir)
    return read_json_object(path)


@functools.cache
def _transformers_defaults(family: str) -> dict[str, Any]:
    """The keyword defaults of transformers' config class for `family` (`_DEFAULTED_KEYS` and the
    default RoPE θ): what transformers reads where config.json leaves a key out."""
    import inspect

    import transformers

    cls = getattr(transformers, _HF_CONFIG_CLASSES[family])
    params = inspect.signature(cls.__init__).parameters
    defaults = {k: params[k].default for k in _DEFAULTED_KEYS if k in params}
    # transformers 4 takes rope_theta as an argument, 5 a class attribute (rope_parameters unset).
    theta = params["rope_theta"].default if "rope_theta" in params else getattr(cls, "default_theta", None)
    defaults["rope_theta"] = 10000.0 if theta in (None, inspect.Parameter.empty) else float(theta)
    return defaults


def hf_config_to_model_config(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """ModelConfig from an HF Mistral/Llama/Qwen2/Qwen3 config.json dict (`where`: the file, in errors);
    a key it leaves out has the default of the family's transformers config class."""
    arch = (hf.get("architectures") or ["?"])[0]
    family = hf.get("model_type")
    if family not in _HF_FAMILIES:
        raise VikhrError(f"{where}: model_type {family!r} ({arch}) is not mistral, llama, qwen2 or qwen3")
    for key in _POSITIVE_INTS:
        value = hf.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise VikhrError(f"{where}: {key} must be a positive integer, got {value!r}")
    defaults = _transformers_defaults(family)
    hf = {**{k: v for k, v in defaults.items() if k != "rope_theta"}, **hf}
    heads = hf["num_attention_heads"]
    # Null as absent; no default (Mistral, Llama, Qwen2): derived from the width, as transformers does.
    head_dim = hf.get("head_dim") or defaults.get("head_dim") or hf["hidden_size"] // heads
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise VikhrError(f"{where}: head_dim must be a positive integer, got {head_dim!r}")
    if hf.get("mlp_bias") or (family != "qwen2" and hf.get("attention_bias")):
        raise VikhrError(
            f"{where}: attention_bias / mlp_bias are not supported (Mistral/Llama/Qwen3 have none)"
        )
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):  # the SwiGLU MLP of all four families
        raise VikhrError(f"{where}: hidden_act {hf.get('hidden_act')!r} is not supported (only silu)")
    sliding_window = _positive(hf, "sliding_window", None, where, integer=True, optional=True)
    max_seq_len = _positive(hf, "max_position_embeddings", None, where, integer=True)
    if family in ("qwen2", "qwen3"):
        _refuse_sliding_layers(hf, family, max_seq_len, where)
        sliding_window = None
    elif family == "llama":
        sliding_window = None  # transformers' Llama has no sliding window: the key is ignored there too
    return ModelConfig(
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=heads,
        num_kv_heads=_positive(hf, "num_key_value_heads", None, where, integer=True, optional=True) or heads,
        vocab_size=hf["vocab_size"],
        max_seq_len=max_seq_len,
        sliding_window=sliding_window,
        norm_eps=_positive(hf, "rms_norm_eps", None, where),
        init_std=_positive(hf, "initializer_range", None, where),
        kv_channels=None if head_dim * heads == hf["hidden_size"] else head_dim,
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        tie_embeddings=ties_word_embeddings(hf, where),
        **_hf_rope_fields(hf, where, defaults["rope_theta"]),
    )


def _refuse_sliding_layers(hf: dict[str, Any], family: str, max_seq_len: int, where: str) -> None:
    """VikhrError naming the layers transformers' Qwen2/Qwen3 run with a sliding window, which vikhr's
    model (one window for every layer) cannot run. As transformers decides: none unless
    use_sliding_window and a sliding_window are set; then those `layer_types` calls
    "sliding_attention", or where the config lists no layer_types, those from max_window_layers on.
    A window of max_position_embeddings or more takes no key out of reach: no layer slides."""
    window = hf.get("sliding_window")  # (checked by the caller: a positive integer or null)
    if not hf.get("use_sliding_window") or window is None or window >= max_seq_len:
        return
    layer_types = hf.get("layer_types")
    if isinstance(layer_types, list):
        sliding = [i for i, kind in enumerate(layer_types) if kind == "sliding_attention"]
        rule = "its layer_types"
    else:
        first = hf.get("max_window_layers")
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise VikhrError(f"{where}: max_window_layers must be a non-negative integer, got {first!r}")
        sliding = list(range(first, hf["num_hidden_layers"]))
        rule = f"max_window_layers {first}"
    if sliding:
        raise VikhrError(
            f"{where}: use_sliding_window with sliding_window {window} (below max_position_embeddings "
            f"{max_seq_len}) makes {len(sliding)} of {hf['num_hidden_layers']} layers slide ({rule}; the "
            f"first is layer {sliding[0]}); {family} layers with a sliding window are not supported"
        )


def _positive(
    hf: dict[str, Any], key: str, default: Any, where: str, integer: bool = False, optional: bool = False
) -> Any:
    """config.json's `key` (`default` when absent), checked to be a positive (finite) number, or
    null when `optional`: a string or null elsewhere failed deep inside the model's checks."""
    value = hf.get(key, default)
    if value is None and optional:
        return None
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not 0 < value < math.inf:
        raise VikhrError(
            f"{where}: {key} must be a positive {'integer' if integer else 'number'}, got {value!r}"
        )
    return value


def _hf_rope_fields(hf: dict[str, Any], where: str, default_theta: float) -> dict[str, Any]:
    """ModelConfig's RoPE fields from `rope_theta` + `rope_scaling` (transformers 4; θ may be in
    `rope_scaling` too) or `rope_parameters` (transformers 5), θ `default_theta` where none gives
    one; plain RoPE and Llama-3.1's "llama3" scaling are known. A config giving both forms must give
    the same RoPE in each (which one transformers follows has changed between its versions)."""
    forms = []
    if "rope_theta" in hf or hf.get("rope_scaling") is not None:
        scaling = hf.get("rope_scaling") or {}
        if not isinstance(scaling, dict):
            raise VikhrError(f"{where}: rope_scaling must be a mapping or null, got {scaling!r}")
        theta = hf.get("rope_theta")
        # transformers 5's `config.rope_scaling` holds θ too, and 5 reads θ from there (4 ignores it).
        if "rope_theta" in scaling:
            if theta is not None and scaling["rope_theta"] != theta:
                raise VikhrError(
                    f"{where}: rope_theta {theta!r} but rope_scaling's rope_theta {scaling['rope_theta']!r} "
                    "(transformers 4 reads the former, 5 the latter): keep one of the two"
                )
            theta = scaling["rope_theta"]
        form = _rope_form(theta, scaling, where, default_theta)
        forms.append(("rope_theta / rope_scaling", form))
    params = hf.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict) or (params and all(isinstance(v, dict) for v in params.values())):
            raise VikhrError(
                f"{where}: rope_parameters must be one mapping (per-layer-type RoPE is not supported), "
                f"got {params!r}"
            )
        theta = params.get("rope_theta", hf.get("rope_theta"))
        forms.append(("rope_parameters", _rope_form(theta, params, where, default_theta)))
    if len(forms) == 2 and forms[0][1] != forms[1][1]:
        (a, first), (b, second) = forms
        raise VikhrError(f"{where}: {a} give {first} but {b} {second}: keep one of the two forms")
    return forms[-1][1] if forms else {"rope_theta": default_theta}


def _rope_form(theta: Any, rope: dict[str, Any], where: str, default_theta: float) -> dict[str, Any]:
    """The RoPE fields of one form: its θ (`default_theta` when absent) and its scaling."""
    theta = default_theta if theta is None else theta
    _positive({"rope_theta": theta}, "rope_theta", None, where)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in ("default", None):
        return {"rope_theta": float(theta)}
    if kind != "llama3":
        raise VikhrError(f"{where}: rope_type {kind!r} is not supported (only default and llama3 RoPE)")
    try:
        return {
            "rope_theta": float(theta),
            "rope_scaling_factor": float(rope["factor"]),
            "rope_low_freq_factor": float(rope["low_freq_factor"]),
            "rope_high_freq_factor": float(rope["high_freq_factor"]),
            "rope_original_max_seq_len": int(rope["original_max_position_embeddings"]),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise VikhrError(
            f"{where}: llama3 rope scaling lacks a usable {e} (factor, low_freq_factor, ...)"
        ) from e


def _hf_family(cfg: ModelConfig, template_type: Any) -> str:
    """The transformers architecture that runs `cfg`: Qwen3 for QK-norm, Qwen2 for QKV biases, else
    the template's (Llama or Mistral), else Llama for llama3 RoPE and Mistral otherwise (sliding
    windows: Mistral)."""
    if cfg.qk_norm:
        if cfg.qkv_bias or cfg.sliding_window is not None:
            raise VikhrError(
                "qk_norm with qkv_bias or a sliding_window has no HF architecture here (Qwen3 has neither)"
            )
        return "qwen3"
    if cfg.qkv_bias:
        if cfg.sliding_window is not None:
            raise VikhrError("qkv_bias with a sliding_window has no HF architecture here (Qwen2's differs)")
        return "qwen2"
    family = template_type if template_type in ("mistral", "llama") else None
    family = family or ("llama" if cfg.rope_scaling_factor is not None else "mistral")
    return "mistral" if cfg.sliding_window is not None else family


def model_config_to_hf_config(cfg: ModelConfig, template: dict[str, Any] | None = None) -> dict[str, Any]:
    """An HF Mistral/Llama/Qwen2/Qwen3 config.json dict for `cfg` (`template`'s unrelated fields kept)."""
    out = dict(template or {})
    family = _hf_family(cfg, out.get("model_type"))
    out.update(
        {
            "architectures": [_HF_ARCHITECTURES[family]],
            "model_type": family,
            "num_hidden_layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.ffn_hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_seq_len,
            "rope_theta": cfg.rope_theta,
            "sliding_window": cfg.sliding_window,
            "rms_norm_eps": cfg.norm_eps,
            "initializer_range": cfg.init_std,
            "hidden_act": "silu",
            "tie_word_embeddings": cfg.tie_embeddings,
        }
    )
    if family == "llama":
        out.pop("sliding_window")
        out.update(attention_bias=False, mlp_bias=False)
    if family in ("qwen2", "qwen3"):
        out["use_sliding_window"] = False
        if "layer_types" in out:  # a source's "sliding_attention" without a window fails in transformers
            out["layer_types"] = ["full_attention"] * cfg.num_layers
    if family == "qwen3":
        out.update(attention_bias=False, sliding_window=None)
    out.pop("rope_parameters", None)
    out.pop("rope_scaling", None)
    if cfg.rope_scaling_factor is not None:
        out["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": cfg.rope_scaling_factor,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_seq_len,
        }
    out.setdefault("bos_token_id", 1)
    out.setdefault("eos_token_id", 2)
    out.setdefault("torch_dtype", "float32")
    return out


def hf_tensor_shapes(cfg: ModelConfig, with_lm_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor of an HF Mistral/Llama/Qwen2/Qwen3 checkpoint of shape `cfg`, with its shape."""
    h, f, v = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {EMBED: (v, h)}
    for i in range(cfg.num_layers):
        p = _HF_LAYER.format(i=i)
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, q),
                p + "post_attention_layernorm.weight": (h,),
                p + "mlp.gate_proj.weight": (f, h),
                p + "mlp.up_proj.weight": (f, h),
                p + "mlp.down_proj.weight": (h, f),
            }
        )
        if cfg.qkv_bias:
            shapes.update(
                {
                    p + "self_attn.q_proj.bias": (q,),
                    p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.bias": (kv,),
                }
            )
        if cfg.qk_norm:
            shapes.update(
                {
                    p + "self_attn.q_norm.weight": (cfg.head_dim,),
                    p + "self_attn.k_norm.weight": (cfg.head_dim,),
                }
            )
    shapes["model.norm.weight"] = (h,)
    if with_lm_head:
        shapes[LM_HEAD] = (v, h)
    return shapes


def megatron_tensor_shapes(cfg: ModelConfig, padded_vocab: int, tp: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of one tensor-parallel rank's file of a vikhr megatron checkpoint, with its shape."""
    h, f = cfg.hidden_size, cfg.ffn_hidden_size // tp
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {"embedding.word_embeddings.weight": (padded_vocab // tp, h)}
    for i in range(cfg.num_layers):
        p = _MEG_LAYER.format(i=i)
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "self_attention.linear_qkv.weight": ((q + 2 * kv) // tp, h),
                p + "self_attention.linear_proj.weight": (h, q // tp),
                p + "pre_mlp_layernorm.weight": (h,),
                p + "mlp.linear_fc1.weight": (2 * f, h),
                p + "mlp.linear_fc2.weight": (h, f),
            }
        )
        if cfg.qkv_bias:
            shapes[p + "self_attention.linear_qkv.bias"] = ((q + 2 * kv) // tp,)
        if cfg.qk_norm:
            for x in "qk":
                shapes[p + f"self_attention.{x}_layernorm.weight"] = (cfg.head_dim,)
    shapes["decoder.final_layernorm.weight"] = (h,)
    if not cfg.tie_embeddings:
        shapes["output_layer.weight"] = (padded_vocab // tp, h)
    return shapes


def _account_for_tensors(
    found: dict[str, SafetensorsHeader],
    expected: dict[str, tuple[int, ...]],
    config: str,
    layers: tuple[re.Pattern[str], str, int],
    shape_fields: dict[str, str],
    derived: re.Pattern[str] | None = None,
) -> None:
    """VikhrError unless `found` (tensor name → its file) holds exactly the `expected` tensors and shapes.

    `config` names what sets the shapes; `layers`: the layer-name pattern, the config field of the
    layer count and its value; `derived` matches buffers that are recomputed rather than converted.
    """
    layer_re, layers_field, num_layers = layers
    for name, header in found.items():
        if name in expected:
            shape = header.tensors[name].shape
            if shape != expected[name]:
                fields = next((f for key, f in shape_fields.items() if key in name), "its sizes")
                raise VikhrError(
                    f"{header.path}: {name} has shape {list(shape)} but {config} implies "
                    f"{list(expected[name])} (check {fields}: the config and the weights disagree)"
                )
        elif derived is None or not derived.fullmatch(name):
            layer = layer_re.match(name)
            if layer and int(layer.group(1)) >= num_layers:
                raise VikhrError(
                    f"{header.path}: {name} is in layer {layer.group(1)} but {config} has "
                    f"{layers_field} = {num_layers} (the config and the weights disagree)"
                )
            raise VikhrError(
                f"{header.path}: unknown tensor {name} (not part of the Mistral/Llama/Qwen2/Qwen3 layout)"
            )
    missing = [n for n in expected if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise VikhrError(f"{config} implies tensor {missing[0]}{more}, which the weights lack")


class _HFCheckpoint:
    """The tensors of an HF safetensors checkpoint, each accounted for against its config."""

    def __init__(self, model_dir: Path, cfg: ModelConfig) -> None:
        self.where: dict[str, SafetensorsHeader] = {}
        for header in checkpoint_headers(model_dir):
            for name in header.tensors:
                if name in self.where:
                    raise VikhrError(f"{header.path}: tensor {name} is also in {self.where[name].path.name}")
                self.where[name] = header
        self.tied = cfg.tie_embeddings
        # A tied checkpoint may still hold a copy of the embedding as lm_head (checked when read).
        expected = hf_tensor_shapes(cfg, with_lm_head=not self.tied or LM_HEAD in self.where)
        layers = (_HF_LAYER_RE, "num_hidden_layers", cfg.num_layers)
        config = str(model_dir / "config.json")
        _account_for_tensors(self.where, expected, config, layers, _HF_SHAPE_FIELDS, _HF_DERIVED_RE)

    def get(self, name: str) -> torch.Tensor:
        header = self.where[name]
        return load_tensor(header.tensors[name], header.path)

    def check_tied_lm_head(self) -> None:
        """VikhrError if a tied checkpoint's stored copy of the LM head is not its embedding (the
        embedding read again here rather than kept through the whole conversion)."""
        if LM_HEAD in self.where and not torch.equal(self.get(LM_HEAD), self.get(EMBED)):
            raise VikhrError(
                f"{self.where[LM_HEAD].path}: {LM_HEAD} differs from {EMBED} but config.json has "
                "tie_word_embeddings=true (fix the config)"
            )


def check_hf_tensors(model_dir: Path, hf: dict[str, Any]) -> None:
    """VikhrError unless an HF checkpoint holds exactly the tensors (and shapes) its config.json
    implies; a config of a kind the converter does not take (another RoPE scaling, a sliding
    window) is not checked."""
    try:
        cfg = hf_config_to_model_config(hf, str(model_dir / "config.json"))
    except VikhrError:
        return
    _HFCheckpoint(model_dir, cfg)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def _qkv_full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Megatron's fused QKV: for each KV group, its query heads, then its key, then its value."""
    d, groups = cfg.head_dim, cfg.num_kv_heads
    per = cfg.num_attention_heads // groups
    rest = q.shape[1:]  # (H,) for weights, () for biases
    q = q.reshape(groups, per * d, *rest)
    k = k.reshape(groups, d, *rest)
    v = v.reshape(groups, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def _qkv_parts(qkv: torch.Tensor, cfg: ModelConfig) -> Iterator[torch.Tensor]:
    """q, then k, then v of megatron's fused QKV, each copied out when asked for (the inverse of
    `_qkv_full`)."""
    d, groups = cfg.head_dim, cfg.num_kv_heads
    per = cfg.num_attention_heads // groups
    rest = qkv.shape[1:]
    for part in qkv.reshape(groups, (per + 2) * d, *rest).split([per * d, d, d], dim=1):
        yield part.reshape(-1, *rest)


def _named(names: list[str], tensors: Iterator[torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, next tensor) for each name, keeping no reference to a tensor once it is handed on."""
    for name in names:
        yield name, next(tensors)


def _tensor_pairs(cfg: ModelConfig) -> Iterator[tuple[str, list[str]]]:
    """(megatron name, the HF tensors it is made of) in the order both conversions write them: each
    output file's header is written from this before any tensor is made."""
    yield "embedding.word_embeddings.weight", [EMBED]
    for i in range(cfg.num_layers):
        hf, meg = _HF_LAYER.format(i=i), _MEG_LAYER.format(i=i)
        yield meg + "input_layernorm.weight", [hf + "input_layernorm.weight"]
        yield meg + "self_attention.linear_qkv.weight", [hf + f"self_attn.{x}_proj.weight" for x in "qkv"]
        if cfg.qkv_bias:
            yield meg + "self_attention.linear_qkv.bias", [hf + f"self_attn.{x}_proj.bias" for x in "qkv"]
        if cfg.qk_norm:
            for x in "qk":
                yield meg + f"self_attention.{x}_layernorm.weight", [hf + f"self_attn.{x}_norm.weight"]
        yield meg + "self_attention.linear_proj.weight", [hf + "self_attn.o_proj.weight"]
        yield meg + "pre_mlp_layernorm.weight", [hf + "post_attention_layernorm.weight"]
        yield meg + "mlp.linear_fc1.weight", [hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"]
        yield meg + "mlp.linear_fc2.weight", [hf + "mlp.down_proj.weight"]
    yield "decoder.final_layernorm.weight", ["model.norm.weight"]
    if not cfg.tie_embeddings:  # tied: transformers takes the LM head from the embedding
        yield "output_layer.weight", [LM_HEAD]


def _fused(meg: str, parts: list[torch.Tensor], cfg: ModelConfig, v_pad: int) -> torch.Tensor:
    """The whole megatron tensor `meg` from its HF `parts` (in `_tensor_pairs`' order)."""
    if is_vocab_rows(meg):
        return _pad_rows(parts[0], v_pad)
    if ".linear_qkv." in meg:
        return _qkv_full(*parts, cfg)
    return torch.cat(parts) if len(parts) > 1 else parts[0]  # [gate; up], or the tensor itself


def _unfused(meg: str, full: torch.Tensor, cfg: ModelConfig) -> Iterator[torch.Tensor]:
    """The HF tensors of the whole megatron tensor `meg`, one at a time (the inverse of `_fused`)."""
    if is_vocab_rows(meg):
        yield full[: cfg.vocab_size]
    elif ".linear_qkv." in meg:
        yield from _qkv_parts(full, cfg)
    elif split_of(meg) == "fc1":
        yield from full.chunk(2, dim=0)
    else:
        yield full


def _megatron_full_tensors(
    src: _HFCheckpoint, cfg: ModelConfig, v_pad: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """(megatron name, full unsharded tensor) in `_tensor_pairs`' order (the split: vikhr.model.tp_layout).

    Each tensor is made only when the one before it is consumed, and no local keeps it afterwards:
    a name still bound would hold it while the next is built (an embedding or [gate; up] is 250
    or 224 MiB for Mistral-7B)."""
    for meg, hf_names in _tensor_pairs(cfg):
        yield meg, _fused(meg, [src.get(n) for n in hf_names], cfg, v_pad)
    if cfg.tie_embeddings:
        src.check_tied_lm_head()  # a stored copy of the LM head must equal the embedding


def load_hf_weights(model: torch.nn.Module, hf_dir: str | Path) -> None:
    """Give a megatron-core model built without tensor parallelism (`vikhr.model.build_gpt_model`,
    TP 1, its config `hf_config_to_model_config` of the directory's config.json) the weights of an
    HF safetensors checkpoint, without writing a vikhr checkpoint: the reader and tensor layout of
    `hf_to_megatron` (every tensor accounted for against config.json, a tied LM head checked, fused
    QKV and gate/up, padded vocabulary rows). VikhrError naming the directory on any mismatch."""
    from vikhr.train.checkpoint import load_model_tensors

    src = require_dir(hf_dir, "HF checkpoint directory")
    cfg = hf_config_to_model_config(read_hf_config(src), str(src / "config.json"))
    v_pad = model.embedding.word_embeddings.weight.shape[0]
    if v_pad < cfg.vocab_size:  # a tensor-parallel shard of the rows
        raise VikhrError(
            f"{src}: the model has {v_pad} embedding rows for a vocabulary of {cfg.vocab_size} (build it "
            "with tp_size 1, or convert with vikhr convert hf-to-megatron --tp N and load that)"
        )
    with torch.no_grad():
        load_model_tensors(model, dict(_megatron_full_tensors(_HFCheckpoint(src, cfg), cfg, v_pad)), src)


def _output_dtype(parts: list[tuple[Path, str, str]]) -> str:
    """The safetensors dtype of a tensor made of `parts` ((file, tensor name, safetensors dtype) each):
    torch's promotion, as torch.cat's. VikhrError naming the part whose dtype vikhr cannot read."""
    dtypes = []
    for path, name, dtype in parts:
        try:
            dtypes.append(torch_dtype(dtype))
        except VikhrError as e:
            raise VikhrError(f"{path}: tensor {name}: {e}") from None
    return safetensors_dtype(functools.reduce(torch.promote_types, dtypes))


def _megatron_layout(src: _HFCheckpoint, cfg: ModelConfig, v_pad: int, tp: int) -> Layout:
    """Each TP rank's file of `hf_to_megatron`: names, dtypes and shapes, in writing order."""
    shapes = megatron_tensor_shapes(cfg, v_pad, tp)
    layout = {}
    for meg, hf_names in _tensor_pairs(cfg):
        parts = [(src.where[n].path, n, src.where[n].tensors[n].dtype) for n in hf_names]
        layout[meg] = (_output_dtype(parts), shapes[meg])
    return layout


def hf_to_megatron(
    hf_dir: str | Path,
    out_dir: str | Path,
    tp_size: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Convert an HF Mistral/Llama/Qwen2/Qwen3 safetensors checkpoint into a vikhr megatron checkpoint
    (`progress`: a bar over the tensors when stderr is a terminal).

    The vocabulary rows are padded to the default multiple (128 × TP); a run with another
    `model.vocab_multiple` re-pads them when it loads the checkpoint.

    The HF directory's tokenizer file, if it has one, is copied with its companions (tokenizer
    config, chat template, configs: vikhr.convert.lineage.TOKENIZER_COMPANIONS) into the checkpoint's
    `tokenizer/` and recorded in meta.json relative to the checkpoint (`tokenizer`), with its
    config.json (`hf_config`) and generation_config.json (`hf_generation_config`), so that
    `megatron_to_hf` of this checkpoint, or of a run started from it, can export them again once
    the HF directory is deleted. A directory whose tokenizer is a GPT-2-style vocab.json and
    merges.txt alone records none: one warning line says how to write its tokenizer.json.
    """
    from vikhr.convert.lineage import TOKENIZER_DIR, tokenizer_files

    if tp_size < 1:
        raise VikhrError(f"tensor-parallel size (--tp) must be at least 1, got {tp_size}")
    src = require_dir(hf_dir, "HF checkpoint directory")
    hf_cfg = read_hf_config(src)
    cfg = hf_config_to_model_config(hf_cfg, str(src / "config.json"))
    cfg.validate()
    _check_tensor_parallel(cfg, tp_size, src / "config.json")
    out = Path(out_dir)
    _check_output(out, overwrite, inputs=[src])
    tokenizer = _source_tokenizer(src, cfg)
    checkpoint = _HFCheckpoint(src, cfg)
    v_pad = padded_vocab_size(cfg.vocab_size, tp_size)
    meta: dict[str, Any] = {
        "step": 0,
        "consumed_samples": 0,
        "tp": tp_size,
        "world_size": tp_size,
        "model": cfg.to_dict(),
        "padded_vocab_size": v_pad,
        "source": {"format": "hf", "path": str(src), "tied_embeddings": checkpoint.tied},
        "hf_config": hf_cfg,
    }
    if (src / "generation_config.json").is_file():  # sampling settings, pad and stop ids
        meta["hf_generation_config"] = read_json_object(src / "generation_config.json")
    # The tokenizer files go with the checkpoint: the HF directory is often deleted once converted.
    carried = tokenizer_files(tokenizer) if tokenizer is not None else {}
    if tokenizer is not None:
        meta["tokenizer"] = f"{TOKENIZER_DIR}/{tokenizer.name}"
    with output_dir(out) as tmp, write_errors_as_os_errors(out):
        if carried:
            (tmp / TOKENIZER_DIR).mkdir()
        for name, data in carried.items():
            (tmp / TOKENIZER_DIR / name).write_bytes(data)
        # One tensor in memory at a time, each written to every rank's file as it is made, after
        # the headers (each byte is written once).
        layout = _megatron_layout(checkpoint, cfg, v_pad, tp_size)
        with contextlib.ExitStack() as files:
            writers = [
                files.enter_context(SafetensorsWriter(tmp / f"model_tp{r:02d}.safetensors", layout))
                for r in range(tp_size)
            ]
            with _tensor_progress(len(layout), progress) as bar:
                for name, full in _megatron_full_tensors(checkpoint, cfg, v_pad):
                    for r, writer in enumerate(writers):
                        writer.add(name, shard(full, split_of(name), r, tp_size))
                    del full  # not held while the next one is made
                    bar.update()
            for writer in writers:
                writer.finish()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if tokenizer is None:
        _warn_of_vocab_and_merges(src, out)
    return out


def _source_tokenizer(src: Path, cfg: ModelConfig) -> Path | None:
    """The tokenizer file of HF directory `src` that its checkpoint records (None: it has none)."""
    from vikhr.convert.hf_tokenizer import load_for_model
    from vikhr.tokenizer.load import TOKENIZER_FILES

    if any((src / name).is_file() for name in TOKENIZER_FILES):
        # The file loaded (vikhr.tokenizer.load's rule) is the one recorded; checked now, as the export
        # would refuse it after training.
        return load_for_model(src, cfg.vocab_size, f"{src}").path
    return None


def _warn_of_vocab_and_merges(src: Path, out: Path) -> None:
    """One warning line, after the conversion, when `src`'s tokenizer is a GPT-2-style vocab.json +
    merges.txt alone, which the checkpoint `out` cannot record: how to write its tokenizer.json."""
    from vikhr.tokenizer.load import holds_vocab_and_merges, tokenizer_json_command

    if holds_vocab_and_merges(src):
        print(
            f"warning: {src} has a vocab.json and merges.txt but no tokenizer.json: {out} records no "
            "tokenizer, and its exports (and those of runs trained from it) will have none; write a "
            f"tokenizer.json {tokenizer_json_command(src, src)}, then convert again",
            file=sys.stderr,
        )


def _check_tensor_parallel(cfg: ModelConfig, tp_size: int, config: Path) -> None:
    """VikhrError naming config.json's key that `tp_size` ranks cannot split (a GQA model's few KV
    heads, usually) and the sizes that can."""
    misfit = cfg.tensor_parallel_misfit(tp_size)
    if misfit is not None:
        sizes = [str(n) for n in range(1, cfg.num_kv_heads + 1) if cfg.tensor_parallel_misfit(n) is None]
        raise VikhrError(
            f"{config}: --tp {tp_size} does not divide {_HF_TP_KEYS[misfit[0]]} = {misfit[1]} "
            f"(tensor-parallel sizes this model splits into: {', '.join(sizes)})"
        )


def _read_checkpoint(ckpt_dir: str | Path) -> tuple[Path, dict[str, Any], ModelConfig]:
    """(step directory, meta, model shape) of a vikhr checkpoint, with its meta.json checked."""
    from vikhr.train.checkpoint import find_checkpoint, unfinished_save

    step_dir = find_checkpoint(ckpt_dir)
    if step_dir is None:
        unfinished = unfinished_save(ckpt_dir)
        if unfinished is not None:
            raise VikhrError(unfinished)
        if not Path(ckpt_dir).exists():
            raise VikhrError(f"{ckpt_dir}: no vikhr checkpoint: the path does not exist (check it)")
        if (Path(ckpt_dir) / "config.json").is_file():
            raise VikhrError(
                f"{ckpt_dir} is an HF model directory, not a vikhr checkpoint: it is already in HF "
                f"format (vikhr convert hf-to-megatron {ckpt_dir} OUT_DIR converts it the other way)"
            )
        raise VikhrError(f"{ckpt_dir}: no vikhr checkpoint (meta.json or latest) found")
    path = step_dir / "meta.json"
    unusable = f"{path} is not a usable vikhr checkpoint description"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        cfg = ModelConfig(**meta["model"])
        tp = meta["tp"]
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tp {tp!r} is not a positive integer")
        cfg.validate(tp)
    except KeyError as e:  # its text alone would be "('tp')"
        raise VikhrError(f"{unusable} (no {e} key)") from e
    except TypeError as e:  # e.g. "list indices must be integers or slices, not str"
        raise VikhrError(f"{unusable} (a field of another type: {e})") from e
    except (OSError, ValueError, VikhrError) as e:
        raise VikhrError(f"{unusable} ({e})") from e
    return step_dir, meta, cfg


def _read_megatron_shards(step_dir: Path, meta: dict[str, Any], cfg: ModelConfig) -> list[SafetensorsHeader]:
    """The headers of every tensor-parallel file, each file's tensors accounted for against meta.json."""
    tp = int(meta["tp"])
    files = [step_dir / f"model_tp{r:02d}.safetensors" for r in range(tp)]
    for f in files:
        if not f.is_file():
            raise VikhrError(f"{step_dir}: {f.name} is missing (checkpoint saved with tensor parallel {tp})")
    headers = [read_header(f) for f in files]
    v_pad = int(meta.get("padded_vocab_size") or padded_vocab_size(cfg.vocab_size, tp))
    if v_pad < cfg.vocab_size or v_pad % tp:
        raise VikhrError(
            f"{step_dir / 'meta.json'}: padded_vocab_size {v_pad} is below vocab_size {cfg.vocab_size} "
            f"or not a multiple of tp {tp}"
        )
    expected = megatron_tensor_shapes(cfg, v_pad, tp)
    config = f"{step_dir / 'meta.json'} (model, tp {tp})"
    for header in headers:
        found = dict.fromkeys(header.tensors, header)
        _account_for_tensors(
            found, expected, config, (_MEG_LAYER_RE, "num_layers", cfg.num_layers), _MEG_SHAPE_FIELDS
        )
    return headers


def _gather_hf_tensors(
    headers: list[SafetensorsHeader], cfg: ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) from the tensor-parallel files of a megatron checkpoint, one at a time,
    in `_tensor_pairs`' order."""

    def gather(name: str) -> torch.Tensor:
        return merge([load_tensor(h.tensors[name], h.path) for h in headers], split_of(name))

    # No local keeps a yielded tensor (as in _megatron_full_tensors); a gathered QKV or fc1 is
    # released once the last of its parts is consumed.
    for meg, hf_names in _tensor_pairs(cfg):
        yield from _named(hf_names, _unfused(meg, gather(meg), cfg))


def _hf_layout(headers: list[SafetensorsHeader], cfg: ModelConfig) -> Layout:
    """The model.safetensors of `megatron_to_hf`: names, dtypes and shapes, in writing order."""
    shapes = hf_tensor_shapes(cfg, with_lm_head=not cfg.tie_embeddings)
    layout = {}
    for meg, hf_names in _tensor_pairs(cfg):
        # As `merge` makes it: rank 0's copy of a replicated tensor, the ranks' parts concatenated else.
        ranks = headers if split_of(meg) is not None else headers[:1]
        dtype = _output_dtype([(h.path, meg, h.tensors[meg].dtype) for h in ranks])
        layout.update((n, (dtype, shapes[n])) for n in hf_names)
    return layout


def megatron_to_hf(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    tokenizer: str | Path | None = None,
    progress: bool = False,
) -> Path:
    """Convert a vikhr megatron checkpoint (any TP size) into a self-contained HF directory
    (`progress`: a bar over the tensors when stderr is a terminal).

    The directory gets the tokenizer files (vikhr.convert.hf_tokenizer): `tokenizer` (a `.model`, a
    `tokenizer.json` or a directory) or else the one the checkpoint records; without either, only
    the weights and the configs are written. config.json and generation_config.json start from those
    of the HF model the checkpoint's lineage was converted from (vikhr.convert.lineage: what a trained
    run recorded of its start, or for a checkpoint of an older version what its model.init records),
    with the model's shape and the tokenizer's ids over them; where a start is gone and they are not
    found, one warning line says so. max_position_embeddings: the lineage's longest max_seq_len. Their
    pad_token_id is the tokenizer's pad token where it has one; else the source's is kept where it
    is the same token in the exported tokenizer as in the one the source was converted with (with
    another tokenizer it may name another token, or none), and is null otherwise; so is the
    bos_token_id of a tokenizer without a BOS.
    """
    from vikhr.convert.hf_tokenizer import (
        keep_source_ids,
        other_transformers_ids,
        probe_ids,
        recorded_in_lineage,
        tokenizer_to_export,
        warn_of_cut_lineage,
        write_tokenizer_files,
    )

    step_dir, meta, cfg = _read_checkpoint(ckpt_dir)
    out = Path(out_dir)
    _check_output(out, overwrite, inputs=[step_dir, *([tokenizer] if tokenizer is not None else [])])
    found = recorded_in_lineage(step_dir)
    recorded, source = found.tokenizer, found.source
    chat_template = recorded.template if recorded is not None else None
    tok = tokenizer_to_export(found, step_dir, tokenizer, cfg.vocab_size)
    headers = _read_megatron_shards(step_dir, meta, cfg)
    # A run of a shorter max_seq_len (its preset's, or its training windows') keeps the lineage's range.
    longest = cfg.with_overrides(max_seq_len=max(cfg.max_seq_len, found.max_seq_len or 0))
    hf_cfg = model_config_to_hf_config(longest, source.config if source is not None else None)
    warn_of_cut_lineage(found, step_dir, given_tokenizer=tokenizer is not None, written=hf_cfg)
    dtype = headers[0].tensors["embedding.word_embeddings.weight"].dtype
    dtype = str(torch_dtype(dtype)).removeprefix("torch.")
    hf_cfg["torch_dtype"] = dtype
    if "dtype" in hf_cfg:  # transformers 5 writes the dtype under this name
        hf_cfg["dtype"] = dtype
    # The layout is the installed transformers'. Without it (or with a source's 4.x), transformers 5
    # warns on every load of a Mistral export that its tokenizer needs `fix_mistral_regex=True`,
    # which would give other ids than the model was trained on.
    hf_cfg["transformers_version"] = importlib.metadata.version("transformers")
    # The source's sampling settings and ids (its pad id checked against the tokenizer below).
    generation = dict(source.generation_config or {}) if source is not None else {}
    # The tokenizer's self-check loads transformers (seconds) in a thread while the weights are written.
    with output_dir(out) as tmp, ThreadPoolExecutor(max_workers=1) as pool:
        check = None
        if tok is not None:
            config_ids, generation_ids = write_tokenizer_files(tok, tmp, chat_template)
            hf_cfg.update(config_ids)
            generation.update(generation_ids)
            # Ids the tokenizer has no token for (no pad, no BOS): the source's, where they still fit.
            missing = [key for key in ("bos_token_id", "pad_token_id") if key not in config_ids]
            keep_source_ids(
                tok, source.tokenizer if source is not None else None, missing, hf_cfg, generation
            )
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2), encoding="utf-8")
        if generation:
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
        if tok is not None:  # config.json first: its model_type decides which class transformers loads
            check = pool.submit(other_transformers_ids, tmp, out, probe_ids(tok, tmp))
        with write_errors_as_os_errors(out):
            _write_hf_weights(headers, cfg, tmp / "model.safetensors", progress)
        warning = check.result() if check is not None else None
        if warning is not None:
            print(warning, file=sys.stderr)
    return out


def _write_hf_weights(headers: list[SafetensorsHeader], cfg: ModelConfig, path: Path, progress: bool) -> None:
    """The model.safetensors of `megatron_to_hf`: its header, then each tensor as it is gathered."""
    layout = _hf_layout(headers, cfg)
    with (
        SafetensorsWriter(path, layout, metadata={"format": "pt"}) as writer,
        _tensor_progress(len(layout), progress) as bar,
    ):
        for name, tensor in _gather_hf_tensors(headers, cfg):  # one in memory at a time
            writer.add(name, tensor)
            del tensor  # not held while the next one is gathered
            bar.update()
        writer.finish()


def _tensor_progress(tensors: int, show: bool) -> Any:
    """A bar over the tensors a conversion writes (a 7B model takes minutes), on a terminal only: a
    damaged input found mid-way stays one error line in a log."""
    from vikhr.progress_bar import progress_bar

    return progress_bar(total=tensors, unit="tensor", desc="converting", show=show)


def _check_output(out: Path, overwrite: bool, inputs: list[Path | str]) -> None:
    from vikhr.train.checkpoint import step_dir_holding, step_of

    # The rule of every verb writing a directory (tokenizer train, adapt-vocab, merge): an existing
    # one, empty or not, is replaced only with --overwrite.
    require_output_dir(out, overwrite, inputs, flag="OUT_DIR", what="OUT_DIR")
    step = step_dir_holding(out)
    if step is not None:
        run = step.parent
        raise VikhrError(
            f"OUT_DIR {out} is inside {step}, a checkpoint step of the run {run}, and would be deleted with "
            f"that step (checkpoint.keep_last): write it outside the run's steps, e.g. "
            f"{run / f'hf-{step_of(step)}'}"
        )
