"""Structured pruning on SmolLM2-135M (issue 13): perplexity after removing 10/20/30/50% of the block parameters
with FLAP (adaptive and uniform), Wanda-sp, the gradient-informed gblm-sp and whole-block removal by measured
influence, on calibration seeds 0, 1, 2 and two held-out texts (A and B, as in the gblm-obs suite); then parameters,
file size and CPU speed (prefill and greedy decode) of the 30% models against the dense model, measured side by side.

Statistics, scores and gradients are computed once per seed and every level is pruned from them (the library's
`prune()` does the same steps for one level). The speed rows go through the full path instead: `GBLMPruner.prune`,
`save_pretrained`, `verify_checkpoint`, and a reload (plain transformers or `optimum_gblm.load_pruned`).
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from optimum_gblm import GBLMConfig, load_pruned, verify_checkpoint
from optimum_gblm.methods import get_method
from optimum_gblm.structured import collect_statistics, influence_order, remove_blocks, select
from optimum_gblm.structured.plan import block_shape
from optimum_gblm.structured.runner import apply_plan, count_parameters, unit_scores

from .common import table
from .gblm_obs import write_texts
from .session import QualitySession

logger = logging.getLogger(__name__)

LEVELS = (0.1, 0.2, 0.3, 0.5)
SPEED_METHODS = ("FLAP adaptive", "FLAP uniform", "gblm-sp (gradients, adaptive)")
METHODS = [  # label, method, method arguments (attention unit: whole key/value groups, the default)
    ("FLAP adaptive", "flap", {"mode": "adaptive"}),
    ("FLAP uniform", "flap", {"mode": "uniform"}),
    ("Wanda-sp (uniform)", "wanda-sp", {}),
    ("gblm-sp (gradients, adaptive)", "gblm-sp", {}),
]
BLOCKS = "block removal (influence)"
SPEED_LEVEL = 0.3


def run_all(
    quick: bool, work: Path, seeds: tuple[int, ...] = (0, 1, 2), levels: tuple[float, ...] = LEVELS
) -> dict[str, str]:
    calib, text_b = write_texts(work)
    # Sized for a shared, heavily loaded 2-core machine (one thread: several times faster there than two threads
    # fighting other jobs): a modest calibration and few evaluation windows, the same windows for every method.
    torch.set_num_threads(1)
    size = {"num_samples": 4, "seqlen": 128} if quick else {"num_samples": 16, "seqlen": 128}
    windows = 1 if quick else 3
    seeds = seeds[:1] if quick else seeds
    session = QualitySession(**size, eval_windows=windows, eval_sources=("offline-corpus", text_b), calibration=calib)
    base, adapter = session.base.model, session.base.adapter
    evals = list(session.streams)
    dense = session.dense()
    shapes = [block_shape(b) for b in adapter.blocks(base)]
    results: dict[tuple[str, float], list[dict[str, float]]] = {}
    for seed in seeds:
        ids = session.calibration(seed)
        stats, influence = collect_statistics(base, adapter, list(ids), influence=True)
        gradients = session.gradients(seed).get("l2")
        for label, name, values in METHODS:
            method = get_method(name)
            args = method.make_args(values)
            scores = unit_scores(base, adapter, method, args, stats, gradients, shapes)
            means = None
            if args.bias_compensation:
                means = [{k: s[k].channel_mean() for k in ("self_attn.o_proj", "mlp.down_proj")} for s in stats]
            for level in levels:
                model = copy.deepcopy(base)
                kept = select(shapes, scores, level, args, method.ranking)
                pruning_map = apply_plan(model, adapter, shapes, kept, means, level)
                ppl = session.perplexities(model)
                results.setdefault((label, level), []).append({**ppl, "removed": pruning_map.overall_sparsity})
                logger.info("%s %.0f%% seed %d: %s", label, level * 100, seed, ppl)
                del model
        for level in levels:
            model = copy.deepcopy(base)
            n = max(1, round(level * len(shapes)))
            remove_blocks(model, adapter, influence_order(influence)[:n])
            ppl = session.perplexities(model)
            results.setdefault((BLOCKS, level), []).append({**ppl, "removed": n / len(shapes)})
            del model
        for site_stats in stats:
            for s in site_stats.values():
                s.free()
    sections = {
        "setup": (
            f"SmolLM2-135M (fp32, CPU). Calibration: {size['num_samples']} windows x {size['seqlen']} tokens per seed "
            "from the extracts before text B; one statistics pass (dense model, every block scored on dense inputs) "
            "and one per-sample gradient pass (l2) per seed, shared by every level. Evaluation: "
            f"{windows} windows of 256 tokens of text A and of text B. 'removed' is the fraction of the blocks' linear "
            "weights removed (the budget; embeddings and norms are not counted). Attention is removed in whole "
            "key/value groups (3 query heads + 1 key/value head of SmolLM2's 9/3); every block keeps one group and 5% "
            "of its MLP channels. FLAP and gblm-sp add the compensation bias, Wanda-sp does not (as published). "
            "This suite sets torch to 1 thread (the header shows the count before it did)."
        ),
        "perplexity": _render(results, dense, evals, seeds),
        "gradient-informed vs FLAP": _verdict(results, evals, levels),
        "size and CPU speed at 30% removed": _speed(session, work, size),
    }
    return sections


def _render(results: dict, dense: dict, evals: list[str], seeds: tuple[int, ...]) -> str:
    names = {evals[0]: "A", evals[1]: "B"}
    header = ["method", "removed"] + [f"ppl {names[e]} (seeds {', '.join(map(str, seeds))})" for e in evals]
    rows = [["dense", "0%"] + [f"{dense[e]:.2f}" for e in evals]]
    for (label, level), runs in sorted(results.items(), key=lambda item: item[0][1]):
        removed = mean(r["removed"] for r in runs)
        cells = [" / ".join(f"{r[e]:.2f}" for r in runs) + f" (mean {mean(r[e] for r in runs):.2f})" for e in evals]
        rows.append([label, f"{level:.0%} (achieved {removed:.1%})", *cells])
    return table(header, rows)


def _verdict(results: dict, evals: list[str], levels: tuple[float, ...]) -> str:
    lines = []
    for level in [x for x in (0.2, 0.3) if x in levels]:
        ours = results[("gblm-sp (gradients, adaptive)", level)]
        for flap_label in ("FLAP adaptive", "FLAP uniform"):
            flap = results[(flap_label, level)]
            wins = [o[e] < f[e] for o, f in zip(ours, flap) for e in evals]
            verdict = "beats" if all(wins) else "does NOT beat"
            lines.append(
                f"- {level:.0%}: gblm-sp {verdict} {flap_label} on every seed and text "
                f"({sum(wins)} of {len(wins)} seed x text comparisons lower)."
            )
    return "\n".join(lines)


def _file_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6


def _speed(session: QualitySession, work: Path, size: dict[str, int]) -> str:
    """Prune at 30% with the full path (seed 0), save, verify, reload, and time the reloaded models side by side."""
    from optimum_gblm import GBLMPruner

    models: dict[str, Any] = {}
    info: dict[str, tuple[int, float, str]] = {}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        folder = Path(tmp) / "dense"
        session.base.model.save_pretrained(folder)
        models["dense"] = AutoModelForCausalLM.from_pretrained(folder).eval()
        info["dense"] = (count_parameters(models["dense"]), _file_mb(folder), "plain")
        for label, name, values in [m for m in METHODS if m[0] in SPEED_METHODS]:
            config = GBLMConfig(
                method=name, sparsity=SPEED_LEVEL, seed=0, gradient_norm="l2", method_args=values, device="cpu", **size
            )
            pruner = GBLMPruner(
                copy.deepcopy(session.base.model), config, tokenizer=session.base.tokenizer, model_id="SmolLM2-135M"
            )
            pruner.calibration_data(session.calibration(0))
            gradients = session.gradients(0) if config.needs_gradients else None
            pruner.prune(gradients=gradients, progress=False)
            folder = pruner.save_pretrained(Path(tmp) / name / values.get("mode", "default"))
            verify_checkpoint(folder).raise_for_problems()
            structure = pruner.pruning_map.stages[-1].settings["structure"]
            models[label] = load_pruned(folder).eval()
            info[label] = (count_parameters(models[label]), _file_mb(folder), structure["widths"])
            del pruner
        folder = Path(tmp) / "blocks"
        model = copy.deepcopy(session.base.model)
        _, influence = collect_statistics(model, session.base.adapter, list(session.calibration(0)), influence=True)
        n = round(SPEED_LEVEL * len(influence))
        remove_blocks(model, session.base.adapter, influence_order(influence)[:n])
        model.save_pretrained(folder)
        models[BLOCKS] = AutoModelForCausalLM.from_pretrained(folder).eval()
        info[BLOCKS] = (count_parameters(models[BLOCKS]), _file_mb(folder), "plain")
        timings = _time_models(models)
    dense_prefill, dense_decode = timings["dense"]
    rows = []
    for label, (params, mb, widths) in info.items():
        prefill, decode = timings[label]
        rows.append(
            [
                label,
                f"{params / 1e6:.1f} M",
                f"{mb:.0f} MB",
                widths,
                f"{prefill:.0f} ({prefill / dense_prefill:.2f}x)",
                f"{decode:.1f} ({decode / dense_decode:.2f}x)",
            ]
        )
    header = ["model", "parameters", "file", "widths", "prefill tok/s", "decode tok/s"]
    note = (
        f"\n\nSeed 0, {SPEED_LEVEL:.0%} of block parameters removed; each model saved, verified and reloaded "
        "(uniform widths and block removal: plain transformers; per-block widths: `optimum_gblm.load_pruned`). "
        f"Prefill: batch {PREFILL_BATCH} x {PREFILL_LEN} tokens, no cache; decode: greedy, batch 1, {DECODE_NEW} new "
        f"tokens after an {DECODE_PROMPT}-token prompt. fp32, {torch.get_num_threads()} threads; median of {REPS} "
        "rounds, the models interleaved in each round. Timed on a shared machine (other jobs ran at the same time): "
        "compare ratios within this table only."
    )
    return table(header, rows) + note


PREFILL_BATCH, PREFILL_LEN, DECODE_PROMPT, DECODE_NEW, REPS = 1, 256, 8, 16, 3


def _time_models(models: dict[str, Any]) -> dict[str, tuple[float, float]]:
    gen = torch.Generator().manual_seed(0)
    prefill_ids = torch.randint(0, 49152, (PREFILL_BATCH, PREFILL_LEN), generator=gen)
    prompt = torch.randint(0, 49152, (1, DECODE_PROMPT), generator=gen)
    samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in models}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            model(prefill_ids[:1, :32], use_cache=False)
        for _ in range(REPS):
            for label, model in models.items():
                start = time.perf_counter()
                model(prefill_ids, use_cache=False)
                samples[label][0].append(prefill_ids.numel() / (time.perf_counter() - start))
                start = time.perf_counter()
                out = model.generate(
                    prompt,
                    max_new_tokens=DECODE_NEW,
                    min_new_tokens=DECODE_NEW,
                    do_sample=False,
                    pad_token_id=0,
                )
                samples[label][1].append((out.shape[1] - DECODE_PROMPT) / (time.perf_counter() - start))
    return {k: (statistics.median(p), statistics.median(d)) for k, (p, d) in samples.items()}
