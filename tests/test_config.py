"""GBLMConfig validation: every bad value names the field and what is allowed."""

import json

import pytest

from optimum_gblm import GBLMConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.5}, "sparsity=1.5 is invalid: it must be a number strictly between 0 and 1"),
        ({"sparsity": 0.0}, "strictly between 0 and 1"),
        ({"method": "foo"}, "method='foo' is unknown: choose one of gblm, gradient, wanda, sparsegpt, magnitude"),
        ({"pattern": "4:2"}, "0 < N < M"),
        ({"pattern": "2:2"}, "0 < N < M"),
        ({"pattern": "half"}, "use 'unstructured' or 'N:M'"),
        ({"pattern": "2:4", "sparsity": 0.6}, "set sparsity=0.5"),
        ({"group": "block"}, "group='block' is invalid: choose one of row, layer"),
        ({"method": "sparsegpt", "group": "row"}, "not available for method='sparsegpt'"),
        ({"gradient_norm": "l3"}, "gradient_norm='l3' is invalid: choose one of l1, l2"),
        ({"num_samples": 0}, "num_samples=0 is invalid"),
        ({"allocation": "gradient", "pattern": "2:4"}, "only defined for pattern='unstructured'"),
        ({"device": "gpu"}, "device='gpu' is invalid"),
        ({"targets": ["("]}, "invalid regular expression"),
    ],
)
def test_invalid_values_raise_with_field_and_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("=", "=")):
        GBLMConfig(**kwargs)


def test_defaults_follow_methods():
    assert GBLMConfig(method="magnitude").effective_group == "layer"
    assert GBLMConfig(method="wanda").effective_group == "row"
    assert GBLMConfig(method="gblm-obs").effective_allocation == "gradient"
    assert GBLMConfig(method="gblm-obs", pattern="2:4").effective_allocation == "uniform"
    assert GBLMConfig(method="gblm-obs", allocation="uniform").needs_gradients
    assert not GBLMConfig(method="wanda").needs_gradients
    assert GBLMConfig(method="wanda", allocation="gradient").needs_gradients


def test_round_trip_and_unknown_keys(tmp_path):
    config = GBLMConfig(method="wanda", sparsity=0.6, seqlen=64, ignore=["down_proj"])
    config.save_pretrained(tmp_path)
    assert GBLMConfig.from_pretrained(tmp_path) == config
    data = json.loads((tmp_path / "gblm_config.json").read_text())
    data["config"]["from_the_future"] = 1
    (tmp_path / "gblm_config.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="from_the_future"):
        assert GBLMConfig.from_pretrained(tmp_path) == config
    assert config.to_dict()["library_version"]


def test_fingerprint_ignores_device_but_not_method():
    a = GBLMConfig(method="wanda")
    assert a.fingerprint() == GBLMConfig(method="wanda", device="cpu").fingerprint()
    assert a.fingerprint() != GBLMConfig(method="gblm").fingerprint()
