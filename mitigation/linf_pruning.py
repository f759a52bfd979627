"""ℓ∞-based neuron pruning (Cheng et al., AdvML'19): silence trigger-excited channels.

Cheng, Xu, Liu, Chen, Zhao and Lin ("Defending against Backdoor Attack on
Deep Neural Networks") observe that a backdoor trigger biases the activation
maps of the last convolutional layer most clearly in their ℓ∞ norm (the peak
of the map) rather than in their ℓ1 or ℓ2 norm: the trigger is small, so it
excites a few positions of a channel strongly. `activation_norms` measures
the four reductions of each channel's map (mean, ℓ1, ℓ2, ℓ∞) on clean inputs
and on inputs stamped with a (reversed or original) trigger, and scores how
well each separates the two; `linf_prune` silences the channels whose ℓ∞
activation on triggered inputs is abnormally high.

The sweep of `linf_prune`:

* the start threshold `T0` is the largest ℓ∞ activation any channel reaches
  on any clean image, so at `T0` only channels that the trigger drives
  beyond everything seen on clean data are pruned;
* thresholds go down linearly, `T0 * (steps - k) / steps` for
  `k = 0 .. steps - 1`;
* at each threshold, the channels whose *mean* ℓ∞ activation over the
  triggered inputs exceeds it are pruned (the mean, not the max, so that a
  single odd image does not condemn a channel); the pruned sets grow as the
  threshold falls;
* the chosen row is, among the unpruned baseline and the thresholds whose
  clean accuracy is at most `max_acc_loss` below the unpruned accuracy, the
  one with the lowest attack success of the triggered inputs, ties going to
  the lowest threshold. Only the defender's triggered inputs steer the
  choice; `triggers_eval` (e.g. the attacker's real trigger) is measured and
  reported but never used to choose.

Pruning zeroes the weights that produce a channel
(`mitigation.activations.prune_units`), so the pruned model saves and
reloads as an ordinary Keras model.
"""

import math
import numbers
import os

import numpy as np

from mitigation.activations import layer_activations, prune_units
from mitigation.fine_pruning import (
    _TOLERANCE,
    _check_count,
    _check_fraction,
    _check_set,
    _check_triggers,
    _resolve,
)
from nc_tf import io
from nc_tf.metrics import attack_success_rate, evaluate_backdoor, predict_labels
from nc_tf.models import copy_model
from nc_tf.preprocess import check_intensity

NORMS = ("mean", "l1", "l2", "linf")
_NORM_LABELS = {"mean": "mean", "l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}
# A channel silent on clean inputs has zero clean spread; its separation is
# measured against this fraction of the largest spread instead.
_SPREAD_FLOOR = 1e-3


def activation_norms(model, inputs, layer="last_conv", intensity="raw", batch_size=256):
    """Per-channel mean, ℓ1, ℓ2 and ℓ∞ of a conv layer's maps, per input set.

    Each image's activation map of each channel (`H' x W'` values) is
    reduced to its mean and to its ℓ1, ℓ2 and ℓ∞ norm. For every input set
    other than `"clean"`, `separation` scores how far that set's activations
    sit above the clean ones: per channel, the gap of the means divided by
    the clean standard deviation (floored at 0.1 % of the largest clean
    standard deviation, so a channel silent on clean inputs gets a large,
    finite score), maximised over channels. The larger, the better the norm
    tells triggered from clean inputs; Cheng et al. find ℓ∞ separates best.

    Args:
        model: a Keras model.
        inputs: dict mapping a name to raw NHWC images in [0, 255], or to a
            trigger (an object with `.apply`, e.g. `injection.Trigger`),
            which is then stamped onto the clean images. Must contain
            `"clean"`; e.g. `{"clean": x, "reversed": x_rev, "original":
            trigger}`.
        layer: a convolutional layer; anything
            `mitigation.activations.resolve_layer` accepts. Defaults to
            `"last_conv"`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        batch_size: images per forward pass. Defaults to `256`.

    Returns:
        dict with `layer` (its name), `channels`, `norms` (`{set: {norm:
        float32 array (N, channels)}}` for the norms `"mean"`, `"l1"`,
        `"l2"`, `"linf"`), `separation` (`{set: {norm: float}}`, sets other
        than `"clean"`) and `best_channel` (`{set: {norm: int}}`, the channel
        where that maximum is reached).

    Example:

    >>> from injection import square_trigger
    >>> t = square_trigger(x.shape[1:], target=7)  # doctest: +SKIP
    >>> r = activation_norms(model, {"clean": x, "original": t})  # doctest: +SKIP
    >>> r["separation"]["original"]  # doctest: +SKIP
    {'mean': 1.2, 'l1': 1.2, 'l2': 1.4, 'linf': 1.9}
    """
    intensity = check_intensity(intensity)
    batch_size = _check_count("batch_size", batch_size, minimum=1)
    if not isinstance(inputs, dict) or "clean" not in inputs:
        raise ValueError(
            "inputs must be a dict with a 'clean' entry of clean images, e.g. "
            "{'clean': x, 'reversed': x_rev, 'original': trigger}."
        )
    target = _conv_layer(model, layer)
    clean, _ = _check_set(model, inputs["clean"], None, "inputs['clean']", "activation_norms")
    sets = {}
    for name, value in inputs.items():
        if name == "clean":
            images = clean
        elif callable(getattr(value, "apply", None)):
            images = value.apply(clean)
        else:
            images, _ = _check_set(model, value, None, f"inputs[{name!r}]", "activation_norms")
        sets[name] = {
            norm: layer_activations(model, target, images, intensity, norm, batch_size)
            for norm in NORMS
        }
    separation, best = {}, {}
    for name, values in sets.items():
        if name == "clean":
            continue
        separation[name], best[name] = {}, {}
        for norm in NORMS:
            score = _separation(sets["clean"][norm], values[norm])
            best[name][norm] = int(np.argmax(score))
            separation[name][norm] = float(score.max())
    return {
        "layer": target.name,
        "channels": int(target.output.shape[-1]),
        "norms": sets,
        "separation": separation,
        "best_channel": best,
    }


def _separation(clean, other):
    """Per channel: (mean of other - mean of clean) / clean standard deviation."""
    spread = clean.std(0)
    floor = _SPREAD_FLOOR * spread.max() if spread.max() > 0 else 1.0
    return (other.mean(0) - clean.mean(0)) / np.maximum(spread, floor)


def linf_prune(
    model,
    x_clean,
    y_clean,
    x_trigger,
    layer="last_conv",
    intensity="raw",
    max_acc_loss=0.05,
    steps=20,
    x_val=None,
    y_val=None,
    y_trigger=None,
    target=None,
    triggers_eval=None,
    batch_size=256,
):
    """Prunes a copy of `model` where triggered inputs peak abnormally (ℓ∞ pruning).

    Runs the threshold sweep described in the module docstring: the start
    threshold is the largest ℓ∞ activation of `layer` on `x_clean`; at each
    of `steps` linearly falling thresholds the channels whose mean ℓ∞
    activation on the triggered inputs exceeds it are pruned, and clean
    accuracy and attack success are recorded. The chosen row keeps the
    accuracy loss within `max_acc_loss` with the lowest attack success of
    the triggered inputs (ties: lowest threshold); if no threshold keeps
    within the budget, nothing is pruned. The model you pass is never
    modified.

    Args:
        model: a built Sequential or functional Keras classifier.
        x_clean: clean raw images, NHWC in [0, 255]; they set the start
            threshold.
        y_clean: their integer labels.
        x_trigger: raw images stamped with the (reversed) trigger, or a
            trigger (an object with `.apply` and `.target`, e.g. built from
            Neural Cleanse's reversed mask and pattern), which is then
            stamped onto `x_clean` (labels: `y_clean`).
        layer: a convolutional layer; anything
            `mitigation.activations.resolve_layer` accepts. Defaults to
            `"last_conv"`, as in Cheng et al.
        intensity: the model's intensity range. Defaults to `"raw"`.
        max_acc_loss: the largest tolerated fall of clean accuracy, an
            absolute fraction in [0, 1] (0.05 = 5 points). Defaults to
            `0.05`.
        steps: number of thresholds in the sweep. Defaults to `20`.
        x_val: clean raw images on which accuracy (and `triggers_eval`) is
            measured. Defaults to `None`, meaning `x_clean`.
        y_val: their labels. Defaults to `None` (`y_clean`).
        y_trigger: labels of the images of `x_trigger` before stamping, so
            that images of the target label are left out of the attack
            success rate. Defaults to `None`: `y_clean` when `x_trigger` is
            a trigger, else every image counts.
        target: the label the triggered inputs are sent to. Defaults to
            `None`, meaning `x_trigger.target`; required when `x_trigger`
            holds images.
        triggers_eval: triggers whose attack success rate is reported at
            every threshold (with `nc_tf.metrics.evaluate_backdoor`), e.g.
            the attacker's real trigger in an experiment. Defaults to `None`
            (none).
        batch_size: images per forward pass. Defaults to `256`.

    Returns:
        `(pruned_model, report)`: a new Keras model with the chosen channels
        silenced, and a JSON-able dict with `baseline` (the unpruned row),
        `sweep` (one row per threshold), `chosen` (the chosen row),
        `channel_linf` (per channel: `clean_mean`, `clean_max`,
        `trigger_mean` of the ℓ∞ activation) and `settings`. A row holds
        `threshold` (None for the baseline), `pruned` (channel ids),
        `n_pruned`, `accuracy`, `accuracy_loss`, `attack_success_rate` (of
        the triggered inputs) and `per_trigger` (one rate per trigger of
        `triggers_eval`).

    Example:

    >>> pruned, report = linf_prune(model, x, y, reversed_trigger)  # doctest: +SKIP
    >>> print(format_sweep_table(report))  # doctest: +SKIP
    """
    work = copy_model(model, "linf_prune")
    x_clean, y_clean = _check_set(model, x_clean, y_clean, "x_clean", "linf_prune")
    intensity = check_intensity(intensity)
    max_acc_loss = _check_fraction("max_acc_loss", max_acc_loss)
    steps = _check_count("steps", steps, minimum=1)
    batch_size = _check_count("batch_size", batch_size, minimum=1)
    triggers_eval = _check_triggers(triggers_eval)
    layer = _conv_layer(model, layer)
    if (x_val is None) != (y_val is None):
        raise ValueError("Pass x_val and y_val together, or neither (then x_clean is used).")
    if x_val is None:
        x_val, y_val = x_clean, y_clean
    else:
        x_val, y_val = _check_set(model, x_val, y_val, "x_val", "linf_prune")
    x_trigger, y_trigger, target = _triggered_inputs(
        model, x_trigger, y_trigger, target, x_clean, y_clean
    )

    clean_linf = layer_activations(model, layer, x_clean, intensity, "linf", batch_size)
    trigger_linf = layer_activations(model, layer, x_trigger, intensity, "linf", batch_size).mean(0)
    start = float(clean_linf.max())
    if not start > 0:
        raise ValueError(
            f"Layer {layer.name!r} never activates on x_clean (largest ℓ∞ "
            "activation is 0), so there is no threshold to sweep. Pick another "
            "conv layer or check the intensity range."
        )

    def row(threshold, pruned):
        result = evaluate_backdoor(work, x_val, y_val, triggers_eval, intensity, batch_size)
        predicted = predict_labels(work, x_trigger, intensity, batch_size)
        return {
            "threshold": threshold,
            "pruned": sorted(pruned),
            "n_pruned": len(pruned),
            "accuracy": result["accuracy"],
            "accuracy_loss": None,
            "attack_success_rate": attack_success_rate(predicted, y_trigger, target),
            "per_trigger": [p["attack_success_rate"] for p in result["per_trigger"]],
        }

    baseline = row(None, [])
    baseline["accuracy_loss"] = 0.0
    sweep, pruned = [], set()
    for k in range(steps):
        threshold = start * (steps - k) / steps
        units = {int(c) for c in np.flatnonzero(trigger_linf > threshold)}
        new = units - pruned
        if new or not sweep:
            prune_units(work, layer.name, sorted(new))
            pruned |= new
            current = row(threshold, pruned) if pruned else dict(baseline, threshold=threshold)
        else:
            current = dict(sweep[-1], threshold=threshold)
        current["accuracy_loss"] = baseline["accuracy"] - current["accuracy"]
        sweep.append(current)

    feasible = [baseline] + [r for r in sweep if r["accuracy_loss"] <= max_acc_loss + _TOLERANCE]
    chosen = min(feasible, key=_choice_key)
    work.set_weights(model.get_weights())
    prune_units(work, layer.name, chosen["pruned"])

    report = {
        "baseline": baseline,
        "sweep": sweep,
        "chosen": chosen,
        "channel_linf": {
            "clean_mean": [float(v) for v in clean_linf.mean(0)],
            "clean_max": [float(v) for v in clean_linf.max(0)],
            "trigger_mean": [float(v) for v in trigger_linf],
        },
        "settings": {
            "layer": layer.name,
            "channels": int(layer.output.shape[-1]),
            "intensity": intensity,
            "max_acc_loss": max_acc_loss,
            "steps": steps,
            "start_threshold": start,
            "score": "mean over triggered inputs of each channel's ℓ∞ activation",
            "target": target,
            "n_clean": int(len(x_clean)),
            "n_trigger": int(len(x_trigger)),
            "n_val": int(len(x_val)),
        },
    }
    return work, report


def _choice_key(row):
    """Lowest attack success first (NaN last), then the lowest threshold."""
    rate = row["attack_success_rate"]
    threshold = row["threshold"]
    return (
        rate if rate is not None and not math.isnan(rate) else math.inf,
        math.inf if threshold is None else threshold,
    )


def _triggered_inputs(model, x_trigger, y_trigger, target, x_clean, y_clean):
    """Returns `(images, labels before stamping or None, target)`."""
    if callable(getattr(x_trigger, "apply", None)):
        if target is None:
            target = getattr(x_trigger, "target", None)
        images = x_trigger.apply(x_clean)
        labels = y_clean if y_trigger is None else y_trigger
    else:
        images, labels = x_trigger, y_trigger
    if target is None:
        raise ValueError(
            "x_trigger holds images, so the attack target is unknown: pass "
            "target= (the label Neural Cleanse flagged)."
        )
    if isinstance(target, bool) or not isinstance(target, numbers.Integral) or target < 0:
        raise ValueError(f"target must be a non-negative integer label; got {target!r}.")
    images, labels = _check_set(model, images, labels, "x_trigger", "linf_prune")
    if labels is None:
        labels = np.full(len(images), -1, np.int64)  # every image counts
    return images, labels, int(target)


def _conv_layer(model, layer):
    """Resolves `layer` and checks that it has activation maps."""
    target = _resolve(model, layer)
    if len(target.output.shape) != 4:
        raise ValueError(
            f"Layer {target.name!r} outputs rank-{len(target.output.shape)} "
            "tensors; ℓ∞ pruning reduces activation maps, so pick a Conv2D "
            "layer (e.g. layer='last_conv')."
        )
    return target


# --------------------------------------------------------------- reporting
def format_sweep_table(report):
    """Formats a `linf_prune` report as a text table, the chosen row starred.

    Args:
        report: the report returned by `linf_prune`.

    Returns:
        str: one line per row (baseline first) with threshold, pruned
        count, accuracy, accuracy change from the baseline, attack success
        of the triggered inputs and of each evaluated trigger.

    Example:

    >>> row = {"threshold": None, "pruned": [], "n_pruned": 0, "accuracy": 0.9,
    ...        "accuracy_loss": 0.0, "attack_success_rate": 0.98, "per_trigger": []}
    >>> print(format_sweep_table({"baseline": row, "sweep": [], "chosen": row}))
      threshold  pruned  accuracy    Δacc  ASR(x_trigger)
    *         -       0     0.900  +0.000           0.980
    """
    _check_report(report)
    rows = [report["baseline"]] + list(report["sweep"])
    n_eval = max((len(r["per_trigger"]) for r in rows), default=0)
    base = report["baseline"]["accuracy"]
    header = "  threshold  pruned  accuracy    Δacc  ASR(x_trigger)"
    header += "".join(f"  ASR(eval {i})" for i in range(n_eval))
    lines = [header]
    for r in rows:
        mark = "*" if r == report["chosen"] else " "
        threshold = "-" if r["threshold"] is None else f"{r['threshold']:.4g}"
        line = (
            f"{mark} {threshold:>9}  {r['n_pruned']:6d}  {r['accuracy']:8.3f}  "
            f"{r['accuracy'] - base:+.3f}  {r['attack_success_rate']:14.3f}"
        )
        line += "".join(f"  {v:11.3f}" for v in r["per_trigger"])
        lines.append(line)
    return "\n".join(lines)


def _check_report(report):
    if not isinstance(report, dict) or not {"baseline", "sweep", "chosen"} <= set(report):
        raise ValueError(
            "Expected the report returned by linf_prune (a dict with 'baseline', "
            "'sweep' and 'chosen')."
        )


def _new_figure(**kwargs):
    """A matplotlib Figure drawn without pyplot, or an ImportError saying what to do."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Plotting needs matplotlib, which is not installed. Install it "
            "with `pip install matplotlib`."
        ) from error
    return Figure(**kwargs)


def _save(figure, path):
    """Writes the figure as a PNG, creating the folder if needed."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    with io.atomic_file(path, "wb") as f:
        figure.savefig(f, dpi=100, format="png")


def plot_norm_histograms(norms, path):
    """Saves a PNG of histograms of each norm, clean vs triggered, one panel a norm.

    Each panel shows, for the channel that separates best under that norm
    (for the first non-clean input set), the distribution of the channel's
    value over the images of every input set.

    Args:
        norms: the dict returned by `activation_norms`.
        path: where to write the PNG (missing folders are created).

    Returns:
        `path`.

    Example:

    >>> r = activation_norms(model, {"clean": x, "original": t})  # doctest: +SKIP
    >>> plot_norm_histograms(r, "norms.png")  # doctest: +SKIP
    'norms.png'
    """
    if not isinstance(norms, dict) or not {"norms", "separation", "best_channel"} <= set(norms):
        raise ValueError("Expected the dict returned by activation_norms.")
    others = [name for name in norms["norms"] if name != "clean"]
    if not others:
        raise ValueError(
            "activation_norms was run on clean inputs only; add a triggered "
            "set, e.g. inputs={'clean': x, 'reversed': x_rev}."
        )
    figure = _new_figure(figsize=(4 * len(NORMS), 3.4), layout="constrained")
    axes = figure.subplots(1, len(NORMS))
    first = others[0]
    for ax, norm in zip(axes, NORMS):
        channel = norms["best_channel"][first][norm]
        values = {name: sets[norm][:, channel] for name, sets in norms["norms"].items()}
        low = min(float(v.min()) for v in values.values())
        high = max(float(v.max()) for v in values.values())
        bins = np.linspace(low, high if high > low else low + 1.0, 31)
        for name, v in values.items():
            ax.hist(v, bins=bins, alpha=0.55, label=name)
        ax.set_title(
            f"{_NORM_LABELS[norm]}: channel {channel}, sep {norms['separation'][first][norm]:.2f}"
        )
        ax.set_xlabel(f"{_NORM_LABELS[norm]} of activation map")
    axes[0].set_ylabel("images")
    axes[0].legend()
    figure.suptitle(f"Layer {norms['layer']}: clean vs triggered activations")
    _save(figure, path)
    return path


def plot_sweep(report, path):
    """Saves a PNG of accuracy and attack success against the ℓ∞ threshold.

    Args:
        report: the report returned by `linf_prune`.
        path: where to write the PNG (missing folders are created).

    Returns:
        `path`.

    Example:

    >>> _, report = linf_prune(model, x, y, reversed_trigger)  # doctest: +SKIP
    >>> plot_sweep(report, "sweep.png")  # doctest: +SKIP
    'sweep.png'
    """
    _check_report(report)
    rows = report["sweep"]
    if not rows:
        raise ValueError("The report's sweep is empty; nothing to plot.")
    figure = _new_figure(figsize=(7, 4), layout="constrained")
    ax = figure.subplots()
    t = [r["threshold"] for r in rows]
    ax.plot(t, [r["accuracy"] for r in rows], "o-", label="clean accuracy")
    ax.plot(t, [r["attack_success_rate"] for r in rows], "s-", label="ASR (x_trigger)")
    for i in range(len(rows[0]["per_trigger"])):
        ax.plot(t, [r["per_trigger"][i] for r in rows], "^--", label=f"ASR (eval trigger {i})")
    floor = report["baseline"]["accuracy"] - report.get("settings", {}).get("max_acc_loss", 0)
    ax.axhline(floor, color="grey", linestyle=":", label="accuracy budget")
    if report["chosen"]["threshold"] is not None:
        ax.axvline(report["chosen"]["threshold"], color="black", linestyle="--", label="chosen")
    ax.set_xlim(max(t) * 1.02, min(t) * 0.98 if min(t) > 0 else 0)  # falling thresholds
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("ℓ∞ threshold (pruned: mean triggered ℓ∞ above it)")
    ax.set_ylabel("rate")
    counts = ax.twinx()
    counts.step(t, [r["n_pruned"] for r in rows], where="mid", color="tab:grey", alpha=0.5)
    counts.set_ylabel("channels pruned")
    ax.legend(loc="center left", fontsize="small")
    ax.set_title(f"ℓ∞ pruning sweep, layer {report.get('settings', {}).get('layer', '?')}")
    _save(figure, path)
    return path
