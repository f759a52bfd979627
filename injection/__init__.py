"""Backdoor injection: triggers, poisoning generators, `BackdoorCall`, training."""

from nc_tf.lazy import lazy_exports

# Public name -> the module that defines it; imported on first use, so that
# importing the package (e.g. for `nc-tf --help`) does not load TensorFlow.
_EXPORTS = {
    "BackdoorCall": "injection.callbacks",
    "PER_LABEL_RATIO": "injection.generators",
    "DataGenerator": "injection.generators",
    "PoisonedDataset": "injection.generators",
    "inject_ratio": "injection.generators",
    "inject_backdoor": "injection.inject",
    "reference_optimizer": "injection.inject",
    "ATTACKS": "injection.attacks",
    "build_attack": "injection.attacks",
    "default_ratio": "injection.attacks",
    "needs_model": "injection.attacks",
    "blend_trigger": "injection.blend",
    "draw_logo": "injection.blend",
    "draw_watermark": "injection.blend",
    "Trigger": "injection.triggers",
    "construct_mask_box": "injection.triggers",
    "construct_mask_corner": "injection.triggers",
    "infect_X": "injection.triggers",
    "injection_func": "injection.triggers",
    "load_triggers": "injection.triggers",
    "shape_trigger": "injection.triggers",
    "square_trigger": "injection.triggers",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
