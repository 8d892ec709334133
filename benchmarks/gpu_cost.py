"""The gradient pass and the whole pipelines on a GPU (issues 16 and 19), SmolLM2-135M at 32 x 256 calibration.

- Gradient pass: optimum-gblm's collector against a bare forward + backward loop over the same samples with only
  the targeted weights requiring grad, in fp32, under bf16 autocast (fp32 weights) and with bf16 weights;
  tokens/s and model FLOPs utilisation (MFU) against the dense matrix-product rate measured in the same run.
- Pipelines: wanda, gblm, sparsegpt and gblm-obs from `from_pretrained` to a pruned model (timings per step,
  peak GPU memory, perplexity on 40 x 256 held-out windows); wanda with the model kept on the CPU and moved to
  the GPU block by block (`placement="cpu"`) next to the default.

    python -m benchmarks.gpu_cost [--quick]        # needs CUDA
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch

from optimum_gblm import GBLMConfig, GBLMPruner
from optimum_gblm.adapters import get_adapter
from optimum_gblm.assets import default_model_path
from optimum_gblm.data.text import build_token_calibration
from optimum_gblm.evaluation import evaluation_stream, perplexity
from optimum_gblm.gradients.loop import run_collection

from . import common
from .common import bare_pass

logger = logging.getLogger(__name__)

MODES = {  # label: (weights dtype, GBLMConfig.gradient_dtype)
    "fp32": (torch.float32, "float32"),
    "bf16 autocast (fp32 weights)": (torch.float32, "bfloat16"),
    "bf16 weights": (torch.bfloat16, "bfloat16"),
}


def sync() -> None:
    torch.cuda.synchronize()


def matmul_tflops(dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def sample_flops(model: torch.nn.Module, targets: dict[str, torch.nn.Module], seqlen: int) -> float:
    """Matrix FLOPs of one sample's forward + backward with only the targets requiring grad: forward 2P, input
    gradients 2P (every matrix, down to the first block), weight gradients 2P_targets; attention scores and values
    4 T^2 d per block forward, twice that backward (full T^2, causal skipping not credited)."""
    cfg = model.config
    all_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    targeted = sum(m.weight.numel() for m in targets.values())
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * seqlen**2
    return seqlen * (4 * all_linear + 2 * targeted) + attention


def load(dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).cuda().eval()
    return model, AutoTokenizer.from_pretrained(path)


def timed_mode(weights: torch.dtype, gradient_dtype: str, num_samples: int, seqlen: int) -> tuple[dict, float]:
    """Best of two alternated runs of the bare loop and of the collector; returns (seconds by loop, sample FLOPs)."""
    model, tokenizer = load(weights)
    adapter = get_adapter(model)
    targets = adapter.target_linears(model)
    ids = build_token_calibration(tokenizer, "offline-corpus", num_samples, seqlen, seed=0).input_ids
    samples = [ids[i : i + 1].cuda() for i in range(ids.shape[0])]
    config = GBLMConfig(device="cuda", gradient_dtype=gradient_dtype)
    use_autocast = gradient_dtype != "float32" and weights == torch.float32

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()

    loops = {
        "bare": lambda: bare_pass(model, targets, samples, adapter.loss, autocast),
        "collector": lambda: run_collection(
            model, targets, samples, adapter.loss, config, total=len(samples), progress=False
        ),
    }
    bare_pass(model, targets, samples[:2], adapter.loss, autocast)  # warm-up: kernels, cuBLAS handles
    times: dict[str, list[float]] = {"bare": [], "collector": []}
    for _ in range(2):  # alternated, best of two each
        for name, fn in loops.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}, sample_flops(model, targets, seqlen) * len(samples)


def gradient_rows(num_samples: int, seqlen: int) -> tuple[list[list[Any]], dict[str, float]]:
    rows, peaks = [], {"fp32": matmul_tflops(torch.float32), "bf16": matmul_tflops(torch.bfloat16)}
    for label, (weights, gradient_dtype) in MODES.items():
        times, flops = timed_mode(weights, gradient_dtype, num_samples, seqlen)
        torch.cuda.empty_cache()
        peak = peaks["fp32" if gradient_dtype == "float32" else "bf16"]
        for name, t in times.items():
            rate = flops / t / 1e12
            rows.append([label, name, t, num_samples * seqlen / t, rate, f"{rate / peak:.1%}", t / times["bare"]])
    return rows, peaks


def pipeline_rows(num_samples: int, seqlen: int, windows: int) -> list[list[Any]]:
    runs = [("wanda", {}), ("wanda", {"placement": "cpu"}), ("gblm", {}), ("sparsegpt", {}), ("gblm-obs", {})]
    rows, stream = [], None
    for method, extra in runs:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        config = GBLMConfig(method=method, device="cuda", num_samples=num_samples, seqlen=seqlen, **extra)
        pruner = GBLMPruner.from_pretrained(None, config)
        loaded = time.perf_counter() - start
        pruner.prune(progress=False)
        sync()
        total = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30
        if stream is None:
            stream = evaluation_stream(pruner.tokenizer, "offline-corpus")
        ppl = perplexity(pruner.model, stream.cuda(), 256, windows, progress=False)
        steps = {"load": loaded, **pruner.timings}
        shares = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in steps.items())
        label = method + (f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else "")
        rows.append([label, total, shares, peak, ppl])
        del pruner
    wanda = rows[0][1]
    for row in rows:
        row.insert(2, row[1] / wanda)
    return rows


def run(quick: bool) -> dict[str, str]:
    num_samples, seqlen, windows = (8, 256, 8) if quick else (32, 256, 40)
    grad, peaks = gradient_rows(num_samples, seqlen)
    pipes = pipeline_rows(num_samples, seqlen, windows)
    props = torch.cuda.get_device_properties(0)
    return {
        "setup": (
            f"{props.name}, torch {torch.__version__}; SmolLM2-135M (the embedded model), {num_samples} calibration "
            f"windows x {seqlen} tokens of the offline corpus (seed 0). Dense matrix-product rate measured in this "
            f"run (8192^3): fp32 {peaks['fp32']:.0f} TFLOP/s (TF32 off), bf16 {peaks['bf16']:.0f} TFLOP/s; MFU is "
            "the pass's matrix FLOPs (forward 2P, input gradients 2P, weight gradients 2P of the targeted weights, "
            "attention 12 T^2 d per block) over its time, against the rate of its compute dtype."
        ),
        "gradient pass": common.table(
            ["compute", "loop", "seconds", "tokens/s", "TFLOP/s", "MFU", "time / bare"], grad
        ),
        "pipelines": (
            common.table(["method", "total (s)", "total / wanda", "steps", "peak GPU GiB", "perplexity"], pipes)
            + f"\n\nTotal = from_pretrained (model load and calibration) to the pruned model; perplexity on {windows} "
            "windows of 256 tokens of the held-out slice, one seed (no quality claim from one seed)."
        ),
    }


def main(argv: list[str] | None = None) -> None:
    common.gpu_suite_main("gpu_cost", __doc__, run, argv)


if __name__ == "__main__":
    main()
