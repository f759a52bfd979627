"""Trigger peeling: the rest of a backdoor trigger, piece by piece, before it is removed.

Neural Cleanse looks for the smallest trigger, so it often reverses a
fragment of the real one: a few pixels of a BadNets square already fire the
backdoor. Unlearning or pruning the fragment leaves the rest of the trigger
working. Peeling recovers the rest on the model being repaired: the pixels
the pieces found so far cover are blanked (set to the mean clean image, so
nothing stamped there reaches the model) and the label is reversed again,
with the scan's own settings. While the new trigger is still anomalously
small against the original scan's clean labels (anomaly index above 2), it
is another piece of the backdoor and the next peel blanks it too; the first
ordinary-sized trigger ends the peeling.

`trigger_pieces` returns the pieces and their union, which is what the
model-changing methods remove (`mitigation.mitigate`).
"""

import keras
import numpy as np

from mitigation.verification import anomaly_index
from nc_tf.outlier import ANOMALY_THRESHOLD
from nc_tf.preprocess import preprocess
from nc_tf.scan import PRESETS, detect, scan

MAX_PIECES = 4
# A reversed mask pixel at or above this value counts as part of a piece.
PIECE_LEVEL = 0.2


class Blank(keras.layers.Layer):
    """Overwrites the pixels of a region with fixed values (in-memory only, never saved).

    Args:
        region: `(H, W)` array, 1 where pixels are overwritten.
        fill: `(H, W, C)` values written there, in the model's input domain.
    """

    def __init__(self, region, fill, **kwargs):
        super().__init__(**kwargs)
        self.region = np.asarray(region, np.float32)[..., None]
        self.fill = np.asarray(fill, np.float32)

    def call(self, x):
        return x * (1.0 - self.region) + self.region * self.fill


def blanked(model, region, fill):
    """`model` behind a `Blank` layer: the region's pixels never reach it."""
    inputs = keras.Input(model.input_shape[1:])
    return keras.Model(inputs, model(Blank(region, fill)(inputs)))


def union(triggers):
    """One trigger holding every piece: the largest mask value per pixel, and its pattern."""
    from nc_tf.trigger import Trigger

    masks = np.stack([t.mask[..., 0] for t in triggers])
    which = np.argmax(masks, axis=0)
    patterns = np.stack([t.pattern for t in triggers])
    pattern = np.take_along_axis(patterns, which[None, ..., None], axis=0)[0]
    return Trigger(masks.max(axis=0), pattern, triggers[0].target, sources=triggers[0].sources)


def peel(
    model, x, y, trigger, record, intensity="raw", seed=0, max_pieces=MAX_PIECES, verbose=False
):
    """The pieces of one flagged label's backdoor trigger, the scan's trigger first.

    Args:
        model: the Keras classifier the trigger was reversed from.
        x: clean raw images to reverse triggers on.
        y: their labels.
        trigger: the scan's reversed `injection.Trigger` of the label.
        record: the scan's `results.json` dict: its settings are reused
            and its median and MAD judge each new piece.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: peel K reverses at `seed + K`. Defaults to `0`.
        max_pieces: the most pieces added to the scan's trigger. Defaults
            to `4`.
        verbose: print one line per peel. Defaults to `False`.

    Returns:
        `(pieces, peels)`: the triggers (the scan's first), and per peel its
        `l1_norm`, `anomaly_index` and whether it was `kept`.

    Example:

    >>> pieces, _ = peel(model, x_val, y_val, trigger, read_json("scan/results.json"))  # doctest: +SKIP
    """
    from nc_tf.trigger import Trigger

    outlier = detect(record, verbose=False)
    median, mad = outlier["median"], outlier["mad"]
    settings = record.get("settings", {})
    options = {k: v for k, v in settings.items() if k in PRESETS["fast"]}
    fill = preprocess(np.mean(np.asarray(x, np.float32), axis=0, keepdims=True), intensity)[0]
    pieces, peels = [trigger], []
    for k in range(1, max_pieces + 1):
        region = np.max([t.mask[..., 0] for t in pieces], axis=0) >= PIECE_LEVEL
        found = scan(
            blanked(model, region, np.asarray(fill)),
            x,
            y,
            labels=[trigger.target],
            preset=settings.get("preset", "fast"),
            intensity=intensity,
            seed=seed + k,
            progress=False,
            verbose=False,
            accept_low_accuracy=True,
            **options,
        )
        norm = found["labels"][str(trigger.target)]["l1_norm"]
        index = anomaly_index(norm, median, mad)
        kept = bool(index > ANOMALY_THRESHOLD)
        peels.append({"l1_norm": norm, "anomaly_index": index, "kept": kept})
        if verbose:
            print(
                f"peel {k} of label {trigger.target}: L1 {norm:.2f} (index {index:.2f}) "
                f"{'another piece' if kept else 'ordinary: done'}",
                flush=True,
            )
        if not kept:
            break
        mask, pattern = found["triggers"][str(trigger.target)]
        pieces.append(
            Trigger(
                np.clip(mask, 0, 1),
                np.clip(pattern, 0, 255),
                trigger.target,
                sources=trigger.sources,
            )
        )
    return pieces, peels


def trigger_pieces(
    model, x, y, triggers, record, intensity="raw", seed=0, max_pieces=MAX_PIECES, verbose=False
):
    """Every flagged label's pieces and, when there are several, their union.

    Args:
        model: the Keras classifier the triggers were reversed from.
        x: clean raw images.
        y: their labels.
        triggers: the scan's reversed triggers of the flagged labels.
        record: the scan's `results.json` dict.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: random seed. Defaults to `0`.
        max_pieces: the most pieces added per label. Defaults to `4`.
        verbose: print one line per peel. Defaults to `False`.

    Returns:
        `(triggers, report)`: the triggers to remove, and per label its peels.
    """
    out, report = [], {}
    for trigger in triggers:
        if trigger.sources is not None or trigger.target < 0:
            out.append(trigger)  # partial or all-to-all triggers are used as given
            continue
        pieces, peels = peel(model, x, y, trigger, record, intensity, seed, max_pieces, verbose)
        out += pieces + ([union(pieces)] if len(pieces) > 1 else [])
        report[str(trigger.target)] = peels
    return out, report
