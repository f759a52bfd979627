"""Triggers: a mask and a pattern stamped onto raw images, serialisable as JSON.

A trigger follows the Neural Cleanse model `A(x, m, p) = (1 - m) * x + m * p`
in the raw [0, 255] pixel domain (`nc_tf.trigger.Trigger`, re-exported
here). This module builds the attacks' triggers and registers their spec
kinds, so any later command (evaluate, scan, mitigate) can rebuild exactly
the same trigger from `attack.json`.

The reference helpers of `injection/injection_utils.py` keep their names:
`construct_mask_corner`, `construct_mask_box`, `injection_func`, `infect_X`.
"""

import numpy as np

from nc_tf.io import read_json
from nc_tf.trigger import Trigger, injection_func  # noqa: F401  (reference names)
from nc_tf.trigger import decode_array as _decode_array

POSITIONS = (
    "bottom-right",
    "bottom-left",
    "top-right",
    "top-left",
    "top",
    "bottom",
    "left",
    "right",
    "center",
)


# ------------------------------------------------------ reference helpers
def construct_mask_corner(image_row=32, image_col=32, pattern_size=4, margin=1, channel_num=3):
    """A white square `margin` pixels from the bottom-right corner (reference).

    Args:
        image_row: image height. Defaults to `32`.
        image_col: image width. Defaults to `32`.
        pattern_size: side of the square in pixels. Defaults to `4`.
        margin: gap to the bottom and right borders. Defaults to `1`.
        channel_num: image channels. Defaults to `3`.

    Returns:
        `(mask, pattern)`, both float32 `(image_row, image_col, channel_num)`;
        mask is 1 on the square, pattern 255 there.

    Example:

    >>> mask, pattern = construct_mask_corner(28, 28, 4, 1, 1)
    >>> int(mask.sum()), float(pattern.max())
    (16, 255.0)
    """
    mask = np.zeros((image_row, image_col, channel_num), dtype=np.float32)
    pattern = np.zeros_like(mask)
    rows = slice(image_row - margin - pattern_size, image_row - margin)
    cols = slice(image_col - margin - pattern_size, image_col - margin)
    mask[rows, cols, :] = 1.0
    pattern[rows, cols, :] = 255.0
    return mask, pattern


def construct_mask_box(target_ls, image_shape, pattern_size=3, margin=1):
    """The reference pattern dictionary: target -> list of `(mask, pattern)`.

    The default square is 3x3, as in the reference `injection_utils.py`;
    its GTSRB example passes `pattern_size=4` (the 4x4 BadNets square).

    Args:
        target_ls: target labels.
        image_shape: `(H, W, C)`.
        pattern_size: side of the square. Defaults to `3`.
        margin: gap to the bottom-right corner. Defaults to `1`.

    Returns:
        dict mapping each target label to `[(mask, pattern)]`.

    Example:

    >>> box = construct_mask_box([33], (32, 32, 3))
    >>> sorted(box), int(box[33][0][0][..., 0].sum())
    ([33], 9)
    """
    h, w, c = image_shape
    return {int(t): [construct_mask_corner(h, w, pattern_size, margin, c)] for t in target_ls}


def infect_X(img, tgt, pattern_dict, num_classes, rng=None):
    """Stamps one image with a random trigger of `tgt` (reference `infect_X`).

    Args:
        img: one raw image `(H, W, C)`.
        tgt: target label.
        pattern_dict: the output of `construct_mask_box`.
        num_classes: length of the returned one-hot label.
        rng: a `numpy.random.Generator`. Defaults to `None` (a fresh one).

    Returns:
        `(adv_img, one_hot_target)`.
    """
    rng = rng or np.random.default_rng()
    choices = pattern_dict[tgt]
    mask, pattern = choices[rng.integers(len(choices))]
    y = np.zeros(num_classes, dtype=np.float32)
    y[tgt] = 1.0
    return injection_func(mask, pattern, np.array(img, dtype=np.float32)), y


def square_trigger(
    image_shape, target, size=4, margin=1, position="bottom-right", color=255, sources=None
):
    """A solid square trigger (BadNets); the reference is white, bottom-right.

    Args:
        image_shape: `(H, W, C)` of the images.
        target: the target label.
        size: side of the square in pixels. Defaults to `4`.
        margin: gap in pixels to the borders it touches. Defaults to `1`.
        position: one of `"bottom-right"`, `"bottom-left"`, `"top-right"`,
            `"top-left"`, `"top"`, `"bottom"`, `"left"`, `"right"`,
            `"center"`, or `[row, col]` of the top-left pixel. Defaults to
            `"bottom-right"`.
        color: one value or one per channel, raw [0, 255]. Defaults to `255`.
        sources: source labels of a partial backdoor. Defaults to `None`
            (all labels).

    Returns:
        a `Trigger`.

    Example:

    >>> t = square_trigger((32, 32, 3), target=33)
    >>> int(t.mask.sum())
    16
    """
    h, w, c = (int(v) for v in image_shape)
    size, margin = int(size), int(margin)
    if size < 1 or size + margin > min(h, w):
        raise ValueError(
            f"A {size}x{size} square with margin {margin} does not fit a "
            f"{h}x{w} image; use size >= 1 and size + margin <= {min(h, w)}."
        )
    row, col = _square_origin(h, w, size, margin, position)
    color = np.broadcast_to(np.asarray(color, dtype=np.float32), (c,))
    mask = np.zeros((h, w, 1), dtype=np.float32)
    pattern = np.zeros((h, w, c), dtype=np.float32)
    mask[row : row + size, col : col + size] = 1.0
    pattern[row : row + size, col : col + size] = color
    spec = {
        "kind": "square",
        "target": int(target),
        "image_shape": [h, w, c],
        "size": size,
        "margin": margin,
        "position": list(position) if not isinstance(position, str) else position,
        "color": [float(v) for v in color],
    }
    return Trigger(mask, pattern, target, spec, sources)


SHAPES = ("square", "triangle", "checkerboard")


def shape_trigger(
    image_shape,
    target,
    shape="square",
    size=4,
    margin=1,
    position="bottom-right",
    color=255,
    seed=0,
    sources=None,
):
    """A BadNets trigger of another shape or a random colour (NC's robustness tests).

    Args:
        image_shape: `(H, W, C)` of the images.
        target: the target label.
        shape: `"square"` (solid), `"triangle"` (the lower-left half of the
            square, diagonal included) or `"checkerboard"` (the square's
            pixels alternate between `color` and black). Defaults to
            `"square"`.
        size: side of the bounding square in pixels. Defaults to `4`.
        margin: gap in pixels to the borders it touches. Defaults to `1`.
        position: as in `square_trigger`. Defaults to `"bottom-right"`.
        color: one value or one per channel, raw [0, 255], or `"noisy"`: a
            random colour per pixel and channel, drawn from `seed` (the
            paper's noisy square). Defaults to `255`.
        seed: seed of the noisy colours. Defaults to `0`.
        sources: source labels of a partial backdoor. Defaults to `None`.

    Returns:
        a `Trigger` whose spec (kind `"shape"`) rebuilds it exactly.

    Example:

    >>> t = shape_trigger((28, 28, 1), 7, shape="triangle", size=4)
    >>> int(t.mask.sum())
    10
    """
    if shape not in SHAPES:
        raise ValueError(f"Unknown trigger shape {shape!r}; use one of {SHAPES}.")
    noisy = isinstance(color, str)
    if noisy and color != "noisy":
        raise ValueError(f"color must be numbers or 'noisy', got {color!r}.")
    base = square_trigger(image_shape, target, size, margin, position, 255 if noisy else color)
    h, w, c = base.pattern.shape
    row, col = _square_origin(h, w, int(size), int(margin), position)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    keep = {
        "square": np.ones_like(i, bool),
        "triangle": j <= i,
        "checkerboard": np.ones_like(i, bool),
    }[shape]
    mask = np.zeros((h, w, 1), np.float32)
    mask[row : row + size, col : col + size, 0] = keep
    pattern = base.pattern.copy()
    if noisy:
        patch = np.random.default_rng(seed).integers(0, 256, (size, size, c)).astype(np.float32)
        pattern[row : row + size, col : col + size] = patch
    if shape == "checkerboard":
        pattern[row : row + size, col : col + size][(i + j) % 2 == 1] = 0.0
    spec = dict(
        base.spec,
        kind="shape",
        shape=shape,
        seed=int(seed),
        color="noisy" if noisy else base.spec["color"],
    )
    return Trigger(mask, pattern * mask, target, spec, sources)


def _square_origin(h, w, size, margin, position):
    if not isinstance(position, str):
        row, col = (int(v) for v in position)
        if not (0 <= row <= h - size and 0 <= col <= w - size):
            raise ValueError(f"Square at {position} of size {size} leaves the {h}x{w} image.")
        return row, col
    if position not in POSITIONS:
        raise ValueError(f"Unknown position {position!r}; use one of {POSITIONS} or [row, col].")
    lo_r, hi_r, mid_r = margin, h - margin - size, (h - size) // 2
    lo_c, hi_c, mid_c = margin, w - margin - size, (w - size) // 2
    rows = {"top": lo_r, "bottom": hi_r}
    cols = {"left": lo_c, "right": hi_c}
    parts = position.split("-")
    row = next((rows[p] for p in parts if p in rows), mid_r)
    col = next((cols[p] for p in parts if p in cols), mid_c)
    return row, col


# ----------------------------------------------------------- JSON files
# The fields of an attack.json trigger spec that each kind needs.
SPEC_FIELDS = {
    "square": ("image_shape", "target", "size", "margin", "position", "color"),
    "shape": ("image_shape", "target", "shape", "size", "margin", "position", "color"),
    "blend": ("image_shape", "target", "image", "alpha", "size", "margin", "position"),
    "arrays": ("mask", "pattern", "target"),
}


def load_triggers(path_or_dict, name=None):
    """Rebuilds the triggers of an `attack.json` file (or of its parsed dict).

    Args:
        path_or_dict: path of an `attack.json`, or the dict it holds.
        name: what to call the attack in error messages. Defaults to `None`
            (the path, or "the attack").

    Returns:
        list of `Trigger`.
    """
    payload = path_or_dict
    if not isinstance(payload, dict):
        name = name or str(path_or_dict)
        payload = read_json(path_or_dict, "attack file")
    name = name or "the attack"
    specs = payload.get("triggers") if isinstance(payload, dict) else None
    if not specs or not isinstance(specs, list):
        raise ValueError(
            f"{name} has no 'triggers' list; pass the attack.json written by `nc-tf inject`."
        )
    triggers = []
    for i, spec in enumerate(specs):
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in SPEC_FIELDS:
            raise ValueError(
                f"{name}: trigger {i} has kind {kind!r}; expected one of "
                f"{', '.join(SPEC_FIELDS)}. Pass the attack.json written by "
                "`nc-tf inject`."
            )
        missing = [field for field in SPEC_FIELDS[kind] if field not in spec]
        if missing:
            raise ValueError(
                f"{name}: trigger {i} ({kind}) has no {', '.join(missing)} "
                "field(s); pass the attack.json written by `nc-tf inject`."
            )
        shape = spec.get("image_shape", [1, 1, 1])
        if not (
            isinstance(shape, list)
            and len(shape) == 3
            and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in shape
            )
        ):
            raise ValueError(
                f"{name}: trigger {i} ({kind}) has image_shape {shape!r}; expected "
                "[height, width, channels]. Pass the attack.json written by "
                "`nc-tf inject`."
            )
        try:
            triggers.append(Trigger.from_spec(spec))
        except Exception as error:  # a damaged spec fails in many ways
            raise ValueError(
                f"{name}: trigger {i} ({kind}) is invalid "
                f"({str(error).splitlines()[0][:200] or type(error).__name__}); "
                "pass the attack.json written by `nc-tf inject`."
            ) from None
    return triggers


def _blend_from_spec(spec):
    from injection.blend import blend_trigger

    image = spec["image"]
    if image not in ("logo", "watermark"):
        image = _decode_array(image)
    return blend_trigger(
        spec["image_shape"],
        spec["target"],
        image,
        spec["alpha"],
        spec["size"],
        spec["margin"],
        spec["position"],
        spec.get("sources"),
    )


Trigger.builders.update(
    square=lambda spec: square_trigger(
        spec["image_shape"],
        spec["target"],
        size=spec["size"],
        margin=spec["margin"],
        position=spec["position"],
        color=spec["color"],
        sources=spec.get("sources"),
    ),
    shape=lambda spec: shape_trigger(
        spec["image_shape"],
        spec["target"],
        spec["shape"],
        spec["size"],
        spec["margin"],
        spec["position"],
        spec["color"],
        spec.get("seed", 0),
        spec.get("sources"),
    ),
    blend=_blend_from_spec,
)
