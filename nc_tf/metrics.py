"""Clean accuracy and attack success rate: the two numbers every step reports.

`attack_success_rate` is THE definition used everywhere in nc-tf: the
fraction of stamped inputs classified as the attack's target, counting only
inputs whose true label is not already the target.
"""

import contextlib
import logging
import weakref

import numpy as np

from nc_tf.preprocess import preprocess


def predict_labels(model, x, intensity="raw", batch_size=1024):
    """Predicted labels of raw images.

    The forward pass is one compiled function per model and intensity
    (`label_function`), reused by every later call.

    Args:
        model: a Keras classifier (softmax or logits output).
        x: raw NHWC images in [0, 255].
        intensity: the model's intensity range. Defaults to `"raw"`.
        batch_size: images per forward pass. Defaults to `1024`.

    Returns:
        int64 array of predicted labels.
    """
    if not len(x):
        return np.zeros(0, np.int64)
    run = label_function(model, intensity)
    with quiet_retracing():
        out = [
            run(np.asarray(x[i : i + batch_size], np.float32)).numpy()
            for i in range(0, len(x), batch_size)
        ]
    return np.concatenate(out).astype(np.int64)


@contextlib.contextmanager
def quiet_retracing():
    """Mutes TensorFlow's warning logs for the block.

    Each model gets its own compiled functions on purpose (`label_function`,
    Grad-CAM steps), so TensorFlow's "retracing" warning, which counts
    traces across models, says nothing to the reader.
    """
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


_LABEL_FUNCTIONS = weakref.WeakKeyDictionary()


def label_function(model, intensity="raw"):
    """The model's compiled `raw images -> predicted labels` (built once per model and intensity)."""
    import tensorflow as tf

    cache = _LABEL_FUNCTIONS.setdefault(model, {})
    if intensity not in cache:
        ref = weakref.ref(model)  # the cache must not keep its key alive

        def labels(x):
            out = ref()(preprocess(x, intensity), training=False)
            return tf.argmax(out, axis=-1, output_type=tf.int32)

        cache[intensity] = tf.function(labels, reduce_retracing=True)
    return cache[intensity]


def accuracy(y_pred, y_true):
    """Fraction of predictions equal to the labels (NaN for no samples)."""
    y_pred, y_true = np.asarray(y_pred), np.asarray(y_true)
    return float(np.mean(y_pred == y_true)) if len(y_true) else float("nan")


# Clean accuracy on the scan data below which a verdict means nothing (refused),
# and below which it is doubtful (warned).
MIN_ACCURACY, WARN_ACCURACY = 0.5, 0.9


def check_clean_accuracy(value, accept_low_accuracy=False, name="the scan data"):
    """Refuses (or warns about) a model that does not classify its data well.

    A verdict on a model that misclassifies its own data is usually a sign
    of wrong preprocessing, not of a backdoor. Below `MIN_ACCURACY` this
    raises unless `accept_low_accuracy`; below `WARN_ACCURACY` it warns.

    Args:
        value: the model's clean accuracy on the data.
        accept_low_accuracy: go on below `MIN_ACCURACY` (with a warning).
            Defaults to `False`.
        name: what to call the data in messages. Defaults to
            `"the scan data"`.

    Returns:
        `value`.

    Example:

    >>> check_clean_accuracy(0.97)
    0.97
    """
    import warnings

    causes = (
        "the model's input scaling (--intensity raw|mnist|imagenet|inception), the "
        "channel order (RGB/BGR) or the label mapping of the data"
    )
    if value < MIN_ACCURACY and not accept_low_accuracy:
        raise ValueError(
            f"The model's clean accuracy on {name} is {value:.1%} (below "
            f"{MIN_ACCURACY:.0%}), so any verdict would be meaningless; check "
            f"{causes}, or pass --accept-low-accuracy (accept_low_accuracy=True) "
            "to go on anyway."
        )
    if value < WARN_ACCURACY:
        warnings.warn(
            f"The model's clean accuracy on {name} is only {value:.1%}; if that is "
            f"unexpected, check {causes}.",
            stacklevel=2,
        )
    return value


def attack_success_rate(y_pred, y_true, target):
    """Fraction of stamped inputs sent to the target, true-target inputs excluded.

    Args:
        y_pred: predicted labels of the stamped inputs.
        y_true: true labels of the inputs before stamping.
        target: the attack's target label, or an array with one target per
            input (e.g. all-to-all attacks).

    Returns:
        float in [0, 1], or NaN if every input already has the target label.

    Example:

    >>> attack_success_rate([3, 3, 1, 3], [0, 3, 1, 2], 3)
    0.6666666666666666
    """
    y_pred, y_true = np.asarray(y_pred), np.asarray(y_true)
    target = np.broadcast_to(np.asarray(target), y_true.shape)
    keep = y_true != target
    if not np.any(keep):
        return float("nan")
    return float(np.mean(y_pred[keep] == target[keep]))


def trigger_success_rate(predict, trigger, x, y):
    """Attack success of one trigger, whatever kind of backdoor it is.

    Counts the inputs whose label the attack changes (`trigger.attack_samples`:
    not already the target; a partial backdoor's sources only; all-to-all:
    every input, success meaning label i -> i + 1).

    Args:
        predict: a function `raw images -> labels`.
        trigger: an `injection.Trigger` (or any object with `.apply` and
            `.target`; then the plain target definition is used).
        x: raw clean images.
        y: their integer labels.

    Returns:
        float in [0, 1], or NaN when no input counts.

    Example:

    >>> trigger_success_rate(lambda im: predict_labels(model, im), trigger, x, y)  # doctest: +SKIP
    """
    y = np.asarray(y, dtype=np.int64)
    if not hasattr(trigger, "poison_labels"):
        return attack_success_rate(predict(trigger.apply(x)), y, trigger.target)
    keep = np.flatnonzero(trigger.attack_samples(y))
    if len(keep) == 0:
        return float("nan")
    pred = predict(trigger.apply(x[keep]))
    return float(np.mean(pred == trigger.poison_labels(y[keep])))


def evaluate_backdoor(model, x, y, triggers=(), intensity="raw", batch_size=256):
    """Clean accuracy and, per trigger, attack success rate on raw images.

    Args:
        model: a Keras classifier.
        x: raw clean images.
        y: their integer labels.
        triggers: objects with `.apply(images)` and `.target` (e.g.
            `injection.Trigger`); a trigger with `.sources` (a partial
            backdoor) is measured on samples of those source labels only.
            Defaults to `()`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        batch_size: images per forward pass. Defaults to `256`.

    Returns:
        dict with `accuracy`, `attack_success_rate` (mean over triggers, or
        None without triggers) and `per_trigger` (list of dicts with `target`
        and `attack_success_rate`).

    Example:

    >>> r = evaluate_backdoor(model, x_test, y_test, [trigger])  # doctest: +SKIP
    >>> r["accuracy"], r["attack_success_rate"]  # doctest: +SKIP
    """
    y = np.asarray(y)
    result = {"accuracy": accuracy(predict_labels(model, x, intensity, batch_size), y)}
    per = []
    for trigger in triggers:
        rate = trigger_success_rate(
            lambda images: predict_labels(model, images, intensity, batch_size), trigger, x, y
        )
        per.append(
            {
                "target": "i+1" if getattr(trigger, "all_to_all", None) else trigger.target,
                "attack_success_rate": rate,
            }
        )
    result["per_trigger"] = per
    result["attack_success_rate"] = (
        float(np.nanmean([p["attack_success_rate"] for p in per])) if per else None
    )
    return result
