"""The trigger reverse-engineering engine: many labels in one compiled graph.

Neural Cleanse optimises, for each candidate target label, a mask `m` and a
pattern `p` so that `(1 - m) * x + m * p` is classified as the target while
the mask stays small. The reference code did one label at a time with a host
round-trip per batch. `ReverseEngine` keeps `slots` labels in flight at once:

- every slot has its own mask/pattern, its own Adam moments and step count,
  and its own cost (lambda) schedule and early-stop state, all held in
  `tf.Variable`s and updated inside one `tf.function`, so a GPU runs whole
  optimisation steps without returning to Python;
- a batch of clean images is stamped with every active slot's trigger and
  sent through the model as one `(active_slots * batch_size)` batch;
- a slot whose label finished (early stop or step budget) leaves the batch,
  and the host refills it with the next label.

`nc_tf.schedule.cost_schedule_update` is the reference schedule, vectorised
over slots; the single-label `Visualizer` and the multi-label `scan` both run on this engine.
"""

import math
import numbers
import time

import numpy as np
import tensorflow as tf

from nc_tf.losses import LOSS_ALIASES, LOSSES, check_loss  # noqa: F401  (public here too)
from nc_tf.models import outputs_probabilities
from nc_tf.preprocess import check_intensity, preprocess
from nc_tf.schedule import STATE_KEYS, cost_schedule_update, initial_state  # noqa: F401
from nc_tf.validation import check_scalar

REGULARIZATIONS = (None, "none", "l1", "l2")

# The per-slot variables besides Adam's moments and the schedule state.
_SLOT_VARIABLES = (
    "mask_tanh", "pattern_tanh", "adam_t", "mask_best", "pattern_best", "has_best", "target",
    "restart", "succ_threshold", "pool",
)  # fmt: skip


class ReverseEngine:
    """Reverse-engineers mask/pattern triggers for several labels at once.

    Build it once per model and data (the compiled graph is reused), then
    call `run(labels)`. Parameters keep the reference `Visualizer` names.

    Args:
        model: the Keras classifier under test (softmax or logits output).
        x: clean raw images `(N, H, W, C)` in [0, 255] to stamp.
        y: their labels; needed only to restrict a job to source classes
            (partial backdoors). Defaults to `None`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        regularization: `"l1"`, `"l2"` or `None` (also `"none"`). Defaults
            to `"l1"`.
        init_cost: first non-zero cost (lambda). Defaults to `1e-3`.
        steps: maximum optimisation steps per label. Defaults to `1000`.
        mini_batch: batches per step. Defaults to `31`.
        batch_size: images per batch (per label). Defaults to `32`.
        lr: Adam learning rate (beta_1 0.5, beta_2 0.9). Defaults to `0.1`.
        upsample_size: super-pixel side of the mask. Defaults to `1`.
        attack_succ_threshold: success needed for a valid trigger.
            Defaults to `0.99`.
        patience: steps before a cost move. Defaults to `5`.
        cost_multiplier: cost up factor (down: its power 1.5). Defaults to `2`.
        reset_cost_to_zero: start at cost 0. Defaults to `True`.
        early_stop: stop a label when its best norm stalls. Defaults to `True`.
        early_stop_threshold: stall ratio. Defaults to `1.0`.
        early_stop_patience: stalled steps before stopping. Defaults to `25`.
        save_last: return the last trigger instead of the best. Defaults to
            `False`.
        epsilon: tanh squashing epsilon. Defaults to `1e-7`.
        slots: labels optimised together (bounds memory:
            `slots * batch_size` images per forward pass). Defaults to `8`.
        steps_per_call: optimisation steps per compiled call between host
            checks. Defaults to `10`.
        seed: seed of the initial triggers and the batch sampling; each
            label's randomness depends only on `(seed, label)`. Defaults to
            `0`.
        mask_init: the initial mask of jobs started without one: `"random"`
            (uniform [0, 1), the reference) or a constant in (0, 1). A small
            constant (the fast preset's 0.1) starts with little of the random
            pattern showing, which avoids large triggers built from it.
            Defaults to `"random"`.
        loss: the attack loss on the target's probability: `"crossentropy"`
            (cross-entropy, `-log p_t`) or `"reference"` (the reference
            code's effective `16.12 * (1 - p_t)`). A logits model's outputs
            go through a softmax first, so a softmax model and its logits
            twin get the same objective. Defaults to `"crossentropy"`.
        start_mini_batch: batches per step during `nc_tf.short_pass.best_starts` (fewer
            than `mini_batch` makes the starts cheaper). Defaults to `None`
            (`mini_batch`).
        keep_step_start: when a step's success passes the threshold with a
            smaller norm, keep the trigger the step started from rather than
            the one it ended with (the reference's choice). A step measures
            its success over its `mini_batch` batches while each batch's
            update shrinks the mask, so the trigger it ends with is smaller
            than the ones measured and often falls short of the threshold;
            the one it started from reached it. It also keeps a trigger only
            after two successful steps in a row
            (`cost_schedule_update(confirm_success=True)`). Defaults to
            `False`.

    Example:

    >>> engine = ReverseEngine(model, x_test[:1000], steps=50)  # doctest: +SKIP
    >>> results = engine.run([0, 7])  # doctest: +SKIP
    >>> results[1]["l1_norm"]  # the trigger of label 7  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        x,
        y=None,
        intensity="raw",
        regularization="l1",
        init_cost=1e-3,
        steps=1000,
        mini_batch=31,
        batch_size=32,
        lr=0.1,
        upsample_size=1,
        attack_succ_threshold=0.99,
        patience=5,
        cost_multiplier=2.0,
        reset_cost_to_zero=True,
        early_stop=True,
        early_stop_threshold=1.0,
        early_stop_patience=25,
        save_last=False,
        epsilon=1e-7,
        slots=8,
        steps_per_call=10,
        seed=0,
        mask_init="random",
        loss="crossentropy",
        start_mini_batch=None,
        keep_step_start=False,
    ):
        if regularization not in REGULARIZATIONS:
            raise ValueError(f"regularization must be one of {REGULARIZATIONS}, got {regularization!r}.")  # fmt: skip
        counts = dict(steps=steps, mini_batch=mini_batch, batch_size=batch_size, slots=slots,
                      upsample_size=upsample_size, steps_per_call=steps_per_call, patience=patience)  # fmt: skip
        for name, value in counts.items():
            check_scalar(value, name, numbers.Integral, low=1)
        if mask_init != "random" and not (
            isinstance(mask_init, (int, float)) and 0 < mask_init < 1
        ):
            raise ValueError(
                f"mask_init must be 'random' or a number in (0, 1), got {mask_init!r}."
            )
        self.mask_init = mask_init
        if cost_multiplier <= 1:
            raise ValueError(f"cost_multiplier must be > 1, got {cost_multiplier}.")
        self.model, self.intensity = model, check_intensity(intensity)
        self.loss = check_loss(loss)
        x = np.asarray(x)
        self.from_logits = not outputs_probabilities(model, x, intensity)
        self.regularization = None if regularization == "none" else regularization
        self.cfg = dict(
            init_cost=float(init_cost),
            steps=int(steps),
            attack_succ_threshold=float(attack_succ_threshold),
            patience=int(patience),
            cost_multiplier=float(cost_multiplier),
            early_stop=bool(early_stop),
            early_stop_threshold=float(early_stop_threshold),
            early_stop_patience=int(early_stop_patience),
            confirm_success=bool(keep_step_start),
        )
        self.reset_cost_to_zero, self.save_last = reset_cost_to_zero, save_last
        self.mini_batch, self.batch_size = int(mini_batch), int(batch_size)
        self.start_mini_batch = int(start_mini_batch or mini_batch)
        self.keep_step_start = bool(keep_step_start)
        self.lr, self.epsilon, self.upsample_size = float(lr), float(epsilon), int(upsample_size)
        self.slots, self.steps_per_call, self.seed = int(slots), int(steps_per_call), int(seed)
        self.num_classes = int(model.output_shape[-1])

        self.image_shape = tuple(int(v) for v in x.shape[1:])
        h, w, c = self.image_shape
        u = self.upsample_size
        self.mask_shape = (math.ceil(h / u), math.ceil(w / u))
        self.x = tf.constant(x.astype(np.float32))
        self.y = None if y is None else tf.constant(np.asarray(y, np.int32))
        k = self.slots
        var = lambda shape, dtype=tf.float32: tf.Variable(tf.zeros(shape, dtype), trainable=False)  # noqa: E731
        self.mask_tanh = var((k,) + self.mask_shape + (1,))
        self.pattern_tanh = var((k, h, w, c))
        shapes = {"mask": self.mask_tanh.shape, "pattern": self.pattern_tanh.shape}
        self.adam = {f"{m}_{part}": var(shapes[part]) for part in shapes for m in "mv"}
        self.adam_t = var((k,))
        self.mask_best = var((k, h, w, 1))
        self.pattern_best = var((k, h, w, c))
        self.has_best = var((k,))
        self.target = var((k,), tf.int32)
        self.restart = var((k,), tf.int32)  # restart index: varies the init and the batches
        self.succ_threshold = var((k,))  # per job: attack_succ_threshold unless run() says
        self.assigned = var((k,))
        self.state = {name: var((k,)) for name in STATE_KEYS}
        self.pool = var((k, self.num_classes))  # 1 = source class the slot samples from
        self._slot_vars = [getattr(self, name) for name in _SLOT_VARIABLES]
        self._slot_vars += list(self.adam.values()) + list(self.state.values())
        # batches per step, a variable so the short starts can take fewer without a retrace
        self._mini_batch = tf.Variable(self.mini_batch, trainable=False, dtype=tf.int32)
        self._run = tf.function(self._run_steps, reduce_retracing=True)

    # ------------------------------------------------------------ graph
    def _masks(self, mask_tanh):
        """Squashed (super-pixel) masks, upsampled and cropped to H x W."""
        mask = tf.tanh(mask_tanh) / (2 - self.epsilon) + 0.5
        u = self.upsample_size
        if u > 1:
            h, w, _ = self.image_shape
            mask = tf.repeat(tf.repeat(mask, u, axis=1), u, axis=2)[:, :h, :w, :]
        return mask

    def _patterns(self, pattern_tanh):
        return (tf.tanh(pattern_tanh) / (2 - self.epsilon) + 0.5) * 255.0

    def _regulariser(self, mask):
        # mask is (k, H, W, 1): the per-pixel mask shared by all channels.
        if self.regularization == "l1":
            return tf.reduce_sum(tf.abs(mask), axis=[1, 2, 3])
        if self.regularization == "l2":
            return tf.sqrt(tf.reduce_sum(tf.square(mask), axis=[1, 2, 3]))
        return tf.zeros(tf.shape(mask)[:1])

    def _batch(self, idx):
        """Loss, attack success and norm of one batch for the active slots `idx`."""
        # Each slot draws its own batch from (seed, label, batch count), so a
        # label's result does not depend on which labels share the graph.
        n = tf.shape(self.x)[0]
        targets = tf.gather(self.target, idx)
        seeds = tf.stack(
            [
                self.seed * 1_000_003 + targets + 7_919 * tf.gather(self.restart, idx),
                tf.cast(tf.gather(self.adam_t, idx), tf.int32),
            ],
            axis=1,
        )
        if self.y is None:
            picks = tf.map_fn(
                lambda s: tf.random.stateless_uniform([self.batch_size], s, 0, n, dtype=tf.int32),
                seeds,
                fn_output_signature=tf.int32,
            )
        else:  # uniform over the samples of the slot's source classes
            allowed = tf.gather(tf.gather(self.pool, idx), self.y, axis=1) > 0  # (k, N)
            logits = tf.where(allowed, 0.0, -1e9)
            picks = tf.map_fn(
                lambda a: tf.cast(
                    tf.random.stateless_categorical(
                        a[0][None], self.batch_size, tf.cast(a[1], tf.int32)
                    )[0],
                    tf.int32,
                ),
                (logits, seeds),
                fn_output_signature=tf.int32,
            )
        xb = tf.gather(self.x, picks)  # (k, B, H, W, C)
        cost = tf.gather(self.state["cost"], idx)
        with tf.GradientTape() as tape:
            mt = tf.gather(self.mask_tanh, idx)
            pt = tf.gather(self.pattern_tanh, idx)
            tape.watch([mt, pt])
            mask, pattern = self._masks(mt), self._patterns(pt)
            stamped = (1 - mask[:, None]) * xb + mask[:, None] * pattern[:, None]
            k = tf.shape(idx)[0]
            flat = tf.reshape(stamped, tf.concat([[k * self.batch_size], tf.shape(xb)[2:]], 0))
            out = self.model(preprocess(flat, self.intensity), training=False)
            labels = tf.repeat(targets, self.batch_size)
            if self.from_logits:  # one objective for a softmax model and its logits twin
                out = tf.nn.softmax(out)
            ce = LOSSES[self.loss](tf.gather(out, labels, batch_dims=1))
            ce = tf.reduce_mean(tf.reshape(ce, [k, self.batch_size]), axis=1)
            reg = self._regulariser(mask)
            loss = ce + cost * reg
            total = tf.reduce_sum(loss)
        g_mask, g_pattern = tape.gradient(total, [mt, pt])
        hit = tf.cast(tf.equal(tf.argmax(out, axis=1, output_type=tf.int32), labels), tf.float32)
        acc = tf.reduce_mean(tf.reshape(hit, [k, self.batch_size]), axis=1)
        self._adam(idx, g_mask, g_pattern)
        return tf.stack([ce, reg, loss, acc], axis=1)

    def _adam(self, idx, g_mask, g_pattern):
        """Keras-2 Adam (beta_1 0.5, beta_2 0.9, epsilon 1e-7), one step count per slot."""
        b1, b2, eps = 0.5, 0.9, 1e-7
        t = tf.gather(self.adam_t, idx) + 1.0
        self.adam_t.scatter_nd_update(idx[:, None], t)
        lr_t = self.lr * tf.sqrt(1 - b2**t) / (1 - b1**t)
        for var, grad, m_name, v_name in (
            (self.mask_tanh, g_mask, "m_mask", "v_mask"),
            (self.pattern_tanh, g_pattern, "m_pattern", "v_pattern"),
        ):
            m = b1 * tf.gather(self.adam[m_name], idx) + (1 - b1) * grad
            v = b2 * tf.gather(self.adam[v_name], idx) + (1 - b2) * tf.square(grad)
            self.adam[m_name].scatter_nd_update(idx[:, None], m)
            self.adam[v_name].scatter_nd_update(idx[:, None], v)
            shape = tf.concat([tf.shape(idx), tf.ones([tf.rank(grad) - 1], tf.int32)], 0)
            step = tf.reshape(lr_t, shape) * m / (tf.sqrt(v) + eps)
            var.scatter_nd_update(idx[:, None], tf.gather(var, idx) - step)

    def _run_steps(self, n_steps):
        """Up to `n_steps` optimisation steps of every active slot; returns their logs."""
        logs = tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[self.slots, 8])
        for _ in tf.range(n_steps):
            active = (self.assigned > 0) & (self.state["done"] == 0)
            if not tf.reduce_any(active):
                break
            idx = tf.cast(tf.where(active)[:, 0], tf.int32)
            mask_start = self._masks(tf.gather(self.mask_tanh, idx))
            pattern_start = self._patterns(tf.gather(self.pattern_tanh, idx))
            sums = tf.zeros([tf.shape(idx)[0], 4])
            for _ in tf.range(self._mini_batch):
                sums += self._batch(idx)
            means = sums / tf.cast(self._mini_batch, tf.float32)
            ce, reg, loss, acc = means[:, 0], means[:, 1], means[:, 2], means[:, 3]
            old = {k: tf.gather(v, idx) for k, v in self.state.items()}
            cfg = dict(self.cfg, attack_succ_threshold=tf.gather(self.succ_threshold, idx))
            new, improved = cost_schedule_update(old, acc, reg, **cfg)
            mask_end = self._masks(tf.gather(self.mask_tanh, idx))
            pattern_end = self._patterns(tf.gather(self.pattern_tanh, idx))
            mask_now = mask_start if self.keep_step_start else mask_end
            pattern_now = pattern_start if self.keep_step_start else pattern_end
            keep_m = tf.where(
                improved[:, None, None, None], mask_now, tf.gather(self.mask_best, idx)
            )
            keep_p = tf.where(
                improved[:, None, None, None], pattern_now, tf.gather(self.pattern_best, idx)
            )
            self.mask_best.scatter_nd_update(idx[:, None], keep_m)
            self.pattern_best.scatter_nd_update(idx[:, None], keep_p)
            self.has_best.scatter_nd_update(
                idx[:, None],
                tf.maximum(tf.gather(self.has_best, idx), tf.cast(improved, tf.float32)),
            )
            for key, value in new.items():
                self.state[key].scatter_nd_update(idx[:, None], value)
            # log row: slot, step, ce, reg, loss, acc, reg_best, cost (cost used in the step)
            row = tf.stack(
                [
                    tf.cast(idx, tf.float32),
                    new["step"],
                    ce,
                    reg,
                    loss,
                    acc,
                    new["reg_best"],
                    old["cost"],
                ],
                axis=1,
            )
            logs = logs.write(
                logs.size(),
                tf.pad(row, [[0, self.slots - tf.shape(idx)[0]], [0, 0]], constant_values=-1.0),
            )
        return logs.stack()

    # ------------------------------------------------------------- host
    def _init_slot(
        self,
        slot,
        target,
        pattern_init=None,
        mask_init=None,
        sources=None,
        restart=0,
        threshold=None,
    ):
        h, w, c = self.image_shape
        sources = None if sources is None else sorted(int(v) for v in sources)
        # per job: a label's randomness does not depend on the other jobs
        key = [self.seed, int(target)] + ([1_000_000 + int(restart)] if restart else [])
        rng = np.random.default_rng(key + (sources or []))
        if mask_init is None:
            mask_init = rng.random(self.mask_shape)  # drawn anyway: same pattern stream
            if self.mask_init != "random":
                mask_init = np.full(self.mask_shape, float(self.mask_init))
        if pattern_init is None:
            pattern_init = rng.random((h, w, c)) * 255.0
        mask_init = np.asarray(mask_init, np.float32).reshape(self.mask_shape + (1,))
        pattern_init = np.asarray(pattern_init, np.float32).reshape((h, w, c))
        squash = 2 - self.epsilon
        self.mask_tanh[slot].assign(np.arctanh((np.clip(mask_init, 0, 1) - 0.5) * squash))
        self.pattern_tanh[slot].assign(
            np.arctanh((np.clip(pattern_init, 0, 255) / 255.0 - 0.5) * squash)
        )
        for v in self.adam.values():
            v[slot].assign(tf.zeros(v.shape[1:]))
        self.adam_t[slot].assign(0.0)
        fresh = initial_state(1, self.cfg["init_cost"], self.reset_cost_to_zero)
        for key, var in self.state.items():
            var[slot].assign(fresh[key][0])
        self.mask_best[slot].assign(tf.zeros(self.mask_best.shape[1:]))
        self.pattern_best[slot].assign(tf.zeros(self.pattern_best.shape[1:]))
        self.has_best[slot].assign(0.0)
        self.target[slot].assign(int(target))
        self.restart[slot].assign(int(restart))
        self.succ_threshold[slot].assign(
            self.cfg["attack_succ_threshold"] if threshold is None else float(threshold)
        )
        pool = np.ones(self.num_classes, np.float32)
        if sources is not None:
            if self.y is None:
                raise ValueError("Source classes need the labels y of the data: pass y=.")
            pool[:] = 0.0
            pool[sources] = 1.0
        self.pool[slot].assign(pool)
        self.assigned[slot].assign(1.0)

    def save_slot(self, slot):
        """The whole optimisation state of a slot, as numpy arrays."""
        return [v[slot].numpy() for v in self._slot_vars]

    def load_slot(self, slot, saved):
        """Puts a state from `save_slot` back into a slot and marks it active."""
        for v, value in zip(self._slot_vars, saved):
            v[slot].assign(value)
        self.assigned[slot].assign(1.0)

    def _collect(self, slot):
        """The finished slot's trigger: best valid one, else (or if save_last) the last."""
        if self.has_best[slot].numpy() > 0 and not self.save_last:
            mask = self.mask_best[slot].numpy()
            pattern = self.pattern_best[slot].numpy()
        else:
            mask = self._masks(self.mask_tanh[slot : slot + 1]).numpy()[0]
            pattern = self._patterns(self.pattern_tanh[slot : slot + 1]).numpy()[0]
        u = self.upsample_size
        return pattern, mask[..., 0], mask[::u, ::u, 0]  # super-pixels repeat u x u

    def _check_labels(self, labels):
        labels = [int(t) for t in labels]
        for t in labels:
            if not 0 <= t < self.num_classes:
                raise ValueError(
                    f"Label {t} is out of range: the model has labels 0..{self.num_classes - 1}."
                )
        return labels

    def advance(
        self,
        labels,
        n_steps,
        states=None,
        sources=None,
        restarts=None,
        thresholds=None,
        mini_batch=None,
    ):
        """Runs `n_steps` more steps of each job (a short pass); returns its state.

        Used by the low-cost scan: jobs are swapped in and out of the slots,
        so any number of labels can be advanced together.

        Args:
            labels: target label of each job.
            n_steps: steps to run.
            states: per job, a state from an earlier `advance`, or `None` to
                start fresh. Defaults to `None`.
            sources: per job, source classes to sample from, or `None`.
                Defaults to `None`.
            restarts: per job started fresh, its restart index (as in
                `run`). Defaults to `None` (all 0).
            thresholds: per job started fresh, its success threshold (as in
                `run`). Defaults to `None`.
            mini_batch: batches per step during this pass. Defaults to
                `None` (the engine's `mini_batch`).

        Returns:
            list of `(state, l1_norm_of_current_mask, done)` per job.
        """
        if mini_batch is not None:
            self._mini_batch.assign(int(mini_batch))
            try:
                return self.advance(labels, n_steps, states, sources, restarts, thresholds)
            finally:
                self._mini_batch.assign(self.mini_batch)
        labels = self._check_labels(labels)
        states = states or [None] * len(labels)
        sources = sources or [None] * len(labels)
        restarts = restarts or [0] * len(labels)
        thresholds = thresholds or [None] * len(labels)
        out = []
        for start in range(0, len(labels), self.slots):
            chunk = range(start, min(start + self.slots, len(labels)))
            self.assigned.assign(tf.zeros(self.slots))
            for slot, i in enumerate(chunk):
                if states[i] is None:
                    self._init_slot(
                        slot,
                        labels[i],
                        sources=sources[i],
                        restart=restarts[i],
                        threshold=thresholds[i],
                    )
                else:
                    self.load_slot(slot, states[i])
            self._run(tf.constant(int(n_steps)))
            masks = self._masks(self.mask_tanh).numpy()
            done = self.state["done"].numpy()
            for slot, i in enumerate(chunk):
                out.append((self.save_slot(slot), float(masks[slot].sum()), bool(done[slot] > 0)))
        return out

    def run(
        self,
        labels,
        pattern_init=None,
        mask_init=None,
        on_done=None,
        sources=None,
        states=None,
        restarts=None,
        thresholds=None,
    ):
        """Optimises a trigger for each job (a target label); returns their results.

        Args:
            labels: target label of each job, processed in this order.
            pattern_init: `(H, W, C)` initial pattern for every job, or
                `None` for uniform [0, 255). Defaults to `None`.
            mask_init: `(h, w)` initial (super-pixel) mask, or `None` for
                uniform [0, 1). Defaults to `None`.
            on_done: called as `on_done(index, result)` when job `index`
                finishes (e.g. to save it at once). Defaults to `None`.
            sources: per job, the source classes whose samples it uses (a
                partial backdoor), or `None` for all samples. Needs `y`.
                Defaults to `None`.
            states: per job, a state from `advance` to continue from, or
                `None`. Defaults to `None`.
            restarts: per job, a restart index: the same label with another
                index starts from another random trigger and sees other
                batches (the scan's `restarts` setting). Defaults to `None`
                (all 0).
            thresholds: per job, the attack success a valid trigger needs,
                or `None` for `attack_succ_threshold` (the divide-and-conquer
                search lowers it for groups). Defaults to `None`.

        Returns:
            list (one per job) of dicts with `label`, `pattern` (H, W, C),
            `mask` (H, W, upsampled), `mask_raw` (super-pixel mask),
            `l1_norm`, `steps`, `seconds` (wall time while in flight),
            `found` (a trigger reached the success threshold) and `logs`
            (reference tuples `(step, ce, reg, loss, acc, reg_best, cost)`).
        """
        labels = self._check_labels(labels)
        sources = sources or [None] * len(labels)
        states = states or [None] * len(labels)
        restarts = restarts or [0] * len(labels)
        thresholds = thresholds or [None] * len(labels)
        queue = list(range(len(labels)))
        self.assigned.assign(tf.zeros(self.slots))
        slot_job, started, logs, results = {}, {}, {}, [None] * len(labels)

        def fill(slot):
            if queue:
                job = queue.pop(0)
                if states[job] is None:
                    self._init_slot(
                        slot,
                        labels[job],
                        pattern_init,
                        mask_init,
                        sources[job],
                        restarts[job],
                        thresholds[job],
                    )
                else:
                    self.load_slot(slot, states[job])
                slot_job[slot], started[slot], logs[job] = job, time.time(), []

        for slot in range(self.slots):
            fill(slot)
        while slot_job:
            rows = self._run(tf.constant(self.steps_per_call)).numpy()
            for row in rows.reshape(-1, 8):
                if row[0] >= 0:
                    logs[slot_job[int(row[0])]].append(
                        (int(row[1]),) + tuple(float(v) for v in row[2:])
                    )
            done = self.state["done"].numpy()
            for slot in [s for s in list(slot_job) if done[s] > 0]:
                job = slot_job.pop(slot)
                pattern, mask, raw = self._collect(slot)
                results[job] = {
                    "label": labels[job],
                    "sources": None
                    if sources[job] is None
                    else sorted(int(v) for v in sources[job]),
                    "pattern": pattern,
                    "mask": mask,
                    "mask_raw": raw,
                    "l1_norm": float(np.sum(np.abs(mask))),
                    "steps": int(self.state["step"][slot].numpy()),
                    "found": bool(self.has_best[slot].numpy() > 0),
                    "seconds": time.time() - started[slot],
                    "logs": logs[job],
                }
                self.assigned[slot].assign(0.0)
                if on_done is not None:
                    on_done(job, results[job])
                fill(slot)
        return results
