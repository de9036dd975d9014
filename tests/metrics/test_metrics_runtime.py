"""Latency and memory of ONNX artifacts in ONNX Runtime."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimkit.metrics import measure_latency, peak_inference_memory
from slimkit.metrics.memory import _PROBE


def _matmul_model(path: Path, rows: int, cols: int) -> Path:
    """y = x @ W with a rows x cols float32 weight: rows*cols*4 bytes of weights."""
    weight = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        [numpy_helper.from_array(weight, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_latency_percentiles(mlp_onnx):
    x = np.zeros((16, 16), dtype=np.float32)
    latency = measure_latency(mlp_onnx, {"input": x}, threads=1, warmup=2, runs=30)
    assert latency["p50_ms"] > 0
    assert latency["p90_ms"] >= latency["p50_ms"] >= latency["min_ms"]
    assert (latency["runs"], latency["batch"], latency["threads"]) == (30, 16, 1)


def test_latency_grows_with_work(tmp_path):
    path = _matmul_model(tmp_path / "mm.onnx", 512, 512)
    small = measure_latency(path, {"x": np.ones((1, 512), np.float32)}, threads=1, runs=30)
    large = measure_latency(path, {"x": np.ones((256, 512), np.float32)}, threads=1, runs=30)
    # 256x the multiply-adds; even with the fixed per-call overhead it is far more than 2x.
    assert large["p50_ms"] > 2 * small["p50_ms"]


def test_latency_rejects_bad_arguments(tmp_path, mlp_onnx):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        measure_latency(tmp_path / "missing.onnx", {})
    with pytest.raises(ValueError, match="runs must be >= 1"):
        measure_latency(mlp_onnx, {}, runs=0)
    with pytest.raises(ValueError, match="threads must be a positive int, got 0"):
        measure_latency(mlp_onnx, {"input": np.zeros((1, 16), np.float32)}, threads=0)


def test_peak_memory_counts_at_least_the_weights(tmp_path):
    path = _matmul_model(tmp_path / "mm.onnx", 1024, 2048)  # 8 MiB of weights
    memory = peak_inference_memory(path, {"x": ((4, 1024), "float32")}, threads=1, runs=2)
    # The session holds the weights in memory, so both figures exceed their 8 MiB.
    assert memory["session_mb"] > 8
    assert memory["peak_mb"] >= memory["session_mb"]
    assert memory["baseline_mb"] > 0 and memory["runs"] == 2


def test_memory_probe_never_imports_torch(mlp_onnx):
    specs = json.dumps({"input": [[2, 16], "float32"]})
    done = subprocess.run(
        [sys.executable, str(_PROBE), str(mlp_onnx), specs, "--runs", "1"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["torch_loaded"] is False
    assert result["peak_kib"] > 0


def test_memory_probe_failures_are_reported(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(RuntimeError, match=r"probe for .*broken.onnx failed with exit code"):
        peak_inference_memory(bad, {"x": ((1, 4), "float32")})
    with pytest.raises(TimeoutError, match="did not finish within 0.01 s"):
        peak_inference_memory(bad, {"x": ((1, 4), "float32")}, timeout=0.01)
    with pytest.raises(ValueError, match=r"input_specs\['x'\] must be a numpy array"):
        peak_inference_memory(bad, {"x": "float32"})
