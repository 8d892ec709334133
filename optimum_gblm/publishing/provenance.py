"""Provenance of a pruned checkpoint, without network access: the base model's Hub id and license, library versions."""

from __future__ import annotations

import contextlib
import platform
import re
from pathlib import Path
from typing import Any

import yaml

from ..fields import OptionError
from ..utils import looks_like_local_path
from ..version import __version__

_SNAPSHOT = re.compile(r"models--(?P<org>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots[/\\]")


def hub_base_model(model_id: str | None) -> str | None:
    """The Hub id behind `model_id`, or None for a local folder that is not a Hub cache snapshot (decided lexically)."""
    if not model_id:
        return None
    match = _SNAPSHOT.search(model_id)
    if match:
        return f"{match['org']}/{match['name']}"
    model_id = model_id.removeprefix("hf-hub:")
    if looks_like_local_path(model_id):
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        return None
    return model_id


def check_base_model(base_model: str) -> str:
    """The Hub id a user names as the base model (`hf-hub:` prefix dropped); a path or an invalid id is refused."""
    hub_id = base_model.removeprefix("hf-hub:")
    if hub_base_model(hub_id) != hub_id:
        raise OptionError(
            "base_model",
            "{opt}{base_model!r} is not a Hub model id: give the id the base model is published under (name or "
            "org/name, e.g. HuggingFaceTB/SmolLM2-135M), or omit it for a model with no Hub id",
            base_model=base_model,
        )
    return hub_id


def _exists_outside_hub_cache(model_id: str) -> bool:
    """A file or folder on disk that is not a Hub cache snapshot: loaders read it first, so its name is no Hub id
    even when it looks like one (a folder `org/name` in the working directory)."""
    return not _SNAPSHOT.search(model_id) and Path(model_id).expanduser().exists()


def resolve_base_model(
    model_id: str | None, base_model: str | None = None, model: Any = None
) -> tuple[str | None, str]:
    """(Hub id or None, display name) of the base model: the user's `base_model`, else `model_id` when it is a Hub
    id and no local folder; the name falls back to the folder's name, then a timm model's architecture."""
    hub_id = check_base_model(base_model) if base_model else None
    if hub_id is None and model_id and not _exists_outside_hub_cache(model_id):
        hub_id = hub_base_model(model_id)
    if hub_id or model_id:
        local = hub_id is None and _exists_outside_hub_cache(model_id)
        return hub_id, Path(model_id).expanduser().resolve().name if local else short_name(hub_id or model_id)
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    architecture = pretrained_cfg.get("architecture") if isinstance(pretrained_cfg, dict) else None
    return None, architecture if isinstance(architecture, str) and architecture else "model"


def short_name(name: str) -> str:
    """The last component of a Hub id, path or `prefix:name`."""
    return re.split(r"[/\\:]", name.rstrip("/\\"))[-1] or "model"


def _card_license(readme: str | Path | None) -> str | None:
    if readme is None or not Path(readme).is_file():
        return None
    from huggingface_hub import metadata_load

    try:
        license_ = (metadata_load(readme) or {}).get("license")
    except (yaml.YAMLError, ValueError, OSError):  # an unreadable card: license unknown
        return None
    return license_ if isinstance(license_, str) else None


def base_model_license(model_id: str | None, model: Any = None) -> str | None:
    """The base model's license where known locally: the embedded default, a local card, the Hub cache, or timm."""
    from ..assets import DEFAULT_MODEL_ID, DEFAULT_MODEL_LICENSE

    if model_id == DEFAULT_MODEL_ID:
        return DEFAULT_MODEL_LICENSE
    if model_id:
        local = Path(model_id).expanduser()
        if local.is_dir():
            return _card_license(local / "README.md")
        hub_id = hub_base_model(model_id)
        if hub_id:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(hub_id, "README.md")
            found = _card_license(cached) if isinstance(cached, str) else None
            if found:
                return found
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(pretrained_cfg, dict) and isinstance(pretrained_cfg.get("license"), str):
        return pretrained_cfg["license"]
    return None


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"optimum-gblm": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "timm", "optimum", "huggingface-hub", "safetensors"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return versions


def check_base_model_option(base_model: str | None) -> str | None:
    """The Hub id the user names as the base model (None: not named), checked before anything is loaded or written."""
    return check_base_model(base_model) if base_model else None
