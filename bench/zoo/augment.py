"""Random shifts and small rotations of raw uint8 images, done in numpy."""

import numpy as np


def _sample_grid(count, height, width, rng, max_shift, max_degrees):
    """Source `(rows, cols)` of every output pixel of `count` random affine maps."""
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, size=(count, 1, 1)))
    shifts = rng.integers(-max_shift, max_shift + 1, size=(2, count, 1, 1))
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = rows[None] - cy - shifts[0], cols[None] - cx - shifts[1]
    cos, sin = np.cos(angles), np.sin(angles)
    src_rows = np.rint(cos * dy - sin * dx + cy).astype(np.int64)
    src_cols = np.rint(sin * dy + cos * dx + cx).astype(np.int64)
    return src_rows, src_cols


def augment(x, rng, max_shift=2, max_degrees=10.0, chunk=4096):
    """Shifts and rotates each image by a random amount; uncovered pixels become 0.

    Args:
        x: uint8 images `(N, H, W, C)`.
        rng: a `numpy.random.Generator`.
        max_shift: the largest shift, in pixels, along each axis.
            Defaults to `2`.
        max_degrees: the largest rotation, either way, in degrees.
            Defaults to `10.0`.
        chunk: how many images to transform at a time (bounds the memory).
            Defaults to `4096`.

    Returns:
        new uint8 images, the shape of `x`.
    """
    count, height, width, _ = x.shape
    out = np.zeros_like(x)
    for start in range(0, count, chunk):
        part = x[start : start + chunk]
        n = len(part)
        src_rows, src_cols = _sample_grid(n, height, width, rng, max_shift, max_degrees)
        inside = (src_rows >= 0) & (src_rows < height) & (src_cols >= 0) & (src_cols < width)
        index = np.arange(n)[:, None, None]
        gathered = part[index, np.clip(src_rows, 0, height - 1), np.clip(src_cols, 0, width - 1)]
        out[start : start + n] = np.where(inside[..., None], gathered, 0)
    return out
