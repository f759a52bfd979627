"""nc-tf scan-many: a zoo of models scanned locally and on a local Ray cluster."""

import json
import os
import shutil

import numpy as np
import pytest

from nc_tf import io
from nc_tf.scan_many import check_engine, model_files, scan_many

# Small but real scans: every label, few steps, two slots (so 10 labels make
# three groups of `job_groups` and --split-labels 2 gets whole groups).
SCAN = dict(steps=40, starts=1, slots=2, seed=0)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny_backdoored, mnist_small):
    """A folder of three models: backdoored (target 7), clean, and a broken file."""
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from recipes import tiny_clean_model

    folder = tmp_path_factory.mktemp("zoo")
    tiny_backdoored[0].save(folder / "backdoored.keras")
    tiny_clean_model(*mnist_small[:2]).save(folder / "clean.keras")
    (folder / "broken.h5").write_bytes(b"this is not a model")
    return str(folder)


@pytest.fixture(scope="module")
def local_run(zoo, tmp_path_factory, mnist_small):
    """`nc-tf scan-many ZOO --json` (the local engine): `(exit status, printed summary, out)`."""
    import contextlib
    import io as text_io

    from nc_tf.cli import main

    out = str(tmp_path_factory.mktemp("many") / "local")
    argv = ["scan-many", zoo, "--out", out, "--json", "--limit", "1000"]
    argv += ["--steps", "40", "--starts", "1", "--slots", "2"]
    printed = text_io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(argv)
    return status, json.loads(printed.getvalue()), out


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance with 2 CPUs for the whole module."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _norms(row):
    record = io.read_json(os.path.join(row["scan_dir"], "results.json"))
    return {key: entry["l1_norm"] for key, entry in record["labels"].items()}


def _by_name(summary):
    return {os.path.basename(row["model"]): row for row in summary["models"]}


def test_model_files_expands_folders_and_refuses_missing(tmp_path):
    for name in ("b.keras", "a.h5", "c.hdf5", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    one = str(tmp_path / "b.keras")
    files = model_files([str(tmp_path), one])
    assert [os.path.basename(f) for f in files] == ["a.h5", "b.keras", "c.hdf5"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_files([str(tmp_path / "missing.keras")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model file"):
        model_files([str(empty)])


def test_engine_settings_are_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="engine must be one of"):
        check_engine("spark")
    with pytest.raises(ValueError, match="add --engine ray"):
        check_engine("local", split_labels=2)
    with pytest.raises(ValueError, match="max_retries"):
        check_engine("local", max_retries=-1)
    x = np.zeros((40, 28, 28, 1), np.uint8)
    with pytest.raises(FileNotFoundError):
        scan_many([str(tmp_path / "none.keras")], x, np.zeros(40), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_local_engine_scans_every_model_and_records_the_broken_one(local_run, zoo):
    status, summary, out = local_run
    rows = _by_name(summary)
    assert status == 1  # a model failed
    assert set(rows) == {"backdoored.keras", "clean.keras", "broken.h5"}
    assert rows["backdoored.keras"]["status"] == "ok"
    assert rows["backdoored.keras"]["flagged"] == [7]
    assert rows["clean.keras"]["status"] == "ok" and rows["clean.keras"]["flagged"] == []
    assert rows["broken.h5"]["status"] == "failed"
    assert "broken.h5" in rows["broken.h5"]["error"]
    for row in (rows["backdoored.keras"], rows["clean.keras"]):
        name = os.path.basename(row["scan_dir"])
        assert name == f"model-{row['sha256'][:16]}"  # from the bytes, never the file name
        assert len(_norms(row)) == 10
        assert row["anomaly_index"] > 0 and 0.5 < row["clean_accuracy"] <= 1
    assert io.read_json(os.path.join(out, "summary.json")) == summary
    with open(os.path.join(out, "summary.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("model,sha256,status,flagged") and len(lines) == 4
    index = open(os.path.join(out, "index.html")).read()
    assert "backdoored.keras" in index and "results.json" in index and "http" not in index


def test_rerun_keeps_finished_models_and_resumes_a_half_finished_one(
    local_run, zoo, mnist_small, tmp_path
):
    from nc_tf.models import load_model
    from nc_tf.scan import scan

    _, first, out = local_run
    copy = str(tmp_path / "again")
    shutil.copytree(out, copy)
    rows = {
        k: dict(v, scan_dir=v["scan_dir"].replace(out, copy)) for k, v in _by_name(first).items()
    }
    io.write_json(os.path.join(copy, "summary.json"), {"models": list(rows.values())})
    # The clean model's scan stopped after labels 0-3: only its folder remains.
    clean_dir = rows["clean.keras"]["scan_dir"]
    shutil.rmtree(clean_dir)
    _, _, xt, yt = mnist_small
    model = load_model(os.path.join(zoo, "clean.keras"))
    common = dict(progress=False, verbose=False, prefix="mnist", **SCAN)
    scan(model, xt, yt, labels=[0, 1, 2, 3], out_dir=clean_dir, **common)
    before = io.read_json(os.path.join(clean_dir, "results.json"))["labels"]
    done = os.path.join(rows["backdoored.keras"]["scan_dir"], "results.json")
    stamp = os.stat(done).st_mtime_ns

    again = scan_many([zoo], xt, yt, copy, progress=False, prefix="mnist", **SCAN)
    again = _by_name(again)
    assert os.stat(done).st_mtime_ns == stamp  # the finished model was not scanned again
    assert again["backdoored.keras"] == rows["backdoored.keras"]
    after = io.read_json(os.path.join(clean_dir, "results.json"))["labels"]
    assert {k: after[k] for k in before} == before  # labels 0-3 kept, not run again
    assert _norms(again["clean.keras"]) == _norms(_by_name(first)["clean.keras"])
    assert again["clean.keras"]["flagged"] == rows["clean.keras"]["flagged"]


def test_ray_engine_gives_the_local_verdicts_and_norms(ray_cluster, local_run, zoo, mnist_small):
    _, local, _ = local_run
    _, _, xt, yt = mnist_small
    out = os.path.join(os.path.dirname(local_run[2]), "ray")
    summary = scan_many([zoo], xt, yt, out, engine="ray", progress=False, prefix="mnist", **SCAN)
    ray_rows, local_rows = _by_name(summary), _by_name(local)
    assert ray_rows["broken.h5"]["status"] == "failed"
    assert ray_rows["broken.h5"]["error"] == local_rows["broken.h5"]["error"]
    for name in ("backdoored.keras", "clean.keras"):
        for key in ("status", "flagged", "anomaly_index", "clean_accuracy", "sha256"):
            assert ray_rows[name][key] == local_rows[name][key], (name, key)
        assert _norms(ray_rows[name]) == _norms(local_rows[name])


def test_split_labels_matches_the_single_scan(ray_cluster, local_run, zoo, mnist_small):
    _, local, _ = local_run
    _, _, xt, yt = mnist_small
    out = os.path.join(os.path.dirname(local_run[2]), "split")
    summary = scan_many(
        [os.path.join(zoo, "backdoored.keras")],
        xt,
        yt,
        out,
        engine="ray",
        split_labels=2,
        progress=False,
        prefix="mnist",
        **SCAN,
    )
    (row,) = summary["models"]
    single = _by_name(local)["backdoored.keras"]
    assert row["status"] == "ok"
    assert row["flagged"] == single["flagged"] == [7]
    assert row["anomaly_index"] == single["anomaly_index"]
    assert _norms(row) == _norms(single)
    record = io.read_json(os.path.join(row["scan_dir"], "results.json"))
    assert record["split_labels"] == 2
    assert not os.path.exists(os.path.join(row["scan_dir"], "parts"))
    names = set(os.listdir(row["scan_dir"]))
    assert {f"mnist_visualize_mask_label_{k}.png" for k in range(10)} <= names


def test_ray_retries_a_task_whose_worker_died(ray_cluster, tmp_path):
    from nc_tf.runners import run_ray

    marker = str(tmp_path / "died-once")

    def dies_once(x, y, marker):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies, as on a lost node
        return {"status": "ok", "sum": int(x.sum())}

    results = {}

    def keep(key, result):
        results[key] = result

    x = np.arange(4)
    run_ray([("a", dies_once, {"marker": marker})], keep, x, None, max_retries=1)
    assert results["a"] == {"status": "ok", "sum": 6}
    run_ray([("b", dies_once, {"marker": marker + "2"})], keep, x, None, max_retries=0)
    assert results["b"]["status"] == "failed" and results["b"]["error"]
