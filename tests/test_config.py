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
        ({"group": "block"}, "group='block' is not available for method='gblm': allowed row, layer"),
        ({"group": "column"}, "group='column' is not available for method='gblm': allowed row, layer"),
        ({"method": "sparsegpt", "method_args": {"blocksize": 0}}, "blocksize=0 is invalid: it must be a positive"),
        ({"method": "sparsegpt", "method_args": {"percdamp": -1.0}}, "percdamp=-1.0 is invalid: it must be a number"),
        ({"method": "gblm-obs", "method_args": {"beta": -1.0}}, "beta=-1.0 is invalid"),
        ({"method": "wanda", "method_args": {"beta": 1.0}}, "method 'wanda' has no argument(s) beta: its arguments"),
        ({"method": "sparsegpt", "method_args": {"beta": 1.0}}, "its arguments are blocksize, percdamp"),
        ({"pipeline": "offloaded"}, "pipeline='offloaded' is invalid: choose one of auto, datafree, sequential"),
        ({"method": "wanda", "pipeline": "datafree"}, "pipeline='datafree' cannot run method='wanda'"),
        ({"intermediates": "gpu"}, "intermediates='gpu' is invalid: choose one of device, cpu, disk"),
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


def test_fingerprint_ignores_where_work_runs_but_not_what_changes_the_result():
    a = GBLMConfig(method="wanda")
    same = {"device": "cpu", "batch_size": 1, "intermediates": "disk", "pipeline": "sequential"}
    assert a.fingerprint() == GBLMConfig(method="wanda", **same).fingerprint()
    assert a.fingerprint() != GBLMConfig(method="gblm").fingerprint()
    # The loading dtype changes the weights being scored, hence the masks: it is part of the fingerprint (the
    # docstring used to say the opposite).
    assert a.fingerprint() != GBLMConfig(method="wanda", dtype="bfloat16").fingerprint()
    assert "dtype" in GBLMConfig.fingerprint.__doc__ and "included" in GBLMConfig.fingerprint.__doc__
    # Method arguments count, and explicit defaults equal implicit ones.
    obs = GBLMConfig(method="sparsegpt")
    assert obs.fingerprint() == GBLMConfig(method="sparsegpt", method_args={"blocksize": 128}).fingerprint()
    assert obs.fingerprint() != GBLMConfig(method="sparsegpt", method_args={"blocksize": 64}).fingerprint()


def test_sparsegpt_accepts_its_own_block_group():
    """The error for another group offers `block`: asking for it must work (it used to be rejected)."""
    assert GBLMConfig(method="sparsegpt", group="block").effective_group == "block"
    with pytest.raises(ValueError, match="allowed block"):
        GBLMConfig(method="sparsegpt", group="row")


def test_method_arguments_belong_to_their_method():
    config = GBLMConfig(method="gblm-obs", method_args={"beta": 0.5})
    assert config.method_args == {"blocksize": 128, "percdamp": 0.01, "beta": 0.5}  # defaults filled in
    assert config.args.beta == 0.5 and GBLMConfig(method="wanda").method_args == {}
    flat = GBLMConfig.from_dict({"method": "sparsegpt", "blocksize": 64}, strict=True)
    assert flat.method_args == {"blocksize": 64, "percdamp": 0.01}
    with pytest.raises(ValueError, match="beta is an argument of method gblm-obs, not of method='wanda'"):
        GBLMConfig.from_dict({"method": "wanda", "beta": 1.0}, strict=True)
    with pytest.raises(ValueError, match="unknown config key"):
        GBLMConfig.from_dict({"method": "wanda", "nonsense": 1}, strict=True)


def test_version_1_config_keys_are_mapped():
    v1 = {"method": "gblm-obs", "blocksize": 64, "percdamp": 0.02, "beta": 0.0, "offload_activations": True}
    config = GBLMConfig.from_dict(v1)
    assert config.method_args == {"blocksize": 64, "percdamp": 0.02, "beta": 0.0} and config.intermediates == "cpu"
    # A version-1 file carries every flat argument, also those its method does not take: dropped silently.
    wanda = GBLMConfig.from_dict({"method": "wanda", "blocksize": 128, "percdamp": 0.01, "beta": 1.0})
    assert wanda.method_args == {} and wanda == GBLMConfig(method="wanda")
