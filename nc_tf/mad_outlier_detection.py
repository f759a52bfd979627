"""The reference `mad_outlier_detection.py`: `outlier_detection`, `analyze_pattern_norm_dist`.

`outlier_detection` is `nc_tf.outlier.outlier_detection` (same arguments,
same three printed lines; it also returns the verdict as a dict).
`analyze_pattern_norm_dist` measures the norms as the reference did: it
reads each label's mask back from its 8-bit PNG (written by
`gtsrb_visualize_example.save_pattern`, or by a scan), divides by 255 and
sums, so its norms are those of the reference's published printout
(16.117647 = 4110 / 255), not the float sums a scan records.
"""

import os

from nc_tf.detect import png_mask_norms
from nc_tf.gtsrb_visualize_example import IMG_FILENAME_TEMPLATE, RESULT_DIR
from nc_tf.outlier import outlier_detection  # noqa: F401  (the reference name)

# The reference script's parameters (GTSRB).
IMG_ROWS = 32
IMG_COLS = 32
IMG_COLOR = 3
INPUT_SHAPE = (IMG_ROWS, IMG_COLS, IMG_COLOR)
NUM_CLASSES = 43


def mask_png_norms(
    result_dir=RESULT_DIR,
    img_filename_template=IMG_FILENAME_TEMPLATE,
    num_classes=NUM_CLASSES,
    input_shape=INPUT_SHAPE,
):
    """The L1 norms of the mask PNGs of labels `0 .. num_classes - 1` that exist.

    Each mask is read as the reference did (`nc_tf.detect.png_mask_norms`):
    grayscale, resized (nearest) to `input_shape` if it differs, as float32
    divided by 255, summed.

    Args:
        result_dir: the folder of the PNGs. Defaults to `"results"`.
        img_filename_template: file name template `% ("mask", label)`.
            Defaults to `"gtsrb_visualize_%s_label_%d.png"`.
        num_classes: labels to look for. Defaults to `43`.
        input_shape: `(H, W, C)` of the masks. Defaults to `(32, 32, 3)`.

    Returns:
        `(l1_norm_list, idx_mapping)`: the norms, and the dict label ->
        position in the list, as the reference passes them to
        `outlier_detection`.
    """
    paths = {}
    for label in range(int(num_classes)):
        path = os.path.join(result_dir, img_filename_template % ("mask", label))
        if os.path.isfile(path):
            paths[label] = path
    by_label = png_mask_norms(paths, shape=input_shape[:2], root=result_dir)
    norms = [by_label[label] for label in paths]
    return norms, {label: i for i, label in enumerate(paths)}


def analyze_pattern_norm_dist(
    result_dir=RESULT_DIR,
    img_filename_template=IMG_FILENAME_TEMPLATE,
    num_classes=NUM_CLASSES,
    input_shape=INPUT_SHAPE,
    verbose=True,
):
    """The MAD outlier test on the mask PNGs of a result folder (reference).

    Reads the norms with `mask_png_norms`, prints `N labels found` and runs
    `outlier_detection`, which prints the reference's three lines. The
    reference took no arguments (its module constants); these default to
    them.

    Args:
        result_dir: the folder of the PNGs. Defaults to `"results"`.
        img_filename_template: file name template `% ("mask", label)`.
            Defaults to `"gtsrb_visualize_%s_label_%d.png"`.
        num_classes: labels to look for. Defaults to `43`.
        input_shape: `(H, W, C)` of the masks. Defaults to `(32, 32, 3)`.
        verbose: print the report. Defaults to `True`.

    Returns:
        the verdict dict of `nc_tf.outlier.outlier_detection` (`median`,
        `mad`, `anomaly_index`, `flagged`, ...).

    Raises:
        FileNotFoundError: no mask PNG matches the template.

    Example:

    >>> verdict = analyze_pattern_norm_dist("results")  # doctest: +SKIP
    43 labels found
    median: 64.466667, MAD: 13.238736
    anomaly index: 3.652087
    flagged label list: 33: 16.117647
    """
    norms, idx_mapping = mask_png_norms(result_dir, img_filename_template, num_classes, input_shape)
    if not norms:
        raise FileNotFoundError(
            f"{result_dir} has no mask PNG named like {img_filename_template % ('mask', 0)}; "
            "pass the folder and file name template the masks were saved with."
        )
    if verbose:
        print("%d labels found" % len(norms))
    return outlier_detection(norms, idx_mapping, verbose=verbose)
