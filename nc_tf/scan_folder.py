"""The scan folder: one results file, per-label files, resumable.

Every detection method (Neural Cleanse `scan`, `partial_scan`,
`gangsweep_scan`) writes the same kind of folder through `ScanFolder`:

    out_dir/results.json   method, settings, identity, per-label results, verdict
    out_dir/...            per-label files (PNGs, arrays, weights), each written atomically

`results.json` is rewritten atomically after every finished label, so an
interrupted scan loses at most the labels in flight, and rerunning the same
scan on the same folder continues it. A folder is resumed only by a scan of
the same model and data (`nc_tf.identity`) with the same settings.
"""

import contextlib
import math
import os
import time

import numpy as np

from nc_tf import io
from nc_tf.identity import check_identity

RESULTS = "results.json"
NEURAL_CLEANSE = "neural-cleanse"

# The per-label fields each kind of scan must have in results.json.
_REQUIRED = {
    NEURAL_CLEANSE: ("l1_norm",),
    "partial": ("score",),
    "gangsweep": ("persistence", "V", "D"),
}


def method_of(record):
    """The detection method of a results dict: `"neural-cleanse"` (also partial) or `"gangsweep"`."""
    return record.get("method", NEURAL_CLEANSE)


def read_scan_record(scan_dir):
    """The `results.json` dict of a scan folder, checked to be one nc-tf wrote.

    Args:
        scan_dir: a folder written by `scan`, `partial_scan` or
            `gangsweep_scan`.

    Returns:
        the results dict.

    Raises:
        FileNotFoundError: the folder has no `results.json`.
        ValueError: "not a scan folder: ..." for a foreign or damaged file.

    Example:

    >>> read_scan_record("runs/scan")["outlier"]["flagged"]  # doctest: +SKIP
    [[7, 9.5]]
    """
    path = os.path.join(scan_dir, RESULTS)
    record = io.read_json(path, "scan results")
    problem = _record_problem(record)
    if problem:
        raise ValueError(
            f"not a scan folder: {path} is not nc-tf scan results ({problem}); pass "
            "a folder written by `nc-tf scan`, or choose another --out."
        )
    return record


def _record_problem(record):
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key in ("settings", "labels"):
        if not isinstance(record.get(key), dict):
            return f"no {key!r} object"
    partial = "partial" in record
    needed = (
        _REQUIRED["partial" if partial else method_of(record)]
        if method_of(record) in _REQUIRED
        else None
    )
    if needed is None:
        return f"unknown method {record.get('method')!r}"
    for key, entry in record["labels"].items():
        if not isinstance(entry, dict):
            return f"label {key!r} is not an object"
        if partial and "score" not in entry:
            continue  # a partial scan's intermediate group job
        for name in needed:
            value = entry.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"label {key!r} has no number {name!r}"
            if not math.isfinite(value) or abs(value) > 1e12:
                return f"label {key!r} has an impossible {name!r} ({value!r})"
        if not partial and not (str(key).isascii() and str(key).isdigit()):
            return f"label key {key!r} is not a label"
    return None


def file_key(key):
    """File-name form of a job key: `7` for a label, `3_to_7` for the job "3->7" (source 3, target 7)."""
    return str(key).replace("->", "_to_").replace(",", "-").replace(" ", "")


def settings_difference(old, new):
    """The sorted setting names whose values differ between two settings dicts (`model` ignored)."""
    keys = (set(old) | set(new)) - {"model"}
    return sorted(k for k in keys if old.get(k) != new.get(k))


def png_levels(image, truncate=False):
    """The 8-bit values a PNG of `image` (in [0, 255]) holds: rounded, or truncated.

    `truncate=True` is what the reference code's `dump_image` wrote (Keras
    `array_to_img(x, scale=False)` casts to uint8), so masks saved that way
    read back to the reference's norms (`png_l1_norm`).
    """
    image = np.clip(np.asarray(image, np.float32), 0, 255)
    return (image if truncate else np.rint(image)).astype(np.uint8)


def png_l1_norm(mask):
    """The L1 norm of a mask as the reference measured it: from its saved 8-bit PNG.

    The mask (in [0, 1]) is written as `mask * 255` truncated to 8 bits,
    read back as float32 / 255 and summed (the reference's
    `mad_outlier_detection.py`; its published 16.117647 is 4110 / 255).
    """
    levels = png_levels(np.asarray(mask, np.float32) * np.float32(255.0), truncate=True)
    return float(np.sum(levels.astype(np.float32) / np.float32(255.0)))


def save_png(path, image, truncate=False):
    """Writes an image in [0, 255] (`(H, W, C)`, C 1 or 3) as an 8-bit PNG, atomically.

    Args:
        path: the file to write.
        image: the image.
        truncate: truncate to 8 bits as the reference code did, instead of
            rounding (see `png_levels`). Defaults to `False`.
    """
    from PIL import Image

    arr = png_levels(image, truncate)
    arr = arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr
    with io.atomic_file(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG")


def tile(rows, gap=2, fill=128.0):
    """Tiles rows of equally shaped images `(n, H, W, C)` into one image, `gap`-pixel lines between.

    Args:
        rows: a list of image batches, one per row, all of the same shape.
        gap: pixels between tiles. Defaults to `2`.
        fill: the gap's value. Defaults to `128.0` (grey).

    Returns:
        float32 `(rows * (H + gap) - gap, n * (W + gap) - gap, C)`.
    """
    n, h, w, c = np.shape(rows[0])
    canvas = np.full((len(rows) * (h + gap) - gap, n * (w + gap) - gap, c), fill, np.float32)
    for r, images in enumerate(rows):
        for i, image in enumerate(images):
            canvas[r * (h + gap) : r * (h + gap) + h, i * (w + gap) : i * (w + gap) + w] = image
    return canvas


def save_arrays(path, **arrays):
    """Writes float32 arrays to an `.npz` file, atomically."""
    with io.atomic_file(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})


class ScanFolder:
    """A scan being written: its results dict, its folder, its progress and wall time.

    Use `ScanFolder.open` to create or resume one. With `path=None` nothing
    is read or written (an in-memory scan); the record, progress and wall
    time still work.

    Args:
        path: the folder, or `None`. Defaults to `None`.
        record: the results dict. Defaults to a dict with empty `labels`.

    Example:

    >>> folder = ScanFolder.open("runs/scan", {"settings": {}, "labels": {}})  # doctest: +SKIP
    >>> with folder.running(todo=3, desc="scan") as bar:  # doctest: +SKIP
    ...     folder.add_label("0", {"label": 0, "l1_norm": 12.0})
    """

    def __init__(self, path=None, record=None):
        self.path = path
        self.record = record if record is not None else {"labels": {}}
        self._start = None
        self._base = 0.0
        self._bar = None

    @classmethod
    def open(
        cls,
        path,
        record,
        force=False,
        keep=None,
        defaults=None,
        drop=(),
        hint="choose another --out to keep both, or rerun with the same settings to resume",
    ):
        """Creates the folder, or resumes the scan of the same method and settings in it.

        A folder holding another method's scan, a scan of another model or
        other data (`nc_tf.identity.check_identity`) or a scan with other
        settings is refused with the names of the settings that differ.

        Args:
            path: the folder, or `None` (nothing read or written).
            record: the new scan's results dict (`method` if not Neural
                Cleanse, `settings`, `identity`, empty `labels`).
            force: replace what the folder holds instead of resuming;
                `None` when the caller offers no such choice (messages then
                do not mention it). Defaults to `False`.
            keep: `keep(path, key)` is true when a finished label's files
                are all there; labels without them run again. Defaults to
                `None` (all kept).
            defaults: values of settings that a folder may lack, compared
                as if recorded. Defaults to `None`.
            drop: recorded setting names that are not compared (judging
                settings). Defaults to `()`.
            hint: what the user can do about different settings. Defaults
                to choosing another folder or rerunning the same settings.

        Returns:
            the `ScanFolder`; its `record` is the previous scan's (labels
            kept by `keep`) with today's settings and identity, or `record`.
        """
        if path is None:
            return cls(None, record)
        if force or not os.path.exists(os.path.join(path, RESULTS)):
            io.prepare_out_dir(
                path,
                force=bool(force),
                hint="empty it"
                if force is None
                else "(from Python) pass force=True to replace its files",
            )
            return cls(path, record)
        io.check_out_dir(path, resume=True)
        previous = read_scan_record(path)
        what = "a GangSweep scan" if method_of(record) == "gangsweep" else "a scan"
        if method_of(previous) != method_of(record):
            raise FileExistsError(
                f"{path} holds a {method_of(previous)} scan, not a {method_of(record)} scan; "
                "choose another --out"
                + ("." if force is None else " (or, from Python, pass force=True to replace it).")
            )
        check_identity(
            previous.get("identity"),
            record["identity"],
            path,
            what,
            hint="choose another --out or empty it"
            if force is None
            else "choose another --out (from Python, pass force=True to replace it)",
        )
        old = dict(defaults or {}, **previous["settings"])
        for name in drop:
            old.pop(name, None)
        new = {k: v for k, v in record["settings"].items() if k not in drop}
        changed = settings_difference(old, new)
        if changed:
            raise FileExistsError(
                f"{path} holds {what} with different settings ({', '.join(changed)}); {hint}."
            )
        previous["settings"], previous["identity"] = record["settings"], record["identity"]
        if keep is not None:
            previous["labels"] = {
                key: entry for key, entry in previous["labels"].items() if keep(path, key)
            }
        return cls(path, previous)

    @property
    def labels(self):
        """The finished labels' entries (key -> dict)."""
        return self.record["labels"]

    def file(self, *parts):
        """The path of a file in the folder (its subfolder created); `None` without a folder."""
        if self.path is None:
            return None
        path = os.path.join(self.path, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def save(self):
        """Rewrites `results.json` atomically (strict JSON); nothing without a folder."""
        if self.path is not None:
            io.write_json(os.path.join(self.path, RESULTS), self.record)

    def save_png(self, name, image):
        """Writes `name` (a PNG in the folder) atomically; nothing without a folder."""
        if self.path is not None:
            save_png(self.file(name), image)

    def _tick(self):
        if self._start is not None:
            self.record["wall_time_s"] = round(self._base + time.time() - self._start, 2)

    @contextlib.contextmanager
    def running(self, todo, desc, unit="label", progress=True):
        """Times the work done inside, adding it to `wall_time_s`; shows a progress bar.

        Args:
            todo: labels (or jobs) still to run; the bar starts at the
                finished ones.
            desc: the bar's title.
            unit: the bar's unit. Defaults to `"label"`.
            progress: show the bar. Defaults to `True`.

        Yields:
            the tqdm bar (or `None` without progress); `add_label` advances it.
        """
        self._start, self._base = time.time(), self.record.get("wall_time_s", 0.0)
        self._bar = None
        if progress and todo:
            from tqdm import tqdm

            total = len(self.labels) + todo
            self._bar = tqdm(
                total=total, initial=total - todo, unit=unit, desc=desc, dynamic_ncols=True
            )
        try:
            yield self._bar
        finally:
            if self._bar is not None:
                self._bar.close()
            self._bar = None
            self._tick()
            self._start = None

    def add_label(self, key, entry, **postfix):
        """Records a finished label, its wall time so far, and saves `results.json`.

        The label's own files are written before this call, so a label in
        `results.json` always has them.

        Args:
            key: the label (or job key).
            entry: its results dict.
            **postfix: values shown on the progress bar.
        """
        self.labels[str(key)] = entry
        self._tick()
        self.save()
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix)
            self._bar.update(1)


# ------------------------------------------------ Neural Cleanse per-label files
def save_trigger_pngs(out_dir, prefix, label, pattern, mask):
    """Writes the reference `mask`, `pattern` and `fusion` PNGs of one label.

    Values are truncated to 8 bits as the reference's `dump_image` did, so
    the mask PNGs read back to the reference's norms (`png_l1_norm`).

    Args:
        out_dir: the folder (created if missing).
        prefix: file name prefix (the reference used the data set name).
        label: the label or job key.
        pattern: `(H, W, C)` raw pattern in [0, 255].
        mask: `(H, W)` mask in [0, 1].
    """
    os.makedirs(out_dir, exist_ok=True)
    mask3 = np.asarray(mask)[..., None]
    images = {
        "mask": mask3 * 255.0,
        "pattern": np.asarray(pattern),
        "fusion": np.asarray(pattern) * mask3,
    }
    for kind, image in images.items():
        save_png(mask_png_path(out_dir, prefix, label, kind), image, truncate=True)


def mask_png_path(scan_dir, prefix, label, kind="mask"):
    """The path of a label's reference PNG (`<prefix>_visualize_<kind>_label_N.png`).

    Raises:
        ValueError: `prefix` is not a plain file-name part (a separator, `..`
            or a leading dot), as a forged `settings.prefix` would be.
    """
    if (
        not isinstance(prefix, str)
        or os.path.basename(prefix) != prefix
        or "/" in prefix
        or "\\" in prefix
        or "\0" in prefix
        or prefix.startswith(".")
    ):
        raise ValueError(
            f"{scan_dir}: the PNG prefix {prefix!r} is not a plain file-name part; a scan "
            "writes none such, so its results.json was altered. Rescan into a new folder."
        )
    return os.path.join(scan_dir, f"{prefix}_visualize_{kind}_label_{file_key(label)}.png")


def reversed_path(scan_dir, label):
    """The path of a label's exact reversed trigger (`reversed/label_N.npz`)."""
    return os.path.join(scan_dir, "reversed", f"label_{file_key(label)}.npz")


def save_reversed(out_dir, label, mask, pattern):
    """Writes a label's exact float mask and pattern to `reversed/label_N.npz`, atomically."""
    path = reversed_path(out_dir, label)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_arrays(path, mask=mask, pattern=pattern)


def load_reversed(scan_dir, label):
    """The exact reversed `(mask (H, W), pattern (H, W, C))` of a label (or job key) in a scan folder.

    Raises:
        FileNotFoundError: the label has no reversed trigger there.
        ValueError: the file is damaged or its arrays do not fit together.
    """
    path = reversed_path(scan_dir, label)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"No reversed trigger for label {label} in {scan_dir}.")
    io.check_input_file(path, "reversed trigger", scan_dir)
    try:
        io.check_npz(path)
        with np.load(path, allow_pickle=False) as z:
            mask, pattern = np.asarray(z["mask"], np.float32), np.asarray(z["pattern"], np.float32)
    except Exception as error:  # numpy and zipfile raise many types for damaged files
        raise ValueError(
            f"{path} is damaged ({str(error).splitlines()[0][:200]}); rescan the "
            "label into a new folder."
        ) from None
    if mask.ndim != 2 or pattern.ndim != 3 or mask.shape != pattern.shape[:2]:
        raise ValueError(
            f"{path} holds a mask {mask.shape} and a pattern {pattern.shape} that "
            "do not fit together; rescan the label into a new folder."
        )
    return mask, pattern
