"""Recipe objects and their validation: a YAML file becomes a :class:`Recipe` or ONE error.

A recipe names the model and data (the built-in ``task: digits`` or the user's
``module:callable`` factories) and the stages of techniques to apply in order. Validation
runs before anything is trained and collects every problem with its location, so a user
fixes a recipe in one pass::

    RecipeError: recipe.yaml has 2 problems:
      stages[0].technique: unknown technique 'prunning'; registered: magnitude-pruning, ...
      stages[1].config.clusters: clusters must be an integer >= 2 (values per layer), got 1

Techniques are looked up in the registry (``sk.techniques()``), and each stage's config
fields are checked by the technique's own config class, so contributed techniques work in
recipes without any change here.

Example:
    >>> recipe = load_recipe("pcqat.yaml")
    >>> [s.technique for s in recipe.stages]
    ['magnitude-pruning', 'weight-clustering', 'qat']
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimkit.core.config import Config, config_type
from slimkit.recipes.factories import check_factory

TASKS = ("digits",)
EVALUATE = ("artifact", "stripped")
# "7 epochs" in a config field means 7 * (steps per epoch of that stage).
_EPOCHS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*epochs?\s*$")
# Config errors end with "(ClassName.field)": the field a problem belongs to.


class RecipeError(ValueError):
    """A recipe that cannot run; ``problems`` lists ``(location, message)`` for each issue."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"{source} has {count} problem{'s' if count != 1 else ''}:"]
        lines += [f"  {loc}: {msg}" if loc else f"  {msg}" for loc, msg in self.problems]
        super().__init__("\n".join(lines))


@dataclass
class TrainSpec:
    """How long and how fast to train: ``epochs`` (or ``steps``) of Adam at ``lr``."""

    epochs: int | None = None
    steps: int | None = None
    lr: float = 1e-3


@dataclass
class ModelSpec:
    """The model: a ``module:callable`` returning a fresh ``nn.Module`` (or the task's model),
    optionally loaded from ``checkpoint`` (a state_dict saved with ``torch.save`` or a file
    written by ``sk.save``)."""

    factory: str | None = None
    checkpoint: str | None = None


@dataclass
class DataSpec:
    """The data: ``train_loader()`` yields ``(inputs, targets)`` batches once per epoch;
    ``eval(predict)`` returns a float or a dict of floats (as ``sk.report``'s ``eval_fn``);
    ``example_inputs()`` gives a batch for export (default: the first training batch);
    ``loss(outputs, targets)`` (default: cross-entropy). ``batch_size``: built-in tasks only."""

    train_loader: str | None = None
    eval: str | None = None
    example_inputs: str | None = None
    loss: str | None = None
    batch_size: int = 32


@dataclass
class RecipeStage:
    """One technique applied to the model, then fine-tuned (or calibrated).

    ``config`` keeps the YAML fields as written; :meth:`build_config` turns them into the
    technique's config object once the steps per epoch are known ("7 epochs" -> steps).
    """

    name: str
    technique: str
    config: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    steps: int | None = None
    lr: float = 1e-4
    calibration_batches: int = 0
    targets: list[str] | None = None
    ignore: list[str] | None = None
    # Distill from the baseline model while this stage fine-tunes: DistillationConfig fields
    # ({} or true: the defaults); None: the task loss only.
    distill: dict | None = None

    @property
    def trains(self) -> bool:
        return bool(self.epochs or self.steps)

    def build_config(self, steps_per_epoch: float | None) -> Config:
        """The technique's config object (raises :class:`RecipeError` on a bad field).

        ``steps_per_epoch`` converts "N epochs" values (None: the loader has no length).
        """
        from slimkit.core.registry import get_technique

        cls = get_technique(self.technique).config_cls
        problems: list[tuple[str, str]] = []
        cfg = _build_config(cls, self.config, steps_per_epoch, "config", problems)
        if problems:
            raise RecipeError(f"stage {self.name!r}", problems)
        return cfg


@dataclass
class ExportSpec:
    """How the artifact is exported (``sk.export_onnx`` options)."""

    compact: bool = False
    dynamo: bool = True


@dataclass
class ReportSpec:
    """Latency measurement of the final artifact (ONNX Runtime)."""

    latency_runs: int = 100
    threads: int = 2


@dataclass
class Recipe:
    """A validated recipe: what to optimize and how, stage by stage."""

    name: str
    stages: list[RecipeStage]
    task: str | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    baseline: TrainSpec | None = None
    seed: int = 0
    description: str = ""
    evaluate: str = "artifact"
    export: ExportSpec = field(default_factory=ExportSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    source: str = "<recipe>"
    raw: dict = field(default_factory=dict, repr=False)


# ---- loading ------------------------------------------------------------------------------

def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe; raises :class:`RecipeError` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), [("", f"no recipe file at {str(path)!r}")])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(str(path), [("", f"not valid YAML: {e}")]) from None
    return parse_recipe(data, source=str(path), default_name=path.stem)


def parse_recipe(data: Any, *, source: str = "<recipe>", default_name: str = "recipe") -> Recipe:
    """Validate a recipe given as a dict (the parsed YAML); see :func:`load_recipe`."""
    p = _Problems()
    if not isinstance(data, dict):
        raise RecipeError(source, [("", f"a recipe is a mapping of fields, got {_kind(data)}")])
    p.unknown(data, [f.name for f in dataclasses.fields(Recipe)
                     if f.name not in ("source", "raw")], "")

    name = data.get("name", default_name)
    p.check(isinstance(name, str) and name.strip() != "", "name", "a non-empty string", name)
    seed = data.get("seed", 0)
    p.check(_is_int(seed) and seed >= 0, "seed", "an integer >= 0", seed)
    description = data.get("description", "")
    p.check(isinstance(description, str), "description", "a string", description)
    evaluate = data.get("evaluate", "artifact")
    p.check(evaluate in EVALUATE, "evaluate", f"one of {', '.join(EVALUATE)}", evaluate)

    task = data.get("task")
    p.check(task is None or task in TASKS, "task",
            f"one of {', '.join(TASKS)} (or leave it out and give model/data factories)", task)
    model = _section(p, data, "model", ModelSpec)
    dataspec = _section(p, data, "data", DataSpec)
    _check_sources(p, task, model, dataspec)

    baseline = None
    if data.get("baseline") is not None:
        baseline = _train_spec(p, data["baseline"], "baseline", default_lr=1e-3)
    elif task == "digits" and model.checkpoint is None:
        baseline = TrainSpec(epochs=20, lr=1e-3)  # ../shared/BENCHMARKS.md's baseline

    export = _section(p, data, "export", ExportSpec)
    p.check(isinstance(export.compact, bool), "export.compact", "true or false", export.compact)
    p.check(isinstance(export.dynamo, bool), "export.dynamo", "true or false", export.dynamo)
    report = _section(p, data, "report", ReportSpec)
    p.check(_is_int(report.latency_runs) and report.latency_runs >= 0, "report.latency_runs",
            "an integer >= 0 (0: skip latency)", report.latency_runs)
    p.check(_is_int(report.threads) and report.threads >= 1, "report.threads",
            "an integer >= 1", report.threads)

    stages = []
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        p.add("stages", f"a list of at least one stage is required, got {_kind(raw_stages)}")
    else:
        for i, raw in enumerate(raw_stages):
            stage = _stage(p, raw, i)
            if stage is not None:
                stages.append(stage)
        names = [s.name for s in stages]
        for i, s in enumerate(stages):
            if names.index(s.name) != i:
                p.add(f"stages[{i}].name", f"stage name {s.name!r} is used twice; names "
                      "must be unique (they name the checkpoints)")
    if p.problems:
        raise RecipeError(source, p.problems)
    return Recipe(
        name=name, stages=stages, task=task, model=model, data=dataspec, baseline=baseline,
        seed=seed, description=description, evaluate=evaluate, export=export, report=report,
        source=source, raw=data,
    )


# ---- pieces -------------------------------------------------------------------------------

class _Problems:
    def __init__(self):
        self.problems: list[tuple[str, str]] = []

    def add(self, location: str, message: str) -> None:
        self.problems.append((location, message))

    def check(self, ok: bool, location: str, accepted: str, value: Any) -> bool:
        if not ok:
            self.add(location, f"must be {accepted}, got {value!r}")
        return ok

    def unknown(self, data: dict, accepted: list[str], prefix: str) -> None:
        for key in data:
            if key not in accepted:
                self.add(f"{prefix}{key}", f"unknown field; accepted: {', '.join(accepted)}")


def _section(p: _Problems, data: dict, key: str, cls):
    raw = data.get(key)
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        p.add(key, f"must be a mapping of fields, got {_kind(raw)}")
        return cls()
    names = [f.name for f in dataclasses.fields(cls)]
    p.unknown(raw, names, f"{key}.")
    return cls(**{k: v for k, v in raw.items() if k in names})


def _check_sources(p: _Problems, task, model: ModelSpec, data: DataSpec) -> None:
    if task is None:
        for loc, value in (("model.factory", model.factory), ("data.train_loader",
                                                              data.train_loader),
                           ("data.eval", data.eval)):
            if value is None:
                p.add(loc, "required without a built-in task (give 'task: digits' or the "
                      "'module:callable' of your own)")
    else:
        for loc, value in (("model.factory", model.factory),
                           ("data.train_loader", data.train_loader), ("data.eval", data.eval),
                           ("data.example_inputs", data.example_inputs)):
            if value is not None:
                p.add(loc, f"task {task!r} brings its own; remove this field or the task")
    for loc, value in (("model.factory", model.factory), ("data.train_loader", data.train_loader),
                       ("data.eval", data.eval), ("data.example_inputs", data.example_inputs),
                       ("data.loss", data.loss)):
        if value is not None:
            problem = check_factory(value)
            if problem:
                p.add(loc, problem)
    if model.checkpoint is not None:
        ok = isinstance(model.checkpoint, str) and Path(model.checkpoint).is_file()
        p.check(ok, "model.checkpoint", "the path of an existing file", model.checkpoint)
    p.check(_is_int(data.batch_size) and data.batch_size >= 1, "data.batch_size",
            "an integer >= 1", data.batch_size)
    if task is None and data.batch_size != DataSpec.batch_size:
        p.add("data.batch_size", "only for built-in tasks: your train_loader sets its own")


def _train_spec(p: _Problems, raw: Any, loc: str, default_lr: float) -> TrainSpec | None:
    if not isinstance(raw, dict):
        p.add(loc, f"must be a mapping with epochs (or steps) and lr, got {_kind(raw)}")
        return None
    p.unknown(raw, ["epochs", "steps", "lr"], f"{loc}.")
    spec = TrainSpec(raw.get("epochs"), raw.get("steps"), _number(raw.get("lr", default_lr)))
    _check_length(p, spec.epochs, spec.steps, loc)
    p.check(_is_number(spec.lr) and spec.lr > 0, f"{loc}.lr", "a number > 0", spec.lr)
    return spec


def _check_length(p: _Problems, epochs, steps, loc: str) -> None:
    p.check(epochs is None or (_is_int(epochs) and epochs >= 0), f"{loc}.epochs",
            "an integer >= 0", epochs)
    p.check(steps is None or (_is_int(steps) and steps >= 0), f"{loc}.steps",
            "an integer >= 0", steps)
    if epochs and steps:
        p.add(loc, "give epochs or steps, not both")


_STAGE_FIELDS = [f.name for f in dataclasses.fields(RecipeStage)]


def _stage(p: _Problems, raw: Any, index: int) -> RecipeStage | None:
    from slimkit.core.registry import get_technique

    loc = f"stages[{index}]"
    if not isinstance(raw, dict):
        p.add(loc, f"a stage is a mapping with at least 'technique', got {_kind(raw)}")
        return None
    p.unknown(raw, _STAGE_FIELDS, f"{loc}.")
    technique = raw.get("technique")
    tech = None
    if not isinstance(technique, str):
        p.add(f"{loc}.technique", f"required: a registered technique name, got {technique!r}")
    else:
        try:
            tech = get_technique(technique)
        except ValueError as e:
            p.add(f"{loc}.technique", str(e))
    name = raw.get("name", technique if isinstance(technique, str) else f"stage{index}")
    p.check(isinstance(name, str) and re.fullmatch(r"[\w.-]+", name or "") is not None,
            f"{loc}.name", "a name of letters, digits, '-', '_' or '.'", name)
    config = raw.get("config") or {}
    if not isinstance(config, dict):
        p.add(f"{loc}.config", f"must be a mapping of the config's fields, got {_kind(config)}")
        config = {}
    epochs, steps = raw.get("epochs"), raw.get("steps")
    _check_length(p, epochs, steps, loc)
    lr = _number(raw.get("lr", 1e-4))
    p.check(_is_number(lr) and lr > 0, f"{loc}.lr", "a number > 0", lr)
    calib = raw.get("calibration_batches", 0)
    p.check(_is_int(calib) and calib >= 0, f"{loc}.calibration_batches", "an integer >= 0",
            calib)
    for key in ("targets", "ignore"):
        value = raw.get(key)
        if isinstance(value, str):   # one pattern, as sk.apply(targets="c1") takes it
            value = raw[key] = [value]
        ok = value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        p.check(ok, f"{loc}.{key}", "a list of layer patterns (type names, globs, 're:' regexes)",
                value)
    distill = raw.get("distill")
    if distill is True:
        distill = {}
    if distill is not None and distill is not False:
        from slimkit.core.config import ConfigError
        from slimkit.distill import DistillationConfig

        if not isinstance(distill, dict):
            p.add(f"{loc}.distill", "true, or a mapping of DistillationConfig fields "
                  f"(temperature, weight, features, feature_weight), got {_kind(distill)}")
            distill = None
        else:
            try:
                DistillationConfig(**distill)
            except (ConfigError, TypeError) as e:
                p.add(f"{loc}.distill", str(e))
                distill = None
    else:
        distill = None
    if tech is not None:
        # 100 steps per epoch stands in for the real figure, unknown before the data loads.
        cfg = _build_config(tech.config_cls, config, 100.0, f"{loc}.config", p.problems)
        if cfg is not None and tech.needs_calibration(cfg) and not calib:
            p.add(f"{loc}.calibration_batches", f"{tech.name} with this config needs "
                  "calibration data: give calibration_batches >= 1 (e.g. 4 batches of 32)")
    return RecipeStage(name=name, technique=technique, config=config, epochs=epochs,
                       steps=steps, lr=lr, calibration_batches=calib,
                       targets=raw.get("targets"), ignore=raw.get("ignore"), distill=distill)


def _build_config(cls: type[Config], fields: dict, steps_per_epoch: float | None, loc: str,
                  problems: list) -> Config | None:
    """Build ``cls`` from YAML fields, appending every problem found to ``problems``.

    A config class stops at its first bad field, so a failing field is reported and left out,
    and the config is built again, until it builds: every independent bad value is reported.
    Nested configs are written ``{type: ClassName, field: value, ...}``.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in fields.items():
        if key not in names:
            problems.append((f"{loc}.{key}", f"unknown field of {cls.__name__}; accepted: "
                             f"{', '.join(names)}"))
            continue
        ok, converted = _convert(value, steps_per_epoch, f"{loc}.{key}", problems)
        if ok:
            values[key] = converted
    while True:
        try:
            return cls(**values)
        except (ValueError, TypeError) as e:
            msg = str(e)
            # ConfigError names its field; only a field of this config can be left out.
            bad = getattr(e, "field", None) if getattr(e, "config", None) == cls.__name__ else None
            problems.append((f"{loc}.{bad}" if bad else loc, msg))
            if bad not in values:
                return None
            del values[bad]


def _convert(value: Any, steps_per_epoch: float | None, loc: str,
             problems: list) -> tuple[bool, Any]:
    if isinstance(value, str) and _EPOCHS.match(value):
        if steps_per_epoch is None:
            problems.append((loc, f"{value!r} needs a training loader with a length (len()) to "
                             "count epochs; give a number of steps"))
            return False, None
        epochs = float(_EPOCHS.match(value).group(1))
        return True, max(1, round(epochs * steps_per_epoch)) if epochs > 0 else 0
    if isinstance(value, dict) and "type" in value:
        try:
            cls = config_type(str(value["type"]))
        except ValueError as e:
            problems.append((f"{loc}.type", str(e)))
            return False, None
        rest = {k: v for k, v in value.items() if k != "type"}
        before = len(problems)
        cfg = _build_config(cls, rest, steps_per_epoch, loc, problems)
        return len(problems) == before, cfg
    if isinstance(value, list):
        out = []
        for i, v in enumerate(value):
            ok, c = _convert(v, steps_per_epoch, f"{loc}[{i}]", problems)
            if not ok:
                return False, None
            out.append(c)
        return True, out
    return True, value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v):
    # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it means.
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _kind(v) -> str:
    return "nothing" if v is None else f"{type(v).__name__} {v!r}"
