"""Distillation from the user's loop (digits.train), Lightning, the HF forward wrap, recipes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimkit as sk
from slimkit.distill import Distillation, wrap_forward
from slimkit.examples import steps_per_epoch, train
from slimkit.recipes import RecipeError, parse_recipe
from tests.quantization.conftest import ort_accuracy


def test_pruning_with_distillation_converges_in_onnx_runtime(cnn, digits, tmp_path):
    base_path = sk.export_onnx(copy.deepcopy(cnn), tmp_path / "fp32.onnx",
                               example_inputs=digits.x_test[:8])
    distill = Distillation(copy.deepcopy(cnn), temperature=4.0, weight=0.7)
    spe = steps_per_epoch(digits)
    sk.prune(cnn, sk.MagnitudePruningConfig(
        sk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=7 * spe, frequency=spe)))
    train(cnn, digits, epochs=10, lr=1e-4, seed=0, scheduler=sk.Scheduler(cnn), distill=distill)
    path = sk.export_onnx(cnn, tmp_path / "pruned.onnx", example_inputs=digits.x_test[:8])
    base, acc = ort_accuracy(base_path, digits), ort_accuracy(path, digits)
    assert base >= 0.96
    assert acc >= base - 0.01, (base, acc)  # the plain fine-tune's bound is 1.5 points


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def _manual_step(student, teacher, x, y, lr, weight, temperature):
    distill = Distillation(teacher, temperature=temperature, weight=weight)
    opt = torch.optim.SGD(student.parameters(), lr=lr)
    out = student(x)
    loss = distill(x, out, F.cross_entropy(out, y))
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_lightning_callback_teacher_gives_the_same_step_as_the_loss():
    L = pytest.importorskip("lightning.pytorch")
    from slimkit.integrations.lightning import SlimkitCallback

    torch.manual_seed(0)
    teacher, x, y = _Net(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.fc.weight.mul_(0.5)
    sk.prune(student, sk.MagnitudePruningConfig(sk.ConstantSparsity(0.0)))
    reference = copy.deepcopy(student)
    _manual_step(reference, copy.deepcopy(teacher), x, y, 0.1, 0.6, 2.0)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = student

        def training_step(self, batch, _):
            xb, yb = batch
            return F.cross_entropy(self.model(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.model.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[SlimkitCallback("model", teacher=copy.deepcopy(teacher),
                                                   distill={"temperature": 2.0,
                                                            "weight": 0.6})])
    trainer.fit(Module(), loader)
    for a, b in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_wrapped_forward_returns_the_distillation_loss():
    class HFLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x=None, labels=None):
            logits = self.fc(x)
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = F.cross_entropy(logits, labels)
            return out

    torch.manual_seed(0)
    teacher, student = HFLike(), HFLike()
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    distill = Distillation(teacher, temperature=3.0, weight=0.5)
    undo = wrap_forward(student, distill)
    student.train()
    got = student(x=x, labels=y)["loss"]
    logits = student.fc(x)
    expected = distill({"x": x}, logits, F.cross_entropy(logits, y))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    undo()
    assert float(student(x=x, labels=y)["loss"]) == pytest.approx(
        float(F.cross_entropy(logits, y)), rel=1e-6)


def test_recipe_distill_option_is_validated():
    stage = {"technique": "magnitude-pruning", "epochs": 1,
             "config": {"schedule": 0.5}}
    with pytest.raises(RecipeError, match=r"stages\[0\]\.distill"):
        parse_recipe({"task": "digits", "stages": [{**stage, "distill": {"temperature": -1}}]})
    recipe = parse_recipe({"task": "digits", "stages": [{**stage, "distill": True}]})
    assert recipe.stages[0].distill == {}


def test_recipe_stage_distills_from_the_baseline(tmp_path, one_thread, monkeypatch):
    from slimkit import distill as distill_module
    from slimkit.recipes import run_recipe

    calls = []
    original = distill_module.Distillation.__call__

    def counting(self, inputs, output, task_loss=None):
        calls.append(type(self.teacher).__name__)
        return original(self, inputs, output, task_loss)

    monkeypatch.setattr(distill_module.Distillation, "__call__", counting)
    recipe = parse_recipe({"task": "digits", "stages": [
        {"technique": "magnitude-pruning", "epochs": 1, "config": {"schedule": 0.5},
         "distill": {"temperature": 2.0, "weight": 0.5}}]})
    result = run_recipe(recipe, tmp_path / "run", max_steps=3, progress=False)
    assert result.artifact.exists()
    assert calls == ["DigitsCNN"] * 3  # every fine-tune step of the stage, none of the baseline
