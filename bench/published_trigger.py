"""Our reversed GTSRB trigger for label 33 next to the one the Neural Cleanse authors published.

The authors published the trigger they reversed for label 33 of their infected
GTSRB model: ../shared/triggers/gtsrb_mask.png (the mask x 255, 8-bit grey)
and gtsrb_pattern.png (RGB). This benchmark loads the exact reversed trigger of
the same label from one of our scan folders (`nc_tf.scan_folder.load_reversed`;
by default the fast-preset scan of the GTSRB BadNets model, target 33, made by
`python bench/scan.py --only gtsrb`) and prints, beside the published L1 norm
of the reference MAD printout (16.117647):

- the mask L1 norms: ours as a float sum, ours as the reference code read it
  back from its 8-bit PNG (mask x 255, truncated), and the published PNG's;
- the overlap of the two masks: intersection over union (IoU) of the pixels
  above 0.5, and of the k largest pixels of each (k: the published pixels
  above 0.5), so that a mask of another scale is compared by its shape;
- the distance between the masks' centres of mass, in pixels;
- the patterns' mean absolute difference on the pixels both masks keep, in
  grey levels.

With `--versus DIR`, the same label of a second scan folder stands in for the
published trigger, which measures how far two of our own reversals agree.

Usage: python bench/published_trigger.py [--scan DIR] [--label N] [--published DIR]
           [--versus DIR]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np  # noqa: E402
from _common import print_peak_rss, report_figures  # noqa: E402

from nc_tf.scan_folder import load_reversed, png_l1_norm  # noqa: E402

SCAN_DIR = os.path.join("runs", "bench_scans", "gtsrb_badnets_fast")
PUBLISHED_DIR = os.path.join("..", "shared", "triggers")
PUBLISHED_L1 = 16.117647  # the reference MAD printout: "flagged label list: 33: 16.117647"
LABEL = 33
THRESHOLD = 0.5


def load_published(folder):
    """The published reversed trigger, as `nc_tf` stores a reversed trigger.

    Args:
        folder: the folder of `gtsrb_mask.png` and `gtsrb_pattern.png`.

    Returns:
        `(mask, pattern)`: float32 `(H, W)` in [0, 1] and float32
        `(H, W, 3)` in [0, 255].

    Raises:
        FileNotFoundError: a PNG is missing.

    Example:

    >>> mask, pattern = load_published("../shared/triggers")  # doctest: +SKIP
    """
    from PIL import Image

    with Image.open(os.path.join(folder, "gtsrb_mask.png")) as image:
        mask = np.asarray(image.convert("L"), np.float32) / 255.0
    with Image.open(os.path.join(folder, "gtsrb_pattern.png")) as image:
        pattern = np.asarray(image.convert("RGB"), np.float32)
    return mask, pattern


def iou(a, b):
    """Intersection over union of two boolean masks (`0.0` when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def largest(mask, k):
    """A boolean mask of the `k` largest pixels of `mask` (ties broken by position)."""
    keep = np.zeros(mask.size, bool)
    keep[np.argsort(-mask, axis=None, kind="stable")[:k]] = True
    return keep.reshape(mask.shape)


def centre(mask):
    """The mask-weighted centre of mass `(row, column)`, or `None` for an empty mask."""
    total = float(mask.sum())
    if total <= 0:
        return None
    rows, cols = np.indices(mask.shape)
    return float((rows * mask).sum() / total), float((cols * mask).sum() / total)


def compare(ours, published, threshold=THRESHOLD):
    """The figures that compare two reversed triggers of the same label.

    Args:
        ours: `(mask, pattern)`, the mask `(H, W)` in [0, 1] and the pattern
            `(H, W, C)` in [0, 255].
        published: `(mask, pattern)` of the same shapes.
        threshold: a mask pixel above this counts as kept. Defaults to `0.5`.

    Returns:
        dict: `l1`, `l1_png` (ours, read back as the reference did),
        `published_png_l1`, `published_l1` (the reference printout),
        `kept`, `published_kept` (pixels above the threshold), `iou`,
        `iou_largest` (of the `published_kept` largest pixels of each),
        `centre`, `published_centre`, `centre_distance` and
        `pattern_difference` (mean absolute difference on the pixels both
        masks keep; `None` when they share none).

    Raises:
        ValueError: the shapes differ.

    Example:

    >>> m = np.zeros((4, 4), np.float32); m[2:, 2:] = 1
    >>> compare((m, np.zeros((4, 4, 3))), (m, np.zeros((4, 4, 3))))["iou"]
    1.0
    """
    (mask, pattern), (pub_mask, pub_pattern) = ours, published
    if mask.shape != pub_mask.shape or pattern.shape != pub_pattern.shape:
        raise ValueError(
            f"our trigger (mask {mask.shape}, pattern {pattern.shape}) and the published one "
            f"(mask {pub_mask.shape}, pattern {pub_pattern.shape}) differ in shape: scan "
            "the GTSRB model"
        )
    kept, pub_kept = mask > threshold, pub_mask > threshold
    k = int(pub_kept.sum())
    both = kept & pub_kept
    here, there = centre(mask), centre(pub_mask)
    apart = None if None in (here, there) else float(np.hypot(*np.subtract(here, there)))
    return {
        "l1": float(mask.sum()),
        "l1_png": png_l1_norm(mask),
        "published_png_l1": float(pub_mask.sum()),
        "published_l1": PUBLISHED_L1,
        "kept": int(kept.sum()),
        "published_kept": k,
        "iou": iou(kept, pub_kept),
        "iou_largest": iou(largest(mask, k), largest(pub_mask, k)),
        "centre": here,
        "published_centre": there,
        "centre_distance": apart,
        "pattern_difference": (
            float(np.abs(pattern[both] - pub_pattern[both]).mean()) if both.any() else None
        ),
    }


def _fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scan", default=SCAN_DIR, help=f"our scan folder (default: {SCAN_DIR})")
    ap.add_argument("--label", type=int, default=LABEL, help=f"the label (default: {LABEL})")
    ap.add_argument(
        "--published",
        default=PUBLISHED_DIR,
        help=f"folder of gtsrb_mask.png and gtsrb_pattern.png (default: {PUBLISHED_DIR})",
    )
    ap.add_argument(
        "--versus",
        help="a second scan folder whose trigger of the label stands in for the published one",
    )
    args = ap.parse_args()
    try:
        ours = load_reversed(args.scan, args.label)
        if args.versus:
            other = load_reversed(args.versus, args.label)
    except FileNotFoundError as e:
        raise SystemExit(f"{e} Run `python bench/scan.py --only gtsrb` first.") from None
    try:
        f = compare(ours, other if args.versus else load_published(args.published))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    them = "the other" if args.versus else "published"
    print(
        f"\nReversed trigger of label {args.label}: ours ({args.scan}), "
        + (f"the other ({args.versus})" if args.versus else f"published ({args.published})")
    )
    print(
        f"mask L1: ours {f['l1']:.2f} (read back from an 8-bit PNG as the reference did: "
        f"{f['l1_png']:.2f}); {them} {f['published_png_l1']:.2f}"
        + ("" if args.versus else f"; published printout {f['published_l1']:.2f}")
    )
    print(
        f"mask pixels above {THRESHOLD}: ours {f['kept']}, {them} {f['published_kept']}; "
        f"IoU {f['iou']:.2f}"
    )
    print(f"IoU of the {f['published_kept']} largest pixels of each mask: {f['iou_largest']:.2f}")
    print(
        "centres of mass (row, column): ours "
        f"({', '.join(_fmt(v, '.1f') for v in f['centre'] or (None, None))}), {them} "
        f"({', '.join(_fmt(v, '.1f') for v in f['published_centre'] or (None, None))}): "
        f"{_fmt(f['centre_distance'], '.1f')} px apart"
    )
    print(
        "pattern on the pixels both masks keep: mean absolute difference "
        f"{_fmt(f['pattern_difference'], '.1f')} grey levels (of 255)"
    )
    report_figures(**f)
    print_peak_rss()


if __name__ == "__main__":
    main()
