"""Iterative repair (NC §VII-D): unlearn the reversed triggers, look for what survives, repeat.

A model may give its trigger away one piece at a time: the first reversed
trigger is often a fragment of the real one (3 of the 16 pixels of a
BadNets square), and unlearning the fragment can leave the rest working.
The repair therefore alternates unlearning and residue scans:

- round 0 is a scan of every label and its MAD test (or, with `triggers`,
  an existing scan's flagged labels), and the flagged triggers' pieces
  (`mitigation.peeling`): the rest of each trigger beyond the fragment;
- each round unlearns every trigger found so far, always from the original
  model, so accuracy does not drift over rounds;
- then `mitigation.verification.verify` reverses fresh triggers of the
  labels still flagged from the unlearned model, at a lower success
  threshold (50%), and judges them against control labels scanned the same
  way: a label stays flagged while its residual trigger is anomalous
  (index > 2), and its residual trigger joins the next round's unlearning.

The repair stops when no flagged label remains or after `rounds` unlearning
rounds. `focus=False` instead rescans every label at the scan's own
settings with a fresh MAD test each round (the paper's loop).

With an `out_dir` each round lives in `out_dir/round_K/` (`scan/` folder and
`model.keras`), so an interrupted repair resumes where it stopped.
"""

import os

from mitigation.peeling import trigger_pieces
from mitigation.unlearning import unlearn
from mitigation.verification import RESIDUAL_THRESHOLD, record_trigger, scan_reference, verify
from nc_tf import io
from nc_tf.metrics import evaluate_backdoor
from nc_tf.models import load_model
from nc_tf.scan import scan, scan_triggers

# Share of the unlearning data stamped when a trigger's pieces are removed
# (the paper's 0.2 is for one trigger; the pieces and their union share it).
PIECES_STAMP_RATIO = 0.4


def repair(
    model,
    data,
    rounds=3,
    out_dir=None,
    intensity="raw",
    seed=0,
    scan_options=None,
    attack_triggers=(),
    unlearn_options=None,
    focus=True,
    residual_threshold=RESIDUAL_THRESHOLD,
    verbose=True,
    triggers=None,
    labels=None,
    record=None,
    peel=True,
):
    """Repeats unlearn -> residue scan until no flagged label has a small trigger left.

    Args:
        model: a Keras classifier (not modified).
        data: a `mitigation.mitigate.MitigationData`: scans use the
            validation split, unlearning the training split.
        rounds: the most unlearning rounds; `1` is the paper's one-shot
            unlearning. Defaults to `3` (the paper's nine-trigger experiment
            needed three).
        out_dir: folder holding one `round_K/` per round (resumable).
            Defaults to `None` (nothing written, nothing resumable).
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: random seed; round K's scan and unlearning use `seed + K`.
            Defaults to `0`.
        scan_options: keyword arguments of `nc_tf.scan.scan` (`preset`,
            `restarts`, `steps`, ...). Defaults to `None`.
        attack_triggers: original triggers, reported per round when known
            (never used to repair). Defaults to `()`.
        unlearn_options: keyword arguments of `unlearn`. Defaults to `None`.
        focus: residue scans of the flagged labels only, judged against
            round 0's median and MAD (see the module docstring); `False`
            rescans all labels with a fresh MAD test. Defaults to `True`.
        residual_threshold: attack success a residue scan's trigger must
            reach. Defaults to `0.5`.
        verbose: print the scans' progress and reports. Defaults to `True`.
        triggers: reversed triggers of an existing scan: round 0 uses them
            instead of scanning. Defaults to `None` (round 0 scans).
        labels: with `triggers`: the labels that scan flagged. Defaults to
            `None` (the triggers' targets).
        record: with `triggers`: that scan's `results.json` dict, which
            peeling needs. Defaults to `None` (no peeling).
        peel: add the pieces of each flagged trigger (`mitigation.peeling`)
            before the first unlearning, and stamp 40% of the unlearning
            data instead of 20% (unless `unlearn_options` sets
            `stamp_ratio`). Defaults to `True`.

    Returns:
        `(repaired_model, details)`: `details["rounds"]` lists, per round,
        the labels scanned and their norms, the labels still flagged and
        (when known) the original triggers' attack success after that
        round's unlearning; `details["labels"]` are round 0's flagged
        labels and `details["peels"]` the peeling of each.

    Example:

    >>> data = split_data(x_train, y_train, x_test, y_test)  # doctest: +SKIP
    >>> fixed, details = repair(model, data, scan_options={"restarts": 3})  # doctest: +SKIP
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    scan_options = dict(scan_options or {})
    unlearn_options = dict(unlearn_options or {})
    folder = lambda k: os.path.join(out_dir, f"round_{k}") if out_dir else None  # noqa: E731
    scan_dir = lambda k: os.path.join(folder(k), "scan") if out_dir else None  # noqa: E731
    if triggers is None:
        record = scan(
            model,
            data.x_val,
            data.y_val,
            out_dir=scan_dir(0),
            intensity=intensity,
            seed=seed,
            progress=verbose,
            verbose=verbose,
            accept_low_accuracy=True,
            **scan_options,
        )
        labels = scan_reference(record) or []
        found = (
            scan_triggers(scan_dir(0), labels)
            if out_dir
            else [record_trigger(record, label) for label in labels]
        )
        history = [
            {
                "round": 0,
                "flagged": labels,
                "anomaly_index": record["outlier"]["anomaly_index"],
                "l1_norm": {
                    str(t.target): record["labels"][str(t.target)]["l1_norm"] for t in found
                },
            }
        ]
    else:
        found = list(triggers)
        if not found:
            raise ValueError("repair: triggers is empty; pass None to scan first.")
        labels = sorted({t.target for t in found}) if labels is None else [int(v) for v in labels]
        history = [{"round": 0, "flagged": labels, "from_scan": True}]
    peels = None
    if peel and found and record is not None and scan_reference(record) is not None:
        found, peels = trigger_pieces(
            model,
            data.x_val,
            data.y_val,
            found,
            record,
            intensity=intensity,
            seed=seed,
            verbose=verbose,
        )
        # the pieces share the stamped samples, so twice the paper's share is stamped
        unlearn_options.setdefault("stamp_ratio", PIECES_STAMP_RATIO)
    flagged, current = list(labels), model
    for k in range(1, rounds + 1):
        if not flagged:
            break
        saved = os.path.join(folder(k), "model.keras") if out_dir else None
        if saved and os.path.exists(saved):
            current = load_model(saved)
        else:
            current, _ = unlearn(
                model,
                data.x_train,
                data.y_train,
                found,
                intensity=intensity,
                seed=seed + k,
                **unlearn_options,
            )
            if saved:
                os.makedirs(folder(k), exist_ok=True)
                io.save_model(current, saved)
        entry = {"round": k, "unlearned": [t.target for t in found]}
        if attack_triggers:
            ev = evaluate_backdoor(current, data.x_test, data.y_test, attack_triggers, intensity)
            entry["after_unlearning"] = {
                "accuracy": ev["accuracy"],
                "asr_original": [p["attack_success_rate"] for p in ev["per_trigger"]],
            }
        history.append(entry)
        if k == rounds:
            break
        if focus:
            check = verify(
                current,
                data.x_val,
                data.y_val,
                flagged,
                intensity=intensity,
                seed=seed + k,
                residual_threshold=residual_threshold,
                scan_options=scan_options,
                out_dir=scan_dir(k),
                verbose=verbose,
            )
            flagged = [v for v in check["surviving"] if v in flagged]
            new = [check["triggers"][v] for v in flagged]
            entry.update(
                flagged=flagged,
                l1_norm={k_: r["l1_norm"] for k_, r in check["labels"].items()},
                anomaly_index={k_: r["anomaly_index"] for k_, r in check["labels"].items()},
            )
        else:
            rescan = scan(
                current,
                data.x_val,
                data.y_val,
                out_dir=scan_dir(k),
                intensity=intensity,
                seed=seed + k,
                progress=verbose,
                verbose=verbose,
                accept_low_accuracy=True,
                **scan_options,
            )
            flagged = scan_reference(rescan) or []
            new = [record_trigger(rescan, label) for label in flagged]
            entry.update(flagged=flagged, anomaly_index=rescan["outlier"]["anomaly_index"])
        found += new
    return current, {
        "rounds": history,
        "focus": bool(focus),
        "labels": labels,
        "peels": peels,
        "residual_threshold": residual_threshold if focus else None,
        "triggers_unlearned": [t.target for t in found],
    }
