"""The verdict of a Neural Cleanse label scan: which labels count, and which rule flags.

The reference `mad_outlier_detection.py` takes the median and the MAD of
every label's raw L1 norm. `outlier_detection` keeps that test and its
printout exactly; it is what published numbers are compared with. The
default verdict makes two changes to it:

- the median and the MAD are taken over the labels whose reversed trigger
  reached the success threshold ("reversed") only: a label whose trigger
  fell short has a norm below what the bar needs, so it would drag the
  median down. Every label the optimiser flipped at all (`found`) is still
  tested against them, since a backdoor that fires on fewer inputs than
  the threshold still has a small trigger; a label never flipped is not
  tested. Both kinds are listed;
- the test runs on log norms (`"log_mad"`). Clean labels' norms spread by
  ratios, not by differences: a model whose clean norms run from 8 to 31
  has a MAD so wide on raw norms that a trigger 8x smaller than the median
  scores an anomaly index under 2, while on log norms a label twice as
  small as the median is as far out whatever the median is.

`RULES` maps each rule to its function; a scan records its rule in its
settings (`"reference"` for the reference preset, `"log_mad"` for the
default), and `nc-tf detect --rule` judges a folder by another.
"""

import numpy as np

from nc_tf.outlier import ANOMALY_THRESHOLD, median_mad, outlier_detection, robust_z

# How far under the success threshold (on the whole scan data) a kept trigger
# may land and still count as reversed. The optimiser judges success on each
# step's `nb_sample` images and keeps the smallest passing trigger, so the
# kept one sits a few sampling errors above its true success rate; 0.1 is
# about five standard errors of a 128-image estimate at 0.95.
REVERSED_TOLERANCE = 0.1


def log_mad_outliers(
    l1_norm_list, labels, threshold=ANOMALY_THRESHOLD, reference=None, mad_floor=0.0
):
    """The MAD outlier test on log L1 norms.

    Args:
        l1_norm_list: positive L1 norms, one per label.
        labels: the label of each norm.
        threshold: anomaly index above which a label smaller than the
            median is flagged. Defaults to `2.0`.
        reference: the labels whose norms set the median and the MAD (at
            least 3). Defaults to `None` (all).
        mad_floor: the least MAD of the log norms the index divides by: a
            MAD of ten labels is itself noisy, and when the middle labels
            happen to agree closely it is so small that any label a little
            below them stands out. Defaults to `0.0`.

    Returns:
        dict with `median` (the median norm, i.e. `exp` of the median log
        norm), `mad` (MAD of the log norms, with the constant 1.4826),
        `anomaly_index` (of the smallest norm), `flagged` (list of
        `(label, l1_norm)` sorted by norm), `per_label` (label -> signed
        index, positive below the median) and `threshold`.

    Example:

    >>> r = log_mad_outliers([2.2, 13.8, 17.0, 18.0, 19.0, 19.4, 21.0, 24.0, 27.0, 31.0], range(10))
    >>> r["flagged"], round(r["anomaly_index"], 2)
    ([(0, 2.2)], 8.47)
    """
    norms = np.asarray(l1_norm_list, dtype=np.float64).reshape(-1)
    labels = list(labels)
    if len(norms) != len(labels):
        raise ValueError(f"{len(norms)} norms but {len(labels)} labels.")
    if not np.all(np.isfinite(norms)):
        raise ValueError("Norms contain NaN or inf; rerun the scan for those labels.")
    logs = np.log(np.maximum(norms, 1e-6))
    base = logs if reference is None else logs[[labels.index(k) for k in reference]]
    if len(base) < 3:
        raise ValueError(f"The outlier test needs at least 3 labels, got {len(base)}.")
    median, mad = median_mad(base)
    mad = max(mad, float(mad_floor))
    z = robust_z(logs, median, mad)
    flagged = sorted(
        ((labels[i], float(norms[i])) for i in range(len(norms)) if -z[i] > threshold),
        key=lambda item: item[1],
    )
    return {
        "median": float(np.exp(median)),
        "mad": mad,
        "anomaly_index": float(max(0.0, -z[int(np.argmin(norms))])),
        "flagged": flagged,
        "per_label": {labels[i]: float(-z[i]) for i in range(len(norms))},
        "threshold": float(threshold),
        "mad_floor": float(mad_floor),
    }


# The log rule's anomaly threshold and MAD floor, chosen on the development
# split of bench/zoo. On log norms the lower tail is as long as the upper one,
# so the smallest clean label lies further out than on raw norms, where the
# tail below the median is short: the threshold is higher than the
# reference's 2. The floor (in natural-log units: 0.2 is a spread of about
# 20%) keeps a MAD of closely agreeing middle labels from making a label a
# little below them an outlier.
LOG_MAD_THRESHOLD = 3.0
LOG_MAD_FLOOR = 0.2

# rule name -> (test, what it is, its keyword arguments); the reference rule
# is `outlier_detection` itself
RULES = {
    "reference": (
        None,
        "MAD of raw norms, every label (the reference)",
        {"threshold": ANOMALY_THRESHOLD},
    ),
    "log_mad": (
        log_mad_outliers,
        "MAD of log norms; median and MAD of the reversed labels",
        {"threshold": LOG_MAD_THRESHOLD, "mad_floor": LOG_MAD_FLOOR},
    ),
}


def check_rule(rule):
    """Returns `rule` if it names a verdict rule, else raises ValueError."""
    if rule not in RULES:
        raise ValueError(f"Unknown verdict rule {rule!r}; choose one of {sorted(RULES)}.")
    return rule


def is_flipped(entry):
    """True unless the optimiser never reached the success threshold for the label (`found`)."""
    return entry.get("found") is not False


def is_reversed(entry, threshold):
    """True if a label's kept trigger reached the success threshold (see `REVERSED_TOLERANCE`).

    Args:
        entry: the label's `results.json` entry (`found`,
            `attack_success_rate`; its own `attack_succ_threshold` if it
            has one).
        threshold: the scan's success threshold.

    Returns:
        bool. An entry without these fields (a folder of mask PNGs only)
        counts as reversed.
    """
    if entry.get("found") is False:
        return False
    asr = entry.get("attack_success_rate")
    bar = entry.get("attack_succ_threshold", threshold)
    return asr is None or bar is None or asr >= bar - REVERSED_TOLERANCE


def label_verdict(entries, field, rule="log_mad", threshold=None, verbose=True):
    """The verdict of a label scan: the reference MAD report, then the rule's flags.

    The reference report (median, MAD, anomaly index and flagged labels of
    every label's raw norm) is printed and returned under `reference`
    whatever the rule. With `rule="reference"` the verdict is that report.

    Args:
        entries: dict label (int) -> its `results.json` entry.
        field: the entry field holding the norm (`"l1_norm"` or
            `"l1_norm_png"`).
        rule: a key of `RULES`. Defaults to `"log_mad"`.
        threshold: the scan's attack success threshold, for `is_reversed`.
            Defaults to `None` (each entry's `found` alone decides).
        verbose: print the reference report and, for another rule, one
            line with the rule's verdict. Defaults to `True`.

    Returns:
        the verdict dict: `rule`, `median`, `mad`, `anomaly_index`,
        `flagged` (`[label, norm]` pairs), `per_label`, `threshold`,
        `not_reversed` (labels outside the median and the MAD),
        `not_flipped` (labels not tested), `reversed_count` and
        `reference` (the reference test's dict).
    """
    test, _, options = RULES[check_rule(rule)]
    labels = sorted(entries)
    reference = outlier_detection([entries[k][field] for k in labels], labels, verbose=verbose)
    reference["flagged"] = [[k, n] for k, n in reference["flagged"]]
    reference["per_label"] = {str(k): v for k, v in reference["per_label"].items()}
    tested = [k for k in labels if is_flipped(entries[k])]
    counted = [k for k in tested if is_reversed(entries[k], threshold)]
    if rule == "reference":
        result = dict(reference)
    elif len(counted) >= 3:
        result = test([entries[k][field] for k in tested], tested, reference=counted, **options)
        result["flagged"] = [[k, n] for k, n in result["flagged"]]
        result["per_label"] = {str(k): v for k, v in result["per_label"].items()}
    else:
        result = dict(median=None, mad=None, anomaly_index=0.0, flagged=[], per_label={})
        result["threshold"] = options["threshold"]
        result["note"] = f"only {len(counted)} label(s) reversed: too few to judge"
    result.update(
        rule=rule,
        not_reversed=[k for k in labels if k not in counted],
        not_flipped=[k for k in labels if k not in tested],
        reversed_count=len(counted),
        reference=dict(reference),
    )
    if verbose and rule != "reference":
        print(verdict_line(result))
    return result


def verdict_line(result):
    """The one line `nc-tf detect` prints for a rule other than the reference's."""
    what = RULES[result["rule"]][1]
    left = result["not_reversed"]
    out = f"verdict ({result['rule']}: {what}; {result['reversed_count']} reversed"
    out += f"; not reversed: {', '.join(map(str, left))}" if left else ""
    never = result.get("not_flipped")
    out += f"; never flipped, not tested: {', '.join(map(str, never))})" if never else ")"
    if result.get("note"):
        return out + f": {result['note']}"
    flagged = ", ".join(f"{k}: {n:f}" for k, n in result["flagged"]) or "none"
    return out + f": anomaly index {result['anomaly_index']:f}, flagged label list: {flagged}"
