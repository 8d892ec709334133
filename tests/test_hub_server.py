"""The local Hub look-alike must work with the real `huggingface_hub` client over real HTTP, with no internet."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.helpers.hub_server import LocalHubServer, hub_env, patch_hub_in_process

TOKEN = "hf_test"
README = """---
license: apache-2.0
library_name: transformers
base_model: HuggingFaceTB/SmolLM2-135M
tags:
- pruning
- gblm
---

# Pruned model

Some text.
"""
CONFIG = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 64, "n_positions": 64}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalHubServer:
    """A running server whose URL is also this process's default endpoint (needed by ModelCard.load, transformers)."""
    with LocalHubServer(tmp_path / "hub-store", token=TOKEN) as server:
        patch_hub_in_process(monkeypatch, server.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
        yield server


@pytest.fixture
def api(hub: LocalHubServer) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=TOKEN)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "nested").mkdir(parents=True)
    (folder / "README.md").write_text(README)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    (folder / "model.safetensors").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (folder / "nested" / "gblm_config.json").write_text('{"sparsity": 0.5}')
    return folder


def _files(folder: str | Path) -> dict[str, bytes]:
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_offline_flag_is_what_blocks_requests(hub: LocalHubServer, api: HfApi, monkeypatch: pytest.MonkeyPatch):
    # The project's suite runs with HF_HUB_OFFLINE=1: the client checks the constant at request time.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled):
        api.whoami()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    me = api.whoami()
    assert me["name"] == "test-user" and me["orgs"][0]["name"] == "test-org"
    assert HfApi(endpoint=hub.endpoint).whoami()["name"] == "test-user"  # token taken from HF_TOKEN
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.endpoint, token="hf_wrong").whoami()
    assert err.value.response.status_code == 401


def test_create_repo_exist_ok(hub: LocalHubServer, api: HfApi):
    url = api.create_repo("test-user/tiny")
    assert url.repo_id == "test-user/tiny" and url.startswith(hub.endpoint)
    assert api.create_repo("test-user/tiny", exist_ok=True).repo_id == "test-user/tiny"
    assert api.create_repo("test-user/tiny", exist_ok=True).repo_id == "test-user/tiny"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("test-user/tiny")
    assert err.value.response.status_code == 409
    assert api.create_repo("bare-name").repo_id == "test-user/bare-name"  # namespace defaults to the user
    assert api.create_repo("test-org/shared", repo_type="dataset").repo_type == "dataset"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("someone-else/repo")
    assert err.value.response.status_code == 403
    assert api.repo_exists("test-user/tiny") and not api.repo_exists("test-user/nope")
    assert api.list_repo_files("test-user/tiny") == [".gitattributes"]  # like the Hub's initial commit
    assert len(hub.commits("test-user/tiny")) == 1


def test_upload_folder_then_snapshot_download_is_byte_identical(
    hub: LocalHubServer, api: HfApi, model_dir: Path, tmp_path: Path
):
    repo_id = api.create_repo("test-user/pruned").repo_id
    info = api.upload_folder(repo_id=repo_id, folder_path=model_dir, commit_message="Add pruned model")
    assert info.oid == api.model_info(repo_id).sha and info.repo_url.repo_id == repo_id

    path = snapshot_download(repo_id, endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "dl")
    downloaded = _files(path)
    assert downloaded.pop(".gitattributes")
    assert downloaded == _files(model_dir)
    assert hub.file_content(repo_id, "model.safetensors") == (model_dir / "model.safetensors").read_bytes()

    model = api.model_info(repo_id)
    assert model.card_data.license == "apache-2.0" and model.card_data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert {"pruning", "gblm", "transformers"} <= set(model.tags)
    sizes = {s.rfilename: s.size for s in model.siblings}
    assert sizes["model.safetensors"] == (model_dir / "model.safetensors").stat().st_size
    assert api.file_exists(repo_id, "nested/gblm_config.json") and not api.file_exists(repo_id, "missing.bin")
    tree = {e.path: type(e).__name__ for e in api.list_repo_tree(repo_id, recursive=True)}
    assert tree["nested"] == "RepoFolder" and tree["nested/gblm_config.json"] == "RepoFile"
    single = hf_hub_download(repo_id, "config.json", endpoint=hub.endpoint, cache_dir=tmp_path / "dl2")
    assert json.loads(Path(single).read_text()) == CONFIG


def test_uploading_identical_content_twice_is_a_no_op(hub: LocalHubServer, api: HfApi, model_dir: Path):
    repo_id = api.create_repo("test-user/idem").repo_id
    first = api.upload_folder(repo_id=repo_id, folder_path=model_dir)
    second = api.upload_folder(repo_id=repo_id, folder_path=model_dir)  # client sees identical oids: no commit
    assert second.oid == first.oid
    assert [c["changed"] for c in hub.commits(repo_id)] == [True, True]
    # The client never sends a no-op commit; one sent by hand is accepted and recorded as unchanged.
    same = base64.b64encode((model_dir / "config.json").read_bytes()).decode()
    ndjson = [
        {"key": "header", "value": {"summary": "noop"}},
        {"key": "file", "value": {"path": "config.json", "content": same, "encoding": "base64"}},
    ]
    resp = httpx2.post(
        f"{hub.endpoint}/api/models/{repo_id}/commit/main",
        content="\n".join(map(json.dumps, ndjson)),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status_code == 200 and resp.json()["commitUrl"].endswith(resp.json()["commitOid"])
    assert [c["changed"] for c in hub.commits(repo_id)] == [True, True, False]
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="extra.txt", repo_id=repo_id)
    (model_dir / "config.json").write_text(json.dumps({**CONFIG, "n_layer": 1}))
    api.upload_folder(repo_id=repo_id, folder_path=model_dir, delete_patterns=["extra.txt"])
    commits = hub.commits(repo_id)
    assert len(commits) == 5 and "extra.txt" not in commits[-1]["files"] and commits[-1]["changed"]
    assert json.loads(hub.file_content(repo_id, "config.json"))["n_layer"] == 1
    assert [c.commit_id for c in api.list_repo_commits(repo_id)] == [c["oid"] for c in reversed(commits)]


def test_model_card_load_through_default_endpoint(hub: LocalHubServer, api: HfApi, model_dir: Path):
    repo_id = api.create_repo("test-user/card").repo_id
    api.upload_folder(repo_id=repo_id, folder_path=model_dir)
    card = ModelCard.load(repo_id)  # no endpoint argument: uses the patched huggingface_hub.constants
    assert card.data.license == "apache-2.0" and card.data.tags == ["pruning", "gblm"]
    assert "# Pruned model" in card.text
    card.validate()  # POST /api/validate-yaml on the default endpoint
    (model_dir / "README.md").write_text("---\nlicense: [unclosed\n---\n# Broken\n")
    with pytest.raises(ValueError, match="Invalid metadata"):  # rejected before anything is uploaded
        api.upload_folder(repo_id=repo_id, folder_path=model_dir)


def test_failed_commit_raises_then_retry_succeeds(hub: LocalHubServer, api: HfApi, model_dir: Path):
    repo_id = api.create_repo("test-user/flaky").repo_id
    hub.fail_next_commits(1)
    with pytest.raises(HfHubHTTPError) as err:  # create_commit/upload_file do not retry commits
        api.upload_file(path_or_fileobj=b"data", path_in_repo="file.txt", repo_id=repo_id)
    assert err.value.response.status_code == 500
    assert api.list_repo_files(repo_id) == [".gitattributes"]  # nothing half-written
    api.upload_file(path_or_fileobj=b"data", path_in_repo="file.txt", repo_id=repo_id)
    assert hub.file_content(repo_id, "file.txt") == b"data"
    # upload_folder's pipelined path retries a failed commit with backoff (about 1 s) and succeeds on its own.
    hub.fail_next_commits(1)
    api.upload_folder(repo_id=repo_id, folder_path=model_dir)
    statuses = [status for method, path, status in hub.requests if path.endswith("/commit/main")]
    assert statuses == [500, 200, 500, 200]


def test_collections_round_trip(hub: LocalHubServer, api: HfApi):
    repo_id = api.create_repo("test-user/member").repo_id
    coll = api.create_collection("GBLM pruned models", description="first", namespace="test-user")
    assert coll.slug.startswith("test-user/gblm-pruned-models-") and coll.items == []
    assert api.create_collection("GBLM pruned models", namespace="test-user", exists_ok=True).slug == coll.slug
    api.add_collection_item(coll.slug, item_id=repo_id, item_type="model", note="50% sparsity")
    again = api.add_collection_item(coll.slug, item_id=repo_id, item_type="model", exists_ok=True)
    assert [i.item_id for i in again.items] == [repo_id]
    with pytest.raises(HfHubHTTPError) as err:
        api.add_collection_item(coll.slug, item_id=repo_id, item_type="model")
    assert err.value.response.status_code == 409
    with pytest.raises(RepositoryNotFoundError):
        api.add_collection_item(coll.slug, item_id="test-user/ghost", item_type="model")

    api.update_collection_metadata(coll.slug, description="updated")
    fetched = api.get_collection(coll.slug)
    assert fetched.description == "updated" and fetched.title == "GBLM pruned models"
    assert [(i.item_id, i.item_type, i.note) for i in fetched.items] == [(repo_id, "model", "50% sparsity")]
    assert [c.slug for c in api.list_collections(owner="test-user")] == [coll.slug]
    assert hub.collections[coll.slug]["items"][0]["id"] == repo_id
    api.delete_collection_item(coll.slug, fetched.items[0].item_object_id)
    assert api.get_collection(coll.slug).items == []


def test_missing_repo_file_and_revision_errors(hub: LocalHubServer, api: HfApi, tmp_path: Path):
    repo_id = api.create_repo("test-user/exists").repo_id
    kwargs = {"endpoint": hub.endpoint, "cache_dir": tmp_path / "c"}
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/missing", "config.json", **kwargs)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "config.json", **kwargs)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch", **kwargs)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("test-user/missing")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("test-user/missing", **kwargs)


def test_private_repo_and_dataset_type(hub: LocalHubServer, api: HfApi, tmp_path: Path):
    repo_id = api.create_repo("test-user/secret-data", repo_type="dataset", private=True).repo_id
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data/train.csv", repo_id=repo_id, repo_type="dataset")
    assert api.dataset_info(repo_id).private is True
    got = hf_hub_download(repo_id, "data/train.csv", repo_type="dataset", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert Path(got).read_bytes() == b"a,b\n1,2\n"
    with pytest.raises(RepositoryNotFoundError):  # anonymous readers do not see private repos
        HfApi(endpoint=hub.endpoint, token=False).dataset_info(repo_id)
    with pytest.raises(RepositoryNotFoundError):  # same id, wrong repo type
        api.model_info(repo_id)


def test_resolve_headers_and_range_requests(hub: LocalHubServer, api: HfApi):
    repo_id = api.create_repo("test-user/ranges").repo_id
    api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="digits.bin", repo_id=repo_id)
    url = f"{hub.endpoint}/{repo_id}/resolve/main/digits.bin"
    head = httpx2.head(url)
    assert head.headers["content-length"] == "10" and head.headers["x-repo-commit"] == api.model_info(repo_id).sha
    assert head.headers["etag"].strip('"') == hub.commits(repo_id)[-1]["files"]["digits.bin"]
    part = httpx2.get(url, headers={"Range": "bytes=3-5"})
    assert part.status_code == 206 and part.content == b"345" and part.headers["content-range"] == "bytes 3-5/10"
    assert httpx2.get(url, headers={"Range": "bytes=7-"}).content == b"789"
    missing = httpx2.head(f"{hub.endpoint}/{repo_id}/resolve/main/nope")
    assert missing.status_code == 404 and missing.headers["x-error-code"] == "EntryNotFound"


def test_transformers_autoconfig_in_process(hub: LocalHubServer, api: HfApi):
    transformers = pytest.importorskip("transformers")
    repo_id = api.create_repo("test-user/gpt2-tiny").repo_id
    api.upload_file(path_or_fileobj=json.dumps(CONFIG).encode(), path_in_repo="config.json", repo_id=repo_id)
    config = transformers.AutoConfig.from_pretrained(repo_id)  # no endpoint: the patched constants route it here
    assert config.model_type == "gpt2" and config.n_layer == 2


def test_subprocess_with_hf_endpoint_env(hub: LocalHubServer, api: HfApi, model_dir: Path, tmp_path: Path):
    repo_id = api.create_repo("test-user/sub").repo_id
    api.upload_folder(repo_id=repo_id, folder_path=model_dir)
    script = (
        "import json, sys\n"
        "from huggingface_hub import ModelCard, snapshot_download\n"
        "path = snapshot_download(sys.argv[1])\n"
        "print(json.dumps({'path': path, 'license': ModelCard.load(sys.argv[1]).data.license}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **hub_env(hub.endpoint, TOKEN, home=tmp_path / "hf-home")}
    proc = subprocess.run(
        [sys.executable, "-c", script, repo_id], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["license"] == "apache-2.0"
    assert result["path"].startswith(str(tmp_path / "hf-home" / "hub"))
    downloaded = _files(result["path"])
    downloaded.pop(".gitattributes")
    assert downloaded == _files(model_dir)


def test_in_memory_store_and_clean_shutdown(monkeypatch: pytest.MonkeyPatch):
    with LocalHubServer(token=None) as server:  # token=None: any (or no) token is accepted
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        endpoint = server.endpoint
        api = HfApi(endpoint=endpoint, token=False)
        repo_id = api.create_repo("test-user/mem").repo_id
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
        assert server.file_content(repo_id, "x.txt") == b"x" and server.root is None
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"{endpoint}/api/whoami-v2", timeout=2)
