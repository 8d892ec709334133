"""Golden parity: a hash of every mask and every pruned weight, for every method x pattern x allocation.

Recorded once with the code *before* a refactor (`python tests/helpers/golden_parity.py` writes
`tests/golden/parity_hashes.json`); `tests/test_golden_parity.py` recomputes every case and demands identical
hashes, so a redesign provably leaves behaviour unchanged. Only the public API (`GBLMConfig`, `GBLMPruner`,
`list_methods`) is used, so the same script runs on both sides of a refactor.

Cases: the tiny random LLaMA (GQA, tied embeddings), a tiny timm ViT, and the real SmolLM2-135M with a small
calibration set (4 x 64 tokens) pruning blocks 0, 1 and 29 (the whole model still runs block by block); the
structured methods on the tiny LLaMA (every parameter and the kept indices hashed, since the matrices shrink).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from optimum_gblm.utils import torch_threads

GOLDEN = Path(__file__).parents[1] / "golden" / "parity_hashes.json"
THREADS = 2  # float reductions may depend on the thread count: record and check with the same one
PATTERNS = ("unstructured", "2:4", "4:8")
SMOLLM2_TARGETS = [r"^model\.layers\.(0|1|29)\."]


def cases(methods: list[str]) -> list[dict[str, Any]]:
    """Every method x pattern, plus gradient allocation on / off (unstructured) and the method variants."""
    out: list[dict[str, Any]] = []
    for method in methods:
        for pattern in PATTERNS:
            out.append({"method": method, "pattern": pattern, "allocation": "uniform"})
            if pattern == "unstructured":
                out.append({"method": method, "pattern": pattern, "allocation": "gradient"})
    out.append({"method": "magnitude", "pattern": "unstructured", "group": "row"})
    out.append({"method": "gblm", "pattern": "unstructured", "gradient_norm": "l2"})
    out.append({"method": "wanda", "pattern": "unstructured", "group": "layer"})
    return out


def case_key(case: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(case.items()))


def fixed_threads() -> contextlib.AbstractContextManager:
    return torch_threads(THREADS)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bool else t.to(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def hashes(model: torch.nn.Module, names: list[str]) -> dict[str, Any]:
    weights = {n: model.get_submodule(n).weight for n in names}
    masks = {n: w == 0 for n, w in weights.items()}
    return {
        "weights": digest(weights),
        "masks": digest(masks),
        "layers": {n: digest({n: m}) for n, m in masks.items()},
    }


def pruned_names(pruner: Any) -> list[str]:
    """The pruned targets: from the pruning map (after the redesign) or the sparsity report (before)."""
    pruning_map = getattr(pruner, "pruning_map", None)
    if pruning_map is not None:
        return sorted(pruning_map.targets)
    return sorted(layer.name for layer in pruner.report.layers)


def run(model: torch.nn.Module, case: dict[str, Any], base: dict[str, Any], calibration: Any) -> Any:
    from optimum_gblm import GBLMConfig, GBLMPruner

    settings = {**base, **{k: v for k, v in case.items() if k != "allocation"}}
    if case.get("allocation") and (case["allocation"] == "gradient" or case["pattern"] == "unstructured"):
        settings["allocation"] = case["allocation"]
    config = GBLMConfig(sparsity=0.5, device="cpu", **settings)
    pruner = GBLMPruner(model, config)
    pruner.prune(calibration=calibration, progress=False)
    return pruner


# -- the three models ------------------------------------------------------------------------------------------------
def tiny_llama_suite() -> tuple[Callable[[], torch.nn.Module], dict[str, Any], Any]:
    from transformers import AutoConfig, AutoModelForCausalLM

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        config = AutoConfig.for_model(
            "llama",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
        return AutoModelForCausalLM.from_config(config).eval()

    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    return make, {"num_samples": 4, "seqlen": 16}, ids


def tiny_vit_suite() -> tuple[Callable[[], torch.nn.Module], dict[str, Any], Any]:
    import timm

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            num_classes=5,
        ).eval()

    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(2))
    return make, {"num_samples": 8}, (images, labels)


_SMOLLM2: dict[str, Any] = {}


def smollm2_suite() -> tuple[Callable[[], torch.nn.Module], dict[str, Any], Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_gblm.assets import default_model_path
    from optimum_gblm.data.text import build_token_calibration

    if not _SMOLLM2:
        path = default_model_path()
        _SMOLLM2["model"] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        _SMOLLM2["tokenizer"] = AutoTokenizer.from_pretrained(path)
        calib = build_token_calibration(_SMOLLM2["tokenizer"], "offline-corpus", 4, 64, 0)
        _SMOLLM2["ids"] = calib.input_ids
    base = {"num_samples": 4, "seqlen": 64, "targets": SMOLLM2_TARGETS}
    return lambda: copy.deepcopy(_SMOLLM2["model"]), base, _SMOLLM2["ids"]


def smollm2_perplexity(model: torch.nn.Module) -> float:
    """4 windows x 128 tokens of the held-out slice: the fallback check when hashes cannot be identical."""
    from optimum_gblm.evaluation import evaluation_stream, perplexity

    if "stream" not in _SMOLLM2:
        _SMOLLM2["stream"] = evaluation_stream(_SMOLLM2["tokenizer"], "offline-corpus")
    return perplexity(model, _SMOLLM2["stream"], 128, 4, progress=False)


SUITES = {"tiny-llama": tiny_llama_suite, "tiny-vit": tiny_vit_suite, "smollm2": smollm2_suite}

# -- structured methods: the matrices shrink, so every parameter of the model and the kept indices are hashed ------
STRUCTURED = "tiny-llama-structured"


def structured_cases(methods: list[str]) -> list[dict[str, Any]]:
    """Every structured method x mode x attention unit at 30% removed, and each without bias compensation."""
    out: list[dict[str, Any]] = []
    for method in methods:
        for mode in ("adaptive", "uniform"):
            for unit in ("group", "head"):
                out.append({"method": method, "method_args": {"mode": mode, "attention_unit": unit}})
        out.append({"method": method, "method_args": {"bias_compensation": False}})
    return out


def structured_key(case: dict[str, Any]) -> str:
    return json.dumps(case, sort_keys=True)


def compute_structured(case: dict[str, Any]) -> dict[str, Any]:
    from optimum_gblm import GBLMConfig, GBLMPruner

    make, base, calibration = tiny_llama_suite()
    with fixed_threads():
        model = make()
        config = GBLMConfig(sparsity=0.3, device="cpu", **base, **case)
        pruner = GBLMPruner(model, config)
        pruner.prune(calibration=calibration, progress=False)
        state = model.state_dict()
        kept = {name: record.kept for name, record in sorted(pruner.pruning_map.targets.items())}
    return {
        "weights": digest(state),
        "shapes": {name: list(t.shape) for name, t in sorted(state.items())},
        "kept": hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:24],
    }


def record_structured() -> dict[str, Any]:
    from optimum_gblm import list_methods
    from optimum_gblm.methods import get_method

    data = json.loads(GOLDEN.read_text())
    data[STRUCTURED] = {}
    for case in structured_cases([m for m in list_methods() if get_method(m).structured]):
        data[STRUCTURED][structured_key(case)] = {"case": case, **compute_structured(case)}
        print(f"{STRUCTURED} {structured_key(case)}: {data[STRUCTURED][structured_key(case)]['weights']}", flush=True)
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def compute(suite: str, case: dict[str, Any]) -> dict[str, Any]:
    make, base, calibration = SUITES[suite]()
    with fixed_threads():
        model = make()
        pruner = run(model, case, base, calibration)
        names = pruned_names(pruner)
        result = hashes(model, names)
        if suite == "smollm2":
            result["perplexity"] = smollm2_perplexity(model)
    return result


def record(suites: list[str]) -> dict[str, Any]:
    from optimum_gblm import list_methods
    from optimum_gblm.methods import get_method

    data = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    data["torch"] = torch.__version__
    for suite in suites:
        data[suite] = {}
        for case in cases([m for m in list_methods() if not get_method(m).structured]):
            result = compute(suite, case)
            data[suite][case_key(case)] = {"case": case, **result}
            ppl = result.get("perplexity")
            extra = f" ppl {ppl:.4f}" if ppl is not None and math.isfinite(ppl) else ""
            print(f"{suite} {case_key(case)}: {result['masks']} {result['weights']}{extra}", flush=True)
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


if __name__ == "__main__":
    chosen = sys.argv[1:] or [*SUITES, STRUCTURED]
    if any(suite != STRUCTURED for suite in chosen):
        record([suite for suite in chosen if suite != STRUCTURED])
    if STRUCTURED in chosen:
        record_structured()
