"""End to end on tiny LLaMA-family models: every method and pattern, checkpoints, and bad input."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from optimum_gblm import GBLMConfig, GBLMPruner, list_methods, verify_checkpoint
from optimum_gblm.adapters import get_adapter
from optimum_gblm.masks import prune_count
from optimum_gblm.methods import get_method
from tests.conftest import tiny_model

METHODS = [m for m in list_methods() if not get_method(m).structured]  # structured: tests/test_structured.py
UNTOUCHED = ("embed_tokens", "norm", "lm_head")


def _cfg(method, pattern="unstructured", sparsity=0.5, **kw):
    # Methods that allocate sparsity across linears by default (gblm-obs) are pinned to uniform: exact per-linear counts.
    kw.setdefault("allocation", "uniform" if get_method(method).default_allocation != "uniform" else None)
    return GBLMConfig(method=method, pattern=pattern, sparsity=sparsity, num_samples=4, seqlen=16, device="cpu", **kw)


SETTINGS = [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", 0.5), ("4:8", 0.5)]
# LLaMA gets every setting; the other families share the adapter, so two settings each.
CASES = [("llama", m, p, s) for m in METHODS for p, s in SETTINGS] + [
    (f, m, p, s) for f in ("mistral", "qwen2", "qwen3") for m in METHODS for p, s in SETTINGS[::2]
]


@pytest.mark.parametrize(("model_type", "method", "pattern", "sparsity"), CASES)
def test_exact_sparsity_and_untouched_modules(model_type, method, pattern, sparsity, calib_ids):
    model = tiny_model(model_type)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = GBLMPruner(model, _cfg(method, pattern, sparsity))
    pruner.prune(calibration=calib_ids, progress=False)
    targets = get_adapter(model).target_linears(model)
    assert len(pruner.pruning_map.targets) == len(targets) == 14
    for name, linear in targets.items():
        w = linear.weight
        if pattern == "unstructured" and pruner.config.effective_group == "row":
            assert ((w == 0).sum(dim=1) == prune_count(w.shape[1], sparsity)).all(), name
        else:
            assert int((w == 0).sum()) == prune_count(w.numel(), sparsity), name
        if pattern != "unstructured":
            n, m = map(int, pattern.split(":"))
            assert ((w.reshape(w.shape[0], -1, m) != 0).sum(-1) == m - n).all(), name
    for key, value in model.state_dict().items():
        if any(part in key for part in UNTOUCHED) or "layernorm" in key:
            assert torch.equal(value, before[key]), key
    assert pruner.pruning_map.pattern_ok


def test_targets_and_ignore_patterns(calib_ids):
    pruner = GBLMPruner(tiny_model(), _cfg("wanda", ignore=[r"mlp\.down_proj", r"layers\.1\."]))
    pruner.prune(calibration=calib_ids, progress=False)
    names = list(pruner.pruning_map.targets)
    assert len(names) == 6 and not any("down_proj" in n or "layers.1." in n for n in names)
    assert (pruner.model.model.layers[1].mlp.up_proj.weight != 0).all()


def test_save_reload_with_plain_transformers(tmp_path, calib_ids):
    pruner = GBLMPruner(tiny_model(), _cfg("gblm", "2:4"))
    model = pruner.prune(calibration=calib_ids, progress=False)
    out = pruner.save_pretrained(tmp_path / "pruned")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "gblm_config.json", "README.md"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert "quantization_config" not in reloaded.config.to_dict()
    with torch.no_grad():
        assert torch.equal(model(calib_ids).logits, reloaded(calib_ids).logits)
    result = verify_checkpoint(out)
    assert result.ok and result.checked == 14
    # verification notices a tampered checkpoint
    from safetensors.torch import load_file, save_file

    state = load_file(out / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"] = torch.ones_like(state["model.layers.0.mlp.up_proj.weight"])
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    bad = verify_checkpoint(out)
    assert not bad.ok and any("up_proj" in p for p in bad.problems)


def test_from_pretrained_folder_and_sidecar(tmp_path, calib_ids):
    src = tmp_path / "dense"
    tiny_model().save_pretrained(src)
    pruner = GBLMPruner.from_pretrained(str(src), _cfg("wanda"))
    pruner.prune(calibration=calib_ids, progress=False)
    out = pruner.save_pretrained(tmp_path / "out")
    import json

    sidecar = json.loads((out / "gblm_config.json").read_text())
    assert sidecar["config"]["method"] == "wanda" and sidecar["source"] == str(src)
    assert sidecar["base_model"] is None and sidecar["base_model_name"] == "dense"  # a local folder has no Hub id
    assert sidecar["calibration"]["fingerprint"] and sidecar["pruning_map"]["overall_sparsity"] == pytest.approx(0.5)
    assert set(sidecar["versions"]) >= {"optimum-gblm", "torch", "transformers"}


def test_output_dir_rules(tmp_path, calib_ids):
    pruner = GBLMPruner(tiny_model(), _cfg("magnitude"))
    pruner.prune(progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        pruner.save_pretrained(busy)
    assert (busy / "keep.txt").read_text() == "user data"
    pruner.save_pretrained(busy, overwrite=True)
    assert (busy / "model.safetensors").exists() and not (busy / "keep.txt").exists()


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    pruner = GBLMPruner(tiny_model(), _cfg("magnitude"))
    pruner.prune(progress=False)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pruner.adapter, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        pruner.save_pretrained(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_fail_before_heavy_work(tmp_path):
    with pytest.raises(ValueError, match="divisible by M=8"):
        GBLMPruner(tiny_model(hidden_size=68, num_attention_heads=2, num_key_value_heads=2), _cfg("wanda", "4:8"))
    with pytest.raises(
        ValueError, match=r"No adapter for architecture 'gpt2' \(its decoder layers \(GPT2Block\) hold no"
    ):
        GBLMPruner(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2)), _cfg("wanda"))
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2)).save_pretrained(gpt2)
    with pytest.raises(ValueError, match="No adapter for architecture 'gpt2'"):
        GBLMPruner.from_pretrained(str(gpt2), _cfg("wanda"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GBLMPruner.from_pretrained("./no/such/model", _cfg("wanda"))
    with pytest.raises(ValueError, match="nothing to prune"):
        GBLMPruner(tiny_model(), _cfg("wanda", targets=["no_such_layer"]))


def test_calibration_too_short(tmp_path):
    from transformers import AutoTokenizer

    from optimum_gblm.assets import default_model_path

    text = tmp_path / "short.txt"
    text.write_text("Too short to cut a window from.")
    tok = AutoTokenizer.from_pretrained(default_model_path())
    cfg = GBLMConfig(method="wanda", calibration=str(text), seqlen=64, num_samples=2, device="cpu")
    pruner = GBLMPruner(tiny_model(vocab_size=49152), cfg, tokenizer=tok)
    with pytest.raises(ValueError, match="too short"):
        pruner.prune(progress=False)


def test_prune_twice_and_gradients_after_prune_are_refused(calib_ids):
    pruner = GBLMPruner(tiny_model(), _cfg("wanda"))
    pruner.prune(calibration=calib_ids, progress=False)
    with pytest.raises(RuntimeError, match="already pruned"):
        pruner.prune(calibration=calib_ids, progress=False)
    with pytest.raises(RuntimeError, match="dense model"):
        pruner.collect_gradients()


def test_layerwise_pass_feeds_pruned_outputs_forward(calib_ids):
    """Block 1's statistics must come from block 0's *pruned* outputs (docs/semantics.md#7-the-layer-by-layer-pass)."""
    model = tiny_model()
    seen = []
    handle = model.model.layers[1].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    GBLMPruner(model, _cfg("wanda")).prune(calibration=calib_ids[:1], progress=False)
    handle.remove()
    with torch.no_grad():
        expected = copy.deepcopy(model)(calib_ids[:1], output_hidden_states=True).hidden_states[1]
        normed = model.model.layers[1].input_layernorm(expected)
    assert torch.allclose(seen[0], normed, atol=1e-5)
