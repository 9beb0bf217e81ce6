"""The fidelity verdict every quantize report carries: the bars, their edges, and the remedy."""

from quantize.targets import check_targets, targets_markdown


def test_token_agreement_bar_depends_on_the_methods_bits():
    assert check_targets(8, "artifact", 0.99, None)["met"] and check_targets(4, "artifact", 0.97, None)["met"]
    missed = check_targets(8, "artifact", 0.98828125, None)  # 6 of 512 tokens differ: one too many for int8
    assert missed["checks"] == [{"check": "token_agreement", "op": ">=", "bound": 0.99,
                                 "measured": 0.98828125, "met": False}]
    assert not missed["met"] and "--keep-sensitive" in missed["remedy"]
    assert check_targets(4, "artifact", 0.98828125, None)["met"]  # the same agreement passes the int4 bar
    # A bit width no built-in method has still gets a bar: never an empty, vacuously met verdict.
    assert not check_targets(3, "artifact", 0.96, None)["met"] and not check_targets(16, "artifact", 0.985, None)["met"]


def test_remedy_is_one_the_method_can_take():
    artifact_int8 = check_targets(8, "artifact", 0.9, None)["remedy"]
    assert "--keep-sensitive K" in artifact_int8 and "8-bit method" not in artifact_int8  # no int8 -> int16 advice
    assert "8-bit method" in check_targets(4, "artifact", 0.9, None)["remedy"]
    # bitsandbytes cannot keep single layers (--keep-sensitive is refused for checkpoints): the
    # remedy sends the user to the ONNX path instead of a flag that would fail.
    checkpoint_nf4 = check_targets(4, "checkpoint", 0.9, None)["remedy"]
    assert checkpoint_nf4.startswith("export the checkpoint") and "8-bit method" in checkpoint_nf4


def test_success_may_drop_three_points_per_split_and_no_more():
    loop = {"source": {"train": 0.50, "heldout": 0.60}, "quantized": {"train": 0.47, "heldout": 0.56}}
    verdict = check_targets(8, "artifact", 1.0, loop)
    by_name = {c["check"]: c for c in verdict["checks"]}
    assert by_name["success_drop_train"]["met"]  # 0.50 - 0.47 is 0.03 up to float rounding: allowed
    assert not by_name["success_drop_heldout"]["met"] and by_name["success_drop_heldout"]["measured"] == 0.04
    assert not verdict["met"]
    improved = check_targets(8, "artifact", 1.0, {"source": {"train": 0.5}, "quantized": {"train": 0.6}})
    assert improved["met"] and improved["remedy"] is None  # a gain is never a miss


def test_markdown_marks_each_miss_and_names_the_remedy():
    verdict = check_targets(8, "artifact", 0.98, {"source": {"train": 0.5}, "quantized": {"train": 0.46}})
    text = "\n".join(targets_markdown(verdict))
    assert "| token_agreement | >= 99.0% | 98.0% | **missed** |" in text
    assert "| success_drop_train | <= 3.0 points | 4.0 points | **missed** |" in text
    assert verdict["remedy"] in text
