"""nc-tf: find, visualise and remove backdoors in Keras image classifiers."""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nc_tf.memory import restore_malloc_threshold  # noqa: E402

restore_malloc_threshold()

from nc_tf.datasets import load_data, load_dataset  # noqa: E402
from nc_tf.metrics import attack_success_rate, evaluate_backdoor  # noqa: E402
from nc_tf.models import build_model, load_model, outputs_probabilities  # noqa: E402
from nc_tf.outlier import outlier_detection  # noqa: E402
from nc_tf.preprocess import preprocess, reverse_preprocess  # noqa: E402
from nc_tf.scan import detect_dir, scan_triggers  # noqa: E402
from nc_tf.visualizer import Visualizer  # noqa: E402

__version__ = "0.1.0"
