"""Errors that point the right way, and the smaller things a new user meets first.

CLI checks run `optimum-cli gblm` in this process (the same `main` the executable calls) so that a test can make
model loading fail loudly: an error that must come "before anything is loaded" then proves it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

from optimum_gblm import GBLMConfig, GBLMPruner, collect_gradients
from tests.helpers.tiny_models import save_tiny_llama, tiny_tokenizer, write_text

TINY_RUN = ("--num-samples", "4", "--seqlen", "16", "--no-progress")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("first-hour")
    return {"model": save_tiny_llama(root / "tiny-llama"), "text": write_text(root / "text.txt"), "root": root}


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the error under test must come first."""
    import optimum_gblm.loading as loading_module

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(loading_module, "load_model", refuse)


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str | Path) -> tuple[int, str]:
    """`optimum-cli gblm ARGS` in this process: (exit code, last stderr line)."""
    from optimum.commands.optimum_cli import main

    monkeypatch.setattr(sys, "argv", ["optimum-cli", "gblm", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


# -- item 9: errors that point the wrong way ----------------------------------------------------------------------
@pytest.mark.parametrize("source", ["nofile.txt", "data/train.jsonl", "./corpus", "sub/dir/file", "x.parquet"])
def test_missing_local_calibration_is_named_before_loading(assets, no_loading, source: str):
    config = GBLMConfig(calibration=source)  # a side-car's config naming another machine's file still loads
    with pytest.raises(FileNotFoundError) as err:
        GBLMPruner.from_pretrained(assets["model"], config)
    message = str(err.value)
    assert repr(source) in message and "does not exist" in message
    assert all(word in message for word in ("offline-corpus", "c4", "wikitext2", "text file", "datasets name"))


def test_missing_calibration_file_is_not_looked_up_on_the_hub(tiny_llama):
    """A model instance skips from_pretrained: building the calibration names the file instead of a Hub error."""
    pruner = GBLMPruner(tiny_llama, GBLMConfig(calibration="nofile.txt", num_samples=2, seqlen=8), tokenizer=object())
    with pytest.raises(FileNotFoundError, match="'nofile.txt' looks like a local file"):
        pruner.prune(progress=False)


def test_hub_names_are_not_mistaken_for_paths():
    from optimum_gblm.utils import check_calibration_source

    for source in ("allenai/c4", "wikitext", "Salesforce/wikitext", "offline-corpus", "c4", "Qwen/Qwen2.5-data"):
        check_calibration_source(source)  # no error: these may be datasets names


@pytest.mark.parametrize("command", ["prune", "gradients"])
def test_cli_missing_calibration_is_a_usage_error(assets, monkeypatch, capsys, no_loading, command: str, tmp_path):
    output = ("--output", tmp_path / ("out" if command == "prune" else "g.safetensors"))
    code, last = run_cli(monkeypatch, capsys, command, "--model", assets["model"], "--calibration", "nofile.txt",
                         *TINY_RUN, *output)  # fmt: skip
    assert code == 2 and last.startswith(f"optimum-cli gblm {command}: error: --calibration 'nofile.txt'")
    assert "does not exist" in last and "offline-corpus" in last and "ConnectionError" not in last
    assert not (tmp_path / "out").exists()


def test_a_model_file_is_refused_with_a_clear_message(assets, monkeypatch, capsys, tmp_path):
    config_file = assets["model"] / "config.json"
    with pytest.raises(ValueError, match="is a file: a model is a folder") as err:
        GBLMPruner.from_pretrained(config_file, GBLMConfig(method="magnitude"))
    assert str(assets["model"]) in str(err.value)  # the folder to pass instead
    code, last = run_cli(monkeypatch, capsys, "prune", "--model", config_file, "--output", tmp_path / "out", *TINY_RUN)
    assert code == 2 and "is a file: a model is a folder" in last and "Unpickling" not in last
    assert "a Hub id" in last and "timm name" in last


def test_a_short_calibration_text_warns_with_the_numbers(caplog, tmp_path):
    from optimum_gblm.data.text import build_token_calibration

    tokenizer = tiny_tokenizer()  # word-level, no special tokens: 80 words are 80 tokens
    text = tmp_path / "short.txt"
    text.write_text(" ".join(("the model prunes weights of every linear layer while gradients " * 8).split()[:80]))
    caplog.set_level(logging.WARNING, logger="optimum_gblm")
    calibration = build_token_calibration(tokenizer, str(text), num_samples=16, seqlen=64)
    assert len(calibration) == 16  # small calibration sets are legitimate: the windows are still formed
    warned = [r.getMessage() for r in caplog.records if "short" in r.getMessage()]
    assert warned and "80 tokens available" in warned[0] and "16 windows x 64 tokens need 1024" in warned[0]
    assert "overlap" in warned[0]
    caplog.clear()
    build_token_calibration(tokenizer, str(text), num_samples=1, seqlen=64)  # 64 of 80 tokens: no overlap needed
    assert not [r for r in caplog.records if "short" in r.getMessage()]
    with pytest.raises(ValueError, match="too short: 80 tokens, but one window needs more than seqlen=80"):
        build_token_calibration(tokenizer, str(text), num_samples=1, seqlen=80)


def test_a_missing_device_is_refused_before_loading(assets, monkeypatch, capsys, no_loading, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    with pytest.raises(ValueError, match="CUDA is not available"):
        GBLMPruner.from_pretrained(assets["model"], GBLMConfig(device="cuda"))
    code, last = run_cli(monkeypatch, capsys, "prune", "--model", assets["model"], "--device", "cuda",
                         "--calibration", assets["text"], *TINY_RUN, "--output", tmp_path / "out")  # fmt: skip
    assert code == 2 and "--device 'cuda' was requested but CUDA is not available" in last
    assert not (tmp_path / "out").exists()


def test_an_absent_cuda_index_is_refused(monkeypatch):
    from optimum_gblm.utils import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="cuda:3.*1 CUDA device"):
        resolve_device("cuda:3")


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_timm_vit import config, images, labels, tiny_vit

    pruner = GBLMPruner.from_pretrained(tiny_vit(), config("magnitude"))
    pruner.prune(calibration=(images(), labels()), progress=False)
    return pruner.save_pretrained(tmp_path_factory.mktemp("vit") / "pruned")


def test_vit_evaluate_speaks_cli_options(vit_folder, monkeypatch, capsys, no_loading):
    code, last = run_cli(monkeypatch, capsys, "evaluate", vit_folder, "--no-progress")
    assert code == 2 and "image model" in last and "--eval-source IMAGE_FOLDER" in last
    assert "images=" not in last and "source=" not in last


def test_vit_prune_refuses_the_text_calibration_default(vit_folder, monkeypatch, capsys, no_loading, tmp_path):
    code, last = run_cli(monkeypatch, capsys, "prune", "--model", vit_folder, "--output", tmp_path / "out")
    assert code == 2 and "--calibration is offline-corpus, a text source" in last and "IMAGE_FOLDER" in last
    assert "prune(calibration=" not in last


def test_eval_source_help_is_honest_for_image_models(capsys):
    import argparse

    from optimum_gblm.commands.options import add_eval_arguments

    parser = argparse.ArgumentParser(prog="x")
    add_eval_arguments(parser, "evaluation", "the calibration --seqlen", flag=True)
    help_text = " ".join(parser.format_help().split())
    assert "Image models (timm ViTs): a labelled image folder" in help_text
    assert "with no default: required" in help_text and "LLMs: held-out text" in help_text


# -- item 10: the smaller things ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned_at_60(assets) -> GBLMPruner:
    config = GBLMConfig(method="wanda", sparsity=0.6, calibration=str(assets["text"]), num_samples=4, seqlen=16)
    pruner = GBLMPruner.from_pretrained(assets["model"], config)
    pruner.prune(progress=False)
    return pruner


def test_the_summary_says_why_the_achieved_sparsity_is_below_the_target(pruned_at_60, tmp_path):
    from optimum_gblm.commands.prune import summary

    text = summary(pruned_at_60, tmp_path, 1.0, {"prune": 1.0}, None, None)
    assert "achieved sparsity: 0.5938" in text  # 38/64 = 76/128 = 0.59375
    assert "below the target 0.6 because each row prunes" in text
    assert "floor(64 x 0.6) = 38 of 64" in text and "floor(128 x 0.6) = 76 of 128" in text


def test_no_rounding_note_when_counts_are_exact(assets):
    from optimum_gblm.pruning_map import PruningMap

    pruning_map = PruningMap(pattern="unstructured")
    pruning_map.record("a", torch.tensor([[0.0, 1.0], [0.0, 2.0]]), 0.5)
    assert pruning_map.rounding_note("row") == "" and "rounding" not in str(pruning_map)
    assert PruningMap(pattern="2:4").rounding_note("row") == ""


def test_printing_the_pruning_map_is_a_short_summary(pruned_at_60):
    pruning_map = pruned_at_60.pruning_map
    text = str(pruning_map)
    lines = text.splitlines()
    assert len(lines) <= 8 and len(text) < 1200  # 14 targets here, 210 on SmolLM2: never one line per target
    assert lines[0].startswith("PruningMap: 14 targets, unstructured, overall sparsity 0.5938 (target 0.6000)")
    assert "per target: target sparsity 0.6000 to 0.6000, achieved 0.5938 to 0.5938" in text
    assert "rounding: each row prunes" in text and "stage: prune wanda (sparsity=0.6" in text
    assert "masks kept for 14" in text
    assert repr(pruning_map).startswith("PruningMap(pattern='unstructured', targets=14, overall_sparsity=0.5938")
    assert "model.layers" not in repr(pruning_map) and "model.layers" not in text


def _bar_rates(capsys) -> str:
    err = capsys.readouterr().err
    return err.rsplit("gradients", 1)[-1]


def test_trainer_and_dataloader_progress_counts_tokens(tiny_llama, calib_ids, capsys, tmp_path):
    """tokens_s was 0 on the dataloader and Trainer paths: only the pruner's own path counted tokens."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    config = GBLMConfig(num_samples=4, seqlen=16)
    collect_gradients(tiny_llama, config, dataloader=[calib_ids], progress=True)
    rates = _bar_rates(capsys)
    assert "tokens_s=" in rates and "tokens_s=0," not in rates and "tokens_s=0]" not in rates
    dataset = Dataset.from_dict({"input_ids": calib_ids.tolist(), "labels": calib_ids.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True)
    collect_gradients(config=config, trainer=Trainer(model=tiny_llama, args=args, train_dataset=dataset))
    rates = _bar_rates(capsys)
    assert "tokens_s=" in rates and "tokens_s=0," not in rates and "tokens_s=0]" not in rates


def test_sample_token_count():
    from optimum_gblm.gradients.loop import sample_token_count

    ids = torch.ones(1, 12, dtype=torch.long)
    assert sample_token_count(ids) == 12 and sample_token_count((ids, ids)) == 12
    mask = torch.tensor([[1] * 9 + [0] * 3])
    assert sample_token_count({"input_ids": ids, "attention_mask": mask, "labels": ids}) == 9
    assert sample_token_count(torch.randn(1, 3, 8, 8)) == 0  # images: no tokens, the bar shows samples/s


def test_gradients_subcommand_offers_only_what_the_gradient_pass_reads():
    import argparse

    from optimum_gblm.commands.gradients import GradientsCommand
    from optimum_gblm.commands.options import config_from_args

    parser = argparse.ArgumentParser()
    GradientsCommand.add_arguments(parser)
    options = {o for action in parser._actions for o in action.option_strings}
    for irrelevant in ("--sparsity", "--pattern", "--blocksize", "--percdamp", "--group", "--batch-size"):
        assert irrelevant not in options, irrelevant
    for needed in ("--method", "--allocation", "--calibration", "--num-samples", "--seqlen", "--seed"):
        assert needed in options, needed
    assert {"--gradient-norm", "--gradient-scale", "--gradient-dtype", "--targets", "--device"} <= options
    args = parser.parse_args(["--output", "g.safetensors", "--method", "gblm-obs", "--seed", "3"])
    config = config_from_args(args)
    assert config.method == "gblm-obs" and config.seed == 3 and config.sparsity == GBLMConfig().sparsity
    with pytest.raises(SystemExit):
        parser.parse_args(["--output", "g.safetensors", "--sparsity", "0.6"])


def test_the_old_report_attribute_points_to_the_pruning_map(pruned_at_60):
    with pytest.raises(AttributeError, match="now GBLMPruner.pruning_map"):
        print(pruned_at_60.report)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        pruned_at_60.nothing  # noqa: B018


# -- issue 35, finding 10: the CLI speaks in CLI terms, the library in Python terms ------------------------------
def test_recovery_refusals_name_cli_options(assets, monkeypatch, capsys, no_loading, tmp_path):
    out = tmp_path / "out"
    code, line = run_cli(monkeypatch, capsys, "recover", assets["model"], "--output", out, "--resume")
    assert code == 2 and "--resume needs the --output-dir" in line and "=True" not in line
    code, line = run_cli(monkeypatch, capsys, "recover", assets["model"], "--output", out, "--save-steps", "5")
    assert code == 2 and "--save-steps needs an --output-dir" in line
    runs = tmp_path / "runs"
    (runs / "checkpoint-5").mkdir(parents=True)
    code, line = run_cli(monkeypatch, capsys, "recover", assets["model"], "--output", out, "--output-dir", runs)
    assert code == 2 and "pass --resume, or use an empty --output-dir" in line
    from optimum_gblm.recovery import RecoveryConfig

    with pytest.raises(ValueError, match="resume=True needs the output_dir"):
        RecoveryConfig(resume=True)


@pytest.mark.parametrize(
    ("options", "cli"),
    [
        (("--two-pass-gradients",), "--blockwise-gradients and --two-pass-gradients"),
        (("--gradient-dtype", "float16"), "--blockwise-gradients cannot use --gradient-dtype 'float16'"),
    ],
)
def test_blockwise_refusals_name_cli_options(assets, monkeypatch, capsys, no_loading, tmp_path, options, cli):
    args = ("prune", "--model", assets["model"], "--method", "gblm-obs", "--output", tmp_path / "o", *TINY_RUN)
    code, line = run_cli(monkeypatch, capsys, *args, "--blockwise-gradients", *options)
    assert code == 2 and cli in line and "=True" not in line


def test_a_late_option_error_is_shown_in_cli_terms(monkeypatch, capsys):
    from optimum_gblm.commands import prune as prune_command
    from optimum_gblm.fields import OptionError

    def late(*args, **kwargs):
        raise OptionError("blockwise_gradients", "{flag} cannot use a gradient cache: pass it without {name}")

    monkeypatch.setattr(prune_command.PruneCommand, "execute", late)
    code, line = run_cli(monkeypatch, capsys, "prune", "--model", "m", "--output", "o")
    assert (
        code == 1
        and "--blockwise-gradients cannot use a gradient cache: pass it without --blockwise-gradients" in line
    )


def test_a_memory_plan_refusal_speaks_to_its_reader():
    from optimum_gblm.adapters import get_adapter
    from optimum_gblm.fields import CLI
    from optimum_gblm.planning import MemoryPlanError, check_plan, plan, reference_skeleton

    skeleton = reference_skeleton("llama-2-7b")
    config = GBLMConfig(method="wanda", dtype="bfloat16", num_samples=16)
    memory_plan = plan(skeleton, get_adapter(skeleton), config, device_type="cpu")
    with pytest.raises(MemoryPlanError) as err:
        check_plan(memory_plan, config, (None, 8 * 2**30))
    assert "check_memory=False" in str(err.value) and "placement / intermediates" in str(err.value)
    cli = err.value.render(CLI)
    assert "check_memory" not in cli and "--placement / --intermediates" in cli and "no option to skip" in cli
