"""Data-parallel gradient pass: under `torchrun` or `accelerate launch`, every process takes a disjoint shard of the
calibration samples (sample i goes to rank i % world_size), folds its own per-sample gradients without any
communication during backward (an all-reduce there would sum gradients of different samples before the norm), and
the accumulators (l1 sums, l2 sums of squares) are summed across processes once, at the end, before any square root.
Only rank 0 writes the cache; it records the world size and the sample set, and a cache written with another one is
refused (docs/scale-out.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .accumulation import GradientAccumulation
from .cache import HINT, GradientCacheMismatch

# How the samples were spread over processes; caches without these keys were written by one process.
DISTRIBUTION_DEFAULTS = {"world_size": "1", "sample_set": "all"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the gradient pass: rank `rank` of `world_size` (1: no distribution)."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, samples: Iterable[Any]) -> Iterator[Any]:
        """This rank's samples: index i goes to rank i % world_size (deterministic, disjoint, covering)."""
        for index, sample in enumerate(samples):
            if index % self.world_size == self.rank:
                yield sample

    def sample_set(self, total: int) -> str:
        """What the cache records about which process collected which samples."""
        if not self.distributed:
            return DISTRIBUTION_DEFAULTS["sample_set"]
        return f"{total} samples, sample i on rank i % {self.world_size}"

    def metadata(self, total: int) -> dict[str, str]:
        return {"world_size": str(self.world_size), "sample_set": self.sample_set(total)}


def process_group(device: torch.device | None = None) -> ProcessGroup:
    """The running process group: an initialised `torch.distributed` one, else the one `torchrun` / `accelerate
    launch` describe in the environment (initialised here: NCCL for CUDA, gloo otherwise), else a single process."""
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return ProcessGroup()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed")
    cuda = device is not None and device.type == "cuda"
    if cuda:  # each process on its own GPU (utils.resolve_device picks cuda:LOCAL_RANK)
        torch.cuda.set_device(device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    logger.info("Joined the process group: rank %d of %d", dist.get_rank(), dist.get_world_size())
    return ProcessGroup(dist.get_rank(), dist.get_world_size())


def environment_group() -> ProcessGroup:
    """The process group that torchrun / accelerate launch describe in the environment, without joining it (for
    checks before the model is loaded)."""
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size())
    return ProcessGroup(int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1"))))


def check_cache_distribution(path: Any, meta: dict[str, str], group: ProcessGroup, total: int) -> None:
    """A distributed run (or the resumption of a partial cache) needs a cache written with the same world size and
    sample set: a partial cache cannot be resumed under another sharding, and a complete one would not be the sum
    this run computes in its order. A single process may read any complete cache (it is the sum over all samples)."""
    if not group.distributed and meta.get("complete") == "true":
        return
    expected = group.metadata(total)
    problems = [
        f"{key}: cache has {meta.get(key, default)!r}, this run has {expected[key]!r}"
        for key, default in DISTRIBUTION_DEFAULTS.items()
        if meta.get(key, default) != expected[key]
    ]
    if problems:
        raise GradientCacheMismatch(
            f"gradient cache {path} was written by another process layout (it was left untouched: {HINT}): "
            + "; ".join(problems)
        )


def check_world_size(group: ProcessGroup, total: int | None) -> None:
    """Every process needs at least one sample (an empty shard cannot be told from an empty dataloader)."""
    if group.distributed and total is not None and group.world_size > total:
        raise ValueError(
            f"the gradient pass runs on {group.world_size} processes but the calibration set has only {total} "
            f"samples: every process needs at least one; use at most {total} processes or more samples"
        )


def all_reduce_accumulation(state: GradientAccumulation, group: ProcessGroup) -> GradientAccumulation:
    """Sum the accumulators and sample counts of every process, one tensor at a time (in a fixed order, so that every
    rank issues the same collectives). NCCL reduces on the GPU: accumulators offloaded to the CPU visit it one by
    one. The l2 sums of squares are reduced before any square root is taken."""
    if not group.distributed:
        return state
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    for store in (state.l1, state.l2sq):
        for name in sorted(store):
            tensor = store[name]
            work = tensor if tensor.device == device else tensor.to(device)
            dist.all_reduce(work, op=dist.ReduceOp.SUM)
            if work is not tensor:
                tensor.copy_(work)
    count = torch.tensor([state.nsamples], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    state.nsamples = int(count.item())
    return state


def barrier(group: ProcessGroup) -> None:
    """Wait for every process (e.g. until rank 0 has written the cache)."""
    if group.distributed:
        dist.barrier()
