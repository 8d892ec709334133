"""Input statistics per input site, accumulated in fp32: add_batch -> finalize -> free (see docs/semantics.md#4-input-statistics).

Targets that read the same input (q/k/v, gate/up) share one object, so the sums (and anything derived from them,
such as SparseGPT's inverse-Hessian factor) are computed once per site instead of once per target.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

KINDS = ("activations", "hessian", "fluctuation")


class InputStatistics:
    """Running statistics of one input site over calibration samples.

    activations: a_j = (1/N) sum_n sum_t x_{n,t,j}^2   (Wanda, GBLM)
    hessian:     H   = (2/N) sum_n sum_t x x^T          (SparseGPT)
    fluctuation: per input channel, the mean and the sample variance over all calibration tokens (structured
                 methods), from sums of x and x^2 in float64 (a variance from fp32 sums cancels badly)
    """

    def __init__(self, in_features: int, kind: str, device: torch.device | str = "cpu") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown statistic {kind!r}: choose one of {', '.join(KINDS)}")
        self.kind = kind
        self.nsamples = 0
        self.tokens = 0  # input rows seen (a routed expert sees a data-dependent share of them)
        shape = (in_features, in_features) if kind == "hessian" else (in_features,)
        self._sum: torch.Tensor | None = torch.zeros(shape, dtype=torch.float32, device=device)
        self._derived: dict[Hashable, object] = {}
        self._linear: torch.Tensor | None = None
        if kind == "fluctuation":
            self._sum = torch.zeros(shape, dtype=torch.float64, device=device)
            self._linear = torch.zeros(shape, dtype=torch.float64, device=device)

    def add_batch(self, inputs: torch.Tensor, samples: int | None = None) -> None:
        """Add a batch of inputs shaped [batch, ..., in_features]; each leading index is one sample. `samples`: how
        many calibration samples the rows come from, when they are not laid out per sample (the tokens routed to
        one expert: none of them may be, the statistic is still divided by every sample)."""
        if self._sum is None:
            raise RuntimeError("these statistics were already freed")
        batch = samples if samples is not None else inputs.shape[0] if inputs.dim() > 2 else 1
        x = inputs.detach().reshape(-1, inputs.shape[-1]).to(device=self._sum.device, dtype=torch.float32)
        if self.kind == "hessian":
            self._sum.addmm_(x.t(), x)
        elif self.kind == "fluctuation":
            x = x.double()
            self._sum.add_((x * x).sum(dim=0))
            self._linear.add_(x.sum(dim=0))
        else:
            self._sum.add_((x * x).sum(dim=0))
        self.nsamples += batch
        self.tokens += x.shape[0]
        self._derived.clear()

    def _checked(self) -> torch.Tensor:
        if self._sum is None:
            raise RuntimeError("these statistics were already freed")
        if self.nsamples == 0:
            raise RuntimeError("no calibration inputs were recorded for this input site")
        return self._sum

    def activation_sq_mean(self) -> torch.Tensor:
        total = self._checked()
        diag = total.diagonal() if self.kind == "hessian" else total
        return (diag / self.nsamples).float()

    def channel_mean(self) -> torch.Tensor:
        """Mean of each input channel over every calibration token (fluctuation statistics), float64."""
        self._checked()
        if self._linear is None:
            raise RuntimeError(f"this input site collected {self.kind} statistics, not fluctuation statistics")
        return self._linear / self.tokens

    def channel_variance(self) -> torch.Tensor:
        """Sample variance (divisor tokens - 1) of each input channel over every calibration token, float64."""
        mean = self.channel_mean()
        count = max(self.tokens - 1, 1)
        return ((self._sum - self.tokens * mean * mean) / count).clamp_min(0.0)

    def hessian(self) -> torch.Tensor:
        if self.kind != "hessian":
            raise RuntimeError("this input site collected activation norms, not a Hessian")
        return self._checked() * (2.0 / self.nsamples)

    def derived(self, key: Hashable, compute: Callable[[], object]) -> object:
        """A value computed from the finished statistics once and shared by every target of the site."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    def free(self) -> None:
        self._sum = None
        self._linear = None
        self._derived.clear()
