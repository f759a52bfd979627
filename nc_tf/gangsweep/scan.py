"""`gangsweep_scan`: a generator per label, its statistics, the outlier test, a scan folder.

    out_dir/results.json                           method, settings, per-label results, verdict
    out_dir/gangsweep_perturbation_label_N.png     mean G(x) over images, stretched to 0..255
    out_dir/gangsweep_samples_label_N.png          x (top row) above x + G(x) (bottom row)
    out_dir/generators/label_N.weights.h5          the generator's weights (weights only)

Each finished label is written at once (atomically, `nc_tf.scan_folder`);
rerunning the same scan on the same folder skips the labels already there.
"""

import os
import time
import warnings

import numpy as np

from nc_tf import io
from nc_tf.datasets import check_images, labels_to_int
from nc_tf.gangsweep.generator import (
    build_generator,
    check_target,
    generate,
    logits_function,
    stamp,
    to_unit,
)
from nc_tf.gangsweep.statistics import (
    AI_THRESHOLD,
    PERSISTENCE_THRESHOLD,
    check_persistence_threshold,
    check_statistic,
    gangsweep_outliers,
    label_statistics,
)
from nc_tf.gangsweep.training import (
    COLLAPSE_L_PERT,
    MIN_STEPS_PER_EPOCH,
    GeneratorTrainer,
    check_alpha_gate,
    check_min_steps,
    collapsed,
)
from nc_tf.models import check_model_data
from nc_tf.preprocess import check_intensity
from nc_tf.scan import scan_identity
from nc_tf.scan_folder import RESULTS, ScanFolder, read_scan_record, tile

METHOD = "gangsweep"


def gangsweep_scan(
    model,
    x,
    y,
    labels=None,
    out_dir=None,
    epochs=15,
    batch_size=64,
    lr=0.01,
    intensity="raw",
    seed=0,
    force=False,
    progress=True,
    verbose=True,
    max_images=None,
    filters=32,
    residual_blocks=3,
    patience=3,
    k=0.0,
    model_path=None,
    min_steps_per_epoch=MIN_STEPS_PER_EPOCH,
    statistic="paper",
    persistence_threshold=PERSISTENCE_THRESHOLD,
    alpha_gate=None,
):
    """Trains a generator per label, measures persistence and logit shifts, tests for outliers.

    Per label t: a generator is trained on the images whose label is not t
    (`train_generator`), then measured on the same images
    (`label_statistics`), and the finished label is written to `out_dir`
    at once. After the last label, `gangsweep_outliers` gives the verdict.
    One generator, optimizer and compiled step serve every label (weights
    and Adam state are reset per label; each label depends only on
    `(seed, label)`).

    Args:
        model: the Keras classifier under test (softmax or logits output).
        x: clean raw images `(N, H, W, C)` in [0, 255] (validation data).
        y: their integer labels, or `None` (the model's own predictions
            stand in).
        labels: labels to scan (at least 3 for a verdict). Defaults to
            `None` (all).
        out_dir: scan folder to write and resume. Defaults to `None`
            (nothing written).
        epochs: maximum epochs per generator. Defaults to `15`.
        batch_size: images per step. Defaults to `64`.
        lr: Adam learning rate. Defaults to `0.01`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: random seed. Defaults to `0`.
        force: start a new scan in a folder that holds another scan (or
            other files); same-named files are replaced. Defaults to `False`.
        progress: show a progress bar, one step per label. Defaults to `True`.
        verbose: print the outlier report. Defaults to `True`.
        max_images: use a random subset of at most this many images.
            Defaults to `None` (all).
        filters: generator width. Defaults to `32`.
        residual_blocks: generator residual blocks. Defaults to `3`.
        patience: early-stop patience in epochs. Defaults to `3`.
        k: confidence margin of `L_adv`. Defaults to `0.0`.
        model_path: the model file's path, recorded in `results.json`
            (see `nc_tf.scan.scan`). Defaults to `None`.
        min_steps_per_epoch: fewest Adam steps per epoch (see
            `train_generator`; `0`: one pass, the paper). Defaults to `32`.
        statistic: the anomaly index, `"paper"` or `"margin"` (see
            `gangsweep_outliers`). Not a training setting: a finished scan
            can be judged again with the other. Labels scanned before the
            margin was recorded get it from their saved generators.
            Defaults to `"paper"`.
        persistence_threshold: the persistence a label needs to be
            flagged, in (0, 1]. Like `statistic`, a judging setting: a
            finished scan can be judged again with another. Defaults to
            `0.9` (the paper).
        alpha_gate: the share of images an epoch must send to the label
            before `alpha` may drop to 1/2 (see `train_generator`; an nc-tf
            addition). Defaults to `None` (the paper's rule).

    Returns:
        the results dict (as in `results.json`): `method` (`"gangsweep"`),
        `settings`, `labels` (label -> `persistence`, `V`, `D`, `Z_V`,
        `Z_D`, `AI`, `l2`, `attack_success_rate`, `epochs`, `seconds`, `collapsed`,
        `persistence_by_source`, `V_logits`, `V_relative`, `history`) and `outlier` (the
        `gangsweep_outliers` verdict, or `None` with fewer than 3 labels).

    Example:

    >>> record = gangsweep_scan(model, x_val, y_val, out_dir="runs/gangsweep")  # doctest: +SKIP
    >>> record["outlier"]["flagged"]  # doctest: +SKIP
    [[7, 6.3]]
    """
    check_intensity(intensity)
    check_statistic(statistic)
    persistence_threshold = check_persistence_threshold(persistence_threshold)
    x = check_images(x, "scan data")
    num_classes = check_model_data(model, x, y, name="scan data")
    if y is None:
        from nc_tf.metrics import predict_labels

        y = predict_labels(model, x, intensity)
    y = labels_to_int(y)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels.")
    if max_images is not None and len(x) > int(max_images):
        keep = np.sort(np.random.default_rng(seed).permutation(len(x))[: int(max_images)])
        x, y = x[keep], y[keep]
    if len(np.unique(y)) < 2:
        raise ValueError(
            "The scan data holds a single class; use clean samples of many "
            "classes (e.g. the validation set)."
        )
    labels = list(range(num_classes)) if labels is None else [int(v) for v in labels]
    for label in labels:
        check_target(model, label)
    settings = {
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "k": float(k),
        "patience": int(patience),
        "filters": int(filters),
        "min_steps_per_epoch": check_min_steps(min_steps_per_epoch),
        "alpha_gate": check_alpha_gate(alpha_gate),
        "residual_blocks": int(residual_blocks),
        "intensity": intensity,
        "seed": int(seed),
        "max_images": None if max_images is None else int(max_images),
        "n_samples": int(len(x)),
        "image_shape": [int(v) for v in x.shape[1:]],
        "num_classes": num_classes,
        "threshold": AI_THRESHOLD,
    }
    folder = ScanFolder.open(
        out_dir,
        {
            "method": METHOD,
            "settings": settings,
            "labels": {},
            "identity": scan_identity(model, x, y, model_path, out_dir),
        },
        force=force,
        keep=lambda path, key: os.path.exists(_weights_path(path, key)),
        # Settings a folder may lack, compared as if recorded: one pass per
        # epoch and the paper's alpha rule; persistence_threshold is a judging setting.
        defaults={"min_steps_per_epoch": 0, "alpha_gate": None},
        drop=("persistence_threshold",),
        hint="choose another --out to keep both, rerun with the same settings to resume, or, "
        "from Python, pass force=True to start over there",
    )
    record = folder.record
    todo = [t for t in dict.fromkeys(labels) if str(t) not in record["labels"]]
    with folder.running(len(todo), "gangsweep", progress=progress):
        if todo:
            logit_fn = logits_function(model, x, intensity)
            trainer = GeneratorTrainer(
                model,
                x.shape[1:],
                num_classes,
                filters,
                residual_blocks,
                lr,
                k,
                intensity,
                logit_fn,
            )
            x01 = to_unit(x)
        for label in todo:
            began = time.time()
            trainer.reset(seed, label)
            history = trainer.fit(
                x01[y != label],
                label,
                epochs,
                int(batch_size),
                int(patience),
                seed,
                settings["min_steps_per_epoch"],
                settings["alpha_gate"],
            )
            stats = label_statistics(
                model, trainer.generator, x, y, label, intensity, seed, logit_fn=logit_fn
            )
            entry = {
                "label": label,
                **{
                    key: stats[key]
                    for key in (
                        "persistence",
                        "V",
                        "D",
                        "V_logits",
                        "V_relative",
                        "margin",
                        "l2",
                        "attack_success_rate",
                        "persistence_by_source",
                    )
                },
                "epochs": len(history["l_pert"]),
                "seconds": round(time.time() - began, 2),
                "collapsed": collapsed(history),
                "history": history,
            }
            if out_dir is not None:
                _save_label(folder, label, trainer.generator, x, y)
            folder.add_label(
                label,
                entry,
                label=label,
                persistence=f"{stats['persistence']:.2f}",
                V=f"{stats['V']:.3g}",
                D=f"{stats['D']:.3g}",
            )
    if out_dir is not None:
        _add_margins(model, record, out_dir, x, y, intensity, seed)
    _warn_collapsed(record)
    record["outlier"] = None
    if len(record["labels"]) >= 3:
        outlier = gangsweep_outliers(
            record["labels"], persistence_threshold, statistic=statistic, verbose=verbose
        )
        for key, entry in record["labels"].items():
            entry.update(
                {name: outlier["per_label"][int(key)][name] for name in ("Z_V", "Z_D", "Z_M", "AI")}
            )
        outlier["per_label"] = {str(t): v for t, v in outlier["per_label"].items()}
        record["outlier"] = outlier
    folder.save()
    return record


def _warn_collapsed(record):
    """Warns about labels whose generator collapsed to `G(x) = 0` (their statistics mislead)."""
    labels = sorted(
        int(key) for key, entry in record["labels"].items() if collapsed(entry["history"])
    )
    if not labels:
        return
    gate = record["settings"].get("alpha_gate")
    fix = (
        "rescan into another folder with alpha_gate=0.9 (--alpha-gate 0.9), which keeps "
        "alpha at 2 until the generator sends 90% of the images to the label"
        if gate is None
        else f"rescan into another folder with a higher alpha_gate than {gate}"
    )
    warnings.warn(
        f"GangSweep: the generators of labels {labels} collapsed to G(x) = 0 during "
        f"training (an epoch ended with L_pert < {COLLAPSE_L_PERT} and fewer than half "
        f"of the images sent), so their persistence is not a fair measure; {fix}.",
        stacklevel=3,
    )


def _add_margins(model, record, out_dir, x, y, intensity, seed):
    """Measures `margin` for labels of an older scan folder that lack it (saved generators)."""
    missing = [int(key) for key, entry in record["labels"].items() if "margin" not in entry]
    if not missing:
        return
    logit_fn = logits_function(model, x, intensity)
    for label, generator in load_generators(out_dir, missing).items():
        stats = label_statistics(model, generator, x, y, label, intensity, seed, logit_fn=logit_fn)
        record["labels"][str(label)]["margin"] = stats["margin"]


def _weights_path(out_dir, label):
    return os.path.join(out_dir, "generators", f"label_{int(label)}.weights.h5")


def _save_label(folder, label, generator, x, y, n_pairs=6):
    """The label's generator weights and its two PNGs, each written atomically."""
    path = _weights_path(folder.path, label)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with io.atomic_path(path) as tmp:
        generator.save_weights(tmp)
    others = np.flatnonzero(y != label)
    pert = generate(generator, x[others])
    mean = np.mean(pert, axis=0)
    stretched = mean / mean.max() * 255.0 if mean.max() > 0 else mean
    folder.save_png(f"gangsweep_perturbation_label_{label}.png", stretched)
    # One image of each of the first few classes (other than the label), if present.
    picks = []
    for source in np.unique(y[others]):
        picks.append(others[np.flatnonzero(y[others] == source)[0]])
    picks = np.asarray(picks[:n_pairs])
    pairs = [x[picks].astype(np.float32), stamp(x[picks], generate(generator, x[picks]))]
    folder.save_png(f"gangsweep_samples_label_{label}.png", tile(pairs))


def load_generators(scan_dir, labels=None):
    """The trained generators of a GangSweep scan folder, rebuilt from weights and settings.

    Only weights are read (`generators/label_N.weights.h5`); the
    architecture is rebuilt by `build_generator` from the settings in
    `results.json`, so no code stored in the folder is ever run.

    Args:
        scan_dir: a folder written by `gangsweep_scan`.
        labels: labels to load. Defaults to `None`: the labels the scan
            flagged (empty for a clean model).

    Returns:
        dict label -> generator (`keras.Model`).

    Example:

    >>> gens = load_generators("runs/gangsweep")  # doctest: +SKIP
    >>> sorted(gens)  # doctest: +SKIP
    [7]
    """
    record = read_scan_record(scan_dir)
    if record.get("method") != METHOD:
        raise ValueError(
            f"{scan_dir} does not hold a GangSweep scan (method: "
            f"{record.get('method', 'Neural Cleanse')})."
        )
    if labels is None:
        outlier = record.get("outlier") if isinstance(record.get("outlier"), dict) else {}
        labels = [t for t, _ in outlier.get("flagged", [])]
    settings = _generator_settings(scan_dir, record["settings"])
    out = {}
    for label in labels:
        label = int(label)
        path = _weights_path(scan_dir, label)
        if str(label) not in record["labels"] or not os.path.exists(path):
            raise ValueError(
                f"Label {label} has no generator in {scan_dir}; scanned: "
                f"{', '.join(sorted(record['labels'], key=int)) or 'none'}."
            )
        generator = build_generator(
            settings["image_shape"], settings["filters"], settings["residual_blocks"]
        )
        try:
            generator.load_weights(path)
        except Exception as error:  # h5py and Keras raise many types for damaged files
            raise ValueError(
                f"{path} is damaged or does not fit the scan's settings "
                f"({str(error).splitlines()[0][:200]}); rescan into a new "
                "folder."
            ) from None
        out[label] = generator
    return out


def _generator_settings(scan_dir, settings):
    """The generator shape settings of a scan record, checked before anything is built."""
    shape, filters, blocks = (
        settings.get("image_shape"),
        settings.get("filters"),
        settings.get("residual_blocks"),
    )

    def whole(value, low, high):
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(whole(v, 1, 4096) for v in shape)
        and whole(filters, 1, 1024)
        and whole(blocks, 0, 64)
    ):
        raise ValueError(
            f"not a scan folder: {os.path.join(scan_dir, RESULTS)} has generator "
            "settings nc-tf does not write (image_shape, filters, "
            "residual_blocks); pass a folder written by `nc-tf scan --method "
            "gangsweep`."
        )
    return {"image_shape": shape, "filters": filters, "residual_blocks": blocks}
