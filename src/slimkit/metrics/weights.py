"""Per-tensor weight statistics of an ONNX artifact or a torch state_dict.

Two words are used with a fixed meaning throughout slimkit.metrics:

- a *parameter* is any element of a stored numeric tensor: float tensors, and integer tensors
  of at most 32 bits (int8 weights, zero points and int32 biases of quantized models);
  int64 tensors are left out because ONNX stores shapes, axes and indices in them;
- a *weight* is a parameter tensor with two or more dimensions (the matrices and kernels that
  pruning, clustering and quantization act on); biases, scales and shapes are not weights,
  nor are normalisation parameters and recurrent biases of any rank in an ONNX file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from slimkit.metrics.entropy import entropy_from_counts

# ONNX element types whose tensors hold parameters (see the module docstring).
_ONNX_PARAM_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
    onnx.TensorProto.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ,
}

_TORCH_INT_PARAM_TYPES = {torch.int8, torch.uint8, torch.int16, torch.int32}


@dataclass
class WeightStats:
    """Statistics of one weight tensor.

    `sparsity` is the fraction of exact zeros, `unique` the number of distinct values and
    `entropy_bytes` the entropy bound of the tensor (params * bits per value / 8).

    Example:
        >>> s = WeightStats.from_array("fc.weight", np.array([[0.0, 1.0], [0.0, 1.0]]))
        >>> (s.params, s.nonzero, s.sparsity, s.unique, s.entropy_bytes)
        (4, 2, 0.5, 2, 0.5)
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    params: int
    nonzero: int
    sparsity: float
    unique: int
    entropy_bytes: float

    @classmethod
    def from_array(cls, name: str, array: np.ndarray, dtype: str | None = None) -> WeightStats:
        """Compute the statistics of `array`; `dtype` overrides the stored dtype name."""
        values = _plain(array).ravel()
        params = int(values.size)
        nonzero = int(np.count_nonzero(values))
        if params:
            # One sort serves both the distinct-value count and the entropy.
            _, counts = np.unique(values, return_counts=True)
        else:
            counts = np.zeros(0, dtype=np.int64)
        return cls(
            name=name,
            shape=tuple(int(d) for d in np.shape(array)),
            dtype=dtype or str(np.asarray(array).dtype),
            params=params,
            nonzero=nonzero,
            sparsity=1.0 - nonzero / params if params else 0.0,
            unique=int(counts.size),
            entropy_bytes=params * entropy_from_counts(counts) / 8.0,
        )

    def to_dict(self) -> dict:
        """A JSON-ready dict (the shape becomes a list)."""
        return {**self.__dict__, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping) -> WeightStats:
        """Inverse of `to_dict`."""
        return cls(**{**data, "shape": tuple(data["shape"])})


@dataclass
class WeightInventory:
    """The weight tensors of a model plus the totals over all of its parameters.

    Example:
        >>> inv = onnx_weight_inventory("model.onnx")  # doctest: +SKIP
        >>> inv.parameters, inv.sparsity, len(inv.layers)  # doctest: +SKIP
        (203530, 0.5, 3)
    """

    layers: list[WeightStats] = field(default_factory=list)
    parameters: int = 0
    nonzero: int = 0

    @property
    def weight_params(self) -> int:
        """Elements in the weight tensors."""
        return sum(s.params for s in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros over the weight tensors (biases and scales left out)."""
        total = self.weight_params
        return 1.0 - sum(s.nonzero for s in self.layers) / total if total else 0.0

    @property
    def unique_values(self) -> int:
        """Sum over weight tensors of their number of distinct values."""
        return sum(s.unique for s in self.layers)

    @property
    def entropy_bound_bytes(self) -> float:
        """Sum over weight tensors of their entropy bound."""
        return sum(s.entropy_bytes for s in self.layers)


def onnx_weight_inventory(path_or_model: str | Path | onnx.ModelProto) -> WeightInventory:
    """Weight statistics and parameter totals of an ONNX model.

    Reads every initializer and every `Constant` node value, subgraphs included.

    Example:
        >>> inv = onnx_weight_inventory("model.onnx")  # doctest: +SKIP
        >>> print(inv.parameters, [s.name for s in inv.layers])  # doctest: +SKIP
        203530 ['0.weight', '2.weight', '4.weight']
    """
    model = _load_onnx(path_or_model)
    inventory = WeightInventory()
    rebuilt, feeding = _compact_weights(model.graph)
    for name, array in rebuilt.items():
        inventory.parameters += int(array.size)
        inventory.nonzero += int(np.count_nonzero(array))
        inventory.layers.append(WeightStats.from_array(name, array))
    not_weights = _scale_and_shift_tensors(model.graph)
    for name, proto in _onnx_tensors(model.graph):
        if proto.data_type not in _ONNX_PARAM_TYPES or name in feeding:
            continue
        array = numpy_helper.to_array(proto)
        inventory.parameters += int(array.size)
        inventory.nonzero += int(np.count_nonzero(_plain(array)))
        if array.ndim >= 2 and name not in not_weights:
            inventory.layers.append(WeightStats.from_array(name, array))
    return inventory


# Inputs that hold scales and shifts, not weights, whatever their rank: normalisation
# scale / bias (and statistics) and the biases of recurrent layers (ONNX stores an LSTM's as
# [directions, 8 * hidden], a 2-D tensor).
_SCALE_SHIFT_INPUTS = {
    "LayerNormalization": {1, 2},
    "BatchNormalization": {1, 2, 3, 4},
    "InstanceNormalization": {1, 2},
    "GroupNormalization": {1, 2},
    "SkipLayerNormalization": {2, 3, 4},
    "SimplifiedLayerNormalization": {1},
    "LSTM": {3},
    "GRU": {3},
    "RNN": {3},
    "DynamicQuantizeLSTM": {3},
}


def _scale_and_shift_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names read only as normalisation parameters or recurrent biases (see above)."""
    roles: dict[str, set[bool]] = {}
    for node in graph.node:
        inputs = _SCALE_SHIFT_INPUTS.get(node.op_type, set())
        for k, name in enumerate(node.input):
            roles.setdefault(name, set()).add(k in inputs)
    return {name for name, r in roles.items() if r == {True}}


def onnx_weight_stats(path_or_model: str | Path | onnx.ModelProto) -> list[WeightStats]:
    """Statistics of each weight tensor of an ONNX model (see `onnx_weight_inventory`).

    Example:
        >>> for s in onnx_weight_stats("model.onnx"):  # doctest: +SKIP
        ...     print(s.name, s.shape, s.sparsity)
        0.weight (64, 16) 0.5
    """
    return onnx_weight_inventory(path_or_model).layers


def tensor_weight_inventory(named_tensors: Mapping[str, torch.Tensor]) -> WeightInventory:
    """Weight statistics and parameter totals of a torch state_dict.

    A tensor stored under several names (tied weights) is counted once, under its first name.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> tensor_weight_inventory(model.state_dict()).parameters
        10
    """
    inventory = WeightInventory()
    seen = set()
    for name, tensor in named_tensors.items():
        if not isinstance(tensor, torch.Tensor) or not _is_torch_param(tensor):
            continue
        key = _storage_key(tensor)
        if key in seen:
            continue
        seen.add(key)
        array = _torch_to_numpy(tensor)
        inventory.parameters += int(array.size)
        inventory.nonzero += int(np.count_nonzero(array))
        if tensor.ndim >= 2:
            dtype = str(tensor.dtype).removeprefix("torch.")
            inventory.layers.append(WeightStats.from_array(name, array, dtype=dtype))
    return inventory


def tensor_weight_stats(named_tensors: Mapping[str, torch.Tensor]) -> list[WeightStats]:
    """Statistics of each weight tensor of a torch state_dict (see `tensor_weight_inventory`).

    Example:
        >>> stats = tensor_weight_stats(torch.nn.Linear(4, 2).state_dict())
        >>> [(s.name, s.shape) for s in stats]
        [('weight', (2, 4))]
    """
    return tensor_weight_inventory(named_tensors).layers


def _load_onnx(path_or_model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    path = Path(path_or_model)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected the path of an .onnx file")
    return onnx.load(path)


def _compact_weights(graph: onnx.GraphProto) -> tuple[dict[str, np.ndarray], set[str]]:
    """Weights stored compactly (uint8 indices + codebook, see slimkit.storage.codebook),
    rebuilt, and the names of the initializers that store them.

    Counting the index tensor as the weight would be right per tensor but wrong for
    per-channel codebooks (indices repeat across channels with different values).
    """
    from slimkit.storage.codebook import expand_compact

    rebuilt = expand_compact(graph)
    if not rebuilt:
        return {}, set()
    inits = {t.name for t in graph.initializer}
    made = {out: node for node in graph.node for out in node.output}
    feeding: set[str] = set()

    def walk(name: str) -> None:
        if name in inits:
            feeding.add(name)
        elif name in made and made[name].op_type in ("Cast", "Add"):
            for upstream in made[name].input:
                walk(upstream)

    for node in graph.node:
        if node.op_type == "Gather" and node.output[0] in rebuilt:
            for name in node.input:
                walk(name)
    return rebuilt, feeding


def _onnx_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    for init in graph.initializer:
        yield init.name, init
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value":
                yield node.output[0], attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _onnx_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _onnx_tensors(sub)


def _plain(array: np.ndarray) -> np.ndarray:
    """A numpy array in a built-in dtype: bfloat16, float8 and int4 become float32 (exactly)."""
    array = np.asarray(array)
    return array.astype(np.float32) if array.dtype.kind == "V" else array


def _is_torch_param(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.dtype in _TORCH_INT_PARAM_TYPES


def _storage_key(tensor: torch.Tensor) -> tuple:
    if tensor.numel() == 0:
        return (id(tensor),)
    return (
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
    )


def _torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32,
                                                           torch.float64):
        # numpy has no bfloat16 / float8; float32 holds their values exactly.
        tensor = tensor.float()
    return tensor.numpy()
