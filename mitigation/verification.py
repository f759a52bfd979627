"""Verification of a repair: a fresh scan of the repaired model for what survives.

A repair is never judged by the trigger it was made from: a reversed trigger
is often a fragment of the real one, and removing the model's response to
the fragment can leave the rest working. `verify` therefore reverses new
triggers from the repaired model itself, from fresh starts at a seed the
repair never used, and asks them for less attack success than a detection
scan does (`residual_threshold`, 50%): a half-working residue of a backdoor
still needs only a small trigger, while a clean label does not.

Norms reversed at a lower success threshold are smaller for every label, so
they are compared like with like: besides the labels the original scan
flagged, up to `controls` of the other labels are scanned the same way on
the repaired model. A flagged label still holds a backdoor when its
residual trigger is an outlier among the controls (anomaly index
`(median - l1_norm) / mad` above 2, the MAD test's threshold) or smaller
than every control's: a repaired label must look like at least one clean
label. The second rule makes the verdict lean towards "not verified" (a
clean label is the smallest of nine about one time in nine), because a
false "verified" is the worse error. Without flagged labels every label is
scanned and judged by a fresh MAD test.
"""

import os

import numpy as np

from nc_tf.outlier import ANOMALY_THRESHOLD, median_mad, robust_z
from nc_tf.scan import detect, scan

RESIDUAL_THRESHOLD = 0.5
CONTROLS = 8
# Verification seeds are this far from the repair's seed, so no repair step
# (its scans use seed + round) has seen their starts.
SEED_OFFSET = 1000


def scan_reference(record):
    """The labels a scan record flags, as `verify` and `repair` take them.

    Args:
        record: a `results.json` dict of `nc_tf.scan.scan`.

    Returns:
        list of int labels, or `None` when the record is not a label scan
        (a GangSweep or partial scan, or fewer than 3 labels): verification
        then scans every label.
    """
    if record.get("method") == "gangsweep" or "partial" in record:
        return None
    if sum((k.isascii() and k.isdigit()) for k in record.get("labels", {})) < 3:
        return None
    return [int(label) for label, _ in detect(record, verbose=False)["flagged"]]


def control_labels(labels, num_classes, controls=CONTROLS):
    """Up to `controls` labels outside `labels`, spread evenly over the rest."""
    others = [v for v in range(num_classes) if v not in set(labels)]
    if len(others) <= controls:
        return others
    picks = np.unique(np.round(np.linspace(0, len(others) - 1, controls)).astype(int))
    return [others[i] for i in picks]


def anomaly_index(norm, median, mad):
    """`(median - norm) / mad`: how far below the reference a norm lies (`robust_z`, negated)."""
    return float(-robust_z(norm, median, mad))


def verify(
    model,
    x,
    y,
    labels=None,
    intensity="raw",
    seed=0,
    residual_threshold=RESIDUAL_THRESHOLD,
    controls=CONTROLS,
    scan_options=None,
    out_dir=None,
    verbose=True,
):
    """Scans a repaired model for surviving triggers; returns the verification record.

    Args:
        model: the repaired Keras classifier.
        x: clean raw images to reverse triggers on (held-out data, e.g.
            `MitigationData.x_val`).
        y: their labels.
        labels: the labels the original scan flagged. Defaults to `None`:
            every label is scanned and judged by a fresh MAD test.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: the scan's seed; use one no repair step used (`mitigate`
            passes its seed + `SEED_OFFSET`). Defaults to `0`.
        residual_threshold: attack success a residual trigger must reach.
            Defaults to `0.5`.
        controls: other labels scanned alongside as the reference (fewer
            than 3 available: every label is scanned). Defaults to `8`.
        scan_options: other keyword arguments of `nc_tf.scan.scan`
            (`preset`, `starts`, ...). Defaults to `None`.
        out_dir: folder of the verification scan (resumable). Defaults to
            `None` (nothing written).
        verbose: show the scan's progress and the verdict. Defaults to `True`.

    Returns:
        dict: `verified` (no label still anomalous), `surviving` (those
        labels), `labels` (every scanned label -> `l1_norm`,
        `attack_success_rate` on `(x, y)`, `anomaly_index`, `found`,
        `role`: `"flagged"` or `"control"`), `reference` (`median`, `mad`,
        `smallest` control norm, `source`), `seed`, `residual_threshold`,
        `scan_dir` and, in memory only, `triggers` (flagged label -> `injection.Trigger`).

    Example:

    >>> labels = scan_reference(io.read_json("scan/results.json"))  # doctest: +SKIP
    >>> verify(repaired, x_val, y_val, labels)["verified"]  # doctest: +SKIP
    True
    """
    if labels is not None and not labels:
        raise ValueError(
            "verify: no flagged label to verify; pass labels=None to scan every "
            "label with a fresh MAD test."
        )
    num_classes = int(model.output_shape[-1])
    picked = None if labels is None else control_labels(labels, num_classes, controls)
    if picked is not None and len(picked) < 3:
        labels, picked = None, None  # too few controls for a median and MAD
    scanned = None if labels is None else sorted(set(labels) | set(picked))
    options = dict(scan_options or {}, attack_succ_threshold=residual_threshold)
    # The model's accuracy was judged before the repair; a repair that lowers it is reported.
    record = scan(
        model,
        x,
        y,
        labels=scanned,
        out_dir=out_dir,
        intensity=intensity,
        seed=seed,
        progress=verbose,
        verbose=False,
        accept_low_accuracy=True,
        **options,
    )
    entries = {int(k): v for k, v in record["labels"].items() if (k.isascii() and k.isdigit())}
    if labels is None:
        outlier = detect(record, verbose=False)
        median, mad, source = outlier["median"], outlier["mad"], "fresh MAD test"
        labels = sorted(entries)
    else:
        norms = np.array([entries[v]["l1_norm"] for v in picked])
        median, mad = median_mad(norms)
        source = f"control labels {', '.join(map(str, picked))}"
    rows = {}
    for label in sorted(entries):
        e = entries[label]
        rows[str(label)] = {
            "l1_norm": e["l1_norm"],
            "attack_success_rate": e["attack_success_rate"],
            "anomaly_index": anomaly_index(e["l1_norm"], median, mad),
            "found": e["found"],
            "role": "flagged"
            if label in labels and picked is not None
            else "control"
            if picked is not None
            else "scanned",
        }
    smallest = min(entries[v]["l1_norm"] for v in picked) if picked else -np.inf
    surviving = [
        v
        for v in labels
        if rows[str(v)]["anomaly_index"] > ANOMALY_THRESHOLD or rows[str(v)]["l1_norm"] < smallest
    ]
    result = {
        "verified": not surviving,
        "surviving": surviving,
        "labels": rows,
        "reference": {
            "median": median,
            "mad": mad,
            "source": source,
            "smallest": None if picked is None else float(smallest),
        },
        "seed": seed,
        "residual_threshold": residual_threshold,
        "scan_dir": out_dir,
        "triggers": {
            v: record_trigger(record, v) for v in (labels if picked is not None else surviving)
        },
    }
    if verbose:
        print(verification_text(result), flush=True)
    return result


def verification_text(result):
    """One line for a person: the verdict and each scanned label's residual trigger."""
    ref = result["reference"]
    parts = ", ".join(
        f"{k}: L1 {r['l1_norm']:.2f} (index {r['anomaly_index']:.2f})"
        for k, r in result["labels"].items()
        if r["role"] == "flagged" or int(k) in result["surviving"]
    )
    verdict = (
        "verified: no label holds a small trigger"
        if result["verified"]
        else f"NOT verified: a backdoor survives in label(s) "
        f"{', '.join(map(str, result['surviving']))}"
    )
    smallest = "" if ref.get("smallest") is None else f", smallest {ref['smallest']:.2f}"
    return (
        f"verification ({ref['source']}: median {ref['median']:.2f}, MAD {ref['mad']:.2f}"
        f"{smallest}; "
        f"residual triggers at {100 * result['residual_threshold']:.0f}% success) {parts}; "
        f"{verdict}"
    )


def record_trigger(record, label):
    """The reversed trigger of `label` in an in-memory scan record, as an `injection.Trigger`."""
    from nc_tf.trigger import Trigger

    mask, pattern = record["triggers"][str(label)]
    return Trigger(np.clip(mask, 0, 1), np.clip(pattern, 0, 255), int(label))


def verification_dir(out_dir):
    """Where `mitigate` keeps the verification scan inside its output folder."""
    return os.path.join(out_dir, "verification") if out_dir else None
