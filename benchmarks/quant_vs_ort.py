"""slimkit quantization vs ONNX Runtime's own quantizer, side by side, same models and data.

Models: the digits CNN (seed-0 baseline of BENCHMARKS.md, calibrated on the first 100
training images), a bottleneck ResNet-style net at 3x64x64 (random init, randomised BN
statistics, 64 random calibration images) and all-MiniLM-L6-v2 if its package is installed.
ORT's quantizer runs on slimkit's fp32 export of the same model: ``quantize_static`` (QDQ,
per-channel, MinMax calibration on the same data) with uint8 activations (U8S8) and with
int8 activations (S8S8), and ``quantize_dynamic(per_channel=True)`` for MiniLM.
Figures: ORT latency (2 threads, batch 1 and 32, median; the files of one model take turns
in blocks of 10 runs, so machine load hits them alike), file size, and accuracy (digits),
top-1 agreement and logit cosine with fp32 (ResNet, random weights) or embedding cosine with
fp32 torch (MiniLM, the 209 sentences of tests/data/sentences.txt). GPT-2 small (random init;
its layers are Hugging Face Conv1D): ``quantize_dynamic`` vs slimkit dynamic, top-1 and logit
cosine with fp32, at 1 x 128 and 4 x 128 tokens. A 3-layer LSTM speaker encoder (random init):
``quantize_dynamic`` (DynamicQuantizeLSTM) vs slimkit dynamic, embedding cosine with fp32.

    python benchmarks/quant_vs_ort.py [--skip-minilm] [--only gpt2 lstm]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import slimkit as sk
from slimkit.core.io import atomic_path
from slimkit.examples import DigitsCNN, load_digits_data, set_seed, train
from slimkit.examples.resnet import BottleneckResNet, randomize_batchnorm
from slimkit.export import ort_session
from slimkit.metrics.latency import cpu_session
from slimkit.metrics.sizes import file_size
from slimkit.techniques.quantization import QuantizationConfig, quantize

SENTENCES = Path(__file__).parents[1] / "tests" / "data" / "sentences.txt"


def ort_static(fp32: Path, out: Path, calib: dict, activation: str) -> Path:
    """ORT's quantize_static in its recommended form: pre-processed, QDQ, per-channel."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    act = QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=act, weight_type=QuantType.QInt8)
    return out


def ort_dynamic(fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return out


def run_outputs(path: Path, feeds: dict) -> np.ndarray:
    return ort_session(path).run(None, feeds)[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def latencies(paths: dict, feeds: dict, runs: int, warmup: int = 5, block: int = 10) -> dict:
    """Median ms per run of each file, the files taking turns in blocks of ``block`` runs.

    Taking turns: on a shared machine the load drifts over minutes, and timing one file after
    another would credit that drift to whichever ran during a quiet spell. Blocks (not single
    runs): ORT's worker threads keep spinning for a while after a run, which would slow the
    next session's run; the median drops the one disturbed run at the start of a block.
    """
    sessions = {k: cpu_session(p, threads=2) for k, p in paths.items()}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, feeds)
    times = {k: [] for k in sessions}
    for _ in range(-(-runs // block)):
        for k, s in sessions.items():
            for _ in range(block):
                t0 = time.perf_counter()
                s.run(None, feeds)
                times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def add_latencies(rows: list, paths: dict, feeds_b1: dict, feeds_b32: dict, runs: int) -> None:
    b1 = latencies(paths, feeds_b1, runs * 3)
    b32 = latencies(paths, feeds_b32, runs)
    for row in rows:
        row["latency_b1_ms"], row["latency_b32_ms"] = b1[row["variant"]], b32[row["variant"]]


def conv_case(name, model, calib: torch.Tensor, x_eval: torch.Tensor, y_eval, folder: Path,
              runs: int) -> list[dict]:
    fp32 = sk.export_onnx(model, folder / f"{name}-fp32.onnx", example_inputs=x_eval[:8])
    ours = quantize(copy.deepcopy(model), QuantizationConfig(), calibration=calib, progress=False)
    # Validation on random-init nets compares far-from-trained logits: check agreement below.
    slim = sk.export_onnx(ours, folder / f"{name}-slimkit.onnx", example_inputs=x_eval[:8],
                          atol=1e9)
    calib_feeds = [{"input": b.numpy()} for b in torch.split(calib, 32)]
    paths = {
        "fp32": fp32,
        "ort quantize_static U8S8": ort_static(fp32, folder / f"{name}-u8s8.onnx", calib_feeds, "uint8"),
        "ort quantize_static S8S8": ort_static(fp32, folder / f"{name}-s8s8.onnx", calib_feeds, "int8"),
        "slimkit static U8S8": slim,
    }
    feeds = {"input": x_eval.numpy()}
    ref = run_outputs(fp32, feeds)
    rows = []
    for variant, path in paths.items():
        out = run_outputs(path, feeds)
        row = {"model": name, "variant": variant, "bytes": file_size(path)}
        if y_eval is not None:
            row["accuracy"] = float((out.argmax(1) == y_eval.numpy()).mean())
        row["top1_agreement_fp32"] = float((out.argmax(1) == ref.argmax(1)).mean())
        row["cosine_fp32"] = cosine(out, ref)
        rows.append(row)
    add_latencies(rows, paths, {"input": x_eval[:1].numpy()}, {"input": x_eval[:32].numpy()},
                  runs)
    return rows


def dynamic_files(model, tag: str, example, folder: Path) -> dict:
    """fp32, ORT ``quantize_dynamic`` of that fp32 file, and slimkit dynamic int8 of ``model``:
    ``{variant: path}``."""
    fp32 = sk.export_onnx(model, folder / f"{tag}-fp32.onnx", example_inputs=example)
    ours = quantize(copy.deepcopy(model), QuantizationConfig(mode="dynamic"))
    return {"fp32": fp32,
            "ort quantize_dynamic per-channel": ort_dynamic(fp32, folder / f"{tag}-ortdyn.onnx"),
            "slimkit dynamic": sk.export_onnx(ours, folder / f"{tag}-slimkit.onnx",
                                              example_inputs=example)}


def minilm_case(folder: Path, runs: int) -> list[dict]:
    from slimkit.examples.minilm import load_minilm, tokenize

    model, tok = load_minilm()
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    # The export fixes the sequence length (only the batch axis is dynamic): 128 tokens.
    ids, mask = tokenize(tok, sentences, pad_to_max=True)
    with torch.no_grad():
        ref = model(ids, mask).numpy()
    paths = dynamic_files(model, "minilm", (ids[:8], mask[:8]), folder)
    b32, b1 = (ids[:32], mask[:32]), (ids[:1], mask[:1])  # 32 x 128 tokens, 1 x 128
    rows = []
    for variant, path in paths.items():
        out = run_outputs(path, {"input_0": ids.numpy(), "input_1": mask.numpy()})
        row = {"model": "minilm", "variant": variant, "bytes": file_size(path),
               "cosine_fp32": cosine(out, ref)}
        rows.append(row)
    add_latencies(rows, paths, {"input_0": b1[0].numpy(), "input_1": b1[1].numpy()},
                  {"input_0": b32[0].numpy(), "input_1": b32[1].numpy()}, runs)
    return rows


class SpeakerEncoder(torch.nn.Module):
    """A GE2E-style speaker encoder: 3-layer LSTM over 40 mel bands, hidden 256, a linear
    projection of the last step, L2-normalised (1.4M parameters; random init here)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(40, 256, num_layers=3, batch_first=True)
        self.proj = torch.nn.Linear(256, 256)

    def forward(self, mels):
        out, _ = self.lstm(mels)
        e = torch.relu(self.proj(out[:, -1]))
        return e / (e.norm(dim=1, keepdim=True) + 1e-5)


def lstm_case(folder: Path, runs: int) -> list[dict]:
    """The speaker encoder at 160 frames: ORT quantize_dynamic (which emits
    DynamicQuantizeLSTM) vs slimkit dynamic, embedding cosine with fp32 torch."""
    torch.manual_seed(0)
    model = SpeakerEncoder().eval()
    gen = torch.Generator().manual_seed(1)
    mels = torch.randn(32, 160, 40, generator=gen)
    with torch.no_grad():
        ref = model(mels).numpy()
    paths = dynamic_files(model, "lstm", mels[:1], folder)
    name = ort_session(paths["fp32"]).get_inputs()[0].name
    rows = []
    for variant, path in paths.items():
        out = run_outputs(path, {name: mels.numpy()})
        rows.append({"model": "lstm speaker encoder (1.4M, random init)", "variant": variant,
                     "bytes": file_size(path), "cosine_fp32": cosine(out, ref),
                     "batches": "b1 = 1 x 160 frames x 40 mels, b32 = 32 x 160 x 40"})
    add_latencies(rows, paths, {name: mels[:1].numpy()}, {name: mels.numpy()}, runs)
    return rows


class _Logits(torch.nn.Module):
    """A Hugging Face causal LM called with token ids, returning its logits tensor."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids):
        return self.lm(input_ids=ids, use_cache=False).logits


def gpt2_case(folder: Path, runs: int) -> list[dict]:
    """GPT-2 small (124M, random init from its config): its weight layers are Hugging Face
    Conv1D. Batch 1 x 128 and 4 x 128 tokens (the b32 column holds 4 x 128 here)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = _Logits(GPT2LMHeadModel(GPT2Config(use_cache=False))).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50257, (4, 128), generator=gen)
    paths = dynamic_files(model, "gpt2", ids[:1], folder)
    name = ort_session(paths["fp32"]).get_inputs()[0].name
    ref = run_outputs(paths["fp32"], {name: ids.numpy()})
    rows = []
    for variant, path in paths.items():
        out = run_outputs(path, {name: ids.numpy()})
        rows.append({"model": "gpt2 (124M, random init)", "variant": variant,
                     "bytes": file_size(path), "cosine_fp32": cosine(out, ref),
                     "top1_agreement_fp32": float((out.argmax(-1) == ref.argmax(-1)).mean()),
                     "batches": "b1 = 1 x 128 tokens, b32 column = 4 x 128"})
    add_latencies(rows, paths, {name: ids[:1].numpy()}, {name: ids.numpy()}, runs)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--only", nargs="*", choices=["gpt2", "lstm"], default=None,
                        help="measure only these cases and merge their rows into --out")
    parser.add_argument("--runs", type=int, default=30, help="timed runs at batch 32")
    parser.add_argument("--out", default="benchmarks/results/quant_vs_ort.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.only:
            cases = {"gpt2": gpt2_case, "lstm": lstm_case}
            for case in args.only:
                rows += cases[case](folder, max(args.runs // 3, 10))
            old = json.loads(Path(args.out).read_text())["rows"] if Path(args.out).exists() else []
            rows = [r for r in old if r["model"].split()[0] not in args.only] + rows
            _finish(rows, args.out)
            return
        data = load_digits_data()
        set_seed(0)
        digits = DigitsCNN()
        train(digits, data, epochs=20, lr=1e-3, seed=0)
        rows += conv_case("digits", digits.eval(), data.calibration, data.x_test, data.y_test,
                          folder, args.runs)
        torch.manual_seed(0)
        resnet = randomize_batchnorm(BottleneckResNet()).eval()
        gen = torch.Generator().manual_seed(1)
        calib = torch.randn(64, 3, 64, 64, generator=gen)
        x_eval = torch.randn(128, 3, 64, 64, generator=gen)
        rows += conv_case("resnet 3x64x64", resnet, calib, x_eval, None, folder, args.runs)
        if not args.skip_minilm:
            from slimkit.examples.minilm import minilm_available

            if minilm_available():
                rows += minilm_case(folder, max(args.runs // 3, 10))
        rows += lstm_case(folder, args.runs)
        try:
            import transformers  # noqa: F401
        except ImportError:
            pass
        else:
            rows += gpt2_case(folder, max(args.runs // 3, 10))
    _finish(rows, args.out)


def _finish(rows: list, out_path: str) -> None:
    for row in rows:  # speed-up against the fp32 file of the same model
        base = next(r for r in rows if r["model"] == row["model"] and r["variant"] == "fp32")
        row["speedup_b1"] = base["latency_b1_ms"] / row["latency_b1_ms"]
        row["speedup_b32"] = base["latency_b32_ms"] / row["latency_b32_ms"]
        row["size_ratio"] = base["bytes"] / row["bytes"]
    cols = ["model", "variant", "bytes", "size_ratio", "latency_b1_ms", "latency_b32_ms",
            "speedup_b1", "speedup_b32", "accuracy", "top1_agreement_fp32", "cosine_fp32"]
    table = Table(title="slimkit vs onnxruntime.quantization (ORT CPU, 2 threads)")
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "variant") else "right")
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        table.add_row(*cells)
    Console().print(table)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
