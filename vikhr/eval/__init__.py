"""Evaluation through lm-evaluation-harness on local data: MMLU, TERRa, RuCoLA, CheGeKa, XQuAD-ru, BPC."""

from vikhr.eval.runner import EvalSettings, markdown_table, run_eval, write_results
from vikhr.eval.tasks import TASKS, parse_task_list

__all__ = ["TASKS", "EvalSettings", "markdown_table", "parse_task_list", "run_eval", "write_results"]
