"""How an exported file is judged against the torch model, and where it diverges when it fails.

Two criteria, chosen by what the deployed arithmetic is:

- **float exports**: every output element within ``atol + rtol * |torch|`` (1e-4 / 1e-3 by
  default): a float graph computes what torch computes up to summation order;
- **quantized exports** (a technique set ``ExportContext.quantized``): ONNX Runtime's int8
  kernels and the torch fake-quant simulation agree only up to rounding flips that add up
  over many layers (measured on random-initialised BERT-base: 0.05-0.15 max abs diff for
  correct files), and ORT replaces ``DequantizeLinear -> MatMul`` by its ``MatMulNBits``
  kernel at the EXTENDED level, which quantizes the activations to int8 per block (accuracy
  level 4). What matters is the size of the error against the output and against the
  quantization step: an output passes when the root-mean-square of ``ort - torch`` is at most
  ``max(rel_rms * rms(torch), steps * output step)`` and every row whose torch top-1 leads by
  more than eight such bounds keeps its top-1. A real mismatch (a BatchNorm folded into a weight
  but not into its bias: 14% RMS error) is far outside it.

When a file fails, :func:`diagnose_layers` runs the file again with the intermediate values
exposed and names the layer whose output diverges first and the one that diverges most
(each torch layer's output is matched to the closest ONNX value of the same shape).

Example:
    >>> check = QuantizedCheck(rel_rms=0.03, steps=4.0, output_step=0.02)
    >>> verdict = judge(ort_outputs, torch_outputs, names, atol=1e-4, rtol=1e-3, quantized=check)
    >>> verdict.passed, verdict.message
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn


@dataclass
class QuantizedCheck:
    """The statistical criterion of a quantized export (see the module docstring).

    Fields:
        rel_rms: the largest accepted RMS of ``ort - torch`` relative to the RMS of the torch
            output (3%; correct int8 files measured at most 0.7% on a 50-layer CNN and a
            12-layer transformer).
        steps: the bound is at least this many output quantization steps (``output_step``).
        output_step: the step of the quantizer that produces the model's output, when the
            caller knows it (0: none). Not the largest step of any layer: that let a 3x
            error in a CNN's stem (9.6% RMS at the output) pass.
        floor: the bound is at least this (an output that is all zeros).

    A quantized file is judged by this criterion only: the element-wise tolerance widened
    to two steps of the widest layer accepted the same 3x error.
    """

    rel_rms: float = 0.03
    steps: float = 4.0
    output_step: float = 0.0
    floor: float = 1e-4

    def bound(self, ref: np.ndarray) -> float:
        rms = float(np.sqrt(np.mean(np.square(ref, dtype=np.float64)))) if ref.size else 0.0
        return max(self.rel_rms * rms, self.steps * self.output_step, self.floor)


@dataclass
class OutputFigures:
    """How one ONNX Runtime output compares with torch."""

    name: str
    max_abs: float
    rms: float
    bound: float = float("nan")
    ref_rms: float = 0.0
    cosine: float = 1.0
    top1: float = 1.0
    top1_flips: int = 0

    @property
    def rel_rms(self) -> float:
        return self.rms / self.ref_rms if self.ref_rms > 0 else (0.0 if self.rms == 0 else
                                                                  float("inf"))


@dataclass
class Verdict:
    passed: bool
    message: str = ""
    worst: float = 0.0
    output: str = ""
    figures: list = field(default_factory=list)


def _figures(name: str, got: np.ndarray, ref: np.ndarray) -> OutputFigures:
    g, r = got.astype(np.float64), ref.astype(np.float64)
    d = g - r
    f = OutputFigures(name, float(np.abs(d).max()) if d.size else 0.0,
                      float(np.sqrt(np.mean(d * d))) if d.size else 0.0,
                      ref_rms=float(np.sqrt(np.mean(r * r))) if r.size else 0.0)
    a, b = r.ravel(), g.ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    f.cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
    return f


def _top1(f: OutputFigures, got: np.ndarray, ref: np.ndarray, margin: float) -> None:
    """Top-1 agreement along the last axis; a flip counts only where torch's lead over its
    runner-up exceeds ``margin`` (a near-tie may flip under any correct rounding)."""
    if ref.ndim < 2 or ref.shape[-1] < 2 or not np.issubdtype(ref.dtype, np.floating):
        return
    r = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    g = got.reshape(-1, got.shape[-1]).astype(np.float64)
    top = r.argmax(-1)
    same = g.argmax(-1) == top
    f.top1 = float(same.mean())
    two = np.sort(r, -1)[:, -2:]
    lead = two[:, 1] - two[:, 0]
    f.top1_flips = int(np.sum(~same & (lead > margin)))


def judge(outs: list, refs: list, names: list[str], *, atol: float, rtol: float,
          quantized: QuantizedCheck | None = None) -> Verdict:
    """Compare ONNX Runtime outputs with torch's: the float criterion, then (for a quantized
    export) the statistical one. ``refs`` are numpy arrays or tensors."""
    verdict = Verdict(True)
    for name, got, ref in zip(names, outs, refs):
        ref = ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
        got = np.asarray(got)
        if got.shape != ref.shape:
            return Verdict(False, f"output {name!r}: ONNX Runtime shape {got.shape} != torch "
                                  f"shape {ref.shape}", float("inf"), name)
        if not np.issubdtype(ref.dtype, np.floating):
            if not np.array_equal(got, ref):
                return Verdict(False, f"output {name!r} ({ref.dtype}) differs from torch",
                               float("inf"), name)
            continue
        f = _figures(name, got, ref)
        verdict.figures.append(f)
        verdict.worst = max(verdict.worst, f.max_abs)
        if quantized is None:
            diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
            if np.all(diff <= atol + rtol * np.abs(ref)):
                continue
            return Verdict(False, f"ONNX Runtime output {name!r} differs from torch: max abs "
                                  f"diff {f.max_abs:.4g} exceeds atol={atol} + rtol={rtol}*|torch|",
                           f.max_abs, name, verdict.figures)
        f.bound = quantized.bound(ref)
        # An element may move several RMS bounds (the max of many); two of them moving
        # against each other by 4 bounds each is what correct rounding can do to a lead.
        _top1(f, got, ref, 8.0 * f.bound)
        if f.rms > f.bound or f.top1_flips:
            rule = f"{100 * quantized.rel_rms:g}% of the output RMS"
            if quantized.output_step > 0:
                rule = (f"max({rule}, {quantized.steps:g} output steps of "
                        f"{quantized.output_step:.4g})")
            why = (f"RMS error {f.rms:.4g} ({100 * f.rel_rms:.2f}% of the output's RMS "
                   f"{f.ref_rms:.4g}) exceeds the quantized-export bound {f.bound:.4g} "
                   f"({rule})"
                   if f.rms > f.bound else
                   f"{f.top1_flips} row(s) changed their top-1 class although torch's lead "
                   f"exceeded {8 * f.bound:.4g}")
            return Verdict(False, f"ONNX Runtime output {name!r} differs from the torch "
                                  f"fake-quant model: {why}; max abs diff {f.max_abs:.4g}, "
                                  f"cosine {f.cosine:.5f}, top-1 agreement {f.top1:.3f}",
                           f.max_abs, name, verdict.figures)
    return verdict


# ----------------------------------------------------------------------------------------
# Where a failing file diverges


@dataclass
class LayerDivergence:
    layer: str
    rel_rms: float       # RMS(ort - torch) / RMS(torch) of the layer's output
    max_abs: float
    onnx_value: str


def _leaf_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with parameters of their own (the layers worth naming)."""
    out = []
    for name, m in model.named_modules():
        if not name:
            continue
        if any(True for _ in m.parameters(recurse=False)):
            out.append((name, m))
    return out


def _first_rows(inputs, rows: int):
    def cut(x):
        return x[:rows] if isinstance(x, torch.Tensor) and x.dim() > 0 else x

    if isinstance(inputs, dict):
        return {k: cut(v) for k, v in inputs.items()}
    if isinstance(inputs, torch.Tensor):
        return cut(inputs)
    return tuple(cut(x) for x in inputs)


def diagnose_layers(model: nn.Module, proto, inputs, *, rows: int = 2,
                    max_values: int = 4000) -> list[LayerDivergence]:
    """Each layer's output divergence between torch and the ONNX file, in execution order.

    Runs ``model`` with forward hooks and the file in ONNX Runtime with every intermediate
    float value exposed as an output (which keeps ORT from fusing those values away: the
    figures are those of the unfused graph), on the first ``rows`` rows of ``inputs``. Each
    layer's output is matched to the ONNX value of the same shape closest to it.
    """
    import onnx

    from slimkit.core.batch import call_model, flatten_outputs, input_tensors

    small = _first_rows(inputs, rows)
    captured: list[tuple[str, np.ndarray]] = []
    probes: list[torch.Tensor] = []
    hooks = []
    for name, m in _leaf_layers(model):
        def hook(_m, _args, out, name=name):
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                captured.append((name, out.detach().float().numpy().copy()))
                # A zero probe: its gradient says whether this output reaches the model's
                # outputs (a pooler the model never returns has no counterpart in the file).
                probe = torch.zeros_like(out, requires_grad=True)
                probes.append(probe)
                return out + probe
            return None
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            outs = flatten_outputs(call_model(model, small))
        used = _reaching(outs, probes)
    finally:
        for h in hooks:
            h.remove()
    captured = [c for c, keep in zip(captured, used) if keep]
    if not captured:
        return []

    work = onnx.ModelProto()
    work.CopyFrom(proto)
    graph = work.graph
    typed = {v.name: v for v in list(graph.value_info) + list(graph.output)}
    # Values computed from initializers only are constants: never a layer's output.
    const = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.input and all(i in const or not i for i in node.input):
            const.update(node.output)
    have = {o.name for o in graph.output}
    exposed = []
    for node in graph.node:
        for out in node.output:
            v = typed.get(out)
            if (out and out not in const and out not in have and v is not None
                    and v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT):
                graph.output.append(v)
                exposed.append(out)
                if len(exposed) >= max_values:
                    break
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(work.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    feeds = {i.name: x.detach().cpu().numpy()
             for i, x in zip(sess.get_inputs(), input_tensors(small))}
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, feeds)))
    by_shape: dict = {}
    for n in exposed + [o.name for o in proto.graph.output]:
        if n in values:
            by_shape.setdefault(values[n].shape, []).append(n)
    result = []
    for layer, ref in captured:
        best = None
        rms_ref = float(np.sqrt(np.mean(np.square(ref, dtype=np.float64)))) or 1.0
        for n in by_shape.get(ref.shape, []):
            d = values[n].astype(np.float64) - ref
            rel = float(np.sqrt(np.mean(d * d))) / rms_ref
            if best is None or rel < best.rel_rms:
                best = LayerDivergence(layer, rel, float(np.abs(d).max()), n)
        if best is not None:
            result.append(best)
    return result


def _reaching(outs: list, probes: list) -> list[bool]:
    """Which probes the outputs depend on (all, if autograd cannot tell)."""
    floats = [o for o in outs if o.is_floating_point() and o.requires_grad]
    if not floats or not probes:
        return [True] * len(probes)
    gen = torch.Generator().manual_seed(0)
    loss = sum((o.float() * torch.randn(o.shape, generator=gen)).sum() for o in floats)
    try:
        grads = torch.autograd.grad(loss, probes, allow_unused=True)
    except RuntimeError:
        return [True] * len(probes)
    used = [g is not None and bool(g.abs().sum() > 0) for g in grads]
    # A quantize op cuts the autograd graph: trust "unused" only when the gradient reaches
    # the first layer, i.e. the graph is whole.
    return used if used[0] else [True] * len(probes)


def describe_divergence(layers: list[LayerDivergence], threshold: float) -> str:
    """One sentence naming the first layer above ``threshold`` and the worst layer."""
    if not layers:
        return "no layer output could be matched to an ONNX value"
    worst = max(layers, key=lambda d: d.rel_rms)
    first = next((d for d in layers if d.rel_rms > threshold), None)
    if first is None:
        return (f"no single layer diverges beyond {100 * threshold:g}% RMS when ORT's fusions "
                f"are kept apart (largest: {worst.layer}, {100 * worst.rel_rms:.2f}%): the "
                "difference comes from ONNX Runtime's fused kernels")
    text = (f"layer {first.layer!r} diverges first ({100 * first.rel_rms:.2f}% RMS error, max "
            f"abs diff {first.max_abs:.4g})")
    if worst.layer != first.layer:
        text += f"; {worst.layer!r} diverges most ({100 * worst.rel_rms:.2f}% RMS error)"
    return text
