"""The Trojan attack's neurons: which to excite, and how to read them.

`select_neurons` picks the neuron(s) of an inner layer most strongly tied to
the rest of the network (the largest summed magnitude of OUTGOING weights,
as the authors' code does for VGG-Face's fc6); `neuron_probe`,
`resolve_neurons` and `selected_activation` read the chosen neurons while
`injection.trojan` optimises a trigger for them.
"""

import keras
import numpy as np
import tensorflow as tf

from nc_tf.layers import consumers, resolve_layer
from nc_tf.preprocess import preprocess

# Layers a neuron's value goes through unchanged per channel (for the outgoing-
# weight sum): pointwise activations, dropout/noise, pooling over space.
_PASS_THROUGH = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
    keras.layers.Add,
    keras.layers.Identity,
)


def select_neurons(model, layer="penultimate", n=1):
    """The `n` neurons of `layer` with the largest summed |outgoing weight|.

    A neuron is a unit of a `Dense` layer or a channel of a `Conv2D` layer.
    Its outgoing weights are the kernel entries of the next weighted layer(s)
    that read it:

    * next layer `Dense` reading the units directly: the row of its kernel;
    * `Conv2D` -> (pooling, dropout, ...) -> `Flatten` -> `Dense`: the Dense
      rows of every flattened position of the channel (channels-last order,
      so flat index k belongs to channel k mod C), summed over positions;
    * next layer `Conv2D`: the kernel slice reading the channel, summed over
      the window and the output filters;
    * pointwise and spatial layers in between (activations, dropout, noise,
      max/average/global pooling, `Flatten`, `Add`) keep the channel index
      and are walked through; `Add` is linear, so the other addends do not
      matter. A `BatchNormalization` in between multiplies the channel by
      |gamma| / sqrt(moving_variance + epsilon), which is folded in;
    * a layer feeding several layers (a branch) sums the weights of all of
      them.

    Anything else on the way (`Concatenate`, `Reshape`, `Multiply`, a
    depthwise conv, channels-first data, the model output itself) raises
    ValueError: the reading weights cannot be told apart per neuron then;
    pick another layer or pass neuron indices explicitly to `trojan_trigger`.

    Args:
        model: a built Keras model.
        layer: anything `nc_tf.layers.resolve_layer` accepts:
            `"penultimate"`, `"last_conv"`, a name or an index. Defaults to
            `"penultimate"`.
        n: how many neurons. Defaults to `1` (the authors' face trigger
            script drives one fc6 neuron).

    Returns:
        list of `n` neuron indices, strongest first.

    Example:

    >>> from nc_tf.models import mnist_model
    >>> len(select_neurons(mnist_model(), "last_conv", n=3))
    3
    """
    target = resolve_layer(model, layer)
    units = _units(target)
    n = int(n)
    if not 1 <= n <= units:
        raise ValueError(f"n must be in [1, {units}] for layer {target.name!r}; got {n}.")
    score = _outgoing(model, target, units, np.ones(units, np.float64), set())
    return [int(i) for i in np.argsort(-score, kind="stable")[:n]]


def outgoing_weight_sums(model, layer="penultimate"):
    """Per neuron of `layer`, the summed |outgoing weight| `select_neurons` ranks by.

    Args:
        model: a built Keras model.
        layer: anything `resolve_layer` accepts. Defaults to `"penultimate"`.

    Returns:
        float64 array, one value per unit/channel.
    """
    target = resolve_layer(model, layer)
    units = _units(target)
    return _outgoing(model, target, units, np.ones(units, np.float64), set())


def _units(layer):
    if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has no neurons to select; "
            "use a Dense or Conv2D layer."
        )
    return int(layer.output.shape[-1])


def _outgoing(model, layer, units, scale, seen):
    """Summed |weights| reading each of the `units` channels of `layer`'s output."""
    readers = _readers(model, layer)
    if not readers:
        raise ValueError(
            f"Layer {layer.name!r} feeds no other layer (it is the model output); "
            "its neurons have no outgoing weights. Pick an inner layer."
        )
    total = np.zeros(units, np.float64)
    for nxt in readers:
        if id(nxt) in seen:
            continue
        seen.add(id(nxt))
        fmt = getattr(nxt, "data_format", "channels_last")
        if fmt not in (None, "channels_last"):
            raise ValueError(
                f"Layer {nxt.name!r} uses {fmt}; only channels-last models are "
                "supported for neuron selection."
            )
        if isinstance(nxt, keras.layers.Dense):
            kernel = np.abs(keras.ops.convert_to_numpy(nxt.kernel)).astype(np.float64)
            if kernel.shape[0] % units:
                raise ValueError(
                    f"Dense layer {nxt.name!r} reads {kernel.shape[0]} values, not a "
                    f"multiple of the {units} neurons of {layer.name!r}; cannot tell "
                    "which weights read which neuron."
                )
            total += scale * kernel.reshape(-1, units, kernel.shape[-1]).sum(axis=(0, 2))
        elif isinstance(nxt, keras.layers.Conv2D) and not isinstance(
            nxt, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
        ):
            kernel = np.abs(keras.ops.convert_to_numpy(nxt.kernel)).astype(np.float64)
            if kernel.shape[2] != units:
                raise ValueError(
                    f"Conv layer {nxt.name!r} reads {kernel.shape[2]} channels, "
                    f"{layer.name!r} has {units}; cannot match them."
                )
            total += scale * kernel.sum(axis=(0, 1, 3))
        elif isinstance(nxt, keras.layers.BatchNormalization):
            axis = nxt.axis[0] if isinstance(nxt.axis, (list, tuple)) else nxt.axis
            if int(axis) % len(nxt.input.shape) != len(nxt.input.shape) - 1:
                raise ValueError(
                    f"BatchNormalization {nxt.name!r} does not normalise the last "
                    "axis; cannot follow the channels through it."
                )
            var = keras.ops.convert_to_numpy(nxt.moving_variance).astype(np.float64)
            gamma = (
                keras.ops.convert_to_numpy(nxt.gamma).astype(np.float64)
                if nxt.gamma is not None
                else np.ones_like(var)
            )
            bn_scale = np.abs(gamma) / np.sqrt(var + nxt.epsilon)
            total += _outgoing(model, nxt, units, scale * bn_scale, seen)
        elif isinstance(nxt, _PASS_THROUGH):
            total += _outgoing(model, nxt, units, scale, seen)
        else:
            raise ValueError(
                f"Layer {layer.name!r} is read by {nxt.name!r} "
                f"({type(nxt).__name__}), which mixes or reshapes channels; cannot "
                "tell which weights read which neuron. Pick another layer or pass "
                "neuron indices explicitly."
            )
    return total


def _readers(model, layer):
    """The layers that read `layer`'s output.

    A Sequential model is a chain: the next layer. (A Sequential model loaded
    from a file may carry several graph nodes per layer, so following the
    tensors would miss the link.) Otherwise the layers whose input tensor is
    `layer`'s output.
    """
    if isinstance(model, keras.Sequential):
        chain = list(model.layers)
        pos = next((i for i, lay in enumerate(chain) if lay is layer), None)
        if pos is not None:
            return chain[pos + 1 : pos + 2]
    return consumers(model, layer)


def neuron_probe(model, layer="penultimate"):
    """`(probe, layer)`: a model from the input to `layer`'s output, and the layer."""
    target = resolve_layer(model, layer)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, target.output), target


def resolve_neurons(model, layer, neurons):
    """Neuron indices: `neurons` itself if a list, else the top `neurons` by `select_neurons`."""
    target = resolve_layer(model, layer)
    units = _units(target)
    if isinstance(neurons, (int, np.integer)):
        return select_neurons(model, target, int(neurons))
    out = [int(v) for v in neurons]
    if not out or min(out) < 0 or max(out) >= units:
        raise ValueError(
            f"Neuron indices must be in [0, {units}) for layer {target.name!r}; got {out}."
        )
    return out


def selected_activation(probe, images, neurons, intensity="raw"):
    """Activation of the selected neurons, `(N, len(neurons))` tensor (conv: spatial mean)."""
    act = probe(preprocess(images, intensity), training=False)
    if len(act.shape) == 4:
        act = tf.reduce_mean(act, axis=(1, 2))
    elif len(act.shape) != 2:
        raise ValueError(
            f"The layer outputs rank-{len(act.shape)} tensors; use a Dense or Conv2D layer."
        )
    return tf.gather(act, neurons, axis=1)
