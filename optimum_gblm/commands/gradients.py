"""`optimum-cli gblm gradients`: collect the per-sample gradient accumulations once and cache them."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from optimum.commands.base import CommandInfo

from .base import (
    GBLMSubcommand,
    check_calibration_source,
    check_gradient_cache,
    check_model_folder,
    check_model_path,
    check_output_file,
)
from .errors import UsageError
from .options import add_config_arguments, config_from_args, non_negative_int
from .prune import add_model_argument

logger = logging.getLogger(__name__)

# Settings the gradient pass never reads (what is pruned and how, the layer pass's batching and placement), so this
# subcommand does not offer them. --method and --allocation stay: they decide which norms are collected.
NOT_GRADIENT_OPTIONS = frozenset(
    {
        "sparsity",
        "pattern",
        "group",
        "gamma",
        "allocation_clip",
        "method_args",
        "score_dtype",
        "two_pass_gradients",  # a cache holds both accumulations: one pass
        "blockwise_gradients",  # keeps its sums on disk block by block, not in a cache
        "batch_size",
        "pipeline",
        "intermediates",
    }
)


class GradientsCommand(GBLMSubcommand):
    COMMAND = CommandInfo(name="gradients", help="Collect and cache the gradients GBLM needs, without pruning.")
    DESCRIPTION = (
        "Run the per-sample gradient pass of the dense model over the calibration set and write the\n"
        "accumulations to a safetensors cache. `prune --gradients CACHE` with the same model, calibration and\n"
        "gradient options reuses it (a mismatch is refused, naming the differing fields). An interrupted run\n"
        "resumes from its last checkpoint (--checkpoint-every) when started again with the same options; an\n"
        "existing cache made with other options is refused before anything is loaded, unless --overwrite."
    )
    EXAMPLES = (
        "  optimum-cli gblm gradients --output grads.safetensors --checkpoint-every 16\n"
        "  optimum-cli gblm prune --gradients grads.safetensors --sparsity 0.5 --output smollm2-gblm-50"
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        run = parser.add_argument_group("run")
        add_model_argument(run)
        run.add_argument(
            "--output",
            required=True,
            metavar="CACHE",
            help="Gradient cache file to write (.safetensors). If it exists: a complete cache made with the same "
            "model and options is kept as is, a partial one is resumed, any other is refused (see --overwrite).",
        )
        run.add_argument(
            "--overwrite",
            action="store_true",
            help="Replace an existing --output cache (whatever made it) instead of reusing or resuming it; the "
            "file is replaced only once the new cache is written (at the first checkpoint or at the end).",
        )
        run.add_argument(
            "--checkpoint-every",
            type=non_negative_int,
            default=0,
            metavar="K",
            help="Save a partial cache every K samples, so an interrupted run resumes (default: 0, only at the end).",
        )
        add_config_arguments(parser, exclude=NOT_GRADIENT_OPTIONS)

    def execute(self) -> None:
        args = self.args
        config = config_from_args(args)
        cache = check_output_file(args.output)
        check_model_path(args.model)
        check_calibration_source(config.calibration, args.model)
        advice = "Pass --overwrite to replace it, or choose another --output."
        if not args.overwrite:
            check_gradient_cache(cache, config, advice)
        check_process_layout(cache if not args.overwrite else None, config.num_samples, advice)
        if not config.needs_gradients:
            logger.info("method %r prunes without gradients; collecting them for later runs anyway", config.method)
        check_model_folder(args.model)

        from ..gradients import GradientCacheError
        from ..gradients.distributed import process_group
        from ..pruner import GBLMPruner

        start = time.perf_counter()
        pruner = GBLMPruner.from_pretrained(args.model, config)
        try:  # a cache for another model is only known once the model is loaded (still before the gradient pass)
            state = pruner.collect_gradients(
                cache_path=cache,
                checkpoint_every=args.checkpoint_every,
                progress=self.progress,
                overwrite=args.overwrite,
            )
        except GradientCacheError as err:
            raise UsageError(f"{err}. {advice}") from None
        if not process_group().is_main:
            return  # rank 0 reports
        print(
            f"Gradients of {pruner.model_id}: {state.nsamples} samples, {len(pruner.targets())} linears, "
            f"norms {', '.join(state.norms)}, in {time.perf_counter() - start:.1f} s\n  cache: {cache}"
        )


def check_process_layout(cache: Path | None, num_samples: int, advice: str) -> None:
    """Under torchrun / accelerate launch, before the model is loaded: at least one sample per process, and an
    existing cache written with this process layout (gradients/distributed.py)."""
    from ..gradients import GradientCacheError
    from ..gradients.cache import read_metadata
    from ..gradients.distributed import check_cache_distribution, check_world_size, environment_group

    group = environment_group()
    try:
        check_world_size(group, num_samples)
        if cache is not None and cache.exists():
            check_cache_distribution(cache, read_metadata(cache), group, num_samples)
    except GradientCacheError as err:
        raise UsageError(f"{err}. {advice}") from None
    except ValueError as err:
        raise UsageError(str(err)) from None
