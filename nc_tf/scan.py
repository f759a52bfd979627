"""Neural Cleanse scan: reverse-engineer every label, then the MAD outlier test.

`scan` runs `nc_tf.engine.ReverseEngine` over all labels (the suspected one
first) and, given `out_dir`, writes a scan folder a person can look at and
any later step can read:

    out_dir/results.json                       settings, per-label results, verdict
    out_dir/<prefix>_visualize_mask_label_N.png     mask x 255 (reference names)
    out_dir/<prefix>_visualize_pattern_label_N.png  pattern
    out_dir/<prefix>_visualize_fusion_label_N.png   pattern x mask
    out_dir/reversed/label_N.npz               exact float mask and pattern

Each finished label is written at once (atomically); rerunning the same scan
on the same folder skips the labels already there, so an interrupt loses at
most the labels in flight.
"""

import os
import time

import numpy as np

from nc_tf import io
from nc_tf.datasets import check_images
from nc_tf.engine import ReverseEngine
from nc_tf.metrics import attack_success_rate, predict_labels
from nc_tf.models import check_model_data
from nc_tf.outlier import outlier_detection
from nc_tf.preprocess import check_intensity

# Parameters under their reference names; `nb_sample` = images per step
# (mini_batch = nb_sample // batch_size).
PRESETS = {
    # The published GTSRB configuration (gtsrb_visualize_example.py).
    "reference": dict(
        steps=1000, batch_size=32, nb_sample=1000, lr=0.1, init_cost=1e-3,
        regularization="l1", attack_succ_threshold=0.99, patience=5, cost_multiplier=2.0,
        early_stop_threshold=1.0, early_stop_patience=25, upsample_size=1,
    ),
    # Fewer images per step and shorter patience: same verdicts, a fraction of the time.
    "fast": dict(
        steps=300, batch_size=32, nb_sample=128, lr=0.1, init_cost=1e-3,
        regularization="l1", attack_succ_threshold=0.99, patience=5, cost_multiplier=2.0,
        early_stop_threshold=1.0, early_stop_patience=10, upsample_size=1,
    ),
}
RESULTS = "results.json"


def scan_settings(preset="fast", **overrides):
    """The optimisation settings of a preset with `overrides` applied (None ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    settings = dict(PRESETS[preset])
    for key, value in overrides.items():
        if key not in settings:
            raise ValueError(f"Unknown scan setting {key!r}; known: {sorted(settings)}.")
        if value is not None:
            settings[key] = value
    if settings["nb_sample"] < settings["batch_size"]:
        raise ValueError(f"nb_sample ({settings['nb_sample']}) must be >= batch_size "
                         f"({settings['batch_size']}).")
    return settings


def scan(model, x, y=None, labels=None, suspected=None, out_dir=None, preset="fast",
         intensity="raw", seed=0, slots=8, prefix="nc", progress=True, verbose=True,
         model_path=None, **overrides):
    """Reverse-engineers a trigger for every label and tests for outliers.

    Args:
        model: the Keras classifier under test.
        x: clean raw images `(N, H, W, C)` in [0, 255] (e.g. the test set).
        y: their labels, used to exclude true-target samples from the
            reversed triggers' attack success. Defaults to `None` (the
            model's own clean predictions stand in).
        labels: labels to scan. Defaults to `None` (all).
        suspected: a label to scan first. Defaults to `None`.
        out_dir: scan folder to write (and resume). Defaults to `None`
            (nothing written).
        preset: `"fast"` or `"reference"` (the published GTSRB
            configuration). Defaults to `"fast"`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: random seed; each label depends only on `(seed, label)`.
            Defaults to `0`.
        slots: labels optimised together in one graph. Defaults to `8`.
        prefix: PNG file name prefix (the reference used the data set name).
            Defaults to `"nc"`.
        progress: show a progress bar. Defaults to `True`.
        verbose: print the MAD report. Defaults to `True`.
        model_path: recorded in `results.json`. Defaults to `None`.
        **overrides: any preset setting under its reference name (`steps`,
            `batch_size`, `nb_sample`, `lr`, `init_cost`, `regularization`,
            `attack_succ_threshold`, `patience`, `cost_multiplier`,
            `early_stop_threshold`, `early_stop_patience`, `upsample_size`).

    Returns:
        the results dict (as in `results.json`): `settings`, `labels`
        (label -> `l1_norm`, `attack_success_rate`, `steps`, `seconds`,
        `found`), `outlier` (the MAD verdict) and, in memory only, `triggers`
        (label -> `(mask, pattern)`).

    Example:

    >>> results = scan(model, x_test, y_test, out_dir="runs/scan")  # doctest: +SKIP
    >>> results["outlier"]["flagged"]  # doctest: +SKIP
    [[7, 9.5]]
    """
    settings = scan_settings(preset, **overrides)
    check_intensity(intensity)
    x = check_images(x, "scan data")
    num_classes = check_model_data(model, x, y, name="scan data")
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise ValueError(f"{len(x)} images but {len(y)} labels.")
        if len(np.unique(y)) < 2:
            raise ValueError("The scan data holds a single class; use clean samples of many "
                             "classes (e.g. the test set).")
    if len(x) < settings["batch_size"]:
        raise ValueError(f"Only {len(x)} images; a scan needs at least batch_size "
                         f"({settings['batch_size']}).")
    labels = list(range(num_classes)) if labels is None else [int(v) for v in labels]
    for label in labels + ([suspected] if suspected is not None else []):
        if not 0 <= label < num_classes:
            raise ValueError(f"Label {label} is out of range: the model has labels "
                             f"0..{num_classes - 1}.")
    if suspected is not None:
        labels = [int(suspected)] + [v for v in labels if v != suspected]

    record = {
        "settings": dict(settings, preset=preset, intensity=intensity, seed=seed,
                         n_samples=int(len(x)), image_shape=list(x.shape[1:]),
                         num_classes=num_classes, model=model_path, prefix=prefix),
        "labels": {},
    }
    triggers = {}
    if out_dir is not None:
        record, triggers = _open_scan_dir(out_dir, record)
    todo = [v for v in labels if str(v) not in record["labels"]]
    y_ref = y if y is not None else predict_labels(model, x, intensity)

    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(labels), initial=len(labels) - len(todo), unit="label",
                   desc="scan", dynamic_ncols=True)

    def on_done(label, result):
        stamped = (1 - result["mask"][..., None]) * x + result["mask"][..., None] * result["pattern"]
        asr = attack_success_rate(predict_labels(model, stamped, intensity), y_ref, label)
        entry = {
            "l1_norm": result["l1_norm"], "attack_success_rate": asr, "found": result["found"],
            "steps": result["steps"], "seconds": round(result["seconds"], 2),
        }
        triggers[label] = (result["mask"], result["pattern"])
        record["labels"][str(label)] = entry
        if out_dir is not None:
            save_trigger_pngs(out_dir, prefix, label, result["pattern"], result["mask"])
            _save_reversed(out_dir, label, result["mask"], result["pattern"])
            io.write_json(os.path.join(out_dir, RESULTS), record)
        if bar is not None:
            bar.set_postfix(label=label, l1=f"{result['l1_norm']:.1f}")
            bar.update(1)

    if todo:
        mini_batch = settings["nb_sample"] // settings["batch_size"]
        engine = ReverseEngine(
            model, x, intensity=intensity, regularization=settings["regularization"],
            init_cost=settings["init_cost"], steps=settings["steps"], mini_batch=mini_batch,
            batch_size=settings["batch_size"], lr=settings["lr"],
            upsample_size=settings["upsample_size"],
            attack_succ_threshold=settings["attack_succ_threshold"],
            patience=settings["patience"], cost_multiplier=settings["cost_multiplier"],
            early_stop_threshold=settings["early_stop_threshold"],
            early_stop_patience=settings["early_stop_patience"],
            slots=min(slots, len(todo)), seed=seed,
        )
        start = time.time()
        try:
            engine.run(todo, on_done=on_done)
        finally:
            if bar is not None:
                bar.close()
        record["wall_time_s"] = round(record.get("wall_time_s", 0.0) + time.time() - start, 2)

    record["outlier"] = detect(record, verbose=verbose) if len(record["labels"]) >= 3 else None
    if out_dir is not None:
        io.write_json(os.path.join(out_dir, RESULTS), record)
    record["triggers"] = triggers
    return record


def detect(record, verbose=True):
    """The MAD verdict of a scan record (`results.json` dict)."""
    items = sorted(record["labels"].items(), key=lambda kv: int(kv[0]))
    result = outlier_detection([v["l1_norm"] for _, v in items], [int(k) for k, _ in items],
                               verbose=verbose)
    result["flagged"] = [[label, norm] for label, norm in result["flagged"]]
    result["per_label"] = {str(k): v for k, v in result["per_label"].items()}
    return result


def detect_dir(scan_dir, verbose=True):
    """The MAD verdict of a scan folder: from `results.json`, else from the mask PNGs.

    Args:
        scan_dir: a folder written by `scan` (or the reference code's mask
            PNGs `*_mask_label_N.png`).
        verbose: print the reference report. Defaults to `True`.

    Returns:
        the outlier dict of `nc_tf.outlier.outlier_detection`.
    """
    path = os.path.join(scan_dir, RESULTS)
    if os.path.exists(path):
        return detect(io.read_json(path, "scan results"), verbose)
    if not os.path.isdir(scan_dir):
        raise FileNotFoundError(f"No such scan folder: {scan_dir}")
    import re

    from PIL import Image

    norms = {}
    for name in os.listdir(scan_dir):
        match = re.search(r"mask_label_(\d+)\.png$", name)
        if match:
            with Image.open(os.path.join(scan_dir, name)) as im:
                norms[int(match.group(1))] = float(np.sum(np.asarray(im.convert("L"))) / 255.0)
    if not norms:
        raise FileNotFoundError(f"{scan_dir} has neither {RESULTS} nor *_mask_label_N.png files; "
                                "run `nc-tf scan` first.")
    return detect({"labels": {str(k): {"l1_norm": v} for k, v in norms.items()}}, verbose)


def load_reversed(scan_dir, label):
    """The exact reversed `(mask (H, W), pattern (H, W, C))` of a label in a scan folder."""
    path = os.path.join(scan_dir, "reversed", f"label_{int(label)}.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No reversed trigger for label {label} in {scan_dir}.")
    with np.load(path, allow_pickle=False) as z:
        return z["mask"], z["pattern"]


def save_trigger_pngs(out_dir, prefix, label, pattern, mask):
    """Writes the reference `mask`, `pattern` and `fusion` PNGs of one label."""
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    mask3 = np.asarray(mask)[..., None]
    images = {
        "mask": mask3 * 255.0,
        "pattern": np.asarray(pattern),
        "fusion": np.asarray(pattern) * mask3,
    }
    for kind, img in images.items():
        arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr
        path = os.path.join(out_dir, f"{prefix}_visualize_{kind}_label_{int(label)}.png")
        tmp = path + ".tmp.png"
        Image.fromarray(arr).save(tmp)
        os.replace(tmp, path)


def _save_reversed(out_dir, label, mask, pattern):
    folder = os.path.join(out_dir, "reversed")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"label_{int(label)}.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, mask=np.asarray(mask, np.float32), pattern=np.asarray(pattern, np.float32))
    os.replace(tmp, path)


def _open_scan_dir(out_dir, record):
    """Creates the scan folder, or resumes it if it holds a scan with the same settings."""
    path = os.path.join(out_dir, RESULTS)
    if not os.path.exists(path):
        io.prepare_out_dir(out_dir)
        return record, {}
    previous = io.read_json(path, "scan results")
    old = dict(previous.get("settings", {}))
    new = dict(record["settings"])
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise FileExistsError(
            f"{out_dir} holds a scan with different settings ({', '.join(changed)}); "
            "choose another --out to keep both, or rerun with the same settings to resume."
        )
    triggers = {}
    for label in previous.get("labels", {}):
        try:
            triggers[int(label)] = load_reversed(out_dir, label)
        except FileNotFoundError:
            pass
    previous["labels"] = {k: v for k, v in previous.get("labels", {}).items() if int(k) in triggers}
    return previous, triggers
