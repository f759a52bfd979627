"""Neural Cleanse unlearning (§VI-C): fine-tune on clean data, part of it stamped.

A share of the clean data (the paper: 10% of the training set) is used; each
epoch a fresh 20% of it is stamped with the reversed trigger(s), and every
sample keeps its correct label, so the model learns that the trigger means
nothing. Published: attack success < 6.70%, accuracy loss at most 3.6 points
(GTSRB), after one epoch.

Three entry points:
- `unlearn(model, x, y, triggers)`: a fine-tuned copy (the usual path).
- `UnlearningDataset`: the `keras.utils.PyDataset` it trains on; re-stamps
  a fresh 20% every epoch.
- `Unlearning`: a callback that adds unlearning steps to any `model.fit`.
"""

import keras
import numpy as np
import tensorflow as tf

from injection.inject import reference_optimizer
from mitigation.stamped_dataset import StampedDataset
from nc_tf.datasets import labels_to_int
from nc_tf.models import copy_model, outputs_probabilities

STAMP_RATIO = 0.2
DATA_RATIO = 0.1


class UnlearningDataset(StampedDataset):
    """Clean samples, a fresh `stamp_ratio` of them stamped each epoch, labels kept.

    With several triggers, the stamped samples are split between them at
    random. The stamping of epoch `e` depends only on `(seed, e)`.

    Args:
        x: raw clean images.
        y: their integer labels.
        triggers: reversed triggers (`.apply(images)`).
        stamp_ratio: fraction stamped each epoch. Defaults to `0.2`.
        batch_size: samples per batch. Defaults to `32`.
        intensity: the model's intensity range (batches are preprocessed).
            Defaults to `"raw"`.
        seed: seeds which samples are stamped and the order. Defaults to `0`.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).
    """

    def __init__(
        self,
        x,
        y,
        triggers,
        stamp_ratio=STAMP_RATIO,
        batch_size=32,
        intensity="raw",
        seed=0,
        **kwargs,
    ):
        super().__init__(batch_size, intensity, seed, **kwargs)
        self.x, self.y = _check_xy(x, y)
        if not triggers:
            raise ValueError(
                "Unlearning needs at least one trigger (the reversed triggers of "
                "the flagged labels: mitigation.scan_triggers(scan_dir))."
            )
        if not 0 <= stamp_ratio <= 1:
            raise ValueError(f"stamp_ratio must lie in [0, 1], got {stamp_ratio}.")
        self.triggers, self.stamp_ratio = list(triggers), float(stamp_ratio)
        self._draw()

    def _make_epoch(self, rng):
        n = len(self.x)
        chosen = rng.permutation(n)[: int(round(self.stamp_ratio * n))]
        which = rng.integers(0, len(self.triggers), len(chosen))
        data = self.x.astype(np.float32, copy=True)
        for i, trig in enumerate(self.triggers):
            idx = chosen[which == i]
            if len(idx):
                data[idx] = trig.apply(data[idx])
        self.stamped = np.zeros(n, bool)
        self.stamped[chosen] = True
        self.data, self.labels = data, self.y


def unlearn(
    model,
    x,
    y,
    triggers,
    data_ratio=DATA_RATIO,
    stamp_ratio=STAMP_RATIO,
    epochs=1,
    batch_size=32,
    optimizer=None,
    intensity="raw",
    seed=0,
    callbacks=(),
    verbose=0,
):
    """A copy of `model` fine-tuned to ignore the reversed trigger(s).

    Args:
        model: a Keras classifier (not modified).
        x: raw clean training images.
        y: their integer labels.
        triggers: reversed triggers (`.apply`); e.g.
            `mitigation.scan_triggers(scan_dir)`.
        data_ratio: fraction of `(x, y)` used, drawn at random (stratified
            by nothing: a plain random subset). Defaults to `0.1` (the paper).
        stamp_ratio: fraction of that subset stamped each epoch. Defaults
            to `0.2` (the paper).
        epochs: fine-tuning epochs. Defaults to `1` (the paper).
        batch_size: batch size. Defaults to `32`.
        optimizer: a Keras optimizer. Defaults to `None`: Adam lr 1e-3 with
            decay 1e-4, the optimiser the reference models are trained with.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: seeds the subset and the stamping. Defaults to `0`.
        callbacks: extra Keras callbacks for `fit`. Defaults to `()`.
        verbose: `fit` verbosity. Defaults to `0`.

    Returns:
        `(model_copy, history_dict)`.

    Example:

    >>> fixed, _ = unlearn(model, x_train, y_train, scan_triggers("scan/"))  # doctest: +SKIP
    """
    x, y = _check_xy(x, y)
    if not 0 < data_ratio <= 1:
        raise ValueError(f"data_ratio must lie in (0, 1], got {data_ratio}.")
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(x))[: max(1, int(round(data_ratio * len(x))))]
    data = UnlearningDataset(x[keep], y[keep], triggers, stamp_ratio, batch_size, intensity, seed)
    keras.utils.set_random_seed(seed)  # batch order and dropout: one run per seed
    tuned = copy_model(model)
    tuned.compile(
        optimizer=optimizer or reference_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=not outputs_probabilities(model)
        ),
        metrics=["accuracy"],
    )
    history = tuned.fit(data, epochs=epochs, callbacks=list(callbacks), verbose=verbose)
    return tuned, history.history


class Unlearning(keras.callbacks.Callback):
    """Adds Neural Cleanse unlearning to any `model.fit`.

    After every training batch of the fit it belongs to, the callback takes
    one extra gradient step (with the model's own optimizer) on a batch of
    its own data: clean samples of which a fresh `stamp_ratio` is stamped
    with the reversed trigger(s) every epoch, labels kept. The fit's own
    metrics are left untouched. The model must be compiled.

    Args:
        x: raw clean images for unlearning.
        y: their integer labels.
        triggers: reversed triggers (`.apply`).
        stamp_ratio: fraction stamped each epoch. Defaults to `0.2`.
        batch_size: samples per unlearning step. Defaults to `32`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: seeds the stamping. Defaults to `0`.

    Example:

    >>> cb = Unlearning(x_clean, y_clean, scan_triggers("scan/"))  # doctest: +SKIP
    >>> model.fit(x_train, y_train, epochs=1, callbacks=[cb])      # doctest: +SKIP
    """

    def __init__(
        self, x, y, triggers, stamp_ratio=STAMP_RATIO, batch_size=32, intensity="raw", seed=0
    ):
        super().__init__()
        self.data = UnlearningDataset(x, y, triggers, stamp_ratio, batch_size, intensity, seed)
        self._cursor = 0
        self._step = None
        self.steps_taken = 0

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.data.epoch:
            self.data.set_epoch(epoch)
        self._cursor = 0

    def on_train_batch_end(self, batch, logs=None):
        if self._step is None:
            self._step = self._build_step()
        xb, yb = self.data[self._cursor % len(self.data)]
        self._cursor += 1
        self._step(tf.convert_to_tensor(xb, tf.float32), tf.convert_to_tensor(yb, tf.int64))
        self.steps_taken += 1

    def _build_step(self):
        model = self.model
        if getattr(model, "optimizer", None) is None:
            raise ValueError("Unlearning needs a compiled model: call model.compile(...) first.")
        loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=not outputs_probabilities(model)
        )

        @tf.function
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        return step


def _check_xy(x, y):
    x, y = np.asarray(x), labels_to_int(y)
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC images, got shape {x.shape}.")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels.")
    if not len(x):
        raise ValueError("No samples to unlearn on.")
    return x, y
