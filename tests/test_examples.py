"""The example scripts run end to end on a tiny local model."""

import runpy
import sys
from pathlib import Path

import pytest

from tests.helpers.tiny_models import save_tiny_llama, write_text

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def tiny(tmp_path):
    return save_tiny_llama(tmp_path / "tiny"), write_text(tmp_path / "text.txt")


def _load(name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return runpy.run_path(str(EXAMPLES / f"{name}.py"))
    finally:
        sys.path.remove(str(EXAMPLES))


def test_prune_llama_example(tiny, tmp_path):
    model, text = tiny
    result = _load("prune_llama")["main"](
        [
            "--model",
            str(model),
            "--calibration",
            str(text),
            "--num-samples",
            "4",
            "--seqlen",
            "16",
            "--eval-source",
            str(text),
            "--eval-windows",
            "4",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert result["pruned"] > 0 and (tmp_path / "out" / "model.safetensors").exists()


def test_compare_methods_example(tiny):
    model, text = tiny
    rows = _load("compare_methods")["compare"](
        str(model),
        ("magnitude", "wanda", "gblm", "gradient"),
        calibration=str(text),
        num_samples=4,
        seqlen=16,
        eval_source=str(text),
        eval_windows=4,
    )
    assert set(rows) == {"dense", "magnitude", "wanda", "gblm", "gradient"}
    assert all(r["perplexity"] > 0 for r in rows.values())


def test_demo_example_shares_one_gradient_pass(tiny, tmp_path, monkeypatch):
    """`make demo` on the tiny model: every method of the table, and gblm + gblm-obs from ONE gradient pass."""
    import optimum_gblm.gradient_phase as steps_module

    passes = []
    real = steps_module.run_collection
    monkeypatch.setattr(steps_module, "run_collection", lambda *a, **k: passes.append(1) or real(*a, **k))
    model, text = tiny
    options = ["--model", str(model), "--calibration", str(text), "--eval-source", str(text)]
    out = tmp_path / "out"
    result = _load("demo")["main"]([*options, "--num-samples", "4", "--seqlen", "16", "--eval-windows", "4",
                                    "--output", str(out)])  # fmt: skip
    assert set(result) == {"dense", "wanda", "sparsegpt", "gblm", "gblm-obs", "gradient_passes"}
    assert len(passes) == 1 and all(result[m] > 0 for m in ("dense", "wanda", "sparsegpt", "gblm", "gblm-obs"))
    assert (out / "model.safetensors").exists()
