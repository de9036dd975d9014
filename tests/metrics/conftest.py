"""Shared fixtures: a small MLP with half of each weight matrix zeroed, and its ONNX file."""

import warnings

import pytest
import torch
from torch import nn

# Tests spell the counts out (16*32 + 32 + 32*4 + 4 = 676 parameters) rather than import these.
IN_FEATURES, HIDDEN, CLASSES = 16, 32, 4


def make_mlp(seed: int = 0, zero_half: bool = True) -> nn.Sequential:
    """Linear/ReLU/Linear; with zero_half, exactly half of each weight matrix is set to 0."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(IN_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)
    ).eval()
    if zero_half:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for layer in (model[0], model[2]):
                flat = layer.weight.view(-1)
                chosen = torch.randperm(flat.numel(), generator=generator)[: flat.numel() // 2]
                flat[chosen] = 0.0
    return model


def export_mlp(model: nn.Module, path) -> None:
    x = torch.randn(8, IN_FEATURES, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is the legacy path; it is the fast one.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )


@pytest.fixture(scope="session")
def mlp_factory():
    return make_mlp


@pytest.fixture(scope="session")
def mlp() -> nn.Sequential:
    return make_mlp()


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory, mlp):
    path = tmp_path_factory.mktemp("metrics") / "mlp.onnx"
    export_mlp(mlp, path)
    return path


@pytest.fixture(scope="session")
def dense_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("metrics") / "dense.onnx"
    export_mlp(make_mlp(zero_half=False), path)
    return path


@pytest.fixture(scope="session")
def example_input() -> torch.Tensor:
    return torch.randn(8, IN_FEATURES, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="session")
def eval_data():
    """256 inputs labelled by a different random network, so accuracy is neither 0 nor 1."""
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(256, IN_FEATURES, generator=generator)
    teacher = torch.randn(IN_FEATURES, CLASSES, generator=generator)
    return inputs, (inputs @ teacher).argmax(dim=1)
