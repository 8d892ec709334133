"""timm Vision Transformers (ViT, DeiT incl. distilled, register tokens): adapter, image calibration, loading.

Only the four linears of each block are pruned; patch embedding, prefix tokens, position embeddings and heads live
outside `blocks` and stay dense. Gradients and evaluation run in eval mode (ALGORITHMS.md section 10).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import CALIBRATION_PRESETS, GBLMConfig
from ..utils import DTYPES
from .base import ModelAdapter

logger = logging.getLogger(__name__)

VIT_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
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
        from ..gradients.cache import tensor_fingerprint

        tensors = [self.pixel_values.float()] + ([self.labels.long()] if self.labels is not None else [])
        return tensor_fingerprint(*tensors)

    def describe(self) -> dict[str, Any]:
        labels = "given" if self.labels is not None else PSEUDO if self.pseudo_labels else "none"
        size = list(self.pixel_values.shape[1:])
        return {"source": self.source, "num_samples": len(self), "input_size": size, "labels": labels}


class TimmViTAdapter(ModelAdapter):
    name = "timm-vit"
    library = "timm"
    block_path = "blocks"
    block_linears = VIT_LINEARS
    metric_name = "accuracy"

    def __init__(self, model: nn.Module | None = None, config: GBLMConfig | None = None) -> None:
        self.config = config
        self.input_size: tuple[int, int, int] | None = None  # (C, H, W) the model was built for
        self.patch_size: tuple[int, int] = (1, 1)
        self.prefix_tokens = 0
        self.dynamic_size = False
        self.num_classes: int | None = None
        self.data_config: dict[str, Any] = {}
        if model is not None:
            self.bind(model)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def bind(self, model: nn.Module) -> None:
        """Read what input checks and preprocessing need from the model (sizes, classes, data config)."""
        from timm.data import resolve_data_config

        embed = model.patch_embed
        channels = embed.proj.in_channels
        size = tuple(embed.img_size) if embed.img_size is not None else None
        self.patch_size = tuple(embed.patch_size)
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.dynamic_size = getattr(model, "dynamic_img_size", False) or not getattr(embed, "strict_img_size", True)
        self.num_classes = int(getattr(model, "num_classes", 0))
        cfg = dict(resolve_data_config({}, model=model))
        if size is not None:  # the pretrained cfg may describe the source checkpoint, not a resized model
            cfg["input_size"] = (channels, *size)
        self.input_size = tuple(cfg["input_size"])
        self.data_config = cfg
        # Variants with other block linears (e.g. SwiGLU MLPs: fc1_g, fc1_x) would otherwise be skipped silently.
        other = {r for b in self.blocks(model) for r, m in b.named_modules() if isinstance(m, nn.Linear)}
        if other := other - set(VIT_LINEARS):
            logger.warning("Block linears left dense: %s (set targets= to prune them)", sorted(other))

    # -- input checks (before any heavy work) -----------------------------------------------------------------------
    def check_images(self, images: Any) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor [N, C, H, W] of preprocessed pixels, got {got}")
        if images.shape[0] == 0:
            raise ValueError("no images given")
        if self.input_size is None:
            return images
        (channels, height, width), (exp_c, exp_h, exp_w) = images.shape[1:], self.input_size
        if channels != exp_c:
            raise ValueError(f"images have {channels} channels, the model expects {exp_c} (input {self.input_size})")
        if self.dynamic_size:
            if height % self.patch_size[0] or width % self.patch_size[1]:
                raise ValueError(f"images of {height}x{width} are not a multiple of the patch size {self.patch_size}")
        elif (height, width) != (exp_h, exp_w):
            raise ValueError(
                f"images are {height}x{width}, the model expects {exp_h}x{exp_w} (input_size {self.input_size}): "
                "preprocess them with the model's data config"
            )
        return images

    def check_labels(self, labels: Any, count: int) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.shape[0] != count or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be {count} integer class ids [N], got {labels.dtype} {tuple(labels.shape)}")
        if self.num_classes is not None:
            if self.num_classes == 0:
                raise ValueError("the model has no classification head (num_classes=0): labels cannot be used")
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"labels must be in [0, {self.num_classes}) for this model, got [{low}, {high}]")
        return labels.long()

    def _calibration(self, images: Any, labels: Any, source: str, config: GBLMConfig | None) -> ImageCalibration:
        images = self.check_images(images).detach()
        labels = None if labels is None else self.check_labels(labels, images.shape[0])
        pseudo = bool(config is not None and config.pseudo_labels and labels is None)
        if labels is None and not pseudo and config is not None and config.needs_gradients:
            raise ValueError(
                f"method={config.method!r} needs a loss, but the calibration images have no labels: pass "
                "(images, labels), or set pseudo_labels=True to use the dense model's predictions as targets"
            )
        return ImageCalibration(images, labels, source, pseudo)

    # -- calibration ------------------------------------------------------------------------------------------------
    def make_calibration(self, calibration: Any, config: GBLMConfig | None = None) -> ImageCalibration:
        """Tensors given to prune(calibration=...): (images, labels), {"pixel_values", "labels"} or images alone."""
        config = config or self.config
        if isinstance(calibration, ImageCalibration):
            images, labels, source = calibration.pixel_values, calibration.labels, calibration.source
        elif isinstance(calibration, dict):
            if "pixel_values" not in calibration:
                raise ValueError(f"a calibration dict needs 'pixel_values' (and 'labels'), got {sorted(calibration)}")
            images, labels, source = calibration["pixel_values"], calibration.get("labels"), "tensor"
        elif isinstance(calibration, (tuple, list)) and len(calibration) == 2:
            (images, labels), source = calibration, "tensor"
        elif isinstance(calibration, torch.Tensor):
            images, labels, source = calibration, None, "tensor"
        else:
            raise TypeError(
                f"unsupported calibration {type(calibration).__name__}: pass (images, labels), "
                "{'pixel_values': images, 'labels': labels} or an images tensor [N, C, H, W]"
            )
        return self._calibration(images, labels, source, config)

    def build_calibration(self, config: GBLMConfig, preprocessing: dict[str, Any] | None = None) -> ImageCalibration:
        """config.num_samples images drawn without replacement (seed config.seed) from an image folder or dataset."""
        self.config = config
        source = config.calibration
        if source in CALIBRATION_PRESETS or Path(source).suffix in (".txt", ".md", ".json", ".jsonl"):
            raise ValueError(
                f"calibration={source!r} is text, but this is an image model: set calibration to an image folder or a "
                "datasets image dataset, or pass prune(calibration=(images, labels))"
            )
        data_config = preprocessing or self.data_config
        images, labels = load_images(source, "train", data_config, config.num_samples, config.seed)
        labelled = labels is not None
        logger.info(
            "Calibration: %d images from %s (seed %d), labelled: %s", len(images), source, config.seed, labelled
        )
        return self._calibration(images, labels, source, config)

    # -- per-sample passes ------------------------------------------------------------------------------------------
    def _pixels(self, model: nn.Module, sample: Any) -> torch.Tensor:
        images = sample["pixel_values"] if isinstance(sample, dict) else sample
        images = images if images.dim() == 4 else images.unsqueeze(0)
        weight = next(model.parameters())
        return images.to(device=weight.device, dtype=weight.dtype)

    def forward(self, model: nn.Module, sample: Any) -> Any:
        return model(self._pixels(model, sample))

    def loss(self, model: nn.Module, sample: Any) -> torch.Tensor:
        """Cross-entropy against the sample's label, or its pseudo-label: the dense model's arg-max (the gradient
        pass runs once per sample on the dense model only: the pruner refuses it after pruning)."""
        pixels = self._pixels(model, sample)
        labels = sample.get("labels") if isinstance(sample, dict) else None
        if labels is None:
            if not (isinstance(sample, dict) and sample.get("pseudo_labels")):
                raise ValueError(
                    "a calibration image has no label: pass (images, labels), or set GBLMConfig(pseudo_labels=True) "
                    "(through GBLMPruner.from_pretrained(model, config)) to use the dense model's predictions"
                )
            with torch.no_grad():
                labels = model(pixels).argmax(dim=-1)
        logits = model(pixels)
        return F.cross_entropy(logits.float(), labels.to(logits.device).long())

    def sample_tokens(self, sample: Any) -> int:
        images = sample["pixel_values"] if isinstance(sample, dict) else sample
        height, width = images.shape[-2:]
        return (height // self.patch_size[0]) * (width // self.patch_size[1]) + self.prefix_tokens

    # -- evaluation -------------------------------------------------------------------------------------------------
    def evaluate(
        self,
        model: nn.Module,
        pruner: Any,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        source: str | None = None,
        split: str = "validation",
        batch_size: int = 256,
        progress: bool = True,
    ) -> float:
        """Top-1 accuracy on a labelled set: images= / labels=, an image folder or dataset (source=, split=), or the
        set given to an earlier evaluate() of this pruner (`pruner.eval_images`, `pruner.eval_labels`)."""
        from ..evaluation import top1_accuracy

        if (images is None) != (labels is None):
            raise ValueError("top-1 accuracy needs both images= and labels=")
        if images is None and source is not None:
            images, labels = load_images(source, split, pruner.preprocessing or self.data_config)
            if labels is None:
                raise ValueError(f"evaluation source {source!r} has no labels: top-1 accuracy needs labelled images")
        elif images is None:
            images, labels = getattr(pruner, "eval_images", None), getattr(pruner, "eval_labels", None)
            if images is None:
                raise ValueError(
                    "top-1 accuracy needs a labelled evaluation set: pass images= and labels=, or source="
                )
        images = self.check_images(images)
        labels = self.check_labels(labels, images.shape[0])
        pruner.eval_images, pruner.eval_labels = images, labels  # reused by the next evaluate() (dense -> pruned)
        value = top1_accuracy(model, images, labels, batch_size)
        logger.info("top-1 accuracy %.4f on %d images", value, images.shape[0])
        return value

    # -- saving -----------------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: Any, pruner: Any) -> None:
        """A timm-native checkpoint: config.json (architecture, model_args, data config) + model.safetensors."""
        from timm.models import save_for_hf

        cfg = getattr(model, "pretrained_cfg", None) or {}
        if not cfg.get("architecture"):
            raise ValueError(
                "this VisionTransformer was not built by timm.create_model, so timm cannot rebuild it from a config: "
                "create it with timm.create_model(<architecture>, ...) to save it"
            )
        save_for_hf(model, str(folder), safe_serialization=True)


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


# -- loading -------------------------------------------------------------------------------------------------------
def timm_model_name(source: str) -> str:
    """The name timm.create_model understands for "timm/<name>", "timm:<name>", "hf-hub:org/name" or a folder."""
    import timm

    if source.startswith("timm:"):
        return source[len("timm:") :]
    if source.startswith("timm/"):
        name = source[len("timm/") :]
        return name if timm.is_model(name.split(".")[0]) else f"hf-hub:{source}"
    path = Path(source).expanduser()
    if not source.startswith(("hf-hub:", "local-dir:")) and (path / "config.json").is_file():
        return f"local-dir:{path.absolute()}"
    return source


def _check_vit(name: str, load_kwargs: dict[str, Any]) -> None:
    """Refuse a non-ViT architecture before loading any weights (the probe is built on the meta device)."""
    import timm

    from . import supported_architectures

    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, **load_kwargs)
    except Exception as err:  # the real load below reports unknown names with timm's own message
        logger.debug("meta-device probe of %s failed (%s): checking after loading", name, err)
        return
    if not TimmViTAdapter.supports(probe):
        raise ValueError(
            f"timm model {name!r} is a {type(probe).__name__}, which has no adapter. "
            f"Supported: {'; '.join(supported_architectures())}"
        )


def load_timm_model(source: str | Path | nn.Module, config: GBLMConfig, **load_kwargs: Any) -> Any:
    """A timm ViT from "timm/<name>", "timm:<name>", "hf-hub:org/name", a save_for_hf folder, or an instance."""
    import timm

    from ..loading import LoadedModel
    from . import get_adapter

    load_kwargs.pop("tokenizer", None)
    model_id = load_kwargs.pop("model_id", None)
    if isinstance(source, nn.Module):
        # An instance's pretrained_cfg names its architecture's default Hub weights even when the weights are random
        # or fine-tuned: no evidence of the base model, so only an explicit model_id is recorded.
        model = source
    else:
        name = timm_model_name(str(source))
        _check_vit(name, load_kwargs)
        model = timm.create_model(name, pretrained=True, **load_kwargs)
        model_id = model_id or str(source)
    if not TimmViTAdapter.supports(model):
        get_adapter(model)  # raises, naming the supported architectures
    if config.dtype != "auto":
        model.to(DTYPES[config.dtype])
    adapter = TimmViTAdapter(model, config)
    kind, size, classes = type(model).__name__, adapter.input_size, adapter.num_classes
    logger.info("Loaded timm %s (%s): input %s, %d classes", kind, model_id, size, classes)
    return LoadedModel(model, adapter, None, model_id, dict(adapter.data_config))


__all__ = ["ImageCalibration", "TimmViTAdapter", "load_images", "load_timm_model"]
