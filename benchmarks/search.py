"""sk.optimize against the best uniform setting of each technique, at the same budget.

Models (``--models``, in this order by default; run the cheap ones first):

- ``digits``: the digits CNN of ../shared/BENCHMARKS.md (baseline 20 epochs, seeds 0, 1, 2).
  Budget: at most 0.5 points of accuracy lost; objective: the smallest zipped ONNX file.
  The baseline trains on 75% of the training images; the other 25% (360) are the search's
  validation data: 180 for its ``eval_fn``, 180 for its ``check_fn`` gate; ``digits-nogate``
  runs the same search without the gate, its ``eval_fn`` on all 360. The 360 test images
  are held out: every "held-out" figure is on them, on the ONNX Runtime artifact.
  Techniques: magnitude pruning (0.5-0.95), sparsity-preserving clustering (32-4 values),
  static int8 (one scale per layer), per layer, post-training (no fine-tuning).
- ``resnet`` / ``mobilenet``: the ResNet-style (3x64x64) and MobileNetV2-style (3x96x96)
  CNNs of slimkit.examples, random init. Metric: top-1 agreement with the fp32 artifact on
  256 random images (another 256 held out); objective: ORT latency at batch 32, 2 threads;
  technique: static int8 per layer (float where a layer is too sensitive).
- ``minilm``: all-MiniLM-L6-v2; metric: mean embedding cosine with fp32 on 64 sentences
  of tests/data/sentences.txt (the other 145 held out), budget cosine >= 0.99; objective:
  latency at batch 32 x 128 tokens; technique: dynamic int8, per channel, per layer.
- ``smollm2``: the sensitivity pass only (per block, int4 vs int8 weight-only RTN, output-
  error proxy on one 512-token calibration window), timed: the goal is under 10 minutes.

``--nncf``: also run NNCF's ``quantize_with_accuracy_control`` (ONNX backend) on the digits
model at the same budget, where it runs.

Usage (quietly, one benchmark at a time; digits ~2-4 min per seed here):

    python benchmarks/search.py --models digits --seeds 0 1 2
    python benchmarks/search.py --models resnet mobilenet minilm smollm2 --seeds 0
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import summary, write_results  # noqa: E402  (benchmarks/ is on sys.path)

SENTENCES = HERE.parent / "tests" / "data" / "sentences.txt"


def _artifact_metric(model, example, eval_fn, tmp: Path, *, latency_batch=None, dynamo=True):
    """Export ``model`` (compact) and measure it in ORT: (metric, zipped bytes, latency)."""
    import slimkit as sk

    path = sk.export_onnx(model, tmp / "model.onnx", example_inputs=example, compact=True,
                          dynamo=dynamo)
    box = {}

    def ev(predict):
        box["m"] = float(eval_fn(predict))
        return box["m"]

    rep = sk.report(path, example, eval_fn=ev, latency_runs=50 if latency_batch else 0,
                    batch_size=latency_batch, memory=False)
    return box["m"], rep.zipped_bytes, (rep.latency or {}).get("p50_ms")


def _held_out(base, res, row, calibration, eval_b, example, tmp, latency_batch=None):
    """The held-out metric of a result row (rebuilt from its stages) and of fp32."""
    from slimkit.search.space import build, stages_from_dicts

    model = build(base, stages_from_dicts(row["stages"]), calibration=calibration, seed=0) \
        if row["stages"] else copy.deepcopy(base)
    return _artifact_metric(model, example, eval_b, tmp, latency_batch=latency_batch)[0]


def _summarise_search(name, base, res, calibration, eval_b, example, tmp, objective,
                      latency_batch=None, sbs_rounds: int = 7, sbs_runs: int = 20) -> dict:
    t0 = time.perf_counter()
    fp32_b = _held_out(base, res, res.baseline, calibration, eval_b, example, tmp)
    best = res.best
    best_b = _held_out(base, res, best, calibration, eval_b, example, tmp)
    row = {
        "model": name, "objective": objective, "allowed_drop": res.allowed_drop,
        "fp32_metric": res.baseline["metric"], "fp32_cost": res.baseline["cost"],
        "search_label": best["label"], "search_metric": best["metric"],
        "search_cost": best["cost"], "search_zipped_bytes": best["zipped_bytes"],
        "fp32_heldout": fp32_b, "search_heldout": best_b,
        "search_heldout_drop": fp32_b - best_b,
        "search_meets_heldout": fp32_b - best_b <= res.allowed_drop + 1e-12,
        "candidates": len(res.candidates), "search_s": res.seconds,
        "sensitivity_s": res.sensitivity.seconds if res.sensitivity else None,
        "notes": res.notes,
    }
    per_tech = {}
    for c in res.candidates:
        if c["kind"] != "uniform":
            continue
        tech = c["label"].split(":")[0]
        per_tech.setdefault(tech, [])
        per_tech[tech].append(c)
    row["uniform"] = {}
    for tech, rows in per_tech.items():
        ok = [c for c in rows if c["meets"]]
        if ok:
            u = min(ok, key=lambda c: (c["cost"], -c["metric"]))
            row["uniform"][tech] = {"label": u["label"], "metric": u["metric"],
                                    "cost": u["cost"]}
        else:
            closest = max(rows, key=lambda c: c["metric"])
            row["uniform"][tech] = {"label": None, "closest": closest["label"],
                                    "closest_metric": closest["metric"]}
    u = res.best_uniform()
    if u is not None:
        row["best_uniform_label"] = u["label"]
        row["best_uniform_cost"] = u["cost"]
        row["best_uniform_metric"] = u["metric"]
        row["best_uniform_heldout"] = _held_out(base, res, u, calibration, eval_b, example, tmp)
        row["gain_vs_uniform"] = 1.0 - best["cost"] / u["cost"]
    row["ratio_vs_fp32"] = res.baseline["cost"] / best["cost"]
    if objective == "latency":
        row.update(_side_by_side(base, res, calibration, example, tmp, latency_batch,
                                 rounds=sbs_rounds, runs=sbs_runs))
    # Where the time went: each candidate's build + export + measurement, the sensitivity
    # pass, and this summary (held-out figures, side-by-side latency).
    row["candidate_s"] = [round(c["seconds"], 1) for c in res.candidates]
    row["summary_s"] = time.perf_counter() - t0
    return row


def _side_by_side(base, res, calibration, example, tmp: Path, batch, rounds: int = 7,
                  runs: int = 20) -> dict:
    """Latency of fp32, the best uniform and the search's result measured again in one
    process, interleaved round by round (the median of each artifact's per-round p50), so
    machine load hits all three alike: the ratios are what to read."""
    import slimkit as sk
    from slimkit.search.space import build, stages_from_dicts

    rows = {"fp32": res.baseline, "search": res.best}
    u = res.best_uniform()
    same = u is not None and u["key"] == res.best["key"]
    if u is not None and not same:
        rows["uniform"] = u
    paths = {}
    for name, row in rows.items():
        model = (build(base, stages_from_dicts(row["stages"]), calibration=calibration, seed=0)
                 if row["stages"] else base)
        paths[name] = sk.export_onnx(model, tmp / f"{name}.onnx", example_inputs=example,
                                     compact=True)
    times = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            rep = sk.report(path, example, batch_size=batch, latency_runs=runs, warmup=3,
                            memory=False)
            times[name].append(rep.latency["p50_ms"])
    med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    if same:    # the search returned the best uniform setting: one file, measured once
        med["uniform"] = med["search"]
    out = {f"sbs_{name}_ms": v for name, v in med.items()}
    out["sbs_same_artifact"] = same
    if "uniform" in med:
        out["sbs_gain_vs_uniform"] = 1.0 - med["search"] / med["uniform"]
    out["sbs_speedup_vs_fp32"] = med["fp32"] / med["search"]
    return out


# -- digits -------------------------------------------------------------------------------------


def run_digits(seed: int, args, tmp: Path, gate: bool = True) -> dict:
    import torch
    from sklearn.model_selection import train_test_split

    import slimkit as sk
    from slimkit.examples.digits import (
        DigitsCNN,
        DigitsData,
        evaluate,
        load_digits_data,
        set_seed,
        train,
    )

    d = load_digits_data()
    # The search needs validation data of its own: a quarter of the training images (not
    # trained on), half for the search's eval_fn and half for its check_fn gate; the 360
    # test images stay held out for the final figures.
    xtr, xval, ytr, yval = train_test_split(d.x_train, d.y_train, test_size=0.25,
                                            random_state=0, stratify=d.y_train)
    set_seed(seed)
    model = DigitsCNN()
    t = time.perf_counter()
    train(model, DigitsData(xtr, ytr, xval, yval), epochs=20, lr=1e-3, seed=seed)
    train_s = time.perf_counter() - t
    model.eval()
    cal = xtr[:100]
    xa, ya, xc, yc = xval[:180], yval[:180], xval[180:], yval[180:]
    if not gate:    # no gate: the search's eval_fn sees all 360 validation images
        xa, ya = xval, yval

    def eval_a(p):
        return evaluate(p, xa, ya)

    def eval_c(p):
        return evaluate(p, xc, yc)

    def eval_test(p):
        return evaluate(p, d.x_test, d.y_test)

    techniques = [sk.MagnitudePruningConfig(0.5),
                  sk.ClusteringConfig(16, preserve_sparsity=True),
                  sk.QuantizationConfig(per_channel=False)]
    torch.manual_seed(seed)
    res = sk.optimize(model, eval_a, max_drop=0.005, objective="size", techniques=techniques,
                      example_inputs=d.x_test[:32], calibration=cal, seed=seed,
                      check_fn=eval_c if gate else None,
                      max_candidates=args.max_candidates, time_budget_s=args.time_budget,
                      progress=not args.quiet)
    if args.reports:
        res.write_report(Path(args.reports) / f"digits-seed{seed}")
    row = _summarise_search("digits", model, res, cal, eval_test, d.x_test[:32], tmp, "size")
    row.update(seed=seed, train_s=train_s, gate=gate)
    # the answer without the gate: the cheapest candidate within the budget on eval_fn
    ungated = min((c for c in res.candidates if c["meets"]),
                  key=lambda c: (c["cost"], -c["metric"], c["id"]))
    row["ungated_label"], row["ungated_cost"] = ungated["label"], ungated["cost"]
    row["ungated_heldout"] = _held_out(model, res, ungated, cal, eval_test, d.x_test[:32], tmp)
    row["ungated_heldout_drop"] = row["fp32_heldout"] - row["ungated_heldout"]
    if gate:
        row.update(_gated_uniform(model, res, cal, eval_c, d.x_test[:32], seed))
    # Every measured candidate, cheapest first: what the budget let through and why (one
    # image of the 180 / 360 is 0.56 / 0.28 points against a budget of 0.5).
    row["eval_images"], row["check_images"] = len(xa), (len(xc) if gate else 0)
    row["measured"] = [
        {"label": c["label"], "kind": c["kind"], "cost": c["cost"],
         "images_lost": round(c["drop"] * len(xa)), "meets": c["meets"],
         **({"check_images_lost": round(c["check_drop"] * len(xc))}
            if "check_drop" in c else {})}
        for c in sorted(res.candidates, key=lambda c: c["cost"])]
    if args.nncf:
        row["nncf"] = _nncf_digits(model, cal, xa, ya, d.x_test, d.y_test, tmp)
    return row


def _gated_uniform(base, res, calibration, check_fn, example, seed: int) -> dict:
    """The best uniform setting that also keeps the budget on ``check_fn``: the same budget
    the gated search result keeps (the plain best uniform is judged on ``eval_fn`` only).
    Uniform candidates the gate already checked keep their figure; the others are built
    as the search built them (same seed) and measured on their artifact."""
    from slimkit.search.measure import measure_artifact
    from slimkit.search.space import build, stages_from_dicts

    def check(stages) -> float:
        model = (build(base, stages_from_dicts(stages), calibration=calibration, seed=seed)
                 if stages else base)
        return measure_artifact(model, example, check_fn, metric=None, objective="size",
                                batch_size=None, threads=2, latency_runs=0)["metric"]

    fp32 = check([])
    tried = []
    for u in sorted((c for c in res.candidates if c["kind"] == "uniform" and c["meets"]),
                    key=lambda c: (c["cost"], -c["metric"])):
        m = u["check_metric"] if "check_metric" in u else check(u["stages"])
        tried.append({"label": u["label"], "cost": u["cost"], "check_drop": fp32 - m})
        if fp32 - m <= res.allowed_drop + 1e-12:
            return {"gated_uniform_label": u["label"], "gated_uniform_cost": u["cost"],
                    "gain_vs_gated_uniform": 1.0 - res.best["cost"] / u["cost"],
                    "gated_uniform_tried": tried}
    return {"gated_uniform_label": None, "gated_uniform_tried": tried}


def _nncf_digits(model, cal, xa, ya, x_test, y_test, tmp: Path) -> dict:
    """NNCF quantize_with_accuracy_control on the fp32 ONNX artifact: the same budget
    (0.5 pt), calibration images and search half of the validation images; accuracy on the
    held-out test set."""
    t = time.perf_counter()
    try:
        import nncf
        import numpy as np
        import onnx
        import onnxruntime as ort

        import slimkit as sk
        from slimkit.metrics.sizes import zipped_size

        path = sk.export_onnx(model, tmp / "fp32.onnx", example_inputs=x_test[:32])
        proto = onnx.load(str(path))
        name = proto.graph.input[0].name
        calib = nncf.Dataset([{name: cal[i:i + 1].numpy()} for i in range(len(cal))])
        val = nncf.Dataset([({name: xa[i:i + 1].numpy()}, int(ya[i])) for i in range(len(xa))])

        def validate(m, items):
            sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            hits = [int(np.argmax(sess.run(None, x)[0]) == y) for x, y in items]
            return float(np.mean(hits))

        q = nncf.quantize_with_accuracy_control(proto, calib, val, validation_fn=validate,
                                                max_drop=0.005, drop_type=nncf.DropType.ABSOLUTE)
        out = tmp / "model.onnx"
        onnx.save(q, str(out))
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {name: x_test.numpy()})[0]
        acc = float((np.argmax(logits, 1) == y_test.numpy()).mean())
        return {"zipped_bytes": zipped_size(out), "heldout": acc,
                "seconds": time.perf_counter() - t}
    except Exception as e:  # report why it did not run, do not hide it
        return {"error": f"{type(e).__name__}: {str(e)[:300]}",
                "seconds": time.perf_counter() - t}


# -- latency CNNs ------------------------------------------------------------------------------


def run_cnn(name: str, seed: int, args, tmp: Path) -> dict:
    import torch

    import slimkit as sk
    from slimkit.examples.models import MobileNetV2Style, ResNetStyle

    torch.manual_seed(seed)
    model = (ResNetStyle() if name == "resnet" else MobileNetV2Style()).eval()
    size = 64 if name == "resnet" else 96
    g = torch.Generator().manual_seed(100 + seed)
    xa = torch.randn(256, 3, size, size, generator=g)
    xb = torch.randn(256, 3, size, size, generator=g)
    cal = torch.randn(64, 3, size, size, generator=g)
    with torch.no_grad():
        ref_a, ref_b = model(xa).argmax(1), model(xb).argmax(1)

    def eval_a(p):
        return float((p(xa).argmax(1) == ref_a).float().mean())

    def eval_b(p):
        return float((p(xb).argmax(1) == ref_b).float().mean())

    res = sk.optimize(model, eval_a, max_drop=args.cnn_drop, objective="latency",
                      techniques=[sk.QuantizationConfig()], example_inputs=xa[:32],
                      calibration=[cal[i:i + 16] for i in range(0, 64, 16)], seed=seed,
                      batch_size=32, latency_runs=args.latency_runs,
                      max_candidates=args.max_candidates, time_budget_s=args.time_budget,
                      progress=not args.quiet)
    if args.reports:
        res.write_report(Path(args.reports) / f"{name}-seed{seed}")
    row = _summarise_search(name, model, res, [cal[i:i + 16] for i in range(0, 64, 16)],
                            eval_b, xa[:32], tmp, "latency")
    row["seed"] = seed
    # How much the metric can tell: with random init the top-1 may be the same class for
    # every image (the classifier's bias), and then any candidate "agrees".
    with torch.no_grad():
        out = model(xa)
    top2 = torch.topk(out, 2, dim=1).values
    row["fp32_distinct_classes"] = int(ref_a.unique().numel())
    row["fp32_output_std_over_images"] = float(out.std(0).mean())
    row["fp32_median_top1_lead"] = float((top2[:, 0] - top2[:, 1]).median())
    return row


# -- MiniLM ------------------------------------------------------------------------------------


def run_minilm(seed: int, args, tmp: Path) -> dict:
    import torch

    import slimkit as sk
    from slimkit.examples.minilm import load_minilm, tokenize

    model, tok = load_minilm()
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    ids, mask = tokenize(tok, sentences, pad_to_max=True)
    a, b = slice(0, 64), slice(64, None)
    with torch.no_grad():
        ref = model(ids, mask)

    def cosine_eval(sl):
        def ev(p):
            out = p(ids[sl], mask[sl])
            return float(torch.nn.functional.cosine_similarity(out, ref[sl], dim=-1).mean())
        return ev

    example = (ids[:32], mask[:32])
    res = sk.optimize(model, cosine_eval(a), max_drop=0.01,
                      objective="latency", techniques=[sk.QuantizationConfig(mode="dynamic")],
                      example_inputs=example,
                      calibration=[{"input_ids": ids[:8], "attention_mask": mask[:8]}], seed=seed,
                      batch_size=32, latency_runs=args.latency_runs,
                      max_candidates=min(args.max_candidates, 6), confirm=2,
                      time_budget_s=args.time_budget, progress=not args.quiet)
    if args.reports:
        res.write_report(Path(args.reports) / f"minilm-seed{seed}")
    row = _summarise_search("minilm", model, res,
                            [{"input_ids": ids[:8], "attention_mask": mask[:8]}], cosine_eval(b),
                            example, tmp, "latency", sbs_rounds=3, sbs_runs=args.latency_runs)
    row["seed"] = seed
    return row


# -- SmolLM2: sensitivity per block ------------------------------------------------------------


def run_smollm2(seed: int, args, tmp: Path) -> dict:
    import torch
    import torch.nn as nn

    import slimkit as sk
    from slimkit.examples.llm import calibration_batches, load_smollm2, split_text, topics_text

    class Logits(nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask,
                           use_cache=False).logits

    t = time.perf_counter()
    lm, tok = load_smollm2()
    load_s = time.perf_counter() - t
    calib_text, _ = split_text(topics_text())
    batches = calibration_batches(tok, calib_text, seq_len=512, n=1, seed=seed)
    torch.manual_seed(seed)
    model = Logits(lm).eval()
    t = time.perf_counter()
    sens = sk.sensitivity(model, sk.WeightOnlyConfig(bits=4, group_size=128,
                                                     allow_partial_group=True),
                          {"weight-only": {"bits": [8, 4]}}, calibration=batches,
                          groups="blocks", progress=not args.quiet, seed=seed)
    seconds = time.perf_counter() - t
    if args.reports:
        out = Path(args.reports) / "smollm2"
        out.mkdir(parents=True, exist_ok=True)
        sens.to_json(out / "sensitivity.json")
        sens.plot(out / "sensitivity.png")
    int4 = sorted(((r["score"], r["unit"]) for r in sens.rows if r["setting"] == [1]),
                  reverse=True)
    int8 = [r["score"] for r in sens.rows if r["setting"] == [0]]
    return {"model": "smollm2", "seed": seed, "load_s": load_s, "sensitivity_s": seconds,
            "units": len(sens.units), "rows": len(sens.rows),
            "int4_error_max": int4[0][0], "int4_most_sensitive": [u for _, u in int4[:3]],
            "int4_error_median": sorted(s for s, _ in int4)[len(int4) // 2],
            "int8_error_max": max(int8), "goal_under_600_s": seconds < 600}


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits"],
                    choices=["digits", "digits-nogate", "resnet", "mobilenet", "minilm",
                             "smollm2"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-candidates", type=int, default=12)
    ap.add_argument("--time-budget", type=float, default=None)
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--cnn-drop", type=float, default=0.01,
                    help="allowed drop of top-1 agreement for the latency CNNs")
    ap.add_argument("--nncf", action="store_true")
    ap.add_argument("--reports", default=None, help="write each search's report.md here")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "search.json"))
    args = ap.parse_args()

    import tempfile

    from slimkit.search import SearchError

    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    runs = {k: v for k, v in previous.get("runs", {}).items() if k not in args.models}
    for name in args.models:
        runs[name] = []
        for seed in args.seeds if name != "smollm2" else args.seeds[:1]:
            with tempfile.TemporaryDirectory() as tmp:
                fn = {"digits": run_digits, "minilm": run_minilm, "smollm2": run_smollm2,
                      "digits-nogate": lambda s, a, t: run_digits(s, a, t, gate=False)}.get(name)
                try:
                    row = (fn(seed, args, Path(tmp)) if fn
                           else run_cnn(name, seed, args, Path(tmp)))
                except SearchError as e:    # recorded, so the other models still run
                    row = {"model": name, "seed": seed, "error": str(e)[:1000]}
            runs[name].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "notes"}, default=str),
                  flush=True)
        _write(runs, out)


def _write(runs: dict, out: Path) -> None:
    """The results file from every run so far (rewritten after each model)."""
    import onnxruntime
    import torch

    rows = []
    order = ["digits", "digits-nogate", "resnet", "mobilenet", "minilm", "smollm2"]
    for name in sorted(runs, key=lambda n: order.index(n) if n in order else len(order)):
        items = runs[name]
        if name == "smollm2":
            r = items[0]
            rows.append({"model": name, "budget": "sensitivity pass only (proxy)",
                         "search": f"{r['units']} blocks x int8/int4 in {r['sensitivity_s']:.0f} s",
                         "best uniform": "—", "gain vs uniform": "—", "held-out drop (pt)": "—",
                         "held-out meets budget": "—", "search s": r["sensitivity_s"]})
            continue
        errors = [r for r in items if "error" in r]
        items = [r for r in items if "error" not in r]
        if errors:
            rows.append({"model": name, "budget": "—", "search": "failed: "
                         + errors[0]["error"][:240].replace("|", "/").replace("\n", " "),
                         "best uniform": "—", "gain vs uniform": "—", "held-out drop (pt)": "—",
                         "held-out meets budget": "—", "search s": "—"})
        if not items:
            continue
        key = "sbs_gain_vs_uniform" if items[0]["objective"] == "latency" else "gain_vs_uniform"
        # A search that returned the best uniform setting gains nothing over it, whatever two
        # latency measurements of that one file say.
        gains = [0.0 if r.get("search_label") == r.get("best_uniform_label") else r[key]
                 for r in items if key in r]
        unit = ("KiB zipped" if items[0]["objective"] == "size" else
                "ms (p50, fp32 / uniform / search re-measured side by side)")
        scale = 1024.0 if items[0]["objective"] == "size" else 1.0
        rows.append({
            "model": name,
            "budget": f"drop <= {items[0]['allowed_drop']:g}, {items[0]['objective']}",
            "search": _mean_range([r.get("sbs_search_ms", r["search_cost"] / scale)
                                   for r in items], unit),
            "best uniform": ("the same file as the search's result"
                             if all(r.get("search_label") == r.get("best_uniform_label")
                                    for r in items) else
                             _mean_range([r.get("sbs_uniform_ms", r["best_uniform_cost"] / scale)
                                          for r in items if "best_uniform_cost" in r], unit)),
            "gain vs uniform": _mean_range([100 * g for g in gains], "%") if gains else "—",
            "held-out drop (pt)": _mean_range([100 * r["search_heldout_drop"] for r in items],
                                              ""),
            "held-out meets budget": f"{sum(r['search_meets_heldout'] for r in items)}/"
                                     f"{len(items)}",
            "search s": max(r["search_s"] for r in items),
        })
        main = rows[-1]
        if name.startswith("digits"):
            ung = [r for r in items if "ungated_cost" in r]
            if ung and items[0].get("gate"):
                rows.append({
                    "model": f"{name}: the answer without the check_fn gate",
                    "budget": rows[-1]["budget"],
                    "search": _mean_range([r["ungated_cost"] / 1024 for r in ung], unit),
                    "best uniform": rows[-1]["best uniform"], "gain vs uniform": _mean_range(
                        [100 * (1 - r["ungated_cost"] / r["best_uniform_cost"]) for r in ung
                         if "best_uniform_cost" in r], "%"),
                    "held-out drop (pt)": _mean_range(
                        [100 * r["ungated_heldout_drop"] for r in ung], ""),
                    "held-out meets budget":
                        f"{sum(r['ungated_heldout_drop'] <= 0.005 + 1e-12 for r in ung)}/"
                        f"{len(ung)}",
                    "search s": "—"})
            gated = [r for r in items if r.get("gated_uniform_label")]
            if gated:
                rows.append({
                    "model": f"{name}: against the best uniform that also passes the gate",
                    "budget": main["budget"], "search": main["search"],
                    "best uniform": _mean_range([r["gated_uniform_cost"] / 1024 for r in gated],
                                                unit),
                    "gain vs uniform": _mean_range([100 * r["gain_vs_gated_uniform"]
                                                    for r in gated], "%"),
                    "held-out drop (pt)": "—", "held-out meets budget": "—", "search s": "—"})
            nncf = [r["nncf"] for r in items if "zipped_bytes" in r.get("nncf", {})]
            if nncf:
                rows.append({
                    "model": f"{name}: NNCF quantize_with_accuracy_control (int8)",
                    "budget": f"drop <= {items[0]['allowed_drop']:g}, size",
                    "search": _mean_range([n["zipped_bytes"] / 1024 for n in nncf], unit),
                    "best uniform": "—", "gain vs uniform": "—",
                    "held-out drop (pt)": _mean_range(
                        [100 * (r["fp32_heldout"] - r["nncf"]["heldout"]) for r in items
                         if "zipped_bytes" in r.get("nncf", {})], ""),
                    "held-out meets budget": f"{sum(r['fp32_heldout'] - r['nncf']['heldout'] <= 0.005 + 1e-12 for r in items if 'zipped_bytes' in r.get('nncf', {}))}/{len(nncf)}",
                    "search s": max(n["seconds"] for n in nncf)})
    payload = {
        "benchmark": "search", "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "threads": 2, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
        "rows": rows, "runs": runs,
    }
    if "digits" in runs:
        payload["digits_summary"] = {
            "digits_search_kib": summary([r["search_cost"] / 1024 for r in runs["digits"]]),
            "digits_gain_vs_uniform": summary([r["gain_vs_uniform"] for r in runs["digits"]
                                               if "gain_vs_uniform" in r]),
            "digits_search_s": summary([r["search_s"] for r in runs["digits"]]),
        }
    write_results(out, payload)
    print(json.dumps(rows, indent=1))


def _mean_range(values, unit: str) -> str:
    if not values:
        return "—"
    s = summary(values)
    return f"{s['mean']:.1f} [{s['min']:.1f}–{s['max']:.1f}] {unit}"


if __name__ == "__main__":
    main()
