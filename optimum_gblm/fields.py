"""Facts about settings, declared once in dataclass field metadata, and the one validator that reads them.

A setting's field says what it is (`help`), what it may hold (its annotation, `choices`, `bounds`), where the CLI
shows it (`group`) and whether it changes the result (`runtime=True`: it only says where or how fast work runs, so
fingerprints leave it out). `GBLMConfig`, `MethodArgs` and `RecoveryConfig` declare their fields with
`field_spec(...)`; `check_fields` checks them; the CLI reads the same metadata for its options.

`OptionError` is the error of a setting the user should set differently: it keeps the option's name and renders
it for its reader, `device=` / `pass overwrite=True` for the library, `--device ` / `pass --overwrite` for the CLI.

This module imports nothing of the package, so every layer may use it.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, fields
from typing import Any

# -- messages that name an option -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spelling:
    """How a message spells its option. Templates use `{opt}` (before a value: `device=` / `--device `), `{flag}`
    (a switch turned on: `overwrite=True` / `--overwrite`), `{name}` (`base_model` / `--base-model`) and `{term}`
    (what a setting is called: an argument / an option). Another option is spelled the same way by naming it in
    the format spec: `{flag:gradient_checkpointing}`, or `{flag:{other}}` with `other=` a value of the message."""

    cli: bool

    def placeholders(self, option: str) -> dict[str, str]:
        if self.cli:
            flag = "--" + option.replace("_", "-")
            spelled = {"opt": flag + " ", "flag": flag, "name": flag, "term": "option"}
        else:
            spelled = {"opt": option + "=", "flag": option + "=True", "name": option, "term": "argument"}
        return {key: _Spelled(text, self, key) for key, text in spelled.items()}


class _Spelled(str):
    """A placeholder's text that spells another option when formatted with its name as the spec."""

    def __new__(cls, text: str, spelling: Spelling, key: str) -> _Spelled:
        spelled = super().__new__(cls, text)
        spelled.spelling, spelled.key = spelling, key
        return spelled

    def __format__(self, spec: str) -> str:
        return self.spelling.placeholders(spec)[self.key] if spec else str(self)


@dataclass(frozen=True)
class PerReader:
    """A template value worded differently per reader (what the library offers and what the CLI offers)."""

    library: str
    cli: str

    def spell(self, spelling: Spelling) -> str:
        return self.cli if spelling.cli else self.library


@dataclass(frozen=True)
class OptionNames:
    """A template value of text that names options by their Python names (`placement / intermediates`,
    `blockwise_gradients`, `placement='disk'`): the names in `options` are spelled per reader (`{name}`, or `{opt}`
    before `=`)."""

    text: str
    options: tuple[str, ...]

    def spell(self, spelling: Spelling) -> str:
        if not self.options:
            return self.text
        words = re.compile(r"\b(" + "|".join(map(re.escape, self.options)) + r")\b(=?)")
        return words.sub(lambda m: spelling.placeholders(m.group(1))["opt" if m.group(2) else "name"], self.text)


LIBRARY = Spelling(cli=False)
CLI = Spelling(cli=True)
_SPELLING_KEYS = frozenset(LIBRARY.placeholders("x"))


class OptionMessage(Exception):
    """An error about one option (`option`: its Python keyword name), its message a template rendered per reader;
    `str(err)` is the library's rendering. Combine with the built-in error it is (see `OptionError`)."""

    def __init__(self, option: str, template: str, **values: Any) -> None:
        clash = sorted(_SPELLING_KEYS & set(values))
        if clash:
            raise TypeError(f"template values may not be named {', '.join(clash)}: they spell the option")
        self.option, self.template, self.values = option, template, values
        super().__init__(self.render(LIBRARY))

    def render(self, spelling: Spelling) -> str:
        values = {
            k: v.spell(spelling) if isinstance(v, (PerReader, OptionNames)) else v for k, v in self.values.items()
        }
        return self.template.format(**spelling.placeholders(self.option), **values)

    def __reduce__(self) -> tuple[Any, ...]:  # the default would call __init__ with the rendered message only
        return (_rebuild, (type(self), self.option, self.template, self.values))


def _rebuild(cls: type[OptionMessage], option: str, template: str, values: dict[str, Any]) -> OptionMessage:
    return cls(option, template, **values)


class OptionError(OptionMessage, ValueError):
    """A `ValueError` that names its option (`err.option`); the CLI shows `err.render(CLI)`."""


class OptionFileExistsError(OptionMessage, FileExistsError):
    """A `FileExistsError` whose way out is an option (`pass overwrite=True` / `pass --overwrite`)."""


# -- field metadata ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """The range a number must lie in (`low` / `high` inclusive unless `*_open`); `rule` says it in words, e.g. "a
    positive integer", "a number >= 0", "a number strictly between 0 and 1"."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def rule(self, integer: bool) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None and (self.low, self.low_open) == ((1, False) if integer else (0, True)):
            return "a positive integer" if integer else "a positive number"
        noun = "an integer" if integer else "a number"
        if self.low is None and self.high is None:
            return noun
        if self.high is None:
            return f"{noun} {'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{noun} {'<' if self.high_open else '<='} {high}"
        if self.low_open and self.high_open:
            return f"{noun} strictly between {low} and {high}"
        return f"{noun} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float | None) -> str:
    return f"{value:g}" if value is not None else ""


POSITIVE = Bounds(low=0, low_open=True)  # a number > 0
POSITIVE_INT = Bounds(low=1)  # an integer >= 1
NON_NEGATIVE = Bounds(low=0)
FRACTION = Bounds(low=0, high=1)  # [0, 1]
OPEN_UNIT = Bounds(low=0, high=1, low_open=True, high_open=True)  # (0, 1)


def field_spec(
    help: str,
    *,
    group: str | None = None,
    choices: tuple[str, ...] | None = None,
    registry: Callable[[], Any] | None = None,
    bounds: Bounds | None = None,
    runtime: bool = False,
    cli: bool = True,
) -> dict[str, Any]:
    """The `metadata=` of a setting's dataclass field.

    help: one sentence for `--help` and the docs. group: the CLI's option group. choices: the closed set of values
    (checked by `check_fields`). registry: a callable returning the registered names (methods, comparison groups),
    read when the CLI is built; checked by the registry's own lookup, which names the allowed values. bounds: the
    range of a number. runtime: the setting only says where or how fast work runs (same result), so fingerprints
    leave it out. cli: False for a field that is not a CLI option (recorded by the library, or set through other
    options)."""
    meta: dict[str, Any] = {"help": help, "runtime": runtime, "cli": cli}
    if group is not None:
        meta["group"] = group
    if choices is not None:
        meta["choices"] = tuple(choices)
    if registry is not None:
        meta["registry"] = registry
    if bounds is not None:
        meta["bounds"] = bounds
    return meta


def in_group(group: str) -> Callable[..., dict[str, Any]]:
    """A builder for the settings of one CLI group: `field(default=8, **calibration("help", bounds=POSITIVE_INT))`
    with `calibration = in_group("calibration")` (the `metadata=` keyword of `field`, from `field_spec`)."""

    def spec(help: str, **facts: Any) -> dict[str, Any]:
        return {"metadata": field_spec(help, group=group, **facts)}

    return spec


def field_choices(f: Field) -> tuple[str, ...] | None:
    """The values a field may take as offered to users: its closed set, or its registry's names read now."""
    registry = f.metadata.get("registry")
    if registry is not None:
        return tuple(registry())
    return f.metadata.get("choices")


def runtime_fields(cls: Any) -> tuple[str, ...]:
    """Names of the fields declared `runtime=True` (settings of where and how fast work runs)."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("runtime"))


# -- the validator ----------------------------------------------------------------------------------------------


def _kind(f: Field) -> str:
    """The annotation as written ("int", "str | None", "list[str]"), whether or not annotations are postponed."""
    if isinstance(f.type, str):
        return f.type
    return f.type.__name__ if isinstance(f.type, type) else str(f.type)  # list[str], str | None: as written


def _type_problem(kind: str, value: Any) -> str | None:
    """What a value of this annotation must be, when it is not (None: fine, or an annotation left to code)."""
    expected = {
        "str": ("a string", isinstance(value, str)),
        "bool": ("true or false", isinstance(value, bool)),
        "int": ("an integer", isinstance(value, numbers.Integral) and not isinstance(value, bool)),
        "float": (
            "a finite number",
            isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value),
        ),
        "list[str]": (
            "a string or a list of strings",
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
        ),
        "dict": ("a dict", isinstance(value, dict)),
    }.get("dict" if kind.startswith("dict[") else kind)
    return expected[0] if expected is not None and not expected[1] else None


def _invalid(name: str, value: Any, rule: str) -> OptionError:
    # Spelled `name=value` for every reader: a config file, a dict and the CLI's messages all say it so.
    return OptionError(name, "{field}={value!r} is invalid: {rule}", field=name, value=value, rule=rule)


def check_fields(obj: Any, default_bounds: Mapping[str, Bounds] | None = None) -> None:
    """Check every field of a dataclass instance against its metadata; raise `OptionError` naming the field, the
    value and what is allowed. First the types (a JSON file may hold "0.5" or 1.5 where a number or an integer
    belongs; a tuple for a list of strings becomes a list), then choices and bounds. `default_bounds` gives the
    bounds of fields without their own, by annotation ("int", "float"). Cross-field rules stay with the caller."""
    checked = []
    for f in fields(obj):
        value, kind = getattr(obj, f.name), _kind(f)
        if value is None and kind.endswith("| None"):
            continue
        kind = kind.removesuffix(" | None")
        if kind == "list[str]" and isinstance(value, tuple):
            value = list(value)
            setattr(obj, f.name, value)
        problem = _type_problem(kind, value)
        if problem is not None:
            raise _invalid(f.name, value, f"expected {problem}, got {type(value).__name__}")
        checked.append((f, kind, value))
    for f, kind, value in checked:
        choices = f.metadata.get("choices")
        if choices is not None:
            if isinstance(value, list) and (not value or any(v not in choices for v in value)):
                raise _invalid(f.name, value, f"choose one or more of {', '.join(choices)}")
            if isinstance(value, str) and value not in choices:
                raise _invalid(f.name, value, f"choose one of {', '.join(choices)}")
        bounds = f.metadata.get("bounds") or (default_bounds or {}).get(kind)
        if bounds is not None and kind in ("int", "float") and not bounds.holds(value):
            raise _invalid(f.name, value, f"it must be {bounds.rule(integer=kind == 'int')}")
