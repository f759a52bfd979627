"""Grad-CAM (`nc_tf.gradcam`): exact on hand-made models, on the trigger of a backdoored one."""

import keras
import numpy as np
import pytest

from nc_tf.gradcam import grad_cam, last_conv_layer
from nc_tf.models import logits_twin


@pytest.fixture(scope="module")
def backdoor(mnist_small, tiny_backdoored):
    """(model, trigger, clean images of other labels, their labels, the same images stamped)."""
    model, trigger, _ = tiny_backdoored
    _, _, xt, yt = mnist_small
    keep = yt != trigger.target
    x, y = xt[keep][:200], yt[keep][:200]
    return model, trigger, x, y, trigger.apply(x)


def _mean_model(shape, pool=1, softmax=True):
    """Label 0's logit is the mean of the image (pooled by `pool`), label 1's its negative.

    Grad-CAM's weight for label 0 is then positive and the map is the
    (pooled) image itself; for label 1 the weighted map is negative, so the
    heatmap is zero.
    """
    inputs = keras.Input(shape)
    h = keras.layers.AveragePooling2D(pool)(inputs) if pool > 1 else inputs
    h = keras.layers.Conv2D(1, 1, use_bias=False, name="conv")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    scores = keras.layers.Dense(2, activation="softmax" if softmax else None, name="scores")
    model = keras.Model(inputs, scores(h))
    model.get_layer("conv").set_weights([np.ones((1, 1, 1, 1), np.float32)])
    scores.set_weights([np.array([[1.0, -1.0]], np.float32), np.zeros(2, np.float32)])
    return model


def _blob_image():
    """A 12x20 image (not square, so rows and columns cannot be swapped unseen), one bright blob."""
    image = np.zeros((1, 12, 20, 1), np.float32)
    image[0, 2:4, 13:16] = 200.0
    image[0, 3, 14] = 250.0
    return image


def test_heatmap_of_a_mean_model_is_the_image():
    image = _blob_image()
    for softmax in (True, False):
        model = _mean_model(image.shape[1:], softmax=softmax)
        heat = grad_cam(model, image, 0)
        np.testing.assert_allclose(heat[0], image[0, ..., 0] / image.max(), atol=1e-6)
        np.testing.assert_array_equal(grad_cam(model, image, 1), np.zeros((1, 12, 20)))
    # the intensity range scales the maps, and the scale cancels
    model = _mean_model(image.shape[1:])
    np.testing.assert_allclose(grad_cam(model, image, 0, intensity="mnist"), heat, atol=1e-6)


def test_heatmap_is_scaled_up_to_the_image_where_the_map_is_hot():
    image = _blob_image()
    heat = grad_cam(_mean_model(image.shape[1:], pool=2), image, 0)
    assert heat.shape == (1, 12, 20)
    row, col = np.unravel_index(heat[0].argmax(), heat[0].shape)
    assert 2 <= row <= 3 and 12 <= col <= 15  # the blob's 2x2 cells
    assert heat.max() == pytest.approx(1.0)
    assert heat[0, 8:, :8].max() == 0.0  # far from the blob: nothing


def test_target_heat_sits_on_the_trigger_for_stamped_images_only(backdoor):
    model, trigger, x, _, stamped = backdoor
    square = trigger.mask[..., 0] > 0
    # the square grown by one cell of the layer's map, in image pixels: a
    # heatmap scaled up from that map cannot be sharper than a cell
    cell = int(np.ceil(x.shape[1] / last_conv_layer(model).output.shape[1]))
    rows, cols = np.nonzero(square)
    near = np.zeros_like(square)
    top, left = max(rows.min() - cell, 0), max(cols.min() - cell, 0)
    near[top : rows.max() + cell + 1, left : cols.max() + cell + 1] = True

    heat_stamped = grad_cam(model, stamped, trigger.target)
    heat_clean = grad_cam(model, x, trigger.target)

    def hits(heat):  # the pointing game: the hottest pixel lies in the region
        peak = heat.reshape(len(heat), -1).argmax(1)
        return np.mean(near.reshape(-1)[peak] & (heat.max((1, 2)) > 0))

    def share(heat):  # the part of the heat mass inside the square
        return (heat * square).sum((1, 2)) / np.maximum(heat.sum((1, 2)), 1e-12)

    assert hits(heat_stamped) > 0.5  # most stamped images
    assert hits(heat_clean) < 0.5  # most clean images point elsewhere
    assert np.mean(share(heat_stamped) > share(heat_clean)) > 0.5
    # The square holds several times the heat an evenly spread map would put
    # there, and several times what it holds on clean images. A map of 8x8
    # cells scaled up to 28x28 spreads a hot cell over its neighbours, so the
    # square cannot hold most of the mass.
    assert share(heat_stamped).mean() > 4 * square.mean()
    assert share(heat_stamped).mean() > 4 * share(heat_clean).mean()


def test_heatmaps_have_the_image_size_and_lie_in_0_1(backdoor):
    model, trigger, _, y, stamped = backdoor
    heat = grad_cam(model, stamped[:20], y[:20])
    assert heat.shape == (20,) + stamped.shape[1:3] and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    peaks = heat.max((1, 2))
    assert np.all((peaks == 0.0) | np.isclose(peaks, 1.0))
    assert np.any(peaks > 0)


def test_logits_twin_gives_the_same_heatmaps(backdoor):
    model, trigger, _, y, stamped = backdoor
    for labels in (trigger.target, y[:40]):
        np.testing.assert_allclose(
            grad_cam(logits_twin(model), stamped[:40], labels),
            grad_cam(model, stamped[:40], labels),
            atol=1e-5,
        )


def test_functional_model_sharing_the_layers_gives_the_same_heatmaps(backdoor):
    model, trigger, _, _, stamped = backdoor
    # the same network as a functional model whose softmax is its own layer
    last = model.layers[-1]
    inputs = keras.Input(stamped.shape[1:])
    h = inputs
    for layer in model.layers[:-1]:
        h = layer(h)
    dense = keras.layers.Dense(last.units)
    h = dense(h)
    dense.set_weights(last.get_weights())
    functional = keras.Model(inputs, keras.layers.Softmax()(h))
    np.testing.assert_allclose(
        grad_cam(functional, stamped[:30], trigger.target),
        grad_cam(model, stamped[:30], trigger.target),
        atol=1e-5,
    )


def test_one_label_per_image_and_batches_do_not_change_a_heatmap(backdoor):
    model, trigger, _, y, stamped = backdoor
    x, y = stamped[:30], y[:30]
    labels = np.where(np.arange(30) % 2 == 0, trigger.target, y)
    mixed = grad_cam(model, x, labels, batch_size=7)
    even, odd = labels == trigger.target, labels != trigger.target
    np.testing.assert_allclose(mixed[even], grad_cam(model, x[even], trigger.target), atol=1e-5)
    np.testing.assert_allclose(mixed[odd], grad_cam(model, x[odd], y[odd]), atol=1e-5)


def test_default_layer_is_the_last_conv_layer(backdoor):
    model, trigger, _, _, stamped = backdoor
    convs = [lay for lay in model.layers if isinstance(lay, keras.layers.Conv2D)]
    assert last_conv_layer(model) is convs[-1]
    by_default = grad_cam(model, stamped[:10], trigger.target)
    np.testing.assert_array_equal(
        by_default, grad_cam(model, stamped[:10], trigger.target, layer=convs[-1].name)
    )
    first = grad_cam(model, stamped[:10], trigger.target, layer=convs[0].name)
    assert not np.allclose(first, by_default)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"labels": 10}, "labels 0..9"),
        ({"labels": -1}, "labels 0..9"),
        ({"labels": 7.5}, "one int"),
        ({"labels": [1, 2]}, "one label per image"),
        ({"labels": 7, "layer": "dense"}, "conv layer"),
        ({"labels": 7, "layer": 99}, "out of range"),
        ({"labels": 7, "images": np.zeros((2, 27, 27, 1))}, "expects images shaped"),
        ({"labels": 7, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_input_is_a_one_line_value_error(backdoor, kwargs, words):
    model, _, _, _, stamped = backdoor
    kwargs = {"images": stamped[:4], **kwargs}
    with pytest.raises(ValueError, match=words) as error:
        grad_cam(model, **kwargs)
    assert "\n" not in str(error.value)


def test_model_without_conv_layer_names_the_fix():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    with pytest.raises(ValueError, match="no convolutional layer.*pass layer=") as error:
        grad_cam(model, np.zeros((2, 8, 8, 1)), 0)
    assert "\n" not in str(error.value)
