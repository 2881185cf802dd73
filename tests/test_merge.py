"""`vikhr merge`: SLERP/linear interpolation against a float64 reference, the layer schedule, and
merged tiny HF checkpoints (sharded or not) loaded by transformers; bad inputs are one line."""

from __future__ import annotations

import json
import math
import shlex
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.helpers import stderr_of_cli, tiny_hf_model
from vikhr.adapt.safetensors_io import INDEX
from vikhr.assets import MISTRAL_TOKENIZER
from vikhr.cli import main as cli_main
from vikhr.errors import VikhrError
from vikhr.merge import slerp as slerp_mod
from vikhr.merge.checkpoint import SUMMARY, merge_checkpoints
from vikhr.merge.schedule import Schedule, parse_filter, parse_gradient
from vikhr.merge.slerp import dot_and_norms, interpolate, slerp_coefficients

VOCAB = 512
LAYERS = 3
NEW_TOKENIZER = MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.model"


def reference_slerp(t: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mergekit's SLERP written plainly in float64: normalised copies give the angle, colinear → lerp."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua = a / na if na > 1e-8 else a
    ub = b / nb if nb > 1e-8 else b
    dot = float(np.sum(ua * ub))
    if abs(dot) > 0.9995:
        return (1 - t) * a + t * b
    theta = np.arccos(dot)
    return np.sin(theta * (1 - t)) / np.sin(theta) * a + np.sin(theta * t) / np.sin(theta) * b


def assert_close(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str = "") -> None:
    """|got − expected| ≤ atol + rtol·|expected| (numpy: torch.testing takes seconds to import)."""
    np.testing.assert_allclose(
        got.double().numpy(), expected.double().numpy(), rtol=rtol, atol=atol, err_msg=what
    )


# ---------------------------------------------------------------- the interpolation itself


@pytest.mark.parametrize("method", ["slerp", "linear"])
def test_endpoints_are_the_inputs_bit_for_bit(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 48, generator=g).to(torch.bfloat16)
    b = torch.randn(64, 48, generator=g).to(torch.bfloat16)
    a[0, :4] = -0.0  # 1·(−0.0) + 0·b would give +0.0
    b[1, :4] = float("inf")  # 0·inf would give NaN
    at0 = interpolate(a, b, 0.0, method)  # type: ignore[arg-type]
    at1 = interpolate(a, b, 1.0, method)  # type: ignore[arg-type]
    assert torch.equal(at0.view(torch.int16), a.view(torch.int16))
    assert torch.equal(at1.view(torch.int16), b.view(torch.int16))
    # B in another float dtype comes back in A's dtype.
    at1_f32 = interpolate(a, b.float(), 1.0, method)  # type: ignore[arg-type]
    assert at1_f32.dtype == torch.bfloat16 and torch.equal(at1_f32.view(torch.int16), b.view(torch.int16))


def test_colinear_tensors_fall_back_to_linear() -> None:
    a = torch.randn(40, 30, generator=torch.Generator().manual_seed(1))
    for b in (2.5 * a, -0.5 * a):
        assert slerp_coefficients(0.5, float((a * b).sum()), float(a.norm()), float(b.norm())) == (0.5, 0.5)
        assert_close(interpolate(a, b, 0.5), 0.5 * a + 0.5 * b, rtol=1e-6, atol=1e-7)
        assert torch.equal(interpolate(a, b, 0.5), interpolate(a, b, 0.5, "linear"))


def test_equal_norm_orthogonal_tensors_keep_their_norm() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(50, 20, generator=g, dtype=torch.float64)
    b = torch.randn(50, 20, generator=g, dtype=torch.float64)
    b -= (a * b).sum() / (a * a).sum() * a  # Gram-Schmidt: b ⟂ a
    b *= a.norm() / b.norm()
    a, b = a.float(), b.float()
    assert abs(float((a * b).sum())) < 1e-4 * float(a.norm()) ** 2
    for t in (0.1, 0.25, 0.5, 0.8):
        merged = interpolate(a, b, t)
        assert float(merged.norm()) == pytest.approx(float(a.norm()), rel=1e-5)
        # On the great circle: the angle to a is t·90°.
        cos = float((merged.double() * a.double()).sum() / (merged.double().norm() * a.double().norm()))
        assert math.degrees(math.acos(cos)) == pytest.approx(90 * t, abs=1e-3)
    # Linear interpolation shortens it (cos 45° at t = 0.5): the check above tells the two apart.
    assert float(interpolate(a, b, 0.5, "linear").norm()) == pytest.approx(
        float(a.norm()) / math.sqrt(2), rel=1e-5
    )


@pytest.mark.parametrize("chunk", [slerp_mod.CHUNK_ELEMENTS, 1000])
def test_matches_a_float64_reference_on_random_tensors(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slerp_mod, "CHUNK_ELEMENTS", chunk)  # 1000: many chunks and a partial last one
    g = torch.Generator().manual_seed(3)
    a = torch.randn(123, 77, generator=g)
    cases = {
        "independent": torch.randn(123, 77, generator=g),
        "correlated": a + 0.3 * torch.randn(123, 77, generator=g),  # small angle, above the threshold
        "opposed": -a + 0.5 * torch.randn(123, 77, generator=g),
        "zero": torch.zeros(123, 77),  # norm ≤ eps: not normalised, cos 0, θ = 90°
    }
    for label, b in cases.items():
        for t in (0.05, 0.3, 0.5, 0.77):
            expected = reference_slerp(t, a.numpy(), b.numpy())
            got = interpolate(a, b, t)
            assert got.dtype == torch.float32
            np.testing.assert_allclose(got.numpy(), expected, rtol=2e-5, atol=2e-6, err_msg=f"{label} t={t}")
            linear = interpolate(a, b, t, "linear").double().numpy()
            np.testing.assert_allclose(
                linear, (1 - t) * a.double().numpy() + t * b.double().numpy(), atol=1e-6
            )
            # bf16 inputs: the float64 result rounded to bf16, within one rounding step.
            a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
            got16 = interpolate(a16, b16, t)
            ref16 = torch.from_numpy(reference_slerp(t, a16.float().numpy(), b16.float().numpy()))
            assert got16.dtype == torch.bfloat16
            assert_close(got16.double(), ref16, rtol=1 / 128, atol=1e-6)


def test_dot_and_norms_of_large_tensors_are_float64_exact() -> None:
    g = torch.Generator().manual_seed(6)
    a = (torch.randn(1 << 22, generator=g) * 0.02).to(torch.bfloat16)
    b = (a.float() + 0.01 * torch.randn(1 << 22, generator=g)).to(torch.bfloat16)
    a64, b64 = a.double(), b.double()  # one float32 dot over all of them is off by ~1e-4
    dot, norm_a, norm_b = dot_and_norms(a, b)
    assert dot == pytest.approx(float(a64 @ b64), rel=1e-9)
    assert norm_a == pytest.approx(float(a64.norm()), rel=1e-9)
    assert norm_b == pytest.approx(float(b64.norm()), rel=1e-9)


def test_slerp_angle_and_result_do_not_depend_on_the_thread_count() -> None:
    """The float64 dot product of the angle was torch.dot (BLAS), which splits the sum among threads:
    its last bits, SLERP's coefficients and a float64 merge's values changed with torch's thread count.
    1 and 2 threads differed on every such tensor of 16,384 elements or more."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1 << 16, generator=g, dtype=torch.float64)
    b = torch.randn(1 << 16, generator=g, dtype=torch.float64) + 0.5 * a
    threads_before = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = (slerp_coefficients(0.3, *dot_and_norms(a, b)), interpolate(a, b, 0.3))
    finally:
        torch.set_num_threads(threads_before)
    (coefficients_1, merged_1), (coefficients_2, merged_2) = results[1], results[2]
    assert coefficients_1 == coefficients_2
    assert torch.equal(merged_1, merged_2)


@pytest.mark.parametrize("method", ["slerp", "linear"])
def test_non_finite_values_are_refused(method: str) -> None:
    """A NaN weight (a broken model): refused by both methods (linear wrote it through)."""
    a = torch.ones(4)
    b = torch.tensor([1.0, float("nan"), 0.0, 2.0])
    with pytest.raises(VikhrError, match="inf or NaN"):
        interpolate(a, b, 0.5, method)  # type: ignore[arg-type]


@pytest.mark.parametrize("chunk", [slerp_mod.CHUNK_ELEMENTS, 3])
@pytest.mark.parametrize("method", ["slerp", "linear"])
def test_values_past_the_range_of_a_s_dtype_are_refused_not_written_as_inf(
    method: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The result is in a's dtype: float16's ±65504 turned finite merged values into inf without a word,
    from a wider b (bfloat16, float32) and, for SLERP, from coefficients adding up to more than 1."""
    monkeypatch.setattr(slerp_mod, "CHUNK_ELEMENTS", chunk)  # 3: the large value in the second chunk
    a = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float16)
    for b_dtype in (torch.bfloat16, torch.float32):
        b = torch.tensor([1.0, 2.0, -1.0, 3e5], dtype=b_dtype)
        for t in (0.5, 1.0):
            with pytest.raises(VikhrError) as refused:
                interpolate(a, b, t, method)  # type: ignore[arg-type]
            wide = str(b_dtype).removeprefix("torch.")
            assert str(refused.value) == (
                "merged values exceed float16's range (±65504), model A's dtype, in which the merge is "
                f"written (model B's {wide} holds them: give B as model A, with each t replaced by 1 − t)"
            )
    if method == "slerp":  # orthogonal, equal norms: c_a = c_b = sin 45° at t = 0.5, 60000·√2 past 65504
        a, b = torch.tensor([6e4, 6e4], dtype=torch.float16), torch.tensor([6e4, -6e4], dtype=torch.float16)
        with pytest.raises(VikhrError, match=r"a bfloat16 or float32 copy of model A would hold them"):
            interpolate(a, b, 0.5)


# ---------------------------------------------------------------- the schedule of t


def test_gradient_over_layers_and_the_ends_for_tensors_outside_them() -> None:
    s = Schedule(parse_gradient("0,0.5,1"))
    layers = 5  # positions 0, 1/4, 1/2, 3/4, 1 along [0, 0.5, 1]
    assert [s.t_for(f"model.layers.{i}.mlp.up_proj.weight", layers) for i in range(5)] == pytest.approx(
        [0, 0.25, 0.5, 0.75, 1]
    )
    assert s.t_for("model.embed_tokens.weight", layers) == 0
    assert s.t_for("model.norm.weight", layers) == 1
    assert s.t_for("lm_head.weight", layers) == 1

    uneven = Schedule(parse_gradient("[0.0, 0.2, 0.6, 1.0]"))  # 3 layers at 0, 1.5, 3 along 4 entries
    assert [uneven.t_for(f"model.layers.{i}.self_attn.q_proj.weight", 3) for i in range(3)] == pytest.approx(
        [0.0, 0.4, 1.0]
    )
    assert Schedule((0.2, 0.9)).t_for("model.layers.0.mlp.up_proj.weight", 1) == pytest.approx(0.9)
    assert Schedule((0.4,)).t_for("model.layers.3.mlp.up_proj.weight", 5) == 0.4


def test_filters_are_tried_in_order_before_the_default() -> None:
    s = Schedule(
        parse_gradient("0.5"),
        (parse_filter("self_attn=0,1"), parse_filter("mlp=[1, 0]"), parse_filter("layers.2.=0.9")),
    )
    assert s.t_for("model.layers.0.self_attn.q_proj.weight", 3) == 0
    assert s.t_for("model.layers.2.self_attn.o_proj.weight", 3) == 1
    assert s.t_for("model.layers.1.mlp.down_proj.weight", 3) == pytest.approx(0.5)
    assert s.t_for("model.layers.0.mlp.down_proj.weight", 3) == 1
    assert s.t_for("model.layers.2.input_layernorm.weight", 3) == pytest.approx(0.9)
    assert s.t_for("model.layers.1.input_layernorm.weight", 3) == 0.5
    assert s.t_for("model.embed_tokens.weight", 3) == 0.5


def test_minus_zero_is_zero() -> None:
    assert str(parse_gradient("-0,1")) == "(0.0, 1.0)"  # printed and recorded as -0 before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.5", r"t = 1\.5 is outside \[0, 1\]"),
        ("0,-0.1", "outside"),
        ("nan", "outside"),
        ("a,b", "not a number"),
    ],
)
def test_bad_t_values(text: str, message: str) -> None:
    with pytest.raises(VikhrError, match=message):
        parse_gradient(text)


def test_a_filter_that_earlier_ones_leave_no_tensor_to_is_refused() -> None:
    """The first match wins: `mlp` before `mlp.up_proj` merged up_proj at mlp's t, the later
    filter's unused without a word."""
    names = [f"model.layers.0.mlp.{p}_proj.weight" for p in ("up", "gate", "down")]
    names.append("model.layers.0.self_attn.q_proj.weight")
    with pytest.raises(VikhrError, match=r"--t-for mlp.up_proj=\.\.\.: every tensor it names is taken by "):
        Schedule((0.5,), (parse_filter("mlp=0.5"), parse_filter("mlp.up_proj=0.7"))).check_filters(names)
    with pytest.raises(VikhrError, match=r"--t-for mlp=\.\.\. is given twice"):
        Schedule((0.5,), (parse_filter("mlp=0.5"), parse_filter("mlp=0.7"))).check_filters(names)
    three = tuple(parse_filter(f"{p}_proj=0.1") for p in ("up", "gate", "down"))
    with pytest.raises(VikhrError, match=r"taken by the earlier --t-for up_proj=\.\.\., --t-for gate_proj"):
        Schedule((0.5,), (*three, parse_filter("mlp=0.7"))).check_filters(names)
    # The narrower first, and a broader one that still takes a tensor of its own, are fine.
    Schedule((0.5,), (parse_filter("mlp.up_proj=0.7"), parse_filter("mlp=0.5"))).check_filters(names)
    Schedule((0.5,), (parse_filter("up_proj=0.7"), parse_filter("proj=0.5"))).check_filters(names)


def test_bad_filter() -> None:
    with pytest.raises(VikhrError, match="FILTER=T"):
        parse_filter("self_attn")
    with pytest.raises(VikhrError, match=r"--t-for mlp .* outside"):
        parse_filter("mlp=2")


# ---------------------------------------------------------------- whole checkpoints


def _model(
    path: Path, seed: int, arch: str = "mistral", shard: bool = False, vocab: int = VOCAB
) -> torch.nn.Module:
    model = tiny_hf_model(
        path, vocab, arch=arch, seed=seed, num_layers=LAYERS, max_shard_size="200KB" if shard else "1GB"
    )
    assert (path / INDEX).is_file() == shard
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    _model(root / "a", seed=0)
    _model(root / "b", seed=1)
    shutil.copy2(MISTRAL_TOKENIZER, root / "a" / "tokenizer.model")
    shutil.copy2(MISTRAL_TOKENIZER, root / "b" / "tokenizer.model")
    (root / "b" / "tokenizer_config.json").write_text('{"chat_template": "only B has one"}')
    _model(root / "a_llama_sharded", seed=2, arch="llama", shard=True)
    _model(root / "b_llama", seed=3, arch="llama")
    return {p.name: p for p in root.iterdir()}


def tensors_of(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                out[k] = st.get_tensor(k)
    return out


def _logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def test_merged_tiny_models_load_in_transformers_and_the_endpoints_are_the_inputs(
    models: dict[str, Path], tmp_path: Path
) -> None:
    a, b = models["a"], models["b"]
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    logits_a, logits_b = _logits(a, ids), _logits(b, ids)
    for t, expected in ((0.0, logits_a), (1.0, logits_b)):
        out = tmp_path / f"t{t}"
        merge_checkpoints(a, b, out, Schedule((t,)), show_progress=False)
        assert torch.equal(_logits(out, ids), expected)

    out = tmp_path / "gradient"
    schedule = Schedule(parse_gradient("0,1"), (parse_filter("mlp=0.5"),))
    summary = merge_checkpoints(a, b, out, schedule, show_progress=False)
    ta, tb, tm = tensors_of(a), tensors_of(b), tensors_of(out)
    assert tm.keys() == ta.keys()
    expected_t = {
        "model.embed_tokens.weight": 0.0,
        "model.layers.0.self_attn.q_proj.weight": 0.0,
        "model.layers.1.self_attn.q_proj.weight": 0.5,
        "model.layers.2.input_layernorm.weight": 1.0,
        "model.layers.0.mlp.up_proj.weight": 0.5,
        "model.norm.weight": 1.0,
        "lm_head.weight": 1.0,
    }
    for name, t in expected_t.items():
        assert summary["t"][name] == pytest.approx(t), name
    for name, t in summary["t"].items():
        expected = torch.from_numpy(reference_slerp(t, ta[name].numpy(), tb[name].numpy())).float()
        assert_close(tm[name], expected, rtol=2e-5, atol=2e-6, what=name)
    assert json.loads((out / SUMMARY).read_text()) == summary
    assert (summary["model_a"], summary["model_b"]) == (str(a.resolve()), str(b.resolve()))
    logits = _logits(out, ids)
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, logits_a) and not torch.allclose(logits, logits_b)
    # Side files: config and tokenizer from A; what only B has comes from B.
    for name in ("config.json", "generation_config.json", "tokenizer.model"):
        assert (out / name).read_bytes() == (a / name).read_bytes()
    assert (out / "tokenizer_config.json").read_bytes() == (b / "tokenizer_config.json").read_bytes()


def test_sharded_input_keeps_a_s_shards_and_b_may_be_sharded(models: dict[str, Path], tmp_path: Path) -> None:
    a, b = models["a_llama_sharded"], models["b_llama"]
    out = tmp_path / "linear"
    assert cli_main(["merge", str(a), str(b), "--out", str(out), "--method", "linear", "--t", "0.25"]) == 0
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(
        p.name for p in a.glob("*.safetensors")
    )
    assert len(list(out.glob("*.safetensors"))) > 1
    index_a, index_out = json.loads((a / INDEX).read_text()), json.loads((out / INDEX).read_text())
    assert index_out["weight_map"] == index_a["weight_map"]
    ta, tb, tm = tensors_of(a), tensors_of(b), tensors_of(out)
    assert index_out["metadata"]["total_size"] == sum(x.numel() * x.element_size() for x in tm.values())
    for name in ta:
        assert_close(tm[name], 0.75 * ta[name] + 0.25 * tb[name], rtol=1e-6, atol=1e-7, what=name)

    # B sharded, A not: one output file, every tensor B's at t = 1; transformers gives B's logits.
    out_b = tmp_path / "to_b"
    merge_checkpoints(b, a, out_b, Schedule((1.0,)), show_progress=False)
    assert [p.name for p in out_b.glob("*.safetensors")] == ["model.safetensors"] and not (
        out_b / INDEX
    ).exists()
    tb_out = tensors_of(out_b)
    assert all(torch.equal(tb_out[name], ta[name]) for name in ta)
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(5))
    assert torch.equal(_logits(out_b, ids), _logits(a, ids))


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert cli_main(["merge", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # a failure half-way follows the progress bar
    assert [line for line in lines if "error" in line] == lines[-1:], lines
    assert lines[-1].startswith("vikhr merge: error: ")
    return lines[-1]


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]


@pytest.mark.parametrize(
    ("t", "said"),
    [
        ("0,1.2", "'0,1.2': t = 1.2 is outside [0, 1] (0 keeps model A, 1 takes model B)"),
        ("half", "'half' is not a number or a comma-separated list of numbers"),
    ],
)
def test_a_bad_t_is_a_usage_error_before_any_model_is_read(
    t: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--t is checked by its argparse type, vikhr.merge.cli.t_arg (tools/bench_merge.py's too), before
    the models are looked for: these directories do not exist."""
    argv = ["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out"), "--t", t]
    with pytest.raises(SystemExit) as stop:
        cli_main(argv)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and line.startswith(f"vikhr merge: error: argument --t: {said}"), line
    assert not (tmp_path / "out").exists()


def test_bad_inputs_are_one_line_errors_with_nothing_written(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = models["a"], models["b"]
    out = tmp_path / "out"
    args = [str(a), str(b), "--out", str(out)]

    assert "model B directory not found" in _one_line_error(
        [str(a), str(tmp_path / "nope"), "--out", str(out), "--t", "0.5"], capsys
    )
    # One model twice (a mistyped path) gave a copy of it at any t.
    err = _one_line_error([str(a), str(a / "."), "--out", str(out), "--t", "0.5"], capsys)
    assert f"model A and model B are the same directory ({a})" in err
    assert "FILTER=T" in _one_line_error([*args, "--t", "0.5", "--t-for", "mlp"], capsys)
    # A filter no tensor name contains (a typo) would merge silently with the default t.
    err = _one_line_error([*args, "--t", "0.5", "--t-for", "self-attn=0.3"], capsys)
    assert "--t-for self-attn=...: no tensor name contains 'self-attn'" in err
    err = _one_line_error([str(a), str(models["b_llama"]), "--out", str(out), "--t", "0.5"], capsys)
    assert "config.json differs in model_type" in err and "different architectures" in err
    _nothing_written(out)

    # Different vocabularies: vocab_size in config.json, then the embedding rows themselves.
    other_vocab = tmp_path / "other_vocab"
    _model(other_vocab, seed=1, vocab=VOCAB + 8)
    err = _one_line_error([str(a), str(other_vocab), "--out", str(out), "--t", "0.5"], capsys)
    assert "vocab_size" in err and "different vocabularies" in err
    cfg = json.loads((other_vocab / "config.json").read_text())
    (other_vocab / "config.json").write_text(json.dumps({**cfg, "vocab_size": VOCAB}))
    err = _one_line_error([str(a), str(other_vocab), "--out", str(out), "--t", "0.5"], capsys)
    assert "tensor lm_head.weight has shape [512, 64]" in err and "different vocabularies" in err

    # Different tokenizer files.
    other_tok = tmp_path / "other_tok"
    shutil.copytree(b, other_tok)
    shutil.copy2(NEW_TOKENIZER, other_tok / "tokenizer.model")
    err = _one_line_error([str(a), str(other_tok), "--out", str(out), "--t", "0.5"], capsys)
    assert "tokenizer.model differs" in err and "different vocabularies" in err

    # Tensors only one model has: those of both sides named, with their counts (only the first
    # name was, so a fix met the next on each rerun).
    missing = tmp_path / "missing"
    shutil.copytree(b, missing)
    t = tensors_of(missing)
    for name in ("model.layers.1.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight"):
        del t[name]
    t["model.extra.weight"] = torch.zeros(3)
    save_file(t, str(missing / "model.safetensors"), metadata={"format": "pt"})
    err = _one_line_error([str(a), str(missing), "--out", str(out), "--t", "0.5"], capsys)
    assert err.endswith(
        f"the models hold other tensors: model.layers.1.mlp.up_proj.weight and 1 more only in {a}, "
        f"model.extra.weight only in {missing} (merging needs the same architecture)"
    )
    _nothing_written(out)

    # A failure half-way through writing (NaN in B's last tensor) leaves nothing behind.
    nan = tmp_path / "nan"
    shutil.copytree(b, nan)
    t = tensors_of(nan)
    last = "model.norm.weight"
    t[last][0] = float("nan")
    save_file(t, str(nan / "model.safetensors"), metadata={"format": "pt"})
    err = _one_line_error([str(a), str(nan), "--out", str(out), "--t", "0.5"], capsys)
    assert f"tensor {last}: the tensors hold inf or NaN" in err
    _nothing_written(out)

    # An existing output is kept unless --overwrite.
    out.mkdir()
    assert "exists" in _one_line_error([*args, "--t", "0.5"], capsys)
    assert (
        cli_main(["merge", *args, "--t", "0.5", "--overwrite"]) == 0 and (out / "model.safetensors").is_file()
    )


def test_an_output_in_or_at_a_model_directory_is_refused_naming_that_model(
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--out base/merged was written: a later glob of base's *.safetensors took the merge's shards with
    its own, and a rerun read them as base's. An output in or at either model's directory is refused,
    through relative paths and symbolic links, before anything is written."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("a", "b"):
        shutil.copytree(models[name], work / name)
    (work / "link_to_b").symlink_to(work / "b")
    monkeypatch.chdir(work)
    before = {p: p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file() and not p.is_symlink()}
    for out, overwrite, said in (
        ("a/merged", [], "--out a/merged is inside model A's directory a"),
        ("link_to_b/deeper/merged", [], "--out link_to_b/deeper/merged is inside model B's directory b"),
        ("../work/b/./merged", [], "is inside model B's directory b"),
        ("link_to_b", ["--overwrite"], "--out link_to_b is model B's directory b"),
        ("a/", ["--overwrite"], "--out a/ is model A's directory a"),
    ):
        err = _one_line_error(["a", "b", "--out", out, "--t", "0.5", "--no-progress", *overwrite], capsys)
        assert said in err, err
        beside = (work / ("a" if "model A" in said else "b")).resolve().parent
        assert err.endswith(f"give a directory outside both models, e.g. --out {beside / said[-1]}-merged")
    assert {
        p: p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file() and not p.is_symlink()
    } == before
    assert cli_main(["merge", "a", "b", "--out", "a-merged", "--t", "0.5", "--no-progress"]) == 0


def test_a_merge_past_the_range_of_model_a_s_dtype_is_one_line_and_the_swap_it_names_works(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Model A in float16, B in float32 with a weight past float16's range: the merge, written in A's
    dtype, held inf there (at t = 1 too) and exited 0."""
    a, b = tmp_path / "a16", tmp_path / "b32"
    shutil.copytree(models["a"], a)
    shutil.copytree(models["b"], b)
    save_file({k: v.half() for k, v in tensors_of(a).items()}, str(a / "model.safetensors"))
    large = "model.layers.1.mlp.down_proj.weight"
    tb = tensors_of(b)
    tb[large][0, 0] = 1e6
    save_file(tb, str(b / "model.safetensors"))
    out = tmp_path / "out"
    for method in ("slerp", "linear"):
        for t in ("0.5", "1"):
            argv = [str(a), str(b), "--out", str(out), "--t", t, "--method", method, "--no-progress"]
            assert _one_line_error(argv, capsys).endswith(
                f"tensor {large}: merged values exceed float16's range (±65504), model A's dtype, in which "
                "the merge is written (model B's float32 holds them: give B as model A, with each t "
                "replaced by 1 − t)"
            )
            _nothing_written(out)
    assert cli_main(["merge", str(b), str(a), "--out", str(out), "--t", "0.5", "--no-progress"]) == 0
    merged = tensors_of(out)
    assert merged[large].dtype == torch.float32 and merged[large][0, 0] > 65504
    assert all(bool(torch.isfinite(v).all()) for v in merged.values())


def test_other_vocabularies_are_refused_with_the_adapt_vocab_command_that_gives_one(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The paper's merge of an adapted model back toward its original needs the original in the adapted
    vocabulary: the refusal gives the adapt-vocab command that writes it, with the model of the smaller
    vocabulary as the original whichever order the two are given in (it said only "different
    vocabularies")."""
    from vikhr.cli import build_parser

    original, adapted = tmp_path / "original", tmp_path / "adapted model"  # a space: the command is quoted
    shutil.copytree(models["a"], original)
    _model(adapted, seed=1, vocab=VOCAB + 8)
    out = tmp_path / "out"
    for first, second in ((original, adapted), (adapted, original)):
        err = _one_line_error([str(first), str(second), "--out", str(out), "--t", "0.5"], capsys)
        assert f"vocab_size: {VOCAB if first == original else VOCAB + 8} in {first}" in err
        command = shlex.split(err.rpartition("as adapt-vocab writes it: ")[2])
        assert command[0] == "vikhr" and err.endswith(shlex.join(command))  # the tail, to copy as it is
        args = build_parser().parse_args(command[1:])
        assert (args.model, args.old_tokenizer, args.new_tokenizer) == (
            str(original),
            str(original),
            str(adapted),
        )
        assert not Path(args.out).exists()
    # The embedding rows themselves (config.json agreeing) tell the same.
    cfg = json.loads((adapted / "config.json").read_text())
    (adapted / "config.json").write_text(json.dumps({**cfg, "vocab_size": VOCAB}))
    err = _one_line_error([str(adapted), str(original), "--out", str(out), "--t", "0.5"], capsys)
    assert f"has shape [{VOCAB + 8}, 64] in {adapted}" in err
    command = shlex.split(err.rpartition("as adapt-vocab writes it: ")[2])
    assert err.endswith(shlex.join(command))
    args = build_parser().parse_args(command[1:])
    assert (args.model, args.new_tokenizer) == (str(original), str(adapted))
    _nothing_written(out)


def test_the_adapt_vocab_command_does_not_depend_on_the_order_the_models_are_given_in(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two tokenizer files of one name that differ, the models' rows agreeing: the command took model A
    for the original whichever it was. The tokenizers' sizes now tell (the fewer tokens: the original);
    where the sizes are the same, the line names both models' sizes and gives the command either way
    round, whatever the order."""
    from vikhr.cli import build_parser

    def adapt_vocab_args(command: str) -> tuple[str, str, str]:
        args = build_parser().parse_args(shlex.split(command)[1:])
        return args.model, args.old_tokenizer, args.new_tokenizer

    original, adapted = tmp_path / "original", tmp_path / "adapted"
    shutil.copytree(models["a"], original)  # Mistral's 32,000 tokens, as many rows as the adapted model
    shutil.copytree(models["b"], adapted)
    shutil.copy2(NEW_TOKENIZER, adapted / "tokenizer.model")  # 40,000 tokens
    out = tmp_path / "out"
    for first, second in ((original, adapted), (adapted, original)):
        err = _one_line_error([str(first), str(second), "--out", str(out), "--t", "0.5"], capsys)
        assert "tokenizer.model differs" in err
        command = err.rpartition("as adapt-vocab writes it: ")[2]
        assert err.endswith(command) and command.startswith("vikhr adapt-vocab ")
        assert adapt_vocab_args(command) == (str(original), str(original), str(adapted))

    # One size, other ids (two pieces swapped): which was adapted from which cannot be told.
    spec = json.loads((MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.tokenizer.json").read_text(encoding="utf-8"))
    vocab = dict(spec["model"]["vocab"])
    first_piece, second_piece = (next(p for p, i in vocab.items() if i == n) for n in (1000, 1001))
    vocab[first_piece], vocab[second_piece] = 1001, 1000
    for model, content in ((original, spec), (adapted, {**spec, "model": {**spec["model"], "vocab": vocab}})):
        (model / "tokenizer.model").unlink()
        (model / "tokenizer.json").write_text(json.dumps(content), encoding="utf-8")
    tokens = len(vocab) + len({t["id"] for t in spec["added_tokens"]} - set(vocab.values()))
    for first, second in ((original, adapted), (adapted, original)):
        err = _one_line_error([str(first), str(second), "--out", str(out), "--t", "0.5"], capsys)
        for model in (first, second):
            assert f"{model}: {VOCAB} embedding rows, {tokens} tokens" in err
        head, successor_a, successor_b = err.split(": vikhr adapt-vocab ")
        assert head.endswith(f"where {second} is the successor")
        command_a, _, successor = successor_a.partition("; where ")
        assert successor == f"{first} is"
        assert err.endswith(successor_b)
        pairs = {adapt_vocab_args(f"vikhr adapt-vocab {c}") for c in (command_a, successor_b)}
        assert pairs == {(str(first), str(first), str(second)), (str(second), str(second), str(first))}
    _nothing_written(out)


def test_the_adapt_vocab_command_pads_to_the_rows_of_a_padded_adapted_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model adapted with `adapt-vocab --pad-to-multiple 128` has more embedding rows than its
    tokenizer has tokens: the printed command wrote the tokenizer's 40,000 rows, and the merge refused
    again. It now pads to the adapted model's rows; run as printed, the merge takes its output."""
    original, adapted = tmp_path / "original", tmp_path / "adapted"
    _model(original, seed=0, vocab=32000)
    shutil.copy2(MISTRAL_TOKENIZER, original / "tokenizer.model")
    adapt = ["adapt-vocab", "--model", str(original), "--old-tokenizer", str(original), "--no-progress"]
    new_tokenizer = ["--new-tokenizer", str(NEW_TOKENIZER), "--pad-to-multiple", "128", "--out", str(adapted)]
    assert cli_main([*adapt, *new_tokenizer]) == 0
    rows = tensors_of(adapted)["model.embed_tokens.weight"].shape[0]
    assert rows == 40064  # the tokenizer's 40,000 tokens, padded
    out = tmp_path / "out"
    err = _one_line_error([str(adapted), str(original), "--out", str(out), "--t", "0.5"], capsys)
    command = shlex.split(err.rpartition("as adapt-vocab writes it: ")[2])
    assert err.endswith(shlex.join(command))
    assert command[command.index("--pad-to-multiple") + 1] == "128"  # 64 gives 40,000: the smallest
    assert cli_main(command[1:]) == 0
    written = Path(command[command.index("--out") + 1])
    assert tensors_of(written)["model.embed_tokens.weight"].shape[0] == rows
    capsys.readouterr()
    assert (
        cli_main(["merge", str(adapted), str(written), "--out", str(out), "--t", "0.5", "--no-progress"]) == 0
    )


@pytest.mark.parametrize(
    ("tokens", "rows", "multiple"),
    [
        (40000, 40064, 128),  # --pad-to-multiple 128
        (40000, 40192, 256),  # 256
        (40000, 40032, 36),  # 96: no power of two gives 40,032 (32 gives 40,000), 36 does
        (100, 65636, None),  # no N up to 65,536 rounds 100 up to 65,636
        (65500, 65536, 64),
    ],
)
def test_the_pad_multiple_that_gives_the_adapted_rows(tokens: int, rows: int, multiple: int | None) -> None:
    from vikhr.merge.checkpoint import pad_multiple_for

    assert pad_multiple_for(tokens, rows, 65536) == multiple
    if multiple is not None:
        assert -(-tokens // multiple) * multiple == rows  # adapt-vocab's rounding


def test_a_peft_adapter_is_refused_with_the_command_that_merges_it_into_its_base(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A LoRA adapter (an SFT run of another toolkit) given for model B was "has no config.json": the
    line now gives the peft command that writes the whole model, and the merge takes what it writes."""
    import subprocess
    import sys

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, adapter = models["a"], tmp_path / "sft adapter"  # a space: the command is quoted
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, weight in lora.named_parameters():
            if "lora_B" in name:  # B = 0 at the start: a trained adapter changes the model
                weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(7))
    lora.save_pretrained(adapter)
    out = tmp_path / "out"
    err = _one_line_error([str(base), str(adapter), "--out", str(out), "--t", "0.5"], capsys)
    assert f"{adapter} is a PEFT adapter (adapter_config.json), not an HF model directory" in err
    command = shlex.split(err.partition("first, ")[2].partition(" (it loads")[0])
    assert command[:2] == ["python", "-c"]
    subprocess.run([sys.executable, *command[1:]], check=True, capture_output=True)
    written = tmp_path / "sft adapter-merged"
    assert cli_main(["merge", str(base), str(written), "--out", str(out), "--t", "1", "--no-progress"]) == 0
    merged, original = tensors_of(out), tensors_of(base)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], original[q]) and torch.equal(merged[q], tensors_of(written)[q])


def _with_a_tensor_of_dtype(model_dir: Path, dtype: str) -> None:
    """Append a 4-byte tensor `extra.scales` of safetensors dtype `dtype` to model_dir's model.safetensors
    (written by hand: torch has no tensor of such a dtype to save)."""
    path = model_dir / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    header["extra.scales"] = {"dtype": dtype, "shape": [4], "data_offsets": [len(data), len(data) + 4]}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data + bytes([127, 1, 2, 3]))


@pytest.mark.parametrize("dtype", ["F8_E8M0", "F8_E4M3", "C64"])
def test_a_tensor_of_a_dtype_vikhr_cannot_read_is_one_line_and_leaves_no_output(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], dtype: str
) -> None:
    """A dtype newer than vikhr's table (F8_E8M0, C64) ended in a RuntimeError traceback naming the
    temporary output file; F8_E4M3 was one line, but only once the tensors before it were merged."""
    a, b = tmp_path / "a", tmp_path / "b"
    for model in (a, b):
        shutil.copytree(models["b_llama"], model)
        _with_a_tensor_of_dtype(model, dtype)
    out = tmp_path / "out"
    err = _one_line_error([str(a), str(b), "--out", str(out), "--t", "0.5", "--no-progress"], capsys)
    assert err.endswith(
        f"{a / 'model.safetensors'}: tensor extra.scales: unsupported safetensors dtype {dtype}"
    )
    _nothing_written(out)


def test_configs_are_compared_as_the_model_reads_them(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A head_dim written in one config and implied in the other is the same model (it was refused);
    another RoPE base or activation is another model (it was merged with A's config). A difference
    is named by config.json's key (it was by the model's field: "num_layers", "norm_eps")."""
    a, b = models["a"], models["b"]
    cfg = json.loads((b / "config.json").read_text())
    implied = {k: v for k, v in cfg.items() if k != "head_dim"}
    layers, heads, width = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
    for change, error in (
        (implied, None),
        (
            {**implied, "rope_parameters": {**cfg["rope_parameters"], "rope_theta": 1e6}},
            "differs in rope_theta",
        ),
        ({**cfg, "hidden_act": "gelu"}, "differs in hidden_act: 'silu'"),
        ({**cfg, "num_hidden_layers": layers + 1}, f"differs in num_hidden_layers: {layers} in {a}, "),
        ({**cfg, "rms_norm_eps": 1e-3}, "differs in rms_norm_eps: "),
        # Tied, its stored head ignored by transformers: merged as its embedding (an untied merge).
        ({**cfg, "tie_word_embeddings": True}, None),
        ({**cfg, "head_dim": 2 * width // heads}, f"differs in head_dim: {width // heads} in {a}, "),
        ({**cfg, "intermediate_size": cfg["intermediate_size"] + 2}, "differs in intermediate_size: "),
    ):
        other = tmp_path / "b"
        shutil.rmtree(other, ignore_errors=True)
        shutil.copytree(b, other)
        (other / "config.json").write_text(json.dumps(change))
        out = tmp_path / "out"
        argv = [str(a), str(other), "--out", str(out), "--t", "0.5", "--overwrite"]
        if error is None:
            assert cli_main(["merge", *argv]) == 0
        else:
            assert error in _one_line_error(argv, capsys)


def test_models_of_other_contexts_merge_and_keep_the_longer(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model and its instruction-tuned successor trained on longer sequences differ only in
    max_position_embeddings (no weight depends on it): they merge, into the longer context."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(models["a"], a)
    shutil.copytree(models["b"], b)
    cfg = json.loads((b / "config.json").read_text())
    longer = cfg["max_position_embeddings"] * 2
    (b / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": longer}))
    out = tmp_path / "out"
    assert cli_main(["merge", str(a), str(b), "--out", str(out), "--t", "0.5"]) == 0
    assert f"max_position_embeddings: the models' differ; the merge keeps the longer, {longer}" in (
        capsys.readouterr().out
    )
    merged_cfg = json.loads((out / "config.json").read_text())
    a_cfg = json.loads((a / "config.json").read_text())
    assert merged_cfg == {**a_cfg, "max_position_embeddings": longer}  # A's config, B's context
    assert json.loads((out / "merge_summary.json").read_text())["max_position_embeddings"] == longer
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.isfinite(_logits(out, ids)).all()  # transformers loads it


def test_tokenizer_json_must_give_the_same_ids_but_may_differ_elsewhere(
    models: dict[str, Path], tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(models["a"], a)
    shutil.copytree(models["b"], b)
    spec = json.loads((MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.tokenizer.json").read_text(encoding="utf-8"))
    (a / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    padded = {**spec, "padding": {"strategy": "BatchLongest", "pad_id": 0, "pad_token": "<unk>"}}
    (b / "tokenizer.json").write_text(json.dumps(padded), encoding="utf-8")
    merge_checkpoints(a, b, tmp_path / "ok", Schedule((0.5,)), show_progress=False)
    # B has the chat template: its tokenizer files come with its tokenizer_config.json.
    assert (tmp_path / "ok" / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    # A vocabulary file only B has is compared with A's tokenizer by its pieces, then taken with B's others.
    shutil.copy2(NEW_TOKENIZER, b / "tokenizer.model")
    (a / "tokenizer.model").unlink(missing_ok=True)
    merge_checkpoints(a, b, tmp_path / "mixed", Schedule((0.5,)), show_progress=False)
    assert (tmp_path / "mixed" / "tokenizer.model").read_bytes() == NEW_TOKENIZER.read_bytes()
    (b / "tokenizer.model").unlink()

    vocab = dict(spec["model"]["vocab"])
    piece = next(p for p, i in vocab.items() if i == 1000)
    vocab[piece + "x"] = vocab.pop(piece)
    other = {**spec, "model": {**spec["model"], "vocab": vocab}}
    (b / "tokenizer.json").write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(VikhrError, match=r"tokenizer\.json differs .* different vocabularies"):
        merge_checkpoints(a, b, tmp_path / "bad", Schedule((0.5,)), show_progress=False)
    _nothing_written(tmp_path / "bad")


def test_vocabularies_in_files_of_other_names_are_compared_by_their_pieces(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """A `.model` beside another model's tokenizer.json: no file name to compare by, so the two were
    merged unchecked (the output's tokenizer files from either). Now their pieces are compared."""
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(models["a"], a)  # Mistral's tokenizer.model
    shutil.copytree(models["b"], b)
    (b / "tokenizer.model").unlink()
    shutil.copy2(MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.tokenizer.json", b / "tokenizer.json")
    with pytest.raises(VikhrError, match=r"have different vocabularies .* same ids"):
        merge_checkpoints(a, b, tmp_path / "bad", Schedule((0.5,)), show_progress=False)
    _nothing_written(tmp_path / "bad")
    write_hf_tokenizer(MISTRAL_TOKENIZER, tmp_path / "export")  # Mistral's own, as tokenizer.json
    shutil.copy2(tmp_path / "export" / "tokenizer.json", b / "tokenizer.json")
    merge_checkpoints(a, b, tmp_path / "ok", Schedule((0.5,)), show_progress=False)
    # B has the chat template: the tokenizer file read with its tokenizer_config.json is B's.
    assert (tmp_path / "ok" / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_each_tokenizer_file_is_loaded_once_by_the_vocabulary_check(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow tokenizer's chat model (tokenizer.model + added_tokens.json) and its fast export
    (tokenizer.json + added_tokens.json): each model's file was loaded once to compare with the
    other's and again as the other's tokenizer, seconds each for a large vocabulary."""
    import importlib

    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    load_module = importlib.import_module("vikhr.tokenizer.load")  # (the package's `load` is the function)

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(models["a"], a)  # Mistral's tokenizer.model
    shutil.copytree(models["b"], b)
    (b / "tokenizer.model").unlink()
    write_hf_tokenizer(MISTRAL_TOKENIZER, b)  # the same vocabulary as a tokenizer.json
    for model in (a, b):
        (model / "added_tokens.json").write_text("{}")
    loaded: list[Path] = []
    real_load = load_module.load

    def counting_load(path: Path) -> Any:
        loaded.append(Path(path))
        return real_load(path)

    monkeypatch.setattr(load_module, "load", counting_load)
    merge_checkpoints(a, b, tmp_path / "ok", Schedule((0.5,)), show_progress=False)
    assert sorted(loaded) == [a / "tokenizer.model", b / "tokenizer.json"]
    # The pieces are still compared: another vocabulary in B's tokenizer.json is refused.
    shutil.copy2(MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.tokenizer.json", b / "tokenizer.json")
    with pytest.raises(VikhrError, match=r"different vocabularies \(tokenizer\.model of .* other pieces"):
        merge_checkpoints(a, b, tmp_path / "bad", Schedule((0.5,)), show_progress=False)
    _nothing_written(tmp_path / "bad")


def test_a_merge_tokenizes_chats_as_the_model_whose_chat_template_it_takes(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """A base with a bare tokenizer.model and its SFT export (tokenizer.model, tokenizer.json and the
    `mistral` template in tokenizer_config.json): the merge took A's tokenizer.model with B's
    tokenizer_config.json, which transformers read into another tokenizer than B's (`[` rather than
    `▁[` after `<s>`): every chat got other ids than the tuned model was trained on. The vocabulary
    files now come with the chat files; a vocabulary file only one model has is compared by its pieces."""
    from transformers import AutoTokenizer

    from vikhr.sft.hf_chat import HF_CHAT_TEMPLATES
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(models["a"], a)  # Mistral's tokenizer.model alone
    shutil.copytree(models["b"], b)
    _, config_path = write_hf_tokenizer(MISTRAL_TOKENIZER, b)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({**config, "chat_template": HF_CHAT_TEMPLATES["mistral"]}))
    out = tmp_path / "out"
    merge_checkpoints(a, b, out, Schedule((0.5,)), show_progress=False)
    chat = [{"role": "user", "content": "Привет, как дела?"}, {"role": "assistant", "content": "Хорошо."}]
    tuned, merged = AutoTokenizer.from_pretrained(b), AutoTokenizer.from_pretrained(out)
    assert merged.apply_chat_template(chat, tokenize=True, return_dict=False) == tuned.apply_chat_template(
        chat, tokenize=True, return_dict=False
    )
    assert (out / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    # B's own tokenizer.json of other pieces than A's tokenizer.model: another vocabulary, refused.
    shutil.copy2(MISTRAL_TOKENIZER.parent / "vikhr-ru-40k.tokenizer.json", b / "tokenizer.json")
    with pytest.raises(VikhrError, match=r"have different vocabularies \(tokenizer\.json of .* same ids"):
        merge_checkpoints(a, b, tmp_path / "bad", Schedule((0.5,)), show_progress=False)
    _nothing_written(tmp_path / "bad")


def test_a_chat_model_with_tokens_added_to_its_model_file_merges_with_its_export(tmp_path: Path) -> None:
    """A chat model whose tokenizer.json adds <|im_end|>/<|im_start|> to its tokenizer.model (as
    OpenHermes-2.5) and its own export through Megatron, which carries the tokenizer.json it is read
    with: the merge compared A's bare tokenizer.model with B's tokenizer and refused two models that
    tokenize alike. A file only one model has is now compared as that model is read."""
    from transformers import AutoTokenizer

    from tests.helpers import sentencepiece_with_added_tokens
    from vikhr.convert.mistral import hf_to_megatron, megatron_to_hf

    a = tmp_path / "chat"
    tiny_hf_model(a, 32002, num_layers=1)
    sentencepiece_with_added_tokens(a)
    b = megatron_to_hf(hf_to_megatron(a, tmp_path / "ckpt"), tmp_path / "export")
    assert (a / "tokenizer.model").read_bytes() == (b / "tokenizer.model").read_bytes()
    merge_checkpoints(a, b, tmp_path / "with-model", Schedule((0.5,)), show_progress=False)
    assert (tmp_path / "with-model" / "tokenizer.model").is_file()
    (b / "tokenizer.model").unlink()  # an export of an older version: the tokenizer.json alone
    out = tmp_path / "merged"
    merge_checkpoints(a, b, out, Schedule((0.5,)), show_progress=False)
    chat = [{"role": "user", "content": "Привет, как дела?"}, {"role": "assistant", "content": "Хорошо."}]
    ids = [
        AutoTokenizer.from_pretrained(m).apply_chat_template(chat, tokenize=True, return_dict=False)
        for m in (a, b, out)
    ]
    assert ids[0] == ids[1] == ids[2] and 32000 in ids[2]
    # A bare tokenizer.model of A against B's tokenizer.json with the added tokens: other vocabularies.
    (a / "tokenizer.json").unlink()
    with pytest.raises(VikhrError, match=r"have different vocabularies .* same ids"):
        merge_checkpoints(a, b, tmp_path / "bad", Schedule((0.5,)), show_progress=False)
    _nothing_written(tmp_path / "bad")


@pytest.mark.parametrize("stored_by", ["a", "b"])
def test_a_tied_model_may_store_its_head(stored_by: str, tmp_path: Path) -> None:
    """transformers replaces a tied model's stored lm_head with the embedding when it loads: a head
    one side stores was refused as another architecture. A's is merged with B's embedding, B's left out."""
    from transformers import AutoModelForCausalLM

    a, b = tmp_path / "a", tmp_path / "b"
    tiny_hf_model(a, VOCAB, arch="qwen2", tied=True, seed=0)
    tiny_hf_model(b, VOCAB, arch="qwen2", tied=True, seed=1)
    stored = a if stored_by == "a" else b
    weights = tensors_of(stored)
    assert "lm_head.weight" not in weights
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, str(stored / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    merge_checkpoints(a, b, out, Schedule((0.5,)), show_progress=False)
    merged = tensors_of(out)
    assert ("lm_head.weight" in merged) == (stored_by == "a")
    if stored_by == "a":
        assert torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.lm_head.weight, merged["model.embed_tokens.weight"])


@pytest.mark.parametrize("stored_by", ["a", "both"])
def test_a_tied_models_stored_head_follows_its_embedding_along_a_gradient(
    stored_by: str, tmp_path: Path
) -> None:
    """A gradient gives the embedding its first value and the LM head its last: a tied model's stored
    head was merged at t = 1 beside an embedding at t = 0, so the output said tied but was not
    (convert refused it). A filter naming that head alone changed a tensor transformers ignores."""
    a, b = tmp_path / "a", tmp_path / "b"
    tiny_hf_model(a, VOCAB, arch="qwen2", tied=True, seed=0, num_layers=LAYERS)
    tiny_hf_model(b, VOCAB, arch="qwen2", tied=True, seed=1, num_layers=LAYERS)
    for stored in [a, b] if stored_by == "both" else [a]:
        weights = tensors_of(stored)
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
        save_file(weights, str(stored / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    summary = merge_checkpoints(a, b, out, Schedule(parse_gradient("0.2,0.9")), show_progress=False)
    merged = tensors_of(out)
    assert summary["t"]["lm_head.weight"] == summary["t"]["model.embed_tokens.weight"] == pytest.approx(0.2)
    assert torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])
    assert not torch.equal(merged["model.embed_tokens.weight"], tensors_of(a)["model.embed_tokens.weight"])
    with pytest.raises(VikhrError, match="no tensor name contains 'lm_head'"):
        merge_checkpoints(a, b, tmp_path / "f", Schedule((0.5,), (parse_filter("lm_head=0.3"),)))
    _nothing_written(tmp_path / "f")


def torch_reference_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mergekit's SLERP in float64 PyTorch, written apart from vikhr.merge.slerp."""
    a, b = a.double(), b.double()
    unit_a, unit_b = (x / x.norm() if x.norm() > 1e-8 else x for x in (a, b))  # zero biases stay zero
    dot = float((unit_a * unit_b).sum())
    if abs(dot) > 0.9995:
        return (1 - t) * a + t * b
    theta = math.acos(dot)
    return (math.sin(theta * (1 - t)) * a + math.sin(theta * t) * b) / math.sin(theta)


@pytest.mark.parametrize(("tied_side", "sharded"), [("a", False), ("a", True), ("b", False), ("both", False)])
def test_a_tied_model_merges_with_an_untied_one_into_an_untied_model(
    tied_side: str, sharded: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base that ties its head to the embedding and a fine-tune that untied it were refused as other
    architectures (tie_word_embeddings differs). The tied side's head is its embedding: the merge is
    untied, says so in one line, and transformers gives the logits of a float64 SLERP of the weights as
    transformers loads them. Two tied models stay tied."""
    from transformers import AutoConfig, AutoModelForCausalLM

    a, b = tmp_path / "a", tmp_path / "b"
    shard = "200KB" if sharded else "1GB"
    tiny_hf_model(
        a,
        VOCAB,
        arch="qwen2",
        tied=tied_side in ("a", "both"),
        seed=0,
        num_layers=LAYERS,
        max_shard_size=shard,
    )
    tiny_hf_model(b, VOCAB, arch="qwen2", tied=tied_side in ("b", "both"), seed=1, num_layers=LAYERS)
    assert (a / INDEX).is_file() == sharded
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli_main(["merge", str(a), str(b), "--out", str(out), "--t", "0.2,0.7", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    untied = tied_side != "both"
    said = [line for line in printed.splitlines() if "lm_head" in line]
    tied_name, untied_name = ("A", "B") if tied_side == "a" else ("B", "A")
    assert said == (
        [
            f"  lm_head: model {tied_name} ties it to its embedding, model {untied_name} does not: the "
            f"merge takes {tied_name}'s embedding for its head and writes an untied model "
            "(tie_word_embeddings: false)"
        ]
        if untied
        else []
    )
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is not untied
    summary = json.loads((out / SUMMARY).read_text())

    # The reference: each model's weights as transformers loads them (a tied head is the embedding).
    loaded = {
        m: AutoModelForCausalLM.from_pretrained(m, torch_dtype=torch.float32).state_dict() for m in (a, b)
    }
    reference = {
        name: torch_reference_slerp(summary["t"][name], loaded[a][name], loaded[b][name]).float()
        for name in summary["t"]
    }
    merged = tensors_of(out)
    assert ("lm_head.weight" in merged) == untied and merged.keys() == reference.keys()
    if untied:
        assert summary["t"]["lm_head.weight"] == pytest.approx(0.7)  # the head's own t: the gradient's last
        assert summary["t"]["model.embed_tokens.weight"] == pytest.approx(0.2)
    if sharded:
        index = json.loads((out / INDEX).read_text())
        for name, shard_name in index["weight_map"].items():
            with safe_open(str(out / shard_name), framework="pt") as st:
                assert name in st.keys(), name  # noqa: SIM118 - safe_open is not a mapping
        assert index["weight_map"].keys() == merged.keys()

    config = AutoConfig.from_pretrained(out)
    expected_model = AutoModelForCausalLM.from_config(config).eval()
    expected_model.load_state_dict(
        {**reference, **({} if untied else {"lm_head.weight": reference["model.embed_tokens.weight"]})}
    )
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(6))
    got = _logits(out, ids)
    with torch.no_grad():
        expected = expected_model(ids).logits
    assert_close(got, expected, rtol=1e-4, atol=1e-5, what="logits")
    for model in (a, b):  # the merge is neither input
        assert not torch.allclose(got, _logits(model, ids), atol=1e-3)


def test_a_config_without_tie_word_embeddings_is_tied_where_its_family_ties_by_default(
    tmp_path: Path,
) -> None:
    """A config of a family vikhr does not convert that leaves tie_word_embeddings out was read as
    untied, though transformers ties it where its family's config class does (gemma): beside the same
    model saying true it was refused as an untied model storing no head. Both read tied: the merge is
    tied, as transformers loads it."""
    from transformers import AutoModelForCausalLM, GemmaConfig

    assert GemmaConfig().tie_word_embeddings is True  # what the config without the key gets
    config = GemmaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
    )
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, model_dir in enumerate((a, b)):
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
        assert "lm_head.weight" not in tensors_of(model_dir)
    written = json.loads((a / "config.json").read_text())
    del written["tie_word_embeddings"]
    (a / "config.json").write_text(json.dumps(written))
    assert json.loads((b / "config.json").read_text())["tie_word_embeddings"] is True
    out = tmp_path / "out"
    summary = merge_checkpoints(a, b, out, Schedule((0.5,)), show_progress=False)
    merged = tensors_of(out)
    assert "lm_head.weight" not in merged and "lm_head.weight" not in summary["t"]
    assert json.loads((out / "config.json").read_text()).get("tie_word_embeddings", True) is True
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.lm_head.weight, merged["model.embed_tokens.weight"])


@pytest.mark.parametrize(
    "key_written, untied_as",
    [
        (True, "has tie_word_embeddings false"),
        (False, "leaves tie_word_embeddings out, which model_type 'qwen2' reads as false"),
    ],
    ids=["key_false", "key_left_out"],
)
def test_an_untied_model_that_stores_no_head_is_refused_beside_a_tied_one(
    tmp_path: Path, key_written: bool, untied_as: str
) -> None:
    """Beside a tied model, an untied one's missing head was said to be a tensor only the tied one
    holds; and where its config leaves tie_word_embeddings out (untied by qwen2's default), the refusal
    said the file "has tie_word_embeddings false", a key the user did not find there."""
    from transformers import AutoConfig

    assert AutoConfig.for_model("qwen2").tie_word_embeddings is False
    a, b = tmp_path / "a", tmp_path / "b"
    tiny_hf_model(a, VOCAB, arch="qwen2", tied=True, seed=0)
    tiny_hf_model(b, VOCAB, arch="qwen2", seed=1)
    weights = tensors_of(b)
    del weights["lm_head.weight"]
    save_file(weights, str(b / "model.safetensors"), metadata={"format": "pt"})
    if not key_written:
        written = json.loads((b / "config.json").read_text())
        del written["tie_word_embeddings"]
        (b / "config.json").write_text(json.dumps(written))
    with pytest.raises(VikhrError) as refusal:
        merge_checkpoints(a, b, tmp_path / "out", Schedule((0.5,)), show_progress=False)
    assert str(refusal.value) == (
        f"{b / 'config.json'} {untied_as} but {b} stores no lm_head.weight: set tie_word_embeddings to "
        "true there if the model ties its head to the embedding"
    )
    _nothing_written(tmp_path / "out")


def test_a_tie_word_embeddings_that_is_not_true_or_false_is_refused(tmp_path: Path) -> None:
    """A string "false" beside a tied model was read as untied by the merge (only true is tied) but as
    tied by the converter: one reading now, and a value other than true or false is refused."""
    a, b = tmp_path / "a", tmp_path / "b"
    tiny_hf_model(a, VOCAB, arch="qwen2", tied=True, seed=0)
    tiny_hf_model(b, VOCAB, arch="qwen2", seed=1)
    written = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps({**written, "tie_word_embeddings": "false"}))
    with pytest.raises(VikhrError) as refusal:
        merge_checkpoints(a, b, tmp_path / "out", Schedule((0.5,)), show_progress=False)
    assert str(refusal.value).startswith(
        f'{b / "config.json"}: tie_word_embeddings must be true or false, got "false"'
    )
    _nothing_written(tmp_path / "out")


def _base_and_instruct(models: dict[str, Path], tmp_path: Path) -> tuple[Path, Path, list[int]]:
    """A: a base model with a Qwen-like tokenizer, no chat template, stopping at <|endoftext|>; B: its
    instruction-tuned successor (chatml, vikhr's; stops at <|im_end|>, samples); and the merge's stop
    ids: B's, then A's."""
    from tokenizers import Tokenizer

    from tests.test_sft_templates import byte_level_bpe, write_model_tokenizer
    from vikhr.sft.hf_chat import HF_CHAT_TEMPLATES

    tok = write_model_tokenizer(tmp_path / "tok", byte_level_bpe("gpt2"), "chatml")
    ids = Tokenizer.from_file(str(tok / "tokenizer.json")).token_to_id
    config = json.loads((tok / "tokenizer_config.json").read_text())
    a, b = tmp_path / "a", tmp_path / "b"
    generation = {
        a: {"eos_token_id": ids("<|endoftext|>")},
        b: {"eos_token_id": ids("<|im_end|>"), "do_sample": True, "temperature": 0.7},
    }
    for model, template in ((a, None), (b, HF_CHAT_TEMPLATES["chatml"])):
        shutil.copytree(models[model.name], model)
        (model / "tokenizer.model").unlink()
        shutil.copy2(tok / "tokenizer.json", model / "tokenizer.json")
        own = {k: v for k, v in config.items() if k != "chat_template"}
        own.update({"chat_template": template} if template is not None else {})
        (model / "tokenizer_config.json").write_text(json.dumps(own))
        (model / "generation_config.json").write_text(json.dumps(generation[model]))
    return a, b, [ids("<|im_end|>"), ids("<|endoftext|>")]


def test_a_base_and_its_instruction_tuned_successor_merge_into_a_chat_model(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's recipe (A = base, B = its SFT export) took every side file from A: no chat
    template (`vikhr eval --chat-template` refused the merge) and A's stop id only, so generation ran
    past <|im_end|>. The chat files now come from the model that has a template, and the merge stops
    at both models' EOS ids."""
    from transformers import AutoTokenizer, GenerationConfig

    from vikhr.sft.hf_chat import HF_CHAT_TEMPLATES, chat_template_in

    a, b, stops = _base_and_instruct(models, tmp_path)
    for first, second in ((a, b), (b, a)):
        out = tmp_path / f"out-{first.name}"
        capsys.readouterr()
        assert cli_main(["merge", str(first), str(second), "--out", str(out), "--t", "0.3"]) == 0
        printed = capsys.readouterr().out
        found = chat_template_in(out)
        assert found is not None and found[0] == HF_CHAT_TEMPLATES["chatml"]
        assert AutoTokenizer.from_pretrained(out).chat_template == HF_CHAT_TEMPLATES["chatml"]
        generation = GenerationConfig.from_pretrained(out)
        assert generation.eos_token_id == stops and generation.temperature == 0.7  # B's, with A's EOS
        if first == a:
            assert "chat template: model B's (model A has none)" in printed, printed
            assert f"eos_token_id: {stops} (both models' stop ids)" in printed, printed
            summary = json.loads((out / SUMMARY).read_text())
            assert summary["chat_files"] == {"from": "model_b", "why": "model A has none"}


def test_config_json_stops_at_the_ids_the_generation_config_stops_at(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """generation_config.json stopped at both models' EOS ids while config.json kept A's alone: a
    tool reading the EOS from config.json ran past B's <|im_end|>. A model without a
    generation_config.json stops at config.json's EOS (transformers' rule), and the merge did not
    stop there."""
    from transformers import AutoConfig, GenerationConfig

    a, b, stops = _base_and_instruct(models, tmp_path)
    for first, second in ((a, b), (b, a)):
        out = tmp_path / f"out-{first.name}"
        summary = merge_checkpoints(first, second, out, Schedule((0.3,)), show_progress=False)
        assert json.loads((out / "config.json").read_text())["eos_token_id"] == stops
        assert AutoConfig.from_pretrained(out).eos_token_id == stops
        assert GenerationConfig.from_pretrained(out).eos_token_id == stops == summary["eos_token_id"]
    (a / "generation_config.json").unlink()
    config = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**config, "eos_token_id": stops[1]}))  # <|endoftext|>
    out = tmp_path / "a-without-generation-config"
    merge_checkpoints(a, b, out, Schedule((0.3,)), show_progress=False)
    assert GenerationConfig.from_pretrained(out).eos_token_id == stops
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == stops


def test_chat_template_from_a_model_without_one_is_refused(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--chat-template-from naming the model without a template (A and B swapped) gave a merge with
    no template at all, B's left out, and said it had A's."""
    a, b = models["a"], models["b"]  # only B has a template
    out = tmp_path / "out"
    argv = [str(a), str(b), "--out", str(out), "--t", "0.3", "--chat-template-from"]
    error = _one_line_error([*argv, "a"], capsys)
    assert error == (
        f"vikhr merge: error: --chat-template-from a: model A ({a}) has no chat template "
        f"(model B has one, in {b / 'tokenizer_config.json'})"
    )
    _nothing_written(out)
    error = _one_line_error([str(models["a_llama_sharded"]), str(models["b_llama"]), *argv[2:], "b"], capsys)
    assert "has no chat template (neither model has one: leave the option out)" in error
    _nothing_written(out)


def test_two_different_chat_templates_need_chat_template_from(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where A carried its original template (Qwen's) the merge got it, not the chatml B was tuned in,
    without a word. Two different templates are now refused unless --chat-template-from names the
    model whose chat files to take (the other's template is left out, wherever it is written)."""
    from tests.test_sft_templates import QWEN_DEFAULT_SYSTEM
    from vikhr.sft.hf_chat import HF_CHAT_TEMPLATES, chat_template_in

    a, b, stops = _base_and_instruct(models, tmp_path)
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    (a / "chat_template.jinja").write_text(config["chat_template"], encoding="utf-8")  # Qwen's own
    out = tmp_path / "out"
    argv = [str(a), str(b), "--out", str(out), "--t", "0.3"]
    error = _one_line_error(argv, capsys)
    assert "different chat templates" in error and "--chat-template-from a or b" in error, error
    _nothing_written(out)
    assert cli_main(["merge", *argv, "--chat-template-from", "b"]) == 0
    assert "chat template: model B's (--chat-template-from b)" in capsys.readouterr().out
    assert not (out / "chat_template.jinja").exists()
    assert chat_template_in(out) == (HF_CHAT_TEMPLATES["chatml"], out / "tokenizer_config.json")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == stops
    assert cli_main(["merge", *argv, "--chat-template-from", "a", "--out", str(tmp_path / "to_a")]) == 0
    found = chat_template_in(tmp_path / "to_a")
    assert found is not None and QWEN_DEFAULT_SYSTEM in found[0] and found[1].name == "chat_template.jinja"
    # B's template in chat_template.jinja and no tokenizer_config.json, A's inline: A's file without it.
    (a / "chat_template.jinja").unlink()
    (a / "tokenizer_config.json").write_text(json.dumps(config))
    (b / "tokenizer_config.json").unlink()
    (b / "chat_template.jinja").write_text(HF_CHAT_TEMPLATES["chatml"], encoding="utf-8")
    assert cli_main(["merge", *argv, "--chat-template-from", "b", "--out", str(tmp_path / "jinja")]) == 0
    assert chat_template_in(tmp_path / "jinja") == (
        HF_CHAT_TEMPLATES["chatml"],
        tmp_path / "jinja" / "chat_template.jinja",
    )
    merged_config = json.loads((tmp_path / "jinja" / "tokenizer_config.json").read_text())
    assert merged_config == {k: v for k, v in config.items() if k != "chat_template"}


def test_chat_templates_that_differ_by_a_final_newline_are_the_same_template(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chat_template.jinja ending in a newline (as an editor saves it) and the same template inline
    in tokenizer_config.json render alike (Jinja drops one final newline), but were refused as two
    different templates."""
    from transformers import AutoTokenizer

    from vikhr.sft.hf_chat import HF_CHAT_TEMPLATES

    a, b, _ = _base_and_instruct(models, tmp_path)
    (a / "chat_template.jinja").write_text(HF_CHAT_TEMPLATES["chatml"] + "\n", encoding="utf-8")
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli_main(["merge", str(a), str(b), "--out", str(out), "--t", "0.3"]) == 0
    captured = capsys.readouterr()
    assert "error" not in captured.err and "chat template: both models' (the same)" in captured.out, captured
    chat = [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте"}]
    merged, tuned = (AutoTokenizer.from_pretrained(m) for m in (out, b))
    assert merged.apply_chat_template(chat, tokenize=False) == tuned.apply_chat_template(chat, tokenize=False)


def test_the_merge_says_its_chat_template_where_both_models_carry_it_or_neither(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README says the line after `wrote ...` names the merge's chat template, but where both
    models carried the same one (a model merged with its own fine-tune) no line was printed, and a
    user could not tell the merge had a template at all; neither with no template anywhere."""
    from vikhr.sft.hf_chat import HF_CHAT_TEMPLATES, chat_template_in

    a, b, _ = _base_and_instruct(models, tmp_path)
    shutil.copy2(b / "tokenizer_config.json", a / "tokenizer_config.json")  # A carries B's template too
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli_main(["merge", str(a), str(b), "--out", str(out), "--t", "0.3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {out}") and lines[1] == (
        "  chat template: both models' (the same), with model A's tokenizer and generation configs"
    ), lines
    assert chat_template_in(out) == (HF_CHAT_TEMPLATES["chatml"], out / "tokenizer_config.json")
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["chat_files"] == {"from": "model_a", "why": "the same in both"}
    for model in (a, b):  # neither carries a template
        config = json.loads((model / "tokenizer_config.json").read_text())
        (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": None}))
    bare = tmp_path / "bare"
    assert cli_main(["merge", str(a), str(b), "--out", str(bare), "--t", "0.3"]) == 0
    assert "  chat template: none (neither model has one)" in capsys.readouterr().out.splitlines()
    assert chat_template_in(bare) is None


def test_bar_is_drawn_on_a_terminal_only(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bar went to stderr wherever it was: a log held `merging` lines beside the result."""
    a, b = models["a_llama_sharded"], models["b_llama"]

    def argv(out: str) -> list[str]:
        return ["merge", str(a), str(b), "--out", str(tmp_path / out), "--t", "0.5"]

    assert "merging" not in stderr_of_cli(argv("log"), terminal=False, monkeypatch=monkeypatch)
    assert "merging: 100%" in stderr_of_cli(argv("terminal"), terminal=True, monkeypatch=monkeypatch)
    quiet = stderr_of_cli([*argv("quiet"), "--no-progress"], terminal=True, monkeypatch=monkeypatch)
    assert "merging" not in quiet


@pytest.mark.parametrize("command", ["merge", "convert", "adapt-vocab", "eval", "sft score"])
def test_pickled_weights_are_refused_with_the_command_that_writes_safetensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """A model stored as pytorch_model.bin was refused with "only safetensors checkpoints are
    supported" and no way forward (eval, sft score: "has no *.safetensors weights"). Every command
    gives one line with the transformers command that writes safetensors, and never reads the pickle."""
    from vikhr.convert.mistral import model_config_to_hf_config
    from vikhr.model.config import preset

    config = model_config_to_hf_config(preset("tiny"))
    if command == "sft score":  # a reward model: its head is a sequence classifier's
        config = {**config, "architectures": ["MistralForSequenceClassification"], "num_labels": 1}
    pickled = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        (tmp_path / name / "pytorch_model.bin").write_bytes(b"not a pickle: never to be read")
        pickled.append(str(tmp_path / name))
    out, tok = str(tmp_path / "out"), str(MISTRAL_TOKENIZER)
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    tokenizers = ["--old-tokenizer", tok, "--new-tokenizer", tok]
    argv = {
        "merge": ["merge", *pickled, "--out", out, "--t", "0.5"],
        "convert": ["convert", "hf-to-megatron", pickled[0], out],
        "adapt-vocab": ["adapt-vocab", "--model", pickled[0], "--out", out, *tokenizers],
        "eval": ["eval", "--model", pickled[0], "--tasks", "bpc"],
        "sft score": ["sft", "score", "--input", str(chats), "--model", pickled[0], "--scores", out],
    }[command]
    assert cli_main(argv) == 2
    model_class = "MistralForSequenceClassification" if command == "sft score" else "MistralForCausalLM"
    a = tmp_path / "a"
    fix = f'from transformers import {model_class} as M; M.from_pretrained("{a}").save_pretrained("{a}")'
    assert capsys.readouterr().err == (
        f"vikhr {'convert hf-to-megatron' if command == 'convert' else command}: error: {a} holds its "
        f"weights pickled (pytorch_model.bin), and vikhr reads safetensors only: write safetensors beside "
        f"them with python -c '{fix}' (it unpickles them: run it only on weights you trust)\n"
    )
    assert not (tmp_path / "out").exists()


def test_sharded_pickled_weights_are_counted_and_a_directory_without_weights_is_named(tmp_path: Path) -> None:
    from vikhr.adapt.safetensors_io import checkpoint_headers

    for name in ("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "pytorch_model.bin.index.json").write_text("{}")
    with pytest.raises(VikhrError) as e:  # config.json names no class: the causal LM's auto class
        checkpoint_headers(tmp_path)
    assert str(e.value).startswith(
        f"{tmp_path} holds its weights pickled (pytorch_model-00001-of-00002.bin and 2 more), "
    )
    assert "import AutoModelForCausalLM as M;" in str(e.value)
    for path in tmp_path.iterdir():
        path.unlink()
    with pytest.raises(VikhrError) as e:
        checkpoint_headers(tmp_path)
    assert str(e.value) == (
        f"{tmp_path} has no model.safetensors or {INDEX} (give an HF model directory with safetensors "
        "weights)"
    )
