"""Inference latency of an ONNX artifact in ONNX Runtime on the CPU."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort


def cpu_session(onnx_path: str | Path, threads: int = 2) -> ort.InferenceSession:
    """An ORT CPU session with `threads` intra-op threads and one inter-op thread.

    One inter-op thread keeps runs comparable: the graph's nodes run in order, and only the
    work inside a node is split over `threads`.

    Example:
        >>> session = cpu_session("model.onnx", threads=2)  # doctest: +SKIP
        >>> [i.name for i in session.get_inputs()]  # doctest: +SKIP
        ['input']
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def measure_latency(
    onnx_path: str | Path,
    inputs: Mapping[str, np.ndarray],
    threads: int = 2,
    warmup: int = 10,
    runs: int = 100,
) -> dict:
    """Time `runs` inference calls after `warmup` untimed ones; milliseconds per call.

    Returns p50_ms, p90_ms, mean_ms, min_ms, runs, batch (first dim of the first input) and
    threads. The median is the figure to quote: the mean is pulled up by the odd slow run.

    Example:
        >>> x = np.zeros((8, 16), dtype=np.float32)
        >>> lat = measure_latency("model.onnx", {"input": x}, threads=2)  # doctest: +SKIP
        >>> lat["p50_ms"] <= lat["p90_ms"]  # doctest: +SKIP
        True
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"measure_latency: {path} does not exist; expected an .onnx file")
    session = cpu_session(path, threads)
    feeds = dict(inputs)
    for _ in range(warmup):
        session.run(None, feeds)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times[i] = time.perf_counter() - start
    times_ms = times * 1000.0
    first = next(iter(feeds.values()), None)
    return {
        "p50_ms": float(np.percentile(times_ms, 50)),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "mean_ms": float(times_ms.mean()),
        "min_ms": float(times_ms.min()),
        "runs": runs,
        "batch": int(first.shape[0]) if first is not None and first.ndim else 1,
        "threads": threads,
    }
