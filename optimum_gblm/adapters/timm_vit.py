"""timm Vision Transformers (ViT, DeiT incl. distilled, register tokens): adapter and loading.

Only the four linears of each block are pruned; patch embedding, prefix tokens, position embeddings and heads live
outside `blocks` and stay dense. Gradients and evaluation run in eval mode (docs/semantics.md#2-what-is-pruned).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import CALIBRATION_PRESETS
from ..data.images import ImageCalibration, image_fingerprint_tensors, load_images
from ..utils import DTYPES
from .base import LoadedModel, ModelAdapter
from .registry import UnsupportedModel, register_adapter

logger = logging.getLogger(__name__)

VIT_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
TIMM_PREFIXES = ("timm/", "hf-hub:", "timm:")


@register_adapter
class TimmViTAdapter(ModelAdapter):
    name = "timm-vit"
    library = "timm"
    block_path = "blocks"
    block_linears = VIT_LINEARS
    metric_name = "accuracy"

    def __init__(self, model: nn.Module | None = None) -> None:
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
        if "timm" not in type(model).__module__ and not any("timm" in c.__module__ for c in type(model).__mro__):
            return False  # not a timm model: no need to import timm (and torchvision) to know
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    @classmethod
    def architectures(cls) -> list[str]:
        return ["VisionTransformer and subclasses (timm: ViT, DeiT, ...)"]

    @classmethod
    def claims_source(cls, source: str) -> bool:
        """timm names ("timm/<name>", "timm:<name>", "hf-hub:org/name") and folders written by save_for_hf."""
        if source.startswith(TIMM_PREFIXES):
            return True
        config = Path(source).expanduser() / "config.json"
        if not config.is_file():
            return False
        data = json.loads(config.read_text())
        return "architecture" in data and "model_type" not in data

    @classmethod
    def for_model(cls, model: nn.Module) -> TimmViTAdapter:
        return cls(model)  # reads input size, classes and data config from the model

    @classmethod
    def wrap(cls, model: nn.Module, config: Any, **load_kwargs: Any) -> LoadedModel:
        # An instance's pretrained_cfg names its architecture's default Hub weights even when the weights are random
        # or fine-tuned: no evidence of the base model, so only an explicit model_id is recorded.
        return cls._loaded(model, config, load_kwargs.get("model_id"))

    @classmethod
    def load(cls, source: str, config: Any, **load_kwargs: Any) -> LoadedModel:
        """A timm ViT from "timm/<name>", "timm:<name>", "hf-hub:org/name" or a save_for_hf folder."""
        import timm

        load_kwargs.pop("tokenizer", None)
        model_id = load_kwargs.pop("model_id", None) or source
        name = timm_model_name(source)
        _check_vit(name, load_kwargs)
        return cls._loaded(timm.create_model(name, pretrained=True, **load_kwargs), config, model_id)

    @classmethod
    def skeleton(cls, source: str, config: Any) -> nn.Module | None:
        import timm

        name = timm_model_name(source)
        if name.startswith("hf-hub:"):
            return None  # its config is on the Hub
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
        except Exception as err:  # unknown names: the real load reports them with timm's own message
            logger.debug("meta-device skeleton of %s failed (%s): structure not checked", name, err)
            return None
        if not cls.supports(model):
            raise UnsupportedModel(type(model).__name__)
        return model

    @classmethod
    def _loaded(cls, model: nn.Module, config: Any, model_id: str | None) -> LoadedModel:
        if not cls.supports(model):
            raise UnsupportedModel(type(model).__name__)
        if config.dtype != "auto":
            model.to(DTYPES[config.dtype])
        adapter = cls(model)
        kind, size, classes = type(model).__name__, adapter.input_size, adapter.num_classes
        logger.info("Loaded timm %s (%s): input %s, %d classes", kind, model_id, size, classes)
        return LoadedModel(model, adapter, None, model_id, adapter.preprocessing())

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

    def preprocessing(self) -> dict[str, Any]:
        return dict(self.data_config)

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

    def _calibration(self, images: Any, labels: Any, source: str, config: Any) -> ImageCalibration:
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
    def make_calibration(self, calibration: Any, config: Any) -> ImageCalibration:
        """Tensors given to prune(calibration=...): (images, labels), {"pixel_values", "labels"} or images alone."""
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

    def build_calibration(
        self, config: Any, tokenizer: Any = None, preprocessing: dict[str, Any] | None = None
    ) -> ImageCalibration:
        """config.num_samples images drawn without replacement (seed config.seed) from an image folder or dataset."""
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

    def fingerprint_tensors(self, sample: Any) -> tuple[torch.Tensor, ...]:
        if isinstance(sample, torch.Tensor):
            return image_fingerprint_tensors(sample)
        if isinstance(sample, dict) and "pixel_values" in sample:
            return image_fingerprint_tensors(sample["pixel_values"], sample.get("labels"))
        if isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[0], torch.Tensor):
            return image_fingerprint_tensors(*sample)
        return super().fingerprint_tensors(sample)

    def sample_tokens(self, sample: Any) -> int:
        images = sample["pixel_values"] if isinstance(sample, dict) else sample
        height, width = images.shape[-2:]
        return (height // self.patch_size[0]) * (width // self.patch_size[1]) + self.prefix_tokens

    # -- saving -----------------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: Any, tokenizer: Any = None) -> None:
        """A timm-native checkpoint: config.json (architecture, model_args, data config) + model.safetensors."""
        from timm.models import save_for_hf

        cfg = getattr(model, "pretrained_cfg", None) or {}
        if not cfg.get("architecture"):
            raise ValueError(
                "this VisionTransformer was not built by timm.create_model, so timm cannot rebuild it from a config: "
                "create it with timm.create_model(<architecture>, ...) to save it"
            )
        save_for_hf(model, str(folder), safe_serialization=True)


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

    from .registry import supported_architectures

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
