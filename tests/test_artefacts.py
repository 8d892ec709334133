"""Saved and published artefacts tell the truth: an unpruned model is never labelled pruned, a local base model is
never presented as a Hub id, a pushed card names its repo, and a corrupt side-car is named and refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from optimum_gblm import GBLMConfig, GBLMPruner, push_folder, render_model_card, verify_checkpoint
from optimum_gblm.publishing.cards import PLACEHOLDER_REPO
from optimum_gblm.publishing.sidecar import read_sidecar
from tests.helpers.hub_server import LocalHubServer, patch_hub_in_process
from tests.test_cards import write_text, write_tiny_model

TOKEN = "hf_artefacts_token"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalHubServer:
    with LocalHubServer(tmp_path / "hub-store", token=TOKEN) as server:
        patch_hub_in_process(monkeypatch, server.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
        yield server


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local tiny base model folder named `tiny-llama`, next to a calibration text."""
    root = tmp_path_factory.mktemp("artefacts")
    write_text(root / "text.txt")
    return write_tiny_model(root / "tiny-llama")


def magnitude(model: str | Path, **kwargs) -> GBLMPruner:
    """Magnitude needs no data: loading is the only cost."""
    return GBLMPruner.from_pretrained(str(model), GBLMConfig(method="magnitude", device="cpu"), **kwargs)


def front_matter(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---")[1])


def title(folder: Path) -> str:
    return next(line for line in (folder / "README.md").read_text().splitlines() if line.startswith("# "))


def digest(folder: Path) -> str:
    files = {p.relative_to(folder).as_posix(): p.read_bytes().hex() for p in sorted(folder.rglob("*")) if p.is_file()}
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


# -- 1. an unpruned model is never saved or published as pruned -------------------------------------------------------
def test_saving_an_unpruned_model_is_refused_before_writing(base: Path, tmp_path: Path, monkeypatch):
    pruner = magnitude(base)
    with pytest.raises(RuntimeError, match=r"not pruned.*prune\(\).*allow_dense=True"):
        pruner.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())

    def no_network(*args, **kwargs):
        raise AssertionError("push_to_hub reached the Hub with an unpruned model")

    monkeypatch.setattr("optimum_gblm.publishing.hub.push_saved", no_network)
    with pytest.raises(RuntimeError, match="allow_dense=True"):
        pruner.push_to_hub("test-user/dense", save_directory=tmp_path / "push")
    assert not list(tmp_path.iterdir())


def test_allow_dense_labels_the_checkpoint_dense(base: Path, tmp_path: Path):
    folder = magnitude(base).save_pretrained(tmp_path / "dense", allow_dense=True)
    sidecar = json.loads((folder / "gblm_config.json").read_text())
    assert sidecar["pruning_map"] is None
    card = (folder / "README.md").read_text()
    assert card == render_model_card(sidecar)
    assert title(folder) == "# tiny-llama (dense, not pruned)"
    assert "pruned with" not in card and "pruned to" not in card and "not pruned" in card
    tags = front_matter(folder)["tags"]
    assert "pruned" not in tags and "sparse" not in tags and "dense" in tags
    assert not any(tag.endswith("-sparsity") for tag in tags)
    assert "pruner.prune()" not in card  # the reproduce snippet does not claim a prune either
    with pytest.raises(ValueError, match="no pruning map"):
        verify_checkpoint(folder)


def test_push_folder_refuses_a_dense_folder_unless_allowed(base: Path, tmp_path: Path, hub: LocalHubServer):
    folder = magnitude(base).save_pretrained(tmp_path / "dense", allow_dense=True)
    with pytest.raises(ValueError, match=r"gblm_config.json has no pruning map.*allow_dense=True"):
        push_folder(folder, "test-user/dense", token=TOKEN, endpoint=hub.endpoint)
    assert hub.requests == []
    push_folder(folder, "test-user/dense", token=TOKEN, endpoint=hub.endpoint, allow_dense=True)
    assert "dense, not pruned" in hub.file_content("test-user/dense", "README.md").decode()
    assert "pruned model" not in hub.commits("test-user/dense")[-1]["title"]


# -- 2. the base model: a Hub id where there is one, a plain name otherwise ----------------------------------------------
def test_a_local_base_model_is_not_presented_as_a_hub_id(base: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(base.parent)  # `tiny-llama` also reads as a Hub id (name only): the folder must win
    pruner = magnitude("tiny-llama")
    pruner.prune(progress=False)
    folder = pruner.save_pretrained(tmp_path / "out")
    card = (folder / "README.md").read_text()
    assert "base_model" not in front_matter(folder) and "huggingface.co/tiny-llama" not in card
    assert "This checkpoint is `tiny-llama` pruned" in card
    assert json.loads((folder / "gblm_config.json").read_text())["base_model"] is None


def test_base_model_names_the_hub_id_of_a_local_model(base: Path, tmp_path: Path):
    pruner = magnitude(base, base_model="test-org/TinyLlama-base")
    pruner.prune(progress=False)
    folder = pruner.save_pretrained(tmp_path / "out")
    sidecar = json.loads((folder / "gblm_config.json").read_text())
    assert sidecar["base_model"] == "test-org/TinyLlama-base"
    assert front_matter(folder)["base_model"] == "test-org/TinyLlama-base"
    card = (folder / "README.md").read_text()
    assert "This checkpoint is [test-org/TinyLlama-base](https://huggingface.co/test-org/TinyLlama-base)" in card
    assert title(folder).startswith("# TinyLlama-base pruned with magnitude")
    assert sidecar["license"] == "mit"  # still read from the local folder's card
    # save_pretrained(base_model=) names it for one save
    other = pruner.save_pretrained(tmp_path / "other", base_model="test-org/other")
    assert front_matter(other)["base_model"] == "test-org/other"


@pytest.mark.parametrize("bad", ["./tiny-llama", "/abs/path", "org/name/extra", "bad--name"])
def test_base_model_must_be_a_hub_id(base: Path, tmp_path: Path, bad: str, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("loaded before checking base_model")

    monkeypatch.setattr("optimum_gblm.loading.load_model", no_load)
    with pytest.raises(ValueError, match=rf"base_model={bad!r} is not a Hub model id"):
        GBLMPruner.from_pretrained(str(base), GBLMConfig(method="magnitude"), base_model=bad)
    monkeypatch.undo()
    pruner = magnitude(base)
    pruner.prune(progress=False)
    with pytest.raises(ValueError, match="is not a Hub model id"):
        pruner.save_pretrained(tmp_path / "out", base_model=bad)
    assert not (tmp_path / "out").exists()


def test_a_vit_instance_is_named_by_its_architecture(tmp_path: Path):
    from tests.test_timm_vit import tiny_vit

    pruner = GBLMPruner.from_pretrained(tiny_vit(), GBLMConfig(method="magnitude", device="cpu"))
    pruner.prune(progress=False)
    folder = pruner.save_pretrained(tmp_path / "vit")
    card = (folder / "README.md").read_text()
    assert "This checkpoint is `vit_tiny_patch16_224` pruned" in card and "`model`" not in card
    assert "base_model" not in front_matter(folder)  # an architecture is no evidence of the base weights
    named = pruner.save_pretrained(tmp_path / "named", base_model="timm/vit_tiny_patch16_224.augreg_in21k")
    assert front_matter(named)["base_model"] == "timm/vit_tiny_patch16_224.augreg_in21k"


def test_a_folder_pushed_later_names_its_repo_and_stays_untouched(base: Path, tmp_path: Path, hub: LocalHubServer):
    pruner = magnitude(base)
    pruner.prune(progress=False)
    folder = pruner.save_pretrained(tmp_path / "out")
    assert PLACEHOLDER_REPO in (folder / "README.md").read_text()
    before = digest(folder)
    repo_id = "test-user/tiny-later"
    push_folder(folder, repo_id, token=TOKEN, endpoint=hub.endpoint)
    assert digest(folder) == before and not list(tmp_path.glob(".*"))  # the user's folder is not modified
    card = hub.file_content(repo_id, "README.md").decode()
    sidecar = json.loads(hub.file_content(repo_id, "gblm_config.json"))
    assert f'from_pretrained("{repo_id}")' in card and PLACEHOLDER_REPO not in card
    assert sidecar["repo_id"] == repo_id and card == render_model_card(sidecar)  # the card still re-renders
    for name in ("model.safetensors", "config.json", "sparsity.png"):
        assert hub.file_content(repo_id, name) == (folder / name).read_bytes(), name
    # A card the user edited is uploaded as written.
    (folder / "README.md").write_text((folder / "README.md").read_text() + "\nMy own note.\n")
    push_folder(folder, "test-user/tiny-edited", token=TOKEN, endpoint=hub.endpoint)
    assert hub.file_content("test-user/tiny-edited", "README.md") == (folder / "README.md").read_bytes()


# -- 3. a corrupt side-car is named, never silently ignored ----------------------------------------------------------
@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"format": "optimum-gblm/2", "config": {"method": "wanda"', "not valid JSON"),
        ("[1, 2]", "a JSON object"),
        ('{"format": "optimum-gblm/2", "pruning_map": null}', "config"),
        ('{"format": "optimum-gblm/9", "config": {}}', "format"),
    ],
)
def test_read_sidecar_names_the_file_and_the_problem(tmp_path: Path, content: str, problem: str):
    (tmp_path / "gblm_config.json").write_text(content)
    with pytest.raises(ValueError) as err:
        read_sidecar(tmp_path)
    assert str(tmp_path / "gblm_config.json") in str(err.value) and problem in str(err.value)
    if problem in ("not valid JSON", "a JSON object"):  # the config reader of the card's snippet names it too
        with pytest.raises(ValueError, match="gblm_config.json"):
            GBLMConfig.from_pretrained(tmp_path)


def test_a_config_only_file_reads_as_an_unpruned_sidecar(tmp_path: Path):
    GBLMConfig(method="wanda", seqlen=64).save_pretrained(tmp_path)  # no format, no pruning map: not corrupt
    sidecar = read_sidecar(tmp_path)
    assert sidecar["config"]["seqlen"] == 64 and sidecar.get("pruning_map") is None


def test_zoo_entries_name_the_base_model(base: Path, tmp_path: Path, hub: LocalHubServer):
    from optimum_gblm import publish_zoo

    text = f"""\
organization: test-org
defaults:
  device: cpu
entries:
  - model: {base}
    base_model: test-org/TinyLlama-base
    method: magnitude
  - model: {base}
    base_model: ./tiny-llama
    method: wanda
"""
    (tmp_path / "zoo.yaml").write_text(text)
    result = publish_zoo(tmp_path / "zoo.yaml", token=TOKEN, endpoint=hub.endpoint, evaluate=False)
    published, invalid = result.entries
    assert published.status == "published" and published.repo_id == "test-org/TinyLlama-base-magnitude-unstructured-50"
    card = hub.file_content(published.repo_id, "README.md").decode()
    assert yaml.safe_load(card.split("---")[1])["base_model"] == "test-org/TinyLlama-base"
    assert invalid.status == "invalid" and "base_model='./tiny-llama' is not a Hub model id" in invalid.error
    assert invalid.line == next(i for i, line in enumerate(text.splitlines(), 1) if "base_model: ./" in line)
