"""Models: reference architectures, output form and model/data checks.

Loading untrusted model files lives in `nc_tf.safe_loading`; its
`load_model` and `UntrustedModelError` are importable from here too.
"""

import keras
import numpy as np

from nc_tf.safe_loading import UntrustedModelError, check_classifier, load_model  # noqa: F401

ARCHITECTURES = ("mnist", "gtsrb", "resnet")


# ------------------------------------------------------------ architectures
def mnist_model(input_shape=(28, 28, 1), num_classes=10):
    """The Neural Cleanse MNIST model: 2 conv + 2 dense layers, softmax output.

    Conv 16 5x5 -> max-pool -> Conv 32 5x5 -> max-pool -> Dense 512 ->
    Dense `num_classes` (softmax).

    Args:
        input_shape: image shape. Defaults to `(28, 28, 1)`.
        num_classes: number of labels. Defaults to `10`.

    Returns:
        an uncompiled `keras.Sequential`.

    Example:

    >>> mnist_model().output_shape
    (None, 10)
    """
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(16, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="nc_mnist",
    )


def gtsrb_model(input_shape=(32, 32, 3), num_classes=43, base=32, dense=512):
    """The Neural Cleanse GTSRB model (`load_traffic_sign_model`): 6 conv + 2 dense.

    Three blocks of Conv(same)+Conv -> max-pool -> dropout 0.2 with `base`,
    2*`base` and 4*`base` filters, then Dense `dense` -> dropout 0.5 ->
    Dense `num_classes` (softmax).

    Args:
        input_shape: image shape. Defaults to `(32, 32, 3)`.
        num_classes: number of labels. Defaults to `43`.
        base: filters of the first block. Defaults to `32`.
        dense: units of the hidden dense layer. Defaults to `512`.

    Returns:
        an uncompiled `keras.Sequential`.

    Example:

    >>> gtsrb_model().count_params() > 1_000_000
    True
    """
    layers = keras.layers
    stack = [keras.Input(input_shape)]
    for filters in (base, base * 2, base * 4):
        stack += [
            layers.Conv2D(filters, 3, padding="same", activation="relu"),
            layers.Conv2D(filters, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.2),
        ]
    stack += [
        layers.Flatten(),
        layers.Dense(dense, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ]
    return keras.Sequential(stack, name="nc_gtsrb")


def resnet_model(input_shape=(32, 32, 3), num_classes=10, width=16, blocks=(1, 1, 1)):
    """A small CIFAR-size residual network (functional), softmax output.

    Args:
        input_shape: image shape. Defaults to `(32, 32, 3)`.
        num_classes: number of labels. Defaults to `10`.
        width: filters of the first stage; each later stage doubles it.
            Defaults to `16`.
        blocks: residual blocks per stage. Defaults to `(1, 1, 1)`.

    Returns:
        an uncompiled functional `keras.Model`.

    Example:

    >>> resnet_model().output_shape
    (None, 10)
    """
    layers = keras.layers
    inputs = keras.Input(input_shape)
    h = layers.Conv2D(width, 3, padding="same", use_bias=False)(inputs)
    h = layers.Activation("relu")(layers.BatchNormalization()(h))
    for stage, n_blocks in enumerate(blocks):
        filters = width * 2**stage
        for block in range(n_blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = h
            h = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(h)
            h = layers.Activation("relu")(layers.BatchNormalization()(h))
            h = layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
            h = layers.BatchNormalization()(h)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
            h = layers.Activation("relu")(layers.Add()([h, shortcut]))
    h = layers.GlobalAveragePooling2D()(h)
    outputs = layers.Dense(num_classes, activation="softmax")(h)
    return keras.Model(inputs, outputs, name="resnet_small")


def build_model(arch, input_shape, num_classes):
    """Builds a reference architecture by name.

    Args:
        arch: `"mnist"`, `"gtsrb"` or `"resnet"`.
        input_shape: image shape `(H, W, C)`.
        num_classes: number of labels.

    Returns:
        an uncompiled Keras model.

    Example:

    >>> build_model("gtsrb", (32, 32, 3), 43).name
    'nc_gtsrb'
    """
    makers = {"mnist": mnist_model, "gtsrb": gtsrb_model, "resnet": resnet_model}
    if arch not in makers:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {ARCHITECTURES}.")
    return makers[arch](input_shape=tuple(input_shape), num_classes=int(num_classes))


# --------------------------------------------------- outputs and checks
def outputs_probabilities(model, x=None, intensity="raw"):
    """True if the model outputs probabilities (a softmax), False for logits.

    Given images, the answer comes from behaviour: the outputs count as
    probabilities when every one is non-negative and each row sums to 1,
    whatever layers follow the softmax (e.g. a `Activation("linear")` after
    it). Without images, the last layer decides (recursing into a nested
    model): a `Softmax` layer, an `Activation("softmax")` or any layer with
    `activation=softmax`.

    Args:
        model: a Keras model.
        x: raw images `(N, H, W, C)` to run the model on (at most 256 are
            used). Defaults to `None` (decide from the last layer).
        intensity: the model's intensity range, used with `x`. Defaults to
            `"raw"`.

    Returns:
        bool.

    Example:

    >>> outputs_probabilities(mnist_model())
    True
    >>> outputs_probabilities(logits_twin(mnist_model()))
    False
    """
    if x is not None and len(x):
        from nc_tf.preprocess import preprocess

        out = np.asarray(
            model(preprocess(np.asarray(x[:256], np.float32), intensity), training=False),
            np.float64,
        )
        return bool(np.all(out >= -1e-6) and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3))
    layer = model.layers[-1]
    while isinstance(layer, keras.Model) and layer.layers:
        layer = layer.layers[-1]
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def logits_twin(model):
    """A copy of a softmax model that outputs the logits: same weights, softmax removed.

    The last layer's softmax is replaced by the identity (a final `Softmax`
    layer or `Activation("softmax")` becomes `Activation("linear")`; a layer
    with `activation="softmax"` keeps its weights and loses the
    activation). Used to check that a result does not depend on whether a
    model ends in softmax.

    Args:
        model: a built Sequential or functional model whose last layer
            applies the softmax.

    Returns:
        a new, uncompiled `keras.Model`.

    Example:

    >>> twin = logits_twin(mnist_model())
    >>> twin.layers[-1].activation.__name__
    'linear'
    """
    last = model.layers[-1]
    if not outputs_probabilities(model):
        raise ValueError(
            "logits_twin needs a model whose last layer applies the softmax; "
            f"{model.name}'s last layer {last.name!r} does not."
        )

    def clone(layer):
        if layer is not last:
            return layer.__class__.from_config(layer.get_config())
        if isinstance(layer, (keras.layers.Softmax, keras.layers.Activation)):
            return keras.layers.Activation("linear", name=layer.name)
        config = dict(layer.get_config(), activation="linear")
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    return twin


def check_model_data(model, x, y=None, name="data"):
    """Checks that images (and labels) fit the model; raises a clear error if not.

    Args:
        model: a Keras model with a single image input.
        x: images NHWC.
        y: integer labels, or `None`. Defaults to `None`.
        name: what to call the data in messages. Defaults to `"data"`.

    Returns:
        the number of classes of the model.
    """
    check_classifier(model)
    if len(x) == 0:
        raise ValueError(f"{name} holds no images; pass data with images in it.")
    expected = tuple(model.input_shape[1:])
    got = tuple(np.shape(x)[1:])
    if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise ValueError(
            f"The model expects images shaped {expected} but {name} has {got}. "
            "Use the data set the model was trained on (or resize it)."
        )
    num_classes = int(model.output_shape[-1])
    if y is not None and len(y):
        top = int(np.max(y))
        if top >= num_classes:
            raise ValueError(
                f"{name} has label {top} but the model has only {num_classes} "
                "outputs (labels 0.."
                f"{num_classes - 1}). Check that data set "
                "and model belong together."
            )
    return num_classes


def default_arch(image_shape, num_classes):
    """The reference architecture for a data shape: MNIST 28x28x1, GTSRB 32x32x3/43, else ResNet."""
    shape = tuple(image_shape)
    if shape == (28, 28, 1):
        return "mnist"
    if shape == (32, 32, 3) and num_classes == 43:
        return "gtsrb"
    return "resnet"


def copy_model(model, caller="copy_model"):
    """Returns an independent copy of a built Keras model, weights included.

    Args:
        model: a built Sequential or functional `keras.Model`.
        caller: name of the public function, used in error messages.
            Defaults to `"copy_model"`.

    Returns:
        a new, uncompiled `keras.Model` with the same weights.

    Example:

    >>> from nc_tf.models import mnist_model
    >>> model = mnist_model()
    >>> copy_model(model) is model
    False
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"{caller} needs a keras.Model; got {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            "The model is not built, so it has no weights to copy. Build it "
            "first, e.g. call it on a batch or give it a keras.Input."
        )
    try:
        clone = keras.models.clone_model(model)
    except Exception as error:  # Keras raises several types here.
        raise ValueError(
            f"{caller} copies the model with keras.models.clone_model, which "
            "failed. Use a Sequential or functional model, or give your "
            "subclassed model get_config/from_config."
        ) from error
    clone.set_weights(model.get_weights())
    return clone
