"""gblm-obs against the baselines (issue 8): calibration seeds 0, 1, 2; 50% unstructured and 2:4; two held-out
texts: A = the standard evaluation slice (last 400 extracts; the feasibility study tuned beta/gamma on it) and
B = the 400 extracts before it, which no tuning saw. Calibration draws from everything before B, so neither
evaluation text overlaps calibration. A control shuffles the gradient values within each matrix."""

from __future__ import annotations

import logging
from pathlib import Path
from statistics import mean

from optimum_gblm.data.text import EVAL_EXTRACTS, corpus_extracts

from .common import table
from .session import QualitySession

logger = logging.getLogger(__name__)

UNSTRUCTURED = [
    ("wanda", {"method": "wanda"}),
    ("gblm", {"method": "gblm"}),
    ("sparsegpt", {"method": "sparsegpt"}),
    ("gblm-obs: selection only", {"method": "gblm-obs", "allocation": "uniform", "beta": 1.0}),
    ("gblm-obs: allocation only", {"method": "gblm-obs", "allocation": "gradient", "beta": 0.0, "gamma": 0.5}),
    ("gblm-obs: both", {"method": "gblm-obs", "allocation": "gradient", "beta": 1.0, "gamma": 0.5}),
    (
        "control: both, shuffled gradients",
        {"method": "gblm-obs", "beta": 1.0, "gamma": 0.5, "shuffle_gradients": True},
    ),
]
NM = [
    ("wanda", {"method": "wanda"}),
    ("gblm", {"method": "gblm"}),
    ("sparsegpt", {"method": "sparsegpt"}),
    ("gblm-obs: selection only", {"method": "gblm-obs", "allocation": "uniform", "beta": 1.0}),
    (
        "control: selection, shuffled gradients",
        {"method": "gblm-obs", "allocation": "uniform", "beta": 1.0, "shuffle_gradients": True},
    ),
]


def write_texts(work: Path) -> tuple[str, str]:
    """Calibration text (all extracts before B) and evaluation text B, as files."""
    extracts = corpus_extracts()
    calib = work / "calibration-before-B.txt"
    text_b = work / "evaluation-B.txt"
    calib.write_text("\n\n".join(extracts[: -2 * EVAL_EXTRACTS]), encoding="utf-8")
    text_b.write_text("\n\n".join(extracts[-2 * EVAL_EXTRACTS : -EVAL_EXTRACTS]), encoding="utf-8")
    return str(calib), str(text_b)


def run_all(quick: bool, work: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, str]:
    calib, text_b = write_texts(work)
    size = {"num_samples": 16, "seqlen": 128} if quick else {"num_samples": 32, "seqlen": 256}
    windows = 8 if quick else 16
    session = QualitySession(**size, eval_windows=windows, eval_sources=("offline-corpus", text_b), calibration=calib)
    evals = list(session.streams)
    dense = session.dense()
    sections = {
        "setup": (
            f"Calibration: {size['num_samples']} windows x {size['seqlen']} tokens per seed from the extracts before "
            f"text B; one gradient pass per seed shared by every gradient-based row. Evaluation: {windows} windows "
            "of 256 tokens of text A (the standard held-out slice) and of text B (the 400 extracts before it)."
        )
    }
    for title, pattern, methods in (
        ("50% unstructured", {"pattern": "unstructured", "sparsity": 0.5}, UNSTRUCTURED),
        ("2:4", {"pattern": "2:4"}, NM),
    ):
        results: dict[str, list[dict]] = {label: [] for label, _ in methods}
        for seed in seeds:
            for label, method in methods:
                results[label].append(session.run(seed=seed, **pattern, **method)["ppl"])
        sections[title] = _render(results, dense, evals, seeds)
    return sections


def _render(results: dict[str, list[dict]], dense: dict, evals: list[str], seeds: tuple[int, ...]) -> str:
    names = {evals[0]: "A", evals[1]: "B"}
    header = ["method"] + [f"{names[e]} seed {s}" for e in evals for s in seeds] + [f"{names[e]} mean" for e in evals]
    rows = [["dense"] + [dense[e] for e in evals for _ in seeds] + [dense[e] for e in evals]]
    for label, runs in results.items():
        rows.append([label] + [r[e] for e in evals for r in runs] + [mean(r[e] for r in runs) for e in evals])
    verdicts = []
    base = results["sparsegpt"]
    for label, runs in results.items():
        if label == "sparsegpt":
            continue
        for e in evals:
            wins = sum(r[e] < b[e] for r, b in zip(runs, base))
            delta = mean((r[e] / b[e] - 1) * 100 for r, b in zip(runs, base))
            claim = "beats SparseGPT on every seed" if wins == len(runs) else f"better on {wins}/{len(runs)} seeds"
            verdicts.append(f"- {label}, text {names[e]}: {claim} (mean change {delta:+.1f}% perplexity)")
    return table(header, rows) + "\n\n" + "\n".join(verdicts)
