"""The Mistral presets and the megatron-core GPTModel with the SDPA layer spec, against transformers.

The HF comparison maps weights with the parameter layout documented in vikhr.model.config, so
it also pins that layout for the HF <-> Megatron conversion.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import load_tool
from vikhr.model import PRESETS, build_gpt_model, padded_vocab_size, preset


def test_mistral_presets_are_the_published_shapes() -> None:
    v01, v02 = PRESETS["mistral-7b-v0.1"], PRESETS["mistral-7b-v0.2"]
    for p in (v01, v02):
        assert (p.num_layers, p.hidden_size, p.ffn_hidden_size) == (32, 4096, 14336)
        assert (p.num_attention_heads, p.num_kv_heads, p.head_dim, p.vocab_size) == (32, 8, 128, 32000)
        assert p.norm_eps == 1e-5
    assert (v01.rope_theta, v01.sliding_window) == (10000.0, 4096)
    assert (v02.rope_theta, v02.sliding_window) == (1_000_000.0, None)
    assert padded_vocab_size(40000, 1) == 40064 and padded_vocab_size(40000, 8) == 40960


def test_parameter_count_of_mistral_7b_matches_transformers() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    from vikhr.convert.mistral import model_config_to_hf_config
    from vikhr.train.memory import parameter_counts

    p = PRESETS["mistral-7b-v0.2"]
    hf = MistralConfig.from_dict(model_config_to_hf_config(p))
    with torch.device("meta"):
        n_hf = sum(t.numel() for t in MistralForCausalLM(hf).parameters())
    total, per_rank = parameter_counts(p, tp=1)
    assert total == n_hf == 7_241_732_096
    assert parameter_counts(p, tp=8)[1] < per_rank / 7


@pytest.fixture
def megatron_cpu() -> Iterator[None]:
    from vikhr.runtime.distributed import distributed_env

    with distributed_env(tp_size=1, seed=7, device="cpu"):
        yield


def _hf_model(sliding_window: int | None):
    from transformers import MistralConfig, MistralForCausalLM

    from vikhr.convert.mistral import model_config_to_hf_config

    p = preset("tiny", sliding_window=sliding_window)
    cfg = MistralConfig.from_dict(model_config_to_hf_config(p), attn_implementation="eager")
    torch.manual_seed(0)
    model = MistralForCausalLM(cfg).double().eval()
    with torch.no_grad():  # HF initialises norms to 1: perturb them so the mapping is tested
        for name, t in model.named_parameters():
            if "norm" in name:
                t.add_(0.1 * torch.randn_like(t))
    return model


def _hf_to_megatron(hf, cfg) -> dict[str, torch.Tensor]:
    """HF Mistral weights in the layout documented in vikhr.model.config (TP=1)."""
    sd = hf.state_dict()
    d, q, kv = cfg.head_dim, cfg.num_attention_heads, cfg.num_kv_heads
    out = {
        "embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
        "decoder.final_layernorm.weight": sd["model.norm.weight"],
        "output_layer.weight": sd["lm_head.weight"],
    }
    for i in range(cfg.num_layers):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        wq = sd[h + "self_attn.q_proj.weight"].view(kv, q // kv * d, -1)
        wk = sd[h + "self_attn.k_proj.weight"].view(kv, d, -1)
        wv = sd[h + "self_attn.v_proj.weight"].view(kv, d, -1)
        out[m + "self_attention.linear_qkv.weight"] = torch.cat([wq, wk, wv], dim=1).reshape(
            -1, cfg.hidden_size
        )
        out[m + "self_attention.linear_proj.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[m + "input_layernorm.weight"] = sd[h + "input_layernorm.weight"]
        out[m + "pre_mlp_layernorm.weight"] = sd[h + "post_attention_layernorm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat(
            [sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]]
        )
        out[m + "mlp.linear_fc2.weight"] = sd[h + "mlp.down_proj.weight"]
    return out


@pytest.mark.parametrize("sliding_window", [None, 6])
@pytest.mark.parametrize("attention", ["sdpa", "local"])
def test_gpt_model_matches_transformers_mistral(
    megatron_cpu: None, attention: str, sliding_window: int | None
) -> None:
    cfg = preset("tiny", sliding_window=sliding_window)
    hf = _hf_model(sliding_window)
    model = build_gpt_model(cfg, attention=attention, params_dtype=torch.float32).double().eval()
    missing, unexpected = model.load_state_dict(_hf_to_megatron(hf, cfg), strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing)
    tokens = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens, torch.arange(20).expand(2, 20), attention_mask=None)
        theirs = hf(tokens).logits
    assert ours.shape == (2, 20, padded_vocab_size(cfg.vocab_size))
    # float32 RoPE tables on both sides limit agreement to ~1e-7 even in float64.
    torch.testing.assert_close(ours[..., : cfg.vocab_size], theirs, rtol=1e-5, atol=1e-6)
    if sliding_window is not None:  # the window matters at this length: a full-causal HF model differs
        full = _hf_model(None)
        full.load_state_dict(hf.state_dict())
        with torch.no_grad():
            assert (full(tokens).logits - theirs).abs().max() > 1e-3


# megatron's local attention replaces any given mask by its own when a sliding window is set.
@pytest.mark.parametrize(("attention", "sliding_window"), [("sdpa", None), ("sdpa", 6), ("local", None)])
def test_document_mask_computes_each_packed_document_as_if_alone(
    megatron_cpu: None, attention: str, sliding_window: int | None
) -> None:
    """Packed documents under `document_attention_mask` give the logits transformers gives each
    document on its own (RoPE is relative, so the offset in the window does not matter)."""
    from vikhr.model.attention import document_attention_mask

    cfg = preset("tiny", sliding_window=sliding_window)
    hf = _hf_model(sliding_window)
    model = build_gpt_model(cfg, attention=attention, params_dtype=torch.float32).double().eval()
    model.load_state_dict(_hf_to_megatron(hf, cfg), strict=False)
    tokens = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(2))
    lengths = [[9, 11], [4, 13, 3]]
    segments = torch.tensor([[d for d, n in enumerate(row) for _ in range(n)] for row in lengths])
    with torch.no_grad():
        packed = model(
            tokens,
            torch.arange(20).expand(2, 20),
            attention_mask=document_attention_mask(segments, sliding_window),
        )
        plain = model(tokens, torch.arange(20).expand(2, 20), attention_mask=None)
        for b, row in enumerate(lengths):
            start = 0
            for n in row:
                alone = hf(tokens[b : b + 1, start : start + n]).logits[0]
                torch.testing.assert_close(
                    packed[b, start : start + n, : cfg.vocab_size], alone, rtol=1e-5, atol=1e-5
                )
                start += n
    # Without the mask, later documents see the earlier ones.
    assert (plain[0, 9:] - packed[0, 9:]).abs().max() > 1e-3
    torch.testing.assert_close(plain[0, :9], packed[0, :9])


def test_full_recompute_gives_the_same_gradients_from_fewer_saved_activations(megatron_cpu: None) -> None:
    """train.recompute: full keeps only each layer's input for backward and runs the layer again."""
    from vikhr.runtime.distributed import seed_everything

    cfg = preset("tiny", num_layers=4)
    tokens = torch.randint(0, cfg.vocab_size, (2, 64), generator=torch.Generator().manual_seed(3))
    position_ids = torch.arange(64).expand(2, 64)
    results = {}
    for recompute in (False, True):
        seed_everything(5)
        model = build_gpt_model(cfg, attention="sdpa", recompute=recompute)
        saved: dict[int, int] = {}

        def keep(t: torch.Tensor, saved: dict[int, int] = saved) -> torch.Tensor:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            logits = model(tokens, position_ids, attention_mask=None)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.roll(-1, 1).flatten())
        loss.backward()
        activations = sum(n for ptr, n in saved.items() if ptr not in params)
        results[recompute] = (loss.detach(), [p.grad.clone() for p in model.parameters()], activations)
    (loss0, grads0, act0), (loss1, grads1, act1) = results[False], results[True]
    assert torch.equal(loss0, loss1)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-8) for a, b in zip(grads0, grads1, strict=True))
    assert act1 < 0.6 * act0, (act1, act0)


def test_every_parameter_has_the_params_dtype(megatron_cpu: None) -> None:
    """bf16 weights include the RMSNorm weights (Qwen3's per-head q/k norms too): torch's fused
    RMSNorm needs input and weight alike."""
    model = build_gpt_model(preset("tiny", qk_norm=True), attention="sdpa", params_dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert "decoder.layers.0.input_layernorm.weight" in dtypes and "decoder.final_layernorm.weight" in dtypes
    assert "decoder.layers.0.self_attention.k_layernorm.weight" in dtypes
    assert set(dtypes.values()) == {torch.bfloat16}, dtypes


def test_sdpa_spec_replaces_only_core_attention(megatron_cpu: None) -> None:
    from vikhr.model.attention import SDPAttention

    model = build_gpt_model(preset("tiny"), attention="sdpa")
    cores = [m for m in model.modules() if type(m).__name__ in ("SDPAttention", "DotProductAttention")]
    assert len(cores) == preset("tiny").num_layers and all(isinstance(m, SDPAttention) for m in cores)


@pytest.mark.gpu
@pytest.mark.parametrize("qk_norm", [False, True])
def test_sdpa_spec_matches_local_spec_on_gpu_in_bf16(qk_norm: bool) -> None:
    from vikhr.runtime.distributed import distributed_env, seed_everything

    with distributed_env(tp_size=1, seed=3, device="cuda") as env:
        cfg = preset("small", sliding_window=None, qk_norm=qk_norm)
        out = {}
        for attention in ("local", "sdpa"):
            seed_everything(3)
            model = build_gpt_model(cfg, attention=attention, params_dtype=torch.bfloat16, on_gpu=env.on_gpu)
            model = model.cuda().eval()
            tokens = torch.randint(
                0, cfg.vocab_size, (2, 256), generator=torch.Generator().manual_seed(1)
            ).cuda()
            with torch.no_grad():
                out[attention] = model(tokens, torch.arange(256).cuda().expand(2, 256), attention_mask=None)
        torch.testing.assert_close(out["sdpa"].float(), out["local"].float(), rtol=3e-2, atol=3e-2)


# Totals of the published checkpoints (their model cards / safetensors indexes), reached here through
# transformers' own model classes from each preset's config.json.
@pytest.mark.parametrize(
    ("name", "architecture", "total"),
    [
        ("llama-3-8b", "MistralForCausalLM", 8_030_261_248),  # Llama's computation, no sliding window
        ("llama-3.1-8b", "LlamaForCausalLM", 8_030_261_248),
        ("qwen2.5-7b", "Qwen2ForCausalLM", 7_615_616_512),
        ("qwen2.5-0.5b", "Qwen2ForCausalLM", 494_032_768),
        ("mistral-nemo-12b", "MistralForCausalLM", 12_247_782_400),
        ("qwen3-8b", "Qwen3ForCausalLM", 8_190_735_360),
        ("qwen3-0.6b", "Qwen3ForCausalLM", 596_049_920),
    ],
)
def test_llama_qwen_and_nemo_presets_have_the_published_sizes(
    name: str, architecture: str, total: int
) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from vikhr.convert.mistral import hf_config_to_model_config, model_config_to_hf_config

    p = PRESETS[name]
    fields = model_config_to_hf_config(p)
    assert hf_config_to_model_config(fields) == p
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**fields))
    assert type(model).__name__ == architecture
    assert sum(t.numel() for t in model.parameters()) == total
    # The dry-run memory estimate counts the same parameters (QKV biases in, a tied head once).
    from vikhr.train.memory import parameter_counts

    assert parameter_counts(p, tp=1, vocab_multiple=1)[0] == total


def test_llama3_rope_frequencies_are_transformers(megatron_cpu: None) -> None:
    """vikhr computes llama3-scaled RoPE frequencies from all four parameters, as transformers does;
    megatron-core's own scaling agrees only at Llama-3.1's fixed (1, 4, 8192)."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from vikhr.convert.mistral import model_config_to_hf_config
    from vikhr.model.gpt import llama3_inv_freq

    for cfg in (
        PRESETS["llama-3.1-8b"],
        preset("tiny", rope_scaling_factor=8.0, rope_original_max_seq_len=64),
    ):
        hf = LlamaConfig.from_dict(model_config_to_hf_config(cfg, {"model_type": "llama"}))
        theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
        torch.testing.assert_close(llama3_inv_freq(cfg), theirs, rtol=0, atol=0)
    p = PRESETS["llama-3.1-8b"]
    megatron = RotaryEmbedding(
        p.head_dim, 1.0, rotary_base=500_000, rope_scaling=True, use_cpu_initialization=True
    )
    torch.testing.assert_close(megatron.inv_freq, llama3_inv_freq(p))
    tiny = preset("tiny", rope_theta=500_000.0, rope_scaling_factor=8.0, rope_original_max_seq_len=64)
    model = build_gpt_model(tiny, attention="sdpa")
    assert torch.equal(model.rotary_pos_emb.inv_freq, llama3_inv_freq(tiny))
    assert not torch.allclose(megatron.inv_freq[:8], llama3_inv_freq(tiny)[:8])


def test_qkv_bias_tied_embeddings_and_explicit_head_size_shape_the_model(megatron_cpu: None) -> None:
    from vikhr.train.checkpoint import model_tensors

    cfg = preset("tiny", qkv_bias=True, tie_embeddings=True, num_attention_heads=8, kv_channels=16)
    shapes = {k: tuple(v.shape) for k, v in model_tensors(build_gpt_model(cfg, attention="sdpa")).items()}
    assert shapes["decoder.layers.0.self_attention.linear_qkv.weight"] == ((8 + 2 * 2) * 16, 64)
    assert shapes["decoder.layers.0.self_attention.linear_qkv.bias"] == ((8 + 2 * 2) * 16,)
    assert shapes["decoder.layers.0.self_attention.linear_proj.weight"] == (64, 8 * 16)
    assert "output_layer.weight" not in shapes
    assert preset("tiny").to_dict().keys() == {
        "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_kv_heads", "vocab_size",
        "max_seq_len", "rope_theta", "sliding_window", "norm_eps", "init_std",
    }  # fmt: skip
    assert cfg.to_dict()["kv_channels"] == 16
    qk = preset("tiny", qk_norm=True, kv_channels=32)
    shapes = {k: tuple(v.shape) for k, v in model_tensors(build_gpt_model(qk, attention="sdpa")).items()}
    assert shapes["decoder.layers.1.self_attention.q_layernorm.weight"] == (32,)
    assert shapes["decoder.layers.1.self_attention.k_layernorm.weight"] == (32,)
    assert qk.to_dict()["qk_norm"] is True


def test_auto_attention_takes_te_only_where_megatron_imported_it(tmp_path: Path, monkeypatch) -> None:
    """A transformer_engine package that is there but does not import (built for another torch)
    is absent for megatron, whose TE layer spec would then fail: "auto" gives SDPA, as `vikhr
    doctor` reports; where megatron has TE, "auto" on a GPU takes it."""
    from megatron.core.models.gpt import gpt_layer_specs

    from vikhr.errors import VikhrError
    from vikhr.model import resolve_attention

    broken = tmp_path / "transformer_engine"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('built for another torch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(gpt_layer_specs, "HAVE_TE", False)
    assert resolve_attention("auto", on_gpu=True) == "sdpa"
    # Asked for by name: one line, not megatron's NameError from inside its TE layer spec.
    with pytest.raises(VikhrError, match="could not import Transformer Engine here"):
        resolve_attention("te", on_gpu=True)
    monkeypatch.setattr(gpt_layer_specs, "HAVE_TE", True)
    assert resolve_attention("auto", on_gpu=True) == "te"
    assert resolve_attention("auto", on_gpu=False) == "sdpa"
    with pytest.raises(VikhrError, match=r"model\.attention = te needs a GPU"):
        resolve_attention("te", on_gpu=False)


def test_a_checkpoints_rope_scaling_is_compared_with_a_run_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """to_dict() leaves a later family's fields out at their defaults: a Llama-3.1 checkpoint (llama3
    RoPE scaling) loaded into a run without scaling silently, and exported as another model."""
    from vikhr.errors import VikhrError
    from vikhr.model.config import shape_differences
    from vikhr.train import checkpoint

    scaled, plain = PRESETS["llama-3.1-8b"].to_dict(), PRESETS["llama-3-8b"].to_dict()
    assert "rope_scaling_factor" in scaled and "rope_scaling_factor" not in plain
    assert shape_differences(scaled, plain) == ["rope_scaling_factor 8.0 (run: None)"]
    assert shape_differences(plain, scaled) == ["rope_scaling_factor None (run: 8.0)"]
    assert shape_differences(scaled, dict(scaled, max_seq_len=4096)) == []
    # A field the run leaves at its default, saved at that default by an older meta.json: equal.
    assert shape_differences(plain, dict(plain, qkv_bias=False, tie_embeddings=False)) == []
    monkeypatch.setattr(checkpoint, "checkpoint_problem", lambda *args, **kwargs: None)
    monkeypatch.setattr(checkpoint, "read_meta", lambda step_dir: {"model": scaled, "tp": 1})
    with pytest.raises(VikhrError, match=r"another model shape: rope_scaling_factor 8.0 \(run: None\)"):
        checkpoint.load_model(torch.nn.Linear(1, 1), tmp_path, 0, 1, expected=plain)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_is_eager_silu_times_up_bit_for_bit_and_keeps_only_its_input(
    dtype: torch.dtype, device: str
) -> None:
    from vikhr.model.swiglu import swiglu

    g = torch.Generator().manual_seed(4)
    fc1_out = (3 * torch.randn(2, 7, 2 * 45, generator=g)).to(device, dtype).requires_grad_()
    grad = torch.randn(2, 7, 45, generator=g).to(device, dtype)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ours = swiglu(fc1_out)
    gate, up = fc1_out.chunk(2, dim=-1)
    eager = torch.nn.functional.silu(gate) * up
    assert torch.equal(ours, eager)
    (ours_grad,), (eager_grad,) = (
        torch.autograd.grad(ours, fc1_out, grad),
        torch.autograd.grad(eager, fc1_out, grad),
    )
    assert torch.equal(ours_grad, eager_grad)
    assert len(saved) == 1 and saved[0] is fc1_out
    with pytest.raises(ValueError, match="even last dimension"):
        swiglu(torch.zeros(3, 5))


def _kept_for_backward(model: torch.nn.Module, run) -> dict[int, int]:
    """The distinct storages (data pointer: bytes) autograd keeps during `run()`, the model's
    weights (and views of them, such as a transposed weight) excluded."""
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return {ptr: n for ptr, n in kept.items() if ptr not in weights}


def test_sdpa_spec_keeps_no_more_for_backward_than_transformers(megatron_cpu: None) -> None:
    """The layers keep what HF Mistral's keep or less: the MLP its fc1 output (vikhr.model.swiglu,
    not megatron's chunks plus a copy of the up half), attention a copy of V (not the whole fused
    QKV output, of which V is a view)."""
    _compare_kept_for_backward("cpu", torch.float32, rtol=1e-4)


@pytest.mark.gpu
def test_sdpa_spec_keeps_no_more_for_backward_than_transformers_on_gpu_in_bf16() -> None:
    """The same with torch's flash / memory-efficient SDPA kernels, which keep their own tensors."""
    from vikhr.runtime.distributed import distributed_env

    with distributed_env(tp_size=1, seed=7, device="cuda"):
        _compare_kept_for_backward("cuda", torch.bfloat16, rtol=3e-2)


def _compare_kept_for_backward(device: str, dtype: torch.dtype, rtol: float) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    from vikhr.convert.mistral import model_config_to_hf_config

    cfg = preset("tiny", hidden_size=128, ffn_hidden_size=512, num_attention_heads=8, kv_channels=16)
    hf_config = MistralConfig.from_dict(model_config_to_hf_config(cfg), attn_implementation="sdpa")
    hf = MistralForCausalLM(hf_config).to(device, dtype)
    model = build_gpt_model(cfg, attention="sdpa", params_dtype=dtype, on_gpu=device == "cuda")
    model.load_state_dict(_hf_to_megatron(hf, cfg), strict=False)
    tokens = torch.randint(0, cfg.vocab_size, (2, 128), generator=torch.Generator().manual_seed(2)).to(device)
    positions = torch.arange(128, device=device).expand(2, 128)
    # Held here, so that no later tensor can take a freed QKV output's address.
    qkv_outputs: list[torch.Tensor] = []
    for layer in model.decoder.layers:
        layer.self_attention.linear_qkv.register_forward_hook(lambda _m, _i, out: qkv_outputs.append(out[0]))
    out: dict[str, torch.Tensor] = {}
    ours = _kept_for_backward(model, lambda: out.setdefault("ours", model(tokens, positions, None)))
    theirs = _kept_for_backward(hf, lambda: out.setdefault("theirs", hf(tokens, use_cache=False).logits))
    logits = out["ours"][..., : cfg.vocab_size].float()
    torch.testing.assert_close(logits, out["theirs"].float(), rtol=rtol, atol=rtol)
    assert len(qkv_outputs) == cfg.num_layers
    assert not {t.untyped_storage().data_ptr() for t in qkv_outputs} & set(ours)
    assert sum(ours.values()) <= sum(theirs.values()), (sum(ours.values()), sum(theirs.values()))


def test_swiglu_benchmark_checks_exactness_then_prints_its_table(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "tools" / "bench_swiglu.py"
    run = subprocess.run(
        [sys.executable, str(script), "--shapes", "64x48", "--runs", "1"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    rows = {line.split()[1]: line.split()[-1] for line in run.stdout.splitlines()[2:]}
    # Kept for backward against eager (fc1 output + silu's output): megatron adds a copy of the up
    # half, vikhr keeps the fc1 output only.
    assert rows == {"eager": "1.00x", "megatron": "1.33x", "vikhr": "0.67x"}, run.stdout

    bench = load_tool("bench_swiglu")
    monkeypatch.setitem(bench.IMPLEMENTATIONS, "vikhr swiglu", lambda x: bench.eager(x) * 1.0001)
    x = torch.randn(8, 6, requires_grad=True)
    with pytest.raises(SystemExit, match="vikhr swiglu: output or gradient differs"):
        bench.check_exact(x, torch.randn(8, 3))
