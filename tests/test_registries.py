"""The method and adapter registries: a newly registered method or model family is usable everywhere at once (config,
pruner, CLI, model card), bad registrations are refused, and the public API exports the extension points."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

import optimum_gblm
from optimum_gblm import GBLMConfig, GBLMPruner, MethodArgs, PruningMethod, list_methods, register_method
from optimum_gblm.adapters import (
    DecoderAdapter,
    ModelAdapter,
    TimmViTAdapter,
    UnsupportedModel,
    adapter_for_source,
    get_adapter,
    list_adapters,
    register_adapter,
    supported_architectures,
)
from optimum_gblm.adapters import registry as adapter_registry
from optimum_gblm.masks import prune_count
from optimum_gblm.methods import registry as methods_registry
from optimum_gblm.publishing.cards import card_metadata, render_model_card
from tests.conftest import tiny_model
from tests.helpers.registries import restored


# -- a method registered by a test ----------------------------------------------------------------------------------
@dataclass
class RandomArgs(MethodArgs):
    random_seed: int = field(default=1, metadata={"help": "Seed of the random scores."})


@pytest.fixture
def method_registry():
    """The method registry as it was before the test, restored afterwards (also when the test fails), so a method
    registered here (or a refused registration that slipped through) never reaches other tests."""
    with restored(methods_registry._REGISTRY):
        yield methods_registry._REGISTRY


@pytest.fixture
def random_method(method_registry):
    """A "random" method with one argument of its own, registered for one test."""

    @register_method
    class RandomPruning(PruningMethod):
        name = "random"
        args = RandomArgs
        description = "uniformly random scores (a sanity baseline)"
        card_description = "random pruning, a sanity baseline that ignores the weights"

        def score(self, job):
            generator = torch.Generator().manual_seed(job.args.random_seed)
            return torch.rand(job.weight.shape, generator=generator)

    return RandomPruning


def _cfg(method: str, **kwargs) -> GBLMConfig:
    return GBLMConfig(method=method, num_samples=4, seqlen=16, device="cpu", **kwargs)


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight == 0 for n, m in get_adapter(model).target_linears(model).items()}


def test_a_registered_method_is_validated_by_the_config(random_method):
    assert list_methods()[-1] == "random"
    assert GBLMConfig(method="random").method_args == {"random_seed": 1}
    assert _cfg("random", method_args={"random_seed": 7}).args == RandomArgs(7)
    assert GBLMConfig.from_dict({"method": "random", "random_seed": 3}).method_args == {"random_seed": 3}  # flat
    with pytest.raises(ValueError, match="random_seed=0 is invalid: it must be a positive integer"):
        GBLMConfig(method="random", method_args={"random_seed": 0})
    with pytest.raises(ValueError, match="method 'random' has no argument.* blocksize: its arguments are random_seed"):
        GBLMConfig(method="random", method_args={"blocksize": 8})
    with pytest.raises(ValueError, match="random_seed is an argument of method random, not of method='wanda'"):
        GBLMConfig.from_dict({"method": "wanda", "random_seed": 3})
    with pytest.raises(ValueError, match="group='block' is not available for method='random': allowed row, layer"):
        GBLMConfig(method="random", group="block")


def test_a_registered_method_prunes(random_method):
    model = tiny_model()
    pruner = GBLMPruner(model, _cfg("random"))
    pruner.prune(progress=False)  # no statistic, no gradients: the data-free pipeline, no calibration needed
    assert pruner.calibration is None and len(pruner.pruning_map.targets) == 14
    for name, mask in _masks(model).items():
        assert (mask.sum(dim=1) == prune_count(mask.shape[1], 0.5)).all(), name  # its default group: row
    (stage,) = pruner.pruning_map.stages
    assert stage.method == "random" and stage.settings["method_args"] == {"random_seed": 1}
    same, other, magnitude = tiny_model(), tiny_model(), tiny_model()
    GBLMPruner(same, _cfg("random")).prune(progress=False)
    GBLMPruner(other, _cfg("random", method_args={"random_seed": 2})).prune(progress=False)
    GBLMPruner(magnitude, _cfg("magnitude", group="row")).prune(progress=False)
    first = _masks(model)
    assert all(torch.equal(first[n], m) for n, m in _masks(same).items())  # its own argument is used ...
    assert not any(torch.equal(first[n], m) for n, m in _masks(other).items())
    assert not any(torch.equal(first[n], m) for n, m in _masks(magnitude).items())  # ... and its own score


def test_a_registered_method_gets_cli_options(random_method):
    from optimum_gblm.commands.options import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    groups = {group.title: [a.option_strings for a in group._group_actions] for group in parser._action_groups}
    assert groups["random arguments"] == [["--random-seed"]]
    method_option = next(a for a in parser._actions if a.dest == "method")
    assert "random" in method_option.choices
    config = config_from_args(parser.parse_args(["--method", "random", "--random-seed", "5"]))
    assert config.method == "random" and config.method_args == {"random_seed": 5}
    assert config_from_args(parser.parse_args(["--method", "random"])).method_args == {"random_seed": 1}


def test_a_registered_method_is_named_on_the_model_card(random_method):
    pruner = GBLMPruner(tiny_model(), _cfg("random", method_args={"random_seed": 3}))
    pruner.prune(progress=False)
    sidecar = json.loads(json.dumps(pruner.sidecar(), default=str))
    card = render_model_card(sidecar)
    assert f"| Method | `random`: {random_method.card_description} |" in card
    assert "| Method arguments | random_seed 3 |" in card and "| Gradients |" not in card
    assert "random" in card_metadata(sidecar)["tags"] and "pruned with random" in card


def _method(**attributes) -> type[PruningMethod]:
    defaults = {"name": "scratch", "description": "d", "card_description": "c"}
    return type("Scratch", (PruningMethod,), {**defaults, **attributes})


@dataclass
class NotMethodArgs:
    size: int = 1


@dataclass
class ClashingArgs(MethodArgs):
    seed: int = 1  # a GBLMConfig field: flat method arguments share the config's namespace


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"name": "wanda"}, "A pruning method named 'wanda' is already registered"),
        ({"name": ""}, "Scratch needs a `name`"),
        ({"description": ""}, "method 'scratch' needs a `description`"),
        ({"card_description": ""}, "method 'scratch' needs a `card_description`"),
        ({"args": NotMethodArgs}, "`args` must be a MethodArgs dataclass"),
        ({"args": dict}, "`args` must be a MethodArgs dataclass"),
        ({"groups": ()}, "declares no comparison group"),
        ({"args": ClashingArgs}, "argument name\\(s\\) seed are GBLMConfig fields"),
    ],
)
def test_bad_method_registrations_are_refused(attributes, message, method_registry):
    before = list_methods()
    with pytest.raises(ValueError, match=message):
        register_method(_method(**attributes))
    assert list_methods() == before


def test_a_description_is_required_even_when_inherited_empty(method_registry):
    class NoDescription(PruningMethod):
        name = "no-description"
        card_description = "c"

    with pytest.raises(ValueError, match="needs a `description`"):
        register_method(NoDescription)
    assert "no-description" not in list_methods()


# -- adapters ---------------------------------------------------------------------------------------------------------
class ToyBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class ToyNet(nn.Module):
    def __init__(self, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(ToyBlock(width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x)
        return x


@pytest.fixture
def adapters():
    """The adapter registry as it was before the test, restored afterwards (also when the test fails)."""
    before = list(adapter_registry._ADAPTERS)
    try:
        yield adapter_registry._ADAPTERS
    finally:
        adapter_registry._ADAPTERS[:] = before


@pytest.fixture
def toy_adapter(adapters):
    """An adapter for ToyNet, registered for one test."""

    @register_adapter
    class ToyAdapter(ModelAdapter):
        name = "toy"
        library = "torch"
        metric_name = "mse"
        block_path = "layers"
        block_linears = ("up", "down")

        @classmethod
        def supports(cls, model):
            return isinstance(model, ToyNet)

        @classmethod
        def architectures(cls):
            return ["ToyNet (tests)"]

        @classmethod
        def claims_source(cls, source):
            return source.startswith("toy:")

        def forward(self, model, sample):
            return model(sample)

        def make_calibration(self, data, config):
            return [x.unsqueeze(0) for x in data]

    return ToyAdapter


def test_a_registered_adapter_serves_its_models(toy_adapter):
    model = ToyNet()
    assert isinstance(get_adapter(model), toy_adapter) and adapter_for_source("toy:net") is toy_adapter
    assert "ToyNet (tests)" in supported_architectures()
    pruner = GBLMPruner(model, _cfg("wanda"))
    assert [t.name for t in pruner.targets()] == ["layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down"]
    pruner.prune(calibration=torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(0)), progress=False)
    for name, mask in _masks(model).items():
        assert (mask.sum(dim=1) == prune_count(mask.shape[1], 0.5)).all(), name
    assert pruner.pruning_map.overall_sparsity == 0.5 and pruner.pruning_map.stages[0].method == "wanda"


def test_register_adapter_refuses_duplicates_and_incomplete_adapters(adapters):
    before = list_adapters()
    with pytest.raises(ValueError, match="An adapter named 'decoder' is already registered"):
        register_adapter(type("AnotherDecoder", (DecoderAdapter,), {}))
    with pytest.raises(ValueError, match="An adapter named 'timm-vit' is already registered"):
        register_adapter(type("AnotherViT", (ModelAdapter,), {"name": "timm-vit"}))
    with pytest.raises(ValueError, match="adapter Incomplete needs `library`"):
        register_adapter(type("Incomplete", (ModelAdapter,), {"name": "incomplete"}))
    assert list_adapters() == before


def test_unsupported_models_name_the_supported_architectures():
    with pytest.raises(UnsupportedModel, match="No adapter for architecture 'Sequential'") as caught:
        get_adapter(nn.Sequential(nn.Linear(2, 2)))
    assert isinstance(caught.value, ValueError) and caught.value.kind == "Sequential"
    supported = supported_architectures()
    assert "llama (transformers)" in supported and any("VisionTransformer" in s for s in supported)
    assert all(s in str(caught.value) for s in supported)


def test_adapter_for_source(tmp_path: Path):
    for source in ("timm/vit_tiny_patch16_224", "hf-hub:org/x", "timm:vit_tiny_patch16_224"):
        assert adapter_for_source(source) is TimmViTAdapter, source
    for source in ("org/model", "gpt2", "HuggingFaceTB/SmolLM2-135M", str(tmp_path / "missing")):
        assert adapter_for_source(source) is DecoderAdapter, source
    timm_folder, hf_folder = tmp_path / "timm", tmp_path / "hf"
    timm_folder.mkdir()
    hf_folder.mkdir()
    (timm_folder / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 5}))
    (hf_folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    assert adapter_for_source(str(timm_folder)) is TimmViTAdapter
    assert adapter_for_source(str(hf_folder)) is DecoderAdapter


# -- the public API ---------------------------------------------------------------------------------------------------
def test_public_api_exports_the_extension_points():
    from optimum_gblm import GBLMGradientCallback, PruneTarget, PruningMap, register_adapter, register_method
    from optimum_gblm.adapters.registry import register_adapter as adapter_registration
    from optimum_gblm.gradients.trainer import GBLMGradientCallback as callback
    from optimum_gblm.methods.registry import register_method as method_registration
    from optimum_gblm.pruning_map import PruningMap as pruning_map
    from optimum_gblm.targets import PruneTarget as prune_target

    assert register_method is method_registration and register_adapter is adapter_registration
    assert GBLMGradientCallback is callback and PruneTarget is prune_target and PruningMap is pruning_map
    assert {"register_method", "register_adapter", "GBLMGradientCallback", "PruneTarget", "PruningMap"} <= set(
        optimum_gblm.__all__
    )
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        optimum_gblm.NoSuchName  # noqa: B018


def test_the_cli_help_lists_what_is_registered(random_method, toy_adapter):
    """The help's lists of methods and models come from the registries: a method or adapter registered later is
    named without editing any help text, and every built-in method and decoder family is named."""
    from optimum_gblm.adapters.families import DECODER_FAMILIES
    from optimum_gblm.commands.overview import cli_description, model_help, prune_help

    description, flat = cli_description(), " ".join(cli_description().split())
    assert "GBLM-Pruner" in description and "\nmethods:" in description and "\nmodels:" in description
    for name in list_methods():
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flat), name
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", prune_help()), name
    assert "structured, whole heads / channels removed" in flat
    for family in DECODER_FAMILIES:
        assert family in flat and family in model_help(), family
    assert "ToyNet (tests)" in flat and "ToyNet (tests)" in model_help()
    assert f"one of {len(list_methods())} methods" in prune_help()


# -- recovery subsets -------------------------------------------------------------------------------------------------
@pytest.fixture
def subset_registry():
    """The recovery-subset registry as it was before the test, restored afterwards (also when the test fails)."""
    from optimum_gblm.recovery import registry

    with restored(registry._REGISTRY):
        yield registry._REGISTRY


@pytest.fixture
def down_proj_subset(subset_registry):
    """A subset that trains pruned weights directly: the MLP output projections (their zeros are put back after
    every optimizer step), registered for one test."""
    from optimum_gblm import RecoverySubset, register_recovery_subset

    @register_recovery_subset
    class DownProjections(RecoverySubset):
        name = "down_proj"
        help = "the MLP output projections, trained directly with their pruned weights kept at zero"
        card_text = "MLP output projections (trained directly, pruned weights kept at zero)"

        def parameters(self, model, targets):
            return {t.name: t.parameter for t in targets if t.name.endswith("mlp.down_proj")}

        def settings(self, model):
            return {"down_proj_layers": sum(name.endswith("mlp.down_proj") for name, _ in model.named_modules())}

        def card_note(self, settings):
            return f"{settings['down_proj_layers']} layers"

    return DownProjections


def test_a_registered_recovery_subset_recovers_end_to_end(down_proj_subset, tmp_path):
    from optimum_gblm import RecoveryConfig
    from optimum_gblm.commands.recover import add_recovery_arguments, recovery_config_from_args
    from tests.helpers.tiny_models import save_tiny_llama, write_text

    text = write_text(tmp_path / "text.txt", 400)
    folder = save_tiny_llama(tmp_path / "llama", tie_word_embeddings=False)
    config = GBLMConfig(method="magnitude", sparsity=0.5, calibration=str(text), seqlen=16, device="cpu")
    pruner = GBLMPruner.from_pretrained(folder, config)
    pruner.prune(progress=False)
    masks = {name: pruner.pruning_map.mask(name) for name in pruner.pruning_map.targets}
    before = {n: t.clone() for n, t in pruner.model.state_dict().items()}
    settings = dict(source=str(text), max_steps=3, batch_size=2, seqlen=16, num_windows=8, heldout_windows=1)
    pruner.recover(RecoveryConfig(subset=["down_proj"], learning_rate=1e-2, **settings), progress=False)
    after = pruner.model.state_dict()
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in range(2)}  # only its parameters moved
    for name, mask in masks.items():  # every pruned zero is still exactly zero, the trained ones included
        assert mask.any() and torch.count_nonzero(after[f"{name}.weight"][mask]) == 0, name
    stage = pruner.pruning_map.stages[-1]
    assert stage.settings["subset"] == ["down_proj"] and stage.settings["parameters"] == {"down_proj": 2}
    assert stage.settings["down_proj_layers"] == 2 and stage.settings["tied_head"] is False
    card = render_model_card(json.loads(json.dumps(pruner.sidecar(), default=str)))
    assert f"| Trained parameters | {down_proj_subset.card_text} (2 tensors); 2 layers |" in card
    # the config's help and the CLI offer it too
    subset_field = next(f for f in dataclasses.fields(RecoveryConfig) if f.name == "subset")
    assert f"down_proj ({down_proj_subset.help})" in subset_field.metadata["help"]
    assert "down_proj" in subset_field.metadata["choices"]
    parser = argparse.ArgumentParser()
    add_recovery_arguments(parser)
    assert "down_proj" in next(a for a in parser._actions if a.dest == "recovery_subset").choices
    args = parser.parse_args(["--subset", "norm", "down_proj"])
    assert recovery_config_from_args(args).subset == ["norm", "down_proj"]


def test_a_second_lora_subset_is_a_lora_subset_without_naming_it(subset_registry):
    """A LoRA subset is one with a parametrization: the config allows only one per run, whatever their names."""
    from optimum_gblm import RecoveryConfig, RecoverySubset, recovery, register_recovery_subset
    from optimum_gblm.recovery import lora_subsets
    from optimum_gblm.recovery.lora import MaskLoRA

    @register_recovery_subset
    class OtherLoRA(RecoverySubset):
        name = "otherlora"
        help = "another masked low-rank update"
        card_text = "another LoRA"
        parametrization = MaskLoRA

    assert lora_subsets() == ["masklora", "scalelora", "otherlora"]
    assert recovery.LORA_SUBSETS == ("masklora", "scalelora", "otherlora")  # the former constant, read now
    assert RecoveryConfig(subset=["norm", "otherlora"]).lora == "otherlora"
    with pytest.raises(ValueError, match="masklora and otherlora both update the same layers; choose one"):
        RecoveryConfig(subset=["masklora", "otherlora"])


def _subset(**attributes):
    from optimum_gblm import RecoverySubset

    defaults = {"name": "scratch", "help": "h", "card_text": "c", "parameters": lambda self, model, targets: {}}
    return type("Scratch", (RecoverySubset,), {**defaults, **attributes})


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"name": "norm"}, "A recovery subset named 'norm' is already registered"),
        ({"name": ""}, "Scratch needs a `name`"),
        ({"help": ""}, "recovery subset 'scratch' needs a `help`"),
        ({"card_text": ""}, "recovery subset 'scratch' needs a `card_text`"),
        ({"parametrization": dict}, "`parametrization` must be an nn.Module class"),
    ],
)
def test_bad_recovery_subset_registrations_are_refused(attributes, message, subset_registry):
    from optimum_gblm import register_recovery_subset
    from optimum_gblm.recovery import RecoverySubset, list_recovery_subsets

    before = list_recovery_subsets()
    with pytest.raises(ValueError, match=message):
        register_recovery_subset(_subset(**attributes))
    with pytest.raises(ValueError, match="'nothing' trains nothing: override `parameters`"):
        register_recovery_subset(
            type("Nothing", (RecoverySubset,), {"name": "nothing", "help": "h", "card_text": "c"})
        )
    with pytest.raises(ValueError, match="is not a RecoverySubset subclass"):
        register_recovery_subset(type("NotASubset", (), {"name": "x", "help": "h", "card_text": "c"}))
    assert list_recovery_subsets() == before


# -- evaluation metrics ----------------------------------------------------------------------------------------------
@pytest.fixture
def metric_registry():
    """The metric registry as it was before the test, restored afterwards (also when the test fails)."""
    from optimum_gblm.evaluation import metrics

    with restored(metrics._REGISTRY):
        yield metrics._REGISTRY


@pytest.fixture
def mse_metric(metric_registry):
    """The toy adapter's metric "mse": how far the residual ToyNet moves fixed random inputs, registered for one
    test."""
    from optimum_gblm import Evaluation, Evaluator, register_metric

    @register_metric
    class ResidualMSE(Evaluator):
        metric_name = "mse"
        label = "Residual MSE"
        higher_is_better = False
        inputs = "vectors"
        keywords = ("batch_size", "progress")

        @classmethod
        def for_model(cls, adapter, tokenizer, preprocessing, seqlen):
            return cls()

        def evaluate(self, model, batch_size=256, progress=True):
            x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                value = float(torch.cat([(model(b) - b).pow(2) for b in x.split(batch_size)]).mean())
            return Evaluation(value, {"inputs": 64, "batch_size": batch_size})

        @classmethod
        def format_value(cls, value):
            return f"{value:.4f}"

    return ResidualMSE


def test_a_registered_metric_evaluates_and_renders_on_the_card(toy_adapter, mse_metric):
    model = ToyNet()
    pruner = GBLMPruner(model, _cfg("wanda"))
    assert isinstance(pruner.evaluator, mse_metric)
    dense = pruner.evaluate(batch_size=16)
    with pytest.raises(TypeError, match="max_windows= does not apply .* mse, which takes batch_size, progress"):
        pruner.evaluate(max_windows=3)
    pruner.prune(calibration=torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(0)), progress=False)
    pruned = pruner.evaluate(batch_size=16)
    assert pruner.results == {"dense_mse": dense, "pruned_mse": pruned} and dense != pruned
    pruner.calibration = None  # the toy adapter's calibration is a plain list, which it cannot describe
    sidecar = json.loads(json.dumps(pruner.sidecar(), default=str))
    card = render_model_card(sidecar)
    change = f"{(pruned - dense) / dense:+.2%}"
    assert "| Residual MSE (" in card and f"| {dense:.4f} | {pruned:.4f} | {change} |" in card
    assert "Residual MSE: lower is better. Evaluation settings: batch_size=16, inputs=64." in card
    (entry,) = [e for e in card_metadata(sidecar)["model-index"][0]["results"] if e["metrics"][0]["type"] == "mse"]
    assert [m["name"] for m in entry["metrics"]] == ["Residual MSE (dense)", "Residual MSE (pruned)"]


def _metric(**attributes):
    from optimum_gblm import Evaluator

    defaults = {"metric_name": "scratch", "label": "Scratch", "higher_is_better": True, "inputs": "text"}
    defaults.update(keywords=("progress",), for_model=classmethod(lambda cls, *args: cls()))
    namespace = {**defaults, **attributes}
    if namespace["for_model"] is None:  # inherits Evaluator's, which builds nothing
        del namespace["for_model"]
    return type("Scratch", (Evaluator,), namespace)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"metric_name": "perplexity"}, "A metric named 'perplexity' is already registered"),
        ({"metric_name": ""}, "Scratch needs a `metric_name`"),
        ({"label": ""}, "metric 'scratch' needs a `label`"),
        ({"higher_is_better": None}, "`higher_is_better` must be True or False"),
        ({"inputs": ""}, "metric 'scratch' needs `inputs`"),
        ({"keywords": ()}, "metric 'scratch' needs `keywords`"),
        ({"for_model": None}, "needs a `for_model` classmethod"),
    ],
)
def test_bad_metric_registrations_are_refused(attributes, message, metric_registry):
    from optimum_gblm import register_metric
    from optimum_gblm.evaluation import list_metrics

    before = list_metrics()
    with pytest.raises(ValueError, match=message):
        register_metric(_metric(**attributes))
    assert list_metrics() == before


def test_evaluators_declare_the_keywords_their_evaluate_takes():
    """The declared keywords are what GBLMPruner.evaluate checks misplaced arguments against, so they must be the
    evaluate signatures; and the defaults it treats as "not given" must be its own signature's."""
    import inspect

    from optimum_gblm.evaluation import get_metric, list_metrics
    from optimum_gblm.evaluation.harness import TaskEvaluator
    from optimum_gblm.evaluation.verbs import METRIC_DEFAULTS, TASK_DEFAULTS

    for evaluator in [*(get_metric(n) for n in list_metrics()), TaskEvaluator]:
        params = [p for p in inspect.signature(evaluator.evaluate).parameters if p not in ("self", "model")]
        assert tuple(params) == evaluator.keywords, evaluator.__name__
        assert set(evaluator.keywords) - {"tasks"} <= set(METRIC_DEFAULTS) | set(TASK_DEFAULTS), evaluator.__name__
    signature = inspect.signature(GBLMPruner.evaluate).parameters
    for name, default in {**METRIC_DEFAULTS, **TASK_DEFAULTS}.items():
        assert signature[name].default == default, name
