import pytest
import torch
import torch.nn as nn

import slimkit as sk


def masks(model):
    return [m.parametrizations.weight[0].mask.clone() for m in model if hasattr(m, "parametrizations")]


def test_step_count_lives_in_buffers_and_masks_change_only_on_update_steps(seeded):
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    sk.prune(model, sk.MagnitudePruningConfig(sk.PolynomialDecay(0.0, 0.8, 0, 10, frequency=4)))
    sched = sk.Scheduler(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = [masks(model)]
    for _ in range(12):
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        history.append(masks(model))
    assert sched.step_count == 12
    assert int(model.state_dict()["0.parametrizations.weight.0.step"]) == 12
    changed = [s for s in range(1, 13) if any(not torch.equal(a, b)
                                              for a, b in zip(history[s - 1], history[s]))]
    # Updates at 4 and 8 (frequency) and at end_step 10 (so the final sparsity is reached).
    assert changed == [4, 8, 10]
    final = 1 - torch.cat([m.flatten() for m in history[-1]]).float().mean()
    assert float(final) == pytest.approx(0.8, abs=0.01)


def test_polynomial_decay_values():
    s = sk.PolynomialDecay(0.0, 0.8, begin_step=100, end_step=200, power=3, frequency=10)
    assert s.sparsity(0) == 0.0 and s.sparsity(100) == 0.0
    assert s.sparsity(150) == pytest.approx(0.8 - 0.8 * 0.5**3, abs=1e-12)
    assert s.sparsity(200) == pytest.approx(0.8) and s.sparsity(10_000) == pytest.approx(0.8)
    assert [t for t in range(0, 230) if s.should_update(t)] == list(range(100, 201, 10))


def test_constant_sparsity_with_open_end_keeps_updating():
    s = sk.ConstantSparsity(0.5, begin_step=3, frequency=5)
    assert [t for t in range(30) if s.should_update(t)] == [3, 8, 13, 18, 23, 28]


def test_scheduler_needs_a_prepared_model():
    with pytest.raises(ValueError, match="has no scheduled technique"):
        sk.Scheduler(nn.Linear(2, 2))
