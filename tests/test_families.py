"""Every decoder family of the registry, on tiny random configs built from its transformers config.

Which combinations run: every family x every mask-based method of `list_methods()` x {50% unstructured, 2:4}
(structured methods have their own tests, and refuse non-LLaMA layouts: tested below); the save + plain-reload check
runs at 50% for one method per family, the methods rotating over the families.
Each case checks the exact target on every targeted projection, bit-identical untouched parameters,
and (at 50%) save + plain-transformers reload with identical logits and a passing `verify_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_gblm import GBLMConfig, GBLMPruner, list_methods, verify_checkpoint
from optimum_gblm.adapters import DECODER_FAMILIES, DecoderNotFound, families_markdown, get_adapter
from optimum_gblm.masks import prune_count
from optimum_gblm.methods import get_method
from optimum_gblm.statistics import InputStatistics
from optimum_gblm.targets import parse_slice_name, resolve_weight

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA everywhere
    vocab_size=128,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
FAMILY_CONFIGS = {
    "llama": dict(tie_word_embeddings=True, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
    "mistral": dict(sliding_window=8),
    "qwen2": dict(tie_word_embeddings=True),
    "qwen3": dict(head_dim=16, tie_word_embeddings=True),
    "gemma": dict(head_dim=16),
    "gemma2": dict(head_dim=16, sliding_window=8, final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "gemma3_text": dict(head_dim=16, sliding_window=8),
    "phi3": dict(),
    "olmo2": dict(),
    "granite": dict(residual_multiplier=0.5, logits_scaling=2.0),
    "smollm3": dict(tie_word_embeddings=True),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, shared_expert_intermediate_size=64, **MOE),
    "qwen3_moe": dict(num_experts=4, head_dim=16, **MOE),
    "deepseek_v3": dict(
        n_routed_experts=4,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        kv_lora_rank=16,
        q_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        **MOE,
    ),  # fmt: skip
}
MOE_FAMILIES = [t for t, f in DECODER_FAMILIES.items() if f.moe]
# Mask-based methods; the structured ones (whole heads / channels, LLaMA layouts) are tested in test_structured.py.
METHODS = [m for m in list_methods() if not get_method(m).structured]
IDS = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(1))


def build(model_type: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    if model_type == "gemma3":  # the multimodal class: a tiny SigLIP tower around a Gemma 3 text model
        from transformers import Gemma3Config, Gemma3ForConditionalGeneration

        text = {**BASE, **FAMILY_CONFIGS["gemma3_text"], "vocab_size": 300}
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28)
        config = Gemma3Config(
            text_config=text,
            vision_config={**vision, "patch_size": 14},
            mm_tokens_per_image=4,
            image_token_index=299,
            boi_token_index=297,
            eoi_token_index=298,
        )
        return Gemma3ForConditionalGeneration(config).eval()
    config = AutoConfig.for_model(model_type, **{**BASE, **FAMILY_CONFIGS[model_type], **overrides})
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _cfg(method: str, pattern: str, **kw) -> GBLMConfig:
    kw.setdefault("allocation", "uniform" if get_method(method).default_allocation != "uniform" else None)
    return GBLMConfig(method=method, pattern=pattern, sparsity=0.5, num_samples=4, seqlen=16, device="cpu", **kw)


def test_every_registered_family_has_a_tiny_config():
    assert set(DECODER_FAMILIES) == set(FAMILY_CONFIGS) | {"gemma3"}


# Every family x every mask-based method x {50%, 2:4} is pruned and checked; the save + plain-reload check (slower:
# card, plot, a second model) runs at 50% for one method per family, the methods rotating over the families.
RELOADED = {(t, METHODS[i % len(METHODS)], "unstructured") for i, t in enumerate(DECODER_FAMILIES)}
CASES = [(t, m, p) for t in DECODER_FAMILIES for p in ("unstructured", "2:4") for m in METHODS]


@pytest.mark.parametrize(("model_type", "method", "pattern"), CASES)
def test_family_prunes_exactly_and_reloads_with_plain_transformers(model_type, method, pattern, tmp_path):
    model = build(model_type)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = GBLMPruner(model, _cfg(method, pattern))
    targets = pruner.targets()
    pruner.prune(calibration=IDS, progress=False)
    assert list(pruner.pruning_map.targets) == [t.name for t in targets]
    assert not any(k in t.name for t in targets for k in ("embed", "norm", "lm_head", "router", ".gate.", "vision"))
    row_wise = pattern == "unstructured" and pruner.config.effective_group == "row"
    for target in targets:
        w = target.weight()
        if row_wise:
            assert ((w == 0).sum(dim=1) == prune_count(w.shape[1], 0.5)).all(), target.name
        else:
            assert int((w == 0).sum()) == prune_count(w.numel(), 0.5), target.name
        if pattern == "2:4":
            assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) == 2).all(), target.name
    pruned = {f"{t.name}.weight" if t.index is None else parse_slice_name(t.name)[0] for t in targets}
    for key, value in model.state_dict().items():
        if key not in pruned:
            assert torch.equal(value, before[key]), key
    if (model_type, method, pattern) in RELOADED:
        _save_reload_verify(pruner, tmp_path)


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS[:2], use_cache=False).logits


def _save_reload_verify(pruner: GBLMPruner, tmp_path: Path) -> None:
    out = pruner.save_pretrained(tmp_path / "pruned")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "auto_map" not in config
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert torch.equal(_logits(reloaded), _logits(pruner.model))
    result = verify_checkpoint(out)
    assert result.ok and result.checked == len(pruner.pruning_map.targets), result.problems


def test_moe_checkpoint_reloads_without_this_package(tmp_path):
    """A plain Python process (optimum_gblm never imported) reloads a pruned Mixtral with the same logits."""
    pruner = GBLMPruner(build("mixtral"), _cfg("wanda", "2:4"))
    pruner.prune(calibration=IDS, progress=False)
    out = pruner.save_pretrained(tmp_path / "pruned")
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, dtype=torch.float32).eval()\n"
        f"ids = torch.tensor({IDS[:2].tolist()})\n"
        "with torch.no_grad(): torch.save(m(input_ids=ids, use_cache=False).logits, sys.argv[1])\n"
        "assert not any(k.startswith('optimum_gblm') for k in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "l.pt")], check=True, env=env, cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "l.pt", weights_only=True), _logits(pruner.model))


# -- structure ---------------------------------------------------------------------------------------------------------
def test_targets_routers_and_shared_experts():
    model = build("qwen2_moe")
    adapter = get_adapter(model)
    names = [t.name for t in adapter.targets_by_block(model)[1]]
    assert (
        "model.layers.1.mlp.shared_expert.gate_proj" in names and "model.layers.1.mlp.shared_expert_gate" not in names
    )
    assert [n for n in names if "experts." in n][:2] == [
        "model.layers.1.mlp.experts.gate_up_proj[0]",
        "model.layers.1.mlp.experts.down_proj[0]",
    ]
    # an expert slice is [d_out, d_in] as used by F.linear(x, w[e]) and writes through to the 3-D parameter
    target = next(t for t in adapter.prune_targets(model) if t.name.endswith("gate_up_proj[2]"))
    assert target.shape == (64, 64) and target.in_features == model.config.hidden_size
    target.weight()[0, 0] = 0.0
    assert model.model.layers[0].mlp.experts.gate_up_proj[2, 0, 0] == 0
    assert resolve_weight(model, target.name) is not None
    # all-linear and regexes select from the same generic rule; a regex naming a router still never prunes it
    assert [t.name for t in adapter.prune_targets(model, ["all-linear"])] == [
        t.name for t in adapter.prune_targets(model)
    ]
    experts = adapter.prune_targets(model, [r"experts\.down_proj", r"mlp\.gate$", "shared_expert_gate"])
    assert len(experts) == 2 * 4 and all("down_proj[" in t.name for t in experts)


def test_multimodal_wrapper_prunes_only_its_language_model(tmp_path):
    model = build("gemma3")
    adapter = get_adapter(model)
    assert adapter.block_path == "model.language_model.layers"
    vision = {k: v.clone() for k, v in model.state_dict().items() if "vision" in k or "multi_modal" in k}
    pruner = GBLMPruner(model, _cfg("wanda", "unstructured"))
    pruner.prune(calibration=IDS, progress=False)
    assert len(pruner.pruning_map.targets) == 14 and pruner.pruning_map.overall_sparsity == 0.5
    assert all(torch.equal(model.state_dict()[k], v) for k, v in vision.items()) and vision
    _save_reload_verify(pruner, tmp_path)


# -- mixture of experts: routed statistics ------------------------------------------------------------------------------
def _routed_inputs(model: nn.Module, layer: int = 0) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Direct computation: the inputs each expert's two matmuls really receive in the eager expert loop, recorded
    by intercepting F.linear (weights identified by their storage offset in the 3-D parameters)."""
    experts = model.model.layers[layer].mlp.experts
    model.config._experts_implementation = "eager"
    seen: dict[tuple[str, int], list[torch.Tensor]] = {}
    offsets = {
        (p.data_ptr() + e * p.stride(0) * p.element_size()): (name, e)
        for name, p in (("gate_up", experts.gate_up_proj), ("down", experts.down_proj))
        for e in range(p.shape[0])
    }
    linear = torch.nn.functional.linear

    def recording(x, w, b=None):
        if w.data_ptr() in offsets and w.dim() == 2:
            seen.setdefault(offsets[w.data_ptr()], []).append(x.detach().clone())
        return linear(x, w, b)

    torch.nn.functional.linear = recording
    try:
        with torch.no_grad():
            for row in IDS:
                model(input_ids=row[None], use_cache=False)
    finally:
        torch.nn.functional.linear = linear
    cat = {k: torch.cat(v) for k, v in seen.items()}
    return ({e: cat[("gate_up", e)] for e in range(4)}, {e: cat[("down", e)] for e in range(4)})


def _wanda_mask(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    from optimum_gblm.masks import select_mask

    return select_mask(weight.abs() * (x.pow(2).sum(0) / len(IDS)).sqrt()[None], 0.5, "unstructured", "row")


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_each_expert_is_pruned_with_its_own_routed_tokens(model_type):
    model = build(model_type, num_hidden_layers=1)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    gate_up_inputs, down_inputs = _routed_inputs(model)
    experts = model.model.layers[0].mlp.experts
    model.config._experts_implementation = "grouped_mm" if model_type == "mixtral" else "eager"
    # the observer sees exactly the routed inputs, and divides by the samples of the batch, not by the tokens
    target = next(t for t in get_adapter(model).prune_targets(model) if t.name.endswith("down_proj[1]"))
    stats = InputStatistics(target.in_features, "activations")
    handle = target.observe_inputs(stats.add_batch)
    with torch.no_grad():
        model(input_ids=IDS, use_cache=False)
    handle.remove()
    assert stats.nsamples == len(IDS) and stats.tokens == len(down_inputs[1]) > 0
    assert torch.allclose(stats.activation_sq_mean(), down_inputs[1].pow(2).sum(0) / len(IDS), rtol=1e-4, atol=1e-7)
    pooled = torch.cat(list(gate_up_inputs.values())).unique(dim=0)  # every token the block routed
    GBLMPruner(model, _cfg("wanda", "unstructured")).prune(calibration=IDS, progress=False)
    differs = 0
    for e in range(4):
        prefix = "model.layers.0.mlp.experts"
        for param, x in (("gate_up_proj", gate_up_inputs[e]), ("down_proj", down_inputs[e])):
            expected = _wanda_mask(dense[f"{prefix}.{param}"][e], x)
            assert torch.equal(getattr(experts, param)[e] == 0, expected), (param, e)
        w = dense[f"{prefix}.gate_up_proj"][e]
        differs += not torch.equal(_wanda_mask(w, pooled), _wanda_mask(w, gate_up_inputs[e]))
    assert differs >= 2  # pooled statistics would have chosen other masks for at least two experts


@pytest.mark.parametrize("pattern", ["2:4", "unstructured"])
def test_an_expert_with_too_few_routed_tokens_is_pruned_by_magnitude(caplog, pattern):
    """The documented policy: fewer routed tokens than `min_expert_tokens` -> |W| in the same pattern, logged with
    the token count; never a crash, never a prune from (near-)empty statistics. Unstructured SparseGPT counts per
    matrix (its column blocks share one exact total), so the fallback does too."""
    model = build("mixtral", num_hidden_layers=1)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = GBLMPruner(model, _cfg("sparsegpt", pattern))
    pruner.adapter.min_expert_tokens = 10**6
    with caplog.at_level(logging.WARNING, logger="optimum_gblm.pipelines.masking"):
        pruner.prune(calibration=IDS, progress=False)
    warned = [r.getMessage() for r in caplog.records if "calibration tokens" in r.getMessage()]
    assert len(warned) == 8 and all("(< 1000000): pruned by |W| instead of sparsegpt" in m for m in warned)
    from optimum_gblm.masks import select_mask

    for e in range(4):
        w = dense["model.layers.0.mlp.experts.down_proj"][e]
        expected = select_mask(w.abs(), 0.5, pattern, "layer")
        assert torch.equal(model.model.layers[0].mlp.experts.down_proj[e] == 0, expected)
        assert torch.equal(model.model.layers[0].mlp.experts.down_proj[e][~expected], w[~expected])  # no update
    assert not torch.equal(
        model.model.layers[0].self_attn.q_proj.weight, dense["model.layers.0.self_attn.q_proj.weight"]
    )


def test_expert_gradients_are_the_slices_of_the_parameter_gradient():
    """Per-sample gradient accumulators of expert targets equal the per-expert slices of the 3-D gradient."""
    from optimum_gblm.gradients.collector import GradientCollector, per_sample_backward

    model = build("qwen3_moe", num_hidden_layers=1)
    adapter = get_adapter(model)
    targets = adapter.target_linears(model)
    with GradientCollector(model, targets, norms=("l1", "l2"), scale=1.0) as collector:
        for i, row in enumerate(IDS[:2]):
            per_sample_backward(collector, lambda r=row: adapter.loss(model, r), i)
    experts = model.model.layers[0].mlp.experts
    l1 = torch.zeros_like(experts.down_proj)
    for row in IDS[:2]:
        model.zero_grad()
        adapter.loss(model, row).backward()
        l1 += experts.down_proj.grad.abs()
    for e in range(4):
        assert torch.allclose(collector.state.l1[f"model.layers.0.mlp.experts.down_proj[{e}]"], l1[e])
    assert collector.state.l1["model.layers.0.mlp.experts.gate_up_proj[1]"].shape == (64, 64)


# -- bad input -----------------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_before_heavy_work(tmp_path):
    model = build("llama")
    model.model.stack = model.model.layers
    del model.model.layers
    model._no_split_modules = None
    with pytest.raises(DecoderNotFound, match=r"cannot find the decoder layers of 'llama'.*looked for a ModuleList"):
        get_adapter(model)
    from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=64))
    with pytest.raises(ValueError, match="'t5' is an encoder-decoder model"):
        GBLMPruner(t5, _cfg("wanda", "unstructured"))
    bert = BertForMaskedLM(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    with pytest.raises(ValueError, match="'BertForMaskedLM' \\(bert\\) is not a causal LM"):
        GBLMPruner(bert, _cfg("wanda", "unstructured"))
    for name, model in (("t5", t5), ("bert", bert)):  # from a folder: refused from its config, before any weight
        model.save_pretrained(tmp_path / name)
        with pytest.raises(ValueError, match="encoder-decoder|not a causal LM"):
            GBLMPruner.from_pretrained(str(tmp_path / name), _cfg("wanda", "unstructured"))
    # a fused projection (Phi-3 qkv_proj) and expert slices whose input dimension does not fit N:M
    with pytest.raises(
        ValueError, match=r"divisible by M=4; not: .*self_attn\.qkv_proj \(d_in=66\), .*mlp\.gate_up_proj \(d_in=66\)"
    ):
        GBLMPruner(build("phi3", hidden_size=66, num_attention_heads=2, num_key_value_heads=1), _cfg("wanda", "2:4"))
    with pytest.raises(ValueError, match=r"experts\.down_proj\[0\] \(d_in=30\)"):
        GBLMPruner(build("qwen3_moe", moe_intermediate_size=30), _cfg("wanda", "2:4"))
    # experts stored transposed ([E, d_in, d_out], GPT-OSS) are refused rather than pruned along the wrong axis
    oss = AutoConfig.for_model("gpt_oss", **{**BASE, "intermediate_size": 64, "num_local_experts": 4, "head_dim": 16})
    with pytest.raises(ValueError, match=r"experts \(GptOssExperts\) stores its expert weights transposed"):
        GBLMPruner(AutoModelForCausalLM.from_config(oss), _cfg("wanda", "unstructured"))


# -- the README / docs table ----------------------------------------------------------------------------------------------
def test_family_table_in_the_docs_matches_the_registry():
    table = families_markdown()
    assert table in (ROOT / "docs" / "families.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if "| model_type | family |" in readme:  # the README carries the same generated table once it lists families
        assert table in readme
    assert all(f"`{t}`" in table for t in DECODER_FAMILIES)


def test_all_linear_selects_every_block_linear_of_other_adapters_too():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, num_classes=3, img_size=32)
    adapter = get_adapter(vit)
    assert [t.name for t in adapter.prune_targets(vit, ["all-linear"])] == [
        f"blocks.0.{rel}" for rel in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ]


@pytest.mark.parametrize("model_type", ["mistral", "phi3", "mixtral"])
def test_structured_methods_refuse_other_layouts_before_any_work(model_type):
    """Structured removal is implemented for LLaMA layouts only: other families are refused when the pruner is
    built, naming what is supported, for every structured method of the registry."""
    for method in [m for m in list_methods() if get_method(m).structured]:
        with pytest.raises(ValueError, match="structured pruning cannot shrink this model"):
            GBLMPruner(build(model_type), GBLMConfig(method=method, sparsity=0.2, device="cpu"))
