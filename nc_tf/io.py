"""Output folders and atomic files: nothing a user made is lost or half-written."""

import json
import math
import os
import tempfile

import numpy as np


def check_out_dir(path, force=False, resume=False, hint="pass --force to overwrite its files"):
    """Checks, without creating anything, that `path` can become an output folder.

    Args:
        path: the output folder.
        force: allow a non-empty existing folder. Defaults to `False`.
        resume: allow a non-empty folder because the caller continues work
            recorded there. Defaults to `False`.
        hint: what the user may do about a non-empty folder, besides
            choosing another one. Defaults to the `--force` advice.

    Raises:
        FileExistsError: `path` is a file, or a non-empty folder.
        PermissionError: nothing can be written there.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path} is a file; --out needs a folder.")
    if os.path.isdir(path):
        if os.listdir(path) and not (force or resume):
            raise FileExistsError(
                f"{path} already exists and is not empty; choose another --out or {hint}."
            )
        _probe(path, path)
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise FileExistsError(f"{parent} is a file, so --out {path} cannot be created there.")
    _probe(parent, path)


def _probe(folder, path):
    """Writes and removes an empty folder in `folder`: the one check that root cannot pass by."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".nc_tf_probe_", dir=folder))
    except OSError as error:
        raise PermissionError(
            f"--out {path} is not writable ({error.strerror}); choose a folder you can write to."
        ) from None


def prepare_out_dir(path, force=False, resume=False, hint="pass --force to overwrite its files"):
    """Creates `path`; refuses a non-empty existing folder unless `force` or `resume`.

    Args:
        path: the output folder.
        force: allow writing into a non-empty folder (files of the same
            name are replaced). Defaults to `False`.
        resume: allow a non-empty folder because the caller continues work
            recorded there. Defaults to `False`.
        hint: see `check_out_dir`. Defaults to the `--force` advice.

    Returns:
        `path`.
    """
    check_out_dir(path, force, resume, hint)
    os.makedirs(path, exist_ok=True)
    return os.fspath(path)


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(obj):
    """Strict JSON text of `obj`: numpy scalars and arrays accepted, NaN and infinities as null.

    Example:

    >>> print(to_json({"accuracy": float("nan")}))
    {
      "accuracy": null
    }
    """
    return json.dumps(_finite(obj), indent=2, default=_default, allow_nan=False)


def _finite(obj):
    """`obj` with every non-finite float (numpy or Python) replaced by `None`."""
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON ({str(e).splitlines()[0][:200]}).") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder; the {what} is a JSON file.") from None


def save_model(model, path):
    """Saves a Keras model atomically to a `.keras` path."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"Model path must end in .keras, got {path}.")
    tmp = str(path)[: -len(".keras")] + ".partial.keras"
    model.save(tmp)
    os.replace(tmp, path)
