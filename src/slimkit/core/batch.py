"""How slimkit calls a model on a batch and reads its outputs: one convention everywhere.

*Model inputs* (``example_inputs`` of export, report and channel pruning) are a tensor
(``model(x)``), a tuple or list of tensors (``model(*xs)``) or a dict of keyword arguments
(``model(**kw)``, as Hugging Face models are called). A *data batch* from a loader may also be
an ``(inputs, target, ...)`` pair: :func:`batch_inputs` keeps the inputs. Outputs are read as
the tensors of the output's pytree (tuples, dicts, Hugging Face ``ModelOutput``), in order.

Example:
    >>> out = call_model(model, {"input_ids": ids, "attention_mask": mask})
    >>> [t.shape for t in flatten_outputs(out)]
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch.utils import _pytree


def check_inputs(inputs, what: str = "example_inputs"):
    """``inputs`` as a tensor, a tuple of tensors or a dict; ``TypeError`` naming ``what``."""
    if inputs is None:
        raise ValueError(f"{what} is required: a tensor, a tuple of tensors or a dict of "
                         "keyword arguments the model takes")
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, (tuple, list)) and inputs and all(
            isinstance(x, torch.Tensor) for x in inputs):
        return tuple(inputs)
    if isinstance(inputs, Mapping) and inputs and all(isinstance(k, str) for k in inputs):
        return dict(inputs)
    raise TypeError(
        f"{what} must be a tensor, a tuple of tensors or a dict of keyword arguments, got "
        f"{type(inputs).__name__}"
    )


def batch_inputs(batch):
    """The model inputs of a loader batch: a tensor or dict as is; the first element of a
    tuple / list (``(x, y)`` pairs)."""
    if isinstance(batch, (torch.Tensor, Mapping)):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise TypeError(
        "a batch must be a tensor, a dict of tensors or an (inputs, target, ...) tuple, got "
        f"{type(batch).__name__}"
    )


def call_model(model: nn.Module, inputs):
    """``model`` called on model inputs (see the module docstring)."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    raise TypeError(f"cannot call a model on {type(inputs).__name__}")


def flatten_outputs(out) -> list[torch.Tensor]:
    """The tensors of a model output, in pytree order."""
    return [t for t in _pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def input_tensors(inputs) -> list[torch.Tensor]:
    """The tensors of model inputs, in call order (dict values in insertion order)."""
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, Mapping):
        return [v for v in inputs.values() if isinstance(v, torch.Tensor)]
    return [x for x in inputs if isinstance(x, torch.Tensor)]


def describe(inputs) -> str:
    """Shapes of model inputs or of a batch, for error messages."""
    if isinstance(inputs, torch.Tensor):
        return f"shape {tuple(inputs.shape)}"
    if isinstance(inputs, Mapping):
        return ", ".join(f"{k}: {tuple(v.shape)}" for k, v in inputs.items()
                         if isinstance(v, torch.Tensor))
    if isinstance(inputs, (tuple, list)):
        return ", ".join(str(tuple(x.shape)) for x in inputs if isinstance(x, torch.Tensor))
    return type(inputs).__name__
