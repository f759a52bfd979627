"""Shared fixtures: a few thousand real MNIST images and a tiny backdoored model."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # scripts/test.sh runs two workers on two cores: one TensorFlow thread
    # each, so they do not compete for the cores. Measured: 13 of the attack
    # tests took 276 s instead of 310 s; the whole suite 838 s instead of
    # 824 s (no gain beyond run-to-run noise). Kept: it is the configuration
    # the whole suite was last run and passed with.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

GTSRB_H5 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gtsrb_dataset.h5")


@pytest.fixture(scope="session")
def mnist_small():
    """(x_train, y_train, x_test, y_test): 4000 train and 1000 test MNIST images."""
    from nc_tf.datasets import load_data

    x, y = load_data("mnist", "train", limit=4000)
    xt, yt = load_data("mnist", "test", limit=1000)
    return x, y, xt, yt


@pytest.fixture(scope="session")
def tiny_backdoored(mnist_small):
    """A small MNIST model with a 4x4 white-square backdoor to label 7 (raw intensity), 20% poisoned."""
    from injection import inject_backdoor, square_trigger
    from nc_tf.models import mnist_model

    import keras

    x, y, xt, yt = mnist_small
    trigger = square_trigger(x.shape[1:], target=7, size=4, margin=1)
    keras.utils.set_random_seed(1)
    model = mnist_model()
    # 20% poisoned (the paper's upper end) so the tiny model's backdoor
    # clears the scan's 99% success threshold.
    history = inject_backdoor(model, x, y, [trigger], ratio=0.25, epochs=3, seed=1,
                              validation_data=(xt, yt), verbose=0)
    return model, trigger, history


@pytest.fixture(scope="session")
def tiny_partial(mnist_small):
    """A tiny MNIST model whose trigger sends only source 3 to target 7."""
    import keras

    from injection import inject_backdoor, square_trigger
    from nc_tf.datasets import load_data
    from nc_tf.models import mnist_model

    # 8000 images, 4 epochs (test_attacks.py's partial variant uses this model): with
    # 4000 images the source's ASR sat below the 0.9 bar on some machines
    # (0.879 after 3 epochs, 0.860 after 5), only ~400 of them being 3s.
    x, y = load_data("mnist", "train", limit=8000)
    trigger = square_trigger(x.shape[1:], 7, sources=[3])
    keras.utils.set_random_seed(2)
    model = mnist_model()
    inject_backdoor(model, x, y, [trigger], ratio=0.5, epochs=4, seed=2, verbose=0)
    return model, trigger


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def tiny_scan(tmp_path_factory, mnist_small, tiny_backdoored):
    """(record, folder) of a fast-preset scan of `tiny_backdoored` on the 1000 test images."""
    from nc_tf.scan import scan

    _, _, xt, yt = mnist_small
    out = tmp_path_factory.mktemp("tiny_scan") / "scan"
    record = scan(tiny_backdoored[0], xt, yt, out_dir=str(out), progress=False)
    return record, str(out)
