"""Per-layer sparsity report: what was asked, what was achieved, and whether the pattern holds."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch

from .masks import check_pattern, sparsity_of

logger = logging.getLogger(__name__)


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    target_sparsity: float
    achieved_sparsity: float
    pattern_ok: bool


@dataclass
class SparsityReport:
    pattern: str
    layers: list[LayerReport] = field(default_factory=list)

    def add(self, name: str, weight: torch.Tensor, target: float) -> LayerReport:
        entry = LayerReport(
            name=name,
            shape=tuple(weight.shape),
            target_sparsity=float(target),
            achieved_sparsity=sparsity_of(weight),
            pattern_ok=check_pattern(weight, self.pattern),
        )
        self.layers.append(entry)
        logger.debug("%s %s: target %.4f achieved %.4f", name, entry.shape, target, entry.achieved_sparsity)
        return entry

    @property
    def total_params(self) -> int:
        return sum(r.shape[0] * r.shape[1] for r in self.layers)

    @property
    def overall_sparsity(self) -> float:
        if not self.layers:
            return 0.0
        zeros = sum(r.achieved_sparsity * r.shape[0] * r.shape[1] for r in self.layers)
        return zeros / self.total_params

    @property
    def pattern_ok(self) -> bool:
        return all(r.pattern_ok for r in self.layers)

    def sparsity_range(self) -> tuple[float, float]:
        values = [r.target_sparsity for r in self.layers] or [0.0]
        return min(values), max(values)

    def to_dict(self) -> dict:
        return {
            "pattern": self.pattern,
            "overall_sparsity": self.overall_sparsity,
            "pattern_ok": self.pattern_ok,
            "layers": {r.name: {k: v for k, v in asdict(r).items() if k != "name"} for r in self.layers},
        }

    @classmethod
    def from_dict(cls, data: dict) -> SparsityReport:
        report = cls(pattern=data["pattern"])
        for name, entry in data.get("layers", {}).items():
            report.layers.append(LayerReport(name=name, **{**entry, "shape": tuple(entry["shape"])}))
        return report
