"""`Visualizer`: the reference Neural Cleanse trigger reverse-engineering API.

Same constructor parameters, order and defaults as the reference
`visualizer.py` (without its `COST_MULTIPLIER = 1.5,` tuple bug), and the
same `visualize(gen, y_target, pattern_init, mask_init)` returning
`(pattern_best, mask_best, mask_upsample_best, logs)`. The optimisation runs
on `nc_tf.engine.ReverseEngine`, the compiled multi-label engine that
`nc_tf.scan` also uses.
"""

import numpy as np

from nc_tf.engine import ReverseEngine
from nc_tf.preprocess import reverse_preprocess


class Visualizer:
    """Reverse-engineers the smallest trigger that sends inputs to a label.

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
        return_logs: return the per-step logs. Defaults to `True`.
        save_last: return the last trigger instead of the best. Defaults to
            `False`.
        epsilon: tanh squashing epsilon. Defaults to `1e-7`.
        early_stop: stop when the best norm stalls. Defaults to `True`.
        early_stop_threshold: stall ratio. Defaults to `0.99`.
        early_stop_patience: stalled steps before stopping. Defaults to
            `None` (= `2 * patience`).
        save_tmp: save the returned trigger as PNGs in `tmp_dir`. Defaults
            to `False`.
        tmp_dir: folder of `save_tmp`. Defaults to `"tmp"`.
        raw_input_flag: the data given to `visualize` is raw [0, 255]
            instead of preprocessed. Defaults to `False`.
        seed: seed of the batch sampling. Defaults to `0`.

    Example:

    >>> viz = Visualizer(model, "raw", "l1", (28, 28, 1), 1e-3, 100, 4, 0.1, 10,
    ...                  patience=5, cost_multiplier=2, img_color=1)  # doctest: +SKIP
    >>> pattern, mask, mask_up, logs = viz.visualize(x_test, 7, pattern_init, mask_init)  # doctest: +SKIP
    """

    def __init__(self, model, intensity_range, regularization, input_shape, init_cost, steps,
                 mini_batch, lr, num_classes, upsample_size=1, attack_succ_threshold=0.99,
                 patience=10, cost_multiplier=1.5, reset_cost_to_zero=True, mask_min=0,
                 mask_max=1, color_min=0, color_max=255, img_color=3, shuffle=True,
                 batch_size=32, verbose=1, return_logs=True, save_last=False, epsilon=1e-7,
                 early_stop=True, early_stop_threshold=0.99, early_stop_patience=None,
                 save_tmp=False, tmp_dir="tmp", raw_input_flag=False, seed=0):
        if tuple(input_shape)[-1] != img_color:
            raise ValueError(f"input_shape {tuple(input_shape)} has {tuple(input_shape)[-1]} "
                             f"channels but img_color is {img_color}; make them agree.")
        if int(model.output_shape[-1]) != int(num_classes):
            raise ValueError(f"num_classes is {num_classes} but the model has "
                             f"{model.output_shape[-1]} outputs.")
        self.model = model
        self.intensity_range = intensity_range
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.mask_min, self.mask_max = mask_min, mask_max
        self.color_min, self.color_max = color_min, color_max
        self.verbose, self.return_logs = verbose, return_logs
        self.save_tmp, self.tmp_dir = save_tmp, tmp_dir
        self.raw_input_flag, self.shuffle = raw_input_flag, shuffle
        self.engine_kwargs = dict(
            intensity=intensity_range, regularization=regularization, init_cost=init_cost,
            steps=steps, mini_batch=mini_batch, batch_size=batch_size, lr=lr,
            upsample_size=upsample_size, attack_succ_threshold=attack_succ_threshold,
            patience=patience, cost_multiplier=cost_multiplier,
            reset_cost_to_zero=reset_cost_to_zero, early_stop=early_stop,
            early_stop_threshold=early_stop_threshold,
            early_stop_patience=2 * patience if early_stop_patience is None else early_stop_patience,
            save_last=save_last, epsilon=epsilon, slots=1, seed=seed,
        )
        self._engine, self._engine_data = None, None

    def _raw_images(self, gen):
        """Raw [0, 255] images from an array, `(x, y)`, PyDataset, tf.data or generator."""
        x = collect_images(gen, limit=20000)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"The data has images shaped {x.shape[1:]}, the Visualizer "
                             f"was built for {self.input_shape}.")
        return x if self.raw_input_flag else np.asarray(
            reverse_preprocess(x, self.intensity_range))

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
            acc, reg_best, cost)` (empty unless `return_logs`).
        """
        if self._engine is None or self._engine_data is not gen:
            self._engine = ReverseEngine(self.model, self._raw_images(gen), **self.engine_kwargs)
            self._engine_data = gen
        engine = self._engine
        mask_init = np.asarray(mask_init, np.float32)
        if mask_init.shape[:2] == self.input_shape[:2] and engine.upsample_size > 1:
            mask_init = mask_init[:: engine.upsample_size, :: engine.upsample_size]
        result = engine.run(
            [y_target],
            pattern_init=np.clip(pattern_init, self.color_min, self.color_max),
            mask_init=np.clip(mask_init, self.mask_min, self.mask_max),
        )[0]
        if self.verbose >= 2:
            for row in result["logs"]:
                print("step: %3d, cost: %.2E, attack: %.3f, loss: %f, ce: %f, reg: %f, reg_best: %f"
                      % (row[0], row[6], row[4], row[3], row[1], row[2], row[5]))
        if self.verbose:
            print(f"label {y_target}: {'found' if result['found'] else 'no valid trigger'}, "
                  f"l1 {result['l1_norm']:.3f}, {result['steps']} steps")
        if self.save_tmp:
            from nc_tf.scan import save_trigger_pngs

            save_trigger_pngs(self.tmp_dir, "tmp", y_target, result["pattern"], result["mask"])
        logs = result["logs"] if self.return_logs else []
        return result["pattern"], result["mask_raw"], result["mask"], logs


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
        raise TypeError(f"Cannot read images from {type(gen).__name__}; pass a numpy array, "
                        "(x, y), a keras.utils.PyDataset or a tf.data.Dataset.")
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
