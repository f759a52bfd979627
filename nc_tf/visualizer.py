"""`Visualizer`: the reference Neural Cleanse trigger reverse-engineering API.

Same class constants, constructor parameters, order and defaults as the
reference `visualizer.py` (without its `COST_MULTIPLIER = 1.5,` tuple bug),
the same `visualize(gen, y_target, pattern_init, mask_init)` returning
`(pattern_best, mask_best, mask_upsample_best, logs)`, and its
`reset_opt`, `reset_state` and `save_tmp_func`. The optimisation runs on
`nc_tf.engine.ReverseEngine`, the compiled multi-label engine that
`nc_tf.scan` also uses.
"""

import os

import numpy as np

from nc_tf.engine import ReverseEngine
from nc_tf.preprocess import reverse_preprocess


class Visualizer:
    """Reverse-engineers the smallest trigger that sends inputs to a label.

    The class constants are the reference's defaults (`UPSAMPLE_SIZE`,
    `INTENSITY_RANGE`, ..., `EARLY_STOP_PATIENCE = 2 * PATIENCE = 20`,
    `SAVE_TMP`, `TMP_DIR`, `RAW_INPUT_FLAG`). As in the reference,
    `early_stop_patience` defaults to the constant 20 whatever `patience`
    is given.

    Args:
        model: Keras classifier (softmax or logits output).
        intensity_range: the model's preprocessing: `"raw"`, `"mnist"`,
            `"imagenet"` or `"inception"`. The trigger is always applied to
            raw pixels.
        regularization: `"l1"`, `"l2"` or `None`.
        input_shape: `(H, W, C)`.
        init_cost: first non-zero cost (lambda).
        steps: maximum optimisation steps.
        mini_batch: batches per step.
        lr: Adam learning rate (beta_1 0.5, beta_2 0.9).
        num_classes: number of labels.
        upsample_size: super-pixel side of the mask. Defaults to `1`.
        attack_succ_threshold: success rate of a valid trigger. Defaults to
            `0.99`.
        patience: steps before moving the cost. Defaults to `10`.
        cost_multiplier: cost up factor; down is its power 1.5. Defaults to
            `1.5`.
        reset_cost_to_zero: start at cost 0. Defaults to `True`.
        mask_min: lower clip of the initial mask. Defaults to `0`.
        mask_max: upper clip of the initial mask. Defaults to `1`.
        color_min: lower clip of the initial pattern. Defaults to `0`.
        color_max: upper clip of the initial pattern. Defaults to `255`.
        img_color: channels. Defaults to `3`.
        shuffle: kept for compatibility; batches are always random draws.
            Defaults to `True`.
        batch_size: images per batch. Defaults to `32`.
        verbose: 0 silent, 1 summary, 2 a line per step. Defaults to `1`.
        return_logs: return the per-step logs as a fourth value (else
            three values, as the reference). Defaults to `True`.
        save_last: return the last trigger instead of the best. Defaults to
            `False`.
        epsilon: tanh squashing epsilon. Defaults to `1e-7`.
        early_stop: stop when the best norm stalls. Defaults to `True`.
        early_stop_threshold: stall ratio. Defaults to `0.99`.
        early_stop_patience: stalled steps before stopping. Defaults to
            `20` (`EARLY_STOP_PATIENCE`, fixed when the reference class is
            defined; pass `2 * patience` to follow `patience`).
        save_tmp: save the returned trigger as PNGs in `tmp_dir` (see
            `save_tmp_func`). Defaults to `False`.
        tmp_dir: folder of `save_tmp`. Defaults to `"tmp"`.
        raw_input_flag: the data given to `visualize` is raw [0, 255]
            instead of preprocessed. Defaults to `False`.
        seed: seed of the batch sampling. Defaults to `0`.
        loss: the attack loss: `"reference"`, what the reference code
            effectively minimised (`16.12 (1 - p_t)`, see
            `nc_tf.engine.LOSSES`), or `"crossentropy"` (`-log p_t`).
            Defaults to `"reference"`.

    Example:

    >>> viz = Visualizer(model, "raw", "l1", (28, 28, 1), 1e-3, 100, 4, 0.1, 10,
    ...                  patience=5, cost_multiplier=2, img_color=1)  # doctest: +SKIP
    >>> pattern, mask, mask_up, logs = viz.visualize(x_test, 7, pattern_init, mask_init)  # doctest: +SKIP
    >>> Visualizer.EARLY_STOP_PATIENCE
    20
    """

    # The reference class constants: the constructor's defaults.
    UPSAMPLE_SIZE = 1
    INTENSITY_RANGE = "raw"
    REGULARIZATION = "l1"
    ATTACK_SUCC_THRESHOLD = 0.99
    PATIENCE = 10
    COST_MULTIPLIER = 1.5
    RESET_COST_TO_ZERO = True
    MASK_MIN = 0
    MASK_MAX = 1
    COLOR_MIN = 0
    COLOR_MAX = 255
    IMG_COLOR = 3
    SHUFFLE = True
    BATCH_SIZE = 32
    VERBOSE = 1
    RETURN_LOGS = True
    SAVE_LAST = False
    EPSILON = 1e-7  # Keras' epsilon
    EARLY_STOP = True
    EARLY_STOP_THRESHOLD = 0.99
    EARLY_STOP_PATIENCE = 2 * PATIENCE
    SAVE_TMP = False
    TMP_DIR = "tmp"
    RAW_INPUT_FLAG = False

    def __init__(
        self,
        model,
        intensity_range,
        regularization,
        input_shape,
        init_cost,
        steps,
        mini_batch,
        lr,
        num_classes,
        upsample_size=UPSAMPLE_SIZE,
        attack_succ_threshold=ATTACK_SUCC_THRESHOLD,
        patience=PATIENCE,
        cost_multiplier=COST_MULTIPLIER,
        reset_cost_to_zero=RESET_COST_TO_ZERO,
        mask_min=MASK_MIN,
        mask_max=MASK_MAX,
        color_min=COLOR_MIN,
        color_max=COLOR_MAX,
        img_color=IMG_COLOR,
        shuffle=SHUFFLE,
        batch_size=BATCH_SIZE,
        verbose=VERBOSE,
        return_logs=RETURN_LOGS,
        save_last=SAVE_LAST,
        epsilon=EPSILON,
        early_stop=EARLY_STOP,
        early_stop_threshold=EARLY_STOP_THRESHOLD,
        early_stop_patience=EARLY_STOP_PATIENCE,
        save_tmp=SAVE_TMP,
        tmp_dir=TMP_DIR,
        raw_input_flag=RAW_INPUT_FLAG,
        seed=0,
        loss="reference",
    ):
        if tuple(input_shape)[-1] != img_color:
            raise ValueError(
                f"input_shape {tuple(input_shape)} has {tuple(input_shape)[-1]} "
                f"channels but img_color is {img_color}; make them agree."
            )
        if int(model.output_shape[-1]) != int(num_classes):
            raise ValueError(
                f"num_classes is {num_classes} but the model has {model.output_shape[-1]} outputs."
            )
        self.model = model
        self.intensity_range, self.regularization = intensity_range, regularization
        self.input_shape = tuple(input_shape)
        self.num_classes, self.img_color = int(num_classes), img_color
        self.init_cost, self.reset_cost_to_zero = init_cost, reset_cost_to_zero
        self.upsample_size = int(upsample_size)
        self.mask_size = tuple(-(-int(v) // self.upsample_size) for v in self.input_shape[:2])
        self.mask_min, self.mask_max = mask_min, mask_max
        self.color_min, self.color_max = color_min, color_max
        self.verbose, self.return_logs = verbose, return_logs
        self.save_tmp, self.tmp_dir = save_tmp, tmp_dir
        self.raw_input_flag, self.shuffle = raw_input_flag, shuffle
        self.engine_kwargs = dict(
            intensity=intensity_range,
            regularization=regularization,
            init_cost=init_cost,
            steps=steps,
            mini_batch=mini_batch,
            batch_size=batch_size,
            lr=lr,
            upsample_size=upsample_size,
            attack_succ_threshold=attack_succ_threshold,
            patience=patience,
            cost_multiplier=cost_multiplier,
            reset_cost_to_zero=reset_cost_to_zero,
            early_stop=early_stop,
            early_stop_threshold=early_stop_threshold,
            early_stop_patience=early_stop_patience,
            save_last=save_last,
            epsilon=epsilon,
            slots=1,
            seed=seed,
            loss=loss,
        )
        self._engine, self._engine_data = None, None
        # The current trigger (what `save_tmp_func` writes): the initial one after
        # `reset_state`, the returned one after `visualize`.
        self.cost = 0.0 if reset_cost_to_zero else float(init_cost)
        self.pattern_raw = self.mask = self.mask_upsample = None

    def _raw_images(self, gen):
        """Raw [0, 255] images from an array, `(x, y)`, PyDataset, tf.data or generator."""
        x = collect_images(gen, limit=20000)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"The data has images shaped {x.shape[1:]}, the Visualizer "
                f"was built for {self.input_shape}."
            )
        return x if self.raw_input_flag else np.asarray(reverse_preprocess(x, self.intensity_range))

    def reset_opt(self):
        """Zeroes the optimiser state: Adam's moments and step count (reference `reset_opt`).

        `visualize` starts every label from a fresh optimiser; this resets
        the engine of the last `visualize` call (nothing to do before the
        first).

        Example:

        >>> viz.reset_opt()  # doctest: +SKIP
        """
        if self._engine is None:
            return
        for var in [*self._engine.adam.values(), self._engine.adam_t]:
            var.assign(np.zeros(var.shape, var.dtype.as_numpy_dtype))

    def reset_state(self, pattern_init, mask_init):
        """Sets the cost, the initial trigger and a fresh optimiser (reference `reset_state`).

        The cost becomes 0 (or `init_cost` without `reset_cost_to_zero`);
        the mask is clipped to [`mask_min`, `mask_max`] and the pattern to
        [`color_min`, `color_max`]; `visualize` starts from them. Called by
        `visualize`.

        Args:
            pattern_init: `(H, W, C)` initial pattern in [0, 255].
            mask_init: `(H, W)`, or super-pixel `(h, w)`, initial mask in
                [0, 1].

        Example:

        >>> viz.reset_state(np.full((28, 28, 1), 128.0), np.full((28, 28), 0.1))  # doctest: +SKIP
        >>> viz.cost  # doctest: +SKIP
        0.0
        """
        if self.verbose >= 2:
            print("resetting state")
        self.cost = 0.0 if self.reset_cost_to_zero else float(self.init_cost)
        mask = np.asarray(mask_init, np.float32)
        u = self.upsample_size
        if mask.shape[:2] == self.input_shape[:2] and u > 1:
            mask = mask[::u, ::u]
        if mask.shape[:2] != self.mask_size:
            raise ValueError(
                f"mask_init is shaped {mask.shape}; expected {self.mask_size} "
                f"(or {self.input_shape[:2]})."
            )
        self.mask = np.clip(mask.reshape(self.mask_size), self.mask_min, self.mask_max)
        h, w = self.input_shape[:2]
        self.mask_upsample = np.repeat(np.repeat(self.mask, u, 0), u, 1)[:h, :w]
        self.pattern_raw = np.clip(
            np.asarray(pattern_init, np.float32), self.color_min, self.color_max
        )
        self.reset_opt()

    def save_tmp_func(self, step):
        """Writes the current mask and fusion as `tmp_mask_step_N.png`, `tmp_fusion_step_N.png`.

        As the reference `save_tmp_func`, in `tmp_dir`, through
        `nc_tf.utils_backdoor.dump_image`. The reference wrote the trigger
        of every step; the engine runs its steps compiled, so `visualize`
        (with `save_tmp`) writes the returned trigger once, under its last
        step.

        Args:
            step: the step number in the file names.

        Example:

        >>> viz.save_tmp_func(0)  # doctest: +SKIP
        """
        from nc_tf.utils_backdoor import dump_image

        if self.mask_upsample is None:
            raise ValueError("No trigger yet: call reset_state or visualize first.")
        os.makedirs(self.tmp_dir, exist_ok=True)
        mask = self.mask_upsample[..., None]
        dump_image(mask * 255, os.path.join(self.tmp_dir, f"tmp_mask_step_{step}.png"), "png")
        dump_image(
            mask * self.pattern_raw,
            os.path.join(self.tmp_dir, f"tmp_fusion_step_{step}.png"),
            "png",
        )

    def visualize(self, gen, y_target, pattern_init, mask_init):
        """Reverse-engineers the trigger of `y_target` on the data of `gen`.

        Args:
            gen: clean samples: a numpy array, an `(x, y)` tuple, a
                `keras.utils.PyDataset`, a `tf.data.Dataset` or a generator
                of `(x, y)` batches, preprocessed for the model unless
                `raw_input_flag`.
            y_target: the label to reverse-engineer.
            pattern_init: `(H, W, C)` initial pattern in [0, 255].
            mask_init: `(H, W)` (or super-pixel `(h, w)`) initial mask in [0, 1].

        Returns:
            `(pattern_best, mask_best, mask_upsample_best, logs)`: pattern
            `(H, W, C)` raw, the super-pixel mask, the mask upsampled to
            `(H, W)`, and the reference log tuples `(step, ce, reg, loss,
            acc, reg_best, cost)`; without `return_logs` the first three
            only, as the reference.
        """
        if self._engine is None or self._engine_data is not gen:
            self._engine = ReverseEngine(self.model, self._raw_images(gen), **self.engine_kwargs)
            self._engine_data = gen
        engine = self._engine
        self.reset_state(pattern_init, mask_init)
        result = engine.run([y_target], pattern_init=self.pattern_raw, mask_init=self.mask)[0]
        self.cost = float(engine.state["cost"][0].numpy())
        self.pattern_raw, self.mask, self.mask_upsample = (
            result["pattern"],
            result["mask_raw"],
            result["mask"],
        )
        if self.verbose >= 2:
            for row in result["logs"]:
                print(
                    "step: %3d, cost: %.2E, attack: %.3f, loss: %f, ce: %f, reg: %f, reg_best: %f"
                    % (row[0], row[6], row[4], row[3], row[1], row[2], row[5])
                )
        if self.verbose:
            print(
                f"label {y_target}: {'found' if result['found'] else 'no valid trigger'}, "
                f"l1 {result['l1_norm']:.3f}, {result['steps']} steps"
            )
        if self.save_tmp:
            self.save_tmp_func(result["steps"])
        if not self.return_logs:
            return result["pattern"], result["mask_raw"], result["mask"]
        return result["pattern"], result["mask_raw"], result["mask"], result["logs"]


def collect_images(gen, limit=None):
    """Images from an array, `(x, y)`, `PyDataset`, `tf.data.Dataset` or generator.

    Sources are read until they end or `limit` images were read (needed for
    endless generators such as the reference `DataGenerator`).
    """
    if isinstance(gen, np.ndarray):
        return gen
    if isinstance(gen, tuple) and len(gen) == 2 and hasattr(gen[0], "shape"):
        return np.asarray(gen[0])
    import keras
    import tensorflow as tf

    if isinstance(gen, keras.utils.PyDataset):
        batches = (gen[i] for i in range(len(gen)))
    elif isinstance(gen, tf.data.Dataset):
        batches = gen.as_numpy_iterator()
    elif hasattr(gen, "__iter__") or hasattr(gen, "__next__"):
        batches = iter(gen)
    else:
        raise TypeError(
            f"Cannot read images from {type(gen).__name__}; pass a numpy array, "
            "(x, y), a keras.utils.PyDataset or a tf.data.Dataset."
        )
    out, count = [], 0
    for batch in batches:
        xb = np.asarray(batch[0] if isinstance(batch, (tuple, list)) else batch)
        out.append(xb)
        count += len(xb)
        if limit is not None and count >= limit:
            break
    if not out:
        raise ValueError("The data source yielded no images.")
    return np.concatenate(out)
