"""The pruning map: the saved state of what pruning did, per target, plus the list of stages (prune, later recover).

It records, per target, the pattern, the allocated target sparsity, the achieved sparsity, whether the pattern holds,
its input site and, for structured methods, the kept heads / channels. The masks themselves are kept in memory,
packed to bits, for the stages after pruning (recovery must keep them). `to_dict` is what the side-car stores
(format 2); `from_v1_report` reads the per-layer sparsity report of format-1 side-cars.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .masks import check_pattern, pack_mask, parse_pattern, prune_count, sparsity_of, unpack_mask

logger = logging.getLogger(__name__)

MAP_VERSION = 2
STRUCTURED = "structured"  # the pattern of a map whose targets lost whole heads / channels (kept=...)


@dataclass
class TargetRecord:
    shape: tuple[int, int]
    pattern: str
    target_sparsity: float
    achieved_sparsity: float
    pattern_ok: bool
    input_site: str | None = None
    kept: dict[str, list[int]] | None = None  # structured pruning: kept heads / channels by kind

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class Stage:
    """One step applied to the model: `kind` is "prune" or "recover" (docs/recovery.md), with its settings."""

    kind: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruningMap:
    pattern: str
    targets: dict[str, TargetRecord] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)
    _masks: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def record(
        self,
        name: str,
        weight: torch.Tensor,
        target_sparsity: float,
        input_site: str | None = None,
        pattern: str | None = None,
    ) -> TargetRecord:
        """Record a pruned target from its weight after pruning; its zeros are kept as the mask."""
        pattern = pattern or self.pattern
        entry = TargetRecord(
            shape=(int(weight.shape[0]), int(weight.shape[1])),
            pattern=pattern,
            target_sparsity=float(target_sparsity),
            achieved_sparsity=sparsity_of(weight),
            pattern_ok=check_pattern(weight, pattern),
            input_site=input_site,
        )
        self.targets[name] = entry
        self._masks[name] = pack_mask(weight == 0)
        logger.debug("%s %s: target %.4f achieved %.4f", name, entry.shape, target_sparsity, entry.achieved_sparsity)
        return entry

    def mask(self, name: str) -> torch.Tensor:
        """The boolean mask (True = pruned) of a target recorded in this session."""
        if name not in self._masks:
            known = "none were kept (a map read from a side-car has no masks)" if not self._masks else "see targets"
            raise KeyError(f"no mask kept for {name!r}: {known}")
        return unpack_mask(self._masks[name], self.targets[name].shape)

    @property
    def total_params(self) -> int:
        return sum(r.numel for r in self.targets.values())

    @property
    def overall_sparsity(self) -> float:
        if not self.targets:
            return 0.0
        return sum(r.achieved_sparsity * r.numel for r in self.targets.values()) / self.total_params

    @property
    def pattern_ok(self) -> bool:
        return all(r.pattern_ok for r in self.targets.values())

    def sparsity_range(self) -> tuple[float, float]:
        values = [r.target_sparsity for r in self.targets.values()] or [0.0]
        return min(values), max(values)

    @property
    def target_sparsity(self) -> float:
        """The targets' allocated sparsities, weighted by their sizes (the config's sparsity when uniform)."""
        if not self.targets:
            return 0.0
        return sum(r.target_sparsity * r.numel for r in self.targets.values()) / self.total_params

    def rounding_note(self, group: str | None = None) -> str:
        """Why the achieved sparsity sits below the target: every comparison group prunes a whole number of weights,
        floor(size x sparsity) (docs/semantics.md#6-mask-selection). Empty when the counts are exact (N:M, or
        sizes that multiply out). `group`: "row", or "layer" / "block" (whole-matrix counts); None says both."""
        if self.pattern == STRUCTURED or not self.targets or parse_pattern(self.pattern) is not None:
            return ""  # structured maps remove whole heads and channels: no per-row counts to round
        targets = {r.target_sparsity for r in self.targets.values()}
        if len(targets) > 1:
            return "each target prunes floor(group size x its allocated sparsity) weights"
        sparsity = targets.pop()
        row = group == "row"
        sizes = sorted({r.shape[1] if row else r.numel for r in self.targets.values()})
        inexact = [n for n in sizes if prune_count(n, sparsity) != n * sparsity]
        if not inexact:
            return ""
        counts = ", ".join(f"floor({n} x {sparsity:g}) = {prune_count(n, sparsity)} of {n}" for n in inexact[:4])
        more = ", ..." if len(inexact) > 4 else ""
        if row:
            return f"each row prunes a whole number of its inputs: {counts}{more}"
        if group is None:
            return f"each row (or layer, per the method's group) prunes a whole number of weights, rounded down{more}"
        return f"each {group} prunes a whole number of weights: {counts}{more}"

    def _counted_per(self) -> str | None:
        """ "row" or "layer" when every target's zero count is what that group's floor gives, else None."""
        records = list(self.targets.values())
        for group, size in (("row", lambda r: r.shape[1]), ("layer", lambda r: r.numel)):
            if all(
                abs(prune_count(size(r), r.target_sparsity) / size(r) - r.achieved_sparsity) < 1e-9 for r in records
            ):
                return group
        return None

    def summary(self) -> str:
        """A few lines: targets, pattern, overall and per-target sparsity, rounding, stages (what print() shows)."""
        if not self.targets:
            return f"PruningMap: no targets yet (pattern {self.pattern})"
        low, high = self.sparsity_range()
        achieved = [r.achieved_sparsity for r in self.targets.values()]
        stage = next((st for st in reversed(self.stages) if st.kind == "prune"), None)
        measure = "removed" if self.pattern == STRUCTURED else "overall sparsity"
        lines = [
            f"PruningMap: {len(self.targets)} targets, {self.pattern}, {measure} {self.overall_sparsity:.4f} "
            f"(target {self.target_sparsity:.4f}) of {self.total_params:,} weights; pattern "
            + ("holds" if self.pattern_ok else "VIOLATED"),
            f"  per target: target sparsity {low:.4f} to {high:.4f}, achieved {min(achieved):.4f} to "
            f"{max(achieved):.4f}",
        ]
        note = self.rounding_note((stage.settings.get("group") if stage else None) or self._counted_per())
        if note:
            lines.append(f"  rounding: {note}")
        structure = (stage.settings.get("structure") if stage else None) or {}
        if structure.get("parameters"):
            lines.append(
                f"  parameters: {structure['parameters']:,} of {structure['dense_parameters']:,} dense, "
                f"{structure.get('widths')} widths"
            )
        for st in self.stages:
            settings = ", ".join(f"{k}={_brief(v) if k == 'structure' else v}" for k, v in st.settings.items())
            lines.append(f"  stage: {st.kind} {st.method} ({settings})")
        kept = f"masks kept for {len(self._masks)} (pruning_map.mask(name))" if self._masks else "no masks kept"
        lines.append(f"  {kept}; per-target records in pruning_map.targets")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        stages = [f"{st.kind}:{st.method}" for st in self.stages]
        return (
            f"PruningMap(pattern={self.pattern!r}, targets={len(self.targets)}, "
            f"overall_sparsity={self.overall_sparsity:.4f}, stages={stages})"
        )

    def to_dict(self) -> dict[str, Any]:
        targets = {}
        for name, record in self.targets.items():
            entry = asdict(record)
            entry["shape"] = list(record.shape)
            targets[name] = {k: v for k, v in entry.items() if v is not None}
        return {
            "version": MAP_VERSION,
            "pattern": self.pattern,
            "overall_sparsity": self.overall_sparsity,
            "pattern_ok": self.pattern_ok,
            "sparsity_range": list(self.sparsity_range()),
            "targets": targets,
            "stages": [asdict(stage) for stage in self.stages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningMap:
        pruning_map = cls(pattern=data["pattern"])
        for name, entry in data.get("targets", {}).items():
            pruning_map.targets[name] = TargetRecord(**{**entry, "shape": tuple(entry["shape"])})
        pruning_map.stages = [Stage(**stage) for stage in data.get("stages", [])]
        return pruning_map

    @classmethod
    def from_v1_report(cls, report: dict[str, Any], config: dict[str, Any] | None = None) -> PruningMap:
        """The map of a format-1 side-car's `sparsity` report (one pattern, per-layer entries, no stages list)."""
        pruning_map = cls(pattern=report["pattern"])
        for name, entry in report.get("layers", {}).items():
            pruning_map.targets[name] = TargetRecord(
                shape=tuple(entry["shape"]),
                pattern=report["pattern"],
                target_sparsity=entry["target_sparsity"],
                achieved_sparsity=entry["achieved_sparsity"],
                pattern_ok=entry["pattern_ok"],
            )
        if config:
            pruning_map.stages.append(Stage("prune", config.get("method", "unknown"), prune_settings(config)))
        return pruning_map


def _brief(structure: Any) -> str:
    """A structure record without its per-layer widths list (the summary stays a few lines)."""
    if not isinstance(structure, dict):
        return str(structure)
    return "{" + ", ".join(f"{k}={v}" for k, v in structure.items() if k != "layers") + "}"


def prune_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a prune stage, from a config dict."""
    keys = ("sparsity", "pattern", "group", "allocation", "method_args")
    return {k: config[k] for k in keys if config.get(k) is not None}
