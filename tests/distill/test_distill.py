"""Distillation: the documented loss, clear errors, and a pruned student that keeps accuracy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimkit as sk
from slimkit.distill import Distillation, DistillationConfig, distillation_loss


def test_loss_is_temperature_squared_kl_of_softened_outputs():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 10, generator=gen), torch.randn(5, 10, generator=gen)
    T = 3.0
    p = F.softmax(t / T, -1)
    manual = (p * (p.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert float(distillation_loss(s, t, T)) == pytest.approx(float(manual), rel=1e-5)
    assert float(distillation_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)


def test_weighting_of_task_distillation_and_features():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student[0].weight.add_(0.1)
    x = torch.randn(6, 4)
    distill = Distillation(teacher, temperature=2.0, weight=0.25, features=["0"],
                           feature_weight=0.5, student=student)
    out = student(x)
    task = torch.tensor(1.5)
    loss = distill(x, out, task)
    kd = distillation_loss(out, teacher(x), 2.0)
    feat = F.mse_loss(student[0](x), teacher[0](x))
    assert float(loss) == pytest.approx(float(0.75 * task + 0.25 * kd + 0.5 * feat), rel=1e-5)
    assert float(feat) > 0  # the feature term is really there
    loss.backward()
    assert student[0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen


def test_teacher_with_other_output_shape_is_a_clear_error():
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 5)
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"teacher's logits have shape \(2, 3\).*\(2, 5\)"):
        Distillation(teacher)(x, student(x))


def test_feature_of_a_missing_module_names_it():
    with pytest.raises(ValueError, match="no module named fc9"):
        Distillation(nn.Sequential(nn.Linear(2, 2)), features=["fc9"])


@pytest.mark.parametrize("changes, field", [({"temperature": 0}, "temperature"),
                                             ({"weight": 1.5}, "weight"),
                                             ({"features": [3]}, "features"),
                                             ({"feature_weight": -1}, "feature_weight")])
def test_invalid_configs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        DistillationConfig(**changes)


def test_config_round_trips():
    cfg = DistillationConfig(temperature=2.0, features={"fc1": "fc1"})
    assert sk.Config.from_dict(cfg.to_dict()) == cfg


def test_teacher_cache_is_exact_and_skips_the_teacher():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    calls = []
    teacher.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    cached = Distillation(teacher, cache_teacher=True)
    x = torch.randn(6, 4)
    first = cached.teacher_logits(x)
    again = cached.teacher_logits(x[[5, 0, 3]])  # the same samples, another batch
    mixed = cached.teacher_logits(torch.cat([x[:2], torch.randn(1, 4)]))
    assert calls == [6, 1]  # the second batch entirely from the cache, one new sample
    torch.testing.assert_close(again, teacher(x[[5, 0, 3]]), rtol=0, atol=0)
    torch.testing.assert_close(mixed[:2], first[:2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="cache_teacher"):
        DistillationConfig(cache_teacher=True, features=["0"])
