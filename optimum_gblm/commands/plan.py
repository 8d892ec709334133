"""`optimum-cli gblm plan`: the memory plan of a run, from the model's config alone (no weight is loaded)."""

from __future__ import annotations

import argparse

from optimum.commands.base import CommandInfo

from .base import GBLMSubcommand, check_model_path
from .errors import UsageError
from .options import add_config_arguments, config_from_args
from .prune import add_model_argument


class PlanCommand(GBLMSubcommand):
    COMMAND = CommandInfo(name="plan", help="Planned peak memory and time of a run, before loading any weight.")
    DESCRIPTION = (
        "Build the model on the meta device from its config (a local folder, a cached Hub config, or a reference\n"
        "model: reference:llama-2-7b, -13b, -70b, reference:llama-3-8b, -70b) and estimate the peak device and host\n"
        "memory of the gradient pass and of pruning under every placement and intermediates option, with the time\n"
        "at an assumed throughput. Says whether the chosen options fit this machine and which would."
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
        run.add_argument("--tflops", type=float, default=None, help="Effective TFLOP/s assumed by the time estimates.")
        add_config_arguments(parser)

    def execute(self) -> None:
        from ..planning import (
            DEFAULT_TFLOPS,
            GIB,
            MemoryPlanError,
            available_memory,
            check_plan,
            plan,
            reference_or_skeleton,
        )

        args = self.args
        config = config_from_args(args)
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
        tflops = args.tflops or DEFAULT_TFLOPS
        memory_plan = plan(found[1], found[0], config, tflops=tflops, device_type=args.for_device)
        name = args.model or "the embedded SmolLM2-135M"
        print(
            f"Memory plan of {name} ({config.method}, {config.num_samples} x {config.seqlen} tokens), "
            f"compute device {memory_plan.device_type}, time at {tflops:g} TFLOP/s (estimates):"
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
            check_plan(memory_plan, config, available)
        except MemoryPlanError as err:
            print(f"Does not fit this machine: {err}")
            return
        print(f"The chosen options ({memory_plan.chosen}) fit this machine ({here}).")
