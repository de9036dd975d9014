"""Weight-only int8 / int4 conv nets in ONNX Runtime: speed against fp32, side by side.

Issue 16: weight-only conv models ran at 0.4-0.6x the fp32 speed, because the
DequantizeLinear feeding each conv kept ORT from its prepacked conv kernels (ORT keeps
DequantizeLinear for its QDQ fusions and dequantizes every run). The artifact now stores a
conv weight as ``Cast(int8 / int4 codes) * scale``, which ORT folds into a float initializer
at session start. This script measures both forms against fp32 in one process: sessions
created once, runs interleaved round-robin, medians, ratios = fp32 median / variant median.

    python benchmarks/weight_only_conv_speed.py            # ~2 minutes on 2 cores
    python benchmarks/weight_only_conv_speed.py --quick    # fewer runs

Models (random init, BatchNorm with non-trivial statistics): the ResNet-style net at 3x64x64
and the MobileNetV2-style net at 3x96x96 of ``slimkit.examples.models``; batch 1 and 32;
2 intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import slimkit as sk
import slimkit.techniques.quantization.export as qexport
from slimkit.examples.models import MobileNetV2Style, ResNetStyle
from slimkit.export import ort_session

ROOT = Path(__file__).resolve().parent


def model(name: str) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    net = ResNetStyle() if name == "resnet" else MobileNetV2Style()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return net.eval(), ((3, 64, 64) if name == "resnet" else (3, 96, 96))


def export_variants(name: str, folder: Path) -> dict[str, Path]:
    net, shape = model(name)
    x = torch.randn(2, *shape)
    out = {"fp32": sk.export_onnx(net, folder / f"{name}-fp32.onnx", example_inputs=x)}
    real = qexport._rewrite_conv_weight
    for bits in (8, 4):
        for form in ("cast", "dq"):
            if form == "dq":  # the previous form: DequantizeLinear -> Conv
                qexport._rewrite_conv_weight = lambda *a, **k: False
            try:
                q = sk.quantize(model(name)[0], sk.QuantizationConfig(mode="weight_only",
                                                                      weight_bits=bits))
                out[f"int{bits}-{form}"] = sk.export_onnx(
                    q, folder / f"{name}-int{bits}-{form}.onnx", example_inputs=x)
            finally:
                qexport._rewrite_conv_weight = real
    return out


def measure(paths: dict[str, Path], shape, batch: int, runs: int) -> dict:
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    sessions = {k: ort_session(p, threads=2) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[k])
    times = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {k: {"median_ms": 1e3 * v, "speed_vs_fp32": med["fp32"] / v} for k, v in med.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 runs per point instead of 100")
    ap.add_argument("--out", default=str(ROOT / "results" / "weight_only_conv_speed.json"))
    args = ap.parse_args()
    runs = 20 if args.quick else 100
    warnings.filterwarnings("ignore")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("resnet", "mobilenetv2"):
            paths = export_variants(name, Path(tmp))
            sizes = {k: p.stat().st_size for k, p in paths.items()}
            shape = model(name)[1]
            for batch in (1, 32):
                figures = measure(paths, shape, batch, runs if batch == 1 else max(10, runs // 5))
                for variant, f in figures.items():
                    rows[f"{name} b{batch} {variant}"] = {
                        "model": name, "batch": batch, "variant": variant,
                        "median_ms": round(f["median_ms"], 3),
                        "speed_vs_fp32": round(f["speed_vs_fp32"], 3),
                        "file_kb": round(sizes[variant] / 1024, 1)}
                    print(f"{name:12s} batch {batch:2d} {variant:10s} {f['median_ms']:8.2f} ms  "
                          f"{f['speed_vs_fp32']:.2f}x fp32  {sizes[variant] / 1024:8.1f} kB",
                          flush=True)
    result = {
        "benchmark": "weight_only_conv_speed",
        "what": "ORT latency of weight-only int8/int4 conv nets vs fp32 (2 threads, median, "
                "interleaved runs): 'cast' is the artifact slimkit writes (Cast(codes)*scale, "
                "folded at session start), 'dq' the previous DequantizeLinear form",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"load {os.getloadavg()[0]:.1f} at the end",
        "runs": runs,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
