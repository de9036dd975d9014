"""The digits task: a small real dataset that ships offline, a small CNN, and a training loop.

Data: ``sklearn.datasets.load_digits`` (1797 8x8 images), ``X = images / 16`` as float32 of
shape (N, 1, 8, 8), split ``train_test_split(test_size=0.2, random_state=0, stratify=y)``
into 1437 train / 360 test images. This is the task ../shared/BENCHMARKS.md standardises.

Example:
    >>> data = load_digits_data()
    >>> model = DigitsCNN(); train(model, data, epochs=20, lr=1e-3, seed=0)
    >>> evaluate(model, data.x_test, data.y_test)       # about 0.98
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class DigitsData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def calibration(self) -> torch.Tensor:
        """The first 100 training images: the standard post-training calibration set."""
        return self.x_train[:100]


def load_digits_data() -> DigitsData:
    """Load and split the digits data (deterministic: the split uses ``random_state=0``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return DigitsData(
        torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)
    )


class DigitsCNN(nn.Module):
    """Conv 32 3x3 same -> ReLU -> Conv 64 3x3 same -> ReLU -> MaxPool 2 -> FC 128 -> ReLU -> FC 10.

    151,306 parameters, 151,072 of them in the four kernels; PyTorch default init.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scheduler=None) -> None:
    """One training update: backward, ``opt.step()``, then the slimkit scheduler (if any),
    in the order slimkit expects (the scheduler after the optimizer, as torch's LR schedulers).

    Example:
        >>> optimizer_step(F.cross_entropy(model(x), y), opt, sk.Scheduler(model))
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if scheduler is not None:
        scheduler.step()


def steps_per_epoch(data: DigitsData, batch_size: int = 32) -> int:
    return -(-len(data.x_train) // batch_size)


def train(
    model: nn.Module,
    data: DigitsData,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    seed: int = 0,
    scheduler=None,
    progress: bool = False,
    description: str = "training",
    on_epoch_end: Callable[[int], None] | None = None,
    start_epoch: int = 0,
    distill=None,
) -> list[float]:
    """Train with Adam and cross-entropy, reshuffling each epoch; returns seconds per epoch.

    ``scheduler`` (a :class:`slimkit.Scheduler`) is stepped after every optimizer step. The
    shuffle of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at ``start_epoch``
    sees the same batches as an uninterrupted one. ``distill`` (a
    :class:`slimkit.distill.Distillation`) turns the loss into the distillation loss.
    """
    opt = torch.optim.Adam((p for p in model.parameters() if p.requires_grad), lr=lr)
    return train_with(model, data, opt, epochs=epochs, batch_size=batch_size, seed=seed,
                      scheduler=scheduler, progress=progress, description=description,
                      on_epoch_end=on_epoch_end, start_epoch=start_epoch, distill=distill)


def train_with(model, data, opt, *, epochs, batch_size=32, seed=0, scheduler=None, progress=False,
               description="training", on_epoch_end=None, start_epoch=0,
               distill=None) -> list[float]:
    """:func:`train` with a caller-owned optimizer (to checkpoint and resume its state)."""
    from rich.progress import Progress

    n = len(data.x_train)
    steps = steps_per_epoch(data, batch_size)
    times = []
    model.train()
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(description, total=(epochs - start_epoch) * steps)
        for epoch in range(start_epoch, epochs):
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(n, generator=gen)
            t0 = time.perf_counter()
            for i in range(steps):
                idx = order[i * batch_size:(i + 1) * batch_size]
                x = data.x_train[idx]
                logits = model(x)
                loss = F.cross_entropy(logits, data.y_train[idx])
                if distill is not None:
                    loss = distill(x, logits, loss)
                optimizer_step(loss, opt, scheduler)
                bar.advance(task)
            times.append(time.perf_counter() - t0)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    model.eval()
    return times


def evaluate(model_or_predict, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of a model, or of any ``predict(x) -> logits`` callable (e.g. ORT)."""
    correct = 0
    if isinstance(model_or_predict, nn.Module):
        model_or_predict.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model_or_predict(x[i:i + batch_size])
            correct += int((torch.as_tensor(logits).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


def accuracy_eval(data: DigitsData) -> Callable:
    """An ``eval_fn`` for :func:`slimkit.report`: test accuracy of whatever ``predict`` runs."""

    def eval_fn(predict) -> dict[str, float]:
        return {"accuracy": evaluate(predict, data.x_test, data.y_test)}

    return eval_fn


def set_seed(seed: int) -> None:
    """Seed torch and numpy so initialisation and data order repeat exactly."""
    torch.manual_seed(seed)
    np.random.seed(seed)
