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

from nc_tf.preprocess import check_intensity, preprocess

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

    def __init__(self, x, y, triggers=(), ratio=PER_LABEL_RATIO, batch_size=32,
                 intensity="raw", seed=0, **kwargs):
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
    """The reference `DataGenerator(target_ls)`: `generate_data` yields forever.

    Args:
        triggers: `Trigger` objects.
        num_classes: length of the one-hot labels.
        batch_size: samples per batch. Defaults to `32`.
        seed: seed. Defaults to `0`.
    """

    def __init__(self, triggers, num_classes, batch_size=32, seed=0):
        self.triggers, self.num_classes = list(triggers), int(num_classes)
        self.batch_size, self.seed = batch_size, seed

    def generate_data(self, X, Y, inject_ratio):
        """Endless `(X_batch, Y_batch_one_hot)` with each sample stamped w.p. `inject_ratio`."""
        n = max(len(set(t.target for t in self.triggers)), 1)
        ratio = inject_ratio / (1.0 - inject_ratio) / n if inject_ratio > 0 else 0.0
        ds = PoisonedDataset(X, np.argmax(Y, 1) if np.ndim(Y) == 2 else Y,
                             self.triggers if inject_ratio > 0 else (), ratio,
                             self.batch_size, seed=self.seed)
        while True:
            for i in range(len(ds)):
                xb, yb = ds[i]
                yield xb, np.eye(self.num_classes, dtype=np.float32)[yb]
            ds.on_epoch_end()
