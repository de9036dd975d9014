"""``WeightOnlyConfig``: block-wise int2/3/4/8 weights with RTN, HQQ, GPTQ or AWQ.

Example:
    >>> cfg = WeightOnlyConfig(bits=4, group_size=128, symmetric=True, algorithm="gptq")
    >>> sk.quantize(model, cfg, calibration=batches)      # GPTQ calibrates block by block
    >>> WeightOnlyConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from slimkit.authoring import Config, check_overrides

BITS = (2, 3, 4, 8)
GROUP_SIZES = (32, 64, 128, None)
ALGORITHMS = ("rtn", "hqq", "gptq", "awq")
CALIBRATED = ("gptq", "awq")
# Fields a per-layer override may change.
OVERRIDABLE = ("bits", "group_size", "allow_partial_group")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class WeightOnlyConfig(Config):
    """Weight-only quantization of Linear layers (optionally the embedding and LM head).

    Fields:
        bits: integer width of the codes: 2, 3, 4 or 8.
        group_size: input columns sharing one scale and zero point: 32, 64, 128, or None
            (one per output channel).
        symmetric: zero point fixed at ``2**(bits-1)`` (True) or fitted per group (False).
        algorithm: ``"rtn"``, ``"hqq"`` (no data); ``"gptq"``, ``"awq"`` (calibration data).
        overrides: ``{layer pattern: {field: value}}``: per-layer ``bits``, ``group_size``
            or ``allow_partial_group`` (e.g. ``{"*.mlp.down_proj": {"bits": 8}}``; patterns
            as in ``targets``, the last match wins).
    """

    version: ClassVar[int] = 1

    bits: int = field(default=4, metadata=_help("integer width of the codes: 2, 3, 4 or 8"))
    group_size: int | None = field(default=128, metadata=_help(
        "input columns per scale/zero group: 32, 64, 128, or None for one per output channel"))
    symmetric: bool = field(default=True, metadata=_help(
        "zero point fixed at 2**(bits-1) (True) or fitted per group (False)"))
    algorithm: str = field(default="rtn", metadata=_help(
        "rtn (round to nearest), hqq (calibration-free half-quadratic fit of the grid), "
        "gptq (Hessian-based error compensation), awq (activation-aware scales)"))
    allow_partial_group: bool = field(default=False, metadata=_help(
        "allow a shorter last group when group_size does not divide a layer's in_features "
        "(MatMulNBits pads it); False refuses such layers"))
    damp: float = field(default=0.01, metadata=_help(
        "GPTQ: fraction of the mean Hessian diagonal added to the diagonal, in (0, 1)"))
    act_order: bool = field(default=False, metadata=_help(
        "GPTQ: quantize columns by decreasing Hessian diagonal (static groups)"))
    block: int = field(default=128, metadata=_help(
        "GPTQ: columns per lazy-update block (>= 1)"))
    awq_grid: int = field(default=20, metadata=_help(
        "AWQ: points of the scale exponent alpha in [0, 1] (>= 2)"))
    awq_clip: bool = field(default=True, metadata=_help(
        "AWQ: also search each group's range shrink (up to 50%) on the layer output"))
    awq_objective: str = field(default="module", metadata=_help(
        "AWQ: the output whose error the scale search minimises: 'module' (the attention or "
        "MLP the layers belong to, as the AWQ paper does) or 'block' (the whole block)"))
    awq_search_tokens: int = field(default=2048, metadata=_help(
        "AWQ: calibration tokens (whole batches) replayed by each scale search (>= 1)"))
    hqq_iterations: int = field(default=20, metadata=_help(
        "HQQ: half-quadratic solver iterations (>= 1)"))
    hqq_p: float = field(default=0.7, metadata=_help("HQQ: the lp norm of the error, in (0, 1)"))
    quantize_embedding: bool = field(default=False, metadata=_help(
        "also quantize nn.Embedding tables (rows grouped along the embedding width)"))
    quantize_lm_head: bool = field(default=False, metadata=_help(
        "also quantize the output head (the Linear tied to an embedding, or a Hugging Face "
        "model's get_output_embeddings()); a tied embedding then shares the codes"))
    calibration_tokens: int = field(default=2048, metadata=_help(
        "GPTQ/AWQ: the fewest calibration tokens accepted (>= 1)"))
    overrides: dict = field(default_factory=dict, metadata=_help(
        "{layer pattern: {field: value}}: per-layer bits / group_size"))

    def __post_init__(self):
        self._require(self.bits in BITS and not isinstance(self.bits, bool), "bits",
                      f"one of {list(BITS)}")
        self._require(self.group_size in GROUP_SIZES and not isinstance(self.group_size, bool),
                      "group_size", "one of 32, 64, 128 or None (per output channel)")
        self._require(isinstance(self.symmetric, bool), "symmetric", "True or False")
        self._require(self.algorithm in ALGORITHMS, "algorithm", f"one of {list(ALGORITHMS)}")
        self._require(isinstance(self.allow_partial_group, bool), "allow_partial_group",
                      "True or False")
        self._require(isinstance(self.damp, (int, float)) and 0 < self.damp < 1, "damp",
                      "a number in (0, 1)")
        self._require(isinstance(self.act_order, bool), "act_order", "True or False")
        self._require(_int_at_least(self.block, 1), "block", "an integer >= 1")
        self._require(_int_at_least(self.awq_grid, 2), "awq_grid", "an integer >= 2")
        self._require(isinstance(self.awq_clip, bool), "awq_clip", "True or False")
        self._require(self.awq_objective in ("module", "block"), "awq_objective",
                      "'module' or 'block'")
        self._require(_int_at_least(self.awq_search_tokens, 1), "awq_search_tokens",
                      "an integer >= 1")
        self._require(_int_at_least(self.hqq_iterations, 1), "hqq_iterations", "an integer >= 1")
        self._require(isinstance(self.hqq_p, (int, float)) and 0 < self.hqq_p < 1, "hqq_p",
                      "a number in (0, 1)")
        self._require(isinstance(self.quantize_embedding, bool), "quantize_embedding",
                      "True or False")
        self._require(isinstance(self.quantize_lm_head, bool), "quantize_lm_head", "True or False")
        self._require(_int_at_least(self.calibration_tokens, 1), "calibration_tokens",
                      "an integer >= 1")
        check_overrides(self, OVERRIDABLE)

    @property
    def needs_data(self) -> bool:
        """True for the algorithms that calibrate on data (GPTQ, AWQ)."""
        return self.algorithm in CALIBRATED

    @property
    def integer_zeros(self) -> bool:
        """False when the zero points are floats (HQQ on an asymmetric grid)."""
        return not (self.algorithm == "hqq" and not self.symmetric)


def _int_at_least(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low
