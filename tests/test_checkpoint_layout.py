"""Optimizer checkpoint layouts (vikhr.train.checkpoint): the distributed optimizer's state saved as
element ranges of named parameters and cut again for another DP or TP layout; the replicated
optimizer's state dicts cut for another TP size and converted between megatron's fp32 and bf16
formats. End-to-end resumes in another layout or on another device: tests/test_train.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from vikhr.errors import VikhrError
from vikhr.model.tp_layout import shard, split_of
from vikhr.train import checkpoint


def test_optimizer_state_range_is_cut_from_the_saved_pieces() -> None:
    """A DP rank's part of a distributed optimizer's state is assembled from the pieces other DP
    layouts saved: any overlap, in any order, with the scalar step taken once; a range that no
    piece covers is one error naming the parameter and the elements."""

    full = torch.arange(10.0)
    pieces = [
        {"name": "w", "start": s, "end": e, "tensors": {"exp_avg": full[s:e] * 2, "step": torch.tensor(7.0)}}
        for s, e in ((6, 10), (0, 3), (3, 6))
    ]
    got = checkpoint._state_range(pieces, 2, 8, "w")
    assert torch.equal(got["exp_avg"], full[2:8] * 2) and float(got["step"]) == 7.0
    assert torch.equal(checkpoint._state_range(pieces, 0, 10, "w")["exp_avg"], full * 2)
    with pytest.raises(VikhrError, match=r"^ckpt, w: no optimizer state for elements 3\.\.8 "):
        checkpoint._state_range([p for p in pieces if p["start"] != 3], 1, 8, "ckpt, w")
    with pytest.raises(VikhrError, match=r"elements 10\.\.12"):
        checkpoint._state_range(pieces, 4, 12, "w")


class _LayoutOptimizer:
    """The part of megatron's DistributedOptimizer the checkpoint uses, for one DP layout: which
    element range of each parameter this rank owns, and its state there (slices of `full`)."""

    def __init__(self, owned: dict[torch.nn.Parameter, tuple[int, int]], full: dict, keys: tuple[str, ...]):
        param_map = {p: {"param": SimpleNamespace(start=s, end=e)} for p, (s, e) in owned.items()}
        self.gbuf_ranges = [{torch.float32: [{"param_map": param_map}]}]
        self.optimizer = SimpleNamespace(state={})
        self.owned, self.full, self.keys = owned, full, keys
        self.restored: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}
        self.common = None

    def state_dict(self) -> dict:
        return {"optimizer": {"param_groups": [{"lr": 0.5}]}}

    def load_state_dict(self, state: dict) -> None:
        self.common = state

    def _get_main_param_and_optimizer_states(self, param: torch.nn.Parameter) -> dict:
        start, end = self.owned[param]
        return {k: self.full[param][k] if k == "step" else self.full[param][k][start:end] for k in self.keys}

    def _set_main_param_and_optimizer_states(self, param: torch.nn.Parameter, tensors: dict) -> None:
        self.restored[param] = tensors


META = {"tp": 1, "dp": 2, "world_size": 2}  # the layout _save_layout writes


def _save_layout(step_dir: Path, model: torch.nn.Module, layouts: list[_LayoutOptimizer]) -> None:
    step_dir.mkdir()
    names = {p: n for n, p in model.named_parameters()}
    for d, inner in enumerate(layouts):
        parts = [{"common": inner.state_dict(), "pieces": checkpoint._optimizer_pieces(inner, names)}]
        torch.save(parts, step_dir / f"optim_tp00_dp{d:03d}.pt")


def test_distributed_optimizer_state_is_redistributed_over_another_dp_layout(tmp_path: Path) -> None:
    """What DP=2 ranks saved (parameters split mid-way, one whole on a rank) reaches the three
    ranks of DP=3 element for element — main weights, both moments and the step — whatever range
    each owns; a saved state without a key the optimizer keeps, or a file in another layout, is
    one error naming the file or parameter."""
    model = torch.nn.Module()
    model.a, model.b = torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(7))
    a, b = model.a, model.b
    keys = ("param", "exp_avg", "exp_avg_sq", "step")
    full = {p: {k: torch.randn(p.numel()) for k in keys[:3]} | {"step": torch.tensor(5.0)} for p in (a, b)}
    saved = [_LayoutOptimizer({a: (0, 6)}, full, keys), _LayoutOptimizer({a: (6, 10), b: (0, 7)}, full, keys)]
    _save_layout(tmp_path / "step", model, saved)
    for owned in ({a: (0, 4)}, {a: (4, 10), b: (0, 1)}, {b: (1, 7)}):
        rank = _LayoutOptimizer(owned, full, keys)
        checkpoint._load_distributed_optimizer(rank, model, tmp_path / "step", META, (0, 1, 0))
        assert rank.common == {"optimizer": {"param_groups": [{"lr": 0.5}]}}
        assert rank.restored.keys() == owned.keys()
        for param, (start, end) in owned.items():
            for key in keys[:3]:
                assert torch.equal(rank.restored[param][key], full[param][key][start:end]), (key, start)
            assert float(rank.restored[param]["step"]) == 5.0

    amsgrad = {p: full[p] | {"max_exp_avg_sq": torch.zeros(p.numel())} for p in (a, b)}
    with_more_state = _LayoutOptimizer({a: (0, 10), b: (0, 7)}, amsgrad, (*keys, "max_exp_avg_sq"))
    with pytest.raises(VikhrError, match=r"a: the saved optimizer state lacks \['max_exp_avg_sq'\]"):
        checkpoint._load_distributed_optimizer(with_more_state, model, tmp_path / "step", META, (0, 1, 0))
    torch.save([{"common": {}, "shard": {}}], tmp_path / "step" / "optim_tp00_dp000.pt")
    with pytest.raises(VikhrError, match=r"optim_tp00_dp000.pt does not hold this run's optimizer parts"):
        checkpoint._load_distributed_optimizer(saved[0], model, tmp_path / "step", META, (0, 1, 0))


def _model(shapes: dict[str, tuple[int, ...]]) -> tuple[torch.nn.Module, dict[str, torch.nn.Parameter]]:
    """A module whose parameters have megatron's names (nested modules) and the given shapes."""
    model, params = torch.nn.Module(), {}
    for name, shape in shapes.items():
        parent, *_, leaf = [model, *name.split(".")]
        for part in name.split(".")[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        params[name] = torch.nn.Parameter(torch.zeros(shape))
        parent.register_parameter(leaf, params[name])
    return model, params


EMBED, FC1, PROJ = (
    "embedding.word_embeddings.weight",
    "decoder.layers.0.mlp.linear_fc1.weight",
    "decoder.layers.0.self_attention.linear_proj.weight",
)


def _shard_shapes(padded_vocab: int, tp: int) -> dict[str, tuple[int, ...]]:
    return {EMBED: (padded_vocab // tp, 4), FC1: (16 // tp, 4), PROJ: (4, 8 // tp)}


@pytest.mark.parametrize(("new_tp", "new_padded_vocab"), [(1, 20), (4, 32)])
def test_distributed_optimizer_state_is_cut_again_for_another_tp_size(
    tmp_path: Path, new_tp: int, new_padded_vocab: int
) -> None:
    """TP=2 × DP=2 ranks saved a 20-token vocabulary padded to 24 rows, parameters split mid-way
    over DP; at TP=1 (padded to 20) and TP=4 (to 32) each rank's owned elements of the main
    weights and moments are those of the whole tensor sharded the new way, vocabulary rows
    trimmed or zero-padded, the fc1 gate/up halves and the column split respected."""
    keys = ("param", "exp_avg", "exp_avg_sq", "step")
    torch.manual_seed(0)
    whole = {n: {k: torch.randn(_shard_shapes(24, 1)[n]) for k in keys[:3]} for n in (EMBED, FC1, PROJ)}
    step_dir = tmp_path / "step"
    step_dir.mkdir()
    for t in range(2):
        _, params = _model(_shard_shapes(24, 2))
        names = {p: n for n, p in params.items()}
        full = {
            p: {k: shard(whole[n][k], split_of(n), t, 2).reshape(-1) for k in keys[:3]}
            | {"step": torch.tensor(3.0)}
            for n, p in params.items()
        }
        sizes = {n: p.numel() for n, p in params.items()}
        rest = {
            params[EMBED]: (30, sizes[EMBED]),
            params[FC1]: (0, sizes[FC1]),
            params[PROJ]: (0, sizes[PROJ]),
        }
        by_dp = [{params[EMBED]: (0, 30)}, rest]
        for d, owned in enumerate(by_dp):
            inner = _LayoutOptimizer(owned, full, keys)
            parts = [{"common": inner.state_dict(), "pieces": checkpoint._optimizer_pieces(inner, names)}]
            torch.save(parts, step_dir / f"optim_tp{t:02d}_dp{d:03d}.pt")
        weights = {n: torch.zeros(s) for n, s in _shard_shapes(24, 2).items()}
        save_file(weights, str(step_dir / f"model_tp{t:02d}.safetensors"))
    meta = {"tp": 2, "dp": 2, "world_size": 4, "model": {"vocab_size": 20}}
    for rank in range(new_tp):
        model, params = _model(_shard_shapes(new_padded_vocab, new_tp))
        owned = {p: (1, p.numel() - 1) for p in params.values()}
        state = {
            p: {k: torch.zeros(p.numel()) for k in keys[:3]} | {"step": torch.tensor(0.0)}
            for p in params.values()
        }
        inner = _LayoutOptimizer(owned, state, keys)
        checkpoint._load_distributed_optimizer(inner, model, step_dir, meta, (rank, new_tp, 0))
        for name, param in params.items():
            for key in keys[:3]:
                expected = whole[name][key]
                if name == EMBED:
                    expected = torch.cat([expected[:20], torch.zeros(new_padded_vocab - 20, 4)])
                expected = shard(expected, split_of(name), rank, new_tp).reshape(-1)[1:-1]
                assert torch.equal(inner.restored[param][key], expected), (rank, name, key)
            assert float(inner.restored[param]["step"]) == 3.0
            assert math.prod(param.shape) == inner.restored[param]["param"].numel() + 2


@pytest.mark.parametrize("tp", [1, 2])
def test_weights_padded_to_another_multiple_are_re_padded_at_the_same_tp(tmp_path: Path, tp: int) -> None:
    """A start saved with the vocabulary padded to 24 rows (`vikhr convert` pads to a multiple of
    128) loads into a run padding it to 32 (another model.vocab_multiple) at the same TP size: at
    another TP size the rows were re-padded, at the same one the rank's file was loaded as it is and
    refused ("is [24, 4] there and [32, 4] in this run")."""
    torch.manual_seed(0)
    whole = {n: torch.randn(s) for n, s in _shard_shapes(24, 1).items()}
    whole[EMBED][20:] = 0  # the padding of a 20-token vocabulary
    step_dir = tmp_path / "step"
    step_dir.mkdir()
    for t in range(tp):
        parts = {n: shard(w, split_of(n), t, tp).contiguous() for n, w in whole.items()}
        save_file(parts, str(step_dir / f"model_tp{t:02d}.safetensors"))
    meta = {"tp": tp, "world_size": tp, "model": {"vocab_size": 20}, "padded_vocab_size": 24}
    (step_dir / "meta.json").write_text(json.dumps(meta))
    for rank in range(tp):
        model, params = _model(_shard_shapes(32, tp))
        checkpoint.load_model(model, step_dir, rank, tp)
        for name, param in params.items():
            expected = whole[name]
            if name == EMBED:
                expected = torch.cat([expected[:20], torch.zeros(12, 4)])
            assert torch.equal(param.data, shard(expected, split_of(name), rank, tp)), (rank, name)
        # The same padding: the rank's own file, as it is.
        model, params = _model(_shard_shapes(24, tp))
        checkpoint.load_model(model, step_dir, rank, tp)
        assert torch.equal(params[EMBED].data, shard(whole[EMBED], split_of(EMBED), rank, tp))


class _Float16Optimizer:
    """What the checkpoint reads of megatron's bf16 replicated optimizer: the model's parameters,
    their fp32 copies that torch's optimizer steps (in the copies' order), and the loaded state."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.float16_groups = [params]
        self.fp32_from_float16_groups = [[p.detach().float().clone() for p in params]]
        self.optimizer = SimpleNamespace(param_groups=[{"params": self.fp32_from_float16_groups[0]}])
        self.loaded: dict = {}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


def test_replicated_bf16_optimizer_state_is_cut_again_for_another_tp_size(tmp_path: Path) -> None:
    """Megatron's bf16 state dict of TP=2 ranks (Adam moments by parameter index, fp32 master
    weights by group) becomes each TP=4 rank's: the embedding's vocabulary rows re-padded, fc1's
    gate/up halves and linear_proj's columns cut the new way; step counts and hyperparameters kept."""
    names = [EMBED, FC1, PROJ]
    torch.manual_seed(0)
    whole = {
        n: {k: torch.randn(_shard_shapes(24, 1)[n]) for k in ("exp_avg", "exp_avg_sq", "main")} for n in names
    }
    step_dir = tmp_path / "step"
    step_dir.mkdir()
    for t in range(2):
        part = {n: {k: shard(v, split_of(n), t, 2) for k, v in whole[n].items()} for n in names}
        state = {
            k: {"step": torch.tensor(3.0), "exp_avg": part[n]["exp_avg"], "exp_avg_sq": part[n]["exp_avg_sq"]}
            for k, n in enumerate(names)
        }
        saved = {
            "optimizer": {"state": state, "param_groups": [{"lr": 0.5, "params": [0, 1, 2]}]},
            "fp32_from_fp16_params": [[part[n]["main"] for n in names]],
        }
        torch.save(saved, step_dir / f"optim_tp{t:02d}.pt")
    meta = {"tp": 2, "world_size": 2, "model": {"vocab_size": 20}}
    for rank in range(4):
        model, params = _model(_shard_shapes(32, 4))
        optimizer = _Float16Optimizer([params[n] for n in names])
        checkpoint._load_replicated_optimizer(optimizer, model, step_dir, meta, rank, 4)
        loaded = optimizer.loaded
        assert loaded["optimizer"]["param_groups"] == [{"lr": 0.5, "params": [0, 1, 2]}]
        for k, name in enumerate(names):
            for key in ("exp_avg", "exp_avg_sq", "main"):
                expected = whole[name][key]
                if name == EMBED:
                    expected = torch.cat([expected[:20], torch.zeros(12, 4)])
                expected = shard(expected, split_of(name), rank, 4)
                got = (
                    loaded["fp32_from_fp16_params"][0][k]
                    if key == "main"
                    else loaded["optimizer"]["state"][k][key]
                )
                assert torch.equal(got, expected), (rank, name, key)
            assert float(loaded["optimizer"]["state"][k]["step"]) == 3.0


def test_megatron_bf16_optimizer_state_has_the_layout_the_reshard_reads() -> None:
    """On megatron's own bf16 replicated optimizer (after a step): every entry of its state dict
    reaches `cut` with the shape of the model parameter it belongs to, and at TP 1 -> 1 the
    resharded state dict is the saved one and loads back."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from vikhr.model.config import preset
    from vikhr.model.gpt import build_gpt_model
    from vikhr.model.tp_layout import reshard
    from vikhr.runtime.distributed import distributed_env

    with distributed_env(tp_size=1, device="cpu"):
        cfg = preset("tiny")
        model = build_gpt_model(cfg, 1, params_dtype=torch.bfloat16)
        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True)
        ddp = DistributedDataParallel(model.config, ddp_config, model)
        optimizer_config = OptimizerConfig(optimizer="adam", lr=1e-3, bf16=True, params_dtype=torch.bfloat16)
        optimizer = get_megatron_optimizer(optimizer_config, [ddp])
        for param in model.parameters():
            param.main_grad.copy_(torch.randn_like(param.main_grad))
        optimizer.step()
        saved = optimizer.state_dict()
        names = {p: checkpoint.canonical_name(n) for n, p in model.named_parameters()}
        seen = set()

        def cut(param: torch.nn.Parameter, parts: list[torch.Tensor]) -> torch.Tensor:
            assert parts[0].shape == param.shape, names[param]
            seen.add(names[param])
            return reshard(parts, names[param], 0, 1, cfg.vocab_size, param.shape[0])

        inner = checkpoint._inner_optimizers(optimizer)[0]
        new, masters = checkpoint._resharded_replicated(inner, [saved], cut, None, Path("step"))
        assert masters == {}
        assert seen == set(names.values())
        weights = zip(new["fp32_from_fp16_params"], saved["fp32_from_fp16_params"], strict=True)
        assert all(
            torch.equal(a, b)
            for new_group, old_group in weights
            for a, b in zip(new_group, old_group, strict=True)
        )
        for k, entry in saved["optimizer"]["state"].items():
            assert all(torch.equal(new["optimizer"]["state"][k][key], value) for key, value in entry.items())
        optimizer.load_state_dict(new)


def _megatron_optimizer(dtype: torch.dtype, stepped: bool) -> tuple[torch.nn.Module, Any]:
    """A tiny model and megatron's replicated optimizer for it (fp32 or bf16), after one step with
    random gradients when `stepped` (call inside distributed_env)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from vikhr.model.config import preset
    from vikhr.model.gpt import build_gpt_model

    model = build_gpt_model(preset("tiny"), 1, params_dtype=dtype)
    ddp = DistributedDataParallel(
        model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model
    )
    bf16 = dtype == torch.bfloat16
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-2, bf16=bf16, params_dtype=dtype), [ddp]
    )
    if stepped:
        for param in model.parameters():
            param.main_grad.copy_(torch.randn_like(param.main_grad))
        optimizer.step()
    return model, optimizer


def _state_by_name(model: torch.nn.Module, optimizer: Any) -> dict[str, list[torch.Tensor]]:
    """{parameter name: [fp32 weight stepped, exp_avg, exp_avg_sq]}, read from the live optimizer
    by object identity (the parameter itself, or the bf16 optimizer's fp32 copy of it)."""
    inner = checkpoint._inner_optimizers(optimizer)[0]
    names = {p: checkpoint.canonical_name(n) for n, p in model.named_parameters()}
    if hasattr(inner, "fp32_from_float16_groups"):
        pairs = [
            (names[p], c)
            for ps, cs in zip(inner.float16_groups, inner.fp32_from_float16_groups, strict=True)
            for p, c in zip(ps, cs, strict=True)
        ]
    else:
        pairs = [(names[p], p) for group in inner.optimizer.param_groups for p in group["params"]]
    state = inner.optimizer.state
    return {n: [w.detach(), state[w]["exp_avg"], state[w]["exp_avg_sq"]] for n, w in pairs}


def test_replicated_optimizer_state_converts_between_fp32_and_bf16(tmp_path: Path) -> None:
    """megatron's fp32 optimizer (the CPU's) and bf16 one (a GPU's) save other formats. A stepped
    state of either loads into the other: every parameter's Adam moments, and its fp32 weights —
    the bf16 optimizer's fp32 copies taken from the fp32 run's weights, the fp32 run's parameters
    from the bf16 run's copies (not its rounded weights file) — equal, matched by name."""
    from vikhr.runtime.distributed import distributed_env

    with distributed_env(tp_size=1, device="cpu"):
        for saved_dtype, loaded_dtype in ((torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)):
            model, optimizer = _megatron_optimizer(saved_dtype, stepped=True)
            step_dir = tmp_path / str(saved_dtype)
            step_dir.mkdir()
            torch.save(optimizer.state_dict(), step_dir / "optim_tp00.pt")
            save_file(checkpoint.model_tensors(model), str(step_dir / "model_tp00.safetensors"))
            meta = {"tp": 1, "world_size": 1, "model": {"vocab_size": model.vocab_size}}
            expected = _state_by_name(model, optimizer)

            fresh, fresh_optimizer = _megatron_optimizer(loaded_dtype, stepped=False)
            weights = step_dir / "model_tp00.safetensors"
            checkpoint.load_model_tensors(
                fresh, load_file(str(weights)), weights
            )  # the weights, as resume loads them
            checkpoint._load_replicated_optimizer(fresh_optimizer, fresh, step_dir, meta, 0, 1)
            got = _state_by_name(fresh, fresh_optimizer)
            assert sorted(got) == sorted(expected)
            for name, tensors in expected.items():
                for what, a, b in zip(("weight", "exp_avg", "exp_avg_sq"), got[name], tensors, strict=True):
                    assert a.dtype == torch.float32 and torch.equal(a, b), (saved_dtype, name, what)
            if loaded_dtype == torch.float32:  # bf16 weights file: rounded; the parameters are not
                weight = dict(fresh.named_parameters())["embedding.word_embeddings.weight"]
                assert not torch.equal(weight, weight.to(torch.bfloat16).float())
