"""Compare pruning methods on one model with one shared calibration set and one evaluation text.

python examples/compare_methods.py --methods wanda gblm sparsegpt --sparsity 0.5
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

from optimum_gblm import GBLMConfig, GBLMPruner


def compare(
    model=None,
    methods=("wanda", "gblm"),
    pattern="unstructured",
    sparsity=0.5,
    calibration="offline-corpus",
    num_samples=32,
    seqlen=256,
    eval_source="offline-corpus",
    eval_windows=16,
) -> dict[str, dict]:
    base = GBLMPruner.from_pretrained(
        model, GBLMConfig(num_samples=num_samples, seqlen=seqlen, calibration=calibration)
    )
    calib = base.calibration_data()  # shared by every method
    rows = {"dense": {"perplexity": base.evaluate(source=eval_source, max_windows=eval_windows), "seconds": 0.0}}
    gradients = None
    for method in methods:
        config = GBLMConfig(
            method=method,
            pattern=pattern,
            sparsity=sparsity,
            calibration=calibration,
            num_samples=num_samples,
            seqlen=seqlen,
        )
        pruner = GBLMPruner(copy.deepcopy(base.model), config, tokenizer=base.tokenizer, model_id=base.model_id)
        pruner.calibration_data(calib.input_ids)
        start = time.perf_counter()
        if config.needs_gradients and gradients is not None and set(gradients.norms) >= {config.gradient_norm}:
            pruner.gradients = gradients  # one gradient pass serves every gradient-based method
        pruner.prune()  # includes the gradient pass when this method is the first to need it
        seconds = time.perf_counter() - start
        gradients = pruner.gradients or gradients
        rows[method] = {
            "perplexity": pruner.evaluate(source=eval_source, max_windows=eval_windows),
            "seconds": seconds,
        }
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "gblm", "sparsegpt"])
    parser.add_argument("--pattern", default="unstructured")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--calibration", default="offline-corpus")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-source", default="offline-corpus")
    parser.add_argument("--eval-windows", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = compare(
        args.model,
        args.methods,
        args.pattern,
        args.sparsity,
        args.calibration,
        args.num_samples,
        args.seqlen,
        args.eval_source,
        args.eval_windows,
    )
    print("| method | perplexity | seconds |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['perplexity']:.3f} | {row['seconds']:.1f} |")
    return rows


if __name__ == "__main__":
    main()
