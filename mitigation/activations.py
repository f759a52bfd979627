"""Neuron activations of an inner layer: the shared ground of filter and pruning.

Neural Cleanse's filter and pruning (§VI-A, §VI-B) both rank the neurons of
one layer by how much more they fire on inputs stamped with the reversed
trigger than on clean inputs. A "neuron" is a unit of a dense layer or a
channel of a convolutional layer (its activation map reduced to one number
per image: the mean, or the ℓ1 / ℓ2 / ℓ∞ norm for Cheng et al.'s analysis).
"""

import keras
import numpy as np

from nc_tf.layers import consumers as _consumers
from nc_tf.layers import resolve_layer  # noqa: F401  (its users look for it here)
from nc_tf.preprocess import preprocess

_REDUCTIONS = ("mean", "l1", "l2", "linf")


def layer_activations(model, layer, x, intensity="raw", reduce="mean", batch_size=256):
    """Per-neuron activations of `layer` for raw images, one row per image.

    Args:
        model: a Keras model.
        layer: anything `resolve_layer` accepts.
        x: raw NHWC images in [0, 255].
        intensity: the model's intensity range. Defaults to `"raw"`.
        reduce: how a conv channel's activation map becomes one number:
            `"mean"`, `"l1"`, `"l2"` or `"linf"`. Dense units are returned
            as they are. Defaults to `"mean"`.
        batch_size: images per forward pass. Defaults to `256`.

    Returns:
        float32 array `(N, units)`.
    """
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}.")
    target = resolve_layer(model, layer)
    rows = []
    for a in layer_output_batches(model, target, x, intensity, batch_size):
        if a.ndim == 4:
            flat = a.reshape(a.shape[0], -1, a.shape[-1])
            a = {
                "mean": lambda v: v.mean(1),
                "l1": lambda v: np.abs(v).sum(1),
                "l2": lambda v: np.sqrt((v * v).sum(1)),
                "linf": lambda v: np.abs(v).max(1),
            }[reduce](flat)
        elif a.ndim != 2:
            raise ValueError(
                f"Layer {target.name!r} outputs rank-{a.ndim} tensors; pick a dense or conv layer."
            )
        rows.append(a.astype(np.float32))
    return np.concatenate(rows) if rows else np.zeros((0, target.output.shape[-1]), np.float32)


def layer_output_batches(model, layer, x, intensity="raw", batch_size=256):
    """Yields the outputs of `layer` for raw images, one batch at a time, unreduced.

    A conv layer's batch is its activation maps `(n, H', W', C)`; a dense
    layer's is `(n, units)`. Batches are yielded rather than joined, so a
    caller that reduces them never holds every image's maps at once.

    Args:
        model: a Keras model.
        layer: anything `resolve_layer` accepts.
        x: raw NHWC images in [0, 255].
        intensity: the model's intensity range. Defaults to `"raw"`.
        batch_size: images per forward pass. Defaults to `256`.

    Yields:
        numpy arrays, one per batch of `x`, in order.

    Example:

    >>> from nc_tf.models import mnist_model
    >>> x = np.zeros((3, 28, 28, 1), np.float32)
    >>> [a.shape for a in layer_output_batches(mnist_model(), "last_conv", x, batch_size=2)]
    [(2, 8, 8, 32), (1, 8, 8, 32)]
    """
    target = resolve_layer(model, layer)
    probe = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, target.output)
    for i in range(0, len(x), batch_size):
        yield np.asarray(
            probe(preprocess(np.asarray(x[i : i + batch_size]), intensity), training=False)
        )


def rank_neurons(model, layer, x_clean, x_trigger, intensity="raw", batch_size=256):
    """Neurons ordered by mean activation gap, triggered minus clean, largest first.

    Args:
        model: a Keras model.
        layer: anything `resolve_layer` accepts.
        x_clean: raw clean images.
        x_trigger: raw images stamped with the (reversed) trigger.
        intensity: the model's intensity range. Defaults to `"raw"`.
        batch_size: images per forward pass. Defaults to `256`.

    Returns:
        `(order, gap)`: neuron indices by decreasing gap, and the gap per neuron.
    """
    clean = layer_activations(model, layer, x_clean, intensity, batch_size=batch_size).mean(0)
    trig = layer_activations(model, layer, x_trigger, intensity, batch_size=batch_size).mean(0)
    gap = trig - clean
    return np.argsort(-gap, kind="stable"), gap


def prune_units(model, layer, units):
    """Silences neurons in place by zeroing the weights that produce them.

    A unit of a `Dense` layer (a channel of a `Conv2D`) outputs
    `activation(0)` once its kernel column and bias are zero; for ReLU and
    linear layers that is 0. When a `BatchNormalization` layer reads the
    layer's output directly, its scale and offset for those channels are
    zeroed too, so the normalised output is 0 as well. The model stays an
    ordinary Keras model: it saves and reloads without custom objects.

    Args:
        model: a Keras model (modified in place; copy it first to keep it).
        layer: anything `resolve_layer` accepts.
        units: indices of the neurons to silence.

    Returns:
        the list of layers that were modified.
    """
    target = resolve_layer(model, layer)
    units = np.asarray(sorted(set(int(u) for u in units)), dtype=np.int64)
    if units.size == 0:
        return []
    n = target.output.shape[-1]
    if units.min() < 0 or units.max() >= n:
        raise ValueError(f"Unit ids must lie in [0, {n}); got {units.min()}..{units.max()}.")
    act = getattr(target, "activation", None)
    if act is not None and abs(float(keras.ops.convert_to_numpy(act(keras.ops.zeros(1)))[0])) > 0:
        raise ValueError(
            f"Layer {target.name!r} has an activation with f(0) != 0; "
            "zeroing its weights would not silence its units. Pick another layer."
        )
    touched = [target]
    _zero_last_axis(target, units)
    for nxt in _consumers(model, target):
        if isinstance(nxt, keras.layers.BatchNormalization):
            _zero_last_axis(nxt, units, names=("gamma", "beta"))
            touched.append(nxt)
    return touched


def _zero_last_axis(layer, units, names=None):
    for var in layer.weights:
        short = var.path.split("/")[-1]
        if names is not None and short not in names:
            continue
        if names is None and short not in ("kernel", "bias"):
            continue
        value = np.array(keras.ops.convert_to_numpy(var))
        value[..., units] = 0
        var.assign(value)
