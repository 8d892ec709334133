"""2:4 and 4:8 on SmolLM2-135M (issue 19): dense, wanda, sparsegpt, gblm-obs (gradient selection) and
sparsegpt-recon (SparseGPT + mask-preserving block reconstruction), calibration seeds 0, 1, 2, two held-out texts
(A = the standard held-out slice, B = the 400 extracts before it; calibration draws from the extracts before B).
Rows are written to benchmarks/results/nm24.md after every run, so an interrupted run leaves a partial table.

    python -m benchmarks.nm24 [--quick] [--seeds 0 1 2] [--seeds-48 0] [--eval-windows N] [--methods ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

from . import common
from .gblm_obs import write_texts
from .session import QualitySession

logger = logging.getLogger(__name__)

METHODS: dict[str, dict[str, Any]] = {
    "wanda": {"method": "wanda"},
    "sparsegpt": {"method": "sparsegpt"},
    "gblm-obs (beta 1)": {"method": "gblm-obs", "allocation": "uniform", "beta": 1.0},
    "sparsegpt-recon": {"method": "sparsegpt-recon"},
}
BASELINE = "sparsegpt"


class Table:
    """Perplexities of one pattern: label -> seed -> {text: ppl}, prune seconds per label and seed."""

    def __init__(self, pattern: str, seeds: list[int], texts: dict[str, str]) -> None:
        self.pattern, self.seeds, self.texts = pattern, sorted(seeds), texts
        self.order = seeds  # the order the runs take
        self.ppl: dict[str, dict[int, dict[str, float]]] = {}
        self.prune_s: dict[str, dict[int, float]] = {}

    def add(self, label: str, seed: int, ppl: dict[str, float], prune_s: float) -> None:
        self.ppl.setdefault(label, {})[seed] = ppl
        self.prune_s.setdefault(label, {})[seed] = prune_s

    def render(self) -> str:
        header = ["method"] + [f"{n} seed {s}" for n in self.texts.values() for s in self.seeds]
        header += [f"{n} mean" for n in self.texts.values()] + ["prune s (mean)"]
        rows = []
        order = ["dense", *METHODS]
        for label, by_seed in sorted(self.ppl.items(), key=lambda item: order.index(item[0])):
            cells: list[Any] = [by_seed[s][t] if s in by_seed else "-" for t in self.texts for s in self.seeds]
            done = [s for s in self.seeds if s in by_seed]
            cells += [mean(by_seed[s][t] for s in done) if len(done) == len(self.seeds) else "-" for t in self.texts]
            times = self.prune_s[label]
            cells.append(mean(times.values()) if label != "dense" else "-")
            rows.append([label] + cells)
        return common.table(header, rows) + "\n\n" + "\n".join(self.verdicts())

    def verdicts(self) -> list[str]:
        base = self.ppl.get(BASELINE, {})
        lines = []
        for label, by_seed in self.ppl.items():
            if label in ("dense", BASELINE):
                continue
            for text, name in self.texts.items():
                seeds = [s for s in self.seeds if s in by_seed and s in base]
                if not seeds:
                    continue
                wins = sum(by_seed[s][text] < base[s][text] for s in seeds)
                change = mean((by_seed[s][text] / base[s][text] - 1) * 100 for s in seeds)
                every = wins == len(seeds) == len(self.seeds)
                claim = "beats SparseGPT on every seed" if every else f"better than SparseGPT on {wins}/{len(seeds)}"
                measured = "" if len(seeds) == len(self.seeds) else f" (only seeds {seeds} measured)"
                lines.append(f"- {label}, text {name}: {claim}{measured}, mean change {change:+.1f}% perplexity")
        return lines


def run(args: argparse.Namespace, work: Path, write: Any) -> None:
    calib, text_b = write_texts(work)
    size = {"num_samples": 16, "seqlen": 128} if args.quick else {"num_samples": 32, "seqlen": 256}
    windows = args.eval_windows or (10 if args.quick else 40)
    session = QualitySession(**size, eval_windows=windows, eval_sources=("offline-corpus", text_b), calibration=calib)
    texts = dict(zip(session.streams, ("A", "B")))
    setup = (
        f"Calibration: {size['num_samples']} windows x {size['seqlen']} tokens per seed from the extracts before text "
        f"B. Evaluation: {windows} windows of 256 tokens of text A (the standard held-out slice) and of text B. "
        "Settings: "
        + "; ".join(f"{label} = `{settings}`" for label, settings in METHODS.items() if label in args.methods)
        + ". Prune seconds (on a machine that may be shared: compare within one run only) exclude the gradient "
        "pass (gblm-obs's, shared by a seed's runs: "
    )
    tables = {"2:4": Table("2:4", args.seeds, texts), "4:8": Table("4:8", args.seeds_48, texts)}
    gradient_s: dict[int, float] = {}

    def render() -> dict[str, str]:
        passes = ", ".join(f"seed {s}: {t:.0f} s" for s, t in gradient_s.items()) or "none run"
        out = {"setup": setup + passes + ")."}
        out.update({p: t.render() for p, t in tables.items() if t.ppl})
        return out

    dense = session.dense()
    for table in tables.values():
        for seed in table.seeds:
            table.add("dense", seed, {t: dense[t] for t in texts}, 0.0)
    write(render())
    # SparseGPT and the new method first for every seed (the claim's pairs), then the other rows.
    first = [m for m in args.methods if m in (BASELINE, "sparsegpt-recon")]
    later = [m for m in args.methods if m not in first]
    for pattern, table in tables.items():
        for labels, seed in [(first, s) for s in table.order] + [(later, s) for s in table.order]:
            for label in labels:
                settings = METHODS[label]
                if settings["method"] == "gblm-obs" and seed not in gradient_s:
                    start = time.perf_counter()
                    session.gradients(seed)
                    gradient_s[seed] = time.perf_counter() - start
                result = session.run(seed=seed, pattern=pattern, **settings)
                table.add(label, seed, result["ppl"], result["prune_s"])
                write(render())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 x 128 calibration, 10 windows (labelled)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the 2:4 table")
    parser.add_argument("--seeds-48", nargs="*", type=int, default=[0], help="seeds of the 4:8 table")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--eval-windows", type=int, help="windows per evaluation text (default 40, quick 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = "python -m benchmarks.nm24 " + " ".join(argv if argv is not None else sys.argv[1:])
    reduced = " · **reduced run**" if args.quick or args.eval_windows else ""
    header = f"_Command: `{command.strip()}` · {common.today()} · {common.machine()}{reduced}_"
    start = time.perf_counter()

    def write(sections: dict[str, str], final: bool = False) -> None:
        body = "\n\n".join(f"### {name}\n\n{text}" for name, text in sections.items())
        status = f"_suite time: {time.perf_counter() - start:.0f} s_" if final else "_partial: run in progress_"
        common.write_section("nm24", f"{header}\n\n{body}\n\n{status}")

    with tempfile.TemporaryDirectory(prefix="gblm-nm24-") as tmp:
        last: dict[str, str] = {}

        def keep(sections: dict[str, str]) -> None:
            last.clear()
            last.update(sections)
            write(sections)

        run(args, Path(tmp), keep)
    write(last, final=True)
    common.assemble_benchmarks_md()


if __name__ == "__main__":
    main()
