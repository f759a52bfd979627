"""Content identity: which model and which data a result belongs to.

A scan folder or a mitigation report records digests of the model and of
the data it was made from, not their paths. Resuming checks the digests, so
a file replaced at the same path is refused and the same file given by
another path resumes.

- `model_sha256`: the sha256 of the model file's bytes, as loaded by
  `nc_tf.safe_loading.load_model` (`None` for a model built in memory).
- `weights_sha256`: the sha256 of the model's configuration and weights. It
  is what resume compares: a model saved again with the same weights (a new
  file, other bytes) is the same model.
- `data_sha256`: the sha256 of the images and labels, shapes and dtypes
  included.
"""

import hashlib
import json

import numpy as np

from nc_tf.safe_loading import loaded_sha256


def array_digest(*arrays):
    """The sha256 of arrays: their dtypes, shapes and bytes, in order (`None` allowed).

    Example:

    >>> array_digest(np.zeros(3)) == array_digest(np.zeros(3))
    True
    >>> array_digest(np.zeros(3)) == array_digest(np.zeros(4))
    False
    """
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def weights_sha256(model):
    """The sha256 of a Keras model's configuration (every layer's settings) and weights."""
    digest = hashlib.sha256()
    try:
        config = model.get_config()
    except Exception:  # a subclassed model without get_config: its layout stands in
        config = [(layer.__class__.__name__, layer.name) for layer in model.layers]
    shapes = [list(model.input_shape), list(model.output_shape)]
    digest.update(json.dumps([config, shapes], sort_keys=True, default=str).encode())
    digest.update(array_digest(*model.get_weights()).encode())
    return digest.hexdigest()


def identity(model, x, y=None, model_file=None):
    """The identity record of a result made from `model` and the data `(x, y)`.

    Args:
        model: the Keras model.
        x: the images used.
        y: their labels. Defaults to `None`.
        model_file: the path the model was given by, recorded for people
            (never compared). Defaults to `None`.

    Returns:
        dict with `model_file`, `model_sha256` (the file's, or `None`),
        `weights_sha256` and `data_sha256`.

    Example:

    >>> from nc_tf.models import mnist_model
    >>> sorted(identity(mnist_model(), np.zeros((2, 28, 28, 1))))
    ['data_sha256', 'model_file', 'model_sha256', 'weights_sha256']
    """
    return {
        "model_file": None if model_file is None else str(model_file),
        "model_sha256": loaded_sha256(model),
        "weights_sha256": weights_sha256(model),
        "data_sha256": array_digest(x, None if y is None else np.asarray(y, np.int64)),
    }


def check_identity(
    previous,
    current,
    folder,
    what="results",
    hint="choose another --out, or pass --force to replace it",
):
    """Refuses to continue `previous` work with another model or other data.

    Work is continued only when the folder records both digests
    (`weights_sha256`, `data_sha256`) and both match: a folder whose
    identity is missing, partial or forged is never trusted.

    Args:
        previous: the identity recorded in the folder, or `None`.
        current: the identity of this run's model and data.
        folder: the folder, named in the message.
        what: what the folder holds, named in the message. Defaults to
            `"results"`.
        hint: what the user can do about a folder without a complete
            identity. Defaults to another `--out` or `--force`.

    Raises:
        FileExistsError: the identity is incomplete, or the model or the
            data differ; the message names which, and what to do.
    """
    keys = ("weights_sha256", "data_sha256")
    if not (isinstance(previous, dict) and all(_digest(previous.get(key)) for key in keys)):
        raise FileExistsError(
            f"{folder} holds {what} without a complete model and data identity, so nothing "
            f"shows it was made from this model and data; {hint}."
        )
    changed = [
        name
        for key, name in (("weights_sha256", "model"), ("data_sha256", "data"))
        if previous.get(key) != current.get(key)
    ]
    if not changed:
        return
    detail = "; ".join(
        f"{name} sha256 {previous[key][:12]} there, {current[key][:12]} now"
        for key, name in (("weights_sha256", "model weights"), ("data_sha256", "data"))
        if previous.get(key) != current.get(key)
    )
    raise FileExistsError(
        f"{folder} holds {what} of a different {' and '.join(changed)} ({detail}); choose "
        f"another --out for this {' and '.join(changed)}, or rerun with the {' and '.join(changed)} "
        "that made it to resume."
    )


def _digest(value):
    """True for a sha256 in hex, as `identity` records it."""
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )
