"""Configs of the one-shot pruning methods: ``SparseGPTConfig`` and ``WandaConfig``.

Both prune once, from calibration data, block by block: unstructured at ``sparsity`` (one
ratio for every layer, or per-layer ratios through ``overrides``), or N:M (``pattern="2:4"``:
at most N non-zeros in every M consecutive inputs of a row).

Example:
    >>> cfg = SparseGPTConfig(0.5)                                   # 50% of every layer
    >>> cfg = WandaConfig(pattern="2:4")                            # 2 of every 4 inputs
    >>> cfg = SparseGPTConfig(0.5, overrides={"*.mlp.down_proj": 0.3})   # per-layer ratios
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slimkit.core.config import Config
from slimkit.core.overrides import check_overrides
from slimkit.techniques.pruning.nm import parse_pattern
from slimkit.techniques.pruning.schedules import ConstantSparsity


def _fraction(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0


@dataclass
class OneShotSparsity(ConstantSparsity):
    """The schedule of a one-shot pruned layer: ``target`` from the start, never recomputed.

    A ``ConstantSparsity`` whose masks are never updated by :class:`slimkit.Scheduler`: the
    mask was chosen from calibration data, and a magnitude refresh would throw that away.
    """

    def should_update(self, step: int) -> bool:
        return False


@dataclass
class OneShotPruningConfig(Config):
    """Fields shared by SparseGPT and Wanda (use one of the two subclasses).

    Attributes:
        sparsity: the share of weights zeroed in every selected layer, in [0, 1).
        pattern: ``"N:M"`` (e.g. ``"2:4"``, ``"4:8"``): N:M sparsity instead of
            unstructured; every layer then ends at ``1 - N/M`` and ``sparsity`` is not used.
        overrides: ``{layer pattern: {"sparsity": s}}``: per-layer ratios (patterns as in
            ``targets``: type names, globs, ``re:`` regexes; the last match wins). The older
            form ``{layer pattern: s}`` is accepted and stored as the new one.
        calibration_tokens: the fewest calibration tokens accepted (rows of the layer
            inputs): fewer give a rank-deficient Hessian / unreliable input norms.
    """

    sparsity: float = 0.5
    pattern: str | None = None
    overrides: dict = field(default_factory=dict)
    calibration_tokens: int = 512

    def __post_init__(self):
        self._require(_fraction(self.sparsity), "sparsity", "a sparsity in [0, 1)")
        if self.pattern is not None:
            self._require(parse_pattern(self.pattern) is not None, "pattern",
                          "None or 'N:M' with integers 0 < N < M, e.g. '2:4' or '4:8'")
        self._require(isinstance(self.overrides, dict), "overrides",
                      "a dict {layer pattern: sparsity in [0, 1)}")
        for key, value in self.overrides.items():
            # {pattern: {"sparsity": s}} (the form of every config) or the older {pattern: s}
            if isinstance(value, dict) and set(value) <= {"sparsity"} and value:
                value = value["sparsity"]
            self._require(isinstance(key, str) and _fraction(value), "overrides",
                          f"a dict {{layer pattern (str): {{'sparsity': s}} or s}} with s in "
                          f"[0, 1) (got {key!r}: {value!r})")
        self._require(self.pattern is None or not self.overrides, "overrides",
                      "empty when a pattern is set (N:M fixes every layer at 1 - N/M)")
        check_overrides(self, ("sparsity",), legacy="sparsity")
        self._require(isinstance(self.calibration_tokens, int)
                      and not isinstance(self.calibration_tokens, bool)
                      and self.calibration_tokens >= 1, "calibration_tokens", "an integer >= 1")

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` of :attr:`pattern`, or None."""
        return None if self.pattern is None else parse_pattern(self.pattern)

    def layer_sparsity(self, name: str, module) -> float:
        """The sparsity of layer ``name``: ``1 - N/M``, its override, or ``sparsity``."""
        if self.nm is not None:
            n, m = self.nm
            return 1.0 - n / m
        from slimkit.core.selection import matches

        value = self.sparsity
        for pattern, fields in self.overrides.items():
            if matches(name, module, pattern):
                value = fields["sparsity"]
        return float(value)


@dataclass
class SparseGPTConfig(OneShotPruningConfig):
    """SparseGPT (Frantar & Alistarh, 2023): prune with the layer Hessian and update the kept
    weights to reconstruct the layer's outputs.

    Attributes:
        damp: added to the Hessian's diagonal as ``damp * mean(diag(H))`` before inverting.
        block: columns pruned together; the mask of each block is chosen jointly (adaptive
            mask selection) and the updates to later columns are applied once per block.
            A multiple of M for N:M patterns.
    """

    damp: float = 0.01
    block: int = 128

    def __post_init__(self):
        super().__post_init__()
        self._require(isinstance(self.damp, (int, float)) and not isinstance(self.damp, bool)
                      and 0.0 < self.damp < 1.0, "damp", "a number in (0, 1), e.g. 0.01")
        self._require(isinstance(self.block, int) and not isinstance(self.block, bool)
                      and self.block >= 1, "block", "an integer >= 1, e.g. 128")
        if self.nm is not None:
            self._require(self.block % self.nm[1] == 0, "block",
                          f"a multiple of M={self.nm[1]} with pattern={self.pattern!r}")


@dataclass
class WandaConfig(OneShotPruningConfig):
    """Wanda (Sun et al., 2023): prune the smallest ``|W_ij| * ||X_j||_2`` of every output row;
    no weight update.
    """
