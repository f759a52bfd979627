"""Shared helpers of the benchmarks: peak memory, the model folder and the figures they report."""

import os
import resource

from nc_tf.io import read_json, write_json
from nc_tf.memory import restore_malloc_threshold

MODELS_DIR = os.environ.get("NC_TF_BENCH_MODELS", os.path.join("runs", "bench"))
# The JSON file `report_figures` merges into (set by bench/reproduce.py for each command it runs).
FIGURES_ENV = "NC_TF_FIGURES"


def peak_rss_gib(children=False):
    """Peak resident memory so far, in GiB.

    Args:
        children: report the largest finished child process instead of
            this one. Defaults to `False`.

    Returns:
        float, GiB.
    """
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024**2


def print_peak_rss(target_gib=None, children=False):
    """Prints the peak resident memory (see `peak_rss_gib`), beside `target_gib` when given."""
    line = f"peak RSS{' of the largest child process' if children else ''}: "
    line += f"{peak_rss_gib(children):.2f} GiB"
    if target_gib is not None:
        line += f" (target < {target_gib} GiB)"
    print(line)


def merge_figures(old, new):
    """`old` updated with `new`; a dict in both is merged key by key, recursively.

    Args:
        old: a figures dict (not modified).
        new: figures to add; they replace `old`'s values of the same key,
            except that two dicts are merged.

    Returns:
        a new dict.

    Example:

    >>> merge_figures({"mnist": {"asr": 1.0}}, {"mnist": {"acc": 0.9}})
    {'mnist': {'asr': 1.0, 'acc': 0.9}}
    """
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merge_figures(merged[key], value)
        merged[key] = value
    return merged


def report_figures(**figures):
    """Adds a benchmark's measured figures to the JSON file named by `NC_TF_FIGURES`.

    bench/reproduce.py sets the variable for each benchmark command it runs
    and compares the figures with the published ones. Without the variable
    nothing happens. The file is strict JSON (NaN and infinities become
    null, numpy values and tuples are converted), written atomically; a
    figure reported again replaces the old one, and nested dicts are merged
    (`merge_figures`), so a benchmark may report one model or row at a time.

    Args:
        **figures: figure name -> number, list or dict of figures (keys are
            strings).

    Example:

    >>> report_figures(mnist={"asr": 99.9, "clean_acc": 98.8})
    """
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    old = read_json(path, "figures file") if os.path.exists(path) else {}
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, merge_figures(old, figures))


# Every benchmark imports this module: TensorFlow's malloc setting is undone once, up front.
restore_malloc_threshold()
