"""Tests for mitigation.linf_pruning (Cheng et al.) and mitigation.fine_pruning (Liu et al.)."""

import sys

import keras
import numpy as np
import pytest

from injection import Trigger
from mitigation.activations import layer_activations, prune_units, resolve_layer
from mitigation.fine_pruning import KeepPruned, fine_prune
from mitigation.linf_pruning import (
    activation_norms,
    format_sweep_table,
    linf_prune,
    plot_norm_histograms,
    plot_sweep,
)
from nc_tf.engine import ReverseEngine
from nc_tf.metrics import evaluate_backdoor, predict_labels
from nc_tf.models import copy_model, load_model

MAX_ACC_LOSS = 0.05
ACC_DROP = 0.04


@pytest.fixture(scope="module")
def split(mnist_small):
    """300 clean images for thresholds and ranking, 500 others for evaluation."""
    _, _, xt, yt = mnist_small
    return xt[:300], yt[:300], xt[300:800], yt[300:800]


@pytest.fixture(scope="module")
def reversed_trigger(tiny_backdoored, split):
    """Neural Cleanse's reversed trigger for the infected label 7 (a short run)."""
    model, _, _ = tiny_backdoored
    xc = split[0]
    engine = ReverseEngine(
        model,
        xc[:256],
        steps=60,
        mini_batch=2,
        slots=1,
        attack_succ_threshold=0.95,
        early_stop_patience=10,
        seed=0,
    )
    result = engine.run([7])[0]
    return Trigger(np.clip(result["mask"], 0, 1), np.clip(result["pattern"], 0, 255), 7)


@pytest.fixture(scope="module", params=["reversed", "original"])
def linf_run(request, tiny_backdoored, split, reversed_trigger):
    """linf_prune driven by the reversed trigger, or by the real trigger's stamped images."""
    model, trigger, _ = tiny_backdoored
    xc, yc, xv, yv = split
    weights = [w.copy() for w in model.get_weights()]
    if request.param == "reversed":
        kwargs = {"x_trigger": reversed_trigger}
    else:  # can the backdoor be pruned away at all, knowing the trigger?
        kwargs = {"x_trigger": trigger.apply(xc), "y_trigger": yc, "target": trigger.target}
    pruned, report = linf_prune(
        model,
        xc,
        yc,
        layer="last_conv",
        max_acc_loss=MAX_ACC_LOSS,
        steps=20,
        x_val=xv,
        y_val=yv,
        triggers_eval=[trigger],
        **kwargs,
    )
    return pruned, report, weights


def _channel_weights(model, units):
    layer = resolve_layer(model, "last_conv")
    return layer.kernel.numpy()[..., units], layer.bias.numpy()[units]


# ------------------------------------------------------------ norms
def test_activation_norms_shapes_and_linf_separates_best(tiny_backdoored, split, reversed_trigger):
    model, trigger, _ = tiny_backdoored
    xc = split[0]
    assert evaluate_backdoor(model, xc, split[1], [reversed_trigger])["attack_success_rate"] > 0.5
    result = activation_norms(
        model, {"clean": xc, "reversed": reversed_trigger, "original": trigger.apply(xc)}
    )
    assert result["channels"] == 32
    assert set(result["norms"]) == {"clean", "reversed", "original"}
    for sets in result["norms"].values():
        assert set(sets) == {"mean", "l1", "l2", "linf"}
        for values in sets.values():
            assert values.shape == (len(xc), 32)
    # ℓ∞ of a map is its largest entry (ReLU maps are non-negative).
    probe = keras.Model(model.inputs[0], resolve_layer(model, "last_conv").output)
    maps = np.asarray(probe(xc[:5].astype(np.float32)))
    np.testing.assert_allclose(
        result["norms"]["clean"]["linf"][:5], maps.max(axis=(1, 2)), rtol=1e-6
    )
    for name in ("reversed", "original"):
        score = result["separation"][name]
        assert score["linf"] >= score["mean"], score
        assert score["linf"] > 0
    # The reversed trigger excites the same channel as the real one.
    assert result["best_channel"]["reversed"]["linf"] == result["best_channel"]["original"]["linf"]


# ------------------------------------------------------------ ℓ∞ pruning
def test_linf_prune_removes_backdoor_within_budget(linf_run, tiny_backdoored, split):
    model, trigger, _ = tiny_backdoored
    pruned, report, weights = linf_run
    _, _, xv, yv = split
    for before, now in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, now)  # the source model is untouched
    assert pruned is not model

    before = evaluate_backdoor(model, xv, yv, [trigger])
    after = evaluate_backdoor(pruned, xv, yv, [trigger])
    assert before["attack_success_rate"] >= 0.9
    assert after["attack_success_rate"] <= 0.2, format_sweep_table(report)
    assert before["accuracy"] - after["accuracy"] <= MAX_ACC_LOSS + 1e-9

    chosen = report["chosen"]
    assert chosen["n_pruned"] >= 1
    assert chosen["accuracy"] == pytest.approx(after["accuracy"])
    assert chosen["per_trigger"][0] == pytest.approx(after["attack_success_rate"])
    kernel, bias = _channel_weights(pruned, chosen["pruned"])
    assert not kernel.any() and not bias.any()

    sweep = report["sweep"]
    assert len(sweep) == 20
    thresholds = [r["threshold"] for r in sweep]
    assert thresholds[0] == pytest.approx(report["settings"]["start_threshold"])
    assert all(a > b for a, b in zip(thresholds, thresholds[1:]))
    assert all(set(a["pruned"]) <= set(b["pruned"]) for a, b in zip(sweep, sweep[1:]))
    clean_linf = layer_activations(model, "last_conv", split[0], reduce="linf")
    assert report["settings"]["start_threshold"] == pytest.approx(float(clean_linf.max()))
    # The budget is honoured by the choice and the choice is the best feasible row.
    feasible = [report["baseline"]] + [
        r for r in sweep if r["accuracy_loss"] <= MAX_ACC_LOSS + 1e-9
    ]
    assert chosen in feasible
    assert chosen["attack_success_rate"] == min(r["attack_success_rate"] for r in feasible)


def test_linf_pruned_model_saves_and_reloads(linf_run, split, tmp_path):
    pruned = linf_run[0]
    xv = split[2]
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(predict_labels(loaded, xv), predict_labels(pruned, xv))
    np.testing.assert_allclose(
        np.asarray(loaded(xv[:64].astype(np.float32))),
        np.asarray(pruned(xv[:64].astype(np.float32))),
        atol=1e-6,
    )
    units = linf_run[1]["chosen"]["pruned"]
    kernel, bias = _channel_weights(loaded, units)
    assert not kernel.any() and not bias.any()


def test_format_sweep_table_stars_the_chosen_row(linf_run):
    report = linf_run[1]
    lines = format_sweep_table(report).splitlines()
    assert len(lines) == 2 + len(report["sweep"])  # header, baseline, one per threshold
    starred = [line for line in lines if line.startswith("*")]
    assert len(starred) == 1
    assert f"{report['chosen']['threshold']:.4g}" in starred[0]


# ------------------------------------------------------------ fine-pruning
def test_fine_prune_stops_before_the_accuracy_budget(tiny_backdoored, mnist_small, split):
    model, trigger, _ = tiny_backdoored
    x, y = mnist_small[0], mnist_small[1]
    _, _, xv, yv = split
    weights = [w.copy() for w in model.get_weights()]
    tuned, report = fine_prune(
        model,
        xv,
        yv,
        acc_drop=ACC_DROP,
        finetune_epochs=1,
        x_train=x[:512],
        y_train=y[:512],
        triggers_eval=[trigger],
    )
    for before, now in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, now)

    base = evaluate_backdoor(model, xv, yv)["accuracy"]
    assert report["accuracy_before"] == pytest.approx(base)
    assert base - report["accuracy_pruned"] <= ACC_DROP + 1e-9
    assert base - evaluate_backdoor(tuned, xv, yv)["accuracy"] <= ACC_DROP + 1e-9
    assert len(report["asr_before"]) == len(report["asr_after"]) == 1

    # Least active channels first, and one more channel would break the budget.
    order = list(np.argsort(layer_activations(model, "last_conv", xv).mean(0), kind="stable"))
    k = len(report["pruned"])
    assert 1 <= k < 32
    assert report["pruned"] == [int(c) for c in order[:k]]
    assert report["pruned_ratio"] == pytest.approx(k / 32)
    more = copy_model(model)
    prune_units(more, "last_conv", order[: k + 1])
    assert base - evaluate_backdoor(more, xv, yv)["accuracy"] > ACC_DROP

    # KeepPruned held the pruned channels at exactly zero through the fit epoch.
    kernel, bias = _channel_weights(tuned, report["pruned"])
    assert not kernel.any() and not bias.any()


def test_keep_pruned_holds_channels_at_zero_during_fit():
    # A linear conv feeding a dense layer: pruned channels get gradients and
    # would revive without the callback.
    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(4, 3),
                keras.layers.Flatten(),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
        model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        prune_units(model, 0, [1, 3])
        return model

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 64)
    free = build()
    free.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.abs(free.layers[0].kernel.numpy()[..., [1, 3]]).max() > 0
    held = build()
    held.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[KeepPruned(0, [1, 3])])
    assert not held.layers[0].kernel.numpy()[..., [1, 3]].any()
    assert not held.layers[0].bias.numpy()[[1, 3]].any()
    assert held.layers[0].kernel.numpy()[..., [0, 2]].any()  # the others still train


# ------------------------------------------------------------ plots
@pytest.mark.parametrize("linf_run", ["reversed"], indirect=True)
def test_plots_write_pngs(linf_run, tiny_backdoored, split, tmp_path):
    pytest.importorskip("matplotlib")
    model, trigger, _ = tiny_backdoored
    norms = activation_norms(model, {"clean": split[0][:50], "original": trigger})
    for path in (
        plot_norm_histograms(norms, tmp_path / "norms.png"),
        plot_sweep(linf_run[1], tmp_path / "new" / "sweep.png"),
    ):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("linf_run", ["reversed"], indirect=True)
def test_plots_without_matplotlib_say_how_to_install(linf_run, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_sweep(linf_run[1], tmp_path / "sweep.png")


# ------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors(tiny_backdoored, split):
    model, trigger, _ = tiny_backdoored
    xc, yc = split[0][:40], split[1][:40]
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        linf_prune(model, xc, yc, trigger, layer="nope")
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        fine_prune(model, xc, yc, layer="nope")
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        activation_norms(model, {"clean": xc}, layer="nope")
    with pytest.raises(ValueError, match="pick a Conv2D"):
        linf_prune(model, xc, yc, trigger, layer="penultimate")
    with pytest.raises(ValueError, match="one label per image"):
        linf_prune(model, xc, yc[:-1], trigger)
    with pytest.raises(ValueError, match="one label per image"):
        fine_prune(model, xc, yc[:-1])
    with pytest.raises(ValueError, match="one label per image"):
        linf_prune(model, xc, yc, trigger.apply(xc), y_trigger=yc[:-1], target=7)
    for bad in (-0.01, 1.5):
        with pytest.raises(ValueError, match=r"max_acc_loss must be a number in \[0, 1\]"):
            linf_prune(model, xc, yc, trigger, max_acc_loss=bad)
        with pytest.raises(ValueError, match=r"acc_drop must be a number in \[0, 1\]"):
            fine_prune(model, xc, yc, acc_drop=bad)
    with pytest.raises(ValueError, match="pass target="):
        linf_prune(model, xc, yc, trigger.apply(xc))
    with pytest.raises(ValueError, match="x_train and y_train"):
        fine_prune(model, xc, yc, finetune_epochs=1)
    with pytest.raises(ValueError, match="'clean' entry"):
        activation_norms(model, {"reversed": xc})
