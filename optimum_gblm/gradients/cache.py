"""Gradient cache: accumulators in safetensors keyed by module FQN, with metadata that must match to be reused."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..version import __version__
from .accumulation import GradientAccumulation

logger = logging.getLogger(__name__)

# Metadata that must be equal for a cache to be reused (norms may be a superset of what is needed).
MATCH_KEYS = ("model_fingerprint", "calibration_fingerprint", "nsamples_target", "scale", "gradient_dtype")


class GradientCacheMismatch(ValueError):
    """A gradient cache was made for another model, calibration set or setting."""


def model_fingerprint(model: nn.Module, targets: dict[str, nn.Module]) -> str:
    """Hash of the model config, the targeted module names and shapes, and a strided sample of each weight."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, module in targets.items():
        weight = module.weight.detach()
        digest.update(f"{name}:{tuple(weight.shape)}".encode())
        flat = weight.reshape(-1)
        step = max(1, flat.numel() // 4096)
        digest.update(flat[::step].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def save_cache(path: str | Path, state: GradientAccumulation, metadata: dict[str, str], complete: bool) -> None:
    """Write atomically (temporary sibling + rename): an interruption never leaves a torn cache."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}::l1": t.detach().cpu().contiguous() for name, t in state.l1.items()}
    tensors.update({f"{name}::l2sq": t.detach().cpu().contiguous() for name, t in state.l2sq.items()})
    meta = {
        **{k: str(v) for k, v in metadata.items()},
        "nsamples": str(state.nsamples),
        "norms": ",".join(state.norms),
        "complete": "true" if complete else "false",
        "library_version": __version__,
        "format": "optimum-gblm-gradients/1",
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "optimum-gblm-gradients/1":
        raise GradientCacheMismatch(f"{path} is not an optimum-gblm gradient cache")
    return meta


def check_cache(path: str | Path, expected: dict[str, str], norms: tuple[str, ...]) -> dict[str, str]:
    """Raise `GradientCacheMismatch` naming every field that differs. The file is never modified."""
    meta = read_metadata(path)
    problems = [
        f"{key}: cache has {meta.get(key)!r}, this run needs {str(expected[key])!r}"
        for key in MATCH_KEYS
        if key in expected and meta.get(key) != str(expected[key])
    ]
    missing = [n for n in norms if n not in meta.get("norms", "").split(",")]
    if missing:
        problems.append(f"norms: cache has {meta.get('norms')!r}, this run needs {', '.join(norms)}")
    if problems:
        raise GradientCacheMismatch(
            f"gradient cache {path} does not match this run (it was left untouched): " + "; ".join(problems)
        )
    return meta


def load_cache(path: str | Path, device: torch.device | str = "cpu") -> tuple[GradientAccumulation, dict[str, str]]:
    meta = read_metadata(path)
    state = GradientAccumulation(scale=float(meta["scale"]), nsamples=int(meta["nsamples"]))
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
            name, kind = key.rsplit("::", 1)
            (state.l1 if kind == "l1" else state.l2sq)[name] = f.get_tensor(key)
    return state, meta
