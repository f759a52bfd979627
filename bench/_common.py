"""Shared helpers of the benchmarks: peak memory and the model folder."""

import os
import resource

from nc_tf.memory import restore_malloc_threshold

MODELS_DIR = os.environ.get("NC_TF_BENCH_MODELS", os.path.join("runs", "bench"))


def peak_rss_gib():
    """Peak resident memory of this process so far, in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def print_peak_rss(target_gib=None):
    line = f"peak RSS: {peak_rss_gib():.2f} GiB"
    if target_gib is not None:
        line += f" (target < {target_gib} GiB)"
    print(line)


# Every benchmark imports this module: TensorFlow's malloc setting is undone once, up front.
restore_malloc_threshold()
