"""Codebook storage: a weight with few distinct values as uint8 indices + a codebook.

A weight holding at most k distinct values (a clustered weight, for one) can be stored as
one byte per weight plus a small codebook, and rebuilt in the graph by ``Gather(codebook, Cast(indices))``.
Every input of those nodes is an initializer, so ONNX Runtime's constant folding turns them
back into the plain weight when the session starts: the file is about 4x smaller and
inference runs the same fp32 kernels at the same speed.

Layouts (chosen per initializer, smallest first):

- per tensor, <= 256 distinct values: ``indices`` (uint8, the weight's shape) and
  ``codebook`` (float32, (m,)); ``Gather(codebook, Cast<int32>(indices))``;
- per slice, <= 256 distinct values in every slice along some axis (per-channel codebooks;
  the axis is searched because the exporter may transpose a weight): ``codebook`` is the
  (slices, m) table flattened and ``offsets`` (int64, slice * m, broadcast along the axis)
  turns a slice-local index into a flat one: ``Gather(codebook, Add(Cast<int64>(indices),
  offsets))``.

Index 0 stands for +0.0 whenever there is room (it is already first: the codebook is sorted
by bit pattern, in which +0.0 is smallest), so the index tensor is zero exactly where the weight
is: a report reading the indices counts the same sparsity. Values are matched by bit pattern,
so the rebuilt weight is bit-identical (-0.0 stays -0.0, and a NaN would stay that NaN).

:func:`compact_graph` is what ``sk.export_onnx(..., compact=True)`` runs after every
technique's export hook: int8 weights read by a DequantizeLinear first (4-bit indices), then
float weights. It knows no technique; it stores whatever has few values compactly.

Example:
    >>> proto = onnx.load("clustered.onnx")
    >>> names = compact_graph(proto.graph)                 # rewritten in place
    >>> onnx.save(proto, "clustered-compact.onnx")         # ~4x smaller raw
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

MAX_CODES = 256


def compact_graph(graph: onnx.GraphProto, skip: set[str] = frozenset()) -> list[str]:
    """Store every weight with few distinct values as indices + codebook; returns the names.

    Int8 weights with <= 16 values per slice become 4-bit indices into an int8 codebook
    (:func:`compact_int8`), float weights with <= 256 values per tensor or per slice uint8
    indices into a float codebook (:func:`compact_initializers`); ``skip`` names initializers
    to leave alone. Only initializers that get smaller are rewritten.
    """
    return compact_int8(graph, skip) + compact_initializers(graph, skip)


def compact_initializers(graph: onnx.GraphProto, skip: set[str] = frozenset()) -> list[str]:
    """Rewrite every float32 initializer of >= 2 dims with few values per tensor or per slice.

    Only initializers that get smaller are rewritten, none named in ``skip``. Returns their
    names.
    """
    return _rewrite(graph, lambda init: (
        encode(numpy_helper.to_array(init))
        if init.data_type == TensorProto.FLOAT and len(init.dims) >= 2 and init.name not in skip
        else None), nibbles=False)


def compact_int8(graph: onnx.GraphProto, skip: set[str] = frozenset()) -> list[str]:
    """Store int8 weights with <= 16 distinct values per output channel as 4-bit indices.

    For quantized clustered weights (CQAT / PCQAT): the int8 weight read by a
    DequantizeLinear becomes ``Gather(int8 codebook, Cast(uint4 indices) [+ offsets])``.
    ORT folds the lookup at session start, so it still runs its int8 kernels on the same
    int8 weight; the file holds half a byte per weight, and the index stream, with zero at
    index 0, zips better than the int8 bytes. Returns the names rewritten.

    Example:
        >>> compact_int8(proto.graph)           # after the quantization export hook
        ['fc1.weight_quantized', ...]
    """
    # Read by a DequantizeLinear, or by the Cast of a weight-only convolution's Cast * scale.
    dequantized = {n.input[0] for n in graph.node if n.op_type in ("DequantizeLinear", "Cast")}
    return _rewrite(graph, lambda init: (
        encode_int8(numpy_helper.to_array(init))
        if init.data_type == TensorProto.INT8 and len(init.dims) >= 2 and init.name in dequantized
        and init.name not in skip else None), nibbles=True)


def _rewrite(graph: onnx.GraphProto, encoder, nibbles: bool) -> list[str]:
    """Replace each initializer ``encoder`` encodes by indices + codebook + a Gather."""
    taken = {t.name for t in graph.initializer} | {n for node in graph.node for n in node.output}
    graph_inputs = {i.name for i in graph.input}
    done, nodes, keep = [], [], []
    for init in graph.initializer:
        enc = encoder(init)
        if enc is None:
            keep.append(init)
            continue
        indices, codebook, offsets = enc
        names = _fresh(init.name, ("indices", "codebook", "offsets", "idx", "flat"), taken)
        keep.append(_index_tensor(indices, names["indices"], nibbles))
        keep.append(numpy_helper.from_array(codebook, names["codebook"]))
        if offsets is None:
            nodes.append(helper.make_node("Cast", [names["indices"]], [names["idx"]],
                                          to=TensorProto.INT32, name=names["idx"]))
            flat = names["idx"]
        else:
            keep.append(numpy_helper.from_array(offsets, names["offsets"]))
            nodes.append(helper.make_node("Cast", [names["indices"]], [names["idx"]],
                                          to=TensorProto.INT64, name=names["idx"]))
            nodes.append(helper.make_node("Add", [names["idx"], names["offsets"]],
                                          [names["flat"]], name=names["flat"]))
            flat = names["flat"]
        nodes.append(helper.make_node("Gather", [names["codebook"], flat], [init.name],
                                      axis=0, name=f"{init.name}__gather"))
        done.append(init.name)
    if not done:
        return done
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # Producers first: the new nodes read only initializers, so they may lead the graph.
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    if graph_inputs & set(done):  # IR < 4 lists initializers as inputs too
        kept_inputs = [i for i in graph.input if i.name not in done]
        del graph.input[:]
        graph.input.extend(kept_inputs)
    return done


def expand_compact(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The weights that compact ``Gather`` chains of ``graph`` rebuild, by name (no ORT needed).

    For tools that read weights from the file (e.g. per-layer statistics): a compacted weight
    is no longer an initializer, this gives it back bit for bit.

    Example:
        >>> weights = expand_compact(onnx.load("small.onnx").graph)
        >>> weights["fc1.weight"].shape
        (128, 1024)
    """
    inits = {t.name: t for t in graph.initializer}
    made = {out: node for node in graph.node for out in node.output}

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def index_of(name):
        node = made.get(name)
        if node is None:
            return None
        if node.op_type == "Cast":
            idx = const(node.input[0])
            return None if idx is None else idx.astype(np.int64)
        if node.op_type == "Add":
            idx, offsets = index_of(node.input[0]), const(node.input[1])
            return None if idx is None or offsets is None else idx + offsets
        return None

    out = {}
    for node in graph.node:
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        idx = index_of(node.input[1])
        if idx is not None:
            out[node.output[0]] = const(node.input[0])[idx]
    return out


def encode(w: np.ndarray):
    """``(indices uint8, codebook float32, offsets int64 | None)`` for ``w``, or None.

    None when neither layout fits in 256 codes or neither makes the weight smaller.
    """
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    best = _best(bits, MAX_CODES)
    if best is None:
        return None
    indices, codes, offsets = best
    best = (indices, codes.view(np.float32), offsets)
    return best if _nbytes(best) < w.nbytes else None


def encode_int8(w: np.ndarray):
    """``(indices uint4 as uint8, codebook int8, offsets int64 | None)`` for an int8 ``w``,
    or None when some slice has more than 16 values or the weight would not shrink."""
    bits = np.ascontiguousarray(w, dtype=np.int8).view(np.uint8).astype(np.uint32)
    best = _best(bits, 16)
    if best is None:
        return None
    indices, codes, offsets = best
    best = (indices, codes.astype(np.uint8).view(np.int8), offsets)
    size = -(-indices.size // 2) + codes.size + (0 if offsets is None else offsets.nbytes)
    return best if size < w.nbytes else None


def _best(bits: np.ndarray, max_codes: int):
    best = _per_tensor(bits, max_codes)
    if best is None:
        slices = [_per_slice(bits, axis, max_codes) for axis in range(bits.ndim)]
        slices = [s for s in slices if s is not None]
        best = min(slices, key=_nbytes) if slices else None
    return best


def _index_tensor(indices: np.ndarray, name: str, nibbles: bool):
    """uint8 indices, or packed UINT4 (two per byte, low nibble first) with ``nibbles``."""
    if not nibbles:
        return numpy_helper.from_array(indices, name)
    flat = indices.reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    packed = (flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)
    return helper.make_tensor(name, TensorProto.UINT4, indices.shape,
                              packed.astype(np.uint8).tobytes(), raw=True)


def _nbytes(encoded) -> int:
    return sum(a.nbytes for a in encoded if a is not None)


def _per_tensor(bits: np.ndarray, max_codes: int = MAX_CODES):
    codes, inverse = np.unique(bits.reshape(-1), return_inverse=True)
    if codes.size > max_codes:
        return None
    if codes[0] != 0 and codes.size < max_codes:
        codes, inverse = np.concatenate([[np.uint32(0)], codes]), inverse + 1
    indices = inverse.reshape(bits.shape).astype(np.uint8)
    return indices, codes, None


def _per_slice(bits: np.ndarray, axis: int, max_codes: int = MAX_CODES):
    moved = np.moveaxis(bits, axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    if rows.shape[0] < 2:
        return None
    srt = np.sort(rows, axis=1)
    first = np.ones(srt.shape, dtype=bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    count = first.sum(axis=1)
    if count.max() > max_codes:
        return None
    if count.max() < max_codes:
        # Room for +0.0 in every row: give each row a 0 code (at index 0, as it sorts first).
        srt = np.concatenate([np.zeros((rows.shape[0], 1), dtype=np.uint32), srt], axis=1)
        first = np.ones(srt.shape, dtype=bool)
        first[:, 1:] = srt[:, 1:] != srt[:, :-1]
        count = first.sum(axis=1)
    m = int(count.max())
    pos = np.cumsum(first, axis=1) - 1
    codes = np.zeros((rows.shape[0], m), dtype=np.uint32)
    r, c = np.nonzero(first)
    codes[r, pos[r, c]] = srt[r, c]
    # Pad short rows with their largest code: rows stay sorted, so a binary search finds the
    # first (real) copy of every value.
    last = codes[np.arange(rows.shape[0]), count - 1][:, None]
    codes = np.where(np.arange(m)[None, :] >= count[:, None], last, codes)
    labels = torch.searchsorted(torch.from_numpy(codes.astype(np.int64)),
                                torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))).numpy()
    indices = np.moveaxis(labels.reshape(moved.shape).astype(np.uint8), 0, axis)
    shape = [1] * bits.ndim
    shape[axis] = rows.shape[0]
    offsets = (np.arange(rows.shape[0], dtype=np.int64) * m).reshape(shape)
    return np.ascontiguousarray(indices), codes.reshape(-1), offsets


def _fresh(base: str, parts, taken: set) -> dict:
    out = {}
    for part in parts:
        name, i = f"{base}__{part}", 0
        while name in taken:
            i += 1
            name = f"{base}__{part}{i}"
        taken.add(name)
        out[part] = name
    return out
