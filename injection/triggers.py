"""Triggers: a mask and a pattern stamped onto raw images, serialisable as JSON.

A trigger follows the Neural Cleanse model `A(x, m, p) = (1 - m) * x + m * p`
in the raw [0, 255] pixel domain. A `Trigger` keeps the JSON spec that made
it, so any later command (evaluate, scan, mitigate) can rebuild exactly the
same trigger from `attack.json`.

The reference helpers of `injection/injection_utils.py` keep their names:
`construct_mask_corner`, `construct_mask_box`, `injection_func`, `infect_X`.
"""

import base64
import io

import numpy as np

from nc_tf.io import read_json

POSITIONS = (
    "bottom-right", "bottom-left", "top-right", "top-left",
    "top", "bottom", "left", "right", "center",
)


# ------------------------------------------------------ reference helpers
def construct_mask_corner(image_row=32, image_col=32, pattern_size=4, margin=1,
                          channel_num=3):
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


def construct_mask_box(target_ls, image_shape, pattern_size=4, margin=1):
    """The reference pattern dictionary: target -> list of `(mask, pattern)`.

    Args:
        target_ls: target labels.
        image_shape: `(H, W, C)`.
        pattern_size: side of the square. Defaults to `4`.
        margin: gap to the bottom-right corner. Defaults to `1`.

    Returns:
        dict mapping each target label to `[(mask, pattern)]`.

    Example:

    >>> sorted(construct_mask_box([33], (32, 32, 3)))
    [33]
    """
    h, w, c = image_shape
    return {
        int(t): [construct_mask_corner(h, w, pattern_size, margin, c)] for t in target_ls
    }


def injection_func(mask, pattern, adv_img):
    """Stamps a trigger: `mask * pattern + (1 - mask) * adv_img` (reference)."""
    return mask * pattern + (1 - mask) * adv_img


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


# ------------------------------------------------------------- Trigger
class Trigger:
    """A mask/pattern trigger for one target label, rebuilt from a JSON spec.

    Build one with `square_trigger` (or `Trigger.from_spec`); apply it with
    `apply`. `spec` is a plain dict that `json.dumps` can write.

    Args:
        mask: `(H, W)` or `(H, W, 1|C)` array in [0, 1].
        pattern: `(H, W, C)` array in [0, 255].
        target: the label the trigger should produce.
        spec: the JSON-able description that rebuilds this trigger. Defaults
            to `None`: the arrays themselves are embedded.
        sources: for a partial (source-specific) backdoor, the source labels
            it applies to; other labels keep their label when stamped.
            Defaults to `None` (every label).
        delta: an additive `(H, W, C)` perturbation in raw units, added after
            the mask/pattern stamp and clipped to [0, 255] (invisible
            backdoors). Defaults to `None` (none).
        all_to_all: the number of classes K of an all-to-all attack: a
            stamped input of label i is sent to (i + 1) mod K, and `target`
            is `-1`. Defaults to `None` (one target).

    Example:

    >>> t = square_trigger((28, 28, 1), target=7)
    >>> import json
    >>> Trigger.from_spec(json.loads(json.dumps(t.spec))).target
    7
    """

    def __init__(self, mask, pattern, target, spec=None, sources=None, delta=None,
                 all_to_all=None):
        pattern = np.asarray(pattern, dtype=np.float32)
        mask = np.asarray(mask, dtype=np.float32)
        if mask.ndim == 2:
            mask = mask[..., None]
        if pattern.ndim != 3 or mask.shape[:2] != pattern.shape[:2]:
            raise ValueError(
                f"mask {mask.shape} and pattern {pattern.shape} must share H and "
                "W; pattern must be (H, W, C)."
            )
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError("mask values must lie in [0, 1].")
        if pattern.min() < 0 or pattern.max() > 255:
            raise ValueError("pattern values must lie in the raw range [0, 255].")
        if delta is not None:
            delta = np.asarray(delta, dtype=np.float32)
            if delta.shape != pattern.shape or np.abs(delta).max() > 255:
                raise ValueError(f"delta must be shaped like the pattern {pattern.shape} with "
                                 f"values in [-255, 255]; got {delta.shape}.")
        if all_to_all is not None and (int(all_to_all) < 2 or sources is not None):
            raise ValueError("all_to_all takes the number of classes (>= 2) and excludes sources.")
        self.mask, self.pattern, self.delta = mask, pattern, delta
        self.all_to_all = None if all_to_all is None else int(all_to_all)
        self.target = -1 if self.all_to_all else int(target)
        self.sources = None if sources is None else sorted(int(v) for v in sources)
        self.spec = dict(spec) if spec is not None else {
            "kind": "arrays",
            "target": self.target,
            "mask": _encode_array(mask),
            "pattern": _encode_array(pattern),
        }
        if delta is not None and "delta" not in self.spec and self.spec["kind"] == "arrays":
            self.spec["delta"] = _encode_array(delta)
        if self.sources is not None:
            self.spec["sources"] = self.sources
        if self.all_to_all is not None:
            self.spec["all_to_all"] = self.all_to_all

    def poison_labels(self, y):
        """The labels stamped inputs of labels `y` are meant to get.

        The target for a plain trigger; for a partial backdoor the target on
        its sources and the true label elsewhere; `(y + 1) mod K` all-to-all.

        Example:

        >>> square_trigger((28, 28, 1), 7, sources=[3]).poison_labels([3, 4]).tolist()
        [7, 4]
        """
        y = np.asarray(y, dtype=np.int64)
        if self.all_to_all:
            return (y + 1) % self.all_to_all
        out = np.full_like(y, self.target)
        if self.sources is not None:
            out = np.where(np.isin(y, self.sources), out, y)
        return out

    def attack_samples(self, y):
        """Which inputs count for attack success: label changed by the attack.

        Example:

        >>> square_trigger((28, 28, 1), 7, sources=[3, 7]).attack_samples([3, 4, 7]).tolist()
        [True, False, False]
        """
        y = np.asarray(y, dtype=np.int64)
        return self.poison_labels(y) != y

    @property
    def image_shape(self):
        return self.pattern.shape

    def apply(self, images):
        """Stamps the trigger onto raw images; keeps dtype (uint8 is rounded).

        Args:
            images: `(N, H, W, C)` or `(H, W, C)` raw images.

        Returns:
            stamped images of the same shape and dtype.
        """
        images = np.asarray(images)
        if images.shape[-3:] != self.pattern.shape:
            raise ValueError(
                f"Trigger is for images shaped {self.pattern.shape}, got "
                f"{images.shape[-3:]}."
            )
        out = injection_func(self.mask, self.pattern, images.astype(np.float32))
        if self.delta is not None:
            out = np.clip(out + self.delta, 0.0, 255.0)
        if images.dtype == np.uint8:
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out.astype(images.dtype)

    @classmethod
    def from_spec(cls, spec):
        """Rebuilds a trigger from its spec (the inverse of `.spec`)."""
        kind = spec.get("kind")
        if kind == "square":
            t = square_trigger(
                spec["image_shape"], spec["target"], size=spec["size"],
                margin=spec["margin"], position=spec["position"], color=spec["color"],
                sources=spec.get("sources"),
            )
        elif kind == "shape":
            t = shape_trigger(
                spec["image_shape"], spec["target"], spec["shape"], spec["size"], spec["margin"],
                spec["position"], spec["color"], spec.get("seed", 0), spec.get("sources"),
            )
        elif kind == "blend":
            from injection.blend import blend_trigger

            image = spec["image"]
            if image not in ("logo", "watermark"):
                image = _decode_array(image)
            t = blend_trigger(spec["image_shape"], spec["target"], image, spec["alpha"],
                              spec["size"], spec["margin"], spec["position"], spec.get("sources"))
        elif kind == "arrays":
            delta = _decode_array(spec["delta"]) if "delta" in spec else None
            return cls(_decode_array(spec["mask"]), _decode_array(spec["pattern"]),
                       spec["target"], spec, spec.get("sources"), delta, spec.get("all_to_all"))
        else:
            raise ValueError(f"Unknown trigger kind {kind!r} in spec; expected 'square', "
                             "'shape', 'blend' or 'arrays'.")
        if spec.get("all_to_all"):
            t = t.to_all_to_all(spec["all_to_all"])
        t.spec.update({k: v for k, v in spec.items() if k not in t.spec})  # e.g. "attack"
        return t

    def to_all_to_all(self, num_classes):
        """The same stamp as an all-to-all attack: label i -> (i + 1) mod `num_classes`."""
        spec = {k: v for k, v in self.spec.items() if k != "sources"}
        spec["target"] = -1
        return Trigger(self.mask, self.pattern, -1, spec, None, self.delta, num_classes)

    def __repr__(self):
        target = "i+1" if self.all_to_all else self.target
        return f"Trigger(kind={self.spec.get('kind')!r}, target={target})"


def square_trigger(image_shape, target, size=4, margin=1, position="bottom-right",
                   color=255, sources=None):
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


def shape_trigger(image_shape, target, shape="square", size=4, margin=1,
                  position="bottom-right", color=255, seed=0, sources=None):
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
    keep = {"square": np.ones_like(i, bool), "triangle": j <= i,
            "checkerboard": np.ones_like(i, bool)}[shape]
    mask = np.zeros((h, w, 1), np.float32)
    mask[row : row + size, col : col + size, 0] = keep
    pattern = base.pattern.copy()
    if noisy:
        patch = np.random.default_rng(seed).integers(0, 256, (size, size, c)).astype(np.float32)
        pattern[row : row + size, col : col + size] = patch
    if shape == "checkerboard":
        pattern[row : row + size, col : col + size][(i + j) % 2 == 1] = 0.0
    spec = dict(base.spec, kind="shape", shape=shape, seed=int(seed),
                color="noisy" if noisy else base.spec["color"])
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
            raise ValueError(f"{name}: trigger {i} has kind {kind!r}; expected one of "
                             f"{', '.join(SPEC_FIELDS)}. Pass the attack.json written by "
                             "`nc-tf inject`.")
        missing = [field for field in SPEC_FIELDS[kind] if field not in spec]
        if missing:
            raise ValueError(f"{name}: trigger {i} ({kind}) has no {', '.join(missing)} "
                             "field(s); pass the attack.json written by `nc-tf inject`.")
        shape = spec.get("image_shape", [1, 1, 1])
        if not (isinstance(shape, list) and len(shape) == 3 and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096
                for v in shape)):
            raise ValueError(f"{name}: trigger {i} ({kind}) has image_shape {shape!r}; expected "
                             "[height, width, channels]. Pass the attack.json written by "
                             "`nc-tf inject`.")
        try:
            triggers.append(Trigger.from_spec(spec))
        except Exception as error:  # a damaged spec fails in many ways
            raise ValueError(f"{name}: trigger {i} ({kind}) is invalid "
                             f"({str(error).splitlines()[0][:200] or type(error).__name__}); "
                             "pass the attack.json written by `nc-tf inject`.") from None
    return triggers


def _encode_array(a):
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode_array(text):
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)
