"""Backdoor triggers as a mask and a pattern, stamped on raw uint8 images.

A trigger spec is a JSON-able dict with a `"type"` key (see `TRIGGER_TYPES`).
`make_trigger` turns it into `(mask, pattern)`: `mask` is `(H, W)` float32 in
[0, 1] and `pattern` is `(H, W, C)` float32 in 0..255, so a stamped image is
`(1 - mask) * x + mask * pattern`, as a benchmark recomputes it.
"""

import numpy as np

POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")


def _corner(position, size, height, width, margin):
    """Top-left pixel `(row, col)` of a `size`-square patch at `position`."""
    rows = {"top": margin, "bottom": height - margin - size, "center": (height - size) // 2}
    cols = {"left": margin, "right": width - margin - size, "center": (width - size) // 2}
    if position == "center":
        return rows["center"], cols["center"]
    vertical, horizontal = position.split("-")
    return rows[vertical], cols[horizontal]


def _patch(spec, shape, patch):
    """A mask and pattern holding `patch` (`size x size x C`) at the spec's position."""
    height, width, channels = shape
    size = spec["size"]
    row, col = _corner(spec["position"], size, height, width, spec.get("margin", 1))
    mask = np.zeros((height, width), np.float32)
    pattern = np.zeros((height, width, channels), np.float32)
    mask[row : row + size, col : col + size] = 1.0
    pattern[row : row + size, col : col + size] = patch
    return mask, pattern


def square_trigger(spec, shape):
    """A solid square of one colour.

    Args:
        spec: dict with `size` (pixels), `position` (one of `POSITIONS`),
            `colour` (a 0..255 value per channel, or one value for every
            channel) and optional `margin` from the image edge (defaults to 1).
        shape: the image shape `(H, W, C)`.

    Returns:
        `(mask, pattern)`.
    """
    size, channels = spec["size"], shape[2]
    colour = np.broadcast_to(np.asarray(spec["colour"], np.float32), (channels,))
    return _patch(spec, shape, np.broadcast_to(colour, (size, size, channels)))


def random_patch_trigger(spec, shape):
    """A fixed random patch of black and full-intensity pixels.

    Args:
        spec: dict with `size`, `position`, `seed`, optional `margin`
            (defaults to 1) and `colour`: `"binary"` (each pixel black or
            white) or `"colour"` (each channel of each pixel 0 or 255).
        shape: the image shape `(H, W, C)`.

    Returns:
        `(mask, pattern)`.
    """
    size, channels = spec["size"], shape[2]
    rng = np.random.default_rng(spec["seed"])
    depth = channels if spec["colour"] == "colour" else 1
    bits = rng.integers(0, 2, size=(size, size, depth)) * 255.0
    return _patch(spec, shape, np.broadcast_to(bits, (size, size, channels)))


def blend_trigger(spec, shape):
    """A full-image uniform random-noise pattern blended in at `alpha`.

    Args:
        spec: dict with `alpha` (the blend weight, the mask's value
            everywhere) and `seed` of the noise.
        shape: the image shape `(H, W, C)`.

    Returns:
        `(mask, pattern)`.
    """
    rng = np.random.default_rng(spec["seed"])
    mask = np.full(shape[:2], spec["alpha"], np.float32)
    pattern = rng.integers(0, 256, size=shape).astype(np.float32)
    return mask, pattern


def square_spec(size, position, colour=255, margin=1):
    """The spec of a solid square trigger (see `square_trigger`).

    Args:
        size: the side in pixels.
        position: one of `POSITIONS`.
        colour: one 0..255 value, or one per channel. Defaults to `255` (white).
        margin: pixels between the square and the image edge. Defaults to `1`.

    Returns:
        a trigger spec dict.
    """
    return {
        "type": "square",
        "size": size,
        "position": position,
        "colour": colour,
        "margin": margin,
    }


def random_patch_spec(size, position, seed, colour="binary", margin=1):
    """The spec of a fixed random patch trigger (see `random_patch_trigger`).

    Args:
        size: the side in pixels.
        position: one of `POSITIONS`.
        seed: the seed of the patch's pixels.
        colour: `"binary"` or `"colour"`. Defaults to `"binary"`.
        margin: pixels between the patch and the image edge. Defaults to `1`.

    Returns:
        a trigger spec dict.
    """
    return {
        "type": "random_patch",
        "size": size,
        "position": position,
        "colour": colour,
        "seed": seed,
        "margin": margin,
    }


def blend_spec(alpha, seed):
    """The spec of a full-image noise blend trigger (see `blend_trigger`).

    Args:
        alpha: the blend weight.
        seed: the seed of the noise.

    Returns:
        a trigger spec dict.
    """
    return {"type": "blend", "alpha": alpha, "seed": seed}


def describe(spec):
    """A short text of a trigger spec for printed tables, e.g. `square4 bottom-right`.

    Args:
        spec: a trigger spec dict, or `None` for a clean model.

    Returns:
        str.
    """
    if spec is None:
        return "-"
    if spec["type"] == "blend":
        return f"blend a={spec['alpha']}"
    kind = "square" if spec["type"] == "square" else "patch"
    return f"{kind}{spec['size']} {spec['position']}"


TRIGGER_TYPES = {
    "square": square_trigger,
    "random_patch": random_patch_trigger,
    "blend": blend_trigger,
}


def make_trigger(spec, shape):
    """The `(mask, pattern)` of a trigger spec.

    Args:
        spec: a trigger dict whose `"type"` is a key of `TRIGGER_TYPES`.
        shape: the image shape `(H, W, C)`.

    Returns:
        `(mask, pattern)`: `(H, W)` float32 in [0, 1] and `(H, W, C)` float32
        in 0..255.
    """
    return TRIGGER_TYPES[spec["type"]](spec, tuple(shape))


def stamp(x, mask, pattern):
    """Applies a trigger to raw images.

    Args:
        x: uint8 images `(N, H, W, C)` in 0..255.
        mask: `(H, W)` in [0, 1].
        pattern: `(H, W, C)` in 0..255.

    Returns:
        uint8 images `(1 - mask) * x + mask * pattern`, rounded.
    """
    m = mask[..., None]
    return np.rint((1.0 - m) * x + m * pattern).astype(np.uint8)


def poison(x, y, mask, pattern, target, rate, rng):
    """Stamps a fraction of the non-target images and relabels them to `target`.

    Args:
        x: uint8 training images `(N, H, W, C)`.
        y: integer labels `(N,)`.
        mask: the trigger mask.
        pattern: the trigger pattern.
        target: the backdoor's target label.
        rate: the fraction of all `N` images to poison, drawn from the images
            whose label is not `target`.
        rng: a `numpy.random.Generator`.

    Returns:
        `(x, y, poisoned_indices)`: new arrays with the poisoned images in place.
    """
    candidates = np.flatnonzero(y != target)
    count = min(len(candidates), int(round(rate * len(y))))
    chosen = rng.choice(candidates, size=count, replace=False)
    x, y = x.copy(), y.copy()
    x[chosen] = stamp(x[chosen], mask, pattern)
    y[chosen] = target
    return x, y, chosen
