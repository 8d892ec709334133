"""Shared input-site statistics: SparseGPT and gblm-obs prune time with one Hessian per input site (q/k/v share one,
gate/up share one) against one Hessian per target (the first version's way), side by side in one run.

Both modes prune the same deep copy of SmolLM2 from the same calibration set (and, for gblm-obs, the same gradient
accumulation, collected once and not timed); the runs alternate (shared, per-target, shared, per-target, ...) so a
drift of the machine hits both. The masks and weights of the two modes must be identical: the table says so.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

from benchmarks.common import table

METHODS = ("sparsegpt", "gblm-obs")


@contextlib.contextmanager
def per_target_statistics(enabled: bool) -> Iterator[None]:
    from optimum_gblm.pipelines.sequential import SequentialPipeline

    saved = SequentialPipeline.share_sites
    SequentialPipeline.share_sites = not enabled
    try:
        yield
    finally:
        SequentialPipeline.share_sites = saved


def _digest(model: torch.nn.Module, names: list[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(model.get_submodule(name).weight.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_all(quick: bool) -> dict[str, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_gblm import GBLMConfig, GBLMPruner
    from optimum_gblm.assets import default_model_path
    from optimum_gblm.data.text import build_token_calibration

    num_samples, seqlen, repeats = (16, 128, 2) if quick else (32, 256, 3)
    path = default_model_path()
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    calibration = build_token_calibration(tokenizer, "offline-corpus", num_samples, seqlen, 0)
    rows: list[list[Any]] = []
    for method in METHODS:
        config = GBLMConfig(method=method, sparsity=0.5, num_samples=num_samples, seqlen=seqlen, device="cpu")
        gradients = None
        if config.needs_gradients:
            collector = GBLMPruner(copy.deepcopy(dense), config)
            collector.calibration_data(calibration.input_ids)
            gradients = collector.collect_gradients(progress=False)
            del collector
        times: dict[bool, list[float]] = {False: [], True: []}
        digests: dict[bool, set[str]] = {False: set(), True: set()}
        sites = targets = 0
        for _ in range(repeats):
            for per_target in (False, True):
                pruner = GBLMPruner(copy.deepcopy(dense), config)
                with per_target_statistics(per_target):
                    start = time.perf_counter()
                    pruner.prune(calibration=calibration.input_ids, gradients=gradients, progress=False)
                    times[per_target].append(time.perf_counter() - start)
                names = sorted(pruner.pruning_map.targets)
                digests[per_target].add(_digest(pruner.model, names))
                targets = len(names)
                sites = len({pruner.pruning_map.targets[n].input_site for n in names})
                del pruner
        shared, separate = statistics.median(times[False]), statistics.median(times[True])
        identical = digests[False] == digests[True] and len(digests[False]) == 1
        rows.append(
            [
                method,
                f"{targets} / {sites}",
                f"{separate:.1f}",
                f"{shared:.1f}",
                f"{shared / separate:.2f}x",
                "yes" if identical else "NO",
            ]
        )
    header = [
        "method",
        "targets / input sites",
        "per-target statistics (s)",
        "shared per site (s)",
        "shared / per-target",
        "identical masks and weights",
    ]
    text = (
        f"SmolLM2-135M, 50% unstructured, calibration {num_samples} x {seqlen} tokens (offline corpus, seed 0). "
        f"Prune step only (statistics, inverse-Hessian factors, OBS updates, block re-runs), median of {repeats} "
        "alternating runs each; gblm-obs's gradient pass ran once before and is not timed.\n\n" + table(header, rows)
    )
    return {"Shared input-site statistics: SparseGPT and gblm-obs time (issue 11)": text}


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    for name, body in run_all(quick=True).items():
        print(f"### {name}\n\n{body}")
