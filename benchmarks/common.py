"""Shared benchmark helpers: a machine description, one-configuration runs in fresh subprocesses (so peak
memory is per run), fitting growth exponents, and markdown tables."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    desc = f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB RAM, torch {torch.__version__}, threads {torch.get_num_threads()}"
    if torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc


def today() -> str:
    return dt.date.today().isoformat()


def run_isolated(module: str, args: dict[str, Any], timeout: int = 3600) -> dict[str, Any]:
    """Run `python -m benchmarks.<module> --json '<args>'` in a fresh process; it prints one JSON line last."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--json", json.dumps(args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_main(measure: Any) -> None:
    """Command line of a run_isolated worker: `--json ARGS` in, one JSON line (measure's result) out."""
    import argparse
    import logging

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    ns = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(measure(json.loads(ns.json))))


def bare_pass(model: Any, targets: dict, samples: list, loss_fn: Any, autocast: Any = None) -> None:
    """The floor any per-sample gradient method pays: forward + backward per sample with only the targeted weights
    requiring grad, gradients dropped. `autocast`: a context-manager factory (mixed precision), or none."""
    import contextlib

    from optimum_gblm.utils import model_state

    autocast = autocast or contextlib.nullcontext
    with model_state(model, trainable=[m.weight for m in targets.values()]):
        for sample in samples:
            with autocast():
                loss = loss_fn(model, sample)
            loss.backward()
            for m in targets.values():
                m.weight.grad = None


def peak_memory_gib() -> float:
    """Peak memory of this process: CUDA max allocated when on GPU, else peak RSS (VmHWM)."""
    import torch

    from optimum_gblm.utils import peak_rss_gib

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**30
    return peak_rss_gib()


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x): y ~ x^k."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text.rstrip() + "\n")
    return path


INTRO = """# Benchmarks

Every number below was measured by the scripts in `benchmarks/` (`make bench`), each section stamped with the
command, date and machine that produced it. Ratios compare runs made side by side in one invocation. Quality
runs share one calibration set per seed and evaluate on held-out text that calibration never saw (the last
400 extracts of the offline Wikipedia corpus, "text A"; for gblm-obs also the 400 before them, "text B").
Perplexity follows the reference protocol: non-overlapping windows, per-window mean NLL, exp of the mean.
"""

SECTION_TITLES = {
    "gradient_pass": "Gradient pass cost (issue 3)",
    "llm": "SmolLM2-135M: quality (issue 7)",
    "llm_cost": "SmolLM2-135M: cost and scaling (issue 7)",
    "gblm_obs": "gblm-obs vs SparseGPT across calibration seeds (issue 8)",
    "input_sites": "Shared input-site statistics (issue 11)",
    "structured": "Structured pruning: FLAP, Wanda-sp, gblm-sp, block removal on SmolLM2-135M (issue 13)",
    "knowledge": "Knowledge retention: the offline probe next to perplexity (issue 18)",
    "vit_digits": "timm ViT on digits (issue 4)",
    "offload": "Offloaded pruning and the memory planner (issue 16)",
    "recovery": "Recovery after pruning (issue 14)",
    "cost": "Cost at the demo setting: gradient pass, pipelines, peak memory (issue 19)",
    "gpu_sparse24": "2:4 semi-structured kernels on a GPU (issue 19)",
    "gpu_cost": "Gradient pass and pipelines on a GPU (issues 16 and 19)",
    "nm24": "2:4 and 4:8: SparseGPT, gblm-obs and block reconstruction (issue 19)",
    "notes": "Notes",
}


def gpu_suite_main(name: str, doc: str, run: Any, argv: list[str] | None) -> None:
    """Command line of a GPU suite: `run(quick)` returns its sections, written to results/<name>.md stamped with the
    command, date and machine; without CUDA nothing is measured or written (exit 2)."""
    import argparse
    import logging
    import time

    import torch

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (labelled in the output)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        logging.getLogger(name).error("%s needs a CUDA GPU; nothing was measured or written", name)
        sys.exit(2)
    command = f"python -m benchmarks.{name} " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    sections = run(args.quick)
    stamp = f"_Command: `{command.strip()}` · {today()} · {machine()}" + (" · **reduced run**_" if args.quick else "_")
    body = "\n\n".join(f"### {title}\n\n{text}" for title, text in sections.items())
    write_section(name, f"{stamp}\n\n{body}\n\n_suite time: {time.perf_counter() - start:.0f} s_")
    assemble_benchmarks_md()


def assemble_benchmarks_md() -> Path:
    """Concatenate the stored section files (each regenerated by its own suite) into BENCHMARKS.md."""
    parts = [INTRO]
    for key, title in SECTION_TITLES.items():
        path = RESULTS / f"{key}.md"
        if path.is_file():
            parts.append(f"## {title}\n\n{path.read_text().strip()}\n")
    target = ROOT / "BENCHMARKS.md"
    target.write_text("\n".join(parts))
    return target
