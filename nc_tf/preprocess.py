"""Intensity ranges: how raw [0, 255] pixels become the model's input.

Neural Cleanse stamps triggers in the RAW pixel domain. Every image nc-tf
handles is raw NHWC in [0, 255]; the model's own preprocessing (its
"intensity range", named as in the reference `Visualizer`) is applied
explicitly, right before the model sees the batch, by `preprocess`, and undone
by `reverse_preprocess`.

| name        | model input                                       |
| ----------- | ------------------------------------------------- |
| `raw`       | x, in [0, 255]                                    |
| `mnist`     | x / 255, in [0, 1]                                |
| `imagenet`  | RGB -> BGR, minus the mean (103.939, 116.779, 123.68) |
| `inception` | (x / 255 - 0.5) * 2, in [-1, 1]                   |

Both functions accept numpy arrays and TensorFlow tensors and return the same
kind (float32).
"""

import numpy as np

INTENSITY_RANGES = ("raw", "mnist", "imagenet", "inception")
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
_MEAN = np.asarray(IMAGENET_MEAN_BGR, dtype=np.float32)


def check_intensity(intensity):
    """Returns `intensity` if it names a known range, else raises ValueError."""
    if intensity not in INTENSITY_RANGES:
        raise ValueError(
            f"Unknown intensity range {intensity!r}. Use one of "
            f"{', '.join(INTENSITY_RANGES)} (the preprocessing the model was "
            "trained with)."
        )
    return intensity


def _as_float(x):
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np.asarray(x, dtype=np.float32)
    import tensorflow as tf

    return tf.cast(x, tf.float32)


def preprocess(x, intensity="raw"):
    """Maps raw [0, 255] NHWC images to the model's input domain.

    Args:
        x: numpy array or tensor of raw images, NHWC, values in [0, 255].
        intensity: one of `"raw"`, `"mnist"`, `"imagenet"`, `"inception"`.
            Defaults to `"raw"`.

    Returns:
        float32 array (or tensor, if `x` is one) in the model's domain.

    Example:

    >>> import numpy as np
    >>> preprocess(np.full((1, 2, 2, 1), 255.0), "mnist").max()
    1.0
    """
    check_intensity(intensity)
    x = _as_float(x)
    if intensity == "raw":
        return x
    if intensity == "mnist":
        return x / 255.0
    if intensity == "inception":
        return (x / 255.0 - 0.5) * 2.0
    _check_rgb(x)
    return x[..., ::-1] - _MEAN


def reverse_preprocess(x, intensity="raw"):
    """Maps model-domain images back to raw [0, 255]; inverse of `preprocess`.

    Args:
        x: numpy array or tensor in the model's input domain.
        intensity: one of `"raw"`, `"mnist"`, `"imagenet"`, `"inception"`.
            Defaults to `"raw"`.

    Returns:
        float32 array (or tensor) of raw images.

    Example:

    >>> import numpy as np
    >>> float(reverse_preprocess(np.zeros((1, 1, 1, 1)), "inception").max())
    127.5
    """
    check_intensity(intensity)
    x = _as_float(x)
    if intensity == "raw":
        return x
    if intensity == "mnist":
        return x * 255.0
    if intensity == "inception":
        return (x / 2.0 + 0.5) * 255.0
    _check_rgb(x)
    return (x + _MEAN)[..., ::-1]


def _check_rgb(x):
    if x.shape[-1] != 3:
        raise ValueError(
            "The 'imagenet' intensity range needs RGB images (3 channels); got "
            f"{x.shape[-1]} channel(s). Use 'raw', 'mnist' or 'inception'."
        )
