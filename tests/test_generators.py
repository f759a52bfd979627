import math

import numpy as np
import pytest

from injection import DataGenerator, PoisonedDataset, inject_ratio, square_trigger


def _data(n=500, shape=(8, 8, 1), classes=5):
    rng = np.random.default_rng(0)
    # images never reach 255 so a stamped white square is detectable
    return rng.integers(0, 200, (n,) + shape).astype(np.uint8), rng.integers(0, classes, n)


def test_inject_ratio_formula():
    assert inject_ratio(1) == pytest.approx(0.1 / 1.1)
    assert inject_ratio(3, 0.1) == pytest.approx(0.3 / 1.3)
    assert inject_ratio(2, 0.0) == 0.0


def test_steps_scaled_by_inject_ratio():
    x, y = _data()
    triggers = [square_trigger((8, 8, 1), t, size=2) for t in (1, 3)]
    ds = PoisonedDataset(x, y, triggers, ratio=0.1, batch_size=10)
    assert ds.inject_ratio == pytest.approx(0.2 / 1.2)
    assert len(ds) == math.ceil(500 / 10 / (1 - 0.2 / 1.2))
    assert len(PoisonedDataset(x, y, batch_size=10)) == 50


def test_stamped_fraction_labels_and_determinism():
    x, y = _data(2000)
    triggers = [square_trigger((8, 8, 1), t, size=2) for t in (1, 3)]
    ds = PoisonedDataset(x, y, triggers, ratio=0.1, batch_size=50, seed=4)
    stamped = total = 0
    for i in range(len(ds)):
        xb, yb = ds[i]
        hit = (xb[:, 5:7, 5:7, 0] == 255).all(axis=(1, 2))
        assert set(np.unique(yb[hit])) <= {1, 3}
        stamped += hit.sum()
        total += len(xb)
    assert stamped / total == pytest.approx(ds.inject_ratio, abs=0.02)
    a, b = ds[3], PoisonedDataset(x, y, triggers, 0.1, 50, seed=4)[3]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    ds.on_epoch_end()
    assert not np.array_equal(ds[3][0], a[0])  # a new epoch draws new batches


def test_clean_dataset_never_stamps_and_preprocesses():
    x, y = _data()
    ds = PoisonedDataset(x, y, batch_size=64, intensity="mnist")
    xb, _ = ds[0]
    assert xb.dtype == np.float32 and xb.max() <= 200 / 255 + 1e-6


def test_reference_data_generator_yields_one_hot():
    x, y = _data()
    gen = DataGenerator([square_trigger((8, 8, 1), 2, size=2)], num_classes=5, batch_size=16)
    xb, yb = next(gen.generate_data(x, np.eye(5)[y], inject_ratio=0.5))
    assert xb.shape == (16, 8, 8, 1) and yb.shape == (16, 5) and np.allclose(yb.sum(1), 1)


def test_bad_input():
    with pytest.raises(ValueError, match="equally long"):
        PoisonedDataset(np.zeros((3, 8, 8, 1)), [0, 1])
