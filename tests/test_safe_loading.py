"""Safe loading: what the project writes is safetensors, JSON or text; it never unpickles (a malicious .bin does not
run), never runs a model's custom code unless asked; tokens reach no log, message or file; names from repo ids,
manifests and shard indexes cannot lead a write or a read out of their folder."""

from __future__ import annotations

import ast
import functools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from optimum_gblm import GBLMConfig, GBLMPruner, HubPublishError, push_folder, verify_checkpoint
from tests.helpers.hub_server import LocalHubServer, patch_hub_in_process
from tests.helpers.tiny_models import save_tiny_llama, write_text

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_SafeLoading_Secret_9731"  # distinctive: a leak is found by a plain substring search
PICKLE_OR_ZIP = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # torch.save / pickle


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("safe-loading")
    return save_tiny_llama(root / "tiny-llama"), write_text(root / "text.txt")


def _config(text: Path, **overrides) -> GBLMConfig:
    settings = dict(method="gblm", num_samples=2, seqlen=16, calibration=str(text), device="cpu")
    return GBLMConfig(**{**settings, **overrides})


def check_file_format(path: Path) -> str:
    """The format of a file the project wrote; fails on anything that is not safetensors, JSON, text or PNG."""
    data = path.read_bytes()
    assert not data.startswith(PICKLE_OR_ZIP), f"{path} looks like a pickle / torch.save file"
    suffix = path.suffix
    if suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    elif suffix == ".json":
        json.loads(data.decode("utf-8"))
    elif suffix in (".md", ".txt", ".jinja"):
        data.decode("utf-8")
    elif suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), path
    else:
        raise AssertionError(f"{path}: unexpected file type written by the project")
    return suffix


def test_everything_the_project_writes_is_safetensors_json_or_text(
    inputs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from optimum_gblm import publish_zoo

    model_dir, text = inputs
    pruner = GBLMPruner.from_pretrained(str(model_dir), _config(text))
    pruner.collect_gradients(cache_path=tmp_path / "out" / "grads.safetensors", checkpoint_every=1, progress=False)
    pruner.prune(progress=False)
    pruner.save_pretrained(tmp_path / "out" / "checkpoint")
    pruner.config.save_pretrained(tmp_path / "out" / "config-only")
    manifest = {
        "organization": "test-org",
        "defaults": {"num_samples": 2, "seqlen": 16, "calibration": str(text), "device": "cpu"},
        "entries": [{"model": str(model_dir), "method": "magnitude", "sparsity": 0.5}],
    }
    with LocalHubServer(tmp_path / "hub-store", token=TOKEN) as hub:
        patch_hub_in_process(monkeypatch, hub.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
        result = publish_zoo(
            manifest, token=TOKEN, endpoint=hub.endpoint, work_dir=tmp_path / "out" / "zoo", evaluate=False
        )
    assert result.ok, result.summary()
    formats = {}
    for path in sorted((tmp_path / "out").rglob("*")):
        if path.is_file():
            formats.setdefault(check_file_format(path), []).append(path.name)
    assert {"model.safetensors", "grads.safetensors"} <= set(formats[".safetensors"])
    assert {"gblm_config.json", "config.json", "MODEL_ZOO.md", "README.md"} <= {*formats[".json"], *formats[".md"]}


SOURCE_DIRS = ("optimum_gblm", "optimum")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(tree: ast.AST) -> list[str]:
    """Imports of pickle-like modules, torch.load without weights_only=True, yaml.load without a safe loader,
    numpy loads that allow pickles, eval / exec, and a hard-coded trust_remote_code=True."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: import {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if name == "load" and owner == "torch" and not _is_true(_keyword(node, "weights_only")):
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        if name == "load" and owner == "yaml":
            loader = _keyword(node, "Loader")
            loader_name = getattr(loader, "id", getattr(loader, "attr", ""))
            if "Safe" not in loader_name and loader_name != "_LineLoader":
                found.append(f"line {node.lineno}: yaml.load with {loader_name or 'the default loader'}")
        if name == "load" and owner in ("np", "numpy") and _is_true(_keyword(node, "allow_pickle")):
            found.append(f"line {node.lineno}: numpy load with allow_pickle=True")
        if name in ("eval", "exec") and isinstance(func, ast.Name):
            found.append(f"line {node.lineno}: {name}()")
        if _is_true(_keyword(node, "trust_remote_code")):
            found.append(f"line {node.lineno}: trust_remote_code=True hard-coded")
    return found


def test_the_library_never_unpickles_nor_runs_code_it_did_not_ship():
    problems = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            problems += [f"{path.relative_to(ROOT)} {p}" for p in unsafe_calls(tree)]
    assert problems == []
    # The manifest loader that the scan allows by name is a SafeLoader.
    import yaml

    from optimum_gblm.zoo.manifest import _LineLoader

    assert issubclass(_LineLoader, yaml.SafeLoader)


def test_the_scan_finds_what_it_forbids():
    bad = (
        "import pickle\nfrom dill import loads\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
        "yaml.load(t)\nyaml.load(t, Loader=yaml.Loader)\nnp.load(f, allow_pickle=True)\neval(s)\n"
        "AutoModel.from_pretrained(x, trust_remote_code=True)\n"
    )
    assert len(unsafe_calls(ast.parse(bad))) == 9
    good = "torch.load(f, weights_only=True)\nyaml.safe_load(t)\nyaml.load(t, Loader=yaml.SafeLoader)\nnp.load(f)\n"
    assert unsafe_calls(ast.parse(good)) == []


class _Payload:
    """A pickle that creates a file when unpickled: the shape of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickled_checkpoint_is_never_executed(tmp_path: Path):
    folder = save_tiny_llama(tmp_path / "bin-model")
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    torch.save({**state, "payload": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match="Weights only load failed"):  # torch.load(weights_only=True) refuses it
        GBLMPruner.from_pretrained(str(folder), GBLMConfig(method="magnitude", device="cpu"))
    assert not marker.exists()
    torch.load(folder / "pytorch_model.bin", weights_only=False)  # the payload is real: a plain unpickle runs it
    assert marker.exists()


def _remote_code_model(folder: Path, marker: Path) -> Path:
    folder.mkdir()
    auto_map = {"AutoConfig": "custom_code.CustomConfig", "AutoModelForCausalLM": "custom_code.CustomModel"}
    config = {"model_type": "custom", "auto_map": auto_map, "architectures": ["CustomModel"]}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom_code.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()  # runs when the code is imported\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n\n\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'custom'\n\n\n"
        "class CustomModel(PreTrainedModel):\n    config_class = CustomConfig\n"
    )
    return folder


def test_custom_model_code_runs_only_with_trust_remote_code(tmp_path: Path):
    from optimum_gblm import publish_zoo

    marker = tmp_path / "custom-code-ran"
    folder = _remote_code_model(tmp_path / "custom", marker)
    with pytest.raises(ValueError, match="trust_remote_code"):
        GBLMPruner.from_pretrained(str(folder), GBLMConfig(method="magnitude", device="cpu"))
    manifest = {"organization": "o", "entries": [{"model": str(folder), "method": "magnitude"}]}
    publish_zoo(manifest, dry_run=True)  # the zoo's structure check reads configs too
    assert not marker.exists()
    # The same folder with trust_remote_code=True does run it (a subprocess, so its module cache stays in tmp_path).
    code = (
        "import sys\nfrom optimum_gblm import GBLMConfig, GBLMPruner\n"
        "try:\n    GBLMPruner.from_pretrained(sys.argv[1], GBLMConfig(method='magnitude', trust_remote_code=True))\n"
        "except Exception as err:\n    print(type(err).__name__)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and marker.exists(), proc.stderr[-2000:]


def test_a_hub_token_reaches_no_log_message_or_file(
    inputs: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture,
):
    import huggingface_hub._commit_api as commit_api

    caplog.set_level(logging.DEBUG)
    model_dir, text = inputs
    messages = []
    with LocalHubServer(tmp_path / "hub-store", token=TOKEN) as hub:
        patch_hub_in_process(monkeypatch, hub.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        pruner = GBLMPruner.from_pretrained(str(model_dir), _config(text))
        pruner.prune(progress=False)
        pruner.evaluate(label="pruned", seqlen=16, max_windows=2, source=str(text), progress=False)
        folder = tmp_path / "checkpoint"
        pruner.push_to_hub("test-user/token-check", token=TOKEN, endpoint=hub.endpoint, save_directory=folder)
        pruner.push_to_hub("test-user/token-env", endpoint=hub.endpoint)  # the token from HF_TOKEN
        hub.fail_next_commits(100)
        (folder / "extra.txt").write_text("changed")
        # One quick retry instead of the client's five with backoff (~20 s).
        fast = functools.partial(commit_api.http_backoff, max_retries=1, base_wait_time=0.01, max_wait_time=0.01)
        monkeypatch.setattr(commit_api, "http_backoff", fast)
        for repo, token in (
            ("test-user/token-check", TOKEN),
            ("other-org/forbidden", TOKEN),
            ("test-user/x", TOKEN + "x"),
        ):
            with pytest.raises(Exception) as err:
                push_folder(folder, repo, token=token, endpoint=hub.endpoint)
            messages.append(f"{type(err.value).__name__}: {err.value} {err.value.__cause__!r}")
    assert any(isinstance(m, str) and m.startswith(HubPublishError.__name__) for m in messages)
    out, errors = capfd.readouterr()
    assert caplog.records
    for where, content in {
        "logs": caplog.text,
        "errors": "\n".join(messages),
        "stdout": out,
        "stderr": errors,
    }.items():
        assert TOKEN not in content, where
    for path in tmp_path.rglob("*"):  # checkpoint, card, side-car, caches, and what the server stored
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


# -- names that could lead out of a folder ------------------------------------------------------------------------
TRAVERSALS = ["../escape", "a/../../b", "/abs/x", "..", "x/..", "./x", "a/b/c", "test-user/..", "~/x", "a\\..\\b"]


@pytest.mark.parametrize("repo_id", TRAVERSALS)
def test_repo_ids_that_are_paths_are_refused_before_any_request(tmp_path: Path, repo_id: str):
    with LocalHubServer(tmp_path / "hub-store", token=TOKEN) as hub:
        with pytest.raises(ValueError, match="invalid Hub repo id"):
            push_folder(tmp_path, repo_id, token=TOKEN, endpoint=hub.endpoint)
        assert hub.requests == []


def test_zoo_entries_cannot_write_outside_the_work_folder(inputs: tuple[Path, Path], tmp_path: Path):
    from optimum_gblm import publish_zoo

    model_dir, _ = inputs
    entries = [{"model": str(model_dir), "method": "magnitude", "repo": repo} for repo in TRAVERSALS]
    before = set(tmp_path.rglob("*"))
    result = publish_zoo({"organization": "test-org", "entries": entries}, dry_run=True, work_dir=tmp_path / "work")
    assert [e.status for e in result.entries] == ["invalid"] * len(TRAVERSALS)
    assert all("invalid Hub repo id" in e.error for e in result.entries)
    with pytest.raises(ValueError, match="organization"):
        publish_zoo({"organization": "../org", "entries": entries[:1]}, dry_run=True)
    written = set(tmp_path.rglob("*")) - before
    assert written and all(p.is_relative_to(tmp_path / "work") for p in written)


def test_a_shard_index_cannot_point_out_of_its_folder(inputs: tuple[Path, Path], tmp_path: Path):
    model_dir, text = inputs
    pruner = GBLMPruner.from_pretrained(str(model_dir), GBLMConfig(method="magnitude", device="cpu"))
    pruner.prune(progress=False)
    folder = pruner.save_pretrained(tmp_path / "ckpt")
    assert verify_checkpoint(folder).ok
    outside = tmp_path / "outside.safetensors"
    (folder / "model.safetensors").rename(outside)
    with safe_open(str(outside), framework="pt") as f:
        weight_map = dict.fromkeys(f.keys(), "../outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(ValueError, match="not a file inside"):
        verify_checkpoint(folder)
