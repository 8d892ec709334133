"""Decoder families: defaults and exceptions, not a gate.

Any transformers causal LM whose decoder layers can be found is supported (adapters/discovery.py). This table only
records what is known per `model_type`: how it was verified, what is special about it, and exceptions to the generic
rules (input sites, extra ignore patterns). `families_markdown()` renders it for the README and docs/families.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REAL = "real weights (SmolLM2-135M) + random config"
RANDOM = "random config only"


@dataclass(frozen=True)
class Family:
    model_type: str
    label: str  # the family's name in words
    verified: str = RANDOM  # how it is tested: on real weights, or only on tiny random configs
    notes: str = ""
    moe: bool = False
    # Exceptions to the generic input-site rule: block-relative linear -> block-relative site name.
    shared_inputs: dict[str, str] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()  # block-relative regexes never pruned, on top of the routers


def _families(*families: Family) -> dict[str, Family]:
    return {f.model_type: f for f in families}


DECODER_FAMILIES: dict[str, Family] = _families(
    Family("llama", "LLaMA 1/2/3 (GQA, rope scaling, tied embeddings)", REAL, "SmolLM2 is LLaMA-shaped"),
    Family("mistral", "Mistral", notes="sliding-window attention"),
    Family("qwen2", "Qwen2 / Qwen2.5", notes="q/k/v biases (kept)"),
    Family("qwen3", "Qwen3", notes="q/k norms (never pruned)"),
    Family("gemma", "Gemma", notes="tied embeddings"),
    Family("gemma2", "Gemma 2", notes="soft-capping, sliding-window layers"),
    Family("gemma3_text", "Gemma 3 (text)", notes="q/k norms, sliding-window layers"),
    Family("gemma3", "Gemma 3 (multimodal: its language model)", notes="the vision tower is never pruned"),
    Family("phi3", "Phi-3 / Phi-4", notes="fused `qkv_proj` and `gate_up_proj`, pruned as the fused matrices"),
    Family("olmo2", "OLMo 2", notes="q/k norms, post-norms"),
    Family("granite", "Granite", notes="residual / logit multipliers"),
    Family("smollm3", "SmolLM3", notes="NoPE layers"),
    Family("mixtral", "Mixtral (MoE)", moe=True, notes="fused 3-D experts pruned per expert; router kept"),
    Family(
        "qwen2_moe",
        "Qwen2-MoE (MoE)",
        moe=True,
        notes="per-expert statistics; shared expert pruned as an MLP; routers kept",
    ),
    Family("qwen3_moe", "Qwen3-MoE (MoE)", moe=True, notes="per-expert statistics; router kept"),
    Family(
        "deepseek_v3",
        "DeepSeek-V3 (MoE, MLA)",
        moe=True,
        notes="low-rank attention projections; shared experts pruned as MLPs; dense first layers",
    ),
)

# Linears read as routers (never pruned) wherever they appear, by their last name component.
ROUTER_NAMES = ("gate", "router", "shared_expert_gate", "shared_experts_gate")
# Sibling linears that read one input: each group under one parent module shares the site `<parent>.input`.
SHARED_INPUT_GROUPS = (
    ("q_proj", "k_proj", "v_proj", "q_a_proj", "kv_a_proj_with_mqa"),
    ("gate_proj", "up_proj"),
)


def family(model_type: str | None) -> Family | None:
    return DECODER_FAMILIES.get(model_type or "")


def families_markdown() -> str:
    """The README / docs table of the families in the registry (`tests/test_families.py` keeps them in sync)."""
    lines = [
        "| model_type | family | mixture of experts | verified on | notes |",
        "|---|---|---|---|---|",
    ]
    for f in DECODER_FAMILIES.values():
        lines.append(f"| `{f.model_type}` | {f.label} | {'yes' if f.moe else 'no'} | {f.verified} | {f.notes} |")
    return "\n".join(lines) + "\n"
