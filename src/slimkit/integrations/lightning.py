"""``SlimkitCallback``: slimkit's scheduler and statistics inside a Lightning ``Trainer``.

Prepare the model (``sk.prune``, ``sk.cluster``, ``sk.quantize(..., sk.QATConfig())``) before
the trainer starts, keep it as an attribute of the LightningModule (or make the module the
model), and add the callback. It steps the schedules once per optimizer step — with
``accumulate_grad_batches=k`` once every ``k`` batches, as ``trainer.global_step`` counts —
and logs :func:`slimkit.integrations.training_stats` through the trainer's loggers.
Under DDP it reduces the QAT observer ranges over all ranks before each step.

The step counts, masks, centroids and observer ranges are buffers of the model, so they are
in the LightningModule's ``state_dict`` and Lightning's checkpoints: ``trainer.fit(module,
ckpt_path=...)`` on a module prepared the same way resumes every schedule where it stopped.

Example:
    >>> class Net(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__(); self.model = sk.prune(DigitsCNN(), cfg)
    >>> trainer = L.Trainer(max_epochs=10, callbacks=[SlimkitCallback()])
    >>> trainer.fit(Net(), loader)
"""

from __future__ import annotations

import torch.nn as nn

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "slimkit.integrations.lightning needs Lightning: pip install 'slimkit[lightning]'"
    ) from e

from slimkit.integrations.distributed import DistributedScheduler
from slimkit.integrations.stats import training_stats
from slimkit.integrations.target import find_prepared, make_scheduler


class SlimkitCallback(pl.Callback):
    """Steps slimkit's schedules after each optimizer step and logs their statistics.

    Args:
        model_attr: the attribute of the LightningModule holding the prepared model
            (dotted for nested ones); ``None``: the LightningModule itself, searched whole.
        log_every_n_steps: log :func:`training_stats` every this many optimizer steps
            (``None``: the trainer's ``log_every_n_steps``; 0: never).
        per_layer: also log each layer's sparsity / clusters / observer range.
        teacher: distill from this model while training (typically a copy of the model before
            it was compressed), or a ready :class:`slimkit.distill.Distillation`. The
            callback adds the distillation gradient in ``on_before_backward`` (fp32 / bf16;
            not with a GradScaler), so ``training_step`` keeps returning its task loss.
        distill: the :class:`slimkit.distill.DistillationConfig` (or its fields) for a plain
            ``teacher`` module.

    The statistics are also logged (without the loggers) at the end of every training
    epoch, so ``ModelCheckpoint(monitor="slimkit/sparsity")`` and the progress bar see them.

    Example:
        >>> trainer = L.Trainer(callbacks=[SlimkitCallback("model", per_layer=True)])
    """

    def __init__(self, model_attr: str | None = None, log_every_n_steps: int | None = None,
                 per_layer: bool = False, teacher: nn.Module | None = None, distill: object | None = None):
        if model_attr is not None and not (isinstance(model_attr, str) and model_attr):
            raise ValueError(
                f"model_attr must be None or an attribute name, got {model_attr!r} "
                "(SlimkitCallback.model_attr)"
            )
        if log_every_n_steps is not None and not (
            isinstance(log_every_n_steps, int) and log_every_n_steps >= 0
        ):
            raise ValueError(
                f"log_every_n_steps must be None or an integer >= 0, got {log_every_n_steps!r} "
                "(SlimkitCallback.log_every_n_steps)"
            )
        self.model_attr = model_attr
        self.log_every_n_steps = log_every_n_steps
        self.per_layer = per_layer
        self.scheduler: DistributedScheduler | None = None
        self._seen = 0
        self.teacher, self.distill_config = teacher, distill
        self.distill = None
        self._capture = None
        self._inputs = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        target = find_prepared(pl_module, self.model_attr, "SlimkitCallback")
        self.scheduler = make_scheduler(target, "SlimkitCallback")
        # Checkpoints are restored before this hook: count optimizer steps from here, so a
        # resumed run (its step buffers restored too) steps on from where it stopped.
        self._seen = trainer.global_step
        if self.teacher is not None:
            from slimkit.distill import CapturedOutput, as_distillation

            self.distill = as_distillation(self.teacher, self.distill_config, student=target)
            self._capture = CapturedOutput(target)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.distill is not None:
            from slimkit.core.batch import batch_inputs

            self._inputs = batch_inputs(batch)
            self._capture.output = None

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.distill is None:
            return
        out = self._capture.take()
        if out is None:
            raise ValueError(
                "SlimkitCallback(teacher=...): the prepared model did not run in this training "
                "step, so there is no student output to distill into"
            )
        from slimkit.distill import extra_backward

        extra_backward(self.distill, self._inputs, out, loss,
                       scale=1.0 / max(trainer.accumulate_grad_batches, 1))

    def on_train_end(self, trainer, pl_module) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        # global_step counts real optimizer steps: it does not move on the batches that
        # only accumulate gradients.
        stepped = trainer.global_step - self._seen
        if stepped <= 0:
            return
        for _ in range(stepped):
            self.scheduler.step()
        self._seen = trainer.global_step
        every = trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        if every and trainer.loggers and trainer.global_step % every == 0:
            stats = training_stats(self.scheduler.model, per_layer=self.per_layer)
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.scheduler is None:
            return
        stats = training_stats(self.scheduler.model, per_layer=self.per_layer)
        # logger=False: the loggers got these at the step cadence already.
        pl_module.log_dict(stats, on_step=False, on_epoch=True, logger=False, sync_dist=False)
