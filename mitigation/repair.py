"""Iterative repair (NC §VII-D): scan, unlearn the flagged triggers, scan again.

A model may give its trigger away one piece at a time. On the BadNets MNIST
models the first reversed trigger covers 3 of the 16 pixels of the real
square; unlearning it leaves the other 13 working (attack success 45-48%),
but that residue only fires on about half of the inputs, so a rescan that
demands the scan's 95% success finds no small trigger and the repair would
stop too early. Rescans therefore hunt for the residue: they ask for a
trigger that reaches `residual_threshold` (50%) success.

Round 0 scans every label and runs the MAD test. Each later round unlearns
all reversed triggers found so far (always from the original model, so
accuracy does not drift over rounds) and rescans only the labels still
flagged, at the residual threshold. A label stays flagged while its residue
trigger is anomalous against round 0's median and MAD (index > 2): the
labels round 0 found clean are the reference, and unlearning leaves them
alone. The residue scan asks for less success than round 0 did, so this
leans towards another round: a label already found infected is unlearned
once more rather than left half-repaired. The repair stops when no flagged
label remains or after `rounds` unlearning rounds. `focus=False` instead rescans every label at the scan's own settings
with a fresh MAD test each round (the paper's loop).

With an `out_dir` each round lives in `out_dir/round_K/` (`scan/` folder and
`model.keras`), so an interrupted repair resumes where it stopped.
"""

import os

from mitigation.unlearning import unlearn
from nc_tf import io
from nc_tf.metrics import evaluate_backdoor
from nc_tf.models import load_model
from nc_tf.outlier import ANOMALY_THRESHOLD
from nc_tf.scan import scan, scan_triggers


def repair(model, data, rounds=3, out_dir=None, intensity="raw", seed=0, scan_options=None,
           attack_triggers=(), unlearn_options=None, focus=True, residual_threshold=0.5,
           verbose=True):
    """Repeats scan -> unlearn until no flagged label has a small trigger left.

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
            `restarts`, `steps`, ...). Defaults to `None`.
        attack_triggers: original triggers, reported per round when known.
            Defaults to `()`.
        unlearn_options: keyword arguments of `unlearn`. Defaults to `None`.
        focus: rescan only the flagged labels at the residual threshold and
            judge them against round 0's median and MAD (see the module
            docstring); `False` rescans all labels with a fresh MAD test.
            Defaults to `True`.
        residual_threshold: attack success a rescan's trigger must reach.
            Defaults to `0.5`.
        verbose: print the scans' progress and reports. Defaults to `True`.

    Returns:
        `(repaired_model, details)`: `details["rounds"]` lists, per round,
        the labels scanned and their norms, the labels still flagged and
        (when known) the original triggers' attack success after that
        round's unlearning.

    Example:

    >>> data = split_data(x_train, y_train, x_test, y_test)  # doctest: +SKIP
    >>> fixed, details = repair(model, data, scan_options={"restarts": 3})  # doctest: +SKIP
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    scan_options = dict(scan_options or {})
    unlearn_options = dict(unlearn_options or {})
    found, history, current, flagged, reference = [], [], model, None, None
    for k in range(rounds + 1):
        folder = os.path.join(out_dir, f"round_{k}") if out_dir else None
        scan_dir = os.path.join(folder, "scan") if folder else None
        if k == 0 or not focus:
            record = scan(current, data.x_val, data.y_val, out_dir=scan_dir, intensity=intensity,
                          seed=seed, progress=verbose, verbose=verbose, **scan_options)
            outlier = record["outlier"]
            flagged = [label for label, _ in outlier["flagged"]]
            entry = {"round": k, "anomaly_index": outlier["anomaly_index"], "flagged": flagged,
                     "l1_norm": {str(label): norm for label, norm in outlier["flagged"]}}
            reference = (outlier["median"], outlier["mad"])
        else:
            options = dict(scan_options, attack_succ_threshold=residual_threshold)
            record = scan(current, data.x_val, data.y_val, labels=flagged,
                          out_dir=scan_dir, intensity=intensity, seed=seed + k,
                          progress=verbose, verbose=False, **options)
            norms = {int(key): v["l1_norm"] for key, v in record["labels"].items()
                     if key.isdigit()}
            median, mad = reference
            index = {label: (median - n) / mad if mad > 0 else float("inf") * (n < median)
                     for label, n in norms.items()}
            flagged = [label for label in flagged if index[label] > ANOMALY_THRESHOLD]
            entry = {"round": k, "flagged": flagged,
                     "l1_norm": {str(label): n for label, n in norms.items()},
                     "anomaly_index": {str(label): v for label, v in index.items()}}
            if verbose:
                print(f"round {k}: residue triggers (round 0: median {median:.2f}, MAD "
                      f"{mad:.2f}) " + ", ".join(f"{label}: {norms[label]:.2f} (index "
                                                 f"{index[label]:.2f})" for label in sorted(norms))
                      + f"; still flagged: {flagged}")
        history.append(entry)
        if not flagged or k == rounds:
            break
        if scan_dir:
            new = scan_triggers(scan_dir, flagged)
        else:
            new = [_trigger(record, label) for label in flagged]
        found += new
        saved = os.path.join(folder, "model.keras") if folder else None
        if saved and os.path.exists(saved):
            current = load_model(saved)
        else:
            current, _ = unlearn(model, data.x_train, data.y_train, found, intensity=intensity,
                                 seed=seed + k, **unlearn_options)
            if saved:
                io.save_model(current, saved)
        if attack_triggers:
            ev = evaluate_backdoor(current, data.x_test, data.y_test, attack_triggers, intensity)
            entry["after_unlearning"] = {"accuracy": ev["accuracy"], "asr_original": [
                p["attack_success_rate"] for p in ev["per_trigger"]]}
    return current, {"rounds": history, "focus": bool(focus),
                     "residual_threshold": residual_threshold if focus else None,
                     "triggers_unlearned": [t.target for t in found]}


def _trigger(record, label):
    from injection.triggers import Trigger

    mask, pattern = record["triggers"][str(label)]
    return Trigger(mask.clip(0, 1), pattern.clip(0, 255), int(label))
