"""Mitigation: Neural Cleanse filter, pruning, unlearning and repair; ℓ∞ pruning;
fine-pruning; GYM / DeepSweep pipelines and inference-time preprocessors."""

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
from mitigation.filter import InputFilter, fit_filter
from mitigation.fine_pruning import KeepPruned, fine_prune
from mitigation.linf_pruning import activation_norms, linf_prune
from mitigation.mitigate import METHODS, mitigate, split_data
from mitigation.peeling import peel, trigger_pieces
from mitigation.pruning import NeuronPruning, prune
from mitigation.repair import repair
from mitigation.unlearning import Unlearning, UnlearningDataset, unlearn
from mitigation.verification import verify
