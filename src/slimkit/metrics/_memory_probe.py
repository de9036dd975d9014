"""Child process of `peak_inference_memory`: measures one ORT session's memory, prints JSON.

It imports only the standard library, numpy and onnxruntime, so that the figure is not
inflated by torch. Run as a script (how `peak_inference_memory` runs it) or with -m:

    python _memory_probe.py model.onnx '{"input": [[8, 16], "float32"]}' --threads 2 --runs 5
"""

import os
import sys

# Run as a script, Python puts this folder first on sys.path; take it off so that nothing here
# can shadow a module that numpy or onnxruntime imports.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402


def status_kib(field: str) -> int | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB; None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def max_rss_kib() -> int:
    """Peak resident set size of this process so far, in KiB, from getrusage."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak // 1024 if sys.platform == "darwin" else peak


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM) from the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("onnx_path")
    parser.add_argument("specs", help='JSON: {"input name": [[dims...], "dtype"], ...}')
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feeds = {}
    for name, (shape, dtype) in json.loads(args.specs).items():
        dtype = np.dtype(dtype)
        if dtype.kind == "f":
            # Generated in float32, not float64, so that no transient array raises the peak.
            feeds[name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
        else:
            # np.full writes every page, so the inputs are resident before the baseline.
            feeds[name] = np.full(shape, 0, dtype=dtype)

    # On Linux getrusage's ru_maxrss is unusable here: after exec it still holds the parent's
    # peak (checked: 830 MB in a child whose own peak was 9 MB). VmHWM is this process's own
    # peak, and resetting it here drops the transients of imports and input generation.
    linux = status_kib("VmRSS") is not None
    baseline = status_kib("VmRSS") if linux else max_rss_kib()
    was_reset = linux and reset_peak()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        args.onnx_path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    after_session = status_kib("VmRSS") if linux else max_rss_kib()
    for _ in range(args.runs):
        session.run(None, feeds)
    peak = status_kib("VmHWM") if linux else max_rss_kib()
    print(json.dumps({
        "baseline_kib": baseline,
        "session_kib": after_session - baseline,
        "peak_kib": peak - baseline,
        "peak_source": ("VmHWM reset at baseline" if was_reset else "VmHWM") if linux
        else "ru_maxrss",
        "torch_loaded": "torch" in sys.modules,
    }))


if __name__ == "__main__":
    main()
