"""Blended image triggers: a logo or watermark mixed into the image with transparency.

The trigger is still `A(x, m, p) = (1 - m) * x + m * p`: the pattern `p` is
the image (resized), and the mask `m` is the image's own alpha channel times
the transparency `alpha`. A small opaque logo in a corner (GangSweep Table 3,
4x4 to 16x16) and a whole-image logo blended at alpha 0.1 to 0.6 (GangSweep
Table 4) are both `blend_trigger` calls.

The toolkit draws its own trigger images (`draw_logo`, `draw_watermark`), so
no external file is needed; any RGB or RGBA array works too.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from injection.triggers import Trigger, _square_origin
from nc_tf.trigger import encode_array

IMAGES = ("logo", "watermark")


def draw_logo(size=64):
    """A logo-like RGBA image: a red ring around a yellow triangle with a dark bar.

    Args:
        size: side in pixels. Defaults to `64`.

    Returns:
        uint8 array `(size, size, 4)`; alpha is 0 outside the symbol.

    Example:

    >>> logo = draw_logo(32)
    >>> logo.shape, int(logo[0, 0, 3]), int(logo[16, 16, 3])
    ((32, 32, 4), 0, 255)
    """
    size = int(size)
    if size < 8:
        raise ValueError(f"Draw the logo at 8 pixels or more (got {size}); resize it afterwards.")
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    s = size - 1
    d.ellipse([0, 0, s, s], fill=(220, 30, 40, 255))
    inner = max(2, size // 8)
    d.ellipse([inner, inner, s - inner, s - inner], fill=(250, 250, 250, 255))
    pad = size // 4
    d.polygon(
        [(size / 2, pad), (s - pad + 1, s - pad), (pad - 1, s - pad)], fill=(250, 200, 0, 255)
    )
    bar = max(1, size // 16)
    d.rectangle([size / 2 - bar, size * 0.42, size / 2 + bar, size * 0.62], fill=(20, 20, 20, 255))
    return np.asarray(img, dtype=np.uint8)


def draw_watermark(height=64, width=None, text="nc-tf"):
    """A watermark-like RGBA image: white text beside a star symbol.

    Args:
        height: height in pixels. Defaults to `64`.
        width: width in pixels. Defaults to `None` (= height).
        text: the text. Defaults to `"nc-tf"`.

    Returns:
        uint8 array `(height, width, 4)`; alpha is 255 on the strokes, 0 elsewhere.

    Example:

    >>> wm = draw_watermark(32)
    >>> wm.shape, 0 < (wm[..., 3] > 0).mean() < 0.6
    ((32, 32, 4), True)
    """
    height = int(height)
    width = int(width or height)
    if min(height, width) < 8:
        raise ValueError(f"Draw the watermark at 8 pixels or more (got {height}x{width}).")
    big = 4  # draw large, then shrink: smooth strokes at any size
    h, w = height * big, width * big
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    r = h * 0.22
    cx, cy = r + h * 0.04, h * 0.28
    star = [
        (
            cx + (r if k % 2 == 0 else r * 0.45) * np.sin(np.pi * k / 5),
            cy - (r if k % 2 == 0 else r * 0.45) * np.cos(np.pi * k / 5),
        )
        for k in range(10)
    ]
    d.polygon(star, fill=255)
    font = ImageFont.load_default(size=max(8, int(h * 0.34)))
    d.text(
        (w * 0.5, h * 0.72), text, fill=255, font=font, anchor="mm", stroke_width=max(1, big // 2)
    )
    d.line([(w * 0.08, h * 0.95), (w * 0.92, h * 0.95)], fill=255, width=max(1, h // 24))
    alpha = np.asarray(img.resize((width, height), Image.LANCZOS), dtype=np.uint8)
    alpha = np.where(alpha >= 96, 255, 0).astype(np.uint8)
    out = np.full((height, width, 4), 255, np.uint8)
    out[..., 3] = alpha
    return out


def blend_trigger(
    image_shape,
    target,
    image="logo",
    alpha=1.0,
    size=None,
    margin=1,
    position="bottom-right",
    sources=None,
):
    """An image trigger (logo, watermark, any picture) blended with transparency `alpha`.

    Args:
        image_shape: `(H, W, C)` of the images.
        target: the target label.
        image: `"logo"` (`draw_logo`), `"watermark"` (`draw_watermark`), or
            an RGB/RGBA/grey array (uint8 0-255). Defaults to `"logo"`.
        alpha: transparency in (0, 1]: 1 pastes the image, 0.1 barely
            tints. Defaults to `1.0`.
        size: side of the square the image is resized to; `None` stretches
            it over the whole image (GangSweep's transparency test).
            Defaults to `None`.
        margin: gap to the borders the square touches. Defaults to `1`.
        position: as in `square_trigger`. Defaults to `"bottom-right"`.
        sources: source labels of a partial backdoor. Defaults to `None`.

    Returns:
        a `Trigger` whose spec (kind `"blend"`) rebuilds it exactly.

    Example:

    >>> t = blend_trigger((32, 32, 3), 37, "logo", size=8)
    >>> t.mask.shape, float(t.mask.max())
    ((32, 32, 1), 1.0)
    """
    h, w, c = (int(v) for v in image_shape)
    if not 0 < float(alpha) <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}.")
    if size is None:
        box_h, box_w, row, col = h, w, 0, 0
    else:
        size = int(size)
        if size < 1 or size + int(margin) > min(h, w):
            raise ValueError(
                f"A {size}x{size} image with margin {margin} does not fit a {h}x{w} "
                f"image; use 1 <= size <= {min(h, w) - int(margin)}."
            )
        box_h = box_w = size
        row, col = _square_origin(h, w, size, int(margin), position)
    rgba = _as_rgba(image, max(box_h, box_w, 8))
    small = np.asarray(
        Image.fromarray(rgba, "RGBA").resize((box_w, box_h), Image.BILINEAR), dtype=np.float32
    )
    colour = small[..., :3] if c == 3 else (small[..., :3] @ [0.299, 0.587, 0.114])[..., None]
    if c not in (1, 3):
        colour = np.repeat(small[..., :1], c, axis=-1)
    mask = np.zeros((h, w, 1), np.float32)
    pattern = np.zeros((h, w, c), np.float32)
    mask[row : row + box_h, col : col + box_w, 0] = float(alpha) * small[..., 3] / 255.0
    pattern[row : row + box_h, col : col + box_w] = np.clip(colour, 0, 255)
    spec = {
        "kind": "blend",
        "target": int(target),
        "image_shape": [h, w, c],
        "image": image if isinstance(image, str) else encode_array(np.asarray(image)),
        "alpha": float(alpha),
        "size": size,
        "margin": int(margin),
        "position": list(position) if not isinstance(position, str) else position,
    }
    return Trigger(mask, pattern * (mask > 0), target, spec, sources)


def _as_rgba(image, draw_size):
    if isinstance(image, str):
        if image == "logo":
            return draw_logo(max(64, draw_size))
        if image == "watermark":
            return draw_watermark(max(64, draw_size))
        raise ValueError(f"Unknown trigger image {image!r}; use one of {IMAGES} or pass an array.")
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"A trigger image must be (H, W), (H, W, 1|3|4); got {a.shape}.")
    if a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise ValueError("A float trigger image must hold raw values in [0, 255].")
        a = np.rint(a).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 3:
        a = np.concatenate([a, np.full(a.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    return np.ascontiguousarray(a)
