"""The lm-eval task results of a side-car (`tasks`: label -> task -> metrics, settings, token cost) on the model
card: `model-index` entries (one per task and metric, per label) and a results table. Plain data in, no lm-eval."""

from __future__ import annotations

from typing import Any

PROBE_NAME = "Offline knowledge probe (held-out Wikipedia leads)"
_TOKEN_STATS = ("mean", "p50", "p90", "max")


def _labels(tasks: dict[str, Any]) -> list[str]:
    return sorted(tasks, key=lambda label: (label != "dense", label))


def _is_stderr(metric: str) -> bool:
    return metric.split("/", 1)[0].endswith("_stderr")


def _dataset(task: str, entry: dict[str, Any]) -> dict[str, Any]:
    """model-index dataset fields. The Hub groups results by (task type, dataset type, config, split), so a local
    task (or the probe) is typed by its own name: two local tasks never merge into one dataset."""
    if entry.get("source") == "generated":
        return {"type": task, "name": f"{PROBE_NAME} ({task})"}
    dataset = entry.get("dataset") or {}
    if entry.get("source") not in (None, "lm-eval") or not dataset.get("path"):
        return {"type": task, "name": task, "split": entry.get("split")}
    return {"type": dataset["path"], "name": task, "config": dataset.get("name"), "split": entry.get("split")}


def task_rows(sidecar: dict[str, Any]) -> list[tuple[str, str, dict[str, float]]]:
    """(task, metric, {label: value}) for every recorded metric (standard errors apart) and, for generation tasks,
    the mean generated tokens per answer."""
    tasks = sidecar.get("tasks") or {}
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for label in _labels(tasks):
        for task, entry in sorted((tasks[label] or {}).items()):
            for metric, value in sorted((entry.get("metrics") or {}).items()):
                if not _is_stderr(metric):
                    rows.setdefault((task, metric), {})[label] = value
            tokens = (entry.get("generation") or {}).get("tokens") or {}
            if "mean" in tokens:
                rows.setdefault((task, "generated_tokens_mean"), {})[label] = tokens["mean"]
    return [(task, metric, values) for (task, metric), values in rows.items()]


def task_eval_results(sidecar: dict[str, Any], task_type: str, task_name: str) -> list[Any]:
    """huggingface_hub `EvalResult`s: one per task, metric and label."""
    tasks = sidecar.get("tasks") or {}
    results, owner = [], {}  # dataset identifier -> the task that uses it
    for task, metric, values in task_rows(sidecar):
        entry = next(tasks[label][task] for label in _labels(tasks) if task in (tasks[label] or {}))
        dataset = _dataset(task, entry)
        key = (dataset["type"], dataset.get("config"), dataset.get("split"))
        if owner.setdefault(key, task) != task:  # two Hub tasks on one dataset: keep them apart
            dataset = {**dataset, "type": task}
        for label, value in values.items():
            results.append(eval_result(task_type, task_name, dataset, metric, f"{task} {metric} ({label})", value))
    return results


def eval_result(
    task_type: str, task_name: str, dataset: dict[str, Any], metric: str, metric_name: str, value: float
) -> Any:
    """One huggingface_hub `EvalResult` (a model-index entry) of a value measured on `dataset`."""
    from huggingface_hub import EvalResult

    return EvalResult(
        task_type=task_type,
        task_name=task_name,
        dataset_type=dataset["type"],
        dataset_name=dataset["name"],
        dataset_config=dataset.get("config"),
        dataset_split=dataset.get("split"),
        metric_type=metric,
        metric_name=metric_name,
        metric_value=round(float(value), 6),
    )


def _cell(entry: dict[str, Any] | None, metric: str) -> str:
    if entry is None:
        return "-"
    metrics = entry.get("metrics") or {}
    if metric == "generated_tokens_mean":
        tokens = (entry.get("generation") or {}).get("tokens") or {}
        return " / ".join(f"{tokens[k]:.1f}" if k == "mean" else str(tokens[k]) for k in _TOKEN_STATS if k in tokens)
    value = metrics.get(metric)
    if value is None:
        return "-"
    base, _, filt = metric.partition("/")
    stderr = metrics.get(f"{base}_stderr" + (f"/{filt}" if filt else ""))
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def task_results_section(sidecar: dict[str, Any]) -> str:
    """A Markdown table of the lm-eval results (value ± standard error), labels side by side, and the generation
    policy of generate_until tasks; "" when no task was evaluated."""
    tasks = sidecar.get("tasks") or {}
    rows = task_rows(sidecar)
    if not rows:
        return ""
    labels = _labels(tasks)
    lines = ["| Task | Metric | " + " | ".join(label.capitalize() for label in labels) + " |"]
    lines.append("|" + "---|" * (2 + len(labels)))
    for task, metric, _ in rows:
        shown = "generated tokens (mean / p50 / p90 / max)" if metric == "generated_tokens_mean" else metric
        cells = [_cell((tasks[label] or {}).get(task), metric) for label in labels]
        lines.append(f"| {task} | {shown} | " + " | ".join(cells) + " |")
    notes = []
    for task in dict.fromkeys(task for task, _, _ in rows):
        entry = next(tasks[label][task] for label in labels if task in (tasks[label] or {}))
        policy = (entry.get("generation") or {}).get("policy")
        if policy:
            notes.append(
                f"`{task}`: greedy={not policy.get('do_sample')}, stops at {policy.get('until')} or "
                f"{policy.get('also_stops_at')}, at most {policy.get('max_gen_toks')} new tokens; counted: "
                f"{policy.get('counted')}."
            )
    settings = next(iter(next(iter(tasks.values())).values())).get("settings") or {}
    given = "".join(f", {k}={v}" for k, v in sorted(settings.items()) if k != "lm_eval" and v is not None)
    notes.append(f"lm-evaluation-harness {settings.get('lm_eval', '')}{given}; value ± standard error.")
    if any(entry.get("source") == "generated" for per_task in tasks.values() for entry in per_task.values()):
        notes.append(
            "The knowledge probe is this project's offline knowledge-retention probe, not a published benchmark."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)
