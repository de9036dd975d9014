"""A tiny model and metric for the search tests (seconds, not minutes)."""

from __future__ import annotations

import torch
import torch.nn as nn

N_IN = 16


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_IN, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 8)).eval()


def inputs(n: int = 256, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N_IN, generator=g)


def agreement_eval(model: nn.Module, x: torch.Tensor):
    """eval_fn(predict): top-1 agreement with the fp32 model on ``x``."""
    with torch.no_grad():
        ref = model(x).argmax(1)

    def eval_fn(predict) -> float:
        return float((predict(x).argmax(1) == ref).float().mean())

    return eval_fn


# factories of the CLI test's recipe (module:callable)
def recipe_loader():
    x = inputs(64, seed=2)
    return [(x[i:i + 32], torch.zeros(32, dtype=torch.long)) for i in range(0, 64, 32)]


def recipe_eval(predict) -> dict:
    model = make_model()
    return {"agreement": agreement_eval(model, inputs())(predict)}


def recipe_example_inputs():
    return inputs(8)
