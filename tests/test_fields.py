"""Each setting's facts in its field metadata (optimum_gblm/fields.py): the one validator, the fingerprint's runtime
exclusions, the CLI groups, and errors that name their option for the library and the CLI alike."""

from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from optimum_gblm import GBLMConfig
from optimum_gblm.fields import (
    CLI,
    LIBRARY,
    POSITIVE_INT,
    Bounds,
    OptionError,
    OptionFileExistsError,
    check_fields,
    field_spec,
    runtime_fields,
)
from optimum_gblm.methods import list_methods
from optimum_gblm.recovery import RecoveryConfig

PACKAGE = Path(__file__).resolve().parent.parent / "optimum_gblm"

# The fingerprints of these configs, computed on the code before the field metadata existed (commit d3387ce):
# gradient caches and published checkpoints are keyed by them, so they may never change.
PINNED_FINGERPRINTS = [
    ({}, "238cffbd2ec06366"),
    (
        {
            "method": "sparsegpt",
            "pattern": "2:4",
            "method_args": {"blocksize": 64},
            "dtype": "bfloat16",
            "seed": 3,
            "num_samples": 16,
            "seqlen": 64,
        },
        "9006d799ed8906ad",
    ),
    (
        {
            "method": "gblm-obs",
            "sparsity": 0.6,
            "allocation": "gradient",
            "gamma": 0.3,
            "allocation_clip": 0.1,
            "targets": ["q_proj"],
            "ignore": ["lm_head"],
            "calibration": "wikitext2",
            "score_dtype": "float16",
            "device": "cpu",
            "batch_size": 2,
            "two_pass_gradients": True,
            "placement": "cpu",
            "intermediates": "disk",
        },
        "fca4c84a790f0ef3",
    ),
    (
        {
            "method": "flap",
            "sparsity": 0.2,
            "method_args": {"mode": "uniform"},
            "gradient_checkpointing": True,
            "pseudo_labels": True,
            "trust_remote_code": True,  # pipeline="sequential" was here: a structured method now refuses it
        },
        "61a76440b705e985",
    ),
    (
        {"method": "gblm-obs", "allocation": "gradient", "blockwise_gradients": True, "gradient_dtype": "bfloat16"},
        "b6059e4ef03eea2a",
    ),
]


@pytest.mark.parametrize(("kwargs", "fingerprint"), PINNED_FINGERPRINTS)
def test_fingerprints_are_those_of_the_code_before_the_metadata(kwargs, fingerprint):
    assert GBLMConfig(**kwargs).fingerprint() == fingerprint


# gblm-obs with its default (gradient) allocation and the l1 norm keeps two accumulations, so every alternative
# below is valid on its own, two_pass_gradients=True included.
BASE = {"method": "gblm-obs"}
OTHER_VALUE = {
    "method": "gblm",
    "sparsity": 0.6,
    "pattern": "2:4",
    "group": "block",
    "method_args": {"beta": 0.5},
    "allocation": "uniform",
    "gamma": 0.3,
    "allocation_clip": 0.1,
    "targets": ["q_proj"],
    "ignore": ["lm_head"],
    "calibration": "wikitext2",
    "calibration_text_column": "content",
    "num_samples": 16,
    "seqlen": 64,
    "seed": 1,
    "batch_size": 2,
    "pseudo_labels": True,
    "gradient_norm": "l2",
    "gradient_scale": 10.0,
    "gradient_dtype": "bfloat16",
    "gradient_checkpointing": True,
    "two_pass_gradients": True,
    "blockwise_gradients": True,
    "score_dtype": "float16",
    "dtype": "bfloat16",
    "device": "cpu",
    "pipeline": "sequential",
    "intermediates": "cpu",
    "placement": "cpu",
    "trust_remote_code": True,
    "library_version": "0.0.1",
}
RUNTIME = {
    "library_version",
    "device",
    "pipeline",
    "intermediates",
    "trust_remote_code",
    "batch_size",
    "placement",
    "two_pass_gradients",
    "blockwise_gradients",
}


def test_runtime_fields_are_left_out_of_the_fingerprint_and_every_other_field_counts():
    names = [f.name for f in fields(GBLMConfig)]
    assert set(OTHER_VALUE) == set(names), "give a new GBLMConfig field another valid value here"
    assert set(runtime_fields(GBLMConfig)) == RUNTIME
    base = GBLMConfig(**BASE)
    for name in names:
        changed = GBLMConfig(**{**BASE, name: OTHER_VALUE[name]})
        assert getattr(changed, name) != getattr(base, name), name
        if name in RUNTIME:
            assert changed.fingerprint() == base.fingerprint(), f"runtime field {name} changes the fingerprint"
        else:
            assert changed.fingerprint() != base.fingerprint(), f"{name} is left out of the fingerprint"


def test_the_fingerprint_follows_the_runtime_declaration():
    """Declaring a field runtime is what leaves it out: a subclass with one more runtime field and one more result
    field."""

    @dataclass
    class Extended(GBLMConfig):
        workers: int = field(default=1, metadata=field_spec("Worker count.", group="model / loading", runtime=True))
        extra_term: float = field(default=0.0, metadata=field_spec("A result setting.", group="method"))

    base = Extended()
    assert Extended(workers=4).fingerprint() == base.fingerprint()
    assert Extended(extra_term=1.0).fingerprint() != base.fingerprint()
    assert "workers" in runtime_fields(Extended) and "extra_term" not in runtime_fields(Extended)


@pytest.mark.parametrize("cls", [GBLMConfig, RecoveryConfig])
def test_every_field_declares_its_help(cls):
    for f in fields(cls):
        assert f.metadata.get("help", "").strip(), f.name


def test_every_config_field_declares_its_cli_group():
    for f in fields(GBLMConfig):
        assert f.metadata.get("group"), f.name
        assert isinstance(f.metadata.get("runtime"), bool) and isinstance(f.metadata.get("cli"), bool), f.name


def test_cli_groups_and_option_order_come_from_the_metadata():
    """The layout --help showed when the groups were a hand-written table in commands/options.py."""
    from optimum_gblm.commands.options import add_config_arguments

    parser = argparse.ArgumentParser()
    groups = add_config_arguments(parser, exclude=frozenset({"method_args"}))
    layout = {title: [a.dest for a in group._group_actions] for title, group in groups.items()}
    assert layout == {
        "method": ["method", "sparsity", "pattern", "group", "allocation", "gamma", "allocation_clip"]
        + ["targets", "ignore"],
        "calibration": ["calibration", "calibration_text_column", "num_samples", "seqlen", "seed", "batch_size"]
        + ["pseudo_labels"],
        "gradients": ["gradient_norm", "gradient_scale", "gradient_dtype", "gradient_checkpointing"]
        + ["two_pass_gradients", "blockwise_gradients", "score_dtype"],
        "model / loading": ["dtype", "device", "pipeline", "intermediates", "placement", "trust_remote_code"],
    }
    titles = [group.title for group in argparse.ArgumentParser()._action_groups]  # positionals, options
    with_methods = argparse.ArgumentParser()
    add_config_arguments(with_methods)
    shown = [group.title for group in with_methods._action_groups][len(titles) :]
    assert (
        shown[0] == "method"
        and shown[1].endswith("arguments")
        and shown[-3:]
        == [
            "calibration",
            "gradients",
            "model / loading",
        ]
    )
    choices = {a.dest: a.choices for a in parser._actions}
    assert choices["method"] == list_methods() and choices["placement"] == ["memory", "cpu", "disk"]


# -- the validator ------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    mode: str = field(default="a", metadata=field_spec("Mode.", choices=("a", "b")))
    kinds: list[str] = field(default_factory=lambda: ["x"], metadata=field_spec("Kinds.", choices=("x", "y")))
    steps: int = field(default=1, metadata=field_spec("Steps.", bounds=POSITIVE_INT))
    ratio: float = field(default=0.5, metadata=field_spec("Ratio.", bounds=Bounds(0, 1, high_open=True)))
    scale: float = 1.0  # no metadata: the caller's default bounds apply
    name: str | None = field(default=None, metadata=field_spec("Free text.", registry=lambda: ("p", "q")))
    flag: bool = False


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "c"}, "mode='c' is invalid: choose one of a, b"),
        ({"kinds": ["x", "z"]}, "kinds=['x', 'z'] is invalid: choose one or more of x, y"),
        ({"kinds": []}, "kinds=[] is invalid: choose one or more of x, y"),
        ({"steps": 0}, "steps=0 is invalid: it must be a positive integer"),
        ({"steps": 1.5}, "steps=1.5 is invalid: expected an integer, got float"),
        ({"steps": True}, "steps=True is invalid: expected an integer, got bool"),
        ({"ratio": 1}, "ratio=1 is invalid: it must be a number in [0, 1)"),
        ({"ratio": float("nan")}, "ratio=nan is invalid: expected a finite number, got float"),
        ({"scale": -1.0}, "scale=-1.0 is invalid: it must be a number >= 0"),
        ({"mode": 3}, "mode=3 is invalid: expected a string, got int"),
        ({"flag": "yes"}, "flag='yes' is invalid: expected true or false, got str"),
    ],
)
def test_check_fields_names_the_field_and_what_is_allowed(values, message):
    with pytest.raises(OptionError) as err:
        check_fields(Settings(**values), {"float": Bounds(low=0)})
    assert str(err.value) == message and err.value.render(CLI) == message
    assert err.value.option == next(iter(values)) and isinstance(err.value, ValueError)


def test_check_fields_accepts_valid_values_and_leaves_registries_to_their_lookup():
    settings = Settings(kinds=("y", "x"), name="not-registered", scale=-1.0)  # type: ignore[arg-type]
    check_fields(settings)  # no default bounds: scale is free
    assert settings.kinds == ["y", "x"]  # a tuple for a list of strings becomes a list


@pytest.mark.parametrize(
    ("bounds", "integer", "rule"),
    [
        (Bounds(low=1), True, "a positive integer"),
        (Bounds(low=0), True, "an integer >= 0"),
        (Bounds(low=0, low_open=True), False, "a positive number"),
        (Bounds(low=0), False, "a number >= 0"),
        (Bounds(0, 1, True, True), False, "a number strictly between 0 and 1"),
        (Bounds(0, 1), False, "a number in [0, 1]"),
        (Bounds(high=8, high_open=True), True, "an integer < 8"),
    ],
)
def test_bounds_say_their_rule(bounds, integer, rule):
    assert bounds.rule(integer) == rule


# -- errors that name their option ----------------------------------------------------------------------------------
def test_option_errors_render_for_the_library_and_the_cli():
    err = OptionError(
        "allow_dense",
        "{where} has no map: pass {flag}, or set {opt}{value!r} ({name}, an {term})",
        where="f/x.json",
        value="{x}",
    )
    assert (
        str(err)
        == err.render(LIBRARY)
        == ("f/x.json has no map: pass allow_dense=True, or set allow_dense='{x}' (allow_dense, an argument)")
    )
    assert (
        err.render(CLI)
        == "f/x.json has no map: pass --allow-dense, or set --allow-dense '{x}' (--allow-dense, an option)"
    )
    again = pickle.loads(pickle.dumps(err))  # errors cross process boundaries (zoo workers, multiprocessing)
    assert type(again) is OptionError and again.option == "allow_dense" and again.render(CLI) == err.render(CLI)
    exists = OptionFileExistsError("overwrite", "{path} is not empty: pass {flag}", path="out")
    assert isinstance(exists, FileExistsError) and str(exists) == "out is not empty: pass overwrite=True"
    with pytest.raises(TypeError, match="flag"):
        OptionError("x", "{flag}", flag="mine")


def test_library_errors_name_the_option_and_the_cli_spells_it_as_a_flag(tmp_path: Path, monkeypatch):
    import torch

    from optimum_gblm.commands import base, push
    from optimum_gblm.commands.errors import UsageError
    from optimum_gblm.publishing.checkpoint import check_output_dir
    from optimum_gblm.publishing.hub import check_checkpoint_folder
    from optimum_gblm.publishing.provenance import check_base_model
    from optimum_gblm.utils import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = [
        (
            lambda: resolve_device("cuda"),
            lambda: base.check_device("cuda"),
            "device",
            "device='cuda' was requested but CUDA is not available: use device='cpu' or 'auto'",
            "--device 'cuda' was requested but CUDA is not available: use --device 'cpu' or 'auto'",
        ),
        (
            lambda: check_base_model("./tiny"),
            lambda: base.check_base_model("./tiny"),
            "base_model",
            "base_model='./tiny' is not a Hub model id",
            "--base-model './tiny' is not a Hub model id",
        ),
    ]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    cases.append(
        (
            lambda: check_output_dir(tmp_path / "out"),
            lambda: base.check_output_folder(str(tmp_path / "out"), False),
            "overwrite",
            "choose another path or pass overwrite=True",
            "choose another path or pass --overwrite",
        )
    )
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "README.md").write_text("---\nlicense: mit\n---\n")
    (dense / "gblm_config.json").write_text(
        '{"format": "optimum-gblm/2", "config": ' + __import__("json").dumps(GBLMConfig().to_dict()) + "}"
    )
    cases.append(
        (
            lambda: check_checkpoint_folder(dense),
            lambda: push.check_folder(str(dense)),
            "allow_dense",
            "or pass allow_dense=True to publish it",
            "or pass --allow-dense to publish it",
        )
    )
    for library, cli, option, said, flagged in cases:
        with pytest.raises(OptionError if option != "overwrite" else OptionFileExistsError) as err:
            library()
        assert err.value.option == option and said in str(err.value), str(err.value)
        with pytest.raises(UsageError) as usage:
            cli()
        assert flagged in str(usage.value) and said not in str(usage.value), str(usage.value)


def test_a_foreign_method_option_is_named_as_an_option_on_the_command_line():
    from optimum_gblm.commands.errors import UsageError
    from optimum_gblm.commands.options import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    with pytest.raises(UsageError, match=r"^beta is an option of method gblm-obs, not of method='wanda'$"):
        config_from_args(parser.parse_args(["--method", "wanda", "--beta", "1"]))
    with pytest.raises(OptionError, match=r"^beta is an argument of method gblm-obs, not of method='wanda'$"):
        GBLMConfig.from_dict({"method": "wanda", "beta": 1.0}, strict=True)


def test_commands_never_rewrite_library_messages():
    for path in sorted((PACKAGE / "commands").glob("*.py")):
        assert "str(err).replace(" not in path.read_text(encoding="utf-8"), path.name
