"""Boolean options: method arguments take an explicit true / false value (parsed, never `bool(text)`), config and
recovery booleans are switches; a word that is not a boolean is a usage error naming the option."""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields

import pytest

from optimum_gblm import GBLMConfig
from optimum_gblm.commands.options import add_config_arguments, config_from_args
from optimum_gblm.methods import argument_owners, get_method

WORDS = {"true": True, "True": True, "YES": True, "yes": True, "1": True, "false": False, "False": False}
WORDS |= {"no": False, "NO": False, "0": False}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune")
    add_config_arguments(parser)
    return parser


def _boolean_method_arguments() -> list[tuple[str, str]]:
    """(method, argument) for every boolean method argument in the registry."""
    out = []
    for name, owners in argument_owners().items():
        args_cls = get_method(owners[0]).args
        if typing.get_type_hints(args_cls)[name] is bool:
            out.extend((owner, name) for owner in owners)
    return out


def test_the_registry_has_boolean_method_arguments():
    assert ("wanda-sp", "bias_compensation") in _boolean_method_arguments()


@pytest.mark.parametrize(("method", "name"), _boolean_method_arguments())
@pytest.mark.parametrize(("word", "value"), WORDS.items())
def test_boolean_method_arguments_parse_their_value(method: str, name: str, word: str, value: bool):
    option = "--" + name.replace("_", "-")
    config = config_from_args(_parser().parse_args(["--method", method, option, word]))
    assert config.method_args[name] is value


@pytest.mark.parametrize(("method", "name"), _boolean_method_arguments())
@pytest.mark.parametrize("word", ["maybe", "", "2", "on-ish"])
def test_a_word_that_is_not_a_boolean_is_a_usage_error(method: str, name: str, word: str, capsys):
    option = "--" + name.replace("_", "-")
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["--method", method, option, word])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: invalid boolean value {word!r}" in err
    assert "true, yes, 1, false, no, 0" in err


def test_config_booleans_stay_switches():
    names = [f.name for f in fields(GBLMConfig) if typing.get_type_hints(GBLMConfig)[f.name] is bool]
    assert "blockwise_gradients" in names
    for name in names:
        option = "--" + name.replace("_", "-")
        default = next(f.default for f in fields(GBLMConfig) if f.name == name)
        assert getattr(_parser().parse_args([]), name) is default
        flag = option if not default else "--no-" + option[2:]
        assert getattr(_parser().parse_args([flag]), name) is (not default), name
        with pytest.raises(SystemExit) as exit_info:  # a value after a switch is refused, never taken as True
            _parser().parse_args([option, "false"])
        assert exit_info.value.code == 2


def test_recovery_booleans_stay_switches():
    from optimum_gblm.commands.recover import add_recovery_arguments, recovery_config_from_args
    from optimum_gblm.recovery import RecoveryConfig

    parser = argparse.ArgumentParser(prog="recover")
    add_recovery_arguments(parser)
    names = [f.name for f in fields(RecoveryConfig) if typing.get_type_hints(RecoveryConfig)[f.name] is bool]
    assert {"bf16", "resume"} <= set(names)
    for name in names:
        option = "--" + name.replace("_", "-")
        assert getattr(recovery_config_from_args(parser.parse_args([])), name) is False
        extra = ["--output-dir", "runs"] if name == "resume" else []  # resume reads the Trainer's checkpoints there
        assert getattr(recovery_config_from_args(parser.parse_args([option, *extra])), name) is True
        with pytest.raises(SystemExit):
            parser.parse_args([option, "false"])
