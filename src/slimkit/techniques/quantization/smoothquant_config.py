"""``SmoothQuantConfig``: SmoothQuant W8A8 (int8 weights and static int8 activations).

Example:
    >>> cfg = SmoothQuantConfig(alpha=0.5)          # the paper's default migration strength
    >>> cfg = SmoothQuantConfig(alpha="search")     # alpha per layer group, from calibration data
    >>> cfg = SmoothQuantConfig(alpha=None)         # no smoothing: plain static W8A8
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slimkit.core.config import Config

_OBSERVERS = ("minmax", "percentile")


def _default_grid() -> tuple:
    return tuple(round(0.1 * i, 2) for i in range(11))


@dataclass
class SmoothQuantConfig(Config):
    """Smooth activation outliers into the weights, then quantize W8A8.

    For a group of Linear layers reading one tensor ``X`` (q/k/v after a norm), SmoothQuant
    (Xiao et al., 2023) divides input channel ``j`` by ``s_j = max|X_j|^alpha /
    max|W_j|^(1 - alpha)`` (folded into the producer: a norm's weight, or the rows of a Linear)
    and multiplies the weights' column ``j`` by ``s_j``: the same function in float, but the
    activation outliers, which one per-tensor int8 scale cannot cover, move into the weights,
    which are quantized per output channel.

    Attributes:
        alpha: migration strength in [0, 1]; ``"search"`` picks it per layer group from
            ``alpha_grid`` (the least output error of the quantized group on calibration
            rows); None quantizes without smoothing (plain static W8A8).
        alpha_grid: the candidates of the search.
        observer: activation range from calibration: ``"minmax"`` or ``"percentile"``.
        percentile: the kept percentile of the percentile observer, in (50, 100].
        calibration_tokens: the fewest calibration tokens (rows) accepted.
        search_rows: rows of each layer's input kept for the alpha search.
    """

    alpha: float | str | None = 0.5
    alpha_grid: tuple = field(default_factory=_default_grid)
    observer: str = "minmax"
    percentile: float = 99.99
    calibration_tokens: int = 512
    search_rows: int = 1024

    def __post_init__(self):
        a = self.alpha
        ok = a is None or a == "search" or (
            isinstance(a, (int, float)) and not isinstance(a, bool) and 0.0 <= a <= 1.0)
        self._require(ok, "alpha", "a number in [0, 1], 'search', or None (no smoothing)")
        if isinstance(self.alpha_grid, list):
            self.alpha_grid = tuple(self.alpha_grid)
        self._require(
            isinstance(self.alpha_grid, tuple) and len(self.alpha_grid) > 0
            and all(isinstance(g, (int, float)) and not isinstance(g, bool) and 0.0 <= g <= 1.0
                    for g in self.alpha_grid),
            "alpha_grid", "a non-empty tuple of numbers in [0, 1]")
        self._require(self.observer in _OBSERVERS, "observer", f"one of {_OBSERVERS}")
        self._require(isinstance(self.percentile, (int, float)) and 50 < self.percentile <= 100,
                      "percentile", "a number in (50, 100]")
        for name in ("calibration_tokens", "search_rows"):
            v = getattr(self, name)
            self._require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name,
                          "an integer >= 1")

    @property
    def smooths(self) -> bool:
        return self.alpha is not None
