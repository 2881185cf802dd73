"""`vikhr ablate`'s config: the shared settings and the arms of the grid, validated before anything runs.

An arm is one way to continue training the English base on the Russian-heavy blend:
  tokenizer   base (no adaptation) | adapted (the new tokenizer, embeddings adapted by `init`)
  init        mean (of the old pieces) | random (N(mean, std) of the old tokens' rows) | mean-of-all
  kl_weight   λ of CE + λ·KL against the starting model; kl_direction reverse | forward
  budget      compute (the same steps × tokens as the other arms) | chars (the steps that see as many
              training characters as the adapted tokenizer's run: base-tokenizer tokens hold fewer)
  slerp_t     no training: SLERP of the arm `slerp_of`'s final model with its own start
              (t = 0 is the start, t = 1 the trained model; vikhr.merge)
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pydantic
from pydantic import (
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

from vikhr.config_section import ConfigSection
from vikhr.errors import VikhrError, config_error_line, read_yaml_mapping
from vikhr.train.config import Seed


class _Section(ConfigSection):
    # NaN and infinities are refused here, not by the trainer after the grid's first stages (and in
    # its own keys' names: optim.lr, kl.weight).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataSection(_Section):
    ru_corpus: str | None = None  # default: the bundled Russian sample
    en_corpus: str | None = None  # default: the bundled English sample
    eval_docs: PositiveInt = 8  # held-out documents per language for bits per character


class TokenizerSection(_Section):
    base: str | None = None  # the English model's tokenizer; default: the bundled Mistral .model
    vocab_size: PositiveInt = 8000  # the adapted (Russian) tokenizer's size


class ModelSection(_Section):
    preset: str = "tiny"  # vikhr.model.config.PRESETS: the base's shape (pre-trained from random weights)
    overrides: dict[str, Any] = Field(default_factory=dict)  # ModelConfig fields


class BaseTrainSection(_Section):
    """Pre-training of the English base (once; cached by the hash of what it depends on)."""

    steps: PositiveInt = 150
    lr: PositiveFloat = 3e-3
    seed: Seed = 1234


class TrainSection(_Section):
    """Continued pre-training of every arm (and the base's pre-training shape)."""

    steps: PositiveInt = 60
    lr: PositiveFloat = 3e-3
    seq_len: PositiveInt = 128
    micro_batch: PositiveInt = 4
    global_batch: PositiveInt = 8
    ru_share: float = Field(0.9, gt=0, lt=1)  # of the continued-training blend; the rest is English
    device: Literal["cpu", "cuda"] = "cpu"
    log_every: PositiveInt = 5
    # 0: an arm saves at its end only. N: also every N steps, so that `--resume` continues an
    # interrupted arm from its last checkpoint (the figures are the same either way).
    save_every: NonNegativeInt = 0


class Arm(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")  # also names its work directories
    group: str = "other"  # table section: vocabulary, init, regularisation, ...
    tokenizer: Literal["base", "adapted"] = "adapted"
    init: Literal["mean", "random", "mean-of-all"] = "mean"
    kl_weight: NonNegativeFloat = 0.0
    kl_direction: Literal["reverse", "forward"] = "reverse"
    budget: Literal["compute", "chars"] = "compute"
    slerp_of: str | None = None
    slerp_t: float | None = Field(None, ge=0, le=1)

    def run_key(self) -> str:
        """What the arm trains (not its name): arms with equal keys share one run per seed."""
        fields = self.model_dump(exclude={"name", "group"})
        return json.dumps(fields, sort_keys=True)


class AblateConfig(_Section):
    out_dir: str = Field("runs/ablate", min_length=1)
    # cached base models, keyed by their config hash
    cache_dir: str = Field("runs/ablate-cache", min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    data: DataSection = Field(default_factory=DataSection)
    tokenizer: TokenizerSection = Field(default_factory=TokenizerSection)
    model: ModelSection = Field(default_factory=ModelSection)
    base: BaseTrainSection = Field(default_factory=BaseTrainSection)
    train: TrainSection = Field(default_factory=TrainSection)
    arms: list[Arm] = Field(min_length=1)

    def base_key(self, corpus_digest: str, tokenizer_digest: str) -> str:
        """Hash of everything the base model depends on (its data by content, not by path)."""
        t = self.train
        payload = {
            "model": self.model.model_dump(),
            "base": self.base.model_dump(),
            "shape": [t.seq_len, t.micro_batch, t.global_batch, t.device],
            "en_corpus": corpus_digest,
            "tokenizer": tokenizer_digest,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def grid_settings(self, ru_digest: str, en_digest: str, tokenizer_digest: str) -> dict[str, Any]:
        """Everything a run of the grid depends on besides its arm and seed (data by content).

        Runs of one grid (`vikhr ablate --resume`) may add arms and seeds but not change these.
        """
        from vikhr import __version__

        return {
            "data": {"eval_docs": self.data.eval_docs, "ru_corpus": ru_digest, "en_corpus": en_digest},
            "tokenizer": {"vocab_size": self.tokenizer.vocab_size, "base": tokenizer_digest},
            "model": self.model.model_dump(),
            "base": self.base.model_dump(),
            "train": self.train.model_dump(exclude={"save_every"}),  # changes where runs save, not what
            "vikhr": __version__,
        }


# What an arm trains with: a merge arm (slerp_of) takes its trained arm's.
TRAINING_KEYS = frozenset({"tokenizer", "init", "kl_weight", "kl_direction", "budget"})


def _check_arms(path: Path, arms: list[Arm]) -> None:
    names = [a.name for a in arms]
    by_name = {a.name: a for a in arms}
    for arm in arms:
        where = f"{path}: arm '{arm.name}'"
        if names.count(arm.name) > 1:
            raise VikhrError(f"{where} is named twice; give every arm its own name")
        if arm.tokenizer == "base" and arm.init != "mean":
            raise VikhrError(
                f"{where}: init applies to the adapted tokenizer only (drop init or use adapted)"
            )
        if arm.budget == "chars" and arm.tokenizer != "base":
            raise VikhrError(
                f"{where}: budget chars applies to base-tokenizer arms only (their steps see the adapted "
                "tokenizer's characters); drop it"
            )
        if (arm.slerp_of is None) != (arm.slerp_t is None):
            raise VikhrError(f"{where}: a merge arm needs both slerp_of and slerp_t")
        trains = sorted(arm.model_fields_set & TRAINING_KEYS) if arm.slerp_of is not None else []
        if trains:
            raise VikhrError(
                f"{where}: a merge arm trains nothing, so {', '.join(trains)} would not apply (they are "
                "the merged arm's, slerp_of); drop them"
            )
        if arm.slerp_of is not None:
            source = by_name.get(arm.slerp_of)
            if source is None:
                raise VikhrError(
                    f"{where}: slerp_of names no arm ({arm.slerp_of!r}; arms: {', '.join(names)})"
                )
            if source.slerp_of is not None or source.tokenizer != "adapted":
                raise VikhrError(f"{where}: slerp_of must name a trained arm with the adapted tokenizer")


def load_ablate_config(path: str | Path) -> AblateConfig:
    """Read and validate CONFIG.yaml; VikhrError (one line) on anything wrong."""
    p = Path(path)
    raw = read_yaml_mapping(p, kind="ablate")
    try:
        cfg = AblateConfig.model_validate(raw)
    except pydantic.ValidationError as e:
        raise VikhrError(config_error_line(e.errors()[0], AblateConfig, prefix=f"{p}: ")) from None
    _check_arms(p, cfg.arms)
    from vikhr.model.config import PRESETS
    from vikhr.train.config import INIT_PRESET

    if cfg.model.preset == INIT_PRESET:
        # The trainer's preset init reads a checkpoint's shape; the grid's base has none to read, and
        # every arm already starts from a checkpoint of the base's shape.
        raise VikhrError(
            f"{p}: config key model.preset = {INIT_PRESET} takes the model's shape from a checkpoint, but "
            "the grid pre-trains its base from random weights (base.steps), so there is none to take it "
            f"from: name the base's preset ({', '.join(sorted(PRESETS))}) with model.overrides; every arm "
            "starts from the base's checkpoint (the adapted arms from its `vikhr adapt-vocab` output) "
            "and keeps its shape"
        )
    if cfg.model.preset not in PRESETS:
        raise VikhrError(
            f"{p}: unknown model.preset {cfg.model.preset!r} (choose {', '.join(sorted(PRESETS))})"
        )
    if "vocab_size" in cfg.model.overrides:  # it would replace each run's, which its tokenizer sets
        raise VikhrError(
            f"{p}: config key model.overrides.vocab_size cannot be set: each model's vocabulary is its "
            "tokenizer's (the base tokenizer's, or tokenizer.vocab_size for the adapted arms); drop it"
        )
    from vikhr.tokenizer.train import MIN_REPLACE_VOCAB, NUM_BYTE_PIECES, NUM_SPECIALS

    # The adapted tokenizer is trained in replace mode, after the previous grid's work is cleared.
    if cfg.tokenizer.vocab_size < MIN_REPLACE_VOCAB:
        raise VikhrError(
            f"{p}: config key tokenizer.vocab_size = {cfg.tokenizer.vocab_size} is too small: give at least "
            f"{MIN_REPLACE_VOCAB} (byte fallback alone takes {NUM_BYTE_PIECES + NUM_SPECIALS} pieces)"
        )
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise VikhrError(f"{p}: seeds repeat ({cfg.seeds}); give distinct seeds")
    if Path(cfg.out_dir).resolve() == Path(cfg.cache_dir).resolve():
        raise VikhrError(
            f"{p}: out_dir and cache_dir are both {cfg.out_dir}; give them their own directories"
        )
    check_trainer_settings(cfg, p)  # the trainer's own checks, before any stage runs
    return cfg


def trainer_config(
    cfg: AblateConfig,
    run_dir: Path,
    blend: list[tuple[str, str, float]],
    vocab: int,
    steps: int,
    check_files: bool = True,
    **kw: Any,
) -> Any:
    """The trainer config of one run of the grid (`kw`: seed, and lr, init, kl_weight, kl_direction)."""
    from vikhr.demo import train_config

    t = cfg.train
    args = SimpleNamespace(seq_len=t.seq_len, seed=kw.pop("seed"), lr=kw.pop("lr", t.lr))
    extra = [
        f"model.preset={cfg.model.preset}",
        f"parallel.device={t.device}",
        f"train.micro_batch={t.micro_batch}",
        f"train.global_batch={t.global_batch}",
        f"logging.log_every={t.log_every}",
        "logging.tensorboard=false",
        # Continue from the run's last checkpoint when there is one (train_arm removes a run's
        # files unless it saves periodically; see train.save_every).
        f"checkpoint.save_every={t.save_every or steps}",
        "checkpoint.keep_last=1",  # a save is atomic: the newest whole checkpoint is enough
        "checkpoint.resume=auto",
        # Saving on a cluster's notice pays only where --resume continues from the step saved (the
        # demo's runs, whose config this extends, never save on one).
        f"checkpoint.save_on_signals={'[SIGTERM, SIGUSR1]' if t.save_every else '[]'}",
        f"kl.direction={kw.pop('kl_direction', 'reverse')}",
    ]
    return train_config(
        run_dir.parent,
        run_dir.name,
        blend,
        vocab,
        args,
        steps,
        family_shape=dict(cfg.model.overrides),
        extra=extra,
        check_files=check_files,
        **kw,
    )


def check_device_here(cfg: AblateConfig, path: str | Path) -> None:
    """A grid for CUDA run where torch sees none, or where no CUDA toolkit is found to build the
    loss's kernels, stops before its first stage (a config is still validated anywhere: the check
    belongs to the run, not to the file)."""
    if cfg.train.device == "cuda":
        import torch

        from vikhr.ops.build import require_cuda_toolkit

        if not torch.cuda.is_available():
            raise VikhrError(
                f"{path}: config key train.device is cuda, but torch sees no CUDA device here "
                "(set train.device: cpu)"
            )
        require_cuda_toolkit(f"{path}: config key train.device is cuda", "set train.device: cpu")


def check_dirs_here(cfg: AblateConfig, path: str | Path) -> None:
    """out_dir and cache_dir can be made or written into here: a file at either path (or on the way
    to it) failed in a line naming no key, and cache_dir's only after the preparation had run and
    replaced the earlier grid's work."""
    from vikhr.errors import require_writable_dir

    for key in ("out_dir", "cache_dir"):
        require_writable_dir(getattr(cfg, key), f"{path}: config key {key}", "give the key another path")


# The trainer's keys that a grid's own keys set (trainer_config), for the base's run and the arms'.
_GRID_KEYS = {
    "data.seq_len": "train.seq_len",
    "parallel.device": "train.device",
    "logging.log_every": "train.log_every",
    "checkpoint.save_every": "train.save_every",
}
_BASE_KEYS = {**_GRID_KEYS, "train.steps": "base.steps", "optim.lr": "base.lr", "train.seed": "base.seed"}
_ARM_KEYS = {**_GRID_KEYS, "optim.lr": "train.lr", "train.seed": "seeds"}


def in_grid_keys(message: str, base: bool) -> str:
    """A trainer's error about the base's run (`base`) or an arm's, in the keys of the grid's file."""
    names = _BASE_KEYS if base else _ARM_KEYS
    pattern = r"(?<![\w.])(" + "|".join(map(re.escape, names)) + r")(?![\w.])"
    return re.sub(pattern, lambda m: names[m.group(1)], message)


def check_trainer_settings(cfg: AblateConfig, path: Path) -> None:
    """The trainer's checks of the base's and the arms' runs (batch shapes, model overrides, device,
    numbers), so that a setting it refuses stops the grid before its first stage, not after it."""
    blend = [("ru", "ru", cfg.train.ru_share), ("en", "en", 1 - cfg.train.ru_share)]
    runs = [(True, cfg.base.steps, cfg.base.lr, cfg.base.seed)] + [
        (False, cfg.train.steps, cfg.train.lr, s) for s in cfg.seeds
    ]
    for base, steps, lr, seed in runs:
        try:
            trainer_config(
                cfg, Path("grid") / "check", blend, cfg.tokenizer.vocab_size, steps, False, seed=seed, lr=lr
            )
        except VikhrError as e:
            raise VikhrError(f"{path}: {in_grid_keys(str(e), base)}") from None


def check_memory_here(cfg: AblateConfig, base_vocab: int) -> None:
    """The base's and the arms' runs fit this machine's memory by the trainer's estimate (which each
    run checks too, at its start after the stages before it): a train.seq_len too long for one is
    refused before the first stage. `base_vocab`: the base tokenizer's vocabulary size."""
    from vikhr.train.memory import check_fits, memory_here

    on_cuda = cfg.train.device == "cuda"
    capacity, memory = memory_here(on_cuda)
    blend = [("ru", "ru", cfg.train.ru_share), ("en", "en", 1 - cfg.train.ru_share)]
    runs = {(True, base_vocab, 0.0)} | {
        (False, base_vocab if arm.tokenizer == "base" else cfg.tokenizer.vocab_size, arm.kl_weight)
        for arm in cfg.arms
        if arm.slerp_of is None
    }
    for base, vocab, kl_weight in sorted(runs):
        run = trainer_config(
            cfg, Path("grid") / "check", blend, vocab, 2, False, seed=cfg.base.seed, kl_weight=kl_weight
        )
        try:
            check_fits(run, 1, capacity, memory, on_cuda=on_cuda)
        except VikhrError as e:
            raise VikhrError(in_grid_keys(str(e), base)) from None
