"""A subprocess that does one real piece of work and breaks it at a chosen point, for tests/test_faults.py.

`python -m tests.helpers.fault_worker MODE '{"json": "arguments"}'`. The break is made here, by wrapping a library function
in this process only (the library has no test hooks): `SIGKILL` of this very process (no cleanup, no `finally`, as
with an OOM kill or a pulled plug), or a file-size limit (`RLIMIT_FSIZE`) that makes the kernel refuse writes past
a size, as a full disk does. Exit status: -9 when killed, 3 when the write failed with the error printed on stdout.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WRITE_FAILED = 3


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def limit_file_size(max_bytes: int) -> None:
    """Writes past `max_bytes` in any one file fail with EFBIG (Python ignores SIGXFSZ, so the write call errs)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def gradient_inputs(num_samples: int = 8) -> tuple[Any, Any, Any]:
    """The tiny model, calibration ids and config shared by the gradient workers and the test that compares."""
    import torch

    from optimum_gblm import GBLMConfig
    from tests.conftest import tiny_model

    ids = torch.randint(0, 128, (num_samples, 16), generator=torch.Generator().manual_seed(1))
    return tiny_model("llama"), ids, GBLMConfig(method="gblm", device="cpu")


def gradients(args: dict[str, Any]) -> None:
    """Collect with `checkpoint_every=2`; die after the `kill_after`-th checkpoint was written (`where="after"`),
    or in the middle of writing it (`where="inside"`: a truncated temporary file, then SIGKILL), or write with a
    file-size limit (`where="fsize"`)."""
    import optimum_gblm.gradients.cache as cache
    import optimum_gblm.gradients.loop as loop
    from optimum_gblm import collect_gradients

    model, ids, config = gradient_inputs()
    calls = {"n": 0}
    real_save_cache, real_save_file = loop.save_cache, cache.save_file

    def save_cache(*a: Any, **k: Any) -> None:
        calls["n"] += 1
        real_save_cache(*a, **k)
        if args["where"] == "after" and calls["n"] == args["kill_after"]:
            die()

    def save_file(tensors: Any, filename: str, metadata: Any = None) -> None:
        if calls["n"] == args["kill_after"]:  # the checkpoint being written now (counted on entry)
            real_save_file(tensors, filename, metadata=metadata)
            size = Path(filename).stat().st_size
            with open(filename, "r+b") as f:
                f.truncate(size // 2)  # the bytes written so far
            die()
        real_save_file(tensors, filename, metadata=metadata)

    loop.save_cache = save_cache
    if args["where"] == "inside":
        cache.save_file = save_file
    if args["where"] == "fsize":
        limit_file_size(args["max_bytes"])
    try:
        collect_gradients(
            model, config, dataloader=[ids], cache_path=args["cache"], checkpoint_every=2, progress=False
        )
    except Exception as err:  # the failed write, reported to the parent
        print(f"{type(err).__name__}: {err}")
        sys.exit(WRITE_FAILED)


def save(args: dict[str, Any]) -> None:
    """Prune a tiny model and save it to `out` (`overwrite`), dying while the folder is written (`where="card"`: the
    weights are on disk, the card is not), between the two renames that replace a previous folder (`"swap"`), or
    with a file-size limit that stops the weights file half-way (`"fsize"`)."""
    import optimum_gblm.publishing.checkpoint as checkpoint
    from optimum_gblm import GBLMConfig, GBLMPruner

    config = GBLMConfig(method="magnitude", sparsity=args.get("sparsity", 0.5), device="cpu")
    pruner = GBLMPruner.from_pretrained(args["model"], config)
    pruner.prune(progress=False)
    out = Path(args["out"]).absolute()
    if args["where"] == "card":
        checkpoint.write_model_card = lambda *a, **k: die()
    elif args["where"] == "swap":
        real_replace = os.replace

        def replace(src: Any, dst: Any) -> None:
            real_replace(src, dst)
            if Path(src) == out:  # the previous folder was just moved aside; the new one is not in place yet
                die()

        os.replace = replace
    elif args["where"] == "fsize":
        limit_file_size(args["max_bytes"])
    try:
        pruner.save_pretrained(out, overwrite=True)
    except Exception as err:
        print(f"{type(err).__name__}: {err}")
        sys.exit(WRITE_FAILED)


def push(args: dict[str, Any]) -> None:
    """Push a saved folder to the local Hub (endpoint and token from the environment) and die once the client has
    announced the files (preupload) but before the commit is sent."""
    import huggingface_hub._commit_api as commit_api

    from optimum_gblm import push_folder

    real = commit_api._fetch_upload_modes

    def fetch_upload_modes(*a: Any, **k: Any) -> Any:
        real(*a, **k)
        die()

    commit_api._fetch_upload_modes = fetch_upload_modes
    push_folder(args["folder"], args["repo_id"], endpoint=os.environ["HF_ENDPOINT"])


def recovery_run(model_dir: str, text: str, **overrides: Any) -> Any:
    """A magnitude-pruned tiny model recovered for 4 steps (norm + masklora): shared by the worker and the test that
    compares, so both build exactly the same run."""
    from optimum_gblm import GBLMConfig, GBLMPruner
    from optimum_gblm.recovery import RecoveryConfig

    config = GBLMConfig(method="magnitude", sparsity=0.5, calibration=text, seqlen=16, device="cpu")
    pruner = GBLMPruner.from_pretrained(model_dir, config)
    pruner.prune(progress=False)
    settings = dict(subset=["norm", "masklora"], source=text, max_steps=4, batch_size=2, seqlen=16, num_windows=8)
    settings.update(heldout_windows=1, learning_rate=1e-2, warmup_ratio=0.0, logging_steps=1)
    return pruner, RecoveryConfig(**{**settings, **overrides})


def recover(args: dict[str, Any]) -> None:
    """Recover with a checkpoint every 2 steps and die (SIGKILL) once the checkpoint of step `kill_after` is on disk."""
    from transformers import TrainerCallback

    class Die(TrainerCallback):
        def on_save(self, train_args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == args["kill_after"]:
                die()

    pruner, config = recovery_run(args["model"], args["text"], output_dir=args["output_dir"], save_steps=2)
    pruner.recover(config, callbacks=[Die()], progress=False)


if __name__ == "__main__":
    modes = {"gradients": gradients, "save": save, "push": push, "recover": recover}
    modes[sys.argv[1]](json.loads(sys.argv[2]))
    print("finished without being broken")
