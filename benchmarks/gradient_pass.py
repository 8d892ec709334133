"""Cost of the gradient pass (issue 3) on SmolLM2-135M, three strategies over the same samples, each in a fresh
process so its peak memory is its own:

- bare: forward + backward per sample with only the targeted weights requiring grad, gradients dropped
  (the floor: what any per-sample method must pay);
- collector: optimum-gblm's GradientCollector (fold into fp32 l1 accumulators in the post-accumulate hook);
- reference: the reference strategy re-created: every parameter keeps `.grad`, each per-sample gradient
  is copied to the CPU and added there.

    python -m benchmarks.gradient_pass --json '{"mode": "collector", "num_samples": 16, "seqlen": 256}'
"""

from __future__ import annotations

import time

import torch

from optimum_gblm import GBLMConfig
from optimum_gblm.adapters import get_adapter
from optimum_gblm.assets import default_model_path
from optimum_gblm.data.text import build_token_calibration
from optimum_gblm.gradients.loop import run_collection

from .common import bare_pass, peak_memory_gib, run_isolated, table, worker_main


def measure(args: dict) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(args.get("device", "cuda" if torch.cuda.is_available() else "cpu"))
    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = build_token_calibration(tokenizer, "offline-corpus", args["num_samples"], args["seqlen"], seed=0).input_ids
    adapter = get_adapter(model)
    targets = adapter.target_linears(model)
    samples = [ids[i : i + 1].to(device) for i in range(ids.shape[0])]
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    accum_gib = sum(m.weight.numel() * 4 for m in targets.values()) / 2**30
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    mode = args["mode"]
    start = time.perf_counter()
    if mode == "collector":
        run_collection(
            model, targets, samples, adapter.loss, GBLMConfig(device=device.type), total=len(samples), progress=False
        )
    elif mode == "bare":
        bare_pass(model, targets, samples, adapter.loss)
    elif mode == "reference":
        for p in model.parameters():
            p.requires_grad_(True)
        acc = {n: torch.zeros_like(p, device="cpu") for n, p in model.named_parameters()}
        for sample in samples:
            model.zero_grad()
            adapter.loss(model, sample).backward()
            for n, p in model.named_parameters():
                acc[n] += (p.grad.detach() * 100).abs().cpu()
    else:
        raise ValueError(f"unknown mode {mode!r}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "mode": mode,
        "seconds": time.perf_counter() - start,
        "peak_gib": peak_memory_gib(),
        "weights_gib": weights_gib,
        "accumulators_gib": accum_gib,
        "device": str(device),
    }


def run_all(quick: bool) -> dict[str, str]:
    size = {"num_samples": 8, "seqlen": 256} if quick else {"num_samples": 16, "seqlen": 256}
    runs = {mode: run_isolated("gradient_pass", {**size, "mode": mode}) for mode in ("bare", "collector", "reference")}
    bare, col, ref = runs["bare"], runs["collector"], runs["reference"]
    rows = [
        [mode, r["seconds"], r["seconds"] / bare["seconds"], r["peak_gib"], r["peak_gib"] / bare["peak_gib"]]
        for mode, r in runs.items()
    ]
    # Memory target: weights + accumulators + one sample's activations. The bare loop's peak is weights + one
    # sample's activations (+ the process's own baseline), so add the accumulators to it.
    budget = bare["peak_gib"] + col["accumulators_gib"]
    summary = (
        f"- collection time / bare forward+backward: **{col['seconds'] / bare['seconds']:.2f}x** (target <= 1.15x)\n"
        f"- collector peak / (bare peak + fp32 accumulators {col['accumulators_gib']:.2f} GiB): "
        f"**{col['peak_gib'] / budget:.2f}x** (target <= 1.1x)\n"
        f"- reference strategy / collector: time **{ref['seconds'] / col['seconds']:.2f}x**, peak memory "
        f"**{ref['peak_gib'] / col['peak_gib']:.2f}x**\n"
        f"- {size['num_samples']} samples x {size['seqlen']} tokens, device {col['device']}; peak memory is "
        "max RSS of the process on CPU (includes the Python/torch baseline), max allocated on CUDA"
    )
    return {
        "gradient_pass": table(["strategy", "seconds", "time / bare", "peak GiB", "peak / bare"], rows)
        + "\n\n"
        + summary
    }


def main() -> None:
    worker_main(measure)


if __name__ == "__main__":
    main()
