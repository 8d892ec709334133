"""The recovery-subset registry: one instance per registered `RecoverySubset` subclass, keyed by name.

A subset owns what it trains (its selection), its help text (RecoveryConfig and `--subset`) and its card text. A
LoRA subset trains a low-rank parametrization of the prune targets instead of parameters of its own; it is a subset
whose `parametrization` is set, and a run takes at most one of them (they would update the same weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from torch import nn

if TYPE_CHECKING:
    from ..targets import PruneTarget

_REGISTRY: dict[str, RecoverySubset] = {}
S = TypeVar("S", bound=type["RecoverySubset"])


class RecoverySubset:
    """Parameters a recovery run may retrain. Subclass, set the class data, override `parameters` (or set
    `parametrization` for a low-rank update of the prune targets) and decorate with `register_recovery_subset`."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""  # what it trains, for RecoveryConfig.subset's help and `--subset`
    card_text: ClassVar[str] = ""  # what the model card calls it
    # A `LowRank` module class (recovery/lora.py): the subset trains it on every LoRA target, nothing else.
    parametrization: ClassVar[type[nn.Module] | None] = None

    @property
    def lora(self) -> bool:
        return self.parametrization is not None

    def parameters(self, model: nn.Module, targets: list[PruneTarget]) -> dict[str, nn.Parameter]:
        """Name -> parameter to train directly (a pruned weight among them keeps its zeros after every step).
        An empty dict is a subset this model lacks; a model it can never apply to raises ValueError."""
        return {}

    # Facts every recover stage records, whether or not the subset is trained (`settings` gives their values then).
    recorded: ClassVar[dict[str, Any]] = {}

    def settings(self, model: nn.Module) -> dict[str, Any]:
        """Extra facts the recover stage records (e.g. whether the head is tied to the embeddings)."""
        return {}

    def card_note(self, settings: dict[str, Any]) -> str | None:
        """One more part of the card's "Trained parameters" row, from the recorded stage settings."""
        return None


def register_recovery_subset(cls: S) -> S:
    """Register a `RecoverySubset` subclass under its `name` (usable as a class decorator)."""
    name = getattr(cls, "name", None)
    if not (isinstance(cls, type) and issubclass(cls, RecoverySubset)):
        raise ValueError(f"{cls!r} is not a RecoverySubset subclass")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a `name` to be registered")
    if name in _REGISTRY:
        raise ValueError(f"A recovery subset named {name!r} is already registered")
    for attribute in ("help", "card_text"):
        if not isinstance(getattr(cls, attribute, None), str) or not getattr(cls, attribute):
            raise ValueError(f"recovery subset {name!r} needs a `{attribute}`")
    lowrank = cls.parametrization
    if lowrank is not None and not (isinstance(lowrank, type) and issubclass(lowrank, nn.Module)):
        raise ValueError(f"recovery subset {name!r}: `parametrization` must be an nn.Module class (a LowRank)")
    if lowrank is None and cls.parameters is RecoverySubset.parameters:
        raise ValueError(f"recovery subset {name!r} trains nothing: override `parameters` or set `parametrization`")
    _REGISTRY[name] = cls()
    return cls


def get_recovery_subset(name: str) -> RecoverySubset:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"subset={name!r} is unknown: choose one or more of {', '.join(_REGISTRY)}") from None


def list_recovery_subsets() -> list[str]:
    return list(_REGISTRY)


def lora_subsets() -> list[str]:
    """The registered subsets that are low-rank parametrizations (at most one per run)."""
    return [name for name, subset in _REGISTRY.items() if subset.lora]


def subset_help() -> str:
    """RecoveryConfig.subset's help: every registered subset with its own help text."""
    return "Parameters to retrain: " + ", ".join(f"{n} ({s.help})" for n, s in _REGISTRY.items()) + "."
