"""Neural Cleanse mitigation on a tiny backdoored MNIST model: filter, pruning, unlearning, repair.

Budgets (stated once, used below): a repaired model may lose at most
`ACC_BUDGET` of clean accuracy; "removed" means the original trigger's
attack success falls below `ASR_REMOVED`.
"""

import json

import keras
import numpy as np
import pytest

from mitigation.activations import layer_activations, prune_units, resolve_layer
from mitigation.filter import InputFilter, filter_curve, fit_filter
from mitigation.mitigate import measure, mitigate, split_data
from mitigation.pruning import NeuronPruning, prune
from mitigation.unlearning import Unlearning, UnlearningDataset, unlearn
from nc_tf.metrics import evaluate_backdoor, predict_labels
from nc_tf.models import load_model
from nc_tf.scan import scan_triggers

ACC_BUDGET = 0.05
ASR_REMOVED = 0.2


def _weights_equal(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))


def test_scan_triggers_are_the_flagged_reversed_triggers(tiny_scan):
    _, folder = tiny_scan
    triggers = scan_triggers(folder)
    assert [t.target for t in triggers] == [7]
    assert triggers[0].mask.shape == (28, 28, 1)
    with pytest.raises(ValueError, match="not in"):
        scan_triggers(folder, labels=[42])


def test_prune_units_silences_dense_and_conv_units(tiny_backdoored, mnist_small):
    model, _, _ = tiny_backdoored
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    x = mnist_small[2][:50]
    for layer in ("penultimate", "last_conv"):
        prune_units(copy, layer, [0, 3])
        act = layer_activations(copy, layer, x, reduce="linf")
        assert np.all(act[:, [0, 3]] == 0) and np.any(act[:, 1] != 0)
    with pytest.raises(ValueError, match="No layer named"):
        resolve_layer(copy, "nope")
    with pytest.raises(ValueError, match="Unit ids"):
        prune_units(copy, "penultimate", [10_000])


def test_pruning_removes_the_backdoor_and_saves(tmp_path, tiny_backdoored, tiny_scan, mnist_small):
    model, trigger, _ = tiny_backdoored
    _, _, xt, yt = mnist_small
    before = evaluate_backdoor(model, xt, yt, [trigger])
    original = [w.copy() for w in model.get_weights()]
    pruned, report = prune(
        model,
        xt[:500],
        yt[:500],
        scan_triggers(tiny_scan[1]),
        layer="last_conv",
        stop_asr=ASR_REMOVED,  # the reversed trigger's bar is the real one's
        max_ratio=0.5,
        step=1 / 32,
    )
    after = evaluate_backdoor(pruned, xt[500:], yt[500:], [trigger])
    assert before["attack_success_rate"] > 0.9
    assert after["attack_success_rate"] < ASR_REMOVED
    assert after["accuracy"] >= before["accuracy"] - ACC_BUDGET
    assert report["curve"][0]["pruned"] == 0 and report["chosen"]["pruned"] == len(
        report["neurons"]
    )
    assert max(report["chosen"]["asr_reversed"]) <= ASR_REMOVED
    assert max(report["curve"][-2]["asr_reversed"]) > ASR_REMOVED  # stopped at the first step below
    assert all(np.array_equal(a, b) for a, b in zip(original, model.get_weights()))
    pruned.save(tmp_path / "pruned.keras")
    reloaded = load_model(str(tmp_path / "pruned.keras"))
    np.testing.assert_allclose(
        reloaded.predict(xt[:64], verbose=0), pruned.predict(xt[:64], verbose=0), atol=1e-6
    )


def test_pruning_callback_keeps_neurons_silent_during_fit(tiny_backdoored, tiny_scan, mnist_small):
    model, trigger, _ = tiny_backdoored
    x, y, xt, yt = mnist_small
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile("adam", "sparse_categorical_crossentropy")
    cb = NeuronPruning(
        xt[:300], yt[:300], scan_triggers(tiny_scan[1]), layer="last_conv", ratio=0.25
    )
    copy.fit(x[:640], y[:640], epochs=1, batch_size=64, callbacks=[cb], verbose=0)
    assert len(cb.report["neurons"]) == 8
    act = layer_activations(copy, "last_conv", xt[:100], reduce="linf")
    assert np.all(act[:, cb.report["neurons"]] == 0)


def test_unlearning_removes_the_backdoor(tiny_backdoored, tiny_scan, mnist_small):
    model, trigger, _ = tiny_backdoored
    x, y, xt, yt = mnist_small
    before = evaluate_backdoor(model, xt, yt, [trigger])
    tuned, history = unlearn(model, x, y, scan_triggers(tiny_scan[1]), data_ratio=1.0, seed=0)
    after = evaluate_backdoor(tuned, xt, yt, [trigger])
    assert after["attack_success_rate"] < ASR_REMOVED < before["attack_success_rate"]
    assert after["accuracy"] >= before["accuracy"] - ACC_BUDGET
    assert "loss" in history and not _weights_equal(model, tuned)


def test_unlearning_dataset_restamps_a_fresh_share_each_epoch(tiny_backdoored, mnist_small):
    _, trigger, _ = tiny_backdoored
    x, y, _, _ = mnist_small
    data = UnlearningDataset(x[:500], y[:500], [trigger], stamp_ratio=0.2, batch_size=50, seed=3)
    first = data.stamped.copy()
    assert first.sum() == 100 and len(data) == 10
    xb, yb = data[0]
    assert xb.shape == (50, 28, 28, 1) and set(yb) <= set(y[:500])
    np.testing.assert_array_equal(np.sort(data.y[data.order]), np.sort(y[:500]))  # labels kept
    data.on_epoch_end()
    assert data.stamped.sum() == 100 and not np.array_equal(first, data.stamped)
    stamped_rows = data.data[data.stamped]
    np.testing.assert_array_equal(
        stamped_rows, trigger.apply(x[:500][data.stamped].astype(np.float32))
    )
    with pytest.raises(ValueError, match="at least one trigger"):
        UnlearningDataset(x[:10], y[:10], [])


def test_unlearning_callback_in_plain_fit(tiny_backdoored, tiny_scan, mnist_small):
    model, trigger, _ = tiny_backdoored
    x, y, xt, yt = mnist_small
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile(
        keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    cb = Unlearning(x[:2000], y[:2000], scan_triggers(tiny_scan[1]))
    history = copy.fit(
        x[2000:4000], y[2000:4000], batch_size=32, epochs=1, callbacks=[cb], verbose=0
    )
    assert cb.steps_taken == 63
    after = evaluate_backdoor(copy, xt, yt, [trigger])
    assert after["attack_success_rate"] < ASR_REMOVED
    # The fit's own metrics are those of its own data, not of the unlearning steps.
    assert set(history.history) == {"loss", "accuracy"}


def test_input_filter_flags_stamped_inputs(tmp_path, tiny_backdoored, tiny_scan, mnist_small):
    model, trigger, _ = tiny_backdoored
    x, _, xt, yt = mnist_small
    flt = fit_filter(model, x[:1000], scan_triggers(tiny_scan[1]), fpr=0.05)
    clean_fpr = np.mean(flt.flag(xt))
    fnr = np.mean(~flt.flag(trigger.apply(xt[yt != 7])))
    assert clean_fpr < 0.1 and fnr < 0.1
    labels, flagged = flt.predict(xt[:20])
    assert labels.shape == (20,) and flagged.dtype == bool
    flt.save(str(tmp_path / "filter.json"))
    again = InputFilter.load(str(tmp_path / "filter.json"), model)
    np.testing.assert_array_equal(again.flag(xt[:200]), flt.flag(xt[:200]))
    rows = filter_curve(flt, xt, trigger.apply(xt[yt != 7]), fprs=(0.01, 0.05, 0.2))
    assert [r["fnr"] for r in rows] == sorted([r["fnr"] for r in rows], reverse=True)


def test_mitigate_writes_the_report_and_never_touches_the_source(
    tmp_path, tiny_backdoored, tiny_scan, mnist_small
):
    model, trigger, _ = tiny_backdoored
    x, y, xt, yt = mnist_small
    data = split_data(x, y, xt, yt, val_ratio=0.1)
    original = [w.copy() for w in model.get_weights()]
    out = tmp_path / "prune"
    # peeling and verification: tests/test_cli.py
    pruned, report = mitigate(
        "prune",
        model,
        data,
        scan_triggers(tiny_scan[1]),
        [trigger],
        out_dir=str(out),
        layer="last_conv",
        verbose=False,
        verify=False,
    )
    saved = json.loads((out / "mitigation.json").read_text())
    assert saved["before"]["asr_original"][0] > 0.9
    assert saved["after"]["asr_original"][0] < saved["before"]["asr_original"][0]
    assert (out / "model.keras").exists() and (out / "pruning.png").exists()
    assert all(np.array_equal(a, b) for a, b in zip(original, model.get_weights()))
    with pytest.raises(FileExistsError, match="--force"):
        mitigate("prune", model, data, scan_triggers(tiny_scan[1]), out_dir=str(out), verbose=False)
    with pytest.raises(ValueError, match="reversed triggers"):
        mitigate("unlearn", model, data, [], verbose=False)
    with pytest.raises(ValueError, match="Unknown mitigation"):
        mitigate("magic", model, data, verbose=False)


def test_measure_counts_only_source_labels_of_partial_triggers(tiny_backdoored, mnist_small):
    from injection import square_trigger

    model, _, _ = tiny_backdoored
    _, _, xt, yt = mnist_small
    partial = square_trigger(xt.shape[1:], 7, sources=[3])
    row = measure(lambda im: predict_labels(model, im), xt, yt, attack_triggers=[partial])
    keep = yt == 3
    expected = np.mean(predict_labels(model, partial.apply(xt[keep])) == 7)
    assert row["asr_original"] == [pytest.approx(expected)]


def test_iterative_repair_peels_unlearns_checks_the_residue_and_resumes(
    tmp_path, tiny_backdoored, mnist_small
):
    from mitigation.peeling import MAX_PIECES
    from mitigation.repair import repair

    model, trigger, _ = tiny_backdoored
    x, y, xt, yt = mnist_small
    data = split_data(x, y, xt, yt, val_ratio=0.25)
    quick = dict(steps=80, nb_sample=64, starts=1)
    out = tmp_path / "repair"
    fixed, details = repair(
        model,
        data,
        rounds=2,
        out_dir=str(out),
        scan_options=quick,
        attack_triggers=[trigger],
        unlearn_options={"data_ratio": 1.0},
        verbose=False,
    )
    first, unlearned = details["rounds"][:2]
    assert first["flagged"] == [7] == details["labels"]
    # peeling ran on the flagged trigger: it goes on while the pieces are anomalously
    # small, and ends on an ordinary-sized trigger or after MAX_PIECES peels
    peels = details["peels"]["7"]
    assert peels and all(p["kept"] == (p["anomaly_index"] > 2) for p in peels)
    assert all(p["kept"] for p in peels[:-1])
    assert not peels[-1]["kept"] or len(peels) == MAX_PIECES
    assert set(details["triggers_unlearned"]) == {7}
    assert unlearned["after_unlearning"]["asr_original"][0] < ASR_REMOVED
    # round 1's residue scan: the flagged label and control labels, at 50% success
    rescan = json.loads((out / "round_1" / "scan" / "results.json").read_text())
    assert rescan["settings"]["attack_succ_threshold"] == 0.5
    assert "7" in rescan["labels"] and len(rescan["labels"]) == 9
    assert (out / "round_0" / "scan" / "results.json").exists()
    saved = out / "round_1" / "model.keras"
    stamp = saved.stat().st_mtime_ns
    again, details2 = repair(
        model,
        data,
        rounds=2,
        out_dir=str(out),
        scan_options=quick,
        unlearn_options={"data_ratio": 1.0},
        verbose=False,
    )
    assert saved.stat().st_mtime_ns == stamp  # resumed: the round's model was reused
    assert [r.get("flagged") for r in details2["rounds"]] == [
        r.get("flagged") for r in details["rounds"]
    ]
    np.testing.assert_allclose(
        again.predict(xt[:32], verbose=0), fixed.predict(xt[:32], verbose=0), atol=1e-5
    )


# What each method's report holds beyond the common fields (mitigation.methods.METHODS).
REPORT_FIELDS = {
    "filter": {"after": ("fpr", "fnr_reversed", "fnr_original"), "details": ("curves", "layer")},
    "linf-prune": {"after": ("accuracy", "asr_original"), "details": ("settings", "separation")},
    "fine-prune": {"after": ("accuracy", "asr_original"), "details": ()},
    "gym": {"after": ("accuracy", "asr_original"), "details": ("columns", "n_samples")},
    "shrinkpad": {"after": ("accuracy", "asr_original"), "details": ()},
    "flip": {"after": ("accuracy", "asr_original"), "details": ()},
}
OPTIONS = {
    "filter": {"layer": "last_conv"},
    "linf-prune": {"layer": "last_conv"},
    "fine-prune": {"layer": "last_conv"},
    "gym": {"epochs": 1, "n_samples": 200},
}


@pytest.mark.parametrize("method", sorted(REPORT_FIELDS))
def test_every_method_runs_through_mitigate_and_leaves_the_source_file_alone(
    tmp_path, tiny_backdoored, tiny_scan, mnist_small, method
):
    import hashlib

    from mitigation.methods import METHODS

    model, trigger, _ = tiny_backdoored
    path = tmp_path / "source.keras"
    model.save(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = load_model(path)
    x, y, xt, yt = mnist_small
    data = split_data(x[:1500], y[:1500], xt[:300], yt[:300], val_ratio=0.2)
    triggers = scan_triggers(tiny_scan[1]) if METHODS[method].needs == "scan" else []
    out = tmp_path / method
    result, report = mitigate(
        method,
        source,
        data,
        triggers,
        [trigger],
        out_dir=str(out),
        verbose=False,
        verify=False,
        **OPTIONS.get(method, {}),
    )
    saved = json.loads((out / "mitigation.json").read_text())
    assert saved["method"] == method and saved["identity"]["model_sha256"] == digest
    assert saved["before"]["asr_original"][0] > 0.9
    for key in REPORT_FIELDS[method]["after"]:
        assert key in saved["after"], key
    for key in REPORT_FIELDS[method]["details"]:
        assert key in saved["details"], key
    expected = "skipped" if METHODS[method].changes_model else "not applicable"
    assert saved["verification"]["verified"] is None
    assert saved["verification"]["status"].startswith(expected)
    assert (out / "model.keras").exists() == isinstance(result, keras.Model)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
