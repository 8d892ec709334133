"""What the planner advises when a run does not fit: options that fit every phase the run has, at once, and the
time estimates' rate per device kind.

Advice per phase alone misleads: block-wise gradients fit the gradient pass of LLaMA-2-7B on a CPU while pruning
still does not fit, and the disk placement that makes pruning fit cannot run a gradient pass at all (routes.py).
`fitting_set` chooses one option per phase and says, when pruning needs the disk placement, how its gradients
are collected beforehand (then without the block-wise or two-pass gradient options, which cannot write a cache).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# Effective throughput the time estimates assume, per compute device kind, in TFLOP/s.
# cuda: a datacenter GPU in bf16 at a typical utilisation.
# cpu: derived from docs/performance.md: the bare forward + backward of SmolLM2-135M over 32 x 256 tokens takes
# ~39 s on the 2-core reference CPU in fp32, 6 x 135e6 params x 8192 tokens / 39 s = 0.17 TFLOP/s.
TFLOPS = {"cuda": 150.0, "cpu": 0.17}
# A CPU run planned to take longer than this gets a warning naming the cheaper calibration sizes.
SLOW_CPU_SECONDS = 30 * 60
ROUTE_GRADIENT_OPTIONS = ("on device", "gradient_checkpointing", "offload_accumulators")


def device_tflops(device_type: str) -> float:
    """The stated rate of a device kind (an unknown kind is planned as a GPU)."""
    return TFLOPS.get(device_type, TFLOPS["cuda"])


def _route_gradients(option: str) -> bool:
    """Whether the gradients command (a cache, one pass, whole model) can run this gradient-phase option."""
    return all(part in ROUTE_GRADIENT_OPTIONS for part in option.split(" + "))


def fitting_set(phases: Sequence[Any], config: Any, fits: Callable[[Any], bool], gradient_phase: bool) -> str:
    """One sentence: a set of options under which every phase of the run fits (the config's own where they fit),
    or why no single-process set does."""
    chosen_prune = f"{config.placement} / {config.intermediates}"
    prunes = [p.option for p in phases if p.name == "prune" and fits(p)]
    if not prunes:
        return "no single-process option fits the prune phase"
    prune = chosen_prune if chosen_prune in prunes else prunes[0]
    if not (config.needs_gradients and (gradient_phase or prune.startswith("disk"))):
        return f"every phase fits with placement / intermediates {prune}"
    grads = [p.option for p in phases if p.name == "gradients" and fits(p)]
    if prune.startswith("disk"):  # the gradients come from a cache written first by a whole-model run
        grads = [g for g in grads if _route_gradients(g)]
        if not grads:
            return (
                f"pruning fits only with placement {prune}, which reads its gradients from a cache, and no gradient "
                "pass that writes a cache (without blockwise_gradients or two_pass_gradients) fits"
            )
        return (
            f"every phase fits with the gradients collected first ({grads[0]}) into a cache, then pruned with "
            f"placement / intermediates {prune} reading that cache"
        )
    if not grads:
        return "no single-process option fits the gradients phase"
    return f"every phase fits with gradients {grads[0]} and placement / intermediates {prune}"


def slow_cpu_note(seconds: float, device_type: str, config: Any) -> str | None:
    """A warning when a CPU run is planned to take more than half an hour (the README's 128 x 2048 defaults)."""
    if device_type != "cpu" or seconds <= SLOW_CPU_SECONDS:
        return None
    return (
        f"the run is planned to take about {seconds / 3600:.1f} h on this CPU at {config.num_samples} x "
        f"{config.seqlen} calibration tokens (time grows with both): for a quick run use fewer, e.g. "
        "32 samples of 256 tokens, or a GPU"
    )
