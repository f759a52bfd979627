"""The stamped fine-tuning dataset shared by unlearning and GangSweep patching.

Both repairs fine-tune on clean images with, each epoch, a fresh share of
them stamped (with reversed triggers, or with generated perturbations) and
their labels kept. `StampedDataset` holds what they share: the batches, the
order, and a new draw at every epoch end, fixed by `(seed, epoch)`.
"""

import keras
import numpy as np

from nc_tf.preprocess import preprocess


class StampedDataset(keras.utils.PyDataset):
    """A `PyDataset` whose images are drawn and stamped anew each epoch.

    Subclasses implement `_make_epoch(rng)`, which sets `data` (raw images),
    `labels` and `stamped` (which images were stamped) for the epoch; the
    order of the batches is drawn from the same `rng` afterwards.

    Args:
        batch_size: samples per batch. Defaults to `32`.
        intensity: the model's intensity range (batches are preprocessed).
            Defaults to `"raw"`.
        seed: seeds the draws and the order. Defaults to `0`.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).
    """

    def __init__(self, batch_size=32, intensity="raw", seed=0, **kwargs):
        super().__init__(**kwargs)
        self.batch_size, self.intensity, self.seed = int(batch_size), intensity, int(seed)
        self.epoch = 0

    def _make_epoch(self, rng):
        raise NotImplementedError

    def _draw(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self._make_epoch(rng)
        self.order = rng.permutation(len(self.data))

    def __len__(self):
        return int(np.ceil(len(self.data) / self.batch_size))

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return preprocess(self.data[idx], self.intensity), self.labels[idx]

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch):
        """Draws and stamps the images of `epoch` (fixed by `(seed, epoch)`)."""
        self.epoch = int(epoch)
        self._draw()
