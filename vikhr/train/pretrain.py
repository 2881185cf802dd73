"""Continued pre-training with loss = CE + λ·KL(P_model ‖ P_ref), on megatron-core.

The whole run, top to bottom, is `run()`: validate the config (before anything is allocated),
start torch.distributed + megatron's TP/DP groups, build the data, the model, the frozen
reference and the optimizer, resume if a checkpoint exists, then loop over optimizer steps.
`pretrain_vikhr.py` (under torchrun) and `vikhr pretrain` (one process) both call `main()`.
Instruction tuning is the same loop with `data.kind: sft` (chats with an assistant-only loss
mask, see vikhr.train.sft_data; `vikhr sft train`).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vikhr.errors import VikhrError
from vikhr.train.config import PretrainConfig, load_config, validate


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Learning rate of 0-based optimizer step `step`: linear warm-up, then cosine/linear decay to min_lr."""
    o, total = cfg.optim, cfg.train.steps
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.decay == "constant" or total <= o.warmup_steps:
        return o.lr
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    if o.decay == "linear":
        return o.min_lr + (o.lr - o.min_lr) * (1.0 - progress)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * progress))


def attention_mask_for(batch, cfg: PretrainConfig, sliding_window: int | None) -> torch.Tensor | None:
    """The block-diagonal causal mask of `data.isolate_documents`, else None (plain causal)."""
    from vikhr.model.attention import document_attention_mask, segments_from_eod

    if not cfg.data.documents_isolated():
        return None
    segments = batch.segments
    if segments is None:  # pre-training windows: documents end with data.eod_id
        segments = segments_from_eod(batch.tokens, cfg.data.eod_id)
    return document_attention_mask(segments, sliding_window)


def forward_loss(model, reference, batch, cfg: PretrainConfig, mcfg, tp_group):
    """CE + λ·KL of one micro-batch (cross_entropy_kl over the vocab-parallel logits)."""
    from vikhr.ops import cross_entropy_kl

    tokens, labels = batch.tokens, batch.labels
    b, s = tokens.shape
    position_ids = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
    mask = attention_mask_for(batch, cfg, mcfg.sliding_window)
    logits = model(tokens, position_ids, attention_mask=mask)  # [b, s, V_pad/TP]
    ref_logits = None
    if reference is not None:
        with torch.no_grad():
            ref_logits = reference(tokens, position_ids, attention_mask=mask)
            ref_logits = ref_logits.reshape(b * s, -1)
    return cross_entropy_kl(
        logits.reshape(b * s, -1),
        ref_logits,
        labels.reshape(-1),
        kl_weight=cfg.kl.weight,
        kl_direction=cfg.kl.direction,
        temperature=cfg.kl.temperature,
        valid_vocab_size=mcfg.vocab_size,
        process_group=tp_group,
    )


@torch.no_grad()
def evaluate(model, dataset, cfg: PretrainConfig, env, mcfg, tp_group, dp_group) -> float:
    """Mean CE over the first `data.valid_samples` samples of a validation set (all DP ranks share)."""
    import torch.distributed as dist

    from vikhr.ops import cross_entropy_kl
    from vikhr.train.data import IGNORE_INDEX, collate

    n = min(cfg.data.valid_samples, len(dataset))
    mine = list(range(env.dp_rank, n, env.dp_size))
    totals = torch.zeros(2, dtype=torch.float64, device=env.device)
    model.eval()
    for first in range(0, len(mine), cfg.train.micro_batch):
        batch = collate([dataset[i] for i in mine[first : first + cfg.train.micro_batch]]).to(env.device)
        b, s = batch.tokens.shape
        pos = torch.arange(s, device=env.device).unsqueeze(0).expand(b, s)
        logits = model(batch.tokens, pos, attention_mask=attention_mask_for(batch, cfg, mcfg.sliding_window))
        out = cross_entropy_kl(
            logits.reshape(b * s, -1),
            None,
            batch.labels.reshape(-1),
            valid_vocab_size=mcfg.vocab_size,
            process_group=tp_group,
        )
        count = int((batch.labels != IGNORE_INDEX).sum())
        totals += torch.tensor([out.ce.item() * count, count], dtype=torch.float64, device=env.device)
    model.train()
    dist.all_reduce(totals, group=dp_group)
    return float(totals[0] / totals[1].clamp(min=1))


def run(cfg: PretrainConfig) -> dict[str, Any]:
    """Train as configured; returns the final step and validation losses (on every rank)."""
    import torch.distributed as dist

    # ---- 1. Validate everything that can be validated before any allocation.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    validate(cfg, world_size=world_size)
    mcfg = cfg.model_config()
    ckpt_root = Path(cfg.checkpoint.dir)
    resume_from = None
    if cfg.checkpoint.resume != "never":
        from vikhr.train.checkpoint import find_checkpoint

        resume_from = find_checkpoint(ckpt_root if cfg.checkpoint.resume == "auto" else cfg.checkpoint.resume)

    # ---- 2. Processes, parallel groups, seeds.
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from vikhr.model import build_gpt_model
    from vikhr.runtime import init_distributed, shutdown
    from vikhr.train import checkpoint
    from vikhr.train.data import IGNORE_INDEX, build_datasets, step_micro_batches
    from vikhr.train.monitor import Monitor, peak_flops, train_flops_per_token

    env = init_distributed(tp_size=cfg.parallel.tensor, seed=cfg.train.seed, device=cfg.parallel.device)
    try:
        on_gpu = env.device.type == "cuda"
        params_dtype = torch.bfloat16 if on_gpu else torch.float32
        tp_group = parallel_state.get_tensor_model_parallel_group()
        dp_group = parallel_state.get_data_parallel_group()
        monitor = Monitor(ckpt_root, env.is_main, cfg.logging.tensorboard)
        if not on_gpu:
            torch.use_deterministic_algorithms(True, warn_only=True)

        # ---- 3. Data: the blended train stream and one validation set per dataset.
        cache_dir = cfg.data.cache_dir or str(ckpt_root / "data-cache")
        data = build_datasets(cfg, cache_dir)

        # ---- 4. Model, frozen reference, DDP, optimizer.
        isolated = cfg.data.documents_isolated()

        def new_model(recompute: bool = False):
            m = build_gpt_model(
                mcfg,
                tp_size=env.tp_size,
                params_dtype=params_dtype,
                vocab_multiple=cfg.model.vocab_multiple,
                # A document mask needs SDPA (TE's causal kernel would ignore it).
                attention="sdpa" if isolated and cfg.model.attention == "auto" else cfg.model.attention,
                # On the CPU the full weights are drawn and sliced, so TP=1 and TP=K start equal;
                # on GPU each rank draws its own shard where it lives (no full copy per rank).
                use_cpu_initialization=not on_gpu,
                recompute=recompute,
                sequence_parallel=cfg.parallel.sequence,
            )
            return m.to(env.device)

        model = new_model(recompute=cfg.train.recompute == "full")
        if cfg.model.init != "random":
            start = checkpoint.find_checkpoint(cfg.model.init)
            if start is None:
                raise VikhrError(f"model.init: no checkpoint in {cfg.model.init}")
            checkpoint.load_model(model, start, env.tp_rank, env.tp_size, mcfg.to_dict())
        reference = None
        if cfg.kl.weight > 0:  # λ = 0 skips the reference entirely
            reference = new_model()
            if cfg.kl.reference == "init":
                reference.load_state_dict(model.state_dict())
            else:
                ref_dir = checkpoint.find_checkpoint(cfg.kl.reference)
                if ref_dir is None:
                    raise VikhrError(f"kl.reference: no checkpoint in {cfg.kl.reference}")
                checkpoint.load_model(reference, ref_dir, env.tp_rank, env.tp_size, mcfg.to_dict())
            reference.requires_grad_(False)
            reference.eval()

        ddp = DistributedDataParallel(
            model.config,
            DistributedDataParallelConfig(
                grad_reduce_in_fp32=True,
                overlap_grad_reduce=False,
                check_for_nan_in_grad=False,
                use_distributed_optimizer=cfg.optim.distributed,
            ),
            model,
        )
        optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=cfg.optim.lr,
                min_lr=cfg.optim.min_lr,
                weight_decay=cfg.optim.weight_decay,
                adam_beta1=cfg.optim.betas[0],
                adam_beta2=cfg.optim.betas[1],
                adam_eps=cfg.optim.eps,
                clip_grad=cfg.optim.clip_grad,
                bf16=params_dtype == torch.bfloat16,
                params_dtype=params_dtype,
                use_distributed_optimizer=cfg.optim.distributed,
            ),
            [ddp],
        )

        # ---- 5. Resume: model, optimizer, RNG; the schedule and data position follow from the step.
        step = 0
        if resume_from is not None:
            meta = checkpoint.resume(
                resume_from,
                model,
                optimizer,
                env.tp_rank,
                env.tp_size,
                env.dp_rank,
                env.rank,
                env.world_size,
                mcfg.to_dict(),
            )
            step = int(meta["step"])
            if meta["consumed_samples"] != step * cfg.train.global_batch:
                raise VikhrError(
                    f"checkpoint {resume_from} consumed {meta['consumed_samples']} samples in {step} steps: "
                    "train.global_batch differs from the run that saved it"
                )
            monitor.info(f"resumed from {resume_from} at step {step}")

        num_params = sum(p.numel() for p in model.parameters())
        if env.tp_size > 1:
            counted = torch.tensor(
                [sum(p.numel() for p in model.parameters() if getattr(p, "tensor_model_parallel", False))],
                dtype=torch.float64,
                device=env.device,
            )
            dist.all_reduce(counted, group=tp_group)
            num_params += int(counted.item()) - int(counted.item() / env.tp_size)
        flops_per_token = train_flops_per_token(
            num_params, mcfg.num_layers, mcfg.hidden_size, cfg.data.seq_len
        )
        peak = peak_flops()
        monitor.info(
            f"model {cfg.model.preset}: {num_params / 1e6:.1f}M parameters, "
            f"TP={env.tp_size}{' (+SP)' if cfg.parallel.sequence else ''} DP={env.dp_size}, {env.backend}, "
            f"attention={cfg.model.attention}, "
            f"KL λ={cfg.kl.weight}, data {cfg.data.kind}"
        )

        def save(at_step: int) -> None:
            meta = {
                "step": at_step,
                "consumed_samples": at_step * cfg.train.global_batch,
                "tp": env.tp_size,
                "dp": env.dp_size,
                "world_size": env.world_size,
                "model": mcfg.to_dict(),
                "padded_vocab_size": model.vocab_size,
                "distributed_optimizer": cfg.optim.distributed,
                "config": cfg.to_dict(),
            }
            path = checkpoint.save(
                ckpt_root, at_step, model, optimizer, meta, env.tp_rank, env.dp_rank, env.rank
            )
            monitor.info(f"saved {path}")

        def validate_all(at_step: int) -> dict[str, float]:
            losses = {
                name: evaluate(model, ds, cfg, env, mcfg, tp_group, dp_group)
                for name, ds in data.valid.items()
            }
            if losses:
                monitor.record(at_step, "valid", {f"loss_{k}": v for k, v in losses.items()})
                monitor.info(
                    f"step {at_step:>6} | validation " + " | ".join(f"{k} {v:.4f}" for k, v in losses.items())
                )
            return losses

        valid_losses = validate_all(step) if step == 0 else {}

        # ---- 6. The loop: one optimizer step per iteration.
        nonfinite_in_a_row = 0
        tokens_per_step = cfg.train.global_batch * cfg.data.seq_len
        while step < cfg.train.steps:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro_batches = step_micro_batches(
                data.train, step, cfg.train.global_batch, cfg.train.micro_batch, env.dp_rank, env.dp_size
            )
            # Every token of the global batch weighs the same, whatever the DP/micro-batch split.
            n_tokens = torch.tensor(
                [sum(int((batch.labels != IGNORE_INDEX).sum()) for batch in micro_batches)],
                dtype=torch.float64,
                device=env.device,
            )
            dist.all_reduce(n_tokens, group=dp_group)
            n_global = max(float(n_tokens.item()), 1.0)

            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            sums = torch.zeros(3, dtype=torch.float64, device=env.device)  # loss, ce, kl (× tokens)
            for batch in micro_batches:
                batch = batch.to(env.device)
                labels = batch.labels
                out = forward_loss(ddp, reference, batch, cfg, mcfg, tp_group)
                loss_micro = out.loss
                if step + 1 in cfg.debug.nonfinite_at_steps:
                    loss_micro = loss_micro * float("nan")
                n_micro = float((labels != IGNORE_INDEX).sum())
                # megatron DDP averages gradients over DP ranks; × dp_size turns that into a sum.
                (loss_micro * (n_micro / n_global * env.dp_size)).backward()
                sums += torch.stack([loss_micro.detach(), out.ce, out.kl]).double() * n_micro
            # DP all-reduce (or reduce-scatter) and, with sequence parallelism, the TP sum of the
            # norm weights' partial gradients.
            finalize_model_grads([ddp])
            dist.all_reduce(sums, group=dp_group)
            loss, ce, kl = (sums / n_global).tolist()

            if not math.isfinite(loss):
                nonfinite_in_a_row += 1
                warnings.warn(f"step {step + 1}: non-finite loss {loss}; skipping the update", stacklevel=1)
                if nonfinite_in_a_row >= cfg.logging.max_nonfinite:
                    raise VikhrError(
                        f"{nonfinite_in_a_row} non-finite losses in a row (logging.max_nonfinite); "
                        "lower optim.lr or check the data"
                    )
                grad_norm = float("nan")
            else:
                nonfinite_in_a_row = 0
                _, grad_norm, _ = optimizer.step()
                grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            step += 1
            if on_gpu:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0

            metrics = {
                "loss": loss,
                "ce": ce,
                "kl": kl,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tokens_per_step / dt,
                "mfu": (flops_per_token * tokens_per_step / dt / env.world_size / peak) if peak else None,
            }
            monitor.record(step, "train", metrics)
            if step % cfg.logging.log_every == 0 or step == cfg.train.steps:
                monitor.progress(step, cfg.train.steps, metrics)
            if step % cfg.logging.eval_every == 0 or step == cfg.train.steps:
                valid_losses = validate_all(step)
            if step % cfg.checkpoint.save_every == 0 or step == cfg.train.steps:
                save(step)
            if cfg.debug.kill_at_step is not None and step == cfg.debug.kill_at_step:
                dist.barrier()
                os.kill(os.getpid(), signal.SIGKILL)  # tests: a real, unclean death
        monitor.close()
        return {"step": step, "valid": valid_losses}
    finally:
        shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    from vikhr.runtime.megatron import quiet_megatron_warnings
    from vikhr.train.cli import build_arg_parser

    quiet_megatron_warnings()
    args = build_arg_parser().parse_args(argv)
    return run_from_args(args)


def run_from_args(args: argparse.Namespace) -> int:
    # The dry run sizes a cluster job from here: it needs the shapes, not the dataset files.
    from vikhr.train.cli import config_overrides

    cfg = load_config(args.config, config_overrides(args), check_files=not args.dry_run)
    if args.dry_run:
        from vikhr.train.memory import dry_run_table

        print(dry_run_table(cfg, gpus=args.gpus, gpu_memory_gb=args.gpu_memory_gb))
        return 0
    run(cfg)
    return 0
