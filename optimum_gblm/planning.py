"""Memory planner: peak device and host memory of the gradient pass and of pruning, from the model's structure on
the meta device and the pruning config (no weight is loaded), for every placement and intermediates option.

The numbers are estimates (docs/scale-out.md#the-memory-planner): weights and accumulators are counted exactly from
the parameter shapes; activations, statistics and method workspaces come from the per-block formulas below; a
fixed runtime (Python, PyTorch, transformers) is added to the host. `check_plan` refuses a run that cannot fit
before anything is loaded and names the option that would fit.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .configuration import INTERMEDIATES, PLACEMENTS, GBLMConfig
from .evaluation.metrics import find_metric
from .fields import OptionMessage, OptionNames, PerReader
from .gradients.accumulation import gradient_passes
from .methods import get_method
from .plan_advice import TFLOPS, device_tflops, fitting_set, slow_cpu_note
from .utils import DTYPES

logger = logging.getLogger(__name__)

GIB = 2**30
# Host memory of the runtime itself (interpreter, torch, transformers, a tokenizer, the loading machinery): 0.69 GiB
# after the imports and about 0.2 GiB more once a tokenizer and a config are loaded, measured on the 2-core CPU
# reference machine (docs/scale-out.md). CUDA contexts add their own, counted on the device.
RUNTIME_HOST_BYTES = int(0.9 * GIB)
# Building calibration windows from the embedded offline corpus tokenizes it: a transient of about 0.6 GiB (measured
# as above). Other sources depend on their size and are not estimated.
CALIBRATION_HOST_BYTES = {"offline-corpus": int(0.6 * GIB)}
CUDA_CONTEXT_BYTES = int(0.5 * GIB)
DEFAULT_TFLOPS = TFLOPS["cuda"]  # the time estimates' rates per device kind: plan_advice.TFLOPS

# Reference LLaMA-family shapes for the docs table (public model cards): hidden, intermediate, layers, heads,
# key-value heads, vocabulary, tied embeddings.
REFERENCE_MODELS: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "llama-2-7b": (4096, 11008, 32, 32, 32, 32000, False),
    "llama-2-13b": (5120, 13824, 40, 40, 40, 32000, False),
    "llama-2-70b": (8192, 28672, 80, 64, 8, 32000, False),
    "llama-3-8b": (4096, 14336, 32, 32, 8, 128256, False),
    "llama-3-70b": (8192, 28672, 80, 64, 8, 128256, False),
}


class MemoryPlanError(OptionMessage, ValueError):
    """The planned peak memory exceeds what is available; the message gives the numbers and what would fit, its
    options spelled per reader (`err.render(CLI)`)."""


# the options a plan's advice names
PLAN_OPTIONS = ("two_pass_gradients", "gradient_checkpointing", "blockwise_gradients", "placement", "intermediates")
SKIP_CHECK = PerReader(
    "GBLMPruner.from_pretrained(..., check_memory=False) skips this check",
    "the CLI has no option to skip this check: choose options that fit, or a machine with more memory",
)


@dataclass
class Phase:
    """Planned peak bytes of one phase (gradient pass or pruning) under one option, with its main terms."""

    name: str
    option: str
    device: int
    host: int
    seconds: float
    terms: dict[str, int] = field(default_factory=dict)

    def row(self) -> str:
        return (
            f"| {self.name} | {self.option} | {self.device / GIB:.2f} | {self.host / GIB:.2f} | {self.seconds:.0f} |"
        )


@dataclass
class ModelShape:
    """What the estimates need from a model, read from its meta-device structure."""

    params: int  # unique parameters
    block_params: int  # the largest block
    stem_params: int  # parameters outside the blocks
    blocks: int
    hidden: int
    intermediate: int
    vocab: int
    target_params: int
    targets: list[tuple[int, int]]  # (d_out, d_in) of every target of the block with the most targeted weights
    bytes_per_param: int

    @classmethod
    def of(cls, model: nn.Module, adapter: Any, config: GBLMConfig) -> ModelShape:
        unique = {id(p): p for p in model.parameters()}
        params = sum(p.numel() for p in unique.values())
        blocks = adapter.blocks(model)
        sizes = [sum(p.numel() for p in block.parameters()) for block in blocks]
        per_block = adapter.targets_by_block(model, config.targets, config.ignore)
        biggest = max(range(len(blocks)), key=lambda i: sizes[i])
        cfg = getattr(model, "config", None)
        hidden = int(getattr(cfg, "hidden_size", 0) or max(t.in_features for b in per_block for t in b))
        dtype = DTYPES[config.dtype] if config.dtype != "auto" else getattr(cfg, "dtype", None)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        dtype = dtype if isinstance(dtype, torch.dtype) else next(iter(unique.values())).dtype
        return cls(
            params=params,
            block_params=sizes[biggest],
            stem_params=params - sum(sizes),
            blocks=len(blocks),
            hidden=hidden,
            intermediate=int(getattr(cfg, "intermediate_size", 4 * hidden) or 4 * hidden),
            vocab=int(getattr(cfg, "vocab_size", 0) or 0),
            target_params=sum(t.shape[0] * t.shape[1] for b in per_block for t in b),
            targets=[t.shape for t in max(per_block, key=lambda b: sum(o * i for o, i in (t.shape for t in b)))],
            bytes_per_param=dtype.itemsize,
        )


@functools.lru_cache(maxsize=len(REFERENCE_MODELS))
def reference_skeleton(name: str) -> nn.Module:
    """A reference LLaMA-family model (REFERENCE_MODELS) on the meta device (shared: only read)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in REFERENCE_MODELS:
        raise ValueError(f"unknown reference model {name!r}: choose one of {', '.join(REFERENCE_MODELS)}")
    hidden, inter, layers, heads, kv, vocab, tied = REFERENCE_MODELS[name]
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=tied,
        dtype="bfloat16",
    )
    with torch.device("meta"):
        return LlamaForCausalLM(config).to(torch.bfloat16)


def _activations(shape: ModelShape, tokens: int, nbytes: int) -> int:
    """Tensors a decoder block saves for backward per token (norms, q/k/v, attention output, residuals, the MLP's
    gate / up / activation / product), about 10 hidden-sized and 4 intermediate-sized vectors."""
    return tokens * (10 * shape.hidden + 4 * shape.intermediate) * nbytes


def plan_gradients(shape: ModelShape, config: GBLMConfig, tflops: float, offload: bool, cpu: bool) -> Phase:
    """The per-sample gradient pass: the whole model, one sample's activations, the fp32 accumulators (`cpu`:
    device and host are one memory)."""
    nbytes = shape.bytes_per_param
    compute = max(nbytes, DTYPES[config.gradient_dtype].itemsize if config.gradient_dtype != "float32" else 4)
    weights = shape.params * nbytes
    passes = gradient_passes(config)  # two passes hold one accumulator each, one after the other
    # The block-wise pass holds one block's sums (the rest are on disk) and one block's activations.
    summed = sum(o * i for o, i in shape.targets) if config.blockwise_gradients else shape.target_params
    accumulators = summed * 4 * max(len(norms) for norms in passes)
    block = _activations(shape, config.seqlen, compute)
    # Checkpointing keeps each block's input and recomputes one block at a time in the backward.
    checkpointed = shape.blocks * config.seqlen * shape.hidden * compute + block
    acts = checkpointed if config.gradient_checkpointing else shape.blocks * block
    acts = block if config.blockwise_gradients else acts
    logits = 3 * config.seqlen * shape.vocab * 4  # fp32 logits, their softmax and gradient
    largest_grad = max(o * i for o, i in shape.targets) * 4 * 2  # one weight gradient and its fp32 fold
    terms = {"weights": weights, "accumulators": accumulators, "activations": acts + logits + largest_grad}
    device = weights + acts + logits + largest_grad + (0 if offload else accumulators)
    host = accumulators if offload else 0
    device, host = (0, device + host) if cpu else (device, host)
    twice = config.gradient_checkpointing or config.blockwise_gradients  # the forward runs twice
    flops = (8 if twice else 6) * shape.params
    seconds = len(passes) * flops * config.seqlen * config.num_samples / (tflops * 1e12)
    return Phase("gradients", gradients_option(config, offload), device, host, seconds, terms)


def gradients_option(config: GBLMConfig, offload: bool) -> str:
    """The name of a gradient-pass phase in a plan: how its activations and accumulators are kept."""
    options = ("two_pass_gradients", "gradient_checkpointing", "blockwise_gradients")
    parts = [name for name in options if getattr(config, name)]
    return " + ".join(parts + (["offload_accumulators"] if offload else [])) or "on device"


def _block_workspace(shape: ModelShape, config: GBLMConfig) -> int:
    """Statistics of one block's input sites and the method's per-target workspace, in fp32."""
    statistic = get_method(config.method).statistic
    sites = {i for _, i in shape.targets}
    if statistic == "hessian":
        stats = sum(4 * d * d for d in sites) + max(3 * 4 * i * i for _, i in shape.targets)  # H, its inverse, work
    else:
        stats = sum(4 * d for d in sites)
    worst = max(o * i for o, i in shape.targets)
    forward = config.batch_size * config.seqlen * (2 * shape.hidden + 3 * shape.intermediate) * 4
    return stats + 3 * worst * 4 + forward  # weight in fp32, score, mask; the block's forward temporaries


def plan_pruning(
    shape: ModelShape, config: GBLMConfig, placement: str, intermediates: str, tflops: float, cpu: bool
) -> Phase:
    """Pruning under one placement and intermediates option (the gradient accumulation it reads included; `cpu`:
    device and host are one memory, so the model is counted once)."""
    nbytes = shape.bytes_per_param
    model, block, stem = shape.params * nbytes, shape.block_params * nbytes, shape.stem_params * nbytes
    needs_data = get_method(config.method).statistic is not None
    states = config.num_samples * config.seqlen * shape.hidden * nbytes if needs_data else 0
    # The accumulation the selection reads (one fp32 tensor per target): the allocation's l2 sums are let go once the
    # allocation is made, at the start of pruning, where the gradient pass's larger peak already counted them.
    held = sum(o * i for o, i in shape.targets) if config.blockwise_gradients else shape.target_params  # on disk
    grads = held * 4 if config.selection_uses_gradients else 0
    work = _block_workspace(shape, config) + 2 * block  # the block and one copy (a read, a re-run's outputs)
    on_device = {"device": states, "cpu": 0, "disk": 0}[intermediates]
    on_host = {"device": 0, "cpu": states, "disk": 0}[intermediates]
    if cpu and placement != "disk":
        device, host = 0, model + grads + work + states
    elif cpu:
        device, host = 0, stem + 2 * block + grads + work + on_device + on_host
    elif placement == "memory":
        device, host = model + grads + work + on_device, model + on_host  # loaded on the host, then moved
    elif placement == "cpu":
        device, host = block + work + on_device, model + grads + on_host
    else:
        device, host = stem + block + work + on_device, stem + 2 * block + grads + on_host
    flops = 2 * 2 * shape.params * config.seqlen * config.num_samples if needs_data else 0
    if get_method(config.method).statistic == "hessian":
        flops += shape.blocks * sum(2 * o * i * i for o, i in shape.targets)
    terms = {"model": model, "intermediates": states, "gradients": grads, "workspace": work}
    return Phase("prune", f"{placement} / {intermediates}", device, host, flops / (tflops * 1e12), terms)


@dataclass
class MemoryPlan:
    phases: list[Phase]
    device_type: str
    chosen: str  # the option the config selects, "placement / intermediates"
    tflops: float = DEFAULT_TFLOPS  # the rate of the time estimates

    def table(self) -> str:
        head = "| phase | option | device GiB | host GiB | est. time s |\n|---|---|---:|---:|---:|"
        return "\n".join([head, *(p.row() for p in self.phases)])

    def phase(self, name: str, option: str) -> Phase:
        return next(p for p in self.phases if p.name == name and p.option == option)


def plan(
    model: nn.Module, adapter: Any, config: GBLMConfig, tflops: float | None = None, device_type: str | None = None
) -> MemoryPlan:
    """The gradient pass and pruning under every option, for the config's device (or `device_type`: "cuda" plans
    for a GPU on a machine without one). On the CPU, device and host are one memory: the host column holds it.
    `tflops`: the rate of the time estimates (default: the device kind's stated rate, plan_advice.TFLOPS)."""
    if device_type is None:
        device_type = "cuda" if config.device.startswith("cuda") else config.device
        device_type = ("cuda" if torch.cuda.is_available() else "cpu") if device_type == "auto" else device_type
    tflops = tflops or device_tflops(device_type)
    shape = ModelShape.of(model, adapter, config)
    cpu = device_type == "cpu"
    # The config's own gradient options, and what checkpointing and two passes would save: offered when it does not fit.
    variants = [config]  # (the block-wise pass excludes the other two options)
    if not config.gradient_checkpointing and not config.blockwise_gradients:
        variants.append(replace(config, gradient_checkpointing=True))
    if not config.two_pass_gradients and config.two_accumulations and not config.blockwise_gradients:
        variants += [replace(v, two_pass_gradients=True) for v in variants]
    if not config.blockwise_gradients and config.gradient_dtype != "float16":
        variants.append(
            replace(config, blockwise_gradients=True, gradient_checkpointing=False, two_pass_gradients=False)
        )
    phases = [plan_gradients(shape, v, tflops, offload, cpu) for v in variants for offload in (False, True)]
    phases += [plan_pruning(shape, config, p, i, tflops, cpu) for p in PLACEMENTS for i in INTERMEDIATES]
    metric = find_metric(adapter.metric_name)  # text models hold their calibration text on the host
    text = metric is not None and metric.inputs == "text"
    calibration = CALIBRATION_HOST_BYTES.get(config.calibration, 0) if text else 0
    for phase in phases:
        phase.host += RUNTIME_HOST_BYTES + calibration
        phase.device += 0 if cpu else CUDA_CONTEXT_BYTES
    return MemoryPlan(phases, device_type, f"{config.placement} / {config.intermediates}", tflops)


def available_memory(device_type: str) -> tuple[int | None, int]:
    """(free device bytes or None for the CPU, available host bytes)."""
    try:
        import psutil

        host = int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        host = _meminfo_available()
    device = None
    if device_type == "cuda" and torch.cuda.is_available():
        device = int(torch.cuda.mem_get_info()[0])
    return device, host


def _meminfo_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def runs_gradient_phase(config: GBLMConfig) -> bool:
    """Whether a prune with this config runs the gradient pass itself (a disk placement reads a cache instead)."""
    return config.needs_gradients and config.placement != "disk"


def planned_seconds(memory_plan: MemoryPlan, config: GBLMConfig, gradient_phase: bool) -> float:
    seconds = memory_plan.phase("prune", memory_plan.chosen).seconds
    if gradient_phase:
        seconds += memory_plan.phase("gradients", gradients_option(config, False)).seconds
    return seconds


def check_plan(
    memory_plan: MemoryPlan,
    config: GBLMConfig,
    available: tuple[int | None, int],
    gradient_phase: bool | None = None,
) -> None:
    """Log the phases the config runs (`gradient_phase`: whether the gradient pass is one of them, default: when
    the config runs it itself); raise `MemoryPlanError` with the numbers, the options that would fit the phase and
    a set of options that fits every phase, when one of them does not fit in what is available."""
    device_free, host_free = available
    gradient_phase = runs_gradient_phase(config) if gradient_phase is None else gradient_phase
    wanted = [memory_plan.phase("prune", f"{config.placement} / {config.intermediates}")]
    if gradient_phase:
        wanted.insert(0, memory_plan.phase("gradients", gradients_option(config, False)))

    def fits(phase: Phase) -> bool:
        return phase.host <= host_free and (device_free is None or phase.device <= device_free)

    for phase in wanted:
        logger.info(
            "Memory plan, %s (%s): device %.2f GiB, host %.2f GiB",
            phase.name,
            phase.option,
            phase.device / GIB,
            phase.host / GIB,
        )
    note = slow_cpu_note(planned_seconds(memory_plan, config, gradient_phase), memory_plan.device_type, config)
    if note:
        logger.warning("Time plan: %s", note)
    failing = [phase for phase in wanted if not fits(phase)]
    if not failing:
        return
    phase = failing[0]
    better = [p.option for p in memory_plan.phases if p.name == phase.name and fits(p)]
    have = f"host {host_free / GIB:.2f} GiB available" + (
        "" if device_free is None else f", device {device_free / GIB:.2f} GiB free"
    )
    advice = (
        f"options that would fit: {', '.join(better)}"
        if better
        else "no single-process option fits: "
        "see docs/scale-out.md (several GPUs for the gradient pass, placement='disk' for pruning)"
    )
    together = fitting_set(memory_plan.phases, config, fits, gradient_phase)
    raise MemoryPlanError(
        "check_memory",
        "the {phase} phase ({phase_option}) is planned to need device {device:.2f} GiB and host {host:.2f} GiB, but this "
        "machine has {have}; {advice}; for the whole run: {together} ({skip})",
        phase=phase.name,
        phase_option=OptionNames(phase.option, PLAN_OPTIONS),
        device=phase.device / GIB,
        host=phase.host / GIB,
        have=have,
        advice=OptionNames(advice, PLAN_OPTIONS),
        together=OptionNames(together, PLAN_OPTIONS),
        skip=SKIP_CHECK,
    )


def check_memory_plan(model: Any, config: GBLMConfig) -> MemoryPlan | None:
    """Before loading: plan from the model's structure on the meta device (a local or cached config; None when it
    cannot be known without a download) and refuse, with the numbers, a run that does not fit this machine."""
    found = reference_or_skeleton(model, config)
    if found is None:
        logger.debug("no local config for %s: memory not planned", model)
        return None
    memory_plan = plan(found[1], found[0], config)
    check_plan(memory_plan, config, available_memory(memory_plan.device_type))
    return memory_plan


def reference_or_skeleton(model: Any, config: GBLMConfig) -> tuple[Any, nn.Module] | None:
    """(adapter, meta-device model) of a reference name ("reference:llama-2-7b"), a local folder or a cached config."""
    from .adapters import get_adapter
    from .adapters.registry import model_skeleton

    if isinstance(model, str) and model.startswith("reference:"):
        skeleton = reference_skeleton(model.removeprefix("reference:"))
        return get_adapter(skeleton), skeleton
    return model_skeleton(model, config)
