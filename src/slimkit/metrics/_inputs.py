"""Matching user inputs to the inputs of an ONNX graph.

Shared by `report` (validation, batch tiling, random inputs) and by the `predict` function it
hands to the user's `eval_fn`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, dims (an int, or the name of a dynamic dim) and dtype."""

    name: str
    dims: tuple[int | str, ...]
    dtype: np.dtype

    def shape_text(self) -> str:
        return "[" + ", ".join(str(d) for d in self.dims) + "]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real inputs of `model` (old exporters also list initializers as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tensor_type.shape.dim
        )
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(value.name, dims, dtype))
    return specs


def as_tuple(example_inputs) -> tuple:
    """A tensor, array, or tuple/list of them, as a tuple."""
    if isinstance(example_inputs, dict):
        raise TypeError("example_inputs is a dict: bind it by name (bind_inputs does)")
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a torch.Tensor, a numpy array, a tuple of them, or a dict of "
        "keyword arguments, "
        f"got {type(example_inputs).__name__}"
    )


def bind_inputs(
    specs: Sequence[InputSpec], example_inputs, batch_size: int | None = None
) -> dict[str, np.ndarray]:
    """Map example inputs, by position, to graph input names, as numpy arrays of the right dtype.

    With `batch_size`, each input with a dynamic first dim is repeated (or cut) along dim 0 to
    `batch_size` rows. Raises ValueError naming the input and its expected shape when the count,
    the rank or a fixed dim does not match. A dict (the keyword arguments of
    ``model(**inputs)``) binds by name: ``sk.export_onnx`` names graph inputs after its keys.
    """
    values = _by_name(specs, example_inputs) if isinstance(example_inputs, dict) \
        else as_tuple(example_inputs)
    if batch_size is not None:
        _check_batchable(specs, batch_size)
    if len(values) != len(specs):
        expected = ", ".join(f"{s.name} {s.shape_text()}" for s in specs)
        raise ValueError(
            f"got {len(values)} example input(s), the ONNX model takes {len(specs)}: {expected}"
        )
    feeds = {}
    for position, (spec, value) in enumerate(zip(specs, values)):
        array = _to_numpy(value, spec)
        where = f"example input {position} ('{spec.name}')"
        if array.ndim != len(spec.dims):
            raise ValueError(
                f"{where} has shape {list(array.shape)} (rank {array.ndim}); the ONNX model "
                f"expects rank {len(spec.dims)} with shape {spec.shape_text()}"
            )
        for axis, (got, want) in enumerate(zip(array.shape, spec.dims)):
            if isinstance(want, int) and got != want:
                raise ValueError(
                    f"{where} has shape {list(array.shape)}; dim {axis} must be {want} "
                    f"(expected shape {spec.shape_text()})"
                )
        if batch_size is not None and not isinstance(spec.dims[0], int):
            array = array[np.arange(batch_size) % array.shape[0]]
        feeds[spec.name] = np.ascontiguousarray(array)
    return feeds


def _by_name(specs: Sequence[InputSpec], inputs: dict) -> tuple:
    """The dict's values in the graph's input order; None values (unused options) are dropped."""
    given = {k: v for k, v in inputs.items() if v is not None}
    names = [s.name for s in specs]
    missing = [n for n in names if n not in given]
    unknown = [k for k in given if k not in names]
    if missing or unknown:
        raise ValueError(
            f"example_inputs dict has keys {sorted(given)}; the ONNX model's inputs are "
            f"{names}" + (f" (missing: {missing})" if missing else "")
            + (f" (not inputs of the model: {unknown})" if unknown else "")
        )
    return tuple(given[n] for n in names)


def random_inputs(specs: Sequence[InputSpec], batch_size: int | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs built from the graph's input shapes.

    A dynamic first dim becomes `batch_size` (1 when None); other dynamic dims become 1.
    Floats are standard normal; integers are 0 so that they are valid indices (token ids).
    """
    if batch_size is not None:
        _check_batchable(specs, batch_size)
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = tuple(
            d if isinstance(d, int) else ((batch_size or 1) if axis == 0 else 1)
            for axis, d in enumerate(spec.dims)
        )
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def _check_batchable(specs: Sequence[InputSpec], batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if specs and all(spec.dims and isinstance(spec.dims[0], int) for spec in specs):
        fixed = ", ".join(f"{s.name} {s.shape_text()}" for s in specs)
        raise ValueError(
            f"batch_size needs an input with a dynamic first dim; this model's inputs are "
            f"fixed: {fixed}. Export with a dynamic batch axis or leave batch_size=None"
        )


def _to_numpy(value, spec: InputSpec) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype == spec.dtype:
        return array
    # Same kind (float -> float, int -> int) converts silently; anything else is a mistake.
    if array.dtype.kind == spec.dtype.kind or (
        array.dtype.kind in "iu" and spec.dtype.kind in "iu"
    ):
        return array.astype(spec.dtype)
    raise ValueError(
        f"input '{spec.name}' has dtype {array.dtype}; the ONNX model expects {spec.dtype} "
        f"with shape {spec.shape_text()}"
    )
