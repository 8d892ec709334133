"""One pruning run on SmolLM2-135M in this process; prints a JSON line with quality, time and peak memory.

    python -m benchmarks.prune_run --json '{"method": "gblm", "pattern": "2:4", "num_samples": 32}'

Keys: method, pattern, sparsity, group, gradient_norm, beta, gamma, allocation, num_samples, seqlen, seed,
depth (keep the first N blocks), eval (list of "offline-corpus" / file paths), eval_seqlen, eval_windows,
gradients (cache path to reuse / write), calibration (source), device.
"""

from __future__ import annotations

import time

from optimum_gblm import GBLMConfig, GBLMPruner

from .common import peak_memory_gib, worker_main


def truncate(pruner: GBLMPruner, depth: int) -> None:
    """Keep the first `depth` decoder blocks (for the depth-scaling benchmark)."""
    model = pruner.model
    model.model.layers = model.model.layers[:depth]
    model.config.num_hidden_layers = depth
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:depth]


def run(args: dict) -> dict:
    settings = {
        k: args[k]
        for k in (
            "method",
            "pattern",
            "sparsity",
            "group",
            "gradient_norm",
            "beta",
            "gamma",
            "allocation",
            "seed",
            "calibration",
            "device",
        )
        if k in args
    }
    dense = settings.get("method") == "dense"
    if dense:
        settings["method"] = "magnitude"  # any valid config: a dense run prunes nothing
    size = {"num_samples": args.get("num_samples", 32), "seqlen": args.get("seqlen", 256)}
    config = GBLMConfig.from_dict({**size, **settings}, strict=True)  # method arguments (beta) may be flat
    start = time.perf_counter()
    pruner = GBLMPruner.from_pretrained(args.get("model"), config)
    if args.get("depth"):
        truncate(pruner, args["depth"])
    load_s = time.perf_counter() - start
    results: dict = {"args": args}
    start = time.perf_counter()
    if not dense:
        gradients = None
        if config.needs_gradients:
            gradients = pruner.collect_gradients(cache_path=args.get("gradients"), progress=False)
        pruner.prune(gradients=gradients, progress=False)
        results["overall_sparsity"] = pruner.pruning_map.overall_sparsity
        results["sparsity_range"] = list(pruner.pruning_map.sparsity_range())
    results["seconds"] = time.perf_counter() - start
    results["gradients_s"] = pruner.timings.get("gradients_s", 0.0)
    results["prune_s"] = pruner.timings.get("prune_s", 0.0)
    results["load_s"] = load_s
    results["peak_gib"] = peak_memory_gib()
    results["ppl"] = {
        source: pruner.evaluate(
            source=source, seqlen=args.get("eval_seqlen", 256), max_windows=args.get("eval_windows"), progress=False
        )
        for source in args.get("eval", [])
    }
    return results


def main() -> None:
    worker_main(run)


if __name__ == "__main__":
    main()
