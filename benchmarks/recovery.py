"""Recovery after pruning (issue 14), SmolLM2-135M: perplexity before and after `recover` for several methods and
patterns with the same budget for every method, on text A (the standard held-out slice) and text B (the 400
extracts before it). Pruning calibration and recovery training both draw from the extracts before text B, so
neither evaluation text is ever seen. An ablation (first method and pattern, first seed) varies the subset, the
LoRA rank and distillation from the dense model.

    python -m benchmarks.recovery [--quick] [--seeds 0 1 2] [--methods wanda sparsegpt gblm-obs]
        [--patterns unstructured 2:4] [--steps 200] [--lr 5e-4] [--eval-windows N] [--ablation] [--bf16]
        [--no-checkpointing] [--ablation-only]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from optimum_gblm import GBLMConfig
from optimum_gblm.recovery import RecoveryConfig

from . import common
from .gblm_obs import write_texts
from .session import QualitySession

logger = logging.getLogger(__name__)

METHODS = {
    "wanda": {"method": "wanda"},
    "sparsegpt": {"method": "sparsegpt"},
    "gblm-obs": {"method": "gblm-obs", "allocation": "gradient", "beta": 1.0, "gamma": 0.5},
    "gblm-sp": {"method": "gblm-sp"},  # structured: removes attention heads / MLP channels
    "flap": {"method": "flap"},  # structured
}
STRUCTURED = {"gblm-sp", "flap"}
PATTERNS = {
    "unstructured": {"pattern": "unstructured", "sparsity": 0.5},
    "2:4": {"pattern": "2:4", "allocation": None},  # N:M: uniform (gblm-obs's gradient allocation is unstructured)
    "structured-30%": {"sparsity": 0.3},  # only with the structured methods: 30% of block parameters removed
}
DEFAULT = {"subset": ["norm", "masklora"], "lora_rank": 16, "distill_weight": 0.0}
ABLATION = [
    ("norm only", {"subset": ["norm"]}),
    ("masklora only", {"subset": ["masklora"]}),
    ("norm + masklora (default)", {}),
    ("norm + scalelora", {"subset": ["norm", "scalelora"]}),
    ("norm + masklora, rank 4", {"lora_rank": 4}),
    ("norm + masklora, rank 64", {"lora_rank": 64}),
    ("norm + masklora + distillation 0.5", {"distill_weight": 0.5}),
]


def pruned(session: QualitySession, seed: int, prune: dict) -> tuple[Any, dict]:
    """Prune a fresh copy and measure it."""
    config = GBLMConfig.from_dict({"seed": seed, **session.size, **prune}, strict=True)
    pruner = session._pruner(config, seed)
    gradients = session.gradients(seed) if config.needs_gradients else None
    pruner.prune(gradients=gradients, progress=False)
    return pruner, session.perplexities(pruner.model)


def recovered(
    session: QualitySession,
    seed: int,
    prune: dict,
    recovery: RecoveryConfig,
    start: tuple[Any, dict, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Prune a fresh copy and measure it, or restore `start` (a pruner, its measurement and its pruned weights, for
    several recoveries from one pruned model); recover, measure."""
    if start is None:
        pruner, before = pruned(session, seed, prune)
    else:
        pruner, before, weights = start
        pruner.model.load_state_dict(weights)
    shapes = {n: p.shape for n, p in pruner.model.named_parameters()}
    teacher = session.base.model if recovery.distill else None
    pruner.recover(recovery, teacher=teacher, progress=False)
    after = session.perplexities(pruner.model)
    structured = pruner.config.method in STRUCTURED
    zeros_kept = {n: p.shape for n, p in pruner.model.named_parameters()} == shapes and (
        structured
        or all(
            not bool(t.weight()[pruner.pruning_map.mask(t.name)].any()) for t in pruner.targets() if t.index is None
        )
    )
    result = {"before": before, "after": after, "zeros_kept": zeros_kept, **pruner.recovery}
    logger.info("%s seed %d: %s -> %s in %.0f s", prune, seed, before, after, pruner.recovery["time_s"])
    return result


def run(args: argparse.Namespace, work: Path, emit: Callable[[dict[str, str], str], None]) -> dict[str, str]:
    """The grid, then the ablation; `emit(sections, note)` is called after every run so that a run stopped early
    (or past `--deadline`) still leaves the rows it finished."""
    deadline = time.perf_counter() + 60 * args.deadline if args.deadline else float("inf")
    calib, text_b = write_texts(work)
    size = {"num_samples": 16, "seqlen": 128} if args.quick else {"num_samples": 32, "seqlen": 256}
    windows = args.eval_windows or (8 if args.quick else 16)
    session = QualitySession(
        **size, eval_windows=windows, eval_sources=("offline-corpus", text_b), calibration=calib, device=args.device
    )
    evals = list(session.streams)
    names = {evals[0]: "A", evals[1]: "B"}
    dense = session.dense()
    budget = dict(max_steps=args.steps, batch_size=args.batch_size, seqlen=args.seqlen, learning_rate=args.lr)
    budget.update(source=calib, num_windows=max(64, args.steps * args.batch_size), heldout_windows=4)
    budget.update(
        gradient_checkpointing=not args.no_checkpointing, bf16=args.bf16, logging_steps=max(1, args.steps // 5)
    )

    def config(seed: int, **overrides: Any) -> RecoveryConfig:
        return RecoveryConfig(**{**budget, **DEFAULT, **overrides, "seed": seed})

    where = f"{torch.get_num_threads()} CPU threads" if args.device == "cpu" else f"device {args.device}"
    shared = (
        " Times were taken on a shared machine (other jobs running): compare them only within this table."
        if args.shared
        else ""
    )
    sections = {
        "setup": (
            f"Pruning calibration: {size['num_samples']} windows x {size['seqlen']} tokens per seed from the extracts "
            f"before text B. Recovery, the same for every method: {args.steps} steps x {args.batch_size} windows x "
            f"{args.seqlen} tokens ({args.steps * args.batch_size * args.seqlen:,} tokens) from the same text, AdamW "
            f"lr {args.lr:g} (linear decay, 10% warm-up), subset norm + masklora rank 16 (alpha 32), no distillation, "
            f"{'no gradient checkpointing' if args.no_checkpointing else 'gradient checkpointing'}, "
            f"{'bfloat16 autocast (weights fp32)' if args.bf16 else 'fp32'}, {where}. Perplexity (fp32): {windows} windows of "
            f"256 tokens of text A (standard held-out slice) and text B. Dense: A {dense[evals[0]]:.3f}, "
            f"B {dense[evals[1]]:.3f}.{shared}"
        )
    }
    skipped: list[str] = []

    def out_of_time(what: str) -> bool:
        if time.perf_counter() < deadline:
            return False
        skipped.append(what)
        return True

    header = ["method", "pattern", "seed"] + [f"{names[e]} {w}" for e in evals for w in ("before", "after")]
    header += ["trainable share", "tokens", "recovery time (s)", "sparsity kept"]
    rows, runs = [], {}
    grid = [(p, m) for p in args.patterns for m in args.methods if (p == "structured-30%") == (m in STRUCTURED)]
    grid = [] if args.ablation_only else grid
    for pattern, method in grid:
        for seed in args.seeds:
            if out_of_time(f"{method} {pattern} seed {seed}"):
                continue
            r = recovered(session, seed, {**METHODS[method], **PATTERNS[pattern]}, config(seed))
            runs.setdefault((method, pattern), []).append(r)
            rows.append(
                [method, pattern, seed]
                + [r[k][e] for e in evals for k in ("before", "after")]
                + [f"{r['trainable_share']:.3%}", r["tokens"], f"{r['time_s']:.0f}", r["zeros_kept"]]
            )
            sections["before and after recovery"] = common.table(header, rows)
            emit(sections, "partial: the grid is still running")
    means = [
        [method, pattern, f"{len(rs)} seeds"]
        + [mean(r[k][e] for r in rs) for e in evals for k in ("before", "after")]
        + [f"{rs[0]['trainable_share']:.3%}", rs[0]["tokens"], f"{mean(r['time_s'] for r in rs):.0f}", ""]
        for (method, pattern), rs in runs.items()
    ]
    sections["before and after recovery"] = common.table(header, rows + (means if len(args.seeds) > 1 else []))
    if args.ablation or args.ablation_only:
        method, pattern, seed = args.methods[0], args.patterns[0], args.seeds[0]
        ab_header = ["variant", "trainable share"] + [f"{names[e]} after" for e in evals] + ["time (s)"]
        ab_rows, prune = [], {**METHODS[method], **PATTERNS[pattern]}
        start = None  # pruned and measured once: every variant starts from the same pruned weights
        for label, overrides in ABLATION:
            if out_of_time(f"ablation {label}"):
                continue
            if start is None:
                pruner, measured = pruned(session, seed, prune)
                start = (pruner, measured, {k: v.detach().clone() for k, v in pruner.model.state_dict().items()})
            r = recovered(session, seed, prune, config(seed, **overrides), start)
            ab_rows.append([label, f"{r['trainable_share']:.3%}"] + [r["after"][e] for e in evals] + [r["time_s"]])
            before = r["before"]
            sections[f"ablation ({method}, {pattern}, seed {seed})"] = (
                f"Before recovery: A {before[evals[0]]:.3f}, B {before[evals[1]]:.3f}. Same budget as above.\n\n"
                + common.table(ab_header, ab_rows)
            )
            emit(sections, "partial: the ablation is still running")
    if skipped:
        sections["not run (past --deadline)"] = ", ".join(skipped)
    return sections


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced calibration and evaluation (labelled)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--patterns", nargs="+", choices=list(PATTERNS), default=list(PATTERNS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--eval-windows", type=int, help="windows per evaluation text (default: 16, quick: 8)")
    parser.add_argument("--ablation", action="store_true", help="subset / rank / distillation variants")
    parser.add_argument("--ablation-only", action="store_true", help="the ablation without the grid")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--deadline", type=float, help="minutes after which no new run starts (the rest is listed)")
    parser.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast (evaluation stays fp32)")
    parser.add_argument("--no-checkpointing", action="store_true", help="keep activations (faster, more memory)")
    parser.add_argument("--shared", action="store_true", help="say in the results that the machine was shared")
    parser.add_argument(
        "--section", default="recovery", help="results file benchmarks/results/SECTION.md (runs side by side)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = "python -m benchmarks.recovery " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    reduced = " · **reduced run**" if args.quick or args.seeds != [0, 1, 2] or len(args.methods) < 3 else ""

    def emit(sections: dict[str, str], note: str = "") -> None:
        header = f"_Command: `{command.strip()}` · {common.today()} · {common.machine()}{reduced}"
        header += f" · **{note}**_" if note else "_"
        body = "\n\n".join(f"### {name}\n\n{text}" for name, text in sections.items())
        common.write_section(args.section, f"{header}\n\n{body}\n\n_suite time: {time.perf_counter() - start:.0f} s_")

    with tempfile.TemporaryDirectory(prefix="gblm-recovery-") as tmp:
        emit(run(args, Path(tmp), emit))
    common.assemble_benchmarks_md()


if __name__ == "__main__":
    main()
