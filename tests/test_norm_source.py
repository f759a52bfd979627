"""Where the norms come from (float sums or the reference's 8-bit PNGs), and the loss names."""

import json
import shutil

import numpy as np
import pytest

from nc_tf.cli import main
from nc_tf.detect import detect_dir, png_mask_norms
from nc_tf.engine import check_loss
from nc_tf.scan import scan_settings
from nc_tf.scan_folder import mask_png_path, png_l1_norm, save_trigger_pngs


def test_png_norm_is_the_saved_pngs_norm_truncated_like_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.uniform(0, 1, (8, 8)).astype(np.float32)
    mask[0, 0] = 0.9999  # 254.97: the reference's uint8 cast keeps 254, rounding would give 255
    save_trigger_pngs(str(tmp_path), "t", 3, np.zeros((8, 8, 3)), mask)
    read = png_mask_norms({3: mask_png_path(str(tmp_path), "t", 3)})[3]
    assert read == pytest.approx(png_l1_norm(mask), abs=1e-5)
    expected = np.floor(mask.astype(np.float32) * np.float32(255)).sum() / 255
    assert png_l1_norm(mask) == pytest.approx(expected, abs=1e-5)
    assert png_l1_norm(mask) < float(mask.sum())  # truncation only lowers a norm
    # the published flagged norm is a whole number of grey levels: 4110 / 255
    levels = np.zeros((32, 32), np.float32)
    levels.flat[:16] = 255
    levels.flat[16:17] = 30
    assert png_l1_norm(levels / 255) == pytest.approx(4110 / 255, abs=1e-5)


def test_detect_norm_source_png_reads_the_reference_measurement(tiny_scan, tmp_path, capsys):
    record, folder = tiny_scan
    floats = detect_dir(folder, verbose=False, norm_source="float")
    pngs = detect_dir(folder, verbose=False, norm_source="png")
    assert floats["norm_source"] == "float" and pngs["norm_source"] == "png"
    assert [label for label, _ in pngs["flagged"]] == [label for label, _ in floats["flagged"]]
    assert pngs["median"] < floats["median"]  # every mask loses its fractions of a level
    assert detect_dir(folder, verbose=False) == floats  # a fast-preset scan: float by default
    # a folder whose results lack the PNG norms reads them from the PNGs, to the same figures
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    saved = json.loads((copy / "results.json").read_text())
    for entry in saved["labels"].values():
        entry.pop("l1_norm_png")
    (copy / "results.json").write_text(json.dumps(saved))
    again = detect_dir(str(copy), verbose=False, norm_source="png")
    assert again["anomaly_index"] == pytest.approx(pngs["anomaly_index"], abs=1e-4)
    # the command line
    assert main(["detect", folder, "--norm-source", "png", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["norm_source"] == "png" and report["median"] == pytest.approx(pngs["median"])
    assert main(["detect", folder, "--norm-source", "both"]) == 2


def test_a_reference_preset_record_is_judged_on_png_norms(tiny_scan):
    from nc_tf.detect import detect

    record = json.loads(json.dumps({k: v for k, v in tiny_scan[0].items() if k != "triggers"}))
    record["settings"]["preset"] = "reference"
    verdict = detect(record, verbose=False)
    assert verdict["norm_source"] == "png"
    # the reference printout's median, whatever the verdict rule
    assert verdict["reference"]["median"] == pytest.approx(
        float(np.median([v["l1_norm_png"] for v in record["labels"].values()]))
    )


def test_loss_names():
    assert check_loss("crossentropy") == check_loss("ce") == "crossentropy"
    assert check_loss("reference") == "reference"
    with pytest.raises(ValueError, match="loss must be one of"):
        check_loss("mse")
    assert scan_settings("fast")["loss"] == scan_settings("reference")["loss"] == "reference"
    assert scan_settings("fast", loss="ce")["loss"] == "crossentropy"
