"""Image calibration and evaluation sets: tensors, image folders and `datasets` image datasets, preprocessed with a
timm model's eval transforms (docs/semantics.md#10-calibration-data)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..utils import samples_fingerprint, tensor_fingerprint

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
PSEUDO = "pseudo (dense model arg-max)"


@dataclass
class ImageCalibration:
    """N preprocessed images [N, C, H, W] with optional labels [N]; indexing yields one-sample dicts."""

    pixel_values: torch.Tensor
    labels: torch.Tensor | None = None
    source: str = "tensor"
    pseudo_labels: bool = False  # unlabelled images take the dense model's prediction as target

    def __post_init__(self) -> None:
        n = self.pixel_values.shape[0]
        if self.pixel_values.dim() != 4 or n == 0 or (self.labels is not None and self.labels.shape != (n,)):
            raise ValueError("calibration needs a non-empty [N, C, H, W] image tensor and, if labelled, N labels")

    def __len__(self) -> int:
        return self.pixel_values.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        labels = None if self.labels is None else self.labels[index : index + 1]
        return {
            "pixel_values": self.pixel_values[index : index + 1],
            "labels": labels,
            "pseudo_labels": self.pseudo_labels,
        }

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def fingerprint(self) -> str:
        """The calibration fingerprint: images and labels, in any order (docs/semantics.md#3-gradients)."""
        labels = [None] * len(self) if self.labels is None else self.labels
        return samples_fingerprint(image_fingerprint_tensors(x, y) for x, y in zip(self.pixel_values, labels))

    def legacy_fingerprint(self) -> str:
        """The fingerprint that gradient caches written before fingerprint version 2 recorded (ordered images)."""
        tensors = [self.pixel_values.float()] + ([self.labels.long()] if self.labels is not None else [])
        return tensor_fingerprint(*tensors)

    def describe(self) -> dict[str, Any]:
        labels = "given" if self.labels is not None else PSEUDO if self.pseudo_labels else "none"
        size = list(self.pixel_values.shape[1:])
        return {"source": self.source, "num_samples": len(self), "input_size": size, "labels": labels}


def image_fingerprint_tensors(pixels: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """What identifies one image sample in a calibration fingerprint: its [C, H, W] fp32 pixels and its label."""
    image = pixels.reshape(pixels.shape[-3:]).float()
    return (image,) if label is None else (image, torch.as_tensor(label).reshape(-1).long())


# -- images from folders and datasets ------------------------------------------------------------------------------
def _pick(total: int, num_samples: int | None, seed: int) -> list[int]:
    """Seeded sample without replacement, in drawing order; all items (in order) when there are not enough."""
    if num_samples is None or num_samples >= total:
        if num_samples is not None and num_samples > total:
            logger.warning("Only %d images, fewer than num_samples=%d: using all of them", total, num_samples)
        return list(range(total))
    return random.Random(seed).sample(range(total), num_samples)


def _folder_items(root: Path, split: str) -> list[tuple[Path, int | None]]:
    """`root[/split]/<class>/<image>` (labels = index of the sorted class folder) or a flat folder (no labels)."""
    for name in (split, {"validation": "val", "val": "validation"}.get(split, split)):
        if (root / name).is_dir():
            root = root / name
            break
    is_image = lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES  # noqa: E731
    classes = sorted(d for d in root.iterdir() if d.is_dir() and any(is_image(p) for p in d.rglob("*")))
    if classes:
        return [(p, index) for index, d in enumerate(classes) for p in sorted(d.rglob("*")) if is_image(p)]
    return [(p, None) for p in sorted(root.iterdir()) if is_image(p)]


def _saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _dataset(source: str, split: str) -> Any:
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a declared extra
        raise ValueError(f"image source {source!r} needs the `datasets` package: pip install datasets") from err
    path = Path(source).expanduser()
    saved = path.is_dir() and _saved_dataset(path)
    ds = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(source, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"dataset {source!r} has no split {split!r}: splits are {list(ds)}")
        ds = ds[split]
    return ds


def load_images(
    source: str, split: str, data_config: dict[str, Any], num_samples: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Preprocessed images (eval transforms of the model's data config) and labels (None when unlabelled)."""
    from PIL import Image
    from timm.data import create_transform

    if not data_config:
        raise ValueError("no preprocessing (timm data config) is known for this model")
    transform = create_transform(**data_config, is_training=False)
    mode = "L" if data_config["input_size"][0] == 1 else "RGB"
    path = Path(source).expanduser()
    if path.is_dir() and not _saved_dataset(path):
        items = _folder_items(path, split)
        if not items:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}")
        chosen = [items[i] for i in _pick(len(items), num_samples, seed)]
        pictures = [Image.open(p) for p, _ in chosen]
        targets = [t for _, t in chosen]
    else:
        import datasets

        ds = _dataset(source, split)
        image_cols = [k for k, f in ds.features.items() if isinstance(f, datasets.Image)]
        if not image_cols:
            raise ValueError(f"dataset {source!r} has no image column: columns are {ds.column_names}")
        label_cols = [k for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)]
        label_cols += [k for k in ("label", "labels") if k in ds.column_names and k not in label_cols]
        ds = ds.select(_pick(len(ds), num_samples, seed))
        pictures = ds[image_cols[0]]
        targets = ds[label_cols[0]] if label_cols else [None] * len(pictures)
    images = torch.stack([transform(picture.convert(mode)) for picture in pictures])
    labels = None if any(t is None for t in targets) else torch.tensor(targets, dtype=torch.long)
    return images, labels
