"""nc-tf: find, visualise and remove backdoors in Keras image classifiers."""

import os as _os

from nc_tf.lazy import lazy_exports

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
__version__ = "0.1.0"

# Public name -> the module that defines it; imported on first use, so that
# importing the package (e.g. for `nc-tf --help`) does not load TensorFlow.
_EXPORTS = {
    "load_data": "nc_tf.datasets",
    "load_dataset": "nc_tf.datasets",
    "attack_success_rate": "nc_tf.metrics",
    "evaluate_backdoor": "nc_tf.metrics",
    "grad_cam": "nc_tf.gradcam",
    "build_model": "nc_tf.models",
    "outputs_probabilities": "nc_tf.models",
    "load_model": "nc_tf.safe_loading",
    "outlier_detection": "nc_tf.outlier",
    "preprocess": "nc_tf.preprocess",
    "reverse_preprocess": "nc_tf.preprocess",
    "detect_dir": "nc_tf.detect",
    "scan_triggers": "nc_tf.detect",
    "Visualizer": "nc_tf.visualizer",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
