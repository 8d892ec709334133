"""The sequential pipeline (docs/semantics.md#7-the-layer-by-layer-pass): capture the inputs of block 0, then per block accumulate input
statistics from the dense block, let the handler prune its targets, and re-run the pruned block to feed the next.

Statistics are accumulated once per input site (q/k/v share one object), from a hook on one member of the site;
the other members check at every forward that they really read the same tensor, so a wrong site declaration
fails loudly instead of giving wrong statistics.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..blocks import run_block
from ..statistics import InputStatistics
from ..targets import PruneTarget, group_by_site
from ..utils import forwards_replaced, inference_mode, move_to
from .base import Walk
from .masking import MaskPipeline
from .placement import IntermediatesStore

if TYPE_CHECKING:
    from ..adapters import ModelAdapter

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the last block's recorder once every block's arguments are recorded: the head never runs."""


def output_form(block: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> int | None:
    """How a block returns its hidden states: None for a bare tensor, else the length of the tuple it returns
    (Falcon, Bloom, MPT and many remote-code decoders read `outputs[0]`). Runs the block's forward once; a block
    whose weights are not loaded (placement="disk") runs on the meta device, which computes nothing."""
    if any(p.is_meta for p in block.parameters()):
        args, kwargs = move_to(args, torch.device("meta")), move_to(kwargs, torch.device("meta"))
    out = forward(*args, **kwargs)
    return len(out) if isinstance(out, (tuple, list)) else None


def as_output(states: torch.Tensor, form: int | None) -> Any:
    """`states` in the form a block returns its hidden states (`output_form`)."""
    return states if form is None else (states,) + (None,) * (form - 1)


def _without_cache(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A block's arguments without a key/value cache: a step that leaves `use_cache` on (a dataloader's
    `model(**batch)`) passes each block a cache object, which would grow every time the block is re-run."""
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover - a timm-only environment
        return dict(kwargs)
    kwargs = {k: None if isinstance(v, Cache) else v for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return kwargs


def capture_block_inputs(
    model: nn.Module,
    adapter: ModelAdapter,
    samples: Sequence[Any],
    store: IntermediatesStore,
    run: Callable[[Any], Any] | None = None,
) -> list[list[dict[str, Any]]]:
    """Store the hidden states entering block 0 per sample; return the keyword arguments every block receives, per
    block and per sample (`kwargs[block][sample]`), from the model's own stem and loop (never re-implemented). Each
    block's forward is replaced by a recorder for the capture, so no block computes (block 0 runs once, to learn
    the form its output takes). `run(sample)` runs the model on a sample (default:
    the adapter's forward; the gradient pass uses its loss step, which accepts what its dataloader yields)."""
    run = run or (lambda sample: adapter.forward(model, sample))
    blocks = adapter.blocks(model)
    depth = len(blocks)
    captured: list[list[dict[str, Any]]] = [[] for _ in range(depth)]
    form: list[int | None] = []  # learnt from block 0 at the first sample

    def recorder(index: int, block: nn.Module) -> Callable[..., Any]:
        real = block.forward

        def record(*args: Any, **kwargs: Any) -> Any:
            if index == 0 and not form and depth > 1:
                form.append(output_form(block, real, args, kwargs))
            clean = _without_cache(kwargs)
            states = args[0] if args else clean.pop("hidden_states")
            if index == 0:
                store.put(len(captured[0]), states)
            captured[index].append({**clean, **({"__args__": args[1:]} if len(args) > 1 else {})})
            if index == depth - 1:
                raise _StopForward
            return as_output(states, form[0])

        return record

    with forwards_replaced(blocks, [recorder(i, block) for i, block in enumerate(blocks)]):
        for sample in samples:
            with contextlib.suppress(_StopForward):
                run(sample)
    if any(len(per_block) != len(samples) for per_block in captured):
        raise RuntimeError(
            f"captured inputs for {[len(c) for c in captured]} of {len(samples)} samples per block: does every block run?"
        )
    return captured


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and (a is b or torch.equal(a, b.to(a.device)))
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or (type(a) in (int, float, bool, str, type(None)) and a == b)


def batch_groups(shapes: list[tuple[int, ...]], kwargs: list[Any], batch_size: int) -> list[list[int]]:
    """Consecutive samples that can share one block forward: same input shape, identical keyword arguments (per
    sample: one block's, or every block's as a list; equal-length windows share their rotary embeddings and masks),
    at most `batch_size` per group."""
    groups: list[list[int]] = []
    for i, (shape, kw) in enumerate(zip(shapes, kwargs)):
        head = groups[-1][0] if groups else None
        if (
            head is not None
            and len(groups[-1]) < batch_size
            and shape == shapes[head]
            and shape[0] == 1
            and _same(kw, kwargs[head])
        ):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@contextlib.contextmanager
def observe_sites(sites: dict[str, list[PruneTarget]], stats: dict[str, InputStatistics]) -> Any:
    """Accumulate each site's statistics from its first member; every member records what it read, so `check()`
    can prove that the members of a site read one tensor."""
    seen: dict[str, dict[str, tuple]] = {site: {} for site in sites}
    handles = []

    def record(site: str, name: str, anchor: bool):
        def callback(inputs: torch.Tensor, samples: int | None = None) -> None:
            seen[site][name] = (inputs.data_ptr(), tuple(inputs.shape), inputs.dtype)
            if anchor:
                if samples is None:
                    stats[site].add_batch(inputs)
                else:  # rows not laid out per sample (routed experts): the observer counts the samples
                    stats[site].add_batch(inputs, samples)

        return callback

    def check() -> None:
        for site, by_member in seen.items():
            if len(set(by_member.values())) > 1:
                raise RuntimeError(
                    f"the targets {sorted(by_member)} are declared to share the input site {site!r}, but they read "
                    "different tensors: fix the adapter's input-site declaration"
                )
            by_member.clear()

    try:
        for site, members in sites.items():
            for position, target in enumerate(members):
                handles.append(target.observe_inputs(record(site, target.name, position == 0)))
        yield check
    finally:
        for handle in handles:
            handle.remove()


class SequentialPipeline(MaskPipeline):
    name = "sequential"
    description = "block by block: statistics from the dense block, prune, re-run the pruned block for the next"
    needs_data = True

    #: Accumulate statistics once per input site (True) or once per target (False: the first version's way, kept
    #: for the side-by-side benchmark of the saving).
    share_sites: bool = True

    def run(self, walk: Walk) -> None:
        model, statistic = walk.model, walk.statistic
        self.placement.prepare(model)
        blocks = walk.adapter.blocks(model)
        with inference_mode(model), IntermediatesStore(self.intermediates) as store:
            block_kwargs = capture_block_inputs(model, walk.adapter, walk.samples, store)
            per_sample = [list(by_block) for by_block in zip(*block_kwargs)]  # every block's arguments, per sample
            groups = batch_groups([store.shape(i) for i in range(len(per_sample))], per_sample, walk.batch_size)
            logger.debug("%d samples in %d block batches", len(per_sample), len(groups))
            kwargs: list[dict[str, Any]] = []  # the current block's arguments, per sample

            def forward(block: nn.Module, group: list[int]) -> torch.Tensor:
                return run_block(block, torch.cat([store.get(j) for j in group]), kwargs[group[0]])

            # The dense model's own stream, per group, when a refiner matches the dense model's states.
            dense_stream = None
            if walk.refine is not None and walk.refine_target == "model":
                dense_stream = [torch.cat([store.get(j) for j in group]) for group in groups]
            for index, block in enumerate(tqdm(blocks, desc=walk.desc, disable=not walk.progress)):
                kwargs[:] = block_kwargs[index]
                self.placement.onload(block)
                block_targets = walk.targets[index]
                if walk.refine is not None:  # the dense block's outputs, before its targets are pruned
                    dense_out = [
                        forward(block, group)
                        if dense_stream is None
                        else run_block(block, dense_stream[k], kwargs[group[0]])
                        for k, group in enumerate(groups)
                    ]
                    dense_stream = dense_out if dense_stream is not None else None
                if block_targets:
                    by_target: dict[str, InputStatistics] = {}
                    if statistic is not None:
                        by_target = self._collect(block, block_targets, statistic, groups, forward)
                    walk.handler(index, block_targets, by_target)
                    for site_stats in {id(s): s for s in by_target.values()}.values():
                        site_stats.free()
                    if walk.refine is not None:
                        inputs = [(torch.cat([store.get(j) for j in group]), kwargs[group[0]]) for group in groups]
                        walk.refine(index, block, block_targets, inputs, dense_out)
                # Re-run the (pruned) block: its outputs are the next block's inputs (none after the last block).
                for group in groups if index < len(blocks) - 1 else ():
                    out = forward(block, group)
                    for k, j in enumerate(group):
                        store.put(j, out[k : k + 1])
                self.placement.offload(block)
                logger.debug("block %d done (%d targets)", index, len(block_targets))

    def _collect(
        self,
        block: nn.Module,
        targets: list[PruneTarget],
        statistic: str,
        groups: list[list[int]],
        forward: Any,
    ) -> dict[str, InputStatistics]:
        """Run the dense block over every group with the site observers; statistics by target name."""
        device = next(block.parameters()).device
        sites = group_by_site(targets) if self.share_sites else {t.name: [t] for t in targets}
        stats = {site: InputStatistics(members[0].in_features, statistic, device) for site, members in sites.items()}
        with observe_sites(sites, stats) as check:
            for group in groups:
                forward(block, group)
                check()
        return {t.name: stats[t.input_site if self.share_sites else t.name] for t in targets}
