"""The conformance checks. Each takes an entry (and a zoo model for per-model checks), raises
:class:`ConformanceError` when the technique breaks its promise, and returns a short note of
what it measured (shown in the pass table).

Example:
    >>> check_strip(entry, ZOO["lstm"])
    'exact'
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize

import slimkit as sk
from slimkit.core.batch import call_model, flatten_outputs
from slimkit.core.parametrize import slim_parametrizations
from slimkit.testing import workbench as wb
from slimkit.testing.entry import ConformanceEntry, source_checkout
from slimkit.testing.zoo import ZOO, ZooModel


class ConformanceError(AssertionError):
    """A technique does not do what its conformance entry promises."""


class CheckSkipped(Exception):
    """The check cannot run here (e.g. an optional model is not installed)."""


def _fail(entry: ConformanceEntry, check: str, message: str):
    raise ConformanceError(f"{entry.name} [{check}]: {message}")


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((float((x.double() - y.double()).abs().max()) if x.numel() else 0.0)
               for x, y in zip(a, b))


def _same(entry, check, a, b, exact: bool, atol: float, what: str) -> str:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        _fail(entry, check, f"{what}: output shapes differ: {[tuple(x.shape) for x in a]} vs "
                            f"{[tuple(y.shape) for y in b]}")
    if exact:
        if not all(torch.equal(x, y) for x, y in zip(a, b)):
            _fail(entry, check, f"{what}: outputs differ (max abs diff {_max_diff(a, b):.3g}); "
                                "they must be bit-identical")
        return "exact"
    d = _max_diff(a, b)
    if not d <= atol:
        _fail(entry, check, f"{what}: max abs diff {d:.3g} exceeds {atol:g}")
    return f"max diff {d:.2g}"


# -- config ---------------------------------------------------------------------------------------

def check_config(entry: ConformanceEntry) -> str:
    """The technique is registered for the config's class, and every declared bad value
    raises a ValueError (or TypeError) that names the field."""
    config = entry.config()
    try:
        tech = sk.get_technique(entry.technique)
    except ValueError as e:
        _fail(entry, "config", f"not registered: {e}")
    if not isinstance(config, tech.config_cls):
        _fail(entry, "config", f"config is a {type(config).__name__}; {entry.technique!r} is "
                               f"registered with {tech.config_cls.__name__}")
    if not entry.invalid:
        _fail(entry, "config", "declare at least one bad value in ConformanceEntry.invalid "
                               "({field: value the config must refuse})")
    names = {f.name for f in dataclasses.fields(config)}
    for name, value in entry.invalid.items():
        if name not in names:
            _fail(entry, "config", f"ConformanceEntry.invalid names {name!r}, which "
                                   f"{type(config).__name__} has not; fields: {sorted(names)}")
        try:
            dataclasses.replace(config, **{name: value})
        except (ValueError, TypeError) as e:
            if name not in str(e):
                _fail(entry, "config", f"{name}={value!r} raised an error that does not name "
                                       f"the field: {e}")
            continue
        _fail(entry, "config", f"{type(config).__name__}({name}={value!r}) was accepted; "
                               "it must raise a ValueError naming the field")
    return f"{len(entry.invalid)} bad value(s) refused"


def check_json(entry: ConformanceEntry) -> str:
    """``to_dict`` -> ``json.dumps`` -> ``json.loads`` -> ``Config.from_dict`` gives an equal config."""
    config = entry.config()
    data = config.to_dict()
    try:
        text = json.dumps(data)
    except TypeError as e:
        _fail(entry, "json", f"to_dict() is not JSON-safe: {e}")
    back = sk.Config.from_dict(json.loads(text))
    if type(back) is not type(config) or back != config:
        _fail(entry, "json", f"round trip changed the config: {config!r} -> {back!r}")
    if back.to_dict() != data:
        _fail(entry, "json", "to_dict() of the round-tripped config differs")
    return f"{len(text)} bytes"


# -- per zoo model -------------------------------------------------------------------------------

def check_prepare(entry: ConformanceEntry, case: ZooModel) -> str:
    """Prepare a fresh model: it is recorded, keeps its output shapes, gives finite outputs,
    trains (finite gradients reach the parameters) and steps its schedule."""
    plain = case.build(0)
    inputs = case.example()
    before = wb.outputs(plain, inputs)
    model = wb.prepare(entry, plain, case)
    recs = sk.records(model)
    if not recs:
        _fail(entry, "prepare", f"{case.name}: nothing was recorded on the model "
                                "(prepare through sk.apply / register_technique)")
    after = wb.outputs(model, inputs)
    if [t.shape for t in after] != [t.shape for t in before]:
        _fail(entry, "prepare", f"{case.name}: output shapes changed from "
                                f"{[tuple(t.shape) for t in before]} to "
                                f"{[tuple(t.shape) for t in after]}")
    if not all(torch.isfinite(t).all() for t in after):
        _fail(entry, "prepare", f"{case.name}: the prepared model gives non-finite outputs")
    wb.train_steps(model, case, 1)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        _fail(entry, "prepare", f"{case.name}: no parameter received a gradient")
    if not all(torch.isfinite(g).all() for g in grads):
        _fail(entry, "prepare", f"{case.name}: non-finite gradients")
    sites = sum(1 for _ in slim_parametrizations(model))
    return f"{len(recs)} record(s), {sites} parametrized tensor(s)"


def check_state_dict(entry: ConformanceEntry, case: ZooModel) -> str:
    """A trained prepared model's state_dict loads (strict) into a freshly prepared model of a
    different initialisation, which then gives exactly the same outputs."""
    src = wb.prepared(entry, case, seed=0)
    dst = wb.prepared(entry, case, seed=1, steps=0)
    state = src.state_dict()
    try:
        dst.load_state_dict(state, strict=True)
    except RuntimeError as e:
        _fail(entry, "state_dict", f"{case.name}: does not load into a freshly prepared model: "
                                   f"{str(e)[:500]}")
    inputs = case.example()
    _same(entry, "state_dict", wb.outputs(src, inputs), wb.outputs(dst, inputs), True, 0.0,
          case.name)
    return f"{len(state)} tensors, exact"


def check_strip(entry: ConformanceEntry, case: ZooModel) -> str:
    """``sk.strip`` leaves a plain module (no parametrization, only structural records) with
    the same outputs: exactly, or within ``strip_atol`` for techniques that declare it."""
    model = wb.prepared(entry, case)
    inputs = case.example()
    ref = wb.outputs(model, inputs)
    plain = sk.strip(model)
    if plain is not model:
        _fail(entry, "strip", "sk.strip must return the model it stripped")
    left = [n for n, m in plain.named_modules() if parametrize.is_parametrized(m)]
    if left:
        _fail(entry, "strip", f"{case.name}: parametrizations left on {left[:5]}")
    # Only records whose technique says its state outlives strip may stay, marked stripped.
    kept = [r["technique"] for r in sk.records(plain)
            if not (sk.get_technique(r["technique"]).survives_strip(r) and r.get("stripped"))]
    if kept:
        _fail(entry, "strip", f"{case.name}: records survived strip although their technique "
              f"does not declare it (Technique.survives_strip): {kept}")
    return _same(entry, "strip", ref, wb.outputs(plain, inputs), entry.strip_exact,
                 entry.strip_atol, case.name)


def check_deepcopy(entry: ConformanceEntry, case: ZooModel) -> str:
    """``copy.deepcopy`` of a trained prepared model gives the same outputs, and stripping and
    training the copy leaves the original untouched."""
    model = wb.prepared(entry, case)
    inputs = case.example()
    ref = wb.outputs(model, inputs)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        twin = copy.deepcopy(model)
    except Exception as e:
        _fail(entry, "deepcopy", f"{case.name}: copy.deepcopy failed: {type(e).__name__}: {e}")
    _same(entry, "deepcopy", ref, wb.outputs(twin, inputs), True, 0.0, f"{case.name} copy")
    wb.train_steps(twin, case, 1)
    sk.strip(twin)
    _same(entry, "deepcopy", ref, wb.outputs(model, inputs), True, 0.0,
          f"{case.name} original after the copy was trained and stripped")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
    if changed:
        _fail(entry, "deepcopy", f"{case.name}: the original's state changed: {changed[:5]}")
    return "independent"


def check_torch_export(entry: ConformanceEntry, case: ZooModel) -> str:
    """``torch.export.export`` of the deployable model (pre_export hooks, then strip) works and
    the exported program agrees with it (``export_atol`` abs + 1e-4 rel)."""
    model = wb.prepared(entry, case)
    plain = wb.deployable(model)
    inputs = case.example()
    try:
        program = torch.export.export(plain, inputs)
    except Exception as e:
        _fail(entry, "torch_export", f"{case.name}: torch.export.export failed: "
                                     f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    got = _run_program(program, inputs)
    ref = wb.outputs(plain, inputs)
    for g, r in zip(got, ref):
        if g.shape != r.shape or not torch.allclose(g, r, atol=entry.export_atol, rtol=1e-4):
            _fail(entry, "torch_export", f"{case.name}: the exported program differs "
                                         f"(max abs diff {_max_diff([g], [r]):.3g})")
    return f"{len(program.graph.nodes)} nodes, max diff {_max_diff(got, ref):.2g}"


def _run_program(program, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        out = call_model(program.module(), inputs)
    return flatten_outputs(out)


def check_onnx(entry: ConformanceEntry, case: ZooModel) -> str:
    """``sk.export_onnx`` writes a file that ONNX Runtime validated against torch; it passes
    the ONNX checker and runs at another batch size (the batch axis is dynamic)."""
    import onnx

    from slimkit.export import ort_session

    model = wb.prepared(entry, case)
    inputs = case.example()
    path = wb.workdir() / f"{entry.name}-{case.name}.onnx"
    try:
        sk.export_onnx(model, path, example_inputs=inputs, **entry.export_kwargs)
    except (sk.ExportValidationError, RuntimeError, ValueError) as e:
        _fail(entry, "onnx", f"{case.name}: {type(e).__name__}: {str(e)[:500]}")
    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort_session(path, threads=1)
    feeds = {i.name: torch.cat([x, x]).numpy() for i, x in zip(sess.get_inputs(), inputs)}
    out = sess.run(None, feeds)
    ref = wb.outputs(model, inputs)
    if [o.shape[0] for o in out] != [2 * r.shape[0] for r in ref]:
        _fail(entry, "onnx", f"{case.name}: a batch of {2 * len(inputs[0])} gave outputs of "
                             f"shapes {[o.shape for o in out]}")
    if not all(np.isfinite(o).all() for o in out):
        _fail(entry, "onnx", f"{case.name}: ONNX Runtime gives non-finite outputs")
    size = path.stat().st_size
    path.unlink()
    return f"{size / 1024:.0f} KiB"


# -- digits ----------------------------------------------------------------------------------------

def check_resume(entry: ConformanceEntry) -> str:
    """Fine-tune on digits, ``sk.save`` halfway (optimizer state in ``extra``), ``sk.load`` into
    a fresh ``DigitsCNN``, continue: every tensor equals the uninterrupted run's, exactly."""
    from slimkit.examples import DigitsCNN

    steps = wb.resume_steps(entry)
    if steps == entry.finetune_steps:
        full = wb.finetuned(entry)
    else:
        full = wb.prepared_baseline(entry)
        wb.finetune(full, wb.optimizer(entry, full), 0, steps)
    half = steps // 2
    part = wb.prepared_baseline(entry)
    opt = wb.optimizer(entry, part)
    wb.finetune(part, opt, 0, half)
    path = wb.workdir() / f"{entry.name}-resume.pt"
    sk.save(part, path, extra={"optimizer": opt.state_dict(), "step": half})
    torch.manual_seed(12345)  # a different initialisation: everything must come from the file
    resumed = sk.load(path, model=DigitsCNN())
    path.unlink()
    extra = resumed._slimkit_extra
    opt = wb.optimizer(entry, resumed)
    opt.load_state_dict(extra["optimizer"])
    wb.finetune(resumed, opt, int(extra["step"]), steps)
    want, got = full.state_dict(), resumed.state_dict()
    if set(want) != set(got):
        _fail(entry, "resume", f"state_dict keys differ: {sorted(set(want) ^ set(got))[:5]}")
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    if differ:
        k = differ[0]
        _fail(entry, "resume", f"{len(differ)} tensor(s) differ from the uninterrupted run after "
                               f"{steps} steps (saved at {half}), e.g. {k} (max abs diff "
                               f"{_max_diff([want[k].float()], [got[k].float()]):.3g})")
    return f"{steps} steps, saved at {half}: exact"


def check_convergence(entry: ConformanceEntry) -> str:
    """The fine-tuned digits artifact's ORT test accuracy is within ``accuracy_budget`` of the
    fp32 artifact's (both measured by ``sk.report`` in ONNX Runtime)."""
    base, tech = wb.reports(entry)
    b, t = base.metrics["accuracy"], tech.metrics["accuracy"]
    note = f"{t:.4f} vs fp32 {b:.4f} ({(t - b) * 100:+.2f} pt, budget -{entry.accuracy_budget * 100:.2f})"
    if b < 0.95:
        _fail(entry, "convergence", f"the fp32 baseline did not train ({b:.4f} < 0.95)")
    if t < b - entry.accuracy_budget - 1e-9:
        _fail(entry, "convergence", f"artifact accuracy {note}")
    return note


def check_metric(entry: ConformanceEntry) -> str:
    """The deployment metric the entry claims improves by at least ``factor``: fp32 artifact /
    technique artifact, measured by ``sk.report`` (sizes; latency: ORT p50 at batch 64)."""
    if entry.metric is None:
        raise CheckSkipped("the entry claims no deployment metric")
    if entry.metric == "latency":
        ratio = wb.latency_ratio(entry)
    else:
        base, tech = wb.reports(entry)
        ratio = getattr(base, entry.metric) / getattr(tech, entry.metric)
    note = f"{entry.metric} {ratio:.2f}x (claims {entry.factor:g}x)"
    if ratio < entry.factor:
        _fail(entry, "metric", note)
    return note


def check_docs(entry: ConformanceEntry) -> str:
    """The technique's docs folder holds its pages, none empty; the notebook is valid JSON
    with at least one cell."""
    folder = entry.docs_dir
    if not folder.exists() and entry.builtin and source_checkout() is None:
        raise CheckSkipped("the built-in techniques' docs pages live in slimkit's repository, "
                           "not in the installed package: run from a source checkout")
    missing = [p for p in entry.docs_pages if not (folder / p).is_file()]
    if missing:
        _fail(entry, "docs", f"missing page(s) in {folder}: {', '.join(missing)}")
    empty = [p for p in entry.docs_pages if not (folder / p).read_text(encoding="utf-8").strip()]
    if empty:
        _fail(entry, "docs", f"empty page(s) in {folder}: {', '.join(empty)}")
    for page in entry.docs_pages:
        if page.endswith(".ipynb"):
            try:
                cells = json.loads((folder / page).read_text(encoding="utf-8")).get("cells")
            except json.JSONDecodeError as e:
                _fail(entry, "docs", f"{folder / page} is not valid JSON: {e}")
            if not cells:
                _fail(entry, "docs", f"{folder / page} has no cells")
    return f"{len(entry.docs_pages)} page(s) in {_short(folder)}"


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- the matrix -----------------------------------------------------------------------------------

CHECKS: dict[str, Callable] = {
    "config": check_config,
    "json": check_json,
    "prepare": check_prepare,
    "state_dict": check_state_dict,
    "strip": check_strip,
    "deepcopy": check_deepcopy,
    "torch_export": check_torch_export,
    "onnx": check_onnx,
    "resume": check_resume,
    "convergence": check_convergence,
    "metric": check_metric,
    "docs": check_docs,
}
"""Every check by name, in the order they run."""

MODEL_CHECKS = ("prepare", "state_dict", "strip", "deepcopy", "torch_export", "onnx")
"""Checks run once per zoo model the entry names; the others run once per entry."""

LIGHT_CHECKS = ("prepare", "state_dict", "strip", "deepcopy")
"""The per-model checks run on ``heavy`` zoo models (MiniLM), whose exports take minutes."""


def cases(entries, checks=None) -> list[tuple[ConformanceEntry, str, str | None]]:
    """``(entry, check, zoo model or None)`` for every check each entry gets."""
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {list(CHECKS)}")
    seen, out = set(), []
    for entry in entries:
        if not isinstance(entry, ConformanceEntry):
            raise TypeError(f"expected ConformanceEntry objects, got {type(entry).__name__}")
        if entry.name in seen:
            raise ValueError(f"two entries are named {entry.name!r}; give one an id= "
                             "(ConformanceEntry.id)")
        seen.add(entry.name)
        _check_known(entry)
        for check in names:
            if check not in MODEL_CHECKS:
                out.append((entry, check, None))
                continue
            for model in entry.models:
                if ZOO[model].heavy and check not in LIGHT_CHECKS:
                    continue
                out.append((entry, check, model))
    return out


def _check_known(entry: ConformanceEntry) -> None:
    valid = set(CHECKS) | {f"{c}-{m}" for c in MODEL_CHECKS for m in entry.models
                           if c in LIGHT_CHECKS or not ZOO[m].heavy}
    wrong = sorted(set(entry.known_failures) - valid)
    if wrong:
        raise ValueError(f"{entry.name}: known_failures names {wrong}, which are not checks of "
                         "this entry; use 'check' or 'check-model' (ConformanceEntry.known_failures)")


def run_check(entry: ConformanceEntry, check: str, model: str | None = None) -> str:
    """Run one check; raises :class:`ConformanceError` or :class:`CheckSkipped`."""
    fn = CHECKS[check]
    case = None
    if model is not None:
        case = ZOO[model]
        if not case.available():
            raise CheckSkipped(f"zoo model {model!r} is not installed")
    try:
        return fn(entry) if case is None else fn(entry, case)
    except (ConformanceError, CheckSkipped):
        raise
    except Exception as e:
        # The technique (or the library under it) crashed: that is this check failing.
        where = f"{model}: " if model else ""
        raise ConformanceError(
            f"{entry.name} [{check}]: {where}{type(e).__name__}: {str(e)[:1000]}") from e


