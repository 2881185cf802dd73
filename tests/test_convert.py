"""HF <-> Megatron conversion: logits match transformers at TP=1 and TP=2; round trips are exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_torchrun
from vikhr.convert import hf_config_to_model_config, hf_to_megatron, megatron_to_hf
from vikhr.errors import VikhrError

SCRIPT = REPO / "tests" / "scripts" / "convert_logits.py"


def _tiny_hf(path: Path, tied: bool = False, llama: bool = False, shards: bool = False) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    kw = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
    )
    if llama:
        model = LlamaForCausalLM(LlamaConfig(**kw))
    else:
        model = MistralForCausalLM(MistralConfig(sliding_window=None, **kw))
    # Non-trivial norms so a swapped layernorm would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path, max_shard_size="100KB" if shards else "10GB")
    return path


def _hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("tp", [1, 2])
def test_round_trip_is_bit_exact(tmp_path: Path, tp: int) -> None:
    hf = _tiny_hf(tmp_path / "hf", shards=True)
    meg = hf_to_megatron(hf, tmp_path / "meg", tp_size=tp)
    assert sorted(p.name for p in meg.glob("model_tp*.safetensors")) == [
        f"model_tp{r:02d}.safetensors" for r in range(tp)
    ]
    back = megatron_to_hf(meg, tmp_path / "back")
    a, b = _hf_tensors(hf), _hf_tensors(back)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_tied_llama_converts_with_lm_head_from_embeddings(tmp_path: Path) -> None:
    hf = _tiny_hf(tmp_path / "hf", tied=True, llama=True)
    back = megatron_to_hf(hf_to_megatron(hf, tmp_path / "meg"), tmp_path / "back")
    t = _hf_tensors(back)
    assert torch.equal(t["lm_head.weight"], t["model.embed_tokens.weight"])


def test_logits_match_transformers_tp1(tmp_path: Path) -> None:
    hf = _tiny_hf(tmp_path / "hf")
    meg = hf_to_megatron(hf, tmp_path / "meg", tp_size=1)
    run_torchrun(SCRIPT, str(hf), str(meg), str(tmp_path / "out.json"), nproc=1)
    res = json.loads((tmp_path / "out.json").read_text())
    assert res["shape"] == [2, 24, 300]
    assert res["max_abs_diff"] < 1e-4, res


@pytest.mark.distributed
def test_logits_match_transformers_tp2(tmp_path: Path) -> None:
    hf = _tiny_hf(tmp_path / "hf")
    meg = hf_to_megatron(hf, tmp_path / "meg", tp_size=2)
    run_torchrun(SCRIPT, str(hf), str(meg), str(tmp_path / "out.json"), nproc=2)
    res = json.loads((tmp_path / "out.json").read_text())
    assert res["max_abs_diff"] < 1e-4, res


def test_hf_config_mapping_and_errors(tmp_path: Path) -> None:
    cfg = hf_config_to_model_config(
        {
            "model_type": "mistral",
            "num_hidden_layers": 32,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 32000,
            "max_position_embeddings": 32768,
            "rope_theta": 10000.0,
            "sliding_window": 4096,
            "rms_norm_eps": 1e-5,
        }
    )
    from vikhr.model import preset

    assert cfg == preset("mistral-7b-v0.1").with_overrides(init_std=0.02)
    with pytest.raises(VikhrError, match="model_type"):
        hf_config_to_model_config({"model_type": "gpt2"})
    hf = _tiny_hf(tmp_path / "hf")
    with pytest.raises(VikhrError, match="does not divide"):
        hf_to_megatron(hf, tmp_path / "meg", tp_size=4)  # 2 KV heads
    assert not (tmp_path / "meg").exists()
    hf_to_megatron(hf, tmp_path / "meg2")
    with pytest.raises(VikhrError, match="--overwrite"):
        hf_to_megatron(hf, tmp_path / "meg2")
    (hf / "model.safetensors").unlink()
    with pytest.raises(VikhrError, match="safetensors"):
        hf_to_megatron(hf, tmp_path / "meg3")


def test_cli_round_trip_and_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    hf = _tiny_hf(tmp_path / "hf")

    def vikhr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vikhr", *args], capture_output=True, text=True)

    ok = vikhr("convert", "hf-to-megatron", str(hf), str(tmp_path / "meg"), "--tp", "2")
    assert ok.returncode == 0, ok.stderr
    ok = vikhr("convert", "megatron-to-hf", str(tmp_path / "meg"), str(tmp_path / "back"))
    assert ok.returncode == 0, ok.stderr
    a, b = _hf_tensors(hf), _hf_tensors(tmp_path / "back")
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = vikhr("convert", "hf-to-megatron", str(tmp_path / "missing"), str(tmp_path / "x"))
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "not found" in bad.stderr
