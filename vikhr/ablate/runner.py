"""Runs the grid: shared preparation once, the English base once per config hash, then every arm × seed.

A run keeps each finished training's and merge's figures in work/results/; `vikhr ablate --resume`
reloads them (and the shared preparation) instead of running them again, so an interrupted grid
continues where it stopped, and a grid given more arms or seeds runs only the new ones.

Every stage is the demo's or the stage modules' own (vikhr.demo's split, trainer config and
bits-per-character; vikhr.tokenizer.train, vikhr.adapt, vikhr.data, vikhr.train, vikhr.convert,
vikhr.merge). Bits per character are tokenizer-independent, so the base-tokenizer and the adapted
arms compare directly, and against the base model itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vikhr.ablate.config import (
    SIZE_KEYS,
    AblateConfig,
    Arm,
    Mode,
    base_init_files,
    base_vocab_size,
    check_memory_here,
    mode_key,
    trainer_config,
)
from vikhr.atomic import WrittenMeanwhile, missing_dirs, output_dir, remove_empty_dirs, write_text
from vikhr.errors import RunStopped, VikhrError, require_file
from vikhr.locks import exclusive
from vikhr.provenance import provenance, resume_note
from vikhr.tokenizer.corpus import corpus_sha256

if TYPE_CHECKING:
    from vikhr.tokenizer.train import TrainSettings

BASE_HF = "hf"  # the cached base model's HF export inside cache_dir/base-<hash>
GRID_STATE = "grid.json"  # in out_dir/work: what the grid depends on, and its shared preparation
REPORT_FILES = ("ablation.md", "ablation.csv", "loss_curves.png", "tradeoff.png")  # in out_dir, at the end
_KEPT = ("steps", "tokens_seen", "chars_seen", "ru_bpc_start", "en_bpc_start", "ru_bpc", "en_bpc")


@dataclass
class RunResult:
    """One arm × seed: its figures (deterministic for a fixed seed) and its wall times."""

    arm: Arm
    seed: int
    steps: int
    tokens_seen: int
    chars_seen: int
    ru_bpc_start: float
    en_bpc_start: float
    ru_bpc: float
    en_bpc: float
    trained: Arm | None = None  # a merge's source arm: the training behind it
    train_losses: dict[int, float] = field(default_factory=dict)
    wall_train_s: float = 0.0
    wall_eval_s: float = 0.0


@dataclass
class AblationResult:
    config: AblateConfig
    base_bpc: dict[str, float]
    base_cached: bool  # True when the base model came from the cache (not trained by this run nor base.init)
    chars_per_token: dict[str, float]  # by tokenizer ("base", "replace", "extend") on the training blend
    runs: list[RunResult]
    # Each adapted tokenizer's starts' embedding rows (adapted_rows), by mode: those an arm started from
    adapted_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    # The code and libraries that ran the grid, the first run's first (vikhr.provenance; None: a run
    # of a vikhr that did not record them)
    made_with: list[dict[str, Any] | None] = field(default_factory=list)


def adapted_rows(summary: dict[str, Any]) -> dict[str, int]:
    """What `vikhr adapt-vocab` (its `summary`) made of the adapted tokenizer's rows: "tokens" in all,
    "copied" from the base's row of the same token, "new" (initialised by the arm's init)."""
    from vikhr.adapt.vocab import KEPT_ROWS

    tokens, counts = summary["new_vocab_size"], summary["counts"]
    copied = sum(counts[m] for m in KEPT_ROWS)
    return {"tokens": tokens, "copied": copied, "new": tokens - copied}


def _tokenizer_digest(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return hashlib.sha256("".join(corpus_sha256(p) for p in files).encode()).hexdigest()


def _base_init_tokenizer(cfg: AblateConfig) -> Path:
    """The tokenizer of base.init's model: tokenizer.base where given, else the model directory's own;
    refused in one line where it is not the model's (its size against the model's embedding rows) or
    the model's weights are not all there, before any stage runs."""
    from vikhr.adapt.safetensors_io import checkpoint_headers
    from vikhr.eval.runner import check_vocab
    from vikhr.tokenizer.load import TOKENIZER_FILES, holds_vocab_and_merges, load, resolve_tokenizer_file

    assert cfg.base.init is not None
    model_dir = Path(cfg.base.init)
    try:
        checkpoint_headers(model_dir)  # every shard present and whole (headers only)
    except VikhrError as e:
        raise VikhrError(f"config key base.init: {e}") from None
    if cfg.tokenizer.base is None:
        key, fix = "base.init", "name the model's tokenizer with tokenizer.base"
        if not any((model_dir / name).is_file() for name in TOKENIZER_FILES) and not (
            holds_vocab_and_merges(model_dir)  # resolve_tokenizer_file says how to make its tokenizer.json
        ):
            raise VikhrError(
                f"config key base.init: {model_dir} holds no {' or '.join(TOKENIZER_FILES)}: {fix}"
            )
        try:
            tokenizer = resolve_tokenizer_file(model_dir)
        except VikhrError as e:
            raise VikhrError(f"config key base.init: {e}") from None
    else:
        key, fix = "tokenizer.base", "name base.init's own tokenizer, or drop tokenizer.base to use it"
        tokenizer = require_file(cfg.tokenizer.base, "tokenizer.base")
    try:
        check_vocab(load(tokenizer), model_dir, fix)
    except VikhrError as e:
        raise VikhrError(f"config key {key}: {e}") from None
    return tokenizer


def _check_extendable(base_tok: Path, key: str) -> None:
    """The base tokenizer is one `vikhr tokenizer train --mode extend` extends (a byte-level BPE's
    tokenizer.json, or a SentencePiece .model with byte fallback and <unk> <s> </s> at 0-2): refused
    in one line before any stage runs, not by the tokenizer's training after the earlier grid's work
    is cleared."""
    from vikhr.tokenizer.hf_export import load_model_proto
    from vikhr.tokenizer.train import check_base_specials
    from vikhr.tokenizer.train_byte_bpe import byte_level_base

    try:
        if byte_level_base(base_tok) is None:
            check_base_specials(load_model_proto(base_tok), str(base_tok))
    except VikhrError as e:
        message = str(e).replace("--base-model ", "")  # the grid's base tokenizer, not a flag
        raise VikhrError(f"config key {key}: {message}") from None


def adapted_tokenizer_settings(cfg: AblateConfig, base_tok: Path, mode: Mode) -> TrainSettings:
    """How the adapted arms' tokenizer of `mode` is trained: replace and extend alike wherever a
    setting applies to both, so that arms compared across modes differ by the mode alone. A
    SentencePiece BPE (replace, and extend's Russian pool over a .model) lets pieces join letters and
    punctuation ("мир.", fewer Russian tokens: docs/benchmarks.md), where `vikhr tokenizer train` keeps
    Mistral's script splitting by default; a byte-level base's BPE has no such setting."""
    from vikhr.tokenizer.train import TrainSettings
    from vikhr.tokenizer.train_byte_bpe import byte_level_base

    t = cfg.tokenizer
    shared: dict[str, Any] = {"verify_lines_per_file": 200}  # the export's check: a grid's corpora are small
    if mode == "replace":
        return TrainSettings(vocab_size=t.vocab_size, split_by_script=False, **shared)
    if byte_level_base(base_tok) is None:
        shared["split_by_script"] = False
    return TrainSettings(mode="extend", base_model=str(base_tok), new_tokens=t.new_tokens, **shared)


def _chars(corpus: Path) -> int:
    from vikhr.jsonl import read_texts

    return sum(len(t) for t in read_texts(corpus))


class Ablation:
    """The grid's state: paths of what is shared, and the runs done so far."""

    def __init__(self, cfg: AblateConfig) -> None:
        from vikhr import assets

        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.work = self.out / "work"
        self.ru = require_file(cfg.data.ru_corpus or assets.RU_SAMPLE, "data.ru_corpus")
        self.en = require_file(cfg.data.en_corpus or assets.EN_SAMPLE, "data.en_corpus")
        # A file that is no tokenizer (or not base.init's), or runs too large for this machine, fail
        # here, before any work is removed.
        if cfg.base.init is None:
            self.base_tok = require_file(cfg.tokenizer.base or assets.MISTRAL_TOKENIZER, "tokenizer.base")
        else:
            self.base_tok = _base_init_tokenizer(cfg)
        if "extend" in cfg.adapted_modes():
            _check_extendable(self.base_tok, mode_key(cfg, "extend"))
        check_memory_here(cfg, base_vocab_size(cfg))
        self.bpc_of: dict[Path, dict[str, float]] = {}
        self.starts: dict[tuple[str, ...], tuple[Path, Path, dict[str, float]]] = {}
        self.adapted_tok: dict[str, Path] = {}  # by mode: the adapted tokenizers trained
        self.blend: dict[str, list[tuple[str, str, float]]] = {}  # by tokenizer: base, or a mode
        self.chars_per_token: dict[str, float] = {}

    # -- stage helpers -------------------------------------------------------------------------
    def _train(
        self, run_dir: Path, blend: list[tuple[str, str, float]], vocab: int, steps: int, **kw: Any
    ) -> Path:
        from vikhr.train.checkpoint import find_checkpoint
        from vikhr.train.trainer import run as train

        try:
            train(trainer_config(self.cfg, run_dir, blend, vocab, steps, **kw))
        except RunStopped as e:
            e.hint = "`vikhr ablate --resume` with the same config continues the grid from that step"
            raise
        ckpt = find_checkpoint(run_dir)
        if ckpt is None:
            raise VikhrError(f"{run_dir}: training left no checkpoint")
        return ckpt

    def _bpc(self, hf_dir: Path, tokenizer: Path) -> dict[str, float]:
        """Held-out RU and EN bits per character of an HF model (each model loaded and evaluated once)."""
        from vikhr.demo import bits_per_char

        if hf_dir in self.bpc_of:
            return self.bpc_of[hf_dir]
        held = {"ru": self.ru_held, "en": self.en_held}
        c = self.cfg
        self.bpc_of[hf_dir] = bits_per_char(
            hf_dir, tokenizer, held, c.data.eval_docs, c.train.seq_len, c.train.device
        )
        return self.bpc_of[hf_dir]

    def _tokenize(self, name: str, corpus: Path, tokenizer: Path) -> tuple[str, int]:
        from vikhr.data import preprocess

        # A tokenizer.json (a byte-level BPE's: Llama 3, Qwen2.5) is read as Megatron's
        # HuggingFaceTokenizer reads it, with its post-processor (a BOS where it adds one).
        kind = "HuggingFaceTokenizer" if tokenizer.suffix == ".json" else "SentencePieceTokenizer"
        s = preprocess([corpus], self.work / "data" / name, tokenizer, tokenizer_type=kind, append_eod=True)
        return s.outputs[0], s.tokens

    # -- shared preparation --------------------------------------------------------------------
    def prepare(self) -> None:
        from vikhr.demo import split_heldout

        corpora = self.work / "corpora"
        corpora.mkdir(parents=True)
        self.ru_train, self.ru_held, ru_held_docs = split_heldout(self.ru, corpora, "ru")
        self.en_train, self.en_held, en_held_docs = split_heldout(self.en, corpora, "en")
        for lang, found in (("RU", ru_held_docs), ("EN", en_held_docs)):
            if found < self.cfg.data.eval_docs:
                print(
                    f"warning: data.eval_docs is {self.cfg.data.eval_docs}, but the {lang} corpus keeps "
                    f"{found} held-out document(s): bits per character are measured on those",
                    file=sys.stderr,
                )
        self.train_tokenizers(self.cfg.adapted_modes())

    def train_tokenizers(self, modes: list[Mode]) -> None:
        """Train the adapted tokenizers of `modes` on the training split, each into work/tokenizer/<mode>."""
        from vikhr.tokenizer.load import resolve_tokenizer_file
        from vikhr.tokenizer.train import train_tokenizer

        for mode in modes:
            tok_dir = self.work / "tokenizer" / mode
            settings = adapted_tokenizer_settings(self.cfg, self.base_tok, mode)
            train_tokenizer([self.ru_train, self.en_train], tok_dir, settings)
            # A SentencePiece tokenizer's .model; an extended byte-level BPE's tokenizer.json
            self.adapted_tok[mode] = resolve_tokenizer_file(tok_dir)

    def tokenizer(self, label: str) -> Path:
        """The tokenizer file of "base" or of an adapted tokenizer's mode."""
        return self.base_tok if label == "base" else self.adapted_tok[label]

    def base_model(self) -> bool:
        """The base's HF model: base.init's, or the English base's export from the cache or trained
        now; True when it was cached."""
        from vikhr.convert import megatron_to_hf

        if self.cfg.base.init is not None:
            self.base_hf = Path(self.cfg.base.init)
            return False
        digest = self.digests
        key = self.cfg.base_key(digest["en"], digest["base_tokenizer"])
        cache = Path(self.cfg.cache_dir) / f"base-{key}"
        self.base_hf = cache / BASE_HF
        self.base_vocab = base_vocab_size(self.cfg)
        if (self.base_hf / "config.json").is_file():
            return True
        en_all, _ = self._tokenize("base-en", self.en_train, self.base_tok)
        b = self.cfg.base
        # Built beside the cache entry and renamed into place: an interrupted run leaves no entry, and
        # no cache_dir it made.
        created = missing_dirs(cache.parent)
        try:
            with output_dir(cache) as tmp:
                ckpt = self._train(
                    tmp / "run", [("en", en_all, 1.0)], self.base_vocab, b.steps, lr=b.lr, seed=b.seed
                )
                megatron_to_hf(ckpt, tmp / BASE_HF, tokenizer=self.base_tok)
                record = {"key": key, "config": self.cfg.model_dump()}
                (tmp / "key.json").write_text(json.dumps(record, indent=2))
        except WrittenMeanwhile:
            # Another grid trained the same base meanwhile: its entry serves this grid, as later ones.
            return True
        except BaseException:
            remove_empty_dirs(created)
            raise
        return False

    def continued_data(self, labels: list[str]) -> None:
        """RU+EN training sets under the tokenizers of `labels` ("base" or a mode); chars per token of
        the blend for each."""
        share = self.cfg.train.ru_share
        ru_chars, en_chars = _chars(self.ru_train), _chars(self.en_train)
        for label in labels:
            tok = self.tokenizer(label)
            ru, ru_tokens = self._tokenize(f"{label}-ru", self.ru_train, tok)
            en, en_tokens = self._tokenize(f"{label}-en", self.en_train, tok)
            self.blend[label] = [("ru", ru, share), ("en", en, 1 - share)]
            # Samples are drawn by token share, so the blend's chars/token is the weighted mean.
            self.chars_per_token[label] = share * ru_chars / ru_tokens + (1 - share) * en_chars / en_tokens

    # -- the grid's state, for --resume ---------------------------------------------------------
    @functools.cached_property
    def digests(self) -> dict[str, str]:
        """The inputs by content (each file read once: the grid's settings and the base's key use them)."""
        return {
            "ru": corpus_sha256(self.ru),
            "en": corpus_sha256(self.en),
            "base_tokenizer": _tokenizer_digest(self.base_tok),
        }

    def settings(self) -> dict[str, Any]:
        d = self.digests
        init = self.cfg.base.init
        files = base_init_files(Path(init)) if init is not None else None
        return self.cfg.grid_settings(d["ru"], d["en"], d["base_tokenizer"], files)

    def save_state(self, settings: dict[str, Any]) -> None:
        """Record the shared preparation (written last: its presence means the preparation is whole)."""
        self.state = {
            "settings": settings,
            "prepared": self._prepared(),
            "base_cached": None,
            "made_with": [provenance()],
        }
        self._write_state()

    def _prepared(self) -> dict[str, Any]:
        rel = self._relative
        return {
            "ru_train": rel(self.ru_train),
            "ru_held": rel(self.ru_held),
            "en_train": rel(self.en_train),
            "en_held": rel(self.en_held),
            "tokenizers": {mode: rel(path) for mode, path in self.adapted_tok.items()},
            "blend": {
                k: [[lang, rel(prefix), share] for lang, prefix, share in v] for k, v in self.blend.items()
            },
            "chars_per_token": self.chars_per_token,
        }

    def add_tokenizers(self, settings: dict[str, Any]) -> list[Mode]:
        """Train the adapted tokenizers that arms added since the preparation use, with their data, and
        record them and their sizes (`settings`: the grid's now) in the state; the tokenizers trained
        before, and the runs made with them, stay. Returns the modes trained."""
        missing = [m for m in self.cfg.adapted_modes() if m not in self.adapted_tok]
        if not missing:
            return []
        names = f"{' and '.join(missing)} tokenizer{'s' * (len(missing) > 1)}"
        print(
            f"vikhr ablate: --resume: training the {names} that arms added since use; the earlier "
            "tokenizers and runs are kept",
            file=sys.stderr,
        )

        def remove_partial() -> None:  # an interrupted or refused attempt's files
            for mode in missing:
                for made in (self.adapted_tok, self.blend, self.chars_per_token):
                    made.pop(mode, None)
                shutil.rmtree(self.work / "tokenizer" / mode, ignore_errors=True)
                for path in (self.work / "data").glob(f"{mode}-*"):  # its datasets, <mode>-ru_text_document
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

        remove_partial()
        try:
            self.train_tokenizers(missing)
            self.continued_data(list(missing))
        except BaseException:
            remove_partial()
            raise
        recorded = self.state["settings"]["tokenizer"]
        recorded |= {SIZE_KEYS[m]: settings["tokenizer"][SIZE_KEYS[m]] for m in missing}
        self.state["prepared"] = self._prepared()
        self._write_state()
        return missing

    def _write_state(self) -> None:
        write_text(self.work / GRID_STATE, json.dumps(self.state, indent=2, ensure_ascii=False))

    def base_was_cached(self, cached_now: bool) -> bool:
        """Whether the grid's base came from the cache, as its first run found it (a resumed grid
        always finds the base cached, yet its report is the first run's)."""
        first = self.state.get("base_cached")
        if first is None or not cached_now:  # the first run, or the base trained again now
            self.state["base_cached"] = first = cached_now
            self._write_state()
        return first

    def restore(self, settings: dict[str, Any]) -> bool:
        """Reload an earlier run's preparation from work/; False when there is none to reload."""
        path = self.work / GRID_STATE
        if not path.is_file():
            return False
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            _state_as_written_now(state)
            old, p = state["settings"], state["prepared"]
            trained = set(p["tokenizers"])
            changed = sorted(
                k for k in settings.keys() | old.keys() if k != "tokenizer" and settings.get(k) != old.get(k)
            )
            modes_now = self.cfg.adapted_modes()
            if not _tokenizers_kept(old.get("tokenizer"), settings["tokenizer"], trained, modes_now):
                changed = sorted([*changed, "tokenizer"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise VikhrError(
                f"{path}: not a record of a grid ({type(e).__name__}: {e}); "
                "run without --resume to start over"
            ) from None
        if changed:
            raise VikhrError(
                f"{path}: the earlier runs in this out_dir were made with other {', '.join(changed)} "
                "settings or data; run without --resume to start again, or give another out_dir"
            )
        self.state = state
        recorded = old["tokenizer"]
        if recorded["mode"] not in trained and recorded["mode"] != settings["tokenizer"]["mode"]:
            # No run was made with the recorded mode's tokenizer: the grid's runs from now on take this
            # one's, and a later --resume is held to it.
            recorded["mode"] = settings["tokenizer"]["mode"]
            self._write_state()
        self.ru_train, self.ru_held = self.work / p["ru_train"], self.work / p["ru_held"]
        self.en_train, self.en_held = self.work / p["en_train"], self.work / p["en_held"]
        self.adapted_tok = {mode: self.work / path for mode, path in p["tokenizers"].items()}
        self.blend = {
            k: [(lang, str(self.work / prefix), share) for lang, prefix, share in v]
            for k, v in p["blend"].items()
        }
        self.chars_per_token = p["chars_per_token"]
        self._record_provenance()
        return True

    def _record_provenance(self) -> None:
        """A resumed grid adds this run's code and libraries to the state's `made_with` where they
        differ from the last run's, and says so (its figures may differ from the earlier ones). A
        state written before grids recorded them starts its list with None: not recorded."""
        made_with = self.state.setdefault("made_with", [None])
        now = provenance()
        if made_with[-1] == now:
            return
        told = resume_note(made_with[-1], now, f"the grid in {self.work}")
        if told:
            print(f"vikhr ablate: --resume: note: {told}", file=sys.stderr)
        made_with.append(now)
        self._write_state()

    def prune_unrecorded_runs(self, trained: list[Arm]) -> list[Path]:
        """Remove what neither a result record nor an unfinished run of `trained` (which may carry
        on from its checkpoints) points to under work/runs: attempts of arms since renamed or
        changed, temporary directories of a kill. A finished run stays even when its arm left the
        grid: adding the arm back reuses it."""
        kept = {self._paths("train", a.run_key(), s, a.name)[1].name for s in self.cfg.seeds for a in trained}
        for record in (self.work / "results").glob("*.json"):
            try:
                hf = Path(json.loads(record.read_text(encoding="utf-8"))["hf"]).name
            except (ValueError, KeyError, TypeError):
                continue  # not a record (records are written whole): it keeps nothing
            kept |= {hf, hf.removesuffix("-hf")}
        runs = self.work / "runs"
        removed = [p for p in sorted(runs.iterdir()) if p.name not in kept] if runs.is_dir() else []
        for path in removed:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        return removed

    def _relative(self, path: str | Path) -> str:
        """A path under work/ relative to it (the state stays valid if out_dir moves)."""
        return str(Path(path).resolve().relative_to(self.work.resolve()))

    def _paths(self, kind: str, key: str, seed: int, name: str) -> tuple[Path, Path]:
        """(result record, run directory) of a run: named by what it runs, so a renamed or changed
        arm of a resumed grid never takes another run's files."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return (
            self.work / "results" / f"{kind}-{digest}-s{seed}.json",
            self.work / "runs" / f"{name}-{digest}-s{seed}",
        )

    def _save_result(self, path: Path, result: RunResult, hf: Path) -> None:
        record = {k: getattr(result, k) for k in (*_KEPT, "train_losses", "wall_train_s", "wall_eval_s")}
        record["hf"] = self._relative(hf)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(record, indent=1))

    def _load_result(
        self, path: Path, arm: Arm, seed: int, trained: Arm | None = None
    ) -> tuple[RunResult, Path] | None:
        """A finished run's figures and HF model, or None when it did not finish (or lost its model)."""
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            hf = self.work / record["hf"]
            result = RunResult(
                arm=arm,
                seed=seed,
                trained=trained,
                train_losses={int(k): float(v) for k, v in record["train_losses"].items()},
                wall_train_s=float(record["wall_train_s"]),
                wall_eval_s=float(record["wall_eval_s"]),
                **{k: record[k] for k in _KEPT},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # UnicodeDecodeError is a ValueError
            # A record is written whole (renamed into place): one that does not read was damaged
            # since. The run is redone, as one that never finished.
            print(f"warning: {path} is damaged ({type(e).__name__}: {e}); running it again", file=sys.stderr)
            return None
        if not (hf / "config.json").is_file():
            return None
        return result, hf

    # -- arms ----------------------------------------------------------------------------------
    def start(self, arm: Arm, seed: int) -> tuple[Path, Path, dict[str, float]]:
        """(Megatron start, HF start, its bpc) of an arm; shared by arms that start alike."""
        from vikhr.adapt import adapt_vocab
        from vikhr.convert import hf_to_megatron

        label = self.cfg.tokenizer_of(arm)
        if label == "base":
            key: tuple[str, ...] = ("base",)
        else:
            key = (label, arm.init, *([str(seed)] if arm.init == "random" else []))
        if key not in self.starts:
            name = "-".join(key)
            hf = self.base_hf
            if label != "base":
                hf = self.work / "starts" / f"{name}-hf"
                summary = adapt_vocab(
                    self.base_hf,
                    self.base_tok,
                    self.tokenizer(label),
                    hf,
                    init=arm.init,
                    seed=seed,
                    show_progress=False,
                )
                rows = self.state.setdefault("adapted_rows", {})
                if label not in rows:  # the same for every init: kept for the report
                    rows[label] = adapted_rows(summary)
                    self._write_state()
            meg = hf_to_megatron(hf, self.work / "starts" / f"{name}-megatron")
            self.starts[key] = (meg, hf, self._bpc(hf, self.tokenizer(label)))
        return self.starts[key]

    def steps_of(self, arm: Arm) -> int:
        """train.steps; for a base arm of budget chars, the steps that see the characters of
        tokenizer.mode's adapted tokenizer's train.steps."""
        steps = self.cfg.train.steps
        if arm.budget == "chars" and arm.tokenizer == "base":
            ratio = self.chars_per_token[self.cfg.tokenizer.mode] / self.chars_per_token["base"]
            return max(1, round(steps * ratio))
        return steps

    def train_arm(self, arm: Arm, seed: int) -> tuple[RunResult, Path]:
        from vikhr.convert import megatron_to_hf
        from vikhr.train.monitor import read_metrics

        record, run_dir = self._paths("train", arm.run_key(), seed, arm.name)
        if (finished := self._load_result(record, arm, seed)) is not None:
            return finished
        hf_dir = run_dir.with_name(run_dir.name + "-hf")
        # An interrupted attempt's files: its checkpoints carry the run on when it saved along the
        # way (the trainer resumes from the last whole one); otherwise the run starts again.
        unfinished = [hf_dir] if self.cfg.train.save_every else [run_dir, hf_dir]
        for path in unfinished:
            shutil.rmtree(path, ignore_errors=True)
        meg, start_hf, start_bpc = self.start(arm, seed)
        label = self.cfg.tokenizer_of(arm)
        tok = self.tokenizer(label)
        vocab = int(json.loads((start_hf / "config.json").read_text())["vocab_size"])
        steps = self.steps_of(arm)
        t0 = time.perf_counter()
        ckpt = self._train(
            run_dir,
            self.blend[label],
            vocab,
            steps,
            init=str(meg),
            kl_weight=arm.kl_weight,
            kl_direction=arm.kl_direction,
            seed=seed,
        )
        wall_train = time.perf_counter() - t0
        hf = megatron_to_hf(ckpt, hf_dir, tokenizer=tok)
        t0 = time.perf_counter()
        bpc = self._bpc(hf, tok)
        wall_eval = time.perf_counter() - t0
        train_rows, _ = read_metrics(run_dir)
        tokens = steps * self.cfg.train.global_batch * self.cfg.train.seq_len
        result = RunResult(
            arm=arm,
            seed=seed,
            steps=steps,
            tokens_seen=tokens,
            chars_seen=round(tokens * self.chars_per_token[label]),
            ru_bpc_start=start_bpc["ru"],
            en_bpc_start=start_bpc["en"],
            ru_bpc=bpc["ru"],
            en_bpc=bpc["en"],
            # Cross-entropy, not the optimised CE + λ·KL: the arms' curves then measure the same thing.
            train_losses={s: float(r["ce"]) for s, r in sorted(train_rows.items())},
            wall_train_s=wall_train,
            wall_eval_s=wall_eval,
        )
        self._save_result(record, result, hf)
        return result, hf

    def merge_arm(self, arm: Arm, seed: int, source: RunResult, trained_hf: Path) -> RunResult:
        from vikhr.merge.checkpoint import merge_checkpoints
        from vikhr.merge.schedule import Schedule

        assert arm.slerp_t is not None
        # The source's figures are in the key: a source trained again (its model lost) is a new merge.
        record, run_dir = self._paths(
            "merge",
            json.dumps([source.arm.run_key(), arm.slerp_t, source.ru_bpc, source.en_bpc]),
            seed,
            arm.name,
        )
        if (finished := self._load_result(record, arm, seed, trained=source.arm)) is not None:
            return finished[0]
        _, start_hf, _ = self.start(source.arm, seed)
        out = run_dir.with_name(run_dir.name + "-hf")
        shutil.rmtree(out, ignore_errors=True)  # an interrupted attempt's merge
        merge_checkpoints(
            start_hf, trained_hf, out, Schedule(default=(arm.slerp_t,)), method="slerp", show_progress=False
        )
        t0 = time.perf_counter()
        bpc = self._bpc(out, self.tokenizer(self.cfg.tokenizer_of(arm)))
        result = RunResult(
            arm=arm,
            seed=seed,
            steps=source.steps,
            tokens_seen=source.tokens_seen,
            chars_seen=source.chars_seen,
            ru_bpc_start=source.ru_bpc_start,
            en_bpc_start=source.en_bpc_start,
            ru_bpc=bpc["ru"],
            en_bpc=bpc["en"],
            trained=source.arm,
            wall_eval_s=time.perf_counter() - t0,
        )
        self._save_result(record, result, out)
        return result


# What a grid writes in out_dir/work (and a killed one may have left part of).
WORK_ENTRIES = {GRID_STATE, "corpora", "data", "results", "runs", "starts", "tokenizer"}


def _check_is_grid_work(work: Path) -> None:
    """A fresh run removes out_dir/work: only when it holds nothing but what a grid writes."""
    foreign = sorted(p.name for p in work.iterdir() if p.name not in WORK_ENTRIES)
    if foreign:
        raise VikhrError(
            f"{work} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, not written by an "
            "ablation: a fresh run would delete it (give the config another out_dir)"
        )


def _remove_earlier_report(out: Path) -> None:
    """A fresh grid removes the report of the one whose work/ it removes, as it removes its runs:
    stopped before its end, it left that report beside its own emptied work/, to be read as its own.
    Where out_dir holds no grid's work/, files of those names are not known to be a grid's report."""
    found = [out / name for name in REPORT_FILES if (out / name).is_file()]
    for path in found:
        path.unlink()
    if found:
        names = ", ".join(p.name for p in found)
        print(
            f"vikhr ablate: removed the earlier grid's report from {out} ({names}); this grid writes its "
            "own when it ends",
            file=sys.stderr,
        )


def run_ablation(cfg: AblateConfig, show_progress: bool = True, resume: bool = False) -> AblationResult:
    """Run every arm × seed of `cfg`; writes work files under cfg.out_dir/work and returns the figures.

    resume: reuse the preparation and the finished runs an earlier run of the same grid settings
    left in out_dir/work (VikhrError when its settings or data differ); otherwise start clean.
    """
    from vikhr.progress_bar import progress_bar
    from vikhr.runtime.megatron import import_megatron_core

    import_megatron_core()
    ab = Ablation(cfg)
    trained = [a for a in cfg.arms if a.slerp_of is None]
    merged = [a for a in cfg.arms if a.slerp_of is not None]
    settings = ab.settings()
    if not (resume and ab.restore(settings)):
        if resume:
            print(
                f"vikhr ablate: --resume: no earlier run of this grid in {ab.work}; starting it",
                file=sys.stderr,
            )
        if ab.work.exists():
            _check_is_grid_work(ab.work)
            finished = len(list((ab.work / "results").glob("*.json")))
            if finished and not resume:
                print(
                    f"vikhr ablate: starting the grid over; {ab.work} held {finished} finished run(s) "
                    "of an earlier one (`vikhr ablate --resume` reuses them when its settings match)",
                    file=sys.stderr,
                )
            shutil.rmtree(ab.work)  # a fresh run starts clean; the base model lives in the cache
            _remove_earlier_report(ab.out)
        try:
            ab.prepare()
            ab.continued_data(["base", *ab.adapted_tok])
        except VikhrError:  # a refused corpus or tokenizer leaves no half-prepared grid
            shutil.rmtree(ab.work, ignore_errors=True)
            raise
        ab.save_state(settings)
    else:
        ab.add_tokenizers(settings)
        removed = ab.prune_unrecorded_runs(trained)
        if removed:
            print(
                f"vikhr ablate: --resume: removed {len(removed)} unfinished run "
                f"director{'y' if len(removed) == 1 else 'ies'} under {ab.work / 'runs'}",
                file=sys.stderr,
            )
    shutil.rmtree(ab.work / "starts", ignore_errors=True)  # rebuilt on demand (cheap, deterministic)
    base_cached = ab.base_was_cached(ab.base_model())
    base_bpc = ab._bpc(ab.base_hf, ab.base_tok)
    runs: list[RunResult] = []
    with progress_bar(total=len(cfg.seeds) * len(cfg.arms), desc="arms", show=show_progress) as bar:
        for seed in cfg.seeds:
            done: dict[str, tuple[RunResult, Path]] = {}
            by_name: dict[str, tuple[RunResult, Path]] = {}
            for arm in trained:
                key = arm.run_key()
                if key not in done:
                    done[key] = ab.train_arm(arm, seed)
                result, hf = done[key]
                by_name[arm.name] = (result, hf)
                runs.append(_renamed(result, arm))
                bar.update()
            for arm in merged:
                assert arm.slerp_of is not None
                source, hf = by_name[arm.slerp_of]
                runs.append(ab.merge_arm(arm, seed, source, hf))
                bar.update()
    order = {a.name: i for i, a in enumerate(cfg.arms)}
    runs.sort(key=lambda r: (order[r.arm.name], r.seed))
    # The figures of the tokenizers this grid uses, as a run from the start would give them: a resumed
    # grid keeps the tokenizers of arms removed since, and trains those of added ones last.
    labels = ["base", *cfg.adapted_modes()]
    chars_per_token = {label: ab.chars_per_token[label] for label in labels}
    rows = {mode: r for mode, r in ab.state.get("adapted_rows", {}).items() if mode in labels}
    return AblationResult(cfg, base_bpc, base_cached, chars_per_token, runs, rows, ab.state["made_with"])


@contextlib.contextmanager
def grid_lock(out_dir: str | Path) -> Iterator[bool]:
    """One grid at a time in `out_dir`: a fresh run empties out_dir/work, a resumed one prunes it,
    and both write the report there. A second grid is refused in one line naming the first. A grid
    that fails before it wrote anything there (a corpus, a tokenizer or the memory refused) leaves no
    out_dir it made."""
    out = Path(out_dir)
    created = missing_dirs(out)
    out.mkdir(parents=True, exist_ok=True)
    busy = (
        f"out_dir {out} is in use by another ablation grid ({{holder}}); wait for it to end, or give "
        "this config another out_dir"
    )
    try:
        with exclusive(out / ".ablate.lock", busy, remove=True) as held:
            yield held
    except BaseException:
        remove_empty_dirs(created)
        raise


def _state_as_written_now(state: dict[str, Any]) -> None:
    """A grid state (grid.json) an earlier vikhr wrote, in the layout written now, so that `--resume`
    finds its runs (their keys are the same):
    - written before tokenizer.mode and base.init existed, its settings record neither: its adapted
      tokenizer was a new one (replace) and its base pre-trained, as such a config gives now;
    - written before a grid could compare tokenizers, its one adapted tokenizer, its blend, chars per
      token and rows are named "new_tok" and "adapted": they are those of the mode it records;
    - written when the vikhr release was a setting (a resume by another was refused), its settings
      name it: it moves to `made_with` (a state written before `made_with` existed starts it with a
      record of the release alone), so that a resume by another release notes it and goes on."""
    settings, prepared = state["settings"], state["prepared"]
    release = settings.pop("vikhr", None)
    if isinstance(release, str) and "made_with" not in state:
        state["made_with"] = [{"vikhr": release}]
    if isinstance(settings.get("tokenizer"), dict):
        settings["tokenizer"].setdefault("mode", "replace")
    if isinstance(settings.get("base"), dict):
        settings["base"].setdefault("init", None)
    if "new_tok" in prepared:
        mode = settings["tokenizer"]["mode"]
        prepared["tokenizers"] = {mode: prepared.pop("new_tok")}
        for by_label in (prepared["blend"], prepared["chars_per_token"]):
            if "adapted" in by_label:
                by_label[mode] = by_label.pop("adapted")
        if "tokens" in state.get("adapted_rows", {}):
            state["adapted_rows"] = {mode: state["adapted_rows"]}


def _tokenizers_kept(recorded: Any, now: dict[str, Any], trained: set[str], modes_now: list[Mode]) -> bool:
    """Whether the tokenizers a grid's state records (`recorded`, those of modes `trained`) serve the
    grid's settings `now` (its arms' adapted tokenizers: `modes_now`): the same base tokenizer, the
    same size for each trained one the grid still uses, and the same mode where it matters. A
    tokenizer it adds is trained on resume; one no arm uses any more stays, at its recorded size, for
    the finished runs made with it.

    The mode is what `adapted` arms (and a base arm's budget chars) take, and an `adapted` arm's run
    is found by a key without it: it must stay where runs were made with the recorded mode's
    tokenizer (it was trained) and the grid has arms that could take another's. A grid of
    base-tokenizer arms alone (at equal compute) runs nothing that depends on it."""
    if not isinstance(recorded, dict):
        return False
    used = [SIZE_KEYS[m] for m in SIZE_KEYS if m in trained and SIZE_KEYS[m] in now]
    mode = ["mode"] if modes_now and recorded.get("mode") in trained else []
    return all(recorded.get(k) == now[k] for k in ("base", *mode, *used))


def _renamed(result: RunResult, arm: Arm) -> RunResult:
    """The shared run's figures under this arm's name (equal run keys train once per seed)."""
    return dataclasses.replace(result, arm=arm)
