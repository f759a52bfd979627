import os

import h5py
import numpy as np
import pytest
from PIL import Image

from nc_tf.datasets import check_images, labels_to_int, load_data, load_dataset


def test_mnist_is_real_and_raw():
    x, y = load_data("mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8 and x.max() == 255
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
    xtr, ytr = load_data("mnist", "train", limit=100)
    assert xtr.shape == (100, 28, 28, 1) and ytr[:5].tolist() == [5, 0, 4, 1, 9]


def _write_nc_h5(path, one_hot=True):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 6, 6, 3)).astype(np.uint8)
    y = rng.integers(0, 4, 20)
    with h5py.File(path, "w") as f:
        for split in ("train", "test"):
            f[f"X_{split}"] = x
            f[f"Y_{split}"] = np.eye(4, dtype=np.uint8)[y] if one_hot else y
    return x, y


@pytest.mark.parametrize("one_hot", [True, False])
def test_neural_cleanse_h5(tmp_path, one_hot):
    path = str(tmp_path / "d.h5")
    x, y = _write_nc_h5(path, one_hot)
    xt, yt = load_data(path, "test")
    assert np.array_equal(xt, x) and np.array_equal(yt, y)
    d = load_dataset(path, ["X_test"])
    assert list(d) == ["X_test"] and d["X_test"].shape == (20, 6, 6, 3)
    with pytest.raises(KeyError, match="no dataset"):
        load_dataset(path, ["X_val"])


def test_npz_lowercase_and_custom_keys(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (7, 5, 5)).astype(np.uint8)
    y = np.arange(7) % 3
    np.savez(tmp_path / "a.npz", x_test=x, y_test=y, imgs=x, labs=y)
    xt, yt = load_data(str(tmp_path / "a.npz"))
    assert xt.shape == (7, 5, 5, 1) and np.array_equal(yt, y)
    xt2, _ = load_data(str(tmp_path / "a.npz"), x_key="imgs", y_key="labs")
    assert np.array_equal(xt2, xt)
    np.savez(tmp_path / "b.npz", imgs=x, labs=y)
    with pytest.raises(KeyError, match="x_key"):
        load_data(str(tmp_path / "b.npz"))


def test_limit_of_a_label_sorted_file_keeps_every_class(tmp_path):
    x = np.arange(60, dtype=np.uint8).reshape(60, 1, 1, 1).repeat(4, axis=1)
    y = np.repeat(np.arange(6), 10)  # sorted by label, like GTSRB's training set
    np.savez(tmp_path / "sorted.npz", x_train=x, y_train=y)
    np.savez(tmp_path / "mixed.npz", x_train=x, y_train=y[::-1].copy() % 4)
    xs, ys = load_data(str(tmp_path / "sorted.npz"), "train", limit=30)
    assert len(ys) == 30 and set(ys.tolist()) == set(range(6)), "not the first three classes"
    assert np.all(np.diff(xs[:, 0, 0, 0].astype(int)) > 0), "file order kept, no repeats"
    assert np.array_equal(ys, y[xs[:, 0, 0, 0]]), "images keep their labels"
    again, _ = load_data(str(tmp_path / "sorted.npz"), "train", limit=30)
    assert np.array_equal(again, xs), "the same subset every time"
    # A prefix that already holds every class, and unsorted files, stay prefixes.
    xm, _ = load_data(str(tmp_path / "mixed.npz"), "train", limit=30)
    assert np.array_equal(xm, x[:30])
    # One sample per label (0, 1, 2, ...) is not a class-sorted split: prefix kept.
    np.savez(tmp_path / "distinct.npz", x_train=x, y_train=np.arange(60))
    xd, _ = load_data(str(tmp_path / "distinct.npz"), "train", limit=2)
    assert np.array_equal(xd, x[:2])
    with pytest.raises(ValueError, match="limit"):
        load_data(str(tmp_path / "sorted.npz"), "train", limit=-1)


def test_gtsrb_official_folder_layout(tmp_path):
    rng = np.random.default_rng(2)
    train = tmp_path / "Final_Training" / "Images"
    for cls in (0, 2):
        d = train / f"{cls:05d}"
        d.mkdir(parents=True)
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 45, 3), dtype=np.uint8)).save(
                d / f"00000_{i:05d}.ppm"
            )
            rows.append(f"00000_{i:05d}.ppm;45;40;5;5;35;40;{cls}")
        (d / f"GT-{cls:05d}.csv").write_text("\n".join(rows))
    test = tmp_path / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, cls in enumerate((2, 0)):
        Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(
            test / f"{i:05d}.ppm"
        )
        rows.append(f"{i:05d}.ppm;50;50;5;5;45;45;{cls}")
    (test / "GT-final_test.csv").write_text("\n".join(rows))
    x, y = load_data(str(tmp_path), "train")
    assert x.shape == (6, 32, 32, 3) and y.tolist() == [0, 0, 0, 2, 2, 2]
    xt, yt = load_data(str(tmp_path), "test")
    assert xt.shape == (2, 32, 32, 3) and yt.tolist() == [2, 0]


def test_class_folders(tmp_path):
    for cls in ("cat", "dog"):
        os.makedirs(tmp_path / cls)
        for i in range(2):
            Image.fromarray(np.full((9, 9), 10 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    x, y = load_data(str(tmp_path))
    assert x.shape == (4, 9, 9, 1) and y.tolist() == [0, 0, 1, 1]
    x2, _ = load_data(str(tmp_path), image_size=(5, 6))
    assert x2.shape == (4, 5, 6, 1)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_data(str(tmp_path / "nope.h5"))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        load_data(str(bad))
    with pytest.raises(ValueError, match="Multiply by 255"):
        check_images(np.random.default_rng(0).random((2, 4, 4, 1)))
    with pytest.raises(ValueError, match="NaN"):
        check_images(np.full((1, 4, 4, 1), np.nan))
    with pytest.raises(ValueError, match="outside the raw range"):
        check_images(np.full((1, 4, 4, 1), -3.0))
    with pytest.raises(ValueError, match="split"):
        load_data("mnist", "valid")
    assert labels_to_int(np.eye(3)[[2, 0]]).tolist() == [2, 0]


@pytest.mark.skipif(
    not os.path.exists(
        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gtsrb_dataset.h5")
    ),
    reason="needs ../shared/data/gtsrb_dataset.h5",
)
def test_real_gtsrb_h5():
    from conftest import GTSRB_H5

    x, y = load_data(GTSRB_H5, "test", limit=50)
    assert x.shape == (50, 32, 32, 3) and x.dtype == np.uint8 and y.max() < 43
    # The training set is sorted by class: a limited load still holds all 43.
    _, y_train = load_data(GTSRB_H5, "train", limit=2000)
    assert len(y_train) == 2000 and len(np.unique(y_train)) == 43
