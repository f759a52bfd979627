"""Where the zoo keeps each model, its meta and trigger, and how to read them back.

The layout under the zoo root is `<dataset>/<name>/model.h5|model.keras`,
`<dataset>/<name>/meta.json`, `<dataset>/<name>/trigger.npz` (backdoored
models only) and `manifest.json` (every meta, written at the end of a build).
A model counts as built once its `meta.json` exists.
"""

import glob
import json
import os

import numpy as np

DEFAULT_ROOT = os.path.join("runs", "zoo")
ROOT_ENV = "NC_TF_ZOO_DIR"


def zoo_root(root=None):
    """The zoo's root folder.

    Args:
        root: an explicit folder. Defaults to `None`: `$NC_TF_ZOO_DIR`, else
            `runs/zoo`.

    Returns:
        str, the folder.
    """
    return root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT


def model_dir(dataset, name, root=None):
    """The folder of one model.

    Args:
        dataset: `"mnist"` or `"gtsrb"`.
        name: the model's name.
        root: the zoo root (see `zoo_root`). Defaults to `None`.

    Returns:
        str, `<root>/<dataset>/<name>`.
    """
    return os.path.join(zoo_root(root), dataset, name)


def model_path(meta, root=None):
    """The model file of a meta dict.

    Args:
        meta: a meta dict (see `load_manifest`).
        root: the zoo root (see `zoo_root`). Defaults to `None`.

    Returns:
        str, `<root>/<dataset>/<name>/model.h5` or `model.keras`.
    """
    return os.path.join(model_dir(meta["dataset"], meta["name"], root), f"model.{meta['format']}")


def trigger_path(meta, root=None):
    """The `trigger.npz` file of a meta dict.

    Args:
        meta: a meta dict (see `load_manifest`).
        root: the zoo root (see `zoo_root`). Defaults to `None`.

    Returns:
        str, the path (the file exists only for backdoored models).
    """
    return os.path.join(model_dir(meta["dataset"], meta["name"], root), "trigger.npz")


def load_trigger(meta, root=None):
    """The trigger of a backdoored model, to stamp as `(1 - mask) * x + mask * pattern`.

    Args:
        meta: a meta dict (see `load_manifest`).
        root: the zoo root (see `zoo_root`). Defaults to `None`.

    Returns:
        `(mask, pattern)`: `(H, W)` float32 in [0, 1] and `(H, W, C)` float32
        in 0..255 on raw images; `None` for a clean model.
    """
    if not meta["backdoored"]:
        return None
    with np.load(trigger_path(meta, root)) as data:
        return data["mask"], data["pattern"]


def read_meta(dataset, name, root=None):
    """The meta dict of one model, or `None` if it is not built.

    Args:
        dataset: `"mnist"` or `"gtsrb"`.
        name: the model's name.
        root: the zoo root (see `zoo_root`). Defaults to `None`.

    Returns:
        a dict, or `None` when its `meta.json` does not exist.
    """
    path = os.path.join(model_dir(dataset, name, root), "meta.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_manifest(root=None, split=None, dataset=None):
    """The meta dicts of every built model, read from each `meta.json`.

    Works during a build: it lists the models finished so far.

    Args:
        root: the zoo root (see `zoo_root`). Defaults to `None`.
        split: keep only `"dev"` or `"test"` models. Defaults to `None` (both).
        dataset: keep only `"mnist"` or `"gtsrb"` models. Defaults to `None`
            (both).

    Returns:
        a list of meta dicts, sorted by dataset and name.
    """
    metas = []
    for path in sorted(glob.glob(os.path.join(zoo_root(root), "*", "*", "meta.json"))):
        with open(path) as f:
            meta = json.load(f)
        if split in (None, meta["split"]) and dataset in (None, meta["dataset"]):
            metas.append(meta)
    return metas


def write_json_atomic(path, data):
    """Writes JSON through a temporary file in the same folder, then renames it.

    Args:
        path: the destination file.
        data: a JSON-able object.
    """
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_manifest(root=None):
    """Writes `<root>/manifest.json`, the list of every built model's meta.

    Args:
        root: the zoo root (see `zoo_root`). Defaults to `None`.

    Returns:
        the list of meta dicts written.
    """
    metas = load_manifest(root)
    write_json_atomic(os.path.join(zoo_root(root), "manifest.json"), metas)
    return metas
