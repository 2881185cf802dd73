"""What a run reports: the progress line, metrics.jsonl, TensorBoard scalars, MFU."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vikhr.atomic import temporary_path, write_text
from vikhr.charts import legend_beside, series_colours
from vikhr.curves import plot_curve, same_values, whole_steps
from vikhr.jsonl import drop_partial_last_line, read_jsonl

if TYPE_CHECKING:  # an annotation only
    from vikhr.model.config import ModelConfig

# Dense bf16 peak FLOP/s per device, for MFU (tensor cores, no sparsity; vendors' datasheets). The
# first name contained in the device's name wins: the NVL H200 and the PCIe and NVL H100s before the
# SXM ones.
_PEAK_BF16 = {
    "H200 NVL": 835e12,
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
_STEP_FIGURES = ("loss_tokens", "lr", "grad_norm", "tokens_per_s", "mfu")


class Monitor:
    """Rank 0 only: prints, appends to metrics.jsonl and writes TensorBoard scalars.

    The files hold the current run's history alone. A run resumed at step `resume_step` drops what
    an earlier attempt logged after that step; a fresh start (`resume_step` None) moves an earlier
    run's metrics.jsonl, tensorboard/ and curves.png into previous/N/. Nothing is touched before the
    first record, so a run refused during setup leaves them as they were."""

    def __init__(
        self, out_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None = None
    ) -> None:
        self.enabled = enabled
        self.out_dir = out_dir
        self.metrics_path = out_dir / "metrics.jsonl"
        self.resume_step = resume_step
        self.tensorboard = tensorboard
        self.tb = None
        self.started = False

    def _start(self) -> None:
        self.started = True
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.resume_step is None:
            set_aside_previous_run(self.out_dir)
        elif self.metrics_path.is_file():
            keep_steps_up_to(self.metrics_path, self.resume_step)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard hides the earlier events at and after purge_step: the replayed steps.
            purge = None if self.resume_step is None else self.resume_step + 1
            self.tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=purge)

    def record(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self.started:
            self._start()
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def progress(self, step: int, total: int, m: dict[str, Any]) -> None:
        """One line per logged step: the loss and its terms (whatever the loss reports), the tokens
        it was taken over (SFT: the assistant tokens), then the optimizer and throughput figures."""
        if not self.enabled:
            return
        terms = " | ".join(f"{k} {v:.5g}" for k, v in m.items() if k not in _STEP_FIGURES)
        line = (
            f"step {step:>6}/{total} | {terms} | loss-tokens {m['loss_tokens']:,} | "
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
        # A run that recorded nothing draws nothing: the file may still be an earlier run's.
        if self.started and self.metrics_path.is_file():
            plot_metrics(self.metrics_path, self.metrics_path.with_name("curves.png"))


# What a run writes beside its checkpoints, set aside together when a fresh run starts there.
_RUN_LOGS = ("metrics.jsonl", "tensorboard", "curves.png")


def set_aside_previous_run(out_dir: Path) -> Path | None:
    """Move an earlier run's logs into out_dir/previous/N (the first free N); that folder, or None."""
    present = [out_dir / name for name in _RUN_LOGS if (out_dir / name).exists()]
    if not present:
        return None
    n = 1
    while (out_dir / "previous" / str(n)).exists():
        n += 1
    target = out_dir / "previous" / str(n)
    target.mkdir(parents=True)
    for path in present:
        path.rename(target / path.name)
    return target


def keep_steps_up_to(metrics_path: Path, step: int) -> None:
    """Drop the rows after `step` (an abandoned attempt's, replayed by the resumed run) and a
    partial last line a kill left; lines that are not JSON stay for the reader to name."""
    drop_partial_last_line(metrics_path)
    lines = metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)

    def kept(line: str) -> bool:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return True
        return not (isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step)

    remaining = [line for line in lines if kept(line)]
    if len(remaining) < len(lines):
        write_text(metrics_path, "".join(remaining))


def read_metrics(run_dir: Path) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """A run's train and validation rows of metrics.jsonl by step (the last row of a step wins)."""
    train: dict[int, dict[str, Any]] = {}
    valid: dict[int, dict[str, Any]] = {}
    for _, row in read_jsonl(run_dir / "metrics.jsonl", allow_nan=True):  # a skipped step's loss is NaN
        (train if row["kind"] == "train" else valid)[row["step"]] = row
    return train, valid


def curves_figure(run_dir: Path) -> Any:
    """The figure of curves.png: training loss (CE, and KL when the run logged it) and per-dataset
    validation loss against the step (a matplotlib Figure; close it with matplotlib.pyplot.close)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_rows, valid_rows = read_metrics(run_dir)
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
    # A run with kl.weight 0 logs no KL: no panel for it.
    fig, axes = plt.subplots(1, 2 if train["kl"] else 1, figsize=(11 if train["kl"] else 6, 4), squeeze=False)
    ax_loss = axes[0][0]
    # Without KL in the loss the loss is the CE: two lines would lie one on the other.
    if train["loss"] and same_values(train["loss"], train["ce"]):
        series = [("train loss (CE)", train["loss"])]
    else:
        series = [("train loss", train["loss"]), ("train CE", train["ce"])]
    series = [(name, points) for name, points in series if points]
    series += [(f"valid {k}", v) for k, v in sorted(valid.items())]
    # Past ten lines the default colour cycle repeats: two datasets would share a colour.
    for (name, points), colour in zip(series, series_colours(len(series)), strict=True):
        plot_curve(
            ax_loss,
            *zip(*points, strict=True),
            label=name,
            color=colour,
            marker="." if name.startswith("valid") else None,
        )
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (nats/token)")
    whole_steps(ax_loss)
    legend_beside(ax_loss, fontsize="small")  # many validation sets' entries would cover the lines
    ax_loss.grid(alpha=0.3)
    if train["kl"]:
        ax_kl = axes[0][1]
        plot_curve(ax_kl, *zip(*train["kl"], strict=True), color="tab:red")
        ax_kl.set_xlabel("step")
        whole_steps(ax_kl)
        ax_kl.set_ylabel("KL to the reference (nats/token)")
        ax_kl.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_metrics(metrics_path: Path, png_path: Path) -> None:
    """`curves_figure` of the run whose metrics.jsonl is `metrics_path`, as one PNG."""
    import matplotlib.pyplot as plt

    fig = curves_figure(metrics_path.parent)
    with temporary_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
