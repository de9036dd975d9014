"""Dynamic int8 LSTM in the ONNX file: ``LSTM`` -> ONNX Runtime's ``DynamicQuantizeLSTM``.

Under ``QuantizationConfig(mode="dynamic")`` an ``nn.LSTM``'s input and recurrent weights get
symmetric int8 fake-quant per gate row (the activations are quantized inside ORT's kernel at
run time, per time step, which torch does not simulate: the torch model runs with int8-grid
weights and float activations). The exporter writes a plain ONNX ``LSTM`` whose ``W`` / ``R``
initializers hold those weights with the gates reordered (torch i, f, g, o -> ONNX i, o, f, c:
a permutation of rows, so every row is still on its own int8 grid). This pass reads each row's
grid back from the stored floats, checks the floats are exactly on it (so an LSTM that was not
quantized, e.g. ignored, is left alone), and replaces the node by the com.microsoft
``DynamicQuantizeLSTM`` with the int8 weights laid out ``[directions, in, 4 * hidden]`` as
that kernel reads them, per-row scales and zero points 0.

Example:
    >>> sk.quantize(model, sk.QuantizationConfig(mode="dynamic"))      # model has an nn.LSTM
    >>> sk.export_onnx(model, "int8.onnx", example_inputs=x)            # runs this pass
"""

from __future__ import annotations

import numpy as np

MS_DOMAIN = "com.microsoft"
_QMAX = 127  # slimkit's int8 weights use the narrow symmetric range [-127, 127]


def _row_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(q, scale)`` of a ``[dirs, rows, cols]`` weight on a per-row symmetric int8 grid, or
    None if some row is not exactly on such a grid."""
    amax = np.abs(w).max(axis=2)
    scale = np.where(amax > 0, amax / _QMAX, 1.0).astype(np.float32)
    q = np.rint(w / scale[..., None])
    # On the grid: q * scale gives each row back (to the float32 rounding of its scale).
    if (np.abs(q * scale[..., None] - w).max(axis=2, initial=0.0) > 1e-5 * amax).any():
        return None
    return q.astype(np.int8), scale


def rewrite_lstms(proto) -> int:
    """Replace every ``LSTM`` node whose ``W`` and ``R`` initializers are on per-row int8 grids
    by ``DynamicQuantizeLSTM``; returns how many were replaced."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    done = 0
    for pos, node in enumerate(list(graph.node)):
        if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx"):
            continue
        args = list(node.input) + [""] * (8 - len(node.input))
        if args[1] not in inits or args[2] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("layout", 0) != 0:
            continue  # DynamicQuantizeLSTM has no batch-first layout
        coded = [_row_codes(numpy_helper.to_array(inits[args[k]])) for k in (1, 2)]
        if any(c is None for c in coded):
            continue
        new_inputs = [args[0]]
        extra = []
        for k, (q, scale) in zip((1, 2), coded):
            base = f"{args[k]}_int8"
            # The kernel reads [directions, in, 4 * hidden]; ONNX LSTM stores [.., 4h, in].
            extra.append(numpy_helper.from_array(np.ascontiguousarray(q.transpose(0, 2, 1)),
                                                 base))
            extra.append(numpy_helper.from_array(scale, f"{base}_scale"))
            extra.append(numpy_helper.from_array(np.zeros(scale.shape, np.int8),
                                                 f"{base}_zero_point"))
            new_inputs.append(base)
        new_inputs += args[3:8]
        new_inputs += [e.name for e in extra[1:3]] + [e.name for e in extra[4:6]]
        kwargs = {k: v for k, v in attrs.items() if k != "layout"}
        quant = helper.make_node("DynamicQuantizeLSTM", new_inputs, list(node.output),
                                 name=f"{node.name or 'lstm'}_int8", domain=MS_DOMAIN,
                                 **kwargs)
        graph.node.remove(node)
        graph.node.insert(pos, quant)
        graph.initializer.extend(extra)
        for k in (1, 2):
            if not any(args[k] in n.input for n in graph.node):
                graph.initializer.remove(inits.pop(args[k]))
        done += 1
    if done and not any(op.domain == MS_DOMAIN for op in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return done
