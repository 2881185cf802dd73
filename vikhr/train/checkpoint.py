"""Atomic checkpoints of a pre-training run: model, optimizer, schedule, RNG and data position.

Layout of `<checkpoint.dir>`:
    latest                      name of the newest complete checkpoint (replaced atomically)
    step_000020/
        meta.json               step, consumed samples, TP/DP layout, model shape, config, the
                                directory the run trained in (its relative paths start there), and
                                what the start's lineage records of the HF source and tokenizer
                                (`inherited`: vikhr.convert.lineage) and what the datasets record of
                                their tokenizer and chat template (`data_tokenizer`), for the export,
                                and the vikhr, torch and megatron-core that saved it (`provenance`)
        model_tp00.safetensors  this TP rank's shard of every parameter (names: vikhr.model.config)
        optim_tp00.pt           optimizer state of that TP rank (identical across DP ranks), or
        optim_tp00_dp000.pt     with optim.distributed: each DP rank's part of it, as element ranges
                                of named parameters (so a resume may use another DP or TP size)
        rng_rank0000.pt         Python / NumPy / torch / megatron-tracker RNG states of each rank
        tokenizer/              a copy of the tokenizer files `inherited` names (and source_tokenizer/,
                                the HF source's, where they are another tokenizer's), recorded
                                relative to the step: its export needs neither the HF source nor the start

All ranks write into `step_000020.tmp/` and fsync their files; rank 0 fsyncs the directory,
renames it and then rewrites `latest` (fsynced too), so an interrupted save or a power cut never
leaves something that looks like a checkpoint. Resuming checks that every file the checkpoint's
layout names is present and whole (`checkpoint_problem`) and falls back to the previous complete
step when the newest is damaged. Loading uses safetensors and `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from vikhr.adapt.safetensors_io import read_header
from vikhr.atomic import write_errors_as_os_errors
from vikhr.errors import VikhrError
from vikhr.model.config import shape_differences
from vikhr.model.tp_layout import is_vocab_rows, reshard

LATEST = "latest"
_STEP_DIR = re.compile(r"step_(\d+)")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def step_of(step_dir: Path) -> int:
    """The step of a `step_dir_name` directory."""
    match = _STEP_DIR.fullmatch(step_dir.name)
    if match is None:
        raise VikhrError(f"{step_dir} is not a step directory (step_NNNNNN)")
    return int(match.group(1))


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rng_state() -> dict[str, Any]:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# Transformer Engine's layer spec fuses the pre-attention / pre-MLP RMSNorm into the next linear
# layer, which renames their weights. Checkpoints always use the local/SDPA names (the layout in
# vikhr.model.config), whichever spec trained them.
_TE_NAMES = {
    ".self_attention.linear_qkv.layer_norm_weight": ".input_layernorm.weight",
    ".mlp.linear_fc1.layer_norm_weight": ".pre_mlp_layernorm.weight",
}


def canonical_name(name: str) -> str:
    for te, local in _TE_NAMES.items():
        if name.endswith(te):
            return name[: -len(te)] + local
    return name


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a (DDP-unwrapped) model's state dict under canonical names, contiguous, on the CPU."""
    return {
        canonical_name(k): v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")
    }


def _resharded_tensors(
    model: torch.nn.Module, step_dir: Path, meta: dict[str, Any], tp_rank: int, tp_size: int
) -> dict[str, torch.Tensor]:
    """This TP rank's weights, cut from a checkpoint saved at another TP size (one whole tensor
    in memory at a time)."""
    from contextlib import ExitStack

    from safetensors import safe_open

    own = {canonical_name(k): v for k, v in model.state_dict().items()}
    vocab = int(meta["model"]["vocab_size"])
    out = {}
    with ExitStack() as stack:
        files = [
            stack.enter_context(safe_open(str(step_dir / f"model_tp{t:02d}.safetensors"), "pt"))
            for t in range(int(meta["tp"]))
        ]
        for name in _part_shapes(step_dir):
            rows = own[name].shape[0] * tp_size if name in own else 0
            out[name] = reshard([f.get_tensor(name) for f in files], name, tp_rank, tp_size, vocab, rows)
    return out


def _as_saved(model: torch.nn.Module, step_dir: Path, meta: dict[str, Any], tp_size: int) -> bool:
    """Whether this rank's part of every parameter is the one the checkpoint saved: the same TP
    size, and the vocabulary padded to the same rows (model.vocab_multiple may differ from the
    saving run's, or from the 128 of `vikhr convert`)."""
    if int(meta["tp"]) != tp_size:
        return False
    own = {canonical_name(k): v.shape for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    saved = _part_shapes(step_dir)
    return all(own[n][0] == saved[n][0] for n in saved if is_vocab_rows(n) and n in own)


def _saved_weights(
    model: torch.nn.Module, step_dir: Path, meta: dict[str, Any], tp_rank: int, tp_size: int
) -> dict[str, torch.Tensor]:
    """This TP rank's weights as the checkpoint holds them (in its dtype), by canonical name: its
    own file, or (at another saved TP size or vocabulary padding) every rank's part merged, re-padded
    and cut again."""
    from safetensors.torch import load_file

    if _as_saved(model, step_dir, meta, tp_size):
        return load_file(str(step_dir / f"model_tp{tp_rank:02d}.safetensors"))
    return _resharded_tensors(model, step_dir, meta, tp_rank, tp_size)


def load_model_tensors(model: torch.nn.Module, loaded: dict[str, torch.Tensor], path: Path) -> None:
    """Load tensors named canonically into `model`, refusing any that do not fit."""
    own = model.state_dict()
    own_name = {canonical_name(k): k for k in own}
    tensors = {own_name.get(k, k): v for k, v in loaded.items()}
    for name, tensor in tensors.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise VikhrError(
                f"checkpoint {path} does not fit the model: {canonical_name(name)} is "
                f"{list(tensor.shape)} there and {list(own[name].shape)} in this run (same model preset "
                "and overrides?)"
            )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise VikhrError(
            f"checkpoint {path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]} "
            "(same model preset and overrides?)"
        )


def _inner_optimizers(optimizer: Any) -> list[Any]:
    """megatron wraps its optimizers in a ChainedOptimizer (one per parameter kind)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _param_names(model: torch.nn.Module) -> dict[torch.nn.Parameter, str]:
    """Each parameter's canonical name (the name its checkpoint tensors and optimizer pieces have)."""
    return {param: canonical_name(name) for name, param in model.named_parameters()}


def _saved_layout(meta: dict[str, Any]) -> tuple[int, int]:
    """(TP size, DP size) of the run that saved a checkpoint."""
    tp = int(meta["tp"])
    return tp, int(meta.get("dp", int(meta.get("world_size", tp)) // tp))


def _part_shapes(step_dir: Path) -> dict[str, tuple[int, ...]]:
    """The shape of each parameter's part on one saved TP rank (the same on every rank)."""
    return {n: e.shape for n, e in read_header(step_dir / "model_tp00.safetensors").tensors.items()}


def is_distributed_optimizer(optimizer: Any) -> bool:
    return any(hasattr(o, "gbuf_ranges") for o in _inner_optimizers(optimizer))


def _owned_ranges(inner: Any) -> list[tuple[torch.nn.Parameter, int, int]]:
    """The (parameter, first element, end element) pieces a distributed optimizer holds on this DP rank."""
    return [
        (param, ranges["param"].start, ranges["param"].end)
        for by_dtype in inner.gbuf_ranges
        for buckets in by_dtype.values()
        for bucket in buckets
        for param, ranges in bucket["param_map"].items()
    ]


def _optimizer_pieces(inner: Any, names: dict[torch.nn.Parameter, str]) -> list[dict[str, Any]]:
    """This DP rank's part of a distributed optimizer's state: per parameter piece its name, element
    range and tensors (fp32 main weights, Adam moments, step). The layout does not depend on how
    many DP ranks share the state, so a run can resume on another number of them."""
    pieces = []
    for param, start, end in _owned_ranges(inner):
        tensors = inner._get_main_param_and_optimizer_states(param)
        own = {key: _alone_in_storage(value.detach()) for key, value in tensors.items()}
        pieces.append({"name": names[param], "start": start, "end": end, "tensors": own})
    return pieces


def _alone_in_storage(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, copied when it is a view into a larger storage: torch.save writes whole storages,
    and without bf16 the fp32 main weights are views into the model's whole parameter buffer.
    (Tensors stay on their device: torch.save moves one storage at a time to the host.)"""
    if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size():
        return tensor
    return tensor.clone()


def _state_range(pieces: list[dict[str, Any]], start: int, end: int, where: str) -> dict[str, torch.Tensor]:
    """Elements [start, end) of one parameter's optimizer state, cut from the saved pieces."""
    parts: dict[str, list[torch.Tensor]] = {}
    at = start
    for piece in sorted(pieces, key=lambda p: p["start"]):
        if piece["end"] <= at or piece["start"] >= end:
            continue
        if piece["start"] > at:
            break  # a gap: reported below
        lo, hi = at - piece["start"], min(end, piece["end"]) - piece["start"]
        for key, tensor in piece["tensors"].items():
            parts.setdefault(key, []).append(tensor if tensor.dim() == 0 else tensor[lo:hi])
        at = piece["start"] + hi
    if at != end:
        raise VikhrError(
            f"{where}: no optimizer state for elements {at}..{end} (the checkpoint is incomplete: "
            "resume from another step, or start from its weights with model.init)"
        )
    return {key: ts[0] if ts[0].dim() == 0 else torch.cat(ts) for key, ts in parts.items()}


def _load_distributed_optimizer(
    optimizer: Any,
    model: torch.nn.Module,
    step_dir: Path,
    meta: dict[str, Any],
    layout: tuple[int, int, int],
) -> None:
    """Give each inner optimizer of this rank its part of the state the checkpoint's ranks saved,
    whatever their DP and TP sizes (`layout`: this rank's TP rank, TP size and DP rank). At the same
    TP size only the elements this rank owns are kept, read from its own old DP rank's file first
    (enough when the DP size is unchanged); at another TP size the old parts of the parameters it
    owns elements of, from every old rank, are merged and cut again by vikhr.model.tp_layout."""
    tp_rank, tp_size, dp_rank = layout
    inners = _inner_optimizers(optimizer)
    names = _param_names(model)
    owned = [{names[param]: (start, end) for param, start, end in _owned_ranges(inner)} for inner in inners]
    saved_tp, saved_dp = _saved_layout(meta)
    common, kept = _collect_pieces(step_dir, owned, (saved_tp, saved_dp), (tp_rank, tp_size, dp_rank))
    old_shapes, vocab = {}, 0  # what the old TP parts are unflattened to, when they are merged
    if saved_tp != tp_size:
        old_shapes, vocab = _part_shapes(step_dir), int(meta["model"]["vocab_size"])
    for i, inner in enumerate(inners):
        inner.load_state_dict(common[i])
        with torch.no_grad():  # fp32 main params are views of the (grad-requiring) model params
            for param, start, end in _owned_ranges(inner):
                name = names[param]
                where = f"checkpoint {step_dir}, {name}"
                cut = (tp_rank, tp_size, start, end)
                tensors = _part_state(
                    kept[i].get(name, {}), saved_tp, old_shapes.get(name), name, param, cut, vocab, where
                )
                needed = inner._get_main_param_and_optimizer_states(param).keys() - tensors.keys()
                if needed:
                    raise VikhrError(
                        f"{where}: the saved optimizer state lacks {sorted(needed)} (saved with "
                        f"{sorted(tensors)}): resume with the optimizer that saved it, or start from "
                        f"its weights (model.init={step_dir})"
                    )
                inner._set_main_param_and_optimizer_states(param, tensors)


def _collect_pieces(
    step_dir: Path,
    owned: list[dict[str, tuple[int, int]]],
    saved: tuple[int, int],
    layout: tuple[int, int, int],
) -> tuple[list[Any], list[dict[str, dict[int, list[dict[str, Any]]]]]]:
    """From the old ranks' optimizer files: each inner optimizer's common state, and the pieces
    this rank needs, by parameter name and old TP rank (see `_load_distributed_optimizer`)."""
    (saved_tp, saved_dp), (tp_rank, tp_size, dp_rank) = saved, layout
    same_tp = saved_tp == tp_size
    common: list[Any] = [None] * len(owned)
    kept: list[dict[str, dict[int, list[dict[str, Any]]]]] = [{} for _ in owned]
    missing = sum(end - start for ranges in owned for start, end in ranges.values())
    own_first = sorted(range(saved_dp), key=lambda d: d != dp_rank)
    for t in [tp_rank] if same_tp else range(saved_tp):
        for d in own_first:
            if same_tp and missing == 0:
                break  # every owned element found (the old DP ranks' pieces are disjoint)
            for i, part in enumerate(_optimizer_parts(step_dir, t, d, len(owned))):
                if common[i] is None:  # the same on every rank: hyperparameters, step counts
                    common[i] = part["common"]
                for piece in part["pieces"]:
                    if piece["name"] not in owned[i]:
                        continue
                    if same_tp:
                        piece = _cut(piece, *owned[i][piece["name"]])
                        if piece is None:
                            continue
                        missing -= piece["end"] - piece["start"]
                    kept[i].setdefault(piece["name"], {}).setdefault(t, []).append(piece)
    return common, kept


def _cut(piece: dict[str, Any], start: int, end: int) -> dict[str, Any] | None:
    """The part of a saved piece within elements [start, end), copied (the file it was read from
    is released); None if they do not overlap."""
    lo, hi = max(start, piece["start"]), min(end, piece["end"])
    if lo >= hi:
        return None
    a, b = lo - piece["start"], hi - piece["start"]
    tensors = {k: t.clone() if t.dim() == 0 else t[a:b].clone() for k, t in piece["tensors"].items()}
    return {"name": piece["name"], "start": lo, "end": hi, "tensors": tensors}


def _part_state(
    by_tp: dict[int, list[dict[str, Any]]],
    saved_tp: int,
    old_shape: tuple[int, ...] | None,
    name: str,
    param: torch.nn.Parameter,
    cut: tuple[int, int, int, int],
    vocab: int,
    where: str,
) -> dict[str, torch.Tensor]:
    """Elements [start, end) of this TP rank's flat optimizer state of `name` (`cut`: TP rank, TP
    size, start, end) from the pieces the old ranks saved, by old TP rank: cut out directly at the
    same TP size, else merged from the old TP parts (of `old_shape`) and cut again, one state key
    in memory at a time."""
    tp_rank, tp_size, start, end = cut
    if saved_tp == tp_size:
        return _state_range(by_tp.get(tp_rank, []), start, end, where)
    assert old_shape is not None
    rows = param.shape[0] * tp_size  # the padded vocabulary at this TP size (for vocabulary rows)
    numel = math.prod(old_shape)
    first = by_tp.get(0, [{"tensors": {}}])[0]["tensors"]
    out = {}
    for key, sample in first.items():
        if sample.dim() == 0:
            out[key] = sample
            continue
        parts = []
        for t in range(saved_tp):
            pieces = [{**p, "tensors": {key: p["tensors"][key]}} for p in by_tp.get(t, [])]
            parts.append(_state_range(pieces, 0, numel, where)[key].reshape(old_shape))
        whole = reshard(parts, name, tp_rank, tp_size, vocab, rows).reshape(-1)
        out[key] = whole[start:end].clone()
    return out


def _load_replicated_optimizer(
    optimizer: Any, model: torch.nn.Module, step_dir: Path, meta: dict[str, Any], tp_rank: int, tp_size: int
) -> None:
    """The replicated optimizer's state (megatron's state dict, one per TP rank) at another TP size,
    or saved in the other format: entry k of a saved state belongs to the k-th parameter of the
    optimizer's groups, an order that depends on neither the TP size nor the device; each tensor
    (Adam moments, fp32 master weights) is merged over the old TP ranks and cut again for this one
    by vikhr.model.tp_layout. megatron's fp32 optimizer (CPU) steps the parameters themselves, its
    bf16 one (GPU) fp32 copies it saves beside the moments: from the fp32 format the copies are the
    saved fp32 weights; into it the parameters take the saved copies, not the rounded weights file."""
    inners = _inner_optimizers(optimizer)
    saved = []
    for t in range(int(meta["tp"])):
        path = step_dir / _optimizer_file(t, None)
        state = _read_mapped(path)
        saved.append(state if isinstance(state, list) else [state])
        if len(saved[-1]) != len(inners):
            raise VikhrError(f"{path} does not hold this run's {len(inners)} optimizers (another model?)")
    names = _param_names(model)
    vocab = int(meta["model"]["vocab_size"])

    def cut(param: torch.nn.Parameter, parts: list[torch.Tensor]) -> torch.Tensor:
        return reshard(parts, names[param], tp_rank, tp_size, vocab, param.shape[0] * tp_size)

    weights: dict[str, torch.Tensor] = {}
    if "optimizer" not in saved[0][0] and any(_steps_fp32_copies(inner) for inner in inners):
        weights = _saved_weights(model, step_dir, meta, tp_rank, tp_size)
    states, masters = [], {}
    for i, inner in enumerate(inners):
        olds = [parts[i] for parts in saved]
        state, inner_masters = _resharded_replicated(inner, olds, cut, lambda p: weights[names[p]], step_dir)
        states.append(state)
        masters.update(inner_masters)
    optimizer.load_state_dict(states if len(states) > 1 else states[0])
    with torch.no_grad():
        for param, master in masters.items():
            param.copy_(master)


def _steps_fp32_copies(inner: Any) -> bool:
    """megatron's bf16 optimizer (Float16OptimizerWithFloat16Params), not its fp32 one."""
    return hasattr(inner, "fp32_from_float16_groups")


def _resharded_replicated(
    inner: Any,
    olds: list[dict[str, Any]],
    cut: Callable[[torch.nn.Parameter, list[torch.Tensor]], torch.Tensor],
    saved_weight: Callable[[torch.nn.Parameter], torch.Tensor],
    step_dir: Path,
) -> tuple[dict[str, Any], dict[torch.nn.Parameter, torch.Tensor]]:
    """One inner optimizer's state dict for this TP rank, in this run's format, from the old TP
    ranks' (`cut`: merge and cut one parameter's tensors); and the values the model's parameters
    must take (only when a bf16 optimizer's state becomes an fp32 one's)."""
    # megatron's bf16 optimizer steps fp32 copies of the model's parameters, in their place
    float16 = getattr(inner, "float16_groups", [])
    copies = getattr(inner, "fp32_from_float16_groups", [])
    model_param = {
        id(c): p for ps, cs in zip(float16, copies, strict=True) for p, c in zip(ps, cs, strict=True)
    }
    order = [model_param.get(id(p), p) for group in inner.optimizer.param_groups for p in group["params"]]
    saved_copies = "optimizer" in olds[0]  # {"optimizer": torch's state dict, "fp32_from_fp16_params": ...}
    torch_states = [old["optimizer"] if saved_copies else old for old in olds]
    state = {
        k: {
            key: value if value.dim() == 0 else cut(order[k], [ts["state"][k][key] for ts in torch_states])
            for key, value in entry.items()
        }
        for k, entry in torch_states[0]["state"].items()
    }
    resharded = {**torch_states[0], "state": state}
    if not _steps_fp32_copies(inner):
        if not saved_copies:
            return resharded, {}
        by_index = [_copies_by_index(old, step_dir) for old in olds]
        return resharded, {p: cut(p, [old[k] for old in by_index]) for k, p in enumerate(order)}
    if saved_copies:
        main = [
            [cut(p, [old["fp32_from_fp16_params"][g][j] for old in olds]) for j, p in enumerate(group)]
            for g, group in enumerate(float16)
        ]
        return {**olds[0], "optimizer": resharded, "fp32_from_fp16_params": main}, {}
    main = [[saved_weight(p).float() for p in group] for group in float16]
    return {"optimizer": resharded, "fp32_from_fp16_params": main}, {}


def _copies_by_index(saved: dict[str, Any], step_dir: Path) -> list[torch.Tensor]:
    """The fp32 copies of a bf16 optimizer's state in parameter order (every parameter had one)."""
    groups = saved["fp32_from_fp16_params"]
    if [len(g) for g in groups] != [len(g["params"]) for g in saved["optimizer"]["param_groups"]]:
        raise VikhrError(
            f"checkpoint {step_dir}: its bf16 optimizer state holds fp32 parameters beside bf16 ones and "
            f"does not convert to the CPU's fp32 optimizer; resume it on a GPU, or start a new run from "
            f"its weights (model.init={step_dir})"
        )
    return [copy for group in groups for copy in group]


def _optimizer_parts(step_dir: Path, tp_rank: int, dp_rank: int, inners: int) -> list[dict[str, Any]]:
    """The optimizer parts one old rank saved, checked to be this run's layout."""
    path = step_dir / _optimizer_file(tp_rank, dp_rank)
    parts = _read_mapped(path)
    if len(parts) != inners or any("pieces" not in part for part in parts):
        raise VikhrError(
            f"{path} does not hold this run's optimizer parts ({inners} optimizers, each as "
            f"named pieces; earlier vikhr checkpoints keep another layout): start a new run "
            f"from its weights (model.init={step_dir})"
        )
    return parts


def _read_mapped(path: Path) -> Any:
    """An optimizer file, memory-mapped where the file system allows (only the elements touched are
    read), else read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError):
        return torch.load(path, map_location="cpu", weights_only=True)


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _optimizer_file(tp_rank: int, dp_rank: int | None) -> str:
    return f"optim_tp{tp_rank:02d}.pt" if dp_rank is None else f"optim_tp{tp_rank:02d}_dp{dp_rank:03d}.pt"


def _fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to the disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    ckpt_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: Any,
    meta: dict[str, Any],
    tp_rank: int,
    dp_rank: int,
    rank: int,
    keep_last: int = 0,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Save step `step` atomically (collective: every rank calls it); with `keep_last` > 0, then
    remove the earlier steps beyond the newest `keep_last` (see `prune_step_dirs`). `files`: more
    files of the checkpoint (path in it → contents; the tokenizer it records), written by rank 0.

    A write that fails (disk full, permissions) raises VikhrError naming the directory; the
    partial `.tmp` directory never looks like a checkpoint.
    """
    root = Path(ckpt_dir)
    final = root / step_dir_name(step)
    tmp = root / (step_dir_name(step) + ".tmp")
    try:
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)  # left by an interrupted save
            tmp.mkdir()
        _barrier()
        with write_errors_as_os_errors(tmp):
            written = _write_rank_files(tmp, model, optimizer, tp_rank, dp_rank, rank)
        for path in written:
            _fsync(path)
        _barrier()
        if rank == 0:
            _publish(root, tmp, final, meta, files or {})
            if keep_last:
                prune_step_dirs(root, step, keep_last)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise VikhrError(
            f"cannot write checkpoint {final}: {e.strerror or e} (free space in {root} or set checkpoint.dir "
            "to a writable directory)"
        ) from None
    _barrier()
    return final


def prune_step_dirs(root: Path, step: int, keep_last: int) -> list[Path]:
    """Remove the step directories of `root` before `step` but the newest `keep_last` - 1 of them
    (step `step`, just published, is the newest kept). Steps after `step` — left by an earlier
    attempt that this run, resumed from an older checkpoint, will overwrite — are not touched.
    A directory that cannot be removed is a warning: training goes on. Returns those removed."""
    removed = []
    for old in _older_step_dirs(root, step)[max(keep_last - 1, 0) :]:
        try:
            shutil.rmtree(old)
            removed.append(old)
        except OSError as e:
            warn(f"cannot remove old checkpoint {old}: {e.strerror or e} (checkpoint.keep_last)")
    return removed


def _write_rank_files(
    tmp: Path, model: torch.nn.Module, optimizer: Any, tp_rank: int, dp_rank: int, rank: int
) -> list[Path]:
    """This rank's files of a checkpoint, written into `tmp`; returns their paths."""
    from safetensors.torch import save_file

    written = []
    if dp_rank == 0:
        written.append(tmp / f"model_tp{tp_rank:02d}.safetensors")
        save_file(model_tensors(model), str(written[-1]))
    if is_distributed_optimizer(optimizer):  # every DP rank holds its own part of the state
        names = _param_names(model)
        shards = [
            {"common": o.state_dict(), "pieces": _optimizer_pieces(o, names)}
            for o in _inner_optimizers(optimizer)
        ]
        written.append(tmp / _optimizer_file(tp_rank, dp_rank))
        torch.save(shards, written[-1])
    elif dp_rank == 0:
        written.append(tmp / _optimizer_file(tp_rank, None))
        torch.save(optimizer.state_dict(), written[-1])
    written.append(tmp / f"rng_rank{rank:04d}.pt")
    torch.save(_rng_state(), written[-1])
    return written


def _publish(root: Path, tmp: Path, final: Path, meta: dict[str, Any], files: dict[str, bytes]) -> None:
    """Rank 0: `files` and meta.json, then the rename of the complete directory, then `latest`, each
    durable."""
    for name, data in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        _fsync(path)
    for folder in {(tmp / name).parent for name in files} - {tmp}:
        _fsync(folder)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    _fsync(tmp / "meta.json")
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync(root)
    latest_tmp = root / (LATEST + ".tmp")
    latest_tmp.write_text(final.name + "\n", encoding="utf-8")
    _fsync(latest_tmp)
    os.replace(latest_tmp, root / LATEST)
    _fsync(root)


def step_dir_holding(path: str | Path) -> Path | None:
    """The checkpoint step directory (`step_NNNNNN` with a meta.json) that `path` lies inside, if
    any: what is written there is deleted with the step (checkpoint.keep_last, a save of it again)."""
    for parent in Path(os.path.abspath(path)).parents:
        if _STEP_DIR.fullmatch(parent.name) and (parent / "meta.json").is_file():
            return parent
    return None


def find_checkpoint(path: str | Path) -> Path | None:
    """A step directory: `path` itself, or the one named by `path/latest`; None if there is none."""
    p = Path(path)
    if (p / "meta.json").is_file():
        return p
    latest = p / LATEST
    if latest.is_file():
        step_dir = p / latest.read_text(encoding="utf-8").strip()
        if (step_dir / "meta.json").is_file():
            return step_dir
        raise VikhrError(f"{latest} names {step_dir.name}, which is missing or incomplete")
    return None


def unfinished_save(path: str | Path) -> str | None:
    """Why `path`, holding no checkpoint, is a save that has not finished: a `step_NNNNNN.tmp`
    directory (a save under way, or cut short), or a run directory with such a save and no
    finished one yet; None otherwise."""
    p = Path(path)
    if p.is_dir() and p.suffix == ".tmp" and _STEP_DIR.fullmatch(p.stem):
        return (
            f"{p} is a checkpoint save that has not finished (under way, or cut short): give the run "
            f"directory (its {LATEST} step) or a finished {p.stem} once it is saved"
        )
    saves = sorted(q.name for q in p.glob("step_*.tmp") if _STEP_DIR.fullmatch(q.stem)) if p.is_dir() else []
    if saves:
        return (
            f"{p} holds no finished checkpoint yet: {saves[-1]} is a save that has not finished (under way, "
            f"or cut short); try again once the run has saved a step ({LATEST} names it)"
        )
    return None


def find_weights(path: str | Path, key: str) -> Path:
    """The step directory a config key that names starting weights points at (`find_checkpoint`);
    VikhrError naming the key otherwise, with the conversion an HF model directory needs."""
    step_dir = find_checkpoint(path)
    if step_dir is not None:
        return step_dir
    if not Path(path).exists():
        other_choice = {"model.init": "random", "kl.reference": "init"}.get(key)
        fix = f" (or use {other_choice!r})" if other_choice else ""
        raise VikhrError(f"config key {key}: checkpoint not found: {path}{fix}")
    if (Path(path) / "config.json").is_file():
        raise VikhrError(
            f"config key {key}: {path} is a Hugging Face model directory, not a vikhr checkpoint: convert "
            f"it first (vikhr convert hf-to-megatron {path} OUT --tp N) and give OUT"
        )
    unfinished = unfinished_save(path)
    if unfinished is not None:
        raise VikhrError(f"config key {key}: {unfinished}")
    raise no_checkpoint(key, path)


def no_checkpoint(key: str, path: str | Path, fix: str = "") -> VikhrError:
    """The error for a config key naming a directory that holds no checkpoint (`fix`: what else to give)."""
    return VikhrError(
        f"config key {key}: no checkpoint in {path} (a step directory holds meta.json; a run directory "
        f"names its newest step in {LATEST}){fix}"
    )


def _file_problem(path: Path) -> str | None:
    """Why a checkpoint file is not whole (None: it is), from its structure alone (no tensor is read)."""
    if not path.is_file():
        return "is missing"
    if path.suffix == ".safetensors":
        try:
            read_header(path)
        except VikhrError as e:
            return f"is damaged: {e}"
        return None
    try:  # torch.save writes a zip archive: a cut or scrambled file has no readable directory
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            if any(i.header_offset + i.compress_size > size for i in archive.infolist()):
                return "is truncated"
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return f"is damaged ({e})"
    return None


def checkpoint_problem(step_dir: Path, weights_only: bool = False) -> str | None:
    """Why `step_dir` is not a complete checkpoint (None: it is): meta.json and every file its
    layout names (only the model files with `weights_only`: a start or a KL reference)."""
    try:
        meta = read_meta(step_dir)
        tp, dp = _saved_layout(meta)
        world = int(meta.get("world_size", tp))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"meta.json is unreadable ({e})"
    files = [f"model_tp{t:02d}.safetensors" for t in range(tp)]
    if not weights_only:
        dps = range(dp) if meta.get("distributed_optimizer") else [None]
        files += [_optimizer_file(t, d) for t in range(tp) for d in dps]
        files += [f"rng_rank{r:04d}.pt" for r in range(world)]
    for name in files:
        problem = _file_problem(step_dir / name)
        if problem is not None:
            return f"{name} {problem}"
    return None


def _older_step_dirs(root: Path, below: int | None) -> list[Path]:
    """Step directories of `root` (newest first), those before step `below` when it is given."""
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir() and (below is None or int(match.group(1)) < below):
            found.append((int(match.group(1)), child))
    return [d for _, d in sorted(found, reverse=True)]


def find_resumable(path: str | Path) -> tuple[Path | None, str | None]:
    """The checkpoint to resume from and, when the newest one is damaged, a one-line warning.

    `path` is a step directory (used as is: damaged is an error) or a run directory, whose
    `latest` names the newest checkpoint; if that one is missing or damaged, the newest complete
    step before it is used instead. No `latest`: (None, None), a fresh start.
    """
    p = Path(path)
    if (p / "meta.json").is_file():
        problem = checkpoint_problem(p)
        if problem is not None:
            raise VikhrError(f"checkpoint {p} is damaged: {problem} (resume from another step directory)")
        return p, None
    latest = p / LATEST
    if not latest.is_file():
        return None, None
    try:
        named = p / latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        named = p / f"<unreadable {LATEST}: {e}>"
    match = _STEP_DIR.fullmatch(named.name)
    problem = checkpoint_problem(named) if named.is_dir() else "is missing"
    if problem is None:
        return named, None
    skipped = []  # damaged steps between the newest and the one resumed: said too, not passed over
    for older in _older_step_dirs(p, int(match.group(1)) if match else None):
        older_problem = checkpoint_problem(older)
        if older_problem is None:
            also = f"; {', '.join(skipped)} damaged too" if skipped else ""
            return older, (
                f"checkpoint {named} is damaged ({problem}){also}; resuming from {older.name} instead"
            )
        skipped.append(f"{older.name} ({older_problem})")
    raise VikhrError(
        f"no complete checkpoint in {p}: the newest, {named.name}, is damaged ({problem}) and no earlier "
        "step is whole (delete the directory or set checkpoint.resume=never to start afresh)"
    )


def warn(message: str) -> None:
    """A one-line warning on stderr, from the first rank only (every rank reaches the same one)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """A one-line note on stderr (what a run does that its config does not say in so many words),
    from the first rank only."""
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {message}", file=sys.stderr, flush=True)


def read_meta(step_dir: Path) -> dict[str, Any]:
    return json.loads((step_dir / "meta.json").read_text(encoding="utf-8"))


def load_model(
    model: torch.nn.Module,
    step_dir: Path,
    tp_rank: int,
    tp_size: int,
    expected: dict[str, Any] | None = None,
    key: str | None = None,
    fix: ShapeFix = "match_it",
) -> None:
    """Load only the weights of a checkpoint (starting point or KL reference).

    `expected`: the run's model shape (ModelConfig.to_dict()); a checkpoint of another shape is
    refused with the differing fields named, `key`, the config key that named the checkpoint, and
    the way out `fix` says (ShapeFix).
    """
    problem = checkpoint_problem(step_dir, weights_only=True)
    if problem is not None:
        raise VikhrError(f"checkpoint {step_dir} is damaged: {problem} (use another checkpoint)")
    meta = read_meta(step_dir)
    _check_shape(step_dir, meta, expected, key, fix)
    same = _as_saved(model, step_dir, meta, tp_size)
    where = step_dir / f"model_tp{tp_rank:02d}.safetensors" if same else step_dir
    load_model_tensors(model, _saved_weights(model, step_dir, meta, tp_rank, tp_size), where)


# How a refusal of a checkpoint of another model shape than the run's says to fix it:
# "match_it": set the run's shape to the checkpoint's, or give another (a fresh start's checkpoints,
# the one a run resumes); "offer_preset_init": the same, or take its shape with model.preset init
# (model.init read as the start of a run not of that preset); "keep_shape": a resumed run's shape is
# its checkpoint's, so only another checkpoint will do (the KL reference of a resume).
ShapeFix = Literal["match_it", "offer_preset_init", "keep_shape"]


def check_weights(step_dir: Path, expected: dict[str, Any], key: str, fix: ShapeFix = "match_it") -> None:
    """Refuse, before a model is built, a checkpoint whose weights a run would read that is damaged or
    of another model shape than the run's (`expected`: ModelConfig.to_dict()), naming the config
    `key` that points at it (and the differing fields), and the way out `fix` says (ShapeFix). No
    tensor is read."""
    problem = checkpoint_problem(step_dir, weights_only=True)
    if problem is not None:
        raise VikhrError(
            f"config key {key}: checkpoint {step_dir} is damaged: {problem} (use another checkpoint)"
        )
    _check_shape(step_dir, read_meta(step_dir), expected, key, fix)


def _check_shape(
    step_dir: Path,
    meta: dict[str, Any],
    expected: dict[str, Any] | None,
    key: str | None = None,
    fix: ShapeFix = "match_it",
) -> None:
    """Refuse a checkpoint of another model shape than the run's (`expected`), naming the fields
    (and `key`, the config key that named the checkpoint), and the way out `fix` says (ShapeFix)."""
    if expected is not None and "model" in meta:
        differ = shape_differences(meta["model"], expected)
        if differ:
            named = f"config key {key}: " if key else ""
            if key == "kl.reference" and all(d.startswith("vocab_size ") for d in differ):
                # The original model before `adapt-vocab`: setting the run's shape to it cannot help.
                advice = (
                    "the KL term compares the two models' next-token distributions id by id, so the "
                    "reference must be in the run's vocabulary, not the original model's: leave "
                    "kl.reference at init (the vocabulary-adapted start that vikhr adapt-vocab wrote from "
                    "the original), or give a checkpoint in this vocabulary"
                )
            elif fix == "keep_shape":
                # model.init is read here as kl.reference: init, which may name another checkpoint
                other = " (or set kl.reference to one)" if key == "model.init" else ""
                advice = f"a resumed run keeps its model shape: give {key} a checkpoint of this model{other}"
            else:
                take = "take its shape with model.preset=init, or " if fix == "offer_preset_init" else ""
                match = "set model.preset / model.overrides to match it"
                advice = f"{take}{match}, or give a checkpoint of this model"
            raise VikhrError(
                f"{named}checkpoint {step_dir} has another model shape: {', '.join(differ)}; {advice}"
            )


def resume(
    step_dir: Path,
    model: torch.nn.Module,
    optimizer: Any,
    tp_rank: int,
    tp_size: int,
    dp_rank: int,
    rank: int,
    world: int,
    expected: dict[str, Any] | None = None,
    runtime: dict[str, str] | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Restore everything saved by `save`; returns the checkpoint's meta (step, consumed samples).
    `key`: the config key that chose the checkpoint, named where it is refused.

    The layout may differ from the run that saved it — another DP or TP size: the weights and
    optimizer state are cut again for this layout. So may the `runtime` ({"device": "cuda" |
    "cpu", "params_dtype": ...}): the weights are then taken from the fp32 master weights of the
    optimizer state (a bf16 run's weights file is rounded), and the replicated optimizer's state is
    converted between megatron's fp32 and bf16 formats. When anything changed, the RNG states stay
    as seeded by this start (a saved state belongs to a layout or device that is gone); a warning
    says so."""
    meta = read_meta(step_dir)
    runtime = runtime or {}
    saved_runtime = {key: meta.get(key, now) for key, now in runtime.items()}  # absent in old checkpoints
    distributed = is_distributed_optimizer(optimizer)
    _check_resumable(step_dir, meta, distributed)
    # Before the padding: another vocabulary size pads to other rows too, but is not a padding change.
    _check_shape(step_dir, meta, expected, key)
    if int(meta["tp"]) == tp_size and not _as_saved(model, step_dir, meta, tp_size):
        # The optimizer state is read as saved at the same TP size: its rows must be the weights'.
        raise VikhrError(
            f"checkpoint {step_dir} pads the vocabulary to other rows than this run (model.vocab_multiple "
            "changed): resume with the one it was saved with, or start from its weights "
            f"(model.init={step_dir})"
        )
    load_model(model, step_dir, tp_rank, tp_size, expected, key)
    if distributed:
        _load_distributed_optimizer(optimizer, model, step_dir, meta, (tp_rank, tp_size, dp_rank))
        if saved_runtime.get("params_dtype") != runtime.get("params_dtype"):
            _load_master_weights(model, step_dir, meta, tp_rank, tp_size)
        # megatron (without Apex/TE) gives every parameter the same `step` tensor, which torch's
        # Adam then increments once per parameter: give each its own.
        for inner in _inner_optimizers(optimizer):
            for param_state in inner.optimizer.state.values():
                if isinstance(param_state.get("step"), torch.Tensor):
                    param_state["step"] = param_state["step"].clone()
    elif meta["tp"] != tp_size or saved_runtime != runtime:
        _load_replicated_optimizer(optimizer, model, step_dir, meta, tp_rank, tp_size)
    else:
        state = torch.load(step_dir / _optimizer_file(tp_rank, None), map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state)
    if (meta["world_size"], meta["tp"], saved_runtime) == (world, tp_size, runtime):
        _set_rng_state(torch.load(step_dir / f"rng_rank{rank:04d}.pt", map_location="cpu", weights_only=True))
        return meta
    moved = distributed or meta["tp"] != tp_size  # else every rank loads the same saved state
    spread = f"the optimizer state is redistributed for TP={tp_size} DP={world // tp_size}; " if moved else ""
    then = f"TP={meta['tp']} DP={meta['world_size'] // meta['tp']}"
    if saved_runtime != runtime:
        then += ", " + " ".join(saved_runtime.values())
    now = "" if saved_runtime == runtime else f" ({' '.join(runtime.values())})"
    warn(
        f"checkpoint {step_dir} was saved by {_processes(meta['world_size'])} ({then}), this run has "
        f"{world}{now}: {spread}the random states start from train.seed (dropout draws differ from an "
        "uninterrupted run)"
    )
    return meta


def _check_resumable(step_dir: Path, meta: dict[str, Any], distributed: bool) -> None:
    """One line for what a resume cannot change: optim.distributed."""
    if bool(meta.get("distributed_optimizer", False)) != distributed:
        raise VikhrError(
            f"checkpoint {step_dir} was saved with optim.distributed = "
            f"{str(meta.get('distributed_optimizer', False)).lower()}; resume with the same setting"
        )


def _load_master_weights(
    model: torch.nn.Module, step_dir: Path, meta: dict[str, Any], tp_rank: int, tp_size: int
) -> None:
    """Set the model's parameters to the fp32 master weights the distributed optimizer saved (every
    old DP rank's pieces of this TP rank, or of all TP ranks merged and cut again), in the model's
    dtype: a checkpoint of a bf16 run resumed in fp32 continues from the unrounded weights."""
    saved_tp, saved_dp = _saved_layout(meta)
    pieces: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for t in [tp_rank] if saved_tp == tp_size else range(saved_tp):
        for d in range(saved_dp):
            for part in _read_mapped(step_dir / _optimizer_file(t, d)):
                for piece in part["pieces"]:
                    master = {**piece, "tensors": {"param": piece["tensors"]["param"]}}
                    pieces.setdefault(piece["name"], {}).setdefault(t, []).append(master)
    shapes = _part_shapes(step_dir)
    vocab = int(meta["model"]["vocab_size"])
    with torch.no_grad():
        for param, name in _param_names(model).items():
            cut = (tp_rank, tp_size, 0, param.numel())
            where = f"checkpoint {step_dir}, {name}"
            state = _part_state(pieces.get(name, {}), saved_tp, shapes[name], name, param, cut, vocab, where)
            param.copy_(state["param"].reshape(param.shape))
