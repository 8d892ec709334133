"""One validity check for plan and prune (routes.py): a disk placement cannot run a gradient pass, so a method that
needs gradients reads them from a cache; both commands refuse otherwise, before loading, naming the route that
works. The planner's advice fits every phase at once, and its times use the rate of the device planned for."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from optimum_gblm import GBLMConfig
from optimum_gblm.adapters import get_adapter
from optimum_gblm.planning import GIB, MemoryPlanError, check_plan, plan, reference_skeleton
from optimum_gblm.routes import GradientRouteError, check_gradient_route
from tests.helpers.tiny_models import save_tiny_llama, write_text

ROUTE_CLI = "`optimum-cli gblm gradients --output CACHE`"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("route")
    return {"model": save_tiny_llama(root / "tiny"), "text": write_text(root / "text.txt"), "root": root}


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    code = (
        "import sys; from optimum.commands.optimum_cli import main; sys.argv = ['optimum-cli', *sys.argv[1:]]; main()"
    )
    cmd = [sys.executable, "-c", code, "gblm", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def _options(assets: dict[str, Path], *extra: str | Path) -> list[str | Path]:
    calibration = ["--calibration", assets["text"], "--num-samples", "4", "--seqlen", "16", "--device", "cpu"]
    return ["--model", assets["model"], *calibration, *extra]


@pytest.mark.parametrize("extra", [("--method", "gblm"), ("--method", "gblm-obs", "--blockwise-gradients")])
def test_prune_and_plan_refuse_a_disk_gradient_pass_alike_before_loading(assets, extra):
    output = assets["root"] / "never"
    pruned = _cli("prune", *_options(assets, "--placement", "disk", *extra), "--output", output, "--no-progress")
    planned = _cli("plan", *_options(assets, "--placement", "disk", *extra))
    assert pruned.returncode == 2 and planned.returncode == 2, (pruned.stderr[-800:], planned.stderr[-800:])
    message = pruned.stderr.strip().splitlines()[-1].split("error: ", 1)[1]
    assert planned.stderr.strip().splitlines()[-1].endswith(message)  # the one check, the same words
    assert ROUTE_CLI in message and "prune --placement disk --gradients CACHE" in message
    assert "--placement 'disk'" in message and "placement='disk'" not in message and "=True" not in message
    assert "Loading" not in pruned.stderr and not output.exists()


def test_plan_plans_the_route_with_a_cache_to_write(assets):
    result = _cli("plan", *_options(assets, "--placement", "disk", "--method", "gblm-obs", "--gradients", "new.st"))
    assert result.returncode == 0, result.stderr[-800:]
    assert "Memory plan, gradients" in result.stderr and "gradients --output new.st` first" in result.stdout


def test_the_library_refuses_before_building_the_calibration_and_the_route_works(assets, tmp_path, monkeypatch):
    from optimum_gblm.pruner import GBLMPruner

    settings = dict(method="gblm-obs", calibration=str(assets["text"]), num_samples=4, seqlen=16, device="cpu")
    disk = GBLMPruner.from_pretrained(assets["model"], GBLMConfig(placement="disk", **settings))
    monkeypatch.setattr(disk, "calibration_data", lambda *a: pytest.fail("calibration built before the check"))
    with pytest.raises(GradientRouteError, match=r"placement='disk'.*prune\(gradients=CACHE\)") as info:
        disk.prune(progress=False)
    assert "--" not in str(info.value)
    monkeypatch.undo()
    cache = tmp_path / "grads.safetensors"
    GBLMPruner.from_pretrained(assets["model"], GBLMConfig(**settings)).collect_gradients(cache, progress=False)
    disk.prune(gradients=cache, progress=False)  # the route the message names
    assert disk.pruning_map is not None


def test_the_rule_lets_held_gradients_and_other_placements_through():
    check_gradient_route(GBLMConfig(method="gblm"))
    check_gradient_route(GBLMConfig(method="wanda", placement="disk"))
    check_gradient_route(GBLMConfig(method="gblm", placement="disk"), object())  # an accumulation already held
    with pytest.raises(GradientRouteError, match="two_pass_gradients=True"):
        check_gradient_route(GBLMConfig(method="gblm-obs", placement="disk", two_pass_gradients=True))


def _plan_7b(**settings):
    model = reference_skeleton("llama-2-7b")
    config = GBLMConfig(method="gblm-obs", dtype="bfloat16", **settings)
    return plan(model, get_adapter(model), config, device_type="cpu"), config


def test_advice_names_a_set_of_options_that_fits_every_phase():
    memory_plan, config = _plan_7b()
    host = {p.option: p.host for p in memory_plan.phases if p.name == "gradients"}
    disk, memory = memory_plan.phase("prune", "disk / disk").host, memory_plan.phase("prune", "memory / device").host
    assert host["blockwise_gradients"] < disk < memory < host["gradient_checkpointing"]  # the shape
    # Block-wise gradients fit, pruning only on disk, which reads a cache no block-wise pass writes: said at once,
    # not one phase per run.
    with pytest.raises(
        MemoryPlanError,
        match="for the whole run: pruning fits only with placement disk / .*no gradient pass that writes a cache",
    ):
        check_plan(memory_plan, config, (None, (disk + memory) // 2))
    with pytest.raises(MemoryPlanError, match="every phase fits with gradients gradient_checkpointing and placement"):
        check_plan(memory_plan, config, (None, host["gradient_checkpointing"] + GIB))


def test_cpu_times_use_a_cpu_rate_and_warn_at_the_readme_defaults(caplog):
    memory_plan, config = _plan_7b(num_samples=128, seqlen=2048)
    assert memory_plan.tflops < 1  # not a GPU's 150 TFLOP/s
    gpu = plan(
        reference_skeleton("llama-2-7b"), get_adapter(reference_skeleton("llama-2-7b")), config, device_type="cuda"
    )
    assert (
        gpu.tflops == 150
        and memory_plan.phase("prune", "disk / disk").seconds > 100 * gpu.phase("prune", "disk / disk").seconds
    )
    with caplog.at_level(logging.WARNING, logger="optimum_gblm.planning"), pytest.raises(MemoryPlanError):
        check_plan(memory_plan, config, (None, GIB))
    assert "128 x 2048 calibration tokens" in caplog.text and "h on this CPU" in caplog.text
