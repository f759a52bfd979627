"""Input fuzzing: can a malformed model or data file crash nc-tf, run its code or touch files?

A seeded mutation fuzzer over model files (`.keras`, legacy `.h5`) and data
files (`.h5`, `.npz`). Every case mutates either the model or the data file
of a set of seeds, then runs `nc-tf evaluate MODEL --dataset DATA` or
`nc-tf scan MODEL --dataset DATA --out OUT` (3 labels, 4 steps, 64 images)
on it, and the fuzzer counts, over all cases (target 0 each):

- bad exits: an exit status other than 0 and 2, or a worker process that
  dies (segfault, abort, `os._exit`) or runs past `--timeout`;
- tracebacks: "Traceback (most recent call last)" in a case's output;
- code executions: a marker file written by a payload appears (the function
  of a Lambda layer, an object unpickled from an `.npz` file);
- files changed: a file that existed before the case (the seeds, the case's
  input files, a bystander file beside them) changed its bytes or mtime or
  vanished, or a new file appeared outside the case's `--out` folder;
- hangs: cases that run past `--timeout` (also counted as bad exits);
- outside reads: the file beside the case folder that hostile inputs point
  at was read (its access time, set to 0 before the case, changed);
- invalid JSON: with `--json` (a third of the cases), stdout is not one
  strict JSON document, or exit 2 comes without an object holding "error".

The seeds are made once per run in a fresh folder (`--workdir`: kept, and its
seeds reused): a small MNIST classifier trained 1 epoch on 2,000 images
(saved as `.keras` and `.h5`), 128 test images (`.h5` with `X_test`/`Y_test`,
`.npz` with `x_test`/`y_test`), and the same classifier behind a Lambda layer
whose function writes a marker. At start-up the fuzzer proves both payloads
work: Keras loading the Lambda model with `safe_mode=False` writes its marker,
and `np.load(..., allow_pickle=True)` of a pickle payload writes its own.

Mutation kinds (`--kinds`): model-truncate, model-flip, model-junk,
model-polyglot, keras-entry, keras-config, h5-config, h5-attrs, h5-weights,
model-name, keras-bomb, model-special (model files); data-truncate, data-flip,
data-images, data-labels, data-pickle, data-keys, data-format, input-special,
data-external, data-bomb (data files). The last kinds point outside the case
(links, FIFOs, HDF5 external storage and virtual datasets, GTSRB CSV paths)
or declare far more than they hold (npy headers, HDF5 shapes, declared
weights, assets, wide layers, 300 Sequential layers, deep configurations). Model configurations are
edited by `edit_config` (invalid JSON, foreign modules, registered names,
code classes, eval and Lambda functions, deleted, mistyped, retyped, huge or
negative values).

A case is fully determined by `--seed` and its index: its mutation kind is
drawn uniformly from `--kinds`, its command is `scan` with probability
`--scan-share` (default 0.5; lower it if scans make 1,000 cases take too
long) and `evaluate` otherwise. Each case runs in a fresh folder in
a long-lived worker process that imports nc-tf once and calls
`nc_tf.cli.main(argv)` with its output captured; the worker runs under an
address-space limit (`--memory-limit`), so that a file asking for huge
tensors fails inside the case instead of exhausting the machine. A worker
that dies or hangs is replaced.

Prints the counts beside their targets, the exit-2 errors the CLI calls
"unexpected" (listed, not counted), cases per mutation kind, the
exit-status histogram, wall time per case and command, the projected wall
time of 1,000 cases (target <= 40 min), peak RSS, and every failing case
(kind, seed, argv, exit status, first error line) with the command that
reruns it alone (`--only-case K`, which prints its full output; it reruns
the very same bytes when given the same `--workdir`). Exit status 0 when
every count is 0, else 1.

Usage: python bench/fuzz_inputs.py [--cases N] [--seed S] [--kinds K1,K2]
           [--commands evaluate,scan] [--scan-share F] [--timeout S] [--memory-limit GiB]
           [--workdir DIR] [--only-case K] [--json]
"""

import argparse
import copy
import ctypes
import faulthandler
import gc
import hashlib
import io
import json
import logging
import os
import pickle
import queue
import random
import re
import resource
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import h5py  # noqa: E402
import numpy as np  # noqa: E402
from _common import peak_rss_gib, print_peak_rss  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.abspath(__file__)
TRACEBACK = "Traceback (most recent call last)"
COMMANDS = ("evaluate", "scan")
SCAN_OPTIONS = [
    "--labels",
    "0,1,2",
    "--steps",
    "4",
    "--starts",
    "1",
    "--restarts",
    "1",
    "--batch-size",
    "16",
    "--nb-sample",
    "32",
    "--limit",
    "64",
    "--accept-low-accuracy",
]
JSON_SHARE = 1 / 3
TARGET_MINUTES = 40
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# Source of the Lambda payload's function; the marker path becomes a constant of its code.
LAMBDA_SOURCE = "lambda t: (open({marker!r}, 'w').close(), t)[1]"
EVAL_NODE = {
    "module": "builtins",
    "class_name": "function",
    "config": "eval",
    "registered_name": "eval",
}
FIGURES = (
    ("bad_exits", "exits other than 0 and 2"),
    ("hangs", "cases past --timeout"),
    ("outside_reads", "reads of a file outside the case's inputs"),
    ("tracebacks", "tracebacks"),
    ("code_executions", "code executions"),
    ("files_changed", "files changed"),
    ("invalid_json", "invalid JSON on stdout (--json)"),
)
# How the CLI words an exit-2 error it did not anticipate (reported, not counted).
UNEXPECTED = ": error: unexpected "
OUTPUT_CAP = 200_000  # characters of a case's stdout or stderr sent back by the worker


# ====================================================================== seeds
class PicklePayload:
    """An object whose unpickling creates the file `marker` (`open(marker, "w")`)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _seed_layers(keras):
    """The seed classifier's layers, named so that the payload model shares their weights."""
    layers = keras.layers
    return [
        layers.Rescaling(1 / 255, name="rescale"),
        layers.Conv2D(4, 3, activation="relu", name="conv"),
        layers.MaxPooling2D(2, name="pool"),
        layers.Flatten(name="flatten"),
        layers.Dense(10, activation="softmax", name="dense"),
    ]


def _normalise_keras_file(path):
    """Rewrites a `.keras` archive without save time or object ids: equal models, equal bytes."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    ids = {}
    rewritten = []
    for info, data in entries:
        if info.filename == "metadata.json":
            meta = json.loads(data)
            meta["date_saved"] = "2000-01-01@00:00:00"
            data = json.dumps(meta).encode()
        elif info.filename == "config.json":

            def number(match):
                return b'"shared_object_id": %d' % ids.setdefault(match.group(1), len(ids) + 1)

            data = re.sub(rb'"shared_object_id": (\d+)', number, data)
        fresh = zipfile.ZipInfo(info.filename, date_time=ZIP_TIME)
        fresh.compress_type = info.compress_type
        fresh.external_attr = info.external_attr
        rewritten.append((fresh, data))
    with open(path, "wb") as f:
        f.write(_zip_bytes(rewritten))


def make_seeds(folder, marker):
    """Trains and writes the seed files; checks that the Lambda payload runs when loaded unsafely.

    Runs in its own process (it turns on TensorFlow's deterministic ops,
    which the cases must not inherit). Prints one JSON line: the seed
    model's accuracy and which payload files work.

    Args:
        folder: where to write `model.keras`, `model.h5`, `payload.keras`,
            `payload.h5` (only if Keras's legacy format keeps the payload
            working), `data.h5` and `data.npz`.
        marker: absolute path of the file the Lambda payload creates.

    Returns:
        0 when the `.keras` payload wrote its marker, else 1.
    """
    sys.path.insert(0, REPO)
    import keras
    import tensorflow as tf

    from nc_tf.datasets import load_data

    os.makedirs(folder, exist_ok=True)
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    x, y = load_data("mnist", "train", limit=2000)
    model = keras.Sequential([keras.Input((28, 28, 1))] + _seed_layers(keras), name="seed")
    model.compile(optimizer=keras.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    x_test, y_test = load_data("mnist", "test", limit=128)
    accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))
    model.save(os.path.join(folder, "model.keras"))
    model.save(os.path.join(folder, "model.h5"))

    function = eval(LAMBDA_SOURCE.format(marker=marker))  # the path is a constant of its code
    hook = keras.layers.Lambda(function, name="hook")
    payload = keras.Sequential([keras.Input((28, 28, 1)), hook] + _seed_layers(keras), name="seed")
    for source, layer in zip(model.layers, payload.layers[1:]):
        layer.set_weights(source.get_weights())
    payload.save(os.path.join(folder, "payload.keras"))
    payload.save(os.path.join(folder, "payload.h5"))
    _normalise_keras_file(os.path.join(folder, "model.keras"))
    _normalise_keras_file(os.path.join(folder, "payload.keras"))

    works = {}
    for name in ("payload.keras", "payload.h5"):
        if os.path.exists(marker):
            os.remove(marker)  # building and saving the payload called its function
        try:
            loaded = keras.saving.load_model(
                os.path.join(folder, name), compile=False, safe_mode=False
            )
            loaded(x_test[:1])
        except Exception as error:  # reported below: this payload file is not used
            print(f"{name}: {type(error).__name__}: {error}", file=sys.stderr)
        works[name] = os.path.exists(marker)
        keras.backend.clear_session()
    if os.path.exists(marker):
        os.remove(marker)
    if not works["payload.h5"]:
        os.remove(os.path.join(folder, "payload.h5"))

    with h5py.File(os.path.join(folder, "data.h5"), "w") as f:
        f.create_dataset("X_test", data=x_test)
        f.create_dataset("Y_test", data=np.eye(10, dtype=np.float32)[y_test])
    with open(os.path.join(folder, "data.npz"), "wb") as f:
        np.savez(f, x_test=x_test, y_test=np.eye(10, dtype=np.float32)[y_test])
    print(json.dumps({"accuracy": accuracy, "payloads": works}))
    return 0 if works["payload.keras"] else 1


class Seeds:
    """The seed files of a run: paths, pristine bytes, and the configurations and arrays to mutate.

    Args:
        folder: the folder `make_seeds` wrote.
        markers: the folder payloads write their markers into.
    """

    def __init__(self, folder, markers):
        self.folder = folder
        self.markers = markers
        self.pickle_marker = os.path.join(markers, "pickle")
        names = ("model.keras", "model.h5", "payload.keras", "payload.h5", "data.h5", "data.npz")
        self.paths = {
            n: os.path.join(folder, n) for n in names if os.path.exists(os.path.join(folder, n))
        }
        self.pristine = {}
        for path in self.paths.values():
            st = os.stat(path)
            with open(path, "rb") as f:
                self.pristine[path] = (f.read(), st.st_atime_ns, st.st_mtime_ns)
        self.models = [self.paths[n] for n in ("model.keras", "model.h5")]
        self.payloads = [self.paths[n] for n in ("payload.keras", "payload.h5") if n in self.paths]
        self.data = [self.paths["data.h5"], self.paths["data.npz"]]
        with np.load(self.paths["data.npz"], allow_pickle=False) as store:
            self.x, self.y = store["x_test"], store["y_test"]
        self.config = {
            "zip": _zip_config(self.bytes("model.keras")),
            "hdf5": _h5_config(self.paths["model.h5"]),
        }
        payload_config = {"zip": _zip_config(self.bytes("payload.keras"))}
        if "payload.h5" in self.paths:
            payload_config["hdf5"] = _h5_config(self.paths["payload.h5"])
        self.payload_layer = {}
        for kind in ("zip", "hdf5"):
            layers = payload_config.get(kind, payload_config["zip"])["config"]["layers"]
            self.payload_layer[kind] = next(
                copy.deepcopy(n) for n in layers if n.get("class_name") == "Lambda"
            )

    def bytes(self, name_or_path):
        """The pristine bytes of a seed file (by name or path)."""
        return self.pristine[self.paths.get(name_or_path, name_or_path)][0]

    def restore(self):
        """Rewrites the seed files whose bytes or mtime changed; returns their paths."""
        restored = []
        for path, (data, atime, mtime) in self.pristine.items():
            try:
                same = os.stat(path).st_mtime_ns == mtime and _read(path) == data
            except OSError:
                same = False
            if not same:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.remove(path)
                with open(path, "wb") as f:
                    f.write(data)
                os.utime(path, ns=(atime, mtime))
                restored.append(path)
        return restored


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _zip_config(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return json.loads(archive.read("config.json"))


def _h5_config(path):
    with h5py.File(path, "r") as f:
        raw = f.attrs["model_config"]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def check_pickle_payload(folder, marker):
    """Proves the pickle payload: unpickling an `.npz` array holding it creates `marker`.

    Returns:
        whether the marker appeared (it is removed again).
    """
    path = os.path.join(folder, "pickle_check.npz")
    with open(path, "wb") as f:
        np.savez(f, x_test=np.array([PicklePayload(marker)], dtype=object))
    with np.load(path, allow_pickle=True) as store:
        store["x_test"]  # unpickles the array
    os.remove(path)
    works = os.path.exists(marker)
    if works:
        os.remove(marker)
    return works


# ============================================================ byte and zip edits
def _flip(rng, data):
    """`data` with 1-32 bytes XOR-ed with random non-zero values, spread or in one burst."""
    out = bytearray(data)
    if not out:
        return b"", "empty file, nothing to flip"
    n = rng.randint(1, 32)
    if rng.random() < 0.5:
        start = rng.randrange(len(out))
        positions = [start + rng.randrange(min(256, len(out) - start)) for _ in range(n)]
        how = f"{n} byte(s) flipped near offset {start}"
    else:
        positions = [rng.randrange(len(out)) for _ in range(n)]
        how = f"{n} byte(s) flipped anywhere"
    for i in positions:
        out[i] ^= rng.randint(1, 255)
    return bytes(out), how


def _cut(rng, data):
    """`data` truncated at a random offset (anywhere, in its first or in its last 4 KiB)."""
    if not data:
        return b"", "empty file"
    where = rng.choice(("anywhere", "head", "tail"))
    window = min(len(data), 4096)
    offset = {
        "anywhere": rng.randrange(len(data)),
        "head": rng.randrange(window),
        "tail": len(data) - 1 - rng.randrange(window),
    }[where]
    return data[:offset], f"truncated to {offset} of {len(data)} bytes"


def _zip_entries(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def _entry(name, data, compress_type=zipfile.ZIP_STORED):
    """A `(ZipInfo, bytes)` pair for `_zip_bytes`."""
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = compress_type
    return info, data


def _zip_bytes(entries):
    """A zip archive of `(ZipInfo or name, bytes)` pairs (repeated names kept)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a repeated name is wanted here
        with zipfile.ZipFile(buf, "w") as archive:
            for info, data in entries:
                if isinstance(info, str):
                    info = _entry(info, data)[0]
                archive.writestr(info, data)
    return buf.getvalue()


def _flag_encrypted(data):
    """A zip archive with the "encrypted" flag set on every entry (its data left as it is)."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        offsets, position = [i.header_offset for i in archive.infolist()], archive.start_dir
    for offset in offsets:
        out[offset + 6] |= 0x1  # local header: general purpose flags
    while out[position : position + 4] == b"PK\x01\x02":
        out[position + 8] |= 0x1  # central directory entry: general purpose flags
        name, extra, comment = struct.unpack("<HHH", out[position + 28 : position + 34])
        position += 46 + name + extra + comment
    return bytes(out)


def _h5_edit(data, scratch, edit):
    """Applies `edit(h5py.File)` to a copy of HDF5 bytes; returns the new bytes."""
    with open(scratch, "wb") as f:
        f.write(data)
    try:
        with h5py.File(scratch, "r+") as f:
            edit(f)
        return _read(scratch)
    finally:
        os.remove(scratch)


def _h5_objects(f, want):
    """Names of the datasets (`want="dataset"`) or of every object and the root (`"any"`)."""
    names = [] if want == "dataset" else ["/"]

    def visit(name, obj):
        if want == "any" or isinstance(obj, h5py.Dataset):
            names.append(name)

    f.visititems(visit)
    return names


# ========================================================= configuration edits
def _walk(tree, path="$"):
    """Every `(container, key, path)` of a JSON tree."""
    found = []
    stack = [(tree, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            items = [(k, v, f"{where}.{k}") for k, v in node.items()]
        elif isinstance(node, list):
            items = [(i, v, f"{where}[{i}]") for i, v in enumerate(node)]
        else:
            continue
        for key, value, sub in items:
            found.append((node, key, sub))
            stack.append((value, sub))
    return found


def _layer_nodes(tree):
    """The dicts of a configuration that describe a layer or model (a named config)."""
    nodes = [tree] if isinstance(tree, dict) else []
    nodes += [c[k] for c, k, _ in _walk(tree)]
    return [
        n
        for n in nodes
        if isinstance(n, dict)
        and isinstance(n.get("class_name"), str)
        and isinstance(n.get("config"), dict)
        and "name" in n["config"]
    ]


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mistype(rng, key):
    key = str(key)
    options = [key + "_", key.upper(), key[:-1] or "x", key.replace("_", "")]
    if len(key) > 2:
        i = rng.randrange(len(key) - 1)
        options.append(key[:i] + key[i + 1] + key[i] + key[i + 2 :])
    options = [o for o in options if o != key] or [key + "_"]
    return rng.choice(options)


CONFIG_EDITS = (
    "invalid-json",
    "deep-nesting",
    "not-an-object",
    "foreign-module",
    "registered-name",
    "code-class",
    "payload-layer",
    "eval-activation",
    "lambda-activation",
    "delete-key",
    "mistype-key",
    "number-string",
    "number-huge",
    "number-negative",
    "type-swap",
)


def edit_config(rng, config, payload_layer):
    """One edit of a model configuration (`config.json` or the `.h5` `model_config`).

    Args:
        rng: the case's `random.Random`.
        config: the seed model's configuration (not modified).
        payload_layer: the Lambda payload's layer node in the same format.

    Returns:
        `(text, description)`: the new file text (`str`, or `bytes` for
        non-UTF-8 text) and what was edited.
    """
    cfg = copy.deepcopy(config)
    edit = rng.choice(CONFIG_EDITS)
    layers = _layer_nodes(cfg)
    layer = rng.choice(layers)
    name = layer["config"].get("name")
    if edit == "invalid-json":
        text = json.dumps(cfg)
        how = rng.choice(("cut", "stray-quote", "not-utf8", "trailing"))
        if how == "cut":
            text = text[: rng.randrange(len(text))]
        elif how == "stray-quote":
            i = rng.randrange(len(text))
            text = text[:i] + '"' + text[i:]
        elif how == "not-utf8":
            return b"\xff\xfe" + text.encode() + b"\xc3", f"{edit}: {how}"
        else:
            text += rng.choice(("}", "]", ",", " {}", "\x00"))
        return text, f"{edit}: {how}"
    if edit == "deep-nesting":
        depth = rng.choice((1_000, 100_000))
        return "[" * depth + "]" * depth, f"{edit}: {depth} nested lists"
    if edit == "not-an-object":
        value = rng.choice(([cfg], [], "Sequential", 42, None, True))
        return json.dumps(value), f"{edit}: {json.dumps(value)[:40]}"
    if edit == "foreign-module":
        module = rng.choice(("builtins", "os", "subprocess"))
        layer["module"] = module
        if rng.random() < 0.5:
            names = {"builtins": "eval", "os": "system", "subprocess": "Popen"}
            layer["class_name"] = names[module]
        return json.dumps(cfg), f"{edit}: layer {name!r} -> {module}.{layer['class_name']}"
    if edit == "registered-name":
        layer["registered_name"] = "evil>X"
        return json.dumps(cfg), f"{edit}: layer {name!r} registered_name 'evil>X'"
    if edit == "code-class":
        cls = rng.choice(("function", "__lambda__", "Lambda", "TFSMLayer"))
        layer["class_name"] = cls
        if cls == "TFSMLayer" and rng.random() < 0.5:
            layer["config"] = {"name": name, "filepath": "saved_model", "call_endpoint": "serve"}
        return json.dumps(cfg), f"{edit}: layer {name!r} class_name {cls!r}"
    if edit == "payload-layer":
        listing = next(
            (n["config"]["layers"] for n in layers if isinstance(n["config"].get("layers"), list)),
            None,
        )
        if listing is None:
            return json.dumps([payload_layer]), f"{edit}: the Lambda layer alone"
        at = rng.randrange(1, len(listing) + 1)
        listing.insert(at, copy.deepcopy(payload_layer))
        return json.dumps(cfg), f"{edit}: the Lambda payload inserted at layer {at}"
    if edit in ("eval-activation", "lambda-activation"):
        holders = [n for n in layers if "activation" in n["config"]] or [layer]
        target = rng.choice(holders)
        target["config"]["activation"] = (
            copy.deepcopy(EVAL_NODE)
            if edit == "eval-activation"
            else copy.deepcopy(payload_layer["config"]["function"])
        )
        return json.dumps(cfg), f"{edit}: layer {target['config'].get('name')!r}"
    places = _walk(cfg)
    if edit == "delete-key":
        container, key, where = rng.choice([p for p in places if isinstance(p[0], dict)])
        del container[key]
        return json.dumps(cfg), f"{edit}: {where}"
    if edit == "mistype-key":
        container, key, where = rng.choice([p for p in places if isinstance(p[0], dict)])
        new = _mistype(rng, key)
        container[new] = container.pop(key)
        return json.dumps(cfg), f"{edit}: {where} -> {new!r}"
    numbers = [p for p in places if _is_number(p[0][p[1]])]
    if edit.startswith("number-") and numbers:
        container, key, where = rng.choice(numbers)
        old = container[key]
        if edit == "number-string":
            new = rng.choice((str(old), "many", ""))
        elif edit == "number-huge":
            new = rng.choice((2**31, 2**63, 10**30, 1e308, float("inf"), float("nan")))
        else:
            new = rng.choice((-1, -abs(old) - 1, -(2**31)))
        container[key] = new
        return json.dumps(cfg), f"{edit}: {where} {old!r} -> {new!r}"
    container, key, where = rng.choice(places)
    new = rng.choice((None, [], {}, "", True, [container[key]], {"class_name": "Dense"}))
    container[key] = new
    return json.dumps(cfg), f"type-swap: {where} -> {json.dumps(new)[:40]}"


# ============================================================== model mutations
def _model_base(rng, seeds, formats=("zip", "hdf5")):
    """A seed model or payload file of one of `formats` (payloads one time in four)."""
    extensions = tuple({"zip": ".keras", "hdf5": ".h5"}[f] for f in formats)
    pool = seeds.payloads if rng.random() < 0.25 else seeds.models
    pool = [p for p in pool if p.endswith(extensions)]
    return rng.choice(pool or [p for p in seeds.models if p.endswith(extensions)])


def _write(folder, name, data):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    return path


def _extension(path):
    return os.path.splitext(path)[1]


def model_truncate(rng, seeds, folder):
    """A seed model (or payload) file cut short."""
    base = _model_base(rng, seeds)
    data, how = _cut(rng, seeds.bytes(base))
    return _write(folder, "model" + _extension(base), data), f"{os.path.basename(base)} {how}"


def model_flip(rng, seeds, folder):
    """A seed model (or payload) file with 1-32 bytes flipped."""
    base = _model_base(rng, seeds)
    data, how = _flip(rng, seeds.bytes(base))
    return _write(folder, "model" + _extension(base), data), f"{os.path.basename(base)} {how}"


def model_junk(rng, seeds, folder):
    """A seed model (or payload) file with random bytes appended or prepended."""
    base = _model_base(rng, seeds)
    junk = rng.randbytes(rng.choice((1, 16, 511, 4096, 65536)))
    where = rng.choice(("appended", "prepended"))
    data = seeds.bytes(base) + junk if where == "appended" else junk + seeds.bytes(base)
    return (
        _write(folder, "model" + _extension(base), data),
        f"{os.path.basename(base)} with {len(junk)} junk bytes {where}",
    )


def model_polyglot(rng, seeds, folder):
    """An HDF5 model followed by a zip model, or a zip model followed by an HDF5 one."""
    h5 = _model_base(rng, seeds, ("hdf5",))
    zp = _model_base(rng, seeds, ("zip",))
    order = rng.choice(("hdf5+zip", "zip+hdf5"))
    if order == "hdf5+zip":
        data = seeds.bytes(h5) + seeds.bytes(zp)
    else:  # HDF5 looks for its signature at 0, 512, 1024, 2048, ...
        offset = 512
        while offset < len(seeds.bytes(zp)):
            offset *= 2
        data = seeds.bytes(zp).ljust(offset, b"\0") + seeds.bytes(h5)
    ext = rng.choice((".keras", ".h5"))
    return (
        _write(folder, "model" + ext, data),
        f"{order}: {os.path.basename(zp if order[0] == 'z' else h5)} then "
        f"{os.path.basename(h5 if order[0] == 'z' else zp)}, named {ext}",
    )


def keras_entry(rng, seeds, folder):
    """A `.keras` archive with an entry deleted, repeated, replaced, added or recompressed."""
    base = _model_base(rng, seeds, ("zip",))
    entries = _zip_entries(seeds.bytes(base))
    names = [info.filename for info, _ in entries]
    by_name = {info.filename: (info, data) for info, data in entries}
    edit = rng.choice(
        (
            "delete",
            "duplicate-config",
            "weights",
            "payload-config",
            "metadata",
            "slip",
            "compression",
            "encrypted-flag",
            "bomb",
        )
    )
    how = edit
    if edit == "delete":
        gone = rng.choice(names)
        entries = [e for e in entries if e[0].filename != gone]
        how = f"delete {gone}"
    elif edit == "duplicate-config":
        other = json.dumps(
            rng.choice(
                (
                    seeds.config["zip"] | {"class_name": "Functional"},
                    _zip_config(seeds.bytes("payload.keras")),
                )
            )
        )
        extra = _entry("config.json", other.encode())
        at = rng.choice((0, len(entries)))
        entries.insert(at, extra)
        how = f"a second, different config.json {'first' if at == 0 else 'last'}"
    elif edit == "weights":
        info, data = by_name["model.weights.h5"]
        change = rng.choice(
            ("truncate", "flip", "junk", "data-file", "legacy-model", "zip", "empty")
        )
        new = {
            "truncate": lambda: _cut(rng, data)[0],
            "flip": lambda: _flip(rng, data)[0],
            "junk": lambda: rng.randbytes(len(data)),
            "data-file": lambda: seeds.bytes("data.h5"),
            "legacy-model": lambda: seeds.bytes("model.h5"),
            "zip": lambda: seeds.bytes("model.keras"),
            "empty": lambda: b"",
        }[change]()
        entries = [(i, new if i.filename == "model.weights.h5" else d) for i, d in entries]
        how = f"model.weights.h5 replaced ({change})"
    elif edit == "payload-config":
        payload = _zip_config(seeds.bytes("payload.keras"))
        entries = [
            (i, json.dumps(payload).encode() if i.filename == "config.json" else d)
            for i, d in entries
        ]
        how = "config.json of the Lambda payload"
    elif edit == "metadata":
        value = rng.choice(
            (
                {"keras_version": "1.0.0"},
                {"keras_version": "99.0"},
                {"keras_version": 3},
                [],
                "x",
                {},
            )
        )
        text = json.dumps(value) if rng.random() < 0.8 else "{not json"
        entries = [(i, text.encode() if i.filename == "metadata.json" else d) for i, d in entries]
        how = f"metadata.json = {text[:40]}"
    elif edit == "slip":
        target = rng.choice(
            (
                "../slip_a",
                "../../slip_b",
                "assets/../../slip_c",
                os.path.join(os.path.dirname(seeds.folder), "cwd", "slip_d"),
            )
        )
        entries.append(_entry(target, b"written by extraction"))
        entries.append(_entry("assets/readme.txt", b"asset"))
        how = f"extra entry {target!r}"
    elif edit == "compression":
        method = rng.choice((zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA))
        entries = [_entry(i.filename, d, compress_type=method) for i, d in entries]
        how = f"entries compressed with method {method}"
    elif edit == "encrypted-flag":
        how = "entries flagged as encrypted"
    else:
        size = rng.choice((16, 256)) << 20
        text = (json.dumps(seeds.config["zip"]) + " " * size).encode()
        entries = [
            _entry("config.json", text, compress_type=zipfile.ZIP_DEFLATED)
            if i.filename == "config.json"
            else (i, d)
            for i, d in entries
        ]
        how = f"config.json inflates to {size >> 20} MiB"
    data = _zip_bytes(entries)
    if edit == "encrypted-flag":
        data = _flag_encrypted(data)
    return _write(folder, "model.keras", data), f"{os.path.basename(base)}: {how}"


def keras_config(rng, seeds, folder):
    """A `.keras` archive whose `config.json` has one `edit_config` edit."""
    text, how = edit_config(rng, seeds.config["zip"], seeds.payload_layer["zip"])
    data = text if isinstance(text, bytes) else text.encode()
    entries = [
        (i, data if i.filename == "config.json" else d)
        for i, d in _zip_entries(seeds.bytes("model.keras"))
    ]
    return _write(folder, "model.keras", _zip_bytes(entries)), f"config.json {how}"


def h5_config(rng, seeds, folder):
    """A legacy `.h5` model whose `model_config` is edited, deleted or not JSON."""
    base = _model_base(rng, seeds, ("hdf5",))
    edit = rng.choice(
        ("edit", "edit", "edit", "edit", "delete", "bytes", "pickle", "number", "empty")
    )
    how = edit
    config = _h5_config(base)

    def change(f):
        nonlocal how
        if edit == "edit":
            text, how = edit_config(rng, config, seeds.payload_layer["hdf5"])
            f.attrs["model_config"] = np.void(text) if isinstance(text, bytes) else text
        elif edit == "delete":
            del f.attrs["model_config"]
        elif edit == "bytes":
            f.attrs["model_config"] = np.void(rng.randbytes(rng.choice((1, 64, 4096))))
        elif edit == "pickle":
            f.attrs["model_config"] = np.void(pickle.dumps(PicklePayload(seeds.pickle_marker)))
        elif edit == "number":
            f.attrs["model_config"] = rng.choice((42, np.arange(5), 1.5))
        else:
            f.attrs["model_config"] = ""

    data = _h5_edit(seeds.bytes(base), os.path.join(folder, "scratch.h5"), change)
    return _write(folder, "model.h5", data), f"{os.path.basename(base)} model_config: {how}"


def h5_attrs(rng, seeds, folder):
    """A legacy `.h5` model with odd `keras_version`, `backend`, layer or weight names."""
    base = _model_base(rng, seeds, ("hdf5",))
    edit = rng.choice(
        (
            "keras_version",
            "backend",
            "training_config",
            "layer_names",
            "weight_names",
            "delete",
            "junk",
        )
    )
    how = edit

    def change(f):
        nonlocal how
        odd = rng.choice(
            (
                "",
                "1.2.2",
                "2.0.0",
                "99.0",
                "theano",
                "jax",
                "torch",
                42,
                np.arange(3),
                np.void(b"\xff\x00\xfe"),
            )
        )
        if edit in ("keras_version", "backend"):
            holder = rng.choice((f, f["model_weights"]))
            holder.attrs[edit] = odd
            how = f"{holder.name} {edit} = {odd!r}"
        elif edit == "training_config":
            f.attrs[edit] = rng.choice(("{not json", json.dumps({"loss": EVAL_NODE}), "[]"))
        elif edit in ("layer_names", "weight_names"):
            holders = (
                [f["model_weights"]]
                if edit == "layer_names"
                else [
                    f["model_weights"][k]
                    for k in f["model_weights"]
                    if "weight_names" in f["model_weights"][k].attrs
                ]
            )
            holder = rng.choice(holders)
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in holder.attrs[edit]]
            change_names = rng.choice(("drop", "add", "reverse", "numbers", "empty", "traverse"))
            names = {
                "drop": names[1:],
                "add": names + ["ghost"],
                "reverse": names[::-1],
                "numbers": list(range(len(names))),
                "empty": [],
                "traverse": ["../../" + n for n in names],
            }[change_names]
            holder.attrs[edit] = (
                np.array(names)
                if change_names == "numbers"
                else np.array(names, dtype=h5py.string_dtype())
            )
            how = f"{holder.name} {edit}: {change_names}"
        else:
            names = [n for n in _h5_objects(f, "any") if len(f[n].attrs)]
            holder = f[rng.choice(names)]
            attr = rng.choice(list(holder.attrs))
            if edit == "delete":
                del holder.attrs[attr]
                how = f"delete {holder.name} attribute {attr}"
            else:
                holder.attrs[attr] = odd
                how = f"{holder.name} attribute {attr} = {odd!r}"

    data = _h5_edit(seeds.bytes(base), os.path.join(folder, "scratch.h5"), change)
    return _write(folder, "model.h5", data), f"{os.path.basename(base)}: {how}"


def _edit_weights(rng, seeds, f):
    """One change to a weight dataset of an open HDF5 file; its description."""
    edit = rng.choice(
        (
            "delete",
            "resize",
            "dtype",
            "scalar",
            "group",
            "nan",
            "huge",
            "external-link",
            "soft-link",
        )
    )
    names = _h5_objects(f, "dataset")
    if edit in ("nan", "huge"):
        names = [n for n in names if f[n].dtype.kind == "f" and f[n].size]
    name = rng.choice(names)
    old = f[name]
    shape, dtype = old.shape, old.dtype
    how = edit
    if edit not in ("nan", "huge"):
        del f[name]
    if edit == "resize":
        new = rng.choice(
            (
                (0,),
                (1,),
                tuple(d + 1 for d in shape) or (2,),
                tuple(max(d // 2, 1) for d in shape) or (3,),
                (3,) + tuple(shape),
            )
        )
        f.create_dataset(name, data=np.ones(new, dtype=dtype))
        how = f"resize {shape} -> {new}"
    elif edit == "dtype":
        new = rng.choice(("int8", "float64", "complex64", "bool", "S4"))
        f.create_dataset(name, data=np.ones(shape, dtype=new))
        how = f"dtype {dtype} -> {new}"
    elif edit == "scalar":
        f.create_dataset(name, data=np.float32(1))
    elif edit == "group":
        f.create_group(name)
    elif edit in ("nan", "huge"):
        fill = rng.choice((np.nan, np.inf, -np.inf)) if edit == "nan" else 3e38
        values = np.array(old[()], copy=True)
        if rng.random() < 0.5:
            values.reshape(-1)[rng.randrange(values.size)] = fill
            how = f"one value {fill}"
        else:
            values[...] = fill
            how = f"all values {fill}"
        old[...] = values
    elif edit == "external-link":
        f[name] = h5py.ExternalLink(seeds.paths["data.h5"], "/X_test")
        how = "external link to the seed data's X_test"
    elif edit == "soft-link":
        other = "/" + rng.choice(_h5_objects(f, "dataset"))
        f[name] = h5py.SoftLink(rng.choice(("/nowhere", other)))
        how = f"soft link to {f.get(name, getlink=True).path}"
    return f"{name}: {how}"


def h5_weights(rng, seeds, folder):
    """A model whose weights have a dataset deleted, resized, retyped or linked away."""
    base = rng.choice(seeds.models)
    scratch = os.path.join(folder, "scratch.h5")
    how = None

    def change(f):
        nonlocal how
        how = _edit_weights(rng, seeds, f)

    if base.endswith(".h5"):
        data = _h5_edit(seeds.bytes(base), scratch, change)
        return _write(folder, "model.h5", data), f"model.h5 {how}"
    entries = _zip_entries(seeds.bytes(base))
    entries = [
        (i, _h5_edit(d, scratch, change) if i.filename == "model.weights.h5" else d)
        for i, d in entries
    ]
    return _write(folder, "model.keras", _zip_bytes(entries)), f"model.keras weights {how}"


def model_name(rng, seeds, folder):
    """A model file under the wrong extension, empty, a folder or a symlink."""
    edit = rng.choice(
        (
            "keras-as-h5",
            "h5-as-keras",
            "payload-as-h5",
            "txt",
            "no-extension",
            "upper-case",
            "hdf5",
            "empty",
            "directory",
            "symlink",
            "device",
        )
    )
    keras_file, h5_file = seeds.paths["model.keras"], seeds.paths["model.h5"]
    if edit == "keras-as-h5":
        return _write(folder, "model.h5", seeds.bytes(keras_file)), edit
    if edit == "h5-as-keras":
        return _write(folder, "model.keras", seeds.bytes(h5_file)), edit
    if edit == "payload-as-h5":
        return _write(folder, "model.h5", seeds.bytes("payload.keras")), edit
    if edit in ("txt", "no-extension"):
        source = rng.choice((keras_file, h5_file))
        name = "model.txt" if edit == "txt" else "model"
        return _write(folder, name, seeds.bytes(source)), f"{os.path.basename(source)} as {name}"
    if edit == "upper-case":
        return _write(folder, "model.KERAS", seeds.bytes(keras_file)), edit
    if edit == "hdf5":
        return _write(folder, "model.hdf5", seeds.bytes(h5_file)), edit
    if edit == "empty":
        name = rng.choice(("model.keras", "model.h5"))
        return _write(folder, name, b""), f"empty {name}"
    if edit == "directory":
        path = os.path.join(folder, "model.keras")
        os.makedirs(path)
        for info, data in _zip_entries(seeds.bytes(keras_file)):
            _write(path, info.filename, data)
        return path, "an unpacked .keras archive (a folder)"
    path = os.path.join(folder, rng.choice(("model.keras", "model.h5")))
    target = os.devnull
    if edit == "symlink":
        target = keras_file if path.endswith(".keras") else h5_file
    os.symlink(target, path)
    return path, f"symlink to {'the seed' if edit == 'symlink' else target}"


# =============================================================== data mutations
def _save_arrays(path, arrays, fmt):
    """Writes arrays as HDF5 datasets (`fmt="h5"`) or into an `.npz` archive (any file name)."""
    if fmt == "h5":
        with h5py.File(path, "w") as f:
            for key, value in arrays.items():
                value = np.asarray(value)
                if value.dtype.kind == "U":
                    value = value.astype("S")
                f.create_dataset(key, data=value)
    else:
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    return path


def _keys(fmt):
    return ("X_test", "Y_test") if fmt == "h5" else ("x_test", "y_test")


def data_truncate(rng, seeds, folder):
    """A seed data file cut short."""
    base = rng.choice(seeds.data)
    data, how = _cut(rng, seeds.bytes(base))
    return _write(folder, os.path.basename(base), data), f"{os.path.basename(base)} {how}"


def data_flip(rng, seeds, folder):
    """A seed data file with 1-32 bytes flipped."""
    base = rng.choice(seeds.data)
    data, how = _flip(rng, seeds.bytes(base))
    return _write(folder, os.path.basename(base), data), f"{os.path.basename(base)} {how}"


def data_images(rng, seeds, folder):
    """A data file whose images are non-finite, out of range, strings, misshapen or none."""
    fmt = rng.choice(("h5", "npz"))
    nrng = np.random.default_rng(rng.getrandbits(64))
    x, y = seeds.x, seeds.y
    n = len(x)
    edit = rng.choice(
        (
            "nan",
            "negative",
            "unit-range",
            "over-255",
            "strings",
            "rank",
            "empty",
            "shape",
            "dtype",
            "big-image",
        )
    )
    if edit == "nan":
        x = x.astype(np.float32)
        x.reshape(-1)[nrng.integers(0, x.size, rng.randint(1, 50))] = rng.choice(
            (np.nan, np.inf, -np.inf)
        )
    elif edit == "negative":
        x = x.astype(rng.choice((np.int16, np.float32))) - rng.choice((1, 128, 255))
    elif edit == "unit-range":
        x = (x / 255.0).astype(rng.choice((np.float32, np.float64)))
    elif edit == "over-255":
        x = x.astype(np.float32) * rng.choice((4.0, 1e6, 1e36))
    elif edit == "strings":
        x = np.full(rng.choice((x.shape, (n,))), rng.choice(("7", "cat", "")), dtype="U3")
    elif edit == "rank":
        shape = rng.choice(((n, 784), (n * 784,), (n, 28, 28, 1, 1), (1, n, 28, 28, 1), ()))
        x = np.uint8(7) if shape == () else x.reshape(shape)
    elif edit == "empty":
        x, y = x[:0], y[:0]
    elif edit == "shape":
        shape = rng.choice(
            (
                (n, 32, 32, 3),
                (n, 28, 28, 3),
                (n, 1, 1, 1),
                (n, 28, 28, 0),
                (n, 0, 28, 1),
                (n, 14, 14, 1),
            )
        )
        x = nrng.integers(0, 256, shape, dtype=np.uint8)
    elif edit == "dtype":
        dtype = rng.choice(
            ("bool", "complex64", "float16", "float64", ">f4", "uint16", "int64", "uint64")
        )
        x = (x > 127) if dtype == "bool" else x.astype(dtype)
        if dtype in ("int64", "uint64") and rng.random() < 0.5:
            x = x * np.array(2**40, dtype=dtype)
        edit = f"dtype {dtype}"
    else:
        x = np.zeros((1, 4096, 4096, 1), dtype=np.uint8)
        y = y[:1]
    kx, ky = _keys(fmt)
    path = _save_arrays(os.path.join(folder, "data." + fmt), {kx: x, ky: y}, fmt)
    return path, f"{fmt} images {edit}: {np.asarray(x).dtype} {np.shape(x)}"


def data_labels(rng, seeds, folder):
    """A data file whose labels are empty rows, miscounted, out of range or misshapen."""
    fmt = rng.choice(("h5", "npz"))
    x, onehot = seeds.x, seeds.y
    labels = np.argmax(onehot, axis=1)
    n = len(x)
    edit = rng.choice(
        (
            "zero-rows",
            "length",
            "negative",
            "large",
            "strings",
            "fractional",
            "shape",
            "bool",
            "wide-onehot",
        )
    )
    if edit == "zero-rows":
        y = onehot.copy()
        y[: rng.choice((1, n // 2, n))] = 0
    elif edit == "length":
        y = rng.choice(
            (onehot[: n - 1], np.concatenate([onehot, onehot[:7]]), onehot[:0], onehot[:1])
        )
    elif edit == "negative":
        y = labels.copy()
        y[: rng.randint(1, n)] = rng.choice((-1, -7, -(2**31)))
    elif edit == "large":
        y = labels.copy()
        y[rng.randrange(n)] = rng.choice((10, 255, 2**40, 10**18))
    elif edit == "strings":
        y = labels.astype("U2") if rng.random() < 0.5 else np.full(n, "cat", dtype="U3")
    elif edit == "fractional":
        y = labels.astype(np.float64)
        y[rng.randrange(n)] = rng.choice((0.5, np.nan, np.inf, -np.inf))
    elif edit == "shape":
        y = rng.choice(
            (labels[:, None], onehot[:, :, None], np.int64(3), onehot[:, :2], np.zeros((n, 0)))
        )
    elif edit == "bool":
        y = onehot.astype(bool)
    else:
        y = np.zeros((n, rng.choice((1000, 20_000))), dtype=np.float32)
        y[np.arange(n), labels] = 1
    kx, ky = _keys(fmt)
    path = _save_arrays(os.path.join(folder, "data." + fmt), {kx: x, ky: y}, fmt)
    return path, f"{fmt} labels {edit}: {np.asarray(y).dtype} {np.shape(y)}"


def data_pickle(rng, seeds, folder):
    """An `.npz` file (or look-alike) holding an object whose unpickling writes a marker."""
    payload = PicklePayload(seeds.pickle_marker)
    x, y = seeds.x, seeds.y
    obj = np.empty(1, dtype=object)
    obj[0] = payload
    edit = rng.choice(("x", "y", "both", "extra-key", "zero-d", "npy", "raw-pickle", "as-h5"))
    path = os.path.join(folder, "data.npz")
    if edit in ("x", "y", "both", "extra-key", "zero-d", "as-h5"):
        arrays = {"x_test": x, "y_test": y}
        if edit in ("x", "both"):
            arrays["x_test"] = obj
        if edit in ("y", "both"):
            arrays["y_test"] = obj
        if edit == "extra-key":
            arrays["meta"] = obj
        if edit == "zero-d":
            arrays["x_test"] = np.array(payload, dtype=object)
        if edit == "as-h5":
            path = os.path.join(folder, "data.h5")
            arrays["x_test"] = obj
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    elif edit == "npy":
        with open(path, "wb") as f:
            np.save(f, obj)
    else:
        _write(folder, "data.npz", pickle.dumps({"x_test": payload, "y_test": y}))
    return path, f"pickled payload: {edit}"


def data_keys(rng, seeds, folder):
    """A data file with missing, renamed or linked arrays."""
    fmt = rng.choice(("h5", "npz"))
    kx, ky = _keys(fmt)
    x, y = seeds.x, seeds.y
    edit = rng.choice(
        (
            "only-x",
            "only-y",
            "train-only",
            "mixed-case",
            "empty",
            "group",
            "soft-link",
            "external-link",
            "not-npy-member",
        )
    )
    path = os.path.join(folder, "data." + fmt)
    if edit == "only-x":
        _save_arrays(path, {kx: x}, fmt)
    elif edit == "only-y":
        _save_arrays(path, {ky: y}, fmt)
    elif edit == "train-only":
        _save_arrays(path, {kx.replace("test", "train"): x, ky.replace("test", "train"): y}, fmt)
    elif edit == "mixed-case":
        _save_arrays(path, {"x_TEST": x, "Y_test": y}, fmt)
    elif edit == "empty":
        _save_arrays(path, {}, fmt)
    elif edit in ("group", "soft-link", "external-link"):
        path = os.path.join(folder, "data.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("Y_test", data=y)
            if edit == "group":
                f.create_group("X_test").create_dataset("X_test", data=x)
            elif edit == "soft-link":
                f.create_dataset("images", data=x)
                target = rng.choice(("/images", "/nowhere", "/X_test"))
                f["X_test"] = h5py.SoftLink(target)
                edit += f" X_test -> {target}"
            else:
                target = rng.choice((seeds.paths["data.h5"], "/etc/passwd"))
                f["X_test"] = h5py.ExternalLink(target, "/X_test")
                edit += f" X_test -> {target}:/X_test"
    else:
        path = os.path.join(folder, "data.npz")
        entries = [("x_test.npy", rng.randbytes(64)), ("y_test.npy", b"\x93NUMPY junk")]
        _write(folder, "data.npz", _zip_bytes(entries))
    return path, f"{os.path.basename(path)} {edit}"


def data_format(rng, seeds, folder):
    """A data file under the wrong extension, empty, a model file, a folder or a symlink."""
    edit = rng.choice(
        (
            "h5-as-npz",
            "npz-as-h5",
            "txt",
            "no-extension",
            "empty",
            "model-file",
            "folder-empty",
            "folder-junk-images",
            "device",
        )
    )
    if edit == "h5-as-npz":
        return _write(folder, "data.npz", seeds.bytes("data.h5")), edit
    if edit == "npz-as-h5":
        return _write(folder, "data.h5", seeds.bytes("data.npz")), edit
    if edit in ("txt", "no-extension"):
        source = rng.choice(seeds.data)
        name = "data.txt" if edit == "txt" else "data"
        return _write(folder, name, seeds.bytes(source)), f"{os.path.basename(source)} as {name}"
    if edit == "empty":
        name = rng.choice(("data.h5", "data.npz"))
        return _write(folder, name, b""), f"empty {name}"
    if edit == "model-file":
        source = rng.choice(seeds.models)
        name = "data.h5" if source.endswith(".h5") else "data.npz"
        return _write(folder, name, seeds.bytes(source)), f"{os.path.basename(source)} as {name}"
    if edit.startswith("folder"):
        path = os.path.join(folder, "data")
        os.makedirs(path)
        if edit == "folder-junk-images":
            for label in rng.sample(range(10), 3):
                os.makedirs(os.path.join(path, str(label)))
                for i in range(2):
                    junk = rng.choice(
                        (rng.randbytes(100), b"\x89PNG\r\n\x1a\n" + rng.randbytes(60))
                    )
                    _write(os.path.join(path, str(label)), f"{i}.png", junk)
        return path, edit
    path = os.path.join(folder, "data.h5")
    os.symlink(os.devnull, path)
    return path, f"symlink to {os.devnull}"


# ------------------------------------------------ inputs that lead elsewhere, or declare too much
def _outside(folder):
    """A file beside the case folder (outside every input): what a hostile input points at.

    Its access time is set to 0 before each case, so a read during the case shows
    (`outside_reads`; the file system must record access times, as relatime does).
    """
    path = os.path.join(os.path.dirname(folder), "bystander_outside.txt")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write(os.path.dirname(path), "bystander_outside.txt", "a file no case may read\n" * 64)
    return path


def _png_bytes():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def model_special(rng, seeds, folder):
    """A FIFO, a folder or a link to a device given as the model file."""
    edit = rng.choice(("fifo", "folder", "device-link"))
    path = os.path.join(folder, rng.choice(("model.keras", "model.h5")))
    if edit == "fifo":
        os.mkfifo(path)
    elif edit == "folder":
        os.makedirs(path)
    else:
        os.symlink("/dev/zero", path)
    return path, edit


def input_special(rng, seeds, folder):
    """A FIFO as the data file or a class-folder image, a link out of a class folder, or a GTSRB
    CSV naming a file outside its folder (absolute or ../)."""
    edit = rng.choice(("data-fifo", "image-fifo", "image-link", "csv-path"))
    if edit == "data-fifo":
        path = os.path.join(folder, rng.choice(("data.h5", "data.npz")))
        os.mkfifo(path)
        return path, edit
    if edit in ("image-fifo", "image-link"):
        path = os.path.join(folder, "data")
        for label in range(3):
            os.makedirs(os.path.join(path, str(label)))
            _write(os.path.join(path, str(label)), "0.png", _png_bytes())
        bad = os.path.join(path, "1", "1.png")
        os.mkfifo(bad) if edit == "image-fifo" else os.symlink(_outside(folder), bad)
        return path, edit
    root = os.path.join(folder, "GTSRB")
    images = os.path.join(root, "Final_Test", "Images")
    os.makedirs(images)
    target = rng.choice((_outside(folder), os.path.relpath(_outside(folder), images)))
    _write(images, "GT-final_test.csv", f"Filename;ClassId\n{target};0\n")
    return root, f"{edit} {target}"


def data_external(rng, seeds, folder):
    """An HDF5 data file whose images live in another file: external storage or a virtual dataset."""
    path = os.path.join(folder, "data.h5")
    y = np.eye(10, dtype=np.float32)[np.zeros(4, int)]
    edit = rng.choice(("external-outside", "external-devzero", "virtual"))
    with h5py.File(path, "w") as f:
        if edit == "virtual":
            layout = h5py.VirtualLayout(shape=(128, 28, 28, 1), dtype="u1")
            layout[:] = h5py.VirtualSource(seeds.paths["data.h5"], "X_test", shape=(128, 28, 28, 1))
            f.create_virtual_dataset("X_test", layout)
        else:
            source = _outside(folder) if edit == "external-outside" else "/dev/zero"
            shape = (4, 8, 8, 1) if edit == "external-outside" else (4_000_000, 28, 28, 1)
            f.create_dataset("X_test", shape, "u1", external=[(source, 0, h5py.h5f.UNLIMITED)])
        f.create_dataset("Y_test", data=y)
    return path, edit


def data_bomb(rng, seeds, folder):
    """A small data file that declares gigabytes: npy headers, or HDF5 shapes never written."""
    count = rng.choice((2_000_000_000, 10**12))
    if rng.random() < 0.5:
        path = os.path.join(folder, "data.npz")
        with zipfile.ZipFile(path, "w") as z:
            for key, shape in (("x_test", (count, 28, 28, 1)), ("y_test", (count,))):
                with z.open(f"{key}.npy", "w") as member:
                    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
                    np.lib.format.write_array_header_1_0(member, header)
                    member.write(bytes(4096))
        return path, f"npz headers of {count:,} images"
    path = os.path.join(folder, "data.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("X_test", (count // 1000, 28, 28, 1), "u1", chunks=(1, 28, 28, 1))
        f.create_dataset("Y_test", (count // 1000, 10), "f4", chunks=(1, 10))
    return path, f"HDF5 shapes of {count // 1000:,} images"


def keras_bomb(rng, seeds, folder):
    """A .keras model that would cost far more than its size: declared weights, assets, a layer
    of 650k units, 300 Sequential layers, or a configuration nested 80 deep."""
    entries = {info.filename: data for info, data in _zip_entries(seeds.bytes("model.keras"))}
    config = json.loads(entries["config.json"])
    layers = config["config"]["layers"]
    edit = rng.choice(("weights", "assets", "units", "layers", "depth"))
    if edit == "weights":
        scratch = os.path.join(folder, "w.h5")
        with h5py.File(scratch, "w") as f:
            f.create_dataset("layers/dense/vars/0", (1_000_000, 2000), "f4", chunks=(100, 2000))
        with open(scratch, "rb") as f:
            entries["model.weights.h5"] = f.read()
        os.remove(scratch)
    elif edit == "assets":
        entries["assets/vocabulary.txt"] = bytes(rng.choice((32, 600)) * 2**20)
    elif edit == "units":
        dense = [layer for layer in layers if layer.get("class_name") == "Dense"][-1]
        dense["config"]["units"] = 650_000
    elif edit == "layers":
        layers[-1:-1] = [
            {"module": "keras.layers", "class_name": "Activation", "registered_name": None,
             "config": {"name": f"linear_{i}", "activation": "linear", "trainable": True}}
            for i in range(300)
        ]  # fmt: skip
    else:
        config["extra"] = json.loads("[" * 80 + "]" * 80)
    entries["config.json"] = json.dumps(config).encode()
    compressed = {k: (v, zipfile.ZIP_DEFLATED) for k, v in entries.items()}
    with zipfile.ZipFile(os.path.join(folder, "model.keras"), "w") as z:
        for name, (data, how) in compressed.items():
            z.writestr(zipfile.ZipInfo(name, ZIP_TIME), data, compress_type=how)
    return os.path.join(folder, "model.keras"), edit


KINDS = {
    "model-truncate": ("model", model_truncate),
    "model-flip": ("model", model_flip),
    "model-junk": ("model", model_junk),
    "model-polyglot": ("model", model_polyglot),
    "keras-entry": ("model", keras_entry),
    "keras-config": ("model", keras_config),
    "h5-config": ("model", h5_config),
    "h5-attrs": ("model", h5_attrs),
    "h5-weights": ("model", h5_weights),
    "model-name": ("model", model_name),
    "data-truncate": ("data", data_truncate),
    "data-flip": ("data", data_flip),
    "data-images": ("data", data_images),
    "data-labels": ("data", data_labels),
    "data-pickle": ("data", data_pickle),
    "data-keys": ("data", data_keys),
    "data-format": ("data", data_format),
    "input-special": ("data", input_special),
    "data-external": ("data", data_external),
    "data-bomb": ("data", data_bomb),
    "keras-bomb": ("model", keras_bomb),
    "model-special": ("model", model_special),
}


# =================================================================== the worker
def _trim(text):
    if len(text) <= OUTPUT_CAP:
        return text
    half = OUTPUT_CAP // 2
    gap = f"\n[... {len(text) - OUTPUT_CAP} characters left out ...]\n"
    return text[:half] + gap + text[-half:]


def json_problem(stdout, code):
    """What is wrong with a `--json` case's stdout, or `None`.

    Args:
        stdout: everything the case wrote to stdout.
        code: its exit status.

    Returns:
        `None` when stdout is one strict JSON document (no NaN or
        infinities) and, on exit 2, an object with an "error" key.
    """

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    try:
        value = json.loads(stdout, parse_constant=reject)
    except ValueError as error:
        first = stdout.strip().splitlines()[0][:120] if stdout.strip() else "(empty)"
        return f"stdout is not JSON ({str(error)[:80]}): {first}"
    if code == 2 and not (isinstance(value, dict) and "error" in value):
        return 'exit 2 without a JSON object holding "error"'
    return None


def run_in_worker(argv, capture, cli, keras):
    """Runs one `nc-tf` command in this process with all its output captured.

    Args:
        argv: the command's arguments.
        capture: folder for the files that receive output written straight
            to file descriptors 1 and 2 (native code, crash reports).
        cli: the `nc_tf.cli` module.
        keras: the `keras` module.

    Returns:
        dict: `code`, `stdout`, `stderr` (trimmed), `traceback`, `escaped`
        (an exception left `main`), `json_error`, `seconds`, `peak_rss_gib`.
    """
    out_buf, err_buf = io.StringIO(), io.StringIO()
    paths = [os.path.join(capture, "case.out"), os.path.join(capture, "case.err")]
    saved = [os.dup(1), os.dup(2)]
    sys.stdout.flush()
    sys.stderr.flush()
    files = [open(p, "wb") for p in paths]
    os.dup2(files[0].fileno(), 1)
    os.dup2(files[1].fileno(), 2)
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers = [logging.StreamHandler(err_buf)]
    code, escaped = None, False
    cwd = os.getcwd()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            real = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = out_buf, err_buf
            try:
                code = cli.main(list(argv))
            except SystemExit as stop:
                code = stop.code
            except BaseException:  # anything leaving main is a finding
                escaped, code = True, 1
                traceback.print_exc(file=err_buf)
            finally:
                sys.stdout, sys.stderr = real
        for w in caught:
            err_buf.write(f"{w.category.__name__}: {w.message}\n")
    finally:
        seconds = time.perf_counter() - start
        os.chdir(cwd)
        root.handlers = handlers
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for f in files:
            f.close()
    if code is None:
        code = 0
    elif not isinstance(code, int) or isinstance(code, bool):
        err_buf.write(f"{code}\n")
        code = 1
    native = [_read(p).decode("utf-8", "replace") for p in paths]
    stdout, stderr = out_buf.getvalue() + native[0], err_buf.getvalue() + native[1]
    try:
        keras.backend.clear_session()
    except Exception as error:  # the case left Keras in a state it cannot reset
        stderr += f"\nworker: keras.backend.clear_session() failed: {error!r}\n"
    gc.collect()
    return {
        "code": code,
        "stdout": _trim(stdout),
        "stderr": _trim(stderr),
        "traceback": TRACEBACK in stdout or TRACEBACK in stderr,
        "escaped": escaped,
        "json_error": json_problem(stdout, code) if "--json" in argv else None,
        "seconds": seconds,
        "peak_rss_gib": peak_rss_gib(),
    }


def worker_main(capture, memory_gib):
    """The worker process: reads one JSON request per line, answers one JSON line each.

    The requests come on the original stdin and the answers go to the
    original stdout; file descriptor 0 then reads nothing and 1 writes to
    2, so that nothing a case does can break the conversation.

    Args:
        capture: folder for the per-case output files.
        memory_gib: address-space limit of this process, in GiB (0: none).
    """
    if memory_gib:
        limit = int(memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    requests = os.fdopen(os.dup(0), "r")
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    faulthandler.enable()
    sys.path.insert(0, REPO)
    import keras

    from nc_tf import cli

    answers.write(json.dumps({"ready": True}) + "\n")
    for line in requests:
        request = json.loads(line)
        answers.write(json.dumps(run_in_worker(request["argv"], capture, cli, keras)) + "\n")
    return 0


class Worker:
    """A long-lived worker subprocess that runs cases; replaced when it dies or hangs.

    Args:
        root: the run's folder (the worker runs in `root/cwd`, with `TMPDIR`
            `root/tmp`, writing capture files to `root/capture`).
        memory_gib: the worker's address-space limit in GiB.
    """

    STARTUP_SECONDS = 300

    def __init__(self, root, memory_gib):
        self.root = root
        self.memory_gib = memory_gib
        self.capture = os.path.join(root, "capture")
        self.proc = None
        self.answers = None
        self.starts = 0

    def start(self):
        env = dict(os.environ, TMPDIR=os.path.join(self.root, "tmp"))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (REPO, env.get("PYTHONPATH"))))
        with open(os.path.join(self.capture, "worker.log"), "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    SCRIPT,
                    "--worker",
                    self.capture,
                    "--memory-limit",
                    str(self.memory_gib),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=os.path.join(self.root, "cwd"),
                env=env,
                start_new_session=True,
            )
        self.starts += 1
        self.answers = queue.Queue()
        threading.Thread(
            target=self._read, args=(self.proc.stdout, self.answers), daemon=True
        ).start()
        try:
            hello = self.answers.get(timeout=self.STARTUP_SECONDS)
        except queue.Empty:
            hello = None
        if not hello or not hello.get("ready"):
            self.kill()
            raise SystemExit(f"the worker did not start; see {self.capture}/worker.log")

    @staticmethod
    def _read(stream, answers):
        for line in stream:
            try:
                answers.put(json.loads(line))
            except ValueError:
                answers.put({"garbled": line.decode("utf-8", "replace")[:200]})
        answers.put(None)

    def run(self, argv, timeout):
        """Runs one case; a worker that dies or hangs gives `{"died": reason, ...}`."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write((json.dumps({"argv": argv}) + "\n").encode())
            self.proc.stdin.flush()
            answer = self.answers.get(timeout=timeout)
        except BrokenPipeError:
            answer = None
        except queue.Empty:
            self.kill()
            return {"died": f"timeout after {timeout:g} s", "stderr": self._case_output()}
        if answer is None or "garbled" in answer:
            status = self.proc.wait()
            self.proc = None
            reason = (
                f"killed by {signal.Signals(-status).name}"
                if status < 0
                else f"exited with status {status}"
            )
            return {"died": reason, "stderr": self._case_output()}
        return answer

    def _case_output(self):
        parts = []
        for name in ("case.out", "case.err"):
            path = os.path.join(self.capture, name)
            if os.path.exists(path):
                parts.append(_read(path).decode("utf-8", "replace"))
        return _trim("".join(parts))

    def kill(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
                self.proc = None
            except subprocess.TimeoutExpired:
                self.kill()


# ============================================================ snapshots and cases
def snapshot(root, skip):
    """Every file and folder under `root` outside `skip`, with size, mtime and sha256 of files."""
    state = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skip]
        for d in dirs:
            state[os.path.join(folder, d)] = ("folder",)
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    digest = hashlib.sha256(_read(path)).hexdigest()
                    state[path] = (st.st_size, st.st_mtime_ns, digest)
                else:
                    state[path] = (
                        ("link", os.readlink(path))
                        if stat.S_ISLNK(st.st_mode)
                        else ("special", st.st_mode)
                    )
            except OSError as error:
                state[path] = ("unreadable", str(error))
    return state


def _inside(path, folder):
    return path == folder or path.startswith(folder + os.sep)


def changed_files(before, after, out):
    """Files deleted or changed since `before`, and new ones outside `out` (`None`: anywhere)."""
    changes = []
    for path, state in before.items():
        if path not in after:
            changes.append(f"deleted {path}")
        elif after[path] != state:
            changes.append(f"changed {path}")
    for path in sorted(after.keys() - before.keys()):
        if out is None or not _inside(path, out):
            changes.append(f"new {path}")
    return changes


def _clear(folder):
    """Empties a folder (keeps the folder)."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def plan_case(args, index):
    """The choices of case `index`: `(rng, kind, command, json)`; the mutation continues `rng`."""
    rng = random.Random(f"{args.seed}:{index}")
    kind = rng.choice(args.kinds)
    scan = rng.random() < args.scan_share
    command = args.commands[0] if len(args.commands) == 1 else ("scan" if scan else "evaluate")
    as_json = rng.random() < JSON_SHARE
    return rng, kind, command, as_json


def prepare_case(args, index, seeds, folder):
    """Writes case `index`'s inputs into `folder`.

    Returns:
        dict: `index`, `kind`, `variant`, `command`, `argv`, `out` (scan's
        output folder, else `None`).
    """
    rng, kind, command, as_json = plan_case(args, index)
    os.makedirs(folder)
    _write(folder, "bystander.txt", rng.randbytes(64).hex())
    target, mutate = KINDS[kind]
    path, variant = mutate(rng, seeds, folder)
    if target == "model":
        model, data = path, rng.choice(seeds.data)
    else:
        model, data = rng.choice(seeds.models), path
    argv = [command, model, "--dataset", data]
    out = None
    if command == "scan":
        out = os.path.join(folder, "out")
        argv += ["--out", out] + SCAN_OPTIONS
    if as_json:
        argv.append("--json")
    return {
        "index": index,
        "kind": kind,
        "variant": variant,
        "command": command,
        "argv": argv,
        "out": out,
    }


def first_error_line(text):
    """The line that says what went wrong: the exception, an `error:` line, else the first line."""
    if TRACEBACK in text:
        for line in text.split(TRACEBACK, 1)[1].splitlines()[1:]:
            if line.strip() and not line.startswith(" "):
                return line.strip()[:300]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for marker in (": error:", "Fatal Python error"):
        for line in lines:
            if marker in line:
                return line[:300]
    return lines[0][:300] if lines else ""


def run_case(args, index, seeds, worker, root, skip, keep=False):
    """Runs case `index` and judges it, then puts the run's folder back as it was.

    Args:
        args: the parsed options (`seed`, `kinds`, `commands`,
            `scan_share`, `timeout`).
        index: the case's index in the seeded sequence.
        seeds: the run's `Seeds`.
        worker: the `Worker` that runs the command.
        root: the run's folder.
        skip: folders under `root` left out of the file snapshots.
        keep: keep the case's folder afterwards. Defaults to `False`.

    Returns:
        dict: the `prepare_case` fields plus `code` (an int, or why the
        worker died), `problems` (the figures this case adds to), `error`
        (first error line), `stdout`, `stderr`, `changed`, `executed`,
        `json_error`, `cli_seconds` and `seconds` (the whole case).
    """
    start = time.perf_counter()
    folder = os.path.join(root, "cases", f"case_{index}")
    if os.path.exists(folder):
        shutil.rmtree(folder)
    outside = _outside(folder)  # before the case's inputs, which may point at it
    case = prepare_case(args, index, seeds, folder)
    before = snapshot(root, skip)
    os.utime(outside, ns=(0, os.stat(outside).st_mtime_ns))
    answer = worker.run(case["argv"], args.timeout)
    read_outside = os.stat(outside).st_atime_ns != 0
    after = snapshot(root, skip)
    executed = sorted(os.listdir(seeds.markers))
    changes = changed_files(before, after, case["out"])
    died = "died" in answer
    code = f"worker {answer['died']}" if died else answer["code"]
    stderr, stdout = answer.get("stderr", ""), answer.get("stdout", "")
    problems = []
    if died or code not in (0, 2):
        problems.append("bad_exits")
    if died and str(answer["died"]).startswith("timeout"):
        problems.append("hangs")
    if answer.get("traceback") or answer.get("escaped") or TRACEBACK in stderr:
        problems.append("tracebacks")
    if executed:
        problems.append("code_executions")
    if changes:
        problems.append("files_changed")
    if read_outside:
        problems.append("outside_reads")
    json_error = answer.get("json_error")
    if json_error:
        problems.append("invalid_json")
    # leave the run's folder as it was for the next case
    _clear(seeds.markers)
    seeds.restore()
    for path in sorted(after.keys() - before.keys(), reverse=True):
        if not _inside(path, folder) and os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
    _clear(os.path.join(root, "tmp"))
    _clear(os.path.join(root, "cwd"))
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    error = first_error_line(stderr) or first_error_line(stdout) or answer.get("died") or json_error
    case.update(
        code=code,
        problems=problems,
        error=error,
        stdout=stdout,
        stderr=stderr,
        changed=changes,
        executed=executed,
        json_error=json_error,
        cli_seconds=answer.get("seconds"),
        worker_peak_rss_gib=answer.get("peak_rss_gib"),
        seconds=time.perf_counter() - start,
    )
    return case


def rerun_command(args, index):
    """The command line that reruns case `index` alone."""
    parts = ["python", "bench/fuzz_inputs.py", "--only-case", str(index), "--seed", str(args.seed)]
    if args.kinds != list(KINDS):
        parts += ["--kinds", ",".join(args.kinds)]
    if args.commands != list(COMMANDS):
        parts += ["--commands", ",".join(args.commands)]
    if args.scan_share != 0.5:
        parts += ["--scan-share", str(args.scan_share)]
    if args.workdir:
        parts += ["--workdir", args.workdir]
    return shlex.join(parts)


# ===================================================================== driver
def setup_root(args):
    """Creates (or reuses) the run's folder and its seeds; proves both payloads.

    Returns:
        `(root, seeds, info, temporary)`: `info` is the seed builder's
        report, `temporary` whether the folder is removed at the end.
    """
    temporary = args.workdir is None
    root = tempfile.mkdtemp(prefix="nc_tf_fuzz_") if temporary else os.path.abspath(args.workdir)
    for sub in ("seeds", "markers", "capture", "tmp", "cwd", "cases"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    _clear(os.path.join(root, "cases"))
    _clear(os.path.join(root, "markers"))
    folder, markers = os.path.join(root, "seeds"), os.path.join(root, "markers")
    info_path = os.path.join(root, "capture", "seeds.json")
    if not os.path.exists(info_path):
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        log_path = os.path.join(root, "capture", "seeds.log")
        with open(log_path, "wb") as log:
            done = subprocess.run(
                [
                    sys.executable,
                    SCRIPT,
                    "--make-seeds",
                    folder,
                    "--marker",
                    os.path.join(markers, "lambda"),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO,
                env=env,
                timeout=1200,
            )
        if done.returncode != 0:
            raise SystemExit(
                f"making the seeds failed, or the Lambda payload did not write "
                f"its marker when loaded (see {log_path}); the fuzzer cannot "
                "detect code execution, stopping."
            )
        with open(info_path, "wb") as f:
            f.write(done.stdout.strip().splitlines()[-1])
    with open(info_path) as f:
        info = json.load(f)
    seeds = Seeds(folder, markers)
    if not check_pickle_payload(os.path.join(root, "tmp"), seeds.pickle_marker):
        raise SystemExit(
            "the pickle payload did not write its marker when unpickled; the "
            "fuzzer cannot detect code execution, stopping."
        )
    return root, seeds, info, temporary


def summarise(args, cases, wall, info, worker, start_seconds):
    """Pools the cases: the figures, cases per kind, exit statuses, times, peak RSS, failures."""
    counts = {key: sum(key in c["problems"] for c in cases) for key, _ in FIGURES}
    kinds = {
        k: {
            "cases": sum(c["kind"] == k for c in cases),
            "failing": sum(c["kind"] == k and bool(c["problems"]) for c in cases),
        }
        for k in args.kinds
    }
    exits = {}
    for c in cases:
        exits[str(c["code"])] = exits.get(str(c["code"]), 0) + 1
    timing = {}
    for command in args.commands:
        mine = [c for c in cases if c["command"] == command]
        cli = [c["cli_seconds"] for c in mine if c["cli_seconds"] is not None]
        timing[command] = {
            "cases": len(mine),
            "mean_s": sum(c["seconds"] for c in mine) / len(mine) if mine else None,
            "max_s": max((c["seconds"] for c in mine), default=None),
            "mean_cli_s": sum(cli) / len(cli) if cli else None,
        }
    share = {"scan": args.scan_share, "evaluate": 1 - args.scan_share}
    if len(args.commands) == 1:
        share = {args.commands[0]: 1.0}
    projected = None
    if all(timing[c]["mean_s"] is not None for c in args.commands):
        per_case = sum(share[c] * timing[c]["mean_s"] for c in args.commands)
        projected = start_seconds + 1000 * per_case
    worker_rss = max((c["worker_peak_rss_gib"] or 0 for c in cases), default=0)
    fields = (
        "index",
        "kind",
        "variant",
        "command",
        "argv",
        "code",
        "problems",
        "error",
        "changed",
        "executed",
        "json_error",
    )
    failures = [
        {k: c[k] for k in fields} | {"rerun": rerun_command(args, c["index"])}
        for c in cases
        if c["problems"]
    ]
    unexpected = [
        {k: c[k] for k in fields} | {"rerun": rerun_command(args, c["index"])}
        for c in cases
        if c["code"] == 2 and UNEXPECTED in c["stderr"]
    ]
    return {
        "cases": len(cases),
        "seed": args.seed,
        "counts": counts,
        "targets": {key: 0 for key, _ in FIGURES},
        "passed": not any(counts.values()),
        "kinds": kinds,
        "exit_codes": dict(sorted(exits.items())),
        "timing": timing,
        "scan_share": share.get("scan", 0.0),
        "wall_time_s": round(wall, 1),
        "startup_s": round(start_seconds, 1),
        "projected_1000_cases_min": None if projected is None else round(projected / 60, 1),
        "worker_starts": worker.starts,
        "seed_model_accuracy": info.get("accuracy"),
        "payload_files": info.get("payloads"),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "worker_peak_rss_gib": round(worker_rss, 3),
        "unexpected_errors": unexpected,
        "failures": failures,
    }


def print_summary(summary):
    print(
        f"\ncases run: {summary['cases']} (seed {summary['seed']}, scan share "
        f"{summary['scan_share']:.0%}, seed model accuracy {summary['seed_model_accuracy']:.2f})"
    )
    print(f"\n{'figure':<34}{'measured':>9}{'target':>8}")
    for key, label in FIGURES:
        print(f"{label:<34}{summary['counts'][key]:>9}{0:>8}")
    print(f"{'exit 2 with an unexpected error':<34}{len(summary['unexpected_errors']):>9}{'-':>8}")
    print(f"\n{'mutation kind':<18}{'cases':>6}{'failing':>9}")
    for kind, row in summary["kinds"].items():
        print(f"{kind:<18}{row['cases']:>6}{row['failing']:>9}")
    print("\nexit statuses: " + ", ".join(f"{k}: {v}" for k, v in summary["exit_codes"].items()))
    for command, t in summary["timing"].items():
        if t["cases"]:
            print(
                f"{command:<9} {t['cases']:>5} cases, {t['mean_s']:.2f} s per case (max "
                f"{t['max_s']:.1f} s; in nc-tf {t['mean_cli_s'] or 0:.2f} s)"
            )
    projected = summary["projected_1000_cases_min"]
    print(
        f"wall time: {summary['wall_time_s']:.0f} s (start-up {summary['startup_s']:.0f} s, "
        f"worker starts {summary['worker_starts']})"
    )
    if projected is not None:
        print(
            f"projected wall time of 1,000 cases: {projected:.1f} min (target <= "
            f"{TARGET_MINUTES} min)"
        )
    print_peak_rss()
    print(f"worker peak RSS: {summary['worker_peak_rss_gib']:.2f} GiB")
    listings = (
        ("failing cases", summary["failures"]),
        ("exit 2 with an unexpected error (not counted)", summary["unexpected_errors"]),
    )
    for title, listing in listings:
        if listing:
            print(f"\n{title} ({len(listing)}):")
        for f in listing:
            problems = f" ({', '.join(f['problems'])})" if f["problems"] else ""
            print(
                f"case {f['index']} [{f['kind']}: {f['variant']}] {f['command']} -> exit "
                f"{f['code']}{problems}"
            )
            print(f"  argv: nc-tf {shlex.join(f['argv'])}")
            details = (
                ([f"error: {f['error']}"] if f["error"] else [])
                + ([f"json: {f['json_error']}"] if f["json_error"] else [])
                + [f"marker written: {m}" for m in f["executed"]]
                + f["changed"][:5]
                + [f"rerun: {f['rerun']}"]
            )
            for line in details:
                print(f"  {line}")
    print("\nPASS" if summary["passed"] else "\nFAIL")


def print_case(case, args):
    print(f"case {case['index']} (seed {args.seed}): {case['kind']}: {case['variant']}")
    print(f"argv: nc-tf {shlex.join(case['argv'])}")
    print(f"exit: {case['code']}   problems: {', '.join(case['problems']) or 'none'}")
    for m in case["executed"]:
        print(f"marker written: {m}")
    for change in case["changed"]:
        print(change)
    if case["json_error"]:
        print(f"json: {case['json_error']}")
    print(f"time: {case['seconds']:.2f} s")
    print("----- stdout -----")
    print(case["stdout"].rstrip())
    print("----- stderr -----")
    print(case["stderr"].rstrip())


def _names(text, known, what, error):
    items = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in items if v not in known]
    if unknown or not items:
        error(f"unknown {what} {unknown or text!r}; known: {', '.join(known)}")
    return [k for k in known if k in items]


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", type=int, default=1000, help="cases to run (default: 1000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the case sequence (default: 0)")
    ap.add_argument(
        "--kinds", help=f"comma-separated mutation kinds (default: all): {', '.join(KINDS)}"
    )
    ap.add_argument(
        "--commands",
        default="evaluate,scan",
        help="commands to run: evaluate, scan or both (default: both)",
    )
    ap.add_argument(
        "--scan-share",
        type=float,
        default=0.5,
        help="share of scan cases when both commands run (default: 0.5)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=120,
        help="seconds before a case's worker is killed (default: 120)",
    )
    ap.add_argument(
        "--memory-limit",
        type=float,
        default=8,
        help="address-space limit of the worker in GiB, 0 for none (default: 8)",
    )
    ap.add_argument(
        "--workdir",
        help="folder for seeds and cases, kept and reused (default: a "
        "temporary folder, removed at the end)",
    )
    ap.add_argument(
        "--only-case",
        type=int,
        metavar="K",
        help="rerun only case K of the sequence and print its whole output",
    )
    ap.add_argument("--json", action="store_true", help="print the figures as JSON only")
    ap.add_argument("--worker", metavar="CAPTURE", help=argparse.SUPPRESS)
    ap.add_argument("--make-seeds", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--marker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.memory_limit)
    if args.make_seeds:
        return make_seeds(args.make_seeds, args.marker)
    args.kinds = _names(args.kinds, list(KINDS), "kind(s)", ap.error) if args.kinds else list(KINDS)
    args.commands = _names(args.commands, list(COMMANDS), "command(s)", ap.error)
    if not 0 <= args.scan_share <= 1:
        ap.error("--scan-share must be in [0, 1]")

    t0 = time.perf_counter()
    root, seeds, info, temporary = setup_root(args)
    skip = {os.path.join(root, d) for d in ("markers", "capture", "tmp")}
    worker = Worker(root, args.memory_limit)
    try:
        worker.start()
        start_seconds = time.perf_counter() - t0
        if args.only_case is not None:
            case = run_case(args, args.only_case, seeds, worker, root, skip, keep=not temporary)
            if args.json:
                print(json.dumps(case, indent=2))
            else:
                print_case(case, args)
                if not temporary:
                    print(f"inputs kept in {os.path.join(root, 'cases', f'case_{args.only_case}')}")
            return 1 if case["problems"] else 0
        from tqdm import tqdm

        cases = []
        with tqdm(
            total=args.cases, desc="fuzz", unit="case", mininterval=2, file=sys.stderr
        ) as bar:
            for index in range(args.cases):
                cases.append(run_case(args, index, seeds, worker, root, skip))
                bar.update(1)
                bar.set_postfix(failing=sum(bool(c["problems"]) for c in cases))
        summary = summarise(args, cases, time.perf_counter() - t0, info, worker, start_seconds)
    finally:
        worker.close()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
