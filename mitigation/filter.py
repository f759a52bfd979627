"""Neural Cleanse input filter (§VI-A): flag inputs that light up the trigger's neurons.

For each reversed trigger, the neurons of one layer (default: the second to
last) are ranked by how much more they fire on stamped inputs than on clean
ones; the input's score is the mean activation of the top 1%. The threshold
is the score that clean inputs exceed at the requested false-positive rate.
An input is flagged when any trigger's score exceeds its threshold.

Example:

>>> flt = fit_filter(model, x_clean, triggers)              # doctest: +SKIP
>>> labels, flagged = flt.predict(x_new)                     # doctest: +SKIP
>>> flt.save("filter.json")                                   # doctest: +SKIP
"""

import numpy as np

from mitigation.activations import layer_activations, rank_neurons, resolve_layer
from nc_tf import io
from nc_tf.metrics import predict_labels


class InputFilter:
    """A calibrated input filter: per-trigger neuron profile and threshold.

    Build one with `fit_filter`; reload one with `InputFilter.load(path,
    model)`.

    Args:
        model: the (unmodified) Keras classifier.
        layer: name of the profiled layer.
        profiles: list of dicts, one per trigger: `target`, `neurons` (unit
            ids), `threshold`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        fpr: the false-positive rate the thresholds were set for. Defaults
            to `0.05`.
    """

    def __init__(self, model, layer, profiles, intensity="raw", fpr=0.05):
        self.model, self.layer, self.profiles = model, layer, list(profiles)
        self.intensity, self.fpr = intensity, float(fpr)

    def scores(self, x, batch_size=256):
        """Per-input score of every profile, shape `(N, n_profiles)`."""
        act = layer_activations(
            self.model, self.layer, np.asarray(x), self.intensity, batch_size=batch_size
        )
        return np.stack([act[:, p["neurons"]].mean(1) for p in self.profiles], axis=1)

    def flag(self, x, batch_size=256):
        """Boolean per input: does any profile's score exceed its threshold?"""
        thresholds = np.array([p["threshold"] for p in self.profiles], np.float32)
        return np.any(self.scores(x, batch_size) > thresholds, axis=1)

    def predict(self, x, batch_size=256):
        """`(labels, flagged)`: the model's predicted labels and the filter's flags."""
        return predict_labels(self.model, x, self.intensity, batch_size), self.flag(x, batch_size)

    def save(self, path):
        """Writes the calibration (layer, neurons, thresholds) as JSON."""
        io.write_json(
            path,
            {
                "layer": self.layer,
                "intensity": self.intensity,
                "fpr": self.fpr,
                "profiles": self.profiles,
            },
        )
        return path

    @classmethod
    def load(cls, path, model):
        """Rebuilds a filter from `save`'s JSON and the model it was fitted on."""
        cfg = io.read_json(path, "filter calibration")
        return cls(model, cfg["layer"], cfg["profiles"], cfg["intensity"], cfg["fpr"])


def fit_filter(
    model, x_clean, triggers, layer=None, top_ratio=0.01, fpr=0.05, intensity="raw", batch_size=256
):
    """Fits the Neural Cleanse input filter on clean images and reversed triggers.

    Args:
        model: a Keras classifier.
        x_clean: raw clean images for ranking and calibration (held-out
            data, not the images you will filter).
        triggers: objects with `.apply(images)` and `.target` (reversed
            triggers from a scan, see `mitigation.scan_triggers`).
        layer: profiled layer (see `resolve_layer`). Defaults to `None`:
            the second to last layer, as in the paper.
        top_ratio: fraction of the layer's neurons in a profile (at least
            one). Defaults to `0.01` (the paper's top 1%).
        fpr: false-positive rate on clean inputs that sets each threshold.
            Defaults to `0.05`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        batch_size: images per forward pass. Defaults to `256`.

    Returns:
        an `InputFilter`.
    """
    if not triggers:
        raise ValueError(
            "fit_filter needs at least one trigger; pass the reversed triggers of "
            "the flagged labels (mitigation.scan_triggers(scan_dir))."
        )
    if not 0 < top_ratio <= 1:
        raise ValueError(f"top_ratio must lie in (0, 1], got {top_ratio}.")
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}.")
    x_clean = np.asarray(x_clean)
    name = resolve_layer(model, layer).name
    clean_act = layer_activations(model, name, x_clean, intensity, batch_size=batch_size)
    k = max(1, int(round(top_ratio * clean_act.shape[1])))
    profiles = []
    for trig in triggers:
        order, _ = rank_neurons(model, name, x_clean, trig.apply(x_clean), intensity, batch_size)
        neurons = [int(u) for u in order[:k]]
        clean_scores = clean_act[:, neurons].mean(1)
        threshold = float(np.quantile(clean_scores, 1.0 - fpr))
        profiles.append({"target": int(trig.target), "neurons": neurons, "threshold": threshold})
    return InputFilter(model, name, profiles, intensity, fpr)


def filter_curve(flt, x_clean, x_stamped, fprs=(0.01, 0.02, 0.05, 0.1, 0.2), batch_size=256):
    """False-negative rate at each false-positive rate, thresholds re-set per rate.

    Args:
        flt: a fitted `InputFilter` (its neuron profiles are reused).
        x_clean: raw clean images (held out from fitting).
        x_stamped: raw images carrying a trigger (the original one when a
            benchmark knows it).
        fprs: false-positive rates to evaluate. Defaults to
            `(0.01, 0.02, 0.05, 0.1, 0.2)`.
        batch_size: images per forward pass. Defaults to `256`.

    Returns:
        list of dicts `{"fpr_target", "fpr", "fnr"}`.
    """
    clean = flt.scores(x_clean, batch_size)
    stamped = flt.scores(x_stamped, batch_size)
    rows = []
    for rate in fprs:
        thr = np.quantile(clean, 1.0 - rate, axis=0)
        rows.append(
            {
                "fpr_target": float(rate),
                "fpr": float(np.mean(np.any(clean > thr, 1))),
                "fnr": float(np.mean(~np.any(stamped > thr, 1))),
            }
        )
    return rows


def plot_filter_curve(rows, path):
    """Writes the FNR-vs-FPR curve of `filter_curve` as a PNG."""
    from mitigation.plots import line_plot

    return line_plot(
        path,
        [r["fpr"] for r in rows],
        {"FNR": [r["fnr"] for r in rows]},
        "false-positive rate (clean inputs flagged)",
        "false-negative rate (stamped inputs missed)",
        "Neural Cleanse input filter",
    )
