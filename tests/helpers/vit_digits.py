"""The real digits ViT of ENVIRONMENT.md: a timm VisionTransformer trained on scikit-learn's `load_digits()`.

Trained once per recipe and cached as a timm-native checkpoint (config.json + model.safetensors) under
`$OPTIMUM_GBLM_CACHE` (default `~/.cache/optimum_gblm`), in a folder keyed by a hash of the recipe, so test sessions
and the benchmark reuse it. Used by `tests/test_timm_vit.py` (slow tests) and `benchmarks/vit_digits.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from optimum_gblm.utils import torch_threads

logger = logging.getLogger(__name__)

ARCH = "vit_tiny_patch16_224"  # only the name: every size below is overridden (675k parameters)
MODEL_ARGS = {
    "img_size": 8,
    "patch_size": 2,
    "in_chans": 3,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 3,
    "mlp_ratio": 4.0,
    "num_classes": 10,
}
RECIPE = {
    "arch": ARCH,
    "model_args": MODEL_ARGS,
    "train_size": 1400,
    "epochs": 60,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "seed": 0,
    "normalize": "x/16, mean 0.5, std 0.5, grey repeated to 3 channels",
}


@dataclass
class Digits:
    train_images: torch.Tensor  # [1400, 3, 8, 8], normalised like the model's data config
    train_labels: torch.Tensor
    test_images: torch.Tensor  # [397, 3, 8, 8]
    test_labels: torch.Tensor


def recipe_hash() -> str:
    import timm

    payload = json.dumps(
        {**RECIPE, "timm": timm.__version__, "torch": torch.__version__.split("+")[0]}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("OPTIMUM_GBLM_CACHE") or Path.home() / ".cache" / "optimum_gblm").expanduser()


def digits_data() -> Digits:
    """scikit-learn's bundled 1,797 8x8 digits, a seeded 1,400 / 397 split, grey repeated to RGB, scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    images = ((images - 0.5) / 0.5).unsqueeze(1).repeat(1, 3, 1, 1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(RECIPE["seed"]))
    train, test = order[: RECIPE["train_size"]], order[RECIPE["train_size"] :]
    return Digits(images[train], labels[train], images[test], labels[test])


def build_model() -> nn.Module:
    import timm

    return timm.create_model(ARCH, pretrained=False, **MODEL_ARGS)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: this model's matrices are tiny, and on a shared CPU two spinning threads made a training
    step 6x slower (1.57 s against 0.25 s wall) than one."""
    with torch_threads(1):
        yield


def train_model(data: Digits) -> nn.Module:
    """AdamW + one-cycle, seeded; about two minutes on one CPU core."""
    with single_thread():
        return _train(data)


def _train(data: Digits) -> nn.Module:
    torch.manual_seed(RECIPE["seed"])
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    batch, epochs = RECIPE["batch_size"], RECIPE["epochs"]
    steps = -(-len(data.train_labels) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=RECIPE["lr"], total_steps=epochs * steps)
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data.train_labels), generator=generator)
        for i in range(0, len(order), batch):
            index = order[i : i + batch]
            loss = F.cross_entropy(model(data.train_images[index]), data.train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    logger.info("trained the digits ViT in %.1f s", time.perf_counter() - start)
    return model


def trained_model_path(cache: str | Path | None = None) -> Path:
    """The cached checkpoint folder, training (and writing it atomically) only when it is missing."""
    import timm

    folder = Path(cache or cache_root()) / f"vit-digits-{recipe_hash()}"
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    model = train_model(digits_data())
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        timm.models.save_for_hf(model, str(tmp), safe_serialization=True)
        (tmp / "recipe.json").write_text(json.dumps(RECIPE, indent=2, sort_keys=True) + "\n")
        if not folder.exists():  # another process may have finished first: keep its (identical) copy
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_trained_model(cache: str | Path | None = None) -> nn.Module:
    """The trained digits ViT, in eval mode, reloaded with plain timm."""
    import timm

    model = timm.create_model(f"local-dir:{trained_model_path(cache)}", pretrained=True)
    return model.eval()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(images).argmax(dim=-1) == labels).float().mean())


# -- pruning the digits ViT (shared by the slow tests and benchmarks/vit_digits.py) --------------------------------
METHODS = ("magnitude", "wanda", "gradient", "gblm", "sparsegpt", "gblm-obs")
# At 50% and 2:4 every method stays near dense; at 80% and more the methods separate (ENVIRONMENT.md).
SETTINGS = (("unstructured", 0.5), ("unstructured", 0.8), ("unstructured", 0.9), ("2:4", 0.5))


def calibration_set(data: Digits, num_samples: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded draw (without replacement) of labelled training images; never test images."""
    index = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(seed))[:num_samples]
    return data.train_images[index], data.train_labels[index]


def prune_digits(
    folder: Path,
    data: Digits,
    method: str,
    pattern: str,
    sparsity: float,
    num_samples: int = 128,
    gradients=None,
    device: str = "cpu",
    group: str | None = None,
):
    """Load the cached checkpoint through optimum-gblm, prune it, and return the pruner (model pruned in place).

    `gradients` (a GradientAccumulation of the dense model on the same calibration set) is shared across methods:
    it depends neither on the method nor on the sparsity.
    """
    from optimum_gblm import GBLMConfig, GBLMPruner

    config = GBLMConfig(
        method=method, pattern=pattern, sparsity=sparsity, num_samples=num_samples, device=device, group=group
    )
    pruner = GBLMPruner.from_pretrained(str(folder), config)
    pruner.prune(calibration=calibration_set(data, num_samples), gradients=gradients, progress=False)
    return pruner


def dense_gradients(folder: Path, data: Digits, num_samples: int = 128, device: str = "cpu"):
    """Per-sample l1 and l2 accumulations of the dense model (l2 feeds gblm-obs's gradient allocation)."""
    from optimum_gblm import GBLMConfig, GBLMPruner

    config = GBLMConfig(method="gblm-obs", num_samples=num_samples, device=device)
    pruner = GBLMPruner.from_pretrained(str(folder), config)
    pruner.calibration_data(calibration_set(data, num_samples))
    return pruner.collect_gradients(progress=False)
