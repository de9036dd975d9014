"""Pruning schedules: how sparse the weights should be at a given training step.

A schedule answers two questions for the scheduler: ``should_update(step)`` (is this a mask
update step?) and ``sparsity(step)`` (the target then). Subclass :class:`PruningSchedule` as a
dataclass for a custom schedule; it is registered by class name, so configs holding it still
save and load (import its module first).

Example:
    >>> s = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=700, frequency=70)
    >>> s.sparsity(0), round(s.sparsity(350), 3), s.sparsity(700)
    (0.0, 0.7, 0.8)
"""

from __future__ import annotations

from dataclasses import dataclass

from slimkit.core.config import Config


def _fraction_ok(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0


def _int_ok(v, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


@dataclass
class PruningSchedule(Config):
    """Base class. Subclasses implement :meth:`sparsity`; the step rule comes from
    ``begin_step``, ``end_step`` (-1: never ends) and ``frequency`` fields.
    """

    def sparsity(self, step: int) -> float:
        raise NotImplementedError(f"{type(self).__name__} must implement sparsity(step)")

    def should_update(self, step: int) -> bool:
        """True on the steps where masks are recomputed."""
        begin = getattr(self, "begin_step", 0)
        end = getattr(self, "end_step", -1)
        freq = getattr(self, "frequency", 1)
        if step < begin or (end != -1 and step > end):
            return False
        # end_step is always an update step, so the final sparsity is reached exactly even
        # when (end_step - begin_step) is not a multiple of frequency.
        return (step - begin) % freq == 0 or step == end

    def _check_steps(self, allow_open_end: bool) -> None:
        self._require(_int_ok(self.begin_step, 0), "begin_step", "an integer >= 0")
        if allow_open_end and self.end_step == -1:
            pass
        else:
            accepted = "-1 (never ends) or an integer >= begin_step" if allow_open_end else (
                "an integer >= begin_step"
            )
            self._require(
                _int_ok(self.end_step, 0) and self.end_step >= self.begin_step, "end_step", accepted
            )
        self._require(_int_ok(self.frequency, 1), "frequency", "an integer > 0")


@dataclass
class ConstantSparsity(PruningSchedule):
    """Prune to ``target`` at ``begin_step`` and refresh the mask every ``frequency`` steps."""

    target: float = 0.5
    begin_step: int = 0
    end_step: int = -1
    frequency: int = 100

    def __post_init__(self):
        self._require(_fraction_ok(self.target), "target", "a sparsity in [0, 1)")
        self._check_steps(allow_open_end=True)

    def sparsity(self, step: int) -> float:
        return float(self.target)


@dataclass
class PolynomialDecay(PruningSchedule):
    """Raise sparsity from ``initial_sparsity`` to ``final_sparsity`` along a polynomial.

    ``s(t) = final + (initial - final) * (1 - p)^power`` with ``p`` the fraction of
    ``[begin_step, end_step]`` elapsed: with ``power=3`` sparsity rises fast while the
    network still has many redundant weights, then slowly (Zhu & Gupta, 2017).
    """

    initial_sparsity: float = 0.0
    final_sparsity: float = 0.5
    begin_step: int = 0
    end_step: int = 1000
    power: float = 3.0
    frequency: int = 100

    def __post_init__(self):
        self._require(_fraction_ok(self.initial_sparsity), "initial_sparsity", "a sparsity in [0, 1)")
        self._require(_fraction_ok(self.final_sparsity), "final_sparsity", "a sparsity in [0, 1)")
        self._check_steps(allow_open_end=False)
        self._require(
            isinstance(self.power, (int, float)) and not isinstance(self.power, bool)
            and self.power > 0, "power", "a number > 0",
        )

    def sparsity(self, step: int) -> float:
        span = self.end_step - self.begin_step
        frac = 1.0 if span == 0 else min(max((step - self.begin_step) / span, 0.0), 1.0)
        s = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (
            (1.0 - frac) ** self.power
        )
        return float(s)
