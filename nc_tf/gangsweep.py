"""GangSweep (Zhu et al., ACM MM 2020): backdoor detection with perturbation generators.

For every hypothetical target label t a small image-to-image generator G
(encoder, residual blocks, decoder) learns, on clean images and with the
model under test frozen, the perturbation that sends each image to t. A
backdoor shows up as a generator whose perturbation is

- *persistent*: the perturbation made for one image still sends other images
  of the same source class to t (>= 90% of them);
- *an outlier* among the labels in how it shifts the logits: a small shift
  variance V and a large shift distance D (z-scores with median and MAD).

Image space: the generator reads images in [0, 1] (raw / 255) and returns a
perturbation in [0, 1] (sigmoid). The adversarial image is
`clip(x / 255 + G(x / 255), 0, 1) * 255`, a raw [0, 255] image, which goes
through the model's own intensity range (`nc_tf.preprocess.preprocess`).
All norms (`l2`, L_pert) are in these [0, 1] units. The generator is thus
independent of the model's preprocessing. The perturbation is additive and
non-negative, as in the paper (it can brighten pixels, not darken them).

Choices the paper leaves open, made here: a label's generator is trained and
measured on the images whose label is not that label; persistence is the
mean over source classes of the share of images sent to the label by the
perturbation generated for another image of the same class; the generator
kept is the one of the epoch with the best `L_pert + L_adv`; a model whose
labels all fail the persistence gate is clean, with anomaly index 0.

Known limitation (docs/gangsweep.md): with the paper's `k = 0` and alpha
schedule, training can settle where a share of the images stays just short
of the target, because
`L_adv` stops pulling once an image crosses the boundary while `L_pert`
keeps shrinking the perturbation. A real backdoor's generator can then stay
below the 0.9 persistence gate and go unflagged although it is by far the
most persistent label. `k > 0` raises it.

Known limitation of the paper's alpha rule on GTSRB: once L_pert > L_adv,
alpha = 1/2, and the zero perturbation can then have the lower objective;
generators can collapse to G(x) = 0 before they find the backdoor, and
their sigmoid saturates, so they stay dead. `alpha_gate` (an nc-tf addition, opt-in) keeps alpha
at 2 until an epoch sends that share of the images to the label; a scan
warns about collapsed generators and records `collapsed` per label.

Known limitation of the paper's anomaly index: a backdoor label's shift
variance V can come out large, not small, so `(Z_V + Z_D) / 2` stays below
2 even when its generator persists. The target margin of `label_statistics`
(how far past the boundary `x + G(x)` lands) can single the backdoor out
there; `statistic="margin"` judges with it. It is an nc-tf addition, not
the paper's, so it is opt-in (docs/gangsweep.md; figures in
docs/results.md).

`gangsweep_scan` writes a scan folder like the Neural Cleanse scan:

    out_dir/results.json                           method, settings, per-label results, verdict
    out_dir/gangsweep_perturbation_label_N.png     mean G(x) over images, stretched to 0..255
    out_dir/gangsweep_samples_label_N.png          x (top row) above x + G(x) (bottom row)
    out_dir/generators/label_N.weights.h5          the generator's weights (weights only)

Each finished label is written at once (atomically); rerunning the same scan
on the same folder skips the labels already there.
"""

import numbers
import os
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from nc_tf import io
from nc_tf.datasets import check_images, labels_to_int
from nc_tf.identity import check_identity
from nc_tf.models import check_model_data, outputs_probabilities
from nc_tf.outlier import median_mad, robust_z
from nc_tf.preprocess import check_intensity, preprocess
from nc_tf.scan import read_scan_record, scan_identity
from nc_tf.validation import check_scalar

METHOD = "gangsweep"
RESULTS = "results.json"
PERSISTENCE_THRESHOLD = 0.9
AI_THRESHOLD = 2.0
# Anomaly statistics: the paper's (Z_V + Z_D) / 2, or the target margin's z-score (nc-tf).
STATISTICS = ("paper", "margin")
# The paper's alpha schedule: 2 in the first epoch, then 1/2 when L_pert > L_adv, else 2.
ALPHA_FIRST, ALPHA_LOW, ALPHA_HIGH = 2.0, 0.5, 2.0
# Bias of the generator's last convolution: sigmoid(-3) = 0.047, so training
# starts from a faint perturbation rather than a grey veil of 0.5.
OUTPUT_BIAS = -3.0
# Relative change below which L_pert counts as "no longer shrinking".
PERT_TOLERANCE = 0.01
# Mean L_adv within this of -k counts as "reached -k" (every image past the margin).
ADV_TOLERANCE = 1e-3
# Fewest Adam steps in an epoch (an nc-tf addition). The paper trains on a
# validation set of thousands of images, where one pass is already this long;
# on 500 images one pass is 8 steps at batch 64, too few for a generator to
# find a two-trigger backdoor (bench/gangsweep_steps.py).
MIN_STEPS_PER_EPOCH = 32
# An epoch whose generator ends below this L_pert while sending fewer than half
# of the images to the label has collapsed to G(x) = 0 (seen on GTSRB with the
# paper's alpha rule; the sigmoid then saturates and the generator stays dead).
COLLAPSE_L_PERT = 0.05


# ------------------------------------------------------------- generator
def build_generator(input_shape, filters=32, residual_blocks=3, seed=None):
    """A ResNet-style image-to-image generator: image in [0, 1] -> perturbation in [0, 1].

    Encoder: a 7x7 convolution with `filters` channels, then two stride-2
    3x3 convolutions (2x and 4x `filters`); `residual_blocks` residual
    blocks at a quarter of the resolution; decoder: two stride-2 transposed
    convolutions back to full size, cropped to the input size (so odd sizes
    work: 28 -> 14 -> 7 -> 28, 30 -> 15 -> 8 -> 32 -> 30), and a 7x7
    convolution to the input's channels with a sigmoid. Every convolution
    but the last is followed by instance normalisation (no batch statistics,
    so training and inference agree) and ReLU. The last bias starts at -3:
    the first perturbation is faint (about 0.05).

    Args:
        input_shape: image shape `(H, W, C)`.
        filters: channels of the first convolution. Defaults to `32`.
        residual_blocks: residual blocks in the middle. Defaults to `3`.
        seed: seeds the initial weights (each layer gets its own seed
            derived from it). Defaults to `None` (Keras' global seeding).

    Returns:
        a `keras.Model` from `(None, H, W, C)` to `(None, H, W, C)`.

    Example:

    >>> build_generator((28, 28, 1), filters=8).output_shape
    (None, 28, 28, 1)
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape}.")
    if int(filters) < 1 or int(residual_blocks) < 0:
        raise ValueError(f"filters must be >= 1 and residual_blocks >= 0; got {filters}, "
                         f"{residual_blocks}.")
    height, width, channels = shape
    filters = int(filters)
    layers = keras.layers
    counter = iter(range(10_000))

    def init():
        return keras.initializers.GlorotUniform(
            seed=None if seed is None else int(seed) * 10_007 + next(counter))

    def conv(h, n, kernel, strides=1, transpose=False):
        cls = layers.Conv2DTranspose if transpose else layers.Conv2D
        h = cls(n, kernel, strides=strides, padding="same", kernel_initializer=init())(h)
        h = layers.GroupNormalization(groups=-1)(h)  # instance normalisation
        return layers.ReLU()(h)

    inputs = keras.Input(shape)
    h = conv(inputs, filters, 7)
    h = conv(h, 2 * filters, 3, strides=2)
    h = conv(h, 4 * filters, 3, strides=2)
    for _ in range(int(residual_blocks)):
        r = conv(h, 4 * filters, 3)
        r = layers.Conv2D(4 * filters, 3, padding="same", kernel_initializer=init())(r)
        r = layers.GroupNormalization(groups=-1)(r)
        h = layers.Add()([h, r])
    h = conv(h, 2 * filters, 3, strides=2, transpose=True)
    h = conv(h, filters, 3, strides=2, transpose=True)
    extra_h, extra_w = h.shape[1] - height, h.shape[2] - width
    if extra_h or extra_w:
        h = layers.Cropping2D(((0, extra_h), (0, extra_w)))(h)
    h = layers.Conv2D(channels, 7, padding="same", kernel_initializer=init(),
                      bias_initializer=keras.initializers.Constant(OUTPUT_BIAS))(h)
    outputs = layers.Activation("sigmoid")(h)
    return keras.Model(inputs, outputs, name="gangsweep_generator")


def logits_function(model, x=None, intensity="raw"):
    """A function from model-input batches to the model's logits (pre-softmax).

    A logits model is returned as is. For a softmax model, the last layer is
    re-applied without its softmax on the features it receives (a `Softmax`
    layer is skipped; a `Dense` or `Activation` with `activation="softmax"`
    is copied with a linear activation and the same weights, taken now: the
    model must stay frozen while the function is used). A model whose last
    layer cannot be split off (e.g. subclassed) falls back to the log of its
    probabilities: the same shift variance V and margins as the logits (a
    constant per image cancels), but D is measured on log-probabilities.
    Given images, the output form is judged by behaviour
    (`nc_tf.models.outputs_probabilities`): a model whose softmax is
    followed by other layers also falls back to log-probabilities.

    Args:
        model: a Keras classifier.
        x: raw images to judge the output form on. Defaults to `None`
            (judge from the last layer).
        intensity: the model's intensity range, used with `x`. Defaults
            to `"raw"`.

    Returns:
        a callable `batch -> logits` (inference mode).

    Example:

    >>> from nc_tf.models import mnist_model
    >>> logits_function(mnist_model())(np.zeros((1, 28, 28, 1), np.float32)).shape
    TensorShape([1, 10])
    """
    if not outputs_probabilities(model, x, intensity):
        return lambda batch: model(batch, training=False)
    if x is not None and not outputs_probabilities(model):
        # a softmax followed by other layers: log-probabilities are logits
        return lambda batch: tf.math.log(tf.maximum(model(batch, training=False), 1e-30))
    last = model.layers[-1]
    try:
        features = keras.Model(model.input, last.input)
        if isinstance(last, keras.layers.Softmax):
            return lambda batch: features(batch, training=False)
        config = last.get_config()
        config["activation"] = "linear"
        linear = last.__class__.from_config(config)
        linear.build(last.input.shape)
        linear.set_weights(last.get_weights())
    except Exception:  # subclassed or nested models: no graph to cut.
        return lambda batch: tf.math.log(tf.maximum(model(batch, training=False), 1e-30))
    return lambda batch: linear(features(batch, training=False))


# -------------------------------------------------------------- training
class _GeneratorTrainer:
    """One generator, its Adam state and a compiled train step, reused across labels.

    Resetting weights and optimizer state between labels keeps a single
    traced `tf.function` for a whole scan (no retracing per label).
    """

    def __init__(self, model, image_shape, num_classes, filters, residual_blocks, lr, k,
                 intensity, logit_fn=None):
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = int(num_classes)
        self.filters, self.residual_blocks = int(filters), int(residual_blocks)
        self.k, self.intensity = float(k), check_intensity(intensity)
        self.logits = logit_fn or logits_function(model)
        self.generator = build_generator(self.image_shape, self.filters, self.residual_blocks,
                                         seed=0)
        self.optimizer = keras.optimizers.Adam(learning_rate=lr)
        self.optimizer.build(self.generator.trainable_variables)
        image = tf.TensorSpec((None,) + self.image_shape, tf.float32)
        scalar_int, scalar = tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.float32)
        self._step = tf.function(self._train_step, input_signature=[image, scalar_int, scalar])
        self._eval = tf.function(self._eval_step, input_signature=[image, scalar_int])

    def reset(self, seed, target):
        """Fresh initial weights (fixed by `(seed, target)`) and a fresh Adam state."""
        fresh = build_generator(self.image_shape, self.filters, self.residual_blocks,
                                seed=_label_seed(seed, target))
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
        sums = [self._eval(tf.constant(x01[i:i + batch_size]), target_t)
                for i in range(0, len(x01), batch_size)]
        return (np.asarray(tf.add_n(sums), np.float64) / len(x01)).tolist()

    def fit(self, x01, target, epochs, batch_size, patience, seed,
            min_steps_per_epoch=MIN_STEPS_PER_EPOCH, alpha_gate=None):
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
                batch = tf.constant(x01[order[start:start + batch_size]])
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
            done = (l_adv <= -self.k + ADV_TOLERANCE and previous_pert is not None
                    and l_pert > previous_pert * (1.0 - PERT_TOLERANCE))
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
    return [p < COLLAPSE_L_PERT and s < 0.5
            for p, s in zip(history["l_pert"], history["success"])]


def collapsed(history):
    """Whether a generator's training `history` has an epoch collapsed to `G(x) = 0`."""
    return any(collapsed_epochs(history))


def _label_seed(seed, label):
    return int(seed) * 1_000 + int(label) + 1


def _check_target(model, target):
    num_classes = int(model.output_shape[-1])
    if not 0 <= int(target) < num_classes:
        raise ValueError(f"Label {target} is out of range: the model has labels "
                         f"0..{num_classes - 1}.")
    return int(target)


def train_generator(model, x, target, epochs=15, batch_size=64, lr=0.01, k=0.0, intensity="raw",
                    patience=3, seed=0, filters=32, residual_blocks=3,
                    min_steps_per_epoch=MIN_STEPS_PER_EPOCH, alpha_gate=None):
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
    target = _check_target(model, target)
    if not len(x):
        raise ValueError("No images to train the generator on.")
    trainer = _GeneratorTrainer(model, x.shape[1:], num_classes, filters, residual_blocks, lr, k,
                                intensity)
    trainer.reset(seed, target)
    history = trainer.fit(_to_unit(x), target, epochs, int(batch_size), int(patience), seed,
                          _check_min_steps(min_steps_per_epoch), _check_alpha_gate(alpha_gate))
    return trainer.generator, history


def _check_min_steps(value):
    return check_scalar(value, "min_steps_per_epoch", numbers.Integral, low=0,
                        hint=" (0: one pass per epoch)")


def _check_alpha_gate(value):
    if value is None:
        return None
    return check_scalar(value, "alpha_gate", low=0, high=1, include="right",
                        what="a share of images",
                        hint=" (e.g. 0.9), or None for the paper's alpha rule")


def _to_unit(x):
    return np.asarray(x, np.float32) / 255.0


def generate(generator, x, batch_size=256):
    """Perturbations `G(x)` in [0, 1] of raw images `x` (numpy, float32)."""
    x01 = _to_unit(x)
    out = [np.asarray(generator(x01[i:i + batch_size], training=False))
           for i in range(0, len(x01), batch_size)]
    return np.concatenate(out) if out else np.zeros_like(x01)


def stamp(x, perturbations):
    """Raw images `x` with perturbations (in [0, 1]) added, clipped to [0, 255]."""
    return np.clip(_to_unit(x) + perturbations, 0.0, 1.0) * 255.0


# ------------------------------------------------------------ statistics
def _logits_np(logit_fn, x, intensity, batch_size=256):
    out = [np.asarray(logit_fn(preprocess(np.asarray(x[i:i + batch_size], np.float32),
                                          intensity)))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float64)


def label_statistics(model, generator, x, y, target, intensity="raw", seed=0, logit_fn=None):
    """Persistence and logit-shift statistics of one label's generator.

    Measured on the images whose label is not `target`, with
    `x' = x + G(x)` (clipped) and `phi` the logits:

    - `persistence`: within every source class s, each image is stamped
      with the perturbation generated for *another* image of s (a random
      derangement); the fraction of stamped images classified as `target`,
      averaged over the source classes with at least two images;
    - `V`: the variance over images of the logit shift `phi(x') - phi(x)`,
      per logit, averaged over the logits (small for a backdoor: its
      trigger moves every image to the same place);
    - `D`: `max phi(x') - max phi(x)`, averaged over images (large for a
      backdoor);
    - `V_logits`: the other reading of "shift variance", the variance over
      the logit vector of each image's shift, averaged over images (a
      diagnostic: recorded, not used by the outlier test; on the tiny
      test models it did not single out the backdoor label, `V` did);
    - `V_relative`: `V` divided by the mean squared shift, in [0, 1]: the
      share of the shift that the mean shift leaves unexplained, free of
      the shift's size (a diagnostic, not used by the outlier test: on the
      MNIST benchmark model it singled out the backdoor label as small, on
      the tiny test model as large; 0 when nothing moves);
    - `margin`: the target margin `phi_t(x') - max_{i != t} phi_i(x')`,
      averaged over images (an nc-tf addition, the statistic of
      `gangsweep_outliers(statistic="margin")`): how far past the decision
      boundary the perturbation carries the images. With `k = 0` the loss
      stops pulling at the boundary, so an ordinary adversarial generator
      leaves its images just across it (margin near 0), while a trigger
      overshoots;
    - `attack_success_rate`: fraction of `x'` classified as `target`;
    - `l2`: mean per-image L2 norm of `G(x)` in [0, 1] units.

    Args:
        model: the Keras classifier under test.
        generator: the label's generator (see `train_generator`).
        x: clean raw images in [0, 255].
        y: their integer labels.
        target: the generator's target label.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: seeds the derangements. Defaults to `0`.
        logit_fn: a `logits_function(model)` to reuse. Defaults to `None`
            (built here).

    Returns:
        dict with `persistence`, `persistence_by_source` (source -> fraction),
        `V`, `D`, `V_logits`, `V_relative`, `margin`, `attack_success_rate`,
        `l2` and `n_images`.

    Example:

    >>> s = label_statistics(model, gen, x_test, y_test, 7)  # doctest: +SKIP
    >>> s["persistence"] >= 0.9  # doctest: +SKIP
    True
    """
    check_intensity(intensity)
    x = check_images(x, "statistics data")
    y = labels_to_int(y)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels.")
    target = _check_target(model, target)
    keep = y != target
    if not np.any(keep):
        raise ValueError(f"Every image has label {target}; label statistics need images of "
                         "other classes.")
    x, y = x[keep], y[keep]
    logit_fn = logit_fn or logits_function(model)
    pert = generate(generator, x)
    adv = stamp(x, pert)
    z, z_adv = _logits_np(logit_fn, x, intensity), _logits_np(logit_fn, adv, intensity)
    shift = z_adv - z
    rng = np.random.default_rng([int(seed), int(target), 7])
    by_source = {}
    for source in np.unique(y):
        idx = np.flatnonzero(y == source)
        if len(idx) < 2:
            continue
        order = rng.permutation(idx)
        donors = np.roll(order, 1)  # every image gets another image's perturbation
        stamped = stamp(x[order], pert[donors])
        pred = np.argmax(_logits_np(logit_fn, stamped, intensity), axis=1)
        by_source[str(int(source))] = float(np.mean(pred == target))
    others = np.delete(z_adv, target, axis=1)
    margin = z_adv[:, target] - np.max(others, axis=1)
    variance = float(np.mean(np.var(shift, axis=0)))
    mean_square = float(np.mean(np.square(shift)))
    return {
        "persistence": float(np.mean(list(by_source.values()))) if by_source else 0.0,
        "persistence_by_source": by_source,
        "V": variance,
        "V_relative": variance / mean_square if mean_square > 0 else 0.0,
        "V_logits": float(np.mean(np.var(shift, axis=1))),
        "D": float(np.mean(np.max(z_adv, axis=1) - np.max(z, axis=1))),
        "margin": float(np.mean(margin)),
        "attack_success_rate": float(np.mean(np.argmax(z_adv, axis=1) == target)),
        "l2": float(np.mean(np.sqrt(np.sum(np.square(pert.reshape(len(pert), -1)), axis=1)))),
        "n_images": int(len(x)),
    }


# ------------------------------------------------------------ outliers
def _check_persistence_threshold(value):
    return check_scalar(value, "persistence_threshold", low=0, high=1, include="right",
                        what="a fraction", hint=" (the paper: 0.9)")


def _check_statistic(statistic):
    if statistic not in STATISTICS:
        raise ValueError(f"Unknown statistic {statistic!r}; use one of {list(STATISTICS)}.")


def _robust_z(values, sign):
    """`sign * (values - median) / MAD` (MAD with c = 1.4826; MAD 0 gives 0 or +-inf)."""
    median, mad = median_mad(values)
    return sign * robust_z(values, median, mad), median, mad


def gangsweep_outliers(stats_by_label, persistence_threshold=PERSISTENCE_THRESHOLD,
                       threshold=AI_THRESHOLD, statistic="paper", verbose=True):
    """GangSweep's Algorithm 1: persistence gate, then median/MAD z-scores of V and D.

    `Z_V = (median(V) - V_t) / MAD(V)` (a small V is suspicious),
    `Z_D = (D_t - median(D)) / MAD(D)` (a large D is suspicious),
    `AI = (Z_V + Z_D) / 2`, MAD with the consistency constant 1.4826 and
    medians over all given labels. A label is flagged when its persistence
    is at least `persistence_threshold` and its AI exceeds `threshold`. The
    model's anomaly index is the largest AI among the persistent labels;
    when no label persists, the model is clean and its anomaly index is 0.

    `statistic="margin"` (an nc-tf addition) keeps the persistence gate and
    the threshold but takes `AI = Z_M = (margin_t - median) / MAD`, the
    z-score of the target margin (see `label_statistics`). On our MNIST
    models the paper's AI did not flag a backdoor whose generator persisted
    (V is large, not small, for the backdoor label), while the margin did
    (docs/gangsweep.md). `Z_M` is reported with either statistic
    when every label has a `margin`.

    Args:
        stats_by_label: label -> dict with `persistence`, `V` and `D` (and
            `margin` for `statistic="margin"`), e.g. `label_statistics`
            results or a scan's `labels`; at least 3.
        persistence_threshold: persistence a label needs. Defaults to `0.9`.
        threshold: anomaly index above which a persistent label is flagged.
            Defaults to `2.0`.
        statistic: `"paper"` (`(Z_V + Z_D) / 2`) or `"margin"` (`Z_M`).
            Defaults to `"paper"`.
        verbose: print a short report. Defaults to `True`.

    Returns:
        dict with `per_label` (label -> `Z_V`, `Z_D`, `Z_M` (or `None`),
        `AI`, `persistence`), `flagged` (list of `[label, AI]`, AI
        descending), `persistent` (labels passing the gate),
        `anomaly_index`, `infected`, `statistic`, `other_statistic` (the
        other statistic's `anomaly_index` and `flagged`, or `None` without
        margins), the medians and MADs of V, D (and the margin) and both
        thresholds.

    Example:

    >>> stats = {t: {"persistence": 0.2, "V": 5.0 + t % 3, "D": 1.0 + t % 2} for t in range(9)}
    >>> stats[9] = {"persistence": 0.97, "V": 0.5, "D": 9.0}
    >>> gangsweep_outliers(stats, verbose=False)["flagged"][0][0]
    9
    """
    _check_statistic(statistic)
    persistence_threshold = _check_persistence_threshold(persistence_threshold)
    labels = sorted(stats_by_label, key=lambda v: int(v))
    if len(labels) < 3:
        raise ValueError(f"GangSweep's MAD test needs at least 3 labels, got {len(labels)}.")
    v = np.asarray([stats_by_label[t]["V"] for t in labels], np.float64)
    d = np.asarray([stats_by_label[t]["D"] for t in labels], np.float64)
    p = np.asarray([stats_by_label[t]["persistence"] for t in labels], np.float64)
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(d))):
        raise ValueError("V or D contains NaN or inf; rerun the scan for those labels.")
    z_v, median_v, mad_v = _robust_z(v, -1.0)
    z_d, median_d, mad_d = _robust_z(d, 1.0)
    z_m, median_m, mad_m = None, None, None
    missing = [int(t) for t in labels if "margin" not in stats_by_label[t]]
    if not missing:
        m = np.asarray([stats_by_label[t]["margin"] for t in labels], np.float64)
        z_m, median_m, mad_m = _robust_z(m, 1.0)
    elif statistic == "margin":
        raise ValueError(f"Labels {missing} have no `margin` (scanned before nc-tf recorded it); "
                         "rerun `gangsweep_scan` on the scan folder, which adds it from the "
                         "saved generators, or use statistic='paper'.")
    persistent = p >= persistence_threshold

    def verdict(ai):
        flagged = sorted(([int(t), float(ai[i])] for i, t in enumerate(labels)
                          if persistent[i] and ai[i] > threshold), key=lambda item: -item[1])
        return flagged, float(np.max(ai[persistent])) if np.any(persistent) else 0.0

    indices = {"paper": (z_v + z_d) / 2.0, "margin": z_m}
    ai = indices[statistic]
    per_label = {int(t): {"Z_V": float(z_v[i]), "Z_D": float(z_d[i]),
                          "Z_M": None if z_m is None else float(z_m[i]), "AI": float(ai[i]),
                          "persistence": float(p[i])} for i, t in enumerate(labels)}
    flagged, anomaly_index = verdict(ai)
    other = "margin" if statistic == "paper" else "paper"
    other_verdict = None
    if indices[other] is not None:
        other_flagged, other_index = verdict(indices[other])
        other_verdict = {"statistic": other, "anomaly_index": other_index,
                         "flagged": other_flagged}
    result = {
        "per_label": per_label, "flagged": flagged,
        "persistent": [int(t) for i, t in enumerate(labels) if persistent[i]],
        "anomaly_index": anomaly_index, "infected": bool(flagged), "statistic": statistic,
        "other_statistic": other_verdict,
        "median_V": median_v, "mad_V": mad_v, "median_D": median_d, "mad_D": mad_d,
        "median_margin": median_m, "mad_margin": mad_m,
        "persistence_threshold": float(persistence_threshold), "threshold": float(threshold),
    }
    if verbose:
        if statistic == "paper":
            print(f"median V: {median_v:f}, MAD V: {mad_v:f}; median D: {median_d:f}, "
                  f"MAD D: {mad_d:f}")
        else:
            print(f"median margin: {median_m:f}, MAD margin: {mad_m:f}")
        print("persistent labels (>= {:.0%}): {}".format(
            persistence_threshold, ", ".join(str(t) for t in result["persistent"]) or "none"))
        print(f"anomaly index ({statistic}): {anomaly_index:f}")
        print("flagged label list: " + ", ".join(f"{t}: {a:f}" for t, a in flagged))
        if other_verdict and other_verdict["flagged"] != flagged:
            print(f"with statistic={other!r}: anomaly index "
                  f"{other_verdict['anomaly_index']:f}, flagged: "
                  + (", ".join(f"{t}: {a:f}" for t, a in other_verdict["flagged"]) or "none"))
    return result


# ------------------------------------------------------------------ scan
def gangsweep_scan(model, x, y, labels=None, out_dir=None, epochs=15, batch_size=64, lr=0.01,
                   intensity="raw", seed=0, force=False, progress=True, verbose=True,
                   max_images=None, filters=32, residual_blocks=3, patience=3, k=0.0,
                   model_path=None, min_steps_per_epoch=MIN_STEPS_PER_EPOCH,
                   statistic="paper", persistence_threshold=PERSISTENCE_THRESHOLD,
                   alpha_gate=None):
    """Trains a generator per label, measures persistence and logit shifts, tests for outliers.

    Per label t: a generator is trained on the images whose label is not t
    (`train_generator`), then measured on the same images
    (`label_statistics`), and the finished label is written to `out_dir`
    at once. After the last label, `gangsweep_outliers` gives the verdict.
    One generator, optimizer and compiled step serve every label (weights
    and Adam state are reset per label; each label depends only on
    `(seed, label)`).

    Args:
        model: the Keras classifier under test (softmax or logits output).
        x: clean raw images `(N, H, W, C)` in [0, 255] (validation data).
        y: their integer labels, or `None` (the model's own predictions
            stand in).
        labels: labels to scan (at least 3 for a verdict). Defaults to
            `None` (all).
        out_dir: scan folder to write and resume. Defaults to `None`
            (nothing written).
        epochs: maximum epochs per generator. Defaults to `15`.
        batch_size: images per step. Defaults to `64`.
        lr: Adam learning rate. Defaults to `0.01`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: random seed. Defaults to `0`.
        force: start a new scan in a folder that holds another scan (or
            other files); same-named files are replaced. Defaults to `False`.
        progress: show a progress bar, one step per label. Defaults to `True`.
        verbose: print the outlier report. Defaults to `True`.
        max_images: use a random subset of at most this many images.
            Defaults to `None` (all).
        filters: generator width. Defaults to `32`.
        residual_blocks: generator residual blocks. Defaults to `3`.
        patience: early-stop patience in epochs. Defaults to `3`.
        k: confidence margin of `L_adv`. Defaults to `0.0`.
        model_path: the model file's path, recorded in `results.json`
            (see `nc_tf.scan.scan`). Defaults to `None`.
        min_steps_per_epoch: fewest Adam steps per epoch (see
            `train_generator`; `0`: one pass, the paper). Defaults to `32`.
        statistic: the anomaly index, `"paper"` or `"margin"` (see
            `gangsweep_outliers`). Not a training setting: a finished scan
            can be judged again with the other. Labels scanned before the
            margin was recorded get it from their saved generators.
            Defaults to `"paper"`.
        persistence_threshold: the persistence a label needs to be
            flagged, in (0, 1]. Like `statistic`, a judging setting: a
            finished scan can be judged again with another. Defaults to
            `0.9` (the paper).
        alpha_gate: the share of images an epoch must send to the label
            before `alpha` may drop to 1/2 (see `train_generator`; an nc-tf
            addition). Defaults to `None` (the paper's rule).

    Returns:
        the results dict (as in `results.json`): `method` (`"gangsweep"`),
        `settings`, `labels` (label -> `persistence`, `V`, `D`, `Z_V`,
        `Z_D`, `AI`, `l2`, `attack_success_rate`, `epochs`, `seconds`, `collapsed`,
        `persistence_by_source`, `V_logits`, `V_relative`, `history`) and `outlier` (the
        `gangsweep_outliers` verdict, or `None` with fewer than 3 labels).

    Example:

    >>> record = gangsweep_scan(model, x_val, y_val, out_dir="runs/gangsweep")  # doctest: +SKIP
    >>> record["outlier"]["flagged"]  # doctest: +SKIP
    [[7, 6.3]]
    """
    check_intensity(intensity)
    _check_statistic(statistic)
    persistence_threshold = _check_persistence_threshold(persistence_threshold)
    x = check_images(x, "scan data")
    num_classes = check_model_data(model, x, y, name="scan data")
    if y is None:
        from nc_tf.metrics import predict_labels

        y = predict_labels(model, x, intensity)
    y = labels_to_int(y)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels.")
    if max_images is not None and len(x) > int(max_images):
        keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:int(max_images)])
        x, y = x[keep], y[keep]
    if len(np.unique(y)) < 2:
        raise ValueError("The scan data holds a single class; use clean samples of many "
                         "classes (e.g. the validation set).")
    labels = list(range(num_classes)) if labels is None else [int(v) for v in labels]
    for label in labels:
        _check_target(model, label)
    settings = {
        "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr), "k": float(k),
        "patience": int(patience), "filters": int(filters),
        "min_steps_per_epoch": _check_min_steps(min_steps_per_epoch),
        "alpha_gate": _check_alpha_gate(alpha_gate),
        "residual_blocks": int(residual_blocks), "intensity": intensity, "seed": int(seed),
        "max_images": None if max_images is None else int(max_images),
        "n_samples": int(len(x)), "image_shape": [int(v) for v in x.shape[1:]],
        "num_classes": num_classes, "threshold": AI_THRESHOLD,
    }
    record = _open_scan_dir(out_dir, {"method": METHOD, "settings": settings, "labels": {},
                                      "identity": scan_identity(model, x, y, model_path, out_dir)},
                            force)
    todo = [t for t in dict.fromkeys(labels) if str(t) not in record["labels"]]
    bar = None
    if progress and todo:
        from tqdm import tqdm

        total = len(record["labels"]) + len(todo)
        bar = tqdm(total=total, initial=total - len(todo), unit="label", desc="gangsweep",
                   dynamic_ncols=True)
    start, base = time.time(), record.get("wall_time_s", 0.0)
    try:
        if todo:
            logit_fn = logits_function(model, x, intensity)
            trainer = _GeneratorTrainer(model, x.shape[1:], num_classes, filters,
                                        residual_blocks, lr, k, intensity, logit_fn)
            x01 = _to_unit(x)
        for label in todo:
            began = time.time()
            trainer.reset(seed, label)
            history = trainer.fit(x01[y != label], label, epochs, int(batch_size),
                                  int(patience), seed, settings["min_steps_per_epoch"],
                                  settings["alpha_gate"])
            stats = label_statistics(model, trainer.generator, x, y, label, intensity, seed,
                                     logit_fn=logit_fn)
            entry = {"label": label, **{key: stats[key] for key in (
                "persistence", "V", "D", "V_logits", "V_relative", "margin", "l2",
                "attack_success_rate", "persistence_by_source")},
                "epochs": len(history["l_pert"]), "seconds": round(time.time() - began, 2),
                "collapsed": collapsed(history), "history": history}
            record["labels"][str(label)] = entry
            # Saved with each label, so a killed scan keeps the time of its finished labels.
            record["wall_time_s"] = round(base + time.time() - start, 2)
            if out_dir is not None:
                _save_label(out_dir, label, trainer.generator, x, y)
                io.write_json(os.path.join(out_dir, RESULTS), record)
            if bar is not None:
                bar.set_postfix(label=label, persistence=f"{stats['persistence']:.2f}",
                                V=f"{stats['V']:.3g}", D=f"{stats['D']:.3g}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        record["wall_time_s"] = round(base + time.time() - start, 2)
    if out_dir is not None:
        _add_margins(model, record, out_dir, x, y, intensity, seed)
    _warn_collapsed(record)
    record["outlier"] = None
    if len(record["labels"]) >= 3:
        outlier = gangsweep_outliers(record["labels"], persistence_threshold, statistic=statistic,
                                     verbose=verbose)
        for key, entry in record["labels"].items():
            entry.update({name: outlier["per_label"][int(key)][name]
                          for name in ("Z_V", "Z_D", "Z_M", "AI")})
        outlier["per_label"] = {str(t): v for t, v in outlier["per_label"].items()}
        record["outlier"] = outlier
    if out_dir is not None:
        io.write_json(os.path.join(out_dir, RESULTS), record)
    return record


def _warn_collapsed(record):
    """Warns about labels whose generator collapsed to `G(x) = 0` (their statistics mislead)."""
    labels = sorted(int(key) for key, entry in record["labels"].items()
                    if collapsed(entry["history"]))
    if not labels:
        return
    gate = record["settings"].get("alpha_gate")
    fix = ("rescan into another folder with alpha_gate=0.9 (--alpha-gate 0.9), which keeps "
           "alpha at 2 until the generator sends 90% of the images to the label"
           if gate is None else f"rescan into another folder with a higher alpha_gate than {gate}")
    warnings.warn(f"GangSweep: the generators of labels {labels} collapsed to G(x) = 0 during "
                  f"training (an epoch ended with L_pert < {COLLAPSE_L_PERT} and fewer than half "
                  f"of the images sent), so their persistence is not a fair measure; {fix}.",
                  stacklevel=3)


def _add_margins(model, record, out_dir, x, y, intensity, seed):
    """Measures `margin` for labels of an older scan folder that lack it (saved generators)."""
    missing = [int(key) for key, entry in record["labels"].items() if "margin" not in entry]
    if not missing:
        return
    logit_fn = logits_function(model, x, intensity)
    for label, generator in load_generators(out_dir, missing).items():
        stats = label_statistics(model, generator, x, y, label, intensity, seed,
                                 logit_fn=logit_fn)
        record["labels"][str(label)]["margin"] = stats["margin"]


def _open_scan_dir(out_dir, record, force):
    """Creates the scan folder, or resumes the GangSweep scan with the same settings in it."""
    if out_dir is None:
        return record
    path = os.path.join(out_dir, RESULTS)
    if force or not os.path.exists(path):
        io.prepare_out_dir(out_dir, force=force,
                           hint="(from Python) pass force=True to replace its files")
        return record
    io.check_out_dir(out_dir, resume=True)
    previous = read_scan_record(out_dir)
    if previous.get("method") != METHOD:
        raise FileExistsError(
            f"{out_dir} holds a {previous.get('method', 'Neural Cleanse')} scan, not a GangSweep "
            "scan; choose another --out (or, from Python, pass force=True to replace it).")
    check_identity(previous.get("identity"), record["identity"], out_dir, "a GangSweep scan")
    old, new = {k: v for k, v in previous["settings"].items() if k != "model"}, \
        record["settings"]
    old.setdefault("min_steps_per_epoch", 0)  # folders from before the setting: one pass
    old.setdefault("alpha_gate", None)  # folders from before the setting: the paper's rule
    old.pop("persistence_threshold", None)  # older folders kept this judging setting here
    if old != new:
        changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
        raise FileExistsError(
            f"{out_dir} holds a GangSweep scan with different settings ({', '.join(changed)}); "
            "choose another --out to keep both, rerun with the same settings to resume, or, "
            "from Python, pass force=True to start over there.")
    previous["identity"] = record["identity"]
    previous["settings"] = new  # the same, written in today's form
    labels = previous.get("labels", {})
    previous["labels"] = {key: entry for key, entry in labels.items()
                          if os.path.exists(_weights_path(out_dir, key))}
    return previous


def _weights_path(out_dir, label):
    return os.path.join(out_dir, "generators", f"label_{int(label)}.weights.h5")


def _save_label(out_dir, label, generator, x, y, n_pairs=6):
    """The label's generator weights and its two PNGs, each written atomically."""
    folder = os.path.join(out_dir, "generators")
    os.makedirs(folder, exist_ok=True)
    path = _weights_path(out_dir, label)
    tmp = path[: -len(".weights.h5")] + ".partial.weights.h5"
    generator.save_weights(tmp)
    os.replace(tmp, path)
    others = np.flatnonzero(y != label)
    pert = generate(generator, x[others])
    mean = np.mean(pert, axis=0)
    stretched = mean / mean.max() * 255.0 if mean.max() > 0 else mean
    _save_png(os.path.join(out_dir, f"gangsweep_perturbation_label_{label}.png"), stretched)
    # One image of each of the first few classes (other than the label), if present.
    picks = []
    for source in np.unique(y[others]):
        picks.append(others[np.flatnonzero(y[others] == source)[0]])
    picks = np.asarray(picks[:n_pairs])
    pairs = [x[picks].astype(np.float32), stamp(x[picks], generate(generator, x[picks]))]
    _save_png(os.path.join(out_dir, f"gangsweep_samples_label_{label}.png"), _grid(pairs))


def _grid(rows, gap=2):
    """Tiles rows of equally shaped images into one image, grey `gap`-pixel lines between tiles."""
    n, h, w, c = rows[0].shape
    canvas = np.full((len(rows) * (h + gap) - gap, n * (w + gap) - gap, c), 128.0, np.float32)
    for r, images in enumerate(rows):
        for i, image in enumerate(images):
            canvas[r * (h + gap):r * (h + gap) + h, i * (w + gap):i * (w + gap) + w] = image
    return canvas


def _save_png(path, image):
    from PIL import Image

    arr = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    arr = arr[..., 0] if arr.shape[-1] == 1 else arr
    tmp = path + ".tmp.png"
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)


def load_generators(scan_dir, labels=None):
    """The trained generators of a GangSweep scan folder, rebuilt from weights and settings.

    Only weights are read (`generators/label_N.weights.h5`); the
    architecture is rebuilt by `build_generator` from the settings in
    `results.json`, so no code stored in the folder is ever run.

    Args:
        scan_dir: a folder written by `gangsweep_scan`.
        labels: labels to load. Defaults to `None`: the labels the scan
            flagged (empty for a clean model).

    Returns:
        dict label -> generator (`keras.Model`).

    Example:

    >>> gens = load_generators("runs/gangsweep")  # doctest: +SKIP
    >>> sorted(gens)  # doctest: +SKIP
    [7]
    """
    record = read_scan_record(scan_dir)
    if record.get("method") != METHOD:
        raise ValueError(f"{scan_dir} does not hold a GangSweep scan (method: "
                         f"{record.get('method', 'Neural Cleanse')}).")
    if labels is None:
        outlier = record.get("outlier") if isinstance(record.get("outlier"), dict) else {}
        labels = [t for t, _ in outlier.get("flagged", [])]
    settings = _generator_settings(scan_dir, record["settings"])
    out = {}
    for label in labels:
        label = int(label)
        path = _weights_path(scan_dir, label)
        if str(label) not in record["labels"] or not os.path.exists(path):
            raise ValueError(f"Label {label} has no generator in {scan_dir}; scanned: "
                             f"{', '.join(sorted(record['labels'], key=int)) or 'none'}.")
        generator = build_generator(settings["image_shape"], settings["filters"],
                                    settings["residual_blocks"])
        try:
            generator.load_weights(path)
        except Exception as error:  # h5py and Keras raise many types for damaged files
            raise ValueError(f"{path} is damaged or does not fit the scan's settings "
                             f"({str(error).splitlines()[0][:200]}); rescan into a new "
                             "folder.") from None
        out[label] = generator
    return out


def _generator_settings(scan_dir, settings):
    """The generator shape settings of a scan record, checked before anything is built."""
    shape, filters, blocks = (settings.get("image_shape"), settings.get("filters"),
                              settings.get("residual_blocks"))

    def whole(value, low, high):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    if not (isinstance(shape, list) and len(shape) == 3
            and all(whole(v, 1, 4096) for v in shape)
            and whole(filters, 1, 1024) and whole(blocks, 0, 64)):
        raise ValueError(f"not a scan folder: {os.path.join(scan_dir, RESULTS)} has generator "
                         "settings nc-tf does not write (image_shape, filters, "
                         "residual_blocks); pass a folder written by `nc-tf scan --method "
                         "gangsweep`.")
    return {"image_shape": shape, "filters": filters, "residual_blocks": blocks}
