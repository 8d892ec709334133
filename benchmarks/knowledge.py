"""Knowledge retention (issue 18): the offline knowledge probe (optimum_gblm/evaluation/knowledge.py, run through
lm-eval) next to held-out perplexity on SmolLM2-135M, dense and pruned by every method at 50% unstructured and 2:4.
Does the ordering of the methods by perplexity predict their ordering by the probe?"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from optimum_gblm import GBLMConfig
from optimum_gblm.evaluation.knowledge import probe_items
from optimum_gblm.recovery import RecoveryConfig

from .common import machine, table, today, write_section
from .session import QualitySession

logger = logging.getLogger(__name__)

METHODS = ("magnitude", "wanda", "gblm", "sparsegpt", "gblm-obs")
PATTERNS = (("50% unstructured", {"pattern": "unstructured", "sparsity": 0.5}), ("2:4", {"pattern": "2:4"}))
PROBE = "knowledge_probe"
# Beyond the mask-based grid: one structured model and one recovered model (issues 13 and 14).
STRUCTURED = ("30% structured", "gblm-sp", {"method": "gblm-sp", "sparsity": 0.3})
RECOVERED = ("50% + recovery", "gblm-obs", {"method": "gblm-obs", "pattern": "unstructured", "sparsity": 0.5})


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def probe(pruner: Any, limit: int | None) -> dict[str, float]:
    label = "dense" if pruner.pruning_map is None else "pruned"
    pruner.model.eval()
    values = pruner.evaluate_tasks([PROBE], label, limit=limit, progress=False)[PROBE]
    n = pruner.task_results[label][PROBE]["samples"]
    return {"acc": values["acc"], "acc_norm": values["acc_norm"], "n": n}


def pruned(session: QualitySession, seed: int = 0, **settings: Any) -> Any:
    """A pruned copy of the session's dense model (gradients from the session's one pass per seed)."""
    config = GBLMConfig.from_dict({"seed": seed, **session.size, **settings}, strict=True)
    pruner = session._pruner(config, seed)
    pruner.prune(gradients=session.gradients(seed) if config.needs_gradients else None, progress=False)
    return pruner


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a between two score lists (pairs tied in either count as neither concordant nor discordant)."""
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    signs = [((a[i] > a[j]) - (a[i] < a[j])) * ((b[i] > b[j]) - (b[i] < b[j])) for i, j in pairs]
    return sum(signs) / len(pairs) if pairs else float("nan")


def run_all(quick: bool, work: Path | None = None) -> dict[str, str]:
    # Sized for a 2-core CPU shared by several jobs (about 50 ms per token of SmolLM2-135M when this ran); on real
    # hardware raise them (e.g. 128 x 2048 calibration, all windows, limit=None: the whole probe).
    size = {"num_samples": 4, "seqlen": 64} if quick else {"num_samples": 8, "seqlen": 128}
    windows, limit = (1, 12) if quick else (2, 40)
    session = QualitySession(**size, eval_windows=windows)
    dense_ppl = session.dense()["offline-corpus"]
    dense = probe(session.base, limit)
    rows: list[dict[str, Any]] = [{"model": "dense", "pattern": "-", "ppl": dense_ppl, **dense}]
    logger.info("dense: %s", rows[-1])
    for title, pattern in PATTERNS:
        for method in METHODS:
            pruner = pruned(session, method=method, **pattern)
            rows.append(
                {"model": method, "pattern": title, "ppl": session.perplexities(pruner.model)["offline-corpus"]}
                | probe(pruner, limit)
            )
            logger.info("%s %s: %s", method, title, rows[-1])
            del pruner
            _write_partial(rows, size, windows, quick)
    title, method, settings = STRUCTURED
    pruner = pruned(session, **settings)
    rows.append({"model": method, "pattern": title, "ppl": session.perplexities(pruner.model)["offline-corpus"]})
    rows[-1] |= probe(pruner, limit)
    _write_partial(rows, size, windows, quick)
    title, method, settings = RECOVERED
    pruner = pruned(session, **settings)
    pruner.recover(recovery_budget(quick), progress=False)
    rows.append({"model": method, "pattern": title, "ppl": session.perplexities(pruner.model)["offline-corpus"]})
    rows[-1] |= probe(pruner, limit)
    return _sections(rows, size, windows, quick)


def recovery_budget(quick: bool) -> RecoveryConfig:
    """A short recovery (norm + MaskLoRA), sized for the 2-core CPU; the recovery benchmark uses a larger one."""
    steps = 4 if quick else 40
    return RecoveryConfig(max_steps=steps, batch_size=2, seqlen=128, learning_rate=1e-3, heldout_windows=0, seed=0)


def _write_partial(rows: list[dict[str, Any]], size: dict[str, int], windows: int, quick: bool) -> None:
    """Keep the rows measured so far in benchmarks/results/knowledge.md (on a shared machine a run may be cut
    short); the finished run overwrites it with the full section."""
    command = "python benchmarks/run_all.py --only knowledge" + (" --quick" if quick else "")
    total = 3 + len(METHODS) * len(PATTERNS)
    header = f"_Command: `{command}` · {today()} · {machine()} · **partial: {len(rows)} of {total} models**_"
    body = "\n\n".join(f"### {name}\n\n{text}" for name, text in _sections(rows, size, windows, quick).items())
    write_section("knowledge", f"{header}\n\n{body}")


def _sections(rows: list[dict[str, Any]], size: dict[str, int], windows: int, quick: bool) -> dict[str, str]:
    n = rows[0]["n"]
    setup = (
        f"SmolLM2-135M (fp32, CPU). Calibration: {size['num_samples']} windows x {size['seqlen']} tokens of the "
        "offline corpus's calibration slice (seed 0), one gradient pass shared by gblm and gblm-obs; every method "
        f"at its defaults. Perplexity: the first {windows} windows of 256 tokens of the held-out slice. Probe: "
        f"`knowledge_probe` (docs/evaluation.md), its first {n} questions (lm-eval `limit`; the probe has "
        f"{len(probe_items())}), 4 titles each (chance 25%), zero-shot, scored by log-likelihood through lm-eval; "
        "acc = highest total log-likelihood, acc_norm = per byte. ± is the binomial standard error sqrt(p(1-p)/n). "
        "All sizes are small because the machine was a 2-core CPU shared with other jobs: the standard errors are "
        "large, and the orderings below are only as firm as the gaps between them. The probe is a knowledge-loss "
        f"probe, not a published benchmark. `{STRUCTURED[0]}`: gblm-sp removing 30% of the block parameters "
        f"(real removal). `{RECOVERED[0]}`: gblm-obs at 50% then recovered with norm + MaskLoRA (rank 16) for "
        f"{recovery_budget(quick).max_steps} steps x 2 windows x 128 tokens of the calibration slice (lr 1e-3), a "
        "short budget for this CPU."
    )
    header = ["model", "pattern", "perplexity", "probe acc", "probe acc_norm"]
    body = [
        [
            r["model"],
            r["pattern"],
            r["ppl"],
            f"{r['acc']:.3f} ± {binomial_se(r['acc'], r['n']):.3f}",
            f"{r['acc_norm']:.3f} ± {binomial_se(r['acc_norm'], r['n']):.3f}",
        ]
        for r in rows
    ]
    return {"setup": setup, "results": table(header, body), "orderings": _orderings(rows)}


def _orderings(rows: list[dict[str, Any]]) -> str:
    lines = []
    for title, _ in PATTERNS:
        group = [r for r in rows if r["pattern"] == title]
        if len(group) < 2:
            continue
        by_ppl = [r["model"] for r in sorted(group, key=lambda r: r["ppl"])]
        by_acc = [r["model"] for r in sorted(group, key=lambda r: -r["acc"])]
        tau = kendall_tau([-r["ppl"] for r in group], [r["acc"] for r in group])
        tau_norm = kendall_tau([-r["ppl"] for r in group], [r["acc_norm"] for r in group])
        se = max(binomial_se(r["acc"], r["n"]) for r in group)
        spread = max(r["acc"] for r in group) - min(r["acc"] for r in group)
        lines.append(
            f"- {title}: by perplexity (best first) {' > '.join(by_ppl)}; by probe acc {' > '.join(by_acc)}. "
            f"Kendall tau (perplexity vs acc) {tau:+.2f}, vs acc_norm {tau_norm:+.2f}. Probe accuracies span "
            f"{spread:.3f}, against a standard error of up to {se:.3f} per model: "
            + ("differences within about two standard errors are not resolved." if spread < 4 * se else "")
        )
    all_pruned = [r for r in rows if r["model"] != "dense"]
    if len(all_pruned) > len(METHODS):
        tau = kendall_tau([-r["ppl"] for r in all_pruned], [r["acc"] for r in all_pruned])
        lines.append(f"- All {len(all_pruned)} pruned models together: Kendall tau (perplexity vs acc) {tau:+.2f}.")
    return "\n".join(lines)
