"""The evidence inside the network on an `nc-tf report` page: Cheng et al.'s Fig. 2 and Fig. 3.

The Grad-CAM grid (`nc_tf.gradcam.grad_cam`): models {backdoored, vanilla} x
inputs {clean, original trigger, reversed trigger, both} x labels {true,
target}; the activation maps and the l1/l2/linf table
(`mitigation.activation_analysis`).
"""

import numpy as np

from mitigation.report_page import (
    N_ACTIVATION,
    N_EXAMPLES,
    NORM_NAMES,
    _figure,
    _figure_uri,
    _number,
    _section,
)
from nc_tf.metrics import quiet_retracing

_EVIDENCE = (
    ("grad-cam", "Grad-CAM: where each label's score comes from"),
    ("activations", "Activation maps of the last convolutional layer"),
)


# --------------------------------------------------- Grad-CAM and activations
def _evidence(inputs, target, sources, reverse, reverse_name, notices, shown):
    """The Grad-CAM and activation sections for images a label's trigger should flip."""
    y = inputs.y
    pool = np.flatnonzero((y != target) & (np.isin(y, sources) if sources else True))
    if not len(pool):
        message = f"The data holds no image that the trigger of {shown} should send to it."
        return [_section(k, t, notices=notices + [message]) for k, t in _EVIDENCE]
    original, missing = _original_trigger(inputs.attack, target)
    return [
        _gradcam(inputs, pool, target, reverse, reverse_name, original, notices + missing, shown),
        _activations(inputs, pool, reverse, reverse_name, original, list(notices), shown),
    ]


def _original_trigger(attack, target):
    """The attack's trigger for `target` (None if none) and the notices of what is missing."""
    if not attack:
        return None, [
            "No --attack given: the original-trigger and both-triggers columns are missing; "
            "pass the attack.json written by `nc-tf inject` to add them."
        ]
    for trigger in attack:
        if trigger.target == target or trigger.all_to_all:
            return trigger, []
    targets = ", ".join(str(t.target) for t in attack)
    return None, [
        f"The attack's trigger(s) go to label {targets}, not to label {target}: the "
        "original-trigger columns are left out."
    ]


def _examples(inputs, pool):
    """A few images of the pool, of different labels, that the model classifies right."""
    from nc_tf.metrics import predict_labels

    candidates = pool[:256]
    right = predict_labels(inputs.model, inputs.x[candidates], inputs.intensity)
    right = right == inputs.y[candidates]
    chosen, seen = [], set()
    for index in list(candidates[right]) + list(candidates[~right]):
        if inputs.y[index] not in seen:
            chosen.append(int(index))
            seen.add(inputs.y[index])
        if len(chosen) == N_EXAMPLES:
            break
    for index in candidates:  # fewer labels than examples: fill up
        if len(chosen) == N_EXAMPLES:
            break
        if int(index) not in chosen:
            chosen.append(int(index))
    return np.asarray(chosen)


def _gradcam(inputs, pool, target, reverse, reverse_name, original, notices, shown):
    from nc_tf.gradcam import grad_cam
    from nc_tf.metrics import predict_labels

    title = "Grad-CAM: where each label's score comes from"
    if inputs.clean is None:
        notices = notices + [
            "No --clean-model given: the vanilla model's rows are missing; pass a model "
            "trained on clean data (e.g. `nc-tf train`) to add them."
        ]
    picks = _examples(inputs, pool)
    x = inputs.x[picks].astype(np.float32)
    truth = inputs.y[picks]
    columns = [("clean", x)]
    if original is not None:
        columns.append(("original trigger", original.apply(x)))
    columns.append((reverse_name, reverse(x)))
    if original is not None:
        columns.append(("both", reverse(original.apply(x))))
    models = [("backdoored", inputs.model)]
    if inputs.clean is not None:
        models.append(("vanilla", inputs.clean))
    stack = np.concatenate([images for _, images in columns]).astype(np.float32)
    n, c = len(x), len(columns)
    labels = np.concatenate([np.tile(truth, c), np.full(c * n, target)])
    heat, predicted = {}, {}
    try:
        with quiet_retracing():
            for name, model in models:
                cams = grad_cam(
                    model, np.concatenate([stack, stack]), labels, intensity=inputs.intensity
                )
                heat[name] = cams.reshape((2, c, n) + cams.shape[1:])
                predicted[name] = predict_labels(model, stack, inputs.intensity).reshape(c, n)
    except ValueError as error:
        return _section("grad-cam", title, notices=notices + [f"No Grad-CAM: {error}"])
    figures = []
    for i in range(n):
        rows = []
        for name, _ in models:
            for which, label in ((0, int(truth[i])), (1, int(target))):
                kind = "true label" if which == 0 else "target"
                cells = [
                    (columns[j][1][i], heat[name][which, j, i], int(predicted[name][j, i]))
                    for j in range(c)
                ]
                rows.append((f"{name}\n{kind} {label}", cells))
        fig = _gradcam_figure([name for name, _ in columns], rows)
        figures.append(
            {
                "uri": _figure_uri(fig),
                "caption": f"Image {i + 1}: true label {int(truth[i])}, target {int(target)}.",
            }
        )
    text = (
        f"Cheng et al.'s Fig. 2 for {shown}: each row is a model and the label whose score is "
        "explained (the image's true label, or the target); each column an input. Red is "
        "where the score comes from; under each cell, the label the model predicts. For the "
        "backdoored model and the target, a trigger shows as heat on the trigger."
    )
    return _section("grad-cam", title, text, notices=notices, figures=figures)


def _gradcam_figure(column_names, rows):
    from matplotlib import colormaps

    jet = colormaps["jet"]
    fig = _figure(1.5 * len(column_names) + 0.4, 1.6 * len(rows) + 0.2)
    axes = np.asarray(fig.subplots(len(rows), len(column_names), squeeze=False))
    for r, (row_name, cells) in enumerate(rows):
        for j, (image, cam, predicted) in enumerate(cells):
            ax = axes[r, j]
            base = np.clip(np.asarray(image, np.float32) / 255.0, 0, 1)
            base = np.repeat(base, 3, axis=-1) if base.shape[-1] == 1 else base[..., :3]
            overlay = 0.55 * base + 0.45 * jet(np.clip(cam, 0, 1))[..., :3]
            ax.imshow(np.clip(overlay, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"predicted {predicted}", fontsize=7, labelpad=1)
            if r == 0:
                ax.set_title(column_names[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(row_name, fontsize=7)
    return fig


def _activations(inputs, pool, reverse, reverse_name, original, notices, shown):
    from mitigation.activation_analysis import neuron_maps, norm_separation

    title = "Activation maps of the last convolutional layer"
    clean = inputs.x[pool[:N_ACTIVATION]].astype(np.float32)
    sets = [(reverse_name, reverse(clean))]
    if original is not None:
        sets.append(("original trigger", original.apply(clean)))
    figures, rows, layer = [], [], None
    try:
        for name, stamped in sets:
            maps = neuron_maps(inputs.model, clean, stamped, intensity=inputs.intensity, n_images=1)
            separation = norm_separation(inputs.model, clean, stamped, intensity=inputs.intensity)
            layer = maps["layer"]
            figures.append(
                {
                    "uri": _figure_uri(_maps_figure(maps, name)),
                    "caption": f"Clean images and the same images with the {name}: the "
                    f"{min(8, maps['channels'])} neurons the {name} excites most, by their "
                    "mean gain in peak activation (ℓ∞), on one colour scale.",
                }
            )
            for norm in separation["norms"]:
                summary = separation["summary"][norm]
                rows.append(
                    {
                        "cells": [
                            name,
                            NORM_NAMES.get(norm, norm),
                            str(summary["best_channel"]),
                            _number(summary["best_auc"], 3),
                            _number(summary["mean_auc"], 3),
                            _number(summary["separation"], 2),
                        ],
                        "mark": norm == separation["ranking"][0],
                    }
                )
    except ValueError as error:
        return _section("activations", title, notices=notices + [f"No activations: {error}"])
    table = {
        "caption": f"How well each norm of a neuron's activation map tells stamped from clean "
        f"images ({len(clean)} of each): the ROC AUC of the best neuron and the mean over "
        "neurons (0.5: no separation), and the standardised gap of the norm; the best norm "
        "per input is marked.",
        "head": ["input", "norm", "best neuron", "best AUC", "mean AUC", "separation"],
        "rows": rows,
    }
    text = (
        f"Cheng et al.'s Fig. 3 and §4 for {shown}, layer {layer}: a trigger excites a few "
        "neurons far above their clean level; the ℓ∞ norm (a map's peak) separating best is "
        "what motivates ℓ∞ pruning."
    )
    return _section("activations", title, text, notices, figures=figures, tables=[table])


def _maps_figure(maps, name):
    order = list(maps["order"][: min(8, maps["channels"])])
    rows = [("clean\nmean", maps["mean_clean"]), (f"{name}\nmean", maps["mean_stamped"])]
    if len(maps["clean"]) and len(maps["stamped"]):
        rows += [("clean\nimage 1", maps["clean"][0]), (f"{name}\nimage 1", maps["stamped"][0])]
    vmax = maps["vmax"] if maps["vmax"] > 0 else 1.0
    fig = _figure(1.05 * len(order) + 0.6, 1.15 * len(rows) + 0.3)
    axes = np.asarray(fig.subplots(len(rows), len(order), squeeze=False))
    for r, (row_name, stack) in enumerate(rows):
        for j, channel in enumerate(order):
            ax = axes[r, j]
            ax.imshow(stack[..., channel], vmin=0, vmax=vmax, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"neuron {channel}", fontsize=7)
            if j == 0:
                ax.set_ylabel(row_name, fontsize=7)
    return fig
