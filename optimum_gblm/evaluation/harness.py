"""lm-evaluation-harness tasks on an in-memory model: lm-eval's own `HFLM` wrapper and `simple_evaluate`, local task
YAMLs through a `TaskManager(include_path=...)`, and the offline knowledge probe (knowledge.py).

lm-eval is an optional dependency (`pip install optimum-gblm[eval]`), imported on first use only. Every check that
can fail (task names, Hub access while offline, a tokenizer) runs before the model is touched.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from .knowledge import PROBE_TASK, write_probe_task

logger = logging.getLogger(__name__)

DEFAULT_TASK_BATCH = 8
# `datasets` builders that read local files: tasks using them need no Hub access when their files are local.
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "webdataset"}
TOKEN_COUNTING = (
    "tokens of each returned answer (cut at the first stop sequence, which is not counted), by the tokenizer"
)
_PERCENTILES = (10, 50, 90, 99)


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as err:
        raise ImportError("lm-eval tasks need lm-eval: pip install 'optimum-gblm[eval]' (or lm-eval>=0.4.9)") from err


@dataclass
class ResolvedTasks:
    """Task names checked against a TaskManager that knows them (local folders first, lm-eval's own tasks only when
    a name is not local)."""

    names: list[str]
    manager: Any
    local: dict[str, str] = field(default_factory=dict)  # name -> YAML file or "generated" (the probe)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_DATASETS_OFFLINE", "") in ("1", "true", "TRUE")


def _cached_dataset(path: str) -> bool:
    """Whether a Hub dataset has a local copy that offline `datasets` can use (the Hub cache or the datasets cache)."""
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}"
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
    return hub.is_dir() or (datasets_cache / path.replace("/", "___")).is_dir()


def _leaf_configs(manager: Any, name: str, depth: int = 0) -> list[dict[str, Any]]:
    """The configs of the tasks a name stands for (a task, or the members of a group or tag), unresolved."""
    entry = manager.task_index.get(name)
    if entry is None or depth > 8:
        return []
    kind = entry.kind.name
    if kind in ("TASK", "PY_TASK"):
        return [entry.cfg or {}]
    if kind == "GROUP":
        members = (entry.cfg or {}).get("task") or []
        members = members if isinstance(members, list) else [members]
        configs: list[dict[str, Any]] = []
        for member in members:
            if isinstance(member, dict):
                configs.append(member)
            elif isinstance(member, str):
                configs += _leaf_configs(manager, member, depth + 1)
        return configs
    return [c for n, e in manager.task_index.items() if name in e.tags for c in _leaf_configs(manager, n, depth + 1)]


def _needs_hub(config: dict[str, Any]) -> str | None:
    """The Hub dataset a task config downloads, or None when it reads local files (or a cached copy)."""
    path = config.get("dataset_path")
    if not isinstance(path, str) or path in LOCAL_BUILDERS or Path(path).expanduser().exists():
        return None
    return None if _cached_dataset(path) else path


def resolve_tasks(tasks: Sequence[str] | str, folder: str | Path) -> ResolvedTasks:
    """Check task names and write what is generated (the knowledge probe) into `folder`.

    A task is a name lm-eval knows, a task YAML file, or `knowledge_probe`. Unknown names raise a ValueError that
    lists the close ones; a task whose data is on the Hub while HF_HUB_OFFLINE=1 (and not cached) raises too."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"tasks must be a non-empty list of task names or task YAML files, got {tasks!r}")
    include, local, resolved = [], {}, []
    for name in names:
        if name == PROBE_TASK:
            include.append(Path(folder))
            local[write_probe_task(folder)] = "generated"
            resolved.append(name)
        elif name.endswith((".yaml", ".yml")):
            path = Path(name).expanduser()
            if not path.is_file():
                raise ValueError(f"task file {name!r} does not exist")
            from lm_eval.tasks._yaml_loader import load_yaml

            task = load_yaml(path, resolve_func=False).get("task")
            if not isinstance(task, str):
                raise ValueError(f"task file {name!r} has no `task:` name (one task per file)")
            include.append(path.parent.resolve())
            local[task] = str(path)
            resolved.append(task)
        else:
            resolved.append(name.strip())
    include = list(dict.fromkeys(include))
    manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if manager is None or any(n not in manager.task_index for n in resolved):
        manager = TaskManager(include_path=include) if include else _builtin_tasks()
    unknown = [n for n in resolved if n not in manager.task_index]
    if unknown:
        hints = "; ".join(
            f"{n!r}: did you mean {', '.join(difflib.get_close_matches(n, manager.all_tasks, 5, 0.6)) or 'none close'}"
            for n in unknown
        )
        raise ValueError(
            f"unknown lm-eval task(s) ({hints}). Use an lm-eval task name, a task YAML file, or {PROBE_TASK}"
        )
    if _hub_offline():
        remote = {n: hub for n in resolved for c in _leaf_configs(manager, n) if (hub := _needs_hub(c))}
        if remote:
            listed = ", ".join(f"{n} (dataset {d})" for n, d in remote.items())
            raise ValueError(
                f"task(s) {listed} download their data from the Hugging Face Hub, but HF_HUB_OFFLINE=1 and no cached "
                f"copy exists: run them with Hub access, or use local tasks (a YAML with dataset_path: json and "
                f"dataset_kwargs.data_files) or {PROBE_TASK}"
            )
    return ResolvedTasks(list(dict.fromkeys(resolved)), manager, local)


@lru_cache(maxsize=1)
def _builtin_tasks() -> Any:
    """lm-eval's own task index (scanning its thousands of YAML files takes seconds: done once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


@contextlib.contextmanager
def prepared_tasks(tasks: Sequence[str] | str) -> Iterator[ResolvedTasks]:
    """`resolve_tasks` into a temporary folder that lives as long as the block (generated task data is removed)."""
    with tempfile.TemporaryDirectory(prefix="gblm-tasks-") as folder:
        yield resolve_tasks(tasks, folder)


def _quiet(lm: Any) -> Any:
    """The lm-eval model with its per-request progress bars turned off."""
    for verb in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        method = getattr(lm, verb)
        setattr(lm, verb, lambda requests, disable_tqdm=False, _m=method: _m(requests, disable_tqdm=True))
    return lm


@contextlib.contextmanager
def _git_stderr_discarded() -> Iterator[None]:
    """lm-eval records the working directory's git commit by running `git describe`, whose "fatal: not a git
    repository" reaches the terminal when the user works outside a repository (lm-eval then falls back by itself).
    For the duration, that one call runs with this process's stderr pointed at /dev/null; nothing else is hidden."""
    import lm_eval.evaluator as evaluator

    original = evaluator.get_git_commit_hash

    def quiet() -> Any:
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                return original()
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    evaluator.get_git_commit_hash = quiet
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def token_stats(counts: list[int]) -> dict[str, float]:
    """Mean and distribution (min, percentiles, max) of generated tokens per answer."""
    if not counts:
        return {"answers": 0}
    ordered = sorted(counts)
    stats: dict[str, float] = {"answers": len(counts), "mean": sum(counts) / len(counts), "min": ordered[0]}
    for p in _PERCENTILES:  # nearest-rank percentiles
        stats[f"p{p}"] = ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
    stats.update(max=ordered[-1], total=sum(counts))
    return stats


def _metrics(row: dict[str, Any]) -> dict[str, float]:
    """lm-eval's `metric,filter` keys as `metric` (filter none) or `metric/filter`; non-numbers (N/A) dropped."""
    out = {}
    for key, value in row.items():
        if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            continue
        metric, filt = key.split(",", 1)
        out[metric if filt == "none" else f"{metric}/{filt}"] = float(value)
    return out


def _generation(samples: list[dict[str, Any]], config: dict[str, Any], tokenizer: Any, default_max: int) -> dict:
    """Token cost of a generate_until task, with the stop / max-token policy it ran under."""
    kwargs = dict(config.get("generation_kwargs") or {})
    until = kwargs.get("until") or []
    limit = int(kwargs.get("max_gen_toks") or default_max)
    counts = [
        len(tokenizer(text, add_special_tokens=False)["input_ids"])
        for sample in samples
        for text in (sample.get("resps") or [[]])[0]
        if isinstance(text, str)
    ]
    stats = token_stats(counts)
    stats["at_max_gen_toks"] = sum(c >= limit for c in counts)
    policy = {
        "until": [until] if isinstance(until, str) else list(until),
        "also_stops_at": "the tokenizer's end-of-text token",
        "max_gen_toks": limit,
        "do_sample": bool(kwargs.get("do_sample", False)),
        "counted": TOKEN_COUNTING,
    }
    return {"policy": policy, "tokens": stats}


def run_tasks(
    model: nn.Module,
    tokenizer: Any,
    resolved: ResolvedTasks,
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    max_gen_toks: int | None = None,
    batch_size: int = DEFAULT_TASK_BATCH,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Evaluate `model` on resolved tasks with lm-eval; per task: metrics, sample count, output type, dataset, and
    for generate_until tasks the token cost (`generation`)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm = lm if progress else _quiet(lm)
    with _git_stderr_discarded():
        out = simple_evaluate(
            model=lm,
            tasks=resolved.names,
            task_manager=resolved.manager,
            limit=limit,
            num_fewshot=num_fewshot,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
            log_samples=True,
            bootstrap_iters=1000,  # only for metrics without a closed-form standard error
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    results: dict[str, dict[str, Any]] = {}
    for task, row in out["results"].items():
        config = (out.get("configs") or {}).get(task) or {}
        samples = (out.get("samples") or {}).get(task) or []
        entry: dict[str, Any] = {"metrics": _metrics(row)}
        if config:
            entry.update(
                samples=len(samples),
                output_type=config.get("output_type"),
                num_fewshot=(out.get("n-shot") or {}).get(task, 0),
                dataset={"path": config.get("dataset_path"), "name": config.get("dataset_name")},
                split=config.get("test_split") or config.get("validation_split"),
                source=resolved.local.get(task, "lm-eval"),
            )
        if config.get("output_type") == "generate_until":
            if max_gen_toks:  # the override simple_evaluate applied
                config = {
                    **config,
                    "generation_kwargs": {**(config.get("generation_kwargs") or {}), "max_gen_toks": max_gen_toks},
                }
            entry["generation"] = _generation(samples, config, tokenizer, lm.max_gen_toks)
        results[task] = entry
    return results


@dataclass
class TaskEvaluation:
    """Metrics by task (`value`) and everything recorded per task (`settings`: metrics, samples, dataset, token
    cost of generation tasks, lm-eval settings), what the side-car's `tasks` section keeps."""

    value: dict[str, dict[str, float]]
    settings: dict[str, dict[str, Any]]


class TaskEvaluator:
    """lm-eval tasks for `GBLMPruner.evaluate_tasks(tasks)`: a text model with its tokenizer."""

    metric_name = "lm-eval tasks"
    keywords = ("tasks", "limit", "num_fewshot", "max_gen_toks", "batch_size", "progress")

    def __init__(self, tokenizer: Any, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.seed = seed

    def evaluate(
        self,
        model: nn.Module,
        tasks: Sequence[str] | str = (),
        limit: int | float | None = None,
        num_fewshot: int | None = None,
        max_gen_toks: int | None = None,
        batch_size: int = DEFAULT_TASK_BATCH,
        progress: bool = True,
    ) -> TaskEvaluation:
        """Per task: {"metrics": {...}, ...}; the value is {task: {metric: value}}."""
        if self.tokenizer is None or not callable(self.tokenizer):
            raise ValueError("lm-eval tasks need a text model with a tokenizer (this model was loaded without one)")
        for name, value in (("max_gen_toks", max_gen_toks), ("batch_size", batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        with prepared_tasks(tasks) as resolved:
            results = run_tasks(
                model,
                self.tokenizer,
                resolved,
                limit=limit,
                num_fewshot=num_fewshot,
                max_gen_toks=max_gen_toks,
                batch_size=batch_size,
                progress=progress,
                seed=self.seed,
            )
        from importlib.metadata import version

        settings = {"limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size}
        for entry in results.values():
            entry["settings"] = {**settings, "lm_eval": version("lm_eval")}
        return TaskEvaluation({t: dict(e["metrics"]) for t, e in results.items()}, results)
