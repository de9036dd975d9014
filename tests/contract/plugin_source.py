'''A technique written outside slimkit, as a third-party package would ship it.

tests/contract/test_plugin.py copies this file into a temporary folder as the package
``sk_clip_plugin`` with a dist-info whose entry point registers ``TECHNIQUE`` in the
``slimkit.techniques`` group; slimkit is not edited. It uses only ``slimkit.authoring``.

"input-clip": every selected layer's input is clipped to a range calibrated from data (a
stateful module, whose running maximum moves in forward passes while training and so declares
a DDP sync rule), and its weight is rounded to a grid of ``step`` with a straight-through
gradient, in a stage of its own between clustering and quantization.
'''

from __future__ import annotations

from dataclasses import dataclass

import click
import torch
import torch.nn as nn

from slimkit.authoring import (
    Config,
    Max,
    SlimParametrization,
    SlimState,
    Sum,
    Technique,
    batch_inputs,
    call_model,
    expand_tied,
    get_module,
    raw_tensor,
    register_parametrization,
    register_stage,
    stages,
)

STAGE = register_stage("clip-round", 250)


@dataclass
class InputClipConfig(Config):
    """Clip inputs to ``margin`` x the calibrated max |x|; round weights to ``step``."""

    margin: float = 1.5
    step: float = 1.0 / 512
    track_steps: int = 1000

    def __post_init__(self):
        self._require(isinstance(self.margin, (int, float)) and self.margin >= 1.0, "margin",
                      "a number >= 1")
        self._require(isinstance(self.step, (int, float)) and 0 < self.step < 1, "step",
                      "a number in (0, 1)")
        self._require(isinstance(self.track_steps, int) and self.track_steps >= 0,
                      "track_steps", "an integer >= 0")


class RoundWeight(SlimParametrization):
    stage = STAGE

    def __init__(self, step: float, group: str = ""):
        super().__init__(group)
        self.step_size = step

    def forward(self, w):
        q = torch.round(w / self.step_size) * self.step_size
        return w + (q - w).detach()

    def stats(self):
        return {"clip/rounded_tensors": Sum(1)}


class InputClip(SlimState, nn.Module):
    """Clips a layer's input to ``margin * peak``; ``peak`` is calibrated, then tracks the
    largest |x| seen while training (so it moves in forward passes) for the first
    ``track_steps`` scheduler steps (the ``step`` buffer sk.Scheduler advances)."""

    sync_rules = {"peak": "max", "calibrated": "any"}
    sync_valid = "calibrated"

    def __init__(self, margin: float, track_steps: int = 1000):
        super().__init__()
        self.margin, self.track_steps = margin, track_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("peak", torch.zeros(()))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.bound = None  # a Python number at export: torch.export cannot branch on buffers

    def forward(self, x):
        if self.bound is not None:
            return torch.clamp(x, -self.bound, self.bound)
        if self.moves_in_forward():
            with torch.no_grad():
                self.peak.copy_(torch.maximum(self.peak, x.detach().abs().amax()))
                self.calibrated.fill_(True)
        if not bool(self.calibrated):
            return x
        bound = float(self.peak) * self.margin
        return torch.clamp(x, -bound, bound)

    def stats(self):
        return {"clip/peak": Max(float(self.peak))}

    def layer_stats(self):
        return {"clip/peak": float(self.peak)}

    def moves_in_forward(self):
        return self.training and int(self.step) < self.track_steps


def _clip_input(module, args):
    return (module._sk_clip(args[0]), *args[1:])


def _attach_clips(model, layers, config):
    for mname, _t in layers:
        module = get_module(model, mname)
        if "_sk_clip" not in module._modules:
            module._sk_clip = InputClip(config.margin, config.track_steps)
            module.register_forward_pre_hook(_clip_input)


class InputClipTechnique(Technique):
    name = "input-clip"
    config_cls = InputClipConfig
    family = "other"
    stage = STAGE
    description = "Clip layer inputs to a calibrated range; round weights to a fixed grid."

    def prepare(self, model, config, layers):
        for sites in expand_tied(model, layers):
            m, t = sites[0]
            if raw_tensor(get_module(model, m), t).dim() < 2:
                continue
            register_parametrization(model, sites, RoundWeight(config.step))
        _attach_clips(model, layers, config)

    def replay(self, model, config, layers, record):
        if record.get("stripped"):
            _attach_clips(model, layers, config)  # the rounding is baked
        else:
            self.prepare(model, config, layers)

    def needs_calibration(self, config):
        return True

    def calibrate(self, model, config, data, **options):
        clips = [m for m in model.modules() if isinstance(m, InputClip)]
        if not clips:
            raise ValueError("input-clip: nothing to calibrate (prepare the model first)")
        was = model.training
        model.train()  # the clips track their peak in training mode
        with torch.no_grad():
            batches = [data] if isinstance(data, torch.Tensor) else data
            for batch in batches:
                call_model(model, batch_inputs(batch))
        model.train(was)

    def survives_strip(self, record):
        return True  # the clip modules stay in the stripped model

    def pre_export(self, model, ctx):
        for clip in model.modules():
            if isinstance(clip, InputClip) and bool(clip.calibrated):
                clip.bound = float(clip.peak) * clip.margin

    def post_export(self, proto, ctx):
        entry = proto.metadata_props.add()
        entry.key, entry.value = "input-clip", f"{len(ctx.records)} record(s)"
        return proto

    def cli_commands(self):
        @click.command("clip-stages")
        def clip_stages():
            """Print the registered stages in order (contributed by the input-clip plugin)."""
            click.echo(" < ".join(sorted(stages(), key=stages().get)))

        return [clip_stages]

    def conformance_entries(self):
        from slimkit.testing import ConformanceEntry

        return [ConformanceEntry(
            "input-clip", config=InputClipConfig, invalid={"margin": 0.5, "step": 2.0},
            models=("cnn", "subclassed"), metric=None, factor=1.0, needs_calibration=True,
            finetune_steps=20, accuracy_budget=0.02, docs=DOCS,
        )]


DOCS = ""  # set by the test to the plugin's docs folder
TECHNIQUE = InputClipTechnique()
