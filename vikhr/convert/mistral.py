"""HF Mistral/Llama checkpoints <-> vikhr's megatron-core checkpoints, any tensor-parallel size.

The megatron side is a model-only checkpoint directory of the trainer (vikhr.train.checkpoint):
`meta.json` + `model_tp{r:02d}.safetensors`, usable as `model.init` or `kl.reference`.
Parameter layout (see vikhr.model.config):

    HF                                         megatron (per TP rank r of T)
    model.embed_tokens.weight [V, H]           embedding.word_embeddings.weight  rows of V_pad, chunk r
    q/k/v_proj.weight                          self_attention.linear_qkv.weight  per KV group g:
                                               [q heads of g; k_g; v_g], groups chunk r
    o_proj.weight [H, Q·d]                     self_attention.linear_proj.weight columns chunk r
    gate_proj / up_proj [F, H]                 mlp.linear_fc1.weight  [gate chunk r; up chunk r]
    down_proj [H, F]                           mlp.linear_fc2.weight  columns chunk r
    input_layernorm / post_attention_layernorm input_layernorm / pre_mlp_layernorm (replicated)
    model.norm.weight                          decoder.final_layernorm.weight
    lm_head.weight [V, H] (or tied embedding)  output_layer.weight  rows of V_pad, chunk r

Padded vocabulary rows are zero. HF tensors are read one at a time from their shards; the
converted shards are held in memory until written (peak ≈ one copy of the model).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vikhr.atomic import output_dir
from vikhr.errors import VikhrError, require_dir
from vikhr.model.config import ModelConfig, padded_vocab_size

_MEG_LAYER = "decoder.layers.{i}."
_HF_LAYER = "model.layers.{i}."


def hf_config_to_model_config(hf: dict[str, Any]) -> ModelConfig:
    """ModelConfig from an HF Mistral/Llama config.json dict."""
    arch = (hf.get("architectures") or ["?"])[0]
    if hf.get("model_type") not in ("mistral", "llama"):
        raise VikhrError(f"config.json: model_type {hf.get('model_type')!r} ({arch}) is not mistral or llama")
    rope = hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    if rope.get("rope_type", "default") not in ("default", None):
        raise VikhrError(
            f"config.json: rope_type {rope.get('rope_type')!r} is not supported (only default RoPE)"
        )
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        raise VikhrError(
            f"config.json: head_dim {head_dim} × {heads} heads != hidden_size {hf['hidden_size']}"
        )
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise VikhrError("config.json: attention_bias / mlp_bias are not supported (Mistral/Llama have none)")
    return ModelConfig(
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 4096),
        rope_theta=float(theta),
        sliding_window=hf.get("sliding_window"),
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        init_std=hf.get("initializer_range", 0.02),
    )


def model_config_to_hf_config(cfg: ModelConfig, template: dict[str, Any] | None = None) -> dict[str, Any]:
    """An HF MistralForCausalLM config.json dict for `cfg` (fields of `template` kept where unrelated)."""
    out = dict(template or {})
    out.update(
        {
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
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
            "tie_word_embeddings": False,
        }
    )
    out.pop("rope_parameters", None)
    out.setdefault("bos_token_id", 1)
    out.setdefault("eos_token_id", 2)
    out.setdefault("torch_dtype", "float32")
    return out


class _HFReader:
    """Streams tensors by name from an HF safetensors checkpoint (one file or an index of shards)."""

    def __init__(self, hf_dir: Path) -> None:
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (hf_dir / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}  # noqa: SIM118
        else:
            raise VikhrError(
                f"{hf_dir}: no model.safetensors or model.safetensors.index.json (safetensors only)"
            )
        self.dir = hf_dir
        self.weight_map: dict[str, str] = weight_map

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.weight_map:
            raise VikhrError(f"{self.dir}: tensor {name} is missing from the checkpoint")
        with safe_open(str(self.dir / self.weight_map[name]), "pt") as f:
            return f.get_tensor(name)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def _qkv_full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Megatron's fused QKV: for each KV group, its query heads, then its key, then its value."""
    d, groups = cfg.head_dim, cfg.num_kv_heads
    per = cfg.num_attention_heads // groups
    h = q.shape[1]
    q = q.view(groups, per * d, h)
    k = k.view(groups, d, h)
    v = v.view(groups, d, h)
    return torch.cat([q, k, v], dim=1).reshape(-1, h)


def _qkv_split(qkv: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d, groups = cfg.head_dim, cfg.num_kv_heads
    per = cfg.num_attention_heads // groups
    h = qkv.shape[1]
    g = qkv.view(groups, (per + 2) * d, h)
    q, k, v = g.split([per * d, d, d], dim=1)
    return q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)


def _megatron_full_tensors(
    reader: _HFReader, cfg: ModelConfig, v_pad: int, tied: bool
) -> Iterator[tuple[str, torch.Tensor, int | str | None]]:
    """(megatron name, full unsharded tensor, shard dim or None) in a streaming order."""
    emb = reader.get("model.embed_tokens.weight")
    if emb.shape[0] != cfg.vocab_size:
        raise VikhrError(
            f"model.embed_tokens.weight has {emb.shape[0]} rows "
            f"but config.json vocab_size is {cfg.vocab_size}"
        )
    yield "embedding.word_embeddings.weight", _pad_rows(emb, v_pad), 0
    for i in range(cfg.num_layers):
        hf, meg = _HF_LAYER.format(i=i), _MEG_LAYER.format(i=i)
        yield meg + "input_layernorm.weight", reader.get(hf + "input_layernorm.weight"), None
        qkv = _qkv_full(
            reader.get(hf + "self_attn.q_proj.weight"),
            reader.get(hf + "self_attn.k_proj.weight"),
            reader.get(hf + "self_attn.v_proj.weight"),
            cfg,
        )
        yield meg + "self_attention.linear_qkv.weight", qkv, "qkv"
        yield meg + "self_attention.linear_proj.weight", reader.get(hf + "self_attn.o_proj.weight"), 1
        yield meg + "pre_mlp_layernorm.weight", reader.get(hf + "post_attention_layernorm.weight"), None
        gate_up = torch.stack(
            [reader.get(hf + "mlp.gate_proj.weight"), reader.get(hf + "mlp.up_proj.weight")]
        )
        yield meg + "mlp.linear_fc1.weight", gate_up, "fc1"
        yield meg + "mlp.linear_fc2.weight", reader.get(hf + "mlp.down_proj.weight"), 1
    yield "decoder.final_layernorm.weight", reader.get("model.norm.weight"), None
    head = reader.get("model.embed_tokens.weight" if tied else "lm_head.weight")
    yield "output_layer.weight", _pad_rows(head, v_pad), 0


def _shard(t: torch.Tensor, how: int | str | None, rank: int, tp: int) -> torch.Tensor:
    if how is None:
        return t
    if how == "fc1":  # [2, F, H] -> [gate chunk; up chunk]
        return torch.cat([t[0].chunk(tp, dim=0)[rank], t[1].chunk(tp, dim=0)[rank]])
    if how == "qkv":  # whole KV groups per rank; the rows are already grouped
        return t.chunk(tp, dim=0)[rank]
    return t.chunk(tp, dim=int(how))[rank]


def hf_to_megatron(
    hf_dir: str | Path,
    out_dir: str | Path,
    tp_size: int = 1,
    overwrite: bool = False,
    vocab_multiple: int = 128,
) -> Path:
    """Convert an HF Mistral/Llama safetensors checkpoint into a vikhr megatron checkpoint at `out_dir`."""
    from safetensors.torch import save_file

    src = require_dir(hf_dir, "HF checkpoint directory")
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise VikhrError(f"{src}: config.json not found (an HF model directory is expected)")
    hf_cfg = json.loads(cfg_path.read_text())
    cfg = hf_config_to_model_config(hf_cfg)
    cfg.validate(tp_size)
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    reader = _HFReader(src)
    tied = bool(hf_cfg.get("tie_word_embeddings", False)) or not reader.has("lm_head.weight")
    v_pad = padded_vocab_size(cfg.vocab_size, tp_size, vocab_multiple)
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(tp_size)]
    for name, full, how in _megatron_full_tensors(reader, cfg, v_pad, tied):
        for r in range(tp_size):
            shards[r][name] = _shard(full, how, r, tp_size).contiguous().clone()
    meta = {
        "step": 0,
        "consumed_samples": 0,
        "tp": tp_size,
        "world_size": tp_size,
        "model": cfg.to_dict(),
        "padded_vocab_size": v_pad,
        "source": {"format": "hf", "path": str(src), "tied_embeddings": tied},
        "hf_config": hf_cfg,
    }
    with output_dir(out) as tmp:
        for r, tensors in enumerate(shards):
            save_file(tensors, str(tmp / f"model_tp{r:02d}.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


def megatron_to_hf(ckpt_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Convert a vikhr megatron checkpoint (any TP size) into an HF MistralForCausalLM directory."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vikhr.train.checkpoint import find_checkpoint, read_meta

    step_dir = find_checkpoint(ckpt_dir)
    if step_dir is None:
        raise VikhrError(f"{ckpt_dir}: no vikhr checkpoint (meta.json or latest) found")
    meta = read_meta(step_dir)
    tp = int(meta["tp"])
    cfg = ModelConfig(**meta["model"])
    files = [step_dir / f"model_tp{r:02d}.safetensors" for r in range(tp)]
    for f in files:
        if not f.is_file():
            raise VikhrError(f"{step_dir}: {f.name} is missing (checkpoint saved with tensor parallel {tp})")
    handles = [safe_open(str(f), "pt") for f in files]

    def gather(name: str, how: int | str | None) -> torch.Tensor:
        parts = [h.get_tensor(name) for h in handles]
        if how is None:
            return parts[0]
        if how == "fc1":
            halves = [p.chunk(2, dim=0) for p in parts]
            return torch.cat([torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])])
        return torch.cat(parts, dim=0 if how == "qkv" else int(how))

    out_t: dict[str, torch.Tensor] = {}
    v = cfg.vocab_size
    out_t["model.embed_tokens.weight"] = gather("embedding.word_embeddings.weight", 0)[:v]
    for i in range(cfg.num_layers):
        hf, meg = _HF_LAYER.format(i=i), _MEG_LAYER.format(i=i)
        out_t[hf + "input_layernorm.weight"] = gather(meg + "input_layernorm.weight", None)
        q, k, vv = _qkv_split(gather(meg + "self_attention.linear_qkv.weight", "qkv"), cfg)
        out_t[hf + "self_attn.q_proj.weight"] = q
        out_t[hf + "self_attn.k_proj.weight"] = k
        out_t[hf + "self_attn.v_proj.weight"] = vv
        out_t[hf + "self_attn.o_proj.weight"] = gather(meg + "self_attention.linear_proj.weight", 1)
        out_t[hf + "post_attention_layernorm.weight"] = gather(meg + "pre_mlp_layernorm.weight", None)
        gate, up = gather(meg + "mlp.linear_fc1.weight", "fc1").chunk(2, dim=0)
        out_t[hf + "mlp.gate_proj.weight"] = gate
        out_t[hf + "mlp.up_proj.weight"] = up
        out_t[hf + "mlp.down_proj.weight"] = gather(meg + "mlp.linear_fc2.weight", 1)
    out_t["model.norm.weight"] = gather("decoder.final_layernorm.weight", None)
    out_t["lm_head.weight"] = gather("output_layer.weight", 0)[:v]
    out_t = {k: t.contiguous() for k, t in out_t.items()}

    out = Path(out_dir)
    _prepare_out(out, overwrite)
    hf_cfg = model_config_to_hf_config(cfg, meta.get("hf_config"))
    hf_cfg["torch_dtype"] = str(next(iter(out_t.values())).dtype).removeprefix("torch.")
    with output_dir(out) as tmp:
        save_file(out_t, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    return out


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise VikhrError(f"output directory {out} exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
