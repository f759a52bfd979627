"""`nc-tf report`: one self-contained HTML page about a model and its scan and mitigation folders.

The page is for the person who decides whether to ship a model: a verdict
banner (flagged labels, anomaly index, threshold, the model's sha256, the
data, the settings, the clean accuracy on the data), then one part per
folder given. Every picture is a PNG inside the page (a base64 `data:`
URI), downscaled, so the file reads offline and can be mailed; nothing in it
refers to the network and it runs no script.

| folder kind (told by its files) | its sections (`SECTIONS`) |
| --- | --- |
| Neural Cleanse scan (`results.json`) | gallery, norm plot, Grad-CAM, activations |
| partial scan (`results.json`, `partial`) | the same, per (source, target) pair |
| GangSweep scan (`results.json`, gangsweep) | persistence, V/D, gallery, Grad-CAM, activations |
| mitigation (`mitigation.json`) | before/after, curves, GYM's column groups (gym only) |

The Grad-CAM grid is Cheng et al.'s Fig. 2 (`nc_tf.gradcam.grad_cam`):
models {backdoored, vanilla} x inputs {clean, original trigger, reversed
trigger, both} x labels {true, target}, for a few images that the flagged
label's trigger should send to it. The activation maps and the ℓp table are
their Fig. 3 and §4 (`mitigation.activation_analysis`). The original trigger
needs the attack (`attack.json`), the vanilla rows a clean model; without
them the page shows what it can and says what is missing.

The page is rendered by Jinja2 with autoescaping from
`mitigation/templates/report.html.j2`; the figures are drawn on matplotlib's
Agg canvas.
"""

import os

import numpy as np

from mitigation.report_page import (  # noqa: F401  (public here too)
    GENERATOR,
    KINDS,
    MITIGATION,
    N_EXAMPLES,
    REPORT_OPTIONS,
    SECTIONS,
    TEMPLATE,
    Folder,
    Inputs,
    _number,
)
from mitigation.report_parts import _gangsweep_part, _mitigation_part, _scan_part
from nc_tf import io
from nc_tf.scan_folder import RESULTS, method_of, read_scan_record


# ---------------------------------------------------------------- the boundary
def folder_kind(path):
    """The kind of an nc-tf output folder, told by its files, and the record it holds.

    Args:
        path: a folder written by `nc-tf scan` (any method) or `nc-tf mitigate`.

    Returns:
        a `Folder`: `kind` is `"neural-cleanse"`, `"partial"`, `"gangsweep"`
        (a `results.json`) or `"mitigation"` (a `mitigation.json`).

    Raises:
        FileNotFoundError: `path` is not a folder.
        ValueError: the folder holds neither file, or a damaged one.

    Example:

    >>> folder_kind("runs/scan").kind  # doctest: +SKIP
    'neural-cleanse'
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        what = (
            f"{path} is a file, not a folder" if os.path.exists(path) else f"No such folder: {path}"
        )
        raise FileNotFoundError(
            f"{what}; pass folders written by `nc-tf scan` or `nc-tf mitigate`."
        )
    if os.path.isfile(os.path.join(path, RESULTS)):
        record = read_scan_record(path)
        return Folder(path, "partial" if "partial" in record else method_of(record), record)
    if os.path.isfile(os.path.join(path, MITIGATION)):
        record = io.read_json(os.path.join(path, MITIGATION), "mitigation report")
        if not (
            isinstance(record, dict)
            and isinstance(record.get("method"), str)
            and all(isinstance(record.get(k), dict) for k in ("before", "after"))
        ):
            raise ValueError(
                f"not a mitigation folder: {os.path.join(path, MITIGATION)} is not an nc-tf "
                "mitigation report (no method, before and after); pass a folder written by "
                "`nc-tf mitigate`."
            )
        return Folder(path, "mitigation", record)
    raise ValueError(
        f"{path} is neither a scan folder ({RESULTS}) nor a mitigation folder ({MITIGATION}); "
        "pass folders written by `nc-tf scan` or `nc-tf mitigate`."
    )


def check_report_path(path, force=False, own=False):
    """Returns `path` if the report may be written there, else raises (nothing is written).

    Args:
        path: the HTML file to write; its name must end in `.html` or `.htm`.
        force: replace an existing file. Defaults to `False`.
        own: replace an existing file only if it is a page this module
            wrote (`scan --report` in a resumed scan folder), and accept a
            folder that does not exist yet (the scan creates it). Defaults
            to `False`.

    Returns:
        `path` as a string.

    Raises:
        ValueError: the name does not end in `.html`.
        FileExistsError: the file exists (or is a folder).
        FileNotFoundError: its folder does not exist.

    Example:

    >>> check_report_path("report.html", force=True)
    'report.html'
    """
    path = os.fspath(path)
    if not path.lower().endswith((".html", ".htm")):
        raise ValueError(f"The report is an HTML page; give --out an .html name, got {path!r}.")
    if os.path.isdir(path):
        raise FileExistsError(f"{path} is a folder; --out needs an .html file name.")
    if os.path.exists(path) and not force and not (own and _is_own_report(path)):
        raise FileExistsError(
            f"{path} already exists"
            + (" and nc-tf did not write it; move it away or drop --report." if own else "")
            + ("" if own else "; choose another --out or pass --force to overwrite it.")
        )
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        io.check_out_dir(folder, resume=True)  # writable, before any work
    elif not own:
        raise FileNotFoundError(
            f"The folder of --out {path} does not exist; create it first or choose another --out."
        )
    return path


def _is_own_report(path):
    try:
        io.check_input_file(path, "report")
        with open(path, "rb") as f:
            head = f.read(4096)
    except (OSError, ValueError):
        return False
    return f'<meta name="generator" content="{GENERATOR}">'.encode() in head


def make_report(
    dirs,
    model,
    dataset,
    out,
    intensity=None,
    attack=None,
    clean_model=None,
    trust_model=False,
    force=False,
    x_key=None,
    y_key=None,
    limit=None,
):
    """Loads a model, its data and optional inputs from files, and writes the report page.

    What `nc-tf report` runs. Everything is checked before the model is
    loaded: the page's path (`check_report_path`) and every folder's kind
    (`folder_kind`). Models are loaded by `nc_tf.safe_loading.load_model`,
    which refuses files that can run code unless `trust_model`.

    Args:
        dirs: scan and mitigation folders (see `folder_kind`).
        model: the model file the page is about.
        dataset: anything `nc_tf.datasets.load_data` accepts; its test
            split is the data (the split a scan uses).
        out: the HTML file to write.
        intensity: the model's intensity range. Defaults to `None`: the
            first folder's, else the attack's, else `"raw"`.
        attack: an `attack.json` of `nc-tf inject`: the original trigger's
            Grad-CAM column and activations. Defaults to `None`.
        clean_model: a vanilla (clean) model file: the Grad-CAM grid's
            vanilla rows. Defaults to `None`.
        trust_model: allow model files whose layers run code. Defaults to
            `False`.
        force: replace an existing `out`. Defaults to `False`.
        x_key: image array name in an .h5/.npz file. Defaults to `None`.
        y_key: label array name in an .h5/.npz file. Defaults to `None`.
        limit: use only the first N images. Defaults to `None` (all).

    Returns:
        the summary dict of `write_report`.

    Example:

    >>> make_report(["runs/scan"], "runs/badnets/model.keras", "mnist",
    ...             "report.html")["report"]  # doctest: +SKIP
    'report.html'
    """
    from nc_tf import datasets
    from nc_tf.safe_loading import load_model

    check_report_path(out, force)
    for path in dirs:
        folder_kind(path)
    triggers, attack_intensity = [], None
    if attack is not None:
        from injection import load_triggers

        payload = io.read_json(attack, "attack file")
        triggers = load_triggers(payload, name=attack)
        attack_intensity = payload.get("intensity")
    the_model = load_model(model, trust_model=trust_model)
    vanilla = None if clean_model is None else load_model(clean_model, trust_model=trust_model)
    x, y = datasets.load_data(dataset, "test", x_key, y_key, limit=limit)
    for trigger in triggers:
        if tuple(trigger.image_shape) != tuple(x.shape[1:]):
            raise ValueError(
                f"The attack's trigger is for images {tuple(trigger.image_shape)}, the data set "
                f"has {tuple(x.shape[1:])}; pass the attack.json made for this data."
            )
    return write_report(
        dirs,
        the_model,
        x,
        y,
        out,
        intensity=intensity,
        attack_triggers=triggers,
        clean_model=vanilla,
        dataset=str(dataset),
        model_path=model,
        clean_model_path=clean_model,
        attack_path=attack,
        attack_intensity=attack_intensity,
        force=force,
    )


def write_report(
    dirs,
    model,
    x,
    y,
    out,
    intensity=None,
    attack_triggers=(),
    clean_model=None,
    dataset=None,
    model_path=None,
    clean_model_path=None,
    attack_path=None,
    attack_intensity=None,
    force=False,
    own=False,
):
    """Writes the report page of a model (in memory) and its folders, atomically.

    Args:
        dirs: scan and mitigation folders (see `folder_kind`).
        model: the Keras classifier the page is about.
        x: raw test images, NHWC in [0, 255].
        y: their labels (integers or one-hot).
        out: the HTML file to write (see `check_report_path`).
        intensity: the model's intensity range. Defaults to `None`: the
            first folder's, else `attack_intensity`, else `"raw"`.
        attack_triggers: the attack's `injection.Trigger`s. Defaults to `()`.
        clean_model: a vanilla Keras model. Defaults to `None`.
        dataset: the data's name, shown on the page. Defaults to `None`.
        model_path: the model's file, shown on the page. Defaults to `None`.
        clean_model_path: the vanilla model's file. Defaults to `None`.
        attack_path: the attack file, shown on the page. Defaults to `None`.
        attack_intensity: the intensity the attack recorded. Defaults to `None`.
        force: replace an existing `out`. Defaults to `False`.
        own: replace `out` only if this module wrote it (`check_report_path`).
            Defaults to `False`.

    Returns:
        dict with `report` (the path), `bytes` (its size), `accuracy` (the
        clean accuracy on `x`) and `folders` (each `dir`, `kind`, `flagged`).

    Raises:
        ValueError: a scan folder holds the scan of another model, or the
            data does not fit the model.

    Example:

    >>> write_report(["runs/scan"], model, x_test, y_test, "report.html")  # doctest: +SKIP
    """
    from nc_tf.datasets import labels_to_int
    from nc_tf.metrics import accuracy, predict_labels
    from nc_tf.models import check_model_data
    from nc_tf.preprocess import check_intensity

    out = check_report_path(out, force, own)
    folders = [folder_kind(path) for path in dirs]
    if not folders:
        raise ValueError("The report needs at least one scan or mitigation folder.")
    y = labels_to_int(y)
    name = f"data set {dataset!r}" if dataset else "the data"
    check_model_data(model, x, y, name=name)
    if clean_model is not None:
        check_model_data(clean_model, x, y, name=name)
    recorded = [_recorded_intensity(f) for f in folders] + [attack_intensity]
    intensity = intensity or next((v for v in recorded if v), "raw")
    check_intensity(intensity)
    _check_scanned_model(folders, model, model_path)
    x = np.asarray(x)
    inputs = Inputs(model, clean_model, x, y, intensity, list(attack_triggers))
    acc = accuracy(predict_labels(model, x, intensity), y)
    clean_acc = (
        None if clean_model is None else accuracy(predict_labels(clean_model, x, intensity), y)
    )
    parts = [_folder_part(i, folder, inputs) for i, folder in enumerate(folders)]
    page = {
        "generator": GENERATOR,
        "title": f"nc-tf report: {os.path.basename(str(model_path or model.name))}",
        "headline": _headline(parts),
        "status": _overall(parts),
        "facts": _facts(
            inputs, folders, acc, clean_acc, dataset, model_path, clean_model_path, attack_path
        ),
        "folders": parts,
    }
    _write_atomically(out, render(page))
    return {
        "report": out,
        "bytes": os.path.getsize(out),
        "accuracy": acc,
        "folders": [{"dir": p["dir"], "kind": p["kind"], "flagged": p["flagged"]} for p in parts],
    }


def _write_atomically(path, text):
    """Writes `text` atomically (`nc_tf.io.atomic_file`)."""
    with io.atomic_file(path, encoding="utf-8") as f:
        f.write(text)


def render(page):
    """The HTML text of a page dict (Jinja2, autoescaped: every value is text, never markup)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(page=page)


def _recorded_intensity(folder):
    record = folder.record
    value = record.get("intensity") if folder.kind == "mitigation" else None
    value = value or (record.get("settings") or {}).get("intensity")
    return value if isinstance(value, str) else None


def _check_scanned_model(folders, model, model_path):
    from nc_tf.identity import weights_sha256

    digest = None
    for folder in folders:
        ident = folder.record.get("identity")
        scanned = ident.get("weights_sha256") if isinstance(ident, dict) else None
        if folder.kind == "mitigation" or not isinstance(scanned, str):
            continue
        digest = digest or weights_sha256(model)
        if scanned != digest:
            raise ValueError(
                f"{folder.path} holds the scan of another model (weights sha256 {scanned[:12]}), "
                f"not of {model_path or 'this model'} ({digest[:12]}); pass the model that was "
                "scanned, or scan this one first."
            )


# ------------------------------------------------------------------ the banner
def _headline(parts):
    flagged = [p for p in parts if p["kind"] != "mitigation" and p["flagged"]]
    scans = [p for p in parts if p["kind"] != "mitigation"]
    if flagged:
        names = ", ".join(dict.fromkeys(str(k) for p in flagged for k in p["flagged_names"]))
        return f"Backdoor detected: {names}"
    if scans and all(p["status"] == "good" for p in scans):
        return "No backdoor detected"
    if scans:
        return "No verdict: too few labels scanned"
    return "; ".join(p["headline"] for p in parts)


def _overall(parts):
    statuses = [p["status"] for p in parts if p["kind"] != "mitigation"] or [
        p["status"] for p in parts
    ]
    return "bad" if "bad" in statuses else "good" if "good" in statuses else "none"


def _facts(inputs, folders, acc, clean_acc, dataset, model_path, clean_path, attack_path):
    from nc_tf.identity import array_digest, weights_sha256
    from nc_tf.safe_loading import loaded_sha256

    x, y = inputs.x, inputs.y
    digest = array_digest(x, np.asarray(y, np.int64))
    data = f"{dataset or 'in memory'}: {len(x)} test images {_shape_text(x.shape[1:])}"
    for folder in folders:
        ident = folder.record.get("identity")
        scanned = ident.get("data_sha256") if isinstance(ident, dict) else None
        if folder.kind != "mitigation" and isinstance(scanned, str):
            same = "the" if scanned == digest else "not the"
            data += f"; {same} images {folder.path} was scanned on"
    facts = [
        ("model", str(model_path or "(in memory)")),
        ("model sha256", loaded_sha256(inputs.model) or "(not loaded from a file)"),
        ("weights sha256", weights_sha256(inputs.model)),
        ("data", data),
        ("data sha256", digest),
        ("intensity", inputs.intensity),
        ("clean accuracy on this data", _number(acc)),
    ]
    if inputs.clean is not None:
        sha = loaded_sha256(inputs.clean) or "not loaded from a file"
        facts.append(("vanilla model", f"{clean_path or '(in memory)'} (sha256 {sha})"))
        facts.append(("vanilla clean accuracy", _number(clean_acc)))
    if inputs.attack:
        targets = ", ".join(str(t.target) for t in inputs.attack)
        facts.append(("attack", f"{attack_path or '(in memory)'}: trigger(s) to label {targets}"))
    return facts


def _shape_text(shape):
    return "(" + " x ".join(str(int(v)) for v in shape) + ")"


def _folder_part(index, folder, inputs):
    builders = {
        "neural-cleanse": _scan_part,
        "partial": _scan_part,
        "gangsweep": _gangsweep_part,
        "mitigation": _mitigation_part,
    }
    part = {
        "id": f"folder-{index + 1}",
        "dir": folder.path,
        "kind": folder.kind,
        "notices": [],
        "flagged": [],
        "flagged_names": [],
    }
    part.update(builders[folder.kind](folder, inputs))
    recorded = _recorded_intensity(folder)
    if recorded and recorded != inputs.intensity:
        part["notices"].append(
            f"{folder.path} was made with intensity {recorded}, this page uses "
            f"{inputs.intensity}; pass --intensity {recorded} unless that was a mistake."
        )
    return part
