"""The verdict rules: the reference MAD test kept as it is, and the log-norm test beside it."""

import json

import pytest

from nc_tf import io
from nc_tf.cli import main
from nc_tf.detect import detect
from nc_tf.verdict import REVERSED_TOLERANCE, label_verdict, log_mad_outliers

# A third-party MNIST model as the issue measured it: the target 8x smaller than
# the median, clean labels spread from 8 to 31.
SPREAD = [2.2, 8.0, 13.8, 16.0, 19.0, 19.4, 22.0, 26.0, 29.0, 31.0]


def _entries(norms, asr=0.96, found=True):
    return {
        k: {"l1_norm": n, "attack_success_rate": asr, "found": found} for k, n in enumerate(norms)
    }


def test_log_norms_flag_a_target_the_raw_mad_misses(capsys):
    result = label_verdict(_entries(SPREAD), "l1_norm", rule="log_mad", threshold=0.95)
    reference = result["reference"]
    assert reference["flagged"] == [] and reference["anomaly_index"] < 2
    assert result["flagged"] == [[0, 2.2]] and result["anomaly_index"] > 3
    printed = capsys.readouterr().out.splitlines()
    # the reference's three lines first, unchanged, then the rule's verdict
    assert printed[0].startswith("median: ") and printed[1].startswith("anomaly index: ")
    assert printed[2] == "flagged label list: "
    assert printed[3].startswith("verdict (log_mad") and "flagged label list: 0: 2.2" in printed[3]


def test_the_reference_rule_is_the_reference_test():
    result = label_verdict(_entries(SPREAD), "l1_norm", rule="reference", verbose=False)
    for key in ("median", "mad", "anomaly_index", "flagged"):
        assert result[key] == result["reference"][key]


def test_short_labels_stay_out_of_the_median_but_are_still_tested():
    entries = _entries([2.5, 30.0, 31.0, 32.0, 33.0, 34.0, 35.0, 9.0, 10.0, 11.0])
    # the three small clean labels reached only 0.70: below the bar, outside the median
    for k in (7, 8, 9):
        entries[k]["attack_success_rate"] = 0.95 - REVERSED_TOLERANCE - 0.15
    # the target's backdoor fires on fewer inputs than the threshold: still tested
    entries[0]["attack_success_rate"] = 0.80
    result = label_verdict(entries, "l1_norm", threshold=0.95, verbose=False)
    assert result["not_reversed"] == [0, 7, 8, 9] and result["reversed_count"] == 6
    assert result["median"] == pytest.approx((32.0 * 33.0) ** 0.5)
    assert [k for k, _ in result["flagged"]][0] == 0
    # with them in it, the median would be lower
    everyone = log_mad_outliers([e["l1_norm"] for e in entries.values()], list(entries))
    assert everyone["median"] < result["median"] - 1


def test_a_label_never_flipped_is_not_tested():
    entries = _entries(SPREAD)
    entries[0]["found"] = False
    result = label_verdict(entries, "l1_norm", threshold=0.95, verbose=False)
    assert result["not_flipped"] == [0] and 0 not in [k for k, _ in result["flagged"]]
    assert "0" not in result["per_label"]


def test_too_few_reversed_labels_give_no_verdict():
    entries = _entries([2.0, 30.0, 31.0, 32.0], asr=0.5)
    result = label_verdict(entries, "l1_norm", threshold=0.95, verbose=False)
    assert result["flagged"] == [] and "too few" in result["note"]


def test_a_scan_without_a_recorded_rule_is_judged_as_before():
    record = {"settings": {"preset": "fast"}, "labels": _entries(SPREAD)}
    record["labels"] = {str(k): v for k, v in record["labels"].items()}
    assert detect(record, verbose=False)["rule"] == "reference"
    record["settings"]["rule"] = "log_mad"
    assert detect(record, verbose=False)["flagged"] == [[0, 2.2]]


def test_cli_detect_judges_by_the_rule_asked(tmp_path, capsys):
    folder = tmp_path / "scan"
    folder.mkdir()
    labels = {str(k): v for k, v in _entries(SPREAD).items()}
    record = {"settings": {"preset": "fast", "rule": "log_mad"}, "labels": labels}
    io.write_json(str(folder / "results.json"), record)
    assert main(["detect", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["flagged"] == [[0, 2.2]]
    assert main(["detect", str(folder), "--rule", "reference", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["flagged"] == []
    assert main(["detect", str(folder), "--rule", "median"]) == 2


def test_a_tight_middle_does_not_make_a_little_smaller_label_an_outlier():
    # eight labels within 4% of each other, one 30% below them, one far above
    norms = [40.0, 56.0, 57.0, 57.5, 58.0, 58.5, 59.0, 60.0, 61.0, 92.0]
    result = label_verdict(_entries(norms), "l1_norm", threshold=0.95, verbose=False)
    assert result["mad"] == pytest.approx(result["mad_floor"])
    assert result["flagged"] == []
    # without the floor the same label would be flagged
    assert log_mad_outliers(norms, range(10), threshold=3.0)["flagged"] == [(0, 40.0)]
    # while a trigger five times smaller than the median still is
    norms[0] = 11.0
    result = label_verdict(_entries(norms), "l1_norm", threshold=0.95, verbose=False)
    assert result["flagged"] == [[0, 11.0]]
