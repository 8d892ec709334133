"""What a saved checkpoint really is, read from its side-car alone: dense, sparse (exact zeros), structured (heads and
channels removed, uniform or per-layer widths), recovered, or retrained without a pruning record. Cards, tags, the
CLI's summary and load instructions all describe the checkpoint through `describe_artefact`, so they cannot disagree
with each other or with the weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..pruning_map import STRUCTURED
from ..utils import looks_like_local_path
from .sidecar import upgrade_sidecar

DENSE, SPARSE, STRUCTURED_KIND, UNRECORDED = "dense", "sparse", "structured", "unrecorded"
UNKNOWN_METHOD = "unknown"  # the prune stage older versions invented for a checkpoint that came without a record


@dataclass(frozen=True)
class Artefact:
    """`kind`: DENSE (saved with allow_dense, no map), SPARSE (exact zeros in `pattern`), STRUCTURED_KIND (smaller
    matrices; `structure` holds parameters and widths) or UNRECORDED (retrained, no pruning record: `zeros` is the
    share of exact zeros in its prune targets). `fraction`: the target sparsity / removed fraction, `achieved`: what
    the map measured."""

    kind: str
    method: str | None
    pattern: str
    fraction: float
    achieved: float
    structure: dict[str, Any] | None
    recover_stages: tuple[dict[str, Any], ...]
    library: str

    @property
    def pruned(self) -> bool:
        return self.kind in (SPARSE, STRUCTURED_KIND)

    @property
    def recovered(self) -> bool:
        return bool(self.recover_stages)

    @property
    def per_layer(self) -> bool:
        """Structured with widths that differ per layer: only `optimum_gblm.load_pruned` rebuilds it."""
        return self.structure is not None and self.structure.get("widths") != "uniform"

    @property
    def zeros(self) -> float:
        return self.achieved

    @property
    def loader(self) -> str:
        """The library (or call) that reloads the checkpoint: "optimum_gblm", "transformers" or "timm"."""
        return "optimum_gblm" if self.per_layer else self.library


def prune_stage(pruning_map: dict[str, Any] | None) -> dict[str, Any] | None:
    """The map's (last) recorded prune stage, or None when it has no pruning record."""
    stages = [s for s in (pruning_map or {}).get("stages", []) if s.get("kind") == "prune"]
    stages = [s for s in stages if s.get("method") != UNKNOWN_METHOD]
    return stages[-1] if stages else None


def has_pruning_record(pruning_map: dict[str, Any] | None) -> bool:
    """False for a map read from the zeros of a model that came without a record (its stages: recover only, or an
    "unknown" prune from older versions); a map with a prune stage, or a pipeline's map with no stage, is a record."""
    if pruning_map is None or prune_stage(pruning_map) is not None:
        return pruning_map is not None
    return not pruning_map.get("stages")


def describe_artefact(sidecar: dict[str, Any]) -> Artefact:
    """The checkpoint a side-car describes (format-1 side-cars are read through `upgrade_sidecar`)."""
    sidecar = upgrade_sidecar(sidecar)
    config = sidecar.get("config") or {}
    pruning_map = sidecar.get("pruning_map") or None
    library = sidecar.get("library", "transformers")
    recover = tuple(s for s in (pruning_map or {}).get("stages", []) if s.get("kind") == "recover")
    stage = prune_stage(pruning_map)
    structure = None
    if stage is not None and isinstance((stage.get("settings") or {}).get("structure"), dict):
        structure = stage["settings"]["structure"]
    if pruning_map is None:
        kind = DENSE
    elif not has_pruning_record(pruning_map):
        kind = UNRECORDED
    elif structure is not None or pruning_map.get("pattern") == STRUCTURED:
        kind = STRUCTURED_KIND
    else:
        kind = SPARSE
    pattern = STRUCTURED if kind == STRUCTURED_KIND else str(config.get("pattern", "unstructured"))
    return Artefact(
        kind=kind,
        method=None if kind == UNRECORDED else config.get("method") or (stage or {}).get("method"),
        pattern=pattern,
        fraction=float(config.get("sparsity", 0.0)) if kind != UNRECORDED else float(_overall(pruning_map)),
        achieved=float(_overall(pruning_map)),
        structure=structure,
        recover_stages=recover,
        library=library,
    )


def _overall(pruning_map: dict[str, Any] | None) -> float:
    return float((pruning_map or {}).get("overall_sparsity", 0.0))


def load_snippet(artefact: Artefact, repo: str) -> str:
    """Python that loads the checkpoint at `repo` (a Hub id or a folder) with the call its kind needs."""
    if artefact.library == "timm":
        prefix = "local-dir:" if looks_like_local_path(repo) else "hf-hub:"
        return f'import timm\n\nmodel = timm.create_model("{prefix}{repo}", pretrained=True)'
    tokenizer = f'tokenizer = AutoTokenizer.from_pretrained("{repo}")'
    if artefact.per_layer:
        return (
            "from transformers import AutoTokenizer\n\nfrom optimum_gblm import load_pruned\n\n"
            f'model = load_pruned("{repo}")  # widths differ per layer\n{tokenizer}'
        )
    return (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{repo}")\n{tokenizer}'
    )


def reload_call(artefact: Artefact, folder: str) -> str:
    """One line that reloads a saved folder (the CLI's summary)."""
    if artefact.library == "timm":
        return f'timm.create_model("local-dir:{folder}", pretrained=True)'
    if artefact.per_layer:
        return f'optimum_gblm.load_pruned("{folder}")'
    return f'transformers.AutoModelForCausalLM.from_pretrained("{folder}")'


def load_note(artefact: Artefact) -> str:
    """The sentence under the card's load snippet."""
    if artefact.per_layer:
        return (
            "Widths differ per layer, which transformers' config cannot express: `optimum_gblm.load_pruned` "
            "builds the model and loads the weights (plain `AutoModelForCausalLM` refuses this folder)."
        )
    return f"Plain {artefact.library}: optimum-gblm is not needed to load or run the model."


def parameters_line(artefact: Artefact) -> str:
    """`78,052 parameters (dense 108,288, 72.1%), per-block widths` for a structured checkpoint, else empty."""
    structure = artefact.structure
    if not structure:
        return ""
    share = structure["parameters"] / structure["dense_parameters"] if structure.get("dense_parameters") else 1.0
    return (
        f"{structure['parameters']:,} parameters (dense {structure['dense_parameters']:,}, {share:.1%}), "
        f"{structure['widths']} widths"
    )
