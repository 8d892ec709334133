"""`optimum-cli gblm prune`: load, calibrate, (gradients), prune, (evaluate), save, (push)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optimum.commands.base import CommandInfo

from .base import (
    GBLMSubcommand,
    check_base_model,
    check_calibration_source,
    check_eval_source,
    check_gradient_cache,
    check_image_eval_source,
    check_model_folder,
    check_model_path,
    check_output_file,
    check_output_folder,
)
from .errors import UsageError, usage_error
from .options import (
    add_config_arguments,
    add_eval_arguments,
    add_hub_arguments,
    config_from_args,
    max_windows_kwargs,
    methods_epilog,
)
from .overview import model_help, prune_help
from .push import hub_kwargs, load_push_folder
from .tasks import add_task_arguments, check_task_arguments, summary_table, task_options

logger = logging.getLogger(__name__)


def add_model_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--model",
        metavar="PATH_OR_ID",
        help=model_help(),
    )


@contextlib.contextmanager
def timed(steps: dict[str, float], step: str) -> Iterator[None]:
    """Add the block's wall time to `steps[step]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        steps[step] = steps.get(step, 0.0) + time.perf_counter() - start


def eval_kwargs(pruner: Any, args: argparse.Namespace, seqlen: int) -> dict[str, Any]:
    """GBLMPruner.evaluate keyword arguments from the --eval-* options: those the model's metric takes."""
    from ..evaluation import get_metric

    metric = get_metric(pruner.adapter.metric_name)
    if metric.inputs != "text":  # image models: the text presets mean nothing there
        check_image_eval_source(args.eval_source, metric.metric_name)
    options = {
        "seqlen": args.eval_seqlen or seqlen,
        **max_windows_kwargs(args),
        "source": args.eval_source,
        "progress": not args.no_progress,
    }
    return {k: v for k, v in options.items() if k in metric.keywords}


class PruneCommand(GBLMSubcommand):
    COMMAND = CommandInfo(name="prune", help=prune_help())
    DESCRIPTION = (
        "Load a model, build the calibration set, collect per-sample gradients when the method needs them,\n"
        "prune every targeted linear layer-by-layer, optionally measure dense and pruned perplexity, and save\n"
        "a checkpoint that plain transformers / timm reload (weights, tokenizer, gblm_config.json, model card).\n"
        "The method, calibration, gradients, sparsegpt and model / loading options are GBLMConfig fields\n"
        "(same names, defaults and checks as the Python API)."
    )
    EXAMPLES = (
        "  # GBLM, 50% unstructured, on the embedded SmolLM2-135M; dense vs pruned perplexity\n"
        "  optimum-cli gblm prune --output smollm2-gblm-50 --eval\n"
        "  # Wanda 2:4 on a local model, calibrated on a text file\n"
        "  optimum-cli gblm prune --model ./my-llama --method wanda --pattern 2:4 --calibration notes.txt \\\n"
        "      --num-samples 64 --seqlen 1024 --output my-llama-wanda-2-4\n"
        "  # collect gradients once, reuse them for several sparsities\n"
        "  optimum-cli gblm gradients --output grads.safetensors\n"
        "  optimum-cli gblm prune --gradients grads.safetensors --sparsity 0.6 --output smollm2-gblm-60\n"
        "  # prune and publish\n"
        "  optimum-cli gblm prune --output out --push-to-hub my-user/smollm2-gblm-50 --private"
    )

    @classmethod
    def epilog(cls) -> str:
        return f"{methods_epilog()}\n\n{super().epilog()}"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        run = parser.add_argument_group("run")
        add_model_argument(run)
        run.add_argument(
            "--base-model",
            metavar="HUB_ID",
            help="Hub id of the base model, for the card's base_model metadata and link when --model is a local "
            "folder (default: --model when it is a Hub id; a local folder is named in plain text).",
        )
        run.add_argument("--output", required=True, metavar="DIR", help="Folder to save the pruned checkpoint to.")
        run.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output folder.")
        groups = add_config_arguments(parser)
        groups["gradients"].add_argument(
            "--gradients",
            metavar="CACHE",
            help="Gradient cache file (.safetensors): written by this run if it does not exist, reused if it "
            "matches this model, calibration set and gradient options, resumed if it is a partial one; a cache made "
            "for anything else is refused, naming what differs, and left untouched (replace it with `optimum-cli "
            "gblm gradients --output CACHE --overwrite`). Only for methods or an --allocation that use gradients "
            "(otherwise a usage error).",
        )
        add_eval_arguments(parser, "evaluation", "the calibration --seqlen", flag=True)
        add_task_arguments(parser, comparing=False)
        hub = parser.add_argument_group("hub")
        hub.add_argument("--push-to-hub", metavar="REPO_ID", help="Upload the saved folder to this Hub repo.")
        add_hub_arguments(hub)

    def execute(self) -> None:
        args = self.args
        # Everything that can be wrong with the input is checked before the model is loaded.
        config = config_from_args(args)
        output = check_output_folder(args.output, args.overwrite)
        check_model_path(args.model)
        check_calibration_source(config.calibration, args.model)
        base_model = check_base_model(args.base_model)
        gradients = check_output_file(args.gradients) if args.gradients else None
        if gradients is not None:
            check_gradients_used(config)
            for flag, why in (
                ("two_pass_gradients", "a cache holds both accumulations at once"),
                ("blockwise_gradients", "it keeps its sums on disk block by block, not in a cache"),
            ):
                if getattr(config, flag):
                    raise UsageError(
                        f"--{flag.replace('_', '-')} cannot use a --gradients cache ({why}): drop one of the two"
                    )
            check_gradient_cache(
                gradients,
                config,
                "Choose another --gradients path, or replace the cache with `optimum-cli gblm gradients --output "
                f"{args.gradients} --overwrite` and these options.",
            )
        check_route(config, gradients)
        if args.eval:
            check_eval_source(args.eval_source, args.model)
        check_task_arguments(args)  # task names, Hub access while offline, lm-eval installed
        for flag, used in (("--eval", args.eval), ("--tasks", args.tasks)):
            if used and config.placement == "disk":
                raise UsageError(
                    f"{flag} needs the whole model, which --placement disk never loads: evaluate the saved folder"
                )
        push_folder = load_push_folder(args.push_to_hub, args) if args.push_to_hub else None
        check_model_folder(args.model)

        from ..gradients import GradientCacheError
        from ..pruner import GBLMPruner
        from ..publishing.checkpoint import verify_checkpoint

        start = time.perf_counter()
        pruner = GBLMPruner.from_pretrained(args.model, config, base_model=base_model)
        steps = {"load": time.perf_counter() - start}
        if args.eval:
            with timed(steps, "eval"):
                pruner.evaluate("dense", **eval_kwargs(pruner, args, config.seqlen))
        if args.tasks:
            with timed(steps, "tasks"):
                pruner.evaluate_tasks(args.tasks, "dense", progress=self.progress, **task_options(args))
        try:  # a cache for another model is only known once the model is loaded (still before the gradient pass)
            pruner.prune(gradients=gradients, progress=self.progress)
        except GradientCacheError as err:
            raise UsageError(f"{err}. Choose another --gradients path.") from None
        if args.eval:
            with timed(steps, "eval"):
                pruner.evaluate("pruned", **eval_kwargs(pruner, args, config.seqlen))
        if args.tasks:
            with timed(steps, "tasks"):
                pruner.evaluate_tasks(args.tasks, "pruned", progress=self.progress, **task_options(args))
        with timed(steps, "save"):
            # the repo id, when pushing: the local card's snippets then name the repo it is published to
            saved = pruner.save_pretrained(output, overwrite=args.overwrite, repo_id=args.push_to_hub)
            verify_checkpoint(saved).raise_for_problems()
        url = None
        if push_folder is not None:
            with timed(steps, "push"):
                url = push_folder(saved, args.push_to_hub, **hub_kwargs(args))
        steps.update({k.removesuffix("_s"): v for k, v in pruner.timings.items()})
        order = ("load", "gradients", "prune", "eval", "tasks", "save", "push")
        steps = {k: steps[k] for k in sorted(steps, key=lambda k: order.index(k) if k in order else len(order))}
        print(summary(pruner, saved, time.perf_counter() - start, steps, args.push_to_hub, url))
        if args.tasks:
            print(summary_table(pruner.task_results))


def check_route(config: Any, gradients: Path | None, written_first: bool = False) -> None:
    """The placement and gradient options can run together (routes.py: the check `plan` and the library share);
    `written_first`: `plan`'s cache that the gradients command writes before the prune (as good as a held one)."""
    from ..routes import GradientRouteError, check_gradient_route

    try:
        check_gradient_route(config, object() if written_first else gradients)
    except GradientRouteError as err:
        raise usage_error(err) from None


def check_gradients_used(config: Any) -> None:
    """--gradients with a method and allocation that use no gradients is a usage error: it would not be read."""
    if config.needs_gradients:
        return
    from ..methods import get_method, list_methods

    users = [name for name in list_methods() if get_method(name).needs_gradients]
    raise UsageError(
        f"--gradients is not used by method {config.method!r} with allocation {config.effective_allocation!r}: "
        f"drop --gradients, or use a method that needs gradients ({', '.join(users)}) or --allocation gradient"
    )


def summary(pruner: Any, saved: Path, elapsed: float, steps: dict[str, float], repo_id: str | None, url: Any) -> str:
    """The final report on stdout: what was done, what it achieved, where it went."""
    from ..publishing.artefact import describe_artefact, parameters_line, reload_call

    cfg, pruning_map = pruner.config, pruner.pruning_map
    art = describe_artefact(pruner.sidecar())  # what was written, as its card describes it
    if art.structure is not None:
        lines = [
            f"Pruned {pruner.model_id} with {cfg.method} (structured: whole heads and MLP channels, target removed "
            f"fraction {cfg.sparsity:g}) in {elapsed:.1f} s",
            f"  removed: {pruning_map.overall_sparsity:.4f} of the block linears' weights over "
            f"{len(pruning_map.targets)} targets (checkpoint verified)",
            f"  parameters: {parameters_line(art)}",
        ]
    else:
        lines = [
            f"Pruned {pruner.model_id} with {cfg.method} ({cfg.pattern}, target sparsity {cfg.sparsity:g}) "
            f"in {elapsed:.1f} s",
            f"  achieved sparsity: {pruning_map.overall_sparsity:.4f} over {len(pruning_map.targets)} targets "
            f"(pattern {'holds' if pruning_map.pattern_ok else 'VIOLATED'}; checkpoint verified)",
        ]
    note = pruning_map.rounding_note(cfg.effective_group)
    if note:  # why 0.5991 and not 0.6
        lines.append(f"  below the target {cfg.sparsity:g} because {note}")
    metric = pruner.adapter.metric_name
    dense, pruned = pruner.results.get(f"dense_{metric}"), pruner.results.get(f"pruned_{metric}")
    if dense is not None and pruned is not None:
        settings = ", ".join(f"{k}={v}" for k, v in pruner.evaluation.get("pruned", {}).items())
        lines.append(f"  {metric}: dense {dense:.4f} -> pruned {pruned:.4f} ({settings})")
    lines.append("  time: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in steps.items()))
    lines.append(f"  output: {saved}")
    lines.append(f"  reload: {reload_call(art, str(saved))}")
    if repo_id:
        lines.append(f"  pushed to: {url or repo_id}")
    return "\n".join(lines)
