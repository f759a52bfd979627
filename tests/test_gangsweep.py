"""GangSweep detection and patching on the tiny MNIST models (small, fast settings)."""

import os
import shutil

import keras
import numpy as np
import pytest

from mitigation.gangsweep_patching import PatchingDataset, patch
from nc_tf import gangsweep as gs
from nc_tf import io
from nc_tf.gangsweep import (
    build_generator,
    gangsweep_outliers,
    gangsweep_scan,
    label_statistics,
    load_generators,
)
from nc_tf.metrics import evaluate_backdoor, predict_labels

# 300 scan images, a narrow generator, at most 10 epochs of one pass each.
FAST = dict(
    epochs=10,
    batch_size=32,
    filters=8,
    residual_blocks=1,
    progress=False,
    verbose=False,
    min_steps_per_epoch=0,
)
N_SCAN = 300
# The infected scan trains 6 of the 10 generators: 7, the target, and the
# five clean labels whose generators persist most on this model (the
# hardest for the outlier test to tell from the target).
SCAN_LABELS = [0, 2, 4, 7, 8, 9]


class ConstantGenerator:
    """Stands in for a generator: the same perturbation (in [0, 1]) for every image."""

    def __init__(self, perturbation):
        self.perturbation = np.asarray(perturbation, np.float32)

    def __call__(self, x, training=False):
        return np.broadcast_to(self.perturbation, np.shape(x)).copy()


@pytest.fixture(scope="module")
def clean_tiny(mnist_small):
    """The tiny model's clean twin: same architecture, 2 epochs on the 4000 images."""
    from nc_tf.models import mnist_model

    x, y, _, _ = mnist_small
    keras.utils.set_random_seed(2)
    model = mnist_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def infected_scan(tmp_path_factory, mnist_small, tiny_backdoored):
    """(record, folder) of a GangSweep scan of `SCAN_LABELS` of the backdoored model."""
    _, _, xt, yt = mnist_small
    out = str(tmp_path_factory.mktemp("gangsweep") / "scan")
    record = gangsweep_scan(
        tiny_backdoored[0], xt[:N_SCAN], yt[:N_SCAN], labels=SCAN_LABELS, out_dir=out, **FAST
    )
    return record, out


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (27, 30, 3)])
def test_generator_keeps_the_image_shape_and_outputs_unit_range(shape):
    generator = build_generator(shape, filters=4, residual_blocks=1, seed=0)
    assert generator.output_shape == (None,) + shape
    x = np.random.default_rng(0).random((3,) + shape).astype(np.float32)
    out = np.asarray(generator(x))
    assert out.shape == (3,) + shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.mean() < 0.1  # training starts from a faint perturbation
    # Seeded: the same seed gives the same initial weights.
    again = build_generator(shape, filters=4, residual_blocks=1, seed=0)
    np.testing.assert_array_equal(np.asarray(again(x)), out)


def test_label_statistics_of_the_true_trigger_and_of_nothing(mnist_small, tiny_backdoored):
    model, trigger, _ = tiny_backdoored
    _, _, xt, yt = mnist_small
    x, y = xt[:N_SCAN], yt[:N_SCAN]
    real = ConstantGenerator(trigger.mask * trigger.pattern / 255.0)
    stats = label_statistics(model, real, x, y, 7)
    assert stats["persistence"] >= 0.9
    assert stats["attack_success_rate"] >= 0.9
    assert stats["l2"] == pytest.approx(4.0)  # 16 white pixels
    assert stats["n_images"] == int(np.sum(y != 7))
    assert set(stats["persistence_by_source"]) == {str(c) for c in range(10) if c != 7}
    nothing = label_statistics(model, ConstantGenerator(np.zeros(x.shape[1:])), x, y, 7)
    # No perturbation: only the model's own clean mistakes towards 7 count.
    mistakes = float(np.mean(predict_labels(model, x[y != 7]) == 7))
    assert nothing["attack_success_rate"] == pytest.approx(mistakes) and mistakes < 0.05
    assert nothing["persistence"] < 0.05
    assert nothing["V"] == pytest.approx(0.0, abs=1e-9) and nothing["D"] == pytest.approx(0.0)
    assert nothing["V_relative"] == 0.0, "nothing moves: no share to explain"
    # V_relative is V over the mean squared logit shift.
    assert 0.0 <= stats["V_relative"] <= 1.0
    assert stats["V_relative"] * np.mean(np.square(_shift(model, real, x[y != 7]))) == (
        pytest.approx(stats["V"], rel=1e-4)
    )


def _shift(model, generator, x):
    """Logit shift `phi(x + G(x)) - phi(x)` per image."""
    fn = gs.logits_function(model)
    adv = gs.stamp(x, gs.generate(generator, x))
    return gs.batched_logits(fn, adv, "raw") - gs.batched_logits(fn, x, "raw")


def test_gangsweep_outliers_follows_algorithm_1(capsys):
    v = [10.0, 12.0, 11.0, 9.0, 13.0, 1.0]
    d = [0.0, 0.5, -0.5, 0.2, -0.2, 5.0]
    p = [0.1, 0.2, 0.95, 0.1, 0.3, 0.97]
    stats = {t: {"persistence": p[t], "V": v[t], "D": d[t]} for t in range(6)}
    result = gangsweep_outliers(stats)
    mad_v = 1.4826 * np.median(np.abs(np.array(v) - np.median(v)))
    mad_d = 1.4826 * np.median(np.abs(np.array(d) - np.median(d)))
    z_v = (np.median(v) - v[5]) / mad_v
    z_d = (d[5] - np.median(d)) / mad_d
    assert result["per_label"][5]["Z_V"] == pytest.approx(z_v)
    assert result["per_label"][5]["Z_D"] == pytest.approx(z_d)
    assert result["per_label"][5]["AI"] == pytest.approx((z_v + z_d) / 2)
    # Label 2 persists but is not an outlier; label 5 is both.
    assert result["persistent"] == [2, 5]
    assert [t for t, _ in result["flagged"]] == [5] and result["infected"]
    assert result["anomaly_index"] == pytest.approx((z_v + z_d) / 2)
    assert "flagged label list: 5:" in capsys.readouterr().out
    assert result["statistic"] == "paper" and result["other_statistic"] is None, "no margins"
    # The same outlier without persistence is not flagged; no persistent label: clean, AI 0.
    stats[5]["persistence"] = stats[2]["persistence"] = 0.5
    quiet = gangsweep_outliers(stats, verbose=False)
    assert quiet["flagged"] == [] and not quiet["infected"] and quiet["anomaly_index"] == 0.0
    with pytest.raises(ValueError, match="at least 3 labels"):
        gangsweep_outliers({0: stats[0], 1: stats[1]})
    # nc-tf's margin statistic: AI = Z_M, same gate; needs every label's margin.
    with pytest.raises(ValueError, match="margin.*statistic='paper'"):
        gangsweep_outliers(stats, statistic="margin", verbose=False)
    with pytest.raises(ValueError, match="Unknown statistic"):
        gangsweep_outliers(stats, statistic="zscore", verbose=False)
    m = [0.1, -0.2, 0.3, 0.0, 0.2, 9.0]
    for t in range(6):
        stats[t]["margin"] = m[t]
    stats[5]["persistence"] = 0.97
    z_m = (m[5] - np.median(m)) / (1.4826 * np.median(np.abs(np.array(m) - np.median(m))))
    margin = gangsweep_outliers(stats, statistic="margin")
    assert margin["statistic"] == "margin" and margin["per_label"][5]["AI"] == pytest.approx(z_m)
    assert margin["per_label"][5]["Z_V"] == pytest.approx(z_v), "Z_V, Z_D still reported"
    assert [t for t, _ in margin["flagged"]] == [5]
    assert margin["anomaly_index"] == pytest.approx(z_m)
    assert "anomaly index (margin)" in capsys.readouterr().out
    other = margin["other_statistic"]
    assert other["statistic"] == "paper" and [t for t, _ in other["flagged"]] == [5]
    assert other["anomaly_index"] == pytest.approx((z_v + z_d) / 2)
    # A huge margin without persistence is not flagged either.
    stats[5]["persistence"] = 0.5
    assert gangsweep_outliers(stats, statistic="margin", verbose=False)["flagged"] == []
    # The paper's statistic reports Z_M too when every label has a margin.
    assert gangsweep_outliers(stats, verbose=False)["per_label"][5]["Z_M"] == pytest.approx(z_m)


def test_scan_finds_the_backdoor_generator(infected_scan, mnist_small):
    record, out = infected_scan
    labels = record["labels"]
    assert sorted(labels, key=int) == [str(t) for t in SCAN_LABELS]
    persistence = {int(k): v["persistence"] for k, v in labels.items()}
    others = max(p for t, p in persistence.items() if t != 7)
    assert persistence[7] >= 0.7 and persistence[7] - others >= 0.3
    assert labels["7"]["attack_success_rate"] >= 0.8
    assert max(labels, key=lambda k: labels[k]["D"]) == "7"
    # nc-tf's target margin ranks label 7 first and above the threshold of 2.
    assert max(labels, key=lambda k: labels[k]["margin"]) == "7"
    assert labels["7"]["Z_M"] > gs.AI_THRESHOLD
    for entry in labels.values():
        assert {"Z_V", "Z_D", "AI", "l2", "epochs", "seconds", "V_relative"} <= set(entry)
        assert 1 <= entry["epochs"] <= FAST["epochs"]
    saved = io.read_json(os.path.join(out, "results.json"))
    assert saved["method"] == "gangsweep" and saved["settings"]["filters"] == FAST["filters"]
    assert saved["labels"]["7"]["persistence"] == pytest.approx(persistence[7])
    for t in SCAN_LABELS:
        for name in (
            f"gangsweep_perturbation_label_{t}.png",
            f"gangsweep_samples_label_{t}.png",
            os.path.join("generators", f"label_{t}.weights.h5"),
        ):
            assert os.path.exists(os.path.join(out, name)), name


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Known shortfall: on the tiny model the paper's persistence gate holds the backdoor label "
        "back (docs/gangsweep.md)."
    ),
)
def test_scan_flags_the_backdoor_label(infected_scan):
    record, _ = infected_scan
    assert record["outlier"]["infected"]
    assert record["outlier"]["flagged"][0][0] == 7


def test_clean_model_is_not_flagged(clean_tiny, mnist_small, infected_scan):
    """Four labels, not ten: 7, the infected model's target, and 3, 5 and 8,
    the clean model's most persistent generators (the hardest cases)."""
    _, _, xt, yt = mnist_small
    record = gangsweep_scan(clean_tiny, xt[:N_SCAN], yt[:N_SCAN], labels=[3, 5, 7, 8], **FAST)
    assert sorted(record["labels"], key=int) == ["3", "5", "7", "8"]
    assert record["outlier"]["flagged"] == [] and not record["outlier"]["infected"]
    assert record["outlier"]["anomaly_index"] == 0.0
    top = max(v["persistence"] for v in record["labels"].values())
    assert top <= infected_scan[0]["labels"]["7"]["persistence"] - 0.2


def test_scan_folder_resumes_and_refuses_other_settings(
    infected_scan, mnist_small, tiny_backdoored, tmp_path, monkeypatch
):
    record, out = infected_scan
    model = tiny_backdoored[0]
    _, _, xt, yt = mnist_small
    x, y = xt[:N_SCAN], yt[:N_SCAN]
    # An interrupted scan: label 9 never finished.
    folder = str(tmp_path / "scan")
    shutil.copytree(out, folder)
    os.remove(os.path.join(folder, "generators", "label_9.weights.h5"))
    trained = []
    original = gs.GeneratorTrainer.fit

    def counting_fit(self, x01, target, *args):
        trained.append(int(target))
        return original(self, x01, target, *args)

    monkeypatch.setattr(gs.GeneratorTrainer, "fit", counting_fit)
    resumed = gangsweep_scan(model, x, y, labels=SCAN_LABELS, out_dir=folder, **FAST)
    assert trained == [9]
    for t in SCAN_LABELS[:-1]:
        assert resumed["labels"][str(t)]["seconds"] == record["labels"][str(t)]["seconds"]
    assert resumed["labels"]["9"]["persistence"] == pytest.approx(
        record["labels"]["9"]["persistence"]
    )
    # A finished scan: nothing is trained again.
    again = gangsweep_scan(model, x, y, labels=SCAN_LABELS, out_dir=folder, **FAST)
    assert trained == [9] and again["outlier"] == resumed["outlier"]
    # Judged again with the margin statistic: no training; labels scanned before the
    # margin was recorded get it from their saved generators.
    saved = io.read_json(os.path.join(folder, "results.json"))
    margins = {k: v.pop("margin") for k, v in saved["labels"].items()}
    io.write_json(os.path.join(folder, "results.json"), saved)
    judged = gangsweep_scan(
        model, x, y, labels=SCAN_LABELS, out_dir=folder, statistic="margin", **FAST
    )
    assert trained == [9] and judged["outlier"]["statistic"] == "margin"
    for k, value in margins.items():
        assert judged["labels"][k]["margin"] == pytest.approx(value, rel=1e-4, abs=1e-5)
        assert judged["labels"][k]["AI"] == judged["labels"][k]["Z_M"]
    assert io.read_json(os.path.join(folder, "results.json"))["outlier"]["statistic"] == "margin"
    # The persistence gate is a judging setting too: no training, and a gate just
    # under the target's persistence (below the default) lets label 7 through, where
    # the margin flags it.
    gate = round(record["labels"]["7"]["persistence"] - 0.05, 2)
    assert 0 < gate < gs.PERSISTENCE_THRESHOLD and not record["outlier"]["persistent"]
    lowered = gangsweep_scan(
        model,
        x,
        y,
        labels=SCAN_LABELS,
        out_dir=folder,
        statistic="margin",
        persistence_threshold=gate,
        **FAST,
    )
    assert trained == [9] and lowered["outlier"]["persistence_threshold"] == gate
    assert lowered["outlier"]["persistent"] == [
        t for t in SCAN_LABELS if lowered["labels"][str(t)]["persistence"] >= gate
    ]
    assert lowered["outlier"]["flagged"][0][0] == 7
    for bad in (90, 0, "0.9"):
        with pytest.raises(ValueError, match="persistence_threshold must be a fraction"):
            gangsweep_scan(
                model, x, y, labels=SCAN_LABELS, out_dir=folder, persistence_threshold=bad, **FAST
            )
    with pytest.raises(ValueError, match="Unknown statistic"):
        gangsweep_scan(model, x, y, labels=SCAN_LABELS, out_dir=folder, statistic="ai", **FAST)
    # A folder written before `min_steps_per_epoch` existed ran one pass per epoch (0),
    # and one written before `alpha_gate` existed, the paper's alpha rule (None).
    saved = io.read_json(os.path.join(folder, "results.json"))
    del saved["settings"]["min_steps_per_epoch"], saved["settings"]["alpha_gate"]
    io.write_json(os.path.join(folder, "results.json"), saved)
    gangsweep_scan(model, x, y, labels=SCAN_LABELS, out_dir=folder, **FAST)
    for key, value in (("min_steps_per_epoch", 32), ("alpha_gate", 0.9)):
        with pytest.raises(FileExistsError, match=key):
            gangsweep_scan(
                model, x, y, labels=SCAN_LABELS, out_dir=folder, **dict(FAST, **{key: value})
            )
    # Other settings, or another method's scan, are refused with the fix named.
    with pytest.raises(FileExistsError, match=r"epochs.*--out.*force=True"):
        gangsweep_scan(model, x, y, labels=SCAN_LABELS, out_dir=folder, **dict(FAST, epochs=11))
    nc_folder = tmp_path / "nc"
    nc_folder.mkdir()
    io.write_json(str(nc_folder / "results.json"), {"settings": {}, "labels": {}})
    with pytest.raises(FileExistsError, match=r"--out.*force=True"):
        gangsweep_scan(model, x, y, out_dir=str(nc_folder), **FAST)
    assert trained == [9]


def test_an_interrupted_scan_keeps_its_finished_labels_and_their_time(
    mnist_small, tiny_backdoored, tmp_path, monkeypatch
):
    model = tiny_backdoored[0]
    _, _, xt, yt = mnist_small
    x, y, settings = xt[:100], yt[:100], dict(FAST, epochs=1)
    original = gs.GeneratorTrainer.fit

    def interrupted_fit(self, x01, target, *args):
        if int(target) == 2:
            raise KeyboardInterrupt
        return original(self, x01, target, *args)

    monkeypatch.setattr(gs.GeneratorTrainer, "fit", interrupted_fit)
    folder = str(tmp_path / "scan")
    with pytest.raises(KeyboardInterrupt):
        gangsweep_scan(model, x, y, labels=[0, 2], out_dir=folder, **settings)
    saved = io.read_json(os.path.join(folder, "results.json"))
    assert list(saved["labels"]) == ["0"]
    assert saved.get("wall_time_s", 0) >= saved["labels"]["0"]["seconds"] > 0
    monkeypatch.setattr(gs.GeneratorTrainer, "fit", original)
    resumed = gangsweep_scan(model, x, y, labels=[0, 2], out_dir=folder, **settings)
    assert resumed["labels"]["0"]["seconds"] == saved["labels"]["0"]["seconds"]
    assert resumed["wall_time_s"] >= sum(v["seconds"] for v in resumed["labels"].values())


def test_load_generators_rebuilds_the_scanned_generators(
    infected_scan, mnist_small, tiny_backdoored
):
    record, out = infected_scan
    _, _, xt, yt = mnist_small
    generators = load_generators(out, labels=[7])
    assert list(generators) == [7]
    stats = label_statistics(tiny_backdoored[0], generators[7], xt[:N_SCAN], yt[:N_SCAN], 7)
    for name in ("persistence", "V", "D", "l2"):
        assert stats[name] == pytest.approx(record["labels"]["7"][name], rel=1e-4, abs=1e-6)
    assert sorted(load_generators(out)) == [t for t, _ in record["outlier"]["flagged"]]
    with pytest.raises(ValueError, match="no generator"):
        load_generators(out, labels=[11])


def test_small_image_sets_get_at_least_min_steps_per_epoch(
    mnist_small, tiny_backdoored, monkeypatch
):
    model = tiny_backdoored[0]
    _, _, xt, yt = mnist_small
    x = xt[:100][yt[:100] != 7]  # 89 images: 3 steps a pass at batch 32
    seen = []
    original_reset = gs.GeneratorTrainer.reset

    def reset_and_count(self, seed, target):  # wraps the compiled step of each new trainer
        original_reset(self, seed, target)
        step = self._step

        def counting_step(batch, target, alpha):
            seen.append(int(batch.shape[0]))
            return step(batch, target, alpha)

        self._step = counting_step

    monkeypatch.setattr(gs.GeneratorTrainer, "reset", reset_and_count)
    common = dict(epochs=2, batch_size=32, filters=2, residual_blocks=1, patience=5)
    _, history = gs.train_generator(model, x, 7, min_steps_per_epoch=0, **common)
    assert len(history["l_pert"]) == 2 and seen == [32, 32, len(x) - 64] * 2, "one pass"
    seen.clear()
    _, history = gs.train_generator(model, x, 7, min_steps_per_epoch=8, **common)
    assert len(history["l_pert"]) == 2 and seen == [32] * 16, "8 full batches an epoch"
    seen.clear()
    gs.train_generator(model, x, 7, min_steps_per_epoch=2, **common)
    assert seen == [32, 32, len(x) - 64] * 2, "a pass longer than the minimum stays one pass"
    for bad in (-1, 1.5, "8"):
        with pytest.raises(ValueError, match="min_steps_per_epoch"):
            gs.train_generator(model, x, 7, min_steps_per_epoch=bad, **common)


def _expected_alphas(history, gate):
    """The alpha of every epoch, from the previous epoch's figures (2 first)."""
    expected = [gs.ALPHA_FIRST]
    for pert, adv, success in zip(history["l_pert"], history["l_adv"], history["success"]):
        lower = pert > adv and (gate is None or success >= gate)
        expected.append(gs.ALPHA_LOW if lower else gs.ALPHA_HIGH)
    return expected[: len(history["alpha"])]


def test_alpha_gate_keeps_alpha_high_until_the_target_is_reached(mnist_small, tiny_backdoored):
    model = tiny_backdoored[0]
    _, _, xt, yt = mnist_small
    x = xt[:100][yt[:100] != 7]
    common = dict(
        epochs=5, batch_size=32, filters=4, residual_blocks=1, patience=5, min_steps_per_epoch=0
    )
    _, paper = gs.train_generator(model, x, 7, **common)
    assert paper["alpha"] == _expected_alphas(paper, None)
    assert gs.ALPHA_LOW in paper["alpha"], "the paper's rule lowers alpha on this model"
    # Gated at 1.0, alpha may drop only after an epoch that sent every image to 7.
    _, gated = gs.train_generator(model, x, 7, alpha_gate=1.0, **common)
    assert gated["alpha"] == _expected_alphas(gated, 1.0)
    lowered = [i for i, a in enumerate(gated["alpha"]) if a == gs.ALPHA_LOW]
    assert all(gated["success"][i - 1] == 1.0 for i in lowered)
    assert gated["alpha"] != paper["alpha"]
    for bad in (0, 1.5, "0.9", True):
        with pytest.raises(ValueError, match="alpha_gate"):
            gs.train_generator(model, x, 7, alpha_gate=bad, **common)


def test_scan_warns_about_collapsed_generators(mnist_small, tiny_backdoored, monkeypatch):
    """A generator that ended an epoch at G(x) = 0 is recorded and named, with the fix."""
    _, _, xt, yt = mnist_small

    def fake_fit(self, x01, target, *args):  # label 2's generator collapses in epoch 2
        dead = int(target) == 2
        return {
            "l_pert": [2.0, 0.01 if dead else 1.5],
            "l_adv": [1.0, 9.0 if dead else 0.5],
            "success": [0.3, 0.0 if dead else 0.8],
            "alpha": [2.0, 0.5],
            "kept_epoch": 1,
        }

    monkeypatch.setattr(gs.GeneratorTrainer, "fit", fake_fit)
    with pytest.warns(UserWarning, match=r"labels \[2\] collapsed.*alpha_gate=0\.9"):
        record = gangsweep_scan(tiny_backdoored[0], xt[:60], yt[:60], labels=[0, 2, 7], **FAST)
    assert [record["labels"][str(t)]["collapsed"] for t in (0, 2, 7)] == [False, True, False]
    assert gs.collapsed({"l_pert": [2.0, 0.01], "success": [0.3, 0.0]})
    assert not gs.collapsed({"l_pert": [2.0, 0.01], "success": [0.3, 0.9]})


def test_patching_dataset_restamps_every_epoch(mnist_small):
    x, y, _, _ = mnist_small
    white = ConstantGenerator(np.ones(x.shape[1:]))
    data = PatchingDataset(x[:200], y[:200], np.arange(20), [white], stamp_count=20, seed=0)
    first = np.flatnonzero(data.stamped)
    assert len(data.data) == 40 and len(first) == 20
    assert np.all(data.data[data.stamped] == 255.0)  # x + 1, clipped
    np.testing.assert_array_equal(data.labels[:20], y[:20])
    before = data.data[data.stamped].copy(), data.labels[data.stamped].copy()
    data.on_epoch_end()
    assert data.epoch == 1
    assert not np.array_equal(data.labels[data.stamped], before[1])  # other images drawn


def test_patching_removes_the_backdoor(infected_scan, mnist_small, tiny_backdoored):
    model, trigger, _ = tiny_backdoored
    x, y, xt, yt = mnist_small
    _, out = infected_scan
    weights = [w.copy() for w in model.get_weights()]
    held_x, held_y = xt[N_SCAN:], yt[N_SCAN:]
    before = evaluate_backdoor(model, held_x, held_y, [trigger])
    patched, history = patch(model, x, y, load_generators(out, labels=[7]))
    after = evaluate_backdoor(patched, held_x, held_y, [trigger])
    assert before["attack_success_rate"] >= 0.9
    assert after["attack_success_rate"] <= 0.3
    assert after["accuracy"] >= before["accuracy"] - 0.05
    assert len(history["loss"]) == 3
    assert patched is not model
    for old, new in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    # The effect comes from the backdoor's generator: another label's does less.
    control, _ = patch(model, x, y, load_generators(out, labels=[2]))
    control_asr = evaluate_backdoor(control, held_x, held_y, [trigger])["attack_success_rate"]
    assert control_asr >= after["attack_success_rate"] + 0.1


def test_cli_scan_detect_and_patch(tmp_path, capsys, tiny_backdoored, infected_scan):
    import json

    from nc_tf.cli import main

    model, trigger, _ = tiny_backdoored
    path = tmp_path / "model.keras"
    model.save(path)
    out = tmp_path / "gs"
    small = [
        "--dataset",
        "mnist",
        "--limit",
        "120",
        "--labels",
        "6,7,8",
        "--epochs",
        "2",
        "--filters",
        "4",
        "--residual-blocks",
        "1",
        "--min-steps-per-epoch",
        "3",
        "--alpha-gate",
        "0.9",
    ]
    # Neural Cleanse flags with --method gangsweep, and the reverse, are refused by name.
    assert (
        main(
            ["scan", str(path), "--method", "gangsweep", "--steps", "5", "--out", str(out), *small]
        )
        == 2
    )
    assert "--steps" in capsys.readouterr().err and not out.exists()
    assert main(["scan", str(path), "--k", "1", "--out", str(out)]) == 2
    assert "--k" in capsys.readouterr().err
    assert (
        main(["scan", str(path), "--method", "gangsweep", "--out", str(out), "--json", *small]) == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["method"] == "gangsweep" and sorted(record["labels"], key=int) == ["6", "7", "8"]
    assert record["settings"]["epochs"] == 2 and record["settings"]["n_samples"] == 120
    assert (
        record["settings"]["min_steps_per_epoch"] == 3 and record["settings"]["alpha_gate"] == 0.9
    )
    assert (out / "generators" / "label_7.weights.h5").exists()
    # detect reads a GangSweep folder with GangSweep's own test.
    assert main(["detect", str(out), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["persistence_threshold"] == 0.9 and set(verdict["per_label"]) == {"6", "7", "8"}
    assert verdict["statistic"] == "paper"
    # Judged again with the margin statistic (no training); detect follows the folder.
    assert (
        main(
            [
                "scan",
                str(path),
                "--method",
                "gangsweep",
                "--out",
                str(out),
                "--json",
                "--statistic",
                "margin",
                *small,
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["outlier"]["statistic"] == "margin"
    assert main(["detect", str(out), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert (
        verdict["statistic"] == "margin"
        and verdict["per_label"]["7"]["AI"] == (verdict["per_label"]["7"]["Z_M"])
    )
    # So is the persistence gate.
    assert (
        main(
            [
                "scan",
                str(path),
                "--method",
                "gangsweep",
                "--out",
                str(out),
                "--json",
                "--statistic",
                "margin",
                "--persistence-threshold",
                "0.05",
                *small,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["detect", str(out), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["statistic"] == "margin" and verdict["persistence_threshold"] == 0.05
    assert verdict["persistent"] == [
        int(t) for t, v in sorted(verdict["per_label"].items()) if v["persistence"] >= 0.05
    ]
    assert (
        main(
            [
                "scan",
                str(path),
                "--method",
                "gangsweep",
                "--out",
                str(out),
                "--persistence-threshold",
                "1.5",
                *small,
            ]
        )
        == 2
    )
    assert "--persistence-threshold: must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert (
        main(
            [
                "scan",
                str(path),
                "--method",
                "gangsweep",
                "--out",
                str(tmp_path / "gs2"),
                *small,
                "--alpha-gate",
                "0",
            ]
        )
        == 2
    )
    assert "--alpha-gate: must be in (0, 1], got 0" in capsys.readouterr().err
    assert not (tmp_path / "gs2").exists()
    for flag, value in (
        ("--statistic", "margin"),
        ("--persistence-threshold", "0.8"),
        ("--alpha-gate", "0.9"),
    ):
        assert main(["scan", str(path), flag, value, "--out", str(tmp_path / "nc")]) == 2
        assert flag in capsys.readouterr().err
    # NC-only repairs refuse a GangSweep folder; patching uses its generators.
    common = ["--dataset", "mnist", "--train-limit", "1000", "--limit", "300"]
    assert (
        main(
            [
                "mitigate",
                str(path),
                "--method",
                "unlearn",
                "--scan",
                str(out),
                "--out",
                str(tmp_path / "u"),
                *common,
            ]
        )
        == 2
    )
    assert "GangSweep scan" in capsys.readouterr().err
    attack = tmp_path / "attack.json"
    attack.write_text(json.dumps({"intensity": "raw", "targets": [7], "triggers": [trigger.spec]}))
    fixed = tmp_path / "patched"
    assert (
        main(
            [
                "mitigate",
                str(path),
                "--method",
                "gangsweep",
                "--scan",
                infected_scan[1],
                "--labels",
                "7",
                "--attack",
                str(attack),
                "--out",
                str(fixed),
                "--json",
                "--no-verify",
                *common,
            ]
        )
        == 0
    )  # verification: tests/test_cli.py
    report = json.loads(capsys.readouterr().out)
    assert report["details"]["labels"] == [7] and len(report["details"]["history"]["loss"]) == 3
    assert set(report["details"]["generated_success_after"]) == {"7"}
    assert report["after"]["asr_original"][0] < report["before"]["asr_original"][0] - 0.3
    assert (fixed / "model.keras").exists() and (fixed / "mitigation.json").exists()
