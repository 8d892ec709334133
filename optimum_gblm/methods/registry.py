"""The method registry: one instance per registered `PruningMethod` subclass, keyed by name."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from .base import MethodArgs, PruningMethod

_REGISTRY: dict[str, PruningMethod] = {}
# Names a method argument may not take: GBLMConfig's own fields (configuration.py reserves them), since flat
# method arguments share the config's namespace in dicts, manifests and CLI options.
_RESERVED: set[str] = set()
DEFAULT_METHOD = "gblm"  # what GBLMConfig() prunes with: the project's namesake
M = TypeVar("M", bound=type[PruningMethod])


def register_method(cls: M) -> M:
    """Register a `PruningMethod` subclass under its `name` (usable as a class decorator)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a `name` to be registered")
    if name in _REGISTRY:
        raise ValueError(f"A pruning method named {name!r} is already registered")
    for attribute in ("description", "card_description"):
        if not getattr(cls, attribute, ""):
            raise ValueError(f"method {name!r} needs a `{attribute}`")
    if not (isinstance(cls.args, type) and issubclass(cls.args, MethodArgs)):
        raise ValueError(f"method {name!r}: `args` must be a MethodArgs dataclass")
    if not cls.groups:
        raise ValueError(f"method {name!r} declares no comparison group")
    _check_argument_names(name, cls.args)
    _REGISTRY[name] = cls()
    return cls


def _check_argument_names(name: str, args: type[MethodArgs]) -> None:
    clash = sorted({f.name for f in fields(args)} & _RESERVED)
    if clash:
        raise ValueError(f"method {name!r}: argument name(s) {', '.join(clash)} are GBLMConfig fields; rename them")


def reserve_argument_names(names: set[str]) -> None:
    """Forbid `names` as method argument names (GBLMConfig's fields); already registered methods are checked too."""
    _RESERVED.update(names)
    for method in _REGISTRY.values():
        _check_argument_names(method.name, method.args)


def get_method(name: str) -> PruningMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"method={name!r} is unknown: choose one of {', '.join(list_methods())}") from None


def list_methods() -> list[str]:
    return list(_REGISTRY)


def all_groups() -> tuple[str, ...]:
    """Every comparison group some registered method offers."""
    return tuple(dict.fromkeys(g for m in _REGISTRY.values() for g in m.groups))


def argument_owners() -> dict[str, list[str]]:
    """Method argument name -> the methods that declare it (for CLI option groups and config mapping)."""
    owners: dict[str, list[str]] = {}
    for method in _REGISTRY.values():
        for f in fields(method.args):
            owners.setdefault(f.name, []).append(method.name)
    return owners
