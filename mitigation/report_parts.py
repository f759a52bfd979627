"""The parts of an `nc-tf report` page, one per folder kind.

A Neural Cleanse or partial scan: gallery, norm plot, evidence; a GangSweep
scan: persistence, V/D scatter, gallery, evidence; a mitigation folder:
before/after, curves, GYM's column groups.
"""

import os

import numpy as np

from mitigation.report_evidence import _EVIDENCE, _evidence
from mitigation.report_page import (
    _PAIR_KEY,
    _SAFE_PREFIX,
    BLUE,
    CURVE_SIDE,
    CURVES,
    GREY,
    GYM_COLUMNS,
    N_PAIR_CARDS,
    NORM_SOURCES,
    RED,
    ROWS,
    SAMPLES_SIDE,
    THUMB_SIDE,
    _figure,
    _figure_uri,
    _file_uri,
    _number,
    _section,
    _settings_rows,
    _value_text,
)
from nc_tf.scan_folder import mask_png_path


# ---------------------------------------------------------------- scan folders
def _nc_verdict(folder):
    """The verdict of a Neural Cleanse or partial scan folder, or None with fewer than 3 labels."""
    from nc_tf.detect import detect, norm_source_of, png_mask_norms

    record = folder.record
    keys = _scored_keys(folder)
    if len(keys) < 3:
        return None, None
    source = None
    if folder.kind == "neural-cleanse":
        source = norm_source_of(record)
        if source == "png":
            lacking = [k for k in keys if "l1_norm_png" not in record["labels"][k]]
            paths = {k: _png_path(folder, k, "mask") for k in lacking}
            if all(p is not None and os.path.isfile(p) for p in paths.values()):
                for key, norm in png_mask_norms(paths, root=folder.path).items():
                    record["labels"][key]["l1_norm_png"] = norm
            else:
                source = "float"
    with np.errstate(invalid="ignore"):  # a MAD of 0 gives infinite indices, as the scan's did
        return detect(record, verbose=False, norm_source=source), source


def _scored_keys(folder):
    """The label keys a scan judged: labels of a scan, pairs (with a score) of a partial scan."""
    labels = folder.record["labels"]
    if folder.kind == "partial":
        keys = [k for k, v in labels.items() if "score" in v and _PAIR_KEY.fullmatch(k)]
        return sorted(keys, key=lambda k: labels[k]["score"])
    return sorted((k for k in labels if (k.isascii() and k.isdigit())), key=int)


def _pair_name(key):
    return str(key).replace("->", " → ")


def _png_path(folder, key, kind):
    """A label's PNG in the folder, or None when the recorded prefix could leave the folder."""
    prefix = str(folder.record["settings"].get("prefix", "nc"))
    if not _SAFE_PREFIX.fullmatch(prefix) or ".." in prefix:
        return None
    return mask_png_path(folder.path, prefix, key, kind)


def _scan_part(folder, inputs):
    record = folder.record
    partial = folder.kind == "partial"
    verdict, source = _nc_verdict(folder)
    keys = _scored_keys(folder)
    field = "score" if partial else ("l1_norm_png" if source == "png" else "l1_norm")
    values = {k: float(record["labels"][k][field]) for k in keys}
    flagged = [str(k) for k, _ in verdict["flagged"]] if verdict else []
    title = "Partial scan" if partial else "Neural Cleanse scan"
    if verdict is None:
        status, text = "none", f"no verdict: {len(keys)} label(s) judged, the MAD test needs 3"
    elif flagged:
        names = ", ".join(_pair_name(k) if partial else f"label {k}" for k in flagged)
        status = "bad"
        text = (
            f"{names} flagged (anomaly index {verdict['anomaly_index']:.2f} > threshold "
            f"{verdict['threshold']:g})"
        )
    else:
        status = "good"
        text = (
            f"no {'pair' if partial else 'label'} flagged (anomaly index "
            f"{verdict['anomaly_index']:.2f} ≤ threshold {verdict['threshold']:g})"
        )
    settings = _settings_rows(record["settings"])
    if verdict is not None:
        settings += [
            ("median", _number(verdict["median"])),
            ("MAD (x 1.4826)", _number(verdict["mad"])),
            ("norms judged", "scores (L1 / source median)" if partial else NORM_SOURCES[source]),
        ]
    for key in ("clean_accuracy", "wall_time_s"):
        if key in record:
            settings.append((f"recorded {key}", _value_text(record[key])))
    sections = [
        _nc_gallery(folder, keys, flagged, values, verdict, field),
        _norm_plot(keys, values, flagged, verdict, partial, field),
    ]
    shown, note = _shown_key(keys, flagged, values, lower_is_worse=True, partial=partial)
    sections += _scan_evidence(folder, inputs, shown, note, partial)
    return {
        "title": f"{title}: {folder.path}",
        "status": status,
        "text": text,
        "settings": settings,
        "sections": sections,
        "flagged": flagged,
        "flagged_names": [_pair_name(k) if partial else f"label {k}" for k in flagged],
    }


def _shown_key(keys, flagged, values, lower_is_worse, partial=False):
    """The label the evidence is about: the first flagged, else the most anomalous one."""
    if flagged:
        return flagged[0], None
    if not keys:
        return None, "The folder holds no finished label, so there is nothing to show."
    key = (min if lower_is_worse else max)(keys, key=lambda k: values[k])
    name = _pair_name(key) if partial else f"label {key}"
    return key, (
        f"Nothing is flagged; the evidence below is for {name}, the most anomalous, to show "
        "what an unflagged label looks like."
    )


def _nc_gallery(folder, keys, flagged, values, verdict, field):
    partial = folder.kind == "partial"
    order = flagged + [k for k in keys if k not in flagged]
    notices = []
    if partial and len(order) > N_PAIR_CARDS:
        notices.append(
            f"{len(order) - N_PAIR_CARDS} of the {len(order)} pairs are left out: the flagged "
            f"pairs come first, then the {N_PAIR_CARDS - len(flagged)} smallest scores."
        )
        order = order[: max(N_PAIR_CARDS, len(flagged))]
    per_label = (verdict or {}).get("per_label", {})
    cards = []
    for key in order:
        images = []
        for kind in ("mask", "pattern", "fusion"):
            path = _png_path(folder, key, kind)
            images.append({"uri": _file_uri(path, THUMB_SIDE), "caption": kind})
        detail = f"{'score' if partial else 'L1'} {values[key]:.2f}"
        if str(key) in per_label:
            detail += f", anomaly index {per_label[str(key)]:+.2f}"
        cards.append(
            {
                "title": _pair_name(key) if partial else f"label {key}",
                "detail": detail,
                "flagged": key in flagged,
                "images": images,
            }
        )
    what = "pair" if partial else "label"
    return _section(
        "gallery",
        "Trigger gallery",
        f"The reversed trigger of every {what}: its mask, its pattern and their product "
        f"(what is stamped), flagged {what}s first, outlined in red.",
        notices=notices,
        cards=cards,
    )


def _norm_plot(keys, values, flagged, verdict, partial, field):
    if verdict is None:
        return _section(
            "norm-plot",
            "Mask norms",
            notices=["The MAD test needs at least 3 labels; there is nothing to plot."],
        )
    fig = _figure(max(6.5, 0.16 * len(keys) + 1.6), 3.4)
    ax = fig.subplots()
    positions = np.arange(len(keys))
    ax.bar(
        positions,
        [values[k] for k in keys],
        color=[RED if k in flagged else GREY for k in keys],
    )
    median, mad, threshold = verdict["median"], verdict["mad"], verdict["threshold"]
    line = median - threshold * mad
    ax.axhline(median, color="black", linewidth=1, label=f"median {median:.2f}")
    ax.axhline(
        line,
        color=RED,
        linestyle="--",
        linewidth=1,
        label=f"threshold: median - {threshold:g} x MAD = {line:.2f}",
    )
    if len(keys) <= 60:
        turn = 90 if partial and len(keys) > 8 else 0
        ax.set_xticks(positions, [_pair_name(k) for k in keys], fontsize=7, rotation=turn)
    else:
        ax.set_xticks([])
    ax.set_xlabel("(source → target) pair, by score" if partial else "label")
    ax.set_ylabel("score (L1 / source median)" if partial else f"mask L1 norm ({field})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    ax.set_ylim(bottom=min(0.0, line * 1.1))
    caption = (
        "One bar per label; red bars are flagged: below the median and more than "
        f"{threshold:g} MADs away (the MAD test of Neural Cleanse, the picture of the "
        "reference's analyze_pattern_norm_dist)."
    )
    return _section(
        "norm-plot",
        "Scores per pair" if partial else "Mask norms per label",
        figures=[{"uri": _figure_uri(fig), "caption": caption}],
    )


def _scan_evidence(folder, inputs, key, note, partial):
    """The Grad-CAM and activation sections of a Neural Cleanse or partial scan's label."""
    from nc_tf.detect import scan_triggers

    if key is None:
        return [_section(k, t, notices=[note]) for k, t in _EVIDENCE]
    try:
        trigger = scan_triggers(folder.path, [key])[0]
    except (FileNotFoundError, ValueError) as error:
        message = f"No reversed trigger to show: {error}"
        return [_section(k, t, notices=[message]) for k, t in _EVIDENCE]
    return _evidence(
        inputs,
        trigger.target,
        trigger.sources,
        trigger.apply,
        "reversed trigger",
        [note] if note else [],
        _pair_name(key) if partial else f"label {key}",
    )


# ----------------------------------------------------------- GangSweep folders
def _gangsweep_part(folder, inputs):
    from nc_tf.detect import detect

    record = folder.record
    keys = sorted((k for k in record["labels"] if (k.isascii() and k.isdigit())), key=int)
    with np.errstate(invalid="ignore"):  # a MAD of 0 gives infinite indices, as the scan's did
        verdict = detect(record, verbose=False) if len(keys) >= 3 else None
    flagged = [str(t) for t, _ in verdict["flagged"]] if verdict else []
    if verdict is None:
        status, text = "none", f"no verdict: {len(keys)} label(s) scanned, the test needs 3"
    elif flagged:
        status = "bad"
        text = (
            f"label {', '.join(flagged)} flagged (anomaly index {verdict['anomaly_index']:.2f} > "
            f"threshold {verdict['threshold']:g}, persistence ≥ "
            f"{verdict['persistence_threshold']:g})"
        )
    else:
        status = "good"
        text = (
            f"no label flagged (anomaly index {verdict['anomaly_index']:.2f}, threshold "
            f"{verdict['threshold']:g}, persistence ≥ {verdict['persistence_threshold']:g})"
        )
    settings = _settings_rows(record["settings"])
    if verdict is not None:
        settings.append(("statistic", verdict["statistic"]))
    ai = {k: (verdict["per_label"][k]["AI"] if verdict else 0.0) for k in keys}
    sections = [
        _persistence(record, keys, flagged, verdict),
        _vd_scatter(record, keys, flagged, verdict),
        _gangsweep_gallery(folder, keys, flagged, ai),
    ]
    shown, note = _shown_key(keys, flagged, ai, lower_is_worse=False)
    sections += _gangsweep_evidence(folder, inputs, shown, note)
    return {
        "title": f"GangSweep scan: {folder.path}",
        "status": status,
        "text": text,
        "settings": settings,
        "sections": sections,
        "flagged": flagged,
        "flagged_names": [f"label {k}" for k in flagged],
    }


def _persistence(record, keys, flagged, verdict):
    labels = record["labels"]
    threshold = verdict["persistence_threshold"] if verdict else None
    fig = _figure(max(6.5, 0.16 * len(keys) + 1.6), 2.8)
    ax = fig.subplots()
    positions = np.arange(len(keys))
    ax.bar(
        positions,
        [labels[k]["persistence"] for k in keys],
        color=[RED if k in flagged else GREY for k in keys],
    )
    if threshold is not None:
        ax.axhline(threshold, color=RED, linestyle="--", linewidth=1, label=f"gate {threshold:g}")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    ax.set_xticks(positions, keys, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("label")
    ax.set_ylabel("persistence")
    rows = []
    for k in keys:
        z = verdict["per_label"][k] if verdict else {}
        entry = labels[k]
        rows.append(
            {
                "cells": [
                    k,
                    _number(entry["persistence"]),
                    _number(entry["V"]),
                    _number(entry["D"]),
                    _number(z.get("Z_V")),
                    _number(z.get("Z_D")),
                    _number(z.get("AI")),
                    _number(entry.get("attack_success_rate")),
                    "yes" if k in flagged else "",
                ],
                "mark": k in flagged,
            }
        )
    table = {
        "caption": "Per label: persistence, shift variance V and distance D, their z-scores, "
        "the anomaly index and the share of images x + G(x) sends to the label.",
        "head": ["label", "persistence", "V", "D", "Z_V", "Z_D", "AI", "success", "flagged"],
        "rows": rows,
    }
    return _section(
        "persistence",
        "Persistence per label",
        "A label's generator is persistent when the perturbation it makes for one image still "
        "sends the other images of the same source to the label; only persistent labels can "
        "be flagged.",
        figures=[{"uri": _figure_uri(fig), "caption": "Persistence per label; red: flagged."}],
        tables=[table],
    )


def _vd_scatter(record, keys, flagged, verdict):
    labels = record["labels"]
    persistent = set(str(t) for t in (verdict or {}).get("persistent", []))
    fig = _figure(5.0, 3.8)
    ax = fig.subplots()
    for k in keys:
        v, d = labels[k]["V"], labels[k]["D"]
        colour = RED if k in flagged else BLUE if k in persistent else GREY
        ax.scatter(
            [v],
            [d],
            s=60 if k in flagged else 30,
            facecolors=colour if k in persistent else "none",
            edgecolors=colour,
        )
        ax.annotate(k, (v, d), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if verdict:
        ax.axvline(verdict["median_V"], color="black", linestyle=":", linewidth=1)
        ax.axhline(verdict["median_D"], color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("V: variance of the logit shift")
    ax.set_ylabel("D: distance of the logit shift")
    caption = (
        "One point per label (GangSweep, Fig. 8): a backdoor label's generator shifts the "
        "logits far (large D) and alike for every image (small V). Filled: persistent; red: "
        "flagged; dotted: the medians."
    )
    return _section(
        "vd-scatter",
        "Shift variance and distance",
        figures=[{"uri": _figure_uri(fig), "caption": caption}],
    )


def _gangsweep_gallery(folder, keys, flagged, ai):
    cards = []
    for key in flagged + [k for k in keys if k not in flagged]:
        files = {
            kind: os.path.join(folder.path, f"gangsweep_{kind}_label_{int(key)}.png")
            for kind in ("perturbation", "samples")
        }
        images = [
            {
                "uri": _file_uri(files["perturbation"], THUMB_SIDE),
                "caption": "mean G(x)",
            },
            {
                "uri": _file_uri(files["samples"], SAMPLES_SIDE),
                "caption": "x (top) and x + G(x)",
            },
        ]
        cards.append(
            {
                "title": f"label {key}",
                "detail": f"AI {ai[key]:+.2f}",
                "flagged": key in flagged,
                "images": images,
            }
        )
    return _section(
        "gallery",
        "Perturbations",
        "Each label's generator: its mean perturbation (stretched to full range) and a few "
        "images before and after it, flagged labels first.",
        cards=cards,
    )


def _gangsweep_evidence(folder, inputs, key, note):
    from nc_tf.gangsweep import generate, load_generators, stamp

    if key is None:
        return [_section(k, t, notices=[note]) for k, t in _EVIDENCE]
    try:
        generator = load_generators(folder.path, [int(key)])[int(key)]
    except ValueError as error:
        return [_section(k, t, notices=[f"No generator to show: {error}"]) for k, t in _EVIDENCE]

    def perturb(images):
        return stamp(images, generate(generator, images))

    return _evidence(
        inputs,
        int(key),
        None,
        perturb,
        "GangSweep perturbation",
        [note] if note else [],
        f"label {key}",
    )


# ---------------------------------------------------------- mitigation folders
def _mitigation_part(folder, inputs):
    from nc_tf.identity import weights_sha256

    record = folder.record
    method = record["method"]
    check = record.get("verification") if isinstance(record.get("verification"), dict) else {}
    verified = check.get("verified")
    status = {True: "good", False: "bad"}.get(verified, "none")
    before, after = record["before"], record["after"]
    text = f"--method {method}: clean accuracy {_number(before.get('accuracy'))} → "
    text += _number(after.get("accuracy"))
    if before.get("asr_original") or after.get("asr_original"):
        text += (
            f", attack success (original) {_value_text(before.get('asr_original'), 4)} → "
            f"{_value_text(after.get('asr_original'), 4)}"
        )
    text += f"; {check.get('status', 'no verification recorded')}"
    notices = []
    ident = record.get("identity") if isinstance(record.get("identity"), dict) else {}
    started = ident.get("weights_sha256")
    if isinstance(started, str) and started != weights_sha256(inputs.model):
        notices.append(
            f"This mitigation started from another model (weights sha256 {started[:12]}) than "
            "the one this page is about; its figures are that model's."
        )
    settings = [("method", method)] + _settings_rows(
        record, skip=("method", "before", "after", "details", "verification", "identity")
    )
    sections = [_before_after(record, notices), _curves(folder)]
    details = record.get("details") if isinstance(record.get("details"), dict) else {}
    if isinstance(details.get("columns"), dict):
        sections.append(_gym_columns(record, details["columns"]))
    return {
        "headline": f"Mitigation by {method}: {check.get('status', 'no verification recorded')}",
        "title": f"Mitigation: {folder.path}",
        "status": status,
        "text": text,
        "settings": settings,
        "sections": sections,
    }


def _before_after(record, notices):
    before, after = record["before"], record["after"]
    keys = list(dict.fromkeys(list(before) + list(after)))
    rows = [
        {
            "cells": [ROWS.get(k, k), _value_text(before.get(k), 4), _value_text(after.get(k), 4)],
            "mark": False,
        }
        for k in keys
    ]
    details = record.get("details") if isinstance(record.get("details"), dict) else {}
    was, now = details.get("generated_success_before"), details.get("generated_success_after")
    if isinstance(was, dict) and isinstance(now, dict):
        for label in was:
            rows.append(
                {
                    "cells": [
                        f"x + G(x) sent to label {label}",
                        _value_text(was.get(label), 4),
                        _value_text(now.get(label), 4),
                    ],
                    "mark": False,
                }
            )
    check = record.get("verification") if isinstance(record.get("verification"), dict) else {}
    text = f"Measured on {record.get('n_test', '?')} test images. Verification: "
    text += str(check.get("status", "not recorded"))
    if check.get("surviving"):
        text += f" (label(s) {_value_text(check['surviving'])} still have a small trigger)"
    table = {"caption": "", "head": ["", "before", "after"], "rows": rows}
    return _section("before-after", "Before and after", text + ".", notices, tables=[table])


def _curves(folder):
    names = sorted(
        n for n in os.listdir(folder.path) if n.lower().endswith(".png") and not n.startswith(".")
    )
    figures = [
        {
            "uri": _file_uri(os.path.join(folder.path, n), CURVE_SIDE),
            "caption": CURVES.get(n, n),
        }
        for n in names
    ]
    notices = (
        []
        if figures
        else [
            f"--method {folder.record['method']} draws no curves (only filter, prune and "
            "linf-prune do)."
        ]
    )
    return _section("curves", "The method's curves", notices=notices, figures=figures)


def _gym_columns(record, columns):
    groups = [("before", "no defence", record["before"])]
    groups += [(key, name, columns.get(key)) for key, name in GYM_COLUMNS]
    groups = [(k, n, g) for k, n, g in groups if isinstance(g, dict)]
    keys = list(dict.fromkeys(k for _, _, g in groups for k in g))
    rows = [
        {
            "cells": [ROWS.get(k, k)] + [_value_text(g.get(k), 4) for _, _, g in groups],
            "mark": False,
        }
        for k in keys
    ]
    table = {"caption": "", "head": [""] + [name for _, name, _ in groups], "rows": rows}
    return _section(
        "gym-columns",
        "GYM's column groups",
        "GYM (DeepSweep) as its Table 4 reports it: the model as it is, the original model "
        "behind the intensive input pipeline, and the fine-tuned model behind the intensive "
        "and the lightweight pipelines.",
        tables=[table],
    )
