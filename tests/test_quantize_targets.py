"""The fidelity verdict every quantize report carries: the bars, their edges, and the remedy."""

from quantize.targets import REMEDY, check_targets, targets_markdown


def test_token_agreement_bar_depends_on_the_methods_bits():
    assert check_targets(8, 0.99, None)["met"] and check_targets(4, 0.97, None)["met"]
    missed = check_targets(8, 0.98828125, None)  # 6 of 512 tokens differ: one too many for int8
    assert not missed["met"] and missed["remedy"] == REMEDY
    assert missed["checks"] == [{"check": "token_agreement", "op": ">=", "bound": 0.99,
                                 "measured": 0.98828125, "met": False}]
    assert check_targets(4, 0.98828125, None)["met"]  # the same agreement passes the int4 bar


def test_success_may_drop_three_points_per_split_and_no_more():
    loop = {"source": {"train": 0.50, "heldout": 0.60}, "quantized": {"train": 0.47, "heldout": 0.56}}
    verdict = check_targets(8, 1.0, loop)
    by_name = {c["check"]: c for c in verdict["checks"]}
    assert by_name["success_drop_train"]["met"]  # 0.50 - 0.47 is 0.03 up to float rounding: allowed
    assert not by_name["success_drop_heldout"]["met"] and by_name["success_drop_heldout"]["measured"] == 0.04
    assert not verdict["met"]
    improved = check_targets(8, 1.0, {"source": {"train": 0.5}, "quantized": {"train": 0.6}})
    assert improved["met"] and improved["remedy"] is None  # a gain is never a miss


def test_markdown_marks_each_miss_and_names_the_remedy():
    text = "\n".join(targets_markdown(check_targets(8, 0.98, {"source": {"train": 0.5}, "quantized": {"train": 0.5}})))
    assert "| token_agreement | >= 99.0% | 98.0% | **missed** |" in text
    assert "| success_drop_train | <= 3.0% | 0.0% | met |" in text
    assert REMEDY in text
