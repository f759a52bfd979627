"""The reference `gtsrb_visualize_example.py` helpers around the `Visualizer`.

The Neural Cleanse example script defines `build_data_loader`,
`visualize_trigger_w_mask` and `save_pattern` around the `Visualizer`; scripts that imported them from it keep their calls. Each is a
thin entry point: `visualize_trigger_w_mask` runs `Visualizer.visualize`
from a random trigger, `save_pattern` writes the example's three PNGs with
`nc_tf.utils_backdoor.dump_image`, and `build_data_loader` gives shuffled
batches as a `tf.data.Dataset` (Keras 3 has no `ImageDataGenerator`).
`RESULT_DIR` and `IMG_FILENAME_TEMPLATE` are the example's; the
reference `mad_outlier_detection.py` reads the masks back from them.
"""

import os
import time

import numpy as np

RESULT_DIR = "results"  # folder of the PNGs
IMG_FILENAME_TEMPLATE = "gtsrb_visualize_%s_label_%d.png"  # % (kind, label)
BATCH_SIZE = 32  # images per batch


def build_data_loader(X, Y, batch_size=BATCH_SIZE, seed=None):
    """Shuffled `(x, y)` batches of `X`, `Y`, as the reference's `ImageDataGenerator().flow`.

    The reference used Keras 2's `ImageDataGenerator().flow(X, Y,
    batch_size)`, an endless shuffled iterator; Keras 3 dropped it. This
    returns TensorFlow's equivalent: a `tf.data.Dataset` that yields one
    shuffled pass over the data each time it is iterated (reshuffled every
    pass). Pass it to `Visualizer.visualize` or iterate it.

    Args:
        X: images, as the model takes them (or raw with `raw_input_flag`).
        Y: their labels (one-hot in the reference).
        batch_size: samples per batch. Defaults to `32`.
        seed: seed of the shuffling. Defaults to `None` (fresh entropy).

    Returns:
        a `tf.data.Dataset` of `(x, y)` batches.

    Example:

    >>> loader = build_data_loader(x_test, y_test)  # doctest: +SKIP
    >>> x_batch, y_batch = next(iter(loader))  # doctest: +SKIP
    """
    import tensorflow as tf

    X, Y = np.asarray(X), np.asarray(Y)
    if len(X) != len(Y) or len(X) == 0:
        raise ValueError(f"X and Y must be non-empty and equally long ({len(X)} vs {len(Y)}).")
    return (
        tf.data.Dataset.from_tensor_slices((X, Y))
        .shuffle(len(X), seed=seed, reshuffle_each_iteration=True)
        .batch(int(batch_size))
    )


def visualize_trigger_w_mask(
    visualizer,
    gen,
    y_target,
    save_pattern_flag=True,
    result_dir=RESULT_DIR,
    img_filename_template=IMG_FILENAME_TEMPLATE,
    seed=None,
):
    """Reverse-engineers the trigger of one label from a random start (reference example).

    The pattern starts uniform in [0, 255), the (super-pixel) mask uniform
    in [0, 1), as in the example; then `visualizer.visualize` runs. When
    the Visualizer is verbose this prints the example's lines (pattern and
    mask shape and range, the mask's L1 norm, the time taken).

    Args:
        visualizer: a `nc_tf.visualizer.Visualizer`.
        gen: the data, as `Visualizer.visualize` takes it (e.g. from
            `build_data_loader`).
        y_target: the label to reverse-engineer.
        save_pattern_flag: write the PNGs with `save_pattern`. Defaults to
            `True`.
        result_dir: folder of the PNGs. Defaults to `"results"`.
        img_filename_template: file name template `% (kind, label)`.
            Defaults to `"gtsrb_visualize_%s_label_%d.png"`.
        seed: seed of the random start. Defaults to `None` (fresh entropy).

    Returns:
        `(pattern, mask_upsample, logs)`; `logs` is `None` when the
        Visualizer does not return logs.

    Example:

    >>> pattern, mask, logs = visualize_trigger_w_mask(viz, loader, 33)  # doctest: +SKIP
    """
    started = time.time()
    rng = np.random.default_rng(seed)
    pattern = rng.random(visualizer.input_shape) * 255.0
    mask = rng.random(visualizer.mask_size)
    out = visualizer.visualize(gen=gen, y_target=y_target, pattern_init=pattern, mask_init=mask)
    pattern, mask, mask_upsample = out[:3]
    logs = out[3] if len(out) > 3 else None
    if visualizer.verbose:
        print(
            "pattern, shape: %s, min: %f, max: %f"
            % (str(pattern.shape), np.min(pattern), np.max(pattern))
        )
        print("mask, shape: %s, min: %f, max: %f" % (str(mask.shape), np.min(mask), np.max(mask)))
        print("mask norm of label %d: %f" % (y_target, np.sum(np.abs(mask_upsample))))
        print("visualization cost %f seconds" % (time.time() - started))
    if save_pattern_flag:
        save_pattern(pattern, mask_upsample, y_target, result_dir, img_filename_template)
    return pattern, mask_upsample, logs


def save_pattern(
    pattern, mask, y_target, result_dir=RESULT_DIR, img_filename_template=IMG_FILENAME_TEMPLATE
):
    """Writes a trigger's `pattern`, `mask` (x 255) and `fusion` (pattern x mask) PNGs.

    As the reference example, through `nc_tf.utils_backdoor.dump_image`
    (8-bit by truncation), to `result_dir/img_filename_template % (kind,
    y_target)`; the folder is created if missing.

    Args:
        pattern: `(H, W, C)` raw pattern in [0, 255].
        mask: `(H, W)` mask in [0, 1].
        y_target: the label, in the file names.
        result_dir: the folder. Defaults to `"results"`.
        img_filename_template: file name template `% (kind, label)`.
            Defaults to `"gtsrb_visualize_%s_label_%d.png"`.

    Example:

    >>> save_pattern(pattern, mask_upsample, 33)  # doctest: +SKIP
    """
    from nc_tf.utils_backdoor import dump_image

    os.makedirs(result_dir, exist_ok=True)
    pattern = np.asarray(pattern)
    mask = np.asarray(mask)[..., None]
    images = {"pattern": pattern, "mask": mask * 255, "fusion": pattern * mask}
    for kind, image in images.items():
        dump_image(image, os.path.join(result_dir, img_filename_template % (kind, y_target)), "png")
