"""Fine-pruning (Liu et al., RAID 2018), the pruning baseline GYM compared with.

Fine-pruning assumes that a backdoor lives in neurons that clean inputs leave
dormant. It ranks the channels of the last convolutional layer by their mean
activation on clean validation images and silences the least active ones,
one after the other, until the validation accuracy would fall by more than a
budget (4 points by default); then, optionally, it fine-tunes the pruned
model on clean data while the pruned channels stay silent.

Silencing a channel means zeroing the weights that produce it
(`mitigation.activations.prune_units`), so the result is an ordinary Keras
model that saves and reloads without custom objects. During fine-tuning the
`KeepPruned` callback zeroes those weights again after every batch, since
gradients (e.g. through a following `BatchNormalization`) could revive them.

Search cost: the pruned count is searched in chunks of `ceil(channels / 64)`
channels (1 for layers of up to 64 channels), stopping at the first chunk
that breaks the budget, then channel by channel inside that chunk; so at most
about 64 + `channels / 64` accuracy evaluations are run. Accuracy falls
roughly monotonically with the pruned count, so the result is the first
crossing channel by channel whenever no chunk dips below the budget and
recovers within itself.
"""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from mitigation.activations import layer_activations, prune_units, resolve_layer
from nc_tf import models
from nc_tf.metrics import accuracy, evaluate_backdoor, predict_labels
from nc_tf.models import copy_model
from nc_tf.preprocess import check_intensity, preprocess
from nc_tf.validation import check_class_labels, check_image_batch, check_scalar

# Accuracies are fractions of a sample count; `0.92 - 0.88` is a hair above 0.04.
_TOLERANCE = 1e-9
# Coarse search evaluations before the channel-by-channel refinement.
_MAX_CHUNKS = 64


class KeepPruned(keras.callbacks.Callback):
    """Keeps pruned neurons silent while a model trains.

    After every training batch (and once before training starts) the weights
    that produce `units` of `layer` are zeroed again with
    `mitigation.activations.prune_units`, so the optimizer cannot revive
    them. The model's own layer is looked up when training starts, so a
    layer of another model (e.g. the unpruned original) names the layer of
    the same name.

    Args:
        layer: anything `mitigation.activations.resolve_layer` accepts (a
            name, an index, `"last_conv"`, `"penultimate"` or a layer).
        units: indices of the pruned neurons (channels).

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
    ...     keras.layers.Dense(2, activation="softmax")])
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> _ = prune_units(model, 0, [1])
    >>> x, y = np.random.rand(16, 8, 8, 1), np.arange(16) % 2
    >>> _ = model.fit(x, y, verbose=0, callbacks=[KeepPruned(0, [1])])
    >>> float(np.abs(model.layers[0].kernel.numpy()[..., 1]).max())
    0.0
    """

    def __init__(self, layer, units):
        super().__init__()
        self.layer = layer
        self.units = sorted(set(int(u) for u in units))
        self._target = None

    def on_train_begin(self, logs=None):
        """Finds the layer in the trained model and silences the units."""
        layer = self.layer
        if isinstance(layer, keras.layers.Layer) and not any(
            lay is layer for lay in self.model.layers
        ):
            layer = layer.name
        self._target = resolve_layer(self.model, layer)
        self._silence()

    def on_train_batch_end(self, batch, logs=None):
        """Zeroes the pruned units' weights again after a weight update."""
        self._silence()

    def _silence(self):
        if self.units:
            prune_units(self.model, self._target, self.units)


def fine_prune(
    model,
    x_val,
    y_val,
    layer="last_conv",
    intensity="raw",
    acc_drop=0.04,
    finetune_epochs=0,
    x_train=None,
    y_train=None,
    batch_size=32,
    triggers_eval=None,
    optimizer=None,
    seed=0,
    verbose=0,
):
    """Prunes the least active channels of a copy of `model`, then fine-tunes it.

    Channels of `layer` are ranked by their mean activation on the clean
    validation images (least active first) and silenced in that order for
    as long as the validation accuracy stays within `acc_drop` of the
    unpruned accuracy: the returned model has the largest pruned count
    before the first count that loses more than `acc_drop` (see the module
    docstring for how the count is searched). With `finetune_epochs > 0` the
    pruned copy is then trained on `(x_train, y_train)` with sparse
    categorical cross-entropy while `KeepPruned` keeps the pruned channels
    at zero. The model you pass is never modified.

    Args:
        model: a built Sequential or functional Keras classifier.
        x_val: clean raw validation images, NHWC in [0, 255]; used to rank
            the channels and to measure accuracy.
        y_val: their integer labels.
        layer: the layer whose channels are pruned; anything
            `mitigation.activations.resolve_layer` accepts. Defaults to
            `"last_conv"`, as in Liu et al.
        intensity: the model's intensity range. Defaults to `"raw"`.
        acc_drop: the largest tolerated fall of validation accuracy, an
            absolute fraction in [0, 1] (0.04 = 4 points). Defaults to
            `0.04`.
        finetune_epochs: epochs of fine-tuning after pruning; 0 skips it.
            Defaults to `0`.
        x_train: clean raw images to fine-tune on; needed when
            `finetune_epochs > 0`. Defaults to `None`.
        y_train: their integer labels. Defaults to `None`.
        batch_size: fine-tuning batch size. Defaults to `32`.
        triggers_eval: triggers (objects with `.apply` and `.target`, e.g.
            `injection.Trigger`) whose attack success rate is reported
            before and after, on `x_val`. Defaults to `None` (none).
        optimizer: a Keras optimizer (instance or name) for fine-tuning.
            Defaults to `None`, meaning `keras.optimizers.Adam(1e-4)`.
        seed: seeds the fine-tuning shuffle. Defaults to `0`.
        verbose: verbosity passed to `Model.fit`. Defaults to `0`.

    Returns:
        `(pruned_model, report)`: a new Keras model, and a JSON-able dict
        with `layer`, `channels`, `pruned` (channel ids, in pruning order),
        `pruned_ratio`, `accuracy_before`, `accuracy_pruned` (before
        fine-tuning), `accuracy_after`, `asr_before` / `asr_pruned` /
        `asr_after` (one attack success rate per trigger of
        `triggers_eval`), `curve` (the evaluated `{"pruned", "accuracy"}`
        points) and `settings`.

    Example:

    >>> pruned, report = fine_prune(model, x_val, y_val)  # doctest: +SKIP
    >>> report["pruned_ratio"], report["accuracy_after"]  # doctest: +SKIP
    """
    work = copy_model(model, "fine_prune")
    x_val, y_val = _check_set(model, x_val, y_val, "x_val", "fine_prune")
    intensity = check_intensity(intensity)
    acc_drop = _check_fraction("acc_drop", acc_drop)
    finetune_epochs = _check_count("finetune_epochs", finetune_epochs, minimum=0)
    batch_size = _check_count("batch_size", batch_size, minimum=1)
    triggers_eval = _check_triggers(triggers_eval)
    target = _resolve(model, layer)
    if finetune_epochs:
        if x_train is None or y_train is None:
            raise ValueError(
                f"finetune_epochs={finetune_epochs} needs clean training data: "
                "pass x_train and y_train (or finetune_epochs=0)."
            )
        x_train, y_train = _check_set(model, x_train, y_train, "x_train", "fine_prune")

    channels = int(target.output.shape[-1])
    activity = layer_activations(model, target, x_val, intensity, reduce="mean").mean(0)
    order = [int(c) for c in np.argsort(activity, kind="stable")]

    before = evaluate_backdoor(model, x_val, y_val, triggers_eval, intensity)
    base = before["accuracy"]
    count, curve = _search_count(work, target.name, order, x_val, y_val, intensity, base, acc_drop)
    pruned_ids = order[:count]
    work.set_weights(model.get_weights())
    prune_units(work, target.name, pruned_ids)
    pruned = evaluate_backdoor(work, x_val, y_val, triggers_eval, intensity)

    after = pruned
    if finetune_epochs:
        _finetune(
            work,
            model,
            target.name,
            pruned_ids,
            x_train,
            y_train,
            intensity,
            finetune_epochs,
            batch_size,
            optimizer,
            seed,
            verbose,
        )
        after = evaluate_backdoor(work, x_val, y_val, triggers_eval, intensity)

    def rates(result):
        return [p["attack_success_rate"] for p in result["per_trigger"]]

    report = {
        "layer": target.name,
        "channels": channels,
        "pruned": pruned_ids,
        "pruned_ratio": count / channels,
        "accuracy_before": base,
        "accuracy_pruned": pruned["accuracy"],
        "accuracy_after": after["accuracy"],
        "asr_before": rates(before),
        "asr_pruned": rates(pruned),
        "asr_after": rates(after),
        "curve": curve,
        "settings": {
            "acc_drop": acc_drop,
            "intensity": intensity,
            "finetune_epochs": finetune_epochs,
            "batch_size": batch_size,
            "n_val": int(len(x_val)),
            "n_train": int(len(x_train)) if finetune_epochs else 0,
            "ranking": "mean activation on x_val, least active first",
            "seed": seed,
        },
    }
    return work, report


def _search_count(work, layer, order, x, y, intensity, base, budget):
    """Largest pruned prefix of `order` before accuracy first breaks the budget.

    `work` holds the unpruned weights on entry and is pruned in place.
    """
    n = len(order)
    chunk = max(1, math.ceil(n / _MAX_CHUNKS))
    curve = [{"pruned": 0, "accuracy": base}]

    def within(count):
        acc = accuracy(predict_labels(work, x, intensity), y)
        curve.append({"pruned": count, "accuracy": acc})
        return base - acc <= budget + _TOLERANCE

    done = 0
    while done < n:
        stop = min(done + chunk, n)
        saved = work.get_weights() if chunk > 1 else None
        prune_units(work, layer, order[done:stop])
        if within(stop):
            done = stop
            continue
        if saved is not None:  # refine inside the chunk, channel by channel
            work.set_weights(saved)
            for count in range(done + 1, stop):
                prune_units(work, layer, [order[count - 1]])
                if not within(count):
                    break
                done = count
        break
    curve.sort(key=lambda row: row["pruned"])
    return done, curve


def _finetune(
    work, model, layer, units, x, y, intensity, epochs, batch_size, optimizer, seed, verbose
):
    """Trains `work` in place on clean data with the pruned units held at zero."""
    if optimizer is None:
        optimizer = keras.optimizers.Adam(learning_rate=1e-4)
    work.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=not models.outputs_probabilities(model)
        ),
        metrics=["accuracy"],
    )
    data = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(lambda images, labels: (preprocess(images, intensity), labels))
    )
    work.fit(
        data, epochs=epochs, shuffle=False, verbose=verbose, callbacks=[KeepPruned(layer, units)]
    )


# ------------------------------------------------------------- validation
def _resolve(model, layer):
    """`resolve_layer` with an index error turned into a ValueError."""
    try:
        target = resolve_layer(model, layer)
    except IndexError:
        raise ValueError(
            f"Layer index {layer} is out of range for a model with "
            f"{len(model.layers)} layers; pass a layer name or 'last_conv'."
        ) from None
    if not isinstance(target, (keras.layers.Dense, keras.layers.Conv2D)):
        raise ValueError(
            f"Layer {target.name!r} is a {type(target).__name__}; pruning "
            "needs a Dense or Conv2D layer. Pass layer='last_conv' or a conv "
            "layer's name."
        )
    return target


def _check_set(model, x, y, name, caller):
    """Checks raw images (and labels, unless None) against the model.

    Returns `(x, y)` as arrays, `y` as int64 labels (or None).
    """
    x = check_image_batch(x, caller)
    if len(x) == 0:
        raise ValueError(f"{caller} got no images in {name}; pass at least one.")
    if y is not None:
        y = check_class_labels(y, len(x), caller)
    models.check_model_data(model, x, y, name)
    return x, y


def _check_fraction(name, value):
    return check_scalar(
        value, name, low=0, high=1, hint=" (an absolute accuracy fraction, e.g. 0.04 for 4 points)"
    )


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}.")
    return int(value)


def _check_triggers(triggers):
    triggers = [] if triggers is None else list(triggers)
    for trigger in triggers:
        if not (callable(getattr(trigger, "apply", None)) and hasattr(trigger, "target")):
            raise ValueError(
                "triggers_eval must hold triggers with .apply(images) and "
                f".target (e.g. injection.square_trigger); got {trigger!r}."
            )
    return triggers
