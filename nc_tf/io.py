"""Output folders and atomic files: nothing a user made is lost or half-written."""

import json
import os

import numpy as np


def prepare_out_dir(path, force=False, resume=False):
    """Creates `path`; refuses a non-empty existing folder unless `force` or `resume`.

    Args:
        path: the output folder.
        force: allow writing into a non-empty folder (files of the same
            name are replaced). Defaults to `False`.
        resume: allow a non-empty folder because the caller continues work
            recorded there. Defaults to `False`.

    Returns:
        `path`.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        raise FileExistsError(f"{path} is a file; --out needs a folder.")
    if os.path.isdir(path) and os.listdir(path) and not (force or resume):
        raise FileExistsError(
            f"{path} already exists and is not empty; choose another --out or "
            "pass --force to overwrite its files."
        )
    os.makedirs(path, exist_ok=True)
    return path


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(obj):
    """`json.dumps` that also accepts numpy scalars and arrays."""
    return json.dumps(obj, indent=2, default=_default)


def write_json(path, obj):
    """Writes JSON atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(to_json(obj))
    os.replace(tmp, path)


def read_json(path, what="file"):
    """Reads JSON with an error that names the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"No such {what}: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from None


def save_model(model, path):
    """Saves a Keras model atomically to a `.keras` path."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"Model path must end in .keras, got {path}.")
    tmp = str(path)[: -len(".keras")] + ".partial.keras"
    model.save(tmp)
    os.replace(tmp, path)
