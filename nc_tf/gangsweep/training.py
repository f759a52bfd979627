"""Training GangSweep's generator for one label, the model under test frozen.

Known limitations (docs/gangsweep.md): with the paper's `k = 0` and alpha
schedule, training can settle where a share of the images stays just short
of the target (`k > 0` raises it); and once `L_pert > L_adv` the paper sets
alpha to 1/2, where the zero perturbation can have the lower objective, so
a generator can collapse to `G(x) = 0` before it finds the backdoor.
`alpha_gate` (an nc-tf addition, opt-in) keeps alpha at 2 until an epoch
sends that share of the images to the label.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from nc_tf.datasets import check_images
from nc_tf.gangsweep.generator import build_generator, check_target, logits_function, to_unit
from nc_tf.models import check_model_data
from nc_tf.preprocess import check_intensity, preprocess
from nc_tf.validation import check_scalar

# The paper's alpha schedule: 2 in the first epoch, then 1/2 when L_pert > L_adv, else 2.
ALPHA_FIRST, ALPHA_LOW, ALPHA_HIGH = 2.0, 0.5, 2.0
# Relative change below which L_pert counts as "no longer shrinking".
PERT_TOLERANCE = 0.01
# Mean L_adv within this of -k counts as "reached -k" (every image past the margin).
ADV_TOLERANCE = 1e-3
# Fewest Adam steps in an epoch (an nc-tf addition): on a few hundred images
# one pass is only a handful of steps, too few for a generator to find a
# backdoor; the paper's validation sets of thousands of images give at least
# this many (docs/gangsweep.md).
MIN_STEPS_PER_EPOCH = 32
# An epoch whose generator ends below this L_pert while sending fewer than half
# of the images to the label has collapsed to G(x) = 0 (the sigmoid then
# saturates and the generator stays dead).
COLLAPSE_L_PERT = 0.05


class GeneratorTrainer:
    """One generator, its Adam state and a compiled train step, reused across labels.

    Resetting weights and optimizer state between labels keeps a single
    traced `tf.function` for a whole scan (no retracing per label).
    """

    def __init__(
        self,
        model,
        image_shape,
        num_classes,
        filters,
        residual_blocks,
        lr,
        k,
        intensity,
        logit_fn=None,
    ):
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = int(num_classes)
        self.filters, self.residual_blocks = int(filters), int(residual_blocks)
        self.k, self.intensity = float(k), check_intensity(intensity)
        self.logits = logit_fn or logits_function(model)
        self.generator = build_generator(
            self.image_shape, self.filters, self.residual_blocks, seed=0
        )
        self.optimizer = keras.optimizers.Adam(learning_rate=lr)
        self.optimizer.build(self.generator.trainable_variables)
        image = tf.TensorSpec((None,) + self.image_shape, tf.float32)
        scalar_int, scalar = tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.float32)
        self._step = tf.function(self._train_step, input_signature=[image, scalar_int, scalar])
        self._eval = tf.function(self._eval_step, input_signature=[image, scalar_int])

    def reset(self, seed, target):
        """Fresh initial weights (fixed by `(seed, target)`) and a fresh Adam state."""
        fresh = build_generator(
            self.image_shape, self.filters, self.residual_blocks, seed=label_seed(seed, target)
        )
        self.generator.set_weights(fresh.get_weights())
        for var in self.optimizer.variables:
            if not var.path.endswith("learning_rate"):
                var.assign(keras.ops.zeros_like(var))

    def losses(self, x01, target, training=False):
        """Per-image `(L_pert, L_adv, margin)` for images in [0, 1] (margin < 0: sent to target)."""
        pert = self.generator(x01, training=training)
        adv = tf.clip_by_value(x01 + pert, 0.0, 1.0)
        z = self.logits(preprocess(adv * 255.0, self.intensity))
        is_target = tf.cast(tf.one_hot(target, self.num_classes), tf.bool)
        best_other = tf.reduce_max(tf.where(is_target, tf.float32.min, z), axis=1)
        margin = best_other - tf.gather(z, target, axis=1)
        l_adv = tf.maximum(margin, -self.k)
        l_pert = tf.sqrt(tf.reduce_sum(tf.square(pert), axis=[1, 2, 3]) + 1e-12)
        return l_pert, l_adv, margin

    def _train_step(self, x01, target, alpha):
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            l_pert, l_adv, margin = self.losses(x01, target, training=True)
            loss = tf.reduce_mean(l_pert) + alpha * tf.reduce_mean(l_adv)
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    def _eval_step(self, x01, target):
        l_pert, l_adv, margin = self.losses(x01, target, training=False)
        sent = tf.reduce_sum(tf.cast(margin < 0.0, tf.float32))
        return tf.stack([tf.reduce_sum(l_pert), tf.reduce_sum(l_adv), sent])

    def evaluate(self, x01, target, batch_size=256):
        """Mean `L_pert`, mean `L_adv` and the share sent to `target`, with the current weights."""
        target_t = tf.constant(int(target), tf.int32)
        sums = [
            self._eval(tf.constant(x01[i : i + batch_size]), target_t)
            for i in range(0, len(x01), batch_size)
        ]
        return (np.asarray(tf.add_n(sums), np.float64) / len(x01)).tolist()

    def fit(
        self,
        x01,
        target,
        epochs,
        batch_size,
        patience,
        seed,
        min_steps_per_epoch=MIN_STEPS_PER_EPOCH,
        alpha_gate=None,
    ):
        """Trains the current generator towards `target`; returns the per-epoch history.

        The generator is left with the weights of the chosen epoch (see
        `train_generator`).
        """
        rng = np.random.default_rng([int(seed), int(target)])
        n = len(x01)
        one_pass = -(-n // batch_size)
        steps = max(one_pass, int(min_steps_per_epoch))
        alpha = ALPHA_FIRST
        history = {"l_pert": [], "l_adv": [], "success": [], "alpha": []}
        best, stale, previous_pert = None, 0, None
        kept = None
        target_t = tf.constant(int(target), tf.int32)
        for _ in range(int(epochs)):
            if steps == one_pass:  # one pass, the last batch possibly smaller
                order = rng.permutation(n)
            else:  # full batches from as many reshuffled passes as the steps need
                passes = -(-steps * batch_size // n)
                order = np.concatenate([rng.permutation(n) for _ in range(passes)])
            alpha_t = tf.constant(alpha, tf.float32)
            for start in range(0, steps * batch_size, batch_size):
                batch = tf.constant(x01[order[start : start + batch_size]])
                self._step(batch, target_t, alpha_t)
            # The epoch's figures are those of its final weights (the weights
            # that would be kept), not running means over a moving generator:
            # with Adam at lr 0.01 the two differed by up to 0.5 in success.
            l_pert, l_adv, success = self.evaluate(x01, target)
            history["l_pert"].append(round(l_pert, 6))
            history["l_adv"].append(round(l_adv, 6))
            history["success"].append(round(success, 6))
            history["alpha"].append(alpha)
            # Early stop 1: the alpha-free objective L_pert + L_adv has not
            # improved for `patience` epochs. The generator of the best epoch
            # is the one kept (as Keras' EarlyStopping(restore_best_weights)).
            objective = l_pert + l_adv
            if best is None or objective < best - 1e-4 * abs(best):
                best, stale = objective, 0
                kept = self.generator.get_weights()
                history["kept_epoch"] = len(history["l_pert"])
            else:
                stale += 1
            # Early stop 2: every image is past the margin (L_adv = -k) and
            # the perturbation no longer shrinks.
            done = (
                l_adv <= -self.k + ADV_TOLERANCE
                and previous_pert is not None
                and l_pert > previous_pert * (1.0 - PERT_TOLERANCE)
            )
            previous_pert = l_pert
            lower = l_pert > l_adv and (alpha_gate is None or success >= alpha_gate)
            alpha = ALPHA_LOW if lower else ALPHA_HIGH
            if stale >= patience or done:
                break
        if kept is not None:
            self.generator.set_weights(kept)
        return history


def collapsed_epochs(history):
    """Per epoch of a generator's training `history`: whether it ended collapsed to `G(x) = 0`."""
    return [p < COLLAPSE_L_PERT and s < 0.5 for p, s in zip(history["l_pert"], history["success"])]


def collapsed(history):
    """Whether a generator's training `history` has an epoch collapsed to `G(x) = 0`."""
    return any(collapsed_epochs(history))


def label_seed(seed, label):
    return int(seed) * 1_000 + int(label) + 1


def train_generator(
    model,
    x,
    target,
    epochs=15,
    batch_size=64,
    lr=0.01,
    k=0.0,
    intensity="raw",
    patience=3,
    seed=0,
    filters=32,
    residual_blocks=3,
    min_steps_per_epoch=MIN_STEPS_PER_EPOCH,
    alpha_gate=None,
):
    """Trains a GangSweep generator that sends clean images to `target`.

    The model stays frozen. Loss per batch: `L_pert + alpha * L_adv`, with
    `L_pert` the mean per-image L2 norm of `G(x)` (in [0, 1] units) and
    `L_adv` the mean of `max(max_{i != t} f_i(x') - f_t(x'), -k)` on the
    logits `f` of `x' = clip(x + G(x))`. `alpha` is 2 in the first epoch,
    then 1/2 if the previous epoch's mean `L_pert` exceeded its mean `L_adv`,
    else 2. Adam. Training stops after `epochs`, or earlier when the
    alpha-free objective `L_pert + L_adv` (epoch means, comparable across
    epochs whatever alpha was) has not improved for `patience` epochs, or
    when every image is past the margin (mean `L_adv` = -k) and `L_pert`
    shrank by less than 1% in the last epoch. The generator returned has the
    weights of the epoch with the best objective (as Keras'
    `EarlyStopping(restore_best_weights=True)`), not necessarily the last.

    Args:
        model: the Keras classifier under test (softmax or logits output).
        x: clean raw images `(N, H, W, C)` in [0, 255] (the paper trains on
            the validation set; pass images whose label is not `target`).
        target: the hypothetical target label.
        epochs: maximum epochs (the paper: fewer than 15). Defaults to `15`.
        batch_size: images per step. Defaults to `64`.
        lr: Adam learning rate. Defaults to `0.01` (the paper).
        k: confidence margin of `L_adv`. Defaults to `0.0` (the paper).
        intensity: the model's intensity range. Defaults to `"raw"`.
        patience: epochs without improvement before stopping. Defaults to `3`.
        seed: seeds the initial weights and the batch order (with `target`).
            Defaults to `0`.
        filters: generator width (see `build_generator`). Defaults to `32`.
        residual_blocks: generator depth. Defaults to `3`.
        min_steps_per_epoch: fewest Adam steps an epoch makes: with fewer
            than `min_steps_per_epoch * batch_size` images, an epoch takes
            full batches from several reshuffled passes (an nc-tf addition:
            the paper's validation sets are long enough; a few hundred
            images are not). `0`: exactly one pass, as the paper.
            Defaults to `32`.
        alpha_gate: the share of images an epoch must send to `target`
            before `alpha` may drop to 1/2 (an nc-tf addition, in (0, 1]):
            below it `alpha` stays 2, so the generator is not drawn to the
            zero perturbation before it has found the target. `None`: the
            paper's rule, which on GTSRB collapsed generators to `G(x) = 0`
            (docs/gangsweep.md). Defaults to `None`.

    Returns:
        `(generator, history)`: the trained `keras.Model` and a dict of
        per-epoch lists `l_pert`, `l_adv`, `success` (share of the images
        sent to `target` during the epoch) and `alpha` (the alpha used in
        that epoch), and `kept_epoch` (1-based epoch whose weights were kept).

    Example:

    >>> gen, hist = train_generator(model, x_test[y_test != 7], 7)  # doctest: +SKIP
    >>> len(hist["l_pert"]) <= 15  # doctest: +SKIP
    True
    """
    check_intensity(intensity)
    x = check_images(x, "generator training data")
    num_classes = check_model_data(model, x, name="generator training data")
    target = check_target(model, target)
    if not len(x):
        raise ValueError("No images to train the generator on.")
    trainer = GeneratorTrainer(
        model, x.shape[1:], num_classes, filters, residual_blocks, lr, k, intensity
    )
    trainer.reset(seed, target)
    history = trainer.fit(
        to_unit(x),
        target,
        epochs,
        int(batch_size),
        int(patience),
        seed,
        check_min_steps(min_steps_per_epoch),
        check_alpha_gate(alpha_gate),
    )
    return trainer.generator, history


def check_min_steps(value):
    return check_scalar(
        value, "min_steps_per_epoch", numbers.Integral, low=0, hint=" (0: one pass per epoch)"
    )


def check_alpha_gate(value):
    if value is None:
        return None
    return check_scalar(
        value,
        "alpha_gate",
        low=0,
        high=1,
        include="right",
        what="a share of images",
        hint=" (e.g. 0.9), or None for the paper's alpha rule",
    )
