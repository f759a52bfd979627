"""Safe loading: open an untrusted Keras model file without running code from it.

Every model nc-tf opens is untrusted. `load_model` reads the file once,
decides its format from its bytes the way Keras will read it (a `.keras`
file is a zip archive whose `config.json` Keras deserialises; a `.h5` or
`.hdf5` file is HDF5 whose `model_config` attribute Keras deserialises),
and inspects exactly that configuration before Keras sees it. Unless the
caller passes `trust_model=True` (CLI: `--trust-model`) it refuses:

- a `module` outside Keras's modelling namespaces (`keras`,
  `keras.layers`, `keras.src.layers`, ... but not, say, `builtins`);
- a `registered_name` other than the class's own (a registered custom
  object, `package>Name`);
- layers that run stored or named code: `Lambda`, `TFSMLayer`,
  `TorchModuleWrapper`, `JaxLayer`, `FlaxLayer`, the Keras-2 op layers;
- `function`, `__lambda__` and type-spec nodes, which name code;
- any class that is not one of Keras's own (a custom object);
- a file that is both HDF5 and a zip archive (a polyglot), whose meaning
  depends on who reads it, and a file whose bytes do not match its
  extension.

Keras then loads the very bytes that were inspected (a private copy), in its
own safe mode, so replacing the file after the check changes nothing.
"""

import hashlib
import io
import json
import os
import tempfile
import weakref
import zipfile
import zlib

from nc_tf.io import check_input_file, env_bytes

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# The file format Keras reads for each extension.
FORMATS = {".keras": "zip", ".h5": "hdf5", ".hdf5": "hdf5"}
# Classes that deserialise Python code, or look code up by a name in the file.
CODE_CLASSES = frozenset(
    {
        "Lambda",
        "TFOpLambda",
        "SlicingOpLambda",
        "TFSMLayer",
        "TorchModuleWrapper",
        "JaxLayer",
        "FlaxLayer",
        "__lambda__",
        "function",
        "__typespec__",
        "TypeSpec",
        "CompositeTensor",
    }
)
# Plain values that Keras's (de)serialisers wrap in class nodes.
VALUE_CLASSES = frozenset(
    {
        "__keras_tensor__",
        "__tensor__",
        "__numpy__",
        "__bytes__",
        "__ellipsis__",
        "__slice__",
        "__tuple__",
        "TensorShape",
    }
)
# A model configuration is JSON text; anything larger is refused unread (zip bombs).
MAX_CONFIG_BYTES = 64 * 2**20
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
# Keras subpackages a model's configuration may name (as keras.X or keras.src.X).
MODELLING_PACKAGES = (
    "layers",
    "initializers",
    "regularizers",
    "constraints",
    "activations",
    "dtype_policies",
    "mixed_precision",
    "models",
    "optimizers",
    "losses",
    "metrics",
    "ops",
)
_LOADED = weakref.WeakKeyDictionary()  # model -> sha256 of the file it was loaded from


class UntrustedModelError(ValueError):
    """Raised when a model file needs code execution (or trust) to load."""


def load_model(path, trust_model=False):
    """Loads a `.keras` or legacy Keras-2 `.h5` classifier without running its code.

    The file is read once, its format decided from its bytes, and the
    configuration Keras will deserialise is inspected first (see the
    module docstring for what is refused). The model is loaded uncompiled,
    and must be a classifier: one image input `(H, W, C)`, one output of
    class scores.

    Args:
        path: a `.keras` file or a full-model `.h5`/`.hdf5` file.
        trust_model: allow files that name or hold code (Lambda and custom
            layers, custom objects). Only for files whose origin you trust.
            Defaults to `False`.

    Returns:
        the Keras model. `loaded_sha256(model)` gives the sha256 of the
        bytes it was loaded from.

    Raises:
        FileNotFoundError: the file does not exist.
        UntrustedModelError: the file names or holds code.
        ValueError: the file is not a Keras classifier (corrupt, weights
            only, wrong extension, several inputs or outputs, ...).

    Example:

    >>> model = load_model("runs/mnist_badnets/model.keras")  # doctest: +SKIP
    >>> loaded_sha256(model)[:12]  # doctest: +SKIP
    '3f1c0e9a2b7d'
    """
    import keras

    path = os.fspath(path)
    check_input_file(path, "model file")
    limit = env_bytes(MAX_MODEL_FILE_ENV, MAX_MODEL_FILE_BYTES)
    if os.path.getsize(path) > limit:
        raise ValueError(
            f"{path} is {os.path.getsize(path) / 2**30:.1f} GiB, more than the "
            f"{limit / 2**30:.1f} GiB nc-tf reads as a model; if it is genuine, set "
            f"{MAX_MODEL_FILE_ENV} to a larger number of bytes."
        )
    with open(path, "rb") as f:
        data = f.read()
    kind = file_format(path, data, trust_model)
    config = model_config(path, data, kind)
    check_model_size(path, data, kind, config)
    if not trust_model:
        problem = unsafe_node(config)
        if problem:
            raise UntrustedModelError(
                f"{path}: {problem}, which can run code chosen by whoever made the file; "
                "refused. Pass --trust-model (Python: trust_model=True) only if you trust "
                "where the file came from."
            )
    extension = ".keras" if kind == "zip" else ".h5"
    remove_stale_copies()
    with tempfile.TemporaryDirectory(prefix=f"{COPY_PREFIX}{os.getpid()}_") as folder:
        copy = os.path.join(folder, "model" + extension)
        with open(copy, "wb") as f:
            f.write(data)
        try:
            model = keras.saving.load_model(copy, compile=False, safe_mode=not trust_model)
        except Exception as error:  # Keras raises many types for bad files
            raise ValueError(
                f"{path} could not be loaded as a Keras model "
                f"({_first_line(error)}); check that it is a whole model file "
                "saved by Keras."
            ) from None
    check_classifier(model, path)
    _check_runs(model, path)
    _LOADED[model] = hashlib.sha256(data).hexdigest()
    return model


# The private copies Keras loads are made in $TMPDIR under this prefix and the loader's pid.
COPY_PREFIX = "nc_tf_model_"


def remove_stale_copies(folder=None):
    """Removes model copies left in `folder` by loader processes that no longer run.

    A copy is removed when its loader ends, but a process killed while
    Keras reads its copy cannot remove it; the next load does.

    Args:
        folder: where the copies are made. Defaults to `tempfile.gettempdir()`.

    Returns:
        the number of copies removed.
    """
    import shutil

    folder = folder or tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        pid = name[len(COPY_PREFIX) :].split("_", 1)[0]
        if not (name.startswith(COPY_PREFIX) and pid.isascii() and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its loader still runs
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue  # another user's process, or no such pid range: not ours to judge
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def loaded_sha256(model):
    """The sha256 of the file `model` was loaded from by `load_model`, or `None`.

    Example:

    >>> loaded_sha256(keras.Sequential()) is None  # doctest: +SKIP
    True
    """
    try:
        return _LOADED.get(model)
    except TypeError:  # not weak-referenceable
        return None


def file_format(path, data, trust_model=False):
    """`"zip"` or `"hdf5"`: how Keras will read the file, checked against its bytes.

    Keras chooses the reader by extension (`.keras`: zip, `.h5`/`.hdf5`:
    HDF5). The bytes must agree, and must not be both (a polyglot) unless
    `trust_model`.

    Raises:
        UntrustedModelError: a polyglot.
        ValueError: an unknown extension, or bytes of another format.
    """
    extension = os.path.splitext(path)[1].lower()
    is_zip = zipfile.is_zipfile(io.BytesIO(data))
    is_hdf5 = _has_hdf5_signature(data)
    if is_zip and is_hdf5 and not trust_model:
        raise UntrustedModelError(
            f"{path} is both an HDF5 file and a zip archive (a polyglot): what it holds depends "
            "on who reads it; refused. Pass --trust-model (Python: trust_model=True) only if "
            "you trust where the file came from."
        )
    found = "zip" if is_zip else "hdf5" if is_hdf5 else None
    if extension not in FORMATS:
        hint = {
            "zip": " it is a zip archive: rename it to .keras",
            "hdf5": " it is an HDF5 file: rename it to .h5",
        }.get(found, "")
        raise ValueError(
            f"{path}: unknown model extension {extension or '(none)'!r}; nc-tf "
            f"reads .keras and .h5/.hdf5 files;{hint or ' it is neither format'}."
        )
    expected = FORMATS[extension]
    if found is None:
        raise ValueError(
            f"{path} is neither a .keras (zip) archive nor an HDF5 file; it may be "
            "corrupt or truncated."
        )
    if is_zip and is_hdf5:
        return expected
    if found != expected:
        rename = ".keras" if found == "zip" else ".h5"
        raise ValueError(
            f"{path} is a {'zip archive' if found == 'zip' else 'HDF5 file'} "
            f"named {extension}: Keras would read it as the other format; rename "
            f"it to {rename}."
        )
    return found


def model_config(path, data, kind):
    """The configuration Keras deserialises from the file's bytes (compile settings dropped)."""
    if kind == "zip":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                size = archive.getinfo("config.json").file_size
                raw = archive.read("config.json") if size <= MAX_CONFIG_BYTES else None
        except KeyError:
            raise ValueError(
                f"{path} is a zip archive without config.json, not a .keras model."
            ) from None
        except (
            zipfile.BadZipFile,
            OSError,
            EOFError,
            NotImplementedError,
            RuntimeError,
            ValueError,
            zlib.error,
        ) as error:
            raise ValueError(
                f"{path} is a damaged .keras archive ({_first_line(error)})."
            ) from None
        if raw is None:
            raise ValueError(
                f"{path}: its config.json unpacks to {size} bytes, far more than a "
                f"model configuration (at most {MAX_CONFIG_BYTES} accepted)."
            )
        config = _parse(path, raw, "config.json")
        if isinstance(config, dict):
            config = {k: v for k, v in config.items() if k != "compile_config"}
        return config
    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            raw = f.attrs.get("model_config")
    except Exception as error:  # h5py raises OSError, KeyError, ... on damaged files
        raise ValueError(f"{path} is a damaged HDF5 file ({_first_line(error)}).") from None
    if raw is None:
        raise ValueError(
            f"{path} is an HDF5 file without a model architecture (no "
            "'model_config'): it may hold only weights or data. Build the "
            "architecture (nc_tf.models.build_model) and call load_weights."
        )
    return _parse(path, raw, "model_config")


# Limits checked from the file before Keras builds anything (see `check_model_size`).
MAX_MODEL_FILE_BYTES = 2 * 2**30
MAX_MODEL_FILE_ENV = "NC_TF_MAX_MODEL_BYTES"
MAX_LAYERS = 1000  # functional models load in about linear time
MAX_SEQUENTIAL_LAYERS = 200  # Keras rebuilds a Sequential model per layer: quadratic time
MAX_CONFIG_DEPTH = 64
MAX_PARAMETERS = 2**28  # 1 GiB of float32 weights declared in the file
MAX_UNITS = 2**16  # units or filters of one layer
MAX_ASSET_BYTES = 16 * 2**20  # an image classifier has no vocabulary files


def check_model_size(path, data, kind, config):
    """Refuses a model file whose contents would cost more than a classifier's, before loading.

    Checks, from the file's directory, weight headers and configuration
    alone: the uncompressed size of the archive's members, the size of the
    weights the file declares (`MAX_PARAMETERS`, and
    `nc_tf.io.check_input_bytes` against the file's size), the size of
    `.keras` assets, the number of layers (`MAX_LAYERS`,
    `MAX_SEQUENTIAL_LAYERS`), each layer's units and filters (`MAX_UNITS`)
    and the configuration's nesting depth.

    Raises:
        ValueError: one line naming the limit that was passed.
    """
    from nc_tf.io import check_input_bytes

    weights = data
    if kind == "zip":
        try:
            weights = _zip_weights(path, data)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error) as error:
            raise ValueError(
                f"{path} is a damaged .keras archive ({_first_line(error)})."
            ) from None
    declared = _declared_weight_bytes(path, weights) if weights is not None else 0
    check_input_bytes(declared, path, "weights")
    layers, sequential, depth, widest = _config_size(config)
    problems = [
        (depth > MAX_CONFIG_DEPTH, f"its configuration nests {depth} levels deep"),
        (
            sequential and layers > MAX_SEQUENTIAL_LAYERS,
            f"its Sequential model has {layers} layers (at most {MAX_SEQUENTIAL_LAYERS}; "
            "Keras loads long Sequential models in quadratic time)",
        ),
        (layers > MAX_LAYERS, f"it has {layers} layers (at most {MAX_LAYERS})"),
        (widest > MAX_UNITS, f"a layer has {widest:,} units or filters (at most {MAX_UNITS:,})"),
        (
            declared > 4 * MAX_PARAMETERS,
            f"it declares {declared / 2**30:.1f} GiB of weights (at most {MAX_PARAMETERS:,} "
            "float32 parameters)",
        ),
    ]
    for bad, text in problems:
        if bad:
            raise ValueError(f"{path}: {text}; refused before loading. Is it an image classifier?")


def _zip_weights(path, data):
    """The weights file of a `.keras` archive (or `None`), after the archive's size checks."""
    from nc_tf.io import check_input_bytes

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        check_input_bytes(sum(m.file_size for m in members), path, "model members")
        assets = sum(m.file_size for m in members if m.filename.startswith("assets/"))
        if assets > MAX_ASSET_BYTES:
            raise ValueError(
                f"{path} carries {assets / 2**20:.0f} MiB of assets (files Keras unpacks "
                f"to disk); an image classifier has none. Refused (at most "
                f"{MAX_ASSET_BYTES // 2**20} MiB)."
            )
        names = [m.filename for m in members if m.filename.endswith(".weights.h5")]
        return archive.read(names[0]) if names else None


def _declared_weight_bytes(path, data):
    """Bytes of every dataset an HDF5 weights file declares (shapes, not contents)."""
    import h5py

    total = []

    def visit(_, node):
        if isinstance(node, h5py.Dataset):
            total.append(node.size * node.dtype.itemsize)

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            f.visititems(visit)
    except Exception as error:  # h5py raises many types on damaged files
        raise ValueError(f"{path} holds damaged weights ({_first_line(error)}).") from None
    return sum(total)


def _config_size(config):
    """`(layers, sequential, depth, widest)` of a model configuration, read without recursion."""
    layers, depth, widest = 0, 0, 0
    sequential = isinstance(config, dict) and config.get("class_name") == "Sequential"
    stack = [(config, 1, False)]
    while stack:
        node, level, in_layers = stack.pop()
        depth = max(depth, level)
        if isinstance(node, list):
            stack.extend((item, level + 1, in_layers) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        if in_layers and "class_name" in node:
            layers += 1
        inner = node.get("config") if isinstance(node.get("config"), dict) else {}
        for key in ("units", "filters"):
            value = inner.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                widest = max(widest, value)
        for key, value in node.items():
            stack.append((value, level + 1, key == "layers"))
    return layers, sequential, depth, widest


def unsafe_node(config):
    """The first part of a model configuration that names or holds code, described; or `None`.

    Example:

    >>> unsafe_node({"class_name": "Lambda", "config": {"name": "hook"}})
    "layer 'hook' is a Lambda layer"
    """
    stack = [(config, "the model")]
    while stack:
        node, owner = stack.pop()
        if isinstance(node, list):
            stack.extend((item, owner) for item in reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        if "class_name" in node:
            inner = node.get("config")
            if isinstance(inner, dict) and isinstance(inner.get("name"), str):
                owner = f"layer {inner['name']!r}"
            problem = _class_problem(node, owner)
            if problem:
                return problem
        stack.extend((value, owner) for value in reversed(list(node.values())))
    return None


def check_classifier(model, name="the model"):
    """Checks that a model has one image input `(H, W, C)` and one output of class scores.

    Raises:
        ValueError: it has several inputs or outputs, or other shapes.
    """
    inputs, outputs = list(model.inputs or []), list(model.outputs or [])
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"{name} has {len(inputs)} input(s) and {len(outputs)} output(s); nc-tf needs a "
            "classifier with one image input and one output of class scores. Save a model "
            "that keeps only those, e.g. keras.Model(model.inputs[0], model.outputs[0])."
        )
    if len(inputs[0].shape) != 4 or len(outputs[0].shape) != 2:
        raise ValueError(
            f"{name} maps inputs shaped {tuple(inputs[0].shape[1:])} to outputs shaped "
            f"{tuple(outputs[0].shape[1:])}; nc-tf needs images (H, W, C) in and one score "
            "per class out."
        )


def _check_runs(model, path):
    """Runs the model once on a blank image, so that a broken configuration fails here."""
    import numpy as np

    shape = tuple(model.inputs[0].shape[1:])
    if any(v is None for v in shape):
        return
    try:
        model(np.zeros((1,) + shape, np.float32), training=False)
    except Exception as error:  # a damaged configuration fails in TensorFlow in many ways
        raise ValueError(
            f"{path} loads but cannot classify an image of its input shape "
            f"{shape} ({_first_line(error)}); the file is damaged or not a "
            "classifier."
        ) from None


def _class_problem(node, owner):
    cls = node.get("class_name")
    module = node.get("module")
    registered = node.get("registered_name")
    if not isinstance(cls, str):
        return f"{owner} has a class_name that is not a string ({type(cls).__name__})"
    if ">" in cls:
        return f"{owner} names the registered custom object {cls!r}"
    if cls in CODE_CLASSES:
        if isinstance(node.get("config"), dict) and "layer" in owner:
            return f"{owner} is a {cls} layer"
        return f"{owner} holds a {cls!r} node (code named by the file)"
    if module is not None and not _keras_module(module):
        return f"{owner} names class {cls!r} from module {module!r}, outside Keras"
    if registered is not None and registered != cls:
        return f"{owner} names the registered custom object {registered!r}"
    if module is None and cls not in VALUE_CLASSES and not _keras_class(cls):
        return f"{owner} names class {cls!r}, which is not one of Keras's own (a custom object)"
    return None


def _keras_module(module):
    if not isinstance(module, str):
        return False
    parts = module.split(".")
    if parts[0] != "keras":
        return False
    if len(parts) == 1:
        return True
    sub = parts[2] if parts[1] == "src" and len(parts) > 2 else parts[1]
    return sub in MODELLING_PACKAGES


def _keras_class(name):
    import keras

    if name in MODEL_CLASSES:
        return True
    for package in (
        "layers",
        "initializers",
        "regularizers",
        "constraints",
        "dtype_policies",
        "mixed_precision",
        "optimizers",
        "losses",
        "metrics",
    ):
        obj = getattr(getattr(keras, package), name, None)
        if isinstance(obj, type):
            return True
    return False


def _has_hdf5_signature(data):
    # HDF5 looks for its superblock at 0, 512, 1024, 2048, ... bytes.
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= len(data):
        if data[offset : offset + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def _parse(path, raw, what):
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(
            f"{path}: its {what} is not valid JSON ({_first_line(error)}); the "
            "file is damaged or not a Keras model."
        ) from None


def _first_line(error):
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."
