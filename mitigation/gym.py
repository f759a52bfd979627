"""GYM / DeepSweep: wash a backdoor out of a model with heavy augmentation.

GYM (Zeng, Qiu et al., "DeepSweep: An Evaluation Framework for Mitigating DNN
Backdoor Attacks using Data Augmentation") removes a backdoor in two places:

* at training time, by fine-tuning the model for a few epochs on a small clean
  set that is re-augmented every epoch with the *intensive* pipeline
  (`intensive_pipeline`; `mitigation.gym_finetune`);
* at inference time, by passing every input through the cheap *lightweight*
  pipeline before the model sees it (`lightweight_pipeline`; the defended
  inference wrapper lives in `mitigation.defended_inference`).

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
32x32 images it is 16 %, so the pipelines are much harsher there. Images are raw NHWC in [0, 255] as everywhere in
nc-tf; `augment` runs a pipeline on such a batch, image by image.

Seeding: albumentations 2.0.8's `Compose(seed=s)` seeds every child transform
with its own generator started from the *same* `s`, so two transforms that
draw alike (e.g. two `Affine`s) get identical parameters. The pipelines here
are therefore re-seeded with `seed_pipeline`, which hands all transforms one
shared stream, as the single global `random` did in albumentations 0.4.
"""

import random

import albumentations as A
import cv2
import numpy as np

from mitigation.gym_transforms import (  # noqa: F401  (public here too)
    RESIZE_RATIO,
    LegacyShiftScaleRotate,
    RandomShrink,
    ResizeMedianResize,
)
from nc_tf.lazy import lazy_exports
from nc_tf.validation import check_image_batch, check_seed

# albumentations 2.x reads float images as [0, 1]; raw pixels are [0, 255].
_PIXEL_MAX = 255.0
# The published pixel sizes and the image side they were tuned on (faces).
_KSIZE, _DOWNSCALE, _TUNED_SIZE = 5, 0.25, 224
# The fine-tuning defence (mitigation.gym_finetune) is importable from here too.
__getattr__, _ = lazy_exports(
    __name__,
    {"GymFineTuneDataset": "mitigation.gym_finetune", "gym_finetune": "mitigation.gym_finetune"},
)


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
    return LegacyShiftScaleRotate(shift_limit=0.16, scale_limit=0.16, rotate_limit=4, p=1.0)


def scaled_sizes(image_size=None, downscale=_DOWNSCALE):
    """The published pixel sizes, or the same relative sizes at `image_size`.

    GYM's median aperture (5 px) and downscale (0.25) were tuned on 224x224
    images. Scaled to an image side `s`: aperture `5 * s / 224` rounded to
    an odd number (no median filter below 3), downscale `0.25 * 224 / s`
    capped at 1 (no downscale at 1), i.e. the same blur radius and the same
    lost detail relative to the image.

    Args:
        image_size: the image side in pixels. Defaults to `None`: the
            published sizes, whatever the image size.
        downscale: the downscale factor at 224 px. Defaults to `0.25` (the
            notebook's; the paper's text has 0.75, see `VARIANTS`).

    Returns:
        `(ksize, downscale)`; `ksize` is `None` when the median is dropped,
        `downscale` `None` when there is none.

    Example:

    >>> scaled_sizes(), scaled_sizes(224), scaled_sizes(32)
    ((5, 0.25), (5, 0.25), (None, None))
    """
    if image_size is None:
        return _KSIZE, downscale
    side = int(image_size)
    if side < 1:
        raise ValueError(f"image_size must be a positive side length; got {image_size!r}.")
    k = int(round(_KSIZE * side / _TUNED_SIZE))
    k = k if k % 2 else k + 1 if k > 1 else k
    factor = downscale * _TUNED_SIZE / side
    return (k if k >= 3 else None), (factor if factor < 1 else None)


# The intensive pipeline's sizes. The notebook (the default) and the paper's text
# disagree: the paper scales down to 75% before the second median filter, to 0.8
# before the third, and shrinks at random to [0.8, 1] of the size.
VARIANTS = {
    "notebook": {"downscale": _DOWNSCALE, "resize_ratio": RESIZE_RATIO, "shrink": (0.91, 1.0)},
    "paper": {"downscale": 0.75, "resize_ratio": 0.8, "shrink": (0.8, 1.0)},
}


def intensive_pipeline(seed=None, image_size=None, variant="notebook"):
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
        variant: `"notebook"` (the published code: downscale 0.25, resize
            180/224, shrink to [0.91, 1]) or `"paper"` (its text: 0.75, 0.8,
            [0.8, 1]); see `VARIANTS`. Defaults to `"notebook"`.

    Returns:
        An `albumentations.Compose`; call it as `pipeline(image=img)` on one
        HWC image (uint8, or float32 in [0, 1]), or use `augment` on a raw
        batch.

    Example:

    >>> import numpy as np
    >>> images = np.zeros((2, 28, 28, 1), np.uint8)
    >>> augment(images, intensive_pipeline(seed=0, variant="paper")).shape
    (2, 28, 28, 1)
    """
    # Every step has p=1 as in the notebook (`albumentations.X(p=1, ...)`
    # everywhere; albumentations 0.4's default p was 0.5 for each of these).
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}; got {variant!r}.")
    sizes = VARIANTS[variant]
    ksize, down = scaled_sizes(image_size, sizes["downscale"])
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
        *(
            []
            if down is None
            else [
                A.Downscale(
                    scale_range=(down, down),
                    interpolation_pair={
                        "downscale": cv2.INTER_NEAREST,
                        "upscale": cv2.INTER_NEAREST,
                    },
                    p=1.0,
                )
            ]
        ),
        *_median(ksize),
        *_resize_median(ksize, sizes["resize_ratio"]),
        # `defend_RAND(scalimit=1.1)`: resize to rnd in [size, 1.1 size),
        # zero-pad to 1.1 size at a random offset, resize back.
        RandomShrink(ratio_range=sizes["shrink"]),
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


def _resize_median(ksize, ratio=RESIZE_RATIO):
    # without a median (scaled below 3) the resize round trip alone remains
    return [ResizeMedianResize(ratio=ratio, ksize=ksize)]


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
    seed = check_seed(seed)
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
    images = check_image_batch(images, "augment")
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
