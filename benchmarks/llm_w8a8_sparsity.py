"""W8A8 activation quantization and one-shot sparsity on SmolLM2-135M (and MiniLM), side by side.

Rows (every figure measured in this run; a tool that cannot install or run gets a row with
the reason):

- fp32; slimkit dynamic int8; naive static W8A8 (SmoothQuant's path with ``alpha=None``: the
  same int8 kernels, no smoothing); SmoothQuant W8A8 at alpha 0.5 and searched; the existing
  ``QuantizationConfig(mode="static")`` (its export is attempted); ONNX Runtime's
  ``quantize_dynamic`` / ``quantize_static`` on the fp32 ONNX file (and its SmoothQuant
  option); NNCF's SmoothQuant (``nncf.quantize``, model type transformer) on the fp32 ONNX.
  Perplexity, file size and prefill latency of the ONNX artifact in ONNX Runtime.
- magnitude 50% one-shot, Wanda 50%, SparseGPT 50%, the same three at 2:4; SparseGPT 50% +
  int4 weight-only g128 (exported: MatMulNBits); SparseGPT 2:4 + SmoothQuant W8A8 (exported,
  the 2:4 pattern checked in the int8 initializers of the file); llm-compressor.
  Unstructured / 2:4 sparse fp32 weights run at dense speed in ORT's CPU kernels, so the
  pruned rows' perplexity is measured on the torch model (the exported file computes the
  same function) and their latency is the fp32 row's.
- MiniLM (all-MiniLM-L6-v2): cosine similarity of mean-pooled sentence embeddings to fp32,
  for the same held-out sentences, per method (torch).

Perplexity: the held-out part of the stdlib topics text (``split_text``), windows of 512,
the first ``--ppl-tokens`` tokens, each scored once. Calibration: seeded windows of the
calibration part (``calibration_batches``); ``--calib-n`` sequences of ``--calib-seq`` tokens
for SparseGPT 50% (the headline: its time and peak memory are recorded), ``--calib-n-other``
for the other data-aware rows. ORT: 2 intra-op threads, prefill latency = median of
``--latency-runs`` calls on 1 x 512 random tokens with an empty cache.

    python benchmarks/llm_w8a8_sparsity.py                   # the issue's settings (long)
    python benchmarks/llm_w8a8_sparsity.py --quick           # a loaded 2-core machine
    python benchmarks/llm_w8a8_sparsity.py --rows fp32,sparsegpt-50,magnitude-50

Results are written to ``benchmarks/results/llm_w8a8_sparsity.json`` after every row (a
rerun with ``--rows`` merges into it); the settings and the machine's load are recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import shutil
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import slimkit as sk  # noqa: E402
from slimkit.core.registry import register  # noqa: E402
from slimkit.techniques.pruning.oneshot import SparseGPTConfig, WandaConfig  # noqa: E402
from slimkit.techniques.pruning.oneshot import sparsegpt as _sg  # noqa: E402
from slimkit.techniques.pruning.oneshot import wanda as _wd  # noqa: E402
from slimkit.techniques.quantization import smoothquant as _sq  # noqa: E402
from slimkit.techniques.quantization.smoothquant_config import SmoothQuantConfig  # noqa: E402

for _t in (_sg.TECHNIQUE, _wd.TECHNIQUE, _sq.TECHNIQUE):
    register(_t)

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "llm_w8a8_sparsity.json"
QUANT_ROWS = ["fp32", "dynamic-int8", "static-w8a8-existing", "naive-w8a8", "smoothquant-0.5",
              "smoothquant-search", "ort-dynamic", "ort-static", "ort-static-smoothquant",
              "nncf-smoothquant"]
SPARSE_ROWS = ["magnitude-50", "wanda-50", "sparsegpt-50", "magnitude-2:4", "wanda-2:4",
               "sparsegpt-2:4", "sparsegpt-50+int4", "sparsegpt-2:4+w8a8", "llm-compressor"]
ROWS = QUANT_ROWS + SPARSE_ROWS + ["minilm"]


def _feeds(dec, ids: np.ndarray) -> dict:
    """The ORT feeds of a prefill of ``ids`` with an empty cache (as OrtDecoder.step builds)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    batch, seq = ids.shape
    feeds = {"input_ids": ids, "attention_mask": np.ones((batch, seq), dtype=np.int64)}
    if dec.position_ids:
        feeds["position_ids"] = np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy()
    feeds.update(zip(dec.past_names, dec.empty_past(batch)))
    return feeds


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssPeak:
    """The largest resident set size while the block runs (sampled every 50 ms), in MB."""

    def __enter__(self):
        import threading

        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()

        def poll():
            while not self._stop.is_set():
                self.peak = max(self.peak, _rss_mb())
                self._stop.wait(0.05)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Bench:
    """Shared state of one run: the model, the text, the fp32 artifact, the results."""

    def __init__(self, args):
        from slimkit.examples.llm import calibration_batches, load_smollm2, split_text, topics_text

        self.args = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.out = Path(args.out)
        self.results = json.loads(self.out.read_text()) if self.out.exists() and args.merge else {}
        self.results.setdefault("rows", {})
        self.results["settings"] = {
            "calib_n": args.calib_n, "calib_n_other": args.calib_n_other,
            "calib_seq": args.calib_seq, "ppl_tokens": args.ppl_tokens, "window": 512,
            "latency_runs": args.latency_runs, "threads": 2, "quick": args.quick,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_average_at_start": os.getloadavg(),
            "torch": torch.__version__,
        }
        t = time.perf_counter()
        self.model, self.tok = load_smollm2()
        self.results["settings"]["load_s"] = round(time.perf_counter() - t, 1)
        self.model_mb = sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**20
        calib_text, self.heldout = split_text(topics_text())
        self.calib_head = calibration_batches(self.tok, calib_text, seq_len=args.calib_seq,
                                              n=args.calib_n, seed=0)
        self.calib = self.calib_head[: args.calib_n_other]
        self._fp32 = None

    # -- helpers ---------------------------------------------------------------------------
    def save(self) -> None:
        self.results["settings"]["load_average_at_end"] = os.getloadavg()
        self.results["goals"] = goals(self.results)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=2, default=float))

    def row(self, name: str, **fields) -> dict:
        fields = {k: v for k, v in fields.items() if v is not None}
        self.results["rows"][name] = {"name": name, **fields}
        self.save()
        shown = {k: v for k, v in fields.items() if k in ("perplexity", "file_mb", "prefill_ms",
                                                          "cosine_mean", "error", "note")}
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {shown}", flush=True)
        return self.results["rows"][name]

    def ppl_torch(self, model) -> float:
        from slimkit.metrics.perplexity import perplexity

        with torch.no_grad():
            return perplexity(model, self.tok, self.heldout, window=512,
                              max_tokens=self.args.ppl_tokens)["perplexity"]

    def ort_figures(self, path: Path) -> dict:
        import onnxruntime as ort

        from slimkit.metrics.llm import artifact_bytes, prefill_latency
        from slimkit.metrics.perplexity import perplexity

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ppl = perplexity(sess, self.tok, self.heldout, window=512,
                         max_tokens=self.args.ppl_tokens)["perplexity"]
        lat = prefill_latency(sess, prompt_len=512, batch=1, runs=self.args.latency_runs)
        from collections import Counter

        import onnx

        ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
        keep = {k: v for k, v in ops.items() if k in ("MatMul", "MatMulInteger", "QuantizeLinear",
                                                      "DequantizeLinear", "MatMulNBits",
                                                      "DynamicQuantizeLinear", "QLinearMatMul")}
        return {"perplexity": ppl, "file_mb": artifact_bytes(path) / 2**20,
                "prefill_ms": lat["p50_ms"], "prefill_min_ms": lat["min_ms"], "ops": keep}

    def fp32_path(self) -> Path:
        """The fp32 decoder, exported once with export_causal_lm (validated in ORT)."""
        if self._fp32 is None:
            from slimkit.export.causal_lm import export_causal_lm

            folder = self.work / "fp32"
            if not (folder / "model.onnx").exists():
                t = time.perf_counter()
                export_causal_lm(self.model, folder, overwrite=True)
                self.results["settings"]["fp32_export_s"] = round(time.perf_counter() - t, 1)
            self._fp32 = folder / "model.onnx"
        return self._fp32

    def write_rewritten(self, name: str, proto, ctx, torch_model) -> Path:
        """Save a rewritten decoder and validate it against ``torch_model`` (prefill + decode)."""
        import onnx

        from slimkit.export.causal_lm import _DecoderWithCache, decoder_shape, validate_decoder
        from slimkit.export.pipeline import deployable

        folder = self.work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        path = folder / "model.onnx"
        onnx.save(proto, str(path))
        plain = deployable(torch_model, type(ctx)(records=sk.records(torch_model)))
        plain.config.use_cache = True
        check = validate_decoder(path, _DecoderWithCache(plain).eval(),
                                 decoder_shape(torch_model), atol=ctx.atol, rtol=ctx.rtol)
        return path, check

    # -- quantization rows ------------------------------------------------------------------
    def run_fp32(self):
        path = self.fp32_path()
        self.row("fp32", kind="baseline", **self.ort_figures(path),
                 perplexity_torch=self.ppl_torch(self.model))

    def run_dynamic(self):
        from slimkit.export.causal_lm import export_causal_lm

        m = copy.deepcopy(self.model)
        with _quiet():
            sk.quantize(m, sk.QuantizationConfig(mode="dynamic"))
        folder = self.work / "dynamic-int8"
        t = time.perf_counter()
        export_causal_lm(m, folder, overwrite=True)
        self.row("dynamic-int8", kind="slimkit", config="QuantizationConfig(mode='dynamic')",
                 export_s=round(time.perf_counter() - t, 1),
                 **self.ort_figures(folder / "model.onnx"))

    def run_static_existing(self):
        from slimkit.export.causal_lm import export_causal_lm

        m = copy.deepcopy(self.model)
        try:
            with _quiet():
                sk.quantize(m, sk.QuantizationConfig(mode="static"),
                            calibration=self.calib, progress=False)
            export_causal_lm(m, self.work / "static-existing", overwrite=True)
            self.row("static-w8a8-existing", kind="slimkit",
                     **self.ort_figures(self.work / "static-existing" / "model.onnx"))
        except Exception as e:
            self.row("static-w8a8-existing", kind="slimkit", config="QuantizationConfig()",
                     error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                     note="the existing static QDQ path; SmoothQuant's alpha=None row is the "
                          "working naive static W8A8")

    def run_smoothquant(self, name: str, alpha):
        import onnx

        from slimkit.techniques.quantization.smoothquant import smoothing_report
        from slimkit.techniques.quantization.smoothquant_export import rewrite_float_graph

        m = copy.deepcopy(self.model)
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sk.quantize(m, SmoothQuantConfig(alpha=alpha), calibration=self.calib,
                        progress=False)
        calib_s = time.perf_counter() - t
        alphas = [a for a in smoothing_report(m).values()]
        fields = dict(kind="slimkit", config=f"SmoothQuantConfig(alpha={alpha!r})",
                      calibration=f"{len(self.calib)} x {self.args.calib_seq} tokens",
                      calib_s=round(calib_s, 1),
                      alphas_used=sorted({a for a in alphas if a is not None}),
                      smoothed_layers=sum(a is not None for a in alphas), layers=len(alphas),
                      warnings=[str(w.message)[:300] for w in caught
                                if "smoothquant" in str(w.message)])
        # The torch W8A8 model's perplexity first: it is the figure even if ORT disagrees.
        fields["perplexity"] = fields["perplexity_torch"] = self.ppl_torch(m)
        if self.args.torch_only:
            self.row(name, note="torch W8A8 simulation only (--torch-only)", **fields)
            return m
        try:
            proto, ctx = rewrite_float_graph(onnx.load(str(self.fp32_path())), self.model, m)
            path, check = self.write_rewritten(name, proto, ctx, m)
        except Exception as e:
            self.row(name, error=f"ORT artifact: {type(e).__name__}: {str(e)[:400]}", **fields)
            return m
        self.row(name, validation=check, **{**fields, **self.ort_figures(path)})
        return m

    def run_ort(self, static: bool, smooth: bool = False):
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        name = "ort-static-smoothquant" if smooth else ("ort-static" if static else "ort-dynamic")
        out = self.work / name / "model.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        try:
            if not static:
                quantize_dynamic(str(self.fp32_path()), str(out), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul"])
            else:
                from slimkit.export.generate import OrtDecoder

                dec = OrtDecoder(self.fp32_path())
                batches = self.calib

                class Reader(CalibrationDataReader):
                    def __init__(self):
                        self.items = iter(batches)

                    def get_next(self):
                        b = next(self.items, None)
                        if b is None:
                            return None
                        return _feeds(dec, b["input_ids"].numpy())

                extra = {"SmoothQuant": True, "SmoothQuantAlpha": 0.5} if smooth else {}
                quantize_static(str(self.fp32_path()), str(out), Reader(),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=["MatMul"], extra_options=extra)
            self.row(name, kind="reference", tool="onnxruntime.quantization",
                     quantize_s=round(time.perf_counter() - t, 1), **self.ort_figures(out))
        except Exception as e:
            self.row(name, kind="reference", tool="onnxruntime.quantization",
                     error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")

    def run_nncf(self):
        name = "nncf-smoothquant"
        try:
            import nncf
            import onnx

            from slimkit.export.generate import OrtDecoder

            dec = OrtDecoder(self.fp32_path())
            items = [_feeds(dec, b["input_ids"].numpy()) for b in self.calib]
            t = time.perf_counter()
            q = nncf.quantize(onnx.load(str(self.fp32_path())), nncf.Dataset(items),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
            out = self.work / name / "model.onnx"
            out.parent.mkdir(parents=True, exist_ok=True)
            onnx.save(q, str(out))
            self.row(name, kind="reference", tool=f"nncf {nncf.__version__}",
                     quantize_s=round(time.perf_counter() - t, 1), **self.ort_figures(out))
        except Exception as e:
            self.row(name, kind="reference", tool="nncf",
                     error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")

    # -- sparsity rows ----------------------------------------------------------------------
    def prune(self, name: str, config, batches) -> tuple:
        m = copy.deepcopy(self.model)
        gc.collect()
        rss0, t = _rss_mb(), time.perf_counter()
        with _quiet():
            if isinstance(config, sk.MagnitudePruningConfig):
                sk.prune(m, config, targets=["model.layers.*"])
            else:
                sk.prune(m, config, calibration=batches, progress=False)
        took = time.perf_counter() - t
        zeros = [float((mod.weight == 0).float().mean()) for n, mod in m.named_modules()
                 if isinstance(mod, torch.nn.Linear) and n.startswith("model.layers.")]
        fields = {"prune_s": round(took, 1), "rss_before_mb": round(rss0),
                  "block_linear_sparsity": float(np.mean(zeros)),
                  "calibration": None if isinstance(config, sk.MagnitudePruningConfig)
                  else f"{len(batches)} x {self.args.calib_seq} tokens"}
        return m, fields

    def run_sparse(self, name: str, config, batches):
        m, fields = self.prune(name, config, batches)
        fp32 = self.results["rows"].get("fp32", {})
        self.row(name, kind="slimkit", config=repr(config), perplexity=self.ppl_torch(m),
                 prefill_ms=fp32.get("prefill_ms"),
                 note="perplexity of the torch model; sparse fp32 runs at dense speed in ORT",
                 **fields)
        return m

    def run_sparsegpt_headline(self):
        m = copy.deepcopy(self.model)
        batches = self.calib_head
        gc.collect()
        with RssPeak() as peak:
            t = time.perf_counter()
            with _quiet():
                sk.prune(m, SparseGPTConfig(0.5), calibration=batches, progress=False)
            took = time.perf_counter() - t
        zeros = [float((mod.weight == 0).float().mean()) for n, mod in m.named_modules()
                 if isinstance(mod, torch.nn.Linear) and n.startswith("model.layers.")]
        fp32 = self.results["rows"].get("fp32", {})
        extra = peak.peak - peak.start
        self.row("sparsegpt-50", kind="slimkit", config="SparseGPTConfig(0.5)",
                 calibration=f"{len(batches)} x {self.args.calib_seq} tokens",
                 prune_s=round(took, 1), model_mb=round(self.model_mb),
                 rss_before_mb=round(peak.start), peak_rss_mb=round(peak.peak),
                 extra_memory_mb=round(extra),
                 memory_as_model_multiple=round((self.model_mb + extra) / self.model_mb, 2),
                 block_linear_sparsity=float(np.mean(zeros)), perplexity=self.ppl_torch(m),
                 prefill_ms=fp32.get("prefill_ms"),
                 note="perplexity of the torch model; sparse fp32 runs at dense speed in ORT")

    def run_sparsegpt_int4(self):
        import onnx

        from slimkit.techniques.weight_only import WeightOnlyConfig, weight_only_layers
        from slimkit.techniques.weight_only.onnx import rewrite_float_graph

        m, fields = self.prune("sparsegpt-50+int4", SparseGPTConfig(0.5), self.calib)
        masks = {n: (mod.weight == 0) for n, mod in m.named_modules()
                 if isinstance(mod, torch.nn.Linear) and n.startswith("model.layers.")}
        with _quiet():
            sk.quantize(m, WeightOnlyConfig(bits=4, group_size=128, symmetric=True,
                                            algorithm="rtn"), targets=["model.layers.*"])
        kept = []
        for name, _, codes, scales, zeros, _bits, gs in weight_only_layers(m):
            if name in masks:
                deq = (codes.float() - zeros.repeat_interleave(gs, 1)) * \
                    scales.repeat_interleave(gs, 1)
                kept.append(bool((deq[masks[name]] == 0).all()))
        proto, ctx = rewrite_float_graph(onnx.load(str(self.fp32_path())), self.model, m)
        path, check = self.write_rewritten("sparsegpt-50+int4", proto, ctx, m)
        self.row("sparsegpt-50+int4", kind="slimkit",
                 config="SparseGPTConfig(0.5) then WeightOnlyConfig(bits=4, group_size=128, "
                        "symmetric=True, algorithm='rtn')",
                 zeros_kept_in_int4_codes=f"{sum(kept)}/{len(kept)} layers", validation=check,
                 **fields, **self.ort_figures(path))

    def run_sparsegpt_24_w8a8(self):
        import onnx
        from onnx import numpy_helper

        from slimkit.techniques.pruning.nm import check_weight
        from slimkit.techniques.quantization.smoothquant_export import rewrite_float_graph

        m, fields = self.prune("sparsegpt-2:4+w8a8", SparseGPTConfig(pattern="2:4"), self.calib)
        with _quiet():
            sk.quantize(m, SmoothQuantConfig(alpha=0.5), calibration=self.calib, progress=False)
        proto, ctx = rewrite_float_graph(onnx.load(str(self.fp32_path())), self.model, m)
        path, check = self.write_rewritten("sparsegpt-2:4+w8a8", proto, ctx, m)
        # The int8 weights MatMulInteger reads are stored [in, out]: input axis 0.
        saved = onnx.load(str(path))
        w8 = [i for i in saved.graph.initializer if i.name.endswith("_w8")]
        checks = [check_weight(i.name, numpy_helper.to_array(i), 2, 4, input_axis=0) for i in w8]
        self.row("sparsegpt-2:4+w8a8", kind="slimkit",
                 config="SparseGPTConfig(pattern='2:4') then SmoothQuantConfig(alpha=0.5)",
                 pattern_check_in_file=f"{sum(c.status == 'ok' for c in checks)}/{len(checks)} "
                                       "int8 weights satisfy 2:4",
                 validation=check, **fields, **self.ort_figures(path))

    def run_llm_compressor(self):
        try:
            import llmcompressor  # noqa: F401
        except ImportError:
            self.row("llm-compressor", kind="reference", tool="llm-compressor",
                     error="not installed: `pip install --dry-run -c constraints.txt "
                           "llmcompressor` resolves llmcompressor 0.14.0.1, which pins "
                           "transformers<=5.17.0 and would replace the environment's "
                           "transformers 5.24.0 (shared by every slimkit test)")
            return
        self.row("llm-compressor", kind="reference", error="installed but not wired up here")

    # -- MiniLM -----------------------------------------------------------------------------
    def run_minilm(self):
        from slimkit.examples.minilm import load_minilm, tokenize

        model, tok = load_minilm()
        lines = [ln.strip() for ln in self.heldout.splitlines() if len(ln.strip()) > 40]
        eval_s, calib_s = lines[:64], lines[64:192]

        def embed(mdl, sentences):
            ids, mask = tokenize(tok, sentences)
            with torch.no_grad():   # MiniLMEncoder: mean-pooled, L2-normalised embeddings
                return mdl(input_ids=ids, attention_mask=mask)

        ref = embed(model, eval_s)
        cal = []
        for i in range(0, len(calib_s), 32):
            ids, mask = tokenize(tok, calib_s[i:i + 32])
            cal.append({"input_ids": ids, "attention_mask": mask})
        methods = {
            "dynamic-int8": lambda m: sk.quantize(m, sk.QuantizationConfig(mode="dynamic")),
            "naive-w8a8": lambda m: sk.quantize(m, SmoothQuantConfig(alpha=None), calibration=cal,
                                                progress=False),
            "smoothquant-0.5": lambda m: sk.quantize(m, SmoothQuantConfig(alpha=0.5),
                                                     calibration=cal, progress=False),
            "magnitude-50": lambda m: sk.prune(m, sk.MagnitudePruningConfig(0.5),
                                               targets=["bert.encoder.layer.*"]),
            "wanda-50": lambda m: sk.prune(m, WandaConfig(0.5), calibration=cal, progress=False),
            "sparsegpt-50": lambda m: sk.prune(m, SparseGPTConfig(0.5), calibration=cal,
                                               progress=False),
        }
        out = {}
        for name, fn in methods.items():
            m = copy.deepcopy(model)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fn(m)
                cos = torch.nn.functional.cosine_similarity(embed(m, eval_s), ref, dim=-1)
                out[name] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                             "warnings": [str(w.message)[:200] for w in caught
                                          if "slimkit" in str(w.message)][:3]}
            except Exception as e:
                out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"  minilm {name}: {out[name].get('cosine_mean', out[name].get('error'))}",
                  flush=True)
        self.row("minilm", kind="minilm", sentences=len(eval_s),
                 calibration=f"{len(calib_s)} held-out sentences", methods=out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma list among {ROWS}")
    p.add_argument("--calib-n", type=int, default=128)
    p.add_argument("--calib-n-other", type=int, default=32)
    p.add_argument("--calib-seq", type=int, default=512)
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--latency-runs", type=int, default=5)
    p.add_argument("--quick", action="store_true",
                   help="settings for a heavily loaded 2-core machine: 4 x 512 calibration "
                        "tokens everywhere, 1024 perplexity tokens, 3 latency runs")
    p.add_argument("--work", default="/tmp/slimkit-llm-w8a8")
    p.add_argument("--out", default=str(OUT), help="the JSON file (default: %(default)s)")
    p.add_argument("--torch-only", action="store_true",
                   help="SmoothQuant rows: perplexity of the torch W8A8 model only (no ORT)")
    p.add_argument("--merge", action="store_true", help="merge into the existing JSON")
    p.add_argument("--table", action="store_true",
                   help="only recompute the goals of --out and print its tables")
    args = p.parse_args(argv)
    if args.quick:
        args.calib_n, args.calib_n_other, args.ppl_tokens, args.latency_runs = 4, 4, 1024, 3
    torch.set_num_threads(2)
    if args.table:
        results = json.loads(Path(args.out).read_text())
        results["goals"] = goals(results)
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
        print_table(results)
        print(json.dumps(results["goals"], indent=2, default=float))
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        p.error(f"unknown rows {unknown}; choose among {ROWS}")
    bench = Bench(args)
    plan = {
        "fp32": bench.run_fp32,
        "sparsegpt-50": bench.run_sparsegpt_headline,
        "magnitude-50": lambda: bench.run_sparse("magnitude-50", sk.MagnitudePruningConfig(0.5),
                                                 None),
        "wanda-50": lambda: bench.run_sparse("wanda-50", WandaConfig(0.5), bench.calib),
        "naive-w8a8": lambda: bench.run_smoothquant("naive-w8a8", None),
        "smoothquant-0.5": lambda: bench.run_smoothquant("smoothquant-0.5", 0.5),
        "dynamic-int8": bench.run_dynamic,
        "minilm": bench.run_minilm,
        "llm-compressor": bench.run_llm_compressor,
        "smoothquant-search": lambda: bench.run_smoothquant("smoothquant-search", "search"),
        "ort-dynamic": lambda: bench.run_ort(static=False),
        "ort-static": lambda: bench.run_ort(static=True),
        "ort-static-smoothquant": lambda: bench.run_ort(static=True, smooth=True),
        "magnitude-2:4": lambda: bench.run_sparse(
            "magnitude-2:4", sk.MagnitudePruningConfig(pattern="2:4"), None),
        "wanda-2:4": lambda: bench.run_sparse("wanda-2:4", WandaConfig(pattern="2:4"),
                                              bench.calib),
        "sparsegpt-2:4": lambda: bench.run_sparse("sparsegpt-2:4", SparseGPTConfig(pattern="2:4"),
                                                  bench.calib),
        "sparsegpt-50+int4": bench.run_sparsegpt_int4,
        "sparsegpt-2:4+w8a8": bench.run_sparsegpt_24_w8a8,
        "static-w8a8-existing": bench.run_static_existing,
        "nncf-smoothquant": bench.run_nncf,
    }
    for name in plan:   # the order above: the goals' rows first
        if name not in rows:
            continue
        try:
            plan[name]()
        except Exception as e:
            traceback.print_exc()
            bench.row(name, error=f"{type(e).__name__}: {str(e)[:500]}")
        gc.collect()
    print_table(bench.results)


def goals(results: dict) -> dict:
    """The issue's goals, computed from the rows present (None where a row is missing)."""
    rows = results.get("rows", {})

    def ppl(name):
        return rows.get(name, {}).get("perplexity")

    out = {}
    base, mag, sg, wd = ppl("fp32"), ppl("magnitude-50"), ppl("sparsegpt-50"), ppl("wanda-50")
    if base and mag and sg:
        share = (sg - base) / (mag - base)
        out["sparsegpt_50_increase_share_of_magnitude"] = {
            "value": share, "goal": "<= 0.25", "met": share <= 0.25}
    if base and mag and sg and wd:
        out["wanda_50_between_or_better"] = {"value": wd, "goal": f"<= {mag:.3f}",
                                             "met": wd <= mag}
    naive, sq = ppl("naive-w8a8"), ppl("smoothquant-0.5")
    if base and sq:
        rel = sq / base - 1
        out["smoothquant_0.5_within_3pct"] = {"value": rel, "goal": "<= 0.03", "met": rel <= 0.03,
                                              "naive_static_increase": (naive / base - 1)
                                              if naive else None}
    fp, dyn = rows.get("fp32", {}).get("prefill_ms"), rows.get("dynamic-int8", {}).get("prefill_ms")
    sq_ms = rows.get("smoothquant-0.5", {}).get("prefill_ms")
    if fp and dyn and sq_ms:
        out["smoothquant_speedup_vs_dynamic"] = {
            "smoothquant": fp / sq_ms, "dynamic_int8": fp / dyn, "met": fp / sq_ms >= fp / dyn}
    head = rows.get("sparsegpt-50", {})
    if head.get("prune_s") is not None:
        out["sparsegpt_time"] = {"seconds": head["prune_s"], "calibration": head.get("calibration"),
                                 "goal": "< 300 s on 128 x 512 tokens",
                                 "met": head["prune_s"] < 300 and head.get("calibration") ==
                                 "128 x 512 tokens"}
        out["sparsegpt_memory"] = {"model_multiple": head.get("memory_as_model_multiple"),
                                   "goal": "<= 2.0",
                                   "met": (head.get("memory_as_model_multiple") or 99) <= 2.0}
    return out


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SmolLM2-135M: W8A8 and one-shot sparsity (ORT, 2 threads)")
    for col in ("row", "perplexity", "vs fp32", "file MB", "prefill ms", "speed-up", "notes"):
        table.add_column(col, justify="left" if col in ("row", "notes") else "right")
    rows = results.get("rows", {})
    base = rows.get("fp32", {})
    for name, r in rows.items():
        if name == "minilm":
            continue
        ppl = r.get("perplexity")
        rel = f"{100 * (ppl / base['perplexity'] - 1):+.1f}%" if ppl and base.get("perplexity") \
            else ""
        sp = (f"{base['prefill_ms'] / r['prefill_ms']:.2f}x" if r.get("prefill_ms")
              and base.get("prefill_ms") and r.get("kind") != "slimkit-sparse" else "")
        note = r.get("error") or r.get("note") or ""
        table.add_row(name, f"{ppl:.3f}" if ppl else "-", rel,
                      f"{r['file_mb']:.1f}" if r.get("file_mb") else "-",
                      f"{r['prefill_ms']:.0f}" if r.get("prefill_ms") else "-", sp, note[:80])
    Console(width=160).print(table)
    if "minilm" in rows:
        t = Table(title="MiniLM: cosine to fp32 embeddings")
        for col in ("method", "mean", "min"):
            t.add_column(col)
        for name, r in rows["minilm"].get("methods", {}).items():
            t.add_row(name, f"{r.get('cosine_mean', float('nan')):.4f}",
                      f"{r.get('cosine_min', float('nan')):.4f}")
        Console(width=160).print(t)


if __name__ == "__main__":
    main()
