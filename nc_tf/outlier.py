"""MAD outlier detection over reversed-trigger norms (Neural Cleanse §IV-C).

Faithful to the reference `mad_outlier_detection.py`: consistency constant
1.4826, anomaly index of the smallest norm, labels flagged when their norm is
below the median and more than 2 MADs away, flagged list sorted by norm.
"""

import numpy as np

CONSISTENCY_CONSTANT = 1.4826
ANOMALY_THRESHOLD = 2.0


def median_mad(values):
    """The median and the MAD (with the consistency constant 1.4826) of `values`.

    Example:

    >>> median_mad([1.0, 2.0, 4.0])
    (2.0, 1.4826)
    """
    values = np.asarray(values, dtype=np.float64)
    median = float(np.median(values))
    return median, float(CONSISTENCY_CONSTANT * np.median(np.abs(values - median)))


def robust_z(values, median, mad):
    """`(values - median) / mad`, the robust z-score; with a MAD of 0: 0 at the median, else +-inf.

    Example:

    >>> robust_z([1.0, 2.0, 4.0], 2.0, 1.0).tolist()
    [-1.0, 0.0, 2.0]
    """
    deviation = np.asarray(values, dtype=np.float64) - median
    if mad > 0:
        return deviation / mad
    return np.where(deviation == 0, 0.0, np.sign(deviation) * np.inf)


def outlier_detection(l1_norm_list, idx_mapping, verbose=True, threshold=ANOMALY_THRESHOLD):
    """Flags labels whose reversed trigger is anomalously small.

    Prints the reference three lines when `verbose`:
    `median: %f, MAD: %f`, `anomaly index: %f`, `flagged label list: 33: 16.117647`.

    Args:
        l1_norm_list: L1 norm of the reversed mask of each label.
        idx_mapping: label id of each entry of `l1_norm_list` (a list, or a
            dict label -> position as in the reference).
        verbose: print the reference report. Defaults to `True`.
        threshold: anomaly index above which a label is flagged. Defaults to
            `2.0`.

    Returns:
        dict with `median`, `mad`, `anomaly_index` (of the smallest norm),
        `flagged` (list of `(label, l1_norm)` sorted by norm) and
        `per_label` (label -> anomaly index, signed: positive below the
        median).

    Example:

    >>> r = outlier_detection([16.1, 60.0, 64.0, 70.0, 66.0], [33, 0, 1, 2, 3])
    median: 64.000000, MAD: 5.930400
    anomaly index: 8.076917
    flagged label list: 33: 16.100000
    """
    norms = np.asarray(l1_norm_list, dtype=np.float64).reshape(-1)
    if isinstance(idx_mapping, dict):
        labels = [None] * len(norms)
        for label, pos in idx_mapping.items():
            labels[pos] = label
    else:
        labels = list(idx_mapping)
    if len(labels) != len(norms):
        raise ValueError(f"{len(norms)} norms but {len(labels)} labels in idx_mapping.")
    if len(norms) < 3:
        raise ValueError(f"MAD outlier detection needs at least 3 labels, got {len(norms)}.")
    if not np.all(np.isfinite(norms)):
        raise ValueError("Norms contain NaN or inf; rerun the scan for those labels.")
    median, mad = median_mad(norms)
    index = np.abs(robust_z(norms, median, mad))
    anomaly_index = float(np.abs(robust_z(np.min(norms), median, mad)))
    flagged = sorted(
        (
            (labels[i], float(norms[i]))
            for i in range(len(norms))
            if norms[i] < median and index[i] > threshold
        ),
        key=lambda item: item[1],
    )
    if verbose:
        print(f"median: {median:f}, MAD: {mad:f}")
        print(f"anomaly index: {anomaly_index:f}")
        print("flagged label list: " + ", ".join(f"{label}: {norm:f}" for label, norm in flagged))
    return {
        "median": median,
        "mad": mad,
        "anomaly_index": anomaly_index,
        "flagged": flagged,
        "per_label": {
            labels[i]: float(np.sign(median - norms[i]) * index[i]) for i in range(len(norms))
        },
        "threshold": float(threshold),
    }
