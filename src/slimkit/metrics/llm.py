"""Deployment metrics of an exported causal LM: size, prefill latency, decode speed, perplexity.

The artifact is the KV-cache decoder :func:`slimkit.export.causal_lm.export_causal_lm` writes
(a folder with ``model.onnx``, or the file itself). What is measured, all in ONNX Runtime on
the CPU with ``threads`` intra-op threads:

- **file size**: the ``.onnx`` file plus any external-data files beside it;
- **prefill latency**: one call on ``batch x prompt_len`` tokens with an empty cache (median
  of ``runs`` after a warm-up call): the time to first token;
- **decode speed**: after a prefill of ``decode_prompt`` tokens, ``new_tokens`` greedy steps
  of one token each with the cache (median of ``decode_runs`` runs): tokens per second;
- **perplexity** on a text through :func:`slimkit.metrics.perplexity.perplexity`, and any
  figures of the user's ``eval_fn(decoder)``.

Example:
    >>> rep = llm_report("smollm2-int4", tokenizer=tok, text=heldout_text, max_tokens=4096)
    >>> print(rep)                            # a rich table
    >>> rep.to_json("smollm2-int4/report.json")
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


def decoder_path(target: str | os.PathLike) -> Path:
    """The decoder file of an artifact: ``target`` itself or ``target/model.onnx``."""
    path = Path(target)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file() or path.suffix != ".onnx":
        raise FileNotFoundError(
            f"{target}: expected an exported decoder (.onnx) or a folder holding model.onnx")
    return path


def artifact_bytes(path: str | os.PathLike) -> int:
    """Bytes of an ONNX file plus the external-data files it references."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    extra = set()
    for t in _get_all_tensors(proto):
        if uses_external_data(t):
            for kv in t.external_data:
                if kv.key == "location":
                    extra.add(kv.value)
    return total + sum((path.parent / e).stat().st_size for e in extra)


def prefill_latency(decoder, prompt_len: int = 512, batch: int = 1, runs: int = 5,
                    warmup: int = 1, seed: int = 0, vocab: int = 1000) -> dict:
    """Median / min milliseconds of a prefill of ``batch x prompt_len`` random tokens."""
    from slimkit.export.generate import OrtDecoder

    dec = decoder if isinstance(decoder, OrtDecoder) else OrtDecoder(decoder)
    ids = np.random.default_rng(seed).integers(0, vocab, (batch, prompt_len), dtype=np.int64)
    past = dec.empty_past(batch)
    for _ in range(warmup):
        dec.step(ids, past)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        dec.step(ids, past)
        times.append(1000 * (time.perf_counter() - start))
    return {"p50_ms": float(np.median(times)), "min_ms": float(np.min(times)), "runs": runs,
            "batch": batch, "prompt_len": prompt_len}


def decode_speed(decoder, new_tokens: int = 128, prompt_len: int = 32, runs: int = 3,
                 seed: int = 0, vocab: int = 1000) -> dict:
    """Tokens per second of ``new_tokens`` greedy one-token steps after a short prefill.

    The prefill is not timed; each timed step feeds the previous argmax token and the cache,
    exactly as :func:`slimkit.export.generate.greedy_generate` does (batch 1).
    """
    from slimkit.export.generate import OrtDecoder

    dec = decoder if isinstance(decoder, OrtDecoder) else OrtDecoder(decoder)
    ids = np.random.default_rng(seed).integers(0, vocab, (1, prompt_len), dtype=np.int64)
    rates = []
    for r in range(runs + 1):  # a short first run warms the kernels up and is not counted
        steps = new_tokens if r else min(16, new_tokens)
        logits, past = dec.step(ids, dec.empty_past(1))
        start = time.perf_counter()
        for _ in range(steps):
            nxt = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
            logits, past = dec.step(nxt, past)
        if r:
            rates.append(steps / (time.perf_counter() - start))
    return {"tokens_per_s": float(np.median(rates)), "best_tokens_per_s": float(np.max(rates)),
            "new_tokens": new_tokens, "prompt_len": prompt_len, "runs": runs, "batch": 1}


@dataclass
class LLMReport:
    """Deployment metrics of one exported causal LM; build it with :func:`llm_report`.

    Sizes in bytes, latency in milliseconds, speed in tokens per second. ``perplexity`` is the
    dict of :func:`~slimkit.metrics.perplexity.perplexity`; ``metrics`` holds ``eval_fn``'s
    figures; ``ops`` counts the node types of the file (e.g. ``MatMulNBits``).

    Example:
        >>> rep = llm_report("int4", tokenizer=tok, text=text)
        >>> base = llm_report("fp32", tokenizer=tok, text=text)
        >>> rep.compare(base)["decode_tokens_per_s"]          # 2.6: 2.6x the fp32 speed
    """

    name: str
    artifact: str
    file_bytes: int
    threads: int
    prefill: dict | None = None
    decode: dict | None = None
    perplexity: dict | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> LLMReport:
        data = dict(data)
        version = data.pop("version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"LLM report format {version} is newer than this slimkit reads")
        return cls(**data)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """JSON text; with ``path``, also written there atomically."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from slimkit.core.io import write_text

            write_text(path, text)
        return text

    def figures(self) -> dict[str, float | None]:
        """The headline numbers by key (None where not measured)."""
        return {
            "file_bytes": self.file_bytes,
            "prefill_ms": (self.prefill or {}).get("p50_ms"),
            "decode_tokens_per_s": (self.decode or {}).get("tokens_per_s"),
            "perplexity": (self.perplexity or {}).get("perplexity"),
        }

    def compare(self, baseline: LLMReport) -> dict[str, float]:
        """Gains over ``baseline``: ``file_bytes`` and ``prefill_ms`` as baseline / self (2.0:
        half the size or time), ``decode_tokens_per_s`` as self / baseline (2.0: twice the
        speed), ``perplexity`` as the difference self - baseline."""
        mine, base = self.figures(), baseline.figures()
        out = {}
        for key in mine:
            a, b = mine[key], base[key]
            if a is None or b is None:
                continue
            if key == "perplexity":
                out[key] = a - b
            elif key == "decode_tokens_per_s":
                out[key] = a / b
            else:
                out[key] = b / a
        return out

    def table(self):
        from rich.table import Table

        table = Table(title=f"LLM deployment report: {self.name}", title_justify="left")
        table.add_column("Metric")
        table.add_column("Value", justify="right")
        table.add_row("File size", f"{self.file_bytes / 1e6:.1f} MB")
        if self.prefill:
            table.add_row(f"Prefill latency (b{self.prefill['batch']} x "
                          f"{self.prefill['prompt_len']}, p50)", f"{self.prefill['p50_ms']:.1f} ms")
        if self.decode:
            table.add_row(f"Decode speed (b1, {self.decode['new_tokens']} new tokens)",
                          f"{self.decode['tokens_per_s']:.1f} tokens/s")
        if self.perplexity:
            p = self.perplexity
            table.add_row(f"Perplexity ({p['tokens']} tokens, window {p['window']})",
                          f"{p['perplexity']:.3f}")
        for key, value in self.metrics.items():
            table.add_row(key, f"{value:.4f}")
        table.add_row("Threads", str(self.threads))
        if self.ops.get("MatMulNBits"):
            table.add_row("MatMulNBits nodes", str(self.ops["MatMulNBits"]))
        return table

    def __rich__(self):
        return self.table()

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=100, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
        console.print(self.table())
        return console.export_text()


def llm_report(
    target: str | os.PathLike,
    *,
    tokenizer=None,
    text: str | None = None,
    eval_fn: Callable | None = None,
    window: int = 512,
    max_tokens: int | None = None,
    prompt_len: int = 512,
    new_tokens: int = 128,
    threads: int = 2,
    latency_runs: int = 5,
    decode_runs: int = 3,
    name: str | None = None,
) -> LLMReport:
    """Measure an exported decoder: file size, prefill latency, decode speed, perplexity.

    Args:
        target: the folder of :func:`~slimkit.export.causal_lm.export_causal_lm` or its
            ``model.onnx``.
        tokenizer, text: perplexity on ``text`` (first ``max_tokens`` tokens, windows of
            ``window``); both or neither.
        eval_fn: ``eval_fn(decoder)`` -> a float or a dict of floats; ``decoder`` is an
            :class:`~slimkit.export.generate.OrtDecoder` (``.step``, ``.logits``).
        prompt_len: prefill tokens (batch 1); ``latency_runs=0`` skips prefill timing.
        new_tokens: decode steps timed; ``decode_runs=0`` skips decode timing.
    """
    from slimkit.export.generate import OrtDecoder
    from slimkit.metrics.latency import cpu_session
    from slimkit.metrics.perplexity import perplexity

    if (tokenizer is None) != (text is None):
        raise ValueError("perplexity needs both tokenizer= and text= (or neither)")
    path = decoder_path(target)
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    vocab = next((d.dim_value for o in proto.graph.output if o.name == "logits"
                  for d in o.type.tensor_type.shape.dim[-1:] if d.dim_value), 1000)
    del proto
    dec = OrtDecoder(cpu_session(path, threads))
    rep = LLMReport(name=name or Path(target).name, artifact=str(path),
                    file_bytes=artifact_bytes(path), threads=threads, ops=ops)
    if latency_runs:
        rep.prefill = prefill_latency(dec, prompt_len=prompt_len, runs=latency_runs,
                                      vocab=vocab)
    if decode_runs:
        rep.decode = decode_speed(dec, new_tokens=new_tokens, runs=decode_runs, vocab=vocab)
    if tokenizer is not None:
        rep.perplexity = perplexity(dec.session, tokenizer, text, window=window,
                                    max_tokens=max_tokens)
    if eval_fn is not None:
        value = eval_fn(dec)
        rep.metrics = ({k: float(v) for k, v in value.items()} if isinstance(value, dict)
                       else {"eval": float(value)})
    return rep
