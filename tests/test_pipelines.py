"""Calibration pipelines: where intermediates live, shared input sites, placement hooks, the pipeline registry."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from optimum_gblm import GBLMConfig, GBLMPruner, list_methods
from optimum_gblm.adapters import DecoderAdapter, get_adapter
from optimum_gblm.adapters.decoder import LLAMA_SHARED_INPUTS
from optimum_gblm.methods import get_method
from optimum_gblm.pipelines import (
    BlockByBlock,
    BlockPruner,
    Walk,
    WholeModel,
    list_pipelines,
    pipeline_for,
    register_pipeline,
)
from optimum_gblm.pipelines.datafree import DataFreePipeline
from optimum_gblm.pipelines.sequential import SequentialPipeline
from optimum_gblm.pruning_map import PruningMap
from optimum_gblm.statistics import InputStatistics
from tests.conftest import tiny_model
from tests.helpers.golden_parity import GOLDEN, case_key, compute
from tests.helpers.registries import restored

GOLDEN_DATA = json.loads(GOLDEN.read_text())
SAME_TORCH = GOLDEN_DATA["torch"].split("+")[0] == torch.__version__.split("+")[0]
STORE_PREFIX = "optimum-gblm-intermediates-"


def _cfg(method: str = "wanda", **kwargs) -> GBLMConfig:
    return GBLMConfig(method=method, num_samples=4, seqlen=16, device="cpu", **kwargs)


def _walk(model: nn.Module, config: GBLMConfig, handler, calib_ids: torch.Tensor, adapter=None) -> Walk:
    """The walk `GBLMPruner.prune` builds, for running a pipeline by hand."""
    adapter = adapter or get_adapter(model)
    return Walk(
        model,
        adapter,
        adapter.targets_by_block(model, config.targets, config.ignore),
        handler,
        statistic=get_method(config.method).statistic,
        samples=adapter.make_calibration(calib_ids, config),
        batch_size=config.batch_size,
        progress=False,
    )


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, differing[:5]


def _pruned_state(config: GBLMConfig, calib_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model = tiny_model()
    GBLMPruner(model, config).prune(calibration=calib_ids, progress=False)
    return _state(model)


@pytest.fixture
def scratch_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary folder for `tempfile`, so the disk store's folders can be counted."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# -- intermediates ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case",
    [
        {"method": "wanda", "pattern": "unstructured", "allocation": "uniform"},
        {"method": "sparsegpt", "pattern": "2:4", "allocation": "uniform"},
    ],
    ids=case_key,
)
def test_intermediates_on_cpu_and_disk_are_bit_identical(case, scratch_tmp: Path):
    results = {kind: compute("tiny-llama", {**case, "intermediates": kind}) for kind in ("device", "cpu", "disk")}
    for kind in ("cpu", "disk"):
        assert results[kind] == results["device"], kind
    if SAME_TORCH:  # the recording made before the redesign
        expected = GOLDEN_DATA["tiny-llama"][case_key(case)]
        assert (results["device"]["masks"], results["device"]["weights"]) == (expected["masks"], expected["weights"])
    assert not list(scratch_tmp.glob(STORE_PREFIX + "*"))


def test_disk_store_is_used_and_removed_also_when_pruning_raises(scratch_tmp: Path, calib_ids):
    model = tiny_model()
    config = _cfg("wanda", intermediates="disk")
    prune = BlockPruner(config, PruningMap(config.pattern))
    seen: list[list[str]] = []

    def handler(index, targets, stats):
        seen.append(sorted(p.name for p in scratch_tmp.glob(STORE_PREFIX + "*/*")))
        if index == 1:
            raise RuntimeError("boom in block 1")
        prune(index, targets, stats)

    with pytest.raises(RuntimeError, match="boom in block 1"):
        pipeline_for(config).run(_walk(model, config, handler, calib_ids))
    assert seen[0] == [f"{i}.safetensors" for i in range(4)] and len(seen) == 2  # one file per sample, on disk
    assert list(scratch_tmp.glob(STORE_PREFIX + "*")) == []
    GBLMPruner(tiny_model(), config).prune(calibration=calib_ids, progress=False)
    assert list(scratch_tmp.glob(STORE_PREFIX + "*")) == []


# -- input sites ------------------------------------------------------------------------------------------------------
def _recording_handler(config: GBLMConfig, record: list[dict[str, tuple[int, int]]]):
    """BlockPruner, plus per block: target name -> (id of its statistics, their number of samples)."""
    prune = BlockPruner(config, PruningMap(config.pattern))

    def handler(index, targets, stats):
        record.append({name: (id(s), s.nsamples) for name, s in stats.items()})
        prune(index, targets, stats)

    return handler


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_statistics_are_shared_per_site_and_unshared_gives_identical_masks(
    method, calib_ids, monkeypatch: pytest.MonkeyPatch
):
    calls = []
    add_batch = InputStatistics.add_batch
    monkeypatch.setattr(InputStatistics, "add_batch", lambda self, x: (calls.append(id(self)), add_batch(self, x)))
    config = _cfg(method)
    runs = {}
    for share in (True, False):
        model, record = tiny_model(), []
        pipeline = pipeline_for(config)
        assert isinstance(pipeline, SequentialPipeline) and pipeline.share_sites  # the default
        pipeline.share_sites = share
        calls.clear()
        pipeline.run(_walk(model, config, _recording_handler(config, record), calib_ids))
        runs[share] = (_state(model), record, len(calls))
    shared, unshared = runs[True][1], runs[False][1]
    for block in shared:
        assert len({stat_id for stat_id, _ in block.values()}) == 4, block  # 4 sites for 7 targets
        assert {n for _, n in block.values()} == {4}  # every sample counted once, not once per target
        prefix = next(iter(block)).split(".self_attn.")[0]  # model.layers.<i>
        assert (
            block[f"{prefix}.self_attn.q_proj"]
            == block[f"{prefix}.self_attn.k_proj"]
            == block[f"{prefix}.self_attn.v_proj"]
        )
    for block in unshared:
        assert len({stat_id for stat_id, _ in block.values()}) == 7 and {n for _, n in block.values()} == {4}
    assert (runs[True][2], runs[False][2]) == (2 * 4, 2 * 7)  # add_batch calls: one per statistics object
    _assert_same_state(runs[True][0], runs[False][0])
    _assert_same_state(runs[True][0], _pruned_state(config, calib_ids))  # the pruner runs the shared default


class MisdeclaredAdapter(DecoderAdapter):
    """o_proj declared to read the attention input (it reads the attention output): a wrong site declaration."""

    shared_inputs = {**LLAMA_SHARED_INPUTS, "self_attn.o_proj": "self_attn.input"}


def test_a_wrong_input_site_declaration_fails_loudly(calib_ids):
    model = tiny_model()
    pruner = GBLMPruner(model, _cfg("wanda"), adapter=MisdeclaredAdapter("llama"))
    with pytest.raises(RuntimeError, match=r"o_proj.*input site 'model\.layers\.0\.self_attn\.input'.*adapter"):
        pruner.prune(calibration=calib_ids, progress=False)
    # the declaration is right for the built-in adapter, and a data-free method reads no inputs at all
    GBLMPruner(tiny_model(), _cfg("wanda")).prune(calibration=calib_ids, progress=False)
    GBLMPruner(tiny_model(), _cfg("magnitude"), adapter=MisdeclaredAdapter("llama")).prune(progress=False)


# -- placement --------------------------------------------------------------------------------------------------------
class RecordingBlockByBlock(BlockByBlock):
    def __init__(self, device, blocks: nn.ModuleList) -> None:
        super().__init__(device)
        self.index = {id(block): i for i, block in enumerate(blocks)}
        self.calls: list[tuple[str, int]] = []

    def onload(self, block: nn.Module) -> None:
        self.calls.append(("onload", self.index[id(block)]))
        super().onload(block)

    def offload(self, block: nn.Module) -> None:
        self.calls.append(("offload", self.index[id(block)]))
        super().offload(block)


@pytest.mark.parametrize(
    ("method", "ignore", "visited"),
    [("wanda", [], [0, 1]), ("magnitude", [], [0, 1]), ("magnitude", [r"layers\.1\."], [0])],
)
def test_block_by_block_placement_visits_each_block_once(method, ignore, visited, calib_ids):
    config = _cfg(method, ignore=ignore)
    model = tiny_model()
    placement = RecordingBlockByBlock("cpu", get_adapter(model).blocks(model))
    pipeline = pipeline_for(config, placement)
    assert pipeline.placement is placement
    pipeline.run(_walk(model, config, BlockPruner(config, PruningMap(config.pattern)), calib_ids))
    assert placement.calls == [(step, i) for i in visited for step in ("onload", "offload")]
    assert placement._home == {} and {p.device.type for p in model.parameters()} == {"cpu"}
    _assert_same_state(_state(model), _pruned_state(config, calib_ids))  # same result as the whole-model default


@pytest.mark.gpu
def test_block_by_block_keeps_the_model_on_the_cpu(calib_ids):
    """Each block visits the GPU for its statistics and pruning, then goes back; the rest never moves."""
    config = GBLMConfig(method="wanda", num_samples=4, seqlen=16, device="cuda")
    model = tiny_model()
    placement = RecordingBlockByBlock("cuda", get_adapter(model).blocks(model))
    prune = BlockPruner(config, PruningMap(config.pattern))
    where: list[set[str]] = []

    def handler(index, targets, stats):
        where.append({t.parameter.device.type for t in targets})
        prune(index, targets, stats)

    pipeline_for(config, placement).run(_walk(model, config, handler, calib_ids))
    assert where == [{"cuda"}, {"cuda"}] and {p.device.type for p in model.parameters()} == {"cpu"}
    assert prune.pruning_map.pattern_ok and prune.pruning_map.overall_sparsity == 0.5


# -- the pipeline registry --------------------------------------------------------------------------------------------
def test_pipeline_for_picks_the_declared_pipeline_or_by_the_methods_statistic():
    assert list_pipelines() == ["datafree", "sequential", "structured"]
    for method in list_methods():
        declared = get_method(method).pipeline
        expected = SequentialPipeline if get_method(method).statistic else DataFreePipeline
        if declared is not None:
            expected = type(pipeline_for(GBLMConfig(method=method)))
            assert expected.name == declared, method
        assert type(pipeline_for(GBLMConfig(method=method))) is expected, method
    structured = [m for m in list_methods() if get_method(m).structured]
    assert structured and all(pipeline_for(GBLMConfig(method=m)).name == "structured" for m in structured)
    for method in ("magnitude", "gradient"):
        assert isinstance(pipeline_for(GBLMConfig(method=method)), DataFreePipeline)
    for method in ("wanda", "sparsegpt"):
        assert isinstance(pipeline_for(GBLMConfig(method=method)), SequentialPipeline)
    pipeline = pipeline_for(GBLMConfig(method="wanda", intermediates="disk"), WholeModel("cpu"))
    assert pipeline.intermediates == "disk" and isinstance(pipeline.placement, WholeModel)
    assert isinstance(pipeline_for(GBLMConfig(method="magnitude", pipeline="sequential")), SequentialPipeline)
    with pytest.raises(ValueError, match="pipeline='datafree' cannot run method='wanda'"):
        GBLMConfig(method="wanda", pipeline="datafree")
    with pytest.raises(ValueError, match="already registered"):
        register_pipeline(SequentialPipeline)
    walk = Walk(nn.Linear(1, 1), get_adapter(tiny_model()), [], lambda *a: None, statistic="hessian")
    with pytest.raises(ValueError, match="collects no hessian statistics"):
        DataFreePipeline().run(walk)


def test_a_data_free_method_on_the_sequential_pipeline_gives_the_same_masks(calib_ids):
    datafree = _pruned_state(_cfg("magnitude"), calib_ids)
    sequential = _pruned_state(_cfg("magnitude", pipeline="sequential"), calib_ids)
    _assert_same_state(datafree, sequential)
    assert sum(int((v == 0).sum()) for v in datafree.values()) > 0


def test_a_new_kind_of_method_is_one_more_registered_pipeline(calib_ids):
    """A method that declares its own pipeline is checked and pruned by it: the pruner has no branch per kind."""
    import optimum_gblm.pipelines as pipelines
    from optimum_gblm import PruningMethod, register_method
    from optimum_gblm.methods import registry
    from optimum_gblm.pipelines import Pipeline
    from optimum_gblm.pruning_map import Stage

    calls = []

    class HalveEveryWeight(Pipeline):
        name = "toy-halve"
        description = "halves every target weight (a test)"
        needs_data = True

        @classmethod
        def check(cls, model, adapter, config):
            calls.append("check")

        def prune(self, request):
            calls.append(("prune", len(request.calibration)))
            pruning_map = PruningMap(pattern=request.config.pattern)
            for block in request.adapter.targets_by_block(request.model, [], []):
                for target in block:
                    target.weight().mul_(0.5)
                    pruning_map.record(target.name, target.weight(), 0.0, target.input_site)
            pruning_map.stages.append(Stage("prune", request.config.method, {}))
            return pruning_map

    with restored(registry._REGISTRY, pipelines._PIPELINES):
        register_pipeline(HalveEveryWeight)

        @register_method
        class Halve(PruningMethod):
            name = "toy-halve"
            pipeline = "toy-halve"
            description = card_description = "halves every weight (a test)"

        model = tiny_model()
        weight = model.model.layers[0].mlp.up_proj.weight.detach().clone()
        pruner = GBLMPruner(model, GBLMConfig(method="toy-halve", num_samples=4, seqlen=16, device="cpu"))
        assert calls == ["check"]
        pruner.prune(calib_ids, progress=False)
        assert calls == ["check", ("prune", 4)]
        torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight, weight * 0.5, rtol=0, atol=0)
        assert pruner.pruning_map.stages[-1].method == "toy-halve"


def test_the_pruning_steps_run_without_a_pruner(calib_ids):
    """The gradient phase and prune_model are plain functions of explicit state: called directly, they give what
    the pruner's verbs give (same sums, same masks and weights)."""
    from optimum_gblm.gradient_phase import GradientSubject, run_gradient_phase
    from optimum_gblm.pipelines import PruneRequest, prune_model

    config = GBLMConfig(method="gblm", num_samples=4, seqlen=16, device="cpu")
    pruner = GBLMPruner(tiny_model(), config)
    pruner.prune(calib_ids, progress=False)

    model = tiny_model()
    adapter = get_adapter(model)
    calibration = adapter.make_calibration(calib_ids, config)
    phase = run_gradient_phase(GradientSubject(model, adapter, config, WholeModel("cpu"), calibration), progress=False)
    assert phase.allocation is None and phase.timings["gradients_s"] > 0
    for name, total in pruner.gradients.l1.items():
        assert torch.equal(phase.accumulation.l1[name], total), name
    request = PruneRequest(model, adapter, config, calibration, phase.accumulation.get("l1"), progress=False)
    pruning_map = prune_model(request)
    assert pruning_map.targets.keys() == pruner.pruning_map.targets.keys()
    for name in pruning_map.targets:
        assert torch.equal(model.get_submodule(name).weight, pruner.model.get_submodule(name).weight), name
