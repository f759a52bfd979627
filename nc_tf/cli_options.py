"""The command line's option types and shared option groups.

Every numeric option is range-checked by its type (`COUNT`, `WHOLE`,
`POSITIVE`, ...), so a bad value is a one-line argparse error (`Parser`)
before any work starts.
"""

import argparse
import math
import os

from nc_tf.preprocess import INTENSITY_RANGES


def add_data_args(p, intensity=True):
    p.add_argument(
        "--dataset",
        default="mnist",
        help="'mnist' (embedded), 'gtsrb' (data/gtsrb_dataset.h5), or the path of an "
        ".h5/.npz file, the official GTSRB folder, or a folder of class folders "
        "(default: mnist)",
    )
    p.add_argument("--x-key", help="image array name in an .h5/.npz file (default: X_test/x_test)")
    p.add_argument("--y-key", help="label array name in an .h5/.npz file (default: Y_test/y_test)")
    p.add_argument("--limit", type=COUNT, help="use only the first N samples")
    if intensity:
        p.add_argument(
            "--intensity",
            choices=INTENSITY_RANGES,
            help="the model's preprocessing of raw [0,255] pixels (default: the one "
            "recorded in --attack, else raw)",
        )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")


def add_model_args(p):
    p.add_argument("model", help="a .keras or Keras-2 .h5 model file (untrusted by default)")
    add_trust_arg(p)


def add_trust_arg(p):
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="allow model files whose layers run code (Lambda, custom layers)",
    )


def add_training_args(p):
    p.add_argument(
        "--arch",
        choices=("mnist", "gtsrb", "resnet"),
        help="architecture (default: by data shape: mnist 28x28x1, gtsrb 32x32x3 with "
        "43 classes, else resnet)",
    )
    p.add_argument("--epochs", type=COUNT, default=10, help="training epochs (default: 10)")
    p.add_argument("--batch-size", type=COUNT, default=32, help="batch size (default: 32)")
    p.add_argument("--seed", type=WHOLE, default=0, help="random seed (default: 0)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--force", action="store_true", help="overwrite files in a non-empty --out")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong, and where to look."""

    def error(self, message):
        self.message = f"{message} (see {self.prog} --help)"
        Parser.last_error = self.message
        self.exit(2, f"{self.prog}: error: {self.message}\n")


def number_type(convert, test, requirement):
    """An argparse type: `convert` the text, then require `test` of the value."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if convert is int else 'a number'} "
                f"{requirement}, got {text!r}"
            ) from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = requirement
    return parse


# Validated number types of the options (the requirement names the valid range).
COUNT = number_type(int, lambda v: v >= 1, ">= 1")
WHOLE = number_type(int, lambda v: v >= 0, ">= 0")
POSITIVE = number_type(float, lambda v: math.isfinite(v) and v > 0, "> 0")
NONNEG = number_type(float, lambda v: math.isfinite(v) and v >= 0, ">= 0")
FRACTION = number_type(float, lambda v: 0 < v <= 1, "in (0, 1]")
SHARE = number_type(float, lambda v: 0 <= v <= 1, "in [0, 1]")
OPEN_FRACTION = number_type(float, lambda v: 0 < v < 1, "in (0, 1)")


def mask_init_type(text):
    try:
        value = text if text == "random" else float(text)
    except ValueError:
        value = None
    if value is None or (value != "random" and not 0 < value < 1):
        raise argparse.ArgumentTypeError(f"expected 'random' or a number in (0, 1), got {text!r}")
    return value


def label_list(text):
    """`--labels`: comma-separated labels (or partial-scan keys such as 3->7), each once."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated labels, got {text!r}")
    for item in items:
        if not all(part.isascii() and part.isdigit() for part in item.split("->")):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated labels (whole numbers >= 0), got {item!r}"
            )
    repeated = sorted({v for v in items if items.count(v) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"label(s) {', '.join(repeated)} given more than once")
    return items


SCAN_SETTINGS = (
    "rule",
    "steps",
    "batch_size",
    "nb_sample",
    "lr",
    "init_cost",
    "regularization",
    "attack_succ_threshold",
    "patience",
    "cost_multiplier",
    "early_stop_threshold",
    "early_stop_patience",
    "upsample_size",
    "restarts",
    "mask_init",
    "loss",
    "starts",
    "start_steps",
    "start_nb_sample",
)


# Scan flags of each method; the other method's flags are refused when set.
GANGSWEEP_SETTINGS = (
    "epochs",
    "batch_size",
    "lr",
    "patience",
    "k",
    "filters",
    "residual_blocks",
    "max_images",
    "min_steps_per_epoch",
    "alpha_gate",
    "statistic",
    "persistence_threshold",
)


def option_flag(name):
    return "--" + name.replace("_", "-")


def scan_overrides(args):
    """The scan settings given on the command line (reference names -> values).

    Refuses the other method's options (`--method neural-cleanse` or
    `gangsweep`), naming them.
    """
    method = getattr(args, "method", "neural-cleanse")
    gangsweep = method == "gangsweep"
    mine = GANGSWEEP_SETTINGS if gangsweep else SCAN_SETTINGS
    theirs = [k for k in SCAN_SETTINGS + GANGSWEEP_SETTINGS if k not in mine]
    wrong = [option_flag(k) for k in theirs if getattr(args, k, None) is not None]
    wrong += [
        flag
        for flag, name in (("--low-cost", "low_cost"), ("--partial", "partial"))
        if gangsweep and getattr(args, name, False)
    ]
    if gangsweep and getattr(args, "suspected", None) is not None:
        wrong.append("--suspected")
    if wrong:
        other = "neural-cleanse" if gangsweep else "gangsweep"
        raise ValueError(
            f"{', '.join(wrong)} belong(s) to --method {other}, not --method "
            f"{method}; drop them or change --method."
        )
    return {k: getattr(args, k) for k in mine if getattr(args, k, None) is not None}


def scan_labels(args):
    """`--labels` of a scan as whole numbers, or `None` (all labels)."""
    if not args.labels:
        return None
    if any("->" in v for v in args.labels):
        raise ValueError(
            "--labels of a scan are labels such as 3,7; pairs such as 3->7 "
            "name partial-scan results (mitigate --labels)."
        )
    return [int(v) for v in args.labels]


def read_image_option(path):
    """`--image` of `inject`: an image file read as RGBA uint8, or a one-line error."""
    import numpy as np

    from nc_tf.io import open_image

    if not os.path.isfile(path):
        raise ValueError(
            f"--image {path!r} is not a file; pass 'logo', 'watermark' or an image "
            "file (PNG, JPEG)."
        )
    with open_image(path, "--image") as img:
        try:
            return np.asarray(img.convert("RGBA"), dtype=np.uint8)
        except Exception as error:  # PIL raises many types for damaged or hostile images
            raise ValueError(
                f"--image {path!r} is not a readable image "
                f"({str(error).splitlines()[0][:200]}); pass a PNG or JPEG file."
            ) from None
