"""Publishing to a Hub: the real huggingface_hub client over real HTTP against the local Hub look-alike."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, snapshot_download
from transformers import AutoModelForCausalLM

from optimum_gblm import GBLMPruner, HubPublishError, push_folder, render_model_card, verify_checkpoint
from optimum_gblm.publishing.cards import PLOT_NAME
from tests.helpers.hub_server import LocalHubServer, patch_hub_in_process
from tests.test_cards import tiny_pruner

TOKEN = "hf_SeCrEt_push_token_4711"  # distinctive, so a leak anywhere is found by a plain substring search


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalHubServer:
    with LocalHubServer(tmp_path / "hub-store", token=TOKEN) as server:
        patch_hub_in_process(monkeypatch, server.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
        yield server


@pytest.fixture(scope="module")
def pruner(tmp_path_factory: pytest.TempPathFactory) -> GBLMPruner:
    """One pruned tiny model for the module: pushing only reads it."""
    return tiny_pruner(tmp_path_factory.mktemp("base"))


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client retries a failed commit 5 times with backoff (~20 s): 1 quick retry keeps the test fast."""
    import huggingface_hub._commit_api as commit_api

    fast = functools.partial(commit_api.http_backoff, max_retries=1, base_wait_time=0.01, max_wait_time=0.01)
    monkeypatch.setattr(commit_api, "http_backoff", fast)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _digest(folder: Path) -> str:
    return hashlib.sha256(json.dumps({k: v.hex() for k, v in _files(folder).items()}).encode()).hexdigest()


def test_push_then_load_through_the_hub(hub: LocalHubServer, pruner: GBLMPruner, tmp_path: Path):
    folder = pruner.save_pretrained(tmp_path / "ckpt")
    repo_id = "test-org/tiny-wanda"
    commit = push_folder(folder, repo_id, token=TOKEN, endpoint=hub.endpoint)
    assert commit.oid == hub.commits(repo_id)[-1]["oid"] and commit.startswith(hub.endpoint)

    snapshot = Path(snapshot_download(repo_id, endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "dl"))
    downloaded = _files(snapshot)
    downloaded.pop(".gitattributes")
    # The saved folder, its side-car and card naming the repo it went to (saved without one): our card, not a default
    sidecar = {**json.loads((folder / "gblm_config.json").read_text()), "repo_id": repo_id}
    expected_card = render_model_card(sidecar)
    assert downloaded == {
        **_files(folder),
        "gblm_config.json": (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode(),
        "README.md": expected_card.encode(),
    }
    assert verify_checkpoint(snapshot).ok

    reloaded = AutoModelForCausalLM.from_pretrained(snapshot)  # plain transformers, no optimum_gblm code
    expected = pruner.model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    q_proj = reloaded.model.layers[0].self_attn.q_proj.weight
    assert (q_proj == 0).float().mean().item() == pytest.approx(0.5)

    card = ModelCard.load(repo_id)  # through the patched default endpoint
    assert card.content == expected_card and f'from_pretrained("{repo_id}")' in card.content
    assert card.data.license == "mit" and "pruned" in card.data.tags and "wanda" in card.data.tags
    assert {r.metric_name for r in card.data.eval_results} == {"Perplexity (dense)", "Perplexity (pruned)"}
    card.validate()  # the server's /api/validate-yaml
    assert f"![Per-layer sparsity]({PLOT_NAME})" in card.text and PLOT_NAME in downloaded
    info = HfApi(endpoint=hub.endpoint, token=TOKEN).model_info(repo_id)
    assert info.pipeline_tag == "text-generation" and info.card_data.library_name == "transformers"


def test_push_to_hub_twice_is_idempotent(hub: LocalHubServer, pruner: GBLMPruner):
    repo_id = "test-user/tiny-idempotent"
    first = pruner.push_to_hub(repo_id, token=TOKEN, endpoint=hub.endpoint, private=True)
    second = pruner.push_to_hub(repo_id, token=TOKEN, endpoint=hub.endpoint)
    commits = hub.commits(repo_id)
    assert len(commits) == 2 and first.oid == second.oid == commits[-1]["oid"]  # no second commit
    card = hub.file_content(repo_id, "README.md").decode()
    assert f'from_pretrained("{repo_id}")' in card  # the card names the repo it was pushed to
    assert json.loads(hub.file_content(repo_id, "gblm_config.json"))["repo_id"] == repo_id
    assert HfApi(endpoint=hub.endpoint, token=TOKEN).model_info(repo_id).private is True


@pytest.mark.parametrize("bad", ["test-user/bad--name", "a/b/c", "x" * 97, "test-user/trailing."])
def test_invalid_repo_id_fails_before_any_work(
    hub: LocalHubServer, pruner: GBLMPruner, bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def no_save(*args, **kwargs):
        raise AssertionError("saved before validating the repo id")

    monkeypatch.setattr("optimum_gblm.publishing.checkpoint.save_checkpoint", no_save)
    with pytest.raises(ValueError, match="invalid Hub repo id"):
        pruner.push_to_hub(bad, token=TOKEN, endpoint=hub.endpoint, save_directory=tmp_path / "never")
    with pytest.raises(ValueError, match="invalid Hub repo id"):
        push_folder(tmp_path / "does-not-exist", bad, token=TOKEN, endpoint=hub.endpoint)
    assert hub.requests == [] and not (tmp_path / "never").exists()


def test_push_folder_refuses_a_folder_that_is_not_a_checkpoint(hub: LocalHubServer, tmp_path: Path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not an optimum-gblm checkpoint"):
        push_folder(tmp_path / "plain", "test-user/plain", token=TOKEN, endpoint=hub.endpoint)
    assert hub.requests == []


def test_server_failure_mid_upload_then_retry(
    hub: LocalHubServer, pruner: GBLMPruner, tmp_path: Path, fast_retries: None
):
    folder = pruner.save_pretrained(tmp_path / "ckpt")
    before = _digest(folder)
    repo_id = "test-org/flaky"
    hub.fail_next_commits(100)
    with pytest.raises(HubPublishError) as err:
        push_folder(folder, repo_id, token=TOKEN, endpoint=hub.endpoint)
    message = str(err.value)
    assert "500" in message and "is intact" in message and "retrying is safe" in message and str(folder) in message
    assert _digest(folder) == before  # the local folder is untouched
    assert hub.file_content(repo_id, ".gitattributes") and len(hub.commits(repo_id)) == 1  # nothing half-written

    hub.fail_next_commits(0)
    push_folder(folder, repo_id, token=TOKEN, endpoint=hub.endpoint)
    assert hub.file_content(repo_id, "model.safetensors") == (folder / "model.safetensors").read_bytes()

    hub.fail_next_commits(100)  # push_to_hub through a temporary folder says how to keep a copy
    with pytest.raises(HubPublishError, match="save_directory="):
        pruner.push_to_hub("test-org/flaky-tmp", token=TOKEN, endpoint=hub.endpoint)


def test_target_directory_checks(
    hub: LocalHubServer, pruner: GBLMPruner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        pruner.push_to_hub("test-user/x", token=TOKEN, endpoint=hub.endpoint, save_directory=full)
    assert (full / "keep.txt").read_text() == "user data" and sorted(p.name for p in full.iterdir()) == ["keep.txt"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError):
        pruner.push_to_hub("test-user/x", token=TOKEN, endpoint=hub.endpoint, save_directory=blocker / "out")
    # Permission bits do not stop root: simulate a read-only parent the way the check sees it.
    monkeypatch.setattr("optimum_gblm.publishing.checkpoint.os.access", lambda *args: False)
    with pytest.raises(PermissionError, match="not writable"):
        pruner.push_to_hub("test-user/x", token=TOKEN, endpoint=hub.endpoint, save_directory=tmp_path / "ro" / "out")
    assert hub.requests == []  # refused before any network call
    # overwrite=True replaces a previous checkpoint folder.
    monkeypatch.undo()
    patch_hub_in_process(monkeypatch, hub.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
    pruner.push_to_hub("test-user/x", token=TOKEN, endpoint=hub.endpoint, save_directory=full, overwrite=True)
    assert not (full / "keep.txt").exists() and (full / "README.md").is_file()


def test_token_never_leaks(
    hub: LocalHubServer, pruner: GBLMPruner, tmp_path: Path, caplog: pytest.LogCaptureFixture, fast_retries: None
):
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "ckpt"
    pruner.push_to_hub("test-user/secret-check", token=TOKEN, endpoint=hub.endpoint, save_directory=folder)
    hub.fail_next_commits(100)
    (folder / "extra.txt").write_text("changed")
    with pytest.raises(HubPublishError) as err:
        push_folder(folder, "test-user/secret-check", token=TOKEN, endpoint=hub.endpoint)
    with pytest.raises(Exception) as wrong:  # a rejected token must not be echoed either
        push_folder(folder, "test-user/other", token=TOKEN + "x", endpoint=hub.endpoint)
    assert TOKEN not in str(err.value) and TOKEN not in str(wrong.value)
    assert caplog.records and TOKEN not in caplog.text
    for path in tmp_path.rglob("*"):  # checkpoint, card, side-car, caches, and what the server stored
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_to_hub_checks_the_token_and_the_namespace_before_saving(
    hub: LocalHubServer, pruner: GBLMPruner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def no_save(*args, **kwargs):
        raise AssertionError("saved before checking that the token may push there")

    monkeypatch.setattr("optimum_gblm.publishing.checkpoint.save_checkpoint", no_save)
    never = tmp_path / "never"
    with pytest.raises(HubPublishError, match=r"HTTP 401 on GET .*/api/whoami-v2.*Hint: .*hf auth login"):
        pruner.push_to_hub("test-user/x", token="hf_wrong", endpoint=hub.endpoint, save_directory=never)
    with pytest.raises(HubPublishError, match=r"'test-user'.* cannot write to 'someone-else'.*test-user, test-org"):
        pruner.push_to_hub("someone-else/x", token=TOKEN, endpoint=hub.endpoint, save_directory=never)
    assert [path for _, path, _ in hub.requests] == ["/api/whoami-v2"] * 2  # no repo created
    assert not never.exists()
    read_only = LocalHubServer(tmp_path / "read-only", token=TOKEN, token_role="read")
    with read_only, pytest.raises(HubPublishError, match="read-only"):
        pruner.push_to_hub("test-user/x", token=TOKEN, endpoint=read_only.endpoint, save_directory=never)


def test_a_rejected_token_shows_the_http_status_not_a_uri_error(
    hub: LocalHubServer, pruner: GBLMPruner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from huggingface_hub import constants

    folder = pruner.save_pretrained(tmp_path / "ckpt")
    push_folder(folder, "test-user/exists", token=TOKEN, endpoint=hub.endpoint)
    # endpoint= given, HF_ENDPOINT not set: the client's fallback for an existing repo cannot parse the local URL
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    with pytest.raises(HubPublishError) as err:
        push_folder(folder, "test-user/exists", token="hf_wrong", endpoint=hub.endpoint)
    message = str(err.value)
    assert "HTTP 401 on POST" in message and "Invalid credentials" in message and "hf auth login" in message
    assert "HF URI" not in message and "hf_wrong" not in message
