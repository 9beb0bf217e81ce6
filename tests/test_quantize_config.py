"""QuantizeConfig validation and the method registry (no model is loaded here)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")  # looking up a method imports the built-in (bitsandbytes) handlers
pytest.importorskip("bitsandbytes")

from rt2edge.errors import ConfigError  # noqa: E402
from quantize import QuantizeConfig, known_methods, register_method  # noqa: E402
from quantize.registry import _METHODS, get_method  # noqa: E402


def make(tmp_path, **kwargs):
    return QuantizeConfig(source=tmp_path / "src", out=tmp_path / "out", **kwargs)


def test_builtin_methods_are_registered_with_their_bits_and_blocks():
    assert {"bnb-int8", "bnb-nf4", "bnb-fp4", "int8-dynamic", "int8-qdq", "int4-matmulnbits",
            "int4-qdq"} <= set(known_methods())
    assert get_method("int8-qdq").source == "artifact" and get_method("int8-qdq").targets == ("onnx", "tensorrt")
    assert get_method("bnb-int8").bits == 8 and get_method("bnb-int8").block_sizes == (None,)
    assert get_method("bnb-nf4").bits == 4 and get_method("bnb-nf4").block_sizes == (64,)


def test_defaults_are_filled_from_the_method(tmp_path):
    cfg = make(tmp_path, method="bnb-nf4")
    assert cfg.bits == 4 and cfg.block_size == 64
    assert cfg.keep_groups == ("vision", "projector", "head") and cfg.keep_sensitive == 0
    assert cfg.target is None and cfg.algorithm is None  # not applicable to a checkpoint method
    assert make(tmp_path).bits == 8 and make(tmp_path).block_size is None


def test_unknown_method_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        make(tmp_path, method="gguf-q4")
    assert err.value.field == "method" and "bnb-int8" in str(err.value) and "bnb-nf4" in str(err.value)


@pytest.mark.parametrize("kwargs,field", [
    (dict(method=["bnb-int8"]), "method"),
    (dict(method="bnb-int8", bits=4), "bits"),
    (dict(method="bnb-nf4", bits=True), "bits"),
    (dict(method="bnb-nf4", block_size=32), "block_size"),
    (dict(method="bnb-int8", block_size=64), "block_size"),
    (dict(keep_groups="vision"), "keep_groups"),
    (dict(keep_groups=["vision", "decoder"]), "keep_groups"),
    (dict(keep_groups=["language"]), "keep_groups"),
    (dict(keep_sensitive=2), "keep_sensitive"),  # the sensitivity pass is ONNX-only
    (dict(method="int8-qdq", keep_sensitive=-1), "keep_sensitive"),
    (dict(method="int8-qdq", keep_sensitive=True), "keep_sensitive"),
    (dict(target="onnx"), "target"),
    (dict(method="int8-dynamic", target="tensorrt"), "target"),
    (dict(method="int4-qdq", algorithm="hqq"), "algorithm"),  # HQQ's zero points are not symmetric
    (dict(method="int4-matmulnbits", block_size=48), "block_size"),
    (dict(method="int4-qdq", block_size=16), "block_size"),
    (dict(calibrate_method="kl"), "calibrate_method"),
    (dict(percentile=10.0), "percentile"),
    (dict(holdout_frames=0), "holdout_frames"),
    (dict(holdout_seed=5, calibration_frames=32), "holdout_seed"),  # overlaps seeds 0..31
    (dict(episodes=-1), "episodes"),
    (dict(threads=0), "threads"),
    (dict(calibration=""), "calibration"),
    (dict(calibration_frames=0), "calibration_frames"),
    (dict(calibration_frames=2.5), "calibration_frames"),
    (dict(batch_size=-1), "batch_size"),
    (dict(int8_threshold=-1.0), "int8_threshold"),
    (dict(int8_threshold=float("nan")), "int8_threshold"),
    (dict(double_quant="yes"), "double_quant"),
    (dict(overwrite=1), "overwrite"),
    (dict(device="tpu"), "device"),
    (dict(seed="0"), "seed"),
])
def test_bad_values_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(ConfigError) as err:
        make(tmp_path, **kwargs)
    assert err.value.field == field


def test_paths_are_checked(tmp_path):
    with pytest.raises(ConfigError) as err:
        QuantizeConfig(source=tmp_path, out=tmp_path)
    assert err.value.field == "out"
    with pytest.raises(ConfigError) as err:
        QuantizeConfig(source="", out=tmp_path / "o")
    assert err.value.field == "source"


def test_keep_groups_is_canonical_and_may_be_empty(tmp_path):
    assert make(tmp_path, keep_groups=["head", "vision", "head"]).keep_groups == ("vision", "head")
    assert make(tmp_path, keep_groups=[]).keep_groups == ()


def test_onnx_methods_fill_target_algorithm_and_holdout_defaults(tmp_path):
    cfg = make(tmp_path, method="int4-qdq")
    assert (cfg.bits, cfg.block_size, cfg.target, cfg.algorithm) == (4, 32, "tensorrt", "rtn")
    assert make(tmp_path, method="int4-matmulnbits", algorithm="gptq").target == "onnx"
    assert make(tmp_path, method="int8-qdq").holdout_seed == 1_000_000  # disjoint from the calibration seeds
    cfg = make(tmp_path, method="int8-qdq", keep_sensitive=3)
    assert cfg.runs_sensitivity and not make(tmp_path, method="int8-qdq").runs_sensitivity


def test_json_round_trip_and_unknown_keys(tmp_path):
    cfg = make(tmp_path, method="bnb-nf4", double_quant=True, keep_groups=["head"])
    data = json.loads(json.dumps(cfg.to_dict()))
    assert QuantizeConfig.from_dict(data) == cfg
    with pytest.raises(ConfigError) as err:
        QuantizeConfig.from_dict({**data, "blocksize": 32})
    assert err.value.field == "blocksize"
    with pytest.raises(ConfigError) as err:
        QuantizeConfig.from_dict({"out": "x"})
    assert err.value.field == "source"


def test_register_method_refuses_a_taken_name():
    def other_handler(cfg, work_dir, observations):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="already registered"):
        register_method("bnb-int8", bits=8)(other_handler)
    try:
        register_method("test-dummy", bits=4, block_sizes=(32, 64))(other_handler)
        assert get_method("test-dummy").block_sizes == (32, 64)
    finally:
        _METHODS.pop("test-dummy", None)
