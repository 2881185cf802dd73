"""A few optimizer steps of the trainer on a tiny Mistral-shaped model; run directly or under torchrun.

Writes JSON with the per-step global losses (rank 0) and a checksum of every parameter (gathered
to full tensors across TP ranks) so tests can compare TP=1, TP=2 and DP=2 runs.
Usage: train_steps.py OUT --tp N --data PREFIX [--steps S]   (PREFIX: megatron .bin/.idx)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from megatron.core import parallel_state

    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.config import load_config, validate
    from vikhr.train.monitor import read_metrics
    from vikhr.train.trainer import Trainer

    run_dir = Path(f"{args.out}.run")
    cfg = load_config(
        None,
        [
            "model.preset=tiny",
            "model.attention=sdpa",
            f"parallel.tensor={args.tp}",
            "parallel.device=cpu",
            f"data.train=[{{prefix: {args.data}}}]",
            "data.split=100,0,0",
            "data.seq_len=32",
            f"train.steps={args.steps}",
            "train.micro_batch=1",
            "train.global_batch=4",
            "optim.lr=1e-2",
            "optim.warmup_steps=0",
            "optim.decay=constant",
            "optim.betas=[0.9, 0.95]",
            "optim.weight_decay=0",
            # No clipping: Adam's update of a weight whose gradient is near eps follows the
            # float rounding of the global norm, which TP=2 sums in another order.
            "optim.clip_grad=0",
            f"checkpoint.dir={run_dir}",
            "checkpoint.resume=never",
            "logging.tensorboard=false",
        ],
    )
    validate(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    with distributed_env(tp_size=args.tp, seed=cfg.train.seed, device="cpu") as env:
        trainer = Trainer(cfg, env)
        trainer.train()
        # Sum of every full parameter: TP-sharded ones are summed over the TP group.
        sums = {}
        for name, p in trainer.model.named_parameters():
            total = p.detach().double().sum()
            if getattr(p, "tensor_model_parallel", False) and env.tp_size > 1:
                dist.all_reduce(total, group=parallel_state.get_tensor_model_parallel_group())
            sums[name] = float(total)
        losses = [row["loss"] for _, row in sorted(read_metrics(run_dir)[0].items())] if env.is_main else []
        result = {"losses": losses, "param_sums": sums, "dp": env.dp_size, "tp": env.tp_size}
        Path(f"{args.out}.rank{env.rank}").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
