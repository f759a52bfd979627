"""Preview grids: what GYM's augmentation pipelines do to a few images.

`preview_grid` lays out one row per image: the original first, then
`n_variants` independently augmented versions (GYM's intensive or
lightweight pipeline, `mitigation.gym`). Every cell is enlarged with
nearest-neighbour upscaling so that 28x28 and 32x32 images stay readable, and
the grid is written as a PNG (grayscale for one-channel images, RGB for
three). `load_images` reads the images to preview from a single image file or
from any data set `nc_tf.datasets.load_data` accepts. The `nc-tf preview`
command calls both.
"""

import numbers
import os

import numpy as np

from mitigation.gym import augment, intensive_pipeline, lightweight_pipeline
from nc_tf import datasets, io
from nc_tf.io import check_out_dir
from nc_tf.validation import check_image_batch, check_scalar

PIPELINES = {
    "intensive": intensive_pipeline,
    "lightweight": lightweight_pipeline,
}
# Raw pixel value of the lines between cells (white).
_GAP_VALUE = 255


def load_images(source, limit=None, x_key=None, y_key=None):
    """Reads raw images to preview from an image file or a data set.

    A path to an existing file whose name ends in an image extension
    (`.png`, `.jpg`, `.jpeg`, `.ppm`, `.bmp`, ...) is read with PIL as one
    image, at its own size, in mode `L` (grayscale) or `RGB`. Anything else is
    passed to `nc_tf.datasets.load_data` and its test split is used.

    Args:
        source: path of an image file, or a data set: `"mnist"`, `"gtsrb"`,
            or the path of an `.h5`/`.npz` file or an image folder.
        limit: keep only the first `limit` images of a data set. Defaults to
            `None` (all).
        x_key: image array name in an `.h5`/`.npz` file. Defaults to `None`
            (auto-detected).
        y_key: label array name in an `.h5`/`.npz` file. Defaults to `None`
            (auto-detected).

    Returns:
        uint8 (or float, as stored) NHWC array of raw images in [0, 255].

    Example:

    >>> load_images("mnist", limit=2).shape
    (2, 28, 28, 1)
    """
    path = os.fspath(source)
    if os.path.isfile(path) and path.lower().endswith(datasets._IMAGE_EXTENSIONS):
        try:
            image = datasets._read_image(path, None)
        except OSError as error:
            raise ValueError(
                f"{path} is not a readable image ({error}). Pass a PNG, JPEG "
                "or PPM file, or a data set."
            ) from None
        return image[np.newaxis]
    x, _ = datasets.load_data(path, "test", x_key, y_key, limit=limit)
    return x


def preview_grid(
    images,
    pipeline="intensive",
    n_images=8,
    n_variants=4,
    seed=0,
    path=None,
    cell_size=96,
    gap=2,
    force=False,
):
    """Draws a grid of images next to their augmented versions.

    Row `i` shows `images[i]` and then `n_variants` augmentations of it, each
    with its own random draw of the pipeline. The variants are made by one
    pipeline seeded with `seed` (see `mitigation.gym.augment`), so the same
    images and seed always give the same grid, and the same PNG bytes. Each
    cell is enlarged by the largest integer factor that keeps its long side
    within `cell_size` (at least 1, so large images keep their size): 32x32
    images become 96x96, 28x28 images 84x84. Cells are separated by `gap`
    white pixels.

    Args:
        images: NHWC array of raw images, uint8 or float in [0, 255], with 1
            (grayscale) or 3 (RGB) channels.
        pipeline: `"intensive"` (GYM's fine-tuning augmentation) or
            `"lightweight"` (GYM's inference-time augmentation). Defaults to
            `"intensive"`.
        n_images: int >= 1, rows: the first `n_images` images are used (all
            of them if there are fewer). Defaults to `8`.
        n_variants: int >= 1, augmented versions per image. Defaults to `4`.
        seed: int >= 0, seeds the augmentation. Defaults to `0`.
        path: where to write the grid as a PNG (a `.png` name; missing
            folders are created), or `None` to write nothing. Defaults to
            `None`.
        cell_size: int >= 1, the largest enlarged cell side in pixels.
            Defaults to `96`.
        gap: int >= 0, pixels between cells. Defaults to `2`.
        force: overwrite an existing file at `path`. Defaults to `False`.

    Returns:
        The grid as a uint8 array, `(height, width)` for grayscale images and
        `(height, width, 3)` for RGB, with height
        `rows * cell_h + (rows - 1) * gap` and width
        `(1 + n_variants) * cell_w + n_variants * gap`.

    Example:

    >>> import numpy as np
    >>> images = np.zeros((2, 32, 32, 3), np.uint8)
    >>> preview_grid(images, "lightweight", n_variants=3).shape
    (194, 390, 3)
    """
    if pipeline not in PIPELINES:
        raise ValueError(
            f"Unknown pipeline {pipeline!r}; use one of {', '.join(map(repr, PIPELINES))}."
        )
    n_images = _check_int("n_images", n_images, 1)
    n_variants = _check_int("n_variants", n_variants, 1)
    seed = _check_int("seed", seed, 0)
    cell_size = _check_int("cell_size", cell_size, 1)
    gap = _check_int("gap", gap, 0)
    if path is not None:
        path = check_out_path(path, force)
    images = check_image_batch(images, "preview_grid")
    if len(images) == 0:
        raise ValueError("preview_grid got no images; pass at least one (N, H, W, C) image.")
    channels = images.shape[-1]
    if channels not in (1, 3):
        raise ValueError(
            f"preview_grid draws grayscale (1 channel) or RGB (3 channels) "
            f"images; got {channels} channels. Pick three channels first, "
            "e.g. images[..., :3]."
        )

    originals = images[:n_images]
    repeated = np.repeat(originals, n_variants, axis=0)
    variants = augment(repeated, PIPELINES[pipeline](seed=seed))
    variants = variants.reshape((len(originals), n_variants) + originals.shape[1:])

    height, width = originals.shape[1:3]
    zoom = max(1, cell_size // max(height, width))
    cell_h, cell_w = height * zoom, width * zoom
    rows, cols = len(originals), 1 + n_variants
    grid = np.full(
        (rows * cell_h + (rows - 1) * gap, cols * cell_w + (cols - 1) * gap, channels),
        _GAP_VALUE,
        np.uint8,
    )
    for i in range(rows):
        cells = [originals[i]] + list(variants[i])
        for j, cell in enumerate(cells):
            top, left = i * (cell_h + gap), j * (cell_w + gap)
            grid[top : top + cell_h, left : left + cell_w] = _upscale(_to_uint8(cell), zoom)
    if channels == 1:
        grid = grid[..., 0]
    if path is not None:
        _write_png(grid, path)
    return grid


def check_out_path(path, force=False):
    """Returns `path` if a preview PNG may be written there, else raises.

    Args:
        path: the output file; it must end in `.png`.
        force: allow replacing an existing file. Defaults to `False`.

    Returns:
        `path` as a string.

    Example:

    >>> check_out_path("grid.png", force=True)
    'grid.png'
    """
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"The preview is written as a PNG; give --out a .png name, got {path!r}.")
    if os.path.isdir(path):
        raise FileExistsError(f"{path} is a folder; --out needs a .png file name.")
    if os.path.exists(path) and not force:
        raise FileExistsError(
            f"{path} already exists; choose another --out or pass --force "
            "(force=True) to overwrite it."
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"The folder of --out {path} does not exist; create it first or choose another --out."
        )
    check_out_dir(folder, resume=True)  # writable, before any image is read
    return path


def _upscale(image, zoom):
    """Nearest-neighbour enlargement of an HWC image by an integer factor."""
    return np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)


def _to_uint8(image):
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _write_png(grid, path):
    """Writes the grid atomically (temporary file, then rename)."""
    from PIL import Image

    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with io.atomic_file(path, "wb") as f:
        Image.fromarray(grid).save(f, format="PNG")


def _check_int(name, value, minimum):
    return check_scalar(value, name, numbers.Integral, low=minimum)
