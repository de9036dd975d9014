"""Storage codecs: how a weight is stored in an artifact, below every technique.

- :class:`IntCodes`: integers times a scale (int8 / int4 weights, per tensor, per output
  channel or per group), written to ONNX as an INT8 / INT4 initializer read by a
  DequantizeLinear;
- :mod:`slimkit.storage.codebook`: few distinct values as indices into a codebook, rebuilt by
  a Gather that ONNX Runtime folds at session start.

The ONNX export, the packed format and the metrics share these, so techniques never need
each other's code to store or read a weight.

Example:
    >>> codes = IntCodes(q, scale, bits=8, group_size=None)
    >>> torch.equal(codes.decode(torch.float32), baked_weight)
    True
"""

from slimkit.storage.codebook import compact_graph, expand_compact
from slimkit.storage.intcodes import IntCodes, expand_scale, int_initializer

__all__ = ["IntCodes", "compact_graph", "expand_compact", "expand_scale", "int_initializer"]
