"""Inference-time input preprocessing that blunts backdoor triggers.

A stamped trigger is a small, precise pattern; transforming every input just
before the model sees it can break the pattern while the coarse content, and
so the clean prediction, survives. This module holds three such
preprocessors, all batch functions from raw NHWC images in [0, 255] to images
of the same shape and dtype:

| name          | what it does                                     |
| ------------- | ------------------------------------------------ |
| `lightweight` | GYM's lightweight pipeline: median blur 5,       |
|               | resize 0.8 / median blur 5 / resize back, SAT    |
| `shrink_pad`  | ShrinkPad: shrink by `pad` pixels, zero-pad back |
|               | at a random offset                               |
| `flip`        | FLIP: horizontal flip                            |

and `DefendedModel`, which wraps a Keras classifier so that `predict` runs
the preprocessor (in a thread pool: OpenCV releases the GIL), then the model's
own `preprocess(., intensity)`, then the model. `defended` builds one by name.
"""

import collections
import concurrent.futures
import functools
import inspect
import numbers
import os

import cv2
import numpy as np

from mitigation.gym import augment, intensive_pipeline, lightweight_pipeline
from nc_tf.preprocess import check_intensity, preprocess
from nc_tf.validation import check_class_labels, check_image_batch

# At most this many threads by default: beyond it the model, not the
# preprocessing, is the bottleneck.
_MAX_DEFAULT_WORKERS = 4


def lightweight(images, seed=None, scaled=False):
    """Runs GYM's lightweight pipeline on a batch of raw images.

    Each image gets its own random shift, scale and rotation (see
    `mitigation.gym.lightweight_pipeline`).

    Args:
        images: NHWC array of raw images, uint8 or float in [0, 255].
        seed: int or None; the same seed gives the same output. Defaults to
            `None` (fresh entropy).
        scaled: scale the median aperture to the image side
            (`mitigation.gym.scaled_sizes`). Defaults to `False`.

    Returns:
        Array with the shape and dtype of `images`.

    Example:

    >>> import numpy as np
    >>> lightweight(np.zeros((2, 28, 28, 1), np.uint8), seed=0).shape
    (2, 28, 28, 1)
    """
    images = check_image_batch(images, "lightweight")
    size = images.shape[1] if scaled else None
    return augment(images, lightweight_pipeline(seed=seed, image_size=size))


def intensive(images, seed=None, scaled=False, variant="notebook"):
    """Runs GYM's intensive pipeline on a batch of raw images.

    GYM fine-tunes through this pipeline; as an inference-time defence on
    its own it is the "intensive-only" column of GYM's Table 2.

    Args:
        images: NHWC array of raw images, uint8 or float in [0, 255].
        seed: int or None; the same seed gives the same output. Defaults to
            `None` (fresh entropy).
        scaled: scale the pixel sizes to the image side
            (`mitigation.gym.scaled_sizes`). Defaults to `False`.
        variant: the pipeline's sizes, `"notebook"` or `"paper"`
            (`mitigation.gym.VARIANTS`). Defaults to `"notebook"`.

    Returns:
        Array with the shape and dtype of `images`.
    """
    images = check_image_batch(images, "intensive")
    size = images.shape[1] if scaled else None
    return augment(images, intensive_pipeline(seed=seed, image_size=size, variant=variant))


def shrink_pad(images, pad=4, seed=None):
    """ShrinkPad: shrinks each image by `pad` pixels and zero-pads it back.

    Each `H x W` image is resized (bilinear) to `(H - pad) x (W - pad)` and
    placed on a black `H x W` canvas at a random offset, drawn per image
    uniformly from `{0, ..., pad}` for the top and for the left.

    Args:
        images: NHWC array of raw images, uint8 or float in [0, 255].
        pad: int, `0 <= pad < min(H, W)`, pixels to shrink by. Defaults to
            `4` (ShrinkPad-4).
        seed: int or None; the same seed gives the same offsets. Defaults to
            `None` (fresh entropy).

    Returns:
        Array with the shape and dtype of `images`.

    Example:

    >>> import numpy as np
    >>> out = shrink_pad(np.full((1, 32, 32, 3), 255, np.uint8), seed=0)
    >>> int((out[0, ..., 0] == 255).sum())  # a 28 x 28 block survives
    784
    """
    images = check_image_batch(images, "shrink_pad")
    _, height, width, channels = images.shape
    if isinstance(pad, bool) or not isinstance(pad, numbers.Integral):
        raise ValueError(f"pad must be an integer; got {pad!r}.")
    if not 0 <= pad < min(height, width):
        raise ValueError(
            f"pad must be in [0, {min(height, width)}) for {height}x{width} "
            f"images; got {pad}. ShrinkPad-4 uses pad=4."
        )
    if pad == 0:
        return images.copy()
    rng = np.random.default_rng(seed)
    tops = rng.integers(0, pad + 1, size=len(images))
    lefts = rng.integers(0, pad + 1, size=len(images))
    # cv2.resize handles uint8, float32 and float64; float16 goes via float32.
    work_dtype = images.dtype if images.dtype in (np.uint8, np.float32, np.float64) else np.float32
    small_shape = (height - pad, width - pad, channels)
    out = np.zeros(images.shape, dtype=work_dtype)
    for i, image in enumerate(images):
        small = cv2.resize(
            np.ascontiguousarray(image, dtype=work_dtype),
            (width - pad, height - pad),
            interpolation=cv2.INTER_LINEAR,
        )
        top, left = tops[i], lefts[i]
        out[i, top : top + height - pad, left : left + width - pad] = small.reshape(small_shape)
    return out.astype(images.dtype, copy=False)


def flip(images):
    """FLIP: mirrors each image left to right.

    Args:
        images: NHWC array of raw images, uint8 or float in [0, 255].

    Returns:
        A new array with the shape and dtype of `images`.

    Example:

    >>> import numpy as np
    >>> images = np.arange(3, dtype=np.uint8).reshape(1, 1, 3, 1)
    >>> flip(images)[0, 0, :, 0].tolist()
    [2, 1, 0]
    """
    images = check_image_batch(images, "flip")
    return images[:, :, ::-1, :].copy()


PREPROCESSORS = {
    "lightweight": lightweight,
    "intensive": intensive,
    "shrinkpad": shrink_pad,
    "flip": flip,
}


class DefendedModel:
    """A classifier whose inputs are preprocessed to blunt backdoor triggers.

    `predict` splits the raw images into batches, runs `preprocessor` on them
    in a thread pool, maps them to the model's domain with
    `nc_tf.preprocess.preprocess(., intensity)` and runs the model batch by
    batch while the next batches are being preprocessed. Batch `i` is
    preprocessed with a seed derived from `(seed, i)`, so with an int `seed`
    the output depends only on the images, `seed` and `batch_size`, not on
    `workers`.

    Args:
        model: a Keras classifier (anything with `predict_on_batch` or
            `predict`) taking preprocessed inputs.
        preprocessor: batch function `images -> images` on raw NHWC images,
            such as `lightweight`, `shrink_pad` or `flip`; if it has a `seed`
            parameter, it is passed one.
        intensity: the model's intensity range, one of `"raw"`, `"mnist"`,
            `"imagenet"`, `"inception"`. Defaults to `"raw"`.
        batch_size: int >= 1, images per preprocessing and model batch.
            Defaults to `256`.
        workers: int >= 1, preprocessing threads; 1 runs everything in the
            calling thread. Defaults to `None`, meaning
            `min(4, os.cpu_count())`.
        seed: int or None; None draws fresh randomness on every call. Defaults
            to `0`.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([
    ...     keras.Input((28, 28, 1)), keras.layers.Flatten(),
    ...     keras.layers.Dense(10, activation="softmax")])
    >>> guarded = DefendedModel(model, shrink_pad, intensity="mnist")
    >>> guarded.predict(np.zeros((5, 28, 28, 1), np.uint8)).shape
    (5, 10)
    """

    def __init__(
        self,
        model,
        preprocessor,
        intensity="raw",
        batch_size=256,
        workers=None,
        seed=0,
    ):
        if not (hasattr(model, "predict_on_batch") or hasattr(model, "predict")):
            raise TypeError(
                "DefendedModel needs a Keras model (with predict_on_batch or "
                f"predict); got {type(model).__name__}."
            )
        if not callable(preprocessor):
            raise TypeError(
                "preprocessor must be a batch function images -> images, "
                f"e.g. shrink_pad; got {type(preprocessor).__name__}. To pick "
                f"one by name use defended(model, method=...)."
            )
        self.model = model
        self.preprocessor = preprocessor
        self.intensity = check_intensity(intensity)
        self.batch_size = _check_count("batch_size", batch_size)
        if workers is None:
            workers = min(_MAX_DEFAULT_WORKERS, os.cpu_count() or 1)
        self.workers = _check_count("workers", workers)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0
        ):
            raise ValueError(f"seed must be a non-negative int or None; got {seed!r}.")
        self.seed = seed
        self._takes_seed = _accepts_seed(preprocessor)

    def preprocess_batch(self, images, seed=None):
        """Runs the preprocessor on raw images; returns raw images.

        Args:
            images: NHWC array of raw images, uint8 or float in [0, 255].
            seed: int or None, passed on if the preprocessor takes a seed.
                Defaults to `None`.

        Returns:
            Array with the shape of `images`.

        Example:

        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((2, 2, 1))])
        >>> images = np.eye(2)[None, ..., None]
        >>> out = DefendedModel(model, flip).preprocess_batch(images)
        >>> out[0, ..., 0].tolist()
        [[0.0, 1.0], [1.0, 0.0]]
        """
        if self._takes_seed:
            out = self.preprocessor(images, seed=seed)
        else:
            out = self.preprocessor(images)
        out = np.asarray(out)
        if out.shape != images.shape:
            raise ValueError(
                f"The preprocessor turned images of shape {images.shape} into "
                f"shape {out.shape}; it must keep the shape."
            )
        return out

    def predict(self, x):
        """Predicts on raw images through the defence.

        Args:
            x: NHWC array of raw images, uint8 or float in [0, 255].

        Returns:
            numpy array of the model's outputs, one row per image.

        Example:

        >>> import keras, numpy as np
        >>> model = keras.Sequential([
        ...     keras.Input((32, 32, 3)), keras.layers.Flatten(),
        ...     keras.layers.Dense(10)])
        >>> defended(model, "flip").predict(np.zeros((3, 32, 32, 3))).shape
        (3, 10)
        """
        x = check_image_batch(x, "DefendedModel.predict")
        if len(x) == 0:
            raise ValueError("DefendedModel.predict got no images.")
        starts = range(0, len(x), self.batch_size)
        entropy = self.seed if self.seed is not None else np.random.SeedSequence().entropy

        def prepare(index_and_start):
            index, start = index_and_start
            batch = x[start : start + self.batch_size]
            state = np.random.SeedSequence([entropy, index])
            batch_seed = int(state.generate_state(1)[0])
            return preprocess(self.preprocess_batch(batch, seed=batch_seed), self.intensity)

        jobs = enumerate(starts)
        if self.workers == 1:
            return np.concatenate([self._run_model(prepare(j)) for j in jobs])

        outputs = []
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            # A bounded window of batches in flight keeps memory flat while
            # the model works on the oldest one.
            pending = collections.deque()
            for job in jobs:
                pending.append(pool.submit(prepare, job))
                if len(pending) > 2 * self.workers:
                    outputs.append(self._run_model(pending.popleft().result()))
            while pending:
                outputs.append(self._run_model(pending.popleft().result()))
        return np.concatenate(outputs)

    def evaluate(self, x, y):
        """Returns the accuracy of the defended model on raw images.

        Args:
            x: NHWC array of raw images, uint8 or float in [0, 255].
            y: integer labels `(N,)` or `(N, 1)`, or one-hot `(N, K)`.

        Returns:
            float, the fraction of images whose top prediction equals `y`.

        Example:

        >>> import keras, numpy as np
        >>> model = keras.Sequential([
        ...     keras.Input((28, 28, 1)), keras.layers.Flatten(),
        ...     keras.layers.Dense(2, kernel_initializer="zeros")])
        >>> defended(model, "flip").evaluate(np.zeros((4, 28, 28, 1)), [0] * 4)
        1.0
        """
        x = check_image_batch(x, "DefendedModel.evaluate")
        y = check_class_labels(y, len(x), "DefendedModel.evaluate")
        predictions = self.predict(x).argmax(axis=-1)
        return float(np.mean(predictions == y))

    def _run_model(self, batch):
        if hasattr(self.model, "predict_on_batch"):
            return np.asarray(self.model.predict_on_batch(batch))
        return np.asarray(self.model.predict(batch, verbose=0))


def defended(
    model,
    method="lightweight",
    intensity="raw",
    batch_size=256,
    workers=None,
    seed=0,
    pad=4,
    scaled=False,
    variant="notebook",
):
    """Wraps a model in one of the named input-preprocessing defences.

    Args:
        model: a Keras classifier taking preprocessed inputs.
        method: `"lightweight"` (GYM), `"intensive"`, `"shrinkpad"` or `"flip"`. Defaults to
            `"lightweight"`.
        intensity: the model's intensity range, one of `"raw"`, `"mnist"`,
            `"imagenet"`, `"inception"`. Defaults to `"raw"`.
        batch_size: int >= 1. Defaults to `256`.
        workers: preprocessing threads. Defaults to `None`, meaning
            `min(4, os.cpu_count())`.
        seed: int or None. Defaults to `0`.
        pad: pixels to shrink by, used by `"shrinkpad"` only. Defaults to `4`.
        scaled: GYM pipelines only: scale their pixel sizes to the image
            side (`mitigation.gym.scaled_sizes`). Defaults to `False`.
        variant: `"intensive"` only: the pipeline's sizes, `"notebook"` or
            `"paper"` (`mitigation.gym.VARIANTS`). Defaults to `"notebook"`.

    Returns:
        A `DefendedModel`.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([
    ...     keras.Input((28, 28, 1)), keras.layers.Flatten(),
    ...     keras.layers.Dense(10)])
    >>> guarded = defended(model, "shrinkpad", intensity="mnist")
    >>> guarded.predict(np.zeros((2, 28, 28, 1), np.uint8)).shape
    (2, 10)
    """
    key = str(method).lower().replace("_", "").replace("-", "")
    if key not in PREPROCESSORS:
        raise ValueError(f"Unknown defence {method!r}. Use one of {', '.join(PREPROCESSORS)}.")
    preprocessor = PREPROCESSORS[key]
    if key == "shrinkpad":
        preprocessor = functools.partial(shrink_pad, pad=pad)
    elif key == "intensive":
        preprocessor = functools.partial(intensive, scaled=scaled, variant=variant)
    elif scaled and key == "lightweight":
        preprocessor = functools.partial(preprocessor, scaled=True)
    return DefendedModel(
        model,
        preprocessor,
        intensity=intensity,
        batch_size=batch_size,
        workers=workers,
        seed=seed,
    )


def _accepts_seed(fn):
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "seed" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}.")
    return int(value)
