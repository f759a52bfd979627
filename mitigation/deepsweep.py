"""The DeepSweep notebook's functions, with its argument conventions.

The published GYM / DeepSweep code (YiZeng623/DeepSweep,
`Code_demo(PubFig_WM).ipynb`) defines one function per augmentation step,
`fastSAT`, `defend_OD`, `defend_GAMMA`, `defend_MED`, `defend_DOWN`,
`defend_MPN`, `defend_GAMMA2`, `defend_RAND`, each taking one HWC image
with values in [0, 1] and returning it augmented, in [0, 1]; and the two
pipelines over a batch, `defending` (intensive, for fine-tuning) and
`defending2` (lightweight, at inference).

Every function here is an entry point to the one implementation in
`mitigation.gym`: the step functions run that step of
`gym.intensive_pipeline` (the same transform with the same parameters;
`fastSAT` is `gym.sat_transform`, `defend_RAND` a `gym.RandomShrink`), and
`defending` / `defending2` are `mitigation.defended_inference.intensive` /
`lightweight`. As in the notebook, images enter each step as 8-bit
(`(img * 255).astype(uint8)`, truncating) and come back divided by 255.
Where nc-tf differs from the notebook:

- the pipelines run on 8-bit images from start to end; the notebook
  truncated to 8 bits at every step and ran its two `cv2.resize` calls on
  floats;
- the notebook resized to 180x180 and back to 224x224; nc-tf resizes by
  the ratio 180/224 and back to the image's own size;
- `defend_RAND` draws the shrink ratio uniformly in `[size / m, (m - 1) /
  m]`, `m = int(size * scalimit)` (the notebook drew the size `rnd` in
  `[size, m)` and resized with scikit-image); `defending` uses the
  pipeline's `RandomShrink((0.91, 1.0))`;
- each function takes `seed` (the notebook drew from albumentations'
  global state).
"""

import albumentations as A
import numpy as np

from mitigation import defended_inference, gym


def _to_8bit(images, caller):
    """The notebook's `(img * 255).astype(np.uint8)`, after checking the [0, 1] range."""
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating) and images.dtype != np.uint8:
        raise ValueError(f"{caller} takes float images in [0, 1]; got dtype {images.dtype}.")
    if images.size and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"{caller} takes images in [0, 1], as the DeepSweep notebook; got "
            f"values in [{images.min():g}, {images.max():g}]. Divide raw images by "
            "255 (nc-tf's own mitigation.gym.augment takes raw ones)."
        )
    return (images * 255).astype(np.uint8)


def _run_step(step, img, seed, caller):
    """One augmentation step on one HWC image in [0, 1], as the notebook's functions."""
    img8 = _to_8bit(img, caller)
    if img8.ndim != 3:
        raise ValueError(
            f"{caller} takes one (H, W, C) image; got shape {img8.shape}. "
            "Use defending / defending2 for a batch."
        )
    pipeline = gym.seed_pipeline(A.Compose([step]), seed)
    return gym.augment(img8[None], pipeline)[0] / 255


def _intensive_step(kind, nth=0):
    """The `nth` transform of class `kind` in GYM's intensive pipeline (its one definition)."""
    found = [t for t in gym.intensive_pipeline().transforms if type(t).__name__ == kind]
    if len(found) <= nth:
        raise LookupError(f"mitigation.gym.intensive_pipeline has no {kind} step {nth + 1}.")
    return found[nth]


def fastSAT(img, seed=None):
    """GYM's SAT step: a random shift, scale and rotation (notebook `fastSAT`).

    `mitigation.gym.sat_transform`: shifts up to 16 %, scale 0.84-1.16,
    rotation up to 4 degrees, black border.

    Args:
        img: one `(H, W, C)` image in [0, 1].
        seed: seed of the draw. Defaults to `None` (fresh entropy).

    Returns:
        the augmented image, float in [0, 1].

    Example:

    >>> import numpy as np
    >>> fastSAT(np.zeros((32, 32, 3)), seed=0).shape
    (32, 32, 3)
    """
    return _run_step(gym.sat_transform(), img, seed, "fastSAT")


def defend_OD(img, seed=None):
    """Optical distortion, k ~ U(-0.05, 0.05), reflect-101 border (notebook `defend_OD`).

    Args:
        img: one `(H, W, C)` image in [0, 1].
        seed: seed of the draw. Defaults to `None` (fresh entropy).

    Returns:
        the augmented image, float in [0, 1].

    Example:

    >>> import numpy as np
    >>> defend_OD(np.zeros((32, 32, 3)), seed=0).shape
    (32, 32, 3)
    """
    return _run_step(_intensive_step("OpticalDistortion"), img, seed, "defend_OD")


def defend_GAMMA(img, seed=None):
    """Gamma 0.6, which brightens (notebook `defend_GAMMA`, `gamma_limit=(60, 60)`).

    Args:
        img: one `(H, W, C)` image in [0, 1].
        seed: seed of the draw. Defaults to `None` (fresh entropy).

    Returns:
        the augmented image, float in [0, 1].

    Example:

    >>> import numpy as np
    >>> float(defend_GAMMA(np.full((8, 8, 3), 0.5))[0, 0, 0]) > 0.5
    True
    """
    return _run_step(_intensive_step("RandomGamma", 0), img, seed, "defend_GAMMA")


def defend_MED(img, seed=None):
    """Median blur with a 5-pixel aperture (notebook `defend_MED`).

    Args:
        img: one `(H, W, C)` image in [0, 1].
        seed: seed of the draw. Defaults to `None` (fresh entropy).

    Returns:
        the augmented image, float in [0, 1].

    Example:

    >>> import numpy as np
    >>> dot = np.zeros((9, 9, 1)); dot[4, 4] = 1.0
    >>> float(defend_MED(dot).max())
    0.0
    """
    return _run_step(_intensive_step("MedianBlur"), img, seed, "defend_MED")


def defend_DOWN(img, seed=None):
    """Downscale to 0.25 and back, nearest both ways (notebook `defend_DOWN`).

    Args:
        img: one `(H, W, C)` image in [0, 1].
        seed: seed of the draw. Defaults to `None` (fresh entropy).

    Returns:
        the augmented image, float in [0, 1].

    Example:

    >>> import numpy as np
    >>> defend_DOWN(np.zeros((32, 32, 3))).shape
    (32, 32, 3)
    """
    return _run_step(_intensive_step("Downscale"), img, seed, "defend_DOWN")


def defend_MPN(img, seed=None):
    """Multiplies the image by 1.53, clipped (notebook `defend_MPN`).

    Args:
        img: one `(H, W, C)` image in [0, 1].
        seed: seed of the draw. Defaults to `None` (fresh entropy).

    Returns:
        the augmented image, float in [0, 1].

    Example:

    >>> import numpy as np
    >>> round(float(defend_MPN(np.full((4, 4, 3), 100 / 255))[0, 0, 0] * 255))
    153
    """
    return _run_step(_intensive_step("MultiplicativeNoise"), img, seed, "defend_MPN")


def defend_GAMMA2(img, seed=None):
    """Gamma 2.6, which darkens (notebook `defend_GAMMA2`, `gamma_limit=(260, 260)`).

    Args:
        img: one `(H, W, C)` image in [0, 1].
        seed: seed of the draw. Defaults to `None` (fresh entropy).

    Returns:
        the augmented image, float in [0, 1].

    Example:

    >>> import numpy as np
    >>> float(defend_GAMMA2(np.full((8, 8, 3), 0.5))[0, 0, 0]) < 0.5
    True
    """
    return _run_step(_intensive_step("RandomGamma", 1), img, seed, "defend_GAMMA2")


def defend_RAND(img, scalimit=1.3, seed=None):
    """Shrinks the image at random onto a black canvas (notebook `defend_RAND`).

    The notebook resized the image to `rnd` in `[size, m)`, `m =
    int(size * scalimit)`, padded it with zeros to `m` at a random offset
    and resized it back to `size`: a shrink by `rnd / m`. This draws that
    ratio uniformly in `[size / m, (m - 1) / m]` with
    `mitigation.gym.RandomShrink`. `defending` calls it with
    `scalimit=1.1`.

    Args:
        img: one `(H, W, C)` image in [0, 1].
        scalimit: the canvas size as a multiple of the image size, > 1.
            Defaults to `1.3`, as the notebook.
        seed: seed of the draw. Defaults to `None` (fresh entropy).

    Returns:
        the augmented image, float in [0, 1].

    Example:

    >>> import numpy as np
    >>> out = defend_RAND(np.ones((32, 32, 3)), scalimit=1.1, seed=0)
    >>> bool(out[..., 0].min() == 0.0)  # a black border shows
    True
    """
    size = int(np.shape(img)[0])
    canvas = int(size * float(scalimit))
    if canvas <= size:
        raise ValueError(
            f"scalimit {scalimit} leaves no room on a {size}-pixel image: "
            f"int({size} * scalimit) must exceed {size}."
        )
    shrink = gym.RandomShrink(ratio_range=(size / canvas, (canvas - 1) / canvas))
    return _run_step(shrink, img, seed, "defend_RAND")


def defending(imgset, seed=None, scaled=False):
    """GYM's intensive pipeline over a batch in [0, 1] (notebook `defending`).

    `mitigation.defended_inference.intensive` on the 8-bit images: optical
    distortion, gamma 0.6, median 5, x1.53, gamma 2.6, downscale 0.25,
    median 5, resize 180/224 / median 5 / back, random shrink, SAT.

    Args:
        imgset: `(N, H, W, C)` images in [0, 1].
        seed: seed of the augmentation. Defaults to `None` (fresh entropy).
        scaled: scale the median aperture and downscale to the image side
            (`mitigation.gym.scaled_sizes`). Defaults to `False` (the
            notebook's pixel sizes).

    Returns:
        the augmented images in [0, 1], with the dtype of `imgset` (as
        the notebook's `np.zeros_like(imgset)`).

    Example:

    >>> import numpy as np
    >>> defending(np.zeros((2, 32, 32, 3)), seed=0).shape
    (2, 32, 32, 3)
    """
    images = _to_8bit(imgset, "defending")
    out = defended_inference.intensive(images, seed=seed, scaled=scaled) / 255
    return out.astype(np.result_type(np.asarray(imgset).dtype, np.float32), copy=False)


def defending2(imgset, seed=None, scaled=False):
    """GYM's lightweight pipeline over a batch in [0, 1] (notebook `defending2`).

    `mitigation.defended_inference.lightweight` on the 8-bit images: median 5,
    resize 180/224 / median 5 / back, SAT.

    Args:
        imgset: `(N, H, W, C)` images in [0, 1].
        seed: seed of the augmentation. Defaults to `None` (fresh entropy).
        scaled: scale the median aperture to the image side. Defaults to
            `False` (the notebook's 5 pixels).

    Returns:
        the augmented images in [0, 1], with the dtype of `imgset`.

    Example:

    >>> import numpy as np
    >>> defending2(np.zeros((2, 32, 32, 3)), seed=0).shape
    (2, 32, 32, 3)
    """
    images = _to_8bit(imgset, "defending2")
    out = defended_inference.lightweight(images, seed=seed, scaled=scaled) / 255
    return out.astype(np.result_type(np.asarray(imgset).dtype, np.float32), copy=False)
