"""Peak memory of inference in ONNX Runtime, measured in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

_PROBE = Path(__file__).with_name("_memory_probe.py")


def peak_inference_memory(
    onnx_path: str | Path,
    input_specs: Mapping[str, np.ndarray | tuple],
    threads: int = 2,
    runs: int = 5,
    timeout: float = 300.0,
) -> dict:
    """Memory an ORT CPU session needs to load `onnx_path` and run it, in MiB (2**20 bytes).

    The measurement runs in a child process that imports only numpy and onnxruntime, so the
    caller's own memory (torch, data) is not counted. The child records its resident set
    size, creates the session, runs the inputs `runs` times and reports:
    `session_mb` (resident memory added by creating the session) and `peak_mb` (the peak
    resident memory above the starting point, weights and activations included).

    `input_specs` maps each input name to an array (only its shape and dtype are used) or to
    `(shape, dtype)`; the child builds inputs of that shape.

    Example:
        >>> specs = {"input": ((8, 16), "float32")}
        >>> mem = peak_inference_memory("model.onnx", specs)  # doctest: +SKIP
        >>> mem["peak_mb"] > 0  # doctest: +SKIP
        True
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"peak_inference_memory: {path} does not exist; expected an .onnx file"
        )
    specs = {name: _spec(name, value) for name, value in input_specs.items()}
    command = [
        sys.executable, str(_PROBE), str(path), json.dumps(specs),
        "--threads", str(threads), "--runs", str(runs),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise TimeoutError(
            f"peak_inference_memory: the probe for {path} did not finish within {timeout} s "
            "(pass a larger timeout= for big models)"
        ) from error
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(
            f"peak_inference_memory: the probe for {path} failed with exit code "
            f"{done.returncode}:\n{tail}"
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "peak_mb": result["peak_kib"] / 1024.0,
        "session_mb": result["session_kib"] / 1024.0,
        "baseline_mb": result["baseline_kib"] / 1024.0,
        "peak_source": result["peak_source"],
        "runs": runs,
        "threads": threads,
    }


def _spec(name: str, value) -> list:
    if isinstance(value, np.ndarray):
        shape, dtype = value.shape, value.dtype
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        shape, dtype = value
    else:
        raise ValueError(
            f"input_specs['{name}'] must be a numpy array or a (shape, dtype) pair, "
            f"got {type(value).__name__}"
        )
    return [[int(d) for d in shape], np.dtype(dtype).name]
