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
most the labels in flight. `results.json` records digests of the model and
the data (`nc_tf.identity`): a folder is resumed only by a scan of the same
model and data, whatever their paths.
"""

import numbers
import os
import time

import numpy as np

from nc_tf.datasets import check_images
from nc_tf.detect import detect, detect_dir, scan_triggers  # noqa: F401  (public here too)
from nc_tf.engine import ReverseEngine
from nc_tf.identity import identity
from nc_tf.losses import check_loss
from nc_tf.metrics import attack_success_rate, predict_labels
from nc_tf.models import check_model_data
from nc_tf.preprocess import check_intensity
from nc_tf.scan_folder import (  # noqa: F401  (RESULTS, read_scan_record: public here too)
    RESULTS,
    ScanFolder,
    load_reversed,
    mask_png_path,
    png_l1_norm,
    read_scan_record,
    reversed_path,
    save_reversed,
    save_trigger_pngs,
)
from nc_tf.short_pass import best_starts, low_cost_selection
from nc_tf.trigger import injection_func
from nc_tf.validation import check_scalar
from nc_tf.verdict import check_rule

# Parameters under their reference names; `nb_sample` = images per step
# (mini_batch = nb_sample // batch_size).
PRESETS = {
    # The published GTSRB configuration (gtsrb_visualize_example.py), with the
    # loss that code effectively minimised (see `nc_tf.engine.LOSSES`).
    "reference": dict(
        steps=1000,
        batch_size=32,
        nb_sample=1000,
        lr=0.1,
        init_cost=1e-3,
        regularization="l1",
        attack_succ_threshold=0.99,
        patience=5,
        cost_multiplier=2.0,
        early_stop_threshold=1.0,
        early_stop_patience=25,
        upsample_size=1,
        restarts=1,
        mask_init="random",
        loss="reference",
        starts=1,
        start_steps=0,
        start_nb_sample=1000,
        keep_step_start=False,
        rule="reference",
    ),
    # The default, for a verdict in minutes on a CPU (bench/detection.py, chosen
    # on the development split of bench/zoo):
    # - batches of 8 images, 4 per step: four times the Adam updates of the
    #   reference per image seen, which is what moves the mask;
    # - success threshold 0.95, not 0.99: a real backdoor need not fire on 99%
    #   of inputs, and above its own success rate the optimiser cannot use it;
    # - 8 starts per label from random masks and patterns (the reference's
    #   initialisation), at twice the reference learning rate and ten times its
    #   first cost, so masks shrink from the start; after 20 steps the start
    #   with the smallest mask continues. A start either finds the backdoor's
    #   small trigger within those steps or settles in a large local minimum,
    #   and only some starts find it;
    # - the reference code's effective loss 16.12 (1 - p_t) (see `ReverseEngine`);
    # - the trigger a successful step started from is kept, not the smaller one
    #   its four updates end with (see `ReverseEngine`'s `keep_step_start`);
    # - the verdict on log norms of the labels that reached the threshold
    #   (`nc_tf.verdict`).
    "fast": dict(
        steps=300,
        batch_size=8,
        nb_sample=32,
        lr=0.2,
        init_cost=1e-2,
        regularization="l1",
        attack_succ_threshold=0.95,
        patience=5,
        cost_multiplier=2.0,
        early_stop_threshold=1.0,
        early_stop_patience=25,
        upsample_size=1,
        restarts=1,
        mask_init="random",
        loss="reference",
        starts=8,
        start_steps=20,
        start_nb_sample=32,
        keep_step_start=True,
        rule="log_mad",
    ),
}
# The valid range of each numeric setting (`nc_tf.validation.check_scalar` arguments).
SETTING_RANGES = {
    **{
        key: dict(kind=numbers.Integral, low=1)
        for key in (
            "steps",
            "batch_size",
            "nb_sample",
            "patience",
            "early_stop_patience",
            "upsample_size",
            "restarts",
            "starts",
            "start_nb_sample",
        )
    },
    "start_steps": dict(kind=numbers.Integral, low=0),
    "lr": dict(low=0, include="neither"),
    "cost_multiplier": dict(low=0, include="neither"),
    "init_cost": dict(low=0),
    "attack_succ_threshold": dict(low=0, high=1, include="right"),
    "early_stop_threshold": dict(low=0, high=1, include="right"),
}


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
    for key, spec in SETTING_RANGES.items():
        check_scalar(settings[key], key, **spec, hint=f" (CLI: --{key.replace('_', '-')})")
    if settings["mask_init"] != "random":
        check_scalar(
            settings["mask_init"],
            "mask_init",
            low=0,
            high=1,
            include="neither",
            what="'random' or a number",
            hint=" (CLI: --mask-init)",
        )
    settings["loss"] = check_loss(settings["loss"])
    settings["rule"] = check_rule(settings["rule"])
    if settings["nb_sample"] < settings["batch_size"]:
        raise ValueError(
            f"nb_sample ({settings['nb_sample']}) must be >= batch_size ({settings['batch_size']})."
        )
    return settings


def scan(
    model,
    x,
    y=None,
    labels=None,
    suspected=None,
    out_dir=None,
    preset="fast",
    intensity="raw",
    seed=0,
    slots=None,
    prefix="nc",
    progress=True,
    verbose=True,
    model_path=None,
    low_cost=False,
    accept_low_accuracy=False,
    **overrides,
):
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
        slots: labels (or starts) optimised together in one graph.
            Defaults to `None` (`default_slots`: as many as make
            `IMAGES_PER_PASS` images per forward pass).
        prefix: PNG file name prefix (the reference used the data set name).
            Defaults to `"nc"`.
        progress: show a progress bar. Defaults to `True`.
        verbose: print the MAD report. Defaults to `True`.
        model_path: the model file's path, recorded in `results.json`
            beside the model's and the data's digests (`nc_tf.identity`;
            resuming compares the digests, not the path). Defaults to `None`.
        low_cost: the paper's low-cost scan for many labels: a short pass
            over all labels, then full optimisation of the smallest-norm
            candidates plus a random sample (see `low_cost_selection`; a dict
            passes its arguments), judged by the preset's `rule` over the
            optimised labels. Defaults to `False`.
        accept_low_accuracy: scan even when the model's clean accuracy on
            `(x, y)` is below 50% (usually a preprocessing mismatch; see
            `nc_tf.metrics.check_clean_accuracy`). Defaults to `False`.
        **overrides: any preset setting under its reference name (`steps`,
            `batch_size`, `nb_sample`, `lr`, `init_cost`, `regularization`,
            `attack_succ_threshold`, `patience`, `cost_multiplier`,
            `early_stop_threshold`, `early_stop_patience`, `upsample_size`,
            `restarts`: runs per label from different random triggers, the
            smallest valid trigger kept; `mask_init`: `"random"` or a
            constant initial mask; `loss`: `"crossentropy"` or `"reference"`, see
            `ReverseEngine`; `starts`: short starts per label of which the
            most promising continues, after `start_steps` steps of
            `start_nb_sample` images, see `nc_tf.short_pass.best_starts`).

    Returns:
        the results dict (as in `results.json`): `settings`,
        `clean_accuracy` (on `(x, y)`; `None` without `y`), `output`
        (`"softmax"` or `"logits"`, as the model behaved), `labels`
        (label -> `l1_norm`, `attack_success_rate`, `steps`, `seconds`,
        `found`), `outlier` (the MAD verdict) and, in memory only, `triggers`
        (label -> `(mask, pattern)`).

    Example:

    >>> results = scan(model, x_test, y_test, out_dir="runs/scan")  # doctest: +SKIP
    >>> results["outlier"]["flagged"]  # doctest: +SKIP
    [[7, 9.5]]
    """
    settings = scan_settings(preset, **overrides)
    mask_png_path(".", prefix, 0)  # a plain file-name part, checked before any work
    x, y, num_classes = check_scan_inputs(model, x, y, settings, intensity)
    clean_accuracy, output_form = check_scan_model(model, x, y, intensity, accept_low_accuracy)
    labels = list(range(num_classes)) if labels is None else [int(v) for v in labels]
    for label in labels + ([suspected] if suspected is not None else []):
        if not 0 <= label < num_classes:
            raise ValueError(
                f"Label {label} is out of range: the model has labels 0..{num_classes - 1}."
            )
    if suspected is not None:
        labels = [int(suspected)] + [v for v in labels if v != suspected]
    record = new_record(
        settings,
        preset,
        intensity,
        seed,
        x,
        num_classes,
        prefix,
        scan_identity(model, x, y, model_path, out_dir),
        low_cost=bool(low_cost),
    )
    folder, triggers = open_scan_folder(out_dir, record)
    record = folder.record
    record.update(clean_accuracy=clean_accuracy, output=output_form)
    todo = [v for v in labels if str(v) not in record["labels"]]
    engine = make_engine(model, x, None, settings, intensity, seed, slots) if todo else None
    states = None
    previous = record.get("low_cost") if isinstance(record.get("low_cost"), dict) else None
    if low_cost and todo and previous:
        # Resuming a low-cost scan: keep its selection (the short-pass states are
        # gone, so unfinished candidates restart from scratch).
        todo = [v for v in previous["top"] + previous["random"] if str(v) not in record["labels"]]
    elif low_cost and todo:
        with folder.running(0, "low-cost", progress=False):
            start = time.time()
            first = None
            if settings["starts"] > 1:  # each label's short pass continues its best start
                kept, _ = best_starts(engine, labels, settings["starts"], settings["start_steps"])
                first = dict(zip(labels, kept))
            chosen, states, info = low_cost_selection(
                engine,
                labels,
                seed,
                progress=progress,
                states=first,
                **(low_cost if isinstance(low_cost, dict) else {}),
            )
            info["short_pass_seconds"] = round(time.time() - start, 2)
        record["low_cost"] = info
        todo = [v for v in chosen if str(v) not in record["labels"]]
        states = [states[v] for v in todo]
    jobs = [(str(v), v, None) for v in todo]
    run_jobs(
        engine,
        jobs,
        folder,
        triggers,
        model,
        x,
        y,
        intensity,
        prefix,
        progress=progress,
        states=states,
        restarts=settings["restarts"],
        starts=settings["starts"],
        start_steps=settings["start_steps"],
    )
    record["outlier"] = detect(record, verbose=verbose) if len(record["labels"]) >= 3 else None
    folder.save()
    record["triggers"] = triggers
    return record


# Images per forward pass that `default_slots` aims for: enough to keep a
# CPU's or a GPU's matrix units busy, few enough for a small memory.
IMAGES_PER_PASS = 256


def default_slots(settings):
    """Slots that fill `IMAGES_PER_PASS` images per pass at the settings' `batch_size`.

    Example:

    >>> default_slots(scan_settings("fast")), default_slots(scan_settings("reference"))
    (32, 8)
    """
    return max(1, IMAGES_PER_PASS // int(settings["batch_size"]))


def job_groups(keys, slots=8, restarts=1):
    """The groups in which a scan optimises its jobs: whole jobs, about twice `slots` runs.

    A job's result depends on its `(seed, label)` and on the jobs that share
    its group (they share the graph's batch, whose size changes the
    floating-point rounding). A scan split over processes by whole groups
    (`nc-tf scan-many --split-labels`) therefore gives the single scan's
    results.

    Args:
        keys: the jobs (e.g. labels), in scan order.
        slots: labels optimised together in one graph. Defaults to `8`.
        restarts: runs per job. Defaults to `1`.

    Returns:
        the list of groups (lists of keys), in order.

    Example:

    >>> job_groups(range(10), slots=2)
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """
    keys = list(keys)
    size = max(1, (2 * int(slots)) // max(1, int(restarts)))
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def check_scan_inputs(model, x, y, settings, intensity):
    """Validates scan data before any optimisation; returns `(x, y, num_classes)`."""
    check_intensity(intensity)
    x = check_images(x, "scan data")
    num_classes = check_model_data(model, x, y, name="scan data")
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise ValueError(f"{len(x)} images but {len(y)} labels.")
        if len(np.unique(y)) < 2:
            raise ValueError(
                "The scan data holds a single class; use clean samples of many "
                "classes (e.g. the test set)."
            )
    if len(x) < settings["batch_size"]:
        raise ValueError(
            f"Only {len(x)} images; a scan needs at least batch_size ({settings['batch_size']})."
        )
    return x, y, num_classes


def check_scan_model(model, x, y, intensity, accept_low_accuracy=False):
    """Measures the model on the scan data before any optimisation.

    Returns `(clean_accuracy, output)`: the accuracy on `(x, y)` (`None`
    without `y`), checked by `nc_tf.metrics.check_clean_accuracy`, and
    `"softmax"` or `"logits"` as the outputs behave
    (`nc_tf.models.outputs_probabilities`).
    """
    from nc_tf.metrics import accuracy, check_clean_accuracy
    from nc_tf.models import outputs_probabilities

    clean_accuracy = None
    if y is not None:
        clean_accuracy = round(accuracy(predict_labels(model, x, intensity), y), 4)
        check_clean_accuracy(clean_accuracy, accept_low_accuracy)
    output = "softmax" if outputs_probabilities(model, x, intensity) else "logits"
    return clean_accuracy, output


def new_record(settings, preset, intensity, seed, x, num_classes, prefix, identity, **extra):
    """The `results.json` skeleton: every setting that made the scan, and what it scanned."""
    return {
        "settings": dict(
            settings,
            preset=preset,
            intensity=intensity,
            seed=seed,
            n_samples=int(len(x)),
            image_shape=list(x.shape[1:]),
            num_classes=num_classes,
            prefix=prefix,
            **extra,
        ),
        "identity": identity,
        "labels": {},
    }


def scan_identity(model, x, y, model_path, out_dir):
    """The identity of a scan that writes a folder (`nc_tf.identity`); `None` without one."""
    return None if out_dir is None else identity(model, x, y, model_path)


def make_engine(model, x, y, settings, intensity, seed, slots=None):
    """A `ReverseEngine` configured from scan settings (reference names); `slots=None`: `default_slots`."""
    return ReverseEngine(
        model,
        x,
        y,
        intensity=intensity,
        regularization=settings["regularization"],
        init_cost=settings["init_cost"],
        steps=settings["steps"],
        mini_batch=settings["nb_sample"] // settings["batch_size"],
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        upsample_size=settings["upsample_size"],
        attack_succ_threshold=settings["attack_succ_threshold"],
        patience=settings["patience"],
        cost_multiplier=settings["cost_multiplier"],
        early_stop_threshold=settings["early_stop_threshold"],
        early_stop_patience=settings["early_stop_patience"],
        slots=slots or default_slots(settings),
        seed=seed,
        mask_init=settings["mask_init"],
        loss=settings["loss"],
        start_mini_batch=max(1, settings["start_nb_sample"] // settings["batch_size"]),
        keep_step_start=settings["keep_step_start"],
    )


def open_scan_folder(out_dir, record):
    """Creates or resumes a Neural Cleanse (or partial) scan folder (`ScanFolder.open`).

    Returns `(folder, triggers)`: the folder, whose record continues any
    previous scan, and the finished jobs' exact triggers (key ->
    `(mask, pattern)`). Finished labels whose arrays are missing run again.
    """
    folder = ScanFolder.open(
        out_dir,
        record,
        force=None,
        keep=lambda path, key: os.path.exists(reversed_path(path, key)),
        drop=("rule",),  # the verdict rule changes no optimisation
    )
    triggers = {key: load_reversed(out_dir, key) for key in folder.labels}
    return folder, triggers


# Images (evenly spaced through the scan data) on which a reversed trigger's
# attack success is measured: the standard error stays under 0.5 point at
# the success threshold.
ASR_SAMPLES = 2000


def evaluation_sample(index, size=ASR_SAMPLES):
    """At most `size` entries of `index`, evenly spaced (all of them if fewer).

    Example:

    >>> evaluation_sample(np.arange(10), size=4).tolist()
    [0, 3, 6, 9]
    """
    index = np.asarray(index)
    if len(index) <= size:
        return index
    return index[np.linspace(0, len(index) - 1, size).round().astype(int)]


def run_jobs(
    engine,
    jobs,
    folder,
    triggers,
    model,
    x,
    y,
    intensity,
    prefix,
    progress=True,
    states=None,
    restarts=1,
    starts=1,
    start_steps=0,
):
    """Optimises `jobs` (key, target label, source classes or None[, success threshold]).

    Each job runs `restarts` times from different random triggers; the
    smallest trigger that reached the success threshold is kept (the
    smallest of all if none did). Each finished job gets its entry in
    the folder's `labels[key]` (norm, attack success of the reversed trigger
    on up to `ASR_SAMPLES` of its source samples, steps, seconds, every
    restart's norm), its PNGs
    and exact arrays, and `results.json` is rewritten atomically
    (`ScanFolder.add_label`). With
    `starts > 1`, each run without a given state first picks the best of
    `starts` short starts (`nc_tf.short_pass.best_starts`).
    """
    if not jobs:
        return
    restarts = max(1, int(restarts))
    runs = [(j, r) for j in range(len(jobs)) for r in range(restarts)]
    pending = {}
    y_ref = y if y is not None else predict_labels(model, x, intensity)

    def on_done(run, result):
        job, _ = runs[run]
        if run in start_norms:
            result["start_norms"] = start_norms[run]
        pending.setdefault(job, []).append(result)
        if len(pending[job]) < restarts:
            return
        tries = pending.pop(job)
        best = min(tries, key=lambda r: (not r["found"], r["l1_norm"]))
        finish(job, best, tries)

    def finish(job, result, tries):
        key, label, sources = jobs[job][:3]
        keep = np.ones(len(x), bool) if sources is None else np.isin(y_ref, sources)
        keep = evaluation_sample(np.flatnonzero(keep))
        stamped = injection_func(result["mask"][..., None], result["pattern"], x[keep])
        asr = attack_success_rate(predict_labels(model, stamped, intensity), y_ref[keep], label)
        entry = {
            "label": label,
            "l1_norm": result["l1_norm"],
            "l1_norm_png": round(png_l1_norm(result["mask"]), 6),
            "attack_success_rate": asr,
            "found": result["found"],
            "steps": result["steps"],
            "seconds": round(sum(r["seconds"] for r in tries), 2),
        }
        if "start_norms" in result:
            entry["start_norms"] = result["start_norms"]
        if restarts > 1:
            entry["restarts"] = [
                {"l1_norm": r["l1_norm"], "found": r["found"], "steps": r["steps"]} for r in tries
            ]
        if sources is not None:
            entry["sources"] = sorted(int(v) for v in sources)
        if len(jobs[job]) > 3 and jobs[job][3] is not None:
            entry["attack_succ_threshold"] = round(float(jobs[job][3]), 4)
        triggers[key] = (result["mask"], result["pattern"])
        if folder.path is not None:
            save_trigger_pngs(folder.path, prefix, key, result["pattern"], result["mask"])
            save_reversed(folder.path, key, result["mask"], result["pattern"])
        folder.add_label(key, entry, label=key, l1=f"{result['l1_norm']:.1f}")

    run_states = [None if states is None or r else states[j] for j, r in runs]
    thresholds = [jobs[j][3] if len(jobs[j]) > 3 else None for j, _ in runs]
    start_norms = {}
    # Runs go in groups of whole jobs (`job_groups`): a group's starts, then its
    # runs, so labels finish (and are saved) as the scan goes.
    group = len(job_groups(range(len(jobs)), engine.slots, restarts)[0]) * restarts
    with folder.running(len(jobs), "scan", progress=progress) as bar:
        for first in range(0, len(runs), group):
            part = list(range(first, min(first + group, len(runs))))
            fresh = [i for i in part if run_states[i] is None]
            if int(starts) > 1 and fresh:
                if bar is not None:
                    bar.set_postfix_str(f"{len(fresh) * int(starts)} starts")
                chosen, norms = best_starts(
                    engine,
                    [jobs[runs[i][0]][1] for i in fresh],
                    starts,
                    start_steps,
                    sources=[jobs[runs[i][0]][2] for i in fresh],
                    restarts=[runs[i][1] for i in fresh],
                    thresholds=[thresholds[i] for i in fresh],
                )
                for i, state, norm in zip(fresh, chosen, norms):
                    run_states[i], start_norms[i] = state, norm
            engine.run(
                [jobs[runs[i][0]][1] for i in part],
                on_done=lambda k, result, part=part: on_done(part[k], result),
                states=[run_states[i] for i in part],
                sources=[jobs[runs[i][0]][2] for i in part],
                restarts=[runs[i][1] for i in part],
                thresholds=[thresholds[i] for i in part],
            )
