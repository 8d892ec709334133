"""`optimum-cli gblm evaluate`: perplexity (LLMs) or top-1 accuracy (ViTs) of any checkpoint, dense or pruned."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from optimum.commands.base import CommandInfo

from ..configuration import CONFIG_NAME, GBLMConfig
from .base import (
    PRUNE_ONLY_OPTIONS,
    GBLMSubcommand,
    add_model_arguments,
    check_eval_source,
    check_model_folder,
    check_model_path,
    chosen_model,
)
from .errors import UsageError
from .options import add_config_arguments, add_eval_arguments, config_from_args
from .prune import eval_kwargs
from .tasks import add_task_arguments, check_task_arguments, run_task_evaluation

logger = logging.getLogger(__name__)


def read_sidecar(model: str) -> dict[str, Any]:
    """The checkpoint's `gblm_config.json` when it has one (a saved folder), else {}: plain JSON, no loading. A side-car
    that cannot be read is refused, naming the file: guessing would relabel a pruned model dense and change the
    evaluation length."""
    from ..publishing.sidecar import read_sidecar as read

    folder = Path(model).expanduser()
    if not (folder / CONFIG_NAME).is_file():
        return {}
    try:
        return read(folder)
    except (OSError, ValueError) as err:
        raise UsageError(f"{err}. Fix or remove it to evaluate the weights without it") from None


def describe(sidecar: dict[str, Any]) -> str:
    config, report = sidecar.get("config") or {}, sidecar.get("pruning_map") or {}
    if not config or not report:
        return "dense"
    return f"pruned: {config.get('method')} {config.get('pattern')}, sparsity {report.get('overall_sparsity', 0):.4f}"


class EvaluateCommand(GBLMSubcommand):
    COMMAND = CommandInfo(name="evaluate", help="Perplexity (LLM) or top-1 accuracy (ViT) of a checkpoint.")
    DESCRIPTION = (
        "Load any checkpoint (a dense model or a folder written by `prune`) and print its metric:\n"
        "perplexity over non-overlapping windows of held-out text for LLMs, top-1 accuracy for ViTs."
    )
    EXAMPLES = (
        "  optimum-cli gblm evaluate smollm2-gblm-50\n"
        "  optimum-cli gblm evaluate ./my-llama --eval-source wikitext2 --eval-seqlen 2048 --device cuda\n"
        "  # lm-eval tasks, pruned next to its dense base, added to the checkpoint's side-car and card\n"
        "  optimum-cli gblm evaluate smollm2-gblm-50 --tasks knowledge_probe my_task.yaml --compare ./smollm2 --record"
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser, "Checkpoint folder or Hub id")
        add_config_arguments(parser, groups=("model / loading",), exclude=PRUNE_ONLY_OPTIONS)
        default = f"the checkpoint's calibration seqlen, else {next(f.default for f in fields(GBLMConfig) if f.name == 'seqlen')}"
        add_eval_arguments(parser, "evaluation", default, flag=False)
        add_task_arguments(parser)

    def execute(self) -> None:
        args = self.args
        chosen_model(args)
        config = config_from_args(args)
        check_model_path(args.model)
        check_eval_source(args.eval_source, args.model)
        check_task_arguments(args)
        check_model_folder(args.model)
        sidecar = read_sidecar(args.model)
        if args.tasks:
            print(run_task_evaluation(args, config, describe(sidecar) != "dense", self.progress))
            return
        seqlen = sidecar["config"]["seqlen"] if sidecar else config.seqlen

        from ..pruner import GBLMPruner

        pruner = GBLMPruner.from_pretrained(args.model, config, check_memory=False)
        value = pruner.evaluate("checkpoint", **eval_kwargs(pruner, args, seqlen))
        settings = "".join(f", {k}={v}" for k, v in pruner.evaluation["checkpoint"].items())
        print(f"{pruner.adapter.metric_name}: {value:.4f} ({args.model}, {describe(sidecar)}{settings})")
