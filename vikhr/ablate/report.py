"""ablation.csv (one row per arm × seed), ablation.md (mean ± std over seeds, by group) and two PNGs.

Every column but the `wall_*` ones is a deterministic function of the config and the seeds; the wall
times sit in their own columns at the end so that runs compare with them dropped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vikhr.ablate.runner import REPORT_FILES, AblationResult, RunResult
from vikhr.atomic import temporary_path, write_text
from vikhr.charts import legend_beside, series_colours
from vikhr.curves import plot_curve, whole_steps
from vikhr.provenance import describe

CSV_COLUMNS = [
    "arm",
    "group",
    "seed",
    "slerp_of",
    "tokenizer",
    "init",
    "kl_weight",
    "kl_direction",
    "budget",
    "slerp_t",
    "steps",
    "tokens_seen",
    "chars_seen",
    "ru_bpc_start",
    "en_bpc_start",
    "ru_bpc",
    "en_bpc",
    "ru_bpc_gain",
    "en_bpc_forgetting",
    "wall_train_s",
    "wall_eval_s",
]


def _row(r: RunResult, base: dict[str, float], tokenizer: str) -> list[str]:
    """One run's CSV row; `tokenizer`: its model's (base, replace or extend)."""
    a = r.trained or r.arm  # a merge lists the training settings of the run it merges
    merged = r.trained is not None
    return [
        r.arm.name,
        r.arm.group,
        str(r.seed),
        r.arm.slerp_of or "",
        tokenizer,
        a.init if tokenizer != "base" else "",
        f"{a.kl_weight:g}",
        a.kl_direction,
        a.budget,
        "" if r.arm.slerp_t is None else f"{r.arm.slerp_t:g}",
        str(r.steps),
        str(r.tokens_seen),
        str(r.chars_seen),
        f"{r.ru_bpc_start:.6f}",
        f"{r.en_bpc_start:.6f}",
        f"{r.ru_bpc:.6f}",
        f"{r.en_bpc:.6f}",
        f"{base['ru'] - r.ru_bpc:.6f}",
        f"{r.en_bpc - base['en']:.6f}",
        "" if merged else f"{r.wall_train_s:.2f}",  # a merge trains nothing: no time, not 0 s
        f"{r.wall_eval_s:.2f}",
    ]


def csv_text(result: AblationResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in result.runs:
        w.writerow(_row(r, result.base_bpc, result.config.tokenizer_of(r.arm)))
    return buf.getvalue()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN where a value is not finite,
    which statistics.stdev cannot take)."""
    if len(values) < 2:
        return statistics.fmean(values), 0.0
    if not all(math.isfinite(v) for v in values):
        return statistics.fmean(values), math.nan
    return statistics.fmean(values), statistics.stdev(values)


def _cell(values: Sequence[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _by_arm(result: AblationResult) -> dict[str, list[RunResult]]:
    arms: dict[str, list[RunResult]] = {}
    for r in result.runs:
        arms.setdefault(r.arm.name, []).append(r)
    return arms


def _measured_by(r: RunResult) -> str:
    """What a result measured: arms of one run key train once per seed (and merges of one run at
    one t are one merge), so their figures are the same."""
    if r.trained is not None:
        return json.dumps(["merge", r.trained.run_key(), r.arm.slerp_t])
    return r.arm.run_key()


def _chart_series(result: AblationResult) -> list[tuple[str, list[RunResult]]]:
    """The charts' series, one per run the grid measured, labelled with every arm that shares it
    (`adapted = init-mean = kl-0`): drawn once per arm, the last one covered the others, which the
    legend listed in colours the chart did not show."""
    arms = _by_arm(result)
    sharing: dict[str, list[str]] = {}
    for name, rs in arms.items():
        sharing.setdefault(_measured_by(rs[0]), []).append(name)
    return [(" = ".join(names), arms[names[0]]) for names in sharing.values()]


def _overrides(overrides: dict[str, object]) -> str:
    return " with " + ", ".join(f"{k}={v}" for k, v in overrides.items()) if overrides else ""


def _adapted_tokenizers(result: AblationResult) -> list[str]:
    """A line for each adapted tokenizer of the grid: its mode, and its starts' rows copied from the
    base model and made new."""
    t = result.config.tokenizer
    lines = []
    for mode in result.config.adapted_modes():
        if mode == "replace":
            line = f"Adapted tokenizer: replace, a new SentencePiece BPE of {t.vocab_size:,} pieces"
        else:
            line = f"Adapted tokenizer: extend, the base's with {t.new_tokens:,} new tokens asked for"
        rows = result.adapted_rows.get(mode)
        if rows is not None:
            line += (
                f"; of its {rows['tokens']:,} embedding rows, {rows['copied']:,} are copied from the base "
                f"model's and {rows['new']:,} are new (initialised by the arm's init)"
            )
        lines += [line + ".", ""]
    return lines or ["Adapted tokenizer: none (every arm keeps the base's).", ""]


def _made_with(result: AblationResult) -> list[str]:
    """The line naming the code and libraries that ran the grid (each of a resumed grid's in turn)."""
    if not result.made_with:
        return []
    first, *resumed = map(describe, result.made_with)
    return [f"Made with {first}{''.join(f'; resumed with {r}' for r in resumed)}.", ""]


def markdown(result: AblationResult) -> str:
    cfg, base = result.config, result.base_bpc
    blend_cpt = ", ".join(
        f"{'base tokenizer' if label == 'base' else label} {c:.3f}"
        for label, c in result.chars_per_token.items()
    )
    if cfg.base.init is None:
        model = f"Model preset `{cfg.model.preset}`{_overrides(cfg.model.overrides)}"
        pretrained = f"; base pre-trained {cfg.base.steps} steps on English"
        pretrained += " (from the cache)" if result.base_cached else ""
    else:
        model, pretrained = f"Base model `{cfg.base.init}` (base.init), in its own shape", ""
    lines = [
        "# Ablation",
        "",
        f"Seeds: {', '.join(map(str, cfg.seeds))} (mean ± sample std over them). {model}; "
        f"{cfg.train.steps} steps of {cfg.train.global_batch} × {cfg.train.seq_len} tokens{pretrained}.",
        "",
        f"Base model: RU {base['ru']:.3f} bpc, EN {base['en']:.3f} bpc. Chars per token of the training "
        f"blend: {blend_cpt}.",
        "",
        *_adapted_tokenizers(result),
        "RU gain = base RU bpc − arm RU bpc (higher is better); EN forgetting = arm EN bpc − base EN bpc "
        "(lower is better). Wall times are per run on this machine.",
        "",
        *_made_with(result),
    ]
    arms = _by_arm(result)
    groups: dict[str, list[str]] = {}
    for a in cfg.arms:
        groups.setdefault(a.group, []).append(a.name)
    header = (
        "| arm | tokenizer | steps | chars seen | RU bpc at step 0 | EN bpc at step 0 | RU bpc | EN bpc "
        "| RU gain | EN forgetting | train s |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for group, names in groups.items():
        lines += [f"## {group}", "", header]
        for name in names:
            rs = arms[name]
            lines.append(
                f"| {name} | {cfg.tokenizer_of(rs[0].arm)} | {rs[0].steps} | {rs[0].chars_seen:,} "
                f"| {_cell([r.ru_bpc_start for r in rs])} "
                f"| {_cell([r.en_bpc_start for r in rs])} "
                f"| {_cell([r.ru_bpc for r in rs])} | {_cell([r.en_bpc for r in rs])} "
                f"| {_cell([base['ru'] - r.ru_bpc for r in rs])} "
                f"| {_cell([r.en_bpc - base['en'] for r in rs])} "
                f"| {'—' if rs[0].trained else _cell([r.wall_train_s for r in rs], 1)} |"
            )
        lines.append("")
    lines += ["![loss curves](loss_curves.png)", "", "![RU vs EN bpc](tradeoff.png)", ""]
    return "\n".join(lines)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (lower is better), by the first one."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def _save(fig: object, path: Path) -> None:
    with temporary_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")  # type: ignore[attr-defined]


def loss_curves_figure(result: AblationResult) -> Any:
    """The figure of loss_curves.png: each training arm's train CE, the mean over its seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _chart_series(result)
    colours = series_colours(len(series))  # a series has the same colour in both charts
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, rs) in enumerate(series):
        if not rs[0].train_losses:
            continue  # merges do not train
        steps = sorted(set.intersection(*(set(r.train_losses) for r in rs)))
        means = [statistics.fmean(r.train_losses[s] for r in rs) for s in steps]
        plot_curve(ax, steps, means, label=name, color=colours[i])
    ax.set_xlabel("step")
    ax.set_ylabel("train cross-entropy (nats/token; the tokenizers differ)")
    ax.set_title(f"loss curves, mean over {len(result.config.seeds)} seed(s)")
    whole_steps(ax)
    legend_beside(ax)
    return fig


def tradeoff_figure(result: AblationResult) -> Any:
    """The figure of tradeoff.png: each arm's held-out RU against EN bits per character (the mean over
    the seeds, error bars their sample standard deviation, as the title says), the frontier and the
    base model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _chart_series(result)
    fig, ax = plt.subplots(figsize=(7, 6))
    points = []
    # One colour per series (up to 20) and one marker per group (its first arm's), so that no two
    # look alike.
    colours = series_colours(len(series))
    markers = "osD^vP*X"
    groups = list(dict.fromkeys(a.group for a in result.config.arms))
    for i, (name, rs) in enumerate(series):
        (rx, sx), (ry, sy) = mean_std([r.ru_bpc for r in rs]), mean_std([r.en_bpc for r in rs])
        if math.isfinite(rx) and math.isfinite(ry):  # a diverged arm has no place on the frontier
            points.append((rx, ry))
        marker = markers[groups.index(rs[0].arm.group) % len(markers)]
        ax.errorbar(rx, ry, xerr=sx, yerr=sy, fmt=marker, capsize=3, color=colours[i], label=name)
    front = pareto_front(points)
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="trade-off frontier")
    base = result.base_bpc
    xs = [p[0] for p in points] or [base["ru"]]
    if base["ru"] <= max(xs) + 2 * (max(xs) - min(xs) + 0.1):
        ax.scatter([base["ru"]], [base["en"]], marker="*", s=150, color="black", label="base model")
    else:  # far to the right: drawn, it would squeeze every arm into a corner
        ax.text(
            0.98,
            0.02,
            f"base model (off the plot): RU {base['ru']:.2f}, EN {base['en']:.2f}",
            transform=ax.transAxes,
            ha="right",
            fontsize=8,
        )
    ax.set_xlabel("RU bits per character (held out; lower is better)")
    ax.set_ylabel("EN bits per character (held out; lower is better)")
    seeds = len(result.config.seeds)
    ax.set_title(
        f"mean over {seeds} seeds; error bars: ± sample standard deviation"
        if seeds > 1
        else "one seed: no error bars"
    )
    legend_beside(ax)
    return fig


def plot(result: AblationResult, out: Path) -> None:
    import matplotlib.pyplot as plt

    for figure, name in ((loss_curves_figure, "loss_curves.png"), (tradeoff_figure, "tradeoff.png")):
        fig = figure(result)
        _save(fig, out / name)
        plt.close(fig)


def write_report(result: AblationResult) -> list[Path]:
    """ablation.csv, ablation.md, loss_curves.png and tradeoff.png in cfg.out_dir; their paths."""
    out = Path(result.config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    assert all(math.isfinite(v) for v in result.base_bpc.values())
    write_text(out / "ablation.csv", csv_text(result))
    plot(result, out)
    write_text(out / "ablation.md", markdown(result))
    return [out / n for n in REPORT_FILES]
