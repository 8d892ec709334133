"""The README's Python snippets run as written: every ```python block, in order, in one namespace, as a reader who
pastes them one after the other into a fresh session (in a temporary working directory).

Substitutions happen at run time only; the snippets' text is executed unchanged:
- Models: the Hub ids the README names (`meta-llama/Llama-2-7b-hf`, the timm ViT-B) and the embedded default
  (`from_pretrained()` with no model) load tiny random local models instead (a 2-layer LLaMA with a word-level
  tokenizer, a 2-block ViT on 32x32 images), through a wrapped `optimum_gblm.loading.load_model`: the Hub is not
  reachable here and the real models are too slow for a unit test. Any other id fails loudly.
- Sizes: `GBLMConfig` caps `num_samples` at 4 and `seqlen` at 16 (a wrapped `__post_init__`), so 128 x 2048 windows
  become 4 x 16; `RecoveryConfig` caps `max_steps` at 2, `seqlen` at 16, the batch at 2 and the training / held-out
  windows at 8 / 2. The offline corpus is cut to 200 calibration and 100 evaluation extracts (`corpus_text` wrapped),
  still the real corpus's text: the tiny tokenizer would spend a minute on all 10,033 extracts.
- The user's own data, which the README names: `imagenet/{train,validation}/<class>/*.png` image folders are written
  into the working directory; the gradient-cache snippet's `model` and `trainer` (the prose says "a Trainer over the
  dense model, whose train dataset holds the calibration windows") are a fresh tiny LLaMA and a Trainer over 4
  windows of 16 tokens.
- The Hub: a local Hub-compatible server (tests/helpers/hub_server.py) whose user is `me`, reached through HF_ENDPOINT and
  HF_TOKEN, as the README's publishing section says.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from optimum_gblm import GBLMConfig
from tests.helpers.hub_server import LocalHubServer, patch_hub_in_process
from tests.helpers.tiny_models import save_tiny_llama

README = Path(__file__).resolve().parents[1] / "README.md"
TOKEN = "hf_readme_token"
LLAMA_IDS = ("meta-llama/Llama-2-7b-hf",)
VIT_IDS = ("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text, in order."""
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_python_blocks_parser():
    text = "a\n```python\nx = 1\n```\nb\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


def _image_folders(root: Path) -> None:
    from tests.test_timm_vit import write_image_folder

    write_image_folder(root / "train", classes=3, per_class=3)
    write_image_folder(root / "validation", classes=3, per_class=2)


@pytest.fixture
def readme_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib

    import optimum_gblm.data.text as text_module
    import optimum_gblm.loading as loading_module
    from optimum_gblm.adapters import get_adapter
    from tests.test_timm_vit import tiny_vit

    models = tmp_path / "models"
    llama = save_tiny_llama(models / "tiny-llama")
    vit = models / "tiny-vit"
    model = tiny_vit()
    get_adapter(model).save(model, vit)
    real_load = loading_module.load_model

    def load_model(model, config, **kwargs):
        if model is None or model in LLAMA_IDS:
            model = llama
        elif model in VIT_IDS:
            model = vit
        elif isinstance(model, str) and not Path(model).exists():
            raise AssertionError(f"the README names {model!r}: map it to a tiny model in tests/test_readme.py")
        return real_load(model, config, **kwargs)

    monkeypatch.setattr(loading_module, "load_model", load_model)
    real_post_init = GBLMConfig.__post_init__

    def small(self: GBLMConfig) -> None:
        self.num_samples, self.seqlen = min(self.num_samples, 4), min(self.seqlen, 16)
        real_post_init(self)

    monkeypatch.setattr(GBLMConfig, "__post_init__", small)
    from optimum_gblm.recovery import RecoveryConfig

    real_recovery_init = RecoveryConfig.__post_init__

    def short_recovery(self: RecoveryConfig) -> None:
        self.max_steps, self.seqlen, self.batch_size = min(self.max_steps, 2), min(self.seqlen, 16), 2
        self.num_windows, self.heldout_windows = min(self.num_windows, 8), min(self.heldout_windows, 2)
        real_recovery_init(self)

    monkeypatch.setattr(RecoveryConfig, "__post_init__", short_recovery)
    real_corpus = text_module.corpus_text

    def short_corpus(split: str) -> str:
        keep = {"calibration": 200, "evaluation": 100}[split]
        return "\n\n".join(real_corpus(split).split("\n\n")[:keep])

    monkeypatch.setattr(text_module, "corpus_text", short_corpus)
    # (the package re-exports a function named like this module, so import the module by its name)
    monkeypatch.setattr(importlib.import_module("optimum_gblm.evaluation.perplexity"), "corpus_text", short_corpus)
    work = tmp_path / "work"
    work.mkdir()
    _image_folders(work / "imagenet")
    monkeypatch.chdir(work)
    with LocalHubServer(tmp_path / "hub-store", token=TOKEN, user="me") as hub:
        patch_hub_in_process(monkeypatch, hub.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
        yield work, hub


def _users_trainer() -> dict:
    """`model` and `trainer` of the gradient-cache snippet: a Trainer over the dense model and 4 windows."""
    from transformers import Trainer, TrainingArguments

    from tests.conftest import tiny_model

    model = tiny_model("llama")
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    dataset = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(output_dir="trainer", per_device_train_batch_size=2, report_to=[], use_cpu=True)
    return {"model": model, "trainer": Trainer(model=model, args=args, train_dataset=dataset)}


def test_readme_python_snippets_run_as_written(readme_world, caplog):
    work, hub = readme_world
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5, "the README's Python snippets went missing"
    caplog.set_level("INFO", logger="optimum_gblm")
    namespace: dict = {"__name__": "readme"}
    for number, block in enumerate(blocks, 1):
        if "trainer" in block and "trainer" not in namespace:
            namespace.update(_users_trainer())  # named by the prose around the snippet, not by the snippet
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"README python block {number} failed:\n{block}") from err

    # What the snippets say they do, checked.
    assert (work / "llama2-7b-gblm-50" / "model.safetensors").is_file()
    assert (work / "vit-b-gblm-50" / "model.safetensors").is_file()
    assert (work / "grads.safetensors").is_file()
    assert (work / "smollm2-gblm-sp-30" / "config.json").is_file() and namespace["model"] is not None
    stages = [stage.kind for stage in namespace["pruner"].pruning_map.stages]
    assert (work / "smollm2-gblm-sp-30-perp" / "config.json").is_file() and "recover" in stages
    assert any("Reusing complete gradient cache" in r.getMessage() for r in caplog.records)
    assert hub.commits("me/llama2-7b-gblm-50"), "push_folder published nothing to the HF_ENDPOINT Hub"
    assert "mask" in namespace and namespace["mask"].dtype == torch.bool
    assert namespace["pruned"] > 0 and 0 <= namespace["dense"] <= 1 and os.getcwd() == str(work)  # ViT: accuracy


def test_readme_gradient_cache_sizes_match_the_code(tmp_path: Path):
    """The README's cache sizes: targeted weights of SmolLM2-135M (from its config, on the meta device) x the bytes
    a cache stores per value (read back from a cache the code writes) x the norms."""
    import re

    from safetensors import safe_open

    from optimum_gblm.adapters.registry import model_skeleton
    from optimum_gblm.gradients.accumulation import GradientAccumulation
    from optimum_gblm.gradients.cache import save_cache

    found = model_skeleton(None, GBLMConfig())
    if found is None:
        pytest.skip("the embedded SmolLM2 is not converted on this machine")
    adapter, skeleton = found
    weights = sum(t.module.weight.numel() for t in adapter.select_targets(skeleton, GBLMConfig()))
    state = GradientAccumulation(scale=100.0, nsamples=1, l1={"a": torch.ones(2, 3)}, l2sq={"a": torch.ones(2, 3)})
    save_cache(tmp_path / "c.safetensors", state, {}, complete=True)
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as f:
        per_value = {f.get_tensor(k).element_size() for k in f.keys()}  # noqa: SIM118
    assert per_value == {4}
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert f"{weights:,} targeted weights" in text
    one, two = (
        int(m) for m in re.search(r"= (\d+) MB for SmolLM2-135M .*?, and (\d+) MB with l1 and l2", text).groups()
    )
    assert (one, two) == (round(weights * 4 / 1e6), round(weights * 8 / 1e6))
