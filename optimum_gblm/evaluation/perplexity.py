"""Perplexity with the reference protocol (docs/semantics.md#11-evaluation-protocol): non-overlapping windows of held-out text."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.text import corpus_text, tokenize_stream
from ..utils import inference_mode, model_device

logger = logging.getLogger(__name__)


def evaluation_stream(tokenizer: Any, source: str = "offline-corpus") -> torch.Tensor:
    """Token ids of the held-out text: the offline corpus's evaluation slice, WikiText-2 test, or a text file."""
    if source == "offline-corpus":
        return tokenize_stream(tokenizer, corpus_text("evaluation"))
    if source == "wikitext2":
        import datasets

        test = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
        return tokenize_stream(tokenizer, "\n\n".join(test["text"]))
    from pathlib import Path

    path = Path(source)
    if not path.is_file():
        raise ValueError(f"evaluation source {source!r} is not offline-corpus, wikitext2 or an existing text file")
    return tokenize_stream(tokenizer, path.read_text(encoding="utf-8"))


def perplexity(
    model: nn.Module, stream: torch.Tensor, seqlen: int, max_windows: int | None = None, progress: bool = True
) -> float:
    """exp(mean over non-overlapping windows of the per-window mean next-token NLL); remainder dropped."""
    windows = stream.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows == 0:
        raise ValueError(f"evaluation text has {stream.numel()} tokens, fewer than one window of {seqlen}")
    device = model_device(model)
    nlls = []
    with inference_mode(model):
        for i in tqdm(range(windows), desc="perplexity", disable=not progress):
            ids = stream[i * seqlen : (i + 1) * seqlen].unsqueeze(0).to(device)
            nlls.append(float(model(input_ids=ids, labels=ids, use_cache=False).loss))
    value = math.exp(sum(nlls) / len(nlls))
    logger.info("perplexity %.3f over %d windows of %d tokens", value, windows, seqlen)
    return value
