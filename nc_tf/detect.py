"""The verdict of a scan: the outlier test on a results record or a scan folder.

`detect` judges a `results.json` record (Neural Cleanse and partial scans by
the MAD test of `nc_tf.outlier`, GangSweep scans by
`nc_tf.gangsweep.gangsweep_outliers`); `detect_dir` does so for a folder,
also one that holds only the reference's mask PNGs; `scan_triggers` loads
the flagged labels' reversed triggers for mitigation.
"""

import os
import re

import numpy as np

from nc_tf.io import open_image
from nc_tf.outlier import outlier_detection
from nc_tf.scan_folder import RESULTS, load_reversed, mask_png_path, read_scan_record
from nc_tf.trigger import Trigger
from nc_tf.verdict import check_rule, label_verdict

NORM_SOURCES = ("float", "png")


def norm_source_of(record, norm_source=None):
    """The norms a Neural Cleanse verdict uses: `norm_source`, else by the scan's preset.

    `"png"`: each mask read back from its 8-bit PNG, as the reference's
    `mad_outlier_detection.py` measured it (`nc_tf.scan_folder.png_l1_norm`);
    `"float"`: the exact float sums. A reference-preset scan is judged on
    PNG norms, so it prints numbers comparable with the published ones; the
    other presets on the float sums.
    """
    if norm_source is None:
        preset = (record.get("settings") or {}).get("preset")
        return "png" if preset == "reference" else "float"
    if norm_source not in NORM_SOURCES:
        raise ValueError(f"norm_source must be one of {list(NORM_SOURCES)}, got {norm_source!r}.")
    return norm_source


def rule_of(record, rule=None):
    """The verdict rule of a label scan: `rule`, else the one its settings record.

    A scan made before rules were recorded is judged by `"reference"`, as
    it was then.
    """
    if rule is not None:
        return check_rule(rule)
    return check_rule((record.get("settings") or {}).get("rule", "reference"))


def detect(record, verbose=True, norm_source=None, rule=None):
    """The MAD verdict of a scan record (`results.json` dict).

    Label scans are judged on the L1 norms (`norm_source`) by their verdict
    rule (`nc_tf.verdict.label_verdict`: the reference MAD report always,
    and the rule's flags); partial scans
    (job keys `"3->7"`) on the score each pair was given (see
    `nc_tf.partial`); GangSweep scans (`method: "gangsweep"`) with
    GangSweep's own test (`nc_tf.gangsweep.gangsweep_outliers`), with the
    statistic and persistence gate the scan was judged with (the paper's
    unless it recorded others).

    Args:
        record: the results dict of a scan.
        verbose: print the reference report. Defaults to `True`.
        norm_source: `"float"` or `"png"` norms of a label scan (see
            `norm_source_of`). Defaults to `None` (by the scan's preset).
        rule: the verdict rule of a label scan (a key of
            `nc_tf.verdict.RULES`). Defaults to `None` (the scan's, see
            `rule_of`).

    Returns:
        the verdict dict (`nc_tf.verdict.label_verdict`'s for a label
        scan, with the `norm_source` it used).
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
    source = norm_source_of(record, norm_source)
    field = "l1_norm_png" if source == "png" else "l1_norm"
    entries = {int(k): v for k, v in record["labels"].items() if (k.isascii() and k.isdigit())}
    missing = [str(k) for k in sorted(entries) if field not in entries[k]]
    if missing:
        raise ValueError(
            f"labels {', '.join(missing)} have no {field!r} in the scan results; judge the "
            "folder with `nc-tf detect DIR --norm-source png`, which reads the mask PNGs."
        )
    settings = record.get("settings") or {}
    result = label_verdict(
        entries,
        field,
        rule=rule_of(record, rule),
        threshold=settings.get("attack_succ_threshold"),
        verbose=verbose,
    )
    result["norm_source"] = source
    return result


def png_mask_norms(paths, shape=None, root=None):
    """The L1 norms of mask PNGs, read as the reference's `mad_outlier_detection.py` did.

    Args:
        paths: dict label -> mask PNG path.
        shape: `(H, W)` to resize each mask to (nearest) when it differs.
            Defaults to `None` (as saved).
        root: the folder the PNGs must stay in (`nc_tf.io.check_input_file`).
            Defaults to `None` (each PNG's own folder).

    Returns:
        dict label -> norm (grayscale, float32 / 255, summed).
    """
    from PIL import Image

    norms = {}
    for label, path in paths.items():
        folder = root if root is not None else os.path.dirname(os.path.abspath(path))
        with open_image(path, "mask PNG", folder) as image:
            image = image.convert("L")
            if shape is not None and image.size != (int(shape[1]), int(shape[0])):
                image = image.resize((int(shape[1]), int(shape[0])), Image.NEAREST)
            mask = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        norms[label] = float(np.sum(mask))
    return norms


def detect_dir(scan_dir, verbose=True, norm_source=None, rule=None):
    """The MAD verdict of a scan folder: from `results.json`, else from the mask PNGs.

    Args:
        scan_dir: a folder written by `scan` (or holding the reference
            code's mask PNGs `*_mask_label_N.png`).
        verbose: print the reference report. Defaults to `True`.
        norm_source: `"float"` (the exact sums in `results.json`) or
            `"png"` (the masks read back from their PNGs, the reference's
            measurement). Defaults to `None`: by the scan's preset
            (`norm_source_of`); PNGs for a folder without `results.json`.
        rule: the verdict rule (see `detect`). Defaults to `None` (the
            scan's; the reference's for a folder of PNGs).

    Returns:
        the verdict dict (see `detect`).
    """
    if os.path.exists(os.path.join(scan_dir, RESULTS)):
        record = read_scan_record(scan_dir)
        source = norm_source_of(record, norm_source)
        labels = record["labels"]
        if source == "png" and "partial" not in record and record.get("method") != "gangsweep":
            lacking = [k for k, v in labels.items() if "l1_norm_png" not in v]
            prefix = record["settings"].get("prefix", "nc")
            paths = {k: mask_png_path(scan_dir, prefix, k) for k in lacking}
            gone = [k for k, path in paths.items() if not os.path.exists(path)]
            if gone:
                raise FileNotFoundError(
                    f"{scan_dir} has no mask PNG for label(s) {', '.join(gone)} "
                    f"({os.path.basename(paths[gone[0]])}); use --norm-source float."
                )
            for key, norm in png_mask_norms(paths, root=scan_dir).items():
                labels[key]["l1_norm_png"] = norm
        return detect(record, verbose, source, rule)
    if not os.path.isdir(scan_dir):
        raise FileNotFoundError(f"No such scan folder: {scan_dir}")
    if norm_source == "float":
        raise ValueError(
            f"{scan_dir} has no {RESULTS}, only PNGs; use --norm-source png (the default there)."
        )
    paths = {}
    for name in os.listdir(scan_dir):
        match = re.search(r"mask_label_(\d+)\.png$", name)
        if match:
            paths[int(match.group(1))] = os.path.join(scan_dir, name)
    if not paths:
        raise FileNotFoundError(
            f"{scan_dir} has neither {RESULTS} nor *_mask_label_N.png files; "
            "run `nc-tf scan` first."
        )
    norms = png_mask_norms(paths, root=scan_dir)
    return detect(
        {"labels": {str(k): {"l1_norm_png": v} for k, v in norms.items()}}, verbose, "png", rule
    )


def scan_triggers(scan_dir, labels=None, verbose=False, record=None):
    """The reversed triggers of a scan folder as `injection.Trigger` objects.

    Mitigation stamps these on clean images. Partial-scan keys (`"3->7"`)
    give triggers restricted to their source labels.

    Args:
        scan_dir: a folder written by `scan` or `partial_scan`.
        labels: labels (or job keys) to load. Defaults to `None`: the labels
            the outlier test flags.
        verbose: print the MAD report. Defaults to `False`.
        record: the folder's `results.json` dict, when the caller has read
            it already (`read_scan_record`). Defaults to `None` (read here).

    Returns:
        list of `Trigger` (empty when nothing is flagged).
    """
    record = read_scan_record(scan_dir) if record is None else record
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
