"""`vikhr ablate`'s config: the shared settings and the arms of the grid, validated before anything runs.

An arm is one way to continue training the English base on the Russian-heavy blend:
  tokenizer   base (no adaptation) | replace | extend (an adapted tokenizer of that mode, embeddings
              adapted by `init`) | adapted (the one of the grid's tokenizer.mode)
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
import sys
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


Mode = Literal["replace", "extend"]
MODES: tuple[Mode, ...] = ("replace", "extend")
SIZE_KEYS: dict[Mode, str] = {"replace": "vocab_size", "extend": "new_tokens"}  # each mode's size key


class TokenizerSection(_Section):
    """The adapted arms' tokenizers, as `vikhr tokenizer train` makes them: replace (a new SentencePiece
    BPE of vocab_size pieces, the paper's setting) and extend (the base's, every token at its id, with
    new_tokens Russian tokens appended: SentencePiece or byte-level BPE, as the base is). An arm names
    its mode, or `adapted`: tokenizer.mode's."""

    # The base model's tokenizer; default: base.init's own, or without base.init the bundled Mistral .model
    base: str | None = None
    mode: Mode = "replace"
    vocab_size: PositiveInt = 8000  # replace: the adapted (Russian) tokenizer's size
    new_tokens: PositiveInt | None = None  # extend: how many tokens to add to the base's

    def settings(self, base_digest: str, modes: list[Mode]) -> dict[str, Any]:
        """What the adapted tokenizers of `modes` depend on (the grid's state): the mode `adapted`
        arms take, each one's size, the base's. A grid of one mode records what it did before both
        could be compared, so that `--resume` finds its runs."""
        size = {SIZE_KEYS[m]: getattr(self, SIZE_KEYS[m]) for m in MODES if m in modes}
        return {"mode": self.mode, **size, "base": base_digest}


class ModelSection(_Section):
    # vikhr.model.config.PRESETS: the shape of the base pre-trained from random weights (base.init's
    # model has its own)
    preset: str = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)  # ModelConfig fields


class BaseTrainSection(_Section):
    """The grid's base: an HF model of the user's (init), or one pre-trained on English from random
    weights (steps, lr, seed: once, cached by the hash of what it depends on)."""

    # An HF model directory (config.json, safetensors, tokenizer): the base itself, its shape and
    # weights, in place of a pre-trained one.
    init: str | None = Field(None, min_length=1)
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
    tokenizer: Literal["base", "adapted", "replace", "extend"] = "adapted"
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

    @pydantic.field_validator("arms")
    @classmethod
    def _mode_of_the_grid_is_adapted(cls, arms: list[Arm], info: pydantic.ValidationInfo) -> list[Arm]:
        """An arm naming tokenizer.mode trains what an `adapted` arm trains: it takes that arm's run
        key, so the two share one run per seed, and a grid written before arms could name a mode keeps
        its runs' keys."""
        tokenizer = info.data.get("tokenizer")
        if tokenizer is None:  # refused itself: the error names it
            return arms
        return [
            a.model_copy(update={"tokenizer": "adapted"}) if a.tokenizer == tokenizer.mode else a
            for a in arms
        ]

    def tokenizer_of(self, arm: Arm) -> Literal["base", "replace", "extend"]:
        """The tokenizer an arm's model has: base, or the adapted one of its mode (a merge arm's is
        the merged arm's)."""
        if arm.slerp_of is not None:
            arm = next(a for a in self.arms if a.name == arm.slerp_of)
        return self.tokenizer.mode if arm.tokenizer == "adapted" else arm.tokenizer

    def adapted_modes(self) -> list[Mode]:
        """The adapted tokenizers the grid trains: its arms', and tokenizer.mode's where a base arm's
        budget chars is measured against it."""
        needed = {self.tokenizer_of(a) for a in self.arms}
        if any(a.budget == "chars" for a in self.arms):
            needed.add(self.tokenizer.mode)
        return [m for m in MODES if m in needed]

    def base_key(self, corpus_digest: str, tokenizer_digest: str) -> str:
        """Hash of everything the base model depends on (its data by content, not by path)."""
        t = self.train
        payload = {
            "model": self.model.model_dump(),
            # Without base.init (None here: a pre-trained base), as bases were cached before it existed.
            "base": self.base.model_dump(exclude={"init"}),
            "shape": [t.seq_len, t.micro_batch, t.global_batch, t.device],
            "en_corpus": corpus_digest,
            "tokenizer": tokenizer_digest,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def grid_settings(
        self,
        ru_digest: str,
        en_digest: str,
        tokenizer_digest: str,
        base_files: dict[str, list[int]] | None = None,
    ) -> dict[str, Any]:
        """Everything a run of the grid depends on besides its arm and seed (data by content).
        `base_files`: base.init's files by name, their size and modification time (base_init_files).

        Runs of one grid (`vikhr ablate --resume`) may add arms and seeds but not change these. The
        vikhr release is not one: grid.json's `made_with` records it, and a resume by another says so.
        """
        if self.base.init is None:
            base = self.base.model_dump()
        else:
            base = {"init": str(Path(self.base.init).resolve()), "files": base_files}
        return {
            "data": {"eval_docs": self.data.eval_docs, "ru_corpus": ru_digest, "en_corpus": en_digest},
            "tokenizer": self.tokenizer.settings(tokenizer_digest, self.adapted_modes()),
            "model": self.model.model_dump(),
            "base": base,
            "train": self.train.model_dump(exclude={"save_every"}),  # changes where runs save, not what
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
                f"{where}: init applies to the adapted tokenizers only (drop init or use adapted, replace "
                "or extend)"
            )
        if arm.budget == "chars" and arm.tokenizer != "base":
            raise VikhrError(
                f"{where}: budget chars applies to base-tokenizer arms only (their steps see the characters "
                "of tokenizer.mode's adapted tokenizer); drop it"
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
            if source.slerp_of is not None or source.tokenizer == "base":
                raise VikhrError(f"{where}: slerp_of must name a trained arm with an adapted tokenizer")


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

    if cfg.base.init is not None:
        _check_base_init(cfg, p)
    elif cfg.model.preset == INIT_PRESET:
        # The trainer's preset init reads a checkpoint's shape: the grid's is base.init's model.
        raise VikhrError(
            f"{p}: config key model.preset = {INIT_PRESET} takes the model's shape from a checkpoint, but "
            "without base.init the grid pre-trains its base from random weights (base.steps), so there "
            "is none to take it from: give base.init (an HF model directory) to start the grid from that "
            "model in its own shape, and drop the model section; or name the base's preset "
            f"({', '.join(sorted(PRESETS))}) with model.overrides"
        )
    if cfg.model.preset not in PRESETS:
        raise VikhrError(
            f"{p}: unknown model.preset {cfg.model.preset!r} (choose {', '.join(sorted(PRESETS))})"
        )
    if "vocab_size" in cfg.model.overrides:  # it would replace each run's, which its tokenizer sets
        raise VikhrError(
            f"{p}: config key model.overrides.vocab_size cannot be set: each model's vocabulary is its "
            "tokenizer's (the base tokenizer's, or the adapted arms' tokenizer section's); drop it"
        )
    _check_tokenizer(cfg, p)
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise VikhrError(f"{p}: seeds repeat ({cfg.seeds}); give distinct seeds")
    if Path(cfg.out_dir).resolve() == Path(cfg.cache_dir).resolve():
        raise VikhrError(
            f"{p}: out_dir and cache_dir are both {cfg.out_dir}; give them their own directories"
        )
    # the trainer's own checks, before any stage runs, each run at its own vocabulary
    try:
        base_vocab = base_vocab_size(cfg)
    except VikhrError as e:
        raise VikhrError(f"{p}: {e}") from None
    check_trainer_settings(cfg, p, base_vocab)
    return cfg


def base_vocab_size(cfg: AblateConfig) -> int:
    """The base model's vocabulary: base.init's embedding rows (its config.json's vocab_size, at least
    its tokenizer's tokens), else its tokenizer's size (tokenizer.base, or the bundled Mistral .model).
    VikhrError (one line, naming the key) where that tokenizer is missing or no tokenizer."""
    if cfg.base.init is not None:
        from vikhr.convert.mistral import read_hf_config

        return int(read_hf_config(Path(cfg.base.init))["vocab_size"])
    from vikhr import assets
    from vikhr.errors import require_file
    from vikhr.tokenizer import load

    try:
        return load(require_file(cfg.tokenizer.base or assets.MISTRAL_TOKENIZER, "tokenizer")).vocab_size
    except VikhrError as e:
        raise VikhrError(f"config key tokenizer.base: {e}") from None


def mode_key(cfg: AblateConfig, mode: Mode) -> str:
    """The config key that asks for the adapted tokenizer of `mode`: tokenizer.mode where `adapted`
    arms (or a base arm's budget chars) take it, else the first arm that names it."""
    if mode == cfg.tokenizer.mode:
        return f"tokenizer.mode {mode}"
    i = next(i for i, a in enumerate(cfg.arms) if a.tokenizer == mode)
    return f"arms[{i}].tokenizer {mode}"


def _check_tokenizer(cfg: AblateConfig, path: Path) -> None:
    """The adapted tokenizers' settings, as `vikhr tokenizer train` would take them (it trains after
    the previous grid's work is cleared): each size key the arms' modes need, and none they do not
    (but tokenizer.mode's in a grid of base-tokenizer arms alone: a note says it is unused)."""
    from vikhr.tokenizer.train import MAX_VOCAB_SIZE, MIN_REPLACE_VOCAB, NUM_BYTE_PIECES, NUM_SPECIALS

    tok, modes = cfg.tokenizer, cfg.adapted_modes()
    used = f"the arms' adapted tokenizers: {', '.join(modes) or 'none'}; `adapted` is tokenizer.mode's"
    for mode in MODES:
        key = SIZE_KEYS[mode]
        if mode in modes or key not in tok.model_fields_set or getattr(tok, key) is None:
            continue
        if not modes and mode == tok.mode:
            # A grid of base-tokenizer arms trains no adapted tokenizer, but its config may date from
            # when every grid trained tokenizer.mode's and took its size: it keeps working.
            print(
                f"note: {path}: config key tokenizer.{key} is unused: every arm keeps the base tokenizer, "
                f"so the grid trains no {mode} tokenizer (the key applies once an arm is adapted or "
                f"{mode}, or has budget chars)",
                file=sys.stderr,
            )
            continue
        raise VikhrError(
            f"{path}: config key tokenizer.{key} is the size of {'an' if mode == 'extend' else 'a'} {mode} "
            f"tokenizer, but no arm trains with one ({used}): drop {key}, or give an arm tokenizer: {mode}"
        )
    if "extend" in modes:
        if tok.new_tokens is None:
            raise VikhrError(
                f"{path}: config key {mode_key(cfg, 'extend')} needs tokenizer.new_tokens (how many "
                "Russian tokens to add to the base's vocabulary, e.g. 8000)"
            )
        if tok.new_tokens > MAX_VOCAB_SIZE:
            raise VikhrError(
                f"{path}: config key tokenizer.new_tokens = {tok.new_tokens:,} is above {MAX_VOCAB_SIZE:,} "
                "ids, far more than any tokenizer uses (the largest hold ~256k)"
            )
    if "replace" in modes:
        if tok.vocab_size < MIN_REPLACE_VOCAB:
            raise VikhrError(
                f"{path}: config key tokenizer.vocab_size = {tok.vocab_size} is too small: give at least "
                f"{MIN_REPLACE_VOCAB} (byte fallback alone takes {NUM_BYTE_PIECES + NUM_SPECIALS} pieces)"
            )
        if tok.vocab_size > MAX_VOCAB_SIZE:
            raise VikhrError(
                f"{path}: config key tokenizer.vocab_size = {tok.vocab_size:,} is above {MAX_VOCAB_SIZE:,} "
                "ids, far more than any tokenizer uses (the largest hold ~256k)"
            )


def adapted_vocab_size(cfg: AblateConfig, mode: Mode, base_vocab: int) -> int:
    """The vocabulary of the adapted arms of `mode` as asked for (extend: the base's `base_vocab` plus
    the new tokens, an upper bound: the corpus may yield fewer). The grid's adapt-vocab pads no rows."""
    t = cfg.tokenizer
    return t.vocab_size if mode == "replace" else base_vocab + (t.new_tokens or 0)


def run_vocabularies(cfg: AblateConfig, base_vocab: int) -> tuple[int | None, set[tuple[int, float]]]:
    """The vocabulary of the base's pre-training (None with base.init: nothing is pre-trained), and
    the (vocabulary, KL weight) pairs of the trained arms: the base's or their adapted tokenizer's."""
    arms = set()
    for arm in cfg.arms:
        if arm.slerp_of is None:
            mode = cfg.tokenizer_of(arm)
            vocab = base_vocab if mode == "base" else adapted_vocab_size(cfg, mode, base_vocab)
            arms.add((vocab, arm.kl_weight))
    return (base_vocab if cfg.base.init is None else None), arms


def _check_base_init(cfg: AblateConfig, path: Path) -> None:
    """base.init takes the place of the base's pre-training and of its shape: their keys would not
    apply. Its config.json must give a shape the trainer builds, whose context holds train.seq_len."""
    pretraining = sorted(cfg.base.model_fields_set - {"init"})
    if pretraining:
        keys = ", ".join(f"base.{k}" for k in pretraining)
        them = "it" if len(pretraining) == 1 else "them"
        raise VikhrError(
            f"{path}: config key base.init starts the grid from that model, so {keys} (the pre-training "
            f"of a base from random weights) would not apply; drop {them}"
        )
    if cfg.model.model_fields_set:
        keys = ", ".join(f"model.{k}" for k in sorted(cfg.model.model_fields_set))
        raise VikhrError(
            f"{path}: config key base.init gives the base's shape (its config.json), which every arm "
            f"keeps, so {keys} would not apply; drop the model section"
        )
    try:
        shape = base_init_shape(cfg)
    except VikhrError as e:
        raise VikhrError(f"{path}: config key base.init: {e}") from None
    if cfg.train.seq_len > shape["max_seq_len"]:
        raise VikhrError(
            f"{path}: config key train.seq_len = {cfg.train.seq_len} exceeds base.init's context of "
            f"{shape['max_seq_len']} tokens (max_position_embeddings of its config.json): lower "
            f"train.seq_len to {shape['max_seq_len']} or less"
        )


def base_init_shape(cfg: AblateConfig) -> dict[str, Any]:
    """Every field of the shape of base.init's model (vikhr.model.config.ModelConfig), as its
    config.json gives it, less vocab_size: each run's vocabulary is its start's. VikhrError (one line)
    where that is no supported HF model's config.json."""
    import dataclasses

    from vikhr.convert.mistral import hf_config_to_model_config, read_hf_config

    assert cfg.base.init is not None
    model_dir = Path(cfg.base.init)
    if not model_dir.is_dir():
        raise VikhrError(f"not found or not a directory: {model_dir} (give an HF model directory)")
    shape = hf_config_to_model_config(read_hf_config(model_dir), str(model_dir / "config.json"))
    shape.validate()
    fields = dataclasses.asdict(shape)
    del fields["vocab_size"]
    return fields


def base_init_files(model_dir: Path) -> dict[str, list[int]]:
    """What a grid records of base.init's model: the size and modification time of its config.json
    and weights, so that `--resume` over a model written again since is refused (a rewrite is found
    without reading a checkpoint of many gigabytes; a file only copied or touched counts as written)."""
    from vikhr.file_stamps import file_stamp

    names = sorted(
        p.name
        for p in model_dir.iterdir()
        if p.name == "config.json" or p.name.endswith((".safetensors", ".safetensors.index.json"))
    )
    return {name: [(s := file_stamp(model_dir / name)).size, s.mtime_ns] for name in names}


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
        family_shape=dict(cfg.model.overrides) if cfg.base.init is None else base_init_shape(cfg),
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

    for key in ("out_dir", "cache_dir") if cfg.base.init is None else ("out_dir",):  # base.init: no cache
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


def check_trainer_settings(cfg: AblateConfig, path: Path, base_vocab: int) -> None:
    """The trainer's checks of the base's and the arms' runs (batch shapes, model overrides, device,
    numbers), each at its vocabulary (`base_vocab`: the base model's), so that a setting it refuses
    stops the grid before its first stage, not after it."""
    blend = [("ru", "ru", cfg.train.ru_share), ("en", "en", 1 - cfg.train.ru_share)]
    base_run, arm_runs = run_vocabularies(cfg, base_vocab)
    runs = [(True, base_run, cfg.base.steps, cfg.base.lr, cfg.base.seed, 0.0)] if base_run else []
    runs += [
        (False, vocab, cfg.train.steps, cfg.train.lr, s, kl_weight)
        for vocab, kl_weight in sorted(arm_runs)
        for s in cfg.seeds
    ]
    for base, vocab, steps, lr, seed, kl_weight in runs:
        try:
            trainer_config(
                cfg, Path("grid") / "check", blend, vocab, steps, False, seed=seed, lr=lr, kl_weight=kl_weight
            )
        except VikhrError as e:
            raise VikhrError(f"{path}: {in_grid_keys(str(e), base)}") from None


def check_memory_here(cfg: AblateConfig, base_vocab: int) -> None:
    """The base's and the arms' runs fit this machine's memory by the trainer's estimate (which each
    run checks too, at its start after the stages before it): a train.seq_len too long for one is
    refused before the first stage. `base_vocab`: the base model's vocabulary size (its tokenizer's,
    or base.init's embedding rows); base.init's model runs only as the base-tokenizer arms' start."""
    from vikhr.train.memory import check_fits, memory_here

    on_cuda = cfg.train.device == "cuda"
    capacity, memory = memory_here(on_cuda)
    blend = [("ru", "ru", cfg.train.ru_share), ("en", "en", 1 - cfg.train.ru_share)]
    base_run, arm_runs = run_vocabularies(cfg, base_vocab)
    runs = {(True, base_run, 0.0)} if base_run else set()
    runs |= {(False, vocab, kl_weight) for vocab, kl_weight in arm_runs}
    for base, vocab, kl_weight in sorted(runs):
        run = trainer_config(
            cfg, Path("grid") / "check", blend, vocab, 2, False, seed=cfg.base.seed, kl_weight=kl_weight
        )
        try:
            check_fits(run, 1, capacity, memory, on_cuda=on_cuda)
        except VikhrError as e:
            raise VikhrError(in_grid_keys(str(e), base)) from None
