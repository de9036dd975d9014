"""``sk.Scheduler``: advances every scheduled technique by one training step.

Call ``scheduler.step()`` after ``optimizer.step()``, as with ``torch.optim.lr_scheduler``.
The scheduler itself holds no state: each state object (a parametrization or a stateful
module such as an activation quantizer, see :mod:`slimkit.core.state`) keeps its step count
in a buffer, so a checkpoint of the model (``sk.save``) resumes every schedule exactly.

Example:
    >>> scheduler = sk.Scheduler(model)
    >>> for x, y in loader:
    ...     loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad(); scheduler.step()
"""

from __future__ import annotations

import torch.nn as nn

from slimkit.core.state import slim_states


class Scheduler:
    """Steps the schedules of all slimkit state objects in ``model``."""

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self._key = None
        self._scan()
        if not self._stepped:
            raise ValueError(
                f"{type(model).__name__} has no scheduled technique to step; prepare it first "
                "(e.g. sk.prune(model, sk.MagnitudePruningConfig(...)))"
            )

    def _scan(self) -> None:
        # Sites are cached: walking the module tree every step would cost more than the step
        # bookkeeping itself on small models. Re-scan when techniques were added or stripped.
        groups: dict[tuple, list] = {}
        unique = {}
        for site in slim_states(self.model):
            p = site.state
            if not hasattr(p, "step"):
                continue
            unique[id(p)] = p
            groups.setdefault((type(p), getattr(p, "group", "")), []).append(site)
        self._stepped = list(unique.values())
        self._groups = list(groups.items())
        self._key = self._state_key()

    def _state_key(self):
        return len(getattr(self.model, "_slimkit_records", []))

    @property
    def step_count(self) -> int:
        """Steps taken so far (read from the model's buffers)."""
        return int(self._stepped[0].step) if self._stepped else 0

    def step(self) -> None:
        """Advance every schedule by one step and update masks etc. where a schedule says so."""
        if self._key != self._state_key():
            self._scan()
        for p in self._stepped:
            p.step += 1
        for (cls, _group), sites in self._groups:
            cls.on_step(self.model, sites)
