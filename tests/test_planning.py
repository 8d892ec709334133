"""The memory planner: exact weight and accumulator terms, ordering of the options, early refusal with the numbers."""

from __future__ import annotations

import pytest

from optimum_gblm import GBLMConfig
from optimum_gblm.adapters import get_adapter
from optimum_gblm.planning import (
    CALIBRATION_HOST_BYTES,
    GIB,
    RUNTIME_HOST_BYTES,
    MemoryPlanError,
    check_plan,
    plan,
    reference_skeleton,
)
from tests.conftest import tiny_model


def _plan(name: str, device_type: str = "cuda", **settings):
    model = reference_skeleton(name)
    return plan(model, get_adapter(model), GBLMConfig(dtype="bfloat16", **settings), device_type=device_type)


def test_reference_models_have_their_published_sizes():
    sizes = {"llama-2-7b": 6.74, "llama-2-13b": 13.0, "llama-2-70b": 69.0, "llama-3-8b": 8.03, "llama-3-70b": 70.6}
    for name, billions in sizes.items():
        model = reference_skeleton(name)
        assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.01), name


def test_weights_and_accumulators_are_counted_exactly():
    memory_plan = _plan("llama-2-7b", method="gblm", allocation="gradient")  # l1 and l2 accumulators
    gradients = memory_plan.phase("gradients", "on device")
    assert gradients.terms["weights"] == 6_738_415_616 * 2
    targets = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert gradients.terms["accumulators"] == targets * 4 * 2
    offloaded = memory_plan.phase("gradients", "offload_accumulators")
    assert offloaded.host - RUNTIME_HOST_BYTES - CALIBRATION_HOST_BYTES["offline-corpus"] == targets * 8
    assert gradients.device - offloaded.device == targets * 8


def test_gradient_checkpointing_keeps_block_inputs_and_one_block():
    plain = _plan("llama-2-7b", method="gblm", seqlen=2048).phase("gradients", "on device")
    checkpointed = _plan("llama-2-7b", method="gblm", seqlen=2048).phase("gradients", "gradient_checkpointing")
    assert checkpointed == _plan("llama-2-7b", method="gblm", seqlen=2048, gradient_checkpointing=True).phase(
        "gradients", "gradient_checkpointing"
    )
    block = 2048 * (10 * 4096 + 4 * 11008) * 4  # one block's saved activations (fp32 gradient pass)
    saved = 32 * block - (32 * 2048 * 4096 * 4 + block)  # all blocks' -> each block's input + one block
    assert plain.terms["activations"] - checkpointed.terms["activations"] == saved
    assert plain.device - checkpointed.device == saved
    assert checkpointed.seconds == pytest.approx(plain.seconds * 8 / 6)


def test_offloaded_placements_need_less_device_and_host_memory():
    memory_plan = _plan("llama-2-70b", method="sparsegpt")
    memory, cpu, disk = (memory_plan.phase("prune", f"{p} / device") for p in ("memory", "cpu", "disk"))
    assert memory.device > 130 * GIB and cpu.device < 40 * GIB and disk.device < 40 * GIB
    assert cpu.host > 128 * GIB and disk.host < 8 * GIB  # the model never lives in host memory with disk
    assert memory_plan.phase("prune", "disk / disk").device < disk.device  # activations leave the device


def test_a_plan_that_cannot_fit_is_refused_with_the_numbers_and_what_fits():
    memory_plan = _plan("llama-2-7b", device_type="cpu", method="wanda", num_samples=16)
    config = GBLMConfig(method="wanda", dtype="bfloat16", num_samples=16)
    with pytest.raises(MemoryPlanError, match=r"prune phase \(memory / device\) .* host 8.00 GiB available; .*disk"):
        check_plan(memory_plan, config, (None, 8 * GIB))
    check_plan(memory_plan, GBLMConfig(method="wanda", placement="disk", num_samples=16), (None, 8 * GIB))
    with pytest.raises(MemoryPlanError, match="no single-process option fits"):
        check_plan(memory_plan, config, (None, GIB))


def test_from_pretrained_refuses_before_loading(tmp_path, monkeypatch):
    import optimum_gblm.planning as planning
    from optimum_gblm.pruner import GBLMPruner

    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    monkeypatch.setattr(planning, "available_memory", lambda device_type: (None, 10 * 2**20))
    loaded = []
    monkeypatch.setattr("optimum_gblm.loading.load_model", lambda *a, **k: loaded.append(a))
    with pytest.raises(MemoryPlanError, match="host 0.01 GiB available"):
        GBLMPruner.from_pretrained(folder, GBLMConfig(method="wanda", device="cpu"))
    assert not loaded
    monkeypatch.undo()
    pruner = GBLMPruner.from_pretrained(folder, GBLMConfig(method="wanda", device="cpu"))
    assert pruner.model is not None


def test_plan_command_prints_the_table(capsys):
    import argparse

    from optimum_gblm.commands.plan import PlanCommand

    parser = argparse.ArgumentParser()
    PlanCommand.add_arguments(parser)
    command = PlanCommand.__new__(PlanCommand)
    command.args = parser.parse_args(["--model", "reference:llama-2-7b", "--method", "wanda", "--for-device", "cuda"])
    command.execute()
    out = capsys.readouterr().out
    assert "| prune | disk / disk |" in out and "| gradients | on device |" in out and "compute device cuda" in out


def test_a_gradient_pass_that_fits_only_checkpointed_is_refused_naming_checkpointing():
    memory_plan = _plan("llama-2-7b", device_type="cpu", method="gblm", seqlen=4096)
    plain = memory_plan.phase("gradients", "on device")
    checkpointed = memory_plan.phase("gradients", "gradient_checkpointing")
    assert checkpointed.host < plain.host
    between = (plain.host + checkpointed.host) // 2
    config = GBLMConfig(method="gblm", dtype="bfloat16", seqlen=4096)
    with pytest.raises(MemoryPlanError, match=r"gradients phase \(on device\).*would fit: gradient_checkpointing"):
        check_plan(memory_plan, config, (None, between))
    # With checkpointing asked for, its own phase is the one checked (a plan made with the option, as a user runs it).
    config = GBLMConfig(method="gblm", dtype="bfloat16", seqlen=4096, gradient_checkpointing=True)
    check_plan(
        _plan("llama-2-7b", device_type="cpu", method="gblm", seqlen=4096, gradient_checkpointing=True),
        config,
        (None, between),
    )
