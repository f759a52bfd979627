"""GangSweep's perturbation generator and the image space it works in.

The generator reads images in [0, 1] (raw / 255) and returns a perturbation
in [0, 1] (sigmoid). The adversarial image is
`clip(x / 255 + G(x / 255), 0, 1) * 255`, a raw [0, 255] image, which goes
through the model's own intensity range (`nc_tf.preprocess.preprocess`), so
the generator is independent of the model's preprocessing. The perturbation
is additive and non-negative, as in the paper.
"""

import keras
import numpy as np
import tensorflow as tf

from nc_tf.models import outputs_probabilities
from nc_tf.preprocess import preprocess

# Bias of the generator's last convolution: sigmoid(-3) = 0.047, so training
# starts from a faint perturbation rather than a grey veil of 0.5.
OUTPUT_BIAS = -3.0


def build_generator(input_shape, filters=32, residual_blocks=3, seed=None):
    """A ResNet-style image-to-image generator: image in [0, 1] -> perturbation in [0, 1].

    Encoder: a 7x7 convolution with `filters` channels, then two stride-2
    3x3 convolutions (2x and 4x `filters`); `residual_blocks` residual
    blocks at a quarter of the resolution; decoder: two stride-2 transposed
    convolutions back to full size, cropped to the input size (so odd sizes
    work: 28 -> 14 -> 7 -> 28, 30 -> 15 -> 8 -> 32 -> 30), and a 7x7
    convolution to the input's channels with a sigmoid. Every convolution
    but the last is followed by instance normalisation (no batch statistics,
    so training and inference agree) and ReLU. The last bias starts at -3:
    the first perturbation is faint (about 0.05).

    Args:
        input_shape: image shape `(H, W, C)`.
        filters: channels of the first convolution. Defaults to `32`.
        residual_blocks: residual blocks in the middle. Defaults to `3`.
        seed: seeds the initial weights (each layer gets its own seed
            derived from it). Defaults to `None` (Keras' global seeding).

    Returns:
        a `keras.Model` from `(None, H, W, C)` to `(None, H, W, C)`.

    Example:

    >>> build_generator((28, 28, 1), filters=8).output_shape
    (None, 28, 28, 1)
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape}.")
    if int(filters) < 1 or int(residual_blocks) < 0:
        raise ValueError(
            f"filters must be >= 1 and residual_blocks >= 0; got {filters}, {residual_blocks}."
        )
    height, width, channels = shape
    filters = int(filters)
    layers = keras.layers
    counter = iter(range(10_000))

    def init():
        return keras.initializers.GlorotUniform(
            seed=None if seed is None else int(seed) * 10_007 + next(counter)
        )

    def conv(h, n, kernel, strides=1, transpose=False):
        cls = layers.Conv2DTranspose if transpose else layers.Conv2D
        h = cls(n, kernel, strides=strides, padding="same", kernel_initializer=init())(h)
        h = layers.GroupNormalization(groups=-1)(h)  # instance normalisation
        return layers.ReLU()(h)

    inputs = keras.Input(shape)
    h = conv(inputs, filters, 7)
    h = conv(h, 2 * filters, 3, strides=2)
    h = conv(h, 4 * filters, 3, strides=2)
    for _ in range(int(residual_blocks)):
        r = conv(h, 4 * filters, 3)
        r = layers.Conv2D(4 * filters, 3, padding="same", kernel_initializer=init())(r)
        r = layers.GroupNormalization(groups=-1)(r)
        h = layers.Add()([h, r])
    h = conv(h, 2 * filters, 3, strides=2, transpose=True)
    h = conv(h, filters, 3, strides=2, transpose=True)
    extra_h, extra_w = h.shape[1] - height, h.shape[2] - width
    if extra_h or extra_w:
        h = layers.Cropping2D(((0, extra_h), (0, extra_w)))(h)
    h = layers.Conv2D(
        channels,
        7,
        padding="same",
        kernel_initializer=init(),
        bias_initializer=keras.initializers.Constant(OUTPUT_BIAS),
    )(h)
    outputs = layers.Activation("sigmoid")(h)
    return keras.Model(inputs, outputs, name="gangsweep_generator")


def logits_function(model, x=None, intensity="raw"):
    """A function from model-input batches to the model's logits (pre-softmax).

    A logits model is returned as is. For a softmax model, the last layer is
    re-applied without its softmax on the features it receives (a `Softmax`
    layer is skipped; a `Dense` or `Activation` with `activation="softmax"`
    is copied with a linear activation and the same weights, taken now: the
    model must stay frozen while the function is used). A model whose last
    layer cannot be split off (e.g. subclassed) falls back to the log of its
    probabilities: the same shift variance V and margins as the logits (a
    constant per image cancels), but D is measured on log-probabilities.
    Given images, the output form is judged by behaviour
    (`nc_tf.models.outputs_probabilities`): a model whose softmax is
    followed by other layers also falls back to log-probabilities.

    Args:
        model: a Keras classifier.
        x: raw images to judge the output form on. Defaults to `None`
            (judge from the last layer).
        intensity: the model's intensity range, used with `x`. Defaults
            to `"raw"`.

    Returns:
        a callable `batch -> logits` (inference mode).

    Example:

    >>> from nc_tf.models import mnist_model
    >>> logits_function(mnist_model())(np.zeros((1, 28, 28, 1), np.float32)).shape
    TensorShape([1, 10])
    """
    if not outputs_probabilities(model, x, intensity):
        return lambda batch: model(batch, training=False)
    if x is not None and not outputs_probabilities(model):
        # a softmax followed by other layers: log-probabilities are logits
        return lambda batch: tf.math.log(tf.maximum(model(batch, training=False), 1e-30))
    last = model.layers[-1]
    try:
        features = keras.Model(model.input, last.input)
        if isinstance(last, keras.layers.Softmax):
            return lambda batch: features(batch, training=False)
        config = last.get_config()
        config["activation"] = "linear"
        linear = last.__class__.from_config(config)
        linear.build(last.input.shape)
        linear.set_weights(last.get_weights())
    except Exception:  # subclassed or nested models: no graph to cut.
        return lambda batch: tf.math.log(tf.maximum(model(batch, training=False), 1e-30))
    return lambda batch: linear(features(batch, training=False))


def to_unit(x):
    return np.asarray(x, np.float32) / 255.0


def generate(generator, x, batch_size=256):
    """Perturbations `G(x)` in [0, 1] of raw images `x` (numpy, float32)."""
    x01 = to_unit(x)
    out = [
        np.asarray(generator(x01[i : i + batch_size], training=False))
        for i in range(0, len(x01), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros_like(x01)


def stamp(x, perturbations):
    """Raw images `x` with perturbations (in [0, 1]) added, clipped to [0, 255]."""
    return np.clip(to_unit(x) + perturbations, 0.0, 1.0) * 255.0


def batched_logits(logit_fn, x, intensity, batch_size=256):
    """The logits (float64 numpy) of raw images `x` through `logit_fn`, in batches."""
    out = [
        np.asarray(logit_fn(preprocess(np.asarray(x[i : i + batch_size], np.float32), intensity)))
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out).astype(np.float64)


def check_target(model, target):
    num_classes = int(model.output_shape[-1])
    if not 0 <= int(target) < num_classes:
        raise ValueError(
            f"Label {target} is out of range: the model has labels 0..{num_classes - 1}."
        )
    return int(target)
