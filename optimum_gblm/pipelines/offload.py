"""Pruning a model that never lives in memory whole (`GBLMConfig.placement="disk"`, docs/scale-out.md).

The model is built on the meta device (buffers such as rotary frequencies stay real), the weights outside the blocks
(embeddings, final norm, head) are read from the safetensors checkpoint, and each block is read when the pipeline
reaches it, moved to the compute device, pruned, written to its own safetensors shard in a work folder and returned
to the meta device. Host memory holds the stem, one block and the intermediates, whatever the depth.
`save_pretrained` assembles the shards (blocks never visited are copied from the source) into a sharded checkpoint
that transformers reloads as usual.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..targets import PruneTarget
from .placement import Placement

logger = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"


class CheckpointReader:
    """Tensor names of a safetensors checkpoint folder (one file or an index of shards), read one group at a time;
    every read opens and closes its file, so no mapping outlives it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index, single = self.folder / INDEX_NAME, self.folder / "model.safetensors"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: self.folder / file for name, file in weight_map.items()}
        elif single.is_file():
            with safe_open(str(single), framework="pt") as f:
                self.files = dict.fromkeys(f.keys(), single)  # noqa: SIM118 - safe_open handles are not iterable
        else:
            raise ValueError(
                f"placement='disk' reads the model block by block from safetensors weights, but {self.folder} has "
                f"neither model.safetensors nor {INDEX_NAME}: convert the checkpoint or use placement='memory'"
            )

    def names(self, prefix: str = "") -> list[str]:
        return [name for name in self.files if name.startswith(prefix)]

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        for path, members in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                out.update({name: f.get_tensor(name) for name in members})
        return out


def build_skeleton(source: str | Path, config: Any) -> nn.Module:
    """The model's structure from its config, parameters on the meta device and buffers real (they are computed,
    not stored: rotary frequencies), in the dtype the in-memory load would give."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..utils import DTYPES

    hf_config = AutoConfig.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    dtype = DTYPES[config.dtype] if config.dtype != "auto" else getattr(hf_config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, trust_remote_code=config.trust_remote_code)
    model.name_or_path = str(source)
    return model.eval()


class FromCheckpoint(Placement):
    """Blocks read from a checkpoint on `onload`, written out and dropped (meta) on `offload`."""

    def __init__(self, device: torch.device | str, checkpoint: str | Path, block_path: str) -> None:
        super().__init__(device)
        self.reader = CheckpointReader(checkpoint)
        self.checkpoint = Path(checkpoint)
        self.block_path = block_path
        self.work = Path(tempfile.mkdtemp(prefix="optimum-gblm-offload-"))
        weakref.finalize(self, shutil.rmtree, str(self.work), True)
        self.written: dict[str, Path] = {}  # block prefix -> its pruned shard in the work folder
        self._prefixes: dict[int, str] = {}
        self._dtype: torch.dtype | None = None

    def _block_prefixes(self, model: nn.Module) -> list[str]:
        blocks = model.get_submodule(self.block_path)
        self._prefixes = {id(block): f"{self.block_path}.{i}" for i, block in enumerate(blocks)}
        return list(self._prefixes.values())

    def prepare(self, model: nn.Module) -> None:
        """Load the weights outside the blocks (once) onto the compute device."""
        if self._dtype is not None:
            return
        prefixes = self._block_prefixes(model)
        self._dtype = next(model.parameters()).dtype
        outside = [n for n in self.reader.names() if not n.startswith(f"{self.block_path}.")]
        _materialise(model, self.reader.read(outside), self.device, self._dtype)
        model.tie_weights()
        missing = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(f"{self.block_path}.")]
        if missing:
            raise ValueError(f"{self.checkpoint} lacks weights the model needs: {', '.join(missing[:5])}")
        logger.info("Offloaded model: %d blocks read one at a time from %s", len(prefixes), self.checkpoint)

    def prepare_whole(self, model: nn.Module, purpose: str) -> None:
        raise ValueError(
            f"placement='disk' never holds the whole model, which {purpose} needs: run it with placement='memory' "
            "or 'cpu' (or on several GPUs, docs/scale-out.md) and hand the result over, or use the saved checkpoint"
        )

    def onload(self, block: nn.Module) -> None:
        prefix = self._prefixes[id(block)]
        source = self.written.get(prefix)
        tensors = _read_file(source) if source else self.reader.read(self.reader.names(f"{prefix}."))
        _materialise(block, {k.removeprefix(f"{prefix}."): v for k, v in tensors.items()}, self.device, self._dtype)
        left = [n for n, p in block.named_parameters() if p.is_meta]
        if left:
            raise ValueError(f"{self.checkpoint} lacks weights of {prefix}: {', '.join(left[:5])}")

    def offload(self, block: nn.Module) -> None:
        prefix = self._prefixes[id(block)]
        tensors = {f"{prefix}.{n}": p.detach().cpu().contiguous() for n, p in block.named_parameters()}
        path = self.work / f"{prefix}.safetensors"
        save_file(tensors, str(path), metadata={"format": "pt"})
        self.written[prefix] = path
        block.to("meta")

    def weights(self, modules: Mapping[str, nn.Module]) -> Mapping[str, Any]:
        """The targets' weights read one at a time from the checkpoint, for the gradient cache's model fingerprint."""
        return _LazyWeights(self.reader, list(modules))

    def target_weights(self, targets: Sequence[PruneTarget]) -> Mapping[str, torch.Tensor]:
        """Read again from the checkpoint at every access (the allocation passes over them a few times)."""
        return _LazyWeights(self.reader, [t.name for t in targets], tensor=True)

    def save_model(self, model: nn.Module, folder: Path, adapter: Any, tokenizer: Any = None) -> None:
        """A sharded safetensors checkpoint: one shard per block (pruned, or copied from the source when never
        visited) and one for the rest, with its index, the config, the generation config and the tokenizer."""
        prefixes = self._block_prefixes(model)
        groups = [f"{p}." for p in prefixes] + [None]
        total, weight_map = 0, {}
        for k, prefix in enumerate(groups, start=1):
            shard = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            if prefix is not None and prefix[:-1] in self.written:
                shutil.copyfile(self.written[prefix[:-1]], folder / shard)
                names = _file_names(folder / shard)
            else:
                names = self.reader.names(prefix) if prefix else self._outside_names()
                save_file(self.reader.read(names), str(folder / shard), metadata={"format": "pt"})
            total += (folder / shard).stat().st_size
            weight_map.update(dict.fromkeys(names, shard))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        model.config.save_pretrained(folder)
        generation = self.checkpoint / "generation_config.json"
        if generation.is_file():
            shutil.copyfile(generation, folder / generation.name)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    def _outside_names(self) -> list[str]:
        return [n for n in self.reader.names() if not n.startswith(f"{self.block_path}.")]


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118


def _file_names(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _materialise(module: nn.Module, tensors: dict[str, torch.Tensor], device: torch.device, dtype: Any) -> None:
    from accelerate.utils import set_module_tensor_to_device

    for name, value in tensors.items():
        cast = dtype if value.is_floating_point() else None
        set_module_tensor_to_device(module, name, device, value=value, dtype=cast)


class _LazyWeights(Mapping):
    """Module name -> its weight read from the checkpoint on access (`tensor`), or an object with that `.weight`."""

    def __init__(self, reader: CheckpointReader, names: list[str], tensor: bool = False) -> None:
        self.reader, self.names, self.tensor = reader, names, tensor

    def __getitem__(self, name: str) -> Any:
        key = f"{name}.weight"
        weight = self.reader.read([key])[key]
        return weight if self.tensor else SimpleNamespace(weight=weight)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def offloaded_model(model: Any, config: Any, **load_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """For `placement="disk"`: the skeleton of a local safetensors checkpoint folder (None: the embedded default
    model), with the keyword arguments `load_model` wraps it with (its tokenizer and id). Checked before anything is
    read: a model instance, a folder without config or safetensors weights are refused."""
    if isinstance(model, nn.Module):
        raise ValueError("placement='disk' reads the model from its checkpoint folder: pass the folder, not a model")
    if model is None:
        from ..assets import DEFAULT_MODEL_ID, default_model_path

        source, load_kwargs = Path(default_model_path()), {"model_id": DEFAULT_MODEL_ID, **load_kwargs}
    else:
        source = Path(str(model)).expanduser()
    if not (source / "config.json").is_file():
        raise ValueError(
            f"placement='disk' needs a local checkpoint folder with config.json and safetensors weights; {model!r} is "
            "not one (download it first, e.g. with `hf download`)"
        )
    from ..adapters.pruned_checkpoint import STRUCTURE_KEY, read_config_dict

    if STRUCTURE_KEY in (read_config_dict(source) or {}):
        raise ValueError(
            f"placement='disk' reads every block in the dense layout, but {model!r} is a per-layer structured "
            "checkpoint (widths differ per block): use placement='cpu' (one block at a time on the device) or 'memory'"
        )
    CheckpointReader(source)  # refuses a folder without safetensors weights
    skeleton = build_skeleton(source, config)
    if load_kwargs.get("tokenizer") is None:
        from transformers import AutoTokenizer

        try:
            load_kwargs["tokenizer"] = AutoTokenizer.from_pretrained(
                source, trust_remote_code=config.trust_remote_code
            )
        except (OSError, ValueError) as err:
            logger.warning("No tokenizer loaded from %s (%s): pass calibration tokens to prune()", source, err)
    return skeleton, {"model_id": str(model), **load_kwargs}


def placement_for(config: Any, model: nn.Module, block_path: str) -> Placement:
    """The config's placement: memory (`WholeModel`), cpu (`BlockByBlock`) or disk (`FromCheckpoint`)."""
    from ..utils import resolve_device
    from .placement import BlockByBlock, WholeModel

    device = resolve_device(config.device)
    if config.placement == "disk":
        if not any(p.is_meta for p in model.parameters()):
            raise ValueError(
                "placement='disk' needs a model loaded with it (GBLMPruner.from_pretrained(folder, config))"
            )
        return FromCheckpoint(device, model.name_or_path, block_path)
    return BlockByBlock(device) if config.placement == "cpu" else WholeModel(device)
