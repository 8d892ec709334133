"""Bad and unusual input, systematically: property-based mask selection (ties, all-equal rows, NaN / inf), configs
from JSON (unknown keys, corrupt or truncated files, wrong types), half-precision models, dead inputs, N:M misfits."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import fields as dataclass_fields
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimum_gblm import GBLMConfig, GBLMPruner, list_methods
from optimum_gblm.masks import (
    NonFiniteScoresError,
    pack_mask,
    parse_pattern,
    prune_count,
    select_mask,
    unpack_mask,
)
from optimum_gblm.methods import get_method
from optimum_gblm.methods.sparsegpt import inverse_hessian_factor, obs_prune
from tests.conftest import tiny_model

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPARSITIES = st.floats(min_value=0.01, max_value=0.99, allow_nan=False)


@st.composite
def score_matrices(draw: st.DrawFn, cols_multiple_of: int = 1) -> torch.Tensor:
    """Scores of random shapes; values from a tiny set (massive ties), all equal, or spread, in a random dtype."""
    rows = draw(st.integers(1, 6))
    cols = cols_multiple_of * draw(st.integers(1, 48 // cols_multiple_of))
    kind = draw(st.sampled_from(["ties", "equal", "spread"]))
    if kind == "equal":
        values = [draw(st.floats(-3, 3))] * (rows * cols)
    else:
        element = st.sampled_from([0.0, 1.0, 2.0]) if kind == "ties" else st.floats(-1e3, 1e3, width=16)
        values = draw(st.lists(element, min_size=rows * cols, max_size=rows * cols))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    return torch.tensor(values, dtype=torch.float32).reshape(rows, cols).to(dtype)


def assert_lowest_with_index_ties(scores: torch.Tensor, mask: torch.Tensor) -> None:
    """Everything pruned scores <= everything kept; among equal scores, pruned indices come first (flat order)."""
    s, m = scores.float().reshape(-1), mask.reshape(-1)
    if m.any() and (~m).any():
        assert s[m].max() <= s[~m].min()
        threshold = s[m].max()
        tied = (s == threshold).nonzero().reshape(-1)
        tied_pruned = m[tied]
        assert not (tied_pruned[1:] & ~tied_pruned[:-1]).any()  # no pruned index after a kept one


@FAST
@given(scores=score_matrices(), sparsity=SPARSITIES)
def test_row_selection_prunes_exactly_floor_per_row(scores: torch.Tensor, sparsity: float):
    mask = select_mask(scores, sparsity, group="row")
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    k = prune_count(scores.shape[1], sparsity)
    assert mask.sum(dim=1).tolist() == [k] * scores.shape[0]
    for row in range(scores.shape[0]):
        assert_lowest_with_index_ties(scores[row], mask[row])


@FAST
@given(scores=score_matrices(), sparsity=SPARSITIES)
def test_layer_selection_prunes_exactly_floor_of_the_matrix(scores: torch.Tensor, sparsity: float):
    mask = select_mask(scores, sparsity, group="layer")
    assert int(mask.sum()) == prune_count(scores.numel(), sparsity)
    assert_lowest_with_index_ties(scores, mask)


@FAST
@given(data=st.data(), m=st.integers(2, 8))
def test_nm_selection_prunes_exactly_n_of_every_m(data: st.DataObject, m: int):
    n = data.draw(st.integers(1, m - 1))
    scores = data.draw(score_matrices(cols_multiple_of=m))
    mask = select_mask(scores, n / m, pattern=f"{n}:{m}")
    groups = mask.reshape(scores.shape[0], -1, m)
    assert (groups.sum(dim=-1) == n).all()
    for row in range(scores.shape[0]):
        for g in range(groups.shape[1]):
            assert_lowest_with_index_ties(scores[row, g * m : (g + 1) * m], groups[row, g])


@FAST
@given(rows=st.integers(1, 5), cols=st.integers(1, 40), sparsity=SPARSITIES)
def test_all_equal_rows_prune_the_first_k_columns(rows: int, cols: int, sparsity: float):
    mask = select_mask(torch.ones(rows, cols), sparsity)
    k = prune_count(cols, sparsity)
    expected = torch.zeros(rows, cols, dtype=torch.bool)
    expected[:, :k] = True
    assert torch.equal(mask, expected)


@FAST
@given(scores=score_matrices(), data=st.data(), bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_scores_raise_a_clear_error(scores: torch.Tensor, data: st.DataObject, bad: float):
    row = data.draw(st.integers(0, scores.shape[0] - 1))
    col = data.draw(st.integers(0, scores.shape[1] - 1))
    scores = scores.clone()
    scores[row, col] = bad
    group = data.draw(st.sampled_from(["row", "layer"]))
    with pytest.raises(NonFiniteScoresError, match="NaN" if math.isnan(bad) else "infinite"):
        select_mask(scores, 0.5, group=group)
    if not math.isnan(bad):  # fp16 score mode: infinities sort (the reference's overflow), counts stay exact
        mask = select_mask(scores, 0.5, group="row", allow_inf=True)
        assert mask.sum(dim=1).tolist() == [prune_count(scores.shape[1], 0.5)] * scores.shape[0]
        assert bool(mask[row, col]) == (bad < 0 and prune_count(scores.shape[1], 0.5) >= 1)  # -inf goes first


@FAST
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 37)), seed=st.integers(0, 2**16))
def test_mask_packing_round_trips(shape: tuple[int, int], seed: int):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    assert torch.equal(unpack_mask(pack_mask(mask), shape), mask)


@FAST
@given(text=st.text(max_size=8))
def test_pattern_parsing_accepts_valid_patterns_and_names_the_problem_otherwise(text: str):
    try:
        nm = parse_pattern(text)
    except ValueError as err:
        assert "pattern=" in str(err)
    else:
        assert nm is None or 0 < nm[0] < nm[1]


def test_nm_needs_a_divisible_input_dimension():
    with pytest.raises(ValueError, match="divisible by 4"):
        select_mask(torch.rand(3, 10), 0.5, pattern="2:4")
    model = tiny_model(hidden_size=76, intermediate_size=152, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(ValueError, match=r"divisible by M=8.*d_in=76"):  # refused before any work
        GBLMPruner(model, GBLMConfig(method="wanda", pattern="4:8", device="cpu"))


# -- NaN / inf in a model: a clear error naming the layer ---------------------------------------------------------
IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


def _tiny(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return tiny_model(num_hidden_layers=1).to(dtype)


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_weight_is_named(method: str, bad: float):
    model = _tiny()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[3, 5] = bad
    pruner = GBLMPruner(model, GBLMConfig(method=method, device="cpu", num_samples=2, seqlen=16))
    from optimum_gblm.gradients.collector import NonFiniteGradientError

    with pytest.raises((NonFiniteScoresError, NonFiniteGradientError)) as err:
        pruner.prune(calibration=IDS, progress=False)
    if isinstance(err.value, NonFiniteScoresError):  # the pass itself breaks first when the loss is not finite
        assert "model.layers.0.mlp.down_proj" in str(err.value) and "weights hold" in str(err.value)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_non_finite_calibration_statistics_are_named(method: str):
    model = _tiny()
    with torch.no_grad():
        model.model.layers[0].post_attention_layernorm.weight[7] = math.nan  # the MLP inputs of block 0
    pruner = GBLMPruner(model, GBLMConfig(method=method, device="cpu", num_samples=2, seqlen=16))
    with pytest.raises(NonFiniteScoresError, match=r"model\.layers\.0\.mlp\.gate_proj .*NaN"):
        pruner.prune(calibration=IDS, progress=False)


# -- dtypes, dead inputs ----------------------------------------------------------------------------------------------
def expected_pruned(record, method: str) -> int:
    rows, cols = record.shape
    if method in ("sparsegpt", "gblm-obs"):  # one group per matrix (blocks share an exact total)
        return prune_count(rows * cols, record.target_sparsity)
    return rows * prune_count(cols, record.target_sparsity)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_every_method_prunes_every_dtype_to_the_exact_target(dtype: torch.dtype):
    for method in [m for m in list_methods() if not get_method(m).structured]:  # structured: the next test
        config = GBLMConfig(method=method, device="cpu", num_samples=2, seqlen=16)
        if method == "magnitude":
            config.group = "row"
        pruner = GBLMPruner(_tiny(dtype), config)
        pruner.prune(calibration=IDS, progress=False)
        for name, record in pruner.pruning_map.targets.items():
            mask = pruner.pruning_map.mask(name)
            weight = pruner.model.get_submodule(name).weight
            assert weight.dtype == dtype and torch.isfinite(weight).all(), (method, name)
            assert int(mask.sum()) == expected_pruned(record, method), (method, name)
            assert (weight[mask.to(weight.device)] == 0).all(), (method, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_every_structured_method_keeps_the_dtype_and_removes_the_budget(dtype: torch.dtype):
    for method in [m for m in list_methods() if get_method(m).structured]:
        model = _tiny(dtype)
        before = sum(p.numel() for p in model.model.layers.parameters())
        config = GBLMConfig(method=method, sparsity=0.3, device="cpu", num_samples=2, seqlen=16)
        pruner = GBLMPruner(model, config)
        pruner.prune(calibration=IDS, progress=False)
        params = list(pruner.model.model.layers.parameters())
        assert all(p.dtype == dtype and torch.isfinite(p).all() for p in params), method
        assert sum(p.numel() for p in params) < before, method


@pytest.mark.parametrize("method", ["sparsegpt", "gblm-obs"])
def test_sparsegpt_handles_dead_input_channels(method: str):
    model = _tiny()
    dead = [0, 5, 6, 31]
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[dead] = 0  # q/k/v never see these inputs
    pruner = GBLMPruner(model, GBLMConfig(method=method, device="cpu", num_samples=2, seqlen=16))
    pruner.prune(calibration=IDS, progress=False)
    for proj in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{proj}"
        weight, record = model.get_submodule(name).weight, pruner.pruning_map.targets[name]
        assert torch.isfinite(weight).all() and (weight[:, dead] == 0).all()
        assert int(pruner.pruning_map.mask(name).sum()) == expected_pruned(record, method)


def test_obs_kernel_with_an_all_dead_hessian_stays_finite():
    weight = torch.randn(8, 16)
    factor = inverse_hessian_factor(torch.zeros(16, 16), 0.01)
    mask = obs_prune(weight, factor, 0.5, None, blocksize=8)
    assert int(mask.sum()) == 64 and torch.isfinite(weight).all()


# -- configs from JSON ------------------------------------------------------------------------------------------------
def _write(path: Path, payload) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload), encoding="utf-8")
    return path


def test_unknown_keys_from_a_newer_version_warn_and_are_dropped(tmp_path: Path):
    data = {"config": {**GBLMConfig(method="wanda").to_dict(), "future_knob": 3, "another": {"x": 1}}}
    with pytest.warns(UserWarning, match=r"future_knob"):
        config = GBLMConfig.from_pretrained(_write(tmp_path / "gblm_config.json", data))
    assert config.method == "wanda" and not hasattr(config, "future_knob")
    with pytest.raises(ValueError, match="unknown config key"):
        GBLMConfig.from_dict(data["config"], strict=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10_000))
def test_truncated_json_is_refused_naming_the_file(tmp_path: Path, cut: int):
    text = json.dumps({"config": GBLMConfig().to_dict()}, indent=2)
    path = _write(tmp_path / "gblm_config.json", text[: cut % len(text)])
    with pytest.raises(ValueError, match=r"gblm_config\.json is not valid JSON"):
        GBLMConfig.from_pretrained(path)


@pytest.mark.parametrize(
    "payload, problem",
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        ("[1, 2, 3]", "JSON list, not a GBLMConfig"),
        ('{"config": {"sparsity": "0.5"}}', "sparsity='0.5' is invalid: expected a finite number"),
        ('{"config": {"num_samples": 1.5}}', "num_samples=1.5 is invalid: expected an integer"),
        ('{"config": {"targets": 5}}', "targets=5 is invalid: expected a string or a list of strings"),
        ('{"config": {"trust_remote_code": "false"}}', "trust_remote_code='false' is invalid: expected true or false"),
        ('{"config": {"method": "sparsegpt", "method_args": {"blocksize": "64"}}}', "blocksize='64' is invalid"),
        ('{"config": {"gradient_scale": NaN}}', "gradient_scale=nan is invalid"),
    ],
)
def test_corrupt_or_wrongly_typed_config_files_get_a_clear_error(tmp_path: Path, payload, problem: str):
    path = tmp_path / "gblm_config.json"
    path.write_bytes(payload if isinstance(payload, bytes) else payload.encode())
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(".", r"\.")):
        GBLMConfig.from_pretrained(path)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
FIELDS = [name for name in GBLMConfig().to_dict() if name != "library_version"]


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(FIELDS), value=JSON_VALUES, method=st.sampled_from(list_methods()))
def test_any_json_value_in_any_field_is_accepted_or_a_value_error(name: str, value, method: str):
    """No TypeError, AttributeError or re.error escapes validation, whatever a JSON file holds."""
    data = {"method": method, name: value}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = GBLMConfig.from_dict(data)
    except ValueError as err:
        assert name in str(err) or "method" in str(err) or "pattern" in str(err), str(err)
    else:
        config.validate()
        json.dumps(config.to_dict(), allow_nan=False)  # what was accepted serialises back as strict JSON


METHOD_ARGS = [(m, f.name) for m in list_methods() for f in dataclass_fields(get_method(m).args)]


@settings(max_examples=100, deadline=None)
@given(pair=st.sampled_from(METHOD_ARGS), value=JSON_VALUES)
def test_any_json_value_as_a_method_argument_is_accepted_or_a_value_error(pair: tuple[str, str], value):
    method, argument = pair
    try:
        config = GBLMConfig(method=method, method_args={argument: value})
    except ValueError as err:
        assert argument in str(err), str(err)
    else:
        json.dumps(config.to_dict(), allow_nan=False)
