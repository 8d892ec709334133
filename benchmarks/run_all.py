"""`make bench`: regenerate BENCHMARKS.md (tables + plots under benchmarks/results/) from scratch.

python benchmarks/run_all.py            # full size (about an hour on a 2-core CPU)
python benchmarks/run_all.py --quick    # reduced sizes, labelled as such
python benchmarks/run_all.py --only gradient_pass llm gblm_obs input_sites vit
python benchmarks/run_all.py --only gpu_sparse24 gpu_cost   # `make gpu-bench`: needs CUDA
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

SUITES = (
    "gradient_pass",
    "llm",
    "llm_cost",
    "gblm_obs",
    "input_sites",
    "structured",
    "knowledge",
    "vit",
    "offload",
    "recovery",
    "cost",
    "gpu_sparse24",
    "gpu_cost",
    "nm24",
)
GPU_SUITES = {"gpu_sparse24", "gpu_cost"}  # skipped (with a warning) where CUDA is not available


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes for a fast run (labelled in the output)")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    command = (
        "python benchmarks/run_all.py"
        + (" --quick" if args.quick else "")
        + (f" --only {' '.join(args.only)}" if args.only != list(SUITES) else "")
    )
    header = f"_Command: `{command}` · {common.today()} · {common.machine()}" + (
        " · **reduced-size quick mode**_" if args.quick else "_"
    )
    with tempfile.TemporaryDirectory(prefix="gblm-bench-") as tmp:
        work = Path(tmp)
        for suite in args.only:
            start = time.perf_counter()
            if suite in GPU_SUITES:
                import importlib

                import torch

                if not torch.cuda.is_available():
                    logging.getLogger(__name__).warning("%s skipped: it needs a CUDA GPU", suite)
                    continue
                importlib.import_module(f"benchmarks.{suite}").main(["--quick"] if args.quick else [])
                continue
            if suite == "gradient_pass":
                from benchmarks.gradient_pass import run_all as run

                sections = run(args.quick)
            elif suite == "cost":
                from benchmarks.cost import run_all as run

                sections = run(args.quick)
            elif suite == "llm_cost":
                from benchmarks.llm import run_cost

                sections = run_cost(args.quick)
            elif suite == "llm":
                from benchmarks.llm import run_all as run

                sections = run(args.quick, work)
            elif suite == "input_sites":
                from benchmarks.input_sites import run_all as run

                sections = run(args.quick)
            elif suite == "offload":
                from benchmarks.offload import run_all as run

                sections = run(args.quick, work)
            elif suite == "knowledge":
                from benchmarks.knowledge import run_all as run

                sections = run(args.quick, work)
            elif suite == "gblm_obs":
                from benchmarks.gblm_obs import run_all as run

                sections = run(args.quick, work)
            elif suite == "structured":
                from benchmarks.structured import run_all as run

                sections = run(args.quick, work)
            elif suite == "nm24":  # writes its own section file, row by row
                from benchmarks.nm24 import main as nm24_main

                nm24_main(["--quick"] if args.quick else [])
                continue
            elif suite == "recovery":  # writes its own section file, stamped with its own options
                from benchmarks.recovery import main as recovery_main

                recovery_main(["--quick"] if args.quick else [])
                continue
            else:  # the ViT benchmark writes its own section file (benchmarks/results/vit_digits.md)
                from benchmarks.vit_digits import main as vit_main

                vit_main(["--quick"] if args.quick else [])
                continue
            body = "\n\n".join(f"### {name}\n\n{text}" for name, text in sections.items())
            elapsed = time.perf_counter() - start
            common.write_section(suite, f"{header}\n\n{body}\n\n_suite time: {elapsed:.0f} s_")
    common.assemble_benchmarks_md()


if __name__ == "__main__":
    main()
