"""The files slimkit writes: readable by others under the usual umask, and big models'
external weights named after the model (issue 16, items 9 and 18)."""

from __future__ import annotations

import os
import shutil
import stat

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimkit as sk
from slimkit.export import onnx as onnx_export
from slimkit.export.onnx import ort_session


def small_model():
    torch.manual_seed(0)
    # 6x64 floats: over onnx's 1 kB threshold for moving a tensor to external data.
    return nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 3))


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600)])
def test_onnx_and_checkpoint_get_the_umask_permissions(tmp_path, umask, mask, expected):
    umask(mask)
    model = small_model()
    onnx_path = sk.export_onnx(model, tmp_path / "m.onnx", example_inputs=torch.randn(2, 6))
    sk.save(model, tmp_path / "m.pt")
    assert mode(onnx_path) == expected
    assert mode(tmp_path / "m.pt") == expected


def test_external_data_is_named_after_the_model_and_replaced(tmp_path, monkeypatch):
    # Any model counts as "over 2 GiB" here, so a tiny one exercises the external-data path.
    monkeypatch.setattr(onnx_export, "PROTO_LIMIT", 1)
    x = torch.randn(3, 6)
    sk.export_onnx(small_model(), tmp_path / "big.onnx", example_inputs=x)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    sk.export_onnx(small_model(), tmp_path / "big.onnx", example_inputs=x)   # a re-export
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]

    # The pair works from anywhere: copy both and run the copy.
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    for name in ("big.onnx", "big.onnx.data"):
        shutil.copy(tmp_path / name, elsewhere / name)
    (out,) = ort_session(elsewhere / "big.onnx").run(None, {"input": x.numpy()})
    np.testing.assert_allclose(out, small_model()(x).detach().numpy(), atol=1e-5)


def test_refused_big_export_leaves_the_old_pair(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "PROTO_LIMIT", 1)
    x = torch.randn(3, 6)
    sk.export_onnx(small_model(), tmp_path / "big.onnx", example_inputs=x)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    real = onnx_export.run_torch
    monkeypatch.setattr(onnx_export, "run_torch", lambda m, i: [t + 1.0 for t in real(m, i)])
    with pytest.raises(sk.ExportValidationError):
        sk.export_onnx(small_model(), tmp_path / "big.onnx", example_inputs=x)
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before
