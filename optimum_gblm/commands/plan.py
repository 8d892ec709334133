"""`optimum-cli gblm plan`: the memory plan of a run, from the model's config alone (no weight is loaded)."""

from __future__ import annotations

import argparse
from pathlib import Path

from optimum.commands.base import CommandInfo

from ..plan_advice import TFLOPS
from .base import GBLMSubcommand, check_model_path
from .errors import UsageError, cli_message
from .options import add_config_arguments, config_from_args
from .prune import add_model_argument, check_route


class PlanCommand(GBLMSubcommand):
    COMMAND = CommandInfo(name="plan", help="Planned peak memory and time of a run, before loading any weight.")
    DESCRIPTION = (
        "Build the model on the meta device from its config (a local folder, a cached Hub config, or a reference\n"
        "model: reference:llama-2-7b, -13b, -70b, reference:llama-3-8b, -70b) and estimate the peak device and host\n"
        "memory of the gradient pass and of pruning under every placement and intermediates option, with the time\n"
        "at the device kind's stated rate (--tflops to change it). Says whether the chosen options fit this machine\n"
        "and which set of options would fit every phase; refuses, like `prune`, options that cannot run together."
    )
    EXAMPLES = (
        "  optimum-cli gblm plan --method sparsegpt\n"
        "  optimum-cli gblm plan --model reference:llama-2-70b --method wanda --dtype bfloat16 --for-device cuda"
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        run = parser.add_argument_group("run")
        add_model_argument(run)
        run.add_argument(
            "--for-device",
            choices=("cpu", "cuda"),
            help="Plan for this kind of compute device instead of --device (e.g. a GPU run planned on a laptop).",
        )
        run.add_argument(
            "--tflops",
            type=float,
            default=None,
            help="Effective TFLOP/s assumed by the time estimates (default: a stated rate per device kind: "
            + ", ".join(f"{kind} {rate:g}" for kind, rate in TFLOPS.items())
            + "; docs/scale-out.md).",
        )
        run.add_argument(
            "--gradients",
            metavar="CACHE",
            help="The gradient cache `prune --gradients` will read. With --placement disk, a method that needs "
            "gradients reads them from it; a CACHE that does not exist yet is planned as written first by "
            "`optimum-cli gblm gradients --output CACHE`.",
        )
        add_config_arguments(parser)

    def execute(self) -> None:
        from ..planning import (
            GIB,
            MemoryPlanError,
            available_memory,
            check_plan,
            plan,
            reference_or_skeleton,
            runs_gradient_phase,
        )

        args = self.args
        config = config_from_args(args)
        # The check `prune` makes: a cache that does not exist yet is written first by the gradients command.
        to_write = args.gradients is not None and not Path(args.gradients).exists()
        check_route(config, None if to_write else (Path(args.gradients) if args.gradients else None), to_write)
        if not (args.model or "").startswith("reference:"):
            check_model_path(args.model)
        try:
            found = reference_or_skeleton(args.model, config)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if found is None:
            raise UsageError(
                f"no local config for {args.model!r}: pass a model folder, a Hub id whose config is in the local "
                "cache, or a reference model (reference:llama-2-7b)"
            )
        memory_plan = plan(found[1], found[0], config, tflops=args.tflops, device_type=args.for_device)
        name = args.model or "the embedded SmolLM2-135M"
        print(
            f"Memory plan of {name} ({config.method}, {config.num_samples} x {config.seqlen} tokens), "
            f"compute device {memory_plan.device_type}, time at {memory_plan.tflops:g} TFLOP/s (estimates):"
        )
        print(memory_plan.table())
        import torch

        if memory_plan.device_type == "cuda" and not torch.cuda.is_available():
            print("No CUDA device on this machine: whether the plan fits was not checked.")
            return
        device_free, host_free = available = available_memory(memory_plan.device_type)
        here = f"host {host_free / GIB:.2f} GiB available" + (
            "" if device_free is None else f", device {device_free / GIB:.2f} GiB free"
        )
        try:
            # with a cache written first, its gradient pass is planned too (the gradients command runs it)
            check_plan(memory_plan, config, available, runs_gradient_phase(config) or to_write)
        except MemoryPlanError as err:
            print(f"Does not fit this machine: {cli_message(err)}")
            return
        print(f"The chosen options ({memory_plan.chosen}) fit this machine ({here}).")
        if to_write:
            print(f"Route: `optimum-cli gblm gradients --output {args.gradients}` first, then this prune.")
