"""The argument handling of `GBLMPruner.evaluate` (the adapter's metric) and its deprecated `tasks=` form.

`evaluate` has one signature for every metric (perplexity takes text options, top-1 accuracy image options). A value
equal to the signature's default counts as not given, so the evaluator keeps its own default; a given value the
evaluator does not take (its declared `keywords`) is a TypeError naming what it does take.
"""

from __future__ import annotations

from typing import Any

from .evaluator import DEFAULT_EVAL_WINDOWS, DEFAULT_IMAGE_BATCH

# GBLMPruner.evaluate's keyword defaults (a test checks that they match its signature).
METRIC_DEFAULTS: dict[str, Any] = {
    "source": None,
    "seqlen": None,
    "max_windows": DEFAULT_EVAL_WINDOWS,
    "images": None,
    "labels": None,
    "split": "validation",
    "batch_size": DEFAULT_IMAGE_BATCH,
    "progress": True,
}
# The lm-eval options `evaluate(tasks=...)` still takes for one release (evaluate_tasks takes them now).
TASK_DEFAULTS: dict[str, Any] = {"limit": None, "num_fewshot": None, "max_gen_toks": None}
TASKS_DEPRECATED = (
    "evaluate(tasks=...) is deprecated and will be removed in the next release: use "
    "evaluate_tasks(tasks, label, limit=..., num_fewshot=..., max_gen_toks=..., batch_size=..., progress=...)"
)


def _is_default(value: Any, default: Any) -> bool:
    return value is default or (isinstance(value, (str, int, float)) and value == default)


def chosen_options(evaluator: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The given options (those not at their default) for `evaluator`, which declares the `keywords` it takes;
    a TypeError, before anything is measured, when one of them does not apply to it."""
    defaults = {**METRIC_DEFAULTS, **TASK_DEFAULTS}
    chosen = {k: v for k, v in given.items() if not _is_default(v, defaults[k])}
    misplaced = [k for k in chosen if k not in evaluator.keywords]
    if misplaced:
        names, verb = ", ".join(f"{k}=" for k in misplaced), "does" if len(misplaced) == 1 else "do"
        hint = "; lm-eval tasks are run by evaluate_tasks(tasks, ...)" if set(misplaced) & set(TASK_DEFAULTS) else ""
        raise TypeError(
            f"{names} {verb} not apply to this model: it is evaluated by {evaluator.metric_name}, which takes "
            + ", ".join(evaluator.keywords)
            + hint
        )
    return chosen
