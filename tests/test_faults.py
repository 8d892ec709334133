"""Faults, really made: a subprocess (tests/helpers/fault_worker.py) is SIGKILLed at a chosen point, or its writes are refused
by the kernel (a file-size limit, as a full disk does), and this test checks what is left on disk and that the next
run recovers. Nothing here mocks a result: the library runs unmodified in the worker, only the moment of the break
is chosen by wrapping one of its functions there. (Resuming a recovery run from its checkpoint is tested with the
recovery feature itself.)"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optimum_gblm import GBLMConfig, GBLMPruner, collect_gradients, push_folder
from optimum_gblm.gradients.cache import read_metadata
from optimum_gblm.publishing.checkpoint import recover_interrupted_save
from tests.helpers.fault_worker import WRITE_FAILED, gradient_inputs
from tests.helpers.hub_server import LocalHubServer, hub_env, patch_hub_in_process
from tests.helpers.tiny_models import save_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
KILLED = -signal.SIGKILL
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and RLIMIT_FSIZE are POSIX")
TOKEN = "hf_fault_injection_token_0451"


def run_worker(mode: str, env: dict[str, str] | None = None, **args) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tests.helpers.fault_worker", mode, json.dumps(args)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(path: Path) -> list[str]:
    """Everything next to `path` that belongs to it (the folder and any temporary or moved-aside copy)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name == path.name or p.name.startswith(f".{path.name}."))


# -- gradient collection ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted():
    model, ids, config = gradient_inputs()
    return collect_gradients(model, config, dataloader=[ids], progress=False)


def resume(cache: Path):
    model, ids, config = gradient_inputs()
    return collect_gradients(model, config, dataloader=[ids], cache_path=cache, checkpoint_every=2, progress=False)


def assert_same(a, b) -> None:
    assert a.nsamples == b.nsamples and a.l1.keys() == b.l1.keys() and a.l2sq.keys() == b.l2sq.keys()
    for store in ("l1", "l2sq"):
        for name, tensor in getattr(a, store).items():
            assert torch.equal(tensor, getattr(b, store)[name]), (store, name)  # bit-identical, not close


def test_gradient_collection_killed_after_a_checkpoint_resumes_to_the_same_result(tmp_path: Path, uninterrupted):
    cache = tmp_path / "grads.safetensors"
    proc = run_worker("gradients", cache=str(cache), where="after", kill_after=2)
    assert proc.returncode == KILLED, proc.stdout + proc.stderr
    meta = read_metadata(cache)
    assert meta["complete"] == "false" and meta["nsamples"] == "4"  # the 2nd checkpoint (2 samples each)
    resumed = resume(cache)
    assert_same(resumed, uninterrupted)
    assert read_metadata(cache)["complete"] == "true"


def test_gradient_checkpoint_killed_mid_write_or_refused_by_a_full_disk_keeps_the_last_one(
    tmp_path: Path, uninterrupted
):
    cache = tmp_path / "grads.safetensors"
    proc = run_worker("gradients", cache=str(cache), where="inside", kill_after=3)
    assert proc.returncode == KILLED, proc.stdout + proc.stderr
    torn = [p for p in tmp_path.iterdir() if p.name.startswith(".grads.safetensors.tmp-")]
    assert len(torn) == 1 and torn[0].stat().st_size < cache.stat().st_size  # the half-written 3rd checkpoint
    assert read_metadata(cache)["nsamples"] == "4"  # the 2nd checkpoint, whole
    before = cache.read_bytes()

    # The next run cannot write its checkpoint (files are limited to 64 KiB, the cache is ~300 KiB).
    proc = run_worker("gradients", cache=str(cache), where="fsize", max_bytes=64 * 1024)
    assert proc.returncode == WRITE_FAILED, proc.stdout + proc.stderr
    assert cache.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grads.safetensors"]  # its own temporary file removed,
    # and the torn one of the killed writer too (its process is gone)

    assert_same(resume(cache), uninterrupted)


# -- checkpoint folders -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("fault-model") / "tiny-llama")


def saved(model_dir: Path, out: Path, sparsity: float = 0.25, overwrite: bool = False) -> dict[str, bytes]:
    pruner = GBLMPruner.from_pretrained(
        str(model_dir), GBLMConfig(method="magnitude", sparsity=sparsity, device="cpu")
    )
    pruner.prune(progress=False)
    pruner.save_pretrained(out, overwrite=overwrite)
    return folder_files(out)


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-previous-folder", "new-folder"])
def test_save_killed_mid_write_leaves_the_previous_folder_or_none(model_dir: Path, tmp_path: Path, previous: bool):
    out = tmp_path / "pruned"
    before = saved(model_dir, out) if previous else None
    proc = run_worker("save", model=str(model_dir), out=str(out), where="card")
    assert proc.returncode == KILLED, proc.stdout + proc.stderr
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".pruned.tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()  # killed mid-save, weights written
    if previous:
        assert folder_files(out) == before  # byte for byte
    else:
        assert not out.exists()

    # The next save to that path cleans up what the killed one left, then proceeds as usual.
    after = saved(model_dir, out, sparsity=0.5, overwrite=True)
    assert siblings(out) == ["pruned"] and after != before


def test_save_killed_between_the_two_renames_loses_nothing(model_dir: Path, tmp_path: Path):
    out = tmp_path / "pruned"
    before = saved(model_dir, out)
    proc = run_worker("save", model=str(model_dir), out=str(out), where="swap")
    assert proc.returncode == KILLED, proc.stdout + proc.stderr
    assert not out.exists()  # no folder at the path, never a half one; the previous one was moved aside whole:
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith(".pruned.old-")]
    assert folder_files(aside) == before

    with pytest.raises(FileExistsError, match="not empty"):  # the next save first puts it back, so it is refused
        saved(model_dir, out, sparsity=0.5)
    assert folder_files(out) == before and siblings(out) == ["pruned"]
    recover_interrupted_save(out)  # idempotent
    assert folder_files(out) == before


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-previous-folder", "new-folder"])
def test_full_disk_while_saving_leaves_existing_files_untouched(model_dir: Path, tmp_path: Path, previous: bool):
    out = tmp_path / "pruned"
    before = saved(model_dir, out) if previous else None
    # The weights file (~200 KiB) hits the 64 KiB limit half-way: the kernel refuses the write (EFBIG).
    proc = run_worker("save", model=str(model_dir), out=str(out), where="fsize", max_bytes=64 * 1024)
    assert proc.returncode == WRITE_FAILED, proc.stdout + proc.stderr
    assert "27" in proc.stdout and "too large" in proc.stdout.lower(), proc.stdout  # EFBIG, reported
    if previous:
        assert folder_files(out) == before and siblings(out) == ["pruned"]
    else:
        assert siblings(out) == []  # no folder, no temporary folder


# -- Hub upload -------------------------------------------------------------------------------------------------------
def test_push_killed_midway_then_failing_once_is_retried_to_completion(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    folder = tmp_path / "pruned"
    files = saved(model_dir, folder)
    repo_id = "test-user/killed-push"
    with LocalHubServer(tmp_path / "hub-store", token=TOKEN) as hub:
        env = hub_env(hub.endpoint, TOKEN, home=tmp_path / "hf-home")
        proc = run_worker("push", env=env, folder=str(folder), repo_id=repo_id)
        assert proc.returncode == KILLED, proc.stdout + proc.stderr
        assert [c["title"] for c in hub.commits(repo_id)] == ["initial commit"]  # announced, nothing committed

        patch_hub_in_process(monkeypatch, hub.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
        hub.fail_next_commits(1)  # and the retry's first commit request fails: the client's backoff retries it
        commit = push_folder(folder, repo_id, token=TOKEN, endpoint=hub.endpoint)
        assert commit.oid == hub.commits(repo_id)[-1]["oid"] and len(hub.commits(repo_id)) == 2
        assert hub.file_content(repo_id, "model.safetensors") == files["model.safetensors"]
        stored = set(hub.commits(repo_id)[-1]["files"])
        assert stored == set(files) | {".gitattributes"}
    assert folder_files(folder) == files  # the local folder never changed


def test_a_config_save_that_fails_mid_write_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = GBLMConfig(method="wanda").save_pretrained(tmp_path)
    before = target.read_bytes()

    def disk_full(self: Path, data: str, *args, **kwargs) -> int:  # half the bytes land, then the disk is full
        with open(self, "w", encoding="utf-8") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        GBLMConfig(method="sparsegpt").save_pretrained(tmp_path)
    monkeypatch.undo()
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["gblm_config.json"]


# -- recovery ---------------------------------------------------------------------------------------------------------
def test_recovery_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path: Path, model_dir: Path):
    """A recovery run SIGKILLed right after its step-2 Trainer checkpoint resumes (resume=True) to the weights of an
    uninterrupted run, bit for bit, running only the remaining steps."""
    from tests.helpers.fault_worker import recovery_run
    from tests.helpers.tiny_models import write_text

    text = write_text(tmp_path / "text.txt", 400)
    run = tmp_path / "run"
    proc = run_worker("recover", model=str(model_dir), text=str(text), output_dir=str(run), kill_after=2)
    assert proc.returncode == KILLED, proc.stdout + proc.stderr
    assert (run / "checkpoint-2").is_dir() and not (run / "checkpoint-4").exists()
    pruner, config = recovery_run(str(model_dir), str(text), output_dir=str(run), save_steps=2, resume=True)
    pruner.recover(config, progress=False)
    expected, settings = recovery_run(str(model_dir), str(text))
    expected.recover(settings, progress=False)
    reference = expected.model.state_dict()
    for name, tensor in pruner.model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
