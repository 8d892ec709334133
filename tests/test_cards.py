"""Model cards: golden re-rendering, Hub metadata validity, license inheritance, the sparsity plot."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from optimum_gblm import GBLMConfig, GBLMPruner, list_methods, render_model_card
from optimum_gblm.assets import DEFAULT_MODEL_ID, DEFAULT_MODEL_LICENSE
from optimum_gblm.methods import get_method
from optimum_gblm.publishing.cards import PLOT_NAME, base_name, card_metadata, default_repo_name
from optimum_gblm.publishing.plot import write_sparsity_plot
from optimum_gblm.publishing.provenance import base_model_license, hub_base_model
from tests.conftest import tiny_model

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "gblm_config.json").is_file())
TEXT = " ".join(f"the quick brown fox {i % 7} jumps over the lazy dog number {i % 11} ." for i in range(200))


# -- helpers shared with test_hub.py and test_zoo.py ---------------------------------------------------------------
def write_tiny_model(folder: Path, license: str | None = "mit") -> Path:
    """A tiny random LLaMA (GQA, tied embeddings) with a word-level tokenizer and a card, as a local base model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT], trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    tiny_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if license:
        (folder / "README.md").write_text(f"---\nlicense: {license}\n---\n# tiny base model\n")
    return folder


def write_text(path: Path) -> Path:
    path.write_text(TEXT)
    return path


def tiny_pruner(root: Path, method: str = "wanda", evaluate: bool = True, **config) -> GBLMPruner:
    """Load, evaluate, prune and evaluate a tiny model under `root` (created once per root)."""
    model_dir, text = root / "tiny-llama", root / "text.txt"
    if not model_dir.exists():
        write_tiny_model(model_dir)
        write_text(text)
    settings = dict(method=method, sparsity=0.5, num_samples=4, seqlen=16, calibration=str(text), device="cpu")
    pruner = GBLMPruner.from_pretrained(str(model_dir), GBLMConfig(**{**settings, **config}))
    eval_kwargs = dict(seqlen=16, max_windows=2, source=str(text), progress=False)
    if evaluate:
        pruner.evaluate(label="dense", **eval_kwargs)
    pruner.prune(progress=False)
    if evaluate:
        pruner.evaluate(label="pruned", **eval_kwargs)
    return pruner


def _sidecar(name: str) -> dict:
    return json.loads((GOLDEN / name / "gblm_config.json").read_text())


# -- golden cards -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_card_rerenders_exactly_from_its_sidecar(case: str):
    expected = GOLDEN / case / "README.md"
    text = render_model_card(_sidecar(case))
    if os.environ.get("UPDATE_GOLDEN") == "1":  # regenerate after an intended template change, then review the diff
        expected.write_text(text, encoding="utf-8")
    assert text == expected.read_text(encoding="utf-8")
    assert render_model_card(_sidecar(case)) == text  # deterministic


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_card_metadata_is_valid_hub_metadata(case: str, tmp_path: Path):
    sidecar = _sidecar(case)
    readme = tmp_path / "README.md"
    readme.write_text(render_model_card(sidecar), encoding="utf-8")
    meta = metadata_load(readme)
    assert meta == card_metadata(sidecar)
    assert "base_model_relation" not in meta  # the Hub has no "pruned" relation
    config = sidecar["config"]
    assert {"pruned", "sparse", "gblm", config["method"]} <= set(meta["tags"])
    assert meta["library_name"] == sidecar["library"] and meta["license"] == sidecar["license"]
    data = ModelCardData(**meta)  # huggingface_hub parses model-index into eval_results
    assert data.base_model == sidecar["base_model"] and data.eval_results
    name, results = model_index_to_eval_results(meta["model-index"])
    metric = "perplexity" if sidecar["library"] == "transformers" else "accuracy"
    by_name = {r.metric_name: r.metric_value for r in results}
    assert by_name[f"{'Perplexity' if metric == 'perplexity' else 'Top-1 accuracy'} (dense)"] == pytest.approx(
        sidecar["results"][f"dense_{metric}"]
    )
    assert {r.metric_type for r in results} == {metric} and name
    card = ModelCard(readme.read_text())
    assert card.data.to_dict()["tags"] == meta["tags"] and f"![Per-layer sparsity]({PLOT_NAME})" in card.text


def test_gblm_obs_card_reports_per_linear_range():
    sidecar = _sidecar("llama-gblm-obs")
    low, high = sidecar["sparsity_range"]
    assert low < high
    text = render_model_card(sidecar)
    assert f"from **{low:.2%}** (min) to **{high:.2%}** (max)" in text
    assert "| Perplexity (text.txt) |" in text and "Change" in text


def test_card_without_pruning_or_evaluation():
    sidecar = {**_sidecar("llama-gblm-obs"), "sparsity": None, "sparsity_range": None, "results": {}, "evaluation": {}}
    text = render_model_card(sidecar)
    assert "No evaluation was run." in text and "not pruned" in text and PLOT_NAME not in text
    assert "model-index" not in card_metadata(sidecar)


# -- names and licenses -------------------------------------------------------------------------------------------
def test_hub_ids_and_repo_names():
    assert hub_base_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert hub_base_model("/tmp/models/tiny") is None and hub_base_model("./tiny") is None
    snapshot = "/root/.cache/huggingface/hub/models--org--my-model/snapshots/abc123"
    assert hub_base_model(snapshot) == "org/my-model" and base_name(snapshot) == "my-model"
    assert hub_base_model("hf-hub:timm/vit_tiny_patch16_224") == "timm/vit_tiny_patch16_224"
    assert default_repo_name("HuggingFaceTB/SmolLM2-135M", "gblm", "2:4", 0.5) == "SmolLM2-135M-gblm-2of4-50"
    assert default_repo_name("/x/tiny", "gblm-obs", "unstructured", 0.625) == "tiny-gblm-obs-unstructured-62.5"


def test_license_inherited_from_the_base_model(tmp_path: Path):
    assert base_model_license(DEFAULT_MODEL_ID) == DEFAULT_MODEL_LICENSE == "apache-2.0"
    (tmp_path / "README.md").write_text("---\nlicense: llama3.1\n---\n")
    assert base_model_license(str(tmp_path)) == "llama3.1"
    assert base_model_license(str(tmp_path / "missing")) is None
    assert base_model_license("nobody/not-in-the-cache") is None

    class TimmLike:
        pretrained_cfg = {"license": "cc-by-4.0"}

    assert base_model_license("nobody/not-in-the-cache", TimmLike()) == "cc-by-4.0"


# -- save_pretrained writes card and plot ---------------------------------------------------------------------------
def test_save_pretrained_writes_card_and_plot(tmp_path: Path):
    pruner = tiny_pruner(tmp_path)
    first = pruner.save_pretrained(tmp_path / "ckpt")
    sidecar = json.loads((first / "gblm_config.json").read_text())
    assert sidecar["license"] == "mit"  # from the base model's local card
    settings = {"max_windows": 2, "seqlen": 16, "source": str(tmp_path / "text.txt"), "windows": 2}
    assert sidecar["evaluation"]["pruned"] == settings
    readme = (first / "README.md").read_text()
    assert readme == render_model_card(sidecar)
    assert "Evaluation settings: max_windows=2, seqlen=16, windows=2." in readme  # the context length is shown
    assert (first / PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = yaml.safe_load(readme.split("---")[1])
    assert front["license"] == "mit" and "base_model" not in front  # a local folder is not a Hub id
    second = pruner.save_pretrained(tmp_path / "ckpt-again")
    for name in ("README.md", PLOT_NAME, "gblm_config.json", "model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name  # pushes are idempotent


def test_plot_skipped_without_layers(tmp_path: Path):
    assert write_sparsity_plot(tmp_path, {"config": {}, "sparsity": None}) is None
    assert not (tmp_path / PLOT_NAME).exists()


# -- every registered method, and image calibrations ------------------------------------------------------------------
def _format2_sidecar(method: str) -> dict:
    """The golden gblm-obs side-car, upgraded to format 2, re-targeted at `method` (its own default arguments)."""
    from optimum_gblm.publishing.sidecar import upgrade_sidecar

    sidecar = upgrade_sidecar(_sidecar("llama-gblm-obs"))
    settings = {k: v for k, v in sidecar["config"].items() if k not in ("method", "method_args", "allocation")}
    sidecar["config"] = GBLMConfig(**{**settings, "method": method}).to_dict()
    return sidecar


@pytest.mark.parametrize("method", list_methods())
def test_card_describes_every_registered_method(method: str):
    """The Method row, the tags, the gradient row and the method-argument row come from the method's declaration."""
    declared = get_method(method)
    sidecar = _format2_sidecar(method)
    text = render_model_card(sidecar)
    assert f"| Method | `{method}`: {declared.card_description} |" in text
    assert method in card_metadata(sidecar)["tags"]
    assert ("| Gradients |" in text) == declared.needs_gradients
    arguments = [f.name for f in fields(declared.args)]
    row = next((line for line in text.splitlines() if line.startswith("| Method arguments |")), "")
    assert all(f" {name} " in row for name in arguments) and bool(row) == bool(arguments), row
    assert "None" not in text


def test_vit_card_describes_image_calibration(tmp_path: Path):
    """An image calibration has no seqlen: the card says how many images of which size, never `None tokens`."""
    from tests.test_timm_vit import images, labels, tiny_vit

    pruner = GBLMPruner.from_pretrained(tiny_vit(), GBLMConfig(method="wanda", num_samples=8, device="cpu"))
    pruner.prune(calibration=(images(), labels()), progress=False)
    folder = pruner.save_pretrained(tmp_path / "vit")
    card = (folder / "README.md").read_text(encoding="utf-8")
    row = next(line for line in card.splitlines() if line.startswith("| Calibration |"))
    assert "8 images of 3x32x32 from `tensor`" in row, row
    assert "None" not in card and "tokens" not in row
