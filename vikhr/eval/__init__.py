"""Evaluation through lm-evaluation-harness on local data: En/Ru-MMLU, Russian SuperGLUE, MERA, RuCoLA,
CheGeKa, XQuAD-ru, BPC; `compare` tabulates results of several models."""

from vikhr.eval.runner import EvalSettings, markdown_table, run_eval, write_results
from vikhr.eval.tasks import TASKS, parse_task_list

__all__ = ["TASKS", "EvalSettings", "markdown_table", "parse_task_list", "run_eval", "write_results"]
