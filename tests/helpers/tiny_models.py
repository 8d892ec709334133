"""Tiny offline fixtures on disk: a random LLaMA (GQA, tied embeddings) with a word-level tokenizer, and a text file.

Everything is built locally (no Hub access), so CLI and save/reload tests can pass a real folder path around.
"""

from __future__ import annotations

import random
from pathlib import Path

_VOCABULARY = (
    "the model prunes weights of every linear layer while gradients and activations decide which small "
    "values matter most for the next token in a long sequence of simple words about cats dogs rivers "
    "mountains cities music light water stone tree bird sun moon night day red blue green old new"
)
WORDS = tuple(_VOCABULARY.split())

TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}


def tiny_text(num_sentences: int = 200, seed: int = 0) -> str:
    """Deterministic pseudo-sentences over a fixed vocabulary (about 10 words each)."""
    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + " ." for _ in range(num_sentences)]
    return "\n".join(sentences) + "\n"


def write_text(path: str | Path, num_sentences: int = 200, seed: int = 0) -> Path:
    """Write `tiny_text` to `path` (calibration or evaluation source for the CLI)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tiny_text(num_sentences, seed), encoding="utf-8")
    return path


def tiny_tokenizer():
    """A `PreTrainedTokenizerFast` over a word-level vocabulary trained on `tiny_text` (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>", "</s>", "[PAD]"])
    tokenizer.train_from_iterator(tiny_text().splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", bos_token="<s>", eos_token="</s>", pad_token="[PAD]"
    )


def save_tiny_llama(folder: str | Path, seed: int = 0, model_type: str = "llama", **overrides) -> Path:
    """Save a tiny random LLaMA-family model and its tokenizer to `folder`; returns the folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type,
        **{
            **TINY_LLAMA,
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **overrides,
        },
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_vit(depth: int = 2, seed: int = 0):
    """A tiny random timm ViT (32 x 32 images, 8 x 8 patches, 5 classes), in eval mode."""
    import timm
    import torch

    torch.manual_seed(seed)
    tiny = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": depth, "num_heads": 2, "num_classes": 5}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **tiny).eval()


def labelled_image_batches(count: int = 4) -> list:
    """`count` single-image (images, labels) batches for `tiny_vit`, with labels 0, 1, 2, ..."""
    import torch

    images = torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return [(images[i : i + 1], torch.tensor([i])) for i in range(count)]


def image_classification_step(model, sample):
    """A custom `train_step` for `labelled_image_batches`: cross-entropy of the model's logits."""
    import torch

    return torch.nn.functional.cross_entropy(model(sample[0]), sample[1])
