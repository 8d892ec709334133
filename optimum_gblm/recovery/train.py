"""A recovery run: text windows, the `transformers.Trainer` (optionally distilling from a dense teacher), merge."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..data.text import load_texts, sample_windows, tokenize_stream
from ..fields import OptionError
from ..utils import read_json, write_text_atomic
from .config import RecoveryConfig
from .subsets import TrainableSubset, apply_masks

logger = logging.getLogger(__name__)

# transformers renamed gradient_checkpointing to activation_checkpointing (the old name warns, and goes in v6).
CHECKPOINTING = next(
    n for n in ("activation_checkpointing", "gradient_checkpointing") if n in TrainingArguments.__dataclass_fields__
)


class WindowDataset(torch.utils.data.Dataset):
    """Token windows as causal-LM examples (labels = inputs; the model shifts them)."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def build_windows(tokenizer: Any, cfg: RecoveryConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training windows (seeded, from the text minus its end) and held-out windows (the last `heldout_windows` x
    `seqlen` tokens, never trained on). The offline corpus's training text is its calibration slice, which never
    overlaps the evaluation slice used for perplexity."""
    if tokenizer is None:
        raise ValueError("recovery needs the model's tokenizer to cut training text")
    texts, _ = load_texts(cfg.source, cfg.text_column)
    stream = tokenize_stream(tokenizer, "\n\n".join(texts))
    held = cfg.heldout_windows * cfg.seqlen
    train_stream = stream[: stream.numel() - held]
    need = cfg.batch_size * cfg.seqlen + 1
    if train_stream.numel() < need:
        raise ValueError(
            f"the training text is too short: {stream.numel()} tokens, but one batch of batch_size={cfg.batch_size} "
            f"x seqlen={cfg.seqlen} needs {need} tokens after the {held} held-out tokens (heldout_windows="
            f"{cfg.heldout_windows}); use more text, or a smaller seqlen, batch_size or heldout_windows"
        )
    train = sample_windows(train_stream, cfg.num_windows, cfg.seqlen, cfg.seed)
    evaluation = stream[stream.numel() - held :].view(cfg.heldout_windows, cfg.seqlen) if held else None
    return train, evaluation


class KeepMasks(TrainerCallback):
    """Re-apply the masks of directly trained pruned weights after every optimizer step."""

    def __init__(self, subset: TrainableSubset) -> None:
        self.subset = subset

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        apply_masks(self.subset)


def tied_names(model: nn.Module) -> set[str]:
    """Names of parameters that are another parameter (a head tied to the input embeddings): checkpoints store
    the tensor once, under its first name."""
    first: dict[int, str] = {}
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(param), name) != name:
            tied.add(name)
    return tied


class RecoveryTrainer(Trainer):
    """The Trainer, except that resuming does not warn about tied parameters "missing" from the checkpoint: it
    stores a tied tensor once, and loading it under its first name restores both."""

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        tied = tied_names(self.model)
        missing = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))


class DistillTrainer(RecoveryTrainer):
    """Cross-entropy mixed with the KL divergence to a dense teacher's softened next-token distribution."""

    def __init__(self, *args: Any, teacher: nn.Module, weight: float, temperature: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher, self.weight, self.temperature = teacher, weight, temperature

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False, **_: Any):
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=inputs["input_ids"]).logits
        t = self.temperature
        student = F.log_softmax(outputs.logits.float().flatten(0, 1) / t, dim=-1)
        target = F.log_softmax(teacher_logits.float().flatten(0, 1) / t, dim=-1)
        kl = F.kl_div(student, target, log_target=True, reduction="batchmean") * t * t
        loss = (1 - self.weight) * outputs.loss + self.weight * kl
        return (loss, outputs) if return_outputs else loss


# The settings that decide which parameters train and what they mean: a resumed run must have the same ones (the
# checkpoint's optimizer and LoRA tensors are theirs). Recorded in output_dir when a run starts.
RESUME_SETTINGS = ("subset", "lora_rank", "lora_alpha", "lora_targets")
RESUME_RECORD = "gblm_recovery_settings.json"


def resume_settings(cfg: RecoveryConfig) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in RESUME_SETTINGS}


def check_output_dir(cfg: RecoveryConfig) -> None:
    """Checkpoints of an earlier run are resumed only when asked, never overwritten, and only with the settings
    that wrote them (the first that differs is named, with its value then and now)."""
    if not cfg.output_dir:
        return
    folder = Path(cfg.output_dir)
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if cfg.resume and last is None:
        raise OptionError(
            "resume",
            "{flag} but {folder} holds no Trainer checkpoint (checkpoint-N folder) to resume from",
            folder=folder,
        )
    if not cfg.resume and last is not None:
        raise OptionError(
            "resume",
            "{folder} holds checkpoints of an earlier run ({last}): pass {flag}, or use an empty {name:output_dir}",
            folder=folder,
            last=Path(last).name,
        )
    record = folder / RESUME_RECORD
    if not cfg.resume or not record.is_file():
        return
    then = read_json(record)  # a corrupt record is named, not a JSON traceback
    for name, now in resume_settings(cfg).items():
        if name in then and then[name] != now:
            raise OptionError(
                name,
                "cannot resume the recovery in {folder} with {opt}{now}: its checkpoints were trained with {opt}"
                "{then}; resume with {opt}{then}, or start a new run in an empty output folder",
                folder=folder,
                now=_spelled(now),
                then=_spelled(then[name]),
            )


def _spelled(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def train(
    model: nn.Module,
    cfg: RecoveryConfig,
    windows: tuple[torch.Tensor, torch.Tensor | None],
    subset: TrainableSubset,
    device: torch.device,
    teacher: nn.Module | None = None,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the subset with the Trainer; returns what the recover stage records (loss, eval loss, time)."""
    train_ids, eval_ids = windows
    with tempfile.TemporaryDirectory(prefix="gblm-recover-") as scratch:
        args = TrainingArguments(
            output_dir=cfg.output_dir or scratch,
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=round(cfg.warmup_ratio * cfg.max_steps),
            weight_decay=cfg.weight_decay,
            logging_steps=cfg.logging_steps,
            save_strategy="steps" if cfg.save_steps else "no",
            save_steps=cfg.save_steps or 500,
            eval_strategy="steps" if cfg.heldout_steps and eval_ids is not None else "no",
            eval_steps=cfg.heldout_steps or None,
            seed=cfg.seed,
            data_seed=cfg.seed,
            bf16=cfg.bf16,
            **{CHECKPOINTING: cfg.gradient_checkpointing},
            use_cpu=device.type == "cpu",
            report_to=[],
            disable_tqdm=not progress,
            dataloader_num_workers=0,
        )
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
        kwargs: dict[str, Any] = dict(
            model=model,
            args=args,
            train_dataset=WindowDataset(train_ids),
            eval_dataset=WindowDataset(eval_ids) if eval_ids is not None else None,
            callbacks=[KeepMasks(subset), *(callbacks or [])],
        )
        if teacher is not None:
            teacher.to(args.device).eval().requires_grad_(False)
            trainer = DistillTrainer(**kwargs, teacher=teacher, weight=cfg.distill_weight, temperature=cfg.temperature)
        else:
            trainer = RecoveryTrainer(**kwargs)
        if cfg.output_dir and not cfg.resume:  # what a later resume must match (check_output_dir)
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(cfg.output_dir) / RESUME_RECORD, json.dumps(resume_settings(cfg), indent=2) + "\n")
        start = time.perf_counter()
        try:
            try:
                output = trainer.train(resume_from_checkpoint=True if cfg.resume else None)
            except RuntimeError as err:  # checkpoints from before the record: a shape that does not fit
                if not cfg.resume or "size mismatch" not in str(err):
                    raise
                raise ValueError(
                    f"the checkpoint in {cfg.output_dir} does not fit this run's trainable parameters: it was written "
                    f"with another {', '.join(RESUME_SETTINGS)}; resume with that run's settings, or start a new run "
                    "in an empty output folder"
                ) from err
            elapsed = time.perf_counter() - start
            record: dict[str, Any] = {"train_loss": output.training_loss, "train_time_s": elapsed}
            if eval_ids is not None:
                record["heldout_loss"] = trainer.evaluate()["eval_loss"]
        finally:
            if cfg.gradient_checkpointing:  # leave the model as it came: no checkpointing, no input-grad hook
                disable = (
                    getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
                )
                disable()
                model.disable_input_require_grads()
    model.eval()
    return record
