"""HF <-> Megatron conversion: logits match transformers at TP=1 and TP=2; round trips are exact;
every input tensor is accounted for; HF exports carry their tokenizer and load with no other arguments."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import re
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import REPO, run_torchrun
from tests.helpers import (
    FAMILIES,
    TerminalStderr,
    hub_snapshot,
    load_tool,
    sentencepiece_with_added_tokens,
    tiny_hf_model,
)
from vikhr.adapt.safetensors_io import read_header
from vikhr.assets import MISTRAL_TOKENIZER
from vikhr.cli import main as cli_main
from vikhr.convert import hf_config_to_model_config, hf_to_megatron, megatron_to_hf, model_config_to_hf_config
from vikhr.errors import VikhrError
from vikhr.tokenizer.load import load

SCRIPT = REPO / "tests" / "scripts" / "convert_logits.py"
VOCAB = 300
TEXT = "Привет, мир! Hello world.\nВторая строка"


def _tiny_hf(
    path: Path,
    tied: bool = False,
    llama: bool = False,
    shards: bool = False,
    family: str | None = None,
    **kw: Any,
) -> Path:
    """A tiny random HF checkpoint: Mistral (or Llama), or one of tests.helpers.FAMILIES."""

    def norms(model: torch.nn.Module) -> None:
        # Non-trivial norms and biases (HF starts them at 1 and 0) so a swapped one would show.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.5)

    kw.setdefault("vocab_size", VOCAB)
    kw.setdefault("max_seq_len", 128)
    arch = "llama" if llama else "mistral"
    if family is not None:
        arch, fields = FAMILIES[family]
        kw = {**fields, **kw}
    size = "100KB" if shards else "10GB"
    tiny_hf_model(path, arch=arch, tied=tied, max_shard_size=size, weights=norms, **kw)
    return path


def _hf_tensors(path: Path) -> dict[str, torch.Tensor]:
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
    # The vocabulary is padded to a multiple of 128 x TP (docs/scaling.md): 300 -> 384, or 512 at TP 2.
    padded = {1: 384, 2: 512}[tp]
    assert json.loads((meg / "meta.json").read_text())["padded_vocab_size"] == padded
    rows = read_header(meg / "model_tp00.safetensors").tensors["embedding.word_embeddings.weight"].shape[0]
    assert rows == padded // tp
    back = megatron_to_hf(meg, tmp_path / "back")
    a, b = _hf_tensors(hf), _hf_tensors(back)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_conversions_hold_one_tensor_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tensor is written (to every TP rank's file) before the next is made: a conversion needs
    one tensor's memory, not the model's (it collected the whole converted model first)."""
    import vikhr.convert.mistral as mistral
    from vikhr.adapt.safetensors_io import SafetensorsWriter

    events: list[str] = []

    def watched(make: Any) -> Any:
        def tensors(*args: Any) -> Any:
            for item in make(*args):
                events.append("made")
                yield item

        return tensors

    add = SafetensorsWriter.add
    monkeypatch.setattr(SafetensorsWriter, "add", lambda self, *a: (events.append("written"), add(self, *a)))
    monkeypatch.setattr(mistral, "_megatron_full_tensors", watched(mistral._megatron_full_tensors))
    monkeypatch.setattr(mistral, "_gather_hf_tensors", watched(mistral._gather_hf_tensors))
    hf = _tiny_hf(tmp_path / "hf")
    meg = hf_to_megatron(hf, tmp_path / "meg", tp_size=2)
    assert events and events == ["made", "written", "written"] * (len(events) // 3)
    events.clear()
    megatron_to_hf(meg, tmp_path / "back")
    assert events and events == ["made", "written"] * (len(events) // 2)


def _bytes_written_by_this_process() -> int:
    """What this process has handed to write() so far (Linux: /proc/self/io's wchar)."""
    io_stats = Path("/proc/self/io")
    if not io_stats.is_file():
        pytest.skip("needs Linux's /proc/self/io")
    return int(re.search(r"^wchar: (\d+)$", io_stats.read_text(), re.M).group(1))


def test_a_conversion_writes_each_output_byte_once(tmp_path: Path) -> None:
    """Each output file's header is written first and then each tensor's data, once: the data went
    to a spool file beside the output and were copied into it at the end (every byte written twice,
    42-55 % of the time, and a spool of the checkpoint's size on the disk)."""
    hf = _tiny_hf(tmp_path / "hf", hidden_size=256, ffn_hidden_size=1024)  # ~8 MiB of weights
    for convert, out in [
        (lambda: hf_to_megatron(hf, tmp_path / "meg", tp_size=2), tmp_path / "meg"),
        (lambda: megatron_to_hf(tmp_path / "meg", tmp_path / "back"), tmp_path / "back"),
    ]:
        before = _bytes_written_by_this_process()
        convert()
        written = _bytes_written_by_this_process() - before
        output = sum(f.stat().st_size for f in out.iterdir())
        assert output > 4 << 20
        assert written < output + (256 << 10), (out.name, written, output)  # a few log lines of slack


def test_the_header_first_writer_gives_files_safetensors_reads_for_odd_dtypes_shapes_and_layouts(
    tmp_path: Path,
) -> None:
    """SafetensorsWriter's files load in the reference library with every tensor's bits: bf16, bool,
    0-dim, empty and non-contiguous (transposed, expanded, strided) tensors; headers of every length
    modulo 8 (the data buffer must start 8-byte aligned, one already aligned gets no padding); and a
    file of no tensor at all."""
    import struct

    from vikhr.adapt.safetensors_io import SafetensorsWriter, read_header, safetensors_dtype

    tensors = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "transposed": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
        "expanded": torch.arange(3.0).expand(4, 3),
        "strided": torch.arange(10, dtype=torch.int16)[2:9:3],
    }
    cases = [tensors, {}] + [{"x" * n: torch.ones(1)} for n in range(8)]
    paddings = []
    for i, case in enumerate(cases):
        path = tmp_path / f"{i}.safetensors"
        layout = {name: (safetensors_dtype(t.dtype), tuple(t.shape)) for name, t in case.items()}
        with SafetensorsWriter(path, layout, metadata={"format": "pt"}) as writer:
            for name, t in case.items():
                writer.add(name, t)
            writer.finish()
        raw = path.read_bytes()
        (header_len,) = struct.unpack("<Q", raw[:8])
        assert header_len % 8 == 0
        paddings.append(header_len - len(raw[8 : 8 + header_len].rstrip(b" ")))
        assert len(raw) == 8 + header_len + sum(t.numel() * t.element_size() for t in case.values())
        back = load_file(str(path))
        assert set(back) == set(case)
        for name, t in case.items():
            assert back[name].dtype == t.dtype and back[name].shape == t.shape
            assert torch.equal(back[name], t), name
        assert list(read_header(path).tensors) == list(case)  # in layout order
    assert sorted(paddings[2:]) == list(range(8))  # one header already aligned: no padding


def test_a_header_that_cannot_be_written_closes_the_writer_s_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure writing the header (a full disk) happens in SafetensorsWriter's constructor, where
    the `with` block's exit is never reached: the file it opened must be closed there."""
    import vikhr.adapt.safetensors_io as io_module

    opened: list[Any] = []
    real_open = open
    monkeypatch.setattr(
        io_module, "open", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1], raising=False
    )

    def full_disk(fout: Any, header: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_module, "_write_header", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io_module.SafetensorsWriter(tmp_path / "x.safetensors", {"w": ("F32", (2,))})
    assert len(opened) == 1 and opened[0].closed


def test_a_tensor_unlike_the_written_header_is_an_error_and_leaves_no_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header is written before the data: a converted tensor out of its order, or of another
    shape or dtype, would give a file whose data do not match it. It is refused, naming the tensor,
    and the partly written directory is removed."""
    import vikhr.convert.mistral as mistral

    hf = _tiny_hf(tmp_path / "hf")
    meg = hf_to_megatron(hf, tmp_path / "meg")
    make_meg, make_hf = mistral._megatron_full_tensors, mistral._gather_hf_tensors

    def swapped(*args: Any) -> Any:  # the 2nd and 3rd tensors in each other's place
        tensors = make_meg(*args)
        first, second, third = next(tensors), next(tensors), next(tensors)
        yield from (first, third, second, *tensors)

    def halved(*args: Any) -> Any:  # the LM head's rows cut in half
        for name, tensor in make_hf(*args):
            yield name, tensor[: len(tensor) // 2] if name == "lm_head.weight" else tensor

    def widened(*args: Any) -> Any:  # the final norm in float64
        for name, tensor in make_hf(*args):
            yield name, tensor.double() if name == "model.norm.weight" else tensor

    def dropped(*args: Any) -> Any:  # no final norm and LM head
        tensors = list(make_hf(*args))
        yield from tensors[:-2]

    cases = [
        ("_megatron_full_tensors", swapped, lambda: hf_to_megatron(hf, tmp_path / "out", tp_size=2)),
        ("_gather_hf_tensors", halved, lambda: megatron_to_hf(meg, tmp_path / "out")),
        ("_gather_hf_tensors", widened, lambda: megatron_to_hf(meg, tmp_path / "out")),
        ("_gather_hf_tensors", dropped, lambda: megatron_to_hf(meg, tmp_path / "out")),
    ]
    for generator, faulty, convert in cases:
        with monkeypatch.context() as patch:
            patch.setattr(mistral, generator, faulty)
            with pytest.raises(RuntimeError, match=r"computed .* but the header says|never computed"):
                convert()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "meg"], faulty.__name__


def test_a_tensor_of_a_dtype_vikhr_cannot_read_is_named_with_its_own_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An FP8 k_proj in its own shard was reported as the q_proj of the shard before it (the first
    of the tensors fused into QKV); an FP8 rank 1 part as rank 0's."""
    hf = _tiny_hf(tmp_path / "hf", shards=True)
    fp8 = "model.layers.0.self_attn.k_proj.weight"
    (shard,) = [f for f in hf.glob("*.safetensors") if fp8 in load_file(str(f))]
    tensors = load_file(str(shard))
    assert "model.layers.0.self_attn.q_proj.weight" not in tensors  # fused with a tensor of another file
    tensors[fp8] = tensors[fp8].to(torch.float8_e4m3fn)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    assert cli_main(["convert", "hf-to-megatron", str(hf), str(tmp_path / "meg")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.endswith(f"error: {shard}: tensor {fp8}: unsupported safetensors dtype F8_E4M3"), line

    meg = hf_to_megatron(_tiny_hf(tmp_path / "hf2"), tmp_path / "meg2", tp_size=2)
    rank1 = next(meg.rglob("model_tp01.safetensors"))
    tensors = load_file(str(rank1))
    fc1 = "decoder.layers.0.mlp.linear_fc1.weight"
    tensors[fc1] = tensors[fc1].to(torch.float8_e4m3fn)
    save_file(tensors, str(rank1))
    assert cli_main(["convert", "megatron-to-hf", str(meg), str(tmp_path / "back")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.endswith(f"error: {rank1}: tensor {fc1}: unsupported safetensors dtype F8_E4M3"), line
    assert not (tmp_path / "meg").exists() and not (tmp_path / "back").exists()


def test_ranks_whose_copies_of_a_norm_differ_in_dtype_export_rank_0s(tmp_path: Path) -> None:
    """A replicated tensor is taken from rank 0; its header's dtype was the promotion over every
    rank's, so a BF16 norm in rank 0 beside an F32 one in rank 1 ended in a RuntimeError traceback
    ("computed model.norm.weight BF16 [..], but the header says ... F32") and no export."""
    meg = hf_to_megatron(_tiny_hf(tmp_path / "hf"), tmp_path / "meg", tp_size=2)
    rank0 = next(meg.rglob("model_tp00.safetensors"))
    tensors = load_file(str(rank0))
    norm = tensors["decoder.final_layernorm.weight"] = tensors["decoder.final_layernorm.weight"].bfloat16()
    save_file(tensors, str(rank0))
    back = megatron_to_hf(meg, tmp_path / "back")
    exported = load_file(str(back / "model.safetensors"))
    assert exported["model.norm.weight"].dtype == torch.bfloat16
    assert torch.equal(exported["model.norm.weight"], norm)


@pytest.mark.parametrize(("tied", "family"), [(False, "mistral"), (True, "llama3"), (False, "qwen2")])
def test_each_converted_tensor_is_freed_before_the_next_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tied: bool, family: str
) -> None:
    """While a tensor is made, no tensor made before it is still held (a view of the same storage
    aside): the embedding was kept to the end for the LM-head check, each layer's [gate; up]
    until the next layer's was built, and the loop variable until the next tensor came (a Mistral-7B
    conversion peaked at 1.49 GiB with 2+ layers instead of ~1.0)."""
    import weakref

    import vikhr.convert.mistral as mistral

    lingering: list[tuple[str, str]] = []

    def watched(make: Any) -> Any:
        def tensors(*args: Any) -> Any:
            made: list[tuple[str, Any, int]] = []
            source = make(*args)
            while (item := next(source, None)) is not None:
                name, tensor = item
                del item
                storage = tensor.untyped_storage().data_ptr()
                lingering.extend(
                    (old, name) for old, ref, ptr in made if ref() is not None and ptr != storage
                )
                made.append((name, weakref.ref(tensor), storage))
                yield name, tensor
                del tensor

        return tensors

    monkeypatch.setattr(mistral, "_megatron_full_tensors", watched(mistral._megatron_full_tensors))
    monkeypatch.setattr(mistral, "_gather_hf_tensors", watched(mistral._gather_hf_tensors))
    hf = _tiny_hf(tmp_path / "hf", tied=tied, family=family)
    meg = hf_to_megatron(hf, tmp_path / "meg", tp_size=2)
    assert lingering == []
    back = megatron_to_hf(meg, tmp_path / "back")
    assert lingering == []
    a, b = _hf_tensors(hf), _hf_tensors(back)
    assert all(torch.equal(a[k], b[k]) for k in b) and set(b) <= set(a)


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "mistral"])
def test_round_trip_of_each_family_is_bit_exact(tmp_path: Path, family: str, tp: int) -> None:
    hf = _tiny_hf(tmp_path / "hf", family=family)
    back = megatron_to_hf(hf_to_megatron(hf, tmp_path / "meg", tp_size=tp), tmp_path / "back")
    a, b = _hf_tensors(hf), _hf_tensors(back)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == [
        {"llama3": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}.get(
            family, "MistralForCausalLM"
        )
    ]
    assert hf_config_to_model_config(config) == hf_config_to_model_config(
        json.loads((hf / "config.json").read_text())
    )


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_load_hf_weights_gives_a_model_transformers_logits(tmp_path: Path, family: str) -> None:
    """An HF checkpoint read straight into a TP-1 model (no vikhr checkpoint written) gives the logits
    transformers gives; a model of another shape is refused naming the directory."""
    from transformers import AutoModelForCausalLM

    from vikhr.convert import load_hf_weights
    from vikhr.model import build_gpt_model
    from vikhr.runtime.distributed import distributed_env

    hf = _tiny_hf(tmp_path / "hf", family=family)
    cfg = hf_config_to_model_config(json.loads((hf / "config.json").read_text()))
    tokens = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    with distributed_env(tp_size=1, seed=0, device="cpu"):
        model = build_gpt_model(cfg, 1).eval()
        load_hf_weights(model, hf)
        with torch.no_grad():
            pos = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
            logits = model(tokens, pos, attention_mask=None)[..., : cfg.vocab_size]
        deeper = build_gpt_model(dataclasses.replace(cfg, num_layers=cfg.num_layers + 1), 1)
        with pytest.raises(VikhrError, match=f"checkpoint {re.escape(str(hf))} does not match the model"):
            load_hf_weights(deeper, hf)
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()(tokens).logits
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_a_qwen_checkpoint_whose_layers_do_not_slide_converts_and_exports_to_transformers_logits(
    tmp_path: Path, family: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """use_sliding_window: true where no layer slides (max_window_layers covering every layer; a
    window as long as the context on every layer_types "sliding_attention" layer) was refused. Read,
    it gives transformers' logits on a text longer than the window; exported, its layer_types are
    full attention (a "sliding_attention" layer without a window fails to load in transformers)."""
    from transformers import AutoModelForCausalLM

    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    for name, fields in {
        "covered": {"sliding_window": 4, "max_window_layers": 2, "layer_types": None},
        "spanning": {"sliding_window": 128, "max_window_layers": 0, "layer_types": ["sliding_attention"] * 2},
    }.items():
        hf = _tiny_hf(tmp_path / name / "hf", family=family)
        _edit_config(hf, use_sliding_window=True, **fields)
        source = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        assert len(source.config.layer_types) == 2  # (transformers derives them where the file has none)
        meg = hf_to_megatron(hf, tmp_path / name / "meg")
        back = megatron_to_hf(meg, tmp_path / name / "back")
        exported = json.loads((back / "config.json").read_text())
        assert (exported["use_sliding_window"], exported["layer_types"]) == (False, ["full_attention"] * 2)
        with torch.no_grad():
            want = source(tokens).logits
            got = AutoModelForCausalLM.from_pretrained(back, dtype=torch.float32).eval()(tokens).logits
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    hf = _tiny_hf(tmp_path / "sliding" / "hf", family=family)
    _edit_config(hf, use_sliding_window=True, sliding_window=4, max_window_layers=1, layer_types=None)
    out = tmp_path / "sliding" / "meg"
    _fails(_to_megatron(hf, out), capsys, out, "makes 1 of 2 layers slide (max_window_layers 1;")


def test_a_rope_theta_with_a_fraction_gives_transformers_logits(tmp_path: Path) -> None:
    """The model took RoPE's θ as an integer (10.5 as 10): a converted checkpoint whose config.json
    gives a fractional θ computed other frequencies and logits than transformers, silently."""
    from transformers import AutoModelForCausalLM

    from vikhr.convert import load_hf_weights
    from vikhr.model import build_gpt_model
    from vikhr.runtime.distributed import distributed_env

    hf = _tiny_hf(tmp_path / "hf", llama=True, rope_theta=10.5)
    cfg = hf_config_to_model_config(json.loads((hf / "config.json").read_text()))
    assert cfg.rope_theta == 10.5
    tokens = torch.randint(0, cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(3))
    with distributed_env(tp_size=1, seed=0, device="cpu"):
        model = build_gpt_model(cfg, 1).eval()
        load_hf_weights(model, hf)
        with torch.no_grad():
            logits = model(tokens, torch.arange(tokens.shape[1])[None], attention_mask=None)[..., :VOCAB]
    reference = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    assert torch.equal(model.rotary_pos_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    with torch.no_grad():
        want = reference(tokens).logits
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)


def test_tied_llama_converts_without_an_output_layer(tmp_path: Path) -> None:
    hf = _tiny_hf(tmp_path / "hf", tied=True, llama=True)
    meg = hf_to_megatron(hf, tmp_path / "meg")
    assert "output_layer.weight" not in load_file(str(meg / "model_tp00.safetensors"))
    back = megatron_to_hf(meg, tmp_path / "back")
    assert "lm_head.weight" not in _hf_tensors(back)
    assert json.loads((back / "config.json").read_text())["tie_word_embeddings"] is True


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[str]]:
    """Each family's tiny HF checkpoint and its conversions, as convert_logits.py arguments per TP."""
    root = tmp_path_factory.mktemp("families")
    args: dict[int, list[str]] = {1: [], 2: []}
    for family in FAMILIES:
        hf = _tiny_hf(root / family, family=family)
        for tp in (1, 2):
            args[tp] += [str(hf), str(hf_to_megatron(hf, root / f"{family}-tp{tp}", tp_size=tp))]
    return args


def _check_logits(converted: dict[int, list[str]], out: Path, tp: int) -> None:
    run_torchrun(SCRIPT, str(out), *converted[tp], nproc=tp)
    results = json.loads(out.read_text())
    assert len(results) == len(FAMILIES)
    for hf, res in results.items():
        assert res["shape"] == [2, 24, VOCAB], hf
        assert res["max_abs_diff"] < 1e-4, (hf, res)


def test_logits_match_transformers_tp1(converted: dict[int, list[str]], tmp_path: Path) -> None:
    _check_logits(converted, tmp_path / "out.json", tp=1)


@pytest.mark.distributed
def test_logits_match_transformers_tp2(converted: dict[int, list[str]], tmp_path: Path) -> None:
    _check_logits(converted, tmp_path / "out.json", tp=2)


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
    with pytest.raises(VikhrError, match="hidden_size must be a positive integer"):
        hf_config_to_model_config({"model_type": "llama", "num_hidden_layers": 2})
    mistral = {
        "model_type": "mistral",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "vocab_size": 100,
    }
    # A string or null where a number belongs failed deep in the model's checks (a TypeError).
    for key, value, message in (
        ("rms_norm_eps", "1e-05", "rms_norm_eps must be a positive number, got '1e-05'"),
        ("max_position_embeddings", None, "max_position_embeddings must be a positive integer, got None"),
        ("num_key_value_heads", "2", "num_key_value_heads must be a positive integer, got '2'"),
        ("sliding_window", 0, "sliding_window must be a positive integer, got 0"),
        ("rope_theta", "1e4", "rope_theta must be a positive number, got '1e4'"),
    ):
        with pytest.raises(VikhrError, match=re.escape(message)):
            hf_config_to_model_config({**mistral, key: value})
    assert hf_config_to_model_config({**mistral, "sliding_window": None}).sliding_window is None
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


def test_llama3_qwen2_and_nemo_configs_read_as_the_presets() -> None:
    from vikhr.model import preset

    llama31 = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rms_norm_eps": 1e-05,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
    }
    assert hf_config_to_model_config(llama31) == preset("llama-3.1-8b")
    # transformers 5 writes the same as rope_parameters.
    v5 = {k: v for k, v in llama31.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {**llama31["rope_scaling"], "rope_theta": 500000.0}
    assert hf_config_to_model_config(v5) == preset("llama-3.1-8b")
    qwen = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "num_hidden_layers": 24,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
        "sliding_window": 32768,
        "use_sliding_window": False,
        "max_window_layers": 21,
        "tie_word_embeddings": True,
    }
    assert hf_config_to_model_config(qwen) == preset("qwen2.5-0.5b")
    nemo = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "num_hidden_layers": 40,
        "hidden_size": 5120,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 131072,
        "max_position_embeddings": 1024000,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-05,
        "sliding_window": None,
    }
    assert hf_config_to_model_config(nemo) == preset("mistral-nemo-12b")
    qwen3_small = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "num_hidden_layers": 28,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000,
        "rms_norm_eps": 1e-06,
        "attention_bias": False,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
    }
    assert hf_config_to_model_config(qwen3_small) == preset("qwen3-0.6b")
    qwen3 = {
        **qwen3_small,
        "num_hidden_layers": 36,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_attention_heads": 32,
        "tie_word_embeddings": False,
    }
    assert hf_config_to_model_config(qwen3) == preset("qwen3-8b")
    with pytest.raises(VikhrError, match="attention_bias / mlp_bias are not supported"):
        hf_config_to_model_config({**qwen3, "attention_bias": True})
    # Without head_dim a Qwen3 config means transformers' default, 128, not hidden / heads.
    no_head_dim = {k: v for k, v in qwen3_small.items() if k != "head_dim"}
    assert hf_config_to_model_config(no_head_dim) == preset("qwen3-0.6b")
    with pytest.raises(VikhrError, match="rope_type 'yarn' is not supported"):
        hf_config_to_model_config({**llama31, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(VikhrError, match="llama3 rope scaling lacks"):
        hf_config_to_model_config({**llama31, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    # Qwen2.5's window spans its context: no layer slides, whatever use_sliding_window says.
    assert hf_config_to_model_config({**qwen, "use_sliding_window": True}) == preset("qwen2.5-0.5b")
    with pytest.raises(VikhrError, match=r"sliding_window 4096 .* makes 3 of 24 layers slide"):
        hf_config_to_model_config({**qwen, "use_sliding_window": True, "sliding_window": 4096})


QWEN_LAYERS = 24


def _qwen_sliding(family: str, **fields: Any) -> dict[str, Any]:
    """A 24-layer Qwen2/Qwen3 config.json with use_sliding_window and `fields` over it (None: left out)."""
    base = {
        "model_type": family,
        "num_hidden_layers": QWEN_LAYERS,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "vocab_size": 1000,
        "max_position_embeddings": 32768,
        "use_sliding_window": True,
        "sliding_window": 4096,
    }
    return {k: v for k, v in {**base, **fields}.items() if v is not None}


def _transformers_slides(hf: dict[str, Any]) -> bool:
    """Whether transformers' own config class gives some layer a window shorter than the context."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(**hf)
    window = cfg.sliding_window
    reach = window is not None and window < cfg.max_position_embeddings
    return reach and "sliding_attention" in cfg.layer_types


_NO_LAYER_SLIDES = [
    {"max_window_layers": QWEN_LAYERS},
    {"max_window_layers": None},  # transformers' default, 28
    {"sliding_window": None},
    {"sliding_window": 32768, "max_window_layers": 0},  # as long as the context: never takes effect
    {"max_window_layers": 0, "layer_types": ["full_attention"] * QWEN_LAYERS},  # the list decides
    {"use_sliding_window": False, "max_window_layers": 0},
]
_SOME_LAYER_SLIDES = [
    (
        {"max_window_layers": 21},
        r"makes 3 of 24 layers slide \(max_window_layers 21; the first is layer 21\)",
    ),
    ({"max_window_layers": 0}, r"makes 24 of 24 layers slide \(max_window_layers 0; the first is layer 0\)"),
    (
        {
            "max_window_layers": QWEN_LAYERS,
            "layer_types": ["full_attention"] * 5 + ["sliding_attention"] * 19,
        },
        r"makes 19 of 24 layers slide \(its layer_types; the first is layer 5\)",
    ),
]


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_a_qwen_config_with_use_sliding_window_is_refused_only_where_a_layer_slides(family: str) -> None:
    """use_sliding_window: true was refused outright, though transformers gives no layer a window
    where max_window_layers covers them all, the layer_types list none, or the window is null or
    spans the context. Which layers slide is checked against transformers' own config class."""
    plain = hf_config_to_model_config(_qwen_sliding(family, use_sliding_window=False))
    assert plain.sliding_window is None
    for fields in _NO_LAYER_SLIDES:
        hf = _qwen_sliding(family, **fields)
        assert not _transformers_slides(hf), fields
        assert hf_config_to_model_config(hf) == plain, fields
    for fields, message in _SOME_LAYER_SLIDES:
        hf = _qwen_sliding(family, **fields)
        assert _transformers_slides(hf), fields
        with pytest.raises(
            VikhrError, match=rf"config\.json: use_sliding_window .*{message}; {family} layers"
        ):
            hf_config_to_model_config(hf)
    with pytest.raises(VikhrError, match="max_window_layers must be a non-negative integer, got '4'"):
        hf_config_to_model_config(_qwen_sliding(family, max_window_layers="4"))


@pytest.mark.parametrize("family", ["mistral", "llama", "qwen2", "qwen3"])
def test_keys_a_config_leaves_out_mean_what_they_mean_to_transformers(family: str) -> None:
    """A key missing from config.json has the default of the family's transformers config class:
    rms_norm_eps was 1e-5 where transformers takes 1e-6, a Mistral's sliding_window None where it
    takes 4096, max_position_embeddings 4096, and the KV heads those of attention."""
    from transformers import AutoConfig

    minimal = {
        "model_type": family,
        "num_hidden_layers": 2,
        "hidden_size": 2048,
        "intermediate_size": 128,
        "num_attention_heads": 32,
        "vocab_size": 1000,
    }
    written = AutoConfig.for_model(**minimal).to_dict()  # every key, as transformers fills it in
    assert hf_config_to_model_config(minimal) == hf_config_to_model_config(written)
    cfg = hf_config_to_model_config(minimal)
    assert cfg.norm_eps == 1e-6
    assert cfg.sliding_window == (4096 if family == "mistral" else None)
    assert cfg.head_dim == (128 if family == "qwen3" else 64)


SMALL_LLAMA_CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "vocab_size": 100,
}


def test_configs_transformers_would_run_otherwise_are_refused_or_read_as_it_does() -> None:
    """Each of these converted (exit 0) into a model whose logits differ from transformers': an
    activation other than SiLU, a sliding window on Llama (transformers ignores the key), RoPE given
    twice with different values; a rope_scaling string was a traceback."""
    llama = dict(SMALL_LLAMA_CONFIG)
    with pytest.raises(VikhrError, match=r"hidden_act 'gelu' is not supported \(only silu\)"):
        hf_config_to_model_config({**llama, "hidden_act": "gelu"})
    assert hf_config_to_model_config({**llama, "hidden_act": "swish"}) == hf_config_to_model_config(llama)
    assert hf_config_to_model_config({**llama, "sliding_window": 16}).sliding_window is None
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    v4 = {**llama, "rope_theta": 500000.0, "rope_scaling": scaling}
    v5 = {**llama, "rope_parameters": {**scaling, "rope_theta": 500000.0}}
    assert (
        hf_config_to_model_config(v4)
        == hf_config_to_model_config(v5)
        == hf_config_to_model_config({**v4, **v5})
    )
    for twice in (
        {**llama, "rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
        {**v5, "rope_scaling": scaling},  # the legacy form's θ is the default 10000
        {**v4, "rope_parameters": {"rope_type": "default"}},
    ):
        with pytest.raises(VikhrError, match="keep one of the two forms"):
            hf_config_to_model_config(twice)
    with pytest.raises(VikhrError, match="rope_scaling must be a mapping or null, got 'linear'"):
        hf_config_to_model_config({**llama, "rope_scaling": "linear"})
    with pytest.raises(VikhrError, match="per-layer-type RoPE is not supported"):
        hf_config_to_model_config({**llama, "rope_parameters": {"full_attention": {"rope_theta": 1e6}}})
    # Qwen3 with llama3 RoPE: read, and written back as Qwen3 (export refused it).
    qwen3 = {**v5, "model_type": "qwen3", "head_dim": 16}
    cfg = hf_config_to_model_config(qwen3)
    exported = model_config_to_hf_config(cfg)
    assert exported["model_type"] == "qwen3" and hf_config_to_model_config(exported) == cfg


def test_a_rope_theta_inside_rope_scaling_is_read_as_transformers_5_reads_it() -> None:
    """transformers 5's `config.rope_scaling` holds θ, and 5 takes θ from there: a config.json
    written from it ({"rope_type": "default", "rope_theta": 1e6}, no top-level rope_theta) was
    read with the default θ 10000, silently; a top-level θ that disagrees is refused (4 reads it)."""
    llama = dict(SMALL_LLAMA_CONFIG)
    inside = {**llama, "rope_scaling": {"rope_type": "default", "rope_theta": 1e6}}
    assert hf_config_to_model_config(inside).rope_theta == 1e6
    assert hf_config_to_model_config({**inside, "rope_theta": 1e6}).rope_theta == 1e6
    scaled = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    cfg = hf_config_to_model_config({**llama, "rope_scaling": scaled})
    assert (cfg.rope_theta, cfg.rope_scaling_factor) == (500000.0, 8.0)
    with pytest.raises(VikhrError, match=r"rope_theta 10000\.0 but rope_scaling's rope_theta 1000000\.0"):
        hf_config_to_model_config({**inside, "rope_theta": 10000.0})


def test_a_model_safetensors_beside_an_index_is_refused(tmp_path: Path) -> None:
    """transformers loads model.safetensors when both exist, vikhr read the index's shards: two
    different models under one name (exit 0)."""
    hf = _tiny_hf(tmp_path / "hf", shards=True)
    other = _tiny_hf(tmp_path / "other")
    shutil.copy(other / "model.safetensors", hf / "model.safetensors")
    with pytest.raises(
        VikhrError, match=r"holds both model\.safetensors and model\.safetensors\.index\.json"
    ):
        hf_to_megatron(hf, tmp_path / "meg")
    assert not (tmp_path / "meg").exists()


@pytest.mark.parametrize(
    ("family", "tensor"), [("qwen2", "self_attn.k_proj.bias"), ("qwen3", "self_attn.k_norm.weight")]
)
def test_missing_qkv_bias_or_qk_norm_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], family: str, tensor: str
) -> None:
    hf = _tiny_hf(tmp_path / "hf", family=family)
    tensors = load_file(str(hf / "model.safetensors"))
    del tensors[f"model.layers.1.{tensor}"]
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "meg"
    _fails(_to_megatron(hf, out), capsys, out, f"model.layers.1.{tensor}", "lack")


def test_an_existing_output_directory_is_replaced_only_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both directions took an existing empty output directory (a mistyped path that happened to
    exist, another run's fresh directory) where tokenizer train, adapt-vocab, import-tekken and merge
    refuse any existing one without --overwrite: one line now, before any work, the directory left
    as it was; --overwrite writes it."""
    hf = _tiny_hf(tmp_path / "hf")
    for argv, out, written in (
        (["hf-to-megatron", str(hf)], tmp_path / "meg", "meta.json"),
        (["megatron-to-hf", str(tmp_path / "meg")], tmp_path / "back", "config.json"),
    ):
        out.mkdir()
        capsys.readouterr()
        assert cli_main(["convert", *argv, str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        refusal = f"error: output directory {out} exists (choose another OUT_DIR or pass --overwrite)"
        assert err == [f"vikhr convert {argv[0]}: {refusal}"]
        assert list(out.iterdir()) == []
        assert cli_main(["convert", *argv, str(out), "--overwrite"]) == 0
        assert (out / written).is_file()


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = _tiny_hf(tmp_path / "hf")
    assert cli_main(["convert", "hf-to-megatron", str(hf), str(tmp_path / "meg"), "--tp", "2"]) == 0
    assert cli_main(["convert", "megatron-to-hf", str(tmp_path / "meg"), str(tmp_path / "back")]) == 0
    assert "without a tokenizer" in capsys.readouterr().out  # the tiny HF model has none
    a, b = _hf_tensors(hf), _hf_tensors(tmp_path / "back")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", [None, "qwen3"])
def test_cli_shows_a_bar_over_the_tensors_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, family: str | None
) -> None:
    """A 7B conversion takes minutes: each direction shows a bar that ends at its tensor count (it
    printed nothing until the end), and none where stderr is not a terminal or with --no-progress."""
    hf = _tiny_hf(tmp_path / "hf", family=family)
    n_hf = len(load_file(str(hf / "model.safetensors")))
    runs = [
        (["hf-to-megatron", str(hf), str(tmp_path / "meg"), "--tp", "2"], None),
        (["megatron-to-hf", str(tmp_path / "meg"), str(tmp_path / "back")], n_hf),
        (["megatron-to-hf", str(tmp_path / "meg"), str(tmp_path / "quiet"), "--no-progress"], 0),
    ]
    for argv, tensors in runs:
        terminal = TerminalStderr()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert cli_main(["convert", *argv]) == 0
        monkeypatch.undo()
        if tensors == 0:
            assert "converting" not in terminal.getvalue()
            continue
        if tensors is None:  # one megatron tensor per fused pair or triple of HF ones
            tensors = len(load_file(str(tmp_path / "meg" / "model_tp00.safetensors")))
        assert "converting: 100%" in terminal.getvalue() and f"{tensors}/{tensors}" in terminal.getvalue()


# --------------------------------------------------------------------------- self-contained exports


def _assert_loads_alone(hf_dir: Path) -> Any:
    """AutoTokenizer / AutoModelForCausalLM with no other arguments agree with vikhr's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = load(MISTRAL_TOKENIZER)
    warned: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = warned.append  # type: ignore[method-assign]
    logging.getLogger("transformers").addHandler(catcher)
    try:
        tok = AutoTokenizer.from_pretrained(hf_dir)
    finally:
        logging.getLogger("transformers").removeHandler(catcher)
    # transformers 5 reads a Mistral config.json without its version as one whose tokenizer needs
    # `fix_mistral_regex=True`: a false alarm on every load, whose advice would change the ids.
    assert not [r for r in warned if "fix_mistral_regex" in r.getMessage()]
    installed = importlib.metadata.version("transformers")
    assert json.loads((hf_dir / "config.json").read_text())["transformers_version"] == installed
    assert tok(TEXT).input_ids == [reference.bos_id, *reference.encode(TEXT)]
    assert (tok.bos_token_id, tok.eos_token_id) == (reference.bos_id, reference.eos_id) == (1, 2)
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    assert (model.config.bos_token_id, model.config.eos_token_id) == (1, 2)
    assert (model.generation_config.bos_token_id, model.generation_config.eos_token_id) == (1, 2)
    assert model(torch.tensor([tok(TEXT).input_ids])).logits.shape[-1] == 32000
    return tok


def test_export_carries_the_tokenizer_recorded_by_hf_to_megatron(tmp_path: Path) -> None:
    hf = _tiny_hf(tmp_path / "hf", vocab_size=32000)
    shutil.copyfile(MISTRAL_TOKENIZER, hf / "tokenizer.model")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(
        json.dumps({**config, "transformers_version": "4.34.0.dev0"})
    )  # Mistral-7B's
    meg = hf_to_megatron(hf, tmp_path / "meg")
    assert json.loads((meg / "meta.json").read_text())["tokenizer"] == "tokenizer/tokenizer.model"
    out = megatron_to_hf(meg, tmp_path / "out")
    for name in ("tokenizer.model", "tokenizer.json", "special_tokens_map.json", "generation_config.json"):
        assert (out / name).is_file(), name
    assert (out / "tokenizer.model").read_bytes() == MISTRAL_TOKENIZER.read_bytes()
    _assert_loads_alone(out)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hf_with_a_chat_tokenizer(path: Path) -> Path:
    """A tiny HF model whose tokenizer.json has a chat template in chat_template.jinja, a pad token in
    its tokenizer_config.json and stop ids in generation_config.json: the files an export reads
    beside the tokenizer."""
    hf = _tiny_hf(path, llama=True)
    _word_level_tokenizer(path.parent / "tok", pad_token="<|pad|>")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(path.parent / "tok" / name, hf / name)
    (hf / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['content'] }}<|endoftext|>{% endfor %}"
    )
    _edit_config(hf, bos_token_id=None, eos_token_id=1, pad_token_id=3)
    (hf / "generation_config.json").write_text(json.dumps({"eos_token_id": 1, "temperature": 0.6}))
    return hf


def test_a_converted_checkpoint_exports_its_tokenizer_once_the_hf_source_is_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint recorded the tokenizer by its path in the HF directory: download, convert,
    delete the download, and the export of the checkpoint (and of every run trained from it) failed
    with "tokenizer …/tokenizer.json (from meta.json) not found". It now holds a copy of the tokenizer
    files, recorded relative to it, so it may also be moved; a run trained from it keeps one in each
    checkpoint."""
    from transformers import AutoTokenizer

    hf = _hf_with_a_chat_tokenizer(tmp_path / "hf")
    source = AutoTokenizer.from_pretrained(hf)
    digest = _sha256(hf / "tokenizer.json")
    generation = json.loads((hf / "generation_config.json").read_text())
    start = hf_to_megatron(hf, tmp_path / "download-meg")
    shape = json.loads((start / "meta.json").read_text())["model"]
    _train_from(start, shape, tmp_path / "run", steps=2)
    shutil.rmtree(hf)
    shutil.rmtree(tmp_path / "tok")
    moved = start.rename(tmp_path / "meg")  # the checkpoint moved too
    exports = {"converted": megatron_to_hf(moved, tmp_path / "out")}
    exports["trained"] = megatron_to_hf(tmp_path / "run", tmp_path / "run-out")
    # Its start gone as well, the run resumed (only its last step kept): still self-contained.
    shutil.rmtree(moved)
    assert (
        cli_main(
            ["pretrain", "--config", str(tmp_path / "run.yaml"), "train.steps=3", "checkpoint.keep_last=1"]
        )
        == 0
    )
    assert not (tmp_path / "run" / "step_000002").exists()
    moved_run = (tmp_path / "run").rename(tmp_path / "run-moved")
    capsys.readouterr()
    exports["resumed"] = megatron_to_hf(moved_run, tmp_path / "resumed-out")
    assert "warning" not in capsys.readouterr().err
    for name, out in exports.items():
        assert _sha256(out / "tokenizer.json") == digest, name
        exported = AutoTokenizer.from_pretrained(out)
        assert exported.chat_template == source.chat_template is not None, name
        assert (exported.pad_token_id, exported.eos_token_id) == (3, 1), name
        assert (
            json.loads((out / "generation_config.json").read_text())["temperature"]
            == generation["temperature"]
        )


def test_a_run_on_data_tokenized_from_the_hf_source_exports_once_the_source_is_deleted(
    tmp_path: Path,
) -> None:
    """Data pre-tokenized with the HF directory's tokenizer records it by its path there, and that
    record names the run's tokenizer: deleting the directory after converting made the export fail
    although each checkpoint holds a copy. The copy is read where it is that file by sha256."""
    from vikhr.data import preprocess

    hf = _hf_with_a_chat_tokenizer(tmp_path / "hf")
    digest = _sha256(hf / "tokenizer.json")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": "привет " * 40}) + "\n" for _ in range(40)), encoding="utf-8")
    preprocess(
        [src], tmp_path / "ru", hf / "tokenizer.json", tokenizer_type="HuggingFaceTokenizer", append_eod=True
    )
    for suffix in (".bin", ".idx", ".tokenization.json"):  # the dataset `_train_from` trains on
        (tmp_path / f"ru_text_document{suffix}").rename(tmp_path / f"tokens{suffix}")
    start = hf_to_megatron(hf, tmp_path / "meg")
    _train_from(start, json.loads((start / "meta.json").read_text())["model"], tmp_path / "run", steps=1)
    meta = json.loads((tmp_path / "run" / "step_000001" / "meta.json").read_text())
    assert meta["data_tokenizer"]["path"] == str(hf.resolve() / "tokenizer.json")
    shutil.rmtree(hf)
    out = megatron_to_hf(tmp_path / "run", tmp_path / "out")
    assert _sha256(out / "tokenizer.json") == digest


@pytest.mark.parametrize("kept_in", ["chat_template.jinja", "tokenizer_config.json"])
def test_an_sft_run_on_chats_prepared_with_the_hf_source_s_template_exports_it_once_the_source_is_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kept_in: str
) -> None:
    """Chats prepared with the HF directory's tokenizer and its own chat template (`--template own`)
    record both by their path there; the directory deleted after converting, the run resumes and the
    export reads them from the checkpoint's copy of its start's tokenizer (the same file by sha256):
    the same tokenizer and chat template, without a warning that the template is not the one tuned
    with."""
    import yaml

    from vikhr.sft.prepare import prepare_sft

    hf = _hf_with_a_chat_tokenizer(tmp_path / "hf")
    digest = _sha256(hf / "tokenizer.json")
    template = (hf / "chat_template.jinja").read_text()
    if kept_in == "tokenizer_config.json":
        config = json.loads((hf / kept_in).read_text())
        (hf / kept_in).write_text(json.dumps({**config, "chat_template": template}))
        (hf / "chat_template.jinja").unlink()
    chat = {
        "messages": [{"role": "user", "content": "привет"}, {"role": "assistant", "content": "привет привет"}]
    }
    chats = tmp_path / "chats.jsonl"
    chats.write_text((json.dumps(chat, ensure_ascii=False) + "\n") * 40, encoding="utf-8")
    prepare_sft(chats, hf, tmp_path / "chats", template="own")
    start = hf_to_megatron(hf, tmp_path / "meg")
    shape = json.loads((start / "meta.json").read_text())["model"]
    config = {
        "model": {"preset": "tiny", "attention": "sdpa", "overrides": shape, "init": str(start)},
        "parallel": {"tensor": 1, "device": "cpu"},
        "data": {"kind": "sft", "train": [{"prefix": str(tmp_path / "chats"), "name": "chats"}],
                 "split": "90,10,0", "seq_len": 32, "eod_id": 3},
        "train": {"steps": 1, "micro_batch": 1, "global_batch": 2},
        "optim": {"warmup_steps": 0},
        "checkpoint": {"dir": str(tmp_path / "run"), "save_every": 1},
        "logging": {"eval_every": 100, "tensorboard": False},
    }  # fmt: skip
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert cli_main(["sft", "train", "--config", str(tmp_path / "sft.yaml")]) == 0
    meta = json.loads((tmp_path / "run" / "step_000001" / "meta.json").read_text())
    assert meta["data_tokenizer"]["path"] == str(hf.resolve() / "tokenizer.json")
    assert meta["data_tokenizer"]["template"] == "own"
    shutil.rmtree(hf)
    # A resume reads the chats' records too, their tokenizer gone.
    assert cli_main(["sft", "train", "--config", str(tmp_path / "sft.yaml"), "train.steps=2"]) == 0
    capsys.readouterr()
    out = megatron_to_hf(tmp_path / "run", tmp_path / "out")
    assert "warning" not in capsys.readouterr().err
    assert _sha256(out / "tokenizer.json") == digest
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == template


def test_a_checkpoint_recording_its_tokenizer_by_an_absolute_path_is_read_as_before(tmp_path: Path) -> None:
    """Checkpoints converted by older versions record the HF directory's tokenizer file by its path."""
    hf = _tiny_hf(tmp_path / "hf", vocab_size=32000)
    shutil.copyfile(MISTRAL_TOKENIZER, hf / "tokenizer.model")
    meg = hf_to_megatron(hf, tmp_path / "meg")
    shutil.rmtree(meg / "tokenizer")
    meta = json.loads((meg / "meta.json").read_text())
    (meg / "meta.json").write_text(json.dumps({**meta, "tokenizer": str((hf / "tokenizer.model").resolve())}))
    out = megatron_to_hf(meg, tmp_path / "out")
    assert (out / "tokenizer.model").read_bytes() == MISTRAL_TOKENIZER.read_bytes()


def test_a_vocab_and_merges_source_is_told_at_conversion_that_it_records_no_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An HF directory with only vocab.json + merges.txt converted silently with no tokenizer
    recorded: the export then had none. The conversion now says so in one line with the command that
    writes a tokenizer.json; after it, the conversion records one."""
    import subprocess

    hf = _tiny_hf(tmp_path / "hf", family="qwen2")  # Qwen2's tokenizer is a GPT-2-style BPE
    vocab = {"<|endoftext|>": 0, "h": 1, "i": 2, "hi": 3, "Ġ": 4, "Ġhi": 5}
    (hf / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (hf / "merges.txt").write_text("#version: 0.2\nh i\nĠ hi\n", encoding="utf-8")
    (hf / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}', encoding="utf-8")
    capsys.readouterr()
    assert cli_main(_to_megatron(hf, tmp_path / "meg")) == 0
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: {hf} has a vocab.json and merges.txt but no tokenizer.json: ")
    assert "records no tokenizer" in line and line.endswith(", then convert again")
    assert "tokenizer" not in json.loads((tmp_path / "meg" / "meta.json").read_text())
    command = line.split("python -c ", 1)[1].removesuffix(", then convert again")
    subprocess.run(f"{sys.executable} -c {command}", shell=True, check=True, capture_output=True)
    assert cli_main([*_to_megatron(hf, tmp_path / "meg"), "--overwrite"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "meg" / "meta.json").read_text())["tokenizer"] == "tokenizer/tokenizer.json"
    assert load(tmp_path / "meg" / "tokenizer" / "tokenizer.json").encode("hi hi") == [3, 5]


def test_an_export_into_a_step_directory_of_a_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`megatron-to-hf runs/x/step_N runs/x/step_N/hf` wrote the export where the run's
    checkpoint.keep_last deletes it with the step."""
    run = _trained_from(hf_to_megatron(_tiny_hf(tmp_path / "hf"), tmp_path / "meg"), tmp_path / "run")
    step = run / "step_000002"
    for out in (step / "hf", step / "exports" / "hf"):
        argv = ["convert", "megatron-to-hf", str(step), str(out)]
        _fails(
            argv, capsys, step / "hf", f"OUT_DIR {out} is inside {step}, a checkpoint step of the run {run}"
        )
    assert not (step / "exports").exists()
    err = _fails(["convert", "hf-to-megatron", str(tmp_path / "hf"), str(step / "meg")], capsys, step / "meg")
    assert err.endswith(f"e.g. {run / 'hf-2'}")
    megatron_to_hf(step, run / "hf-2")  # where it points: kept by keep_last, found by the run's latest
    assert megatron_to_hf(run, tmp_path / "from-run").is_dir()


def test_tokens_added_to_a_sentencepiece_base_are_exported(tmp_path: Path) -> None:
    """A chat model on a SentencePiece base whose tokenizer.json adds <|im_end|> / <|im_start|>: the
    export rebuilt the tokenizer from the .model (32000 tokens, EOS </s>, the chat tags spelled out
    as text) where transformers loads the tokenizer.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = sentencepiece_with_added_tokens(_tiny_hf(tmp_path / "hf", vocab_size=32002))
    _edit_config(hf, eos_token_id=32000)
    meg = hf_to_megatron(hf, tmp_path / "meg")
    assert json.loads((meg / "meta.json").read_text())["tokenizer"].endswith("tokenizer.json")
    out = megatron_to_hf(meg, tmp_path / "out")
    source, exported = AutoTokenizer.from_pretrained(hf), AutoTokenizer.from_pretrained(out)
    assert len(exported) == len(source) == 32002
    assert (exported.eos_token, exported.eos_token_id) == ("<|im_end|>", 32000)

    def chat_ids(tok: Any) -> list[int]:
        got = tok.apply_chat_template([{"role": "user", "content": "Привет"}], add_generation_prompt=True)
        return list(getattr(got, "input_ids", got))

    assert chat_ids(exported) == chat_ids(source) and chat_ids(source)[0] == 32001
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.eos_token_id == model.generation_config.eos_token_id == 32000


def test_the_model_file_that_tokens_are_added_to_is_exported_with_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chat model whose tokenizer.json adds <|im_start|>/<|im_end|> to a SentencePiece
    tokenizer.model (ChatML on a Mistral base) was exported with the tokenizer.json alone, though the
    checkpoint's copy of its tokenizer holds the .model: llama.cpp's GGUF converter reads a Llama or
    Mistral model's tokenizer.model first. The .model goes with the export where the tokenizer.json
    is it with tokens added after its own; one of other pieces is left out with a warning."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from tests.helpers import sentencepiece_with_other_ids

    hf = sentencepiece_with_added_tokens(_tiny_hf(tmp_path / "hf", vocab_size=32002))
    meg = hf_to_megatron(hf, tmp_path / "meg")
    assert (meg / "tokenizer" / "tokenizer.model").is_file()  # the checkpoint's copy
    out = megatron_to_hf(meg, tmp_path / "out")
    assert (out / "tokenizer.model").read_bytes() == MISTRAL_TOKENIZER.read_bytes()
    fast = AutoTokenizer.from_pretrained(out)
    assert fast.is_fast and len(fast) == 32002
    base = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    for text in (TEXT, "Москва — столица России. The quick brown fox jumps over the lazy dog."):
        ids = fast(text, add_special_tokens=False).input_ids
        assert ids == base.encode(text) and max(ids) < base.get_piece_size()
    assert fast.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [32001, 32000]
    # A .model of other pieces beside the tokenizer.json is another vocabulary: it stays out.
    sentencepiece_with_other_ids(meg / "tokenizer" / "tokenizer.model")
    capsys.readouterr()
    other = megatron_to_hf(meg, tmp_path / "other")
    assert not (other / "tokenizer.model").exists()
    assert AutoTokenizer.from_pretrained(other)(TEXT).input_ids == fast(TEXT).input_ids
    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: {meg / 'tokenizer' / 'tokenizer.model'} is left out")
    assert "differ from tokenizer.json's at id 1000" in warning and "slow tokenizers" in warning


def _export_leaving_out_the_model(src: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Writes the tokenizer files of SRC's tokenizer.json into OUT, checks that SRC's tokenizer.model
    stayed out of them with one warning line saying so, and returns that line."""
    from vikhr.convert.hf_tokenizer import write_tokenizer_files

    out.mkdir()
    capsys.readouterr()
    write_tokenizer_files(load(src / "tokenizer.json"), out)
    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: {src / 'tokenizer.model'} is left out of the export")
    assert "will not load it" in warning
    assert (out / "tokenizer.json").is_file() and not (out / "tokenizer.model").exists()
    return warning


@pytest.mark.parametrize("past_the_model", ["an added token", "a vocabulary piece"])
def test_a_model_file_beside_a_tokenizer_json_is_left_out_with_a_warning_naming_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], past_the_model: str
) -> None:
    """A SentencePiece tokenizer.model that the tokenizer.json beside it does not extend was left out
    of the export silently (the export had a tokenizer.json only). One warning line now names it, the
    first id where they part, and what will not load; the export still has the tokenizer.json."""
    from tests.helpers import sentencepiece_with_other_ids

    src = sentencepiece_with_added_tokens(tmp_path / "src")
    if past_the_model == "an added token":  # the pieces differ below the .model's end
        sentencepiece_with_other_ids(src / "tokenizer.model")
        why = "its pieces differ from tokenizer.json's at id 1000 ("  # the first of the two swapped
    else:  # the .model's pieces, then <|im_end|> as a piece of the BPE's own vocabulary
        spec = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
        spec["model"]["vocab"]["<|im_end|>"] = 32000
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] != 32000]
        (src / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        why = "id 32000, past its 32000 pieces, is a vocabulary piece, not an added token"
    assert why in _export_leaving_out_the_model(src, tmp_path / "out", capsys)


@pytest.mark.parametrize(
    ("contents", "what"),
    [
        (b"\x00\xffnot a model\n" * 40, "corrupt, or of another format"),
        (b"IQ== 0\nIg== 1\nIw== 2\n", "a tiktoken BPE file"),  # Llama-3's original/tokenizer.model
        (json.dumps({"config": {"pattern": ""}, "vocab": []}).encode(), "a Mistral tekken file"),
    ],
    ids=["corrupt", "tiktoken", "tekken"],
)
def test_a_model_file_no_sentencepiece_reads_is_left_out_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], contents: bytes, what: str
) -> None:
    """A tokenizer.model beside the tokenizer.json that SentencePiece cannot parse (damaged bytes, a
    tiktoken or tekken file under that name) was left out of the export without a word. It gets the
    warning line of a .model of other pieces, saying what the file is; the export is written."""
    src = sentencepiece_with_added_tokens(tmp_path / "src")
    (src / "tokenizer.model").write_bytes(contents)
    warning = _export_leaving_out_the_model(src, tmp_path / "out", capsys)
    assert f"it is not a SentencePiece model vikhr can read ({what})" in warning


def test_a_stale_added_tokens_decoder_is_written_from_the_tokenizer_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The source's tokenizer_config.json was copied with its `added_tokens_decoder`. One that says
    otherwise than the tokenizer.json (tokens renumbered after an extension, a hand-made directory)
    made transformers add the tokens it names as new ones past the model's vocabulary, whose ids the
    model has no rows for, and take its flags over the json's. The export's is written from the
    tokenizer.json, with one warning line; the other keys stay."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files

    src = sentencepiece_with_added_tokens(tmp_path / "src")
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    stale = config["added_tokens_decoder"]
    entry = stale["32000"]
    stale["32000"] = {**entry, "content": "<|im_start|>"}  # the two swapped, as before a renumbering
    stale["32001"] = {**entry, "content": "<|im_end|>", "special": False}
    stale["32002"] = {**entry, "content": "<|eot_id|>"}  # a token the tokenizer.json does not have
    stale["1"]["rstrip"] = True
    (src / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    tok = load(src / "tokenizer.json")
    write_tokenizer_files(tok, out)
    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: {src / 'tokenizer_config.json'}: its added_tokens_decoder disagrees")
    assert "id 1 ('<s>') has rstrip True there, False in tokenizer.json (and 3 more)" in warning
    own = HFTokenizer.from_file(str(out / "tokenizer.json"))
    loaded = AutoTokenizer.from_pretrained(out)
    assert len(loaded) == tok.vocab_size == own.get_vocab_size()  # no token past the model's rows
    assert {i: (t.content, t.special, t.rstrip) for i, t in loaded.added_tokens_decoder.items()} == {
        i: (t.content, t.special, t.rstrip) for i, t in own.get_added_tokens_decoder().items()
    }
    assert (loaded.bos_token_id, loaded.eos_token_id) == (tok.bos_id, tok.eos_id)
    text = "<|im_start|>user\nПривет<|im_end|><|eot_id|>"
    assert loaded(text, add_special_tokens=False).input_ids == own.encode(text, add_special_tokens=False).ids
    written = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert written["chat_template"] == config["chat_template"]  # the other keys are the source's
    # A source whose entries agree with the json is written as it was, without a word.
    sentencepiece_with_added_tokens(tmp_path / "agreeing")
    (tmp_path / "agreeing-out").mkdir()
    capsys.readouterr()
    write_tokenizer_files(load(tmp_path / "agreeing" / "tokenizer.json"), tmp_path / "agreeing-out")
    assert capsys.readouterr().err == ""
    source = json.loads((tmp_path / "agreeing" / "tokenizer_config.json").read_text(encoding="utf-8"))
    again = json.loads((tmp_path / "agreeing-out" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert again["added_tokens_decoder"] == source["added_tokens_decoder"]


def test_special_tokens_the_tokenizer_json_lacks_are_left_out_of_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The source's tokenizer_config.json was copied with the pad, unk and other special tokens it names.
    One the tokenizer.json lacks (a hand-made config, another tokenizer's) transformers adds as a new id
    past the model's rows: `len(tokenizer)` grew, and padding with it, or text holding it, indexed past
    the embedding. Those keys and list entries are left out with one warning line; present ones stay."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer

    from vikhr.convert.hf_tokenizer import write_tokenizer_files
    from vikhr.tokenizer.load import pad_id

    src = sentencepiece_with_added_tokens(tmp_path / "src")
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update(
        pad_token="<pad>",  # Mistral's vocabulary has none
        unk_token={"__type": "AddedToken", "content": "<unk_0>", "special": True},
        sep_token="</s>",
        image_token="<image>",  # a model's own special token: transformers takes any `*_token` key
        additional_special_tokens=["<|im_start|>", "<|eot_id|>"],
    )
    (src / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = load(src / "tokenizer.json")
    with pytest.raises(VikhrError, match="pad_token '<pad>' is not in"):
        pad_id(tok)  # what vikhr says of such a source
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    ids, generation = write_tokenizer_files(tok, out)
    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: {src / 'tokenizer_config.json'}: ")
    for named in ("pad_token '<pad>'", "unk_token '<unk_0>'", "image_token '<image>'"):
        assert named in warning
    assert "additional_special_tokens '<|eot_id|>'" in warning and "'<|im_start|>'" not in warning
    assert f"transformers would add them as new ids from {tok.vocab_size} on" in warning
    written = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert not {"pad_token", "unk_token", "image_token"} & written.keys()
    assert written["sep_token"] == "</s>" and written["additional_special_tokens"] == ["<|im_start|>"]
    assert "pad_token" not in json.loads((out / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert "pad_token_id" not in ids and "pad_token_id" not in generation  # the source's decides
    assert pad_id(load(out / "tokenizer.json")) is None
    own = HFTokenizer.from_file(str(out / "tokenizer.json"))
    loaded = AutoTokenizer.from_pretrained(out)
    assert len(loaded) == tok.vocab_size == own.get_vocab_size()  # no token past the model's rows
    assert loaded.pad_token is None and loaded.sep_token == "</s>"
    text = "<|im_start|>user <pad><unk_0><image><|eot_id|></s>"
    assert loaded(text, add_special_tokens=False).input_ids == own.encode(text, add_special_tokens=False).ids


def test_special_tokens_written_as_plain_objects_load_in_the_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source tokenizer_config.json naming its mask and pad tokens as {"content": ...} objects without
    `"__type": "AddedToken"` (a hand-made config, an older writer's): transformers 5 refuses them
    (TypeError "has to be either str or AddedToken"), so the export crashed where it read the source's
    chat template with transformers, and its copy of the config would not load either. Both now read
    them as AddedTokens of the object's flags: the export loads, with the json's tokens at their ids."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer

    from vikhr.sft.own_template import own_template

    hf = sentencepiece_with_added_tokens(_tiny_hf(tmp_path / "hf", vocab_size=32004))
    json_tok = HFTokenizer.from_file(str(hf / "tokenizer.json"))
    json_tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<mask>", "<pad>")])
    json_tok.save(str(hf / "tokenizer.json"))
    config = json.loads((hf / "tokenizer_config.json").read_text(encoding="utf-8"))
    flags = {"lstrip": True, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config.update(
        mask_token={"content": "<mask>", **flags},
        pad_token={"content": "<pad>"},
        additional_special_tokens=[{"content": "<|im_start|>", "special": True}],
    )
    (hf / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert own_template(load(hf / "tokenizer.json")).end_of_turn_id(None) == 32000  # SFT's reading of it
    meg = hf_to_megatron(hf, tmp_path / "meg")
    capsys.readouterr()
    out = megatron_to_hf(meg, tmp_path / "out")
    assert capsys.readouterr().err == ""  # transformers loads the export as its tokenizer.json encodes
    ids = {t: json_tok.token_to_id(t) for t in ("<mask>", "<pad>", "<|im_start|>", "<|im_end|>")}
    assert ids == {"<mask>": 32002, "<pad>": 32003, "<|im_start|>": 32001, "<|im_end|>": 32000}
    loaded = AutoTokenizer.from_pretrained(out)
    assert len(loaded) == 32004  # no token past the model's rows
    assert (loaded.mask_token, loaded.mask_token_id) == ("<mask>", ids["<mask>"])
    assert (loaded.pad_token, loaded.pad_token_id) == ("<pad>", ids["<pad>"])
    assert loaded.convert_tokens_to_ids(["<|im_start|>"]) == [ids["<|im_start|>"]]
    model_config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert model_config["pad_token_id"] == ids["<pad>"]
    written = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert written["mask_token"] == {"__type": "AddedToken", "content": "<mask>", **flags}  # flags kept
    text = "<|im_start|>user a <mask> b<pad><|im_end|>"
    own = json_tok.encode(text, add_special_tokens=False).ids
    assert loaded(text, add_special_tokens=False).input_ids == own


SENTENCEPIECE_TEXTS = (
    TEXT,
    "Москва — столица России. The quick brown fox jumps over the lazy dog.",
    "В 2024 году: 1234567 руб.\n\n\tкод(x)  и   пробелы",
)


@pytest.mark.parametrize("dummy_prefix", [True, False])
def test_an_exported_sentencepiece_model_gives_its_ids_to_each_transformers_loader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dummy_prefix: bool
) -> None:
    """AutoTokenizer (`use_fast=False` is ignored by transformers 5) reads tokenizer.json; a user's
    LlamaTokenizer.from_pretrained builds its own Metaspace pre-tokenizer around the vocabulary, which
    prepended "▁" to every text of a model without a dummy prefix (Gemma's kind): other ids than the
    model was trained on. tokenizer_config.json now says `add_prefix_space` as the .model does."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, LlamaTokenizer

    from vikhr.assets import ASSETS
    from vikhr.tokenizer.hf_export import load_model_proto

    proto = load_model_proto(ASSETS / "tokenizers" / "vikhr-ru-40k.model")
    proto.normalizer_spec.add_dummy_prefix = dummy_prefix
    model = tmp_path / "tok" / "tokenizer.model"
    model.parent.mkdir()
    model.write_bytes(proto.SerializeToString())
    meg = hf_to_megatron(_tiny_hf(tmp_path / "hf", llama=True, vocab_size=40000), tmp_path / "meg")
    capsys.readouterr()
    out = megatron_to_hf(meg, tmp_path / "out", tokenizer=model)
    assert capsys.readouterr().err == ""  # transformers' ids are the model's: nothing to warn of
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    loaders = {
        "fast": AutoTokenizer.from_pretrained(out),
        "use_fast=False": AutoTokenizer.from_pretrained(out, use_fast=False),
        "LlamaTokenizer": LlamaTokenizer.from_pretrained(out),
    }
    for text in SENTENCEPIECE_TEXTS:
        for name, loader in loaders.items():
            assert loader(text).input_ids == [sp.bos_id(), *sp.encode(text)], (name, text)
    # The limit docs/tokenizer.md gives: Metaspace prepends no "▁" to a text that starts with a space.
    llama_ids = loaders["LlamaTokenizer"](" x", add_special_tokens=False).input_ids
    assert (llama_ids == sp.encode(" x")) is not dummy_prefix
    assert loaders["fast"](" x", add_special_tokens=False).input_ids == sp.encode(" x")


def _gpt2_byte_level_tokenizer(directory: Path) -> Path:
    """A byte-level BPE with GPT-2's pre-tokenizer (digit runs kept whole, no NFC) and <|endoftext|>,
    beside a tokenizer_config.json naming Qwen2Tokenizer (kept from the Qwen directory it was trained
    in)."""
    from tokenizers import Tokenizer as HFTokenizer

    from tests.test_sft_templates import byte_level_bpe

    directory.mkdir()
    bpe = HFTokenizer.from_str(byte_level_bpe("gpt2"))
    bpe.add_special_tokens(["<|endoftext|>"])
    bpe.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


@pytest.mark.parametrize("family", ["qwen3", "qwen2"])
def test_a_byte_level_bpe_of_another_pre_tokenizer_exported_as_qwen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], family: str
) -> None:
    """transformers 5 loads the tokenizer class that tokenizer_config.json names, and a qwen2
    config.json as Qwen2Tokenizer whatever it names: that class builds Qwen's NFC and pre-tokenizer
    (digits one by one) around the vocabulary, so a GPT-2-pre-tokenized BPE gave AutoTokenizer other
    ids than the model was trained on, silently. The export names PreTrainedTokenizerFast (which
    reads tokenizer.json whole: a qwen3 export now loads with the model's ids); where transformers
    overrides it (qwen2), one warning line says which loader gives the model's ids."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = _gpt2_byte_level_tokenizer(tmp_path / "tok")
    meg = hf_to_megatron(_tiny_hf(tmp_path / "hf", family=family, vocab_size=2001), tmp_path / "meg")
    capsys.readouterr()
    out = megatron_to_hf(meg, tmp_path / "out", tokenizer=tok)
    err = capsys.readouterr().err
    own = HFTokenizer.from_file(str(out / "tokenizer.json"))
    texts = ["В 2024 году 1234567 руб.", "Ещё раз: и\u0306 — it's", TEXT]
    expected = [own.encode(t, add_special_tokens=False).ids for t in texts]
    assert [PreTrainedTokenizerFast.from_pretrained(out)(t).input_ids for t in texts] == expected
    auto = [AutoTokenizer.from_pretrained(out)(t).input_ids for t in texts]
    if family == "qwen3":
        assert auto == expected and err == ""
    else:
        assert auto != expected  # transformers' own: the warning is what the export can do
        [warning] = err.splitlines()
        assert f"loads {out} (model_type qwen2) as Qwen2Tokenizer" in warning
        assert f"PreTrainedTokenizerFast.from_pretrained('{out}')" in warning


def test_a_tokenizer_transformers_fails_to_encode_with_is_a_warning_of_a_whole_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export's check of the tokenizer through transformers' AutoTokenizer is a warning: a tokenizer
    that transformers loads but fails to encode with ended the export with a traceback once its
    weights were written, and left no export."""
    import transformers

    class FailsToEncode:
        def __call__(self, text: str, **kwargs: Any) -> Any:
            raise ValueError("no encoding here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: FailsToEncode())
    tok = _gpt2_byte_level_tokenizer(tmp_path / "tok")
    meg = hf_to_megatron(_tiny_hf(tmp_path / "hf", family="qwen3", vocab_size=2001), tmp_path / "meg")
    capsys.readouterr()
    out = megatron_to_hf(meg, tmp_path / "out", tokenizer=tok)
    [warning] = capsys.readouterr().err.splitlines()
    assert f"transformers cannot load or use the tokenizer of {out}" in warning
    assert "ValueError: no encoding here" in warning
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("kind", ["tokenizer.json", "tokenizer.model"])
def test_a_hub_snapshot_records_its_tokenizer_by_name(tmp_path: Path, kind: str) -> None:
    """The files of a hub snapshot are links to blobs named by their hash: the blob's path was recorded,
    and the export then took a tokenizer.json blob for a .model (an error), and lost the chat template
    and stop ids beside a tokenizer.model."""
    from transformers import AutoTokenizer

    if kind == "tokenizer.json":
        hf = sentencepiece_with_added_tokens(_tiny_hf(tmp_path / "hf", vocab_size=32002))
    else:
        hf = _tiny_hf(tmp_path / "hf", vocab_size=32000)
        shutil.copyfile(MISTRAL_TOKENIZER, hf / "tokenizer.model")
        template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
        (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    snapshot = hub_snapshot(hf, tmp_path / "hub" / "models--x--y")
    meg = hf_to_megatron(snapshot, tmp_path / "meg")
    assert json.loads((meg / "meta.json").read_text())["tokenizer"] == f"tokenizer/{kind}"
    shutil.rmtree(tmp_path / "hub")  # the checkpoint holds the files, under their names
    out = megatron_to_hf(meg, tmp_path / "out")
    source, exported = AutoTokenizer.from_pretrained(hf), AutoTokenizer.from_pretrained(out)
    assert exported.chat_template == source.chat_template is not None
    assert (len(exported), exported.eos_token_id) == (len(source), source.eos_token_id)


def test_tokenizer_option_and_refusal_of_a_larger_vocabulary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = hf_to_megatron(_tiny_hf(tmp_path / "hf", vocab_size=32000), tmp_path / "meg")
    argv = [
        "convert",
        "megatron-to-hf",
        str(big),
        str(tmp_path / "out"),
        "--tokenizer",
        str(MISTRAL_TOKENIZER),
    ]
    assert cli_main(argv) == 0
    assert "AutoTokenizer" in capsys.readouterr().out
    _assert_loads_alone(tmp_path / "out")
    # An HF tokenizer.json (here the export's own) is carried with the tokenizer_config.json beside it.
    argv = ["convert", "megatron-to-hf", str(big), str(tmp_path / "from-json")]
    assert cli_main([*argv, "--tokenizer", str(tmp_path / "out" / "tokenizer.json")]) == 0
    # The .model beside it, of which it is the export, goes with it (GGUF converters read the .model).
    assert (tmp_path / "from-json" / "tokenizer.model").read_bytes() == MISTRAL_TOKENIZER.read_bytes()
    _assert_loads_alone(tmp_path / "from-json")

    small = hf_to_megatron(_tiny_hf(tmp_path / "hf-small"), tmp_path / "meg-small")
    argv = [
        "convert",
        "megatron-to-hf",
        str(small),
        str(tmp_path / "o2"),
        "--tokenizer",
        str(MISTRAL_TOKENIZER),
    ]
    err = _fails(argv, capsys, tmp_path / "o2", "has 32000 tokens", f"vocabulary has {VOCAB}")
    assert str(MISTRAL_TOKENIZER) in err
    # The same tokenizer inside the HF directory: refused at import (it was recorded, then refused
    # by the export, after training).
    shutil.copy2(MISTRAL_TOKENIZER, tmp_path / "hf-small" / "tokenizer.model")
    with pytest.raises(VikhrError, match=f"has 32000 tokens but the model's vocabulary has {VOCAB}"):
        hf_to_megatron(tmp_path / "hf-small", tmp_path / "meg-small2")
    assert not (tmp_path / "meg-small2").exists()


def test_sft_run_exports_its_tokenizer_and_chat_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SFT run records its tokenizer and template in the datasets' _sft.json; a run started from
    a converted checkpoint inherits that checkpoint's tokenizer through model.init."""
    from vikhr.sft.template import encode_chat, load_chat_tokenizer, parse_chat

    first = hf_to_megatron(_tiny_hf(tmp_path / "hf", vocab_size=32000), tmp_path / "meg")
    sft_run = tmp_path / "sft-run"
    shutil.copytree(first, sft_run)
    meta = json.loads((sft_run / "meta.json").read_text())
    assert "tokenizer" not in meta  # the HF directory had none
    meta["config"] = {
        "model": {"init": "random"},
        "data": {"kind": "sft", "train": [{"prefix": str(tmp_path / "chats")}]},
    }
    (sft_run / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "chats_sft.json").write_text(
        json.dumps({"tokenizer": str(MISTRAL_TOKENIZER), "template": "mistral"})
    )
    tok = _assert_loads_alone(megatron_to_hf(sft_run, tmp_path / "out"))
    chat = {
        "messages": [
            {"role": "system", "content": "Отвечай кратко."},
            {"role": "user", "content": "Столица Франции?"},
            {"role": "assistant", "content": "Париж."},
            {"role": "user", "content": "А Италии?"},
        ]
    }
    expected = encode_chat(
        parse_chat(chat, for_generation=True), load_chat_tokenizer(MISTRAL_TOKENIZER), for_generation=True
    )
    got = tok.apply_chat_template(chat["messages"], add_generation_prompt=True, tokenize=True)
    assert list(getattr(got, "input_ids", got)) == expected.ids

    # A continued run: no tokenizer of its own, model.init names the SFT checkpoint.
    continued = tmp_path / "continued"
    shutil.copytree(first, continued)
    meta["config"] = {"model": {"init": str(sft_run)}, "data": {"kind": "pretrain", "train": []}}
    (continued / "meta.json").write_text(json.dumps(meta))
    _assert_loads_alone(megatron_to_hf(continued, tmp_path / "out2"))

    # Relative paths in the config are relative to where the run trained (meta.json's cwd), not to
    # where the conversion runs.
    meta["config"] = {"model": {"init": "sft-run"}, "data": {"kind": "pretrain", "train": []}}
    (continued / "meta.json").write_text(json.dumps({**meta, "cwd": str(tmp_path)}))
    sft_meta = json.loads((sft_run / "meta.json").read_text())
    sft_meta["config"]["data"]["train"] = [{"prefix": "chats"}]
    (sft_run / "meta.json").write_text(json.dumps({**sft_meta, "cwd": str(tmp_path)}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tok = _assert_loads_alone(megatron_to_hf(continued, tmp_path / "out3"))
    assert tok.chat_template  # the SFT run's template, found through both relative paths


def test_an_sft_json_without_its_template_is_refused_not_read_as_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every `vikhr sft prepare` records the chat template in `_sft.json`; a file without one (made or
    edited by hand) was read two ways: `sft show` rendered it as `mistral`, the export as no template,
    writing a model without a chat template (exit 0) or warning "now records chat template None". One
    reading now: the export of a checkpoint that records no template of its own stops in one line, and
    one that records its template carries it without naming None."""
    from vikhr.sft.template import encode_chat, load_chat_tokenizer, parse_chat

    meg = hf_to_megatron(_tiny_hf(tmp_path / "hf", vocab_size=32000), tmp_path / "meg")
    step = _trained_from(meg, tmp_path / "sft-run") / "step_000002"
    meta = json.loads((step / "meta.json").read_text())
    meta["config"]["data"] = {"kind": "sft", "train": [{"prefix": str(tmp_path / "chats")}]}
    (step / "meta.json").write_text(json.dumps(meta))
    sft_json = tmp_path / "chats_sft.json"
    sft_json.write_text(json.dumps({"tokenizer": str(MISTRAL_TOKENIZER), "max_token_id": 31999}))
    out = tmp_path / "out"
    _fails(["convert", "megatron-to-hf", str(step), str(out)], capsys, out, str(sft_json), "no chat template")
    # A checkpoint that records what it trained on (template mistral): exported as trained, no warning.
    trained = {"path": str(MISTRAL_TOKENIZER), "recorded_by": str(sft_json), "template": "mistral"}
    (step / "meta.json").write_text(json.dumps({**meta, "data_tokenizer": trained}))
    capsys.readouterr()
    assert cli_main(["convert", "megatron-to-hf", str(step), str(out)]) == 0
    assert "None" not in capsys.readouterr().err
    chat = [{"role": "user", "content": "Столица Франции?"}]
    got = _assert_loads_alone(out).apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    expected = encode_chat(
        parse_chat({"messages": chat}, for_generation=True),
        load_chat_tokenizer(MISTRAL_TOKENIZER),
        for_generation=True,
    )
    assert list(getattr(got, "input_ids", got)) == expected.ids


def _trained_from(meg: Path, run: Path) -> Path:
    """A run started from `meg`, as the trainer saves its checkpoints: meta.json holds the run's
    config (model.init, relative to where it trained) and nothing of the HF source."""
    step = run / "step_000002"
    shutil.copytree(meg, step)
    meta = json.loads((step / "meta.json").read_text())
    for key in ("hf_config", "hf_generation_config", "tokenizer", "source"):
        meta.pop(key, None)
    config = {"model": {"init": meg.name}, "data": {"kind": "pretrain", "train": []}}
    (step / "meta.json").write_text(json.dumps({**meta, "step": 2, "config": config, "cwd": str(meg.parent)}))
    (run / "latest").write_text("step_000002\n")
    return run


def test_a_pretraining_run_exports_the_tokenizer_its_datasets_record_and_refuses_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pre-training run's export found no tokenizer (only SFT runs recorded theirs), and --tokenizer
    took any tokenizer no larger than the vocabulary: one of another model exported a model that
    decodes to other text. The datasets' records now give the tokenizer, and refuse another one."""
    from tests.helpers import sentencepiece_with_other_ids
    from vikhr.data import preprocess

    meg = hf_to_megatron(_tiny_hf(tmp_path / "hf", vocab_size=32000), tmp_path / "meg")
    run = _trained_from(meg, tmp_path / "run")
    step = run / "step_000002"
    meta = json.loads((step / "meta.json").read_text())
    meta["config"]["data"]["train"] = [{"prefix": "ru_text_document", "weight": 1}]  # relative to cwd
    (step / "meta.json").write_text(json.dumps(meta))
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "Привет, мир"}\n', encoding="utf-8")
    preprocess([src], tmp_path / "ru", MISTRAL_TOKENIZER, append_eod=True)

    out = megatron_to_hf(run, tmp_path / "out")
    assert (out / "tokenizer.model").read_bytes() == MISTRAL_TOKENIZER.read_bytes()
    # The same tokenizer as another file of it (its tokenizer.json), or a copy elsewhere: accepted.
    megatron_to_hf(run, tmp_path / "from-json", tokenizer=out / "tokenizer.json")
    megatron_to_hf(run, tmp_path / "copy", tokenizer=shutil.copy(MISTRAL_TOKENIZER, tmp_path / "copy.model"))
    other = sentencepiece_with_other_ids(tmp_path / "other" / "tokenizer.model")
    argv = ["convert", "megatron-to-hf", str(run), str(tmp_path / "o"), "--tokenizer", str(other)]
    err = _fails(argv, capsys, tmp_path / "o", f"--tokenizer {other} is not the tokenizer the model was")
    assert f"({MISTRAL_TOKENIZER}, recorded in {tmp_path}/ru_text_document.tokenization.json)" in err
    assert "id 1000 is" in err and "leave --tokenizer out" in err
    # The dataset deleted since training: its record still names the tokenizer.
    for suffix in (".bin", ".idx"):
        (tmp_path / f"ru_text_document{suffix}").unlink()
    out = megatron_to_hf(run, tmp_path / "out2")
    assert (out / "tokenizer.model").read_bytes() == MISTRAL_TOKENIZER.read_bytes()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_trained_run_exports_the_config_of_its_source(tmp_path: Path, family: str) -> None:
    """A run's meta.json has no HF config: its export came back from a Llama-3-style source as
    MistralForCausalLM with BOS 1, EOS 2 and no pad id, and from Qwen2 without its bos, layer_types,
    max_window_layers, use_cache and attention_dropout. The source's is found through model.init."""
    if family == "llama":
        hf = _tiny_hf(tmp_path / "hf", llama=True, rope_theta=500000.0)
        _edit_config(hf, bos_token_id=0, eos_token_id=[1, 2], pad_token_id=2)
    else:
        hf = _tiny_hf(tmp_path / "hf", family="qwen2")
        _edit_config(hf, bos_token_id=0, eos_token_id=1, attention_dropout=0.1, max_window_layers=1)
    run = _trained_from(hf_to_megatron(hf, tmp_path / "meg"), tmp_path / "run")
    out = megatron_to_hf(run, tmp_path / "out")
    source, exported = (json.loads((d / "config.json").read_text()) for d in (hf, out))
    # RoPE is written in one form (rope_theta / rope_scaling), whichever the source used.
    kept = {k: v for k, v in source.items() if k not in ("rope_parameters", "transformers_version")}
    assert {k: exported.get(k) for k in kept} == kept


def test_the_export_walks_the_lineage_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tokenizer and the HF source were each looked for in a walk of their own, every meta.json
    of the lineage read twice."""
    import vikhr.convert.hf_tokenizer as hf_tokenizer
    import vikhr.convert.lineage as lineage

    hf = _tiny_hf(tmp_path / "hf", vocab_size=32000)
    shutil.copyfile(MISTRAL_TOKENIZER, hf / "tokenizer.model")
    run = _trained_from(hf_to_megatron(hf, tmp_path / "meg"), tmp_path / "run")
    walks, walk = [], lineage.lineage

    def counted(step_dir: Path) -> Any:
        walks.append(step_dir)
        return walk(step_dir)

    monkeypatch.setattr(lineage, "lineage", counted)
    monkeypatch.setattr(hf_tokenizer, "lineage", counted, raising=False)
    out = megatron_to_hf(run, tmp_path / "out")
    assert len(walks) == 1
    assert (out / "tokenizer.model").is_file() and json.loads((out / "config.json").read_text())[
        "bos_token_id"
    ] == 1


def _train_from(start: Path, shape: dict[str, Any], run: Path, steps: int) -> None:
    """`vikhr pretrain` of a tiny run of `shape` (the start's, field for field) from `start`: a few
    CPU steps, a checkpoint after each, on token documents that record no tokenizer."""
    import yaml

    from vikhr.data.indexed import write_indexed

    data = run.parent / "tokens"
    if not data.with_suffix(".idx").is_file():
        write_indexed(data, [[3 + (7 * i + j) % 290 for j in range(30)] + [2] for i in range(40)], "uint16")
    config = {
        "model": {"preset": "tiny", "attention": "sdpa", "overrides": shape, "init": str(start)},
        "parallel": {"tensor": 1, "device": "cpu"},
        "data": {"train": [{"prefix": str(data), "name": "ru"}], "split": "90,10,0", "seq_len": 32},
        "train": {"steps": steps, "micro_batch": 1, "global_batch": 2},
        "optim": {"warmup_steps": 0},
        "checkpoint": {"dir": str(run), "save_every": 1},
        "logging": {"eval_every": 100, "tensorboard": False},
    }
    path = run.parent / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert cli_main(["pretrain", "--config", str(path)]) == 0


def test_a_trained_run_exports_its_source_once_its_start_is_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The export found the HF source's config and the tokenizer only through model.init: once the
    converted start was deleted (after continued pre-training, or with only the run copied to
    another machine), a Llama source came back as MistralForCausalLM with Mistral's ids, without its
    generation_config.json and its tokenizer, silently. Each checkpoint now records them."""
    from transformers import AutoTokenizer

    hf = _tiny_hf(tmp_path / "hf", llama=True, rope_theta=500000.0)
    _word_level_tokenizer(tmp_path / "tok", pad_token="<|pad|>")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp_path / "tok" / name, hf / name)
    _edit_config(hf, bos_token_id=0, eos_token_id=1, pad_token_id=3)
    generation = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 3, "temperature": 0.6, "top_p": 0.9}
    (hf / "generation_config.json").write_text(json.dumps(generation))
    start = hf_to_megatron(hf, tmp_path / "meg")
    shape = json.loads((start / "meta.json").read_text())["model"]
    _train_from(start, shape, tmp_path / "run", steps=2)
    # A run of an older version: no record of its own, its export walks to the start; resumed while
    # the start is there, its next checkpoint records what the start does.
    old = shutil.copytree(tmp_path / "run", tmp_path / "old") / "step_000002"
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "inherited"}))
    capsys.readouterr()
    exports = {"older, start there": megatron_to_hf(old, tmp_path / "old-out")}
    _train_from(start, shape, tmp_path / "old", steps=3)
    shutil.rmtree(start)
    capsys.readouterr()
    exports["run"] = megatron_to_hf(tmp_path / "run", tmp_path / "out")
    exports["older, resumed"] = megatron_to_hf(tmp_path / "old", tmp_path / "old-resumed-out")
    assert "warning" not in capsys.readouterr().err
    # A run resumed once its start is gone keeps the record.
    _train_from(start, shape, tmp_path / "run", steps=3)
    capsys.readouterr()
    exports["resumed"] = megatron_to_hf(tmp_path / "run", tmp_path / "resumed-out")
    assert "warning" not in capsys.readouterr().err
    source = json.loads((hf / "config.json").read_text())
    kept = {k: v for k, v in source.items() if k not in ("rope_parameters", "transformers_version")}
    for name, out in exports.items():
        exported = json.loads((out / "config.json").read_text())
        assert {k: exported.get(k) for k in kept} == kept, name
        assert json.loads((out / "generation_config.json").read_text()) == generation, name
        assert AutoTokenizer.from_pretrained(out).pad_token_id == 3, name

    # The older checkpoint, its start gone: exported from the model's shape, with one warning line.
    out = megatron_to_hf(old, tmp_path / "old-out-2")
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: {start}, a starting point (model.init) in the lineage of {old}, is not")
    assert "no record of the HF source's config.json and generation_config.json" in line
    assert "MistralForCausalLM's, from the model's shape alone" in line and "nor of the tokenizer" in line
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]


def test_a_run_of_a_shorter_max_seq_len_exports_the_longest_position_range_of_its_lineage(
    tmp_path: Path,
) -> None:
    """config.json's max_position_embeddings was the last run's max_seq_len (its preset's or
    model.overrides'): a run from a 128-position source with max_seq_len 32 exported a model of 32
    positions, though training on shorter windows leaves the range as it was. It is now the longest
    of the lineage: the source's, or a run's that raised it, whether the start is a conversion, a
    trained run, or a checkpoint of an older version walked to its start. RoPE stays the source's."""
    hf = _tiny_hf(tmp_path / "hf", family="llama3")
    start = hf_to_megatron(hf, tmp_path / "meg")
    shape = json.loads((start / "meta.json").read_text())["model"]
    assert shape["max_seq_len"] == 128
    _train_from(start, {**shape, "max_seq_len": 32}, tmp_path / "short", steps=1)
    _train_from(start, {**shape, "max_seq_len": 256}, tmp_path / "long", steps=1)
    _train_from(tmp_path / "long", {**shape, "max_seq_len": 32}, tmp_path / "long-then-short", steps=1)
    older = shutil.copytree(tmp_path / "short", tmp_path / "older") / "step_000001"
    meta = json.loads((older / "meta.json").read_text())
    (older / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "inherited"}))
    source = json.loads((hf / "config.json").read_text())
    for run, positions in {"short": 128, "older": 128, "long": 256, "long-then-short": 256}.items():
        out = megatron_to_hf(tmp_path / run, tmp_path / f"{run}-hf")
        exported = json.loads((out / "config.json").read_text())
        assert exported["max_position_embeddings"] == positions, run
        # RoPE θ and its llama3 scaling, and the rest of the model, read back as the source's.
        assert hf_config_to_model_config(exported) == hf_config_to_model_config(
            {**source, "max_position_embeddings": positions}
        ), run


def test_the_source_generation_config_is_exported_with_the_tokenizers_stop_ids(tmp_path: Path) -> None:
    """generation_config.json was made from the tokenizer alone: the source's sampling settings and
    pad id were dropped, and without a tokenizer none was written."""
    from transformers import GenerationConfig

    hf = _tiny_hf(tmp_path / "hf", llama=True)
    generation = {
        "bos_token_id": 1,
        "eos_token_id": [2, 0],
        "pad_token_id": 0,
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.9,
        "top_k": 20,
        "repetition_penalty": 1.05,
    }
    (hf / "generation_config.json").write_text(json.dumps(generation))
    meg = hf_to_megatron(hf, tmp_path / "meg")
    for source in (meg, _trained_from(meg, tmp_path / "run")):  # no tokenizer
        out = megatron_to_hf(source, tmp_path / f"out-{source.name}")
        assert json.loads((out / "generation_config.json").read_text()) == generation
    # With a tokenizer, its BOS and stop ids are written over the source's.
    chat = sentencepiece_with_added_tokens(_tiny_hf(tmp_path / "chat", vocab_size=32002))
    (chat / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": 2}))
    out = megatron_to_hf(hf_to_megatron(chat, tmp_path / "chat-meg"), tmp_path / "chat-out")
    got = GenerationConfig.from_pretrained(out)
    assert (got.bos_token_id, got.eos_token_id, got.pad_token_id) == (1, 32000, 0)
    assert (got.do_sample, got.temperature, got.top_p, got.top_k, got.repetition_penalty) == (
        True,
        0.6,
        0.9,
        20,
        1.05,
    )


def _word_level_tokenizer(directory: Path, pad_token: str | None) -> Path:
    """A four-token HF tokenizer of another vocabulary than Mistral's (id 2 is a word there), EOS
    <|endoftext|>, and `pad_token` named in its tokenizer_config.json."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {"<unk>": 0, "<|endoftext|>": 1, "привет": 2, "<|pad|>": 3}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": pad_token}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def _sentencepiece_with_a_pad_piece(path: Path, pad_id: int) -> Path:
    """Mistral's .model with piece `pad_id` made its <pad> (a control piece, as training writes it)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from vikhr.tokenizer.hf_export import load_model_proto

    proto = load_model_proto(MISTRAL_TOKENIZER)
    proto.pieces[pad_id].piece, proto.pieces[pad_id].type = "<pad>", pb.ModelProto.SentencePiece.CONTROL
    proto.trainer_spec.pad_id = pad_id
    path.write_bytes(proto.SerializeToString())
    return path


def test_the_exported_pad_id_is_one_of_the_exported_tokenizer(tmp_path: Path) -> None:
    """The source's pad_token_id was exported whatever tokenizer the export carried: with another one
    (--tokenizer, or one an SFT run recorded) it named another token, or none. It is now the
    tokenizer's own pad token, else the source's where that is the same token in both, else null;
    likewise the BOS id of a tokenizer without a BOS."""
    from transformers import AutoTokenizer

    hf = _tiny_hf(tmp_path / "hf", vocab_size=32000)
    shutil.copyfile(MISTRAL_TOKENIZER, hf / "tokenizer.model")
    _edit_config(hf, pad_token_id=2)  # </s>, as many Mistral fine-tunes pad
    (hf / "generation_config.json").write_text(json.dumps({"pad_token_id": 2, "temperature": 0.6}))
    meg = hf_to_megatron(hf, tmp_path / "meg")

    def pads(source: Path, tokenizer: Path | None, name: str) -> tuple[Any, Any]:
        out = megatron_to_hf(source, tmp_path / "out" / name, tokenizer=tokenizer)
        configs = [json.loads((out / f).read_text()) for f in ("config.json", "generation_config.json")]
        assert configs[1]["temperature"] == 0.6
        return configs[0].get("pad_token_id", "absent"), configs[1].get("pad_token_id", "absent")

    assert pads(meg, None, "own") == (2, 2)  # the source's tokenizer
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert pads(meg, shutil.copy(MISTRAL_TOKENIZER, elsewhere), "copy") == (2, 2)  # the same pieces
    other = _word_level_tokenizer(tmp_path / "other", pad_token=None)
    assert pads(meg, other, "other") == (None, None)  # 2 is "привет" there
    # It has no BOS either: Mistral's <s> (1) is its <|endoftext|> and was exported as the BOS id.
    assert json.loads((tmp_path / "out" / "other" / "config.json").read_text())["bos_token_id"] is None
    assert json.loads((tmp_path / "out" / "copy" / "config.json").read_text())["bos_token_id"] == 1
    with_pad = _word_level_tokenizer(tmp_path / "with-pad", pad_token="<|pad|>")
    assert pads(meg, with_pad, "with-pad") == (3, 3)
    assert AutoTokenizer.from_pretrained(tmp_path / "out" / "with-pad").pad_token_id == 3
    spm_pad = _sentencepiece_with_a_pad_piece(tmp_path / "pad.model", 31999)
    assert pads(meg, spm_pad, "spm-pad") == (31999, 31999)
    assert AutoTokenizer.from_pretrained(tmp_path / "out" / "spm-pad").pad_token_id == 31999

    # A source tokenizer past its vocabulary: null; an SFT run's tokenizer, recorded in its data.
    _edit_config(hf, pad_token_id=31999)
    small = megatron_to_hf(hf_to_megatron(hf, tmp_path / "meg-2"), tmp_path / "out" / "x", tokenizer=other)
    assert json.loads((small / "config.json").read_text())["pad_token_id"] is None
    sft_run = _trained_from(meg, tmp_path / "sft-run")
    step = sft_run / "step_000002"
    meta = json.loads((step / "meta.json").read_text())
    meta["config"]["data"] = {"kind": "sft", "train": [{"prefix": str(tmp_path / "chats")}]}
    (step / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "chats_sft.json").write_text(
        json.dumps({"tokenizer": str(other / "tokenizer.json"), "template": "chatml"})
    )
    assert pads(sft_run, None, "sft") == (None, None)


# --------------------------------------------------------------------------- bad inputs


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path, *words: str) -> str:
    """The CLI exits 2 with one line holding `words` and leaves nothing at or beside `out`."""
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]
    return err


def _edit_config(hf: Path, **fields: Any) -> None:
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(fields)
    (hf / "config.json").write_text(json.dumps(cfg))


def _to_megatron(hf: Path, out: Path, *extra: str) -> list[str]:
    return ["convert", "hf-to-megatron", str(hf), str(out), *extra]


def test_config_that_disagrees_with_the_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = _tiny_hf(tmp_path / "hf")
    out = tmp_path / "meg"
    _edit_config(hf, num_hidden_layers=1)  # the weights have 2 layers
    _fails(
        _to_megatron(hf, out), capsys, out, "model.safetensors", "model.layers.1.", "num_hidden_layers = 1"
    )
    _edit_config(hf, num_hidden_layers=3)
    _fails(_to_megatron(hf, out), capsys, out, "config.json", "model.layers.2.", "lack")
    _edit_config(hf, num_hidden_layers=2, intermediate_size=192)  # the weights have 176
    _fails(_to_megatron(hf, out), capsys, out, "model.safetensors", "mlp.", "176", "192", "intermediate_size")
    _edit_config(hf, intermediate_size=176, tie_word_embeddings=True)  # lm_head differs from the embedding
    _fails(
        _to_megatron(hf, out),
        capsys,
        out,
        "model.safetensors",
        "lm_head.weight differs",
        "tie_word_embeddings",
    )


@pytest.mark.parametrize("value", ["false", 0, None])
def test_a_tie_word_embeddings_that_is_not_true_or_false_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: Any
) -> None:
    """A string "false" (written by hand or by a tool that quotes values) was read as tied — Python's
    truth of a non-empty string — and the untied model converted without its LM head (exit 0)."""
    hf = _tiny_hf(tmp_path / "hf")
    out = tmp_path / "meg"
    _edit_config(hf, tie_word_embeddings=value)
    _fails(
        _to_megatron(hf, out),
        capsys,
        out,
        f"{hf / 'config.json'}: tie_word_embeddings must be true or false, got {json.dumps(value)}",
    )


def test_a_tp_size_that_does_not_divide_the_kv_heads_names_the_key_and_the_sizes_that_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 heads, 2 KV heads (GQA): --tp 4 divides the heads but not the KV heads. The line named
    vikhr's field (num_kv_heads), not config.json's key, nor the file or the sizes that work."""
    hf = _tiny_hf(tmp_path / "hf")
    out = tmp_path / "meg"
    _fails(
        _to_megatron(hf, out, "--tp", "4"),
        capsys,
        out,
        f"{hf / 'config.json'}: --tp 4 does not divide num_key_value_heads = 2",
        "sizes this model splits into: 1, 2)",
    )


def test_unknown_tensor_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = _tiny_hf(tmp_path / "hf")
    tensors = load_file(str(hf / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "meg"
    _fails(_to_megatron(hf, out), capsys, out, "model.safetensors", "unknown tensor", "q_norm")


def test_unreadable_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = _tiny_hf(tmp_path / "hf")
    out = tmp_path / "meg"
    _fails(_to_megatron(hf, out, "--tp", "0"), capsys, out, "--tp", "0")
    weights = hf / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    _fails(_to_megatron(hf, out), capsys, out, str(weights), "truncated")
    weights.write_bytes(struct.pack("<Q", 40) + b"{not json" + data[17:])
    _fails(_to_megatron(hf, out), capsys, out, str(weights), "not a readable safetensors file")
    weights.write_bytes(data)
    (hf / "config.json").write_text('{"model_type": "mistral",')
    _fails(_to_megatron(hf, out), capsys, out, str(hf / "config.json"), "not valid JSON")

    sharded = _tiny_hf(tmp_path / "sharded", shards=True)
    missing = sorted(sharded.glob("model-*.safetensors"))[1]
    missing.unlink()
    _fails(_to_megatron(sharded, out), capsys, out, missing.name, "missing")
    (sharded / "model.safetensors.index.json").write_text("{")
    _fails(_to_megatron(sharded, out), capsys, out, "model.safetensors.index.json")


def test_a_download_of_other_files_than_transformers_reads_says_which_to_fetch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shards downloaded without their index (`--include "*.safetensors"`), and Mistral's own format
    (params.json + consolidated.safetensors, what mistral-inference downloads): "has no
    model.safetensors … (give an HF model directory with safetensors weights)" or "has no
    config.json", beside the safetensors the directory holds, with no way on."""
    out = tmp_path / "meg"
    sharded = _tiny_hf(tmp_path / "sharded", shards=True)
    (sharded / "model.safetensors.index.json").unlink()
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    _fails(
        _to_megatron(sharded, out),
        capsys,
        out,
        f"{sharded} holds the shards {shards[0].name} and {len(shards) - 1} more but not "
        "model.safetensors.index.json",
        "download it",
    )
    native = _tiny_hf(tmp_path / "native")
    (native / "model.safetensors").rename(native / "consolidated.safetensors")
    own_format = "it holds Mistral's own format (params.json, consolidated.safetensors)"
    _fails(_to_megatron(native, out), capsys, out, "has no model.safetensors", own_format, "config.json")
    (native / "config.json").rename(native / "params.json")
    _fails(_to_megatron(native, out), capsys, out, f"{native} has no config.json: {own_format}")


def test_a_save_that_has_not_finished_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run's step_NNNNNN.tmp (a save under way or cut short: its files without meta.json), given
    itself or as the run directory of a run that has no finished step yet: "no vikhr checkpoint
    (meta.json or latest) found", as for any other directory; as model.init, "no checkpoint"."""
    from vikhr.train.checkpoint import find_weights

    meg = hf_to_megatron(_tiny_hf(tmp_path / "hf"), tmp_path / "meg")
    run = tmp_path / "run"
    saving = run / "step_000010.tmp"
    saving.mkdir(parents=True)
    shutil.copy(meg / "model_tp00.safetensors", saving)
    out = tmp_path / "back"
    for given, words in (
        (saving, f"{saving} is a checkpoint save that has not finished (under way, or cut short)"),
        (run, f"{run} holds no finished checkpoint yet: step_000010.tmp is a save that has not finished"),
    ):
        _fails(["convert", "megatron-to-hf", str(given), str(out)], capsys, out, words)
        with pytest.raises(VikhrError, match=re.escape(f"config key model.init: {words}")):
            find_weights(given, "model.init")
    shutil.copytree(meg, run / "step_000005")
    (run / "latest").write_text("step_000005")
    assert cli_main(["convert", "megatron-to-hf", str(run), str(out), "--no-progress"]) == 0


def test_a_full_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write refused for a full disk names the output, in both directions."""
    import errno

    import vikhr.adapt.safetensors_io as safetensors_io

    hf = _tiny_hf(tmp_path / "hf")
    meg = hf_to_megatron(hf, tmp_path / "meg")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # as a file object's write raises it

    monkeypatch.setattr(safetensors_io, "_write_tensor_data", full)
    out = tmp_path / "meg2"
    _fails(_to_megatron(hf, out), capsys, out, "no space left on the device writing", str(out))
    out = tmp_path / "back"
    argv = ["convert", "megatron-to-hf", str(meg), str(out)]
    _fails(argv, capsys, out, "no space left on the device writing", str(out))


def test_megatron_checkpoint_that_disagrees_with_its_meta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meg = hf_to_megatron(_tiny_hf(tmp_path / "hf"), tmp_path / "meg", tp_size=2)
    out = tmp_path / "back"
    argv = ["convert", "megatron-to-hf", str(meg), str(out)]
    meta = json.loads((meg / "meta.json").read_text())
    meta["model"]["ffn_hidden_size"] = 192
    (meg / "meta.json").write_text(json.dumps(meta))
    _fails(argv, capsys, out, "model_tp00.safetensors", "mlp.linear_fc1.weight", "ffn_hidden_size")
    meta["model"]["ffn_hidden_size"] = 176
    meta["model"]["num_layers"] = 1
    (meg / "meta.json").write_text(json.dumps(meta))
    _fails(argv, capsys, out, "model_tp00.safetensors", "decoder.layers.1.")
    (meg / "meta.json").write_text("{")
    _fails(argv, capsys, out, str(meg / "meta.json"))
    # A key missing or of another type: said as such, not as Python's "('tp')".
    meta["model"]["num_layers"] = 2
    (meg / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "tp"}))
    _fails(argv, capsys, out, "is not a usable vikhr checkpoint description (no 'tp' key)")
    (meg / "meta.json").write_text(json.dumps({**meta, "model": [1, 2]}))
    _fails(argv, capsys, out, "is not a usable vikhr checkpoint description (a field of another type:")


def test_an_sft_blend_of_one_tokenizer_exports_with_the_first_datasets_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training accepts datasets of one tokenizer (by sha256) whatever their paths and templates;
    convert refused a copy of the tokenizer elsewhere, or a chatml + qwen3 blend, as "several
    tokenizers"."""
    from vikhr.convert.hf_tokenizer import _sft_tokenizer
    from vikhr.sft.layout import sft_files

    def prepared(name: str, tokenizer: str, sha: str, template: str) -> dict[str, str]:
        meta = {"tokenizer": tokenizer, "tokenizer_sha256": sha, "template": template}
        sft_files(tmp_path / name)["meta"].write_text(json.dumps(meta), encoding="utf-8")
        return {"prefix": name}

    config = {
        "data": {
            "train": [prepared("a", "/tok/one", "s1", "chatml"), prepared("b", "/copy/one", "s1", "chatml")]
        }
    }
    recorded = _sft_tokenizer(config, tmp_path)
    assert recorded is not None and (str(recorded.path), recorded.template) == ("/tok/one", "chatml")
    assert capsys.readouterr().err == ""
    config["data"]["train"].append(prepared("c", "/tok/one", "s1", "qwen3"))
    recorded = _sft_tokenizer(config, tmp_path)
    assert recorded is not None and recorded.template == "chatml"
    assert "prepared with chat templates chatml" in capsys.readouterr().err
    config["data"]["train"].append(prepared("d", "/tok/two", "s2", "chatml"))
    with pytest.raises(VikhrError, match="record different tokenizers"):
        _sft_tokenizer(config, tmp_path)


def test_datasets_prepared_again_after_training_are_read_only_to_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint records the tokenizer and template its datasets had when it trained. The datasets
    as they are now were read with the warnings and errors of an export that carries them: a blend of
    templates said the export carries the first dataset's template (it carries the trained one, which
    the next line said), datasets of two tokenizers now refused the export ("the run mixed data of
    several tokenizers"), and a resumed run printed the export's blend warning on every rank."""
    from vikhr.convert.hf_tokenizer import recorded_in_lineage, warn_of_data_prepared_again
    from vikhr.sft.layout import sft_files
    from vikhr.train.trainer import _resumed_tokenizer

    def prepare(name: str, tokenizer: str, sha: str, template: str) -> None:
        meta = {"tokenizer": tokenizer, "tokenizer_sha256": sha, "template": template}
        sft_files(tmp_path / name)["meta"].write_text(json.dumps(meta), encoding="utf-8")

    step = tmp_path / "run" / "step_000002"
    step.mkdir(parents=True)
    trained = {"path": "/tok/one", "recorded_by": str(tmp_path / "a_sft.json"), "template": "chatml"}
    train = [{"prefix": "a", "name": "a", "weight": 1.0}, {"prefix": "b", "name": "b", "weight": 1.0}]
    meta = {
        "cwd": str(tmp_path),
        "config": {"model": {"init": "random"}, "data": {"kind": "sft", "train": train}},
        "data_tokenizer": {**trained, "sha256": "s1"},
    }
    (step / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    prepare("a", "/tok/one", "s1", "mistral")  # prepared again with another template
    prepare("b", "/tok/one", "s1", "chatml")
    found = recorded_in_lineage(step)
    assert capsys.readouterr().err == ""
    assert found.tokenizer is not None and found.tokenizer.template == "chatml"
    assert found.data_now is not None and found.data_now.template == "mistral"
    warn_of_data_prepared_again(found, step)
    [line] = capsys.readouterr().err.splitlines()
    assert "now records chat template mistral" in line and line.endswith("the export carries that")
    prepare("a", "/tok/two", "s2", "chatml")  # prepared again with another tokenizer
    found = recorded_in_lineage(step)
    assert found.tokenizer is not None and str(found.tokenizer.path) == "/tok/one"
    assert capsys.readouterr().err == ""
    # A checkpoint of an older version: the datasets now are what it records; training says nothing.
    meta.pop("data_tokenizer")
    (step / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    prepare("a", "/tok/one", "s1", "mistral")
    resumed = _resumed_tokenizer(step)
    assert resumed is not None and resumed.template == "mistral"
    assert capsys.readouterr().err == ""
    assert recorded_in_lineage(step).tokenizer == resumed
    assert "the export carries mistral, the first dataset's" in capsys.readouterr().err


@pytest.mark.slow
def test_the_conversion_benchmark_runs_and_checks_the_round_trip_on_a_tiny_shape(tmp_path: Path) -> None:
    """tools/bench_convert.py end to end on a tiny slice: every process of the table ran, after the
    round trips at TP 1 and 2 and transformers' load/save were found byte-identical to the source."""
    import subprocess

    bench = [
        "--shape",
        "tiny",
        "--layers",
        "1",
        "--runs",
        "1",
        "--tp",
        "1",
        "2",
        "--work",
        str(tmp_path / "w"),
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_convert.py"), *bench],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 layer(s): round trips at --tp 1, 2 and the baseline byte-identical" in proc.stdout
    rows = [line.split(" | ")[2] for line in proc.stdout.splitlines() if line.startswith("| 1 |")]
    assert rows == [
        "`hf-to-megatron --tp 1`",
        "`hf-to-megatron --tp 2`",
        "`megatron-to-hf (tp 2)`",
        "`transformers load/save`",
    ]
    assert not (tmp_path / "w" / "layers-1").exists()  # every output removed


def test_the_conversion_benchmark_finds_a_tensor_that_differs_by_one_bit(tmp_path: Path) -> None:
    """The check before timing compares bytes: one flipped bit, a missing or an extra tensor is named."""
    bench = load_tool("bench_convert")
    tensors = {"a": torch.randn(4, 3).to(torch.bfloat16), "b": torch.randn(5).to(torch.bfloat16)}
    (tmp_path / "src").mkdir()
    save_file(tensors, str(tmp_path / "src" / "model.safetensors"))
    (tmp_path / "same").mkdir()
    save_file({k: v.clone() for k, v in tensors.items()}, str(tmp_path / "same" / "model-1.safetensors"))
    assert bench.differing_tensors(tmp_path / "same", tmp_path / "src") == []
    flipped = tensors["b"].clone()
    flipped.view(torch.int16)[2] ^= 1
    (tmp_path / "bit").mkdir()
    save_file(
        {"a": tensors["a"], "b": flipped, "c": flipped.clone()}, str(tmp_path / "bit" / "model.safetensors")
    )
    assert bench.differing_tensors(tmp_path / "bit", tmp_path / "src") == ["c", "b"]


@pytest.mark.parametrize(
    "bad,message",
    [
        (["--layers", "1", "0"], "argument --layers: expected a positive int, got '0'"),
        (["--runs", "-1"], "argument --runs: expected a positive int, got '-1'"),
        (["--tp", "0"], "argument --tp: expected a positive int, got '0'"),
        (["--tp", "3"], "argument --tp: 3 does not divide the tiny shape's 4/2 heads"),
    ],
)
def test_the_conversion_benchmark_refuses_a_bad_size_in_one_line(bad: list[str], message: str) -> None:
    import subprocess

    cmd = [sys.executable, str(REPO / "tools" / "bench_convert.py"), "--shape", "tiny", *bad]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.splitlines() == [
        f"bench_convert.py: error: {message} (see 'bench_convert.py --help')"
    ]
