"""Shared helpers: ORT accuracy of digits artifacts and the fp32 reference artifact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import slimkit as sk
from slimkit.export import ort_session


def ort_logits(path, x, optimized=None) -> np.ndarray:
    sess = ort_session(path, optimized_path=optimized)
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def ort_accuracy(path, data) -> float:
    return float((ort_logits(path, data.x_test).argmax(1) == data.y_test.numpy()).mean())


def optimized_ops(path, tmp_path) -> set[str]:
    """The op types in the graph ONNX Runtime actually runs (its optimized model)."""
    opt = tmp_path / "optimized.onnx"
    ort_session(path, optimized_path=opt)
    return {n.op_type for n in onnx.load(str(opt)).graph.node}


@pytest.fixture(scope="session")
def fp32_artifact(trained_digits, digits, tmp_path_factory):
    """(path, ORT test accuracy) of the fp32 baseline's ONNX file."""
    path = tmp_path_factory.mktemp("fp32") / "fp32.onnx"
    sk.export_onnx(trained_digits, path, example_inputs=digits.x_test[:8])
    return path, ort_accuracy(path, digits)
