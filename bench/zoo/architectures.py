"""The zoo's model families, each a builder of a plain Keras functional model.

Every builder takes `(input_shape, num_classes, logits, standardize_data,
**options)` and uses only Keras built-in layers, so the models save as `.h5`
and `.keras` and load without custom objects. With `standardize_data`, the
first layer is a `Normalization` adapted to those raw images, so the model
takes raw 0..255 input.
"""

import keras
from keras import layers


def _inputs(input_shape, standardize_data):
    """The model input, and the tensor after the optional `Normalization` layer."""
    inputs = keras.Input(shape=input_shape, name="image")
    if standardize_data is None:
        return inputs, inputs
    norm = layers.Normalization(axis=-1, name="standardize")
    norm.adapt(standardize_data)
    return inputs, norm(inputs)


def _dense_output(x, num_classes, logits):
    """The classifier's last layer: a `Dense` with softmax, or without activation."""
    return layers.Dense(num_classes, activation=None if logits else "softmax", name="output")(x)


def build_nc(
    input_shape, num_classes, logits=False, standardize_data=None, width=16, dense=128, dropout=0.0
):
    """A Neural Cleanse-like CNN: (conv, conv, max-pool) twice, then a dense layer.

    Args:
        input_shape: the image shape `(H, W, C)`.
        num_classes: the number of labels.
        logits: end without an activation. Defaults to `False` (softmax).
        standardize_data: raw images to adapt a first `Normalization` layer
            on. Defaults to `None` (no such layer).
        width: the filters of the first block; the second has twice as many.
            Defaults to `16`.
        dense: the units of the hidden dense layer. Defaults to `128`.
        dropout: the dropout rate before and after the hidden dense layer.
            Defaults to `0.0` (no dropout layers).

    Returns:
        a `keras.Model`.
    """
    inputs, x = _inputs(input_shape, standardize_data)
    for filters in (width, 2 * width):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(dense, activation="relu")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _dense_output(x, num_classes, logits), name="nc")


def build_vgg(
    input_shape,
    num_classes,
    logits=False,
    standardize_data=None,
    width=16,
    blocks=2,
    dense=128,
    dropout=0.3,
    bn_momentum=0.99,
):
    """A VGG-style CNN: blocks of two conv-BatchNorm-ReLU layers, max-pool and dropout.

    Args:
        input_shape: the image shape `(H, W, C)`.
        num_classes: the number of labels.
        logits: end without an activation. Defaults to `False` (softmax).
        standardize_data: raw images to adapt a first `Normalization` layer
            on. Defaults to `None` (no such layer).
        width: the filters of the first block, doubled at each next block.
            Defaults to `16`.
        blocks: the number of conv blocks. Defaults to `2`.
        dense: the units of the hidden dense layer. Defaults to `128`.
        dropout: the dropout rate after each block and the dense layer.
            Defaults to `0.3`.
        bn_momentum: the momentum of the BatchNormalization moving
            statistics. Defaults to `0.99`.

    Returns:
        a `keras.Model`.
    """
    inputs, x = _inputs(input_shape, standardize_data)
    for block in range(blocks):
        for _ in range(2):
            x = layers.Conv2D(width * 2**block, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=bn_momentum)(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=bn_momentum)(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _dense_output(x, num_classes, logits), name="vgg")


def build_mlp(
    input_shape, num_classes, logits=False, standardize_data=None, units=(256, 128), dropout=0.1
):
    """A multilayer perceptron on the flattened image.

    Args:
        input_shape: the image shape `(H, W, C)`.
        num_classes: the number of labels.
        logits: end without an activation. Defaults to `False` (softmax).
        standardize_data: raw images to adapt a first `Normalization` layer
            on. Defaults to `None` (no such layer).
        units: the width of each hidden layer. Defaults to `(256, 128)`.
        dropout: the dropout rate after each hidden layer. Defaults to `0.1`.

    Returns:
        a `keras.Model`.
    """
    inputs, x = _inputs(input_shape, standardize_data)
    x = layers.Flatten()(x)
    for width in units:
        x = layers.Dense(width, activation="relu")(x)
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _dense_output(x, num_classes, logits), name="mlp")


def _residual_block(x, filters, strides, bn_momentum):
    """Two 3x3 conv-BatchNorm layers added to a (projected) shortcut, then ReLU."""
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization(momentum=bn_momentum)(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=bn_momentum)(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
        shortcut = layers.BatchNormalization(momentum=bn_momentum)(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def build_resnet(
    input_shape,
    num_classes,
    logits=False,
    standardize_data=None,
    width=16,
    stages=3,
    stem_stride=1,
    bn_momentum=0.99,
):
    """A small ResNet: a conv stem, one residual block per stage, global pooling, dense.

    Args:
        input_shape: the image shape `(H, W, C)`.
        num_classes: the number of labels.
        logits: end without an activation. Defaults to `False` (softmax).
        standardize_data: raw images to adapt a first `Normalization` layer
            on. Defaults to `None` (no such layer).
        width: the filters of the stem and first stage, doubled at each next
            stage (which also halves the resolution). Defaults to `16`.
        stages: the number of residual stages. Defaults to `3`.
        stem_stride: the stride of the stem convolution. Defaults to `1`.
        bn_momentum: the momentum of the BatchNormalization moving
            statistics. Defaults to `0.99`.

    Returns:
        a `keras.Model`.
    """
    inputs, x = _inputs(input_shape, standardize_data)
    x = layers.Conv2D(width, 3, strides=stem_stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=bn_momentum)(x)
    x = layers.ReLU()(x)
    for stage in range(stages):
        x = _residual_block(x, width * 2**stage, 1 if stage == 0 else 2, bn_momentum)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _dense_output(x, num_classes, logits), name="resnet")


def _separable_block(x, filters, strides, bn_momentum):
    """Depthwise 3x3 conv, BatchNorm, ReLU6, then pointwise 1x1 conv, BatchNorm, ReLU6."""
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=bn_momentum)(x)
    x = layers.ReLU(max_value=6.0)(x)
    x = layers.Conv2D(filters, 1, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=bn_momentum)(x)
    return layers.ReLU(max_value=6.0)(x)


def build_mobilenet(
    input_shape,
    num_classes,
    logits=False,
    standardize_data=None,
    width=16,
    plan=((2, 1), (4, 2), (4, 1), (8, 2)),
    stem_stride=2,
    dropout=0.2,
    bn_momentum=0.99,
):
    """A MobileNet-style CNN of depthwise-separable blocks with BatchNorm and ReLU6.

    Args:
        input_shape: the image shape `(H, W, C)`.
        num_classes: the number of labels.
        logits: end without an activation. Defaults to `False` (softmax).
        standardize_data: raw images to adapt a first `Normalization` layer
            on. Defaults to `None` (no such layer).
        width: the filters of the stem convolution. Defaults to `16`.
        plan: `(width multiple, stride)` of each separable block.
            Defaults to `((2, 1), (4, 2), (4, 1), (8, 2))`.
        stem_stride: the stride of the stem convolution. Defaults to `2`.
        dropout: the dropout rate before the last layer. Defaults to `0.2`.
        bn_momentum: the momentum of the BatchNormalization moving
            statistics. Defaults to `0.99`.

    Returns:
        a `keras.Model`.
    """
    inputs, x = _inputs(input_shape, standardize_data)
    x = layers.Conv2D(width, 3, strides=stem_stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=bn_momentum)(x)
    x = layers.ReLU(max_value=6.0)(x)
    for multiple, strides in plan:
        x = _separable_block(x, width * multiple, strides, bn_momentum)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _dense_output(x, num_classes, logits), name="mobilenet")


def build_gap(
    input_shape,
    num_classes,
    logits=False,
    standardize_data=None,
    width=16,
    blocks=3,
    bn_momentum=0.99,
):
    """An all-convolutional net: conv blocks, a 1x1 conv to the labels, global average pooling.

    Args:
        input_shape: the image shape `(H, W, C)`.
        num_classes: the number of labels.
        logits: end without an activation. Defaults to `False` (softmax).
        standardize_data: raw images to adapt a first `Normalization` layer
            on. Defaults to `None` (no such layer).
        width: the filters of the first block, doubled at each next block.
            Defaults to `16`.
        blocks: the number of conv-BatchNorm-ReLU + max-pool blocks.
            Defaults to `3`.
        bn_momentum: the momentum of the BatchNormalization moving
            statistics. Defaults to `0.99`.

    Returns:
        a `keras.Model`.
    """
    inputs, x = _inputs(input_shape, standardize_data)
    for block in range(blocks):
        x = layers.Conv2D(width * 2**block, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=bn_momentum)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(width * 2**blocks, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(num_classes, 1, name="class_maps")(x)
    x = layers.GlobalAveragePooling2D(name="output_logits")(x)
    if not logits:
        x = layers.Activation("softmax", name="output")(x)
    return keras.Model(inputs, x, name="gap")


FAMILIES = {
    "nc": build_nc,
    "vgg": build_vgg,
    "mlp": build_mlp,
    "resnet": build_resnet,
    "mobilenet": build_mobilenet,
    "gap": build_gap,
}
SPLITS = {
    "nc": "dev",
    "vgg": "dev",
    "mlp": "dev",
    "resnet": "test",
    "mobilenet": "test",
    "gap": "test",
}


def build_model(family, input_shape, num_classes, logits=False, standardize_data=None, **options):
    """Builds a model of one family (see `FAMILIES`).

    Args:
        family: a key of `FAMILIES`.
        input_shape: the image shape `(H, W, C)`.
        num_classes: the number of labels.
        logits: end without an activation. Defaults to `False` (softmax).
        standardize_data: raw images to adapt a first `Normalization` layer
            on. Defaults to `None` (no such layer).
        **options: the family builder's own keyword arguments.

    Returns:
        a `keras.Model`.
    """
    return FAMILIES[family](
        input_shape, num_classes, logits=logits, standardize_data=standardize_data, **options
    )
