"""Hostile and mistaken input: one clear refusal, before any work, with nothing lost.

Each case runs the `nc-tf` entry point in-process and checks the exit
status, the one-line message, that no traceback is printed, that no file
was created or changed, and, for hostile model and data files, that the
payload's marker file never appears.
"""

import hashlib
import io as _io
import json
import os
import shutil
import subprocess
import zipfile

import h5py
import keras
import numpy as np
import pytest

from nc_tf.cli import main
from nc_tf.io import to_json

SCAN = [
    "--steps",
    "3",
    "--starts",
    "1",
    "--labels",
    "0,1,2",
    "--limit",
    "96",
    "--accept-low-accuracy",
]


# ----------------------------------------------------------------- helpers
def snapshot(root):
    """path -> sha256 of every file under `root`."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


def run(capsys, *argv):
    """Runs `nc-tf argv` in-process: `(exit status, stdout, stderr)`."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own exits (--help)
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, root, *argv, match):
    """Asserts that `nc-tf argv` exits 2 with one error line containing `match`, changing nothing."""
    before = snapshot(root)
    code, out, err = run(capsys, *argv)
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2, (code, err)
    assert "Traceback" not in err + out
    assert len(errors) == 1 and match in errors[0], err
    assert snapshot(root) == before
    return errors[0], out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small trained MNIST model (.keras and .h5), its data as .h5, and a second model."""
    from nc_tf.datasets import load_data

    root = tmp_path_factory.mktemp("bad_inputs")
    x, y = load_data("mnist", "train", limit=1500)
    xt, yt = load_data("mnist", "test", limit=256)
    keras.utils.set_random_seed(0)

    def tiny(units):
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Rescaling(1 / 255.0),
                keras.layers.Conv2D(units, 3, activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Flatten(),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=2, batch_size=64, verbose=0)
        return model

    model, other = tiny(4), tiny(6)
    paths = {
        "keras": root / "model.keras",
        "h5": root / "model.h5",
        "other": root / "other.keras",
        "data": root / "data.h5",
    }
    model.save(paths["keras"])
    model.save(paths["h5"])
    other.save(paths["other"])
    with h5py.File(paths["data"], "w") as f:
        f["X_test"], f["Y_test"] = xt, np.eye(10, dtype=np.float32)[yt]
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working folder, made the current one; every case checks it is left alone."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
    return str(path)


def payload_fn(marker):
    """A function whose call writes `marker`: the code an attacker would plant."""
    return eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]")  # noqa: S307


def lambda_model(path, marker):
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Lambda(payload_fn(marker), name="hook"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(path)
    if os.path.exists(marker):  # building the model ran the function once
        os.remove(marker)
    return str(path)


def edit_config(source, target, edit):
    """Copies a .keras archive, with `edit(config)` applied to its config.json."""
    with zipfile.ZipFile(source) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    config = json.loads(entries["config.json"])
    edit(config)
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return str(target)


def dense_config(config):
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")


# --------------------------------------------------- silent wrong results
def test_resume_is_refused_for_a_replaced_model_and_allowed_for_a_copy(capsys, files, work):
    shutil.copy(files["keras"], "model.keras")
    code, _, err = run(capsys, "scan", "model.keras", "--out", "scan", *SCAN)
    assert code == 0, err
    first = json.load(open("scan/results.json"))
    assert (
        first["identity"]["model_sha256"]
        == hashlib.sha256(open(files["keras"], "rb").read()).hexdigest()
    )
    shutil.copy(files["other"], "model.keras")  # another model at the same path
    refused(capsys, work, "scan", "model.keras", "--out", "scan", *SCAN, match="different model")
    code, _, err = run(capsys, "scan", files["keras"], "--out", "scan", *SCAN)  # same bytes
    assert code == 0, err
    again = json.load(open("scan/results.json"))
    assert again["labels"] == first["labels"]  # resumed: nothing optimised again
    with h5py.File(files["data"]) as f:
        x, y = f["X_test"][()], f["Y_test"][()]
    x[0] = 255 - x[0]  # one image changed, same count
    changed = write_h5(work / "changed.h5", X_test=x, Y_test=y)
    refused(
        capsys,
        work,
        "scan",
        files["keras"],
        "--out",
        "scan",
        *SCAN,
        "--dataset",
        changed,
        match="different data",
    )


def test_empty_data_is_refused(capsys, files, work):
    empty = write_h5(
        work / "empty.h5",
        X_test=np.zeros((0, 28, 28, 1), np.uint8),
        Y_test=np.zeros((0, 10), np.float32),
    )
    refused(capsys, work, "evaluate", files["keras"], "--dataset", empty, match="holds no images")
    refused(capsys, work, "evaluate", files["keras"], "--limit", "0", match="--limit: must be >= 1")
    refused(
        capsys,
        work,
        "scan",
        files["keras"],
        "--dataset",
        empty,
        "--out",
        "o",
        match="holds no images",
    )
    assert not os.path.exists("o")


def test_json_output_is_strict_json(capsys, files, work):
    assert json.loads(to_json({"a": float("nan"), "b": [np.float32("inf"), 1.5]})) == {
        "a": None,
        "b": [None, 1.5],
    }
    code, out, _ = run(capsys, "evaluate", files["keras"], "--dataset", files["data"], "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 0.5
    _, out = refused(
        capsys,
        work,
        "evaluate",
        files["keras"],
        "--dataset",
        "missing.h5",
        "--json",
        match="not found",
    )
    assert "not found" in json.loads(out)["error"]


def test_all_zero_one_hot_rows_are_refused(capsys, files, work):
    with h5py.File(files["data"]) as f:
        x, y = f["X_test"][()], f["Y_test"][()]
    y[5] = 0
    data = write_h5(work / "zero.h5", X_test=x, Y_test=y)
    refused(
        capsys,
        work,
        "evaluate",
        files["keras"],
        "--dataset",
        data,
        match="1 one-hot row(s) have no positive entry (the first is row 5)",
    )


def test_wrong_intensity_warns_in_evaluate_and_stops_mitigate(capsys, files, work):
    with pytest.warns(UserWarning, match=r"clean accuracy .* is only .*--intensity"):
        code, _, _ = run(
            capsys, "evaluate", files["keras"], "--dataset", files["data"], "--intensity", "mnist"
        )
    assert code == 0
    refused(
        capsys,
        work,
        "mitigate",
        files["keras"],
        "--method",
        "fine-prune",
        "--intensity",
        "mnist",
        "--train-limit",
        "800",
        "--limit",
        "200",
        "--out",
        "fixed",
        match="--accept-low-accuracy",
    )
    assert not os.path.exists("fixed")


# ------------------------------------------------------ the loading gate
def test_polyglot_hdf5_with_a_zip_appended_is_refused(capsys, files, work):
    marker = work / "pwned"
    path = lambda_model(work / "poly.h5", marker)
    with open(path, "ab") as f, open(files["keras"], "rb") as harmless:
        f.write(harmless.read())
    for name in ("poly.h5", "poly.keras"):
        if name != "poly.h5":
            shutil.copy(path, name)
        line, _ = refused(
            capsys, work, "evaluate", name, "--dataset", files["data"], match="polyglot"
        )
        assert "--trust-model" in line
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_lambda_layer_is_refused_and_runs_only_with_trust(capsys, files, work, suffix):
    marker = work / "pwned"
    path = lambda_model(work / f"hook{suffix}", marker)
    line, _ = refused(
        capsys,
        work,
        "evaluate",
        path,
        "--dataset",
        files["data"],
        match="layer 'hook' is a Lambda layer",
    )
    assert "--trust-model" in line and not marker.exists()
    # The payload is real: trusting the file runs it.
    run(capsys, "evaluate", path, "--dataset", files["data"], "--trust-model")
    assert marker.exists()


@pytest.mark.parametrize(
    "node, match",
    [
        (
            {
                "module": "builtins",
                "class_name": "function",
                "config": "exec",
                "registered_name": "exec",
            },
            "'function' node",
        ),
        (
            {"module": "os", "class_name": "system", "config": {}, "registered_name": None},
            "from module 'os', outside Keras",
        ),
        (
            {
                "module": "keras.layers",
                "class_name": "ReLU",
                "config": {},
                "registered_name": "attacker>ReLU",
            },
            "registered custom object 'attacker>ReLU'",
        ),
    ],
)
def test_config_nodes_outside_keras_are_refused(capsys, files, work, node, match):
    def edit(config):
        dense_config(config)["config"]["activation"] = node

    path = edit_config(files["keras"], work / "edited.keras", edit)
    line, _ = refused(capsys, work, "scan", path, "--out", "o", *SCAN, match=match)
    assert "layer 'dense" in line and "--trust-model" in line
    assert not os.path.exists("o")


def test_unknown_layer_class_in_a_legacy_h5_is_refused(capsys, files, work):
    path = str(work / "custom.h5")
    shutil.copy(files["h5"], path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][-1]["class_name"] = "EvilDense"
        f.attrs["model_config"] = json.dumps(config)
    refused(
        capsys,
        work,
        "evaluate",
        path,
        "--dataset",
        files["data"],
        match="'EvilDense', which is not one of Keras's own",
    )


def test_extension_must_match_the_bytes(capsys, files, work):
    shutil.copy(files["keras"], "zip.h5")
    refused(capsys, work, "evaluate", "zip.h5", match="rename it to .keras")
    shutil.copy(files["h5"], "model.txt")
    refused(capsys, work, "evaluate", "model.txt", match="rename it to .h5")


def test_pickled_data_is_never_unpickled(capsys, files, work):
    marker = work / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open("data.npz", "wb") as f:
        np.savez(f, x_test=np.array([Payload()], dtype=object), y_test=np.zeros(1))
    refused(
        capsys,
        work,
        "evaluate",
        files["keras"],
        "--dataset",
        "data.npz",
        match="data.npz: array 'x_test' is a pickled object array",
    )
    assert not marker.exists()


# ------------------------------------------- work lost, errors after work
@pytest.fixture
def read_only(work):
    """A folder nothing can be written to, even by root (chattr +i), or skip."""
    folder = work / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a read-only folder here (chattr +i failed)")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_out_is_refused_before_any_work(capsys, files, work, read_only):
    line, _ = refused(
        capsys, work, "scan", files["keras"], "--out", read_only, *SCAN, match="is not writable"
    )
    refused(
        capsys,
        work,
        "scan",
        files["keras"],
        "--out",
        read_only / "sub",
        *SCAN,
        match="is not writable",
    )


def test_invalid_settings_leave_no_out_folder(capsys, files, work):
    refused(
        capsys,
        work,
        "scan",
        files["keras"],
        "--out",
        "o",
        "--nb-sample",
        "4",
        *SCAN,
        match="nb_sample (4) must be >= batch_size (8)",
    )
    assert not os.path.exists("o")


def test_scan_does_not_suggest_a_force_option_it_lacks(capsys, files, work):
    os.mkdir("full")
    open("full/notes.txt", "w").close()
    line, _ = refused(
        capsys,
        work,
        "scan",
        files["keras"],
        "--out",
        "full",
        *SCAN,
        match="already exists and is not empty",
    )
    assert "--force" not in line


# ---------------------------------------------- messages, not tracebacks
@pytest.mark.parametrize(
    "argv, match",
    [
        (["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (["--lr", "-1"], "--lr: must be > 0, got -1"),
        (["--attack-succ-threshold", "2"], "--attack-succ-threshold: must be in (0, 1], got 2"),
        (["--labels", "0,0"], "--labels: label(s) 0 given more than once"),
        (["--mask-init", "abc"], "expected 'random' or a number in (0, 1), got 'abc'"),
    ],
)
def test_invalid_options_are_refused(capsys, files, work, argv, match):
    refused(capsys, work, "scan", files["keras"], "--out", "o", *argv, match=match)
    assert not os.path.exists("o")


def test_model_with_two_outputs_is_refused(capsys, files, work):
    inputs = keras.Input((28, 28, 1))
    flat = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(10)(flat), keras.layers.Dense(2)(flat)])
    model.save("two.keras")
    refused(
        capsys,
        work,
        "scan",
        "two.keras",
        "--out",
        "o",
        *SCAN,
        match="has 1 input(s) and 2 output(s)",
    )


def test_foreign_results_json_is_not_a_scan_folder(capsys, files, work):
    os.mkdir("foreign")
    with open("foreign/results.json", "w") as f:
        json.dump([1, 2, 3], f)
    refused(
        capsys,
        work,
        "scan",
        files["keras"],
        "--out",
        "foreign",
        *SCAN,
        match="not a scan folder: foreign/results.json",
    )
    refused(capsys, work, "detect", "foreign", match="not a scan folder")
    refused(
        capsys,
        work,
        "mitigate",
        files["keras"],
        "--method",
        "unlearn",
        "--scan",
        "foreign",
        "--out",
        "fixed",
        match="not a scan folder",
    )
    assert not os.path.exists("fixed")


@pytest.mark.parametrize(
    "drop, match",
    [
        ("margin", "trigger 0 (square) has no margin field"),
        ("triggers", "has no 'triggers' list"),
    ],
)
def test_attack_file_fields_are_named(capsys, files, work, drop, match):
    spec = {
        "kind": "square",
        "image_shape": [28, 28, 1],
        "target": 7,
        "size": 4,
        "margin": 1,
        "position": "bottom-right",
        "color": [255.0],
    }
    attack = {"intensity": "raw", "triggers": [spec]}
    if drop == "triggers":
        del attack["triggers"]
    else:
        del spec[drop]
    with open("attack.json", "w") as f:
        json.dump(attack, f)
    refused(capsys, work, "evaluate", files["keras"], "--attack", "attack.json", match=match)


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(
    capsys, files, work, monkeypatch
):
    import nc_tf.metrics

    def broken(*args, **kwargs):
        raise TypeError("boom\nsecond line")

    monkeypatch.setattr(nc_tf.metrics, "evaluate_backdoor", broken)
    line, _ = refused(
        capsys,
        work,
        "evaluate",
        files["keras"],
        "--dataset",
        files["data"],
        match="unexpected TypeError: boom; rerun with --debug",
    )
    assert "second line" not in line
    code, _, err = run(capsys, "evaluate", files["keras"], "--dataset", files["data"], "--debug")
    assert code == 2 and "Traceback" in err and "second line" in err


def test_damaged_model_files_get_a_message(capsys, files, work):
    data = open(files["keras"], "rb").read()
    with open("cut.keras", "wb") as f:
        f.write(data[: len(data) // 2])
    refused(capsys, work, "evaluate", "cut.keras", match="cut.keras")
    buffer = _io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("config.json", "{not json")
    with open("bad.keras", "wb") as f:
        f.write(buffer.getvalue())
    refused(capsys, work, "evaluate", "bad.keras", match="config.json is not valid JSON")


def test_a_changed_configuration_is_a_changed_model(capsys, files, work):
    code, _, err = run(capsys, "scan", files["keras"], "--out", "scan", *SCAN)
    assert code == 0, err

    def edit(config):  # same weights, other preprocessing
        layer = next(v for v in config["config"]["layers"] if v["class_name"] == "Rescaling")
        layer["config"]["scale"] = 1.0

    path = edit_config(files["keras"], work / "rescaled.keras", edit)
    refused(capsys, work, "scan", path, "--out", "scan", *SCAN, match="different model")


def test_mitigate_refuses_a_scan_of_another_model_and_foreign_options(capsys, files, work):
    code, _, err = run(capsys, "scan", files["keras"], "--out", "scan", *SCAN)
    assert code == 0, err
    common = ["--limit", "200", "--train-limit", "800", "--labels", "0"]
    refused(
        capsys,
        work,
        "mitigate",
        files["other"],
        "--method",
        "filter",
        "--scan",
        "scan",
        "--out",
        "fixed",
        *common,
        match="was made from another model",
    )
    refused(
        capsys,
        work,
        "mitigate",
        files["keras"],
        "--method",
        "flip",
        "--fpr",
        "0.1",
        "--out",
        "fixed",
        *common[:4],
        match="--fpr belong(s) to --method filter",
    )
    assert not os.path.exists("fixed")


def test_mitigate_refuses_an_unknown_layer_before_reading_data(capsys, files, work, monkeypatch):
    import nc_tf.datasets

    def unread(*args, **kwargs):
        raise AssertionError("the data was read before the layer was checked")

    monkeypatch.setattr(nc_tf.datasets, "load_data", unread)
    refused(
        capsys,
        work,
        "mitigate",
        files["keras"],
        "--method",
        "fine-prune",
        "--layer",
        "zzz",
        "--out",
        "fixed",
        match="No layer named 'zzz'",
    )
    assert not os.path.exists("fixed")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--epochs", "0"], "--epochs: must be >= 1, got 0"),
        (["--position", "a,b"], "--position takes a name"),
        (["--target", "7", "--target", "7"], "--target 7 given more than once"),
        (["--target", "12"], "Label(s) [12] are out of range"),
        (["--color", "1", "2"], "--color has 2 values but the images have 1 channel(s)"),
    ],
)
def test_inject_refuses_bad_attack_options_before_training(capsys, work, argv, match):
    argv = argv if "--target" in argv else ["--target", "7", *argv]
    refused(
        capsys, work, "inject", *argv, "--limit", "300", "--epochs", "1", "--out", "o", match=match
    )
    assert not os.path.exists("o")
