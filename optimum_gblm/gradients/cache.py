"""Gradient cache: accumulators in safetensors keyed by module FQN, with metadata that must match to be reused."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..configuration import CALIBRATION_PRESETS
from ..targets import target_weight
from ..utils import writer_tag, written_by_dead_process
from ..version import __version__
from .accumulation import GradientAccumulation

logger = logging.getLogger(__name__)

FORMAT = "optimum-gblm-gradients/1"
# Version 2: calibration fingerprints of the samples in any order; model fingerprints without config._name_or_path
# and runtime flags.
# Caches without this key (version 1) are compared against the fingerprints of version 1.
FINGERPRINT_VERSION = "2"
# Metadata that must be equal for a cache to be reused (norms may be a superset of what is needed).
MATCH_KEYS = ("model_fingerprint", "calibration_fingerprint", "nsamples_target", "scale", "gradient_dtype")
# What the calibration was made of, recorded to explain a calibration_fingerprint mismatch (not matched: the same
# tokens from a Trainer and from a tensor are the same calibration set).
CALIBRATION_SETTINGS = ("source", "num_samples", "seqlen", "seed")
# Config attributes that say where a model was loaded from or how it runs, not what it computes (a Trainer sets
# use_cache=False; the same weights loaded from another folder or Hub id are the same model).
UNHASHED_CONFIG_KEYS = ("_name_or_path", "use_cache", "output_attentions", "output_hidden_states", "return_dict")
HINT = "delete it to collect again, or choose another cache path"


class GradientCacheError(ValueError):
    """A gradient cache file cannot be used: unreadable, not a gradient cache, or made for another run."""


class GradientCacheMismatch(GradientCacheError):
    """A gradient cache was made for another model, calibration set or setting."""


def model_fingerprint(model: nn.Module, targets: dict[str, Any], legacy: bool = False) -> str:
    """Hash of the model config (without where it was loaded from and runtime flags), the targeted module names
    and shapes, and a strided sample of each weight. `legacy`: the version-1 hash, with the whole config."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        text = config.to_json_string(use_diff=False)
        if not legacy:
            values = {k: v for k, v in json.loads(text).items() if k not in UNHASHED_CONFIG_KEYS}
            text = json.dumps(values, indent=2, sort_keys=True)
        digest.update(text.encode())
    for name, module in targets.items():
        weight = target_weight(module).detach()
        digest.update(f"{name}:{tuple(weight.shape)}".encode())
        flat = weight.reshape(-1)
        step = max(1, flat.numel() // 4096)
        digest.update(flat[::step].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def config_source(source: str) -> str:
    """A config's calibration source as caches record it: a local file or folder by its absolute path (the same
    file from another working directory), presets and dataset names as they are."""
    path = Path(source).expanduser()
    return str(path.resolve()) if source not in CALIBRATION_PRESETS and path.exists() else source


def calibration_settings(
    source: str, num_samples: int, seqlen: int | None = None, seed: int | None = None
) -> dict[str, str]:
    """Cache metadata describing a calibration set (`seed` only for sets built from a config source)."""
    values = {"source": source, "num_samples": num_samples, "seqlen": seqlen, "seed": seed}
    return {f"calibration_{k}": str(v) for k, v in values.items() if v is not None}


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
        "format": FORMAT,
        "fingerprint_version": FINGERPRINT_VERSION,
    }
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a writer that was killed mid-write
        if written_by_dead_process(stale.name.rsplit("-", 1)[-1]):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{writer_tag()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _unreadable(path: str | Path, why: str) -> GradientCacheError:
    return GradientCacheError(
        f"{path} is not a complete optimum-gblm gradient cache ({why}); it was left untouched: {HINT}"
    )


def read_metadata(path: str | Path) -> dict[str, str]:
    """The cache's metadata; `GradientCacheError` naming the file when it is not a readable gradient cache."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, f"{type(err).__name__}: {err}") from err
    if meta.get("format") != FORMAT:
        raise _unreadable(path, "a safetensors file without optimum-gblm gradient metadata")
    return meta


def _calibration_differences(meta: dict[str, str], expected: dict[str, Any]) -> list[str]:
    keys = [f"calibration_{k}" for k in CALIBRATION_SETTINGS]
    return [
        f"{key.removeprefix('calibration_')} {meta[key]!r} in the cache, {str(expected[key])!r} here"
        for key in keys
        if key in meta and key in expected and meta[key] != str(expected[key])
    ]


def _problems(
    meta: dict[str, str], expected: dict[str, Any], keys: tuple[str, ...], norms: tuple[str, ...], known_only: bool
) -> list[str]:
    """Every key of `keys` whose value differs (`known_only`: only keys the cache recorded), and missing norms."""
    problems = []
    for key in keys:
        if key not in expected or (known_only and key not in meta) or meta.get(key) == str(expected[key]):
            continue
        problem = f"{key}: cache has {meta.get(key)!r}, this run needs {str(expected[key])!r}"
        if key == "calibration_fingerprint" and (settings := _calibration_differences(meta, expected)):
            problem += f" (calibration settings: {', '.join(settings)})"
        problems.append(problem)
    missing = [n for n in norms if n not in meta.get("norms", "").split(",")]
    if missing:
        problems.append(f"norms: cache has {meta.get('norms')!r}, this run needs {', '.join(norms)}")
    return problems


def check_cache(
    path: str | Path,
    expected: dict[str, Any],
    norms: tuple[str, ...],
    legacy: Callable[[], dict[str, str]] | None = None,
) -> dict[str, str]:
    """Raise `GradientCacheMismatch` naming every field that differs. The file is never modified. `legacy` gives
    the version-1 fingerprints, for caches written before fingerprint version 2."""
    meta = read_metadata(path)
    if legacy is not None and "fingerprint_version" not in meta:
        expected = {**expected, **legacy()}
    problems = _problems(meta, expected, MATCH_KEYS, norms, known_only=False)
    if problems:
        raise GradientCacheMismatch(
            f"gradient cache {path} does not match this run (it was left untouched: {HINT}): " + "; ".join(problems)
        )
    return meta


def check_cache_settings(path: str | Path, settings: dict[str, Any], norms: tuple[str, ...]) -> dict[str, str]:
    """What can be checked before the model is loaded, for a run whose calibration comes from config `settings`:
    the gradient settings and norms, and the calibration settings of a cache whose calibration came from a config
    source too (it recorded a seed; tokens from elsewhere are only known by their fingerprint). Raises
    `GradientCacheMismatch` (or `GradientCacheError` for an unreadable file)."""
    meta = read_metadata(path)
    calibration = CALIBRATION_SETTINGS if "calibration_seed" in meta else ()
    keys = ("scale", "gradient_dtype", *(f"calibration_{k}" for k in calibration))
    problems = _problems(meta, settings, keys, norms, known_only=True)
    if problems:
        raise GradientCacheMismatch(
            f"gradient cache {path} was made with other settings (it was left untouched): " + "; ".join(problems)
        )
    return meta


def load_cache(path: str | Path, device: torch.device | str = "cpu") -> tuple[GradientAccumulation, dict[str, str]]:
    meta = read_metadata(path)
    state = GradientAccumulation(scale=float(meta["scale"]), nsamples=int(meta["nsamples"]))
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                name, kind = key.rsplit("::", 1)
                (state.l1 if kind == "l1" else state.l2sq)[name] = f.get_tensor(key)
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, f"{type(err).__name__}: {err}") from err
    return state, meta


def reusable_cache(path: str | Path | None, overwrite: bool = False) -> bool:
    """Whether `path` is a complete gradient cache that a run would reuse if it matches (read without the model)."""
    if path is None or overwrite or not Path(path).is_file():
        return False
    try:
        return read_metadata(path).get("complete") == "true"
    except GradientCacheError:
        return False  # the run refuses it, naming the problem
