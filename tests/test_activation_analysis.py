"""Cheng et al.'s activation analysis (`mitigation.activation_analysis`) on the tiny backdoored model."""

import keras
import numpy as np
import pytest

from mitigation.activation_analysis import NORMS, neuron_maps, norm_separation
from mitigation.activations import layer_activations, layer_output_batches, resolve_layer


@pytest.fixture(scope="module")
def backdoor(mnist_small, tiny_backdoored):
    """(model, trigger, 200 clean images of other labels, 200 more such images)."""
    model, trigger, _ = tiny_backdoored
    _, _, xt, yt = mnist_small
    x = xt[yt != trigger.target]
    return model, trigger, x[:200], x[200:400]


@pytest.fixture(scope="module")
def separation(backdoor):
    model, trigger, clean, _ = backdoor
    return norm_separation(model, clean, trigger)


def test_linf_separates_stamped_from_clean_and_every_norm_is_reported(backdoor, separation):
    model, _, clean, other = backdoor
    r = separation
    channels = resolve_layer(model, "last_conv").filters
    assert r["norms"] == NORMS == ("l1", "l2", "linf")
    assert set(r["auc"]) == set(r["values"]) == set(r["summary"]) == set(NORMS)
    assert sorted(r["ranking"]) == sorted(NORMS)
    for norm in NORMS:
        assert r["auc"][norm].shape == (channels,)
        assert np.all((r["auc"][norm] >= 0) & (r["auc"][norm] <= 1))
        assert r["values"][norm]["clean"].shape == (len(clean), channels)
        summary = r["summary"][norm]
        assert summary["best_auc"] == r["auc"][norm].max()
        assert r["auc"][norm][summary["best_channel"]] == summary["best_auc"]
        assert summary["mean_auc"] == pytest.approx(r["auc"][norm].mean())
    assert r["summary"]["linf"]["best_auc"] > 0.9
    # two sets of clean images: no neuron tells them apart
    control = norm_separation(model, clean, other)
    assert control["summary"]["linf"]["best_auc"] < 0.75


def test_auc_is_the_chance_a_stamped_image_outranks_a_clean_one(backdoor, separation):
    model, _, clean, _ = backdoor
    for norm in NORMS:
        channel = separation["summary"][norm]["best_channel"]
        stamped = separation["values"][norm]["stamped"][:, channel][:, None]
        plain = separation["values"][norm]["clean"][:, channel][None, :]
        expected = np.mean(stamped > plain) + 0.5 * np.mean(stamped == plain)
        assert separation["auc"][norm][channel] == pytest.approx(expected)
    for norm in NORMS:  # the norms are the layer's, reduced by mitigation.activations
        direct = layer_activations(model, "last_conv", clean, reduce=norm)
        np.testing.assert_allclose(separation["values"][norm]["clean"], direct, rtol=1e-6)


def test_stamped_images_or_a_trigger_give_the_same_result(backdoor, separation):
    model, trigger, clean, _ = backdoor
    by_images = norm_separation(model, clean, trigger.apply(clean))
    for norm in NORMS:
        np.testing.assert_allclose(by_images["auc"][norm], separation["auc"][norm])


def test_neuron_maps_are_the_layer_maps_and_show_the_trigger_corner(backdoor):
    model, trigger, clean, _ = backdoor
    maps = neuron_maps(model, clean, trigger, n_images=70, batch_size=64)
    first = np.concatenate(list(layer_output_batches(model, "last_conv", clean[:70])))
    stamped = trigger.apply(clean)
    assert maps["layer"] == resolve_layer(model, "last_conv").name
    np.testing.assert_allclose(maps["clean"], first, rtol=1e-5, atol=1e-5)
    all_stamped = np.concatenate(list(layer_output_batches(model, "last_conv", stamped)))
    np.testing.assert_allclose(maps["stamped"], all_stamped[:70], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps["mean_stamped"], all_stamped.mean(0), rtol=1e-4, atol=1e-4)
    gap = maps["linf_gap"][maps["order"]]
    assert np.all(np.diff(gap) <= 0) and gap[0] > 0
    assert maps["vmax"] >= max(maps[k].max() for k in ("clean", "stamped", "mean_clean"))
    # the neuron the trigger excites most fires where the trigger is: the
    # square sits in the bottom-right corner, so does the rise of its map
    top = maps["order"][0]
    rise = maps["mean_stamped"][..., top] - maps["mean_clean"][..., top]
    row, col = np.unravel_index(rise.argmax(), rise.shape)
    rows, cols = np.nonzero(trigger.mask[..., 0])
    assert rows.min() >= clean.shape[1] // 2 and cols.min() >= clean.shape[2] // 2
    assert row >= rise.shape[0] // 2 and col >= rise.shape[1] // 2


def test_few_images_and_no_images_shown(backdoor):
    model, trigger, clean, _ = backdoor
    maps = neuron_maps(model, clean[:3], trigger, n_images=5)
    assert len(maps["clean"]) == len(maps["stamped"]) == 3
    none = neuron_maps(model, clean[:3], trigger, n_images=0)
    assert none["clean"].shape == (0,) + maps["mean_clean"].shape


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m, t, x: norm_separation(m, x, t, layer="dense"), "Conv2D"),
        (lambda m, t, x: norm_separation(m, x, x[:, :20]), "expects images shaped"),
        (lambda m, t, x: neuron_maps(m, x, t, n_images=-1), "n_images"),
        (lambda m, t, x: neuron_maps(m, x[:0], t), "no images"),
        (lambda m, t, x: norm_separation(m, x, t, intensity="bgr"), "intensity"),
    ],
)
def test_bad_input_is_a_one_line_value_error(backdoor, call, words):
    model, trigger, clean, _ = backdoor
    with pytest.raises(ValueError, match=words) as error:
        call(model, trigger, clean[:10])
    assert "\n" not in str(error.value)


def test_model_without_conv_layer_is_refused():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    x = np.zeros((4, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="no Conv2D") as error:
        norm_separation(model, x, x)
    assert "\n" not in str(error.value)
