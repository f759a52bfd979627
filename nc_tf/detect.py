"""The verdict of a scan: the outlier test on a results record or a scan folder.

`detect` judges a `results.json` record (Neural Cleanse and partial scans by
the MAD test of `nc_tf.outlier`, GangSweep scans by
`nc_tf.gangsweep.gangsweep_outliers`); `detect_dir` does so for a folder,
also one that holds only the reference's mask PNGs; `scan_triggers` loads
the flagged labels' reversed triggers for mitigation.
"""

import os

import numpy as np

from nc_tf.outlier import outlier_detection
from nc_tf.scan_folder import RESULTS, load_reversed, read_scan_record
from nc_tf.trigger import Trigger


def detect(record, verbose=True):
    """The MAD verdict of a scan record (`results.json` dict).

    Label scans are tested on the L1 norms; partial scans (job keys
    `"3->7"`) on the score each pair was given (see `nc_tf.partial`);
    GangSweep scans (`method: "gangsweep"`) with GangSweep's own test
    (`nc_tf.gangsweep.gangsweep_outliers`), with the statistic and
    persistence gate the scan was judged with (the paper's unless it
    recorded others).
    """
    if record.get("method") == "gangsweep":
        from nc_tf.gangsweep import PERSISTENCE_THRESHOLD, gangsweep_outliers

        judged = record.get("outlier") or {}
        result = gangsweep_outliers(
            record["labels"],
            judged.get("persistence_threshold", PERSISTENCE_THRESHOLD),
            statistic=judged.get("statistic", "paper"),
            verbose=verbose,
        )
        result["per_label"] = {str(k): v for k, v in result["per_label"].items()}
        return result
    if "partial" in record:
        keys = sorted(k for k, v in record["labels"].items() if "score" in v)
        result = outlier_detection(
            [record["labels"][k]["score"] for k in keys], keys, verbose=verbose
        )
        result["flagged"] = [[k, n] for k, n in result["flagged"]]
        return result
    items = sorted(
        ((k, v) for k, v in record["labels"].items() if k.isdigit()), key=lambda kv: int(kv[0])
    )
    result = outlier_detection(
        [v["l1_norm"] for _, v in items], [int(k) for k, _ in items], verbose=verbose
    )
    result["flagged"] = [[label, norm] for label, norm in result["flagged"]]
    result["per_label"] = {str(k): v for k, v in result["per_label"].items()}
    return result


def detect_dir(scan_dir, verbose=True):
    """The MAD verdict of a scan folder: from `results.json`, else from the mask PNGs.

    Args:
        scan_dir: a folder written by `scan` (or the reference code's mask
            PNGs `*_mask_label_N.png`).
        verbose: print the reference report. Defaults to `True`.

    Returns:
        the outlier dict of `nc_tf.outlier.outlier_detection`.
    """
    if os.path.exists(os.path.join(scan_dir, RESULTS)):
        return detect(read_scan_record(scan_dir), verbose)
    if not os.path.isdir(scan_dir):
        raise FileNotFoundError(f"No such scan folder: {scan_dir}")
    import re

    from PIL import Image

    norms = {}
    for name in os.listdir(scan_dir):
        match = re.search(r"mask_label_(\d+)\.png$", name)
        if match:
            with Image.open(os.path.join(scan_dir, name)) as im:
                norms[int(match.group(1))] = float(np.sum(np.asarray(im.convert("L"))) / 255.0)
    if not norms:
        raise FileNotFoundError(
            f"{scan_dir} has neither {RESULTS} nor *_mask_label_N.png files; "
            "run `nc-tf scan` first."
        )
    return detect({"labels": {str(k): {"l1_norm": v} for k, v in norms.items()}}, verbose)


def scan_triggers(scan_dir, labels=None, verbose=False):
    """The reversed triggers of a scan folder as `injection.Trigger` objects.

    Mitigation stamps these on clean images. Partial-scan keys (`"3->7"`)
    give triggers restricted to their source labels.

    Args:
        scan_dir: a folder written by `scan` or `partial_scan`.
        labels: labels (or job keys) to load. Defaults to `None`: the labels
            the outlier test flags.
        verbose: print the MAD report. Defaults to `False`.

    Returns:
        list of `Trigger` (empty when nothing is flagged).
    """
    record = read_scan_record(scan_dir)
    if record.get("method") == "gangsweep":
        raise ValueError(
            f"{scan_dir} holds a GangSweep scan: it has generators, not reversed "
            "triggers. Repair with its generators (`nc-tf mitigate --method "
            "gangsweep --scan DIR`), or scan with Neural Cleanse for this method."
        )
    if labels is None:
        labels = [key for key, _ in detect(record, verbose)["flagged"]]
    out = []
    for key in labels:
        entry = record["labels"].get(str(key))
        if entry is None:
            raise ValueError(
                f"Label {key} is not in {scan_dir}; scanned: {', '.join(sorted(record['labels']))}."
            )
        mask, pattern = load_reversed(scan_dir, key)
        out.append(
            Trigger(
                np.clip(mask, 0, 1),
                np.clip(pattern, 0, 255),
                entry["label"],
                sources=entry.get("sources"),
            )
        )
    return out
