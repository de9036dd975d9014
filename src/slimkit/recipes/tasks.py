"""What a recipe trains and measures: the built-in digits task or the user's factories.

Example:
    >>> task = build_task(load_recipe("prune-80.yaml"))
    >>> model = task.make_model(); len(task.train_loader)      # 45 batches of 32
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.recipes.factories import resolve_factory
from slimkit.recipes.recipe import Recipe


@dataclass
class Task:
    """The objects the runner needs; built once per run from a :class:`Recipe`."""

    make_model: Callable[[], nn.Module]
    train_loader: Iterable
    eval_fn: Callable
    example_inputs: object
    loss_fn: Callable
    checkpoint: str | None = None

    def steps_per_epoch(self) -> int | None:
        """Batches per pass over the training data, or None for a loader without a length."""
        try:
            return len(self.train_loader)
        except TypeError:
            return None


class ShuffledBatches:
    """``(x, y)`` batches in a fresh order each pass, drawn from torch's global RNG.

    The runner seeds that RNG from (seed, stage) at the start of every stage, so the order
    repeats exactly when a run resumes at a stage.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.x))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]


def build_task(recipe: Recipe) -> Task:
    """Build the model factory, data, evaluation and loss a recipe names."""
    if recipe.task == "digits":
        return _digits(recipe)
    make_model = resolve_factory(recipe.model.factory)
    loader = resolve_factory(recipe.data.train_loader)()
    eval_fn = resolve_factory(recipe.data.eval)
    loss_fn = resolve_factory(recipe.data.loss) if recipe.data.loss else F.cross_entropy
    if recipe.data.example_inputs:
        example = resolve_factory(recipe.data.example_inputs)()
    else:
        first = next(iter(loader))
        example = first[0] if isinstance(first, (tuple, list)) else first
    return Task(make_model, loader, eval_fn, example, loss_fn, recipe.model.checkpoint)


def _digits(recipe: Recipe) -> Task:
    from slimkit.examples import DigitsCNN, accuracy_eval, load_digits_data

    data = load_digits_data()
    loss_fn = resolve_factory(recipe.data.loss) if recipe.data.loss else F.cross_entropy
    return Task(
        make_model=DigitsCNN,
        train_loader=ShuffledBatches(data.x_train, data.y_train, recipe.data.batch_size),
        eval_fn=accuracy_eval(data),
        example_inputs=data.x_test[:32],
        loss_fn=loss_fn,
        checkpoint=recipe.model.checkpoint,
    )


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a starting checkpoint: an ``sk.save`` file or a plain state_dict."""
    import slimkit as sk

    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and payload.get("format") == "slimkit.prepared":
        return sk.load(path, model=model)
    if not isinstance(payload, dict):
        raise ValueError(f"model.checkpoint {str(path)!r} is neither a state_dict nor an "
                         "sk.save file")
    try:
        model.load_state_dict(payload)
    except RuntimeError as e:
        raise ValueError(f"model.checkpoint {str(path)!r} does not fit the model: {e}") from e
    return model
