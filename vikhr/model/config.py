"""Model shapes of the Mistral / Llama / Qwen2 / Qwen3 family and their presets.

Parameter layout (what HF <-> Megatron conversion maps, per layer `decoder.layers.{i}.`):
  embedding.word_embeddings.weight              [V_pad/TP, H]        (vocab-parallel rows)
  self_attention.linear_qkv.weight              [(Q+2KV)·d/TP, H]    (per KV group: q heads, k, v)
  self_attention.linear_qkv.bias                [(Q+2KV)·d/TP]       (qkv_bias only; same grouping)
  self_attention.linear_proj.weight             [H, Q·d/TP]          (row-parallel)
  self_attention.q_layernorm.weight / k_layernorm.weight  [d]        (qk_norm only; replicated)
  input_layernorm.weight / pre_mlp_layernorm.weight  [H]             (RMSNorm, replicated)
  mlp.linear_fc1.weight                         [2·F/TP, H]          (gate rows then up rows, per TP shard)
  mlp.linear_fc2.weight                         [H, F/TP]
  decoder.final_layernorm.weight                [H]
  output_layer.weight                           [V_pad/TP, H]        (untied LM head; absent when tied)

d is `head_dim`: hidden_size / num_attention_heads unless `kv_channels` sets it (Mistral-NeMo:
5120 / 32 heads, yet 128 per head).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from vikhr.errors import VikhrError


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Mistral/Llama/Qwen2/Qwen3-style decoder (RMSNorm, SwiGLU, GQA, RoPE).

    `kv_channels`: the size of one attention head when it is not hidden_size / heads.
    `qkv_bias`: biases on the query, key and value projections (Qwen2).
    `qk_norm`: RMSNorm over each query and key head before RoPE, one weight per head dimension
    shared by the heads (Qwen3).
    `tie_embeddings`: the LM head is the input embedding (small Qwen2 / Llama sizes).
    `rope_scaling_factor` (with the low/high frequency factors and the original context length):
    Llama-3.1's "llama3" RoPE frequency scaling; None for plain RoPE.
    """

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    vocab_size: int
    max_seq_len: int
    rope_theta: float = 10000.0
    sliding_window: int | None = None
    norm_eps: float = 1e-5
    init_std: float = 0.02
    kv_channels: int | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    rope_scaling_factor: float | None = None
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def validate(self, tp_size: int = 1) -> None:
        """Raise VikhrError naming the field when the shape cannot be built at this TP size."""
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                raise VikhrError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("vocab_size", "max_seq_len", "rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if not (0 < value < math.inf):
                raise VikhrError(f"{name} must be a positive finite number, got {value}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise VikhrError(f"sliding_window must be positive (or null), got {self.sliding_window}")
        if self.kv_channels is not None and self.kv_channels < 1:
            raise VikhrError(f"kv_channels must be positive (or null), got {self.kv_channels}")
        self._validate_rope_scaling()
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise VikhrError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_kv_heads:
            raise VikhrError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by num_kv_heads "
                f"{self.num_kv_heads}"
            )
        if self.head_dim % 2:  # rotary embeddings turn the dimensions of a head in pairs
            raise VikhrError(
                f"the attention head size {self.head_dim} (kv_channels, or hidden_size / "
                "num_attention_heads) must be even for rotary position embeddings"
            )
        misfit = self.tensor_parallel_misfit(tp_size)
        if misfit is not None:
            raise VikhrError(f"tensor parallel size {tp_size} does not divide {misfit[0]} = {misfit[1]}")

    def _validate_rope_scaling(self) -> None:
        if self.rope_scaling_factor is None:
            return
        for name in ("rope_scaling_factor", "rope_low_freq_factor", "rope_original_max_seq_len"):
            value = getattr(self, name)
            if not (0 < value < math.inf):
                raise VikhrError(f"{name} must be a positive finite number, got {value}")
        if not (self.rope_low_freq_factor < self.rope_high_freq_factor < math.inf):
            raise VikhrError(
                f"rope_high_freq_factor {self.rope_high_freq_factor} must exceed rope_low_freq_factor "
                f"{self.rope_low_freq_factor}"
            )

    def tensor_parallel_misfit(self, tp_size: int) -> tuple[str, int] | None:
        """(field, value) of the first dimension that `tp_size` ranks cannot split evenly, or None."""
        for name, value in (
            ("num_attention_heads", self.num_attention_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("ffn_hidden_size", self.ffn_hidden_size),
        ):
            if value % tp_size:
                return name, value
        return None

    def with_overrides(self, **kwargs: Any) -> ModelConfig:
        return replace(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The fields, less those of the later families at their defaults: a Mistral shape reads as
        it did before they existed, so older checkpoints' meta.json compare equal."""
        out = asdict(self)
        for name, default in _LATER_FIELD_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        return out


_LATER_FIELD_DEFAULTS: dict[str, Any] = {
    "kv_channels": None,
    "qkv_bias": False,
    "qk_norm": False,
    "tie_embeddings": False,
    "rope_scaling_factor": None,
    "rope_low_freq_factor": 1.0,
    "rope_high_freq_factor": 4.0,
    "rope_original_max_seq_len": 8192,
}


# The fields in which a run may differ from the checkpoint it starts from or resumes: the longest
# window it trains on, and the spread of a random initialisation (loaded weights have none).
FIELDS_A_RUN_MAY_CHANGE = ("max_seq_len", "init_std")


def shape_differences(saved: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """ "field saved (run: value)" for each field in which a checkpoint's model shape (`saved`, as its
    meta.json holds `to_dict()`) and the run's differ; a later family's field missing on either side
    is at its default (to_dict() leaves it out), so a Llama-3.1 checkpoint's RoPE scaling is compared
    with a run that has none. FIELDS_A_RUN_MAY_CHANGE may differ."""
    out = []
    for k in dict.fromkeys([*run, *saved]):
        if k in FIELDS_A_RUN_MAY_CHANGE:
            continue
        was, now = saved.get(k, _LATER_FIELD_DEFAULTS.get(k)), run.get(k, _LATER_FIELD_DEFAULTS.get(k))
        if was != now:
            out.append(f"{k} {was} (run: {now})")
    return out


_MISTRAL_7B_V01 = ModelConfig(
    num_layers=32,
    hidden_size=4096,
    ffn_hidden_size=14336,
    num_attention_heads=32,
    num_kv_heads=8,
    vocab_size=32000,
    max_seq_len=32768,
    rope_theta=10000.0,
    sliding_window=4096,
)

PRESETS: dict[str, ModelConfig] = {
    # As published in mistralai/Mistral-7B-v0.1's config.json.
    "mistral-7b-v0.1": _MISTRAL_7B_V01,
    # v0.2 (the paper's base): RoPE theta 1e6 and no sliding window.
    "mistral-7b-v0.2": replace(_MISTRAL_7B_V01, rope_theta=1_000_000.0, sliding_window=None),
    # As published in meta-llama/Meta-Llama-3-8B's config.json (plain RoPE, theta 500k).
    "llama-3-8b": ModelConfig(
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=14336,
        num_attention_heads=32,
        num_kv_heads=8,
        vocab_size=128256,
        max_seq_len=8192,
        rope_theta=500_000.0,
    ),
    # meta-llama/Llama-3.1-8B: the same shape with "llama3" RoPE scaling to a 128k context.
    "llama-3.1-8b": ModelConfig(
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=14336,
        num_attention_heads=32,
        num_kv_heads=8,
        vocab_size=128256,
        max_seq_len=131072,
        rope_theta=500_000.0,
        rope_scaling_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_seq_len=8192,
    ),
    # Qwen/Qwen2.5-7B: QKV biases, untied LM head.
    "qwen2.5-7b": ModelConfig(
        num_layers=28,
        hidden_size=3584,
        ffn_hidden_size=18944,
        num_attention_heads=28,
        num_kv_heads=4,
        vocab_size=152064,
        max_seq_len=131072,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        qkv_bias=True,
    ),
    # Qwen/Qwen2.5-0.5B: QKV biases, LM head tied to the embedding.
    "qwen2.5-0.5b": ModelConfig(
        num_layers=24,
        hidden_size=896,
        ffn_hidden_size=4864,
        num_attention_heads=14,
        num_kv_heads=2,
        vocab_size=151936,
        max_seq_len=32768,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        qkv_bias=True,
        tie_embeddings=True,
    ),
    # Qwen/Qwen3-8B: QK-norm, no QKV biases, untied LM head.
    "qwen3-8b": ModelConfig(
        num_layers=36,
        hidden_size=4096,
        ffn_hidden_size=12288,
        num_attention_heads=32,
        num_kv_heads=8,
        vocab_size=151936,
        max_seq_len=40960,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        qk_norm=True,
    ),
    # Qwen/Qwen3-0.6B: 16 heads of 128 on a 1024-wide residual stream, LM head tied.
    "qwen3-0.6b": ModelConfig(
        num_layers=28,
        hidden_size=1024,
        ffn_hidden_size=3072,
        num_attention_heads=16,
        num_kv_heads=8,
        kv_channels=128,
        vocab_size=151936,
        max_seq_len=40960,
        rope_theta=1_000_000.0,
        norm_eps=1e-6,
        qk_norm=True,
        tie_embeddings=True,
    ),
    # mistralai/Mistral-Nemo-Base-2407: 32 heads of 128 on a 5120-wide residual stream.
    "mistral-nemo-12b": ModelConfig(
        num_layers=40,
        hidden_size=5120,
        ffn_hidden_size=14336,
        num_attention_heads=32,
        num_kv_heads=8,
        kv_channels=128,
        vocab_size=131072,
        max_seq_len=1024000,
        rope_theta=1_000_000.0,
    ),
    # Small shapes for tests and the CPU demo.
    "tiny": ModelConfig(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=176,
        num_attention_heads=4,
        num_kv_heads=2,
        vocab_size=512,
        max_seq_len=256,
    ),
    "small": ModelConfig(
        num_layers=4,
        hidden_size=256,
        ffn_hidden_size=704,
        num_attention_heads=8,
        num_kv_heads=4,
        vocab_size=8000,
        max_seq_len=512,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, optionally with fields replaced."""
    if name not in PRESETS:
        raise VikhrError(f"unknown model preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
    return PRESETS[name].with_overrides(**overrides) if overrides else PRESETS[name]


def padded_vocab_size(vocab_size: int, tp_size: int = 1, multiple: int = 128) -> int:
    """Vocabulary padded to a multiple of `multiple * tp_size`, as Megatron does."""
    step = multiple * tp_size
    return ((vocab_size + step - 1) // step) * step
