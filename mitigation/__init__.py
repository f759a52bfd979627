"""Mitigation: Neural Cleanse filter, pruning, unlearning and repair; ℓ∞ pruning;
fine-pruning; GYM / DeepSweep pipelines and inference-time preprocessors."""

from nc_tf.lazy import lazy_exports

# Public name -> the module that defines it; imported on first use, so that
# importing the package (e.g. for `nc-tf --help`) does not load TensorFlow.
_EXPORTS = {
    "InputFilter": "mitigation.filter",
    "fit_filter": "mitigation.filter",
    "KeepPruned": "mitigation.fine_pruning",
    "fine_prune": "mitigation.fine_pruning",
    "GymFineTuneDataset": "mitigation.gym_finetune",
    "RandomShrink": "mitigation.gym",
    "ResizeMedianResize": "mitigation.gym",
    "augment": "mitigation.gym",
    "gym_finetune": "mitigation.gym_finetune",
    "intensive_pipeline": "mitigation.gym",
    "lightweight_pipeline": "mitigation.gym",
    "activation_norms": "mitigation.linf_pruning",
    "linf_prune": "mitigation.linf_pruning",
    "METHODS": "mitigation.methods",
    "mitigate": "mitigation.mitigate",
    "split_data": "mitigation.mitigate",
    "peel": "mitigation.peeling",
    "trigger_pieces": "mitigation.peeling",
    "DefendedModel": "mitigation.defended_inference",
    "defended": "mitigation.defended_inference",
    "flip": "mitigation.defended_inference",
    "lightweight": "mitigation.defended_inference",
    "shrink_pad": "mitigation.defended_inference",
    "NeuronPruning": "mitigation.pruning",
    "prune": "mitigation.pruning",
    "repair": "mitigation.repair",
    "Unlearning": "mitigation.unlearning",
    "UnlearningDataset": "mitigation.unlearning",
    "unlearn": "mitigation.unlearning",
    "verify": "mitigation.verification",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
