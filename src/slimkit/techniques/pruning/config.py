"""``MagnitudePruningConfig``: what magnitude pruning does to the selected weights.

Example:
    >>> cfg = MagnitudePruningConfig(PolynomialDecay(0.0, 0.8, begin_step=0, end_step=500))
    >>> cfg = MagnitudePruningConfig(0.5, block_size=(1, 4))   # constant 50%, 1x4 blocks
    >>> cfg = MagnitudePruningConfig(0.9, scope="global")      # rank all layers together
    >>> cfg = MagnitudePruningConfig(pattern="2:4")            # 2 of every 4 inputs kept
    >>> cfg = MagnitudePruningConfig(0.8, overrides={"fc2": {"schedule": 0.5}})  # per layer
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slimkit.core.config import Config
from slimkit.core.overrides import check_overrides
from slimkit.techniques.pruning.schedules import ConstantSparsity, PruningSchedule

# Fields a per-layer override may change (the scope is one ranking for all layers or none).
OVERRIDABLE = ("schedule", "block_size", "block_reduce", "pattern")


@dataclass
class MagnitudePruningConfig(Config):
    """Zero the smallest-magnitude weights (or blocks of weights) on a schedule.

    Attributes:
        schedule: a :class:`PruningSchedule`, or a float ``s`` meaning ``ConstantSparsity(s)``
            (pruned to ``s`` as soon as the model is prepared).
        scope: ``"layer"`` gives every layer the scheduled sparsity; ``"global"`` ranks all
            selected weights together, so layers end up with different sparsities.
        block_size: ``(rows, cols)`` of the blocks pruned together on the weight viewed as
            ``(out_features, -1)``; ``(1, 1)`` is unstructured, ``(1, 4)`` suits kernels that
            skip runs of 4 zeros along the input dimension.
        block_reduce: how a block's magnitude is scored: ``"mean"`` or ``"max"`` of ``|w|``.
        pattern: ``"N:M"`` (e.g. ``"2:4"``) for N:M sparsity: in every group of M consecutive
            weights along the input dimension at most N are non-zero (see
            :mod:`slimkit.techniques.pruning.nm`). The layer's final sparsity is then ``1 - N/M``; the
            schedule only sets the pace: at step ``t`` the fraction ``s(t) / s_final`` of each
            layer's groups is N:M-pruned.
        overrides: ``{layer pattern: {field: value}}``: per-layer changes of the fields in
            ``OVERRIDABLE`` (e.g. ``{"fc2": {"schedule": 0.5}}``; patterns as in
            ``targets``, the last match wins). Layers with their own schedule step on their
            own; ``scope="global"`` ranks all layers together and takes no overrides.
    """

    schedule: PruningSchedule | float = field(default_factory=lambda: ConstantSparsity(0.5))
    scope: str = "layer"
    block_size: tuple[int, int] = (1, 1)
    block_reduce: str = "mean"
    pattern: str | None = None
    overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.schedule, (int, float)) and not isinstance(self.schedule, bool):
            if not 0.0 <= self.schedule < 1.0:
                self._fail("schedule", f"sparsity must be in [0, 1), got {self.schedule!r}")
            self.schedule = ConstantSparsity(float(self.schedule))
        self._require(
            isinstance(self.schedule, PruningSchedule), "schedule",
            "a PruningSchedule (ConstantSparsity, PolynomialDecay, a subclass) or a float in [0, 1)",
        )
        self._require(self.scope in ("layer", "global"), "scope", "'layer' or 'global'")
        if isinstance(self.block_size, list):
            self.block_size = tuple(self.block_size)
        self._require(
            isinstance(self.block_size, tuple) and len(self.block_size) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                    for b in self.block_size),
            "block_size", "a pair of integers >= 1, e.g. (1, 4)",
        )
        self._require(self.block_reduce in ("mean", "max"), "block_reduce", "'mean' or 'max'")
        if self.pattern is not None:
            from slimkit.techniques.pruning.nm import final_sparsity, parse_pattern

            self._require(parse_pattern(self.pattern) is not None, "pattern",
                          "None or 'N:M' with integers 0 < N < M, e.g. '2:4'")
            self._require(self.block_size == (1, 1), "block_size",
                          "(1, 1) when a pattern is set (N:M groups replace blocks)")
            self._require(self.scope == "layer", "scope",
                          "'layer' when a pattern is set (every group keeps N of M)")
            if final_sparsity(self.schedule) <= 0.0:
                self._fail("schedule", f"with pattern={self.pattern!r} the schedule must end "
                           f"above sparsity 0 (it sets the pace of N:M pruning), got "
                           f"{self.schedule!r}")

        self._require(self.scope == "layer" or not self.overrides, "overrides",
                      "empty with scope='global' (one ranking over all layers)")
        check_overrides(self, OVERRIDABLE)

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` of :attr:`pattern`, or None."""
        if self.pattern is None:
            return None
        from slimkit.techniques.pruning.nm import parse_pattern

        return parse_pattern(self.pattern)
