"""The trainer's config: a YAML file plus `section.key=value` overrides, validated up front.

Everything is checked (keys, types, ranges, dataset files, parallel layout against the model
shape) before torch.distributed or any tensor is touched; each error is one line naming the key.
pydantic does the typing (and rejects unknown keys, non-positive sizes and NaN/inf numbers);
`validate` adds the checks that look at several keys, the model shape or the files.

    model:      preset (or init: model.init's shape), overrides (ModelConfig fields), attention, init,
                vocab_multiple
    parallel:   tensor (TP size), sequence (sequence parallelism), device, join_timeout_minutes
    data:       kind (pretrain | sft), train (blend: [{prefix, weight, name}]), split, seq_len,
                packing (sft: pack | pad), isolate_documents, cache_dir, eod_id, valid_samples
    train:      steps, micro_batch, global_batch, seed, recompute
    optim:      lr, min_lr, betas, eps, weight_decay, clip_grad, warmup_steps, decay, decay_steps,
                wsd_shape, distributed
    kl:         weight (λ), direction, temperature, reference
    checkpoint: dir, save_every, keep_last, resume, save_on_signals, stop_after_minutes
    logging:    log_every, eval_every, tensorboard, max_nonfinite
    debug:      kill_at_step, signal_at_step, nonfinite_at_steps (fault injection for tests)
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pydantic
import yaml
from pydantic import (
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from pydantic_core import PydanticCustomError

from vikhr.config_section import ConfigSection, refuse_yes_no
from vikhr.data.indexed import missing_dataset_hint
from vikhr.errors import VikhrError, config_error_line, read_yaml_mapping, suggest
from vikhr.model.config import FIELDS_A_RUN_MAY_CHANGE, PRESETS, ModelConfig
from vikhr.model.gpt import AttentionBackend
from vikhr.ops.cross_entropy_kl import KL_DIRECTIONS
from vikhr.runtime.distributed import Device
from vikhr.sft.layout import Packing, check_sft_blend, check_sft_dataset, stale_chat_encoding

if TYPE_CHECKING:
    from vikhr.data.tokenization import TokenizationRecord

# numpy's and torch's generators take seeds in [0, 2^32)
Seed = Annotated[int, Field(ge=0, lt=2**32)]
# Signals a run can stop on cleanly (SIGKILL and SIGSTOP cannot be caught; SIGINT stays Ctrl-C's
# immediate stop unless listed).
StopSignal = Literal["SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGINT"]
KLDirection = Literal[KL_DIRECTIONS]  # type: ignore[valid-type]  # the op's own tuple, as a type
_MODEL_SHAPE = pydantic.TypeAdapter(ModelConfig)


class _Section(ConfigSection):
    # Unknown keys are errors; numbers read as text ("1e-4" in YAML 1.1) are converted; NaN and
    # infinities are refused everywhere (no key of this config means anything with them).
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, coerce_numbers_to_str=True
    )


# model.preset's value that takes the shape model.init's checkpoint records (its meta.json `model`).
INIT_PRESET = "init"


class ModelSection(_Section):
    preset: str = "tiny"  # a name of vikhr.model.config.PRESETS, or "init": model.init's shape
    # Overrides of the preset's fields (num_layers, vocab_size, rope_theta, sliding_window, ...); of
    # preset init's, those a run may change (FIELDS_A_RUN_MAY_CHANGE: max_seq_len, init_std), and the
    # others only at the value the checkpoint records (they then change nothing).
    overrides: dict[str, Any] = Field(default_factory=dict)
    attention: AttentionBackend = "auto"
    # "random" or a checkpoint directory of this trainer (a step_* folder or its parent).
    init: str = "random"
    vocab_multiple: PositiveInt = 128

    def shape(self, resumed: Path | None = None) -> ModelConfig:
        """The preset (or the recorded shape, for preset init) with the overrides applied (types
        checked; `validate` checks the rest). Preset init takes the shape `resumed`, the checkpoint a
        run resumes, records: model.init may be gone once the run has saved a step (TrainConfig.
        model_shape finds it); model.init's where there is none, or it records none (older versions).
        An override of preset init's shape other than FIELDS_A_RUN_MAY_CHANGE that differs from the
        recorded value is a VikhrError naming both values."""
        if self.preset != INIT_PRESET:
            preset = dataclasses.asdict(PRESETS[self.preset])
            return _MODEL_SHAPE.validate_python({**preset, **self.overrides})
        recorded = _resumed_shape(resumed) if resumed is not None else None
        shaped_by = "model.init's checkpoint" if recorded is None else "the resumed checkpoint"
        where = self.init if recorded is None else resumed
        recorded = init_shape(self.init) if recorded is None else recorded
        shape = _MODEL_SHAPE.validate_python({**recorded, **self.overrides})
        kept = _MODEL_SHAPE.validate_python(recorded)
        for k in self.overrides:
            if k not in FIELDS_A_RUN_MAY_CHANGE and getattr(shape, k) != getattr(kept, k):
                raise VikhrError(
                    f"config key model.overrides.{k} = {getattr(shape, k)} differs from the {k} "
                    f"{getattr(kept, k)} of {shaped_by} ({where}), whose shape model.preset = {INIT_PRESET} "
                    f"takes, and a run changes only {', '.join(FIELDS_A_RUN_MAY_CHANGE)}: drop the key"
                )
        return shape

    def described(self, resumed: Path | None = None) -> str:
        """The model as a run's lines name it: its preset, or the checkpoint whose shape it takes
        (`shape`: the resumed checkpoint's where it records one, model.init's otherwise)."""
        if self.preset != INIT_PRESET:
            return self.preset
        shaped_by = resumed if resumed is not None and _resumed_shape(resumed) is not None else self.init
        return f"of {shaped_by}"


def _resumed_shape(resumed: Path) -> dict[str, Any] | None:
    """The model shape the checkpoint a run resumes records (meta.json `model`); None where it records
    none. Its meta.json was read whole when it was chosen (checkpoint.find_resumable)."""
    from vikhr.train.checkpoint import read_meta

    shape = read_meta(resumed).get("model")
    return shape if isinstance(shape, dict) else None


def init_shape(init: str) -> dict[str, Any]:
    """The model shape model.init's checkpoint records (meta.json `model`, as ModelConfig.to_dict()
    wrote it), for model.preset init; VikhrError naming the key otherwise."""
    from vikhr.train.checkpoint import find_weights, read_meta

    if init == "random":
        raise VikhrError(
            f"config key model.preset = {INIT_PRESET} takes the model's shape from model.init's checkpoint, "
            "but model.init is random: give model.init, or name a preset "
            f"({', '.join(sorted(PRESETS))}) with model.overrides"
        )
    if not Path(init).exists():
        raise VikhrError(
            f"config key model.init: checkpoint not found: {init} (model.preset = {INIT_PRESET} reads the "
            "model's shape there)"
        )
    step_dir = find_weights(init, "model.init")
    try:
        shape = read_meta(step_dir).get("model")
    except (OSError, ValueError, AttributeError) as e:
        raise VikhrError(
            f"config key model.init: cannot read {step_dir / 'meta.json'} ({e}): the checkpoint is damaged "
            "(use another)"
        ) from None
    if not isinstance(shape, dict):
        raise VikhrError(
            f"config key model.preset = {INIT_PRESET}: {step_dir / 'meta.json'} records no model shape: "
            "name it with a preset and model.overrides"
        )
    return shape


class ParallelSection(_Section):
    tensor: PositiveInt = 1
    # megatron's sequence parallelism (needs tensor > 1): norms and the residual stream between
    # the tensor-parallel regions are split along the sequence, 1/TP of their activations per rank.
    sequence: bool = False
    device: Device = "auto"
    # How long the ranks that finished their setup wait for the others to join the job before they
    # stop, naming the absent ranks (a node whose setup failed has ended; its log says why).
    join_timeout_minutes: PositiveFloat = 20.0


class DatasetEntry(_Section):
    """One dataset of the blend: megatron .bin/.idx files (or `vikhr sft prepare` output)."""

    prefix: str  # path without the suffix
    weight: PositiveFloat = 1.0
    name: str = ""  # default: the prefix's last path component

    @pydantic.model_validator(mode="after")
    def _default_name(self) -> DatasetEntry:
        if not self.name:
            self.name = Path(self.prefix).name
        return self


class DataSection(_Section):
    # pretrain: token documents (GPTDataset packing); sft: chats of `vikhr sft prepare`, loss on
    # assistant tokens only (vikhr.sft.data).
    kind: Literal["pretrain", "sft"] = "pretrain"
    # Blend of datasets: [{prefix: path/without/suffix, weight: 0.9, name: ru}, ...]
    train: list[DatasetEntry] = Field(default_factory=list)
    # Per-dataset split of documents into train/valid/test, megatron style ("98,2,0").
    split: str = "98,2,0"
    seq_len: PositiveInt = 1024
    cache_dir: str | None = None  # megatron's index cache; default <checkpoint.dir>/data-cache
    # The id each pre-training document ends with (where data.isolate_documents splits windows):
    # unset, the one the datasets' tokenization records name, else 2 (Mistral's </s>). SFT pads
    # windows with it (masked).
    eod_id: NonNegativeInt = 2
    # Where eod_id came from when the config sets none and the datasets' records name it: (how a
    # message names the dataset, its record), so that a refusal of the id names the record, not the config.
    _eod_id_recorded: tuple[str, TokenizationRecord] | None = pydantic.PrivateAttr(default=None)
    packing: Packing = "pack"  # sft: whole chats back to back (pack) or one chat per window (pad)
    # Each packed document attends only to itself (block-diagonal causal mask). null = the usual
    # choice: on for sft (a chat never sees another), off for pretrain (megatron's default).
    isolate_documents: bool | None = None
    valid_samples: PositiveInt = 64  # per validation set and evaluation

    def documents_isolated(self) -> bool:
        return self.kind == "sft" if self.isolate_documents is None else self.isolate_documents


class TrainSection(_Section):
    steps: PositiveInt = 1000
    micro_batch: PositiveInt = 1
    global_batch: PositiveInt = 8
    seed: Seed = 1234
    # Activation recomputation: none, or full (each layer keeps only its input for backward and
    # runs again there: ~1/3 more compute for a fraction of the activation memory).
    recompute: Literal["none", "full"] = "none"


Beta = Annotated[float, Field(ge=0, lt=1)]


class OptimSection(_Section):
    lr: PositiveFloat = 1e-3
    min_lr: NonNegativeFloat = 1e-4
    betas: Annotated[list[Beta], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [0.99, 0.95]
    )
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.1  # AdamW's, on the matrices: not on norms and biases
    clip_grad: NonNegativeFloat = 1.0  # 0 disables clipping
    warmup_steps: NonNegativeInt = 10
    # After warm-up: cosine or linear decay to min_lr over the remaining steps, constant, or wsd
    # (warmup-stable-decay: lr held, then decayed to min_lr over the last `decay_steps` steps, in
    # the shape `wsd_shape`; a run can be extended before its decay begins). As in Megatron-LM, a
    # step's lr is the schedule's value after the steps before it: the last step's is one step short
    # of min_lr (a wsd decay of 1 step does not lower the lr).
    decay: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    decay_steps: PositiveInt | None = None  # wsd: the decay's length; default 20% after warm-up
    wsd_shape: Literal["linear", "cosine", "minus_sqrt", "exponential"] = "minus_sqrt"
    # Shard the fp32 master weights and Adam moments over the data-parallel ranks (megatron's
    # distributed optimizer, ZeRO-1): 12 B/param become 12/DP B/param per GPU.
    distributed: bool = False


class KLSection(_Section):
    weight: NonNegativeFloat = 0.0  # λ; 0 skips the reference model entirely
    direction: KLDirection = "reverse"  # reverse: KL(P_model‖P_ref); forward: KL(P_ref‖P_model)
    temperature: PositiveFloat = 1.0
    # "init": a frozen copy of the starting weights; or a checkpoint directory.
    reference: str = "init"


class CheckpointSection(_Section):
    dir: str = "runs/pretrain"
    save_every: PositiveInt = 500
    # 0 keeps every checkpoint; N keeps the newest N (a 7B model's step with its Adam state is
    # ~100 GB): earlier ones are removed once a new one is whole. 2 leaves a fallback if the newest
    # is damaged.
    keep_last: NonNegativeInt = 0
    resume: str = "auto"  # auto (latest in dir, if any) | never | a step_* directory
    # On these signals the ranks finish the step, save it and stop (exit status 128 + the signal's
    # number): SLURM's notice of a time limit or preemption, torchrun passing on its own SIGTERM.
    save_on_signals: list[StopSignal] = Field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    # Save and stop once this many minutes have passed since the start (exit status 75): for jobs
    # whose end comes without a signal in time. Leave room for the step and the save.
    stop_after_minutes: PositiveFloat | None = None


class LoggingSection(_Section):
    log_every: PositiveInt = 1
    eval_every: PositiveInt = 100
    tensorboard: bool = True
    max_nonfinite: PositiveInt = 5  # abort after this many non-finite losses in a row


class DebugSection(_Section):
    """Fault injection for tests."""

    kill_at_step: int | None = None  # SIGKILL every rank right after this step
    # the last rank alone sends itself the first of checkpoint.save_on_signals right after this step
    # (at the step the run starts from: in its setup, before the step-0 evaluation)
    signal_at_step: int | None = None
    nonfinite_at_steps: list[int] = Field(default_factory=list)  # make these steps' loss NaN


class TrainConfig(_Section):
    model: ModelSection = Field(default_factory=ModelSection)
    parallel: ParallelSection = Field(default_factory=ParallelSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    kl: KLSection = Field(default_factory=KLSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    debug: DebugSection = Field(default_factory=DebugSection)
    # What loading the config applied differently from what the file says (load_config): said as
    # notes once the run will start, so that a refused run's error stays its only line.
    _notes: list[str] = pydantic.PrivateAttr(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def notes(self) -> list[str]:
        return list(self._notes)

    def resumed_checkpoint(self) -> Path | None:
        """The step directory the run resumes (checkpoint.resume: auto, the newest whole step of
        checkpoint.dir, or the one given); None for a fresh start. VikhrError where the step given,
        or every step of the run directory, is damaged."""
        from vikhr.train.checkpoint import find_resumable

        c = self.checkpoint
        if c.resume == "never":
            return None
        return find_resumable(c.dir if c.resume == "auto" else c.resume)[0]

    def model_shape(self) -> ModelConfig:
        """The run's model shape (ModelSection.shape): with model.preset init, the resumed checkpoint's
        where the run resumes one, so that a resume needs model.init only as the KL reference."""
        return self.model.shape(self._shaping_checkpoint())

    def described_model_shape(self) -> tuple[ModelConfig, str]:
        """The run's model shape (model_shape) and the model as its lines name it (ModelSection.
        described), from one look for the resumed checkpoint (it reads the run directory's steps)."""
        resumed = self._shaping_checkpoint()
        return self.model.shape(resumed), self.model.described(resumed)

    def _shaping_checkpoint(self) -> Path | None:
        """The resumed checkpoint, where model.preset init takes the shape it records; None otherwise."""
        return self.resumed_checkpoint() if self.model.preset == INIT_PRESET else None


def changed_settings(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """`key old -> new` for each setting of `now` (TrainConfig.to_dict()) that differs from `saved`
    (the config a checkpoint recorded), by dotted key; lists compared element by element."""
    changes = []
    for key in sorted(set(saved) | set(now)):
        old, new, name = saved.get(key), now.get(key), f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            changes += changed_settings(old, new, f"{name}.")
        elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                if isinstance(a, dict) and isinstance(b, dict):
                    changes += changed_settings(a, b, f"{name}[{i}].")
                elif a != b:
                    changes.append(f"{name}[{i}] {a} -> {b}")
        elif old != new:
            changes.append(f"{name} {old} -> {new}")
    return changes


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None, overrides: Sequence[str] = (), check_files: bool = True
) -> TrainConfig:
    """Read YAML (optional), apply `section.key=value` overrides (values in YAML syntax), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(path, "sections", kind="pretrain")
    given = [_parse_override(item) for item in overrides]
    note = None  # said once the run will start (TrainConfig.notes)
    if path is not None and _sets_preset_init(given):
        note = _drop_shape_of_the_file_s_preset(raw, path)
    for key, value in given:
        _merge(raw, key, value)
    data = raw.get("data", {})
    if path is None and isinstance(data, dict) and not data.get("train"):
        # Without a config nothing names the data: say what is missing, not which key is empty.
        raise VikhrError(
            "no config given: pass --config FILE.yaml (configs/ has examples, e.g. configs/tiny-cpu.yaml) "
            "or name the datasets with data.train=[{prefix: ..., weight: ...}]"
        )
    try:
        cfg = TrainConfig.model_validate(raw)
    except pydantic.ValidationError as e:
        raise VikhrError(config_error_line(e.errors()[0], TrainConfig)) from None
    validate(cfg, check_files=check_files)
    cfg._notes += [note] if note is not None else []
    return cfg


def _parse_override(item: str) -> tuple[str, Any]:
    """(dotted key, value) of one `section.key=value` override; the value in YAML syntax."""
    if "=" not in item:
        looks_like_config = item.endswith((".yaml", ".yml")) or Path(item).is_file()
        hint = f" (a config file is given as --config {item})" if looks_like_config else ""
        raise VikhrError(f"override {item!r} must look like section.key=value{hint}")
    key, text = item.split("=", 1)
    key = key.strip().lstrip("-")
    try:
        return key, yaml.safe_load(text)  # "1e-3", "[0.9, 0.95]", "true", "{prefix: x}"
    except yaml.YAMLError as e:
        raise VikhrError(f"config key {key}: cannot parse {text!r}") from e


def _sets_preset_init(given: list[tuple[str, Any]]) -> bool:
    """Whether the overrides leave model.preset at init (the last one that sets it says)."""
    preset = None
    for key, value in given:
        if key == "model.preset":
            preset = value
        elif key == "model" and isinstance(value, dict) and "preset" in value:
            preset = value["preset"]
    return preset == INIT_PRESET


def _drop_shape_of_the_file_s_preset(raw: dict[str, Any], path: str | Path) -> str | None:
    """model.preset=init given over a config file's own preset: the file's model.overrides of that
    preset's shape (a vocab_size, rope_theta, ...) describe another model than model.init's checkpoint,
    whose shape preset init takes; they are dropped from `raw`, and the note naming them returned
    (None where none is). Those a run may change (max_seq_len, init_std) stay; the command line's own
    overrides apply after."""
    model = raw.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("overrides"), dict):
        return None
    preset = model.get("preset", ModelSection.model_fields["preset"].default)
    dropped = {k: v for k, v in model["overrides"].items() if k not in FIELDS_A_RUN_MAY_CHANGE}
    if preset == INIT_PRESET or not dropped:
        return None
    model["overrides"] = {k: v for k, v in model["overrides"].items() if k in FIELDS_A_RUN_MAY_CHANGE}
    named = ", ".join(f"{k}={v}" for k, v in dropped.items())
    # The overrides are the file's, not the command line's: the note names the file they come from.
    return (
        f"model.preset=init takes the model's shape from model.init's checkpoint: the config file {path} "
        f"sets model.overrides for its preset {preset} ({named}), which are not applied"
    )


def _merge(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `dotted` (section.key[.sub...]) in the raw mapping; a whole section merges key by key."""
    *parents, last = dotted.split(".")
    node = raw
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        where = ".".join(parents[: depth + 1])
        if isinstance(child, list):
            # An item is not addressed by its index: the list is given whole, edited from its value.
            now = yaml.safe_dump(child, default_flow_style=True, sort_keys=False, width=1 << 30).strip()
            raise VikhrError(
                f"unknown config key {dotted!r}: {where} is a list, set as a whole (quoted for the shell), "
                f"e.g. {where}='{now}' with the item changed"
            )
        if not isinstance(child, dict):
            raise VikhrError(f"unknown config key {dotted!r}: {where} has no sub-keys")
        node = child
    if not parents and isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last].update(value)
    else:
        node[last] = value


# --------------------------------------------------------------------------- checks across keys


def doubtful_settings(cfg: TrainConfig) -> list[str]:
    """Settings that are allowed but most likely not meant (warnings, not errors: a smoke test may
    mean them)."""
    o, t = cfg.optim, cfg.train
    found = []
    if o.warmup_steps >= t.steps:
        found.append(
            f"optim.warmup_steps = {o.warmup_steps} is not below train.steps = {t.steps}: the learning "
            f"rate never reaches optim.lr = {o.lr:g}"
        )
    found += blend_differences(cfg.data)
    if cfg.data.kind == "sft":
        stale = (
            stale_chat_encoding(e.prefix, f"data.train[{i}].prefix") for i, e in enumerate(cfg.data.train)
        )
        found += [doubt for doubt in stale if doubt is not None]
    return found


def validate(cfg: TrainConfig, world_size: int | None = None, check_files: bool = True) -> None:
    """The checks that look at several keys, the model shape or the files; VikhrError naming the key.

    `world_size`: the job's process count, when known (torchrun), for the data-parallel layout.
    `check_files`: whether the datasets and checkpoints named must exist (not for --dry-run).
    """
    m = cfg.model
    if m.preset == INIT_PRESET and m.init == "random":
        init_shape(m.init)  # refused: no checkpoint to take the shape from
    resumed = cfg.resumed_checkpoint() if m.preset == INIT_PRESET else None  # its shape, on a resume
    mcfg = _check_model(m, check_files, resumed)  # None: model.init's shape, not read without check_files
    _check_parallel(cfg, mcfg, world_size)
    _check_data(cfg, mcfg, check_files, resumed)
    t, o, k = cfg.train, cfg.optim, cfg.kl
    if t.global_batch % t.micro_batch:
        raise VikhrError(
            f"config key train.global_batch = {t.global_batch} is not a multiple of "
            f"train.micro_batch = {t.micro_batch}"
        )
    if world_size is not None:
        dp = world_size // cfg.parallel.tensor
        if t.global_batch % (t.micro_batch * dp):
            raise VikhrError(
                f"config key train.global_batch = {t.global_batch} is not divisible by "
                f"micro_batch × data-parallel size = {t.micro_batch} × {dp}"
            )
    if o.min_lr > o.lr:
        raise VikhrError(f"config key optim.min_lr must be in [0, optim.lr], got {o.min_lr}")
    if cfg.debug.signal_at_step is not None and not cfg.checkpoint.save_on_signals:
        raise VikhrError(
            "config key debug.signal_at_step sends the first of checkpoint.save_on_signals, which is empty"
        )
    if o.decay_steps is not None and o.decay != "wsd":
        raise VikhrError(
            f"config key optim.decay_steps is the length of the wsd decay; optim.decay is {o.decay} "
            "(set optim.decay=wsd, or drop optim.decay_steps)"
        )
    if o.decay_steps is not None and o.decay_steps > t.steps - o.warmup_steps:
        raise VikhrError(
            f"config key optim.decay_steps = {o.decay_steps} is longer than the steps after warm-up "
            f"(train.steps - optim.warmup_steps = {t.steps - o.warmup_steps})"
        )
    if check_files and k.weight > 0 and k.reference != "init" and not Path(k.reference).exists():
        raise VikhrError(f"config key kl.reference: checkpoint not found: {k.reference} (or use 'init')")
    c = cfg.checkpoint
    if check_files and c.resume not in ("auto", "never") and not Path(c.resume).is_dir():
        raise VikhrError(
            f"config key checkpoint.resume: not a checkpoint directory: {c.resume} (give auto, never or "
            "the directory of a run or of one of its steps)"
        )


def _check_model(m: ModelSection, check_files: bool, resumed: Path | None = None) -> ModelConfig | None:
    """The run's model shape, checked (`resumed`: the checkpoint a run of model.preset init resumes,
    whose shape it takes); None where it is model.init's and that checkpoint is not read: model.init
    random (`validate` says so), or not there and `check_files` false (the start reads it)."""
    if m.preset not in PRESETS and m.preset != INIT_PRESET:
        names = [*PRESETS, INIT_PRESET]
        raise VikhrError(f"config key model.preset: unknown preset {m.preset!r}{suggest(m.preset, names)}")
    known = [f.name for f in dataclasses.fields(ModelConfig)]
    for k in m.overrides:
        if k not in known:
            raise VikhrError(f"unknown config key 'model.overrides.{k}'{suggest(k, known)}")
    types = typing.get_type_hints(ModelConfig)
    for k, v in m.overrides.items():
        try:
            refuse_yes_no(v, types[k])
        except PydanticCustomError as e:
            raise VikhrError(f"config key model.overrides.{k}: {e.message()}, got {v!r}") from None
    init_unread = m.init == "random" or not (check_files or Path(m.init).exists())
    if m.preset == INIT_PRESET and resumed is None and init_unread:
        return None
    try:
        mcfg = m.shape(resumed)
    except pydantic.ValidationError as e:
        error = e.errors()[0]
        if m.preset == INIT_PRESET and error["loc"] and error["loc"][0] not in m.overrides:
            key, where = ("checkpoint.resume", resumed) if resumed is not None else ("model.init", m.init)
            raise VikhrError(
                f"config key {key}: {where} records a model shape this version cannot read "
                f"({config_error_line(error)}): use another checkpoint, or name its preset"
            ) from None
        raise VikhrError(config_error_line(error, key_prefix="model.overrides.")) from None
    try:
        mcfg.validate()
    except VikhrError as e:
        raise VikhrError(f"config key model ({m.described(resumed)}): {e}") from e
    return mcfg  # model.init's weights are looked for once the run knows whether it resumes (trainer.run)


def _check_parallel(cfg: TrainConfig, mcfg: ModelConfig | None, world_size: int | None) -> None:
    p = cfg.parallel
    misfit = mcfg.tensor_parallel_misfit(p.tensor) if mcfg is not None else None
    if misfit is not None:
        raise VikhrError(
            f"config key parallel.tensor = {p.tensor} does not divide the model's {misfit[0]} = {misfit[1]}"
        )
    if p.sequence and p.tensor == 1:
        raise VikhrError("config key parallel.sequence needs parallel.tensor > 1 (it splits over TP ranks)")
    if p.sequence and cfg.data.seq_len % p.tensor:
        raise VikhrError(
            f"config key data.seq_len = {cfg.data.seq_len} must be a multiple of parallel.tensor = "
            f"{p.tensor} with parallel.sequence"
        )
    if world_size is not None and world_size % p.tensor:
        # Most often `vikhr pretrain` (one process) given a multi-GPU config.
        raise VikhrError(
            f"config key parallel.tensor = {p.tensor} does not divide the world size {world_size} (the "
            f"processes of the job): start a multiple of {p.tensor} with torchrun --nproc_per_node=N "
            "-m vikhr pretrain, or lower parallel.tensor"
        )


def _blend_records(d: DataSection) -> dict[str, TokenizationRecord | None]:
    """The tokenization records of the pre-training datasets of `d` there now, by the label their
    messages give them; a dataset without one (an older one, or Megatron-LM's), not there (a
    --dry-run away from the data) or damaged (the trainer's check_data names it) is not compared."""
    from vikhr.data.indexed import inspect
    from vikhr.data.tokenization import read_record, record_path

    records: dict[str, TokenizationRecord | None] = {}
    for i, entry in enumerate(d.train if d.kind == "pretrain" else ()):
        if not record_path(entry.prefix).is_file():
            continue
        try:
            info = inspect(entry.prefix)
        except VikhrError:
            continue
        records[f"config key data.train[{i}] ({entry.name}, {entry.prefix})"] = read_record(
            entry.prefix, info
        )
    return records


def _check_blend_tokenizers(cfg: TrainConfig) -> None:
    """The pre-training datasets of one run share a tokenizer: a blend of two of one vocabulary size
    (same token dtype) trains on ids that mean different pieces; and their EOD id, which data.eod_id
    names (documents ending with another id would run together). Told by the records `data
    preprocess` writes (`_blend_records`)."""
    from vikhr.data.tokenization import refuse_mixed_eod_ids, refuse_mixed_tokenizers

    d = cfg.data
    records = _blend_records(d)
    refuse_mixed_tokenizers(
        records, "the datasets of one run share one tokenizer (pre-tokenize both with one tokenizer)"
    )
    refuse_mixed_eod_ids(
        records,
        f"the documents of one run end with one EOD id, data.eod_id = {d.eod_id} (pre-tokenize both with "
        "one tokenizer file, whose EOS that is)",
    )
    _check_eod_id(cfg, records)


def _check_eod_id(cfg: TrainConfig, records: dict[str, TokenizationRecord | None]) -> None:
    """data.eod_id is where data.isolate_documents splits windows into documents: the id the datasets'
    documents end with, as their records say (all one: `refuse_mixed_eod_ids`). A config that sets
    another is refused; one that sets none takes theirs (said in a note where it is not the default),
    rather than the default of Mistral's tokenizer."""
    from vikhr.data.tokenization import ends_with_eod, recorded_pieces

    d = cfg.data
    ending = [(label, r, r.eod_id) for label, r in records.items() if r is not None and ends_with_eod(r)]
    if not ending or ending[0][2] == d.eod_id:
        return
    label, record, eod_id = ending[0]
    if "eod_id" not in d.model_fields_set:
        d.eod_id = eod_id  # set from here on, also for a second validate of this config
        d._eod_id_recorded = (label, record)
        cfg._notes.append(
            f"data.eod_id = {eod_id} (the config sets none): the EOD id the documents of {label} end "
            "with, as its tokenization record says"
        )
        return
    given, recorded = (
        f"{i} ({piece!r})" if piece is not None else str(i)
        for i, piece in zip((d.eod_id, eod_id), recorded_pieces(record, (d.eod_id, eod_id)), strict=True)
    )
    raise VikhrError(
        f"data.eod_id differs: the config sets {given}, but {label} ends its documents with EOD id "
        f"{recorded}, as its tokenization record says: set data.eod_id={eod_id}, or leave it out to take "
        "the datasets' id"
    )


# What a blend of datasets that differ in a field of their records does, and the way out where it is
# not meant (`blend_differences`).
_BLEND_DIFFERENCE_FIXES = {
    "append_eod": "documents without EOD run together with no boundary in the packed windows; pre-tokenize "
    "with --append-eod unless that is meant",
    "convention": "pre-tokenize both with, or both without, --legacy-tokenizer unless that is meant",
}


def blend_differences(d: DataSection) -> list[str]:
    """What the pre-training datasets of `d` differ in that is allowed but seldom meant (whether their
    documents end with EOD, begin with BOS): one line per field, naming two datasets and what each has."""
    from vikhr.data.tokenization import differing_fields

    return [
        f"data.train: {difference.line()} ({_BLEND_DIFFERENCE_FIXES[difference.field]})"
        for difference in differing_fields(_blend_records(d))
    ]


def _check_data(cfg: TrainConfig, mcfg: ModelConfig | None, check_files: bool, resumed: Path | None) -> None:
    d, attention = cfg.data, cfg.model.attention
    if d.kind == "pretrain" and d.packing != "pack":
        raise VikhrError("config key data.packing = pad applies to data.kind = sft only")
    if not d.train:
        raise VikhrError("config key data.train is empty: list the datasets as [{prefix: ..., weight: ...}]")
    if not math.isfinite(sum(e.weight for e in d.train)):  # each finite, the sum overflowed: equal shares
        raise VikhrError("config key data.train: the weights sum to infinity (give them in a smaller unit)")
    names, metas = set(), []
    for i, entry in enumerate(d.train):
        key = f"data.train[{i}]"
        if check_files and d.kind == "sft" and mcfg is not None:
            metas.append((f"{key}.prefix", check_sft_dataset(entry.prefix, f"{key}.prefix", mcfg.vocab_size)))
        for suffix in (".bin", ".idx") if check_files and d.kind == "pretrain" else ():
            if not Path(entry.prefix + suffix).is_file():
                hint = missing_dataset_hint(entry.prefix)
                hint = f" ({hint})" if hint else ""
                raise VikhrError(
                    f"config key {key}.prefix: dataset file not found: {entry.prefix}{suffix}{hint}"
                )
        if entry.name in names:
            raise VikhrError(f"config key {key}.name: duplicate dataset name {entry.name!r}")
        names.add(entry.name)
    if metas:
        check_sft_blend(metas)
    _check_blend_tokenizers(cfg)  # the datasets there now: --dry-run refuses what the run would
    try:
        split = [float(x) for x in d.split.split(",")]
    except ValueError:
        split = []
    if len(split) != 3 or not all(0 <= x < math.inf for x in split):
        raise VikhrError(
            f"config key data.split must be three non-negative weights like '98,2,0', got {d.split!r}"
        )
    if split[0] == 0:
        raise VikhrError(
            f"config key data.split = {d.split!r} gives training nothing: the first weight (train) must "
            "be above 0, e.g. '98,2,0'"
        )
    if mcfg is not None:
        _check_data_fits_model(cfg, mcfg, resumed)
    # TE's causal kernel ignores a given mask; megatron's local attention drops it under a window.
    window = mcfg.sliding_window if mcfg is not None else None
    unmaskable = attention == "te" or (attention == "local" and window is not None)
    if d.documents_isolated() and unmaskable:
        raise VikhrError(
            f"config key data.isolate_documents needs model.attention sdpa or auto, got "
            f"{attention!r}{' with a sliding window' if attention == 'local' else ''} "
            "(or set data.isolate_documents: false)"
        )


def _check_data_fits_model(cfg: TrainConfig, mcfg: ModelConfig, resumed: Path | None) -> None:
    """`resumed`: the checkpoint whose shape a resume of model.preset init takes."""
    d = cfg.data
    if d.seq_len > mcfg.max_seq_len:
        given = "model.overrides.max_seq_len" if "max_seq_len" in cfg.model.overrides else None
        preset = cfg.model.preset
        source = f"preset {preset}"
        if preset == INIT_PRESET:
            source = f"the resumed checkpoint {resumed}" if resumed is not None else "model.init's checkpoint"
        raise VikhrError(
            f"config key data.seq_len = {d.seq_len} exceeds the model's max_seq_len {mcfg.max_seq_len} "
            f"({given or source}): lower data.seq_len to {mcfg.max_seq_len} or less, "
            f"or {'raise' if given else 'set'} model.overrides.max_seq_len"
        )
    if d.eod_id >= mcfg.vocab_size and d._eod_id_recorded is not None:
        label, record = d._eod_id_recorded
        raise VikhrError(
            f"data.eod_id = {d.eod_id} (the config sets none), the EOD id the documents of {label} end "
            "with as its tokenization record says, is outside the model's vocabulary "
            f"[0, {mcfg.vocab_size}): that dataset was pre-tokenized with {record.tokenizer_line()} "
            f"({record.vocab_size} ids), not the model's tokenizer: pre-tokenize it again with the model's "
            "tokenizer"
        )
    if d.eod_id >= mcfg.vocab_size:
        raise VikhrError(
            f"config key data.eod_id = {d.eod_id} is outside the vocabulary [0, {mcfg.vocab_size})"
        )
