"""Knowledge distillation during any fine-tuning: the uncompressed model teaches the compressed one.

Distillation is a loss, not a technique: it works with every fine-tune slimkit runs (pruning
schedules, clustering, QAT, the collaborative stacks, channel pruning's recovery), in the
user's own loop, the Lightning / Hugging Face callbacks and recipes. The loss (Hinton et al.
2015, plus optional feature matching as in FitNets):

    loss = (1 - weight) * task_loss
         + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + feature_weight * sum over named modules of MSE(student feature, teacher feature)

``T`` (``temperature``) softens both distributions so the student learns the teacher's
relative confidences; ``T^2`` keeps the gradient scale independent of ``T``. The teacher runs
in eval mode without gradients.

Example:
    >>> distill = Distillation(copy.deepcopy(model), temperature=4.0, weight=0.7)
    >>> sk.prune(model, config); logits = model(x)
    >>> loss = distill(x, logits, F.cross_entropy(logits, y))    # then loss.backward()
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.core.batch import call_model
from slimkit.core.config import Config

# The teacher-output cache keeps at most this many bytes of logits (then it stops growing).
CACHE_BYTES = 512 * 2**20


@dataclass
class DistillationConfig(Config):
    """How to distill (the ``distill:`` option of a recipe stage, the callbacks' ``teacher=``).

    Attributes:
        temperature: softmax temperature of both logits (> 0); 1 is plain KL on probabilities.
        weight: share of the distillation term in the loss, in [0, 1] (1: teacher only).
        features: module names whose outputs are matched by MSE (the same name in student and
            teacher), or ``{student module: teacher module}``; empty: logits only.
        feature_weight: weight of the feature term (>= 0).
        cache_teacher: keep the teacher's logits of every input sample seen (keyed by a hash
            of the sample's bytes) and reuse them when the sample comes back in a later epoch.
            Exact, because the teacher is frozen and in eval mode; it pays off when the
            fine-tune revisits the same samples (no random augmentation). Tensor inputs and
            logits-only distillation; at most ``CACHE_BYTES`` of logits are kept.
    """

    temperature: float = 4.0
    weight: float = 0.5
    features: list | dict = field(default_factory=list)
    feature_weight: float = 1.0
    cache_teacher: bool = False

    def __post_init__(self):
        self._require(isinstance(self.temperature, (int, float)) and self.temperature > 0,
                      "temperature", "a number > 0")
        self._require(isinstance(self.weight, (int, float)) and 0 <= self.weight <= 1,
                      "weight", "a number in [0, 1]")
        ok = isinstance(self.features, (list, tuple)) and all(
            isinstance(f, str) for f in self.features)
        ok |= isinstance(self.features, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.features.items())
        self._require(ok, "features", "a list of module names or {student module: teacher "
                                      "module}")
        self._require(isinstance(self.feature_weight, (int, float)) and self.feature_weight >= 0,
                      "feature_weight", "a number >= 0")
        self._require(isinstance(self.cache_teacher, bool), "cache_teacher", "True or False")
        self._require(not (self.cache_teacher and self.features), "cache_teacher",
                      "False with features (the teacher must run to produce its features)")

    def feature_pairs(self) -> list[tuple[str, str]]:
        if isinstance(self.features, Mapping):
            return list(self.features.items())
        return [(f, f) for f in self.features]


def logits_of(output) -> torch.Tensor:
    """The logits of a model output: a tensor, ``.logits`` (Hugging Face), ``["logits"]``, or
    the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}: return a "
        "tensor, a dict or an object with 'logits'"
    )


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over samples (and
    positions: the last dimension is the class dimension)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"the teacher's logits have shape {tuple(teacher_logits.shape)}, the student's "
            f"{tuple(student_logits.shape)}: distillation needs a teacher with the same "
            "outputs (the original model before compression)"
        )
    t = temperature
    s = F.log_softmax(student_logits.reshape(-1, student_logits.shape[-1]) / t, dim=-1)
    p = F.log_softmax(teacher_logits.reshape(-1, teacher_logits.shape[-1]).detach() / t, dim=-1)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * (t * t)


class _Features:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names: list[str], role: str):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(
                f"distillation features: the {role} has no module named {', '.join(missing)} "
                "(DistillationConfig.features)"
            )
        self.values: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(module, args, output):
            self.values[name] = logits_of(output)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class Distillation:
    """The distillation loss with its teacher (see the module docstring).

    Args:
        teacher: the model to learn from (typically ``copy.deepcopy(model)`` before it is
            compressed); put in eval mode, its parameters frozen.
        student: needed only for feature matching (hooks on its modules); ``attach`` later
            works too.
        config: a :class:`DistillationConfig`, or its fields as keywords.

    Call it with the inputs of the batch, the student's output on them and the task loss
    (``None``: distillation only): ``loss = distill(x, student_out, task_loss)``.

    Example:
        >>> distill = Distillation(teacher, temperature=2.0, weight=0.5, features=["fc1"],
        ...                        student=model)
    """

    def __init__(self, teacher: nn.Module, config: DistillationConfig | None = None, *,
                 student: nn.Module | None = None, **fields):
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        if config is not None and fields:
            raise TypeError("pass a DistillationConfig or its fields as keywords, not both")
        self.config = config if config is not None else DistillationConfig(**fields)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        pairs = self.config.feature_pairs()
        self._teacher_features = _Features(teacher, [t for _, t in pairs], "teacher") \
            if pairs else None
        self._student_features = None
        self._cache: dict[bytes, torch.Tensor] = {}
        self._cache_bytes = 0
        if student is not None:
            self.attach(student)

    @classmethod
    def from_model(cls, model: nn.Module, config: DistillationConfig | None = None,
                   **fields) -> Distillation:
        """A distillation whose teacher is a frozen copy of ``model`` as it is now."""
        return cls(copy.deepcopy(model), config, student=model, **fields)

    def attach(self, student: nn.Module) -> Distillation:
        """Hook the student's feature modules (needed only with ``features``)."""
        pairs = self.config.feature_pairs()
        if pairs:
            if self._student_features is not None:
                self._student_features.remove()
            self._student_features = _Features(student, [s for s, _ in pairs], "student")
        return self

    def detach(self) -> None:
        """Remove the feature hooks (from both models)."""
        for f in (self._student_features, self._teacher_features):
            if f is not None:
                f.remove()

    def teacher_output(self, inputs):
        with torch.no_grad():
            return call_model(self.teacher, inputs)

    def teacher_logits(self, inputs) -> torch.Tensor:
        """The teacher's logits on ``inputs`` (from the cache where it has them)."""
        if not (self.config.cache_teacher and isinstance(inputs, torch.Tensor)):
            return logits_of(self.teacher_output(inputs))
        rows = inputs.detach().contiguous().cpu().numpy()
        keys = [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            fresh = logits_of(self.teacher_output(inputs[missing]))
            for i, row in zip(missing, fresh):
                if self._cache_bytes < CACHE_BYTES:
                    self._cache[keys[i]] = row.clone()
                    self._cache_bytes += row.numel() * row.element_size()
            if len(missing) == len(keys):
                return fresh
            got = dict(zip(missing, fresh))
            return torch.stack([got[i] if i in got else self._cache[k]
                                for i, k in enumerate(keys)])
        return torch.stack([self._cache[k] for k in keys])

    def __call__(self, inputs, student_output, task_loss: torch.Tensor | None = None):
        cfg = self.config
        teacher_logits = self.teacher_logits(inputs)
        loss = distillation_loss(logits_of(student_output), teacher_logits, cfg.temperature)
        if task_loss is not None:
            loss = (1 - cfg.weight) * task_loss + cfg.weight * loss
        pairs = cfg.feature_pairs()
        if pairs and cfg.feature_weight > 0:
            if self._student_features is None:
                raise ValueError(
                    "distillation features need the student's modules: pass student= to "
                    "Distillation or call distill.attach(model)"
                )
            loss = loss + cfg.feature_weight * self.feature_loss()
        return loss

    def feature_loss(self) -> torch.Tensor:
        total = 0.0
        for s_name, t_name in self.config.feature_pairs():
            s = self._student_features.values.get(s_name)
            t = self._teacher_features.values.get(t_name)
            if s is None or t is None:
                raise ValueError(
                    f"distillation feature {s_name!r} / {t_name!r} was not computed in this "
                    "forward pass (the module did not run)"
                )
            if s.shape != t.shape:
                raise ValueError(
                    f"distillation feature: the student's {s_name} has shape {tuple(s.shape)}, "
                    f"the teacher's {t_name} {tuple(t.shape)}: pick modules with equal outputs"
                )
            total = total + F.mse_loss(s, t.detach())
        return total


def as_distillation(teacher, config: DistillationConfig | dict | None = None,
                    student: nn.Module | None = None) -> Distillation:
    """A :class:`Distillation` from what a callback or recipe was given: one already built,
    or a teacher module (with a config, its fields as a dict, or the defaults)."""
    if isinstance(teacher, Distillation):
        if config is not None:
            raise ValueError("pass the distillation config to Distillation, not both "
                             "(teacher= is already a Distillation)")
        return teacher.attach(student) if student is not None else teacher
    if isinstance(config, Mapping):
        config = DistillationConfig(**config)
    return Distillation(teacher, config, student=student)


class CapturedOutput:
    """Keeps the latest training-mode output of a model (a forward hook), so a callback that
    does not see the loss computation can still read the student's logits of the step."""

    def __init__(self, model: nn.Module):
        self.output = None
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if module.training and torch.is_grad_enabled() and self.output is None:
            self.output = output  # the step's first forward: the training output

    def take(self):
        out, self.output = self.output, None
        return out

    def remove(self) -> None:
        self.handle.remove()


def extra_backward(distill: Distillation, inputs, student_output, loss: torch.Tensor,
                   scale: float = 1.0) -> None:
    """Backpropagate what turns ``loss`` into the distillation loss, before ``loss`` itself is
    backpropagated: ``w * (kd - loss) + feature term``, so the two gradients add up to those
    of ``(1 - w) * loss + w * kd + feature term``. ``scale`` is the factor the trainer already
    applied to ``loss`` (1 / gradient accumulation steps)."""
    cfg = distill.config
    kd = distillation_loss(logits_of(student_output), distill.teacher_logits(inputs),
                           cfg.temperature)
    extra = cfg.weight * (scale * kd - loss)
    if cfg.feature_pairs() and cfg.feature_weight > 0:
        extra = extra + scale * cfg.feature_weight * distill.feature_loss()
    extra.backward(retain_graph=True)


def wrap_forward(model: nn.Module, distill: Distillation):
    """Make ``model``'s training forward return the distillation loss as its ``loss`` (a Hugging
    Face model called with ``labels``), so a Trainer that takes ``outputs.loss`` distills.
    Returns the function that undoes it."""
    original = model.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
        if model.training and torch.is_grad_enabled() and loss is not None:
            inputs = {k: v for k, v in kwargs.items() if k != "labels"}
            if args:
                raise ValueError("distillation with the Trainer needs keyword inputs "
                                 "(model(**batch)); got positional ones")
            out["loss"] = distill(inputs, out, loss)
        return out

    model.forward = forward  # an instance attribute shadows the class's forward

    def undo():
        model.__dict__.pop("forward", None)

    return undo
