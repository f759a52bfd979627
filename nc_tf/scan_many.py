"""Scanning many models: one scan folder each, one summary, locally or on a Ray cluster.

`scan_many` runs `nc_tf.scan.scan` on every model file it is given, each into
`OUT/<name>-<short sha256>/` (the folder `nc-tf scan` writes), and keeps
`OUT/summary.json`, `OUT/summary.csv` and `OUT/index.html` up to date as
models finish. The `"local"` engine runs the models one after another in
this process; the `"ray"` engine runs each model as one Ray task (or, with
`split_labels=K`, as K tasks over the model's labels whose results are
merged before the outlier test runs once).

A scan depends only on its settings, the seed and each `(seed, label)`, so
both engines, and any `split_labels`, give the same norms and verdicts.
Rerunning into the same `OUT` keeps the finished models and resumes the
others from their scan folders.
"""

import hashlib
import os
import shutil
import time

from nc_tf import io
from nc_tf.runners import ENGINES, RUNNERS, require_ray, setup_worker
from nc_tf.scan_folder import RESULTS, read_scan_record
from nc_tf.scan_summary import SUMMARY, summary_row, write_summary

MODEL_EXTENSIONS = (".keras", ".h5", ".hdf5")
PARTS = "parts"  # the split tasks' own scan folders, inside the model's folder


def model_files(paths):
    """The model files named by `paths`: files as given, folders expanded, in order.

    A folder stands for the `.keras`, `.h5` and `.hdf5` files directly in
    it, sorted by name.

    Args:
        paths: model files and folders of model files.

    Returns:
        the list of file paths, each once.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no model.

    Example:

    >>> model_files(["runs/zoo"])  # doctest: +SKIP
    ['runs/zoo/a.keras', 'runs/zoo/b.h5']
    """
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(MODEL_EXTENSIONS)
                and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                raise FileNotFoundError(
                    f"{path} holds no model file ({', '.join(MODEL_EXTENSIONS)}); "
                    "pass model files or a folder of them."
                )
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist; pass model files or folders of them.")
    return list(dict.fromkeys(files))


def file_sha256(path):
    """The sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan_dir_name(path, sha256):
    """The folder name of a model's scan: `model-<first 16 hex of its sha256>`.

    Made from the file's digest only, never from its name, so no name a
    model file was given reaches a path or a link of the index page; two
    files with the same bytes share one scan.
    """
    return f"model-{sha256[:16]}"


def check_engine(engine, split_labels=1, cpus_per_task=1, gpus_per_task=0, max_retries=3):
    """Validates the engine settings before any work (see `scan_many`)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}.")
    for name, value, low in (
        ("split_labels", split_labels, 1),
        ("cpus_per_task", cpus_per_task, 0),
        ("gpus_per_task", gpus_per_task, 0),
        ("max_retries", max_retries, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise ValueError(f"{name} must be a number >= {low}, got {value!r}.")
    if split_labels > 1 and engine != "ray":
        raise ValueError(
            "split_labels (--split-labels) spreads one model over Ray tasks; "
            "add --engine ray or drop it."
        )
    if engine == "ray":
        require_ray()


def scan_task(path, x, y, scan_dir, part=None, trust_model=False, after_scan=None, **scan_kwargs):
    """Scans one model file into `scan_dir` (or one part of its labels); never raises.

    Args:
        path: the model file.
        x: the scan images.
        y: their labels.
        scan_dir: the model's scan folder.
        part: `(k, K)` to scan part `k` of `K` of the labels (`part_labels`)
            into `scan_dir/parts/<k>`. Defaults to `None` (all labels).
        trust_model: see `nc_tf.safe_loading.load_model`. Defaults to `False`.
        after_scan: called as `after_scan(scan_dir, model, x, y, path)` when a
            whole-model scan ends (e.g. to write its report). Defaults to
            `None`.
        **scan_kwargs: arguments of `nc_tf.scan.scan`.

    Returns:
        `{"status": "ok", "wall_s", "record"}` or `{"status": "failed",
        "wall_s", "error"}` (the one-line message).
    """
    start = time.time()
    try:
        setup_worker()
        from nc_tf.models import load_model
        from nc_tf.scan import scan

        model = load_model(path, trust_model=trust_model)
        out, labels = scan_dir, scan_kwargs.pop("labels", None)
        if part is not None:
            labels = part_labels(model, part, labels, **scan_kwargs)
            if not labels:
                return {"status": "ok", "wall_s": round(time.time() - start, 2), "record": None}
            out = os.path.join(scan_dir, PARTS, str(part[0]))
        record = scan(model, x, y, labels=labels, out_dir=out, model_path=path, **scan_kwargs)
        record.pop("triggers", None)
        if after_scan is not None and part is None:
            after_scan(scan_dir, model, x, y, path)
        return {"status": "ok", "wall_s": round(time.time() - start, 2), "record": record}
    except Exception as error:  # recorded with the model; the other models go on
        return _failure(start, error)


def _failure(start, error):
    """The `"failed"` result of a task begun at `start`, with the error's one line."""
    from nc_tf.cli_output import error_text

    return {"status": "failed", "wall_s": round(time.time() - start, 2), "error": error_text(error)}


def part_labels(model, part, labels=None, slots=None, preset="fast", **scan_kwargs):
    """The labels of part `k` of `K` of a model's scan: every K-th group of `job_groups`.

    Whole groups keep each label beside the labels it shares the graph with
    in a single scan, so the parts together give the single scan's results.
    """
    from nc_tf.scan import default_slots, job_groups, scan_settings

    settings = scan_settings(preset, **_overrides(scan_kwargs))
    restarts, slots = settings["restarts"], slots or default_slots(settings)
    labels = range(int(model.output_shape[-1])) if labels is None else labels
    k, parts = part
    return [label for group in job_groups(labels, slots, restarts)[k::parts] for label in group]


def merge_parts(scan_dir, parts):
    """Joins the `parts` label scans of `scan_dir/parts/` into `scan_dir` and judges them once.

    Every file of each part is moved into `scan_dir`; `results.json` gets
    the union of the labels, the summed wall time and the outlier test of
    all labels (`nc_tf.detect.detect`); the parts' folders are removed.

    Returns:
        the merged results dict.
    """
    from nc_tf.detect import detect

    part_dirs = [os.path.join(scan_dir, PARTS, str(k)) for k in range(parts)]
    part_dirs = [d for d in part_dirs if os.path.exists(os.path.join(d, RESULTS))]
    records = [read_scan_record(d) for d in part_dirs]  # a part without labels has none
    merged = dict(records[0], labels={}, wall_time_s=0.0, split_labels=parts)
    for part_dir, record in zip(part_dirs, records):
        merged["labels"].update(record["labels"])
        merged["wall_time_s"] = round(merged["wall_time_s"] + record.get("wall_time_s", 0.0), 2)
        for root, _, names in os.walk(part_dir):
            for name in names:
                if root == part_dir and name == RESULTS:
                    continue
                target = os.path.join(scan_dir, os.path.relpath(os.path.join(root, name), part_dir))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(os.path.join(root, name), target)
    merged["labels"] = dict(sorted(merged["labels"].items(), key=lambda item: int(item[0])))
    merged["outlier"] = detect(merged, verbose=False) if len(merged["labels"]) >= 3 else None
    io.write_json(os.path.join(scan_dir, RESULTS), merged)
    shutil.rmtree(os.path.join(scan_dir, PARTS))
    return merged


def merge_task(path, x, y, scan_dir, parts, trust_model=False, after_scan=None):
    """Merges a split model's parts (`merge_parts`), then runs `after_scan`; never raises."""
    start = time.time()
    try:
        record = merge_parts(scan_dir, parts)
        if after_scan is not None:
            setup_worker()
            from nc_tf.models import load_model

            after_scan(scan_dir, load_model(path, trust_model=trust_model), x, y, path)
        return {"status": "ok", "wall_s": round(time.time() - start, 2), "record": record}
    except Exception as error:
        return _failure(start, error)


# ------------------------------------------------------------------------------ the driver
def scan_many(
    models,
    x,
    y,
    out_dir,
    engine="local",
    split_labels=1,
    ray_address=None,
    cpus_per_task=1,
    gpus_per_task=0,
    max_retries=3,
    trust_model=False,
    after_scan=None,
    progress=True,
    **scan_kwargs,
):
    """Scans every model file into its own folder of `out_dir` and summarises the verdicts.

    Args:
        models: model files and folders of them (`model_files`).
        x: clean raw scan images `(N, H, W, C)` (e.g. the test set).
        y: their labels.
        out_dir: the output folder. Each model's scan goes to
            `out_dir/<name>-<short sha256>/`, the folder `nc-tf scan`
            writes; `summary.json` (`{"models": [...]}` with `model`,
            `sha256`, `status`, `flagged`, `anomaly_index`,
            `clean_accuracy`, `wall_s`, `scan_dir`, and `error` or `report`
            when there is one), `summary.csv` and `index.html` are rewritten
            as models finish. Rerunning keeps finished models and resumes the
            others.
        engine: `"local"` (one after another in this process) or `"ray"`
            (one Ray task per model). Defaults to `"local"`.
        split_labels: with Ray, run each model's labels as this many tasks
            writing into its folder; the outlier test runs once after them.
            Defaults to `1`.
        ray_address: the Ray cluster to join; `None` joins the one this
            process joined or starts a local one. Defaults to `None`.
        cpus_per_task: CPUs each Ray task asks for. Defaults to `1`.
        gpus_per_task: GPUs each Ray task asks for (fractions allowed).
            Defaults to `0`.
        max_retries: retries of a Ray task whose worker died. Defaults to `3`.
        trust_model: see `nc_tf.safe_loading.load_model`. Defaults to `False`.
        after_scan: called as `after_scan(scan_dir, model, x, y, path)` when
            a model's scan ends, in the process that ran it (the command
            line writes the report with it). Defaults to `None`.
        progress: show a progress bar of models done, running and failed.
            Defaults to `True`.
        **scan_kwargs: arguments of `nc_tf.scan.scan` (`preset`, `seed`,
            `intensity`, `prefix`, settings under their reference names ...).

    Returns:
        the summary dict (as in `summary.json`).

    Example:

    >>> summary = scan_many(["runs/zoo"], x_test, y_test, "runs/zoo_scans")  # doctest: +SKIP
    >>> [(m["model"], m["flagged"]) for m in summary["models"]]  # doctest: +SKIP
    [('runs/zoo/a.keras', [7]), ('runs/zoo/b.keras', [])]
    """
    check_engine(engine, split_labels, cpus_per_task, gpus_per_task, max_retries)
    if split_labels > 1 and (
        scan_kwargs.get("low_cost") or scan_kwargs.get("suspected") is not None
    ):
        raise ValueError(
            "--split-labels splits the labels in the single scan's order; drop --low-cost "
            "and --suspected, or --split-labels."
        )
    files = model_files(models)
    from nc_tf.scan import scan_settings

    scan_settings(scan_kwargs.get("preset", "fast"), **_overrides(scan_kwargs))
    summary_path = os.path.join(out_dir, SUMMARY)
    resume = os.path.exists(summary_path)
    io.prepare_out_dir(out_dir, resume=resume, hint="rerun into the folder of an earlier scan-many")
    previous = {}
    if resume:
        for row in io.read_json(summary_path, "scan-many summary").get("models", []):
            previous[row.get("scan_dir")] = row
    scan_kwargs = dict(scan_kwargs, verbose=False, progress=progress and engine == "local")
    rows, tasks, parts = [], [], {}
    for path in files:
        sha256 = file_sha256(path)
        scan_dir = os.path.join(out_dir, scan_dir_name(path, sha256))
        if scan_dir in (row["scan_dir"] for row in rows):
            continue  # the same file twice
        record = finished_record(scan_dir, scan_kwargs)
        if record is not None:  # also a split scan merged before the driver recorded it
            wall_s = (previous.get(scan_dir) or {}).get("wall_s")
            result = {"status": "ok", "wall_s": wall_s, "record": record}
            rows.append(summary_row(path, sha256, scan_dir, result))
            continue
        index = len(rows)
        rows.append(summary_row(path, sha256, scan_dir, {"status": "pending"}))
        common = dict(path=path, scan_dir=scan_dir, trust_model=trust_model, after_scan=after_scan)
        if split_labels > 1:
            parts[index] = []
            for k in range(int(split_labels)):
                kwargs = dict(common, part=(k, int(split_labels)), **scan_kwargs)
                tasks.append(((index, k), scan_task, kwargs))
        else:
            tasks.append(((index, None), scan_task, dict(common, **scan_kwargs)))
    write_summary(out_dir, rows)
    bar = _progress(rows, progress, engine)

    def on_result(key, result):
        index, k = key
        row = rows[index]
        if k is not None and k != "merge":
            parts[index].append(result)
            if len(parts[index]) < split_labels:
                return []
            failed = [r for r in parts[index] if r["status"] != "ok"]
            if not failed:
                merge = dict(path=row["model"], scan_dir=row["scan_dir"], parts=int(split_labels))
                merge.update(trust_model=trust_model, after_scan=after_scan)
                return [((index, "merge"), merge_task, merge)]
            result = dict(failed[0], wall_s=None)
        if k == "merge" and result.get("wall_s") is not None:
            result = dict(
                result,
                wall_s=round(result["wall_s"] + max(r["wall_s"] or 0 for r in parts[index]), 2),
            )
        rows[index] = summary_row(row["model"], row["sha256"], row["scan_dir"], result)
        write_summary(out_dir, rows)
        _advance(bar, rows, engine)
        return []

    try:
        options = dict(
            address=ray_address,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
            max_retries=max_retries,
        )
        RUNNERS[engine](tasks, on_result, x, y, **options)
    finally:
        if bar is not None:
            bar.close()
    return {"models": rows}


def finished_record(scan_dir, scan_kwargs):
    """The results of a finished scan in `scan_dir` with these settings, or `None`.

    Finished: judged (an outlier test ran), every wanted label done (the
    `labels` of `scan_kwargs`, else all), and the same settings, preset,
    seed and intensity.
    """
    from nc_tf.scan import scan_settings

    try:
        record = read_scan_record(scan_dir)
    except (OSError, ValueError):
        return None
    settings = record.get("settings") or {}
    wanted = scan_settings(scan_kwargs.get("preset", "fast"), **_overrides(scan_kwargs))
    wanted.update(
        preset=scan_kwargs.get("preset", "fast"),
        seed=scan_kwargs.get("seed", 0),
        intensity=scan_kwargs.get("intensity", "raw"),
    )
    labels = scan_kwargs.get("labels")
    labels = range(int(settings.get("num_classes", 0))) if labels is None else labels
    if (
        record.get("outlier") is None
        or any(settings.get(k) != v for k, v in wanted.items())
        or any(str(label) not in record["labels"] for label in labels)
    ):
        return None
    return record


def _overrides(scan_kwargs):
    """The scan settings among `scan_kwargs` (what `scan_settings` checks)."""
    from nc_tf.scan import PRESETS

    return {k: v for k, v in scan_kwargs.items() if k in PRESETS["fast"]}


def _progress(rows, progress, engine):
    """A bar over the models (the finished ones counted), or `None`."""
    if not progress or not rows:
        return None
    from tqdm import tqdm

    bar = tqdm(total=len(rows), unit="model", desc="scan-many", dynamic_ncols=True)
    _advance(bar, rows, engine)
    return bar


def _advance(bar, rows, engine):
    """Moves the bar to the models finished and shows done / running / failed.

    With Ray, "running" counts the models whose tasks were submitted (some
    may wait for a free worker); the local engine runs one at a time.
    """
    if bar is None:
        return
    counts = {s: sum(row["status"] == s for row in rows) for s in ("ok", "pending", "failed")}
    running = min(1, counts["pending"]) if engine == "local" else counts["pending"]
    bar.n = counts["ok"] + counts["failed"]
    bar.set_postfix(done=counts["ok"], running=running, failed=counts["failed"])
