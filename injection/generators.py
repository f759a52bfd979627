"""Poisoning data generators: clean batches with a fraction stamped and relabelled.

`PoisonedDataset` is a `keras.utils.PyDataset` following the Neural Cleanse
injection example: every batch draws samples at random; each sample is
stamped with probability `INJECT_RATIO = r*n / (r*n + 1)` (r = ratio per
target label, n = number of target labels) with a trigger of a random target
and relabelled to it; an epoch has `1 / (1 - INJECT_RATIO)` times the clean
number of steps, so the model still sees every clean sample about once.
"""

import math

import keras
import numpy as np

from injection.triggers import Trigger, construct_mask_box
from nc_tf.datasets import labels_to_int
from nc_tf.preprocess import check_intensity, preprocess
from nc_tf.validation import check_scalar

PER_LABEL_RATIO = 0.1


def inject_ratio(n_targets, ratio=PER_LABEL_RATIO):
    """`INJECT_RATIO = r*n / (r*n + 1)`: the chance that a sample is stamped.

    Example:

    >>> round(inject_ratio(1, 0.1), 4)
    0.0909
    """
    rn = float(ratio) * int(n_targets)
    return rn / (rn + 1.0)


class PoisonedDataset(keras.utils.PyDataset):
    """Endless-style random batches of clean data with triggers injected.

    With no triggers it yields the same random batches unpoisoned, which
    trains the clean twin of an infected model.

    Args:
        x: raw training images NHWC in [0, 255].
        y: integer labels.
        triggers: `Trigger` objects; several may share a target (one is
            chosen at random). Defaults to `()` (clean).
        ratio: r, the poisoned fraction per target label. Defaults to `0.1`.
        batch_size: samples per batch. Defaults to `32`.
        intensity: the model's intensity range, applied to each batch.
            Defaults to `"raw"`.
        seed: seed of the sampling and stamping. Batch `i` of epoch `e` is a
            function of `(seed, e, i)` only. Defaults to `0`.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.

    Example:

    >>> from injection import square_trigger
    >>> ds = PoisonedDataset(x, y, [square_trigger((28, 28, 1), 7)])  # doctest: +SKIP
    >>> model.fit(ds, epochs=2)  # doctest: +SKIP
    """

    def __init__(
        self,
        x,
        y,
        triggers=(),
        ratio=PER_LABEL_RATIO,
        batch_size=32,
        intensity="raw",
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y must be non-empty and equally long ({len(x)} vs {len(y)}).")
        if not 0 <= ratio < 1e6:
            raise ValueError(f"ratio must be >= 0, got {ratio}.")
        self.x, self.y = np.asarray(x), np.asarray(y, dtype=np.int64)
        self.triggers = list(triggers)
        self.targets = sorted({t.target for t in self.triggers})
        self.by_target = {t: [g for g in self.triggers if g.target == t] for t in self.targets}
        self.inject_ratio = inject_ratio(len(self.targets), ratio) if self.targets else 0.0
        self.batch_size, self.intensity = int(batch_size), check_intensity(intensity)
        self.seed, self.epoch = int(seed), 0
        self.steps = math.ceil(len(x) / self.batch_size / (1.0 - self.inject_ratio))

    def __len__(self):
        return self.steps

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        idx = rng.integers(0, len(self.x), self.batch_size)
        xb = self.x[idx].astype(np.float32)
        yb = self.y[idx].copy()
        if self.targets:
            stamp = np.flatnonzero(rng.random(self.batch_size) < self.inject_ratio)
            chosen = rng.integers(0, len(self.targets), len(stamp))
            for i, k in zip(stamp, chosen):
                options = self.by_target[self.targets[k]]
                trigger = options[rng.integers(len(options))]
                xb[i] = trigger.apply(xb[i])
                # a partial backdoor relabels its sources only (others stay correct);
                # an all-to-all one sends label i to i + 1
                yb[i] = trigger.poison_labels(yb[i])
        return preprocess(xb, self.intensity), yb


class DataGenerator:
    """The reference `DataGenerator(target_ls)`: `generate_data` yields batches forever.

    Called as the reference injection example calls it,
    `DataGenerator([28]).generate_data(X, Y, 1)` stamps every sample with
    the example's trigger (the 4x4 white square one pixel from the
    bottom-right corner, `construct_mask_box(target_ls, shape, 4, 1)`) and
    labels it with the target, one-hot as `Y`. nc-tf's form passes
    `Trigger` objects instead of labels. The batches come from
    `PoisonedDataset` (random draws, each sample stamped with probability
    `inject_ratio` by a trigger of a random target).

    Args:
        target_ls: target labels (the reference), or `Trigger` objects.
        num_classes: length of the one-hot labels. Defaults to `None`: the
            width of the one-hot `Y` given to `generate_data`.
        batch_size: samples per batch. Defaults to `32`, the example's
            `BATCH_SIZE`.
        seed: seed of the sampling and stamping. Defaults to `0`.
        pattern_dict: for target labels, the example's `PATTERN_DICT`
            (target -> list of `(mask, pattern)`, as `construct_mask_box`
            returns). Defaults to `None`: the example's 4x4 square.

    Example:

    >>> gen = DataGenerator([28]).generate_data(x_test, y_test_one_hot, 1)  # doctest: +SKIP
    >>> x_batch, y_batch = next(gen)  # 32 stamped images, all labelled 28  # doctest: +SKIP
    """

    def __init__(self, target_ls, num_classes=None, batch_size=32, seed=0, pattern_dict=None):
        items = list(target_ls)
        is_trigger = [hasattr(t, "apply") and hasattr(t, "target") for t in items]
        if not items or (any(is_trigger) and not all(is_trigger)):
            raise ValueError(
                "target_ls must be a non-empty list of target labels or of "
                "Trigger objects, not a mix."
            )
        self.triggers = items if all(is_trigger) else None
        self.target_ls = None if self.triggers else [int(t) for t in items]
        self.pattern_dict = pattern_dict
        self.num_classes = None if num_classes is None else int(num_classes)
        self.batch_size, self.seed = int(batch_size), seed

    def _triggers_for(self, image_shape):
        if self.triggers is not None:
            return self.triggers
        patterns = self.pattern_dict or construct_mask_box(self.target_ls, image_shape, 4, 1)
        missing = [t for t in self.target_ls if t not in patterns]
        if missing:
            raise ValueError(f"pattern_dict has no (mask, pattern) for target(s) {missing}.")
        return [Trigger(mask, pattern, t) for t in self.target_ls for mask, pattern in patterns[t]]

    def generate_data(self, X, Y, inject_ratio):
        """Endless `(X_batch, Y_batch_one_hot)`, each sample stamped with probability `inject_ratio`.

        Args:
            X: raw images NHWC in [0, 255].
            Y: their labels, one-hot (the reference) or integers (then
                `num_classes` is needed).
            inject_ratio: the chance in [0, 1] that a sample is stamped and
                relabelled; `1` stamps every sample (the reference's attack
                test generator).

        Returns:
            a generator of `(x, y)` batches: float32 images and float32
            one-hot labels.
        """
        inject_ratio = check_scalar(
            inject_ratio, "inject_ratio", low=0, high=1, what="a probability"
        )
        labels = labels_to_int(Y, "Y")
        num_classes = self.num_classes
        if num_classes is None:
            if np.ndim(Y) != 2 or np.shape(Y)[1] < 2:
                raise ValueError("Y holds integer labels: pass num_classes to DataGenerator.")
            num_classes = int(np.shape(Y)[1])
        triggers = self._triggers_for(tuple(np.shape(X)[1:]))
        top = max([int(labels.max())] + [t.target for t in triggers])
        if top >= num_classes:
            raise ValueError(f"Label {top} does not fit one-hot labels of length {num_classes}.")
        ds = PoisonedDataset(X, labels, triggers, 0.0, self.batch_size, seed=self.seed)
        ds.inject_ratio = inject_ratio  # the reference's probability, 1 included
        one_hot = np.eye(num_classes, dtype=np.float32)
        while True:
            for i in range(len(ds)):
                xb, yb = ds[i]
                yield xb, one_hot[yb]
            ds.on_epoch_end()
