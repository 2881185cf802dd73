"""Build a megatron-core GPTModel of a Mistral / Llama / Qwen2 / Qwen3-style shape.

Layer specs (`attention=`): "te" (Transformer Engine, fused kernels; GPU), "sdpa" (megatron's
local modules with torch SDPA core attention, vikhr.model.attention), "local" (megatron's
unfused DotProductAttention, for comparison). "auto" takes "te" when Transformer Engine is
importable and a GPU is in use, "sdpa" otherwise.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from vikhr.errors import VikhrError
from vikhr.model.config import ModelConfig, padded_vocab_size


def transformer_config(
    cfg: ModelConfig,
    tp_size: int = 1,
    params_dtype: torch.dtype = torch.float32,
    on_gpu: bool = False,
    recompute: bool = False,
    sequence_parallel: bool = False,
):  # -> megatron.core.transformer.TransformerConfig
    """The megatron-core TransformerConfig of a model shape, fused kernels off.

    `on_gpu` (the run's `DistEnv.on_gpu`): on the CPU the full weights are drawn and sliced, so
    TP=1 and TP=K start from the same weights for the same seed, and megatron runs in its
    deterministic mode; on GPU each rank draws its own shard where it lives (no full copy per rank).
    `recompute`: keep only each layer's input for backward and run the layer again there
    (megatron's full, uniform recomputation, one layer per checkpoint).
    `sequence_parallel`: megatron's sequence parallelism (TP > 1): the norms and the residual
    stream between the tensor-parallel regions are split along the sequence over the TP ranks.
    """
    from megatron.core.transformer import TransformerConfig

    cfg.validate(tp_size)
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_kv_heads,
        kv_channels=cfg.head_dim,
        tensor_model_parallel_size=tp_size,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=cfg.qkv_bias,
        qk_layernorm=cfg.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_std,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=not on_gpu,
        perform_initialization=True,
        bias_activation_fusion=False,
        # megatron's hook for an activation module from the layer spec, applied to the whole fc1
        # output: vikhr.model.swiglu (what layer_spec sets), whatever the backend.
        use_te_activation_func=True,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        cross_entropy_loss_fusion=False,
        sequence_parallel=sequence_parallel,
        # HF Mistral's window W (query i sees keys i-W+1..i) is megatron's (W-1, 0).
        window_size=None if cfg.sliding_window is None else (cfg.sliding_window - 1, 0),
        attention_softmax_in_fp32=True,
        deterministic_mode=not on_gpu,
        recompute_granularity="full" if recompute else None,
        recompute_method="uniform" if recompute else None,
        recompute_num_layers=1 if recompute else None,
    )


# "auto" resolves to "te" or "sdpa" (resolve_attention); the config's model.attention takes these.
AttentionBackend = Literal["auto", "te", "sdpa", "local"]
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)


def have_transformer_engine() -> bool:
    """Whether megatron-core's TE layer spec can be built: megatron's own import of Transformer
    Engine succeeded (a TE package that is there but does not import, e.g. one built for another
    torch, counts as absent, as megatron counts it)."""
    from megatron.core.models.gpt import gpt_layer_specs

    return bool(getattr(gpt_layer_specs, "HAVE_TE", False))


def resolve_attention(attention: str, on_gpu: bool) -> str:
    """The concrete layer-spec name for `attention` ("auto" -> "te" or "sdpa"); VikhrError for "te"
    where it cannot be built (on the CPU, or without Transformer Engine)."""
    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
    if attention == "auto":
        return "te" if on_gpu and have_transformer_engine() else "sdpa"
    # megatron's TE spec without TE fails on an undefined name deep in its layer specs.
    if attention == "te" and not on_gpu:
        raise VikhrError(
            "config key model.attention = te needs a GPU (Transformer Engine's kernels), and this run is on "
            "the CPU: use sdpa, or auto (te where it can run)"
        )
    if attention == "te" and not have_transformer_engine():
        raise VikhrError(
            "config key model.attention = te, but megatron-core could not import Transformer Engine here: "
            "install transformer-engine for this torch, or use sdpa or auto"
        )
    return attention


class RMSNorm(torch.nn.RMSNorm):
    """torch RMSNorm as megatron's spec builds it (what its WrappedTorchNorm makes), but usable
    under sequence parallelism: each TP rank then normalises its slice of the sequence, so the
    weight's gradient is partial; `weight.sequence_parallel` makes megatron's
    finalize_model_grads sum it over the TP ranks. The weight has the model's params_dtype, so
    that bf16 activations meet a bf16 weight (torch's fused RMSNorm needs both alike)."""

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-5, **unused: object) -> None:
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        self.weight.sequence_parallel = bool(config.sequence_parallel)


def layer_spec(attention: str = "sdpa", qk_norm: bool = False):  # -> megatron ModuleSpec
    """The transformer-layer spec for a resolved attention backend ("te", "sdpa" or "local"),
    with vikhr.model.swiglu as the MLP's activation; `qk_norm` adds megatron's per-head query and
    key norms (its finalize_model_grads sums their gradients over the TP ranks, which hold
    different heads)."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    from vikhr.model.swiglu import SwiGLU

    if attention == "te":
        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_norm)
        spec.submodules.mlp.submodules.activation_func = SwiGLU
        return spec
    spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=qk_norm)
    spec.submodules.mlp.submodules.activation_func = SwiGLU
    spec.submodules.input_layernorm = RMSNorm
    spec.submodules.pre_mlp_layernorm = RMSNorm
    if qk_norm:
        spec.submodules.self_attention.submodules.q_layernorm = RMSNorm
        spec.submodules.self_attention.submodules.k_layernorm = RMSNorm
    if attention == "sdpa":
        from vikhr.model.attention import SDPAttention

        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    elif attention != "local":
        raise ValueError(f"unknown attention backend {attention!r}")
    return spec


def block_spec(attention: str, num_layers: int, qk_norm: bool = False):  # -> TransformerBlockSubmodules
    """Every layer's spec plus the final norm (Transformer Engine's with "te", else RMSNorm)."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    if attention == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        final_norm = TENorm
    else:
        final_norm = RMSNorm
    layers = [layer_spec(attention, qk_norm)] * num_layers
    return TransformerBlockSubmodules(layer_specs=layers, layer_norm=final_norm)


def build_gpt_model(
    cfg: ModelConfig,
    tp_size: int = 1,
    params_dtype: torch.dtype = torch.float32,
    vocab_multiple: int = 128,
    attention: str = "auto",
    on_gpu: bool = False,
    recompute: bool = False,
    sequence_parallel: bool = False,
):  # -> megatron.core.models.gpt.GPTModel
    """A GPTModel of shape `cfg` for the current megatron parallel state.

    The vocabulary is padded to a multiple of `vocab_multiple * tp_size`; padded rows exist
    in the embedding and LM head but never occur as labels. Called with labels=None the model
    returns this TP rank's vocabulary columns of the logits, [b, s, V_pad/TP]. `on_gpu` is the
    run's `DistEnv.on_gpu` (see transformer_config; "auto" attention picks "te" only there): the
    whole model is then on the current CUDA device.
    """
    from megatron.core.models.gpt import GPTModel

    tcfg = transformer_config(cfg, tp_size, params_dtype, on_gpu, recompute, sequence_parallel)
    spec = block_spec(resolve_attention(attention, on_gpu), cfg.num_layers, cfg.qk_norm)
    model = GPTModel(
        config=tcfg,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(cfg.vocab_size, tp_size, vocab_multiple),
        max_sequence_length=cfg.max_seq_len,
        pre_process=True,
        post_process=True,
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.rope_theta,  # a float: transformers takes a fractional θ as it is
    )
    if cfg.rope_scaling_factor is not None:
        rotary = model.rotary_pos_emb
        rotary.inv_freq = llama3_inv_freq(cfg, rotary.inv_freq.device)
    if on_gpu:
        # megatron makes its layers on the GPU, torch's RMSNorm is made on the CPU: one device.
        model = model.to(torch.cuda.current_device())
    return model


def llama3_inv_freq(cfg: ModelConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """RoPE inverse frequencies with Llama-3.1's "llama3" scaling, as transformers computes them.

    megatron-core's own `rope_scaling` fixes the low/high frequency factors (1, 4) and the original
    context (8192) to Llama-3.1's values; this takes all four from the config, so any checkpoint
    of that scheme (and the small test shapes) gets the frequencies transformers uses.
    """
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    factor = float(cfg.rope_scaling_factor or 1.0)
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    context = cfg.rope_original_max_seq_len
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by the factor, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < context / high) & ~(wavelen > context / low)
    return torch.where(medium, smoothed, scaled)
