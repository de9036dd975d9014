"""A stripped quantized model still exports the int8 artifact and still saves and loads.

``sk.strip`` bakes the weight fake-quant into the weights (on the int8 grid) and keeps the
activation quantizers as modules, so the quantization record survives, marked ``stripped``.
Exporting the stripped model must give the very artifact of the unstripped one, and
``sk.save`` / ``sk.load`` of it must round-trip. (Before the technique protocol, stripping
dropped the record but kept the hooks, and the export crashed inside torch.export.)
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import slimkit as sk
from slimkit.examples import DigitsCNN
from tests.quantization.conftest import ort_accuracy

MODES = {
    "static": lambda: sk.QuantizationConfig(),
    "dynamic": lambda: sk.QuantizationConfig(mode="dynamic"),
    "weight_only_int4": lambda: sk.QuantizationConfig(mode="weight_only", weight_bits=4,
                                                      group_size=32),
    "qat": lambda: sk.QATConfig(),
}


def _initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module", params=sorted(MODES))
def quantized(request, trained_digits, digits):
    model = copy.deepcopy(trained_digits)
    config = MODES[request.param]()
    calibration = digits.x_train[:100] if config.mode == "static" else None
    sk.quantize(model, config, calibration=calibration, progress=False)
    return request.param, model


def test_stripped_model_exports_the_same_int8_artifact(quantized, digits, tmp_path):
    mode, model = quantized
    x = digits.x_test[:8]
    sk.export_onnx(model, tmp_path / "prepared.onnx", example_inputs=x)
    stripped = sk.strip(copy.deepcopy(model))
    assert [r["technique"] for r in sk.records(stripped)] == [r["technique"]
                                                            for r in sk.records(model)]
    assert all(r["stripped"] for r in sk.records(stripped))
    sk.export_onnx(stripped, tmp_path / "stripped.onnx", example_inputs=x)
    a, b = _initializers(tmp_path / "prepared.onnx"), _initializers(tmp_path / "stripped.onnx")
    assert sorted(a) == sorted(b)
    ints = [n for n, v in a.items() if v.dtype in (np.int8, np.uint8) or v.dtype.kind == "V"]
    assert ints, f"{mode}: no integer weight in the artifact"
    for name in a:
        if a[name].dtype.kind == "f":
            # A scale recomputed from a weight already on its grid: equal, or one float
            # rounding away (max|w| = 127 * s, divided by 127 again).
            np.testing.assert_allclose(b[name], a[name], rtol=2e-7, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    assert ort_accuracy(tmp_path / "stripped.onnx", digits) == ort_accuracy(
        tmp_path / "prepared.onnx", digits)


def test_stripped_quantized_model_saves_and_loads(quantized, digits, tmp_path):
    mode, model = quantized
    stripped = sk.strip(copy.deepcopy(model)).eval()
    sk.save(stripped, tmp_path / "stripped.pt")
    fresh = sk.load(tmp_path / "stripped.pt", model=DigitsCNN()).eval()
    x = digits.x_test[:64]
    with torch.no_grad():
        assert torch.equal(fresh(x), stripped(x)), mode
    for key, value in stripped.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    sk.export_onnx(fresh, tmp_path / "loaded.onnx", example_inputs=x[:8])
    sk.export_onnx(stripped, tmp_path / "stripped.onnx", example_inputs=x[:8])
    a, b = _initializers(tmp_path / "loaded.onnx"), _initializers(tmp_path / "stripped.onnx")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
