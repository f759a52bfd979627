"""Undo TensorFlow's 128 KiB malloc mmap threshold, which makes array-heavy work slow.

TensorFlow 2.21's generator dataset (behind every `fit` on a
`keras.utils.PyDataset`) calls `mallopt(M_MMAP_THRESHOLD, 128 KiB)` once per
process (its log says "Memory patch applied"). From then on every buffer
above 128 KiB (a batch of images, a tensor) is a fresh `mmap`, zeroed page
by page and unmapped on release, which spends much of an array-heavy run in
the kernel.

`restore_malloc_threshold()` provokes TensorFlow's one-off call at once and
then sets the threshold to 32 MiB (the ceiling of glibc's own dynamic
threshold). The `nc-tf` command, the benchmarks and the test suite call it
first; call it yourself in a long Python job. Set the environment variable
`NC_TF_KEEP_MALLOC=1` to keep TensorFlow's setting. Without glibc (macOS,
Windows, musl) it does nothing.
"""

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD = 32 * 1024 * 1024
_done = False


def restore_malloc_threshold(threshold=THRESHOLD):
    """Triggers TensorFlow's malloc patch now, then sets the mmap threshold to `threshold`.

    Idempotent: later calls do nothing.

    Args:
        threshold: bytes; allocations at least this large get their own
            `mmap`. Defaults to `32 MiB`.

    Returns:
        `True` if the threshold was set, `False` if skipped (already done,
        `NC_TF_KEEP_MALLOC=1`, or no glibc).

    Example:

    >>> restore_malloc_threshold() in (True, False)
    True
    """
    global _done
    if _done or os.environ.get("NC_TF_KEEP_MALLOC") == "1":
        return False
    _done = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    import tensorflow as tf

    # One element through a generator dataset: TensorFlow applies its patch now.
    for _ in tf.data.Dataset.from_generator(
        lambda: iter((0,)), output_signature=tf.TensorSpec((), tf.int32)
    ):
        pass
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
