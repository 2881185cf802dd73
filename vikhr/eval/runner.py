"""Run the vikhr evaluation tasks on a local HF model directory through lm-evaluation-harness."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.atomic import write_text
from vikhr.errors import VikhrError
from vikhr.eval.tasks import TASKS, build_task_config, effective_fewshot

DEFAULT_SEED = 1234


@dataclass
class EvalSettings:
    """What `vikhr eval` runs: see `vikhr eval --help` for each field."""

    model_dir: Path
    tasks: list[str]
    data_dir: Path
    bpc_data: Path
    bpc_field: str = "text"
    tokenizer: Path | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int | str = 1
    device: str | None = None
    dtype: str = "auto"
    max_length: int | None = None
    bootstrap_iters: int = 1000
    seed: int = DEFAULT_SEED
    log_samples: bool = False


def _offline() -> None:
    # Evaluation never touches the hub: models, tokenizers and data are local.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # lm-eval bootstraps stderrs in a process pool by default; forking a process holding torch
    # threads is fragile and the serial path gives the same numbers.
    os.environ.setdefault("DISABLE_MULTIPROC", "1")


def check_model_dir(model_dir: Path) -> None:
    if not model_dir.exists():
        raise VikhrError(
            f"model directory not found: {model_dir} "
            "(pass the HF directory written by 'vikhr convert megatron-to-hf' or 'vikhr adapt-vocab')"
        )
    if not model_dir.is_dir():
        raise VikhrError(f"--model must be an HF model directory, not a file: {model_dir}")
    if not (model_dir / "config.json").is_file():
        raise VikhrError(f"{model_dir} has no config.json (is it an HF model directory?)")
    if not any(model_dir.glob("*.safetensors")):
        # Pickled *.bin weights are not loaded: safetensors only.
        raise VikhrError(f"{model_dir} has no *.safetensors weights")


def load_tokenizer(model_dir: Path, tokenizer: Path | None, workdir: Path) -> Any:
    """The HF tokenizer: from --tokenizer (HF dir or SentencePiece .model) or the model directory."""
    from transformers import AutoTokenizer

    source = tokenizer or model_dir
    if not source.exists():
        raise VikhrError(f"tokenizer not found: {source} (pass an HF tokenizer directory or a .model file)")
    if source.is_file():
        if source.suffix != ".model":
            raise VikhrError(
                f"--tokenizer {source}: pass a directory with tokenizer.json or a SentencePiece .model file"
            )
        from vikhr.tokenizer.hf_export import write_hf_tokenizer

        write_hf_tokenizer(source, workdir / "tokenizer")
        source = workdir / "tokenizer"
    elif not (source / "tokenizer.json").is_file() and not (source / "tokenizer.model").is_file():
        hint = "" if tokenizer else " (pass --tokenizer DIR_OR_MODEL_FILE)"
        raise VikhrError(f"no tokenizer.json or tokenizer.model in {source}{hint}")
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as e:
        raise VikhrError(f"cannot load the tokenizer from {source}: {e}") from e


def _make_lm(settings: EvalSettings, tokenizer: Any) -> Any:
    import torch
    from lm_eval.models.huggingface import HFLM

    class RollingWithoutBosLM(HFLM):
        """HFLM whose rolling loglikelihood scores the text's tokens only.

        HFLM encodes a rolling text with the tokenizer's default special tokens, so with a tokenizer
        that adds BOS (Mistral, Llama) the text's first "token" would be a BOS after the BOS prefix
        token, scored as part of the text. Here the text is encoded without special tokens and the
        prefix token (BOS) conditions the first real token, as in training.
        """

        _rolling = False

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            self._rolling = True
            try:
                return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
            finally:
                self._rolling = False

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
            if self._rolling and add_special_tokens is None:
                add_special_tokens = False
            return super().tok_encode(string, add_special_tokens=add_special_tokens, **kwargs)

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VikhrError(f"--device {device}: no CUDA device is available (use --device cpu)")
    return RollingWithoutBosLM(
        pretrained=str(settings.model_dir),
        tokenizer=tokenizer,
        device=device,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        trust_remote_code=False,
    )


def _check_vocab(lm: Any, tokenizer: Any) -> None:
    rows = lm.model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise VikhrError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows "
            "(wrong --tokenizer for this model?)"
        )


def _metric_value(value: Any) -> float | None:
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def run_eval(settings: EvalSettings, lm: Any | None = None) -> dict[str, Any]:
    """Evaluate; returns {"tasks": {name: {"metrics", "stderr", "num_fewshot", "n"}}, "samples"?, ...}.

    `lm` may be a ready lm-eval LM (reused across calls, e.g. in tests); otherwise the model is
    loaded from `settings.model_dir`.
    """
    _offline()
    if lm is None:
        check_model_dir(settings.model_dir)
    if settings.limit is not None and settings.limit < 1:
        raise VikhrError(f"--limit must be a positive number of documents, got {settings.limit}")
    if settings.num_fewshot is not None and settings.num_fewshot < 0:
        raise VikhrError(f"--num-fewshot must be >= 0, got {settings.num_fewshot}")
    # Every task's files are checked before the (slow) model load.
    configs = {
        name: build_task_config(
            name,
            settings.data_dir,
            settings.num_fewshot,
            settings.bpc_data,
            settings.bpc_field,
            settings.limit,
        )
        for name in settings.tasks
    }

    import lm_eval
    import lm_eval.evaluator
    from lm_eval.api.task import ConfigurableTask

    started = time.time()
    tasks = {}
    task_logger = logging.getLogger("lm_eval.api.task")
    level = task_logger.level
    # lm-eval logs a hint about --metadata for every custom_dataset task; it does not apply here.
    task_logger.setLevel(logging.ERROR)
    try:
        # Documents are read (and checked) before the model is loaded.
        for name, config in configs.items():
            task = ConfigurableTask(config=config)
            task.set_fewshot_seed(seed=settings.seed)
            tasks[name] = task
    finally:
        task_logger.setLevel(level)
    with tempfile.TemporaryDirectory(prefix="vikhr-eval-") as tmp:
        if lm is None:
            tokenizer = load_tokenizer(settings.model_dir, settings.tokenizer, Path(tmp))
            lm = _make_lm(settings, tokenizer)
            _check_vocab(lm, tokenizer)
        import random

        import numpy as np
        import torch

        random.seed(settings.seed)
        np.random.seed(settings.seed)
        torch.manual_seed(settings.seed)
        with warnings.catch_warnings():
            # Bootstrapping MCC on few documents draws resamples with a single label; sklearn warns
            # about each one.
            warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
            raw = lm_eval.evaluator.evaluate(
                lm=lm,
                task_dict={"tasks": tasks, "groups": {}},
                limit=settings.limit,
                bootstrap_iters=settings.bootstrap_iters,
                log_samples=settings.log_samples,
            )
    if raw is None:  # only on non-zero ranks of a distributed run
        return {}
    out: dict[str, Any] = {
        "model": str(settings.model_dir),
        "tokenizer": str(settings.tokenizer or settings.model_dir),
        "lm_eval_version": lm_eval.__version__,
        "limit": settings.limit,
        "seed": settings.seed,
        "seconds": round(time.time() - started, 1),
        "tasks": {},
    }
    n_samples = raw.get("n-samples", {})
    for name in settings.tasks:
        res = raw["results"][name]
        metrics = {m: _metric_value(res.get(f"{m},none")) for m in TASKS[name].metrics}
        stderr = {m: _metric_value(res.get(f"{m}_stderr,none")) for m in TASKS[name].metrics}
        out["tasks"][name] = {
            "metrics": metrics,
            "stderr": {m: s for m, s in stderr.items() if s is not None},
            "num_fewshot": effective_fewshot(name, settings.num_fewshot),
            "n": n_samples.get(name, {}).get("effective"),
            "data": [
                str(p)
                for p in (
                    [settings.bpc_data]
                    if name == "bpc"
                    else [
                        settings.data_dir / f for f in (TASKS[name].eval_file, TASKS[name].fewshot_file) if f
                    ]
                )
            ],
        }
    if settings.log_samples:
        out["samples"] = raw.get("samples", {})
    return out


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (one row per task and metric)."""
    lines = [
        f"Model: `{results['model']}`"
        + (f" (limit {results['limit']} documents per task)" if results["limit"] else ""),
        "",
        "| Task | Metric | Value | ± stderr | Shots | Documents |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, task in results["tasks"].items():
        for metric, value in task["metrics"].items():
            shown = "n/a" if value is None else f"{value:.4f}"
            err = task["stderr"].get(metric)
            lines.append(
                f"| {name} | {metric} | {shown} | {'' if err is None else f'{err:.4f}'} | "
                f"{task['num_fewshot']} | {task['n'] if task['n'] is not None else ''} |"
            )
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], output: Path) -> tuple[Path, Path]:
    """Write `output` (JSON) and the Markdown table next to it (same stem, .md), each atomically."""
    output.parent.mkdir(parents=True, exist_ok=True)
    md_path = output.with_suffix(".md")
    if md_path == output:
        raise VikhrError(f"--output {output}: use a .json file name (the Markdown table goes next to it)")
    for path, text in (
        (output, json.dumps(results, ensure_ascii=False, indent=2, default=str) + "\n"),
        (md_path, markdown_table(results)),
    ):
        write_text(path, text)
    return output, md_path
