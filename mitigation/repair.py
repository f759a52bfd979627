"""Iterative repair (NC §VII-D): scan, unlearn the flagged triggers, scan again.

A model with several triggers for one label may reveal them one at a time:
after unlearning the first reversed trigger, the next scan finds another.
Each round scans the current model, stops when nothing is flagged, else
unlearns every trigger found so far and saves the round's model. With an
`out_dir` each round lives in `out_dir/round_K/` (`scan/` folder and
`model.keras`), so an interrupted repair resumes where it stopped.
"""

import os

from mitigation.unlearning import unlearn
from nc_tf import io
from nc_tf.metrics import evaluate_backdoor
from nc_tf.models import load_model
from nc_tf.scan import scan, scan_triggers


def repair(model, data, rounds=3, out_dir=None, intensity="raw", seed=0, scan_options=None,
           attack_triggers=(), unlearn_options=None, verbose=True):
    """Repeats scan -> unlearn until nothing is flagged or `rounds` are done.

    Args:
        model: a Keras classifier (not modified).
        data: a `mitigation.mitigate.MitigationData`: scans use the
            validation split, unlearning the training split.
        rounds: the most unlearning rounds. Defaults to `3` (the paper's
            nine-trigger experiment needed three).
        out_dir: folder holding one `round_K/` per round (resumable).
            Defaults to `None` (nothing written, nothing resumable).
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: random seed of scans and unlearning. Defaults to `0`.
        scan_options: keyword arguments of `nc_tf.scan.scan` (`preset`,
            `steps`, ...). Defaults to `None`.
        attack_triggers: original triggers, reported per round when known.
            Defaults to `()`.
        unlearn_options: keyword arguments of `unlearn`. Defaults to `None`.
        verbose: print the scans' progress and reports. Defaults to `True`.

    Returns:
        `(repaired_model, details)`: `details["rounds"]` lists, per round,
        the anomaly index, the flagged labels and (when known) the original
        triggers' attack success after that round's unlearning.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    scan_options = dict(scan_options or {})
    unlearn_options = dict(unlearn_options or {})
    found, history, current = [], [], model
    for k in range(rounds + 1):
        folder = os.path.join(out_dir, f"round_{k}") if out_dir else None
        scan_dir = os.path.join(folder, "scan") if folder else None
        record = scan(current, data.x_val, data.y_val, out_dir=scan_dir, intensity=intensity,
                      seed=seed, progress=verbose, verbose=verbose, **scan_options)
        outlier = record["outlier"]
        entry = {"round": k, "anomaly_index": outlier["anomaly_index"],
                 "flagged": [label for label, _ in outlier["flagged"]]}
        history.append(entry)
        if not entry["flagged"] or k == rounds:
            break
        if scan_dir:
            new = scan_triggers(scan_dir, entry["flagged"])
        else:
            new = [_trigger(record, label) for label in entry["flagged"]]
        found += new
        saved = os.path.join(folder, "model.keras") if folder else None
        if saved and os.path.exists(saved):
            current = load_model(saved)
        else:
            current, _ = unlearn(current, data.x_train, data.y_train, found, intensity=intensity,
                                 seed=seed + k, **unlearn_options)
            if saved:
                io.save_model(current, saved)
        if attack_triggers:
            ev = evaluate_backdoor(current, data.x_test, data.y_test, attack_triggers, intensity)
            entry["after_unlearning"] = {"accuracy": ev["accuracy"], "asr_original": [
                p["attack_success_rate"] for p in ev["per_trigger"]]}
    return current, {"rounds": history, "triggers_unlearned": [t.target for t in found]}


def _trigger(record, label):
    from injection.triggers import Trigger

    mask, pattern = record["triggers"][str(label)]
    return Trigger(mask.clip(0, 1), pattern.clip(0, 255), int(label))
