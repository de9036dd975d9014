"""The cost of a prepared model at the size of real models: wall time and peak RSS per phase.

Models (random-initialised, nothing downloaded): BERT-base and GPT-2 small from their
transformers configs, and a ResNet-50-like CNN (bottleneck blocks 3-4-6-3, BatchNorm). Each
(model, technique) row runs in a fresh process, so one row's allocations never flatter the
next. Phases: prepare, one scheduler step, save, load (into a fresh model), export (with its
ONNX Runtime validation) and strip; "plain" rows export the unprepared model for comparison.

Peak RSS of a phase is sampled every 5 ms by a thread (the process high-water mark would
carry earlier phases over). "tensors" is the bytes of the model's parameters and buffers
(masks included) against the plain model's.

Run:  python benchmarks/scale.py --out benchmarks/results/scale.json
      python benchmarks/scale.py --models bert --techniques plain pruning   # a subset
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

MODELS = ("bert", "gpt2", "resnet50")
TECHNIQUES = ("plain", "pruning", "clustering", "quantization")
GOALS = {"tensor_ratio": 1.3, "prepare_step_s": 10.0, "load_s": 15.0}


# -- the child: one model, one technique ----------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Phase:
    """Time a block and sample its peak RSS."""

    def __init__(self, results: dict, name: str):
        self.results, self.name = results, name

    def __enter__(self):
        gc.collect()
        self.base, self.peak, self.running = rss_mb(), rss_mb(), True

        def sample():
            while self.running:
                self.peak = max(self.peak, rss_mb())
                time.sleep(0.005)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.t0
        self.running = False
        self.thread.join()
        self.results[self.name] = {"s": round(seconds, 2), "peak_mb": round(self.peak, 1),
                                   "start_mb": round(self.base, 1)}
        return False


def build(name: str):
    """(model factory, example inputs) of a model, random-initialised with a fixed seed."""
    import torch

    torch.manual_seed(0)
    if name == "bert":
        from transformers import BertConfig, BertModel

        cfg = BertConfig()   # BERT-base: 12 layers, 768 wide, 110M parameters
        return (lambda: BertModel(cfg).eval()), torch.randint(0, cfg.vocab_size, (2, 64))
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(use_cache=False)   # GPT-2 small: 124M parameters
        return (lambda: GPT2LMHeadModel(cfg).eval()), torch.randint(0, cfg.vocab_size, (2, 64))
    if name == "resnet50":
        return (lambda: resnet50_like().eval()), torch.randn(2, 3, 128, 128)
    raise SystemExit(f"unknown model {name!r}; one of {', '.join(MODELS)}")


def resnet50_like():
    """ResNet-50's layout (bottleneck blocks 3-4-6-3, widths 256-2048), written here."""
    import torch.nn as nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = mid * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.body(x) + self.skip(x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, (mid, n) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
        for j in range(n):
            layers.append(Bottleneck(cin, mid, 2 if j == 0 and i > 0 else 1))
            cin = mid * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def tensor_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def prepare(model, technique: str, x):
    import slimkit as sk

    if technique == "pruning":
        sk.prune(model, sk.MagnitudePruningConfig(
            sk.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, frequency=1)))
    elif technique == "clustering":
        sk.cluster(model, sk.ClusteringConfig(256))
    elif technique == "quantization":
        conv = any(type(m).__name__ == "Conv2d" for m in model.modules())
        if conv:
            sk.quantize(model, sk.QuantizationConfig(), calibration=[x])
        else:
            sk.quantize(model, sk.QuantizationConfig(mode="dynamic"))
    else:
        raise SystemExit(f"unknown technique {technique!r}")


def child(model_name: str, technique: str, out: Path) -> None:
    import torch

    import slimkit as sk

    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    factory, x = build(model_name)
    results: dict = {"model": model_name, "technique": technique}
    with Phase(results, "build"):
        model = factory()
    plain_bytes = tensor_bytes(model)
    results["parameters"] = sum(p.numel() for p in model.parameters())
    results["plain_tensor_mb"] = round(plain_bytes / 2**20, 1)
    results["plain_rss_mb"] = round(rss_mb(), 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if technique != "plain":
            with Phase(results, "prepare"):
                prepare(model, technique, x)
            results["tensor_ratio"] = round(tensor_bytes(model) / plain_bytes, 3)
            with Phase(results, "step"):
                sk.Scheduler(model).step()
            with Phase(results, "save"):
                sk.save(model, tmp / "prepared.pt")
            fresh = factory()
            with Phase(results, "load"):
                sk.load(tmp / "prepared.pt", fresh)
            del fresh
        with Phase(results, "export"):
            sk.export_onnx(model, tmp / "model.onnx", example_inputs=x)
        results["onnx_mb"] = round((tmp / "model.onnx").stat().st_size / 2**20, 1)
        if technique != "plain":
            with Phase(results, "strip"):
                sk.strip(model)
    out.write_text(json.dumps(results))


# -- the parent: a fresh process per row, then the table --------------------------------------

def run_row(model: str, technique: str, timeout: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = Path(f.name)
    cmd = [sys.executable, __file__, "--child", model, technique, str(path)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "technique": technique, "error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"model": model, "technique": technique, "error": tail[0][:300]}
    row = json.loads(path.read_text())
    path.unlink()
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def table(rows: list[dict]):
    from rich.table import Table

    t = Table(title="slimkit at scale: seconds (peak RSS, MB) per phase, fresh process per row")
    for col in ("model", "technique", "tensors", "prepare", "step", "save", "load", "export",
                "strip"):
        t.add_column(col)
    for r in rows:
        if "error" in r:
            t.add_row(r["model"], r["technique"], f"[red]{r['error']}[/red]", *[""] * 6)
            continue

        def cell(phase, r=r):
            p = r.get(phase)
            return f"{p['s']:.1f} s ({p['peak_mb']:.0f})" if p else "-"

        ratio = r.get("tensor_ratio")
        tensors = f"{r['plain_tensor_mb']:.0f} MB" + (f" x{ratio:.2f}" if ratio else "")
        t.add_row(r["model"], r["technique"], tensors, *(cell(p) for p in
                  ("prepare", "step", "save", "load", "export", "strip")))
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--techniques", nargs="+", default=list(TECHNIQUES), choices=TECHNIQUES)
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per row")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of --out for the model/technique pairs not run now")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
        return
    from rich.console import Console

    console = Console()
    rows = []
    for model in args.models:
        for technique in args.techniques:
            console.print(f"{model} / {technique} ...")
            rows.append(run_row(model, technique, args.timeout))
    if args.merge and args.out and args.out.exists():
        ran = {(r["model"], r["technique"]) for r in rows}
        kept = [r for r in json.loads(args.out.read_text())["rows"]
                if (r["model"], r["technique"]) not in ran]
        rows = sorted(kept + rows, key=lambda r: (MODELS.index(r["model"]),
                                                  TECHNIQUES.index(r["technique"])))
    console.print(table(rows))
    goals = goal_lines(rows)
    for line in goals:
        console.print(line)
    if args.out:
        import torch

        payload = {"rows": rows, "goals": GOALS, "goal_checks": goals, "torch": torch.__version__,
                   "machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}}
        args.out.write_text(json.dumps(payload, indent=2))


def goal_lines(rows: list[dict]) -> list[str]:
    """Item 16's goals against the BERT-base pruning row, met or missed by how much."""
    lines = []
    for r in rows:
        if r.get("technique") != "pruning" or "error" in r:
            continue
        prep = r["prepare"]["s"] + r["step"]["s"]
        checks = [("prepared tensors", r["tensor_ratio"], GOALS["tensor_ratio"], "x"),
                  ("prepare + one mask update", prep, GOALS["prepare_step_s"], " s"),
                  ("load", r["load"]["s"], GOALS["load_s"], " s")]
        for what, got, goal, unit in checks:
            verdict = "met" if got <= goal else f"missed by {got - goal:.2f}{unit}"
            lines.append(f"{r['model']} pruning: {what} {got:.2f}{unit} (goal <= {goal}{unit}): "
                         f"{verdict}")
    return lines


if __name__ == "__main__":
    main()
