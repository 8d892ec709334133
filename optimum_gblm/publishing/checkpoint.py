"""Checkpoint folders on disk: refused or atomically replaced output folders, the save of a pruned model, and the
verification of a saved folder against its pruning map."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..configuration import CONFIG_NAME
from ..fields import OptionFileExistsError
from ..masks import check_pattern, sparsity_of
from ..pruning_map import PruningMap
from ..structured.surgery import seal_saved_config
from ..targets import parse_slice_name, resolve_weight
from ..utils import writer_tag, written_by_dead_process
from .artefact import STRUCTURED_KIND, UNRECORDED, Artefact, describe_artefact, has_pruning_record
from .cards import render_model_card, write_model_card
from .plot import write_sparsity_plot
from .sidecar import read_sidecar, write_sidecar

logger = logging.getLogger(__name__)


def check_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse a non-empty output folder (unless `overwrite`) or an unwritable parent, before any heavy work."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output path {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OptionFileExistsError(
            "overwrite", "output directory {path} is not empty: choose another path or pass {flag}", path=path
        )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise FileExistsError(f"cannot create the output directory {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write the output directory {path}: {parent} is not writable")
    return path


def _interrupted_siblings(path: Path, kind: str) -> list[Path]:
    """`.NAME.tmp-TAG-*` / `.NAME.old-TAG-*` siblings left by a save whose process is gone (killed mid-save)."""
    prefix = f".{path.name}.{kind}-"
    return [p for p in path.parent.glob(f"{prefix}*") if written_by_dead_process(p.name[len(prefix) :].split("-")[0])]


def recover_interrupted_save(path: str | Path) -> None:
    """Clean up after a save that was killed: its temporary folder is removed; a previous folder that was moved
    aside in the instant between the two renames of a replacement is put back (so it is never lost)."""
    path = Path(path).expanduser().absolute()
    if not path.parent.is_dir():
        return
    for backup in sorted(_interrupted_siblings(path, "old")):
        if not path.exists():
            os.replace(backup, path)
            logger.warning("Restored %s, which an interrupted save had moved aside", path)
        else:
            shutil.rmtree(backup, ignore_errors=True)
    for tmp in _interrupted_siblings(path, "tmp"):
        logger.info("Removing %s, left by an interrupted save", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path`, on failure it is removed.

    So a crash never leaves a half-written checkpoint, and an existing folder is only replaced when the
    new one is complete. What a killed save left behind is cleaned up first (`recover_interrupted_save`).
    """
    recover_interrupted_save(path)
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{writer_tag()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            backup = path.with_name(f".{path.name}.old-{writer_tag()}-{uuid.uuid4().hex[:8]}")
            os.replace(path, backup)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(backup, path)  # the previous folder goes back where it was
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        logger.error("Saving %s failed: nothing was written there (a previous folder is left as it was)", path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_pruned(pruning_map: PruningMap | None, allow_dense: bool) -> None:
    """Refuse, before anything is written or sent, to save or publish a model that was never pruned."""
    if allow_dense:
        return
    if pruning_map is None:
        raise RuntimeError(
            "this model was not pruned: call prune() before saving or pushing it, or pass allow_dense=True to "
            "save it as a dense checkpoint (labelled dense, no pruning map)"
        )
    if not has_pruning_record(pruning_map.to_dict()):
        raise RuntimeError(
            "this model has no pruning record (it was loaded without its gblm_config.json and only recovered): pass "
            "allow_dense=True to save it anyway, described as recovered with no pruning record"
        )


def save_checkpoint(
    save_directory: str | Path,
    write_weights: Callable[[Path], None],
    sidecar: dict[str, Any],
    overwrite: bool = False,
    model_card: bool = True,
) -> Path:
    """Weights + config + tokenizer / preprocessing (`write_weights`), `gblm_config.json`, plot and card, written
    into a temporary sibling folder that replaces `save_directory` only when complete."""
    target = Path(save_directory)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        write_weights(tmp)
        seal_saved_config(tmp)
        record_file_size(tmp, sidecar)
        write_sidecar(tmp, sidecar)
        write_sparsity_plot(tmp, sidecar)
        if model_card:
            write_model_card(tmp, sidecar)
    logger.info("Saved %s to %s", _what(describe_artefact(sidecar)), target)
    return target.absolute()


def _what(art: Artefact) -> str:
    """How the log names a saved checkpoint."""
    if art.kind == UNRECORDED:
        return "recovered model (no pruning record)"
    if not art.pruned:
        return "dense model"
    return ("structurally pruned" if art.kind == STRUCTURED_KIND else "pruned") + (
        " and recovered model" if art.recovered else " model"
    )


def record_file_size(folder: Path, sidecar: dict[str, Any]) -> None:
    """Structured prunes state the real size of what was written: bytes of the safetensors files, in the side-car."""
    for stage in (sidecar.get("pruning_map") or {}).get("stages", []):
        if isinstance(stage.get("settings", {}).get("structure"), dict):
            size = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
            stage["settings"]["structure"]["file_bytes"] = size


@contextlib.contextmanager
def staged_for_repo(folder: Path, repo_id: str) -> Iterator[Path]:
    """The folder to upload to `repo_id`: `folder` itself when its side-car already names that repo, else a
    temporary mirror (links to the same files) whose side-car records the repo id and whose card is re-rendered for
    it, so the card's snippets load the repo instead of a placeholder. The user's folder is never modified. A card
    that is not the one its side-car renders (edited by hand, or by another version) is uploaded as written."""
    raw = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))  # as written (format 1 stays format 1)
    if raw.get("repo_id") == repo_id:
        yield folder
        return
    if (folder / "README.md").read_text(encoding="utf-8") != render_model_card(raw):
        logger.warning(
            "%s/README.md is not the generated card: uploaded as written, not re-rendered for %s", folder, repo_id
        )
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="optimum-gblm-upload-") as tmp:
        staged = Path(tmp) / folder.name
        staged.mkdir()
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or relative.as_posix() in ("README.md", CONFIG_NAME):
                continue
            (staged / relative).parent.mkdir(parents=True, exist_ok=True)
            try:  # a link: weights are not copied
                os.symlink(path.absolute(), staged / relative)
            except OSError:  # no symlinks here (Windows without the privilege)
                shutil.copy2(path, staged / relative)
        payload = {**raw, "repo_id": repo_id}
        write_sidecar(staged, payload)
        write_model_card(staged, payload)
        yield staged


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, for single-file and sharded checkpoints."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        inside = folder.resolve()
        for file in set(weight_map.values()):  # an index names shards of this folder, never a path out of it
            if not isinstance(file, str) or not (folder / file).resolve().is_relative_to(inside):
                raise ValueError(f"{index} names the shard {file!r}, which is not a file inside {folder}")
        return {name: folder / file for name, file in weight_map.items()}
    out: dict[str, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118
                out[key] = file
    if not out:
        raise FileNotFoundError(f"{folder} holds no safetensors weights")
    return out


def _target_weight(folder: Path, name: str, files: dict[str, Path], reloaded: dict[str, Any]) -> torch.Tensor | None:
    """A target's 2-D weight as saved: `<name>.weight`, a slice of a saved 3-D parameter, or, when transformers saved
    it under another name or layout (fused experts split per expert, a multimodal wrapper's legacy prefixes), the
    weight after transformers' own reload conversion (the checkpoint must then be a transformers one)."""
    parameter, index = parse_slice_name(name)
    key = f"{name}.weight" if index is None else parameter
    if key in files:
        with safe_open(str(files[key]), framework="pt") as f:
            tensor = f.get_tensor(key)
        return tensor if index is None else tensor[index]
    if not (folder / "config.json").is_file():
        return None
    if "model" not in reloaded:  # transformers saved some weights under other names (its legacy / per-expert layout)
        from transformers import AutoModelForCausalLM

        logger.info("%s renames or splits weights on save: reading them back through transformers", folder)
        reloaded["model"] = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto")
    try:
        return resolve_weight(reloaded["model"], name).detach()
    except (AttributeError, IndexError):
        return None


@dataclass
class VerificationResult:
    ok: bool
    checked: int
    problems: list[str] = field(default_factory=list)

    def raise_for_problems(self) -> None:
        if not self.ok:
            raise ValueError("checkpoint verification failed: " + "; ".join(self.problems[:10]))


def kept_shape(shape: tuple[int, int], kept: dict[str, list[int]], name: str) -> tuple[int, int]:
    """The shape a structured target keeps: heads x head_dim (or channels) along the dimension it was cut."""
    width = len(kept.get("channels", [])) or len(kept.get("heads", kept.get("kv_heads", []))) * kept["head_dim"][0]
    return (shape[0], width) if name.endswith(("o_proj", "down_proj")) else (width, shape[1])


def verify_checkpoint(folder: str | Path, tolerance: float = 0.0) -> VerificationResult:
    """Re-read a saved folder and check the claimed pattern and per-layer sparsity, layer by layer."""
    folder = Path(folder)
    sidecar = read_sidecar(folder)
    if not sidecar.get("pruning_map"):
        raise ValueError(f"{folder} holds no pruning map: the model was saved without being pruned")
    pruning_map = PruningMap.from_dict(sidecar["pruning_map"])
    files = _weight_files(folder)
    problems: list[str] = []
    checked = 0
    reloaded: dict[str, Any] = {}
    for name, claim in pruning_map.targets.items():
        pattern = claim.pattern
        weight = _target_weight(folder, name, files, reloaded)
        if weight is None:
            problems.append(f"{name}: weight {name}.weight missing from the checkpoint")
            continue
        checked += 1
        if claim.kept is not None:  # structured: the saved matrix must have exactly the kept rows / columns
            expected = kept_shape(claim.shape, claim.kept, name)
            if tuple(weight.shape) != expected:
                problems.append(f"{name}: shape {tuple(weight.shape)} != kept {expected}")
            continue
        achieved = sparsity_of(weight)
        if achieved + 1e-12 < claim.achieved_sparsity - tolerance:
            problems.append(f"{name}: sparsity {achieved:.6f} < claimed {claim.achieved_sparsity:.6f}")
        if not check_pattern(weight.to(torch.float32), pattern):
            problems.append(f"{name}: pattern {pattern} violated")
    return VerificationResult(ok=not problems and checked > 0, checked=checked, problems=problems)
