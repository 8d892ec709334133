"""Model-zoo publishing: every manifest entry pruned, evaluated, saved and pushed; a collection and a table.

Resumable (an entry whose Hub repo already holds a side-car with the same config fingerprint is skipped) and
fault-tolerant (an invalid or failing entry is reported with its manifest line; the others proceed).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configuration import GBLMConfig
from ..publishing.cards import default_repo_name, metric_values
from ..publishing.hub import (
    NETWORK_ERRORS,
    HubPublishError,
    check_repo_id,
    check_write_access,
    describe_error,
    push_folder,
    remote_sidecar,
    update_collection,
)
from ..publishing.provenance import check_base_model
from .manifest import DEFAULT_MODEL, DESCRIPTION_LIMIT, ZooEntry, ZooManifest, _model_id, load_manifest
from .table import entry_kind, render_zoo_table

logger = logging.getLogger(__name__)


# -- results --------------------------------------------------------------------------------------------------------
@dataclass
class ZooEntryResult:
    model: str
    repo_id: str | None
    status: str  # planned | published | skipped | failed | invalid
    line: int | None = None
    error: str | None = None
    commit: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, Any] | None = None


@dataclass
class ZooResult:
    entries: list[ZooEntryResult]
    table: str = ""
    table_path: Path | None = None
    collection_slug: str | None = None
    errors: list[str] = field(default_factory=list)  # problems that did not fail an entry (the collection)

    def _with(self, *statuses: str) -> list[ZooEntryResult]:
        return [e for e in self.entries if e.status in statuses]

    @property
    def planned(self) -> list[ZooEntryResult]:
        return self._with("planned")

    @property
    def published(self) -> list[ZooEntryResult]:
        return self._with("published")

    @property
    def skipped(self) -> list[ZooEntryResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[ZooEntryResult]:
        return self._with("failed", "invalid")

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        counts = (self.planned, self.published, self.skipped, self.failed)
        return ", ".join(f"{len(e)} {name}" for e, name in zip(counts, ("planned", "published", "skipped", "failed")))


def _plan(zoo: ZooManifest) -> list[tuple[ZooEntry, ZooEntryResult, GBLMConfig | None]]:
    """Validate every entry (config, repo id, duplicates, and what prune would refuse: a missing local model, a
    pattern its linears cannot take) before anything heavy happens."""
    from ..adapters import model_skeleton

    plans, repos, skeletons = [], {}, {}
    for entry in zoo.entries:
        cfg = entry.config
        result = ZooEntryResult(_model_id(entry.model), None, "planned", entry.line, config=dict(cfg))
        try:
            config = GBLMConfig.from_dict(cfg, strict=True)  # method arguments may be given flat
            result.config.update(method=config.method, pattern=config.pattern, sparsity=config.sparsity)
            base = check_base_model(entry.base_model) if entry.base_model else result.model
            name = entry.repo or default_repo_name(base, config.method, entry_kind(result.config), config.sparsity)
            result.repo_id = check_repo_id(name if "/" in name else f"{zoo.organization}/{name}")
            if result.repo_id in repos:
                raise ValueError(
                    f"repo {result.repo_id!r} is also produced by the entry at line {repos[result.repo_id]}: "
                    "give one of them a `repo:` name"
                )
            repos[result.repo_id] = entry.line
            key = (entry.model, config.trust_remote_code)
            if key not in skeletons:  # no weights: a config that is local or cached, on the meta device
                skeletons[key] = _skeleton(model_skeleton, entry.model, config)
            if skeletons[key] is not None:
                adapter, skeleton = skeletons[key]
                adapter.check_targets(skeleton, config)
        except (ValueError, TypeError, OSError) as err:
            result.status, result.error = "invalid", str(err)
            result.line = entry.line_for(str(err))
            logger.error("Zoo manifest line %s: %s", result.line, err)
            config = None
        plans.append((entry, result, config))
    return plans


def _check_access(plans: list, token: str | None, endpoint: str | None) -> None:
    """Before any prune: the token may write to each planned repo's namespace (one `whoami` per namespace, nothing
    created); an entry it may not write is invalid, at its `repo:` line when it names one."""
    refused: dict[str, HubPublishError | None] = {}
    for entry, result, config in plans:
        if config is None:
            continue
        namespace = result.repo_id.split("/")[0]
        if namespace not in refused:
            refused[namespace] = None
            try:
                check_write_access(result.repo_id, token=token, endpoint=endpoint)
            except HubPublishError as err:
                refused[namespace] = err
        if refused[namespace] is not None:
            result.status, result.error = "invalid", str(refused[namespace])
            result.line = entry.field_lines.get("repo", entry.line) if entry.repo else entry.line
            logger.error("Zoo manifest line %s: %s", result.line, result.error)


def _skeleton(build: Any, model: str, config: GBLMConfig) -> Any:
    """The model's structure for the plan's checks; what loading would refuse (ValueError, OSError) propagates, any
    other failure only means the structure is checked when the entry is pruned."""
    try:
        return build(None if model == DEFAULT_MODEL else model, config)
    except (ValueError, TypeError, OSError):
        raise
    except Exception as err:
        logger.warning("Zoo: could not build %s without weights (%s): its pattern is checked when pruning", model, err)
        return None


@dataclass
class _Run:
    """What the entries of one `publish_zoo` run share."""

    zoo: ZooManifest
    work: Path
    evaluate: bool
    eval_kwargs: dict[str, Any]
    token: str | None
    endpoint: str | None
    progress: bool
    dense: dict[str, Any] = field(default_factory=dict)  # base model + evaluation setting -> its Evaluation

    def dense_key(self, entry: ZooEntry, config: GBLMConfig) -> str:
        """What the dense value depends on: the base model as loaded and the evaluation settings (the calibration
        seqlen is the default evaluation seqlen)."""
        loading = (config.dtype, config.device, config.trust_remote_code, config.seqlen)
        settings = {k: v for k, v in self.eval_kwargs.items() if k != "progress"}
        return json.dumps([entry.model, loading, settings], sort_keys=True, default=str)


def _publish_one(entry: ZooEntry, result: ZooEntryResult, config: GBLMConfig, run: _Run) -> None:
    from ..evaluation import Evaluation
    from ..pruner import GBLMPruner  # the zoo drives the pruner: it sits above it

    remote = remote_sidecar(result.repo_id, token=run.token, endpoint=run.endpoint)
    if remote is not None and remote.get("config_fingerprint") == config.fingerprint():
        result.status, result.sidecar = "skipped", remote
        logger.info("%s is already published with this config: skipped", result.repo_id)
        return
    logger.info("Zoo: pruning %s -> %s", entry.model, result.repo_id)
    model = None if entry.model == DEFAULT_MODEL else entry.model
    pruner = GBLMPruner.from_pretrained(model, config, base_model=entry.base_model)
    eval_kwargs = {**run.eval_kwargs, "progress": run.progress and run.eval_kwargs.get("progress", True)}
    try:
        if run.evaluate:
            key = run.dense_key(entry, config)
            if key in run.dense:
                logger.info(
                    "Zoo: reusing the dense %s of %s measured earlier in this run",
                    pruner.adapter.metric_name,
                    entry.model,
                )
                pruner.add_evaluation("dense", run.dense[key])
            else:
                value = pruner.evaluate(label="dense", **eval_kwargs)
                run.dense[key] = Evaluation(value, pruner.evaluation["dense"])
        pruner.prune(progress=run.progress)
        if run.evaluate:
            pruner.evaluate(label="pruned", **eval_kwargs)
        folder = pruner.save_pretrained(
            run.work / result.repo_id.replace("/", "--"), overwrite=True, repo_id=result.repo_id
        )
    finally:
        del pruner
        gc.collect()
    commit = push_folder(folder, result.repo_id, token=run.token, private=run.zoo.private, endpoint=run.endpoint)
    result.commit = str(commit)
    result.status, result.sidecar = "published", json.loads((folder / "gblm_config.json").read_text())


def publish_zoo(
    manifest: str | Path | dict[str, Any] | ZooManifest,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    work_dir: str | Path | None = None,
    evaluate: bool = True,
    eval_kwargs: dict[str, Any] | None = None,
    dry_run: bool = False,
    table_path: str | Path | None = None,
    progress: bool = True,
) -> ZooResult:
    """Prune, evaluate, save and push every manifest entry; add them to a collection; write the zoo table.

    Checkpoints are kept under `work_dir` (a temporary folder when None). The markdown table goes to `table_path`
    (default `work_dir/MODEL_ZOO.md` when `work_dir` is given). `dry_run` validates and plans without Hub access.
    `eval_kwargs` (over the manifest's `evaluation:`) go to `GBLMPruner.evaluate`; the dense model is measured once
    per base model and evaluation setting. `progress=False` hides the progress bars.
    """
    zoo = load_manifest(manifest)
    eval_kwargs = {**zoo.evaluation, **(eval_kwargs or {})}
    plans = _plan(zoo)
    if not dry_run:
        _check_access(plans, token, endpoint)
        plans = [(entry, r, config if r.status == "planned" else None) for entry, r, config in plans]
    result = ZooResult([r for _, r, _ in plans])
    if table_path is None and work_dir is not None:
        table_path = Path(work_dir) / "MODEL_ZOO.md"
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optimum-gblm-zoo-")))
        else:
            work = Path(work_dir) / "checkpoints"
            work.mkdir(parents=True, exist_ok=True)
        run = _Run(zoo, work, evaluate, eval_kwargs, token, endpoint, progress)
        for entry, entry_result, config in plans if not dry_run else []:
            if config is None:
                continue
            try:
                _publish_one(entry, entry_result, config, run)
            except Exception as err:  # one failing entry is reported; the others still get published
                entry_result.status, entry_result.error = "failed", describe_error(err, token)
                logger.error("Zoo entry %s (line %s) failed: %s", entry_result.repo_id, entry.line, entry_result.error)
    if not dry_run:
        _update_collection(zoo, result, token, endpoint)
    result.table = render_zoo_table(zoo.organization, result.entries, endpoint, eval_kwargs if evaluate else None)
    if table_path is not None:
        result.table_path = Path(table_path)
        result.table_path.parent.mkdir(parents=True, exist_ok=True)
        result.table_path.write_text(result.table, encoding="utf-8")
    logger.info("Zoo: %s%s", result.summary(), " (dry run)" if dry_run else "")
    return result


# -- collection and table -------------------------------------------------------------------------------------------
def _summary(entry: ZooEntryResult) -> str:
    cfg = (entry.sidecar or {}).get("config") or entry.config
    text = f"{cfg.get('method')} {entry_kind(cfg)} {float(cfg.get('sparsity', 0)):.0%}"
    metric, values = metric_values(entry.sidecar or {})
    if values:
        text += "; " + ", ".join(f"{label} {metric} {v:.4g}" for label, v in sorted(values.items()))
    return text


def _description(zoo: ZooManifest, entries: list[ZooEntryResult]) -> str:
    given = (zoo.collection or {}).get("description")
    methods = sorted({str((e.sidecar or {}).get("config", e.config).get("method")) for e in entries})
    text = given or f"{len(entries)} sparse checkpoints pruned with optimum-gblm ({', '.join(methods)})"
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 3].rstrip() + "..."


def _update_collection(zoo: ZooManifest, result: ZooResult, token: str | None, endpoint: str | None) -> None:
    members = result.published + result.skipped
    if zoo.collection is None or not members:
        return
    title = zoo.collection.get("title") or "optimum-gblm model zoo"
    try:
        result.collection_slug = update_collection(
            title,
            zoo.organization,
            [(entry.repo_id, _summary(entry)) for entry in members],
            description=_description(zoo, members),
            private=bool(zoo.collection.get("private", False)),
            token=token,
            endpoint=endpoint,
        )
    except NETWORK_ERRORS as err:
        message = f"collection {title!r} was not updated ({describe_error(err, token)}); re-run to retry"
        logger.error("Zoo: %s", message)
        result.errors.append(message)
