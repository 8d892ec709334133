"""Determinism: the same config and seed give bit-identical masks and weights in another process for every method,
and at another number of CPU threads for every method but the Cholesky-based ones (docs/guarantees.md); the
calibration fingerprint follows the data, not its container."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optimum_gblm import GBLMConfig, GBLMPruner
from tests.helpers import determinism_worker
from tests.helpers.tiny_models import save_tiny_llama, write_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("determinism")
    return save_tiny_llama(root / "tiny-llama"), write_text(root / "text.txt")


def test_every_method_is_bit_identical_across_processes_and_thread_counts(inputs: tuple[Path, Path]):
    """Every case in another process at 1 CPU thread and here at 2 threads gives bit-identical masks and weights
    (SparseGPT's Cholesky factor runs at a fixed thread count, docs/guarantees.md)."""
    model_dir, text = inputs
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.determinism_worker", "1", str(model_dir), str(text)],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    other_process = json.loads(proc.stdout.strip().splitlines()[-1])  # 1 thread
    threads = torch.get_num_threads()
    try:
        here = determinism_worker.main(2, str(model_dir), str(text))
    finally:
        torch.set_num_threads(threads)
    assert set(other_process) == set(here) == {f"{m} {p}" for m, p in determinism_worker.cases()}
    assert any(case.startswith(("sparsegpt", "gblm-obs")) for case in here)  # the Cholesky-based methods too
    differ = {case: kinds for case in other_process if (kinds := _differing(other_process[case], here[case]))}
    assert differ == {}, "not bit-identical across processes and thread counts 1 and 2"


def _differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return [kind for kind in ("masks", "weights") if a[kind] != b[kind]]


def _fingerprint(model_dir: Path, text: Path, seed: int = 0) -> str:
    config = GBLMConfig(method="wanda", num_samples=4, seqlen=16, calibration=str(text), seed=seed, device="cpu")
    return GBLMPruner.from_pretrained(str(model_dir), config).calibration_data().fingerprint()


def test_calibration_fingerprint_changes_when_the_data_changes(inputs: tuple[Path, Path], tmp_path: Path):
    model_dir, text = inputs
    reference = _fingerprint(model_dir, text)
    copy = tmp_path / "copy.txt"
    copy.write_bytes(text.read_bytes())
    assert _fingerprint(model_dir, copy) == reference  # the same data from another file
    edited = tmp_path / "edited.txt"  # one word changed wherever it occurs (a single edit may fall outside every
    edited.write_text(text.read_text().replace(" the ", " moon "))  # sampled window, which rightly changes nothing)
    assert _fingerprint(model_dir, edited) != reference
    assert _fingerprint(model_dir, text, seed=1) != reference  # other windows of the same text


def test_fingerprint_of_token_tensors_follows_every_token_not_the_order(inputs: tuple[Path, Path]):
    model_dir, _ = inputs
    pruner = GBLMPruner.from_pretrained(str(model_dir), GBLMConfig(method="wanda", device="cpu"))
    ids = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(0))
    fingerprint = pruner.adapter.make_calibration(ids, pruner.config).fingerprint()
    changed = ids.clone()
    changed[2, 7] = (changed[2, 7] + 1) % 40
    assert pruner.adapter.make_calibration(changed, pruner.config).fingerprint() != fingerprint
    assert pruner.adapter.make_calibration(ids.flip(0), pruner.config).fingerprint() == fingerprint
    assert pruner.adapter.make_calibration(ids[:3], pruner.config).fingerprint() != fingerprint
