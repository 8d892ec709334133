"""`make demo`: prune the embedded SmolLM2-135M at 50% unstructured with wanda, sparsegpt, gblm and gblm-obs on the
offline corpus, print dense vs pruned perplexity and the time of each step, and save the gblm-obs checkpoint.

Every method prunes its own copy of the same dense model with the same calibration windows. gblm and gblm-obs share
ONE gradient pass: it is collected once on the dense model (the l1 norm that gblm scores with and the l2 norm that
gblm-obs allocates sparsity with) and handed to both prunes as a GradientAccumulation.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import time
from pathlib import Path

from optimum_gblm import GBLMConfig, GBLMPruner
from optimum_gblm.data.text import CORPUS_DESCRIPTION
from optimum_gblm.evaluation import Evaluation

METHODS = ("wanda", "sparsegpt", "gblm", "gblm-obs")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: the embedded SmolLM2-135M).")
    parser.add_argument("--calibration", default="offline-corpus")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-source", default="offline-corpus")
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--save", default="gblm-obs", choices=METHODS, help="Method whose checkpoint is saved.")
    parser.add_argument("--output", default="outputs/smollm2-gblm-obs-50")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    settings = dict(sparsity=0.5, calibration=args.calibration, num_samples=args.num_samples, seqlen=args.seqlen)
    evaluation = dict(source=args.eval_source, max_windows=args.eval_windows)
    start = time.perf_counter()
    base = GBLMPruner.from_pretrained(args.model, GBLMConfig(method="gblm-obs", **settings))
    calibration = base.calibration_data()  # the same windows for every method
    load_s = time.perf_counter() - start
    dense = base.evaluate(**evaluation)

    # One gradient pass on the dense model, with every norm the gradient-based methods below need.
    gradients = base.collect_gradients()
    gradient_s = base.timings["gradients_s"]

    rows: dict[str, tuple[float, float]] = {}
    out = None
    for method in METHODS:
        config = GBLMConfig(method=method, **settings)
        if config.needs_gradients:
            assert set(gradients.norms) >= {config.gradient_norm}, (method, gradients.norms)
        pruner = GBLMPruner(copy.deepcopy(base.model), config, tokenizer=base.tokenizer, model_id=base.model_id)
        pruner.add_evaluation("dense", Evaluation(dense, base.evaluation["dense"]))  # measured once, for the card
        began = time.perf_counter()
        pruner.prune(calibration=calibration, gradients=gradients if config.needs_gradients else None)
        seconds = time.perf_counter() - began
        rows[method] = (pruner.evaluate(**evaluation), seconds)
        if method == args.save:
            out = pruner.save_pretrained(args.output, overwrite=Path(args.output).exists())
        del pruner
        gc.collect()  # one pruned copy at a time next to the dense model

    windows = base.evaluation["dense"]["windows"]
    print(f"\n{base.model_id}, 50% unstructured, {args.num_samples} x {args.seqlen} calibration tokens")
    corpus = args.calibration == args.eval_source == "offline-corpus"
    print(
        f"Data: {CORPUS_DESCRIPTION if corpus else f'calibration {args.calibration}, evaluation {args.eval_source}'}"
    )
    print(f"Perplexity over {windows} windows of {args.seqlen} tokens (lower is better)\n")
    print(f"{'method':<10} {'perplexity':>10} {'prune s':>8}")
    print(f"{'dense':<10} {dense:>10.3f} {'-':>8}")
    for method, (ppl, seconds) in rows.items():
        print(f"{method:<10} {ppl:>10.3f} {seconds:>8.1f}")
    shared = ", ".join(m for m in METHODS if GBLMConfig(method=m).needs_gradients)
    print(f"\nLoad + calibration {load_s:.1f} s; one gradient pass {gradient_s:.1f} s, shared by {shared}")
    print(f"Saved the {args.save} checkpoint to {out} (reload: AutoModelForCausalLM.from_pretrained)")
    return {"dense": dense, **{m: r[0] for m, r in rows.items()}, "gradient_passes": 1}


if __name__ == "__main__":
    main()
