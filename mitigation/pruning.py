"""Neural Cleanse neuron pruning (§VI-B): silence the neurons the trigger drives.

Neurons of one layer (dense units, or the channels of the last conv layer)
are ranked by their activation gap between inputs stamped with the reversed
trigger(s) and clean inputs, and silenced highest first until the reversed
trigger stops working (its attack success falls to `stop_asr`) or a fixed
ratio is reached. Silencing zeroes the weights producing a neuron, so the
result is an ordinary Keras model that saves and reloads like any other.

Use `prune` for a pruned copy and its accuracy/attack-success curve, or the
`NeuronPruning` callback to prune the model being trained at the start of a
`model.fit` and keep those neurons silent while it fine-tunes.

Example:

>>> pruned, report = prune(model, x_val, y_val, triggers)    # doctest: +SKIP
>>> report["chosen"]["ratio"], report["chosen"]["accuracy"]  # doctest: +SKIP
"""

import keras
import numpy as np

from mitigation.activations import prune_units, rank_neurons, resolve_layer
from nc_tf.datasets import labels_to_int
from nc_tf.metrics import accuracy, attack_success_rate, evaluate_backdoor, predict_labels
from nc_tf.models import copy_model


def prune(
    model,
    x,
    y,
    triggers,
    layer=None,
    stop_asr=0.01,
    ratio=None,
    max_ratio=0.3,
    step=0.01,
    intensity="raw",
    triggers_eval=(),
    batch_size=256,
):
    """A pruned copy of `model` and the accuracy / attack success per pruning ratio.

    Args:
        model: a Keras classifier (not modified).
        x: raw clean images (ranking, and the accuracy/attack success
            measured at each step; use held-out data).
        y: their integer labels.
        triggers: the reversed triggers (`.apply`, `.target`) whose neurons
            are pruned.
        layer: the pruned layer (see `resolve_layer`): `"penultimate"` or
            `"last_conv"` or a name. Defaults to `None` (`"penultimate"`, the
            paper's second to last layer).
        stop_asr: stop once every reversed trigger's attack success is at or
            below this. Defaults to `0.01`.
        ratio: prune exactly this fraction of the layer's neurons instead of
            using `stop_asr`. Defaults to `None`.
        max_ratio: never prune more than this fraction. Defaults to `0.3`.
        step: fraction of the neurons pruned between two measurements (at
            least one neuron). Defaults to `0.01`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        triggers_eval: extra triggers (e.g. the original one, when a
            benchmark knows it) whose attack success is reported at each
            step. Defaults to `()`.
        batch_size: images per forward pass. Defaults to `256`.

    Returns:
        `(pruned_model, report)`; `report` has `curve` (one row per step:
        `ratio`, `pruned`, `accuracy`, `asr_reversed`, `asr_eval`),
        `chosen` (the row of the returned model), `neurons` (pruned ids, in
        order) and `settings`.
    """
    pruned = copy_model(model)
    report = prune_in_place(
        pruned,
        x,
        y,
        triggers,
        layer,
        stop_asr,
        ratio,
        max_ratio,
        step,
        intensity,
        triggers_eval,
        batch_size,
    )
    return pruned, report


def prune_in_place(
    model,
    x,
    y,
    triggers,
    layer=None,
    stop_asr=0.01,
    ratio=None,
    max_ratio=0.3,
    step=0.01,
    intensity="raw",
    triggers_eval=(),
    batch_size=256,
):
    """`prune`, but on `model` itself (used by `NeuronPruning`); returns the report."""
    x, y = np.asarray(x), labels_to_int(y)
    if not triggers:
        raise ValueError(
            "prune needs the reversed triggers of the flagged labels "
            "(mitigation.scan_triggers(scan_dir)); none were given."
        )
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels.")
    for name, value in (("max_ratio", max_ratio), ("step", step)):
        if not 0 < value <= 1:
            raise ValueError(f"{name} must lie in (0, 1], got {value}.")
    if ratio is not None and not 0 <= ratio <= 1:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}.")
    target = resolve_layer(model, layer)
    stamped = [(t, t.apply(x)) for t in triggers]
    gaps = [rank_neurons(model, target, x, xs, intensity, batch_size)[1] for _, xs in stamped]
    order = np.argsort(-np.mean(gaps, axis=0), kind="stable")
    n_units = len(order)
    limit = int(round((ratio if ratio is not None else max_ratio) * n_units))
    inc = max(1, int(round(step * n_units)))

    def measure(count):
        rev = [
            attack_success_rate(predict_labels(model, xs, intensity, batch_size), y, t.target)
            for t, xs in stamped
        ]
        ev = evaluate_backdoor(model, x, y, triggers_eval, intensity, batch_size)
        return {
            "ratio": count / n_units,
            "pruned": count,
            "accuracy": accuracy(predict_labels(model, x, intensity, batch_size), y),
            "asr_reversed": rev,
            "asr_eval": [p["attack_success_rate"] for p in ev["per_trigger"]],
        }

    curve = [measure(0)]
    count = 0
    while count < limit:
        if ratio is None and max(curve[-1]["asr_reversed"]) <= stop_asr:
            break
        new = min(limit, count + inc)
        prune_units(model, target, order[count:new])
        count = new
        curve.append(measure(count))
    return {
        "curve": curve,
        "chosen": curve[-1],
        "neurons": [int(u) for u in order[:count]],
        "layer": target.name,
        "n_units": n_units,
        "settings": {
            "stop_asr": stop_asr,
            "ratio": ratio,
            "max_ratio": max_ratio,
            "step": step,
            "intensity": intensity,
        },
    }


class NeuronPruning(keras.callbacks.Callback):
    """Prunes the trained model's trigger neurons at the start of `fit`, keeps them silent.

    At `on_train_begin` it runs `prune_in_place` on the model being trained
    (so later epochs fine-tune the pruned network) and after every training
    batch re-zeroes the pruned neurons' weights, which gradient updates
    would otherwise revive. `report` holds the pruning curve afterwards.

    Args:
        x: raw clean images for ranking and the stop test.
        y: their integer labels.
        triggers: reversed triggers (`.apply`, `.target`).
        intensity: the model's intensity range. Defaults to `"raw"`.
        **kwargs: any other `prune` argument (`layer`, `stop_asr`, `ratio`,
            `max_ratio`, `step`, `triggers_eval`).

    Example:

    >>> cb = NeuronPruning(x_val, y_val, triggers, layer="last_conv")  # doctest: +SKIP
    >>> model.fit(x_train, y_train, epochs=1, callbacks=[cb])          # doctest: +SKIP
    """

    def __init__(self, x, y, triggers, intensity="raw", **kwargs):
        super().__init__()
        self.x, self.y, self.triggers, self.intensity, self.kwargs = (
            x,
            y,
            triggers,
            intensity,
            kwargs,
        )
        self.report = None

    def on_train_begin(self, logs=None):
        if self.report is None:
            self.report = prune_in_place(
                self.model, self.x, self.y, self.triggers, intensity=self.intensity, **self.kwargs
            )

    def on_train_batch_end(self, batch, logs=None):
        prune_units(self.model, self.report["layer"], self.report["neurons"])


def plot_pruning_curve(report, path):
    """Writes accuracy and attack success against the pruned ratio as a PNG."""
    from mitigation.plots import line_plot

    curve = report["curve"]
    series = {"clean accuracy": [r["accuracy"] for r in curve]}
    for i in range(len(curve[0]["asr_reversed"])):
        series[f"ASR reversed #{i}"] = [r["asr_reversed"][i] for r in curve]
    for i in range(len(curve[0]["asr_eval"])):
        series[f"ASR original #{i}"] = [r["asr_eval"][i] for r in curve]
    return line_plot(
        path,
        [r["ratio"] for r in curve],
        series,
        f"fraction of neurons pruned ({report['layer']})",
        "rate",
        "Neural Cleanse neuron pruning",
    )
