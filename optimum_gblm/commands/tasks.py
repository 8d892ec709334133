"""`optimum-cli gblm evaluate --tasks ...`: lm-eval tasks on a checkpoint (and a model to compare it with, e.g. its
dense base), side by side, with a summary table; `--record` adds them to the checkpoint's side-car and card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..configuration import CONFIG_NAME
from .base import check_model_folder, check_model_path
from .errors import UsageError
from .options import positive_int


def add_task_arguments(parser: argparse.ArgumentParser, comparing: bool = True) -> None:
    """The lm-eval options; `comparing` adds --compare and --record (evaluate). `prune` runs the tasks on the dense
    model before pruning and on the pruned one after, and saves both with the checkpoint."""
    group = parser.add_argument_group("lm-eval tasks (docs/evaluation.md; needs `pip install optimum-gblm[eval]`)")
    what = "instead of the perplexity / accuracy metric" if comparing else "on the dense and the pruned model"
    group.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help=f"Run lm-evaluation-harness tasks {what}: lm-eval task names (Hub data), task YAML files (local "
        "data), or knowledge_probe (offline, built from the held-out corpus).",
    )
    if comparing:
        group.add_argument(
            "--compare", metavar="MODEL", help="A second model (e.g. the dense base) evaluated on the same tasks."
        )
    group.add_argument("--limit", type=positive_int, metavar="N", help="At most N examples per task.")
    group.add_argument("--num-fewshot", type=int, metavar="N", help="Few-shot examples (default: each task's).")
    group.add_argument(
        "--max-gen-toks", type=positive_int, metavar="N", help="Token cap of generation tasks (default: each task's)."
    )
    group.add_argument(
        "--task-batch-size", type=positive_int, default=8, metavar="N", help="Requests per lm-eval batch (default 8)."
    )
    if comparing:
        group.add_argument(
            "--record",
            action="store_true",
            help="Add the results to the checkpoint's gblm_config.json (`tasks`) and re-render its README.md.",
        )


def check_task_arguments(args: argparse.Namespace) -> None:
    """Usage errors before any model is loaded: task names, Hub access while offline, paths, options."""
    used = [f"--{k.replace('_', '-')}" for k in ("compare", "limit", "num_fewshot", "max_gen_toks", "record")]
    if not args.tasks:
        given = [flag for flag in used if getattr(args, flag[2:].replace("-", "_"), None) not in (None, False)]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --tasks")
        return
    from ..evaluation.harness import prepared_tasks

    if getattr(args, "compare", None):
        check_model_path(args.compare)
        check_model_folder(args.compare)
    if getattr(args, "record", False) and not (Path(args.model).expanduser() / CONFIG_NAME).is_file():
        raise UsageError(f"--record needs a checkpoint folder with {CONFIG_NAME}; {args.model} has none")
    try:
        with prepared_tasks(args.tasks):
            pass
    except (ValueError, ImportError) as err:
        raise UsageError(str(err)) from None


def run_task_evaluation(args: argparse.Namespace, config: Any, pruned: bool, progress: bool) -> str:
    """Evaluate the model (and `--compare`) on the tasks; record them when asked; returns the summary table."""
    from ..pruner import GBLMPruner

    options = task_options(args)
    runs: dict[str, dict[str, Any]] = {}
    label = "pruned" if pruned else "dense"
    models = [(label, args.model)]
    if args.compare:
        models.insert(0, ("dense" if pruned else "compared", args.compare))
    for name, model in models:
        pruner = GBLMPruner.from_pretrained(model, config, check_memory=False)  # it evaluates; it plans no prune
        pruner.evaluate_tasks(args.tasks, name, progress=progress, **options)
        runs[name] = pruner.task_results[name]
        del pruner
    lines = [summary_table(runs)]
    if args.record:
        from ..publishing.task_results import record_task_results

        # the compared model counts as the dense base when the checkpoint is pruned (the user names it with --compare)
        folder = record_task_results(args.model, {k: v for k, v in runs.items() if k in ("dense", label)})
        lines.append(f"recorded in {folder / CONFIG_NAME} and {folder / 'README.md'}")
    return "\n".join(lines)


def task_options(args: argparse.Namespace) -> dict[str, Any]:
    """GBLMPruner.evaluate_tasks keyword arguments from the task options."""
    options = {"limit": args.limit, "num_fewshot": args.num_fewshot, "max_gen_toks": args.max_gen_toks}
    return {**options, "batch_size": args.task_batch_size}


def summary_table(runs: dict[str, dict[str, Any]]) -> str:
    """Task, metric and each run's value (± standard error), the change between two runs, then token costs."""
    labels = list(runs)
    rows = [("task", "metric", *labels, *(["change"] if len(labels) == 2 else []))]
    notes = []
    for task in dict.fromkeys(t for per_task in runs.values() for t in per_task):
        entries = [runs[label].get(task) or {} for label in labels]
        metrics = dict.fromkeys(m for e in entries for m in e.get("metrics", {}) if "_stderr" not in m)
        for metric in metrics:
            values = [e.get("metrics", {}).get(metric) for e in entries]
            cells = [_value(e.get("metrics", {}), metric) for e in entries]
            change = []
            if len(labels) == 2:
                change = [f"{values[1] - values[0]:+.4f}" if None not in values else "-"]
            rows.append((task, metric, *cells, *change))
        for entry in entries:
            generation = entry.get("generation")
            if generation:
                policy = generation["policy"]
                notes.append(
                    f"{task}: stops at {policy['until']} or the end-of-text token, at most {policy['max_gen_toks']} "
                    f"tokens, greedy={not policy['do_sample']}"
                )
                break
        tokens = [(e.get("generation") or {}).get("tokens") for e in entries]
        if any(tokens):
            for stat in ("mean", "p50", "p90", "max", "at_max_gen_toks"):
                cells = [_num(t.get(stat)) if t else "-" for t in tokens]
                rows.append((task, f"generated tokens {stat}", *cells, *([""] if len(labels) == 2 else [])))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    text = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(text + [f"  {n}" for n in dict.fromkeys(notes)])


def _value(metrics: dict[str, float], metric: str) -> str:
    if metric not in metrics:
        return "-"
    base, _, filt = metric.partition("/")
    stderr = metrics.get(f"{base}_stderr" + (f"/{filt}" if filt else ""))
    return f"{metrics[metric]:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)
