import pytest

import slimkit as sk
from slimkit.techniques.quantization import QATConfig, QuantizationConfig


def test_defaults_are_u8s8_per_channel_narrow():
    cfg = QuantizationConfig()
    assert (cfg.mode, cfg.weight_bits, cfg.per_channel, cfg.narrow_range) == ("static", 8, True, True)
    assert (cfg.activation_dtype, cfg.activation_scheme) == ("uint8", "asymmetric")
    assert QATConfig().observer == "moving_average"


@pytest.mark.parametrize("cfg", [
    QuantizationConfig(mode="weight_only", weight_bits=4, group_size=32,
                       overrides={"fc2": {"weight_bits": 8, "group_size": None}}),
    QATConfig(freeze_observers_step=100, observer="percentile", percentile=99.9),
])
def test_configs_round_trip_through_dicts(cfg):
    assert sk.Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kwargs, field, accepted", [
    ({"observer": "histogram"}, "observer", "'minmax', 'moving_average', 'percentile', 'mse'"),
    ({"mode": "fp8"}, "mode", "'static', 'dynamic', 'weight_only'"),
    ({"weight_scheme": "asymmetric"}, "weight_scheme", "'symmetric'"),
    ({"activation_scheme": "affine"}, "activation_scheme", "'asymmetric', 'symmetric'"),
    ({"activation_dtype": "int16"}, "activation_dtype", "'uint8', 'int8'"),
    ({"weight_bits": 3}, "weight_bits", "8, or 4 with mode='weight_only'"),
    ({"weight_bits": 16}, "weight_bits", "8, or 4 with mode='weight_only'"),
    ({"weight_bits": 4}, "weight_bits", "4-bit weights need mode='weight_only'"),
    ({"group_size": 1}, "group_size", "an integer >= 2"),
    ({"percentile": 30}, "percentile", "(50, 100]"),
    ({"overrides": {"fc1": {"bits": 4}}}, "overrides", "unknown: ['bits']"),
    ({"overrides": {"fc1": {"observer": "nope"}}}, "observer", "one of"),
])
def test_bad_fields_name_the_field_and_what_is_accepted(kwargs, field, accepted):
    with pytest.raises(ValueError) as info:
        QuantizationConfig(**kwargs)
    msg = str(info.value)
    assert f"QuantizationConfig.{field})" in msg and accepted in msg


def test_bad_freeze_step_is_named():
    with pytest.raises(ValueError, match=r"None or an integer >= 0.*QATConfig.freeze_observers_step"):
        QATConfig(freeze_observers_step=-1)


def test_both_configs_are_registered_quantization_techniques():
    fams = {t.name: t for t in sk.techniques()}
    assert fams["quantization"].family == fams["qat"].family == "quantization"
    assert fams["qat"].config_cls is QATConfig
    assert fams["quantization"].pre_export is not None and fams["quantization"].post_export
