"""``IntCodes``: a weight stored as signed integers times a float scale (zero point 0).

Example:
    >>> codes = IntCodes(q.to(torch.int8), scale, bits=4, group_size=32)
    >>> w = codes.decode(torch.float32)          # q * scale, exactly as the fake-quant computes
    >>> codes.add_dequantize(graph, "fc.weight")  # INT4 initializer + blocked DequantizeLinear
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def expand_scale(scale: torch.Tensor, w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``scale`` (shape ``()``, ``(out,)`` or ``(out, in // group_size)``) broadcast to ``w``."""
    if scale.dim() == 0:
        return scale.expand_as(w)
    if group_size is not None:
        full = scale.repeat_interleave(group_size, dim=1)
        return full.reshape(w.shape)
    return scale.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w)


@dataclass
class IntCodes:
    """Integers ``q`` (torch layout ``[out, ...]``) and their scale.

    ``scale`` has shape ``()`` (per tensor), ``(out,)`` (per output channel) or
    ``(out, in // group_size)`` (per group of ``group_size`` inputs).
    """

    q: torch.Tensor
    scale: torch.Tensor
    bits: int
    group_size: int | None = None

    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``q * scale`` as a float32 multiply (bit-identical to the fake-quant's weight)."""
        q = self.q
        return q.float().mul_(expand_scale(self.scale.float(), q, self.group_size)).to(dtype)

    def add_dequantize(self, graph, name: str, transposed: bool = False) -> None:
        """Add the codes as an INT8/INT4 initializer and a DequantizeLinear producing ``name``.

        ``transposed``: the exporter stored the weight as ``[in, out]`` (a Linear's MatMul).
        """
        from onnx import helper, numpy_helper

        q = self.q.numpy().astype(np.int8) if isinstance(self.q, torch.Tensor) else self.q
        scale = np.asarray(self.scale, dtype=np.float32)
        # Output channels are axis 0 of the torch weight, axis 1 of a pre-transposed one;
        # a grouped scale runs along the input axis.
        axis = 1 if (self.group_size is not None) != transposed else 0
        if transposed:
            q, scale = q.T, scale.T
        qname, sname, zname = f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"
        graph.initializer.append(int_initializer(qname, q, self.bits))
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(scale), sname))
        graph.initializer.append(int_initializer(zname, np.zeros(scale.shape), self.bits))
        attrs = {}
        if scale.ndim >= 1:
            attrs["axis"] = axis
        if self.group_size:
            attrs["block_size"] = self.group_size
        node = helper.make_node("DequantizeLinear", [qname, sname, zname], [name],
                                name=f"{name}_dequantize", **attrs)
        graph.node.insert(0, node)


def int_initializer(name: str, values: np.ndarray, bits: int):
    """An INT8 or INT4 initializer stored as raw bytes (two int4 values per byte, low first)."""
    from onnx import TensorProto, helper

    ints = np.asarray(values).astype(np.int8)
    if bits == 8:
        return helper.make_tensor(name, TensorProto.INT8, ints.shape, ints.tobytes(), raw=True)
    if bits != 4:
        raise ValueError(f"ONNX integer initializers are int8 or int4, got bits={bits}")
    flat = ints.flatten()
    if flat.size % 2:
        flat = np.append(flat, np.int8(0))
    nibbles = (flat.astype(np.uint8) & 0x0F).reshape(-1, 2)
    packed = (nibbles[:, 0] | (nibbles[:, 1] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.INT4, ints.shape, packed.tobytes(), raw=True)
