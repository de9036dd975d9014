"""``SlimkitTrainerCallback``: slimkit's scheduler and statistics inside a Hugging Face ``Trainer``.

Prepare the model before building the ``Trainer``; the callback steps the schedules in
``on_step_end``, which the Trainer calls once per optimizer step (not on the
``gradient_accumulation_steps`` micro-batches in between), and adds
:func:`slimkit.integrations.training_stats` to every training log (``state.log_history``,
the printed logs and every callback that runs after it). Under DDP (``torchrun``) it reduces
the QAT observer ranges over all ranks before each step.

The Trainer hands its ``report_to`` integrations (TensorBoard, W&B...) the logs before the
callbacks passed in ``callbacks=[...]`` see them; :meth:`SlimkitTrainerCallback.add_to` puts
the callback first, so the integrations get the statistics too.

Example:
    >>> sk.prune(model, sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.8, 0, 1000)))
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds)
    >>> SlimkitTrainerCallback().add_to(trainer)
    >>> trainer.train()
"""

from __future__ import annotations

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "slimkit.integrations.hf needs transformers: pip install 'slimkit[hf]'"
    ) from e

import torch.nn as nn

from slimkit.integrations.distributed import DistributedScheduler
from slimkit.integrations.stats import training_stats
from slimkit.integrations.target import find_prepared, make_scheduler


class SlimkitTrainerCallback(TrainerCallback):
    """Steps slimkit's schedules after each optimizer step and adds their statistics to the logs.

    Args:
        model_attr: the attribute of the Trainer's model holding the prepared model (dotted
            for nested ones); ``None``: the Trainer's model itself, searched whole.
        per_layer: also log each layer's sparsity / clusters / observer range.
        teacher: distill from this model while training (a copy of the model before it was
            compressed), or a ready :class:`slimkit.distill.Distillation`: during training the
            model's ``outputs.loss`` (computed from ``labels``) becomes the distillation loss.
        distill: the :class:`slimkit.distill.DistillationConfig` (or its fields) for a plain
            ``teacher`` module.

    Example:
        >>> trainer = Trainer(model, args, train_dataset=ds, callbacks=[SlimkitTrainerCallback()])
    """

    def __init__(self, model_attr: str | None = None, per_layer: bool = False, teacher: nn.Module | None = None,
                 distill: object | None = None):
        if model_attr is not None and not (isinstance(model_attr, str) and model_attr):
            raise ValueError(
                f"model_attr must be None or an attribute name, got {model_attr!r} "
                "(SlimkitTrainerCallback.model_attr)"
            )
        self.model_attr = model_attr
        self.per_layer = per_layer
        self.scheduler: DistributedScheduler | None = None
        self.teacher, self.distill_config = teacher, distill
        self._undo = None

    def add_to(self, trainer) -> SlimkitTrainerCallback:
        """Register this callback first in ``trainer``, before the ``report_to`` integrations."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def _ensure_scheduler(self, model: nn.Module | None) -> DistributedScheduler:
        if self.scheduler is None:
            if model is None:
                raise ValueError("SlimkitTrainerCallback needs the Trainer's model")
            target = find_prepared(model, self.model_attr, "SlimkitTrainerCallback")
            self.scheduler = make_scheduler(target, "SlimkitTrainerCallback")
        return self.scheduler

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # A fresh scheduler per train(): the model may have been prepared again since.
        self.scheduler = None
        self._ensure_scheduler(model)
        if self.teacher is not None and self._undo is None:
            from slimkit.distill import as_distillation, wrap_forward

            self._undo = wrap_forward(model, as_distillation(self.teacher, self.distill_config,
                                                             student=model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._undo is not None:
            self._undo()
            self._undo = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._ensure_scheduler(model).step()

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or any(k.startswith(("eval_", "test_")) for k in logs):
            return  # evaluation and prediction logs: the training logs carry the stats
        stats = training_stats(self._ensure_scheduler(model).model, per_layer=self.per_layer)
        # The Trainer appended a copy of these logs to log_history just before: extend it too.
        last = state.log_history[-1] if state.log_history else None
        if last is not None and all(last.get(k) == v for k, v in logs.items()):
            last.update(stats)
        logs.update(stats)
