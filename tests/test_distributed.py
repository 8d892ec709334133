"""Data-parallel gradient pass: 2 CPU processes (gloo) give the single-process accumulators; bad layouts are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from optimum_gblm import GBLMConfig
from optimum_gblm.gradients import GradientCacheMismatch
from optimum_gblm.gradients.cache import load_cache, read_metadata
from optimum_gblm.gradients.distributed import ProcessGroup, check_world_size
from tests.conftest import tiny_model

CONFIG = dict(method="gblm", allocation="gradient", device="cpu")  # l1 (the method's) and l2 (the allocation's)


def _ids(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 128, (n, 16), generator=torch.Generator().manual_seed(3))


def _collect(cache: Path | None, ids: torch.Tensor):
    from optimum_gblm.pruner import GBLMPruner

    pruner = GBLMPruner(tiny_model("llama"), GBLMConfig(**CONFIG))
    pruner.calibration_data(ids)
    return pruner.collect_gradients(cache_path=cache, progress=False)


def _worker(rank: int, world: int, init_file: str, cache: str, n: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        _collect(Path(cache), _ids(n))
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, cache: Path, n: int, world: int = 2) -> None:
    init_file = tmp_path / f"init-{os.getpid()}-{cache.stem}"
    mp.spawn(_worker, args=(world, str(init_file), str(cache), n), nprocs=world, join=True)


def test_two_processes_give_the_single_process_accumulators(tmp_path):
    cache = tmp_path / "grads.safetensors"
    _spawn(tmp_path, cache, n=5)  # 5 samples: ranks take 3 and 2
    distributed, meta = load_cache(cache)
    single = _collect(None, _ids(5))
    assert meta["world_size"] == "2" and meta["sample_set"] == "5 samples, sample i on rank i % 2"
    assert meta["complete"] == "true" and distributed.nsamples == single.nsamples == 5
    for norm in ("l1", "l2"):
        got, want = distributed.get(norm), single.get(norm)
        assert got.keys() == want.keys() and len(got) == 14
        for name in want:
            rel = (got[name] - want[name]).norm() / want[name].norm()
            assert rel < 1e-5, (norm, name, float(rel))
    # A single process reads the complete cache of the 2-process run (it is the sum over every sample) ...
    reused = _collect(cache, _ids(5))
    assert torch.equal(reused.l1["model.layers.0.mlp.up_proj"], distributed.l1["model.layers.0.mlp.up_proj"])
    # ... and a 2-process run refuses a cache written by one process, naming the world size, file untouched.
    single_cache = tmp_path / "single.safetensors"
    _collect(single_cache, _ids(5))
    before = single_cache.read_bytes()
    with pytest.raises(Exception, match="world_size: cache has '1', this run has '2'"):
        _spawn(tmp_path, single_cache, n=5)
    assert single_cache.read_bytes() == before
    assert read_metadata(single_cache)["world_size"] == "1"


def test_a_world_larger_than_the_samples_is_refused_before_any_work():
    with pytest.raises(ValueError, match="runs on 4 processes but the calibration set has only 3 samples"):
        check_world_size(ProcessGroup(rank=0, world_size=4), 3)
    check_world_size(ProcessGroup(rank=0, world_size=3), 3)


def test_shards_are_disjoint_and_cover_every_sample():
    shards = [list(ProcessGroup(rank, 3).shard(range(10))) for rank in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_a_partial_cache_of_another_layout_is_refused(tmp_path):
    from optimum_gblm.gradients.distributed import check_cache_distribution

    meta = {"complete": "false", "world_size": "2", "sample_set": "8 samples, sample i on rank i % 2"}
    with pytest.raises(GradientCacheMismatch, match="world_size: cache has '2', this run has '1'"):
        check_cache_distribution("x.safetensors", meta, ProcessGroup(), 8)
    check_cache_distribution("x.safetensors", {**meta, "complete": "true"}, ProcessGroup(), 8)


def test_the_cli_checks_the_process_layout_before_loading(tmp_path, monkeypatch):
    from optimum_gblm.commands.errors import UsageError
    from optimum_gblm.commands.gradients import check_process_layout

    cache = tmp_path / "single.safetensors"
    _collect(cache, _ids(4))
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UsageError, match="runs on 4 processes but the calibration set has only 2 samples"):
        check_process_layout(None, 2, "")
    with pytest.raises(UsageError, match="world_size: cache has '1', this run has '4'"):
        check_process_layout(cache, 8, "")


def test_a_dispatched_model_with_offloaded_accumulators_gives_the_same_accumulators(tmp_path):
    """The route for models larger than one device: accelerate's device map places the blocks, every sample's
    backward runs through all of them, each gradient is folded where its weight lives into CPU accumulators."""
    from optimum_gblm.pruner import GBLMPruner

    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    pieces = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "lm_head"]
    device_map = dict.fromkeys(pieces, "cpu")  # the same split as over GPUs, on the devices this machine has
    dispatched = GBLMPruner.from_pretrained(folder, GBLMConfig(**CONFIG), device_map=device_map)
    dispatched.calibration_data(_ids(4))
    got = dispatched.collect_gradients(progress=False, offload_accumulators=True)
    want = _collect(None, _ids(4))
    for norm in ("l1", "l2"):
        for name, value in want.get(norm).items():
            assert got.get(norm)[name].device.type == "cpu"
            assert torch.allclose(got.get(norm)[name], value, rtol=1e-5, atol=0), (norm, name)
