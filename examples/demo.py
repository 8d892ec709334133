"""`make demo`: prune the embedded SmolLM2-135M at 50% unstructured with gblm and wanda on the offline corpus,
print dense vs pruned perplexity and time, and save the gblm checkpoint to outputs/smollm2-gblm-50."""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

from optimum_gblm import GBLMConfig, GBLMPruner
from optimum_gblm.data.text import CORPUS_DESCRIPTION


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--output", default="outputs/smollm2-gblm-50")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = dict(sparsity=0.5, num_samples=args.num_samples, seqlen=args.seqlen)
    base = GBLMPruner.from_pretrained(None, GBLMConfig(method="wanda", **settings))
    dense = base.evaluate(max_windows=args.eval_windows)
    rows = {}
    for method in ("wanda", "gblm"):
        pruner = GBLMPruner(
            copy.deepcopy(base.model),
            GBLMConfig(method=method, **settings),
            tokenizer=base.tokenizer,
            model_id=base.model_id,
        )
        pruner.results["dense_perplexity"] = dense
        start = time.perf_counter()
        pruner.prune()
        seconds = time.perf_counter() - start
        rows[method] = (pruner.evaluate(max_windows=args.eval_windows), seconds)
        if method == "gblm":
            out = pruner.save_pretrained(args.output, overwrite=Path(args.output).exists())
    print(f"\nSmolLM2-135M-Instruct, 50% unstructured, {args.num_samples} x {args.seqlen} calibration tokens")
    print(f"Data: {CORPUS_DESCRIPTION}; perplexity over {args.eval_windows} windows of {args.seqlen} tokens\n")
    print(f"{'method':<8} {'perplexity':>10} {'seconds':>8}")
    print(f"{'dense':<8} {dense:>10.3f} {'-':>8}")
    for method, (ppl, seconds) in rows.items():
        print(f"{method:<8} {ppl:>10.3f} {seconds:>8.1f}")
    print(f"\nSaved the gblm checkpoint to {out} (reload: AutoModelForCausalLM.from_pretrained)")
    return {"dense": dense, **{m: r[0] for m, r in rows.items()}}


if __name__ == "__main__":
    main()
