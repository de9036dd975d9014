"""The weight matrix of every matmul-like op of an ONNX graph, float or quantized.

A quantized file does not feed its weights to ``Conv`` / ``MatMul`` as initializers: they sit
behind ``DequantizeLinear`` (QDQ files), ``Cast * scale`` (weight-only convolutions), an
index + codebook ``Gather`` (compact storage), or are the integer inputs of ``MatMulInteger``,
``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``DynamicQuantizeMatMul``,
``MatMulIntegerToFloat`` and ``MatMulNBits`` (int4 / int8 blocks, as ONNX Runtime's fused
graph and its quantizers write them). :func:`matmul_weights` follows each op's weight input
back through those producers to the stored values, with their zero points removed, so that a
zero is a zero weight whatever the storage: what a sparsity check needs.

Example:
    >>> for name, w, axis in matmul_weights(onnx.load("int8.onnx")):
    ...     print(name, w.shape, float((w == 0).mean()))
    fc1.weight (64, 128) 0.5
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# op type -> (weight input position, input axis of that weight as stored).
_WEIGHT_INPUT = {
    "Conv": (1, 1),
    "MatMul": (1, 0),
    "MatMulInteger": (1, 0),
    "DynamicQuantizeMatMul": (1, 0),
    "MatMulIntegerToFloat": (1, 0),
    "QLinearConv": (3, 1),
    "QLinearMatMul": (3, 0),
}


def _ints(array: np.ndarray) -> np.ndarray:
    """int4 / uint4 / int8 / uint8 codes as int32 (numpy's int4 dtypes compare unreliably)."""
    array = np.asarray(array)
    if array.dtype.kind == "V" or str(array.dtype) in ("int4", "uint4"):
        return array.astype(np.float32).astype(np.int32)
    return array.astype(np.int32) if array.dtype.kind in "iu" else array


def matmul_weights(proto) -> Iterator[tuple[str, np.ndarray, int]]:
    """``(name, weight, input_axis)`` for each Conv / Gemm / MatMul / quantized matmul weight.

    ``name`` is the op's weight input (``fc1.weight`` for a DequantizeLinear output), the
    weight is the stored values with zero points removed (zero where the weight is zero),
    ``input_axis`` the axis groups of input weights run along.
    """
    from onnx import numpy_helper

    from slimkit.storage.codebook import expand_compact

    graph = proto.graph
    # ORT's NCHWc layout pass stores conv weights blocked (its own "reorder" initializers):
    # not the model's layout, and the same weights as the ONNX file's.
    skip_domains = {"com.microsoft.nchwc"}
    inits = {t.name: t for t in graph.initializer}
    made = {out: node for node in graph.node for out in node.output}
    rebuilt = expand_compact(graph)
    cache: dict = {}

    def const(name: str):
        if name in cache:
            return cache[name]
        value = None
        if name in rebuilt:
            value = rebuilt[name]
        elif name in inits:
            value = numpy_helper.to_array(inits[name])
        elif name in made:
            value = _through(made[name], const)
        cache[name] = value
        return value

    seen = set()
    for node in graph.node:
        if node.domain in skip_domains:
            continue
        found = _weight_of(node, const)
        if found is None:
            continue
        name, w, axis = found
        if name in seen or w is None or np.ndim(w) < 2:
            continue
        seen.add(name)
        yield name, _ints(w), axis


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _weight_of(node, const):
    op, a = node.op_type, _attrs(node)
    if op in ("Gemm", "FusedGemm") and len(node.input) > 1:
        return node.input[1], const(node.input[1]), 1 if a.get("transB", 0) else 0
    if op == "QGemm" and len(node.input) > 3:
        trans = 1 if a.get("transB", 0) else 0   # B is (N, K) with transB, else (K, N)
        return node.input[3], _minus_zero_point(const(node.input[3]), node, 5, const,
                                                0 if trans else 1), trans
    if op == "MatMulNBits":
        return node.input[1], _unpack_nbits(node, a, const), 1
    if op in _WEIGHT_INPUT:
        pos, axis = _WEIGHT_INPUT[op]
        if len(node.input) <= pos:
            return None
        w = const(node.input[pos])
        zp_pos = {"MatMulInteger": 3, "QLinearConv": 5, "QLinearMatMul": 5,
                  "MatMulIntegerToFloat": 5, "DynamicQuantizeMatMul": 3}.get(op)
        if zp_pos is not None and w is not None:
            # Per output channel: axis 0 of a conv weight, axis 1 of an (in, out) matrix.
            w = _minus_zero_point(w, node, zp_pos, const, 0 if op == "QLinearConv" else 1)
        return node.input[pos], w, axis
    return None


def _minus_zero_point(w, node, pos: int, const, channel_axis: int):
    if w is None:
        return None
    w = _ints(w)
    if len(node.input) <= pos or not node.input[pos]:
        return w
    zp = const(node.input[pos])
    if zp is None:
        return w
    zp = _ints(zp)
    if zp.size == 1:
        return w - zp.reshape(())
    shape = [1] * w.ndim
    shape[channel_axis] = -1
    return w - zp.reshape(shape)


def _through(node, const):
    """The stored values behind one producer of a weight, or None if it is not a weight."""
    from onnx import helper

    op = node.op_type
    if op in ("Identity", "Cast") and node.input:
        return const(node.input[0])
    if op == "DequantizeLinear":
        q = const(node.input[0])
        if q is None:
            return None
        q = _ints(q)
        if len(node.input) < 3 or not node.input[2]:
            return q
        zp = const(node.input[2])
        if zp is None:
            return None
        zp = _ints(zp)
        if zp.size == 1:
            return q - zp.reshape(())
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = attrs.get("axis", 1) % q.ndim
        block = attrs.get("block_size", 0)
        if block:
            zp = np.repeat(zp, block, axis=axis)
            zp = np.take(zp, np.arange(q.shape[axis]), axis=axis)
            return q - zp
        shape = [1] * q.ndim
        shape[axis] = -1
        return q - zp.reshape(shape)
    if op == "Mul" and len(node.input) == 2:
        # Codes times a scale: the operand shaped like the weight carries the zeros.
        left, right = const(node.input[0]), const(node.input[1])
        if left is None or right is None:
            return None
        return left if np.ndim(left) >= np.ndim(right) and np.size(left) >= np.size(right) \
            else right
    if op == "Transpose" and node.input:
        w = const(node.input[0])
        if w is None:
            return None
        perm = [a.ints for a in node.attribute if a.name == "perm"]
        return np.transpose(w, list(perm[0]) if perm else None)
    return None


def _unpack_nbits(node, attrs: dict, const):
    """MatMulNBits' packed ``(N, blocks, blob)`` uint8 weight as ``(N, K)`` integers minus
    their zero points (default ``2**(bits-1)``)."""
    packed = const(node.input[1])
    if packed is None:
        return None
    k, n, bits = attrs.get("K"), attrs.get("N"), attrs.get("bits", 4)
    block = attrs.get("block_size")
    if not (k and n and block) or bits not in (2, 4, 8):
        return None
    raw = np.asarray(packed, dtype=np.uint8).reshape(n, -1)
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    codes = np.stack([(raw >> (bits * i)) & mask for i in range(per_byte)], axis=-1)
    codes = codes.reshape(n, -1)[:, :k].astype(np.int32)
    blocks = -(-k // block)
    zp = np.full((n, blocks), 1 << (bits - 1), dtype=np.int32)
    if len(node.input) > 3 and node.input[3]:
        z = const(node.input[3])
        if z is None:
            return None
        z = np.asarray(z)
        if z.dtype == np.uint8 and bits < 8:
            z = z.reshape(n, -1)
            z = np.stack([(z >> (bits * i)) & mask for i in range(per_byte)], axis=-1)
            z = z.reshape(n, -1)[:, :blocks]
        zp = z.reshape(n, blocks).astype(np.int32)
    return codes - np.repeat(zp, block, axis=1)[:, :k]
