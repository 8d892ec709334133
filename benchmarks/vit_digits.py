"""Top-1 accuracy of the digits ViT (ENVIRONMENT.md) pruned with every method at 50%, 80% and 2:4.

    python benchmarks/vit_digits.py            # full: 128 labelled calibration images, all settings
    python benchmarks/vit_digits.py --quick    # 32 calibration images, 50% and 2:4 only

Trains the ViT once (cached under $OPTIMUM_GBLM_CACHE, see tests/helpers/vit_digits.py) and writes a markdown table to
benchmarks/results/vit_digits.md with the exact command, date and machine.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/helpers/vit_digits.py holds the recipe shared with the slow tests

from benchmarks.common import machine  # noqa: E402
from tests.helpers import vit_digits  # noqa: E402

logger = logging.getLogger("benchmarks.vit_digits")

# Extra rows: Wanda's image-classifier setting compares scores over the whole layer (docs/semantics.md#10-calibration-data).
LAYER_GROUP_RUNS = (("wanda", "layer"), ("gblm", "layer"))


def setting_name(pattern: str, sparsity: float) -> str:
    return pattern if pattern != "unstructured" else f"{sparsity:.0%}"


def run(quick: bool, device: str, cache: str | None) -> tuple[float, dict[tuple[str, str], float], dict[str, float]]:
    start = time.perf_counter()
    folder = vit_digits.trained_model_path(cache)
    trained = time.perf_counter() - start
    data = vit_digits.digits_data()
    num_samples = 32 if quick else 128
    settings = [s for s in vit_digits.SETTINGS if not quick or s[1] == 0.5]
    dense = vit_digits.accuracy(vit_digits.load_trained_model(cache), data.test_images, data.test_labels)
    start = time.perf_counter()
    gradients = vit_digits.dense_gradients(folder, data, num_samples, device)
    timings = {"train or load from cache": trained, "gradients (shared)": time.perf_counter() - start}
    results: dict[tuple[str, str], float] = {}
    runs = [(m, None) for m in vit_digits.METHODS] + ([] if quick else list(LAYER_GROUP_RUNS))
    for method, group in runs:
        label = method if group is None else f"{method} (group={group})"
        for pattern, sparsity in settings:
            if group is not None and pattern != "unstructured":
                continue  # N:M groups are fixed: the comparison group does not apply
            name = setting_name(pattern, sparsity)
            start = time.perf_counter()
            pruner = vit_digits.prune_digits(
                folder, data, method, pattern, sparsity, num_samples, gradients, device, group=group
            )
            timings[f"{label} {name}"] = time.perf_counter() - start
            results[(label, name)] = pruner.evaluate(images=data.test_images, labels=data.test_labels)
            logger.info("%s %s: %.4f", label, name, results[(label, name)])
    return dense, results, timings


def table(dense: float, results: dict[tuple[str, str], float]) -> str:
    columns = list(dict.fromkeys(setting for _, setting in results))
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines.append("| dense | " + " | ".join(f"{dense:.2%}" for _ in columns) + " |")
    for method in dict.fromkeys(m for m, _ in results):
        cells = [f"{results[(method, c)]:.2%}" if (method, c) in results else "n/a" for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 calibration images, 50%% and 2:4 only")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--cache", default=None, help="cache folder of the trained ViT (default: $OPTIMUM_GBLM_CACHE)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "vit_digits.md"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest for this tiny model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = "python benchmarks/vit_digits.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    start = time.perf_counter()
    dense, results, timings = run(args.quick, args.device, args.cache)
    total = time.perf_counter() - start
    recipe = vit_digits.RECIPE
    text = "\n".join(
        [
            "# Digits ViT: top-1 accuracy after pruning",
            "",
            f"A timm VisionTransformer ({vit_digits.ARCH} with {vit_digits.MODEL_ARGS}) trained on scikit-learn's "
            f"`load_digits()` ({recipe['train_size']} train / 397 test images, {recipe['epochs']} epochs, AdamW + "
            "one-cycle, seed 0), then pruned with every method: the 4 linears of each block; patch embedding and head "
            f"stay dense. Calibration: {32 if args.quick else 128} labelled training images (seed 0), shared by every "
            "method; gradients of the dense model collected once. Accuracy on the 397 test images.",
            "",
            table(dense, results),
            "",
            f"- Command: `HF_HUB_OFFLINE=1 {command.strip()}`",
            f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- Machine: {machine()}, device {args.device}",
            f"- Wall time: {total:.0f} s; per step: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
            "",
        ]
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    logger.info("\n%s\nwritten to %s", table(dense, results), output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
