"""The mitigation methods: one table, read by `mitigate()`, the CLI and the requirement checks.

Each method has a row: what it needs (`"scan"`: the reversed triggers of a
Neural Cleanse scan; `"generators"`: a GangSweep scan's generators; `None`),
whether it changes the model (and so ends with a verification scan), the
CLI options it takes (flag name -> keyword of its run function), where its
run function lives, and a one-line summary. This module imports nothing
heavy, so the command line can read the table without loading TensorFlow.
"""

import collections
import importlib

Method = collections.namedtuple("Method", "needs changes_model options run summary")

METHODS = {
    "filter": Method(
        "scan",
        False,
        {"layer": "layer", "fpr": "fpr"},
        "mitigation.mitigate:run_filter",
        "Neural Cleanse input filter",
    ),
    "prune": Method(
        "scan",
        True,
        {"layer": "layer", "stop_asr": "stop_asr", "ratio": "ratio", "max_ratio": "max_ratio"},
        "mitigation.mitigate:run_prune",
        "Neural Cleanse neuron pruning",
    ),
    "unlearn": Method(
        "scan",
        True,
        {"epochs": "epochs", "data_ratio": "data_ratio", "rounds": "rounds"},
        "mitigation.mitigate:run_unlearn",
        "Neural Cleanse unlearning",
    ),
    "repair": Method(
        None,
        True,
        {"rounds": "rounds", "focus": "focus"},
        "mitigation.mitigate:run_repair",
        "iterative repair: scan, peel, unlearn, rescan",
    ),
    "linf-prune": Method(
        "scan",
        True,
        {"layer": "layer", "max_acc_loss": "max_acc_loss"},
        "mitigation.mitigate:run_linf_prune",
        "ℓ∞ pruning (Cheng et al.)",
    ),
    "fine-prune": Method(
        None,
        True,
        {"layer": "layer", "acc_drop": "acc_drop", "finetune_epochs": "finetune_epochs"},
        "mitigation.mitigate:run_fine_prune",
        "fine-pruning (baseline)",
    ),
    "gym": Method(
        None,
        True,
        {
            "epochs": "epochs",
            "n_samples": "n_samples",
            "gym_scaled": "scaled",
            "gym_variant": "variant",
        },
        "mitigation.mitigate:run_gym",
        "GYM / DeepSweep",
    ),
    "shrinkpad": Method(
        None, False, {}, "mitigation.mitigate:run_defended", "ShrinkPad (inference-time baseline)"
    ),
    "flip": Method(
        None, False, {}, "mitigation.mitigate:run_defended", "FLIP (inference-time baseline)"
    ),
    "gangsweep": Method(
        "generators",
        True,
        {"epochs": "epochs", "data_ratio": "data_ratio"},
        "mitigation.mitigate:run_gangsweep",
        "GangSweep patching",
    ),
}


def needing(requirement):
    """The names of the methods that need `requirement` (`"scan"` or `"generators"`).

    Example:

    >>> needing("scan")
    ('filter', 'prune', 'unlearn', 'linf-prune')
    """
    return tuple(name for name, method in METHODS.items() if method.needs == requirement)


def changing_model():
    """The names of the methods that change the model (each ends with a verification scan)."""
    return tuple(name for name, method in METHODS.items() if method.changes_model)


def runner(name):
    """The run function of method `name` (imported on first use)."""
    if name not in METHODS:
        raise ValueError(f"Unknown mitigation method {name!r}; use one of {', '.join(METHODS)}.")
    module, function = METHODS[name].run.split(":")
    return getattr(importlib.import_module(module), function)
