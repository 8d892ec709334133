"""Command-line options generated from `GBLMConfig` fields (names, defaults, help, choices and groups from their
metadata), plus shared groups."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, Field, fields
from typing import Any

from ..configuration import GBLMConfig
from ..evaluation import DEFAULT_EVAL_WINDOWS
from ..fields import field_choices
from ..methods import argument_owners, get_method, list_methods
from ..utils import resolve_device
from .errors import usage_error

OTHER_GROUP = "other settings"  # the options of fields that declare no `group`
METHOD_ARG_PREFIX = "method_arg_"


def _config_groups() -> dict[str, tuple[str, ...]]:
    """GBLMConfig's fields by their `group` metadata: groups in the order their first field is declared, fields in
    declaration order (the order --help shows), fields that are not options (`cli=False`) included."""
    groups: dict[str, list[str]] = {}
    for f in fields(GBLMConfig):
        groups.setdefault(f.metadata.get("group", OTHER_GROUP), []).append(f.name)
    other = groups.pop(OTHER_GROUP, [])
    return {title: tuple(names) for title, names in {**groups, OTHER_GROUP: other}.items() if names}


CONFIG_GROUPS = _config_groups()
# Recorded by the library, or given through the method-argument options below.
NOT_OPTIONS = frozenset(f.name for f in fields(GBLMConfig) if not f.metadata.get("cli", True))

EVAL_SOURCES = ("offline-corpus", "wikitext2")


def _default(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def _value_type(hint: Any) -> Any:
    """`str | None` -> str; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


def boolean(text: str) -> bool:
    """A boolean option's value: true / false, yes / no, 1 / 0 (any case); argparse names the option on an error."""
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    # argparse shows "argument --x: invalid boolean value: 'text'"; the allowed words come from the metavar
    raise argparse.ArgumentTypeError(
        f"invalid boolean value {text!r}: use one of {', '.join(TRUE_WORDS + FALSE_WORDS)}"
    )


def _value_kwargs(hint: Any, name: str) -> dict[str, Any]:
    """`type` and `metavar` of a method argument's option: booleans take an explicit true / false value."""
    hint = _value_type(hint)
    if hint is bool:
        return {"type": boolean, "metavar": "{true,false}"}
    return {"type": hint, "metavar": {int: "N", float: "X"}.get(hint, name.upper())}


def _add_field(group: argparse._ArgumentGroup, f: Field, hint: Any) -> None:
    default = _default(f)
    text = f.metadata.get("help", "").replace("%", "%%")
    choices = field_choices(f)  # registry-backed ones read now: methods registered after import are offered too
    kwargs: dict[str, Any] = {"dest": f.name, "default": default}
    hint = _value_type(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
    elif typing.get_origin(hint) is list:
        item = (typing.get_args(hint) or (str,))[0]
        kwargs.update(nargs="+", type=item, metavar="REGEX" if item is str else item.__name__.upper())
    else:
        kwargs["type"] = hint
        if choices:
            kwargs["choices"] = list(choices)
        else:
            kwargs["metavar"] = {int: "N", float: "X"}.get(hint, f.name.upper())
    if hint is not bool and not (default is None or default in ([], "")):
        text += " (default: %(default)s)"
    group.add_argument("--" + f.name.replace("_", "-"), help=text, **kwargs)


def add_config_arguments(
    parser: argparse.ArgumentParser, groups: tuple[str, ...] | None = None, exclude: frozenset[str] = frozenset()
) -> dict[str, argparse._ArgumentGroup]:
    """Add one option per GBLMConfig field in `groups` (all by default), except the fields in `exclude` (settings a
    subcommand never reads; "method_args" leaves out the methods' own options); returns the groups by title."""
    hints = typing.get_type_hints(GBLMConfig)
    by_name = {f.name: f for f in fields(GBLMConfig) if f.name not in NOT_OPTIONS | exclude}
    out: dict[str, argparse._ArgumentGroup] = {}
    for title, names in CONFIG_GROUPS.items():
        if groups is not None and title not in groups:
            continue
        if any(name not in NOT_OPTIONS for name in names):  # kept when `exclude` empties it: callers add to it
            out[title] = parser.add_argument_group(title)
        for name in names:
            if name in by_name:
                _add_field(out[title], by_name[name], hints[name])
        if "method_args" in names and "method_args" not in exclude:  # the methods' options follow its group
            add_method_arguments(parser)
    return out


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per method argument declared in the registry, grouped by the methods that declare it; unset
    options keep the method's own default."""
    from ..methods import get_method

    by_owners: dict[tuple[str, ...], list[tuple[str, Field, Any]]] = {}
    for name, owners in argument_owners().items():
        args_cls = get_method(owners[0]).args
        f = next(f for f in fields(args_cls) if f.name == name)
        by_owners.setdefault(tuple(owners), []).append((name, f, typing.get_type_hints(args_cls)[name]))
    for owners, entries in by_owners.items():
        group = parser.add_argument_group(f"{' / '.join(owners)} arguments")
        for name, f, hint in entries:
            text = f.metadata.get("help", "").replace("%", "%%") + f" (default: {_default(f)})"
            group.add_argument(
                "--" + name.replace("_", "-"),
                dest=METHOD_ARG_PREFIX + name,
                help=text,
                **_value_kwargs(hint, name),
            )


def config_from_args(args: argparse.Namespace) -> GBLMConfig:
    """The validated config of the parsed options; an invalid value is a usage error (exit 2)."""
    values = {f.name: getattr(args, f.name) for f in fields(GBLMConfig) if hasattr(args, f.name)}
    method_args = {
        key[len(METHOD_ARG_PREFIX) :]: value
        for key, value in vars(args).items()
        if key.startswith(METHOD_ARG_PREFIX) and value is not None
    }
    try:
        config = GBLMConfig.from_dict({**values, **method_args}, strict=True)
    except ValueError as err:
        raise usage_error(err) from None
    try:  # a device this machine lacks is known now, before the model and the calibration are loaded
        resolve_device(config.device)
    except ValueError as err:
        raise usage_error(err) from None
    return config


def methods_epilog() -> str:
    width = max(len(name) for name in list_methods())
    lines = [f"  {name:<{width}}  {get_method(name).description}" for name in list_methods()]
    return "methods:\n" + "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def eval_windows(text: str) -> int | str:
    """`--eval-windows`: a positive number of windows, or `all`."""
    return "all" if text.strip().lower() == "all" else positive_int(text)


def max_windows_kwargs(args: argparse.Namespace) -> dict[str, int | None]:
    """`max_windows` for GBLMPruner.evaluate when --eval-windows was given (`all` -> None); else nothing, so the
    library's (or the manifest's) default applies."""
    if args.eval_windows is None:
        return {}
    return {"max_windows": None if args.eval_windows == "all" else args.eval_windows}


def add_eval_arguments(
    parser: argparse.ArgumentParser,
    title: str,
    seqlen_default: str,
    flag: bool,
    source_default: str | None = "offline-corpus",
    windows_default: str = str(DEFAULT_EVAL_WINDOWS),
    measures: str = "the dense and the pruned model",
) -> None:
    group = parser.add_argument_group(title)
    if flag:
        group.add_argument("--eval", action="store_true", help=f"Measure {measures}.")
    group.add_argument(
        "--eval-seqlen",
        type=positive_int,
        metavar="N",
        help=f"LLMs: tokens per evaluation window (default: {seqlen_default}).",
    )
    group.add_argument(
        "--eval-windows",
        type=eval_windows,
        metavar="N|all",
        help=f"LLMs: evaluate the first N windows, or all of them (default: {windows_default}).",
    )
    text_default = f"default: {source_default}" if source_default else f"default: {seqlen_default}"
    group.add_argument(
        "--eval-source",
        default=source_default,
        metavar="SOURCE",
        help=f"LLMs: held-out text: offline-corpus (the embedded corpus's evaluation slice), wikitext2 (test split) "
        f"or a text file ({text_default}). Image models (timm ViTs): a labelled image folder (class sub-folders, "
        "optionally under validation/ or val/) or a datasets image dataset, with no default: required.",
    )


def add_hub_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--token", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`).")
    group.add_argument(
        "--private", action="store_true", default=None, help="Create the repo private (default: leave as is)."
    )
    group.add_argument("--commit-message", metavar="TEXT", help="Commit message (default: generated).")
    group.add_argument("--revision", metavar="BRANCH", help="Branch to push to (default: main).")
    group.add_argument(
        "--endpoint", metavar="URL", help="Hub endpoint (default: huggingface_hub's, i.e. HF_ENDPOINT)."
    )


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output and logging")
    group.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="Verbosity of optimum_gblm's log messages on stderr (default: %(default)s).",
    )
    group.add_argument("--debug", action="store_true", help="Debug logging, and a full traceback on errors.")
    group.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")
