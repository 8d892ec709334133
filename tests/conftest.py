"""Shared fixtures: tiny random LLaMA-family models (GQA, tied embeddings) and the real SmolLM2-135M."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **{**TINY, **overrides})
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    return tiny_model("llama")


@pytest.fixture
def calib_ids() -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (4, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M (converted once) and its tokenizer; tests deep-copy the model."""
    from transformers import AutoTokenizer

    from optimum_gblm.assets import default_model_path

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path), path


@pytest.fixture
def fresh_smollm2(smollm2):
    model, tokenizer, path = smollm2
    return copy.deepcopy(model), tokenizer, path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
