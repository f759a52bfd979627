"""Layers of a model by role: the layer a method works on, and what reads its output.

Shared by the methods that work inside a network: Neural Cleanse's filter
and pruning, fine-pruning, ℓ∞ pruning, and the Trojan attack's neuron
selection.
"""

import keras


def resolve_layer(model, layer=None):
    """Finds the layer whose neurons are ranked and pruned.

    Args:
        model: a Keras model.
        layer: a layer name, a (possibly negative) index into `model.layers`,
            `"penultimate"` (the last dense or conv layer before the output
            layer: the paper's "second to last layer") or `"last_conv"` (the
            last `Conv2D`). Defaults to `None`, meaning `"penultimate"`.

    Returns:
        the `keras.layers.Layer`.

    Example:

    >>> from nc_tf.models import mnist_model
    >>> resolve_layer(mnist_model(), "last_conv").filters
    32
    """
    if isinstance(layer, keras.layers.Layer):
        return layer
    if layer is None or layer == "penultimate":
        weighted = [lay for lay in model.layers if has_units(lay)]
        if len(weighted) < 2:
            raise ValueError("The model has fewer than two dense/conv layers; pass layer= by name.")
        return weighted[-2]
    if layer == "last_conv":
        convs = [lay for lay in model.layers if isinstance(lay, keras.layers.Conv2D)]
        if not convs:
            raise ValueError("The model has no Conv2D layer; pass layer= by name or 'penultimate'.")
        return convs[-1]
    if isinstance(layer, int):
        return model.layers[layer]
    try:
        return model.get_layer(layer)
    except ValueError:
        names = ", ".join(lay.name for lay in model.layers if has_units(lay))
        raise ValueError(f"No layer named {layer!r}; dense/conv layers are: {names}.") from None


def has_units(layer):
    """True for the layers whose units are neurons: `Dense` and `Conv2D`."""
    return isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))


def consumers(model, layer):
    """Layers that take `layer`'s output as their (only) input."""
    out = []
    for other in model.layers:
        if other is layer:
            continue
        try:
            inputs = other.input if isinstance(other.input, (list, tuple)) else [other.input]
        except (AttributeError, ValueError):
            continue
        if any(t is layer.output for t in inputs):
            out.append(other)
    return out
