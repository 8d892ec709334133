"""Sparse checkpoints: atomic folders, the `gblm_config.json` side-car, and verification of a saved folder."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .configuration import CONFIG_NAME
from .masks import check_pattern, sparsity_of
from .version import __version__

logger = logging.getLogger(__name__)


def check_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse a non-empty output folder (unless `overwrite`) or an unwritable parent, before any heavy work."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output path {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {path} is not empty: choose another path or pass overwrite=True")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write the output directory {path}: {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path`, on failure it is removed.

    So a crash never leaves a half-written checkpoint, and an existing folder is only replaced when the
    new one is complete.
    """
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            backup = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"optimum-gblm": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "timm", "optimum", "huggingface-hub", "safetensors"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return versions


def write_sidecar(folder: Path, payload: dict[str, Any]) -> Path:
    target = folder / CONFIG_NAME
    target.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return target


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: not an optimum-gblm checkpoint")
    return json.loads(path.read_text())


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, for single-file and sharded checkpoints."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    out: dict[str, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118
                out[key] = file
    if not out:
        raise FileNotFoundError(f"{folder} holds no safetensors weights")
    return out


@dataclass
class VerificationResult:
    ok: bool
    checked: int
    problems: list[str] = field(default_factory=list)

    def raise_for_problems(self) -> None:
        if not self.ok:
            raise ValueError("checkpoint verification failed: " + "; ".join(self.problems[:10]))


def verify_checkpoint(folder: str | Path, tolerance: float = 0.0) -> VerificationResult:
    """Re-read a saved folder and check the claimed pattern and per-layer sparsity, layer by layer."""
    folder = Path(folder)
    sidecar = read_sidecar(folder)
    report = sidecar["sparsity"]
    pattern = report["pattern"]
    files = _weight_files(folder)
    prefix = sidecar.get("weight_prefix", "")
    problems: list[str] = []
    checked = 0
    for name, claim in report["layers"].items():
        key = f"{prefix}{name}.weight"
        if key not in files:
            problems.append(f"{name}: weight {key} missing from the checkpoint")
            continue
        with safe_open(str(files[key]), framework="pt") as f:
            weight = f.get_tensor(key)
        checked += 1
        achieved = sparsity_of(weight)
        if achieved + 1e-12 < claim["achieved_sparsity"] - tolerance:
            problems.append(f"{name}: sparsity {achieved:.6f} < claimed {claim['achieved_sparsity']:.6f}")
        if not check_pattern(weight.to(torch.float32), pattern):
            problems.append(f"{name}: pattern {pattern} violated")
    return VerificationResult(ok=not problems and checked > 0, checked=checked, problems=problems)
