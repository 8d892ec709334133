"""`optimum-cli gblm recover`: retrain a small parameter subset of a pruned checkpoint (PERP), keep its sparsity."""

from __future__ import annotations

import argparse
import logging
import typing
from dataclasses import fields
from typing import Any

from optimum.commands.base import CommandInfo

from .base import (
    PRUNE_ONLY_OPTIONS,
    GBLMSubcommand,
    add_model_arguments,
    check_eval_source,
    check_model_folder,
    check_model_path,
    check_output_folder,
    chosen_model,
)
from .errors import usage_error
from .evaluate import read_sidecar
from .options import _add_field, add_config_arguments, add_eval_arguments, config_from_args
from .prune import eval_kwargs

logger = logging.getLogger(__name__)

RECOVERY_PREFIX = "recovery_"


def add_recovery_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per `RecoveryConfig` field (same names, defaults and help as the Python API)."""
    from ..recovery import RecoveryConfig, list_recovery_subsets

    group = parser.add_argument_group("recovery (RecoveryConfig fields)")
    hints = typing.get_type_hints(RecoveryConfig)
    for f in fields(RecoveryConfig):
        _add_field(group, f, hints[f.name])
        action = group._group_actions[-1]
        action.dest = RECOVERY_PREFIX + f.name  # apart from GBLMConfig's seed / seqlen / batch_size
        if f.name == "subset":  # the registered subsets, read now: ones registered after import are offered
            action.metavar, action.choices = "SUBSET", list_recovery_subsets()


def recovery_config_from_args(args: argparse.Namespace) -> Any:
    from ..recovery import RecoveryConfig

    values = {k[len(RECOVERY_PREFIX) :]: v for k, v in vars(args).items() if k.startswith(RECOVERY_PREFIX)}
    try:
        return RecoveryConfig.from_dict(values)
    except ValueError as err:
        raise usage_error(err) from None


class RecoverCommand(GBLMSubcommand):
    COMMAND = CommandInfo(name="recover", help="Retrain a small parameter subset of a pruned model (PERP).")
    DESCRIPTION = (
        "Load a pruned checkpoint (a folder written by `prune`, or any model: its exact zeros are the mask),\n"
        "retrain a small parameter subset (--subset: every registered subset is described there) with the\n"
        "transformers Trainer, merge, and save a checkpoint in which every pruned weight is still exactly zero. The\n"
        "recovery options are RecoveryConfig fields (docs/recovery.md)."
    )
    EXAMPLES = (
        "  optimum-cli gblm recover smollm2-wanda-50 --output smollm2-wanda-50-perp --eval\n"
        "  optimum-cli gblm recover smollm2-2of4 --output out --subset norm scalelora --max-steps 200 \\\n"
        "      --distill-weight 0.5 --teacher path/to/dense --output-dir runs/perp --save-steps 50"
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser, "Pruned checkpoint folder (or any causal LM folder / Hub id)")
        parser.add_argument("--output", required=True, metavar="DIR", help="Folder to save the recovered model to.")
        parser.add_argument("--overwrite", action="store_true", help="Replace an existing --output folder.")
        add_recovery_arguments(parser)
        add_config_arguments(parser, groups=("model / loading",), exclude=PRUNE_ONLY_OPTIONS)
        add_eval_arguments(
            parser,
            "evaluation",
            "the checkpoint's calibration seqlen",
            flag=True,
            measures="perplexity before and after recovery",
        )

    def execute(self) -> None:
        args = self.args
        chosen_model(args)
        recovery = recovery_config_from_args(args)
        loading = config_from_args(args)
        check_model_path(args.model)
        check_eval_source(args.eval_source)
        check_output_folder(args.output, args.overwrite)
        from ..recovery.train import check_output_dir

        try:  # resuming with other settings than the checkpoints': refused before the model loads
            check_output_dir(recovery)
        except ValueError as err:
            raise usage_error(err) from None
        check_model_folder(args.model)
        sidecar = read_sidecar(args.model)

        from ..configuration import GBLMConfig
        from ..pruner import GBLMPruner
        from ..publishing.artefact import has_pruning_record

        config = loading
        if sidecar:
            overrides = {f.name: getattr(loading, f.name) for f in fields(GBLMConfig) if hasattr(args, f.name)}
            # how the prune walked the model does not apply here: recovery loads the whole model
            defaults = {f.name: f.default for f in fields(GBLMConfig) if f.name in PRUNE_ONLY_OPTIONS}
            config = GBLMConfig.from_dict({**sidecar["config"], **defaults, **overrides})
        # recover() continues the side-car's record; the planner has no recovery phase (its phases would be noise)
        pruner = GBLMPruner.from_pretrained(args.model, config, check_memory=False)
        evaluate = eval_kwargs(pruner, args, config.seqlen) if args.eval else False
        pruner.recover(recovery, evaluate=evaluate, progress=self.progress)
        # a model without a pruning record is saved as exactly that (the card says so), as the description promises
        recorded = has_pruning_record(pruner.pruning_map.to_dict())
        folder = pruner.save_pretrained(args.output, overwrite=args.overwrite, allow_dense=not recorded)
        after = pruner.results.get("recovered_perplexity")
        print(f"recovered model saved to {folder}" + (f" (perplexity {after:.4f})" if after is not None else ""))
