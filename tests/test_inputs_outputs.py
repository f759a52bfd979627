"""One way to read an input and one way to write an output (`nc_tf.io`).

Writers create their temporary file exclusively under a random name, so a
link planted in an output folder is never written through; readers take
regular files only, inside the folder they were given, within a byte
budget read from headers. Every case here runs in well under a second:
nothing is trained.
"""

import csv
import json
import os
import threading
import zipfile

import h5py
import numpy as np
import pytest
from PIL import Image

from nc_tf import io
from nc_tf.datasets import load_data
from nc_tf.identity import check_identity
from nc_tf.scan_folder import ScanFolder, load_reversed, save_arrays, save_png
from nc_tf.scan_many import scan_dir_name
from nc_tf.scan_summary import summary_row, write_summary

# The fixed temporary names writers once used, planted as links to a file outside.
OLD_TEMPORARY_NAMES = (
    "results.json.tmp",
    "mask.tmp.png",
    "label_0.tmp.npz",
    "model.partial.keras",
    "summary.csv.tmp",
    "index.html.tmp",
)


def _snapshot(folder):
    return {
        os.path.relpath(os.path.join(root, name), folder): os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(folder)
        for name in names
        if not os.path.islink(os.path.join(root, name))
    }


@pytest.fixture
def outside(tmp_path):
    """A file outside the output folder that no writer may touch."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file")
    return victim


def test_writers_never_follow_a_planted_link(tmp_path, outside):
    out = tmp_path / "out"
    out.mkdir()
    for name in OLD_TEMPORARY_NAMES:
        os.symlink(outside, out / name)
    os.symlink(outside, out / "notes.json")  # a link at the destination itself
    io.write_json(out / "results.json", {"labels": {}})
    io.write_json(out / "notes.json", {"a": 1})
    save_png(str(out / "mask.png"), np.zeros((4, 4, 1)))
    save_arrays(str(out / "label_0.npz"), mask=np.zeros((4, 4)))
    write_summary(str(out), [])
    assert outside.read_text() == "the user's own file"
    assert json.loads((out / "notes.json").read_text()) == {"a": 1}
    assert not os.path.islink(out / "notes.json")  # the link was replaced, not followed
    left = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert left == []  # no temporary file stays behind
    assert oct((out / "results.json").stat().st_mode & 0o777) != oct(0o600)


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    io.write_json(path, {"kept": True})
    with pytest.raises(RuntimeError):
        with io.atomic_file(path) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_only_regular_files_are_read(tmp_path, kind):
    path = tmp_path / "input.h5"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path = "/dev/zero"
    name = {"fifo": "named pipe", "folder": "a folder", "device": "character device"}[kind]
    with pytest.raises(ValueError, match=name):
        io.check_input_file(path, "data file")
    if kind != "folder":  # a folder is a data set of class folders
        with pytest.raises(ValueError, match=name):  # refused before it is opened
            load_data(str(path))


def test_a_fifo_model_file_is_named_as_such(tmp_path):
    from nc_tf.models import load_model

    os.mkfifo(tmp_path / "model.keras")
    with pytest.raises(ValueError, match="named pipe"):
        load_model(str(tmp_path / "model.keras"))


def test_a_link_out_of_the_folder_is_refused(tmp_path, outside):
    folder = tmp_path / "scan"
    folder.mkdir()
    os.symlink(outside, folder / "label_0.npz")
    with pytest.raises(ValueError, match="leads out of"):
        io.check_input_file(folder / "label_0.npz", "reversed trigger", folder)
    inside = folder / "real.txt"
    inside.write_text("x")
    os.symlink(inside, folder / "alias.txt")
    assert io.check_input_file(folder / "alias.txt", root=folder)  # a link inside is fine


def test_hdf5_data_kept_in_other_files_is_refused(tmp_path, outside):
    external = tmp_path / "external.h5"
    with h5py.File(external, "w") as f:
        f.create_dataset(
            "X_test",
            (len(outside.read_bytes()),),
            "u1",
            external=[(str(outside), 0, h5py.h5f.UNLIMITED)],
        )
        f["Y_test"] = np.zeros(1)
    with pytest.raises(ValueError, match="external storage or virtual"):
        load_data(str(external))
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["x"] = np.zeros((4, 28, 28, 1), np.uint8)
    layout = h5py.VirtualLayout(shape=(4, 28, 28, 1), dtype="u1")
    layout[:] = h5py.VirtualSource(str(source), "x", shape=(4, 28, 28, 1))
    virtual = tmp_path / "virtual.h5"
    with h5py.File(virtual, "w") as f:
        f.create_virtual_dataset("X_test", layout)
        f["Y_test"] = np.zeros(4)
    with pytest.raises(ValueError, match="external storage or virtual"):
        load_data(str(virtual))


def test_arrays_larger_than_the_file_allows_are_refused_before_reading(tmp_path):
    bomb = tmp_path / "bomb.h5"
    with h5py.File(bomb, "w") as f:  # 8 GB of zeros, never written: a few KB on disk
        f.create_dataset("X_test", (100_000, 100, 100, 8), "u1", chunks=(1, 100, 100, 8))
        f["Y_test"] = np.zeros(100_000)
    with pytest.raises(ValueError, match="decompression bomb"):
        load_data(str(bomb))
    npz = tmp_path / "bomb.npz"
    with zipfile.ZipFile(npz, "w") as z:  # headers that declare 2 GB, and 1 KB of data
        for key in ("x_test", "y_test"):
            with z.open(f"{key}.npy", "w") as member:
                header = {"descr": "|u1", "fortran_order": False, "shape": (2_000_000_000,)}
                np.lib.format.write_array_header_1_0(member, header)
                member.write(bytes(1024))
    with pytest.raises(ValueError, match="decompression bomb"):
        load_data(str(npz))
    folder = tmp_path / "scan"
    (folder / "reversed").mkdir(parents=True)
    os.replace(npz, folder / "reversed" / "label_0.npz")
    with pytest.raises(ValueError, match="decompression bomb"):
        load_reversed(str(folder), 0)


def test_folder_data_sets_stay_in_their_folder(tmp_path, outside):
    classes = tmp_path / "classes"
    (classes / "a").mkdir(parents=True)
    (classes / "b").mkdir()
    Image.new("L", (8, 8)).save(classes / "a" / "one.png")
    os.mkfifo(classes / "b" / "two.png")
    with pytest.raises(ValueError, match="named pipe"):  # refused, not waited on
        load_data(str(classes))
    os.remove(classes / "b" / "two.png")
    Image.new("1", (20_000, 20_000)).save(classes / "b" / "two.png")  # a small file, huge image
    with pytest.raises(ValueError, match="decompression bomb"):
        load_data(str(classes))
    root = tmp_path / "GTSRB"
    base = root / "Final_Test" / "Images"
    base.mkdir(parents=True)
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter=";")
        writer.writerow(["Filename", "ClassId"])
        writer.writerow([os.path.relpath(outside, base), 0])
    with pytest.raises(ValueError, match="leads out of"):
        load_data(str(root), "test")


@pytest.mark.parametrize("forged", [None, {}, {"weights_sha256": None, "data_sha256": None}])
def test_a_folder_without_a_complete_identity_is_never_resumed(tmp_path, forged):
    current = {"weights_sha256": "a" * 64, "data_sha256": "b" * 64}
    with pytest.raises(FileExistsError, match="complete model and data identity.*--force"):
        check_identity(forged, current, "runs/x")
    partial = dict(current, data_sha256=None)
    with pytest.raises(FileExistsError, match="complete"):
        check_identity(partial, current, "runs/x")
    check_identity(dict(current), current, "runs/x")  # complete and equal: resumed
    folder = tmp_path / "scan"
    folder.mkdir()
    io.write_json(folder / "results.json", {"settings": {}, "labels": {}, "identity": forged})
    record = {"settings": {}, "labels": {}, "identity": current}
    with pytest.raises(FileExistsError, match="complete"):
        ScanFolder.open(str(folder), record)


def test_index_links_never_come_from_a_file_name(tmp_path):
    name = scan_dir_name("javascript:alert(1)<!--.keras", "c" * 64)
    assert name == "model-" + "c" * 16
    scan_dir = tmp_path / name
    scan_dir.mkdir()
    (scan_dir / "results.json").write_text("{}")
    row = summary_row(
        "javascript:alert(1)<!--.keras", "c" * 64, str(scan_dir), {"status": "pending"}
    )
    write_summary(str(tmp_path), [row])
    page = (tmp_path / "index.html").read_text()
    links = [part.split('"')[0] for part in page.split('href="')[1:]]
    assert links and all(link.startswith(("./", "#")) for link in links)


def test_a_reader_never_waits_on_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "results.json")
    done = threading.Event()

    def read():
        with pytest.raises(ValueError, match="named pipe"):
            io.read_json(tmp_path / "results.json")
        done.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    assert done.is_set()


def test_a_second_command_on_the_same_out_is_refused(tmp_path, capsys):
    from nc_tf.cli import main

    out = tmp_path / "scan"
    with io.out_lock(out):
        code = main(["scan", str(tmp_path / "none.keras"), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "Another nc-tf command is writing to" in err
        assert len([line for line in err.splitlines() if ": error: " in line]) == 1
    assert os.listdir(out) == []  # the lock leaves nothing behind
    with io.out_lock(out):  # free again
        pass


def _sequential(layers, units=10):
    import keras

    return keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten()]
        + [keras.layers.Activation("linear") for _ in range(layers)]
        + [keras.layers.Dense(units, activation="softmax")]
    )


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c["config"]["layers"].extend([c["config"]["layers"][-2]] * 300), "layers"),
        (lambda c: c["config"]["layers"][-1]["config"].update(units=650_000), "units or filters"),
        (lambda c: c.update(deep=json.loads("[" * 100 + "]" * 100)), "levels deep"),
    ],
)
def test_model_configurations_beyond_a_classifier_are_refused_before_loading(tmp_path, edit, match):
    import time

    from nc_tf.models import load_model

    path = tmp_path / "model.keras"
    _sequential(1).save(path)
    with zipfile.ZipFile(path) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    config = json.loads(entries["config.json"])
    edit(config)
    entries["config.json"] = json.dumps(config).encode()
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    start = time.time()
    with pytest.raises(ValueError, match=match):
        load_model(str(bad))
    assert time.time() - start < 5


def test_declared_weights_and_assets_count_before_loading(tmp_path):
    from nc_tf.models import load_model

    path = tmp_path / "model.keras"
    _sequential(0).save(path)
    with zipfile.ZipFile(path) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    weights = tmp_path / "w.h5"
    with h5py.File(weights, "w") as f:  # 4 GB declared, nothing stored
        f.create_dataset("layers/dense/vars/0", (1_000_000, 1000), "f4", chunks=(1000, 1000))
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in dict(entries, **{"model.weights.h5": weights.read_bytes()}).items():
            z.writestr(name, data)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(ValueError, match="decompression bomb"):
        load_model(str(bomb))
    assets = tmp_path / "assets.keras"
    with zipfile.ZipFile(assets, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in dict(entries, **{"assets/vocab.txt": bytes(32 * 2**20)}).items():
            z.writestr(name, data)
    with pytest.raises(ValueError, match="assets"):
        load_model(str(assets))


def test_stale_model_copies_of_dead_loaders_are_removed(tmp_path):
    import subprocess

    from nc_tf.safe_loading import COPY_PREFIX, remove_stale_copies

    child = subprocess.Popen(["true"])
    child.wait()  # a pid that no longer runs
    stale = tmp_path / f"{COPY_PREFIX}{child.pid}_abc"
    live = tmp_path / f"{COPY_PREFIX}{os.getpid()}_def"
    other = tmp_path / "someone_elses"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "model.keras").write_bytes(b"x")
    assert remove_stale_copies(str(tmp_path)) == 1
    assert not stale.exists() and live.exists() and other.exists()


def test_a_repair_folder_nc_tf_did_not_write_is_not_resumed(tmp_path):
    from mitigation.mitigate import _out_dir

    out = tmp_path / "unlearn"
    out.mkdir()
    (out / "model.keras").write_bytes(b"the user's own model")
    ident = {"weights_sha256": "a" * 64, "data_sha256": "b" * 64}
    with pytest.raises(FileExistsError, match="--force"):
        with _out_dir(str(out), False, "unlearn", ident):
            pass
    assert (out / "model.keras").read_bytes() == b"the user's own model"
    with _out_dir(str(out), True, "unlearn", ident):  # --force: the user asked for it
        pass


@pytest.mark.parametrize(
    "labels, match",
    [
        ({"0": {"l1_norm": 1e400}, "1": {"l1_norm": 2.0}, "2": {"l1_norm": 3.0}}, "impossible"),
        ({"\u0663": {"l1_norm": 1.0}, "1": {"l1_norm": 2.0}, "2": {"l1_norm": 3.0}}, "not a label"),
    ],
)
def test_forged_numbers_and_keys_are_named(tmp_path, labels, match):
    from nc_tf.detect import detect_dir

    folder = tmp_path / "scan"
    folder.mkdir()
    (folder / "results.json").write_text(
        json.dumps({"settings": {}, "labels": labels}).replace("1e+400", "1e400")
    )
    with pytest.raises(ValueError, match=match):
        detect_dir(str(folder), verbose=False)


def test_a_forged_png_prefix_never_leads_out_of_the_folder(tmp_path):
    from nc_tf.detect import detect_dir

    (tmp_path / "elsewhere").mkdir()
    os.mkfifo(tmp_path / "elsewhere" / "x_visualize_mask_label_0.png")  # would block a reader
    folder = tmp_path / "scan"
    folder.mkdir()
    labels = {str(k): {"l1_norm": 1.0 + k} for k in range(3)}
    settings = {"prefix": "../elsewhere/x"}
    (folder / "results.json").write_text(json.dumps({"settings": settings, "labels": labels}))
    with pytest.raises(ValueError, match="not a plain file-name part"):
        detect_dir(str(folder), verbose=False, norm_source="png")


def test_a_trigger_array_that_declares_more_than_it_holds_is_refused():
    import base64
    from io import BytesIO

    from nc_tf.trigger import decode_array, encode_array

    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(decode_array(encode_array(array)), array)
    buffer = BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**9,)}
    np.lib.format.write_array_header_1_0(buffer, header)
    buffer.write(bytes(64))
    with pytest.raises(ValueError, match="declares shape"):
        decode_array(base64.b64encode(buffer.getvalue()).decode())
