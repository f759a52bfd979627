"""The activation analysis of Cheng et al.: how a trigger shows in the last conv layer.

Cheng, Xu, Liu, Chen, Zhao and Lin ("Defending against Backdoor Attack on
Deep Neural Networks", §4 and Fig. 3) look at the activation maps of the last
convolutional layer's neurons (one map per channel) for clean images and for
the same images stamped with a trigger, and compare the ℓ1, ℓ2 and ℓ∞ norms
of each neuron's map as a way to tell the two apart. The ℓ∞ norm (the peak
of the map) separates them best, which motivates ℓ∞ pruning
(`mitigation.linf_pruning`).

`neuron_maps` gives the maps to draw (a few clean/stamped pairs and the
means over all images, channels ordered by how much more the trigger excites
them); `norm_separation` scores each norm by the ROC AUC of every neuron's
norm as a detector of stamped images. Both return plain dicts of numpy
arrays and numbers; activations come from `mitigation.activations`.
"""

import numbers

import numpy as np
from sklearn.metrics import roc_auc_score

from mitigation.activations import layer_activations, layer_output_batches
from mitigation.fine_pruning import _check_set
from mitigation.linf_pruning import _conv_layer, activation_norms
from nc_tf.preprocess import check_intensity
from nc_tf.validation import check_scalar

NORMS = ("l1", "l2", "linf")


def neuron_maps(
    model, x_clean, x_stamped, layer="last_conv", intensity="raw", n_images=4, batch_size=256
):
    """Per-neuron activation maps of a conv layer for clean and stamped images.

    The picture of Cheng et al.'s Fig. 3: every channel's activation map for
    a few clean images and their stamped versions, and the mean map of each
    channel over all clean and all stamped images. Channels are ordered by
    their ℓ∞ gap: the mean over stamped images of the map's peak (its ℓ∞
    norm) minus the same mean over clean images, largest first, so the
    neurons the trigger excites come first.

    Args:
        model: a Keras classifier.
        x_clean: clean raw images, NHWC in [0, 255].
        x_stamped: raw images stamped with a trigger (row `i` is best
            `x_clean[i]` stamped, so that the pairs match), or a trigger (an
            object with `.apply`, e.g. `injection.Trigger`), which is then
            stamped onto `x_clean`.
        layer: a convolutional layer; anything
            `mitigation.activations.resolve_layer` accepts. Defaults to
            `"last_conv"`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        n_images: how many images of each set to return maps for (fewer if
            a set is smaller). Defaults to `4`.
        batch_size: images per forward pass. Defaults to `256`.

    Returns:
        dict with `layer` (its name), `channels`, `clean` and `stamped`
        (float32 `(n_images, H', W', channels)`, the maps of the first
        images), `mean_clean` and `mean_stamped` (float32 `(H', W',
        channels)`, the mean maps over all images), `linf_gap` (float32
        `(channels,)`), `order` (channel ids by decreasing `linf_gap`) and
        `vmax` (the largest value of the maps returned, a common colour
        scale).

    Example:

    >>> from injection import square_trigger
    >>> t = square_trigger(x.shape[1:], target=7)  # doctest: +SKIP
    >>> maps = neuron_maps(model, x[:200], t)  # doctest: +SKIP
    >>> maps["stamped"][0, ..., maps["order"][0]].shape  # doctest: +SKIP
    (8, 8)
    """
    n_images = check_scalar(n_images, "n_images", numbers.Integral, low=0)
    target, sets = _prepare(model, x_clean, x_stamped, layer, intensity, batch_size, "neuron_maps")
    result = {"layer": target.name, "channels": int(target.output.shape[-1])}
    for name, images in sets.items():
        total, first = None, []
        for batch in layer_output_batches(model, target, images, intensity, batch_size):
            batch = batch.astype(np.float32, copy=False)
            total = batch.sum(0) if total is None else total + batch.sum(0)
            if sum(len(b) for b in first) < n_images:
                first.append(batch[: n_images - sum(len(b) for b in first)])
        result[name] = np.concatenate(first) if first else np.zeros((0,) + total.shape, np.float32)
        result[f"mean_{name}"] = (total / len(images)).astype(np.float32)
    peaks = {
        name: layer_activations(model, target, images, intensity, "linf", batch_size).mean(0)
        for name, images in sets.items()
    }
    gap = (peaks["stamped"] - peaks["clean"]).astype(np.float32)
    shown = [result[k] for k in ("clean", "stamped", "mean_clean", "mean_stamped")]
    result.update(
        linf_gap=gap,
        order=np.argsort(-gap, kind="stable"),
        vmax=float(max(float(np.max(a)) if a.size else 0.0 for a in shown)),
    )
    return result


def norm_separation(model, x_clean, x_stamped, layer="last_conv", intensity="raw", batch_size=256):
    """How well each norm of a neuron's activation map tells stamped from clean images.

    Every image's activation map of every channel is reduced to its ℓ1, ℓ2
    and ℓ∞ norm (`mitigation.linf_pruning.activation_norms`). For each norm
    and channel, the ROC AUC (scikit-learn's `roc_auc_score`) scores the
    channel's norm as a detector of stamped images: 1 when every stamped
    image is above every clean one, 0.5 for no separation, below 0.5 when
    the trigger lowers the channel. Cheng et al. find ℓ∞ separates best.

    Args:
        model: a Keras classifier.
        x_clean: clean raw images, NHWC in [0, 255].
        x_stamped: raw images stamped with a trigger, or a trigger (an object
            with `.apply`, e.g. `injection.Trigger`), which is then stamped
            onto `x_clean`.
        layer: a convolutional layer; anything
            `mitigation.activations.resolve_layer` accepts. Defaults to
            `"last_conv"`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        batch_size: images per forward pass. Defaults to `256`.

    Returns:
        dict with `layer`, `channels`, `n_clean`, `n_stamped`, `norms`
        (`("l1", "l2", "linf")`), `values` (`{norm: {"clean": float32 (N,
        channels), "stamped": float32 (M, channels)}}`), `auc` (`{norm:
        float64 (channels,)}`), `summary` (`{norm: {"best_channel": int,
        "best_auc": float, "mean_auc": float, "separation": float}}`, where
        `separation` is `activation_norms`' standardised gap of that norm)
        and `ranking` (the norms by decreasing best AUC, then mean AUC).

    Example:

    >>> from injection import square_trigger
    >>> t = square_trigger(x.shape[1:], target=7)  # doctest: +SKIP
    >>> r = norm_separation(model, x[:200], t)  # doctest: +SKIP
    >>> {n: round(s["best_auc"], 2) for n, s in r["summary"].items()}  # doctest: +SKIP
    {'l1': 0.97, 'l2': 0.98, 'linf': 1.0}
    """
    target, sets = _prepare(
        model, x_clean, x_stamped, layer, intensity, batch_size, "norm_separation"
    )
    measured = activation_norms(model, sets, target, intensity, batch_size)
    clean, stamped = measured["norms"]["clean"], measured["norms"]["stamped"]
    n_clean, n_stamped = len(sets["clean"]), len(sets["stamped"])
    truth = np.concatenate([np.zeros(n_clean), np.ones(n_stamped)])
    values, auc, summary = {}, {}, {}
    for norm in NORMS:
        values[norm] = {"clean": clean[norm], "stamped": stamped[norm]}
        scores = np.concatenate([clean[norm], stamped[norm]]).astype(np.float64)
        # one column of labels per channel: roc_auc_score scores the columns apart
        labels = np.repeat(truth[:, None], scores.shape[1], axis=1)
        auc[norm] = np.asarray(roc_auc_score(labels, scores, average=None), np.float64)
        best = int(np.argmax(auc[norm]))
        summary[norm] = {
            "best_channel": best,
            "best_auc": float(auc[norm][best]),
            "mean_auc": float(auc[norm].mean()),
            "separation": measured["separation"]["stamped"][norm],
        }
    ranking = sorted(NORMS, key=lambda n: (-summary[n]["best_auc"], -summary[n]["mean_auc"]))
    return {
        "layer": measured["layer"],
        "channels": measured["channels"],
        "n_clean": n_clean,
        "n_stamped": n_stamped,
        "norms": NORMS,
        "values": values,
        "auc": auc,
        "summary": summary,
        "ranking": ranking,
    }


def _prepare(model, x_clean, x_stamped, layer, intensity, batch_size, caller):
    """The conv layer and `{"clean": images, "stamped": images}`, checked."""
    check_intensity(intensity)
    check_scalar(batch_size, "batch_size", numbers.Integral, low=1)
    target = _conv_layer(model, layer)
    clean, _ = _check_set(model, x_clean, None, "x_clean", caller)
    if callable(getattr(x_stamped, "apply", None)):
        x_stamped = x_stamped.apply(clean)
    stamped, _ = _check_set(model, x_stamped, None, "x_stamped", caller)
    return target, {"clean": clean, "stamped": stamped}
