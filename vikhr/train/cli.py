"""The trainer's command line: `pretrain_vikhr.py` (under torchrun) and `vikhr pretrain` (one process).

This module stays light (argparse only): `vikhr --help` imports it to list the command. The
config and the trainer, which load torch and megatron-core, are imported when a run starts.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vikhr.errors import VikhrError, same_on_every_process
from vikhr.runtime.megatron import import_megatron_core, require_megatron

if TYPE_CHECKING:
    from vikhr.train.config import TrainConfig

# Megatron-LM's flag names for the common settings, as aliases of `section.key=value` overrides.
MEGATRON_FLAGS: dict[str, str] = {
    "--tensor-model-parallel-size": "parallel.tensor",
    "--micro-batch-size": "train.micro_batch",
    "--global-batch-size": "train.global_batch",
    "--train-iters": "train.steps",
    "--seed": "train.seed",
    "--seq-length": "data.seq_len",
    "--split": "data.split",
    "--lr": "optim.lr",
    "--min-lr": "optim.min_lr",
    "--lr-warmup-iters": "optim.warmup_steps",
    "--lr-decay-style": "optim.decay",  # Megatron-LM spells one of them WSD
    "--lr-wsd-decay-iters": "optim.decay_steps",
    "--lr-wsd-decay-style": "optim.wsd_shape",
    "--weight-decay": "optim.weight_decay",
    "--clip-grad": "optim.clip_grad",
    "--adam-beta1": "optim.betas.0",
    "--adam-beta2": "optim.betas.1",
    "--adam-eps": "optim.eps",
    "--save": "checkpoint.dir",
    "--save-interval": "checkpoint.save_every",
    "--log-interval": "logging.log_every",
    "--eval-interval": "logging.eval_every",
    "--recompute-granularity": "train.recompute",  # full (megatron's selective is not offered)
    "--exit-duration-in-mins": "checkpoint.stop_after_minutes",
}
# The cluster --dry-run sizes when --gpus / --gpu-memory-gb are not given.
DRY_RUN_GPUS = 8
DRY_RUN_GPU_MEMORY_GB = 80.0
# Megatron-LM's on/off flags (no value), as `key=true` overrides.
MEGATRON_SWITCHES: dict[str, str] = {
    "--use-distributed-optimizer": "optim.distributed",
    "--sequence-parallel": "parallel.sequence",
}


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The arguments of pretrain_vikhr.py and `vikhr pretrain`."""
    from vikhr.cli import OneLineErrorParser

    p = parser or OneLineErrorParser(
        prog="pretrain_vikhr.py", description="Continued pre-training with CE + λ·KL on megatron-core."
    )
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.add_argument("--dry-run", action="store_true", help="print per-GPU memory for TP in {1,2,4,8} and exit")
    # None when not given: a training run refuses them rather than ignore them (DRY_RUN_GPUS, ...).
    p.add_argument("--gpus", type=int, default=None, help="cluster size for --dry-run (default 8)")
    p.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=None,
        help='per-GPU memory for --dry-run, in GiB as an "80 GB" card holds 80 (default 80)',
    )
    megatron = p.add_argument_group("Megatron-LM flags (same as the overrides they name)")
    for flag, key in MEGATRON_FLAGS.items():
        megatron.add_argument(flag, dest=f"megatron:{key}", metavar="V", default=None, help=key)
    for flag, key in MEGATRON_SWITCHES.items():
        megatron.add_argument(
            flag, dest=f"megatron:{key}", action="store_const", const="true", help=f"{key}=true"
        )
    return p


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The positional overrides plus those given as Megatron-LM flags (flags win)."""
    overrides = list(args.overrides)
    betas: dict[int, str] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("megatron:") or value is None:
            continue
        key = dest.removeprefix("megatron:")
        if key.startswith("optim.betas."):
            betas[int(key.rsplit(".", 1)[1])] = value
        elif key == "optim.decay":
            overrides.append(f"{key}={value.lower()}")
        else:
            overrides.append(f"{key}={value}")
    if betas:
        if len(betas) != 2:
            raise VikhrError("give --adam-beta1 and --adam-beta2 together (or use optim.betas=[b1, b2])")
        overrides.append(f"optim.betas=[{betas[0]}, {betas[1]}]")
    return overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="continued pre-training with CE + λ·KL (megatron-core)",
        description="Continued pre-training with CE + λ·KL on megatron-core. One process; for several, "
        "run `torchrun --standalone --nproc_per_node=K -m vikhr pretrain` with the same arguments "
        "(or pretrain_vikhr.py in place of `-m vikhr pretrain` in a checkout).",
    )
    build_arg_parser(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run_from_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    """pretrain_vikhr.py: parse the arguments and run (errors reach the caller as VikhrError)."""
    # intermixed: `--dry-run data.seq_len=128 --gpus 2 train.steps=10` gives both overrides
    args = build_arg_parser().parse_intermixed_args(argv)
    return run_from_args(args)


def run_from_args(args: argparse.Namespace) -> int:
    """Load the config (--config plus overrides) and train, or print the --dry-run memory table."""
    with same_on_every_process():  # each torchrun process reads the same arguments, config and files
        cfg = _load(args)
    if args.dry_run:
        from vikhr.train.config import doubtful_settings
        from vikhr.train.memory import dry_run_table

        print(dry_run_table(cfg, gpus=args.gpus, gpu_memory_gb=args.gpu_memory_gb))
        # After the table: an error stays the only line. The warnings the run would give at its start.
        for told in cfg.notes():
            print(f"note: {told}", file=sys.stderr)
        for doubt in doubtful_settings(cfg):
            print(f"warning: {doubt}", file=sys.stderr)
        return 0
    require_megatron()  # a clear error for a wrong megatron-core before the trainer imports it
    from vikhr.train.trainer import run

    run(cfg)
    return 0


def _load(args: argparse.Namespace) -> TrainConfig:
    """The config of `args`, checked with its options; --dry-run's sizes set in `args`."""
    # Imported here, not at the top: the config and the trainer load torch and megatron-core
    # (seconds), which `vikhr --help` and every other command would otherwise pay for.
    import_megatron_core()
    from vikhr.train.config import load_config

    given = [
        flag for flag, v in (("--gpus", args.gpus), ("--gpu-memory-gb", args.gpu_memory_gb)) if v is not None
    ]
    if not args.dry_run and given:
        # `--gpus 8` reads like "train on 8 GPUs", and the run went on in one process.
        raise VikhrError(
            f"{' and '.join(given)} size{'s' if len(given) == 1 else ''} the --dry-run's memory table only "
            "(add --dry-run); to train on N GPUs start N processes: torchrun --standalone "
            "--nproc_per_node=N -m vikhr pretrain ..."
        )
    args.gpus = DRY_RUN_GPUS if args.gpus is None else args.gpus
    args.gpu_memory_gb = DRY_RUN_GPU_MEMORY_GB if args.gpu_memory_gb is None else args.gpu_memory_gb
    # inf passed "positive": every layout then fitted on GPUs "of inf GiB"
    if args.dry_run and (args.gpus < 1 or not 0 < args.gpu_memory_gb < math.inf):
        raise VikhrError(
            f"--gpus must be >= 1 and --gpu-memory-gb a positive finite number, got {args.gpus} and "
            f"{args.gpu_memory_gb:g}"
        )
    # The dry run sizes a cluster job from here: it needs the shapes, not the dataset files.
    return load_config(args.config, config_overrides(args), check_files=not args.dry_run)
