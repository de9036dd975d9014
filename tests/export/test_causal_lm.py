"""The KV-cache decoder export: validated, atomic, runs greedy generation and onnxruntime-genai."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch

from slimkit.examples.llm import tiny_llama
from slimkit.export import causal_lm
from slimkit.export.causal_lm import export_causal_lm
from slimkit.export.generate import OrtDecoder, greedy_generate
from slimkit.export.onnx import ExportValidationError


def varied_llama(seed: int = 0):
    """A tiny Llama whose greedy tokens vary (default init gives near-uniform logits)."""
    model = tiny_llama(seed=seed, vocab=256, hidden=64, layers=2)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0) if p.dim() == 2 else None
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = varied_llama()
    folder = export_causal_lm(model, tmp_path_factory.mktemp("lm") / "tiny", atol=1e-3)
    return model, folder


def test_the_folder_holds_the_decoder_its_genai_config_and_the_validation(exported):
    model, folder = exported
    assert sorted(os.listdir(folder)) == ["export.json", "genai_config.json", "model.onnx"]
    report = json.loads((folder / "export.json").read_text())
    assert report["validated"] and report["same_greedy_token"]
    assert report["prefill_max_abs_diff"] < 1e-3 and report["decode_max_abs_diff"] < 1e-3
    config = json.loads((folder / "genai_config.json").read_text())["model"]
    assert config["decoder"]["num_hidden_layers"] == 2
    assert config["decoder"]["num_key_value_heads"] == model.config.num_key_value_heads
    assert config["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    # no temporary folder is left beside it
    assert sorted(os.listdir(folder.parent)) == ["tiny"]


def test_prefill_then_decode_steps_match_torch_logits_at_batch_two(exported):
    model, folder = exported
    dec = OrtDecoder(folder / "model.onnx")
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(3))
    logits, past = dec.step(ids[:, :6].numpy(), dec.empty_past(2))
    for t in range(6, 9):  # the rest one token at a time, with the cache
        step, past = dec.step(ids[:, t:t + 1].numpy(), past)
        logits = np.concatenate([logits, step], axis=1)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    assert past[0].shape == (2, model.config.num_key_value_heads, 9, 16)
    np.testing.assert_allclose(logits, ref, atol=1e-3, rtol=1e-3)


def test_greedy_generation_in_ort_gives_torchs_tokens(exported):
    model, folder = exported
    prompt = np.array([[5, 17, 33, 9, 120]])
    got = greedy_generate(folder / "model.onnx", prompt, max_new_tokens=24)
    ref = model.generate(torch.from_numpy(prompt), max_new_tokens=24, min_new_tokens=24,
                         do_sample=False)[:, prompt.shape[1]:].numpy()
    assert len(set(ref[0].tolist())) > 3  # the tokens vary: the comparison means something
    np.testing.assert_array_equal(got, ref)


def test_generation_stops_at_eos(exported):
    _, folder = exported
    first = greedy_generate(folder / "model.onnx", np.array([[5, 17, 33]]), max_new_tokens=6)
    eos = int(first[0, 2])
    got = greedy_generate(folder / "model.onnx", np.array([[5, 17, 33]]), max_new_tokens=6,
                          eos_token_id=eos)
    assert got[0, -1] == eos and got.shape[1] <= 3


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime_genai") is None,
                    reason="onnxruntime-genai is not installed")
def test_onnxruntime_genai_runs_the_folder_and_agrees_with_torch(exported):
    import onnxruntime_genai as og

    model, folder = exported
    prompt = [5, 17, 33, 9, 120]
    og_model = og.Model(str(folder))
    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=len(prompt) + 16, do_sample=False)
    gen = og.Generator(og_model, params)
    gen.append_tokens(np.array([prompt], dtype=np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    got = np.asarray(gen.get_sequence(0))[len(prompt):]
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16,
                         do_sample=False)[0, len(prompt):].numpy()
    np.testing.assert_array_equal(got, ref)


def test_a_failed_validation_writes_nothing(exported, tmp_path, monkeypatch):
    model, folder = exported
    deployable, finish, techniques_of = causal_lm._pipeline()
    # the fixture's file stands in for a second torch export (the slow part)
    monkeypatch.setattr(causal_lm, "_export_decoder",
                        lambda wrapper, shape, path, opset: shutil.copy(folder / "model.onnx", path))

    def corrupt(proto, ctx, techniques):
        from onnx import numpy_helper

        for init in proto.graph.initializer:  # double one weight matrix: logits move
            if len(init.dims) == 2 and init.data_type == 1:
                init.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(init), init.name))
                break
        return proto

    monkeypatch.setattr(causal_lm, "_pipeline", lambda: (deployable, corrupt, techniques_of))
    with pytest.raises(ExportValidationError, match=r"prefill logits differ from torch: .* at "
                                                    r"position \d+, vocabulary entry \d+"):
        export_causal_lm(model, tmp_path / "bad")
    assert os.listdir(tmp_path) == []


def test_an_existing_folder_is_kept_unless_overwrite(exported, tmp_path):
    model, _ = exported
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export_causal_lm(model, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["old.txt"]


def test_a_model_without_a_causal_lm_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="export_causal_lm needs a Hugging Face causal LM"):
        export_causal_lm(torch.nn.Linear(4, 4), tmp_path / "x")


def test_a_session_that_is_not_a_kv_cache_decoder_is_refused(tmp_path):
    import slimkit as sk

    path = sk.export_onnx(torch.nn.Linear(4, 3), tmp_path / "lin.onnx",
                          example_inputs=torch.randn(2, 4))
    with pytest.raises(ValueError, match="not a KV-cache decoder"):
        OrtDecoder(path)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        greedy_generate(path, np.array([[1]]), max_new_tokens=0)


class _Chars:
    """Bytes as token ids: enough of a tokenizer for the perplexity of the report."""

    def __len__(self):
        return 256

    def __call__(self, text, verbose=False):
        return {"input_ids": list(text.encode())}


def test_llm_report_measures_size_speed_and_the_same_perplexity_as_torch(exported, tmp_path):
    from slimkit.metrics.llm import LLMReport, llm_report
    from slimkit.metrics.perplexity import perplexity

    model, folder = exported
    text = "the cache keeps keys and values of earlier tokens " * 8
    rep = llm_report(folder, tokenizer=_Chars(), text=text, window=64, prompt_len=32,
                     new_tokens=8, latency_runs=2, decode_runs=1,
                     eval_fn=lambda dec: {"first_logit": float(dec.logits(np.array([[1, 2]]))[0, -1, 0])})
    assert rep.file_bytes == os.path.getsize(folder / "model.onnx")
    assert rep.prefill["p50_ms"] > 0 and rep.prefill["prompt_len"] == 32
    assert rep.decode["tokens_per_s"] > 0 and rep.decode["new_tokens"] == 8
    torch_ppl = perplexity(model, _Chars(), text, window=64)["perplexity"]
    assert rep.perplexity["perplexity"] == pytest.approx(torch_ppl, rel=1e-4)
    with torch.no_grad():
        first = float(model(torch.tensor([[1, 2]])).logits[0, -1, 0])
    assert rep.metrics["first_logit"] == pytest.approx(first, abs=1e-3)
    again = LLMReport.from_dict(json.loads(rep.to_json(tmp_path / "r.json")))
    assert again == rep and json.loads((tmp_path / "r.json").read_text())["version"] == 1
    assert rep.compare(rep) == {"file_bytes": 1.0, "prefill_ms": 1.0,
                                "decode_tokens_per_s": 1.0, "perplexity": 0.0}
    assert "Decode speed" in str(rep)
    with pytest.raises(ValueError, match="needs both tokenizer= and text="):
        llm_report(folder, tokenizer=_Chars())
