"""The pre-training config: a YAML file plus `section.key=value` overrides, validated up front.

Everything is checked (keys, types, ranges, dataset files, parallel layout against the model
shape) before torch.distributed or any tensor is touched; each error names the offending key.

    model:      preset, any ModelConfig field as an override, attention, init
    parallel:   tensor (TP size), sequence (sequence parallelism), device
    data:       kind (pretrain | sft), train (blend: [{prefix, weight, name}]), split, seq_len,
                packing (sft: pack | pad), isolate_documents, cache_dir, valid_samples
    train:      steps, micro_batch, global_batch, seed, recompute
    optim:      lr, min_lr, betas, eps, weight_decay, clip_grad, warmup_steps, decay, distributed
    kl:         weight (λ), direction, temperature, reference
    checkpoint: dir, save_every, resume
    debug:      kill_at_step, nonfinite_at_steps (fault injection for tests)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from vikhr.errors import VikhrError
from vikhr.model.config import PRESETS, ModelConfig


@dataclass
class ModelSection:
    preset: str = "tiny"
    # Overrides of the preset's fields (num_layers, vocab_size, rope_theta, sliding_window, ...).
    overrides: dict[str, Any] = field(default_factory=dict)
    attention: str = "auto"  # auto | te | sdpa | local
    # "random" or a checkpoint directory of this trainer (a step_* folder or its parent).
    init: str = "random"
    vocab_multiple: int = 128


@dataclass
class ParallelSection:
    tensor: int = 1
    # megatron's sequence parallelism (needs tensor > 1): norms and the residual stream between
    # the tensor-parallel regions are split along the sequence, 1/TP of their activations per rank.
    sequence: bool = False
    device: str = "auto"  # auto | cuda | cpu


@dataclass
class DataSection:
    # pretrain: token documents (GPTDataset packing); sft: chats of `vikhr sft prepare`, loss on
    # assistant tokens only (vikhr.train.sft_data).
    kind: str = "pretrain"
    # Blend of megatron .bin/.idx datasets: [{prefix: path/without/suffix, weight: 0.9, name: ru}, ...]
    train: list[dict[str, Any]] = field(default_factory=list)
    # Per-dataset split of documents into train/valid/test, megatron style ("98,2,0").
    split: str = "98,2,0"
    seq_len: int = 1024
    cache_dir: str | None = None  # megatron's index cache; default <checkpoint.dir>/data-cache
    eod_id: int = 2  # Mistral's </s>; SFT pads windows with it (masked)
    packing: str = "pack"  # sft: whole chats back to back (pack) or one chat per window (pad)
    # Each packed document attends only to itself (block-diagonal causal mask). null = the usual
    # choice: on for sft (a chat never sees another), off for pretrain (megatron's default).
    isolate_documents: bool | None = None
    valid_samples: int = 64  # per validation set and evaluation

    def documents_isolated(self) -> bool:
        return self.kind == "sft" if self.isolate_documents is None else self.isolate_documents


@dataclass
class TrainSection:
    steps: int = 1000
    micro_batch: int = 1
    global_batch: int = 8
    seed: int = 1234
    # Activation recomputation: none, or full (each layer keeps only its input for backward and
    # runs again there: ~1/3 more compute for a fraction of the activation memory).
    recompute: str = "none"


@dataclass
class OptimSection:
    lr: float = 1e-3
    min_lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.99, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    warmup_steps: int = 10
    decay: str = "cosine"  # cosine | linear | constant
    # Shard the fp32 master weights and Adam moments over the data-parallel ranks (megatron's
    # distributed optimizer, ZeRO-1): 12 B/param become 12/DP B/param per GPU.
    distributed: bool = False


@dataclass
class KLSection:
    weight: float = 0.0  # λ; 0 skips the reference model entirely
    direction: str = "reverse"  # reverse: KL(P_model‖P_ref); forward: KL(P_ref‖P_model)
    temperature: float = 1.0
    # "init": a frozen copy of the starting weights; or a checkpoint directory.
    reference: str = "init"


@dataclass
class CheckpointSection:
    dir: str = "runs/pretrain"
    save_every: int = 500
    resume: str = "auto"  # auto (latest in dir, if any) | never | a step_* directory


@dataclass
class LoggingSection:
    log_every: int = 1
    eval_every: int = 100
    tensorboard: bool = True
    max_nonfinite: int = 5  # abort after this many non-finite losses in a row


@dataclass
class DebugSection:
    """Fault injection for tests."""

    kill_at_step: int | None = None  # SIGKILL every rank right after this step
    nonfinite_at_steps: list[int] = field(default_factory=list)  # make these steps' loss NaN


@dataclass
class PretrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    kl: KLSection = field(default_factory=KLSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    debug: DebugSection = field(default_factory=DebugSection)

    def model_config(self) -> ModelConfig:
        return PRESETS[self.model.preset].with_overrides(**self.model.overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(options)})"


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` converted to the annotated type, or VikhrError naming `key`."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is not None and type(None) in args:  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if isinstance(value, str) and hint in (int, float):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return _coerce(key, float(value) if hint is float else int(value), hint)
        except ValueError:
            pass
    if isinstance(value, str) and hint is not str:
        try:
            value = yaml.safe_load(value)  # overrides arrive as text: "1e-3", "[0.9, 0.95]", "true"
        except yaml.YAMLError as e:
            raise VikhrError(f"config key {key}: cannot parse {value!r}") from e
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(f"{key}[{i}]", v, args[0]) if args else v for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    type_name = getattr(hint, "__name__", str(hint))
    raise VikhrError(f"config key {key}: expected {type_name}, got {value!r}")


def _set(cfg: PretrainConfig, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    sections = [f.name for f in fields(PretrainConfig)]
    if parts[0] not in sections:
        raise VikhrError(f"unknown config section {parts[0]!r} in {dotted!r}{_suggest(parts[0], sections)}")
    section = getattr(cfg, parts[0])
    if len(parts) == 1:
        if not isinstance(value, dict):
            raise VikhrError(f"config key {dotted}: expected a mapping of keys")
        for k, v in value.items():
            _set(cfg, f"{dotted}.{k}", v)
        return
    names = [f.name for f in fields(section)]
    if parts[1] not in names:
        raise VikhrError(f"unknown config key {dotted!r}{_suggest(parts[1], names)}")
    hints = get_type_hints(type(section))
    if parts[0] == "model" and parts[1] == "overrides" and len(parts) > 2:
        section.overrides[".".join(parts[2:])] = _yaml(value)
        return
    if len(parts) > 2:
        raise VikhrError(f"unknown config key {dotted!r}: {parts[0]}.{parts[1]} has no sub-keys")
    setattr(section, parts[1], _coerce(dotted, value, hints[parts[1]]))


def _yaml(value: Any) -> Any:
    return yaml.safe_load(value) if isinstance(value, str) else value


def load_config(
    path: str | Path | None, overrides: Sequence[str] = (), check_files: bool = True
) -> PretrainConfig:
    """Read YAML (optional), apply `section.key=value` overrides, and validate."""
    cfg = PretrainConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise VikhrError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise VikhrError(f"config file {p} is not valid YAML: {e}".replace("\n", " ")) from e
        if not isinstance(raw, dict):
            raise VikhrError(f"config file {p}: top level must be a mapping of sections")
        for section, body in raw.items():
            _set(cfg, str(section), body)
    for item in overrides:
        if "=" not in item:
            raise VikhrError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        _set(cfg, key.strip().lstrip("-"), value)
    validate(cfg, check_files=check_files)
    return cfg


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise VikhrError(f"config key {key} must be positive, got {value}")


def validate(cfg: PretrainConfig, world_size: int | None = None, check_files: bool = True) -> None:
    """Check everything that can be checked without allocating; raise VikhrError naming the key."""
    m = cfg.model
    if m.preset not in PRESETS:
        raise VikhrError(
            f"config key model.preset: unknown preset {m.preset!r}{_suggest(m.preset, list(PRESETS))}"
        )
    model_fields = [f.name for f in fields(ModelConfig)]
    for k in m.overrides:
        if k not in model_fields:
            raise VikhrError(f"unknown config key 'model.overrides.{k}'{_suggest(k, model_fields)}")
    try:
        mcfg = cfg.model_config()
    except TypeError as e:
        raise VikhrError(f"config key model.overrides: {e}") from e
    if m.attention not in ("auto", "te", "sdpa", "local"):
        raise VikhrError(f"config key model.attention must be auto, te, sdpa or local, got {m.attention!r}")
    if check_files and m.init != "random" and not Path(m.init).exists():
        raise VikhrError(f"config key model.init: checkpoint not found: {m.init} (or use 'random')")
    _positive("model.vocab_multiple", m.vocab_multiple)

    p = cfg.parallel
    _positive("parallel.tensor", p.tensor)
    if p.device not in ("auto", "cuda", "cpu"):
        raise VikhrError(f"config key parallel.device must be auto, cuda or cpu, got {p.device!r}")
    for name, value in (
        ("num_attention_heads", mcfg.num_attention_heads),
        ("num_kv_heads", mcfg.num_kv_heads),
        ("ffn_hidden_size", mcfg.ffn_hidden_size),
    ):
        if value % p.tensor:
            raise VikhrError(
                f"config key parallel.tensor = {p.tensor} does not divide the model's {name} = {value}"
            )
    try:
        mcfg.validate(p.tensor)
    except VikhrError as e:
        raise VikhrError(f"config key model ({m.preset}): {e}") from e
    if p.sequence and p.tensor == 1:
        raise VikhrError("config key parallel.sequence needs parallel.tensor > 1 (it splits over TP ranks)")
    if world_size is not None and world_size % p.tensor:
        raise VikhrError(
            f"config key parallel.tensor = {p.tensor} does not divide the world size {world_size}"
        )

    d = cfg.data
    if d.kind not in ("pretrain", "sft"):
        raise VikhrError(f"config key data.kind must be pretrain or sft, got {d.kind!r}")
    if d.packing not in ("pack", "pad"):
        raise VikhrError(f"config key data.packing must be pack or pad, got {d.packing!r}")
    if d.kind == "pretrain" and d.packing != "pack":
        raise VikhrError("config key data.packing = pad applies to data.kind = sft only")
    if not d.train:
        raise VikhrError("config key data.train is empty: list the datasets as [{prefix: ..., weight: ...}]")
    names = set()
    for i, entry in enumerate(d.train):
        key = f"data.train[{i}]"
        if not isinstance(entry, dict):
            raise VikhrError(f"config key {key} must be a mapping with prefix (and weight, name)")
        unknown = set(entry) - {"prefix", "weight", "name"}
        if unknown:
            bad = sorted(unknown)[0]
            raise VikhrError(f"unknown config key '{key}.{bad}'{_suggest(bad, ['prefix', 'weight', 'name'])}")
        if "prefix" not in entry:
            raise VikhrError(f"config key {key}.prefix is missing (path of the .bin/.idx without suffix)")
        prefix = str(entry["prefix"])
        if check_files and d.kind == "sft":
            from vikhr.train.sft_data import check_sft_dataset

            check_sft_dataset(prefix, f"{key}.prefix", mcfg.vocab_size)
        for suffix in (".bin", ".idx") if d.kind == "pretrain" else ():
            if check_files and not Path(prefix + suffix).is_file():
                raise VikhrError(f"config key {key}.prefix: dataset file not found: {prefix}{suffix}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise VikhrError(f"config key {key}.weight must be a positive number, got {weight!r}")
        name = str(entry.get("name", Path(prefix).name))
        if name in names:
            raise VikhrError(f"config key {key}.name: duplicate dataset name {name!r}")
        names.add(name)
    try:
        split = [float(x) for x in d.split.split(",")]
    except ValueError:
        split = []
    if len(split) != 3 or any(x < 0 for x in split) or split[0] <= 0:
        raise VikhrError(
            f"config key data.split must be three non-negative weights like '98,2,0', got {d.split!r}"
        )
    _positive("data.seq_len", d.seq_len)
    if p.sequence and d.seq_len % p.tensor:
        raise VikhrError(
            f"config key data.seq_len = {d.seq_len} must be a multiple of parallel.tensor = {p.tensor} "
            "with parallel.sequence"
        )
    if d.seq_len > mcfg.max_seq_len:
        raise VikhrError(
            f"config key data.seq_len = {d.seq_len} exceeds the model's max_seq_len {mcfg.max_seq_len}"
        )
    if not 0 <= d.eod_id < mcfg.vocab_size:
        raise VikhrError(
            f"config key data.eod_id = {d.eod_id} is outside the vocabulary [0, {mcfg.vocab_size})"
        )
    _positive("data.valid_samples", d.valid_samples)
    # TE's causal kernel ignores a given mask; megatron's local attention drops it under a window.
    unmaskable = m.attention == "te" or (m.attention == "local" and mcfg.sliding_window is not None)
    if d.documents_isolated() and unmaskable:
        raise VikhrError(
            f"config key data.isolate_documents needs model.attention sdpa or auto, got "
            f"{m.attention!r}{' with a sliding window' if m.attention == 'local' else ''} "
            "(or set data.isolate_documents: false)"
        )

    t = cfg.train
    if t.recompute not in ("none", "full"):
        raise VikhrError(f"config key train.recompute must be none or full, got {t.recompute!r}")
    _positive("train.steps", t.steps)
    _positive("train.micro_batch", t.micro_batch)
    _positive("train.global_batch", t.global_batch)
    if t.global_batch % t.micro_batch:
        raise VikhrError(
            f"config key train.global_batch = {t.global_batch} is not a multiple of "
            f"train.micro_batch = {t.micro_batch}"
        )
    if world_size is not None:
        dp = world_size // p.tensor
        if t.global_batch % (t.micro_batch * dp):
            raise VikhrError(
                f"config key train.global_batch = {t.global_batch} is not divisible by "
                f"micro_batch × data-parallel size = {t.micro_batch} × {dp}"
            )

    o = cfg.optim
    _positive("optim.lr", o.lr)
    if not 0 <= o.min_lr <= o.lr:
        raise VikhrError(f"config key optim.min_lr must be in [0, optim.lr], got {o.min_lr}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise VikhrError(f"config key optim.betas must be two numbers in [0, 1), got {o.betas}")
    _positive("optim.eps", o.eps)
    if o.weight_decay < 0:
        raise VikhrError(f"config key optim.weight_decay must be >= 0, got {o.weight_decay}")
    if o.clip_grad < 0:
        raise VikhrError(f"config key optim.clip_grad must be >= 0 (0 disables clipping), got {o.clip_grad}")
    if o.warmup_steps < 0:
        raise VikhrError(f"config key optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    if o.decay not in ("cosine", "linear", "constant"):
        raise VikhrError(f"config key optim.decay must be cosine, linear or constant, got {o.decay!r}")

    k = cfg.kl
    if k.weight < 0 or not math.isfinite(k.weight):
        raise VikhrError(f"config key kl.weight must be a finite number >= 0, got {k.weight}")
    if k.direction not in ("reverse", "forward"):
        raise VikhrError(f"config key kl.direction must be reverse or forward, got {k.direction!r}")
    _positive("kl.temperature", k.temperature)
    if check_files and k.weight > 0 and k.reference != "init" and not Path(k.reference).exists():
        raise VikhrError(f"config key kl.reference: checkpoint not found: {k.reference} (or use 'init')")

    c = cfg.checkpoint
    _positive("checkpoint.save_every", c.save_every)
    if check_files and c.resume not in ("auto", "never") and not Path(c.resume).is_dir():
        raise VikhrError(f"config key checkpoint.resume: not a checkpoint directory: {c.resume}")

    lg = cfg.logging
    _positive("logging.log_every", lg.log_every)
    _positive("logging.eval_every", lg.eval_every)
    _positive("logging.max_nonfinite", lg.max_nonfinite)
