"""GangSweep patching (Zhu et al., ACM MM 2020): fine-tune on generated perturbations, labels kept.

The model is fine-tuned for 3 epochs on a small clean set (the paper: about
10% of the validation data) plus as many clean images again stamped with the
perturbations the flagged labels' generators make for them (`x + G(x)`,
clipped), every image keeping its correct label: the model learns that the
perturbation, and so the backdoor trigger it imitates, means nothing. The
stamped images are drawn and generated afresh every epoch.

- `patch(model, x, y, generators)`: a fine-tuned copy (the model passed is
  never modified).
- `PatchingDataset`: the `keras.utils.PyDataset` it trains on.
"""

import keras
import numpy as np

from injection.inject import reference_optimizer
from mitigation.stamped_dataset import StampedDataset
from nc_tf.datasets import check_images, labels_to_int
from nc_tf.gangsweep import generate, stamp
from nc_tf.models import check_model_data, copy_model, outputs_probabilities
from nc_tf.preprocess import check_intensity

DATA_RATIO = 0.1
STAMP_RATIO = 0.1


class PatchingDataset(StampedDataset):
    """A fixed clean subset plus a fresh set of generator-stamped images each epoch.

    Every epoch, `stamp_count` images are drawn from the whole pool, each is
    given to one of the generators (drawn at random) and stamped with the
    perturbation it generates for that very image; all keep their labels.
    Epoch `e` depends only on `(seed, e)`.

    Args:
        x: raw images in [0, 255] (the pool the stamped images come from).
        y: their integer labels.
        clean_index: indices of `x` used clean every epoch.
        generators: list of generators (`nc_tf.gangsweep.load_generators`).
        stamp_count: stamped images per epoch.
        batch_size: samples per batch. Defaults to `32`.
        intensity: the model's intensity range (batches are preprocessed).
            Defaults to `"raw"`.
        seed: seeds the draws and the order. Defaults to `0`.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).
    """

    def __init__(
        self,
        x,
        y,
        clean_index,
        generators,
        stamp_count,
        batch_size=32,
        intensity="raw",
        seed=0,
        **kwargs,
    ):
        super().__init__(batch_size, intensity, seed, **kwargs)
        self.x, self.y = x, y
        self.clean_index = np.asarray(clean_index, np.int64)
        if not generators:
            raise ValueError(
                "Patching needs at least one generator (those of the flagged labels: "
                "nc_tf.gangsweep.load_generators(scan_dir))."
            )
        self.generators = list(generators)
        self.stamp_count = int(stamp_count)
        self._draw()

    def _make_epoch(self, rng):
        chosen = rng.choice(len(self.x), size=self.stamp_count, replace=False)
        which = rng.integers(0, len(self.generators), len(chosen))
        stamped = np.zeros((len(chosen),) + self.x.shape[1:], np.float32)
        for i, generator in enumerate(self.generators):
            part = np.flatnonzero(which == i)
            if len(part):
                images = self.x[chosen[part]]
                stamped[part] = stamp(images, generate(generator, images))
        self.data = np.concatenate([self.x[self.clean_index].astype(np.float32), stamped])
        self.labels = np.concatenate([self.y[self.clean_index], self.y[chosen]])
        self.stamped = np.r_[np.zeros(len(self.clean_index), bool), np.ones(len(chosen), bool)]


def patch(
    model,
    x,
    y,
    generators,
    data_ratio=DATA_RATIO,
    stamp_ratio=STAMP_RATIO,
    epochs=3,
    batch_size=32,
    intensity="raw",
    seed=0,
    optimizer=None,
    verbose=0,
):
    """A copy of `model` fine-tuned to ignore the GangSweep generators' perturbations.

    Trains on `data_ratio` of `(x, y)` kept clean plus, each epoch, a fresh
    `stamp_ratio` of `(x, y)` stamped with the generated perturbations
    (`PatchingDataset`), labels kept, as the paper's patching (3 epochs,
    about 10% + 10% of the validation data).

    Args:
        model: a Keras classifier (not modified).
        x: clean raw images in [0, 255] (validation data).
        y: their integer (or one-hot) labels.
        generators: the flagged labels' generators: a dict label ->
            generator (as `nc_tf.gangsweep.load_generators` returns), a list,
            or a single generator.
        data_ratio: fraction of `(x, y)` used clean, a fixed random subset.
            Defaults to `0.1`.
        stamp_ratio: fraction of `(x, y)` stamped each epoch, drawn afresh.
            Defaults to `0.1`.
        epochs: fine-tuning epochs. Defaults to `3` (the paper).
        batch_size: batch size. Defaults to `32`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: seeds the subset, the stamping and the order. Defaults to `0`.
        optimizer: a Keras optimizer. Defaults to `None`: Adam lr 1e-3 with
            decay 1e-4, the optimiser the reference models are trained with
            (the paper gives none).
        verbose: `fit` verbosity. Defaults to `0`.

    Returns:
        `(patched_model, history_dict)`.

    Example:

    >>> from nc_tf.gangsweep import load_generators
    >>> fixed, _ = patch(model, x_val, y_val, load_generators("runs/gangsweep"))  # doctest: +SKIP
    """
    check_intensity(intensity)
    x = check_images(x, "patching data")
    y = labels_to_int(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels.")
    check_model_data(model, x, y, name="patching data")
    for name, ratio in (("data_ratio", data_ratio), ("stamp_ratio", stamp_ratio)):
        if not 0 < ratio <= 1:
            raise ValueError(f"{name} must lie in (0, 1], got {ratio}.")
    if isinstance(generators, dict):
        generators = [generators[k] for k in sorted(generators)]
    elif isinstance(generators, keras.Model):
        generators = [generators]
    rng = np.random.default_rng(seed)
    clean_index = rng.permutation(len(x))[: max(1, int(round(data_ratio * len(x))))]
    data = PatchingDataset(
        x,
        y,
        clean_index,
        generators,
        max(1, int(round(stamp_ratio * len(x)))),
        batch_size,
        intensity,
        seed,
    )
    tuned = copy_model(model, "patch")
    tuned.compile(
        optimizer=optimizer or reference_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=not outputs_probabilities(model)
        ),
        metrics=["accuracy"],
    )
    history = tuned.fit(data, epochs=int(epochs), verbose=verbose)
    return tuned, history.history
