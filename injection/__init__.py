"""Backdoor injection: triggers, poisoning generators, `BackdoorCall`, training."""

from injection.callbacks import BackdoorCall
from injection.generators import PER_LABEL_RATIO, DataGenerator, PoisonedDataset, inject_ratio
from injection.inject import inject_backdoor, reference_optimizer
from injection.attacks import ATTACKS, build_attack, default_ratio, needs_model
from injection.blend import blend_trigger, draw_logo, draw_watermark
from injection.triggers import (
    Trigger,
    construct_mask_box,
    construct_mask_corner,
    infect_X,
    injection_func,
    load_triggers,
    shape_trigger,
    square_trigger,
)
