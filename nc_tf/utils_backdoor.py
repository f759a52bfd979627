"""The reference `utils_backdoor.py` names: `dump_image`, `load_dataset`, `fix_gpu_memory`.

Scripts written against the Neural Cleanse code keep working with
`from nc_tf import utils_backdoor`. Each name is a thin entry point:
`load_dataset` is `nc_tf.datasets.load_dataset`; `dump_image` writes an
image through Keras' `array_to_img(x, scale=False)` as the reference did,
so its 8-bit files truncate (not round) as the reference's did;
`fix_gpu_memory` is TensorFlow 2's form of the reference's TensorFlow 1
session setup.
"""

import numbers

from nc_tf.validation import check_scalar


def dump_image(x, filename, format):
    """Writes one image, values as they are in [0, 255], to a file.

    As the reference: Keras' `array_to_img(x, scale=False)`, which casts
    the values to 8 bits by truncation (a mask value of 0.999 * 255 is
    stored as 254), then PIL's `save`.

    Args:
        x: `(H, W, C)` image, C 1 (grayscale), 3 (RGB) or 4 (RGBA), values
            in [0, 255].
        filename: path of the file to write.
        format: PIL format name, e.g. `"png"`.

    Example:

    >>> import numpy as np
    >>> dump_image(np.full((4, 4, 1), 254.9), "mask.png", "png")  # stored as 254  # doctest: +SKIP
    """
    from keras.utils import array_to_img

    from nc_tf.io import atomic_file

    with atomic_file(filename, "wb") as f:
        array_to_img(x, scale=False).save(f, format)


def load_dataset(data_filename, keys=None):
    """Reads arrays from an h5 file, as the reference `utils_backdoor.load_dataset`.

    The one implementation is `nc_tf.datasets.load_dataset`; unlike the
    reference it names the keys a file lacks instead of returning `None`
    for them.

    Args:
        data_filename: path of an h5 file, e.g. `data/gtsrb_dataset_int.h5`.
        keys: names of the datasets to read. Defaults to `None` (all of
            them).

    Returns:
        dict mapping each key to a numpy array.

    Example:

    >>> d = load_dataset("data/gtsrb_dataset_int.h5", keys=["X_test", "Y_test"])  # doctest: +SKIP
    >>> d["Y_test"].shape  # doctest: +SKIP
    (12630, 43)
    """
    from nc_tf.datasets import load_dataset as load

    return load(data_filename, keys)


def fix_gpu_memory(mem_fraction=1):
    """Lets TensorFlow take GPU memory as it needs it, as the reference's session setup.

    The reference built a TensorFlow 1 session with `allow_growth=True`
    and `per_process_gpu_memory_fraction=mem_fraction`. TensorFlow 2 has no
    session: this turns memory growth on for every visible GPU, which is
    what `allow_growth` did. With growth on, the fraction only capped the
    growth; TensorFlow 2 caps memory in megabytes, not as a fraction, so a
    fraction below 1 is accepted but not applied. Call it first, before
    anything runs on a GPU; on a machine without a GPU it does nothing.

    Args:
        mem_fraction: the reference's per-process memory fraction, in
            (0, 1]. Defaults to `1`.

    Returns:
        the list of GPUs set to grow their memory (empty without a GPU);
        the reference returned its session.

    Raises:
        RuntimeError: a GPU was already in use, so its memory setting can
            no longer change.

    Example:

    >>> fix_gpu_memory()  # doctest: +SKIP
    []
    """
    check_scalar(mem_fraction, "mem_fraction", numbers.Real, low=0, high=1, include="right")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        if tf.config.experimental.get_memory_growth(gpu):
            continue
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            raise RuntimeError(
                "fix_gpu_memory must run before TensorFlow uses the GPU; call it "
                "at the start of the script."
            ) from None
    return gpus
