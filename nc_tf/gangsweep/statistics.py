"""GangSweep's per-label statistics and its outlier test.

A backdoor shows up as a generator whose perturbation is *persistent* (the
perturbation made for one image still sends other images of the same source
class to the label, for >= 90% of them) and *an outlier* among the labels in
how it shifts the logits: a small shift variance V and a large shift
distance D (z-scores with median and MAD).
"""

import numpy as np

from nc_tf.datasets import check_images, labels_to_int
from nc_tf.gangsweep.generator import (
    batched_logits,
    check_target,
    generate,
    logits_function,
    stamp,
)
from nc_tf.outlier import median_mad, robust_z
from nc_tf.preprocess import check_intensity
from nc_tf.validation import check_scalar

PERSISTENCE_THRESHOLD = 0.9
AI_THRESHOLD = 2.0
# Anomaly statistics: the paper's (Z_V + Z_D) / 2, or the target margin's z-score (nc-tf).
STATISTICS = ("paper", "margin")


def label_statistics(model, generator, x, y, target, intensity="raw", seed=0, logit_fn=None):
    """Persistence and logit-shift statistics of one label's generator.

    Measured on the images whose label is not `target`, with
    `x' = x + G(x)` (clipped) and `phi` the logits:

    - `persistence`: within every source class s, each image is stamped
      with the perturbation generated for *another* image of s (a random
      derangement); the fraction of stamped images classified as `target`,
      averaged over the source classes with at least two images;
    - `V`: the variance over images of the logit shift `phi(x') - phi(x)`,
      per logit, averaged over the logits (small for a backdoor: its
      trigger moves every image to the same place);
    - `D`: `max phi(x') - max phi(x)`, averaged over images (large for a
      backdoor);
    - `V_logits`: the other reading of "shift variance", the variance over
      the logit vector of each image's shift, averaged over images (a
      diagnostic: recorded, not used by the outlier test; on the tiny
      test models it did not single out the backdoor label, `V` did);
    - `V_relative`: `V` divided by the mean squared shift, in [0, 1]: the
      share of the shift that the mean shift leaves unexplained, free of
      the shift's size (a diagnostic, not used by the outlier test: on the
      MNIST benchmark model it singled out the backdoor label as small, on
      the tiny test model as large; 0 when nothing moves);
    - `margin`: the target margin `phi_t(x') - max_{i != t} phi_i(x')`,
      averaged over images (an nc-tf addition, the statistic of
      `gangsweep_outliers(statistic="margin")`): how far past the decision
      boundary the perturbation carries the images. With `k = 0` the loss
      stops pulling at the boundary, so an ordinary adversarial generator
      leaves its images just across it (margin near 0), while a trigger
      overshoots;
    - `attack_success_rate`: fraction of `x'` classified as `target`;
    - `l2`: mean per-image L2 norm of `G(x)` in [0, 1] units.

    Args:
        model: the Keras classifier under test.
        generator: the label's generator (see `train_generator`).
        x: clean raw images in [0, 255].
        y: their integer labels.
        target: the generator's target label.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: seeds the derangements. Defaults to `0`.
        logit_fn: a `logits_function(model)` to reuse. Defaults to `None`
            (built here).

    Returns:
        dict with `persistence`, `persistence_by_source` (source -> fraction),
        `V`, `D`, `V_logits`, `V_relative`, `margin`, `attack_success_rate`,
        `l2` and `n_images`.

    Example:

    >>> s = label_statistics(model, gen, x_test, y_test, 7)  # doctest: +SKIP
    >>> s["persistence"] >= 0.9  # doctest: +SKIP
    True
    """
    check_intensity(intensity)
    x = check_images(x, "statistics data")
    y = labels_to_int(y)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels.")
    target = check_target(model, target)
    keep = y != target
    if not np.any(keep):
        raise ValueError(
            f"Every image has label {target}; label statistics need images of other classes."
        )
    x, y = x[keep], y[keep]
    logit_fn = logit_fn or logits_function(model)
    pert = generate(generator, x)
    adv = stamp(x, pert)
    z, z_adv = batched_logits(logit_fn, x, intensity), batched_logits(logit_fn, adv, intensity)
    shift = z_adv - z
    rng = np.random.default_rng([int(seed), int(target), 7])
    by_source = {}
    for source in np.unique(y):
        idx = np.flatnonzero(y == source)
        if len(idx) < 2:
            continue
        order = rng.permutation(idx)
        donors = np.roll(order, 1)  # every image gets another image's perturbation
        stamped = stamp(x[order], pert[donors])
        pred = np.argmax(batched_logits(logit_fn, stamped, intensity), axis=1)
        by_source[str(int(source))] = float(np.mean(pred == target))
    others = np.delete(z_adv, target, axis=1)
    margin = z_adv[:, target] - np.max(others, axis=1)
    variance = float(np.mean(np.var(shift, axis=0)))
    mean_square = float(np.mean(np.square(shift)))
    return {
        "persistence": float(np.mean(list(by_source.values()))) if by_source else 0.0,
        "persistence_by_source": by_source,
        "V": variance,
        "V_relative": variance / mean_square if mean_square > 0 else 0.0,
        "V_logits": float(np.mean(np.var(shift, axis=1))),
        "D": float(np.mean(np.max(z_adv, axis=1) - np.max(z, axis=1))),
        "margin": float(np.mean(margin)),
        "attack_success_rate": float(np.mean(np.argmax(z_adv, axis=1) == target)),
        "l2": float(np.mean(np.sqrt(np.sum(np.square(pert.reshape(len(pert), -1)), axis=1)))),
        "n_images": int(len(x)),
    }


def check_persistence_threshold(value):
    return check_scalar(
        value,
        "persistence_threshold",
        low=0,
        high=1,
        include="right",
        what="a fraction",
        hint=" (the paper: 0.9)",
    )


def check_statistic(statistic):
    if statistic not in STATISTICS:
        raise ValueError(f"Unknown statistic {statistic!r}; use one of {list(STATISTICS)}.")


def _robust_z(values, sign):
    """`sign * (values - median) / MAD` (MAD with c = 1.4826; MAD 0 gives 0 or +-inf)."""
    median, mad = median_mad(values)
    return sign * robust_z(values, median, mad), median, mad


def gangsweep_outliers(
    stats_by_label,
    persistence_threshold=PERSISTENCE_THRESHOLD,
    threshold=AI_THRESHOLD,
    statistic="paper",
    verbose=True,
):
    """GangSweep's Algorithm 1: persistence gate, then median/MAD z-scores of V and D.

    `Z_V = (median(V) - V_t) / MAD(V)` (a small V is suspicious),
    `Z_D = (D_t - median(D)) / MAD(D)` (a large D is suspicious),
    `AI = (Z_V + Z_D) / 2`, MAD with the consistency constant 1.4826 and
    medians over all given labels. A label is flagged when its persistence
    is at least `persistence_threshold` and its AI exceeds `threshold`. The
    model's anomaly index is the largest AI among the persistent labels;
    when no label persists, the model is clean and its anomaly index is 0.

    `statistic="margin"` (an nc-tf addition) keeps the persistence gate and
    the threshold but takes `AI = Z_M = (margin_t - median) / MAD`, the
    z-score of the target margin (see `label_statistics`). On our MNIST
    models the paper's AI did not flag a backdoor whose generator persisted
    (V is large, not small, for the backdoor label), while the margin did
    (docs/gangsweep.md). `Z_M` is reported with either statistic
    when every label has a `margin`.

    Args:
        stats_by_label: label -> dict with `persistence`, `V` and `D` (and
            `margin` for `statistic="margin"`), e.g. `label_statistics`
            results or a scan's `labels`; at least 3.
        persistence_threshold: persistence a label needs. Defaults to `0.9`.
        threshold: anomaly index above which a persistent label is flagged.
            Defaults to `2.0`.
        statistic: `"paper"` (`(Z_V + Z_D) / 2`) or `"margin"` (`Z_M`).
            Defaults to `"paper"`.
        verbose: print a short report. Defaults to `True`.

    Returns:
        dict with `per_label` (label -> `Z_V`, `Z_D`, `Z_M` (or `None`),
        `AI`, `persistence`), `flagged` (list of `[label, AI]`, AI
        descending), `persistent` (labels passing the gate),
        `anomaly_index`, `infected`, `statistic`, `other_statistic` (the
        other statistic's `anomaly_index` and `flagged`, or `None` without
        margins), the medians and MADs of V, D (and the margin) and both
        thresholds.

    Example:

    >>> stats = {t: {"persistence": 0.2, "V": 5.0 + t % 3, "D": 1.0 + t % 2} for t in range(9)}
    >>> stats[9] = {"persistence": 0.97, "V": 0.5, "D": 9.0}
    >>> gangsweep_outliers(stats, verbose=False)["flagged"][0][0]
    9
    """
    check_statistic(statistic)
    persistence_threshold = check_persistence_threshold(persistence_threshold)
    labels = sorted(stats_by_label, key=lambda v: int(v))
    if len(labels) < 3:
        raise ValueError(f"GangSweep's MAD test needs at least 3 labels, got {len(labels)}.")
    v = np.asarray([stats_by_label[t]["V"] for t in labels], np.float64)
    d = np.asarray([stats_by_label[t]["D"] for t in labels], np.float64)
    p = np.asarray([stats_by_label[t]["persistence"] for t in labels], np.float64)
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(d))):
        raise ValueError("V or D contains NaN or inf; rerun the scan for those labels.")
    z_v, median_v, mad_v = _robust_z(v, -1.0)
    z_d, median_d, mad_d = _robust_z(d, 1.0)
    z_m, median_m, mad_m = None, None, None
    missing = [int(t) for t in labels if "margin" not in stats_by_label[t]]
    if not missing:
        m = np.asarray([stats_by_label[t]["margin"] for t in labels], np.float64)
        z_m, median_m, mad_m = _robust_z(m, 1.0)
    elif statistic == "margin":
        raise ValueError(
            f"Labels {missing} have no `margin` (scanned before nc-tf recorded it); "
            "rerun `gangsweep_scan` on the scan folder, which adds it from the "
            "saved generators, or use statistic='paper'."
        )
    persistent = p >= persistence_threshold

    def verdict(ai):
        flagged = sorted(
            (
                [int(t), float(ai[i])]
                for i, t in enumerate(labels)
                if persistent[i] and ai[i] > threshold
            ),
            key=lambda item: -item[1],
        )
        return flagged, float(np.max(ai[persistent])) if np.any(persistent) else 0.0

    indices = {"paper": (z_v + z_d) / 2.0, "margin": z_m}
    ai = indices[statistic]
    per_label = {
        int(t): {
            "Z_V": float(z_v[i]),
            "Z_D": float(z_d[i]),
            "Z_M": None if z_m is None else float(z_m[i]),
            "AI": float(ai[i]),
            "persistence": float(p[i]),
        }
        for i, t in enumerate(labels)
    }
    flagged, anomaly_index = verdict(ai)
    other = "margin" if statistic == "paper" else "paper"
    other_verdict = None
    if indices[other] is not None:
        other_flagged, other_index = verdict(indices[other])
        other_verdict = {"statistic": other, "anomaly_index": other_index, "flagged": other_flagged}
    result = {
        "per_label": per_label,
        "flagged": flagged,
        "persistent": [int(t) for i, t in enumerate(labels) if persistent[i]],
        "anomaly_index": anomaly_index,
        "infected": bool(flagged),
        "statistic": statistic,
        "other_statistic": other_verdict,
        "median_V": median_v,
        "mad_V": mad_v,
        "median_D": median_d,
        "mad_D": mad_d,
        "median_margin": median_m,
        "mad_margin": mad_m,
        "persistence_threshold": float(persistence_threshold),
        "threshold": float(threshold),
    }
    if verbose:
        if statistic == "paper":
            print(
                f"median V: {median_v:f}, MAD V: {mad_v:f}; median D: {median_d:f}, "
                f"MAD D: {mad_d:f}"
            )
        else:
            print(f"median margin: {median_m:f}, MAD margin: {mad_m:f}")
        print(
            "persistent labels (>= {:.0%}): {}".format(
                persistence_threshold, ", ".join(str(t) for t in result["persistent"]) or "none"
            )
        )
        print(f"anomaly index ({statistic}): {anomaly_index:f}")
        print("flagged label list: " + ", ".join(f"{t}: {a:f}" for t, a in flagged))
        if other_verdict and other_verdict["flagged"] != flagged:
            print(
                f"with statistic={other!r}: anomaly index "
                f"{other_verdict['anomaly_index']:f}, flagged: "
                + (", ".join(f"{t}: {a:f}" for t, a in other_verdict["flagged"]) or "none")
            )
    return result
