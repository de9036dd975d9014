"""Weight-only algorithms on SmolLM2-135M in torch: held-out perplexity, calibration time, memory.

Each setting runs in a fresh process (so peak memory is its own): load SmolLM2 (float32),
quantize in place with ``sk.quantize``, then score the held-out part of the stdlib topics
text with ``slimkit.metrics.perplexity`` (windows of 512). Calibration batches come from the
calibration part only (``split_text``). Peak RSS is sampled every 20 ms while quantizing.

Usage (quietly, one run at a time; ~1-2 min per RTN/HQQ setting, GPTQ/AWQ longer on 2 cores):

    python benchmarks/llm_weight_only_torch.py                       # fp32, rtn, hqq, gptq, awq
    python benchmarks/llm_weight_only_torch.py --settings gptq --calib-n 128
    python benchmarks/llm_weight_only_torch.py --eval-tokens 8192 --out benchmarks/results/x.json

Settings are int4 symmetric, group 128 (a shorter last group on the 576-wide layers, as
MatMulNBits pads it), which does not align with the Q4_1 grid (asymmetric, blocks of 32) the
GGUF weights were stored on, so RTN is not lossless by construction there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SETTINGS = ("fp32", "rtn", "hqq", "gptq", "awq")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` in MB."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, _rss_mb(), threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def run_one(setting: str, args) -> dict:
    """Load, quantize with ``setting``, score; the figures as a dict."""
    import torch

    import slimkit as sk
    import slimkit.techniques.weight_only as wo
    from slimkit.examples.llm import calibration_batches, load_smollm2, split_text, topics_text
    from slimkit.metrics.perplexity import perplexity

    torch.manual_seed(0)
    rss_start = _rss_mb()
    t = time.perf_counter()
    model, tok = load_smollm2()
    load_s = time.perf_counter() - t
    rss_loaded = _rss_mb()
    params = {id(p): p for p in model.parameters()}
    model_mb = sum(p.numel() * p.element_size() for p in params.values()) / 2**20
    calib_text, heldout = split_text(topics_text())
    row = {"setting": setting, "load_s": load_s, "model_mb": model_mb, "rss_start_mb": rss_start,
           "rss_loaded_mb": rss_loaded}
    if setting != "fp32":
        cfg = wo.WeightOnlyConfig(bits=args.bits, group_size=args.group_size,
                                  symmetric=not args.asymmetric, algorithm=setting,
                                  allow_partial_group=True, awq_grid=args.awq_grid,
                                  awq_search_tokens=args.awq_search_tokens)
        data = None
        if cfg.needs_data:
            data = calibration_batches(tok, calib_text, seq_len=args.seq_len, n=args.calib_n,
                                       seed=0)
            row["calibration_tokens"] = args.calib_n * args.seq_len
        with PeakRSS() as mem:
            t = time.perf_counter()
            if args.blocks and data is not None:
                # Probe: prepare everything, calibrate only the first N blocks (timing and
                # memory of the engine at full calibration size; no perplexity).
                from slimkit.core.sequential import find_blocks
                from slimkit.techniques.weight_only.calibrate import calibrate_model

                layers = wo.TECHNIQUE.select(model, cfg, None, None)
                wo.TECHNIQUE.prepare(model, cfg, layers)
                row["prepare_s"] = time.perf_counter() - t
                calibrate_model(model, cfg, data, progress=not args.quiet,
                                blocks=find_blocks(model)[: args.blocks])
                row["blocks_calibrated"] = args.blocks
            elif data is None:
                sk.quantize(model, cfg)
            else:
                sk.quantize(model, cfg, calibration=data, progress=not args.quiet)
            row["quantize_s"] = time.perf_counter() - t
        del data
        row["peak_rss_quantize_mb"] = mem.peak
        # Memory on top of the interpreter and libraries, vs the model: from the RSS before
        # loading, and from the RSS after loading minus the model (the GGUF conversion
        # leaves a few hundred MB of freed-but-kept heap behind).
        row["peak_over_model"] = (mem.peak - rss_start) / model_mb
        row["peak_over_model_after_load"] = (mem.peak - rss_loaded + model_mb) / model_mb
        row["config"] = cfg.to_dict()
        if args.blocks:
            row["cpu_s"] = time.process_time()
            print("RESULT " + json.dumps(row), flush=True)
            return row
    t = time.perf_counter()
    ppl = perplexity(model, tok, heldout, window=512, max_tokens=args.eval_tokens)
    row["eval_s"] = time.perf_counter() - t
    row.update({"perplexity": ppl["perplexity"], "eval_tokens": ppl["tokens"]})
    row["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=lambda s: None if s == "none" else int(s), default=128)
    ap.add_argument("--asymmetric", action="store_true")
    ap.add_argument("--calib-n", type=int, default=128, help="calibration sequences")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens scored")
    ap.add_argument("--out", default=str(HERE / "results" / "llm_weight_only_torch.json"))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--awq-grid", type=int, default=20)
    ap.add_argument("--awq-search-tokens", type=int, default=2048)
    ap.add_argument("--blocks", type=int, default=0,
                    help="probe: calibrate only the first N blocks (time and memory only)")
    ap.add_argument("--one", help=argparse.SUPPRESS)     # child process: run one setting
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return
    rows = []
    for setting in args.settings.split(","):
        if setting not in SETTINGS:
            raise SystemExit(f"unknown setting {setting!r}; choose from {SETTINGS}")
        cmd = [sys.executable, __file__, "--one", setting, *sys.argv[1:]]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{setting} failed (exit {proc.returncode})")
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
        rows.append(json.loads(line[len("RESULT "):]))
        r = rows[-1]
        if "perplexity" not in r:
            print(f"{r['setting']:>5}: {r['blocks_calibrated']} block(s) in {r['quantize_s']:.1f} s"
                  f" (prepare {r['prepare_s']:.1f} s), peak RSS {r['peak_rss_quantize_mb']:.0f} MB",
                  flush=True)
            continue
        print(f"{r['setting']:>5}: perplexity {r['perplexity']:.3f} on {r['eval_tokens']} tokens"
              + (f", quantize {r['quantize_s']:.1f} s, peak RSS {r['peak_rss_quantize_mb']:.0f} MB"
                 f" ({r['peak_over_model']:.2f}x the {r['model_mb']:.0f} MB model over the "
                 f"{r['rss_start_mb']:.0f} MB start)" if "quantize_s" in r else ""), flush=True)
    fp = next((r["perplexity"] for r in rows if r["setting"] == "fp32"), None)
    print("\n| setting | perplexity | gap to fp32 | quantize (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "perplexity" not in r:
            continue
        gap = f"{r['perplexity'] - fp:+.3f}" if fp is not None else "-"
        q = f"{r['quantize_s']:.1f}" if "quantize_s" in r else "-"
        m = f"{r['peak_rss_quantize_mb']:.0f}" if "peak_rss_quantize_mb" in r else "-"
        print(f"| {r['setting']} | {r['perplexity']:.3f} | {gap} | {q} | {m} |")
    from common import write_results

    # Merge with earlier runs of other settings (one setting per invocation is common).
    out = Path(args.out)
    old = json.loads(out.read_text())["rows"] if out.exists() else []
    key = (args.bits, args.group_size, args.asymmetric, args.calib_n, args.eval_tokens,
           args.blocks)
    kept = [r for r in old if tuple(r.get("key", ())) != key or
            r["setting"] not in {x["setting"] for x in rows}]
    for r in rows:
        r["key"] = list(key)
    write_results(out, {"benchmark": "llm_weight_only_torch", "rows": kept + rows,
                        "machine": f"{os.cpu_count()} cpus",
                        "key": "bits, group_size, asymmetric, calib_n, eval_tokens, blocks"})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
