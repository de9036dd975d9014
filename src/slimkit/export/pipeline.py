"""The deploy pipeline every exporter shares: copy, pre-export hooks, strip, post-export hooks.

``sk.export_onnx``, ``sk.export_packed``, ``sk.report`` of a module, the conformance kit and
other exporters (the causal-LM export) all turn a prepared model into its deployable form the
same way, asking each applied technique through the protocol only:

1. :func:`deployable`: a deep copy (the caller's model is untouched), every applied
   technique's ``pre_export`` in stage order, ``sk.strip``, eval mode, no gradients;
2. the exporter writes an ``onnx.ModelProto`` in memory;
3. :func:`finish`: every technique's ``post_export`` in stage order (each sees in
   ``ctx.rewritten`` which initializers earlier hooks replaced), the storage layer's compact
   form when asked, the exporter's debug metadata dropped; the proto is then validated and
   written once.

Example:
    >>> ctx = ExportContext(records=records(model))
    >>> plain = deployable(model, ctx)
    >>> proto = finish(torch.onnx.export(plain, (x,), dynamo=True).model_proto, ctx)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch.nn as nn

from slimkit.core.parametrize import strip
from slimkit.core.records import records
from slimkit.core.registry import get_technique
from slimkit.core.technique import Technique


@dataclass
class ExportContext:
    """What a technique's export hooks see and may adjust.

    ``compact``: the caller asked for the compact storage form (weights with few values as
    indices + codebook). ``atol`` / ``rtol``: the validation tolerance; a hook may widen it
    with :meth:`suggest_tolerance` (quantized arithmetic differs from float by design) unless
    the caller set one explicitly. ``records``: the techniques applied to the model.
    ``notes``: per-technique scratch space (``ctx.notes[technique name]``), filled by
    ``pre_export`` and read by ``post_export``. ``rewritten``: initializer name -> the
    technique whose ``post_export`` replaced it (see :meth:`mark_rewritten`).
    ``keep_metadata``: keep the exporter's per-node debug metadata (stack traces, fx node
    names: ~1 KB per node, nothing ORT reads); dropped by default. ``quantized``: set by
    :meth:`expect_quantized` when the deployed arithmetic is quantized; validation then
    accepts an output whose error is small against its scale and the quantization step
    (:class:`slimkit.export.validation.QuantizedCheck`), not only element by element.
    """

    compact: bool = False
    atol: float = 1e-4
    rtol: float = 1e-3
    user_tolerance: bool = False
    records: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    rewritten: dict = field(default_factory=dict)
    keep_metadata: bool = False
    quantized: object = None

    def expect_quantized(self, output_step: float = 0.0, rel_rms: float = 0.03) -> None:
        """Judge the file as a quantized one (unless the caller set a tolerance): the RMS of
        ``ort - torch`` within ``rel_rms`` of the output's RMS or a few ``output_step``, top-1
        kept where torch's lead is clear. Called by several techniques, the widest holds.
        See :mod:`slimkit.export.validation`."""
        from slimkit.export.validation import QuantizedCheck

        if self.user_tolerance:
            return
        if self.quantized is not None:
            output_step = max(output_step, self.quantized.output_step)
            rel_rms = max(rel_rms, self.quantized.rel_rms)
        self.quantized = QuantizedCheck(rel_rms=rel_rms, output_step=output_step)

    def suggest_tolerance(self, atol: float, rtol: float) -> None:
        """Widen the validation tolerance to at least ``atol`` / ``rtol`` (unless user-set)."""
        if not self.user_tolerance:
            self.atol, self.rtol = max(self.atol, atol), max(self.rtol, rtol)

    def mark_rewritten(self, name: str, technique: str) -> None:
        """Say that ``technique``'s hook replaced the initializer ``name``."""
        self.rewritten[name] = technique


def techniques_of(model_or_records) -> list[Technique]:
    """The techniques applied to a model (or named in a records list), each once, in the
    order their export hooks run: by stage order, then by when they were applied."""
    recs = model_or_records if isinstance(model_or_records, list) else records(model_or_records)
    seen, out = set(), []
    for rec in recs:
        if rec["technique"] not in seen:
            seen.add(rec["technique"])
            out.append(get_technique(rec["technique"]))
    return sorted(out, key=lambda t: t.order)  # stable: ties keep the order of application


def deployable(model: nn.Module, ctx: ExportContext | None = None, *,
               hooks: bool = True) -> nn.Module:
    """A stripped, eval-mode deep copy of ``model`` after every technique's ``pre_export``.

    ``hooks=False`` skips the hooks: the stripped weights and state as they are, for formats
    that store the model itself rather than its ONNX form (``sk.export_packed``).
    """
    ctx = ctx if ctx is not None else ExportContext(records=records(model))
    if not ctx.records:
        ctx.records = records(model)
    work = copy.deepcopy(model)
    for tech in techniques_of(ctx.records) if hooks else []:
        tech.pre_export(work, ctx)
    plain = strip(work).eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    return plain


def finish(proto, ctx: ExportContext, techniques: list[Technique] | None = None):
    """Run the post-export hooks in stage order and the storage passes on ``proto``."""
    for tech in techniques if techniques is not None else techniques_of(ctx.records):
        proto = tech.post_export(proto, ctx) or proto
    if ctx.compact:
        from slimkit.storage.codebook import compact_graph

        compact_graph(proto.graph, skip=set())
    require_opset_for_int4(proto)
    if not ctx.keep_metadata:
        drop_debug_metadata(proto)
    return proto


def require_opset_for_int4(proto) -> None:
    """Raise the default-domain opset to 21 when the graph holds INT4 / UINT4 tensors.

    INT4 initializers and blocked DequantizeLinear need opset 21; from opset 20 to 21 only
    type support changed, so raising it is safe.
    """
    from onnx import TensorProto

    small = (TensorProto.INT4, TensorProto.UINT4)
    if not any(i.data_type in small for i in proto.graph.initializer):
        return
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < 21:
            op.version = 21


def drop_debug_metadata(proto) -> None:
    """Remove the exporter's per-node annotations (torch stack traces, fx node names).

    About 1 KB per node: a fifth of a small int8 file, and they say nothing at run time.
    """
    def clean(graph):
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.g is not None and attr.HasField("g"):
                    clean(attr.g)
                for sub in attr.graphs:
                    clean(sub)

    clean(proto.graph)
