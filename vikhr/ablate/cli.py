"""`vikhr ablate CONFIG.yaml`: the paper's claims measured on a grid of small experiments."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from vikhr.errors import Interrupted, Terminated, sigterm_as_interrupt
from vikhr.progress_bar import add_no_progress


def _run(args: argparse.Namespace) -> int:
    from vikhr.ablate.config import check_device_here, check_dirs_here, load_ablate_config

    cfg = load_ablate_config(args.config)  # everything checked before the first stage runs
    check_device_here(cfg, args.config)
    check_dirs_here(cfg, args.config)
    from vikhr.ablate.report import write_report
    from vikhr.ablate.runner import grid_lock, run_ablation

    # SIGTERM (a `kill`, a job scheduler's stop) stops the grid as Ctrl-C does: the running stage
    # unwinds (its scratch removed, the lock released), the finished runs stay for --resume. A
    # trainer told to save on SIGTERM (train.save_every) takes it over while it runs.
    with sigterm_as_interrupt(), grid_lock(cfg.out_dir):
        try:
            result = run_ablation(cfg, show_progress=args.progress, resume=args.resume)
            # Stopped while the report is written (a file at a time), the grid is whole: --resume
            # writes the report again.
            written = write_report(result)
        except KeyboardInterrupt as e:
            # The same command again starts the grid over, removing the runs this one finished.
            hint = (
                f"`vikhr ablate --resume {shlex.quote(str(args.config))}` continues the grid from the "
                "runs it finished (without --resume it starts over)"
            )
            if isinstance(e, Terminated):
                raise Terminated(f"terminated (SIGTERM); {hint}") from None
            raise Interrupted(hint) from None
        for path in written:
            print(path)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ablate",
        help="run a grid of small experiments (vocabulary, init, KL, SLERP) and tabulate them",
        description=(
            "Pre-train (or reuse from the cache) an English base, or take base.init's HF model, then "
            "continue it on Russian under every arm of CONFIG.yaml for every seed; writes ablation.md, "
            "ablation.csv, loss_curves.png and tradeoff.png to the config's out_dir (see docs/ablations.md, "
            "configs/ablate-cpu.yaml)."
        ),
    )
    p.add_argument("config", help="ablation config YAML")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs an earlier run of this grid left in out_dir/work and run only the "
        "rest (an interrupted grid continues; added arms or seeds run alone); other settings must match",
    )
    add_no_progress(p, "--quiet")
    p.set_defaults(func=_run)
