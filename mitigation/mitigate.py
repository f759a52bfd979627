"""One call per mitigation method, with before/after figures written to a folder.

`mitigate(method, model, data, ...)` runs one method on a copy of `model` and
measures clean accuracy and attack success (of the reversed triggers, and of
the original triggers when a benchmark or `attack.json` knows them) before
and after. With `out_dir` it writes

    out_dir/model.keras        the repaired model (filter: filter.json instead)
    out_dir/mitigation.json    method, settings, before/after, verification, details
    out_dir/verification/      the verification scan of the repaired model
    out_dir/*.png              the method's curve or histograms

Every method that changes the model (`VERIFIED`) ends with a verification
(`mitigation.verification.verify`): fresh triggers reversed from the repaired
model, at a seed the repair never used, judged against the original scan's
median and MAD. `mitigation.json` records `verified` and the residual
triggers; the `after` row's `asr_reversed` is the success of those residual
triggers (the scan's own triggers' success after the repair is
`asr_scan_triggers`). The input defences (filter, shrinkpad, flip) leave the
model as it is, so there is nothing to verify.

The `nc-tf mitigate` command and `bench/nc_mitigation.py` call this function.

Data roles (`MitigationData`): `x_train`/`y_train` feed fine-tuning
(unlearning, GYM, fine-pruning's optional epoch); `x_val`/`y_val` are held-out
clean images for ranking neurons, calibrating thresholds and the stop tests;
`x_test`/`y_test` give the reported figures.
"""

import collections
import contextlib
import os
import time

import keras
import numpy as np

from mitigation import methods, verification
from nc_tf import io
from nc_tf.datasets import labels_to_int
from nc_tf.identity import array_digest, check_identity, identity
from nc_tf.metrics import accuracy, check_clean_accuracy, predict_labels, trigger_success_rate

# Read from the one table of methods (`mitigation.methods.METHODS`).
METHODS = tuple(methods.METHODS)
NEEDS_SCAN = methods.needing("scan")
VERIFIED = methods.changing_model()
# repair/unlearn: the model's and the data's digests, written first so that a resume can check them.
IDENTITY = "identity.json"
# A verification scan needs at least one batch (the presets' batch_size) of held-out images.
MIN_VERIFY_IMAGES = 32

MitigationData = collections.namedtuple(
    "MitigationData", "x_train y_train x_val y_val x_test y_test"
)


def split_data(x_train, y_train, x_test, y_test, val_ratio=0.05, seed=0):
    """`MitigationData` with a random held-out share of the training split as validation.

    Args:
        x_train: raw training images.
        y_train: their labels (integer or one-hot).
        x_test: raw test images (reported figures).
        y_test: their labels.
        val_ratio: share of the training split held out. Defaults to `0.05`.
        seed: seeds the split. Defaults to `0`.

    Returns:
        a `MitigationData`.
    """
    y_train, y_test = labels_to_int(y_train), labels_to_int(y_test)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError("Each image array needs one label per image.")
    order = np.random.default_rng(seed).permutation(len(x_train))
    n_val = max(1, int(round(val_ratio * len(x_train))))
    val, train = order[:n_val], order[n_val:]
    return MitigationData(
        x_train[train], y_train[train], x_train[val], y_train[val], np.asarray(x_test), y_test
    )


def measure(predict, x, y, reversed_triggers=(), attack_triggers=()):
    """Clean accuracy and attack success of a predictor (`images -> labels`).

    Attack success counts only samples of a trigger's source labels (partial
    backdoors) whose true label is not its target.
    """
    row = {"accuracy": accuracy(predict(x), y)}
    for key, triggers in (("asr_reversed", reversed_triggers), ("asr_original", attack_triggers)):
        row[key] = [trigger_success_rate(predict, t, x, y) for t in triggers]
    return row


def mitigate(
    method,
    model,
    data,
    triggers=(),
    attack_triggers=(),
    out_dir=None,
    force=False,
    intensity="raw",
    seed=0,
    scan_options=None,
    verbose=True,
    generators=None,
    scan_record=None,
    labels=None,
    peel=True,
    verify=True,
    model_path=None,
    accept_low_accuracy=False,
    **options,
):
    """Runs one mitigation method on a copy of `model`; returns `(result, report)`.

    Args:
        method: one of `METHODS`.
        model: a Keras classifier (never modified).
        data: a `MitigationData` (see `split_data`).
        triggers: reversed triggers from a scan (`nc_tf.scan.scan_triggers`);
            needed by `filter`, `prune`, `unlearn`, `linf-prune`. Defaults
            to `()`.
        attack_triggers: the original triggers, when known (reported only,
            never used to repair). Defaults to `()`.
        out_dir: folder for the model, `mitigation.json` and PNGs (new or
            empty unless `force`). Defaults to `None` (nothing written).
        force: allow writing into a non-empty `out_dir`. Defaults to `False`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: random seed. Defaults to `0`.
        scan_options: `repair` only: keyword arguments of `nc_tf.scan.scan`.
            Defaults to `None`.
        verbose: print progress lines. Defaults to `True`.
        generators: `gangsweep` only: label -> generator of a GangSweep
            scan (`nc_tf.gangsweep.load_generators`). Defaults to `None`.
        scan_record: the `results.json` dict of the scan the triggers came
            from: its flagged labels are the ones verified, and peeling
            judges new pieces by its median and MAD. Defaults to `None`:
            no peeling, and the verification scans every label with a
            fresh MAD test (`repair` uses its own first scan).
        labels: the labels to verify instead of the scan's flagged ones.
            Defaults to `None`.
        peel: `unlearn` and `prune` remove the pieces of each trigger
            (`mitigation.peeling`) and their union, not only the scan's
            trigger (needs `scan_record`). Defaults to `True`.
        verify: end a model-changing method with the verification scan.
            Defaults to `True`.
        model_path: the model file's path, recorded in the report beside
            the model's and the data's digests (`nc_tf.identity`). A
            resumed `repair`/`unlearn` folder must hold work on the same
            model and data. Defaults to `None`.
        accept_low_accuracy: go on when the model's clean accuracy on the
            test data is below 50% (usually a preprocessing mismatch; see
            `nc_tf.metrics.check_clean_accuracy`). Defaults to `False`.
        **options: the method's own keyword arguments (see each module).

    Returns:
        `(result, report)`: `result` is the repaired model, an
        `InputFilter` (filter) or a `DefendedModel` (shrinkpad, flip); the
        report is what `mitigation.json` holds; `report["verification"]
        ["verified"]` is `False` when a backdoor survives, `None` when the
        verification was skipped or does not apply.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown mitigation method {method!r}; use one of {', '.join(METHODS)}.")
    if method in NEEDS_SCAN and not triggers:
        raise ValueError(
            f"--method {method} needs reversed triggers: pass the folder of a scan "
            "that flagged a label (`nc-tf scan` then `--scan DIR`). Nothing is "
            "flagged in the scan given, so there is nothing to remove."
        )
    if methods.METHODS[method].needs == "generators" and not generators:
        raise ValueError(
            "--method gangsweep needs the generators of a GangSweep scan that "
            "flagged a label: run `nc-tf scan MODEL --method gangsweep --out DIR`, "
            "then pass --scan DIR. Nothing is flagged, so there is nothing to patch."
        )
    if verify and method in VERIFIED and len(data.x_val) < MIN_VERIFY_IMAGES:
        raise ValueError(
            f"Only {len(data.x_val)} held-out images to verify the repair with "
            f"(at least {MIN_VERIFY_IMAGES}): raise --val-ratio or --train-limit, "
            "or pass --no-verify."
        )

    def log(text):
        if verbose:
            print(text, flush=True)

    def predictor(m):
        return lambda images: predict_labels(m, images, intensity)

    def figures(predict):
        return measure(predict, data.x_test, data.y_test, triggers, attack_triggers)

    t0 = time.time()
    before = figures(predictor(model))
    check_clean_accuracy(before["accuracy"], accept_low_accuracy, name="the test data")
    ident = dict(
        identity(model, data.x_test, data.y_test, model_path), data_sha256=array_digest(*data)
    )
    with _out_dir(out_dir, force, method, ident):
        log(f"before: {_row_text(before)}")
        report = {
            "method": method,
            "intensity": intensity,
            "seed": seed,
            "options": dict(options),
            "peel": bool(peel),
            "verify": bool(verify),
            "n_test": int(len(data.x_test)),
            "identity": ident,
            "before": before,
        }
        if labels is None and scan_record is not None:
            labels = verification.scan_reference(scan_record)
        removed, peels = triggers, None
        if peel and method == "prune" and scan_record is not None and labels is not None:
            from mitigation.peeling import trigger_pieces

            removed, peels = trigger_pieces(
                model,
                data.x_val,
                data.y_val,
                triggers,
                scan_record,
                intensity=intensity,
                seed=seed,
                verbose=verbose,
            )
        if method in ("repair", "unlearn"):
            # the scans' progress and MAD reports; unlearn peels inside the repair loop
            options = dict(options, verbose=verbose, labels=labels, record=scan_record, peel=peel)
        job = Job(
            method,
            model,
            data,
            removed,
            attack_triggers,
            generators,
            intensity,
            seed,
            scan_options,
            out_dir,
            log,
            options,
        )
        result, details = methods.runner(method)(job)
        if peels is not None:
            details["peels"] = peels
        # Filter and inference-time defences measure themselves; repaired models are measured here.
        report["after"] = details.pop("after") if "after" in details else figures(predictor(result))
        if method == "repair":
            labels = details["labels"]
        if method not in VERIFIED:
            report["verification"] = {
                "verified": None,
                "status": "not applicable: the model itself is unchanged (an input defence)",
            }
        elif not verify:
            report["verification"] = {
                "verified": None,
                "status": "skipped (verify=False): the repair is unverified",
            }
            log("verification skipped: the repair is unverified")
        else:
            check = _verify(result, data, labels, intensity, seed, scan_options, out_dir, verbose)
            residual = list(check.pop("triggers").values())
            report["after"]["asr_scan_triggers"] = report["after"].pop("asr_reversed", [])
            report["after"]["asr_reversed"] = [
                trigger_success_rate(predictor(result), t, data.x_test, data.y_test)
                for t in residual
            ]
            report["verification"] = dict(
                check, status="verified" if check["verified"] else "a backdoor survives"
            )
        report.update(details=details, wall_time_s=round(time.time() - t0, 2))
        log(f"after:  {_row_text(report['after'])}")
        if out_dir is not None:
            if isinstance(result, keras.Model):
                io.save_model(result, os.path.join(out_dir, "model.keras"))
                report["model"] = os.path.join(out_dir, "model.keras")
            io.write_json(os.path.join(out_dir, "mitigation.json"), report)
        return result, report


@contextlib.contextmanager
def _out_dir(out_dir, force, method, ident):
    """Creates `out_dir` for the run (nothing without one).

    A resumable method's folder must hold work on the same model and data
    (`identity.json`); a run that fails before it saves anything there
    leaves no identity file behind.
    """
    if out_dir is None:
        yield
        return
    resumable = method in ("repair", "unlearn")
    io.prepare_out_dir(out_dir, force=force, resume=resumable)
    path = os.path.join(out_dir, IDENTITY)
    fresh = resumable and (force or not io.folder_entries(out_dir))
    if resumable and not fresh:
        previous = io.read_json(path, "identity file") if os.path.exists(path) else None
        check_identity(previous, ident, out_dir, "a repair")
    if resumable:
        io.write_json(path, ident)
    try:
        yield
    except BaseException:
        if fresh and io.folder_entries(out_dir) == [IDENTITY]:
            os.remove(path)
        raise


def _verify(result, data, labels, intensity, seed, scan_options, out_dir, verbose):
    """The verification record of a repaired model (see the module docstring)."""
    if labels is not None and not labels:
        return {
            "verified": True,
            "surviving": [],
            "labels": {},
            "triggers": {},
            "reference": None,
            "note": "the scan flagged no label: nothing to verify",
        }
    return verification.verify(
        result,
        data.x_val,
        data.y_val,
        labels,
        intensity=intensity,
        seed=seed + verification.SEED_OFFSET,
        scan_options=scan_options,
        out_dir=verification.verification_dir(out_dir),
        verbose=verbose,
    )


Job = collections.namedtuple(
    "Job",
    "method model data triggers attack_triggers generators intensity seed scan_options "
    "out_dir log options",
)
Job.__doc__ = "Everything one method's run function gets (`mitigation.methods.runner`)."


def _png(job, name):
    return os.path.join(job.out_dir, name) if job.out_dir else None


def run_unlearn(job):
    """The repair loop from the given scan: the triggers' pieces, unlearned once
    (rounds=1, the paper's one round) unless more rounds are asked for."""
    from mitigation.repair import repair

    options = dict(job.options)
    loop = {
        k: options.pop(k) for k in ("rounds", "verbose", "labels", "record", "peel") if k in options
    }
    loop.setdefault("rounds", 1)
    return repair(
        job.model,
        job.data,
        out_dir=job.out_dir,
        intensity=job.intensity,
        seed=job.seed,
        scan_options=job.scan_options,
        attack_triggers=job.attack_triggers,
        unlearn_options=options,
        triggers=job.triggers,
        **loop,
    )


def run_repair(job):
    """Iterative repair (`mitigation.repair.repair`), scanning first."""
    from mitigation.repair import repair

    return repair(
        job.model,
        job.data,
        out_dir=job.out_dir,
        intensity=job.intensity,
        seed=job.seed,
        scan_options=job.scan_options,
        attack_triggers=job.attack_triggers,
        **job.options,
    )


def run_prune(job):
    """Neural Cleanse pruning (`mitigation.pruning.prune`) and its curve."""
    from mitigation.pruning import plot_pruning_curve, prune

    pruned, rep = prune(
        job.model,
        job.data.x_val,
        job.data.y_val,
        job.triggers,
        intensity=job.intensity,
        triggers_eval=job.attack_triggers,
        **job.options,
    )
    if job.out_dir:
        plot_pruning_curve(rep, _png(job, "pruning.png"))
    return pruned, rep


def run_filter(job):
    """The Neural Cleanse input filter: its false-negative and false-positive rates, curves."""
    from mitigation.filter import filter_curve, fit_filter, plot_filter_curve

    data = job.data
    flt = fit_filter(job.model, data.x_val, job.triggers, intensity=job.intensity, **job.options)
    after = {"fpr": float(np.mean(flt.flag(data.x_test)))}
    curves = {}
    for name, trigs in (("reversed", job.triggers), ("original", job.attack_triggers)):
        after[f"fnr_{name}"] = [
            float(np.mean(~flt.flag(t.apply(data.x_test[data.y_test != t.target])))) for t in trigs
        ]
        if trigs:
            t = trigs[0]
            curves[name] = filter_curve(
                flt, data.x_test, t.apply(data.x_test[data.y_test != t.target])
            )
    if job.out_dir:
        flt.save(os.path.join(job.out_dir, "filter.json"))
        for name, rows in curves.items():
            plot_filter_curve(rows, _png(job, f"filter_curve_{name}.png"))
    return flt, {"after": after, "curves": curves, "layer": flt.layer, "profiles": flt.profiles}


def run_linf_prune(job):
    """ℓ∞ pruning driven by the first flagged label's trigger (Cheng et al. use one)."""
    from mitigation.linf_pruning import (
        activation_norms,
        linf_prune,
        plot_norm_histograms,
        plot_sweep,
    )

    pruned, rep = linf_prune(
        job.model,
        job.data.x_val,
        job.data.y_val,
        job.triggers[0],
        intensity=job.intensity,
        triggers_eval=list(job.attack_triggers) or None,
        **job.options,
    )
    if job.out_dir:
        inputs = {"clean": job.data.x_test[:1000], "reversed": job.triggers[0]}
        if job.attack_triggers:
            inputs["original"] = job.attack_triggers[0]
        norms = activation_norms(
            job.model,
            inputs,
            layer=rep["settings"].get("layer", "last_conv"),
            intensity=job.intensity,
        )
        plot_norm_histograms(norms, _png(job, "linf_norms.png"))
        plot_sweep(rep, _png(job, "linf_sweep.png"))
        rep["separation"] = norms["separation"]
    return pruned, rep


def run_fine_prune(job):
    """Fine-pruning (`mitigation.fine_pruning.fine_prune`)."""
    from mitigation.fine_pruning import fine_prune

    data = job.data
    return fine_prune(
        job.model,
        data.x_val,
        data.y_val,
        intensity=job.intensity,
        x_train=data.x_train,
        y_train=data.y_train,
        triggers_eval=list(job.attack_triggers) or None,
        seed=job.seed,
        **job.options,
    )


def run_defended(job):
    """An inference-time defence (ShrinkPad, FLIP) around the unchanged model."""
    from mitigation.defended_inference import defended

    guarded = defended(job.model, job.method, intensity=job.intensity, seed=job.seed, **job.options)
    after = measure(
        lambda images: np.argmax(guarded.predict(images), 1),
        job.data.x_test,
        job.data.y_test,
        job.triggers,
        job.attack_triggers,
    )
    return guarded, {"after": after}


def run_gym(job):
    """GYM's four column groups: none, intensive-only, fine-tuned + intensive, + lightweight."""
    from mitigation.defended_inference import defended
    from mitigation.gym_finetune import gym_finetune

    model, data, triggers, attack_triggers = job.model, job.data, job.triggers, job.attack_triggers
    intensity, seed, log, options = job.intensity, job.seed, job.log, dict(job.options)
    n_samples = options.pop("n_samples", 1000)
    scaled = bool(options.get("scaled", False))
    variant = options.get("variant", "notebook")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(data.x_train))[:n_samples]
    tuned = gym_finetune(
        model,
        data.x_train[pick],
        data.y_train[pick],
        intensity=intensity,
        seed=seed,
        verbose=0,
        **options,
    )

    def through(m, how):
        guarded = defended(m, how, intensity=intensity, seed=seed, scaled=scaled, variant=variant)
        return measure(
            lambda images: np.argmax(guarded.predict(images), 1),
            data.x_test,
            data.y_test,
            triggers,
            attack_triggers,
        )

    columns = {"intensive_only": through(model, "intensive")}
    log(f"original model, intensive inference: {_row_text(columns['intensive_only'])}")
    columns["finetuned_intensive"] = through(tuned, "intensive")
    log(f"fine-tuned, intensive inference:     {_row_text(columns['finetuned_intensive'])}")
    columns["finetuned_lightweight"] = through(tuned, "lightweight")
    return tuned, {
        "after": columns["finetuned_lightweight"],
        "columns": columns,
        "n_samples": int(len(pick)),
    }


def run_gangsweep(job):
    """GangSweep patching with the flagged labels' generators (label -> generator)."""
    from mitigation.gangsweep_patching import patch
    from nc_tf.gangsweep import generate, stamp

    model, data, generators, intensity = job.model, job.data, job.generators, job.intensity
    tuned, history = patch(
        model,
        data.x_train,
        data.y_train,
        generators,
        intensity=intensity,
        seed=job.seed,
        **job.options,
    )
    # Share of test images (not already of the label) that x + G(x) sends to the
    # label, before and after; each label's perturbed images are made once.
    before, after = {}, {}
    for label, generator in generators.items():
        x = data.x_test[data.y_test != label]
        perturbed = stamp(x, generate(generator, x))
        for rates, m in ((before, model), (after, tuned)):
            rates[str(label)] = float(np.mean(predict_labels(m, perturbed, intensity) == label))
    job.log(
        "generated perturbations' success, before -> after: "
        + ", ".join(f"label {k}: {before[k]:.4f} -> {after[k]:.4f}" for k in before)
    )
    return tuned, {
        "history": history,
        "labels": sorted(int(k) for k in generators),
        "generated_success_before": before,
        "generated_success_after": after,
    }


def _row_text(row):
    parts = []
    for key, value in row.items():
        if isinstance(value, list):
            if value:
                parts.append(f"{key} " + "/".join(f"{v:.4f}" for v in value))
        else:
            parts.append(f"{key} {value:.4f}")
    return ", ".join(parts)
