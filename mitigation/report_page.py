"""The pieces of an `nc-tf report` page: its constants, sections, numbers and inline images.

Every picture becomes a downscaled PNG inside the page (a base64 `data:` URI);
figures are drawn on matplotlib's Agg canvas.
"""

import base64
import collections
import json
import os
import re
from io import BytesIO

import numpy as np

from nc_tf.io import open_image

MITIGATION = "mitigation.json"
TEMPLATE = "report.html.j2"
# The page's <meta name="generator">: marks a page that `scan --report` may replace.
GENERATOR = "nc-tf report"
KINDS = ("neural-cleanse", "partial", "gangsweep", "mitigation")
# The sections of each folder kind, in page order (`gym-columns` only for --method gym).
SECTIONS = {
    "neural-cleanse": ("gallery", "norm-plot", "grad-cam", "activations"),
    "partial": ("gallery", "norm-plot", "grad-cam", "activations"),
    "gangsweep": ("persistence", "vd-scatter", "gallery", "grad-cam", "activations"),
    "mitigation": ("before-after", "curves", "gym-columns"),
}
# The `nc-tf report` options `make_report` takes by keyword, named as on the command line.
REPORT_OPTIONS = (
    "intensity",
    "attack",
    "clean_model",
    "trust_model",
    "force",
    "x_key",
    "y_key",
    "limit",
)
N_EXAMPLES = 3  # images in the Grad-CAM grid
N_ACTIVATION = 300  # clean images (and their stamped twins) of the activation analysis
N_PAIR_CARDS = 24  # partial scans: pairs in the gallery (flagged first, then by score)
THUMB_SIDE = 96  # longest side of a gallery image, pixels
SAMPLES_SIDE = 320  # longest side of a GangSweep samples strip
CURVE_SIDE = 640  # longest side of a mitigation curve
DPI = 80
RED, GREY, BLUE = "#c0392b", "#95a5a6", "#2c6fbb"
NORM_NAMES = {"l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}
NORM_SOURCES = {"float": "float sums (results.json)", "png": "8-bit mask PNGs (the reference's)"}
# Captions of the PNGs `mitigate` writes; other PNGs are captioned by their file name.
CURVES = {
    "filter_curve_reversed.png": "Input filter: false negatives (reversed trigger) against "
    "false positives",
    "filter_curve_original.png": "Input filter: false negatives (original trigger) against "
    "false positives",
    "pruning.png": "Neuron pruning: accuracy and attack success against the share pruned",
    "linf_norms.png": "ℓ∞ pruning: activation norms of clean and stamped images",
    "linf_sweep.png": "ℓ∞ pruning: accuracy and attack success across thresholds",
}
ROWS = {
    "accuracy": "clean accuracy",
    "asr_original": "attack success, original trigger",
    "asr_reversed": "attack success, reversed trigger",
    "asr_scan_triggers": "attack success, the scan's triggers",
    "fpr": "filter: clean inputs flagged (FPR)",
    "fnr_reversed": "filter: stamped inputs missed (FNR), reversed trigger",
    "fnr_original": "filter: stamped inputs missed (FNR), original trigger",
}
GYM_COLUMNS = (
    ("intensive_only", "original model, intensive inference"),
    ("finetuned_intensive", "fine-tuned, intensive inference"),
    ("finetuned_lightweight", "fine-tuned, lightweight inference"),
)
_PAIR_KEY = re.compile(r"\d+->\d+")
_SAFE_PREFIX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

Folder = collections.namedtuple("Folder", "path kind record")
Folder.__doc__ = "An output folder given to the report: its path, kind (`KINDS`) and record."
Inputs = collections.namedtuple("Inputs", "model clean x y intensity attack")


# ------------------------------------------------------------- pieces of a page
def _section(key, title, text=None, notices=(), figures=(), tables=(), cards=()):
    return {
        "key": key,
        "title": title,
        "text": text,
        "notices": list(notices),
        "figures": list(figures),
        "tables": list(tables),
        "cards": list(cards),
    }


def _number(value, digits=4):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return "—" if value is None else str(value)
    value = float(value) + 0.0  # no "-0.0000"
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


def _value_text(value, digits=None):
    """Short text of a recorded value: numbers to 4 significant digits (or `digits` decimals),
    lists of numbers joined, anything else as JSON."""
    if value is None or (isinstance(value, list) and not value):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "n/a"
        return f"{float(value):.4g}" if digits is None else f"{float(value):.{digits}f}"
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return " / ".join(_value_text(v, digits) for v in value)
    if isinstance(value, str):
        return value
    text = json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= 300 else text[:297] + "..."


def _figure(width, height):
    """A matplotlib figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure_uri(fig):
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return _data_uri(buffer.getvalue())


def _data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _file_uri(path, side):
    """A folder's image as a PNG data URI, downscaled to `side`; None if missing or unreadable."""
    from PIL import Image

    if path is None or not os.path.isfile(path):
        return None
    try:
        with open_image(path, "figure", os.path.dirname(os.path.abspath(path))) as image:
            image.load()
            if image.mode not in ("L", "RGB", "RGBA"):
                image = image.convert("RGBA")
            if max(image.size) > side:
                image.thumbnail((side, side), Image.Resampling.LANCZOS)
            buffer = BytesIO()
            image.save(buffer, format="PNG", optimize=True)
    except Exception:  # PIL raises many types for damaged or hostile images
        return None
    return _data_uri(buffer.getvalue())


def _settings_rows(mapping, skip=()):
    return [(str(k), _value_text(v)) for k, v in mapping.items() if k not in skip]
