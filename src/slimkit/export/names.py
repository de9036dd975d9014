"""Give the exporter's anonymous weight initializers the names of the torch parameters.

torch's dynamo exporter stores a Linear's weight pre-transposed for its MatMul under a
generated name (``val_38``), so a report's layer table and ``check-sparsity`` would name
half of a transformer's weights ``val_*``. This pass finds, for each float initializer of
two or more dimensions whose name is not a torch parameter's, the parameter it holds
(same values, or the transpose of a 2-D one) and renames it ``<parameter>`` or
``<parameter>.T``. Candidates are compared on a few sampled values first, so a full
comparison runs about once per weight.

Example:
    >>> proto = torch.onnx.export(model, (x,), dynamo=True).model_proto
    >>> name_anonymous_weights(proto, model)   # 'val_38' -> 'encoder.0.fc1.weight.T'
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn


def _probe(shape: tuple) -> list[tuple]:
    """A few fixed positions of an array of ``shape`` (corners and the centre)."""
    last = tuple(d - 1 for d in shape)
    mid = tuple(d // 2 for d in shape)
    first = tuple(0 for _ in shape)
    return [first, mid, last]


def _fingerprint(values, shape: tuple) -> tuple:
    return tuple(float(values[i]) for i in _probe(shape))


def name_anonymous_weights(proto, model: nn.Module) -> int:
    """Rename anonymous float initializers (``ndim >= 2``) that hold one of ``model``'s
    parameters (or its transpose). Returns how many were renamed."""
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    params: dict[str, np.ndarray] = {}
    seen = set()
    for name, p in model.named_parameters():
        if p.dim() < 2 or p.dtype.is_complex or id(p) in seen:
            continue
        seen.add(id(p))
        params[name] = p.detach().cpu().float().numpy()
    taken = {i.name for i in graph.initializer} | {n for node in graph.node for n in node.output}
    if not params:
        return 0
    by_print: dict[tuple, list[tuple[str, bool]]] = {}
    for name, a in params.items():
        by_print.setdefault((a.shape, _fingerprint(a, a.shape)), []).append((name, False))
        if a.ndim == 2:
            t = a.T  # a view: sampling it copies nothing
            by_print.setdefault((t.shape, _fingerprint(t, t.shape)), []).append((name, True))
    renames = {}
    for init in graph.initializer:
        if init.name in params or init.data_type != TensorProto.FLOAT or len(init.dims) < 2:
            continue
        if init.data_location == TensorProto.EXTERNAL:
            continue
        array = numpy_helper.to_array(init)
        for name, transposed in by_print.get((array.shape, _fingerprint(array, array.shape)),
                                             []):
            target = f"{name}.T" if transposed else name
            source = params[name].T if transposed else params[name]
            if target not in taken and np.array_equal(array, source):
                renames[init.name] = target
                taken.add(target)
                break
    if not renames:
        return 0
    for init in graph.initializer:
        if init.name in renames:
            init.name = renames[init.name]
    _rename_uses(graph, renames)
    return len(renames)


def _rename_uses(graph, renames: dict) -> None:
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renames:
                node.input[k] = renames[name]
        for attr in node.attribute:
            # A subgraph (If / Loop / Scan body) may read an outer initializer by name.
            if attr.HasField("g"):
                _rename_uses(attr.g, renames)
            for sub in attr.graphs:
                _rename_uses(sub, renames)
    for vi in list(graph.value_info) + list(graph.output):
        if vi.name in renames:
            vi.name = renames[vi.name]
