"""The scan's verdict: independent of the seed and of the output form, and refused on bad data."""

import json
import warnings

import keras
import numpy as np
import pytest

from nc_tf.cli import main
from nc_tf.engine import ReverseEngine
from nc_tf.metrics import check_clean_accuracy
from nc_tf.models import logits_twin, outputs_probabilities
from nc_tf.scan import scan
from nc_tf.short_pass import best_starts


def _flagged(record):
    return [label for label, _ in record["outlier"]["flagged"]]


@pytest.fixture(scope="module")
def seed_scans(tiny_backdoored, tiny_scan, mnist_small):
    """The default scan of the tiny backdoored model at seeds 0 (the shared fixture), 1 and 2."""
    _, _, xt, yt = mnist_small
    model = tiny_backdoored[0]
    records = {0: tiny_scan[0]}
    for seed in (1, 2):
        records[seed] = scan(model, xt, yt, seed=seed, progress=False, verbose=False)
    return records


def test_the_verdict_does_not_depend_on_the_seed(seed_scans):
    for seed, record in seed_scans.items():
        assert _flagged(record) == [7], f"seed {seed}: {record['outlier']}"
        assert record["outlier"]["anomaly_index"] > 2
        assert record["labels"]["7"]["found"]
        # every label got the preset's starts
        assert len(record["labels"]["7"]["start_norms"]) == record["settings"]["starts"]


def test_a_logits_twin_gets_the_same_scan(tiny_backdoored, seed_scans, mnist_small):
    _, _, xt, yt = mnist_small
    twin = logits_twin(tiny_backdoored[0])
    # the target and two clean labels: each label's run depends only on (seed, label)
    record = scan(twin, xt, yt, labels=[2, 7, 9], seed=0, progress=False, verbose=False)
    softmax = seed_scans[0]
    assert record["output"] == "logits" and softmax["output"] == "softmax"
    assert sorted(record["labels"]) == ["2", "7", "9"]
    for label, entry in record["labels"].items():
        assert entry["l1_norm"] == pytest.approx(
            softmax["labels"][label]["l1_norm"], rel=0.05, abs=0.5
        )
        assert entry["found"] == softmax["labels"][label]["found"]


def test_a_softmax_followed_by_another_layer_counts_as_softmax(tiny_backdoored, mnist_small):
    _, _, xt, _ = mnist_small
    model = tiny_backdoored[0]
    wrapped = keras.Sequential([keras.Input((28, 28, 1)), model, keras.layers.Activation("linear")])
    assert not outputs_probabilities(wrapped)  # the last layer alone says logits
    assert outputs_probabilities(wrapped, xt[:64])  # its outputs say probabilities
    assert not ReverseEngine(wrapped, xt[:64], steps=1).from_logits
    assert ReverseEngine(logits_twin(model), xt[:64], steps=1).from_logits
    # GangSweep's logits of it are log-probabilities, not the probabilities themselves
    from nc_tf.gangsweep import logits_function

    batch = xt[:8].astype("float32")
    logits = logits_function(wrapped, xt[:64])(batch)
    np.testing.assert_allclose(keras.ops.softmax(logits), wrapped(batch), atol=1e-5)


def test_the_scan_records_the_clean_accuracy(seed_scans, tiny_backdoored, mnist_small):
    _, _, xt, yt = mnist_small
    from nc_tf.metrics import accuracy, predict_labels

    expected = accuracy(predict_labels(tiny_backdoored[0], xt), yt)
    assert seed_scans[0]["clean_accuracy"] == pytest.approx(expected, abs=1e-4)


def test_a_model_that_misreads_its_data_is_refused(tiny_backdoored, mnist_small):
    _, _, xt, yt = mnist_small
    model = tiny_backdoored[0]
    # the model takes raw pixels; "mnist" scaling divides them by 255
    with pytest.raises(ValueError, match=r"clean accuracy .*below 50%.*--intensity"):
        scan(model, xt[:200], yt[:200], intensity="mnist", progress=False, verbose=False)
    with pytest.warns(UserWarning, match="clean accuracy"):
        record = scan(
            model,
            xt[:200],
            yt[:200],
            intensity="mnist",
            labels=[0, 7, 9],
            steps=2,
            starts=1,
            accept_low_accuracy=True,
            progress=False,
            verbose=False,
        )
    assert record["clean_accuracy"] < 0.5
    with pytest.raises(ValueError, match="--accept-low-accuracy"):
        check_clean_accuracy(0.3)
    with pytest.warns(UserWarning, match="only 70.0%"):
        check_clean_accuracy(0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_clean_accuracy(0.95) == 0.95


def test_cli_scan_then_detect_flags_the_target(tmp_path, capsys, tiny_backdoored, seed_scans):
    path = tmp_path / "model.keras"
    tiny_backdoored[0].save(path)
    out = tmp_path / "scan"
    assert (
        main(
            [
                "scan",
                str(path),
                "--dataset",
                "mnist",
                "--limit",
                "1000",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["output"] == "softmax" and record["clean_accuracy"] > 0.9
    assert main(["detect", str(out), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert [label for label, _ in verdict["flagged"]] == [7]
    # the CLI scan is the library scan of the same 1000 test images
    assert verdict["anomaly_index"] == pytest.approx(
        seed_scans[0]["outlier"]["anomaly_index"], rel=1e-3
    )
    assert (
        main(
            [
                "scan",
                str(path),
                "--dataset",
                "mnist",
                "--limit",
                "300",
                "--intensity",
                "mnist",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "clean accuracy" in err and "--accept-low-accuracy" in err
    assert not (tmp_path / "bad").exists()


def test_starts_keep_the_smallest_start(tiny_backdoored, mnist_small):
    _, _, xt, _ = mnist_small
    engine = ReverseEngine(tiny_backdoored[0], xt[:300], steps=100, mini_batch=1, mask_init=0.1)
    states, norms = best_starts(engine, [7, 3], starts=3, start_steps=5)
    assert [len(n) for n in norms] == [3, 3]
    assert len({round(v, 3) for v in norms[0]}) > 1  # different starts
    for state, job_norms in zip(states, norms):
        engine.load_slot(0, state)
        mask = engine._masks(engine.mask_tanh[:1]).numpy()
        assert mask.sum() == pytest.approx(min(job_norms), abs=0.02)
