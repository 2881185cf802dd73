"""The trainer: continued pre-training with CE + λ·KL(P_model ‖ P_ref), and SFT, on megatron-core.

Read it top to bottom. `run` checks the whole config, every dataset (`check_data`) and the
checkpoint to resume from before anything is allocated, joins the job
(`vikhr.runtime.distributed.distributed_env`: process groups, megatron's TP/DP groups, seeds),
sets up a `Trainer` (data, model, frozen reference, DDP, optimizer, then the state of the
latest checkpoint if there is one), and calls `Trainer.train`: one `train_step` per optimizer
step, `evaluate` and `save` at their intervals.

The loss is a plug-in: a `LossFn` maps this rank's vocabulary-parallel logits (and the frozen
reference's, when kl.weight > 0) and the labels to the micro-batch's loss and the terms to log.
The default is `CrossEntropyKL`, the paper's objective. Instruction tuning is the same trainer
with `data.kind: sft` (chats with an assistant-only loss mask, vikhr.sft.data): the labels carry
the mask, so the loss needs no change. `pretrain_vikhr.py` (under torchrun) and `vikhr pretrain`
/ `vikhr sft train` (one process) reach `run` through `vikhr.train.cli`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import signal
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from vikhr import atomic
from vikhr.convert.hf_tokenizer import (
    DATA_TOKENIZER,
    Recorded,
    RecordedTokenizer,
    data_tokenizer,
    recorded_in_lineage,
    same_template,
    template_label,
)
from vikhr.convert.lineage import INHERITED, carry_tokenizers
from vikhr.data.indexed import IndexedReader, ValidationRecord
from vikhr.data.indexed import validate as validate_dataset
from vikhr.errors import RunStopped, VikhrError, require_writable_dir, same_on_every_process
from vikhr.model import build_gpt_model, resolve_attention
from vikhr.model.attention import document_attention_mask, segments_from_eod
from vikhr.ops import cross_entropy_kl
from vikhr.ops.build import require_cuda_toolkit, require_writable_cache_dir
from vikhr.provenance import PROVENANCE, provenance, resume_note
from vikhr.runtime.distributed import DistEnv, distributed_env, require_shared_dir, uses_cuda
from vikhr.sft.data import build_sft_datasets
from vikhr.sft.layout import sft_datasets
from vikhr.train import checkpoint
from vikhr.train.config import (
    INIT_PRESET,
    DataSection,
    KLSection,
    OptimSection,
    TrainConfig,
    TrainSection,
    changed_settings,
    doubtful_settings,
    validate,
)
from vikhr.train.data import (
    IGNORE_INDEX,
    Batch,
    Datasets,
    build_pretrain_datasets,
    collate,
    split_part_tokens,
    step_micro_batches,
)
from vikhr.train.index_cache import check_index_cache
from vikhr.train.memory import check_fits, memory_here
from vikhr.train.monitor import Monitor, peak_flops, train_flops_per_token
from vikhr.train.run_lock import run_lock
from vikhr.train.stop import RunStop, SignalledInSetup, Stop

# --------------------------------------------------------------------------- the loss, pluggable


class LossTerms(NamedTuple):
    """What a loss gives for one micro-batch."""

    loss: torch.Tensor  # scalar to differentiate: the mean over the micro-batch's labelled tokens
    metrics: dict[str, torch.Tensor]  # detached scalars (means over the same tokens), logged per step


class LossFn(Protocol):
    """logits [N, V_pad/TP] of this TP rank, the reference's (or None), labels [N] -> LossTerms.

    Labels are IGNORE_INDEX where a token does not count (SFT prompts, padding); the trainer
    weighs micro-batches by their labelled tokens, so every token of a global batch counts alike.
    """

    def __call__(
        self, logits: torch.Tensor, reference_logits: torch.Tensor | None, labels: torch.Tensor
    ) -> LossTerms: ...


class CrossEntropyKL:
    """CE + λ·KL between the model and the frozen reference (the fused vikhr.ops kernel), over
    the vocabulary-parallel logits; without a KL section, plain CE (validation).

    The kernel writes the gradient over the logits (nothing reads them after the loss; autograd
    raises if a layer had saved them): no second N×V buffer."""

    def __init__(self, vocab_size: int, tp_group: Any, kl: KLSection | None = None) -> None:
        self.vocab_size, self.tp_group = vocab_size, tp_group
        self.kl = kl or KLSection()
        # The factor the caller multiplies the loss by before backward (folded into the gradient).
        self.grad_scale = 1.0

    def __call__(
        self, logits: torch.Tensor, reference_logits: torch.Tensor | None, labels: torch.Tensor
    ) -> LossTerms:
        out = cross_entropy_kl(
            logits,
            reference_logits,
            labels,
            kl_weight=self.kl.weight,
            kl_direction=self.kl.direction,
            temperature=self.kl.temperature,
            valid_vocab_size=self.vocab_size,
            process_group=self.tp_group,
            inplace_backward=True,
            grad_scale=self.grad_scale,
        )
        # At λ = 0 the kernel computes no KL (its kl is a placeholder 0): logged, it would pass for one.
        return LossTerms(out.loss, {"ce": out.ce, "kl": out.kl} if self.kl.weight > 0 else {"ce": out.ce})


def attention_mask_for(batch: Batch, data: DataSection, sliding_window: int | None) -> torch.Tensor | None:
    """The block-diagonal causal mask of `data.isolate_documents`, else None (plain causal)."""
    if not data.documents_isolated():
        return None
    segments = batch.segments
    if segments is None:  # pre-training windows: documents end with data.eod_id
        segments = segments_from_eod(batch.tokens, data.eod_id)
    return document_attention_mask(segments, sliding_window)


def forward_loss(
    model: torch.nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    reference: torch.nn.Module | None = None,
    attention_mask: torch.Tensor | None = None,
) -> LossTerms:
    """One micro-batch through the model (and, without gradient, the reference) into `loss_fn`."""
    tokens = batch.tokens
    b, s = tokens.shape
    position_ids = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
    logits = model(tokens, position_ids, attention_mask=attention_mask)  # [b, s, V_pad/TP]
    reference_logits = None
    if reference is not None:
        with torch.no_grad():
            reference_logits = reference(tokens, position_ids, attention_mask=attention_mask)
            reference_logits = reference_logits.reshape(b * s, -1)
    return loss_fn(logits.reshape(b * s, -1), reference_logits, batch.labels.reshape(-1))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of 0-based optimizer step `step`: linear warm-up, then cosine/linear decay to
    min_lr, constant, or warmup-stable-decay (Megatron-LM's WSD: held, then decayed over the last
    `optim.decay_steps` steps in the shape `optim.wsd_shape`)."""
    o, total = cfg.optim, cfg.train.steps
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.decay == "constant" or total <= o.warmup_steps:
        return o.lr
    if o.decay == "wsd":
        length = o.decay_steps or max(1, round(0.2 * (total - o.warmup_steps)))
        if step < total - length:
            return o.lr
        progress = min(1.0, (step - (total - length)) / length)
        return o.min_lr + (o.lr - o.min_lr) * _WSD_SHAPES[o.wsd_shape](progress)
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    if o.decay == "linear":
        return o.min_lr + (o.lr - o.min_lr) * (1.0 - progress)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_jump(saved: dict[str, Any], cfg: TrainConfig, step: int) -> str | None:
    """What a resume at `step` (optimizer steps done) with `cfg` does to the learning rate where its
    schedule gives the next step another rate than the one the checkpoint's config (`saved`) would
    (by more than 5 %); None otherwise. A wsd run extended after its decay began climbs back to
    optim.lr (extend it from a step before the decay)."""
    try:
        before = cfg.model_copy(
            update={
                "optim": OptimSection.model_validate(saved["optim"]),
                "train": TrainSection.model_validate(saved["train"]),
            }
        )
    except (KeyError, TypeError, ValueError):  # a checkpoint of an older trainer: nothing to compare
        return None
    was, now = lr_at(step, before), lr_at(step, cfg)
    if abs(now - was) <= 0.05 * max(was, now):
        return None
    said = (
        f"step {step + 1} trains at lr {now:.3g}, where the schedule it was saved with gives {was:.3g} "
        f"(step {step}: {lr_at(step - 1, before):.3g})"
    )
    o = before.optim
    if o.decay == "wsd" and was < o.lr and step >= o.warmup_steps:
        said += (
            "; its wsd decay had begun: extend a wsd run from a checkpoint saved before its decay "
            "(checkpoint.resume=STEP_DIR)"
        )
    return said


# The fraction of (lr - min_lr) kept at decay progress p in [0, 1] (Megatron-LM's WSD decay styles).
_WSD_SHAPES = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "minus_sqrt": lambda p: 1.0 - math.sqrt(p),
    "exponential": lambda p: 2.0 * 0.5**p - 1.0,
}


def index_cache_dir(cfg: TrainConfig) -> str:
    """Where megatron-core keeps its dataset indices (pre-training data)."""
    return cfg.data.cache_dir or str(Path(cfg.checkpoint.dir) / "data-cache")


def build_datasets(cfg: TrainConfig, n_train: int) -> Datasets:
    """The train stream (`n_train` samples) and validation sets of `data.kind` (every rank calls it)."""
    if cfg.data.kind == "sft":
        return build_sft_datasets(cfg, n_train)
    return build_pretrain_datasets(cfg, index_cache_dir(cfg), n_train)


def train_samples(cfg: TrainConfig, step: int = 0, consumed: int = 0) -> int:
    """The train stream's length for a run at `step` that has read `consumed` samples: those,
    and the remaining steps' global batches (which a resume may have changed)."""
    return consumed + max(cfg.train.steps - step, 0) * cfg.train.global_batch


def check_data(cfg: TrainConfig) -> None:
    """Every dataset the run reads is whole and fits the model, and megatron's index cache holds
    plain arrays only (it unpickles what it finds there); VikhrError naming the dataset otherwise.

    Reads each `.bin` once (in Rust), and not again on a restart while it is unchanged: the largest
    token id of each is recorded in `<data cache>/data-check.json`. Every rank checks before the
    process group exists, so a bad file stops all of them alike and none is reading the cache while
    rank 0 rebuilds it.
    """
    vocab_size = cfg.model_shape().vocab_size
    cache = index_cache_dir(cfg)
    record = ValidationRecord(Path(cache) / "data-check.json")
    for i, entry in enumerate(cfg.data.train):
        key = f"config key data.train[{i}] ({entry.name})"
        if cfg.data.kind == "sft":
            text, mask = sft_datasets(entry.prefix)
            _check_dataset(key, text, vocab_size, "vikhr sft prepare", record)
            if _check_dataset(key, mask, None, "vikhr sft prepare", record) > 1:
                raise VikhrError(
                    f"{key}: {mask} holds values other than 0/1: not a loss mask (vikhr sft prepare)"
                )
        else:
            _check_dataset(key, entry.prefix, vocab_size, "vikhr data preprocess", record)
            share = entry.weight / sum(e.weight for e in cfg.data.train)
            _check_train_part(key, entry.prefix, cfg.data.split, share * _run_tokens(cfg))
            if cfg.data.documents_isolated():
                _check_document_ends(key, entry.prefix, cfg.data.eod_id)
    record.save()  # only once every dataset passed: a run refused at this point writes nothing
    if cfg.data.kind == "pretrain":
        # Before the process group: rank 0 is the one megatron-core builds the cache on.
        check_index_cache(cache, builder=os.environ.get("RANK", "0") == "0")


def _check_dataset(
    key: str, prefix: str, vocab_size: int | None, writer: str, record: ValidationRecord
) -> int:
    """`vikhr.data.indexed.validate` with the config key and the fix in its message; the max id."""
    try:
        info = validate_dataset(prefix, vocab_size=vocab_size, record=record)
    except VikhrError as e:
        fix = f" (write it again with {writer})" if str(e).startswith("invalid indexed dataset") else ""
        raise VikhrError(f"{key}: {e}{fix}") from None
    return info.max_token_id or 0


# More passes over a train part than this is a mistake (megatron-core would count the epochs one
# by one and index every document of each: a silent hang, then memory).
MAX_PASSES = 100_000
# In checkpoint.dir while a run is stopped unfinished (a signal, the time limit): why, and its status.
STOPPED_FILE = "stopped.json"


def _run_tokens(cfg: TrainConfig) -> int:
    """The tokens the run's train stream takes: steps × global batch × (sequence + its label)."""
    return cfg.train.steps * cfg.train.global_batch * (cfg.data.seq_len + 1)


def _check_train_part(key: str, prefix: str, split: str, needed: float) -> None:
    """megatron-core draws the train stream from the train part of data.split: it must hold a
    token, and not have to be read more than MAX_PASSES times for the `needed` tokens."""
    documents, tokens = split_part_tokens(prefix, split)
    if tokens[0] == 0:
        raise VikhrError(
            f"{key}: the train part of data.split {split!r} holds no token ({documents[0]} of the "
            f"dataset's {sum(documents)} documents): give the train part a larger share, or the "
            "dataset more documents"
        )
    if needed / tokens[0] > MAX_PASSES:
        raise VikhrError(
            f"{key}: train.steps × train.global_batch × (data.seq_len + 1) takes {needed:,.0f} tokens of "
            f"it, {needed / tokens[0]:,.0f} passes over its train part ({tokens[0]:,} tokens), more than "
            f"{MAX_PASSES:,}: give fewer steps or a smaller batch, or more data"
        )


def _check_document_ends(key: str, prefix: str, eod_id: int, samples: int = 64) -> None:
    """With data.isolate_documents a pre-training window is split where data.eod_id occurs: the
    documents must end with it, or nothing is isolated (checked on documents spread over the file)."""
    reader = IndexedReader(prefix)
    picked = (
        sorted({i * (len(reader) - 1) // max(samples - 1, 1) for i in range(samples)}) if len(reader) else []
    )
    ends = [doc[-1] for doc in map(reader.document, picked) if doc]
    others = [end for end in ends if end != eod_id]
    if others:
        common = max(set(others), key=others.count)
        raise VikhrError(
            f"{key}: data.isolate_documents splits documents at data.eod_id = {eod_id}, but {len(others)} "
            f"of {len(ends)} documents sampled from {prefix} end otherwise (most often with {common}): set "
            "data.eod_id to the id your tokenizer's EOS has, or write the dataset again with --append-eod"
        )


def _labelled(batch: Batch) -> int:
    return int((batch.labels != IGNORE_INDEX).sum())


# --------------------------------------------------------------------------- the run


def run(cfg: TrainConfig, loss_fn: LossFn | None = None) -> dict[str, Any]:
    """Train as configured; returns the final step and validation losses (on every rank)."""
    # Everything that can be checked is checked before a process group or a tensor exists.
    started = time.monotonic()  # checkpoint.stop_after_minutes counts the setup too
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    with same_on_every_process():
        validate(cfg, world_size=world_size)
    on_cuda = uses_cuda(cfg.parallel.device)
    resolve_attention(cfg.model.attention, on_cuda)  # a layer spec this machine has
    if on_cuda:  # not a failed build of the loss's CUDA kernels at the first step
        require_cuda_toolkit(f"config key parallel.device = {cfg.parallel.device}", "set parallel.device=cpu")
    # Not an out-of-memory error at the first step.
    check_fits(cfg, world_size, *memory_here(on_cuda), on_cuda=on_cuda)
    with same_on_every_process():  # the node's processes share its filesystem and environment
        require_writable_dir(cfg.checkpoint.dir, "checkpoint.dir")
        if cfg.data.cache_dir:
            require_writable_dir(cfg.data.cache_dir, "data.cache_dir")
        require_writable_cache_dir()  # the csrc ops are built (or locked) there when the model is built
        if cfg.kl.weight > 0 and cfg.kl.reference != "init":
            checkpoint.find_weights(cfg.kl.reference, "kl.reference")
    c = cfg.checkpoint
    with RunStop(c.save_on_signals, c.stop_after_minutes, started, in_setup=True) as run_stop:
        try:
            with run_lock(c.dir):  # before the checkpoint to resume is chosen
                return _locked_run(cfg, loss_fn, started, run_stop)
        except SignalledInSetup as e:
            raise _stopped_in_setup(cfg, e.signum) from None


def _stopped_in_setup(cfg: TrainConfig, signum: int) -> RunStopped:
    """A signal before the first step: said as a stop after one (status, `stopped.json`), with the
    step a resume starts from."""
    c, step = cfg.checkpoint, 0
    if c.resume != "never":
        with contextlib.suppress(VikhrError, OSError):  # the run's own error, if any, comes at its next start
            found = checkpoint.find_resumable(c.dir if c.resume == "auto" else c.resume)[0]
            step = checkpoint.step_of(found) if found is not None else 0
    stop = Stop(f"on {signal.Signals(signum).name}", 128 + signum)
    # By every rank signalled (one file, written whole): rank 0 may not have been.
    write_stopped_record(Path(c.dir), step, cfg.train.steps, stop)
    return RunStopped(
        f"stopped {stop.reason} before step {step + 1} of {cfg.train.steps}, in its setup "
        "(nothing new to save)",
        stop.status,
    )


def write_stopped_record(run_dir: Path, step: int, steps: int, stop: Stop) -> None:
    """`run_dir/stopped.json`: torchrun exits 1 whatever its ranks' status, so a job script reads this."""
    record = {"step": step, "steps": steps, "reason": stop.reason, "status": stop.status}
    atomic.write_text(run_dir / STOPPED_FILE, json.dumps(record) + "\n")


def _locked_run(
    cfg: TrainConfig, loss_fn: LossFn | None, started: float, run_stop: RunStop
) -> dict[str, Any]:
    # Each rank reads the same checkpoints and datasets before the process group exists: a refusal
    # is the same on every rank of a node (the run lock above is rank 0's alone).
    with same_on_every_process():
        resume_from, inherited, recorded_data, inherited_files = _check_start(cfg)
    p = cfg.parallel
    join_timeout = timedelta(minutes=p.join_timeout_minutes)
    with distributed_env(p.tensor, cfg.train.seed, p.device, join_timeout) as env:
        with same_on_every_process():  # the same on every rank: all see what each saw
            require_shared_dir(cfg.checkpoint.dir, "checkpoint.dir")
        result = Trainer(
            cfg, env, loss_fn, resume_from, started, inherited, recorded_data, inherited_files
        ).train(run_stop)
    release_memory()
    return result


def _check_start(
    cfg: TrainConfig,
) -> tuple[Path | None, dict[str, Any] | None, RecordedTokenizer | None, dict[str, bytes]]:
    """The checkpoint to resume (None: a fresh start), what the run's checkpoints record of its start's
    lineage (`_inherited`) and of the datasets' tokenizer, and the tokenizer files each checkpoint keeps
    a copy of, once every checkpoint and dataset the run reads is checked (warnings said)."""
    resume_from = None
    if cfg.checkpoint.resume != "never":
        where = cfg.checkpoint.dir if cfg.checkpoint.resume == "auto" else cfg.checkpoint.resume
        resume_from, damaged = checkpoint.find_resumable(where)
        if damaged is not None:
            checkpoint.warn(damaged)
        if resume_from is None and cfg.checkpoint.resume != "auto":
            raise checkpoint.no_checkpoint(
                "checkpoint.resume", where, ": give one, or checkpoint.resume=auto/never"
            )
    _check_start_checkpoints(cfg, resume_from)
    start = None  # what model.init's lineage records, for a run starting from it
    if cfg.model.init != "random" and (resume_from is None or _reference_is_init(cfg)):
        init_dir = checkpoint.find_weights(cfg.model.init, "model.init")
        if resume_from is None:
            start = recorded_in_lineage(init_dir, warn=False)
            _check_data_tokenizer(cfg, start.tokenizer, f"model.init ({cfg.model.init})", "model.init's")
    resumed = _resumed_tokenizer(resume_from)
    _check_data_tokenizer(cfg, resumed, f"the checkpoint resumed ({resume_from})", "the checkpoint's")
    inherited, inherited_files = _inherited(cfg, resume_from, start), {}
    if inherited is not None:  # each checkpoint keeps a copy of the tokenizer its record names
        inherited, inherited_files = carry_tokenizers(inherited, resume_from or Path())
    check_data(cfg)  # last: it records what it checked in the data cache
    # What the datasets record of their tokenizer (checked alike above): each checkpoint keeps it.
    recorded_data = data_tokenizer(cfg.to_dict(), Path.cwd(), warn=False)
    # Once the run will start: an error stays the only line.
    for told in [*cfg.notes(), *_made_otherwise(resume_from)]:
        checkpoint.note(told)
    for doubt in [*doubtful_settings(cfg), *_template_changed(resume_from, resumed, recorded_data)]:
        checkpoint.warn(doubt)
    return resume_from, inherited, recorded_data, inherited_files


def _made_otherwise(resume_from: Path | None) -> list[str]:
    """The note that the checkpoint resumed was saved by other code or libraries than this run's."""
    if resume_from is None:
        return []
    recorded = checkpoint.read_meta(resume_from).get(PROVENANCE)  # absent in older checkpoints
    told = resume_note(recorded, provenance(), f"the checkpoint resumed ({resume_from})")
    return [told] if told else []


def release_memory() -> None:
    """Free a finished run's model, reference, optimizer and datasets now, and the CUDA cache's
    blocks: megatron's DDP and the model it wraps refer to each other (gradient hooks), so they
    waited for Python's cycle collector, and a next run in the same process (`vikhr ablate`'s arms:
    a 7B model, its fp32 gradient buffers and Adam state) was allocated beside them."""
    gc.collect()
    if torch.cuda.is_initialized():  # never initialises CUDA in a CPU run
        torch.cuda.empty_cache()


def _resume_key(cfg: TrainConfig) -> str:
    """The config key that chose the checkpoint a run resumes from, as its errors name it."""
    if cfg.checkpoint.resume == "auto":
        return "checkpoint.resume (auto: the latest step in checkpoint.dir)"
    return "checkpoint.resume"


def _check_start_checkpoints(cfg: TrainConfig, resume_from: Path | None) -> None:
    """Each checkpoint the run will read weights from is whole and of its model shape (`check_weights`):
    a damaged one or one of another model stops the start in one line naming its config key, before
    the data cache is built and a model allocated."""
    read = {_resume_key(cfg): resume_from} if resume_from is not None else {}
    if cfg.model.init != "random" and (resume_from is None or _reference_is_init(cfg)):
        read["model.init"] = checkpoint.find_weights(cfg.model.init, "model.init")
    if cfg.kl.weight > 0 and cfg.kl.reference != "init":
        read["kl.reference"] = checkpoint.find_weights(cfg.kl.reference, "kl.reference")
    expected = cfg.model.shape(resume_from).to_dict()
    for key, step_dir in read.items():
        checkpoint.check_weights(step_dir, expected, key, _shape_fix(cfg, resume_from, key))


def _shape_fix(cfg: TrainConfig, resume_from: Path | None, key: str) -> checkpoint.ShapeFix:
    """How a refusal of the checkpoint `key` names, of another model shape, says to fix it."""
    if resume_from is not None and key != _resume_key(cfg):  # a KL reference: the run's shape is set
        return "keep_shape"
    if key == "model.init" and cfg.model.preset != INIT_PRESET:  # the start, whose shape preset init takes
        return "offer_preset_init"
    return "match_it"


def _inherited(cfg: TrainConfig, resume_from: Path | None, start: Recorded | None) -> dict[str, Any] | None:
    """What each checkpoint of the run records of its start's lineage (meta.json `inherited`: the HF
    source's configs and the tokenizer, vikhr.convert.hf_tokenizer.Recorded), so that its export
    needs no other checkpoint: the resumed checkpoint's record, else found from model.init (`start`
    where already found). None where a resumed checkpoint of an older version has none and
    model.init is gone or unreadable (a resume needs it only as the KL reference): its export then
    walks the lineage, as before."""
    if resume_from is not None:
        saved = checkpoint.read_meta(resume_from).get(INHERITED)
        if isinstance(saved, dict):
            return saved
    if start is not None:
        return start.to_json()
    if cfg.model.init == "random":
        return {}
    try:
        init_dir = checkpoint.find_checkpoint(cfg.model.init)
        return recorded_in_lineage(init_dir, warn=False).to_json() if init_dir is not None else None
    except VikhrError:
        return None


def _dataset_tokenizers(cfg: TrainConfig) -> Iterator[tuple[str, str, str]]:
    """(config key, tokenizer file, its sha256) of each dataset of the blend that records them:
    `data preprocess`'s tokenization record, `sft prepare`'s `_sft.json`."""
    from vikhr.data.tokenization import read_record
    from vikhr.sft.layout import META_SUFFIX, read_sft_meta

    for i, entry in enumerate(cfg.data.train):
        key = f"config key data.train[{i}] ({entry.name})"
        try:
            if cfg.data.kind == "sft":
                meta = read_sft_meta(Path(entry.prefix + META_SUFFIX))
                if isinstance(meta.get("tokenizer"), str) and isinstance(meta.get("tokenizer_sha256"), str):
                    yield key, meta["tokenizer"], meta["tokenizer_sha256"]
            elif (record := read_record(entry.prefix)) is not None:
                yield key, record.tokenizer, record.tokenizer_sha256
        except VikhrError:  # unreadable: check_data names it with the fix
            continue


def _check_data_tokenizer(
    cfg: TrainConfig, recorded: RecordedTokenizer | None, start: str, whose: str
) -> None:
    """The data of a run is tokenized with the tokenizer its starting weights (`start`: model.init, or
    the checkpoint resumed) were trained with (`recorded`: their lineage's, vikhr.convert.hf_tokenizer):
    the old tokenizer's ids fit an adapted model's larger vocabulary, another tokenizer's of the same
    size fit any, and would train it on pieces other than theirs. Where a file is gone or changed
    since it was recorded it cannot tell, and lets the run start."""
    from vikhr.data.tokenization import compare_tokenizers

    if recorded is None:
        return
    fix = "prepare the chats with" if cfg.data.kind == "sft" else "pre-tokenize the data with"
    for key, path, sha256 in _dataset_tokenizers(cfg):
        compared = compare_tokenizers(path, sha256, recorded.path, recorded.sha256)
        if compared.same is False:
            differs = compared.difference("the data's", whose)
            raise VikhrError(
                f"{key} was tokenized with {path}, but {start} was trained with {recorded.path} "
                f"(recorded in {recorded.recorded_by}; {differs}): {fix} {recorded.path}"
            )


def _resumed_tokenizer(resume_from: Path | None) -> RecordedTokenizer | None:
    """The tokenizer (and chat template) the checkpoint a run resumes was trained with, as it records
    it (an SFT run's chats may have been prepared again since; a pre-training checkpoint may be given
    as checkpoint.resume); None where it records none or its records cannot be read (nothing to check)."""
    if resume_from is None:
        return None
    try:
        return recorded_in_lineage(resume_from, warn=False).tokenizer
    except VikhrError:  # e.g. the datasets its config names, damaged since: the run's own are checked
        return None


def _template_changed(
    resume_from: Path | None, resumed: RecordedTokenizer | None, data: RecordedTokenizer | None
) -> list[str]:
    """A warning when the chats of a resumed SFT run are now prepared with another chat template than
    the checkpoint was trained on: the model learns both formats, and its export carries the new one.
    Also when a checkpoint trained on chats is resumed on plain text (data.kind pretrain, whose data
    records no template; a resume may change data.kind): its export then carries no such template."""
    if resume_from is None or resumed is None or data is None or resumed.template is None:
        return []
    if same_template(data, resumed):
        return []
    trained = f"resuming from {resume_from}, trained on chats of chat template {template_label(resumed)}"
    if data.template is None:
        return [
            f"{trained}: {data.recorded_by} records plain text, of no chat template, so the export of the "
            "steps to come carries none but a chat template kept with the tokenizer, where it has one"
        ]
    now = template_label(data)  # ``own``'s text by its sha256: another text keeps the name
    return [
        f"{trained}: {data.recorded_by} now records {now}, so the model learns both from here, and the "
        f"export of the steps to come carries {now}"
    ]


def attention_backend(cfg: TrainConfig, on_gpu: bool) -> str:
    """The attention the run's model is built with: model.attention, "auto" resolved on this device
    (vikhr.model.resolve_attention), and "sdpa" where documents are isolated (a document mask needs
    SDPA: TE's causal kernel would ignore it)."""
    attention = cfg.model.attention
    if cfg.data.documents_isolated() and attention == "auto":
        attention = "sdpa"
    return resolve_attention(attention, on_gpu)


def _attention_described(cfg: TrainConfig, on_gpu: bool) -> str:
    """`attention_backend`, with the configured value where it differs ("sdpa (auto)")."""
    backend = attention_backend(cfg, on_gpu)
    return backend if backend == cfg.model.attention else f"{backend} ({cfg.model.attention})"


def _reference_is_init(cfg: TrainConfig) -> bool:
    """Whether the KL term's frozen reference is the run's starting weights (then a resume reads
    model.init for it; otherwise a resume needs only its checkpoint)."""
    return cfg.kl.weight > 0 and cfg.kl.reference == "init"


class Trainer:
    """One rank's share of a run: set up on construction, then `train` (or single `train_step`s)."""

    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        loss_fn: LossFn | None = None,
        resume_from: Path | None = None,
        started: float | None = None,
        inherited: dict[str, Any] | None = None,
        recorded_data: RecordedTokenizer | None = None,
        inherited_files: dict[str, bytes] | None = None,
    ) -> None:
        """Setup: data, the model and its starting weights, the frozen reference, DDP, optimizer;
        then, given a checkpoint, its state (`resume`). `started`: when the run began
        (time.monotonic(); default now), whence checkpoint.stop_after_minutes counts. `inherited`:
        what each checkpoint records of the start's lineage (`_inherited`; None: nothing);
        `recorded_data`: what the datasets record of their tokenizer (each checkpoint keeps it);
        `inherited_files`: the tokenizer files `inherited` names, which each checkpoint keeps a copy of
        (path in the checkpoint → contents; vikhr.convert.lineage.carry_tokenizers).

        The order is part of the run's reproducibility: model initialisation draws from the
        RNGs seeded by the environment, after the data.
        """
        self.cfg, self.env, self.inherited, self.recorded_data = cfg, env, inherited, recorded_data
        self.inherited_files = inherited_files or {}
        self.started = time.monotonic() if started is None else started
        self.model_cfg = cfg.model.shape(resume_from)
        self.model_described = cfg.model.described(resume_from)  # where the shape came from
        self.run_dir = Path(cfg.checkpoint.dir)
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.dp_group = parallel_state.get_data_parallel_group()
        self.params_dtype = torch.bfloat16 if env.on_gpu else torch.float32
        saved = checkpoint.read_meta(resume_from) if resume_from is not None else {}
        self.monitor = Monitor(
            self.run_dir,
            env.is_main,
            cfg.logging.tensorboard,
            resume_step=int(saved["step"]) if resume_from is not None else None,
        )
        self.data = build_datasets(
            cfg, train_samples(cfg, saved.get("step", 0), saved.get("consumed_samples", 0))
        )
        self.model = self._build_model(recompute=cfg.train.recompute == "full")
        # A resume overwrites the model's weights with the checkpoint's: model.init is read only
        # where it is the KL reference (a 7B restart would read 14 GB for nothing, or fail where
        # the start weights were moved away).
        if cfg.model.init != "random" and resume_from is None:
            self._load_weights(self.model, cfg.model.init, "model.init", _shape_fix(cfg, None, "model.init"))
        self.reference = self._build_reference(resume_from is not None) if cfg.kl.weight > 0 else None
        self.ddp, self.optimizer = self._wrap_for_training()
        self.loss_fn = loss_fn or CrossEntropyKL(self.model_cfg.vocab_size, self.tp_group, cfg.kl)
        self.validation_loss_fn = CrossEntropyKL(self.model_cfg.vocab_size, self.tp_group)
        self.step = 0  # optimizer steps done: the LR schedule follows from it
        self.consumed_samples = 0  # the data position (the global batch may change on resume)
        self.nonfinite_in_a_row = 0
        # The targets the loss was taken over since step `loss_tokens_from` (0, or a resumed
        # checkpoint's step where it records no count): the run's summary.
        self.loss_tokens = 0
        self.loss_tokens_from = 0
        self.saved_step: int | None = None  # the step of the newest checkpoint written or resumed
        self.validated_step: int | None = None  # the step of the last whole validation pass
        # A checkpoint saved by a stop that skipped its step's validation: the resumed run does it.
        self.validation_pending = False
        self.run_stop: RunStop | None = None  # set by `train`: the signals noted during the steps
        self.num_params = self._count_parameters()
        lookup = 0 if self.model_cfg.tie_embeddings else self.model.vocab_size * self.model_cfg.hidden_size
        self.flops_per_token = train_flops_per_token(
            self.model_cfg, self.num_params - lookup, cfg.data.seq_len, reference=self.reference is not None
        )
        self.peak_flops = peak_flops() if env.on_gpu else None
        if resume_from is not None:
            self.resume(resume_from)

    # ---- setup pieces

    def _build_model(self, recompute: bool = False) -> torch.nn.Module:
        cfg, env = self.cfg, self.env
        model = build_gpt_model(
            self.model_cfg,
            tp_size=env.tp_size,
            params_dtype=self.params_dtype,
            vocab_multiple=cfg.model.vocab_multiple,
            attention=attention_backend(cfg, env.on_gpu),
            on_gpu=env.on_gpu,
            recompute=recompute,
            sequence_parallel=cfg.parallel.sequence,
        )
        return model.to(env.device)

    def _load_weights(
        self, model: torch.nn.Module, directory: str, key: str, fix: checkpoint.ShapeFix = "match_it"
    ) -> None:
        step_dir = checkpoint.find_weights(directory, key)
        env = self.env
        expected = self.model_cfg.to_dict()
        checkpoint.load_model(model, step_dir, env.tp_rank, env.tp_size, expected, key, fix)

    def _build_reference(self, resuming: bool) -> torch.nn.Module:
        """The frozen model of the KL term (none at λ = 0): the starting weights (kl.reference:
        init) or a checkpoint. `resuming`: the model was not given model.init's weights."""
        reference = self._build_model()
        cfg = self.cfg
        fix: checkpoint.ShapeFix = "keep_shape" if resuming else "match_it"
        if cfg.kl.reference != "init":
            self._load_weights(reference, cfg.kl.reference, "kl.reference", fix)
        elif cfg.model.init != "random" and resuming:
            self._load_weights(reference, cfg.model.init, "model.init", fix)
        else:  # the model's weights before any step: model.init's, or the seeded random ones
            reference.load_state_dict(self.model.state_dict())
        reference.requires_grad_(False)
        return reference.eval()

    def _wrap_for_training(self) -> tuple[DistributedDataParallel, Any]:
        """megatron's DDP (fp32 gradient buffers) and its Adam with fp32 master weights."""
        o = self.cfg.optim
        ddp = DistributedDataParallel(
            self.model.config,
            DistributedDataParallelConfig(
                grad_reduce_in_fp32=True,
                overlap_grad_reduce=False,
                check_for_nan_in_grad=False,
                use_distributed_optimizer=o.distributed,
            ),
            self.model,
        )
        optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=o.lr,
                min_lr=o.min_lr,
                weight_decay=o.weight_decay,
                adam_beta1=o.betas[0],
                adam_beta2=o.betas[1],
                adam_eps=o.eps,
                clip_grad=o.clip_grad,
                bf16=self.params_dtype == torch.bfloat16,
                params_dtype=self.params_dtype,
                use_distributed_optimizer=o.distributed,
            ),
            [ddp],
        )
        return ddp, optimizer

    def _count_parameters(self) -> int:
        """Parameters of the whole model (TP-sharded ones counted once over the TP ranks)."""
        env = self.env
        total = sum(p.numel() for p in self.model.parameters())
        if env.tp_size > 1:
            sharded = sum(
                p.numel() for p in self.model.parameters() if getattr(p, "tensor_model_parallel", False)
            )
            counted = torch.tensor([sharded], dtype=torch.float64, device=env.device)
            dist.all_reduce(counted, group=self.tp_group)
            total += int(counted.item()) - int(counted.item() / env.tp_size)
        return total

    # ---- the run

    def runtime(self) -> dict[str, str]:
        """What a checkpoint's optimizer and RNG states depend on besides the model: the device kind
        (megatron's RNG tracker holds CUDA or CPU generator states) and the parameters' dtype (bf16
        runs keep fp32 master weights in the optimizer state)."""
        return {"device": self.env.device.type, "params_dtype": str(self.params_dtype).removeprefix("torch.")}

    def resume(self, step_dir: Path) -> None:
        """Restore the model, optimizer and RNG states of a checkpoint, and its step."""
        env = self.env
        meta = checkpoint.resume(
            step_dir,
            self.model,
            self.optimizer,
            env.tp_rank,
            env.tp_size,
            env.dp_rank,
            env.rank,
            env.world_size,
            self.model_cfg.to_dict(),
            self.runtime(),
            _resume_key(self.cfg),
        )
        step = self.step = self.saved_step = int(meta["step"])
        self.consumed_samples = int(meta["consumed_samples"])
        recorded_tokens = meta.get("loss_tokens")
        self.loss_tokens = int(recorded_tokens) if recorded_tokens is not None else 0
        self.loss_tokens_from = 0 if recorded_tokens is not None else step
        self.validation_pending = bool(meta.get("validation_pending", False))
        cfg = self.cfg
        # The layout, checkpointing and logging may change at will (the layout is reported above).
        changes = [
            change
            for change in changed_settings(meta.get("config", {}), cfg.to_dict())
            if not change.startswith(("parallel.", "checkpoint.", "logging.", "debug."))
        ]
        if changes:
            self.monitor.info(f"settings changed since {step_dir.name}: {', '.join(changes)}")
            jump = lr_jump(meta.get("config", {}), cfg, step)
            if jump is not None:
                checkpoint.warn(f"resuming from {step_dir.name}: {jump}")
        saved_batch = meta.get("config", {}).get("train", {}).get("global_batch", cfg.train.global_batch)
        if saved_batch != cfg.train.global_batch:
            self.monitor.info(
                f"train.global_batch {saved_batch} -> {cfg.train.global_batch} from step {step + 1}: the "
                f"run reads on from sample {self.consumed_samples} (the learning-rate schedule counts steps)"
            )
        if (
            cfg.kl.weight > 0
            and cfg.kl.reference == "init"
            and cfg.model.init == "random"
            and (meta["tp"], meta.get("device", env.device.type)) != (env.tp_size, env.device.type)
        ):
            checkpoint.warn(
                f"kl.reference is the random initialisation, drawn again for parallel.tensor = "
                f"{env.tp_size} on {env.device.type}: it may differ from the one the run started with (on a "
                "GPU each rank draws its own part); give kl.reference a checkpoint to keep it"
            )
        self.monitor.info(f"resumed from {step_dir} at step {step}")

    def train(self, run_stop: RunStop) -> dict[str, Any]:
        """Optimizer steps up to train.steps; evaluation and checkpoints at their intervals.
        `run_stop` (entered) notes stop signals from the first step on."""
        cfg, monitor = self.cfg, self.monitor
        monitor.info(self.describe())
        unvalidated = [e.name for e in cfg.data.train if e.name not in self.data.valid]
        if unvalidated:
            monitor.info(
                f"no validation loss for {', '.join(unvalidated)}: the held-out part of data.split "
                f"{cfg.data.split!r} gets none of its {'chats' if cfg.data.kind == 'sft' else 'documents'}"
            )
        if self.step >= cfg.train.steps:  # a finished run started again ended without a word
            monitor.info(
                f"nothing to train: the run is at step {self.step} and train.steps = {cfg.train.steps} "
                "(raise train.steps to train on)"
            )
        if self.env.rank == 0:
            (self.run_dir / STOPPED_FILE).unlink(missing_ok=True)  # running on: no longer stopped
        try:
            self._signal_itself()  # at the step the run starts from: a signal in its setup
            self._kill_itself()
            start_validation = self.step == 0 or self.validation_pending
            valid_losses = self.evaluate(stoppable=False) if start_validation else {}
            run_stop.in_setup = False  # from here a step's work would be lost: a signal saves it instead
            self.run_stop = run_stop
            while self.step < cfg.train.steps:
                metrics = self.train_step()
                if metrics is None:  # signalled during the step (one process): the previous step stands
                    dropped_for = run_stop.agreed(self.env.device)
                    assert dropped_for is not None, "a step is dropped for a signal only"
                    self._stop(dropped_for)
                last = self.step == cfg.train.steps
                monitor.record(self.step, "train", metrics)
                if self.step % cfg.logging.log_every == 0 or last:
                    monitor.progress(self.step, cfg.train.steps, metrics)
                self._abort_on_nonfinite()  # once the step that ends the run is logged
                self._signal_itself()
                # A run that has just finished simply ends; one told to stop skips the validation.
                stop = None if last else run_stop.agreed(self.env.device)
                evaluated = stop is None and (self.step % cfg.logging.eval_every == 0 or last)
                if evaluated:
                    valid_losses = self.evaluate(stoppable=not last) or valid_losses
                saved = self.step % cfg.checkpoint.save_every == 0 or last
                if saved:
                    self.save()
                self._kill_itself()
                if stop is None and not last and (evaluated or saved):  # no step more after a signal in them
                    stop = run_stop.agreed(self.env.device)
                if stop is not None:
                    self._stop(stop)
        except BaseException:  # a failed or stopped run's curves and TensorBoard events are written too
            with contextlib.suppress(Exception):  # ... but its own error is the one reported
                monitor.close()
            raise
        finally:
            self.run_stop = None
        monitor.info(self.loss_tokens_said())
        monitor.close()
        return {"step": self.step, "valid": valid_losses, "loss_tokens": self.loss_tokens}

    def loss_tokens_said(self) -> str:
        """The run's summary line: the tokens the loss was taken over, in all."""
        which = "assistant tokens" if self.cfg.data.kind == "sft" else "target tokens"
        # Resumed from a checkpoint written before the count was kept: this run's steps alone are counted.
        first = self.loss_tokens_from + 1
        if not self.loss_tokens_from:
            steps = f"{self.step} steps"
        elif first > self.step:
            return (
                f"trained: no step in this run (resumed at its last step, {self.step}, from a checkpoint "
                f"that does not count the {which} the loss was taken over)"
            )
        else:
            steps = f"step {first}" if first == self.step else f"steps {first}-{self.step}"
        return f"trained: the loss was taken over {self.loss_tokens:,} {which} in {steps}"

    def _signal_itself(self) -> None:
        """debug.signal_at_step: a signal to the last rank alone, right after that step (tests that
        every rank stops on what one of them received)."""
        if self.step == self.cfg.debug.signal_at_step and self.env.rank == self.env.world_size - 1:
            os.kill(os.getpid(), signal.Signals[self.cfg.checkpoint.save_on_signals[0]])

    def _kill_itself(self) -> None:
        """debug.kill_at_step: a real, unclean death once that step is saved (tests of resume)."""
        if self.step == self.cfg.debug.kill_at_step:
            dist.barrier()
            os.kill(os.getpid(), signal.SIGKILL)

    def _signalled(self) -> bool:
        """Whether to drop the work in progress for a stop: a one-process run that got a stop
        signal (ranks of several would first have to agree, a collective per micro-batch)."""
        return self.run_stop is not None and bool(self.run_stop.received) and self.env.world_size == 1

    def _stop(self, stop: Stop) -> None:
        """Save this step (unless it was) and end the run with RunStopped."""
        steps = self.cfg.train.steps
        if self.step == 0:  # the first step dropped: the weights are the start's
            said = f"stopped {stop.reason} in step 1 of {steps}, before its update (nothing new to save)"
        else:
            saved = self.saved_step == self.step
            path = self.run_dir / checkpoint.step_dir_name(self.step) if saved else self.save()
            said = f"stopped {stop.reason} after step {self.step} of {steps}, saved in {path}"
        if self.env.rank == 0:
            write_stopped_record(self.run_dir, self.step, steps, stop)
        raise RunStopped(said, stop.status)

    def train_step(self) -> dict[str, float] | None:
        """One optimizer step on the global batch of step `self.step`; returns its metrics, or None
        where a stop signal came before its update (`_signalled`): the step is dropped, nothing
        changed but the gradient buffers (zeroed by the next step)."""
        cfg, env = self.cfg, self.env
        t0 = time.perf_counter()
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            # megatron's groups carry the multipliers its own scheduler would apply: no weight decay
            # on biases and 1-D weights (the norms: wd_mult 0), and per-group learning-rate factors.
            group["lr"] = lr * group.get("lr_mult", 1.0)
            group["weight_decay"] = cfg.optim.weight_decay * group.get("wd_mult", 1.0)
        micro_batches = step_micro_batches(
            self.data.train,
            self.consumed_samples,
            cfg.train.global_batch,
            cfg.train.micro_batch,
            env.dp_rank,
            env.dp_size,
        )
        losses = self.forward_backward(micro_batches)
        if losses is None:
            return None
        grad_norm = self.optimizer_step(losses["loss"])
        self.step += 1
        self.loss_tokens += losses["loss_tokens"]
        self.consumed_samples += cfg.train.global_batch
        if env.on_gpu:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tokens = cfg.train.global_batch * cfg.data.seq_len
        flops = self.flops_per_token * tokens / dt / env.world_size
        return {
            **losses,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens / dt,
            "mfu": flops / self.peak_flops if self.peak_flops else None,
        }

    def forward_backward(self, micro_batches: list[Batch]) -> dict[str, float] | None:
        """Gradients of the global batch's loss (every labelled token weighs the same, whatever the
        DP/micro-batch split), reduced over DP; returns the loss and the loss's terms, or None where
        a stop signal came before the last micro-batch (`_signalled`)."""
        env = self.env
        # Counted once, on the host, before the batches move (a count on the device would sync).
        labelled = [_labelled(b) for b in micro_batches]
        n_tokens = torch.tensor([sum(labelled)], dtype=torch.float64, device=env.device)
        dist.all_reduce(n_tokens, group=self.dp_group)
        n_global = max(float(n_tokens.item()), 1.0)
        poisoned = self.step + 1 in self.cfg.debug.nonfinite_at_steps
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        names: list[str] = []
        sums = torch.zeros(0, dtype=torch.float64, device=env.device)
        for batch, n_labelled in zip(micro_batches, labelled, strict=True):
            if self._signalled():
                return None
            batch = batch.to(env.device)
            n_micro = float(n_labelled)
            # megatron DDP averages gradients over DP ranks; × dp_size turns that into a sum.
            scale = n_micro / n_global * env.dp_size
            if isinstance(self.loss_fn, CrossEntropyKL):
                self.loss_fn.grad_scale = scale or 1.0  # the kernel writes the gradient already scaled
            terms = forward_loss(self.ddp, batch, self.loss_fn, self.reference, self.attention_mask(batch))
            loss = terms.loss * float("nan") if poisoned else terms.loss
            (loss * scale).backward()
            names = ["loss", *terms.metrics]
            weighted = torch.stack([loss.detach(), *terms.metrics.values()]).double() * n_micro
            sums = weighted if sums.numel() == 0 else sums + weighted
        # DP all-reduce (or reduce-scatter) and, with sequence parallelism, the TP sum of the
        # norm weights' partial gradients.
        finalize_model_grads([self.ddp])
        dist.all_reduce(sums, group=self.dp_group)
        # The targets the loss was taken over (SFT: the assistant tokens; pre-training: every target).
        return {
            **dict(zip(names, (sums / n_global).tolist(), strict=True)),
            "loss_tokens": int(n_tokens.item()),
        }

    def optimizer_step(self, loss: float) -> float:
        """Apply the update and return the gradient norm; a non-finite loss skips the update (NaN
        norm) and counts towards logging.max_nonfinite (`_abort_on_nonfinite`)."""
        if math.isfinite(loss):
            self.nonfinite_in_a_row = 0
            _, grad_norm, _ = self.optimizer.step()
            return float(grad_norm) if grad_norm is not None else float("nan")
        self.nonfinite_in_a_row += 1
        warnings.warn(f"step {self.step + 1}: non-finite loss {loss}; skipping the update", stacklevel=1)
        return float("nan")

    def _abort_on_nonfinite(self) -> None:
        """End the run after logging.max_nonfinite non-finite losses in a row."""
        if self.nonfinite_in_a_row >= self.cfg.logging.max_nonfinite:
            raise VikhrError(
                f"{self.nonfinite_in_a_row} non-finite losses in a row (logging.max_nonfinite); "
                "lower optim.lr or check the data"
            )

    def attention_mask(self, batch: Batch) -> torch.Tensor | None:
        return attention_mask_for(batch, self.cfg.data, self.model_cfg.sliding_window)

    @torch.no_grad()
    def evaluate(self, stoppable: bool = False) -> dict[str, float] | None:
        """Mean CE on each validation set (its first data.valid_samples samples), logged at this step.
        `stoppable`: None, nothing logged, where a stop signal cuts the pass short (`_signalled`)."""
        totals = {}
        for name, dataset in self.data.valid.items():
            found = self.validation_totals(dataset, stoppable)
            if found is None:
                return None
            totals[name] = found
        losses: dict[str, float] = {}
        if totals:  # one host sync for the whole pass
            means = torch.stack([t[0] / t[1].clamp(min=1) for t in totals.values()]).tolist()
            losses = dict(zip(totals, means, strict=True))
            self.monitor.record(self.step, "valid", {f"loss_{k}": v for k, v in losses.items()})
            self.monitor.info(
                f"step {self.step:>6} | validation " + " | ".join(f"{k} {v:.4f}" for k, v in losses.items())
            )
        self.validated_step = self.step
        return losses

    @torch.no_grad()
    def validation_totals(self, dataset: torch.utils.data.Dataset, stoppable: bool) -> torch.Tensor | None:
        """[sum of CE over the labelled tokens, their count] of a validation set's first samples,
        summed over the DP ranks (which share them), in float64 on the device: read once per pass,
        not once per micro-batch. None where `stoppable` and a stop signal came (`_signalled`)."""
        cfg, env = self.cfg, self.env
        n = min(cfg.data.valid_samples, len(dataset))
        mine = list(range(env.dp_rank, n, env.dp_size))
        ce_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        count_sum = 0
        self.model.eval()
        try:
            for first in range(0, len(mine), cfg.train.micro_batch):
                if stoppable and self._signalled():
                    return None
                batch = collate([dataset[i] for i in mine[first : first + cfg.train.micro_batch]])
                count = _labelled(batch)  # on the host, before the batch moves
                batch = batch.to(env.device)
                terms = forward_loss(
                    self.model, batch, self.validation_loss_fn, attention_mask=self.attention_mask(batch)
                )
                ce_sum += terms.metrics["ce"].double() * count
                count_sum += count
        finally:
            self.model.train()
        totals = torch.stack([ce_sum, torch.tensor(float(count_sum), dtype=torch.float64, device=env.device)])
        dist.all_reduce(totals, group=self.dp_group)
        return totals

    def save(self) -> Path:
        """Checkpoint the current step (collective: every rank saves its part)."""
        cfg, env = self.cfg, self.env
        meta = {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "loss_tokens": self.loss_tokens,
            "tp": env.tp_size,
            "dp": env.dp_size,
            "world_size": env.world_size,
            "model": self.model_cfg.to_dict(),
            "padded_vocab_size": self.model.vocab_size,
            "distributed_optimizer": cfg.optim.distributed,
            **self.runtime(),
            "config": cfg.to_dict(),
            # A stop skipped the validation due at this step: the resumed run does it first.
            "validation_pending": self.step % cfg.logging.eval_every == 0
            and self.validated_step != self.step,
            # The config's relative paths (data prefixes, model.init) are relative to it: vikhr convert,
            # run from elsewhere, finds the run's tokenizer through them.
            "cwd": os.getcwd(),
            PROVENANCE: provenance(),  # which code and libraries made the step's figures
        }
        if self.inherited is not None:  # the start's lineage: the checkpoint's export needs no other
            meta[INHERITED] = self.inherited
        if self.recorded_data is not None:  # the datasets' record, for an export made without them
            meta[DATA_TOKENIZER] = self.recorded_data.to_json()
        path = checkpoint.save(
            self.run_dir,
            self.step,
            self.model,
            self.optimizer,
            meta,
            env.tp_rank,
            env.dp_rank,
            env.rank,
            keep_last=cfg.checkpoint.keep_last,
            files=self.inherited_files,
        )
        self.saved_step = self.step
        self.monitor.info(f"saved {path}")
        return path

    def describe(self) -> str:
        """One line on the model, the parallel layout and the objective."""
        cfg, env = self.cfg, self.env
        return (
            f"model {self.model_described}: {self.num_params / 1e6:.1f}M parameters, "
            f"TP={env.tp_size}{' (+SP)' if cfg.parallel.sequence else ''} DP={env.dp_size}, {env.backend}, "
            f"attention={_attention_described(cfg, env.on_gpu)}, KL λ={cfg.kl.weight}, data {cfg.data.kind}"
        )
