"""`optimum-cli gblm`: the real `optimum-cli` executable in a subprocess, on a tiny local LLaMA, offline."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml

from optimum_gblm import GBLMConfig, list_methods, verify_checkpoint
from optimum_gblm.methods import all_groups, argument_owners
from tests.helpers.tiny_models import save_tiny_llama, write_text

BIN = Path(sys.executable).parent
OPTIMUM_CLI = BIN / "optimum-cli"
TOKEN = "hf_test"
SUBCOMMANDS = ("prune", "gradients", "evaluate", "push", "zoo", "plan", "recover")

pytestmark = pytest.mark.skipif(not OPTIMUM_CLI.exists(), reason="optimum-cli is not installed in this environment")


def offline_env(**extra: str) -> dict[str, str]:
    drop = ("PYTHONPATH", "PYTHONHOME", "HF_ENDPOINT", "HF_TOKEN")  # the source tree and a real Hub stay out of reach
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only add contention on shared cores
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra})
    return env


def cli(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(OPTIMUM_CLI), "gblm", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or offline_env(),
        cwd=cwd,
        timeout=300,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-assets")
    return {"model": save_tiny_llama(root / "tiny-llama"), "text": write_text(root / "text.txt"), "root": root}


def tiny_options(assets: dict[str, Path], *extra: str | Path, model: bool = True) -> list[str | Path]:
    """A fast run: 4 calibration windows of 16 tokens from the text file, on the CPU, no progress bars."""
    calibration = ["--calibration", assets["text"], "--num-samples", "4", "--seqlen", "16"]
    return [*(["--model", assets["model"]] if model else []), *calibration, "--device", "cpu", "--no-progress", *extra]


EVAL = ("--eval-seqlen", "16", "--eval-windows", "3")


@pytest.fixture(scope="module")
def pruned(assets: dict[str, Path]) -> tuple[Path, subprocess.CompletedProcess]:
    out = assets["root"] / "pruned"
    result = ok(cli("prune", *tiny_options(assets), "--output", out, "--eval", *EVAL, "--eval-source", assets["text"]))
    return out, result


# -- help -------------------------------------------------------------------------------------------------------------
def test_registration_module_is_light():
    code = (
        "import sys, optimum.commands.register.register_gblm as r; "
        "print(r.REGISTER_COMMANDS[0].COMMAND.name, 'torch' in sys.modules, 'optimum_gblm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=offline_env(), check=True)
    assert out.stdout.split() == ["gblm", "False", "False"]
    listing = subprocess.run([str(OPTIMUM_CLI), "--help"], capture_output=True, text=True, env=offline_env())
    assert listing.returncode == 0 and "gblm" in listing.stdout


def test_gblm_help_lists_subcommands_and_examples():
    text = ok(cli("--help")).stdout
    assert "usage: optimum-cli gblm" in text and "examples:" in text and "GBLM-Pruner" in text
    for name in SUBCOMMANDS:
        assert name in text


@functools.cache
def help_text(name: str) -> str:
    """`--help` of a subcommand (one subprocess per subcommand for the whole module)."""
    return ok(cli(name, "--help")).stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name: str):
    text = help_text(name)
    assert f"usage: optimum-cli gblm {name}" in text
    assert "examples:" in text and "--log-level" in text and "--debug" in text


def test_prune_options_come_from_the_config():
    text = help_text("prune")
    flat = " ".join(text.split())
    for f in fields(GBLMConfig):
        if f.name not in ("library_version", "method_args"):
            assert f"--{f.name.replace('_', '-')}" in text, f.name
    for name, owners in argument_owners().items():  # every method argument, in a group named by its methods
        assert f"--{name.replace('_', '-')}" in text, name
        assert f"\n{' / '.join(owners)} arguments:\n" in text, owners
    assert "{" + ",".join(list_methods()) + "}" in flat  # method choices from the registry
    assert "{" + ",".join(all_groups()) + "}" in flat and "(default: 2048)" in flat and "(default: gblm)" in flat
    for group in ("method:", "calibration:", "gradients:", "model / loading:", "hub:"):
        assert f"\n{group}\n" in text, group
    for name in list_methods():  # the epilog describes every method
        assert re.search(rf"^  {re.escape(name)} +\S", text, re.MULTILINE), name


@pytest.mark.parametrize("method", list_methods())
def test_every_method_parses_with_its_own_arguments(method: str):
    """In process: `--method M` and M's own options give M's config; another method's option is a usage error."""
    import argparse

    from optimum_gblm.commands.errors import UsageError
    from optimum_gblm.commands.options import add_config_arguments, config_from_args
    from optimum_gblm.methods import get_method

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    declared = get_method(method).make_args()
    steps = {"int": 1, int: 1, "float": 0.5, float: 0.5}  # a valid value other than the default
    changed = {f.name: getattr(declared, f.name) + steps[f.type] for f in fields(declared) if f.type in steps}
    options = [str(x) for name, value in changed.items() for x in (f"--{name.replace('_', '-')}", value)]
    config = config_from_args(parser.parse_args(["--method", method, *options]))
    assert config.method == method and config.method_args == {**asdict(declared), **changed}
    foreign = [name for name, owners in argument_owners().items() if method not in owners]
    for name in foreign:
        with pytest.raises(UsageError, match=f"{name} is an option of method"):
            config_from_args(parser.parse_args(["--method", method, f"--{name.replace('_', '-')}", "1"]))


def test_eval_windows_option_defaults_to_the_library_and_accepts_all():
    import argparse

    from optimum_gblm.commands.options import add_eval_arguments, max_windows_kwargs

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser, "evaluation", "the calibration --seqlen", flag=True)
    assert max_windows_kwargs(parser.parse_args([])) == {}  # GBLMPruner.evaluate's own default (40) applies
    assert max_windows_kwargs(parser.parse_args(["--eval-windows", "all"])) == {"max_windows": None}
    assert max_windows_kwargs(parser.parse_args(["--eval-windows", "7"])) == {"max_windows": 7}
    assert "--eval-windows N|all" in help_text("prune")
    assert "or all of them (default: 40)" in " ".join(help_text("prune").split())


# -- prune / gradients / evaluate ---------------------------------------------------------------------------------
def test_prune_writes_a_checkpoint_plain_transformers_reloads(pruned):
    import torch
    from transformers import AutoModelForCausalLM

    out, result = pruned
    assert "achieved sparsity: 0.5000 over 14 targets" in result.stdout
    assert re.search(
        r"perplexity: dense [\d.]+ -> pruned [\d.]+ \(source=.*, seqlen=16, max_windows=3, windows=3\)", result.stdout
    )
    assert str(out) in result.stdout and "Traceback" not in result.stderr
    assert verify_checkpoint(out).ok
    sidecar = json.loads((out / "gblm_config.json").read_text())
    assert sidecar["config"]["method"] == "gblm" and sidecar["config"]["seqlen"] == 16
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5)


@pytest.fixture(scope="module")
def gradients(assets: dict[str, Path]) -> tuple[Path, subprocess.CompletedProcess]:
    """A gradient cache written by `gblm gradients` with `tiny_options` (tests copy it before changing it)."""
    cache = assets["root"] / "grads.safetensors"
    return cache, ok(cli("gradients", *tiny_options(assets), "--output", cache, "--checkpoint-every", "2"))


def test_gradients_cache_is_reused_by_prune(assets, gradients, tmp_path: Path):
    cache, result = gradients
    assert cache.is_file() and "4 samples" in result.stdout
    stamp = cache.stat().st_mtime_ns
    result = ok(cli("prune", *tiny_options(assets), "--gradients", cache, "--output", tmp_path / "out"))
    assert "Reusing complete gradient cache" in result.stderr
    assert cache.stat().st_mtime_ns == stamp  # read, not collected again
    assert verify_checkpoint(tmp_path / "out").ok


def _last_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_gradients_output_for_other_settings_needs_overwrite(assets, gradients, tmp_path: Path):
    """An existing cache made with other options is refused before anything is loaded (the model here is an empty
    folder), by `gradients --output` unless --overwrite, and by `prune --gradients`; a partial cache made with the
    same options is resumed."""
    from optimum_gblm.gradients.cache import read_metadata

    cache, empty = tmp_path / "grads.safetensors", tmp_path / "not-a-model"
    empty.mkdir()
    shutil.copy(gradients[0], cache)
    data = cache.read_bytes()
    other = tiny_options(assets, "--seed", "1", model=False)
    refused = cli("gradients", "--model", empty, *other, "--output", cache)
    assert refused.returncode == 2, refused.stderr
    last = _last_line(refused)
    assert (
        str(cache) in last and "calibration_seed: cache has '0', this run needs '1'" in last and "--overwrite" in last
    )
    refused = cli("prune", "--model", empty, *other, "--gradients", cache, "--output", tmp_path / "out")
    assert refused.returncode == 2 and "calibration_seed" in _last_line(refused)
    assert "gblm gradients --output" in _last_line(refused) and not (tmp_path / "out").exists()
    assert cache.read_bytes() == data
    ok(cli("gradients", "--model", assets["model"], *other, "--output", cache, "--overwrite"))
    meta = read_metadata(cache)
    assert meta["calibration_seed"] == "1" and meta["complete"] == "true" and cache.read_bytes() != data
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(cache), framework="pt") as f:  # as an interrupted run leaves it: 2 of 4 samples
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(cache), metadata={**meta, "complete": "false", "nsamples": "2"})
    resumed = ok(cli("gradients", "--model", assets["model"], *other, "--output", cache))
    assert "Resuming gradient collection" in resumed.stderr and read_metadata(cache)["complete"] == "true"


def test_a_cache_for_another_model_is_a_usage_error(assets, gradients, tmp_path: Path):
    other = save_tiny_llama(tmp_path / "other-llama", seed=1)
    stamp = gradients[0].stat().st_mtime_ns
    result = cli(
        "prune",
        "--model",
        other,
        *tiny_options(assets, model=False),
        "--gradients",
        gradients[0],
        "--output",
        tmp_path / "out",
    )
    assert result.returncode == 2, result.stderr
    last = _last_line(result)
    assert "model_fingerprint" in last and str(gradients[0]) in last and "another --gradients path" in last
    assert gradients[0].stat().st_mtime_ns == stamp and not (tmp_path / "out").exists()


def test_unusable_gradient_caches_are_usage_errors_before_loading(assets, tmp_path: Path):
    empty, out = tmp_path / "not-a-model", tmp_path / "out"
    empty.mkdir()
    options = tiny_options(assets, model=False)
    truncated = tmp_path / "grads.safetensors"
    truncated.write_bytes((1000).to_bytes(8, "little") + b'{"__metadata__": {"format": ')  # a cut-off header
    for command in (
        ("prune", "--gradients", truncated, "--output", out),
        ("gradients", "--output", truncated),
    ):
        result = cli(command[0], "--model", empty, *options, *command[1:])
        assert result.returncode == 2, result.stderr
        last = _last_line(result)
        assert str(truncated) in last and "not a complete optimum-gblm gradient cache" in last and "delete it" in last
    assert "--overwrite" in last
    assert truncated.read_bytes()[8:] == b'{"__metadata__": {"format": ' and not out.exists()
    unused = cli(
        "prune", "--model", empty, *options, "--method", "wanda", "--gradients", "g.safetensors", "--output", out
    )
    assert unused.returncode == 2
    last = _last_line(unused)
    assert "--gradients is not used by method 'wanda'" in last and "gblm" in last and "--allocation gradient" in last


def test_gradient_cache_help_says_what_happens():
    flat = " ".join(help_text("prune").split())
    assert "written by this run if it does not exist" in flat and "is refused" in flat
    assert "otherwise written by this run" not in flat
    assert "--overwrite" in help_text("gradients")


def test_evaluate_prints_the_metric_of_a_pruned_checkpoint(assets, pruned):
    out, _ = pruned
    result = ok(cli("evaluate", out, "--eval-source", assets["text"], "--eval-windows", "3", "--no-progress"))
    match = re.search(r"^perplexity: ([\d.]+) ", result.stdout, re.MULTILINE)
    assert match and "pruned: gblm unstructured" in result.stdout
    # the checkpoint's seqlen (16) is the default window: same protocol as `prune --eval`, same value
    recorded = json.loads((out / "gblm_config.json").read_text())["results"]["pruned_perplexity"]
    assert float(match.group(1)) == pytest.approx(recorded, rel=1e-3)


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"format": "optimum-gblm/2", "config": {"method": "gblm", "seqlen": 16', "is not valid JSON"),
        ('{"format": "optimum-gblm/2", "config": {"method": "gblm", "seqlen": "16"}}', "config.pattern is None"),
    ],
)
def test_evaluate_refuses_a_corrupt_sidecar(pruned, tmp_path: Path, content: str, problem: str):
    out, _ = pruned
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "gblm_config.json").write_text(content)
    result = cli("evaluate", broken, *EVAL, "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "dense" not in result.stdout, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("optimum-cli gblm evaluate: error:")
    assert str(broken / "gblm_config.json") in last and problem in last


def test_evaluate_a_dense_model(assets):
    result = ok(cli("evaluate", assets["model"], *EVAL, "--eval-source", assets["text"], "--no-progress"))
    value = float(re.search(r"^perplexity: ([\d.]+) \(.*dense", result.stdout, re.MULTILINE).group(1))
    assert math.isfinite(value) and value > 1


# -- bad input: rejected before any heavy work, nothing written -----------------------------------------------
@pytest.mark.parametrize(
    "option, allowed",
    [
        (("--method", "foo"), ("invalid choice", *list_methods())),
        (("--pattern", "2-4"), ("pattern", "unstructured", "N:M")),
        (("--sparsity", "1.5"), ("sparsity", "between 0 and 1")),
        (("--model", "/no/such/model"), ("does not exist",)),
        (("--eval", "--eval-source", "missing.txt"), ("offline-corpus", "wikitext2")),
        (("--base-model", "./tiny-llama"), ("--base-model './tiny-llama' is not a Hub model id", "org/name")),
    ],
)
def test_bad_input_is_a_usage_error(assets, tmp_path: Path, option, allowed):
    out = tmp_path / "out"
    options = tiny_options(assets, *option, model="--model" not in option)
    result = cli("prune", *options, "--output", out, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("optimum-cli gblm prune: error:")
    for word in allowed:
        assert word in last, (word, last)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_non_empty_output_needs_overwrite(assets, tmp_path: Path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = cli("prune", *tiny_options(assets), "--output", tmp_path / "out")
    assert result.returncode == 2 and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_runtime_failure_is_one_line_unless_debug(assets, tmp_path: Path):
    args = ("prune", "--model", "no-such-model-anywhere", "--output", tmp_path / "out", "--no-progress")
    result = cli(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "no-such-model-anywhere" in last and "--debug" in last
    assert not (tmp_path / "out").exists()
    debug = cli(*args, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


# -- Hub: push and zoo against the local Hub server -----------------------------------------------------------------
@pytest.fixture
def hub(tmp_path: Path):
    """The local Hub server, and the environment a subprocess needs to reach it (HF_HUB_OFFLINE=0, HF_ENDPOINT)."""
    server_module = pytest.importorskip("tests.helpers.hub_server")
    with server_module.LocalHubServer(tmp_path / "hub-store", token=TOKEN) as server:
        yield server, {**offline_env(), **server_module.hub_env(server.endpoint, TOKEN, home=tmp_path / "hf-home")}


def test_push_uploads_the_folder(pruned, hub):
    (out, _), (hub, env) = pruned, hub
    repo = "test-user/tiny-gblm"
    card_before = (out / "README.md").read_text()
    result = ok(cli("push", out, repo, "--endpoint", hub.endpoint, "--token", TOKEN, "--no-progress", env=env))
    assert repo in result.stdout
    # Saved without a repo id: the side-car and the card are uploaded naming the repo, the local folder is left alone.
    local = json.loads((out / "gblm_config.json").read_text())
    assert json.loads(hub.file_content(repo, "gblm_config.json")) == {**local, "repo_id": repo}
    card = hub.file_content(repo, "README.md").decode()
    assert f'from_pretrained("{repo}")' in card and "path/to/this/checkpoint" not in card
    assert (out / "README.md").read_text() == card_before and "repo_id" not in local
    assert hub.file_content(repo, "model.safetensors") == (out / "model.safetensors").read_bytes()


def test_push_refuses_a_dense_folder_unless_allow_dense(assets, hub, tmp_path: Path):
    from optimum_gblm import GBLMPruner

    hub, env = hub
    pruner = GBLMPruner.from_pretrained(str(assets["model"]), GBLMConfig(method="magnitude", device="cpu"))
    dense = pruner.save_pretrained(tmp_path / "dense", allow_dense=True)
    result = cli("push", dense, "test-user/dense", "--endpoint", hub.endpoint, "--token", TOKEN, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("optimum-cli gblm push: error:") and "no pruning map" in last and "--allow-dense" in last
    assert hub.requests == []
    args = ("push", dense, "test-user/dense", "--allow-dense", "--endpoint", hub.endpoint, "--token", TOKEN)
    ok(cli(*args, env=env))
    assert "(dense, not pruned)" in hub.file_content("test-user/dense", "README.md").decode()


def test_push_refuses_offline_mode_and_bad_folders(pruned, tmp_path: Path):
    out, _ = pruned
    result = cli("push", out, "test-user/x")
    assert result.returncode == 2 and "HF_HUB_OFFLINE" in result.stderr and "Traceback" not in result.stderr
    result = cli("push", tmp_path, "test-user/x", env=offline_env(HF_HUB_OFFLINE="0"))
    assert result.returncode == 2 and "gblm_config.json" in result.stderr


def test_prune_push_to_hub(assets, hub, tmp_path: Path):
    hub, env = hub
    repo = "test-user/tiny-magnitude"
    options = tiny_options(assets, "--method", "magnitude", "--output", tmp_path / "out")
    options += ["--base-model", "test-org/tiny-base"]  # --model is a local folder: the Hub id comes from the user
    result = ok(cli("prune", *options, "--push-to-hub", repo, "--endpoint", hub.endpoint, env=env))
    assert "pushed to: " in result.stdout
    sidecar = json.loads(hub.file_content(repo, "gblm_config.json"))
    assert sidecar["config"]["method"] == "magnitude" and sidecar["base_model"] == "test-org/tiny-base"
    card = hub.file_content(repo, "README.md").decode()
    assert yaml.safe_load(card.split("---")[1])["base_model"] == "test-org/tiny-base"
    assert "https://huggingface.co/test-org/tiny-base" in card and f'from_pretrained("{repo}")' in card
    assert (tmp_path / "out" / "README.md").read_text() == card  # the local folder holds what was published


def test_prune_push_to_hub_checks_the_token_before_any_work(assets, hub, tmp_path: Path):
    hub, env = hub
    options = tiny_options(assets, "--method", "magnitude", "--output", tmp_path / "out")
    push = ("--push-to-hub", "test-user/x", "--endpoint", hub.endpoint, "--token", "hf_wrong")
    result = cli("prune", *options, *push, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Pruned" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "HTTP 401" in last and "whoami" in last and "--token" in last and "hf auth login" in last, last
    assert not (tmp_path / "out").exists() and [path for _, path, _ in hub.requests] == ["/api/whoami-v2"]


def test_zoo_publishes_a_manifest(assets, hub, tmp_path: Path):
    pytest.importorskip("optimum_gblm.zoo")
    hub, env = hub
    manifest = tmp_path / "zoo.yaml"
    text, model = str(assets["text"]), str(assets["model"])
    zoo = {
        "organization": "test-org",
        "defaults": {"calibration": text, "num_samples": 4, "seqlen": 16, "device": "cpu"},
        "evaluation": {"seqlen": 16, "max_windows": 2, "source": text},
        "entries": [{"model": model, "method": "wanda", "sparsity": 0.5, "repo": "tiny-wanda-50"}],
    }
    manifest.write_text(yaml.safe_dump(zoo, sort_keys=False))
    dry = ok(cli("zoo", manifest, "--dry-run", "--no-progress"))
    assert "planned" in dry.stdout and "test-org/tiny-wanda-50" in dry.stdout
    assert "zoo: 1 planned, 0 published, 0 skipped, 0 failed (dry run)" in dry.stdout
    work = tmp_path / "work"
    args = ("--endpoint", hub.endpoint, "--token", TOKEN, "--work-dir", work, "--no-progress")
    result = ok(cli("zoo", manifest, *args, env=env))
    assert "published" in result.stdout and (work / "MODEL_ZOO.md").is_file()
    assert "zoo: 0 planned, 1 published, 0 skipped, 0 failed" in result.stdout
    assert not re.search(r"\d+%\|", result.stderr), result.stderr  # no progress bar (pruning, evaluation)
    sidecar = json.loads(hub.file_content("test-org/tiny-wanda-50", "gblm_config.json"))
    assert sidecar["config"]["method"] == "wanda" and "pruned_perplexity" in sidecar["results"]


def test_zoo_rejects_a_bad_manifest(tmp_path: Path):
    pytest.importorskip("optimum_gblm.zoo")
    manifest = tmp_path / "zoo.yaml"
    manifest.write_text("organisation: typo\nentries: []\n")
    result = cli("zoo", manifest, "--dry-run")
    assert result.returncode == 2 and "organization" in result.stderr and "Traceback" not in result.stderr


# -- packaging: the registration shim ships in the wheel -----------------------------------------------------------
@pytest.mark.slow
def test_wheel_install_registers_the_command(tmp_path: Path):
    """Build the wheel from a copy of the sources, install it (not editable) into a fresh venv that borrows the
    project venv's dependencies through a .pth file (which does not run the editable finder), run the CLI there."""
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("optimum_gblm", "optimum"):
        shutil.copytree(root / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).is_file():
            shutil.copy(root / name, src / name)
    env = offline_env(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "--wheel-dir", tmp_path / "dist", src]
    subprocess.run(list(map(str, build)), check=True, env=env, cwd=tmp_path, capture_output=True)
    wheel = next((tmp_path / "dist").glob("optimum_gblm-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "optimum/commands/register/register_gblm.py" in names
    assert not [n for n in names if n.startswith("optimum/") and n.endswith("__init__.py")]  # PEP 420 namespace
    assert "optimum_gblm/commands/prune.py" in names and "optimum_gblm/templates/model_card.md" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    project_site = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "project_deps.pth").write_text(project_site + "\n")  # dependencies only: .pth files there do not run
    install = [*pip, "--python", python, "install", "--no-deps", "-q", wheel]
    subprocess.run(list(map(str, install)), check=True, env=env, cwd=tmp_path, capture_output=True)

    where = subprocess.run(
        [
            str(python),
            "-c",
            "import optimum_gblm, optimum.commands.register.register_gblm as r; print(optimum_gblm.__file__, r.__file__)",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(site) for path in where.stdout.split()), where.stdout  # the wheel, not the checkout
    result = subprocess.run(
        [str(python), "-m", "optimum.commands.optimum_cli", "gblm", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "prune" in result.stdout and "usage: " in result.stdout


@pytest.mark.parametrize("flag", ["--two-pass-gradients", "--blockwise-gradients"])
def test_prune_refuses_a_split_gradient_pass_with_a_cache_before_loading(tmp_path, flag):
    """Two passes and the block-wise pass keep their sums where no cache holds them: the pair is refused before the
    model is read (the model path is not even a model), and neither output nor cache is written."""
    empty, out = tmp_path / "not-a-model", tmp_path / "out"
    empty.mkdir()
    options = tiny_options({"text": write_text(tmp_path / "text.txt")}, model=False)
    result = cli(
        "prune", "--model", empty, *options, "--method", "gblm-obs", flag,
        "--gradients", tmp_path / "g.safetensors", "--output", out,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{flag} cannot use a --gradients cache" in result.stderr.strip().splitlines()[-1]
    assert not out.exists() and not (tmp_path / "g.safetensors").exists()
    assert flag in help_text("prune") and flag not in help_text("gradients")
