"""Structured pruning benchmark: what channel pruning, 2:4 and unstructured sparsity do to
ONNX Runtime latency, and the digits task with 50% of channels (../shared/BENCHMARKS.md).

1. Latency models (random init): for each model, the dense baseline and 30% / 50% / 70% of
   channels removed (L2 importance, classifier kept): parameters, MACs per sample, ORT
   latency at batch 1 and 32 with 2 threads. Variants of one model are timed interleaved
   (one run of each in turn, ORT intra-op spinning off) so that load from other processes
   hits all of them alike; figures are medians.
2. The ResNet-style net with 2:4 and with 80% unstructured sparsity (dense ORT kernels).
3. ``prune_for_latency`` on the ResNet-style net at batch 32, target 2x: predicted vs
   measured speedup.
4. Digits, seeds 0, 1, 2: baseline (Adam 1e-3, 20 epochs) -> 50% of channels -> fine-tune
   (Adam 1e-4, batch 32, 5 epochs); accuracy on the ORT artifacts, ORT speedup at batch 256
   (2 threads, median of 200 interleaved runs after warm-up).

    python benchmarks/structured_pruning.py            # prints tables, writes JSON
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import slimkit as sk
from slimkit.core.io import atomic_path
from slimkit.examples import DigitsCNN, evaluate, load_digits_data, set_seed, train
from slimkit.examples.models import MobileNetV2Style, ResNetStyle, TransformerClassifier
from slimkit.metrics.latency import cpu_session
from slimkit.techniques.channel_pruning import ChannelPruningConfig, count_macs, prune_channels
from slimkit.techniques.channel_pruning.latency import interleaved_ms

MODELS = {
    "resnet-style 3x64x64": (ResNetStyle, lambda b: torch.randn(b, 3, 64, 64)),
    "mobilenetv2-style 3x96x96": (MobileNetV2Style, lambda b: torch.randn(b, 3, 96, 96)),
    "transformer 64 tokens": (TransformerClassifier, lambda b: torch.randint(0, 1000, (b, 64))),
    "digits cnn 1x8x8": (DigitsCNN, lambda b: torch.randn(b, 1, 8, 8)),
}


def interleaved_latency(paths: dict[str, Path], feed: np.ndarray, runs: int,
                        warmup: int = 5) -> dict[str, float]:
    """Median ms per call of each file, one call of each in turn, 2 threads, no spinning."""
    return interleaved_ms(paths, [feed], runs, warmup=warmup, threads=2)


def latency_models(folder: Path, ratios, runs: int) -> list[dict]:
    rows = []
    for label, (cls, make_x) in MODELS.items():
        torch.manual_seed(0)
        base = cls().eval()
        x = make_x(4)
        variants = {"dense": base}
        for r in ratios:
            m = copy.deepcopy(base)
            prune_channels(m, ChannelPruningConfig(r), example_inputs=x)
            variants[f"{r:.0%}"] = m
        paths = {k: sk.export_onnx(m, folder / f"{cls.__name__}-{k}.onnx", example_inputs=x)
                 for k, m in variants.items()}
        lat = {b: interleaved_latency(paths, make_x(b).numpy(), runs) for b in (1, 32)}
        macs0, params0 = count_macs(base, make_x(1))
        for k, m in variants.items():
            macs, params = count_macs(m, make_x(1))
            rows.append({
                "model": label, "channels_removed": k, "params": params, "macs": macs,
                "b1_ms": lat[1][k], "b32_ms": lat[32][k],
                "mac_reduction": macs0 / macs, "param_reduction": params0 / params,
                "speedup_b1": lat[1]["dense"] / lat[1][k],
                "speedup_b32": lat[32]["dense"] / lat[32][k],
            })
            rows[-1]["efficiency_b32"] = rows[-1]["speedup_b32"] / rows[-1]["mac_reduction"]
    return rows


def sparsity_latency(folder: Path, runs: int) -> list[dict]:
    """2:4 and 80% unstructured on the ResNet-style net, against dense, same ORT kernels."""
    torch.manual_seed(0)
    base = ResNetStyle().eval()
    x = torch.randn(4, 3, 64, 64)
    variants = {"dense": base}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 3-channel stem stays dense under 2:4
        nm = sk.prune(copy.deepcopy(base), sk.MagnitudePruningConfig(pattern="2:4"))
    variants["2:4"] = nm
    variants["80% unstructured"] = sk.prune(copy.deepcopy(base), sk.MagnitudePruningConfig(0.8))
    paths = {k: sk.export_onnx(m, folder / f"sparse-{i}.onnx", example_inputs=x)
             for i, (k, m) in enumerate(variants.items())}
    lat = {b: interleaved_latency(paths, torch.randn(b, 3, 64, 64).numpy(), runs)
           for b in (1, 32)}
    return [{"model": "resnet-style 3x64x64", "variant": k, "b1_ms": lat[1][k],
             "b32_ms": lat[32][k], "speedup_b1": lat[1]["dense"] / lat[1][k],
             "speedup_b32": lat[32]["dense"] / lat[32][k]} for k in variants]


def latency_policy(target: float) -> dict:
    from slimkit.techniques.channel_pruning.latency import prune_for_latency

    torch.manual_seed(0)
    model = ResNetStyle().eval()
    t0 = time.perf_counter()
    _, rep = prune_for_latency(model, torch.randn(32, 3, 64, 64), target_speedup=target)
    rep["seconds"] = time.perf_counter() - t0
    return rep


def ort_accuracy(path: Path, data) -> float:
    sess = cpu_session(path, 2)
    name = sess.get_inputs()[0].name
    return evaluate(lambda xb: torch.from_numpy(sess.run(None, {name: xb.numpy()})[0]),
                    data.x_test, data.y_test)


def digits_seed(seed: int, data, folder: Path, runs: int) -> dict:
    set_seed(seed)
    base = DigitsCNN()
    train(base, data, epochs=20, lr=1e-3, seed=seed)
    x = data.x_test[:8]
    out = {"seed": seed}
    paths = {"baseline": sk.export_onnx(base, folder / f"digits-base-{seed}.onnx", example_inputs=x)}

    small = copy.deepcopy(base)
    prune_channels(small, ChannelPruningConfig(0.5), example_inputs=x)
    train(small, data, epochs=5, lr=1e-4, seed=seed)
    paths["l2"] = sk.export_onnx(small, folder / f"digits-l2-{seed}.onnx", example_inputs=x)

    # Taylor importance, pruned over 5 rounds with one fine-tune epoch after each: the same
    # 5 epochs of fine-tuning in total.
    taylor = copy.deepcopy(base)
    batches = [(data.x_train[i:i + 128], data.y_train[i:i + 128]) for i in range(0, 512, 128)]
    prune_channels(taylor, ChannelPruningConfig(0.5, importance="taylor", rounds=5),
                   example_inputs=x, loss_fn=F.cross_entropy, batches=batches,
                   finetune=lambda m, r: train(m, data, epochs=1, lr=1e-4, seed=seed * 10 + r))
    paths["taylor x5"] = sk.export_onnx(taylor, folder / f"digits-taylor-{seed}.onnx",
                                        example_inputs=x)

    lat = interleaved_latency(paths, data.x_test[:256].numpy(), runs, warmup=20)
    macs0, _ = count_macs(base, x[:1])
    for k, p in paths.items():
        out[f"{k}_accuracy"] = ort_accuracy(p, data)
        out[f"{k}_ms_b256"] = lat[k]
    for k, m in (("l2", small), ("taylor x5", taylor)):
        out[f"{k}_loss_points"] = 100 * (out["baseline_accuracy"] - out[f"{k}_accuracy"])
        out[f"{k}_speedup_b256"] = lat["baseline"] / lat[k]
        out[f"{k}_mac_reduction"] = macs0 / count_macs(m, x[:1])[0]
    return out


def summary(values):
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="Timed runs per variant (models).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--skip-policy", action="store_true")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/structured_pruning.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    console = Console(width=150)
    result = {"torch": torch.__version__, "threads": 2, "note": "shared 2-core machine: noisy"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.skip_models:
            rows = latency_models(folder, (0.3, 0.5, 0.7), args.runs)
            table = Table(title="channel pruning: ORT latency (2 threads), params, MACs per sample")
            for col in ("model", "removed", "params", "MMACs", "b1 ms", "b32 ms", "MACs /",
                        "speedup b1", "speedup b32", "speedup / MACs"):
                table.add_column(col, justify="left" if col == "model" else "right")
            for r in rows:
                table.add_row(r["model"], r["channels_removed"], f"{r['params']:,}",
                              f"{r['macs'] / 1e6:.1f}", f"{r['b1_ms']:.2f}", f"{r['b32_ms']:.2f}",
                              f"{r['mac_reduction']:.2f}x", f"{r['speedup_b1']:.2f}x",
                              f"{r['speedup_b32']:.2f}x", f"{r['efficiency_b32']:.2f}")
            console.print(table)
            result["channel_pruning"] = rows

            sparse = sparsity_latency(folder, args.runs)
            table = Table(title="sparsity without removing channels: ORT latency (dense kernels)")
            for col in ("model", "variant", "b1 ms", "b32 ms", "speedup b1", "speedup b32"):
                table.add_column(col)
            for r in sparse:
                table.add_row(r["model"], r["variant"], f"{r['b1_ms']:.2f}", f"{r['b32_ms']:.2f}",
                              f"{r['speedup_b1']:.2f}x", f"{r['speedup_b32']:.2f}x")
            console.print(table)
            result["sparsity"] = sparse

        if not args.skip_policy:
            rep = latency_policy(2.0)
            console.print(
                f"prune_for_latency (resnet-style, batch 32, target 2.0x): predicted "
                f"{rep['predicted_speedup']:.2f}x, measured {rep['measured_speedup']:.2f}x, "
                f"MACs {rep['mac_reduction']:.2f}x fewer, ratios {rep['ratios']}, "
                f"{rep['seconds']:.0f} s")
            result["latency_policy"] = rep
        if not args.skip_digits:
            data = load_digits_data()
            runs = [digits_seed(s, data, folder, 200) for s in args.seeds]
            keys = [k for k in runs[0] if k != "seed"]
            stats = {k: summary([r[k] for r in runs]) for k in keys}
            table = Table(title=f"digits, 50% of channels, fine-tuned 5 epochs (seeds {args.seeds})")
            table.add_column("figure")
            table.add_column("mean [min-max]", justify="right")
            for k, s in stats.items():
                table.add_row(k, f"{s['mean']:.4f} [{s['min']:.4f}-{s['max']:.4f}]")
            console.print(table)
            result["digits"] = {"runs": runs, "summary": stats}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
