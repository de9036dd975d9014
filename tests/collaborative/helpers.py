"""Read int8 weights back from an ONNX artifact (plain int8 initializers or compact 4-bit
indices + codebook) and run it in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from slimkit.export import ort_session
from slimkit.techniques.clustering import expand_compact

KERNELS = ("conv1", "conv2", "fc1", "fc2")


def int8_weights(path) -> dict[str, np.ndarray]:
    """``{layer: int8 weight}`` of the four kernels, as the artifact stores them."""
    graph = onnx.load(path).graph
    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer
             if t.data_type == TensorProto.INT8 and len(t.dims) >= 2}
    found.update({k: v for k, v in expand_compact(graph).items() if v.dtype == np.int8})
    out = {}
    for layer in KERNELS:
        names = [n for n in found if n.startswith(f"{layer}.weight")]
        assert len(names) == 1, f"{path}: no single int8 weight for {layer}: {sorted(found)}"
        out[layer] = found[names[0]]
    return out


def unique_per_channel(w: np.ndarray) -> int:
    return max(len(np.unique(row)) for row in w.reshape(w.shape[0], -1))


def ort_logits(path, x) -> np.ndarray:
    return ort_session(path).run(None, {"input": x.numpy()})[0]


def ort_accuracy(path, data) -> float:
    return float((ort_logits(path, data.x_test).argmax(1) == data.y_test.numpy()).mean())
