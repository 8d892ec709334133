"""Prune a LLaMA-family model and save a checkpoint that plain transformers reloads.

python examples/prune_llama.py --model path/or/hub-id --method gblm --sparsity 0.5 --output pruned
(no --model: the embedded SmolLM2-135M and the offline corpus)
"""

from __future__ import annotations

import argparse
import logging

from optimum_gblm import GBLMConfig, GBLMPruner


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--method", default="gblm")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--pattern", default="unstructured")
    parser.add_argument("--calibration", default="offline-corpus")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-source", default="offline-corpus")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config = GBLMConfig(
        method=args.method,
        sparsity=args.sparsity,
        pattern=args.pattern,
        calibration=args.calibration,
        num_samples=args.num_samples,
        seqlen=args.seqlen,
    )
    pruner = GBLMPruner.from_pretrained(args.model, config)
    dense = pruner.evaluate(source=args.eval_source, max_windows=args.eval_windows)
    pruner.prune()
    pruned = pruner.evaluate(source=args.eval_source, max_windows=args.eval_windows)
    pruner.save_pretrained(args.output)
    print(f"perplexity dense {dense:.3f} -> pruned {pruned:.3f}; saved to {args.output}")
    return {"dense": dense, "pruned": pruned}


if __name__ == "__main__":
    main()
