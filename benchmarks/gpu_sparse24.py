"""Real speed of 2:4 sparse matrices on a GPU (issue 19): PyTorch's semi-structured sparse kernels (cuSPARSELt and
CUTLASS) against a dense `torch.nn.functional.linear`, per linear shape of SmolLM2-135M and of LLaMA-7B-sized
layers, and end to end for a SmolLM2-135M-shaped model whose block linears are all 2:4.

Weights are random with a 2:4 pattern (the two largest |w| of each group of four input columns): speed does not
depend on which weights a method keeps, only on the pattern. Every sparse product is first checked against the
dense product of the same masked weight (relative error below 1e-2 in fp16 / bf16), then both are timed with CUDA
events: warm-up, then the median of repeated runs (`triton.testing.do_bench`).

    python -m benchmarks.gpu_sparse24 [--quick]       # needs CUDA (a GPU with 2:4 sparse tensor cores: sm80+)
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from . import common

logger = logging.getLogger(__name__)

# (out_features, in_features) of each distinct linear shape.
SHAPES = {
    "SmolLM2-135M": {
        "q_proj, o_proj": (576, 576),
        "k_proj, v_proj": (192, 576),
        "gate_proj, up_proj": (1536, 576),
        "down_proj": (576, 1536),
    },
    "LLaMA-7B": {
        "q/k/v/o_proj": (4096, 4096),
        "gate_proj, up_proj": (11008, 4096),
        "down_proj": (4096, 11008),
    },
}
TOKENS = (32, 512, 4096, 16384)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
BACKENDS = ("cusparselt", "cutlass")


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """Keep the two largest |w| in every group of four consecutive input columns."""
    groups = weight.reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.abs().topk(2, dim=1).indices, True)
    return (groups * keep).reshape(weight.shape)


def to_semi_structured(weight: torch.Tensor, backend: str) -> torch.Tensor:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    return to_sparse_semi_structured(weight)


def median_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def shape_rows(quick: bool) -> list[list[Any]]:
    rows = []
    tokens = TOKENS[1:3] if quick else TOKENS
    for model, shapes in SHAPES.items():
        for label, (out_f, in_f) in shapes.items():
            for dtype_name, dtype in DTYPES.items():
                gen = torch.Generator(device="cuda").manual_seed(0)
                weight = two_four(torch.randn(out_f, in_f, device="cuda", dtype=dtype, generator=gen))
                for backend in BACKENDS:
                    key = [model, label, f"{out_f}x{in_f}", dtype_name, backend]
                    try:
                        sparse = to_semi_structured(weight, backend)
                    except Exception as err:  # a backend the build lacks is reported, not fatal
                        rows.append(key + ["-"] * 4 + [f"unavailable: {type(err).__name__}"])
                        continue
                    for m in tokens:
                        x = torch.randn(m, in_f, device="cuda", dtype=dtype, generator=gen)
                        ref = F.linear(x.float(), weight.float())
                        err = float((F.linear(x, sparse).float() - ref).norm() / ref.norm())
                        if not err < 1e-2:
                            raise AssertionError(f"{key} M={m}: relative error {err:.2e}")
                        dense_ms = median_ms(lambda x=x, w=weight: F.linear(x, w))
                        sparse_ms = median_ms(lambda x=x, s=sparse: F.linear(x, s))
                        tflops = 2 * m * out_f * in_f / (dense_ms * 1e-3) / 1e12
                        timing = [m, dense_ms * 1e3, sparse_ms * 1e3, dense_ms / sparse_ms]
                        rows.append(key + timing + [f"dense {tflops:.0f} TFLOP/s, err {err:.1e}"])
    return rows


def smollm2_shaped(layers: int = 30) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        head_dim=64,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float16).cuda().eval()


def end_to_end_rows(quick: bool) -> list[list[Any]]:
    """Prefill of a SmolLM2-135M-shaped fp16 model, dense vs every block linear in 2:4 semi-structured form."""
    rows = []
    model = smollm2_shaped()
    linears = [m for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for m in linears:
            m.weight.copy_(two_four(m.weight))
    shapes = [(1, 512), (8, 512)] if quick else [(1, 512), (8, 512), (32, 512), (8, 2048)]
    inputs = {s: torch.randint(0, 49152, s, device="cuda") for s in shapes}
    with torch.no_grad():
        dense_ms = {s: median_ms(lambda i=i: model(input_ids=i, use_cache=False)) for s, i in inputs.items()}
        reference = {s: model(input_ids=i, use_cache=False).logits.float() for s, i in inputs.items()}
        for backend in BACKENDS:
            dense_weights = [m.weight for m in linears]
            try:
                for m in linears:
                    m.weight = torch.nn.Parameter(to_semi_structured(m.weight.detach(), backend), requires_grad=False)
                for s, i in inputs.items():
                    logits = model(input_ids=i, use_cache=False).logits.float()
                    err = float((logits - reference[s]).norm() / reference[s].norm())
                    sparse_ms = median_ms(lambda i=i: model(input_ids=i, use_cache=False))
                    rows.append(
                        [backend, f"{s[0]} x {s[1]}", dense_ms[s], sparse_ms, dense_ms[s] / sparse_ms, f"{err:.1e}"]
                    )
            except Exception as err:
                rows.append([backend, "-", "-", "-", "-", f"failed: {type(err).__name__}: {err}"[:120]])
            finally:
                for m, w in zip(linears, dense_weights):
                    m.weight = w
    return rows


def run(quick: bool) -> dict[str, str]:
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    header = [
        "model",
        "layers",
        "out x in",
        "dtype",
        "backend",
        "tokens",
        "dense (us)",
        "2:4 (us)",
        "speed-up",
        "check",
    ]
    rows = shape_rows(quick)
    e2e = end_to_end_rows(quick)
    best = {}
    for r in rows:
        if isinstance(r[8], float):
            key = (r[0], r[5])
            best[key] = max(best.get(key, 0.0), r[8])
    summary = "\n".join(
        f"- {model}, {tokens} tokens: best 2:4 speed-up over the layer shapes {value:.2f}x"
        for (model, tokens), value in sorted(best.items())
    )
    return {
        "setup": (
            f"{props.name} (compute capability {props.major}.{props.minor}), torch {torch.__version__}. Each row: "
            "y = x W^T with x of shape (tokens, in), W of shape (out, in) with a 2:4 pattern along `in`; dense is "
            "`F.linear` on the masked dense weight, 2:4 is `F.linear` on `to_sparse_semi_structured(W)` with the "
            "named backend. Median of CUDA-event timings after warm-up (triton.testing.do_bench). Speed-up = dense "
            "time / 2:4 time (above 1: the 2:4 kernel is faster)."
        ),
        "per linear shape": common.table(header, rows) + "\n\n" + summary,
        "end to end (SmolLM2-135M-shaped, fp16, prefill, no KV cache)": (
            "Random weights in SmolLM2-135M's shapes (30 blocks, hidden 576, MLP 1536, 9 query / 3 KV heads); every "
            "block linear 2:4 (the embedding / tied head stays dense, as pruning leaves it). `err` is the relative "
            "error of the logits against the dense model with the same masked weights.\n\n"
            + common.table(["backend", "batch x tokens", "dense (ms)", "2:4 (ms)", "speed-up", "logits err"], e2e)
        ),
    }


def main(argv: list[str] | None = None) -> None:
    common.gpu_suite_main("gpu_sparse24", __doc__, run, argv)


if __name__ == "__main__":
    main()
