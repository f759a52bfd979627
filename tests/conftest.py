"""Shared fixtures: a few thousand real MNIST images and a tiny backdoored model."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Fixtures are trained deterministically, so a test's outcome does not depend
# on how the suite is run: TensorFlow's deterministic kernels, and one thread
# per op (reduction order otherwise depends on the thread count, which
# differs between `pytest -n 2` workers and a single process).
os.environ["TF_DETERMINISTIC_OPS"] = "1"
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

from nc_tf.memory import restore_malloc_threshold  # noqa: E402

restore_malloc_threshold()  # as the CLI and the benchmarks do

import fcntl  # noqa: E402
import json  # noqa: E402
import types  # noqa: E402

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


def _shared(tmp_path_factory, name, build, save, load):
    """Builds a session fixture once for all xdist workers of a run.

    `scripts/test.sh` runs two workers; each used to train the session
    models itself. The first worker to need `name` builds it under a file
    lock and saves it (`save(value, folder)`) in the run's shared temporary
    folder; the others wait for the lock and `load(folder)` it. Without
    xdist this is just `build()`.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build()
    root = tmp_path_factory.getbasetemp().parent  # one folder per run, shared by its workers
    folder, done = root / f"shared_{name}", root / f"shared_{name}.done"
    with open(root / f"shared_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return load(folder)
        value = build()
        folder.mkdir(exist_ok=True)
        save(value, folder)
        done.touch()
        return value


def _save_model_and_trigger(model, trigger, folder, extra=None):
    model.save(folder / "model.keras")
    (folder / "trigger.json").write_text(json.dumps({"spec": trigger.spec, "extra": extra}))


def _load_model_and_trigger(folder):
    from injection import Trigger
    from nc_tf.models import load_model

    saved = json.loads((folder / "trigger.json").read_text())
    return load_model(str(folder / "model.keras")), Trigger.from_spec(saved["spec"]), saved["extra"]


@pytest.fixture(scope="session")
def tiny_backdoored(tmp_path_factory, mnist_small):
    """A small MNIST model with a 4x4 white-square backdoor to label 7 (raw intensity), 20% poisoned.

    `(model, trigger, history)`; `history.history` holds the per-epoch
    figures of `inject_backdoor`.
    """

    def build():
        from recipes import tiny_backdoored_model

        model, trigger, history = tiny_backdoored_model(*mnist_small, seed=1)
        return model, trigger, types.SimpleNamespace(history=history.history)

    def save(value, folder):
        model, trigger, history = value
        floats = {k: [float(v) for v in vals] for k, vals in history.history.items()}
        _save_model_and_trigger(model, trigger, folder, floats)

    def load(folder):
        model, trigger, history = _load_model_and_trigger(folder)
        return model, trigger, types.SimpleNamespace(history=history)

    return _shared(tmp_path_factory, "tiny_backdoored", build, save, load)


@pytest.fixture(scope="session")
def tiny_partial(tmp_path_factory, mnist_small):
    """A tiny MNIST model whose trigger sends only source 3 to target 7: `(model, trigger)`."""

    def build():
        import keras

        from injection import inject_backdoor, square_trigger
        from nc_tf.datasets import load_data
        from nc_tf.models import mnist_model

        # 8000 images, 4 epochs (test_attacks.py's partial variant uses this model): the
        # source class needs enough poisoned samples for its ASR to clear 0.9 everywhere.
        x, y = load_data("mnist", "train", limit=8000)
        trigger = square_trigger(x.shape[1:], 7, sources=[3])
        keras.utils.set_random_seed(2)
        model = mnist_model()
        inject_backdoor(model, x, y, [trigger], ratio=0.5, epochs=4, seed=2, verbose=0)
        return model, trigger

    return _shared(
        tmp_path_factory,
        "tiny_partial",
        build,
        lambda value, folder: _save_model_and_trigger(*value, folder),
        lambda folder: _load_model_and_trigger(folder)[:2],
    )


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global seeds, whatever ran before it on
    its worker (deterministic kernels also refuse unseeded random ops)."""
    import keras

    keras.utils.set_random_seed(0)


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def tiny_scan(tmp_path_factory, mnist_small, tiny_backdoored):
    """(record, folder) of a fast-preset scan of `tiny_backdoored` on the 1000 test images."""
    from nc_tf import io
    from nc_tf.scan import RESULTS, scan

    def build():
        _, _, xt, yt = mnist_small
        out = tmp_path_factory.mktemp("tiny_scan") / "scan"
        return scan(tiny_backdoored[0], xt, yt, out_dir=str(out), progress=False), str(out)

    def save(value, folder):
        (folder / "path.txt").write_text(value[1])

    def load(folder):
        out = (folder / "path.txt").read_text()
        return io.read_json(os.path.join(out, RESULTS)), out

    return _shared(tmp_path_factory, "tiny_scan", build, save, load)


# Rough seconds each heavy file takes in a two-worker run (`bash scripts/test.sh
# --durations=40`, summed per file). The files run heaviest first:
# `--dist loadfile` hands each worker the next file when it is free, so a
# long file started last would leave the other worker idle at the end.
FILE_SECONDS = {
    "test_cli.py": 450,
    "test_verdict.py": 350,
    "test_attacks.py": 397,
    "test_gangsweep.py": 270,
    "test_trojan_invisible.py": 205,
    "test_partial_lowcost.py": 205,
    "test_mitigation.py": 200,
    "test_scan.py": 190,
    "test_scan_many.py": 95,
    "test_report.py": 80,
    "test_norm_source.py": 40,
    "test_rgb_intensity.py": 35,
    "test_gradcam.py": 20,
    "test_backdoor_e2e.py": 30,
    "test_linf_fine_pruning.py": 15,
}


def pytest_collection_modifyitems(config, items):
    items.sort(
        key=lambda item: -FILE_SECONDS.get(item.path.name, 0)
    )  # stable: order kept within a file
