"""Export a Hugging Face causal LM as an ONNX decoder with a KV cache, validated, in one folder.

The folder holds ``model.onnx`` (one file, weights inside), ``genai_config.json`` (the layout
``onnxruntime-genai`` reads) and, when a tokenizer is given, the tokenizer files. The decoder's
inputs are ``input_ids`` / ``attention_mask`` / ``position_ids`` and
``past_key_values.{i}.key/value`` (``[batch, kv_heads, past, head_dim]``, ``past`` may be 0);
its outputs are ``logits`` and ``present.{i}.key/value`` (``past + seq`` positions), so one
file serves the prefill and every decode step (:mod:`slimkit.export.generate`).

Every technique applied to the model takes part through the export pipeline (deep copy, the
techniques' ``pre_export`` hooks, strip, ``torch.onnx``, their ``post_export`` rewrites, e.g.
weight-only layers becoming ``MatMulNBits``). Before anything is written, ONNX Runtime's
logits are compared with the torch model's for a prefill and for one decode step with the
returned cache; the folder is built under a temporary name and renamed into place only then.
This module is shared code: it knows no technique by name.

Example:
    >>> folder = export_causal_lm(model, "smollm2-int4", tokenizer=tokenizer)
    >>> greedy_generate(folder / "model.onnx", prompt_ids, max_new_tokens=16)
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from slimkit.export.onnx import ExportValidationError, _quiet_exporter
from slimkit.export.pipeline import ExportContext


class _DecoderWithCache(nn.Module):
    """Flat tensors in and out around a Hugging Face causal LM and its DynamicCache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(past):
            cache.update(k, v, i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=True, **{self._cache_kw: cache})
        grown = out.get("cache", None) or out.get("past_key_values", None)
        present = []
        for layer in grown.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)

    @property
    def _cache_kw(self) -> str:
        # transformers 5.2x renamed past_key_values to cache (the old name still works, warns)
        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"


def decoder_shape(model: nn.Module) -> dict:
    """``layers``, ``kv_heads``, ``head_dim``, ``heads``, ``hidden``, ``vocab`` of a HF causal LM."""
    config = getattr(model, "config", None)
    needed = ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size")
    if config is None or any(not hasattr(config, k) for k in needed):
        raise ValueError(
            f"export_causal_lm needs a Hugging Face causal LM (a model with a .config holding "
            f"{', '.join(needed)}), got {type(model).__name__}"
        )
    heads = config.num_attention_heads
    return {
        "layers": config.num_hidden_layers,
        "heads": heads,
        "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "hidden": config.hidden_size,
        "vocab": config.vocab_size,
        "context": getattr(config, "max_position_embeddings", 2048),
    }


def _pipeline():
    """``(deployable, finish, techniques_of)`` of the shared export pipeline (one indirection,
    so tests can stand in for a step)."""
    from slimkit.export.pipeline import deployable, finish, techniques_of

    return deployable, finish, techniques_of


def ctx_records(model: nn.Module) -> list:
    from slimkit.core.records import records

    return records(model)


def _example(shape: dict, batch: int, seq: int, past: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, shape["vocab"], (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    kv = [(torch.randn(batch, shape["kv_heads"], past, shape["head_dim"], generator=gen),
           torch.randn(batch, shape["kv_heads"], past, shape["head_dim"], generator=gen))
          for _ in range(shape["layers"])]
    return ids, mask, pos, kv


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """The decoder's input and output names (the onnxruntime-genai convention)."""
    kv = [(i, t) for i in range(layers) for t in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{t}" for i, t in kv]
    outputs = ["logits"] + [f"present.{i}.{t}" for i, t in kv]
    return inputs, outputs


def _export_decoder(wrapper: nn.Module, shape: dict, path: Path, opset: int | None) -> None:
    example = _example(shape, batch=2, seq=3, past=4)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    past, total = torch.export.Dim("past_sequence"), torch.export.Dim("total_sequence")
    dynamic = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: seq},
        "past": [({0: batch, 2: past}, {0: batch, 2: past}) for _ in range(shape["layers"])],
    }
    in_names, out_names = io_names(shape["layers"])
    kwargs = {"opset_version": opset} if opset is not None else {}
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(wrapper, example, str(path), dynamo=True, dynamic_shapes=dynamic,
                              input_names=in_names, output_names=out_names,
                              external_data=False, verbose=False, **kwargs)
    except Exception as e:
        raise RuntimeError(
            f"torch.onnx could not export {type(wrapper.model).__name__} with a KV cache: "
            f"{type(e).__name__}: {str(e)[:2000]}"
        ) from e


def _torch_steps(wrapper: nn.Module, shape: dict, prompt: torch.Tensor):
    """Torch logits of a prefill of ``prompt`` and of one greedy decode step after it."""
    b, s = prompt.shape
    empty = [(torch.zeros(b, shape["kv_heads"], 0, shape["head_dim"]),) * 2
             for _ in range(shape["layers"])]
    with torch.no_grad():
        out = wrapper(prompt, torch.ones(b, s, dtype=torch.int64),
                      torch.arange(s).expand(b, s).contiguous(), empty)
        nxt = out[0][:, -1:].argmax(-1)
        past = [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(shape["layers"])]
        out2 = wrapper(nxt, torch.ones(b, s + 1, dtype=torch.int64),
                       torch.full((b, 1), s, dtype=torch.int64), past)
    return out[0].numpy(), nxt.numpy(), out2[0].numpy()


def validate_decoder(path: Path, wrapper: nn.Module, shape: dict, *, atol: float, rtol: float,
                     prompt_len: int = 16, threads: int = 2, elementwise: bool = True,
                     min_top1: float = 0.75) -> dict:
    """Compare ORT's logits with torch's for a prefill and one decode step with the cache.

    Returns per step the largest and mean absolute difference and the top-1 agreement (the
    fraction of positions where ORT's argmax token is torch's). ``elementwise``: every logit
    must satisfy ``|ort - torch| <= atol + rtol * |torch|``; otherwise only the prefill's
    top-1 agreement must reach ``min_top1`` (for arithmetic that differs by design, such as
    int8 activations). Raises :class:`ExportValidationError` naming the step, the position
    and the vocabulary entry where ORT diverges.
    """
    from slimkit.export.generate import OrtDecoder

    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, shape["vocab"], (1, prompt_len), generator=gen)
    ref_prefill, nxt, ref_step = _torch_steps(wrapper, shape, prompt)
    dec = OrtDecoder(path, threads=threads)
    got_prefill, present = dec.step(prompt.numpy(), dec.empty_past(1))
    got_step, _ = dec.step(nxt, present)
    result = {}
    for step, got, ref in (("prefill", got_prefill, ref_prefill), ("decode", got_step, ref_step)):
        if got.shape != ref.shape:
            raise ExportValidationError(
                f"{step} logits: ONNX Runtime shape {got.shape} != torch shape {ref.shape}",
                float("inf"), "logits")
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        worst = float(diff.max())
        top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
        result.update({f"{step}_max_abs_diff": worst, f"{step}_mean_abs_diff": float(diff.mean()),
                       f"{step}_top1_agreement": top1})
        _, pos, tok = np.unravel_index(int(np.argmax(diff)), diff.shape)
        where = (f"worst {worst:.4g} at position {pos}, vocabulary entry {tok} (torch "
                 f"{ref[0, pos, tok]:.4g}, ORT {got[0, pos, tok]:.4g})")
        bad = diff > atol + rtol * np.abs(ref)
        if elementwise and bad.any():
            raise ExportValidationError(
                f"ONNX Runtime {step} logits differ from torch: {int(bad.sum())} of {bad.size} "
                f"beyond atol={atol:.3g} + rtol={rtol:.3g}*|torch|, {where}; the folder was not "
                "written", worst, "logits")
        if not elementwise and step == "prefill" and top1 < min_top1:
            raise ExportValidationError(
                f"ONNX Runtime prefill logits pick torch's top-1 token at only {top1:.0%} of "
                f"positions (at least {min_top1:.0%} needed), {where}; the folder was not "
                "written", worst, "logits")
    result["same_greedy_token"] = bool(
        (got_prefill[:, -1].argmax(-1) == ref_prefill[:, -1].argmax(-1)).all())
    return result


def validate_export(path: Path, proto, wrapper: nn.Module, shape: dict, ctx,
                    threads: int = 2) -> dict:
    """Validate a written decoder against torch, the way ``ctx``'s techniques ask.

    A technique whose deployed arithmetic differs from torch by design may leave in
    ``ctx.notes["_export"]["validation_twin"]`` a ``make(proto) -> proto`` giving a twin that
    computes exactly what torch does (weight-only: the same packed weights with float
    kernels), with its ``atol`` / ``rtol`` and the ``min_top1`` agreement the real file must
    keep. The twin is validated elementwise, the file by agreement; without a twin the file
    is validated elementwise with ``ctx.atol`` / ``ctx.rtol``.
    """
    twin = ctx.notes.get("_export", {}).get("validation_twin")
    if twin is None:
        return validate_decoder(path, wrapper, shape, atol=ctx.atol, rtol=ctx.rtol,
                                threads=threads)
    # a longer prompt for the agreement check: more positions, a steadier fraction
    import onnx

    twin_path = Path(path).with_name(".twin.onnx")
    try:
        onnx.save(twin["make"](proto), str(twin_path))
        exact = validate_decoder(twin_path, wrapper, shape, atol=twin["atol"], rtol=twin["rtol"],
                                 threads=threads)
    finally:
        twin_path.unlink(missing_ok=True)
    result = validate_decoder(path, wrapper, shape, atol=ctx.atol, rtol=ctx.rtol,
                              threads=threads, elementwise=False, min_top1=twin["min_top1"],
                              prompt_len=32)
    result["exact_twin"] = {"atol": twin["atol"], "rtol": twin["rtol"], **exact}
    return result


def genai_config(model: nn.Module, shape: dict, tokenizer=None, filename: str = "model.onnx",
                 max_length: int | None = None) -> dict:
    """The ``genai_config.json`` that ``onnxruntime-genai`` needs to run the decoder."""
    config = model.config
    eos = getattr(config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    pad = getattr(config, "pad_token_id", None)
    pad = eos if pad is None else pad
    return {
        "model": {
            "bos_token_id": getattr(config, "bos_token_id", None) or 0,
            "context_length": shape["context"],
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename,
                "head_size": shape["head_dim"],
                "hidden_size": shape["hidden"],
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": shape["heads"],
                "num_hidden_layers": shape["layers"],
                "num_key_value_heads": shape["kv_heads"],
            },
            "eos_token_id": eos if eos is not None else 0,
            "pad_token_id": pad if pad is not None else 0,
            "type": getattr(config, "model_type", "llama"),
            "vocab_size": shape["vocab"],
        },
        "search": {
            "do_sample": False, "early_stopping": True, "max_length": max_length or shape["context"],
            "min_length": 0, "num_beams": 1, "num_return_sequences": 1,
            "past_present_share_buffer": False, "repetition_penalty": 1.0, "temperature": 1.0,
            "top_k": 1, "top_p": 1.0,
        },
    }


@contextlib.contextmanager
def _atomic_folder(folder: Path, overwrite: bool):
    """Yield a temporary folder beside ``folder``; rename it into place if the block succeeds."""
    if not folder.parent.exists():
        raise FileNotFoundError(f"the parent directory of {str(folder)!r} does not exist")
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; pass overwrite=True to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_causal_lm(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    tokenizer=None,
    max_seq: int | None = None,
    opset: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    validate: bool = True,
    overwrite: bool = False,
    threads: int = 2,
) -> Path:
    """Write ``folder/model.onnx`` (decoder with KV cache), ``genai_config.json`` and tokenizer.

    Args:
        model: a Hugging Face causal LM (``LlamaForCausalLM`` and the like), plain or prepared
            by slimkit techniques (the model itself is not changed).
        tokenizer: saved beside the model (``tokenizer.json`` ...) for onnxruntime-genai.
        max_seq: ``search.max_length`` of genai_config (default: the model's context length).
        opset: ONNX opset (default: the exporter's).
        atol, rtol: the validation tolerance on logits (default 1e-4 / 1e-3, widened by the
            techniques' export hooks, e.g. to the int4 quantization step).
        validate: compare ORT with torch before writing (prefill + one decode step).
        overwrite: replace an existing folder (atomically: the old one stays until the new
            one is complete).

    Returns:
        the folder's path. Its ``export.json`` holds the validation figures.

    Raises:
        ValueError: not a causal LM with a config; ExportValidationError: ORT disagrees with
            torch (nothing is written); FileExistsError: the folder exists.
    """
    folder = Path(folder)
    shape = decoder_shape(model)
    deployable, finish, techniques_of = _pipeline()
    ctx = ExportContext(
        atol=1e-4 if atol is None else atol, rtol=1e-3 if rtol is None else rtol,
        user_tolerance=atol is not None or rtol is not None, records=ctx_records(model),
    )
    techniques = techniques_of(model)
    plain = deployable(model, ctx)
    plain.config.use_cache = True
    wrapper = _DecoderWithCache(plain).eval()
    with _atomic_folder(folder, overwrite) as tmp:
        path = tmp / "model.onnx"
        _export_decoder(wrapper, shape, path, opset)
        import onnx

        proto = onnx.load(str(path))
        proto = finish(proto, ctx, techniques) or proto
        for node in proto.graph.node:  # torch stack traces: debugging aids, not the model
            del node.metadata_props[:]
            node.doc_string = ""
        onnx.save(proto, str(path))
        report = {"atol": ctx.atol, "rtol": ctx.rtol, "validated": validate}
        if validate:
            report.update(validate_export(path, proto, wrapper, shape, ctx, threads))
        del proto
        (tmp / "genai_config.json").write_text(
            json.dumps(genai_config(plain, shape, tokenizer, max_length=max_seq), indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        (tmp / "export.json").write_text(json.dumps(report, indent=2))
    return folder
