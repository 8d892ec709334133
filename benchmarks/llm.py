"""SmolLM2-135M benchmarks (issue 7): quality of every method, the perplexity-vs-sparsity curve, cost ratios to
Wanda, and scaling with samples, sequence length and depth. Every configuration runs in a fresh subprocess."""

from __future__ import annotations

import logging
from pathlib import Path

from .common import RESULTS, fit_exponent, run_isolated, table
from .session import QualitySession

logger = logging.getLogger(__name__)

QUALITY_METHODS = [
    ("magnitude (per layer)", {"method": "magnitude", "group": "layer"}),
    ("magnitude (per row)", {"method": "magnitude", "group": "row"}),
    ("wanda", {"method": "wanda"}),
    ("sparsegpt", {"method": "sparsegpt"}),
    ("gradient (l1)", {"method": "gradient"}),
    ("gblm (l1)", {"method": "gblm", "gradient_norm": "l1"}),
    ("gblm (l2)", {"method": "gblm", "gradient_norm": "l2"}),
    ("gblm-obs", {"method": "gblm-obs"}),
]
PATTERNS = [
    ("50% unstructured", {"pattern": "unstructured", "sparsity": 0.5}),
    ("2:4", {"pattern": "2:4"}),
    ("4:8", {"pattern": "4:8"}),
]


def quality(session: QualitySession) -> tuple[str, float, dict]:
    dense = session.dense()["offline-corpus"]
    rows, at_50 = [], {}
    for label, method in QUALITY_METHODS:
        row = [label]
        for _, pattern in PATTERNS:
            if method["method"] == "magnitude" and pattern["pattern"] != "unstructured" and method["group"] == "row":
                row.append("= per layer")  # N:M selection is per row-group whatever the group setting
                continue
            ppl = session.run(**method, **pattern)["ppl"]["offline-corpus"]
            row.append(ppl)
            if pattern["pattern"] == "unstructured":
                at_50[label] = ppl
        rows.append(row)
    header = ["method", *[p for p, _ in PATTERNS]]
    return table(header, [["dense", dense, dense, dense], *rows]), dense, at_50


def curve(session: QualitySession, sparsities: list[float], at_50: dict) -> tuple[str, dict]:
    labels = {"wanda": "wanda", "sparsegpt": "sparsegpt", "gblm": "gblm (l1)"}
    data: dict[str, list[float]] = {}
    for method, label in labels.items():
        data[method] = [
            at_50[label] if s == 0.5 else session.run(method=method, sparsity=s)["ppl"]["offline-corpus"]
            for s in sparsities
        ]
    rows = [[f"{s:.0%}", *[data[m][i] for m in data]] for i, s in enumerate(sparsities)]
    return table(["sparsity", *data], rows), data


def plot_curve(sparsities: list[float], data: dict, dense: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, values in data.items():
        ax.plot([s * 100 for s in sparsities], values, marker="o", label=method)
    ax.axhline(dense, color="grey", linestyle="--", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("unstructured sparsity (%)")
    ax.set_ylabel("perplexity (held-out offline corpus)")
    ax.set_title("SmolLM2-135M: perplexity vs sparsity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cost(size: dict) -> str:
    """Full pipeline (gradient pass included, no cache), no evaluation; ratios to Wanda."""
    runs = {}
    for label, method in QUALITY_METHODS:
        runs[label] = run_isolated("prune_run", {**size, **method})
    ref = runs["wanda"]
    rows = [
        [
            label,
            r["seconds"],
            r["gradients_s"],
            r["seconds"] / ref["seconds"],
            r["peak_gib"],
            r["peak_gib"] / ref["peak_gib"],
        ]
        for label, r in runs.items()
    ]
    return table(["method", "total s", "gradient pass s", "time / wanda", "peak GiB", "peak / wanda"], rows)


def scaling(size: dict, samples: list[int], seqlens: list[int], depths: list[int]) -> str:
    lines = []
    for method in ("gblm",):
        for axis, values in (("num_samples", samples), ("seqlen", seqlens), ("depth", depths)):
            runs = [run_isolated("prune_run", {**size, "method": method, axis: v}) for v in values]
            secs = [r["seconds"] for r in runs]
            mem = [r["peak_gib"] for r in runs]
            k_t, k_m = fit_exponent(values, secs), fit_exponent(values, mem)
            cells = ", ".join(f"{v}: {s:.1f} s / {m:.2f} GiB" for v, s, m in zip(values, secs, mem))
            lines.append([method, axis, cells, f"time ~ n^{k_t:.2f}", f"memory ~ n^{k_m:.2f}"])
    return table(["method", "grows with", "measured (time / peak memory)", "fitted time", "fitted memory"], lines)


def run_all(quick: bool, work: Path) -> dict[str, str]:
    calib = {"num_samples": 16, "seqlen": 128} if quick else {"num_samples": 32, "seqlen": 256}
    windows = 8 if quick else 16
    sparsities = [0.3, 0.5, 0.7] if quick else [0.3, 0.4, 0.5, 0.6, 0.7]
    session = QualitySession(**calib, eval_windows=windows)
    setup = (
        f"Calibration: {calib['num_samples']} windows x {calib['seqlen']} tokens (seed 0), shared by every method, "
        f"one gradient pass for all gradient-based rows. Evaluation: {windows} non-overlapping windows of 256 tokens "
        "of text A."
    )
    quality_md, dense, at_50 = quality(session)
    curve_md, data = curve(session, sparsities, at_50)
    del session
    plot_curve(sparsities, data, dense, RESULTS / "ppl_vs_sparsity.png")
    sections = {
        "quality (perplexity, lower is better)": setup + "\n\n" + quality_md,
        "perplexity vs sparsity": curve_md + "\n\n![perplexity vs sparsity](benchmarks/results/ppl_vs_sparsity.png)",
    }
    return sections


def run_cost(quick: bool) -> dict[str, str]:
    """Cost and scaling, every configuration in its own process (peak memory = that run's VmHWM)."""
    calib = {"num_samples": 16, "seqlen": 128} if quick else {"num_samples": 32, "seqlen": 256}
    base, grid = {"num_samples": 8, "seqlen": 128}, ([4, 8, 16], [64, 128, 256], [10, 20, 30])
    if not quick:
        grid = ([8, 16, 32], [128, 256, 512], [10, 20, 30])
    return {
        "cost (full pipeline incl. gradient pass; no evaluation)": (
            f"{calib['num_samples']} windows x {calib['seqlen']} tokens; peak memory is the run's peak RSS, "
            "including the fp32 model (0.5 GB) and the Python/torch baseline.\n\n" + cost(calib)
        ),
        "scaling": (
            "gblm, full pipeline (gradient pass + layer-by-layer prune), one axis varied at a time from 8 samples x "
            "128 tokens x 30 blocks.\n\n" + scaling(base, *grid)
        ),
    }
