"""SlimkitCallback in a Lightning Trainer on CPU: stepping, accumulation, logging, resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import slimkit as sk
from slimkit.examples import DigitsCNN, set_seed

L = pytest.importorskip("lightning.pytorch", reason="Lightning is not installed (slimkit[lightning])")
from lightning.pytorch.loggers import Logger  # noqa: E402

from slimkit.integrations.lightning import SlimkitCallback  # noqa: E402

BATCH = 16
BATCHES = 8  # per epoch


class MemoryLogger(Logger):
    """Keeps every logged metric in a list: (step, {name: value})."""

    def __init__(self):
        super().__init__()
        self.history: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.history.append((step, dict(metrics)))

    def slimkit(self) -> list[tuple[int, dict]]:
        return [(s, m) for s, m in self.history if any(k.startswith("slimkit/") for k in m)]


class DigitsModule(L.LightningModule):
    """The prepared model is an attribute, as users write it."""

    def __init__(self, end_step: int = 8, freeze: int | None = 6):
        super().__init__()
        set_seed(0)
        self.model = DigitsCNN()
        sched = sk.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=end_step, frequency=2)
        sk.prune(self.model, sk.MagnitudePruningConfig(sched))
        sk.quantize(self.model, sk.QATConfig(freeze_observers_step=freeze))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.fixture(scope="module")
def loader(digits_small):
    x, y = digits_small
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


@pytest.fixture(scope="module")
def digits_small(digits):
    return digits.x_train[:BATCH * BATCHES], digits.y_train[:BATCH * BATCHES]


def trainer(tmp_path, callbacks, **kwargs):
    kwargs.setdefault("logger", MemoryLogger())
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("log_every_n_steps", 1)
    return L.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path,
                     callbacks=callbacks, **kwargs)


def step_of(module) -> int:
    return int(module.model.conv1.parametrizations.weight[0].step)


def test_steps_once_per_optimizer_step_with_accumulation(tmp_path, loader):
    module = DigitsModule()
    logger = MemoryLogger()
    t = trainer(tmp_path, [SlimkitCallback("model", log_every_n_steps=2, per_layer=True)],
                max_epochs=2, accumulate_grad_batches=2, logger=logger)
    t.fit(module, loader)
    # 2 epochs x 8 batches / accumulation 2 = 8 optimizer steps.
    assert t.global_step == 8
    assert step_of(module) == 8
    logged = logger.slimkit()
    assert [s for s, _ in logged] == [2, 4, 6, 8]
    first, last = logged[0][1], logged[-1][1]
    # PolynomialDecay(0 -> 0.5, end 8, every 2): cubic ramp 1 - (1 - s/8)^3 of 0.5.
    assert first["slimkit/target_sparsity"] == pytest.approx(0.5 * (1 - 0.75 ** 3), abs=1e-6)
    assert first["slimkit/sparsity"] == pytest.approx(0.5 * (1 - 0.75 ** 3), abs=1e-3)
    assert last["slimkit/sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert last["slimkit/step"] == 8.0
    assert first["slimkit/observers_frozen"] == 0.0
    assert last["slimkit/observers_frozen"] == last["slimkit/observers"] == 5.0
    per_layer = {k: v for k, v in last.items() if k.startswith("slimkit/sparsity/")}
    # Names relative to the scheduled model, pl_module.model.
    assert set(per_layer) == {f"slimkit/sparsity/{m}.weight" for m in ("conv1", "conv2", "fc1", "fc2")}
    for v in per_layer.values():
        assert v == pytest.approx(0.5, abs=1e-3)  # per layer rounding of the kept count
    assert last["slimkit/range_hi/fc2.sk_output_quant"] > 0
    # The epoch-end values reach callback_metrics (ModelCheckpoint / progress bar).
    assert float(t.callback_metrics["slimkit/sparsity"]) == pytest.approx(0.5, abs=1e-4)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_checkpoint_resume_keeps_the_step_count(tmp_path, digits_small):
    from lightning.pytorch.callbacks import ModelCheckpoint

    # 4 batches an epoch, checkpoint after epoch 1: Lightning resumes an epoch boundary with
    # the same data order (mid-epoch checkpoints restart the epoch's data).
    x, y = digits_small
    loader = DataLoader(TensorDataset(x[:BATCH * 4], y[:BATCH * 4]), batch_size=BATCH)
    whole = DigitsModule()
    # No model_attr: the whole LightningModule is searched for slimkit parametrizations.
    trainer(tmp_path / "whole", [SlimkitCallback()], max_epochs=2).fit(whole, loader)
    assert step_of(whole) == 8

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = DigitsModule()
    t1 = trainer(tmp_path / "a", [SlimkitCallback("model"), ckpt], max_epochs=1,
                 enable_checkpointing=True)
    t1.fit(first, loader)
    assert step_of(first) == 4
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert int(saved["state_dict"]["model.conv1.parametrizations.weight.0.step"]) == 4

    resumed = DigitsModule()  # prepared the same way: fresh weights, step 0
    assert step_of(resumed) == 0
    t2 = trainer(tmp_path / "b", [SlimkitCallback("model")], max_epochs=2)
    t2.fit(resumed, loader, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert t2.global_step == 8
    assert step_of(resumed) == 8
    expected = whole.state_dict()
    for name, t in resumed.state_dict().items():
        if name.endswith((".mask", ".step", ".frozen", ".calibrated")):
            assert torch.equal(t, expected[name]), name
        else:  # weights and ranges: same data order and optimizer state; float tolerance
            assert torch.allclose(t, expected[name], rtol=1e-5, atol=1e-6), name


def test_clear_errors(tmp_path, loader):
    with pytest.raises(ValueError, match=r"no attribute 'net' \(SlimkitCallback.model_attr\)"):
        trainer(tmp_path, [SlimkitCallback("net")], max_steps=1).fit(DigitsModule(), loader)

    class Plain(DigitsModule):
        def __init__(self):
            L.LightningModule.__init__(self)
            self.model = DigitsCNN()

    with pytest.raises(ValueError, match="found no slimkit technique to step in Plain"):
        trainer(tmp_path, [SlimkitCallback()], max_steps=1).fit(Plain(), loader)
    with pytest.raises(ValueError, match=r"SlimkitCallback.log_every_n_steps"):
        SlimkitCallback(log_every_n_steps=-1)
