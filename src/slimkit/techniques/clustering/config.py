"""``ClusteringConfig``: how weight clustering shares values within the selected weights.

Example:
    >>> cfg = ClusteringConfig(clusters=16)                          # 16 values per layer
    >>> cfg = ClusteringConfig(16, per_channel=True, refresh_every=100)
    >>> cfg = ClusteringConfig(16, preserve_sparsity=True)           # on a pruned model
    >>> cfg = ClusteringConfig(16, overrides={"fc1": {"clusters": 4}})  # per layer
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slimkit.core.config import Config
from slimkit.core.overrides import check_overrides
from slimkit.techniques.clustering.kmeans import INITS


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# Fields a per-layer override may change.
OVERRIDABLE = ("clusters", "init", "per_channel", "max_iter")


@dataclass
class ClusteringConfig(Config):
    """Replace every weight of a layer by the nearest of ``clusters`` shared values (centroids).

    Attributes:
        clusters: values per layer (per output channel with ``per_channel``), >= 2. 16 keeps
            accuracy on most convolutional and dense layers; 256 fits a uint8 index exactly.
        init: how k-means picks its starting centroids: ``"kmeans++"`` (D^2 sampling, the
            best default), ``"linear"`` (evenly spaced between min and max: keeps the rare
            large weights), ``"density"`` (at evenly spaced quantiles), ``"random"``.
        per_channel: one codebook per slice along dim 0 (the output channel of Linear and
            Conv weights): more accurate, larger codebooks.
        preserve_sparsity: zero is a fixed centroid that never moves; weights that are exactly
            zero (e.g. pruned) stay exactly zero and no other weight is snapped to zero.
        gradient_aggregation: a centroid's gradient is the ``"sum"`` (Deep Compression) or the
            ``"mean"`` of the gradients of the weights it stands for.
        refresh_every: every this many scheduler steps, re-assign each weight to its nearest
            centroid (the weights keep training with straight-through gradients); 0 = never.
        seed: seed of the k-means initialisation (results repeat exactly for a seed).
        include_depthwise: also cluster depthwise convolutions (skipped by default: they have
            few weights per channel and lose accuracy they do not recover).
        overrides: ``{layer pattern: {field: value}}``: per-layer changes of the fields in
            ``OVERRIDABLE``, e.g. ``{"fc1": {"clusters": 4}}`` (patterns as in ``targets``;
            the last match wins).
    """

    clusters: int = 16
    init: str = "kmeans++"
    per_channel: bool = False
    preserve_sparsity: bool = False
    gradient_aggregation: str = "sum"
    refresh_every: int = 0
    seed: int = 0
    include_depthwise: bool = False
    max_iter: int = field(default=100, metadata={"help": "k-means iterations at most"})
    overrides: dict = field(default_factory=dict, metadata={
        "help": "{layer pattern: {field: value}} per-layer settings"})

    def __post_init__(self):
        self._require(_int(self.clusters) and self.clusters >= 2, "clusters",
                      "an integer >= 2 (values per layer)")
        self._require(isinstance(self.init, str) and self.init in INITS, "init",
                      f"one of {', '.join(map(repr, INITS))}")
        for name in ("per_channel", "preserve_sparsity", "include_depthwise"):
            self._require(isinstance(getattr(self, name), bool), name, "True or False")
        self._require(self.gradient_aggregation in ("sum", "mean"), "gradient_aggregation",
                      "'sum' or 'mean'")
        self._require(_int(self.refresh_every) and self.refresh_every >= 0, "refresh_every",
                      "an integer >= 0 (0 = never re-assign weights to centroids)")
        self._require(_int(self.seed) and self.seed >= 0, "seed", "an integer >= 0")
        self._require(_int(self.max_iter) and self.max_iter >= 0, "max_iter", "an integer >= 0")
        check_overrides(self, OVERRIDABLE)
