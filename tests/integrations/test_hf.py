"""SlimkitTrainerCallback in a Hugging Face Trainer: a tiny random-init BERT, nothing downloaded."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk

transformers = pytest.importorskip("transformers", reason="transformers is not installed (slimkit[hf])")
pytest.importorskip("accelerate", reason="accelerate is not installed (slimkit[hf])")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from slimkit.integrations.hf import SlimkitTrainerCallback  # noqa: E402

VOCAB, SEQ = 64, 12
SCHEDULE = sk.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=6, frequency=2)


class TokenDataset(torch.utils.data.Dataset):
    """Random token sequences; the label says whether the first token is in the lower half."""

    def __init__(self, n: int = 48):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": int(self.ids[i, 0] < VOCAB // 2)}


def tiny_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=SEQ, num_labels=2)
    model = BertForSequenceClassification(cfg)
    sk.prune(model, sk.MagnitudePruningConfig(SCHEDULE), targets=["Linear"])
    sk.quantize(model, sk.QATConfig(freeze_observers_step=4))
    return model


def args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6,
                gradient_accumulation_steps=2, logging_steps=2, learning_rate=1e-3,
                report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    base.update(kw)
    return TrainingArguments(**base)


def step_of(model) -> int:
    return int(model.bert.encoder.layer[0].attention.self.query.parametrizations.weight[0].step)


class SeesLogs(TrainerCallback):
    """Records the logs as a callback after SlimkitTrainerCallback sees them."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_steps_per_optimizer_step_and_logs_the_stats(tmp_path):
    model = tiny_bert()
    seen = SeesLogs()
    trainer = Trainer(model=model, args=args(tmp_path, save_strategy="steps", save_steps=3),
                      train_dataset=TokenDataset(), callbacks=[seen])
    cb = SlimkitTrainerCallback(per_layer=True).add_to(trainer)
    assert trainer.callback_handler.callbacks[0] is cb  # before any report_to integration
    trainer.train()
    # 6 optimizer steps of 2 accumulated micro-batches: the scheduler steps 6 times, not 12.
    assert trainer.state.global_step == 6
    assert step_of(model) == 6
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    for h in logged:
        s = h["step"]
        assert h["slimkit/step"] == s
        assert h["slimkit/target_sparsity"] == pytest.approx(SCHEDULE.sparsity(s), abs=1e-9)
        # The masks reach the target to within one weight per layer: 1e-3 here.
        assert h["slimkit/sparsity"] == pytest.approx(SCHEDULE.sparsity(s), abs=1e-3)
        assert h["slimkit/observers"] > 0
        assert h["slimkit/observers_frozen"] == (h["slimkit/observers"] if s >= 4 else 0)
    assert logged[-1]["slimkit/sparsity"] == pytest.approx(0.5, abs=1e-3)
    per_layer = [k for k in logged[-1] if k.startswith("slimkit/sparsity/")]
    # 2 layers x (query, key, value, attention output, intermediate, output) + pooler + head.
    assert len(per_layer) == 2 * 6 + 2
    # A callback registered after it (callbacks=[...]) sees the statistics in the logs.
    assert [log["slimkit/step"] for log in seen.logs if "loss" in log] == [2.0, 4.0, 6.0]

    # Resume from the step-3 checkpoint: the step buffers come back with the weights
    # (model.safetensors), so the schedules continue and the run ends where the whole one did.
    resumed = tiny_bert()
    again = Trainer(model=resumed, args=args(tmp_path), train_dataset=TokenDataset(),
                    callbacks=[SlimkitTrainerCallback()])
    again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert step_of(resumed) == 6
    expected = model.state_dict()
    for name, t in resumed.state_dict().items():
        # Same batches, optimizer and RNG state: bitwise equal here; 1e-6 allows for threads.
        assert torch.allclose(t.float(), expected[name].float(), rtol=0, atol=1e-6), name


def test_unprepared_model_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    plain = BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=SEQ))
    trainer = Trainer(model=plain, args=args(tmp_path, max_steps=1), train_dataset=TokenDataset(),
                      callbacks=[SlimkitTrainerCallback()])
    with pytest.raises(ValueError, match="SlimkitTrainerCallback found no slimkit technique"):
        trainer.train()
    with pytest.raises(ValueError, match=r"SlimkitTrainerCallback.model_attr"):
        SlimkitTrainerCallback(model_attr="")
