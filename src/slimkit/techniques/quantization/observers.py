"""Observers: turn the activations seen during calibration into a (min, max) range.

``minmax`` keeps the extremes; ``moving_average`` averages batch extremes (robust to one odd
batch, and what QAT uses); ``percentile`` and ``mse`` keep a bounded random sample of values
and pick a clipping range from it: clipping rare outliers buys resolution for the bulk.

Example:
    >>> obs = make_observer("percentile", percentile=99.9)
    >>> for x in batches: obs.update(x)
    >>> lo, hi = obs.range(levels=256)
"""

from __future__ import annotations

import torch

_SAMPLE_PER_BATCH = 16_384
_SAMPLE_MAX = 1 << 20


class MinMaxObserver:
    def __init__(self):
        self.lo = self.hi = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach()
        lo, hi = float(x.min()), float(x.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)

    def range(self, levels: int) -> tuple[float, float]:
        return self.lo, self.hi


class MovingAverageObserver(MinMaxObserver):
    def __init__(self, averaging_constant: float = 0.01):
        super().__init__()
        self.c = averaging_constant

    def update(self, x: torch.Tensor) -> None:
        x = x.detach()
        lo, hi = float(x.min()), float(x.max())
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo += self.c * (lo - self.lo)
            self.hi += self.c * (hi - self.hi)


class _SamplingObserver(MinMaxObserver):
    """Keeps the exact extremes plus a random sample of at most ``_SAMPLE_MAX`` values."""

    def __init__(self):
        super().__init__()
        self.samples: list[torch.Tensor] = []
        self.count = 0
        self.gen = torch.Generator().manual_seed(0)  # the same sample on every run

    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        flat = x.detach().flatten().float()
        if flat.numel() > _SAMPLE_PER_BATCH:
            idx = torch.randint(0, flat.numel(), (_SAMPLE_PER_BATCH,), generator=self.gen)
            flat = flat[idx]
        if self.count < _SAMPLE_MAX:
            self.samples.append(flat.cpu())
            self.count += flat.numel()

    def values(self) -> torch.Tensor:
        return torch.cat(self.samples)


class PercentileObserver(_SamplingObserver):
    def __init__(self, percentile: float = 99.99):
        super().__init__()
        self.q = percentile / 100.0

    def range(self, levels: int) -> tuple[float, float]:
        v = self.values()
        # Clip only the side that has a tail: a ReLU output keeps its lower bound at 0.
        lo = min(float(torch.quantile(v, 1.0 - self.q)), 0.0) if self.lo < 0 else self.lo
        hi = max(float(torch.quantile(v, self.q)), 0.0) if self.hi > 0 else self.hi
        return lo, hi


class MSEObserver(_SamplingObserver):
    """Searches clipping ranges ``[lo * a, hi * a]`` for the one with the least squared error."""

    def range(self, levels: int) -> tuple[float, float]:
        v = self.values()
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        best, best_err = (lo, hi), float("inf")
        for a in torch.linspace(0.2, 1.0, 81).tolist():
            clo, chi = lo * a, hi * a
            scale = max((chi - clo) / (levels - 1), 1e-12)
            zp = round(-clo / scale)
            q = torch.clamp(torch.round(v / scale) + zp, 0, levels - 1)
            err = float(((q - zp) * scale - v).pow(2).mean())
            if err < best_err:
                best, best_err = (clo, chi), err
        return best


def make_observer(name: str, percentile: float = 99.99, averaging_constant: float = 0.01):
    """A fresh observer by config name (see ``QuantizationConfig.observer``)."""
    if name == "minmax":
        return MinMaxObserver()
    if name == "moving_average":
        return MovingAverageObserver(averaging_constant)
    if name == "percentile":
        return PercentileObserver(percentile)
    if name == "mse":
        return MSEObserver()
    raise ValueError(
        f"observer must be one of 'minmax', 'moving_average', 'percentile', 'mse', got {name!r}"
    )
