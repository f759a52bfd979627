"""GYM / DeepSweep: wash a backdoor out of a model with heavy augmentation.

GYM (Zeng, Qiu et al., "DeepSweep: An Evaluation Framework for Mitigating DNN
Backdoor Attacks using Data Augmentation") removes a backdoor in two places:

* at training time, by fine-tuning the model for a few epochs on a small clean
  set that is re-augmented every epoch with the *intensive* pipeline
  (`intensive_pipeline`, `GymFineTuneDataset`, `gym_finetune`);
* at inference time, by passing every input through the cheap *lightweight*
  pipeline before the model sees it (`lightweight_pipeline`; the defended
  inference wrapper lives in `mitigation.preprocessing`).

Both pipelines follow the published Keras code (YiZeng623/DeepSweep,
`Code_demo(PubFig_WM).ipynb`: functions `defending` and `defending2`,
albumentations 0.4/0.5 era, PubFig at 224x224), translated to
albumentations 2.x:

| step | intensive | lightweight |
| ---- | --------- | ----------- |
| `OpticalDistortion`, k ~ U(-0.05, 0.05), reflect-101 border | yes | |
| `RandomGamma`, gamma 0.6 | yes | |
| `MedianBlur`, ksize 5 | yes | yes |
| `MultiplicativeNoise`, x1.53, clipped | yes | |
| `RandomGamma`, gamma 2.6 | yes | |
| `Downscale` 0.25, nearest both ways | yes | |
| `MedianBlur`, ksize 5 | yes | |
| `ResizeMedianResize`: 180/224 x, ksize 5, back | yes | yes |
| `RandomShrink` to 0.91-1.0 on a zero canvas | yes | |
| SAT: `LegacyShiftScaleRotate` shift 0.16, scale 0.16, rotate 4, black | yes | yes |

Every step is always applied: the notebook passes `p=1` to every
albumentations transform (0.4's own default was `p=0.5` for all of them), and
its arguments are explicit pairs where 0.4 would have read a scalar
differently (`RandomGamma(gamma_limit=(60, 60))` is gamma 0.6; a bare 60 meant
(-60, 60) in 0.4; `MedianBlur(blur_limit=(5, 5))` is ksize 5, a bare 5 meant
{3, 5}). `OpticalDistortion(p=1)` kept 0.4's defaults: distort_limit 0.05,
shift_limit 0.05 (the centre shift is rounded to whole pixels, so it is always
0), linear interpolation, reflect-101 border.

Sizes are ratios, so 28x28x1, 32x32x3 and 224x224x3 images all work, with
one exception taken as published: the median aperture is 5 *pixels* at every
size. On the 224x224 images it was tuned for that is 2 % of the width; on
32x32 images it is 16 %, so the pipelines are much harsher there (a model
that was not fine-tuned keeps about a quarter of its GTSRB accuracy behind
the lightweight pipeline). Images are raw NHWC in [0, 255] as everywhere in
nc-tf; `augment` runs a pipeline on such a batch, image by image.

Seeding: albumentations 2.0.8's `Compose(seed=s)` seeds every child transform
with its own generator started from the *same* `s`, so two transforms that
draw alike (e.g. two `Affine`s) get identical parameters. The pipelines here
are therefore re-seeded with `seed_pipeline`, which hands all transforms one
shared stream, as the single global `random` did in albumentations 0.4.
"""

import functools
import math
import numbers
import random

import albumentations as A
import cv2
import keras
import numpy as np

from nc_tf import models
from nc_tf.preprocess import check_intensity, preprocess
from nc_tf.validation import check_scalar

# albumentations 2.x reads float images as [0, 1]; raw pixels are [0, 255].
_PIXEL_MAX = 255.0
# Below this tolerance `int(size * ratio)` would floor 27.999999 to 27.
_ROUNDING_SLACK = 1e-6
# The notebook resizes its 224x224 images to 180x180 and back
# (`cv2.resize(defimg, (180, 180))`): a ratio of 0.8036, not 0.8 (224 -> 179).
_RESIZE_RATIO = 180 / 224
# The notebook's fine-tuning optimiser: the model is compiled with
# `Adadelta(lr = 0.03)` before `model.fit` (not Keras 2's default lr 1.0).
_ADADELTA_LR = 0.03
# The published pixel sizes and the image side they were tuned on (faces).
_KSIZE, _DOWNSCALE, _TUNED_SIZE = 5, 0.25, 224


class ResizeMedianResize(A.ImageOnlyTransform):
    """Resizes an image by a ratio, median-blurs it, and resizes it back.

    The down-blur-up round trip wipes out small high-frequency patterns, such
    as a stamped backdoor trigger, while keeping the coarse content. It is the
    "resize to 180/224 -> MedianBlur 5 -> resize back" step of both GYM
    pipelines (the notebook's `cv2.resize(defimg, (180, 180))` on 224x224
    images, as a ratio).
    The output has the input's shape and dtype; grayscale `(H, W, 1)` images
    keep their channel axis.

    Args:
        ratio: float, the intermediate size as a fraction of the input size,
            or a `(min, max)` pair to draw the ratio uniformly per image. The
            intermediate size is `int(ratio * size)`, at least 1 pixel.
            Defaults to `180 / 224` (0.8036).
        ksize: odd int >= 3, the median filter's aperture, or `None` for
            the resize round trip alone. Values above 5 need uint8 images
            (an OpenCV limit). Defaults to `5`.
        interpolation: OpenCV interpolation flag for both resizes. Defaults to
            `cv2.INTER_LINEAR`.
        p: probability of applying the transform. Defaults to `1.0`.

    Example:

    >>> import numpy as np
    >>> step = ResizeMedianResize(ratio=0.8)
    >>> step(image=np.zeros((28, 28, 1), np.uint8))["image"].shape
    (28, 28, 1)
    """

    def __init__(
        self,
        ratio=_RESIZE_RATIO,
        ksize=5,
        interpolation=cv2.INTER_LINEAR,
        p=1.0,
    ):
        super().__init__(p=p)
        self.ratio = _check_ratio_range("ratio", ratio, upper=None)
        self.ksize = None if ksize is None else _check_ksize(ksize)
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params, data):
        """Draws the intermediate size for this image."""
        ratio = self.py_random.uniform(*self.ratio)
        height, width = params["shape"][:2]
        return {"size": (_scaled(height, ratio), _scaled(width, ratio))}

    def apply(self, img, size=None, **params):
        """Applies the resize-blur-resize round trip to one image."""
        if size is None:
            size = (_scaled(img.shape[0], self.ratio[0]),
                    _scaled(img.shape[1], self.ratio[0]))
        height, width = img.shape[:2]

        def round_trip(channels):
            small = cv2.resize(
                channels, (size[1], size[0]), interpolation=self.interpolation
            )
            if self.ksize is not None:
                small = _median_blur(small, self.ksize)
            return cv2.resize(
                small, (width, height), interpolation=self.interpolation
            )

        return _run_cv2(round_trip, img)


class RandomShrink(A.ImageOnlyTransform):
    """Shrinks an image by a random ratio and pastes it on a black canvas.

    The image is resized to `ratio * size` (same ratio for height and width,
    ratio drawn uniformly from `ratio_range`) and placed at a uniformly random
    position on a zero canvas of the original size. It is the "random shrink
    to 0.91-1.0" step of the intensive GYM pipeline. The output has the
    input's shape and dtype; grayscale `(H, W, 1)` images keep their channel
    axis.

    Args:
        ratio_range: `(min, max)` with `0 < min <= max <= 1`, the range of the
            shrink ratio. The shrunk size is `int(ratio * size)`, at least 1
            pixel. Defaults to `(0.91, 1.0)`.
        interpolation: OpenCV interpolation flag for the resize. Defaults to
            `cv2.INTER_LINEAR`.
        p: probability of applying the transform. Defaults to `1.0`.

    Example:

    >>> import albumentations as A
    >>> import numpy as np
    >>> shrink = A.Compose([RandomShrink((0.5, 0.5))], seed=0)
    >>> out = shrink(image=np.full((32, 32, 3), 255, np.uint8))["image"]
    >>> int((out > 0).all(axis=-1).sum())
    256
    """

    def __init__(
        self, ratio_range=(0.91, 1.0), interpolation=cv2.INTER_LINEAR, p=1.0
    ):
        super().__init__(p=p)
        self.ratio_range = _check_ratio_range(
            "ratio_range", ratio_range, upper=1.0, allow_scalar=False
        )
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params, data):
        """Draws the shrunk size and its top-left corner on the canvas."""
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(*self.ratio_range)
        new_height, new_width = _scaled(height, ratio), _scaled(width, ratio)
        top = self.py_random.randint(0, height - new_height)
        left = self.py_random.randint(0, width - new_width)
        return {"size": (new_height, new_width), "offset": (top, left)}

    def apply(self, img, size=None, offset=(0, 0), **params):
        """Shrinks one image and pastes it at `offset` on a zero canvas."""
        height, width = img.shape[:2]
        if size is None:
            size = (height, width)
        top, left = offset

        def shrink(channels):
            small = cv2.resize(
                channels, (size[1], size[0]), interpolation=self.interpolation
            )
            # cv2 drops a single channel axis; the canvas follows `small`.
            canvas = np.zeros((height, width) + small.shape[2:], small.dtype)
            canvas[top : top + size[0], left : left + size[1]] = small
            return canvas

        return _run_cv2(shrink, img)


class LegacyShiftScaleRotate(A.ImageOnlyTransform):
    """Shifts, scales and rotates an image as albumentations 0.4 did.

    This is GYM's SAT step, `ShiftScaleRotate(shift_limit=0.16,
    scale_limit=0.16, rotate_limit=4, border_mode=0)` in the published code,
    with albumentations 0.4's maths: an angle, a scale factor and x/y shifts
    are drawn uniformly and independently (in that order), the matrix is
    `cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)` plus a
    translation of `(dx * w, dy * h)` pixels, and the image is warped with
    `cv2.warpAffine` onto a black (zero) border. albumentations 2.x's
    `Affine` / `ShiftScaleRotate` differ: they truncate the translation to
    whole pixels (`int(dx * w)`, so every shift below one pixel becomes 0
    and the others shrink by up to a pixel) and rotate about
    `(w / 2 - 0.5, h / 2 - 0.5)`. The output has the input's shape and dtype;
    grayscale `(H, W, 1)` images keep their channel axis.

    Args:
        shift_limit: float `s` in [0, 1] for shifts in `[-s, s]` of the width
            (x) and of the height (y), or a `(min, max)` pair. Defaults to
            `0.16`.
        scale_limit: float `s` in [0, 1) for a scale factor in
            `[1 - s, 1 + s]`, or a `(min, max)` pair added to 1. Defaults to
            `0.16`.
        rotate_limit: degrees `r` for an angle in `[-r, r]`, or a
            `(min, max)` pair. Defaults to `4`.
        interpolation: OpenCV interpolation flag. Defaults to
            `cv2.INTER_LINEAR`, as in albumentations 0.4.
        p: probability of applying the transform. Defaults to `1.0` (the
            published code passed `p=1`; 0.4's default was 0.5).

    Example:

    >>> import albumentations as A
    >>> import numpy as np
    >>> step = LegacyShiftScaleRotate(0.0, 0.0, 90)
    >>> out = A.Compose([step], seed=0)(image=np.ones((32, 32, 3), np.uint8))
    >>> out["image"].shape
    (32, 32, 3)
    """

    def __init__(
        self,
        shift_limit=0.16,
        scale_limit=0.16,
        rotate_limit=4,
        interpolation=cv2.INTER_LINEAR,
        p=1.0,
    ):
        super().__init__(p=p)
        self.shift_limit = _check_limit("shift_limit", shift_limit, bound=1.0)
        self.scale_limit = _check_limit("scale_limit", scale_limit, bound=1.0)
        if self.scale_limit[0] <= -1.0:
            raise ValueError(
                "scale_limit must keep the scale factor 1 + scale_limit "
                f"positive; got {scale_limit!r}."
            )
        self.rotate_limit = _check_limit(
            "rotate_limit", rotate_limit, bound=None
        )
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params, data):
        """Draws the angle, scale and shifts, in albumentations 0.4's order."""
        uniform = self.py_random.uniform
        return {
            "angle": uniform(*self.rotate_limit),
            "scale": 1.0 + uniform(*self.scale_limit),
            "dx": uniform(*self.shift_limit),
            "dy": uniform(*self.shift_limit),
        }

    def apply(self, img, angle=0.0, scale=1.0, dx=0.0, dy=0.0, **params):
        """Warps one image with the drawn angle, scale and shifts."""
        height, width = img.shape[:2]
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
        matrix[0, 2] += dx * width  # sub-pixel shifts, not truncated
        matrix[1, 2] += dy * height

        def warp(channels):
            return cv2.warpAffine(
                channels,
                matrix,
                (width, height),
                flags=self.interpolation,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )

        return _run_cv2(warp, img)


def sat_transform():
    """Returns GYM's SAT step: a random shift, scale and rotation.

    The published code used `ShiftScaleRotate(scale_limit=0.16,
    shift_limit=0.16, rotate_limit=4, p=1, border_mode=0)` (albumentations
    0.4): independent x/y shifts of up to 16 % of the size (sub-pixel), one
    isotropic scale in [0.84, 1.16], a rotation in [-4, 4] degrees about the
    image centre, bilinear, constant black border, always applied. See
    `LegacyShiftScaleRotate` for why albumentations 2.x's `Affine` is not
    used.

    Returns:
        A `LegacyShiftScaleRotate` applied with probability 1.

    Example:

    >>> import numpy as np
    >>> sat_transform()(image=np.zeros((32, 32, 3), np.uint8))["image"].shape
    (32, 32, 3)
    """
    return LegacyShiftScaleRotate(
        shift_limit=0.16, scale_limit=0.16, rotate_limit=4, p=1.0
    )


def scaled_sizes(image_size=None):
    """The published pixel sizes, or the same relative sizes at `image_size`.

    GYM's median aperture (5 px) and downscale (0.25) were tuned on 224x224
    images. Scaled to an image side `s`: aperture `5 * s / 224` rounded to
    an odd number (no median filter below 3), downscale `0.25 * 224 / s`
    capped at 1 (no downscale at 1), i.e. the same blur radius and the same
    lost detail relative to the image.

    Args:
        image_size: the image side in pixels. Defaults to `None`: the
            published sizes, whatever the image size.

    Returns:
        `(ksize, downscale)`; `ksize` is `None` when the median is dropped,
        `downscale` `None` when there is none.

    Example:

    >>> scaled_sizes(), scaled_sizes(224), scaled_sizes(32)
    ((5, 0.25), (5, 0.25), (None, None))
    """
    if image_size is None:
        return _KSIZE, _DOWNSCALE
    side = int(image_size)
    if side < 1:
        raise ValueError(f"image_size must be a positive side length; got {image_size!r}.")
    k = int(round(_KSIZE * side / _TUNED_SIZE))
    k = k if k % 2 else k + 1 if k > 1 else k
    factor = _DOWNSCALE * _TUNED_SIZE / side
    return (k if k >= 3 else None), (factor if factor < 1 else None)


def intensive_pipeline(seed=None, image_size=None):
    """Builds GYM's intensive augmentation pipeline, used for fine-tuning.

    In order: optical distortion (k ~ U(-0.05, 0.05), reflect-101 border),
    gamma 0.6, median blur 5, multiplicative noise x1.53 (clipped), gamma 2.6,
    downscale 0.25 (nearest both ways), median blur 5, resize 180/224 / median
    blur 5 / resize back, random shrink to 0.91-1.0 on a zero canvas, and SAT
    (shift 0.16, scale 0.16, rotate 4 degrees, black border). Every step is
    always applied.

    Args:
        seed: int or None. Seeds the pipeline so the sequence of augmentations
            it produces is reproducible (see `seed_pipeline`); None draws fresh
            entropy. Defaults to `None`.
        image_size: image side to scale the median aperture and downscale
            to (`scaled_sizes`); steps that vanish at that size are left out.
            Defaults to `None` (the published pixel sizes).

    Returns:
        An `albumentations.Compose`; call it as `pipeline(image=img)` on one
        HWC image (uint8, or float32 in [0, 1]), or use `augment` on a raw
        batch.

    Example:

    >>> import numpy as np
    >>> images = np.zeros((2, 28, 28, 1), np.uint8)
    >>> augment(images, intensive_pipeline(seed=0)).shape
    (2, 28, 28, 1)
    """
    # Every step has p=1 as in the notebook (`albumentations.X(p=1, ...)`
    # everywhere; albumentations 0.4's default p was 0.5 for each of these).
    ksize, down = scaled_sizes(image_size)
    transforms = [
        # `OpticalDistortion(p=1)`: 0.4 defaults distort_limit 0.05 ->
        # k ~ U(-0.05, 0.05), shift_limit 0.05 -> centre shift
        # round(U(-0.05, 0.05)) = 0 pixels, linear, reflect-101. 2.x's
        # "camera" mode is the same camera-matrix remap without the shift;
        # its default border is constant, hence the explicit reflect-101.
        A.OpticalDistortion(
            distort_limit=(-0.05, 0.05),
            border_mode=cv2.BORDER_REFLECT_101,
            p=1.0,
        ),
        # `RandomGamma(gamma_limit=(60, 60))`: gamma = 60 / 100 = 0.6 exactly
        # (0.4 drew randint(60, 60) / 100). The limits are percent and must
        # be a pair: a bare 60 means (-60, 60) in 0.4 and (1, 60) in 2.x.
        A.RandomGamma(gamma_limit=(60, 60), p=1.0),
        # `MedianBlur(blur_limit=(5, 5))`: ksize 5 always (a bare 5 would
        # draw ksize from {3, 5} in both versions).
        *_median(ksize),
        # `MultiplicativeNoise(multiplier=1.53)`: 0.4 read a scalar as
        # (1.53, 1.53), one factor for the whole image, clipped to 255.
        A.MultiplicativeNoise(multiplier=(1.53, 1.53), p=1.0),
        A.RandomGamma(gamma_limit=(260, 260), p=1.0),  # gamma 2.6
        # `Downscale(scale_min=0.25, scale_max=0.25)`: 0.4's default
        # interpolation was INTER_NEAREST for the way down and the way up.
        *([] if down is None else [A.Downscale(
            scale_range=(down, down),
            interpolation_pair={
                "downscale": cv2.INTER_NEAREST,
                "upscale": cv2.INTER_NEAREST,
            },
            p=1.0,
        )]),
        *_median(ksize),
        *_resize_median(ksize),
        # `defend_RAND(scalimit=1.1)`: resize to rnd in [size, 1.1 size),
        # zero-pad to 1.1 size at a random offset, resize back.
        RandomShrink(ratio_range=(0.91, 1.0)),
        sat_transform(),
    ]
    return seed_pipeline(A.Compose(transforms, seed=seed), seed)


def lightweight_pipeline(seed=None, image_size=None):
    """Builds GYM's lightweight pipeline, used on inputs at inference time.

    In order: median blur 5, resize 180/224 / median blur 5 / resize back, and
    SAT (shift 0.16, scale 0.16, rotate 4 degrees, black border), each always
    applied, as the notebook's `defending2`.

    Args:
        seed: int or None. Seeds the pipeline so the sequence of augmentations
            it produces is reproducible (see `seed_pipeline`); None draws fresh
            entropy. Defaults to `None`.
        image_size: image side to scale the median aperture to
            (`scaled_sizes`). Defaults to `None` (the published 5 pixels).

    Returns:
        An `albumentations.Compose`; call it as `pipeline(image=img)` on one
        HWC image (uint8, or float32 in [0, 1]), or use `augment` on a raw
        batch.

    Example:

    >>> import numpy as np
    >>> images = np.zeros((2, 32, 32, 3), np.float32)
    >>> augment(images, lightweight_pipeline(seed=0)).dtype
    dtype('float32')
    """
    ksize, _ = scaled_sizes(image_size)
    transforms = [*_median(ksize), *_resize_median(ksize), sat_transform()]
    return seed_pipeline(A.Compose(transforms, seed=seed), seed)


def _median(ksize):
    # `MedianBlur(blur_limit=(5, 5))`: ksize 5 always (a bare 5 would draw
    # ksize from {3, 5} in both versions); none when scaled below 3.
    return [] if ksize is None else [A.MedianBlur(blur_limit=(ksize, ksize), p=1.0)]


def _resize_median(ksize):
    # without a median (scaled below 3) the resize round trip alone remains
    return [ResizeMedianResize(ratio=_RESIZE_RATIO, ksize=ksize)]


def seed_pipeline(pipeline, seed=None):
    """Seeds a pipeline so that all its transforms share one random stream.

    albumentations 2.x's own `Compose(seed=s)` / `set_random_seed(s)` starts
    every transform's generator from the same `s`, so identical transforms
    repeat each other's draws. This gives the pipeline (and, recursively,
    every transform in it) one numpy `Generator` and one `random.Random`,
    both started from `seed`.

    Args:
        pipeline: an `albumentations.Compose` (or any albumentations
            transform).
        seed: int or None; None draws fresh entropy. Defaults to `None`.

    Returns:
        `pipeline`, re-seeded in place.

    Example:

    >>> import numpy as np
    >>> image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    >>> a = seed_pipeline(lightweight_pipeline(), 7)(image=image)["image"]
    >>> b = seed_pipeline(lightweight_pipeline(), 7)(image=image)["image"]
    >>> bool((a == b).all())
    True
    """
    if not hasattr(pipeline, "set_random_state"):
        raise TypeError(
            "seed_pipeline needs an albumentations transform or Compose; got "
            f"{type(pipeline).__name__}. Build one with intensive_pipeline() "
            "or lightweight_pipeline()."
        )
    seed = _check_seed(seed)
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


def augment(images, pipeline, seed=None):
    """Applies an albumentations pipeline to a batch of raw images.

    Each image gets its own random draw. uint8 images go through the pipeline
    as they are (as in the published code); float images, raw in [0, 255],
    are scaled to float32 [0, 1], the range albumentations 2.x assumes for
    floats, and scaled back, so no precision is lost to rounding.

    Args:
        images: NHWC array of raw images, uint8 or float in [0, 255]; C may be
            1 (grayscale).
        pipeline: an `albumentations.Compose` (or transform) that keeps the
            image size, e.g. from `intensive_pipeline()`.
        seed: int or None. If not None, the pipeline is first re-seeded with
            `seed_pipeline(pipeline, seed)` so the output depends only on
            `images` and `seed`; if None, the pipeline's current random state
            is used and advanced. Defaults to `None`.

    Returns:
        Array with the shape and dtype of `images`.

    Example:

    >>> import numpy as np
    >>> images = np.full((4, 32, 32, 3), 128, np.uint8)
    >>> out = augment(images, lightweight_pipeline(), seed=0)
    >>> out.shape, out.dtype
    ((4, 32, 32, 3), dtype('uint8'))
    """
    images = check_images(images, "augment")
    if not callable(pipeline):
        raise TypeError(
            "augment needs a callable albumentations pipeline; got "
            f"{type(pipeline).__name__}. Use intensive_pipeline() or "
            "lightweight_pipeline()."
        )
    if seed is not None:
        seed_pipeline(pipeline, seed)
    is_float = images.dtype != np.uint8
    work = images.astype(np.float32) / _PIXEL_MAX if is_float else images
    out = np.empty_like(work)
    for i, image in enumerate(work):
        result = np.asarray(pipeline(image=image)["image"])
        if result.ndim == 2:  # cv2 drops a single channel axis
            result = result[..., np.newaxis]
        if result.shape != image.shape:
            raise ValueError(
                f"The pipeline changed the image shape from {image.shape} to "
                f"{result.shape}. augment needs size-preserving pipelines; "
                "resize back to the input size as the last step."
            )
        out[i] = result
    if is_float:
        out = np.clip(out * _PIXEL_MAX, 0.0, _PIXEL_MAX)
    return out.astype(images.dtype, copy=False)


class GymFineTuneDataset(keras.utils.PyDataset):
    """Clean samples, freshly augmented every epoch, for GYM fine-tuning.

    Every epoch the clean images are re-augmented with the intensive pipeline
    (batch by batch, lazily) and shuffled. The augmentation of batch `i` in
    epoch `e` depends only on `(seed, e, i)`, so a run is reproducible and the
    result does not depend on `workers`. Batches are
    `(preprocess(x_aug, intensity), y)`. (Keras' `fit` calls `on_epoch_end`
    once before training starts, so its first epoch is the dataset's epoch
    1; that is still reproducible.)

    Args:
        x: NHWC array of clean raw images, uint8 or float in [0, 255].
        y: integer class labels, shape `(N,)` or `(N, 1)`; one-hot `(N, K)`
            labels are turned into integers.
        batch_size: int >= 1. Defaults to `10`, as in the published code.
        intensity: the model's intensity range, one of `"raw"`, `"mnist"`,
            `"imagenet"`, `"inception"`. Defaults to `"raw"`.
        seed: int or None; None draws fresh entropy once. Defaults to `0`.
        shuffle: whether to reshuffle the samples every epoch. Defaults to
            `True` (Keras' `fit` shuffled the arrays in the published code).
        pipeline_fn: callable `seed -> albumentations.Compose` building the
            per-batch pipeline. Defaults to `intensive_pipeline`.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size`, passed
            to `keras.utils.PyDataset`. Defaults to Keras' defaults.

    Example:

    >>> import numpy as np
    >>> x = np.zeros((25, 28, 28, 1), np.uint8)
    >>> data = GymFineTuneDataset(x, np.zeros(25, int), intensity="mnist")
    >>> len(data), data[2][0].shape
    (3, (5, 28, 28, 1))
    """

    def __init__(
        self,
        x,
        y,
        batch_size=10,
        intensity="raw",
        seed=0,
        shuffle=True,
        pipeline_fn=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.x = check_images(x, "GymFineTuneDataset")
        self.y = check_labels(y, len(self.x), "GymFineTuneDataset")
        if len(self.x) == 0:
            raise ValueError(
                "GymFineTuneDataset got no samples. Pass the clean "
                "fine-tuning set (the paper uses 1,000-10,000 images)."
            )
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.intensity = check_intensity(intensity)
        seed = _check_seed(seed)
        self.seed = seed
        self._entropy = (
            seed if seed is not None else np.random.SeedSequence().entropy
        )
        self.shuffle = bool(shuffle)
        if pipeline_fn is not None and not callable(pipeline_fn):
            raise TypeError(
                "pipeline_fn must be a callable taking a seed and returning "
                "an albumentations pipeline; got "
                f"{type(pipeline_fn).__name__}."
            )
        self.pipeline_fn = pipeline_fn or intensive_pipeline
        self.epoch = 0
        self._order_cache = None

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def _order(self):
        epoch = self.epoch
        cached = self._order_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        if self.shuffle:
            rng = np.random.default_rng([self._entropy, epoch])
            order = rng.permutation(len(self.x))
        else:
            order = np.arange(len(self.x))
        self._order_cache = (epoch, order)
        return order

    def batch_seed(self, index):
        """Returns the augmentation seed of batch `index` in this epoch."""
        state = np.random.SeedSequence([self._entropy, self.epoch, index])
        return int(state.generate_state(1)[0])

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(
                f"Batch index {index} is out of range for a dataset of "
                f"{len(self)} batches."
            )
        ids = self._order()[
            index * self.batch_size : (index + 1) * self.batch_size
        ]
        pipeline = self.pipeline_fn(self.batch_seed(index))
        x_aug = augment(self.x[ids], pipeline)
        return preprocess(x_aug, self.intensity), self.y[ids]

    def on_epoch_end(self):
        """Moves on to the next epoch's augmentation and order."""
        self.epoch += 1


def gym_finetune(
    model,
    x,
    y,
    epochs=5,
    batch_size=10,
    optimizer=None,
    intensity="raw",
    seed=0,
    verbose=1,
    scaled=False,
):
    """Fine-tunes a copy of `model` on intensively augmented clean data (GYM).

    The model is copied with `keras.models.clone_model` + `set_weights`, so
    the model you pass is never modified. The copy is compiled with sparse
    categorical cross-entropy (`from_logits` is set by
    `nc_tf.models.outputs_probabilities`: the output counts as probabilities
    when the model's last layer, looking into nested models, applies a
    softmax) and trained on a `GymFineTuneDataset`, which re-augments the
    clean set every epoch. The paper fine-tunes on 1,000-10,000 clean
    samples for 5 epochs with batch size 10; the published notebook ran its
    5-epoch loop on ten successive chunks of 1,000 clean samples ("count from
    0 to 9 to acquire 10000 clean samples"): 50,000 augmented samples in
    all, as 5 epochs on 10,000 images here.

    Args:
        model: a built Sequential or functional Keras classifier with one
            output of shape `(batch, num_classes)`.
        x: NHWC array of clean raw images, uint8 or float in [0, 255].
        y: integer class labels, shape `(N,)` or `(N, 1)`; one-hot `(N, K)`
            labels are turned into integers.
        epochs: int >= 1. Defaults to `5`.
        batch_size: int >= 1. Defaults to `10`.
        optimizer: a Keras optimizer instance or name. Defaults to `None`,
            meaning `keras.optimizers.Adadelta(learning_rate=0.03)`, as the
            published notebook: it compiles the model with
            `Adadelta(lr = 0.03)` before `model.fit`, neither Keras 2's
            default lr 1.0 nor Keras 3's 0.001 (the update rule, rho 0.95
            and epsilon 1e-7 are the same in both Keras versions).
        intensity: the model's intensity range, one of `"raw"`, `"mnist"`,
            `"imagenet"`, `"inception"`. Defaults to `"raw"`.
        seed: int or None, seeds the augmentation and the shuffling. Weight
            updates that are themselves random (e.g. dropout) follow Keras'
            global seed (`keras.utils.set_random_seed`). Defaults to `0`.
        verbose: verbosity passed to `Model.fit`. Defaults to `1`.
        scaled: scale the pipeline's pixel sizes (median aperture,
            downscale) to the images' side, see `scaled_sizes`. Defaults to
            `False` (the published sizes).

    Returns:
        The fine-tuned copy of `model` (a new `keras.Model`).

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([
    ...     keras.Input((28, 28, 1)), keras.layers.Flatten(),
    ...     keras.layers.Dense(10, activation="softmax")])
    >>> x = np.zeros((20, 28, 28, 1), np.uint8); y = np.zeros(20, int)
    >>> tuned = gym_finetune(model, x, y, epochs=1, verbose=0)
    >>> tuned is model
    False
    """
    tuned = models.copy_model(model, "gym_finetune")
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) > 1:
        raise ValueError(
            f"gym_finetune needs a single-output classifier; the model has "
            f"{len(outputs)} outputs."
        )
    epochs = _check_positive_int("epochs", epochs)
    pipeline_fn = None
    if scaled:
        pipeline_fn = functools.partial(intensive_pipeline, image_size=np.shape(x)[1])
    data = GymFineTuneDataset(
        x, y, batch_size=batch_size, intensity=intensity, seed=seed, pipeline_fn=pipeline_fn
    )

    try:
        num_classes = model.output_shape[-1]
    except (AttributeError, ValueError, TypeError):
        num_classes = None  # Subclassed models may not know their shape.
    if num_classes is not None and data.y.max() >= num_classes:
        raise ValueError(
            f"Labels go up to {data.y.max()} but the model has only "
            f"{num_classes} outputs. Pass integer labels in "
            f"[0, {num_classes})."
        )

    probabilities = models.outputs_probabilities(model)
    if optimizer is None:
        optimizer = keras.optimizers.Adadelta(learning_rate=_ADADELTA_LR)
    tuned.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=not probabilities
        ),
        metrics=["accuracy"],
    )
    # The dataset shuffles itself reproducibly; Keras' own batch shuffling
    # would draw from the global `random` module.
    tuned.fit(data, epochs=epochs, shuffle=False, verbose=verbose)
    return tuned


def check_images(images, caller):
    """Returns `images` as a numpy NHWC array of raw pixels, or raises.

    Args:
        images: array-like, NHWC, uint8 or float in [0, 255].
        caller: name of the public function, used in error messages.

    Returns:
        The images as a numpy array (not copied if already one).

    Example:

    >>> import numpy as np
    >>> check_images(np.zeros((1, 2, 2, 1), np.uint8), "augment").shape
    (1, 2, 2, 1)
    """
    images = np.asarray(images)
    if images.ndim != 4:
        hint = (
            " Add the channel axis with images[..., None]."
            if images.ndim == 3
            else ""
        )
        raise ValueError(
            f"{caller} needs a batch of images shaped (N, H, W, C); got an "
            f"array of shape {images.shape}.{hint}"
        )
    if images.dtype != np.uint8 and not np.issubdtype(
        images.dtype, np.floating
    ):
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
        if low < 0.0 or high > _PIXEL_MAX:
            raise ValueError(
                f"{caller} needs raw images in [0, 255]; got values in "
                f"[{low:g}, {high:g}]. Undo the model's preprocessing first "
                "(nc_tf.preprocess.reverse_preprocess)."
            )
    return images


def check_labels(y, count, caller):
    """Returns integer labels of shape `(count,)`, or raises.

    Args:
        y: labels, shape `(N,)`, `(N, 1)` or one-hot `(N, K)`.
        count: expected number of labels.
        caller: name of the public function, used in error messages.

    Returns:
        int64 array of shape `(count,)`.

    Example:

    >>> import numpy as np
    >>> check_labels(np.eye(3), 3, "evaluate").tolist()
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
        raise ValueError(
            f"{caller} needs integer class labels; got dtype {y.dtype}."
        )
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"{caller} got negative labels; use 0..K-1.")
    return y


def _run_cv2(fn, img):
    """Runs a cv2 image function keeping dtype and the channel axis.

    float64 is processed as float32 (median blur refuses float64); more than
    4 channels are processed one by one (cv2's limit).
    """
    dtype = img.dtype
    work = img.astype(np.float32) if dtype == np.float64 else img
    if work.ndim == 3 and work.shape[-1] > 4:
        out = np.stack(
            [fn(np.ascontiguousarray(work[..., c]))
             for c in range(work.shape[-1])],
            axis=-1,
        )
    else:
        out = fn(np.ascontiguousarray(work))
    return out.reshape(img.shape).astype(dtype, copy=False)


def _median_blur(img, ksize):
    if ksize > 5 and img.dtype != np.uint8:
        raise ValueError(
            f"A median blur with ksize {ksize} needs uint8 images (OpenCV "
            "supports floats only up to ksize 5). Use ksize 3 or 5, or pass "
            "uint8 images."
        )
    return cv2.medianBlur(img, ksize)


def _scaled(size, ratio):
    return max(1, int(size * ratio + _ROUNDING_SLACK))


def _check_ratio_range(name, value, upper, allow_scalar=True):
    if allow_scalar and isinstance(value, numbers.Real):
        value = (value, value)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        kind = "a float or a (min, max) pair" if allow_scalar else (
            "a (min, max) pair"
        )
        raise ValueError(f"{name} must be {kind}; got {value!r}.") from None
    bound = "" if upper is None else f" <= {upper:g}"
    if not 0 < low <= high or (upper is not None and high > upper):
        raise ValueError(
            f"{name} must satisfy 0 < min <= max{bound}; got {value!r}."
        )
    return (low, high)


def _check_limit(name, value, bound):
    """albumentations 0.4's `to_tuple`: `v` -> `(-|v|, |v|)`, a pair as is."""
    if isinstance(value, numbers.Real):
        value = (-abs(value), abs(value))
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number or a (min, max) pair; got {value!r}."
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(
            f"{name} must be finite with min <= max; got {value!r}."
        )
    if bound is not None and max(abs(low), abs(high)) > bound:
        raise ValueError(
            f"{name} must lie in [-{bound:g}, {bound:g}]; got {value!r}."
        )
    return (low, high)


def _check_ksize(ksize):
    if (
        not isinstance(ksize, numbers.Integral)
        or ksize < 3
        or ksize % 2 == 0
    ):
        raise ValueError(
            f"ksize must be an odd integer >= 3 (a median aperture); got "
            f"{ksize!r}. GYM uses 5."
        )
    return int(ksize)


def _check_positive_int(name, value):
    return check_scalar(value, name, numbers.Integral, low=1)


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int or None; got {seed!r}.")
    if seed < 0:
        raise ValueError(f"seed must be non-negative; got {seed}.")
    return int(seed)
