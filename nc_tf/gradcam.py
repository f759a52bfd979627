"""Grad-CAM: which part of an image a label's score comes from.

Grad-CAM (Selvaraju et al., ICCV 2017) weighs each channel of a
convolutional layer's activation maps by the average gradient of one
label's score with respect to that channel, sums the weighted maps, keeps
the positive part and scales it up to the image. Cheng et al. ("Defending
against Backdoor Attack on Deep Neural Networks", Fig. 2) use it on the last
convolutional layer: for a backdoored model and the attack's target label,
the highlighted area of a stamped image sits on the trigger.

The score is the label's pre-softmax value (its logit), as Grad-CAM
prescribes. For a model that ends in a softmax, the last layer is split off
and re-applied without the softmax; a model whose softmax cannot be split
off cleanly (a nested or subclassed last layer, or other layers after the
softmax) is explained through the log of its probabilities instead.

Images are raw NHWC in [0, 255]; the model's intensity range is applied
inside the compiled step.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from nc_tf.layers import resolve_layer
from nc_tf.models import check_model_data, outputs_probabilities
from nc_tf.preprocess import check_intensity, preprocess
from nc_tf.validation import check_class_labels, check_image_batch, check_scalar


def last_conv_layer(model):
    """The last convolutional layer of a model: the layer `grad_cam` explains by default.

    A layer counts as convolutional when it has a kernel size (any Keras
    convolution: `Conv2D`, `DepthwiseConv2D`, `SeparableConv2D`,
    `Conv2DTranspose`, ...) and outputs activation maps `(N, H', W', C)`. A
    nested model whose output is such a map (e.g. a pretrained backbone)
    counts too: its output is the last feature map the outer model sees.

    Args:
        model: a Keras functional or sequential model.

    Returns:
        the `keras.layers.Layer`.

    Raises:
        ValueError: the model has no such layer.

    Example:

    >>> from nc_tf.models import mnist_model
    >>> last_conv_layer(mnist_model()).filters
    32
    """
    found = None
    for layer in model.layers:
        spatial = _output_rank(layer) == 4
        if spatial and (hasattr(layer, "kernel_size") or isinstance(layer, keras.Model)):
            found = layer
    if found is None:
        raise ValueError(
            f"Model {model.name!r} has no convolutional layer with (H, W, C) activation "
            "maps; pass layer= the name of a layer whose output is a spatial map."
        )
    return found


def grad_cam(model, images, labels, layer=None, intensity="raw", batch_size=128):
    """Grad-CAM heatmaps of raw images for given labels, at the image size.

    For each image, the gradient of its label's logit with respect to the
    layer's activation maps is averaged over the map positions, giving one
    weight per channel; the weighted sum of the maps, its negative part cut
    off, is resized to the image (bilinear) and divided by its maximum, so
    the hottest pixel is 1. A heatmap that is zero everywhere (nothing in
    the layer argues for the label) stays 0. Batches of images go through
    one compiled TensorFlow step each, in inference mode.

    Args:
        model: a Keras functional or sequential classifier with one image
            input and one output of class scores, softmax or logits.
        images: raw images, NHWC in [0, 255] (uint8 or float).
        labels: the label to explain: one int for every image, or one per
            image.
        layer: the layer to explain: a name, an index into `model.layers`,
            a layer of the model, or `"last_conv"`; its output must be
            activation maps `(N, H', W', C)`. Defaults to `None`, meaning
            `last_conv_layer(model)`.
        intensity: the model's intensity range (`nc_tf.preprocess`).
            Defaults to `"raw"`.
        batch_size: images per compiled step. Defaults to `128`.

    Returns:
        float32 array `(N, H, W)` with values in [0, 1].

    Raises:
        ValueError: the images do not fit the model, a label is out of
            range, or the layer has no activation maps.

    Example:

    >>> from injection import square_trigger
    >>> trigger = square_trigger(x.shape[1:], target=7)  # doctest: +SKIP
    >>> heat = grad_cam(model, trigger.apply(x[:8]), 7)  # doctest: +SKIP
    >>> heat.shape  # doctest: +SKIP
    (8, 28, 28)
    """
    intensity = check_intensity(intensity)
    batch_size = check_scalar(batch_size, "batch_size", numbers.Integral, low=1)
    images = check_image_batch(images, "grad_cam")
    num_classes = check_model_data(model, images, None, "images")
    labels = _check_labels(labels, len(images), num_classes)
    target = _explained_layer(model, layer)
    step = _compiled_step(model, target, images, intensity)
    heat = [
        step(
            tf.convert_to_tensor(images[i : i + batch_size], tf.float32),
            tf.convert_to_tensor(labels[i : i + batch_size], tf.int32),
        ).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(heat).astype(np.float32, copy=False)


def _check_labels(labels, count, num_classes):
    """Labels as an int32 array of `count` entries, each in `[0, num_classes)`."""
    if isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
        labels = np.full(count, int(labels), np.int64)
    elif isinstance(labels, (bool, numbers.Real, str)):
        raise ValueError(f"grad_cam needs labels as one int or one int per image; got {labels!r}.")
    else:
        labels = check_class_labels(labels, count, "grad_cam")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.max() if labels.max() >= num_classes else labels.min())
        raise ValueError(
            f"grad_cam got label {bad}, but the model has labels 0..{num_classes - 1}; "
            "pass a label the model outputs."
        )
    return labels.astype(np.int32)


def _explained_layer(model, layer):
    """The layer to explain, checked to belong to the model and to output activation maps."""
    if layer is None:
        return last_conv_layer(model)
    try:
        target = resolve_layer(model, layer)
    except IndexError:
        raise ValueError(
            f"Layer index {layer} is out of range for a model with {len(model.layers)} "
            "layers; pass a layer name, or layer=None for the last conv layer."
        ) from None
    if not any(target is own for own in model.layers):
        raise ValueError(
            f"Layer {target.name!r} is not a layer of model {model.name!r}; pass one of its "
            "layers, or layer=None for the last conv layer."
        )
    rank = _output_rank(target)
    if rank != 4:
        raise ValueError(
            f"Layer {target.name!r} outputs rank-{rank} tensors, not activation maps "
            "(N, H, W, C); pass a conv layer, or layer=None for the last one."
        )
    if getattr(target, "data_format", "channels_last") == "channels_first":
        raise ValueError(
            f"Layer {target.name!r} is channels_first; grad_cam reads (N, H, W, C) maps, "
            "so pass a channels_last layer."
        )
    return target


def _output_rank(layer):
    """The rank of a layer's output in the model graph, or None if it has no single output."""
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return None


def _score_function(model, target, images, intensity):
    """A callable from a model-input batch to `(maps, scores)`: the layer's maps, the logits.

    For a softmax model the logits come from its last layer re-applied
    without the softmax (weights taken now); when that layer cannot be split
    off cleanly, the scores are the log of the probabilities.
    """
    last, cut, head = model.layers[-1], None, tf.identity
    if outputs_probabilities(model, images, intensity):
        head = None
        if last is not target and outputs_probabilities(model):
            cut, head = last, _without_softmax(last)
        if head is None:
            cut, head = None, lambda p: tf.math.log(tf.maximum(p, 1e-30))
    tap = _tap(model, target, cut)

    def scores(x):
        maps, features = tap(x)
        return maps, head(features)

    return scores


def _without_softmax(last):
    """`last` re-made without its softmax (same weights), or None if it cannot be."""
    if isinstance(last, keras.Model):
        return None  # a nested model: no single activation to drop
    if isinstance(last, keras.layers.Softmax):
        return tf.identity
    try:
        linear = last.__class__.from_config(dict(last.get_config(), activation="linear"))
        linear.build(last.input.shape)
        linear.set_weights(last.get_weights())
    except (TypeError, ValueError, AttributeError):
        return None
    return linear


def _tap(model, target, cut):
    """A callable from a model-input batch to `(target's maps, the input of cut or the output)`.

    Both come from one forward pass. A layer's recorded output need not
    belong to this model's graph (a loaded Sequential is built more than
    once; a layer may be shared with another model), so a Sequential model
    is run layer by layer and a functional one is replayed on new inputs
    with the same layers (`keras.models.clone_model` keeps the weights
    when each layer is its own clone), capturing the two tensors.
    """
    if isinstance(model, keras.Sequential):

        def run(x):
            maps = None
            for layer in model.layers:
                if layer is cut:
                    break
                x = layer(x, training=False)
                if layer is target:
                    maps = x
            return maps, x

        return run
    seen = {"maps": [], "features": []}

    def call(layer, *args, **kwargs):
        if layer is cut:
            seen["features"].append(args[0] if args else kwargs.get("inputs"))
        out = layer(*args, **kwargs)
        if layer is target:
            seen["maps"].append(out)
        return out

    replay = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    for layer, found in ((target, seen["maps"]), (cut, seen["features"])):
        if layer is not None and len(found) != 1:
            raise ValueError(
                f"Layer {layer.name!r} is applied {len(found)} times in {model.name!r}, so its "
                "output is ambiguous; pass a layer that is applied once."
            )
    features = seen["features"][0] if cut is not None else replay.outputs[0]
    probe = keras.Model(replay.inputs[0], [seen["maps"][0], features])
    return lambda x: probe(x, training=False)


def _compiled_step(model, target, images, intensity):
    """A `tf.function` from (raw image batch, labels) to heatmaps in [0, 1]."""
    scores_of = _score_function(model, target, images, intensity)
    height, width = int(images.shape[1]), int(images.shape[2])
    spec = [
        tf.TensorSpec((None,) + tuple(images.shape[1:]), tf.float32),
        tf.TensorSpec((None,), tf.int32),
    ]

    @tf.function(input_signature=spec, autograph=False)
    def step(batch, labels):
        x = preprocess(batch, intensity)
        with tf.GradientTape() as tape:
            maps, scores = scores_of(x)
            chosen = tf.gather(tf.cast(scores, tf.float32), labels, axis=1, batch_dims=1)
        # Images do not interact in inference mode, so the gradient of the
        # batch's summed scores holds each image's own gradient.
        grads = tape.gradient(chosen, maps)
        if grads is None:  # known when the step is traced
            raise ValueError(
                f"The scores of {model.name!r} do not depend on layer {target.name!r} in "
                "one forward pass; pass a layer on the path from input to output."
            )
        grads = tf.cast(grads, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(maps, tf.float32), axis=-1))
        cam = tf.image.resize(cam[..., None], (height, width), method="bilinear")[..., 0]
        cam = tf.nn.relu(cam)  # resizing may round a zero to a tiny negative
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(cam, peak)

    return step
