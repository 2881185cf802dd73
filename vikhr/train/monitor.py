"""What a run reports: the progress line, metrics.jsonl, TensorBoard scalars, MFU."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vikhr.atomic import temporary_path
from vikhr.jsonl import drop_partial_last_line, read_jsonl

if TYPE_CHECKING:  # an annotation only
    from vikhr.model.config import ModelConfig

# Dense bf16 peak FLOP/s per device, for MFU (tensor cores, no sparsity; vendors' datasheets). The
# first name contained in the device's name wins: the PCIe and NVL H100s before the SXM one.
_PEAK_BF16 = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": None,  # not the A10's figure; unknown here
    "A10": 125e12,
}


def peak_flops(name: str | None = None) -> float | None:
    """The device's dense bf16 peak (the current CUDA device's when `name` is None), or None."""
    if name is None:
        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name()
    return next((v for k, v in _PEAK_BF16.items() if k in name), None)


def train_flops_per_token(cfg: ModelConfig, matmul_params: int, seq_len: int, reference: bool) -> float:
    """Model FLOPs per trained token: 6·N for the matmuls (N: the parameters that multiply, the
    input embedding being a lookup) plus causal attention (12·L·(heads·head_dim)·s, halved for
    causality: the attention width, which is not the hidden size for Qwen3 or Mistral-NeMo); with a
    KL reference, its forward pass too (a third of that again)."""
    width = cfg.num_attention_heads * cfg.head_dim
    trained = 6.0 * matmul_params + 6.0 * cfg.num_layers * width * seq_len
    return trained * (4.0 / 3.0 if reference else 1.0)


# The figures of a train row that are not the loss or its terms.
_STEP_FIGURES = ("lr", "grad_norm", "tokens_per_s", "mfu")


class Monitor:
    """Rank 0 only: prints, appends to metrics.jsonl and writes TensorBoard scalars."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.metrics_path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            if self.metrics_path.is_file():  # a resumed run appends after what a kill left
                drop_partial_last_line(self.metrics_path)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def record(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def progress(self, step: int, total: int, m: dict[str, Any]) -> None:
        """One line per logged step: the loss and its terms (whatever the loss reports), then the
        optimizer and throughput figures."""
        if not self.enabled:
            return
        terms = " | ".join(f"{k} {v:.5g}" for k, v in m.items() if k not in _STEP_FIGURES)
        line = (
            f"step {step:>6}/{total} | {terms} | "
            f"lr {m['lr']:.3e} | grad-norm {m['grad_norm']:.3f} | tok/s {m['tokens_per_s']:,.0f}"
        )
        if m.get("mfu") is not None:
            line += f" | mfu {100 * m['mfu']:.1f}%"
        print(line, flush=True)

    def info(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.enabled and self.metrics_path.is_file():
            plot_metrics(self.metrics_path, self.metrics_path.with_name("curves.png"))


def read_metrics(run_dir: Path) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """A run's train and validation rows of metrics.jsonl by step (the last row of a step wins: a
    resumed run rewrites the steps after its checkpoint)."""
    train: dict[int, dict[str, Any]] = {}
    valid: dict[int, dict[str, Any]] = {}
    for _, row in read_jsonl(run_dir / "metrics.jsonl", allow_nan=True):  # a skipped step's loss is NaN
        (train if row["kind"] == "train" else valid)[row["step"]] = row
    return train, valid


def plot_metrics(metrics_path: Path, png_path: Path) -> None:
    """Training loss (CE and KL) and per-dataset validation loss against the step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # By step, so a resumed run's rewritten steps are drawn once, as they finally ran.
    train_rows, valid_rows = read_metrics(metrics_path.parent)
    train: dict[str, list[tuple[int, float]]] = {"loss": [], "ce": [], "kl": []}
    valid: dict[str, list[tuple[int, float]]] = {}
    for step, rec in sorted(train_rows.items()):
        for k in train:
            if isinstance(rec.get(k), (int, float)):
                train[k].append((step, rec[k]))
    for step, rec in sorted(valid_rows.items()):
        for k, v in rec.items():
            if k not in ("step", "kind") and isinstance(v, (int, float)):
                valid.setdefault(k, []).append((step, v))
    fig, (ax_loss, ax_kl) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in [("train loss", train["loss"]), ("train CE", train["ce"])] + [
        (f"valid {k}", v) for k, v in sorted(valid.items())
    ]:
        if points:
            ax_loss.plot(
                *zip(*points, strict=True), label=name, marker="." if name.startswith("valid") else None
            )
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    if train["kl"]:
        ax_kl.plot(*zip(*train["kl"], strict=True), color="tab:red")
    ax_kl.set_xlabel("step")
    ax_kl.set_ylabel("KL to the reference (nats/token)")
    ax_kl.grid(alpha=0.3)
    fig.tight_layout()
    with temporary_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
