"""Prune a tiny model with every method at a given number of CPU threads and print digests of the masks and weights,
for tests/test_determinism.py: `python -m tests.helpers.determinism_worker THREADS MODEL_DIR TEXT_FILE`."""

from __future__ import annotations

import hashlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (method, pattern) pairs: every registered method unstructured, and the two kinds of kernels at 2:4.
EXTRA_CASES = (("wanda", "2:4"), ("sparsegpt", "2:4"), ("sparsegpt", "4:8"))


def cases() -> list[tuple[str, str]]:
    from optimum_gblm import list_methods

    return [(method, "unstructured") for method in list_methods()] + list(EXTRA_CASES)


def digests(model_dir: str, text: str, method: str, pattern: str) -> dict[str, str]:
    """sha256 of every kept mask (bit-packed, in target order) and of every pruned weight."""
    import torch

    from optimum_gblm import GBLMConfig, GBLMPruner
    from optimum_gblm.masks import pack_mask
    from optimum_gblm.methods import get_method

    sparsity = 0.3 if get_method(method).structured else 0.5  # structured: a fraction every block can give
    config = GBLMConfig(
        method=method, sparsity=sparsity, pattern=pattern, num_samples=4, seqlen=16, calibration=text, seed=3
    )
    config.device = "cpu"
    pruner = GBLMPruner.from_pretrained(model_dir, config)
    pruner.prune(progress=False)
    masks, weights = hashlib.sha256(), hashlib.sha256()
    state = pruner.model.state_dict()
    for name, record in sorted(pruner.pruning_map.targets.items()):
        if record.kept is not None:  # structured: what is kept (heads, channels) is the decision, not a mask
            masks.update(name.encode() + json.dumps(record.kept, sort_keys=True).encode())
        else:
            masks.update(name.encode() + pack_mask(pruner.pruning_map.mask(name)).numpy().tobytes())
        weights.update(state[f"{name}.weight"].to(torch.float32).numpy().tobytes())
    return {"masks": masks.hexdigest(), "weights": weights.hexdigest()}


def main(threads: int, model_dir: str, text: str, only: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """Digests of every case (`only`: of these methods' cases) at `threads` CPU threads."""
    import torch

    torch.set_num_threads(threads)
    chosen = [(m, p) for m, p in cases() if not only or m in only]
    return {f"{method} {pattern}": digests(model_dir, text, method, pattern) for method, pattern in chosen}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2], sys.argv[3])))
