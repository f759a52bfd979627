"""Neural Cleanse scan, Visualizer and MAD outlier test on tiny real MNIST models."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from injection.triggers import injection_func
from nc_tf import scan as scan_mod
from nc_tf.metrics import attack_success_rate, predict_labels
from nc_tf.outlier import outlier_detection
from nc_tf.scan import detect_dir, load_reversed, scan
from nc_tf.visualizer import Visualizer

QUICK = dict(steps=60, nb_sample=64, early_stop_patience=10, starts=1)


@pytest.fixture(scope="session")
def tiny_clean(mnist_small):
    from recipes import tiny_clean_model

    return tiny_clean_model(*mnist_small[:2], seed=1)


def test_scan_flags_the_injected_label(tmp_path, tiny_backdoored, tiny_scan, mnist_small, capsys):
    import shutil

    model, trigger, _ = tiny_backdoored
    xt, yt = mnist_small[2:]
    record, folder = tiny_scan
    out = tmp_path / "scan"
    shutil.copytree(folder, out)
    detect_dir(str(out))
    printed = capsys.readouterr().out
    assert record["outlier"]["anomaly_index"] > 2
    assert [f[0] for f in record["outlier"]["flagged"]] == [trigger.target]
    assert "flagged label list: 7: " in printed
    entry = record["labels"]["7"]
    assert entry["found"]
    # The reversed trigger is small and sits where the real one is, and the
    # success reported is its success on the scan data (how high it is, is a
    # benchmark figure: bench/fixture_spread.py).
    mask, pattern = load_reversed(str(out), 7)
    stamped = injection_func(mask[..., None], pattern, xt)
    assert entry["attack_success_rate"] == pytest.approx(
        attack_success_rate(predict_labels(model, stamped), yt, 7)
    )
    assert mask.shape == (28, 28) and pattern.shape == (28, 28, 1)
    assert mask.sum() < 0.5 * np.median([v["l1_norm"] for v in record["labels"].values()])
    real = trigger.mask[..., 0] > 0
    assert mask[real].sum() / mask.sum() > 0.3
    for kind in ("mask", "pattern", "fusion"):
        assert (out / f"nc_visualize_{kind}_label_7.png").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["outlier"]["flagged"][0][0] == 7 and saved["settings"]["preset"] == "fast"
    # detect reads the folder back, from JSON and from the mask PNGs alone.
    assert detect_dir(str(out), verbose=False)["flagged"][0][0] == 7
    (out / "results.json").unlink()
    assert detect_dir(str(out), verbose=False)["flagged"][0][0] == 7


def test_clean_model_is_not_flagged(mnist_small, tiny_clean):
    _, _, xt, yt = mnist_small
    record = scan(tiny_clean, xt, yt, progress=False, verbose=False)
    verdict = record["outlier"]
    assert verdict["rule"] == "log_mad"
    assert verdict["anomaly_index"] < verdict["threshold"]
    assert verdict["flagged"] == []


def test_resume_after_interrupt_gives_the_same_results(
    tmp_path, mnist_small, tiny_backdoored, monkeypatch
):
    _, _, xt, yt = mnist_small
    model = tiny_backdoored[0]
    labels = [0, 3, 7, 9]
    full = scan(
        model,
        xt[:300],
        yt[:300],
        labels=labels,
        out_dir=str(tmp_path / "a"),
        progress=False,
        verbose=False,
        slots=2,
        **QUICK,
    )

    real_save, calls = scan_mod.save_trigger_pngs, []

    def interrupt_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(scan_mod, "save_trigger_pngs", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        scan(
            model,
            xt[:300],
            yt[:300],
            labels=labels,
            out_dir=str(tmp_path / "b"),
            progress=False,
            verbose=False,
            slots=2,
            **QUICK,
        )
    monkeypatch.setattr(scan_mod, "save_trigger_pngs", real_save)
    partial = json.loads((tmp_path / "b" / "results.json").read_text())
    assert len(partial["labels"]) == 2
    assert partial["wall_time_s"] > 0  # the killed scan kept the time of its finished labels
    resumed = scan(
        model,
        xt[:300],
        yt[:300],
        labels=labels,
        out_dir=str(tmp_path / "b"),
        progress=False,
        verbose=False,
        slots=2,
        **QUICK,
    )
    assert resumed["wall_time_s"] > partial["wall_time_s"]
    assert sorted(resumed["labels"]) == sorted(full["labels"])
    for k, v in full["labels"].items():
        assert resumed["labels"][k]["steps"] == v["steps"]
        assert resumed["labels"][k]["l1_norm"] == pytest.approx(v["l1_norm"], rel=1e-3)
    # A different setting on the same folder is refused, not mixed in.
    with pytest.raises(FileExistsError, match="different settings"):
        scan(
            model,
            xt[:300],
            yt[:300],
            labels=labels,
            out_dir=str(tmp_path / "b"),
            progress=False,
            verbose=False,
            steps=61,
            nb_sample=64,
        )


def test_mad_printout_matches_reference_format(capsys):
    norms = [64.466667, 16.117647, 80.0, 50.0, 70.0, 60.0, 66.0]
    result = outlier_detection(norms, list(range(30, 37)))
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"median: \d+\.\d{6}, MAD: \d+\.\d{6}", lines[0])
    assert re.fullmatch(r"anomaly index: \d+\.\d{6}", lines[1])
    assert lines[2] == "flagged label list: 31: 16.117647"
    med = np.median(norms)
    mad = 1.4826 * np.median(np.abs(np.array(norms) - med))
    assert result["median"] == pytest.approx(med) and result["mad"] == pytest.approx(mad)
    assert result["anomaly_index"] == pytest.approx(abs(16.117647 - med) / mad)
    # Large norms are never flagged, however far from the median.
    assert (
        outlier_detection([10, 10.5, 11, 9.5, 500], [0, 1, 2, 3, 4], verbose=False)["flagged"] == []
    )


def _logits_copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.layers[-1].activation = keras.activations.linear
    return clone


@pytest.mark.parametrize("source", ["numpy", "pydataset", "tfdata", "logits"])
def test_visualizer_reference_api(source, mnist_small, tiny_backdoored):
    _, _, xt, yt = mnist_small
    model, _, _ = tiny_backdoored
    x = xt[:256].astype(np.float32) / 255.0  # the reference gives preprocessed data
    if source == "pydataset":

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return 8

            def __getitem__(self, i):
                return x[i * 32 : (i + 1) * 32], yt[i * 32 : (i + 1) * 32]

        data = Batches()
    elif source == "tfdata":
        data = tf.data.Dataset.from_tensor_slices((x, yt[:256])).batch(32)
    else:
        data = x
    used = _logits_copy(model) if source == "logits" else model
    # A model that takes the preprocessed data: [0, 1] inputs, scaled back to the raw pixels.
    used = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Rescaling(255.0), used])
    viz = Visualizer(
        used,
        "mnist",
        "l1",
        (28, 28, 1),
        1e-3,
        30,
        2,
        0.1,
        10,
        upsample_size=2,
        patience=3,
        cost_multiplier=2,
        img_color=1,
        verbose=0,
    )
    rng = np.random.default_rng(0)
    pattern, mask, mask_up, logs = viz.visualize(
        data, 7, rng.random((28, 28, 1)) * 255, rng.random((28, 28))
    )
    assert pattern.shape == (28, 28, 1) and 0 <= pattern.min() and pattern.max() <= 255
    assert mask.shape == (14, 14) and mask_up.shape == (28, 28)
    assert np.array_equal(np.repeat(np.repeat(mask, 2, 0), 2, 1), mask_up)
    assert len(logs) >= 1 and len(logs[0]) == 7 and logs[0][0] == 1
    assert max(row[4] for row in logs) >= 0.9  # the backdoored label is easy to reach


def test_bad_scan_inputs(mnist_small, tiny_backdoored):
    _, _, xt, yt = mnist_small
    model = tiny_backdoored[0]
    with pytest.raises(ValueError, match="single class"):
        scan(model, xt[:100], np.zeros(100, int), progress=False)
    with pytest.raises(ValueError, match="outside the raw range"):
        scan(model, xt[:100].astype(np.float32) * 2, yt[:100], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        scan(model, xt[:100], yt[:100], labels=[3, 10], progress=False)
    bad = xt[:100].astype(np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        scan(model, bad, yt[:100], progress=False)
    with pytest.raises(ValueError, match="expects images shaped"):
        scan(model, np.zeros((100, 32, 32, 3), np.uint8), progress=False)
    with pytest.raises(ValueError, match="Unknown preset"):
        scan(model, xt[:100], yt[:100], preset="slow")
    with pytest.raises(ValueError, match="mask_init"):
        scan(model, xt[:100], yt[:100], mask_init=1.5, progress=False)


def test_restarts_keep_the_smallest_valid_trigger(mnist_small, tiny_backdoored):
    _, _, xt, yt = mnist_small
    model = tiny_backdoored[0]
    # one slot: every forward pass holds one job's batch, so a run's arithmetic
    # does not depend on which other runs share the graph
    record = scan(
        model,
        xt[:300],
        yt[:300],
        labels=[7, 1, 4],
        restarts=3,
        mask_init="random",
        slots=1,
        progress=False,
        verbose=False,
        **QUICK,
    )
    for entry in record["labels"].values():
        tries = entry["restarts"]
        assert len(tries) == 3
        valid = [t["l1_norm"] for t in tries if t["found"]] or [t["l1_norm"] for t in tries]
        assert entry["l1_norm"] == pytest.approx(min(valid))
        # different starts: not three identical runs
        assert len({round(t["l1_norm"], 4) for t in tries}) > 1
    single = scan(
        model,
        xt[:300],
        yt[:300],
        labels=[7, 1, 4],
        mask_init="random",
        slots=1,
        progress=False,
        verbose=False,
        **QUICK,
    )
    # restart 0 is the single run: the kept norm is never larger
    for key, entry in single["labels"].items():
        assert "restarts" not in entry
        assert record["labels"][key]["restarts"][0]["l1_norm"] == pytest.approx(
            entry["l1_norm"], rel=1e-6
        )
