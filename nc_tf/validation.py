"""Input validation at the boundary, in the manner of scikit-learn's `check_scalar`.

One function checks a scalar setting's type and range and raises a message
that names the setting, the valid range and the value given.
"""

import math
import numbers

import numpy as np

# `include` -> (left bracket, right bracket) of the range text.
_BRACKETS = {"both": "[]", "left": "[)", "right": "(]", "neither": "()"}


def check_scalar(
    value, name, kind=numbers.Real, low=None, high=None, include="both", what=None, hint=""
):
    """Returns `value` (as int or float) if it has the right type and lies in range, else raises.

    Args:
        value: the value to check.
        name: the setting's name, used in the message.
        kind: `numbers.Integral` for whole numbers, `numbers.Real` for any
            real number (booleans are refused either way). Defaults to
            `numbers.Real`.
        low: the lower bound, or `None` for none. Defaults to `None`.
        high: the upper bound, or `None` for none. Defaults to `None`.
        include: which bounds belong to the range: `"both"`, `"left"`,
            `"right"` or `"neither"`. Defaults to `"both"`.
        what: what the value is, in the message (e.g. `"a fraction"`).
            Defaults to `None`: "a whole number" or "a number".
        hint: text appended to the message (e.g. the published value).
            Defaults to `""`.

    Returns:
        `int(value)` for `numbers.Integral`, else `float(value)`.

    Raises:
        ValueError: wrong type, NaN or infinite, or out of range.

    Example:

    >>> check_scalar(0.9, "persistence_threshold", low=0, high=1, include="right")
    0.9
    >>> check_scalar(0, "steps", numbers.Integral, low=1)
    Traceback (most recent call last):
    ...
    ValueError: steps must be a whole number >= 1, got 0.
    """
    whole = kind is numbers.Integral
    what = what or ("a whole number" if whole else "a number")
    left, right = _BRACKETS[include]
    if low is not None and high is not None:
        span = f" in {left}{low:g}, {high:g}{right}"
    elif low is not None:
        span = f" {'>=' if left == '[' else '>'} {low:g}"
    elif high is not None:
        span = f" {'<=' if right == ']' else '<'} {high:g}"
    else:
        span = ""
    message = f"{name} must be {what}{span}, got {value!r}{hint}."
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or value != value
        or value in (math.inf, -math.inf)
    ):
        raise ValueError(message)
    too_low = low is not None and (value < low if left == "[" else value <= low)
    too_high = high is not None and (value > high if right == "]" else value >= high)
    if too_low or too_high:
        raise ValueError(message)
    return int(value) if whole else float(value)


def check_seed(seed):
    """Returns a seed as a non-negative int, `None` as is, or raises.

    Example:

    >>> check_seed(3)
    3
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int or None; got {seed!r}.")
    if seed < 0:
        raise ValueError(f"seed must be non-negative; got {seed}.")
    return int(seed)


def check_image_batch(images, caller):
    """Returns `images` as a numpy NHWC array of raw pixels, or raises.

    Args:
        images: array-like, NHWC, uint8 or float in [0, 255].
        caller: name of the public function, used in error messages.

    Returns:
        The images as a numpy array (not copied if already one).

    Example:

    >>> import numpy as np
    >>> check_image_batch(np.zeros((1, 2, 2, 1), np.uint8), "augment").shape
    (1, 2, 2, 1)
    """
    images = np.asarray(images)
    if images.ndim != 4:
        hint = " Add the channel axis with images[..., None]." if images.ndim == 3 else ""
        raise ValueError(
            f"{caller} needs a batch of images shaped (N, H, W, C); got an "
            f"array of shape {images.shape}.{hint}"
        )
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"{caller} needs uint8 or float images; got dtype "
            f"{images.dtype}. Convert with images.astype('float32')."
        )
    # Not nc_tf.datasets.check_images: it refuses float images that all lie
    # in [0, 1], and this check also runs on single training and prediction
    # batches, where an all-black (but raw) float batch is legitimate.
    if images.size and np.issubdtype(images.dtype, np.floating):
        low, high = float(images.min()), float(images.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"{caller} got images with NaN or inf values.")
        if low < 0.0 or high > 255.0:
            raise ValueError(
                f"{caller} needs raw images in [0, 255]; got values in "
                f"[{low:g}, {high:g}]. Undo the model's preprocessing first "
                "(nc_tf.preprocess.reverse_preprocess)."
            )
    return images


def check_class_labels(y, count, caller):
    """Returns integer labels of shape `(count,)`, or raises.

    Args:
        y: labels, shape `(N,)`, `(N, 1)` or one-hot `(N, K)`.
        count: expected number of labels.
        caller: name of the public function, used in error messages.

    Returns:
        int64 array of shape `(count,)`.

    Example:

    >>> import numpy as np
    >>> check_class_labels(np.eye(3), 3, "evaluate").tolist()
    [0, 1, 2]
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != count:
        raise ValueError(
            f"{caller} needs one label per image: {count} labels of shape "
            f"(N,); got labels of shape {np.shape(y)}."
        )
    if y.size and np.issubdtype(y.dtype, np.floating):
        if not np.all(y == np.round(y)):
            raise ValueError(
                f"{caller} needs integer class labels; got non-integer "
                "floats. Pass class indices, e.g. y.argmax(axis=1)."
            )
    elif y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{caller} needs integer class labels; got dtype {y.dtype}.")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"{caller} got negative labels; use 0..K-1.")
    return y
