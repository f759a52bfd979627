"""GYM's training-time defence: fine-tune on clean images re-augmented every epoch.

`GymFineTuneDataset` redraws the intensive pipeline (`mitigation.gym`) on a
small clean set each epoch; `gym_finetune` fine-tunes a copy of the model on
it with the notebook's optimiser.
"""

import functools
import math
import numbers

import keras
import numpy as np

from mitigation.gym import VARIANTS, augment, intensive_pipeline
from nc_tf import models
from nc_tf.preprocess import check_intensity, preprocess
from nc_tf.validation import check_class_labels, check_image_batch, check_scalar, check_seed

# The notebook's fine-tuning optimiser: the model is compiled with
# `Adadelta(lr = 0.03)` before `model.fit` (not Keras 2's default lr 1.0).
_ADADELTA_LR = 0.03


class GymFineTuneDataset(keras.utils.PyDataset):
    """Clean samples, freshly augmented every epoch, for GYM fine-tuning.

    Every epoch the clean images are re-augmented with the intensive pipeline
    (batch by batch, lazily) and shuffled. The augmentation of batch `i` in
    epoch `e` depends only on `(seed, e, i)`, so a run is reproducible and the
    result does not depend on `workers`. Batches are
    `(preprocess(x_aug, intensity), y)`. (Keras' `fit` calls `on_epoch_end`
    once before training starts, so its first epoch is the dataset's epoch
    1; that is still reproducible.)

    Args:
        x: NHWC array of clean raw images, uint8 or float in [0, 255].
        y: integer class labels, shape `(N,)` or `(N, 1)`; one-hot `(N, K)`
            labels are turned into integers.
        batch_size: int >= 1. Defaults to `10`, as in the published code.
        intensity: the model's intensity range, one of `"raw"`, `"mnist"`,
            `"imagenet"`, `"inception"`. Defaults to `"raw"`.
        seed: int or None; None draws fresh entropy once. Defaults to `0`.
        shuffle: whether to reshuffle the samples every epoch. Defaults to
            `True` (Keras' `fit` shuffled the arrays in the published code).
        pipeline_fn: callable `seed -> albumentations.Compose` building the
            per-batch pipeline. Defaults to `intensive_pipeline`.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size`, passed
            to `keras.utils.PyDataset`. Defaults to Keras' defaults.

    Example:

    >>> import numpy as np
    >>> x = np.zeros((25, 28, 28, 1), np.uint8)
    >>> data = GymFineTuneDataset(x, np.zeros(25, int), intensity="mnist")
    >>> len(data), data[2][0].shape
    (3, (5, 28, 28, 1))
    """

    def __init__(
        self,
        x,
        y,
        batch_size=10,
        intensity="raw",
        seed=0,
        shuffle=True,
        pipeline_fn=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.x = check_image_batch(x, "GymFineTuneDataset")
        self.y = check_class_labels(y, len(self.x), "GymFineTuneDataset")
        if len(self.x) == 0:
            raise ValueError(
                "GymFineTuneDataset got no samples. Pass the clean "
                "fine-tuning set (the paper uses 1,000-10,000 images)."
            )
        self.batch_size = check_scalar(batch_size, "batch_size", numbers.Integral, low=1)
        self.intensity = check_intensity(intensity)
        seed = check_seed(seed)
        self.seed = seed
        self._entropy = seed if seed is not None else np.random.SeedSequence().entropy
        self.shuffle = bool(shuffle)
        if pipeline_fn is not None and not callable(pipeline_fn):
            raise TypeError(
                "pipeline_fn must be a callable taking a seed and returning "
                "an albumentations pipeline; got "
                f"{type(pipeline_fn).__name__}."
            )
        self.pipeline_fn = pipeline_fn or intensive_pipeline
        self.epoch = 0
        self._order_cache = None

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def _order(self):
        epoch = self.epoch
        cached = self._order_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        if self.shuffle:
            rng = np.random.default_rng([self._entropy, epoch])
            order = rng.permutation(len(self.x))
        else:
            order = np.arange(len(self.x))
        self._order_cache = (epoch, order)
        return order

    def batch_seed(self, index):
        """Returns the augmentation seed of batch `index` in this epoch."""
        state = np.random.SeedSequence([self._entropy, self.epoch, index])
        return int(state.generate_state(1)[0])

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(
                f"Batch index {index} is out of range for a dataset of {len(self)} batches."
            )
        ids = self._order()[index * self.batch_size : (index + 1) * self.batch_size]
        pipeline = self.pipeline_fn(self.batch_seed(index))
        x_aug = augment(self.x[ids], pipeline)
        return preprocess(x_aug, self.intensity), self.y[ids]

    def on_epoch_end(self):
        """Moves on to the next epoch's augmentation and order."""
        self.epoch += 1


def gym_finetune(
    model,
    x,
    y,
    epochs=5,
    batch_size=10,
    optimizer=None,
    intensity="raw",
    seed=0,
    verbose=1,
    scaled=False,
    variant="notebook",
):
    """Fine-tunes a copy of `model` on intensively augmented clean data (GYM).

    The model is copied with `keras.models.clone_model` + `set_weights`, so
    the model you pass is never modified. The copy is compiled with sparse
    categorical cross-entropy (`from_logits` is set by
    `nc_tf.models.outputs_probabilities`: the output counts as probabilities
    when the model's last layer, looking into nested models, applies a
    softmax) and trained on a `GymFineTuneDataset`, which re-augments the
    clean set every epoch. The paper fine-tunes on 1,000-10,000 clean
    samples for 5 epochs with batch size 10; the published notebook ran its
    5-epoch loop on ten successive chunks of 1,000 clean samples ("count from
    0 to 9 to acquire 10000 clean samples"): 50,000 augmented samples in
    all, as 5 epochs on 10,000 images here.

    Args:
        model: a built Sequential or functional Keras classifier with one
            output of shape `(batch, num_classes)`.
        x: NHWC array of clean raw images, uint8 or float in [0, 255].
        y: integer class labels, shape `(N,)` or `(N, 1)`; one-hot `(N, K)`
            labels are turned into integers.
        epochs: int >= 1. Defaults to `5`.
        batch_size: int >= 1. Defaults to `10`.
        optimizer: a Keras optimizer instance or name. Defaults to `None`,
            meaning `keras.optimizers.Adadelta(learning_rate=0.03)`, as the
            published notebook: it compiles the model with
            `Adadelta(lr = 0.03)` before `model.fit`, neither Keras 2's
            default lr 1.0 nor Keras 3's 0.001 (the update rule, rho 0.95
            and epsilon 1e-7 are the same in both Keras versions).
        intensity: the model's intensity range, one of `"raw"`, `"mnist"`,
            `"imagenet"`, `"inception"`. Defaults to `"raw"`.
        seed: int or None, seeds the augmentation and the shuffling. Weight
            updates that are themselves random (e.g. dropout) follow Keras'
            global seed (`keras.utils.set_random_seed`). Defaults to `0`.
        verbose: verbosity passed to `Model.fit`. Defaults to `1`.
        scaled: scale the pipeline's pixel sizes (median aperture,
            downscale) to the images' side, see `scaled_sizes`. Defaults to
            `False` (the published sizes).
        variant: the intensive pipeline's sizes, `"notebook"` or `"paper"`
            (`mitigation.gym.VARIANTS`). Defaults to `"notebook"`.

    Returns:
        The fine-tuned copy of `model` (a new `keras.Model`).

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([
    ...     keras.Input((28, 28, 1)), keras.layers.Flatten(),
    ...     keras.layers.Dense(10, activation="softmax")])
    >>> x = np.zeros((20, 28, 28, 1), np.uint8); y = np.zeros(20, int)
    >>> tuned = gym_finetune(model, x, y, epochs=1, verbose=0)
    >>> tuned is model
    False
    """
    tuned = models.copy_model(model, "gym_finetune")
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) > 1:
        raise ValueError(
            f"gym_finetune needs a single-output classifier; the model has {len(outputs)} outputs."
        )
    epochs = check_scalar(epochs, "epochs", numbers.Integral, low=1)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}; got {variant!r}.")
    pipeline_fn = functools.partial(
        intensive_pipeline, variant=variant, image_size=np.shape(x)[1] if scaled else None
    )
    data = GymFineTuneDataset(
        x, y, batch_size=batch_size, intensity=intensity, seed=seed, pipeline_fn=pipeline_fn
    )

    try:
        num_classes = model.output_shape[-1]
    except (AttributeError, ValueError, TypeError):
        num_classes = None  # Subclassed models may not know their shape.
    if num_classes is not None and data.y.max() >= num_classes:
        raise ValueError(
            f"Labels go up to {data.y.max()} but the model has only "
            f"{num_classes} outputs. Pass integer labels in "
            f"[0, {num_classes})."
        )

    probabilities = models.outputs_probabilities(model)
    if optimizer is None:
        optimizer = keras.optimizers.Adadelta(learning_rate=_ADADELTA_LR)
    tuned.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities),
        metrics=["accuracy"],
    )
    # The dataset shuffles itself reproducibly; Keras' own batch shuffling
    # would draw from the global `random` module.
    tuned.fit(data, epochs=epochs, shuffle=False, verbose=verbose)
    return tuned
