"""GYM's own albumentations transforms: the steps albumentations 2.x lacks or changed.

`ResizeMedianResize` (the notebook's resize, median blur, resize back),
`RandomShrink` (shrink onto a black canvas) and `LegacyShiftScaleRotate`
(albumentations 0.4's `ShiftScaleRotate`, which 2.x's `Affine` does not
reproduce). `mitigation.gym` assembles them into the published pipelines.
"""

import math
import numbers

import albumentations as A
import cv2
import numpy as np

# Below this tolerance `int(size * ratio)` would floor 27.999999 to 27.
_ROUNDING_SLACK = 1e-6
# The notebook resizes its 224x224 images to 180x180 and back
# (`cv2.resize(defimg, (180, 180))`): a ratio of 0.8036, not 0.8 (224 -> 179).
RESIZE_RATIO = 180 / 224


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
        ratio=RESIZE_RATIO,
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
            size = (_scaled(img.shape[0], self.ratio[0]), _scaled(img.shape[1], self.ratio[0]))
        height, width = img.shape[:2]

        def round_trip(channels):
            small = cv2.resize(channels, (size[1], size[0]), interpolation=self.interpolation)
            if self.ksize is not None:
                small = _median_blur(small, self.ksize)
            return cv2.resize(small, (width, height), interpolation=self.interpolation)

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

    def __init__(self, ratio_range=(0.91, 1.0), interpolation=cv2.INTER_LINEAR, p=1.0):
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
            small = cv2.resize(channels, (size[1], size[0]), interpolation=self.interpolation)
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
        self.rotate_limit = _check_limit("rotate_limit", rotate_limit, bound=None)
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


def _run_cv2(fn, img):
    """Runs a cv2 image function keeping dtype and the channel axis.

    float64 is processed as float32 (median blur refuses float64); more than
    4 channels are processed one by one (cv2's limit).
    """
    dtype = img.dtype
    work = img.astype(np.float32) if dtype == np.float64 else img
    if work.ndim == 3 and work.shape[-1] > 4:
        out = np.stack(
            [fn(np.ascontiguousarray(work[..., c])) for c in range(work.shape[-1])],
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
        kind = "a float or a (min, max) pair" if allow_scalar else ("a (min, max) pair")
        raise ValueError(f"{name} must be {kind}; got {value!r}.") from None
    bound = "" if upper is None else f" <= {upper:g}"
    if not 0 < low <= high or (upper is not None and high > upper):
        raise ValueError(f"{name} must satisfy 0 < min <= max{bound}; got {value!r}.")
    return (low, high)


def _check_limit(name, value, bound):
    """albumentations 0.4's `to_tuple`: `v` -> `(-|v|, |v|)`, a pair as is."""
    if isinstance(value, numbers.Real):
        value = (-abs(value), abs(value))
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a (min, max) pair; got {value!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must be finite with min <= max; got {value!r}.")
    if bound is not None and max(abs(low), abs(high)) > bound:
        raise ValueError(f"{name} must lie in [-{bound:g}, {bound:g}]; got {value!r}.")
    return (low, high)


def _check_ksize(ksize):
    if not isinstance(ksize, numbers.Integral) or ksize < 3 or ksize % 2 == 0:
        raise ValueError(
            f"ksize must be an odd integer >= 3 (a median aperture); got {ksize!r}. GYM uses 5."
        )
    return int(ksize)
