"""This project's own checkpoints as transformers sees them: the per-layer structured record, its seal, and loading
any checkpoint folder or Hub repo the project wrote (docs/structured.md#checkpoints-and-reload).

Per-layer widths are recorded under `STRUCTURE_KEY`; the saved config.json is sealed so that plain transformers
refuses it (a model built from the dense widths would have its mismatched tensors re-initialised, and
`LlamaConfig.from_pretrained` would pick a nested record holding `model_type` and build LLaMA's defaults). Every
entry point of the project reads the seal back here, for local folders and Hub ids alike. Never runs remote code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import looks_like_local_path

logger = logging.getLogger(__name__)

STRUCTURE_KEY = "optimum_gblm_structure"  # config.json: {"version": 1, "family": "llama", "layers": [widths]}
# The model_type of a saved per-layer checkpoint: AutoConfig refuses it, and `load_pruned` restores the family's.
SEALED_MODEL_TYPE = "optimum_gblm_structured"
# The family classes (LlamaConfig.from_pretrained) accept any model_type with a warning: this `layer_types` entry
# makes their config validation refuse the folder, before any model is built, with the call that loads it.
SEAL_NOTE = "per-layer structured checkpoint of optimum-gblm: load it with optimum_gblm.load_pruned(folder)"
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download")


class NotAModel(ValueError):
    """A folder (or repo) that holds no model this project can load: no config.json, or no model_type in it."""


def seal_saved_config(folder: str | Path) -> None:
    """Seal a saved per-layer checkpoint's config.json (see SEALED_MODEL_TYPE and SEAL_NOTE); others are left alone."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    structure = data.get(STRUCTURE_KEY)
    if not isinstance(structure, dict) or data.get("model_type") == SEALED_MODEL_TYPE:
        return
    structure.setdefault("family", structure.pop("model_type", None) or data.get("model_type"))
    if data.get("layer_types") is not None:  # a family's own layer types, restored on load
        structure["layer_types"] = data["layer_types"]
    data["model_type"], data["layer_types"] = SEALED_MODEL_TYPE, [SEAL_NOTE]
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def unsealed(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The config dict transformers builds the dense layout from: a sealed per-layer config gets its family's
    model_type and layer types back (checkpoints from before the seal note name the family as `model_type`)."""
    structure = data.get(STRUCTURE_KEY)
    if structure is None:
        return data
    if not isinstance(structure, dict) or structure.get("version") != 1 or "layers" not in structure:
        raise ValueError(f"{where}: {STRUCTURE_KEY} is not a version-1 structure record")
    data, structure = dict(data), dict(structure)
    family = structure.get("family") or structure.pop("model_type", None)
    if data.get("model_type") == SEALED_MODEL_TYPE:
        if not family:
            raise ValueError(f"{where}: {STRUCTURE_KEY} names no model family")
        data["model_type"] = family
        data.pop("layer_types", None)
        if structure.get("layer_types") is not None:
            data["layer_types"] = structure["layer_types"]
    structure.pop("layer_types", None)
    data[STRUCTURE_KEY] = {**structure, "family": family or data.get("model_type")}
    return data


def is_per_layer(config: Any) -> bool:
    """Whether a transformers config records per-layer widths (a per-layer structured checkpoint)."""
    return isinstance(getattr(config, STRUCTURE_KEY, None), dict)


def _is_local(source: str | Path) -> bool:
    """A local folder (or a name only a path can be), not a Hub id."""
    return looks_like_local_path(str(source)) or Path(source).expanduser().is_dir()


def _hub_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in HUB_OPTIONS if kwargs.get(k) is not None}


def config_file(source: str | Path, **kwargs: Any) -> Path | None:
    """config.json of a local folder, or of a Hub repo through huggingface_hub (its cache, HF_HUB_OFFLINE, the
    endpoint); None when the Hub repo has none or cannot be reached. A local folder without one is `NotAModel`."""
    if _is_local(source):
        folder = Path(source).expanduser()
        if not (folder / "config.json").is_file():
            raise NotAModel(f"{str(source)!r} is not a model folder: it has no config.json")
        return folder / "config.json"
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(hf_hub_download(str(source), "config.json", **_hub_options(kwargs)))
    except (OSError, HfHubHTTPError, ValueError) as err:  # transformers' own loader then says why
        logger.debug("no config.json for %s (%s)", source, err)
        return None


def read_config_dict(source: str | Path, **kwargs: Any) -> dict[str, Any] | None:
    """The unsealed config dict of a local folder or Hub repo (None: the Hub could not tell); `NotAModel` when it
    is not a model config (no `model_type`, and not a timm config)."""
    path = config_file(source, **kwargs)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise NotAModel(f"{source}: config.json is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not (data.get("model_type") or data.get("architecture")):
        raise NotAModel(f"{str(source)!r} is not a model: its config.json has no model_type")
    return unsealed(data, f"{source}/config.json")


def read_config(source: str | Path, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """The transformers config of a model folder or Hub id, per-layer checkpoints included (the dense layout,
    with the per-layer widths under STRUCTURE_KEY)."""
    from transformers import AutoConfig

    data = read_config_dict(source, **kwargs)
    if data is not None and STRUCTURE_KEY in data:
        return AutoConfig.for_model(**data)
    return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)


def _resized(old: nn.Linear, rows: int | None = None, cols: int | None = None) -> nn.Linear:
    """An empty linear of the recorded shape (its weights are loaded next), where `old` stood."""
    new = nn.Linear(cols or old.in_features, rows or old.out_features, bias=old.bias is not None)
    return new.to(device=old.weight.device, dtype=old.weight.dtype)


def _resize_block(block: nn.Module, widths: dict[str, int], head_dim: int) -> None:
    attn, mlp = block.self_attn, block.mlp
    q, kv, channels = (
        widths["num_attention_heads"] * head_dim,
        widths["num_key_value_heads"] * head_dim,
        widths["intermediate_size"],
    )
    attn.q_proj, attn.k_proj = _resized(attn.q_proj, rows=q), _resized(attn.k_proj, rows=kv)
    attn.v_proj = _resized(attn.v_proj, rows=kv)
    attn.o_proj = _resized(attn.o_proj, cols=q)
    attn.num_key_value_groups = widths["num_attention_heads"] // widths["num_key_value_heads"]
    mlp.gate_proj, mlp.up_proj = _resized(mlp.gate_proj, rows=channels), _resized(mlp.up_proj, rows=channels)
    mlp.down_proj = _resized(mlp.down_proj, cols=channels)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = channels


def checkpoint_folder(source: str | Path, **kwargs: Any) -> Path:
    """A local folder as is; a Hub repo's config and safetensors weights, downloaded (or read from the cache)."""
    if _is_local(source):
        return Path(source).expanduser()
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors"]
    return Path(snapshot_download(str(source), allow_patterns=patterns, **_hub_options(kwargs)))


def load_pruned(folder: str | Path, dtype: Any = None, **kwargs: Any) -> nn.Module:
    """Load a checkpoint saved after structured pruning (a local folder or a Hub id): with plain
    `AutoModelForCausalLM.from_pretrained` when its widths are uniform, else by building the dense layout,
    shrinking each block to its recorded widths and loading the safetensors weights into it (strictly: every tensor
    must be present and fit). Never runs remote code."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    data = read_config_dict(folder, **kwargs)
    if data is None or STRUCTURE_KEY not in data:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or "auto", trust_remote_code=False, **kwargs)
    local = checkpoint_folder(folder, **kwargs)
    config = AutoConfig.for_model(**data)
    layers = data[STRUCTURE_KEY]["layers"]
    if len(layers) != config.num_hidden_layers:
        raise ValueError(f"{folder}/config.json: {len(layers)} layer widths for {config.num_hidden_layers} layers")
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or getattr(config, "dtype", None) or torch.float32)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for block, widths in zip(model.model.layers, layers):
        _resize_block(block, widths, head_dim)
    state = {}
    index = local / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    for name in files:
        state.update(load_file(str(local / name)))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if tied:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and tied)]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not fit the recorded structure (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.tie_weights()
    model.name_or_path = str(folder)
    return model.eval()
