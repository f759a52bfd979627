"""Mitigation: GYM / DeepSweep pipelines and inference-time preprocessors."""

from mitigation.gym import (
    GymFineTuneDataset,
    RandomShrink,
    ResizeMedianResize,
    augment,
    gym_finetune,
    intensive_pipeline,
    lightweight_pipeline,
)
from mitigation.preprocessing import DefendedModel, defended, flip, lightweight, shrink_pad
