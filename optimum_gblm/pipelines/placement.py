"""Where the model and the intermediates live while a pipeline walks it: the hook points of offloaded pruning.

`WholeModel` moves the model to the compute device once (the default). `BlockByBlock` leaves the model where it is
(e.g. on the CPU) and moves one block at a time to the device for its statistics, pruning and re-run. The
intermediates store keeps each sample's block input on the device, on the CPU or on disk between blocks.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..configuration import INTERMEDIATES
from ..targets import PruneTarget


class Placement:
    """Moves the model (or one block at a time) to the compute device."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def prepare(self, model: nn.Module) -> None:
        """Before a walk (and before the gradient pass or an evaluation, which need the whole model)."""

    def onload(self, block: nn.Module) -> None:
        """Before a block is run."""

    def offload(self, block: nn.Module) -> None:
        """After a block is finished."""

    def prepare_whole(self, model: nn.Module, purpose: str) -> None:
        """Before something that runs the whole model (`purpose`: the gradient pass, an evaluation)."""
        self.prepare(model)

    def weights(self, modules: Mapping[str, nn.Module]) -> Mapping[str, Any]:
        """Name -> an object whose `.weight` is the module's weight, readable (not on the meta device)."""
        return modules

    def target_weights(self, targets: Sequence[PruneTarget]) -> Mapping[str, torch.Tensor]:
        """Name -> 2-D weight of every target (what the gradient allocation ranks)."""
        return {t.name: t.weight() for t in targets}

    def save_model(self, model: nn.Module, folder: Path, adapter: Any, tokenizer: Any = None) -> None:
        """Write the model's checkpoint into `folder` (the adapter's native format)."""
        adapter.save(model, folder, tokenizer)


class WholeModel(Placement):
    def prepare(self, model: nn.Module) -> None:
        if getattr(model, "hf_device_map", None):
            return  # dispatched by accelerate: blocks run where they live
        if next(model.parameters()).device != self.device:
            model.to(self.device)


class BlockByBlock(Placement):
    """Each block visits the compute device and goes back to where it was; the rest of the model stays put."""

    def __init__(self, device: torch.device | str) -> None:
        super().__init__(device)
        self._home: dict[int, torch.device] = {}

    def onload(self, block: nn.Module) -> None:
        self._home[id(block)] = next(block.parameters()).device
        block.to(self.device)

    def offload(self, block: nn.Module) -> None:
        block.to(self._home.pop(id(block), self.device))


def place_model(model: nn.Module, device: torch.device | str) -> None:
    """Put the whole model on `device` (what the gradient pass and evaluation need)."""
    WholeModel(device).prepare(model)


class IntermediatesStore:
    """Per-sample block inputs between blocks: on the compute device, on the CPU, or on disk."""

    def __init__(self, kind: str = "device") -> None:
        if kind not in INTERMEDIATES:
            raise ValueError(f"intermediates={kind!r} is invalid: choose one of {', '.join(INTERMEDIATES)}")
        self.kind = kind
        self._items: dict[int, torch.Tensor] = {}
        self._folder: Path | None = (
            Path(tempfile.mkdtemp(prefix="optimum-gblm-intermediates-")) if kind == "disk" else None
        )

    def put(self, index: int, states: torch.Tensor) -> None:
        states = states.detach()
        if self._folder is not None:
            save_file({"states": states.contiguous().cpu()}, str(self._folder / f"{index}.safetensors"))
        else:
            self._items[index] = states.cpu() if self.kind == "cpu" else states

    def get(self, index: int) -> torch.Tensor:
        if self._folder is not None:
            return load_file(str(self._folder / f"{index}.safetensors"))["states"]
        return self._items[index]

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(self.get(index).shape)

    def close(self) -> None:
        self._items.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> IntermediatesStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
