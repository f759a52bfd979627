"""The `nc-tf` argument parser: one function per sub-command, and the option types.

Every numeric option is range-checked by its type (`COUNT`, `WHOLE`,
`POSITIVE`, ...), so a bad value is a one-line argparse error before any
work starts. The tables of attacks and methods come from the caller
(`nc_tf.cli`), so this module imports neither `injection` nor `mitigation`.
"""

import argparse
import math

from nc_tf.preprocess import INTENSITY_RANGES


def _add_data_args(p, intensity=True):
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


def _add_model_args(p):
    p.add_argument("model", help="a .keras or Keras-2 .h5 model file (untrusted by default)")
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="allow model files whose layers run code (Lambda, custom layers)",
    )


def _add_training_args(p):
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


def _number(convert, test, requirement):
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
COUNT = _number(int, lambda v: v >= 1, ">= 1")
WHOLE = _number(int, lambda v: v >= 0, ">= 0")
POSITIVE = _number(float, lambda v: math.isfinite(v) and v > 0, "> 0")
NONNEG = _number(float, lambda v: math.isfinite(v) and v >= 0, ">= 0")
FRACTION = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")
SHARE = _number(float, lambda v: 0 <= v <= 1, "in [0, 1]")
OPEN_FRACTION = _number(float, lambda v: 0 < v < 1, "in (0, 1)")


def _mask_init(text):
    try:
        value = text if text == "random" else float(text)
    except ValueError:
        value = None
    if value is None or (value != "random" and not 0 < value < 1):
        raise argparse.ArgumentTypeError(f"expected 'random' or a number in (0, 1), got {text!r}")
    return value


def _label_list(text):
    """`--labels`: comma-separated labels (or partial-scan keys such as 3->7), each once."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated labels, got {text!r}")
    for item in items:
        if not all(part.isdigit() for part in item.split("->")):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated labels (whole numbers >= 0), got {item!r}"
            )
    repeated = sorted({v for v in items if items.count(v) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"label(s) {', '.join(repeated)} given more than once")
    return items


def _inject_parser(sub, tables):
    """The `nc-tf inject` sub-command."""
    p = sub.add_parser(
        "inject",
        help="train a model with a backdoor (BadNets and variants)",
        description="Train a reference model on data poisoned with an attack's "
        "triggers; writes OUT/model.keras and OUT/attack.json (the "
        "trigger specs that re-apply them exactly).",
    )
    _add_data_args(p)
    _add_training_args(p)
    p.add_argument(
        "--attack",
        default="badnets",
        choices=tables["attacks"],
        help="backdoor variant (default: badnets); see injection/attacks.py",
    )
    p.add_argument(
        "--target",
        type=WHOLE,
        action="append",
        help="target label (repeat for several infected labels; not for all-to-all)",
    )
    p.add_argument(
        "--size",
        type=COUNT,
        help="trigger side in pixels (default: 4; blend: the whole image; trojan: its own default)",
    )
    p.add_argument(
        "--margin",
        type=WHOLE,
        default=1,
        help="gap between the trigger and the borders it touches (default: 1)",
    )
    p.add_argument(
        "--position",
        default="bottom-right",
        help="bottom-right, bottom-left, top-right, top-left, top, bottom, left, "
        "right, center, or ROW,COL (default: bottom-right)",
    )
    p.add_argument(
        "--color",
        nargs="+",
        default=["255"],
        help="trigger colour, one value or one per channel, or 'noisy' for a random "
        "colour per pixel drawn from --seed (default: 255)",
    )
    p.add_argument(
        "--shape",
        choices=("square", "triangle", "checkerboard"),
        default="square",
        help="trigger shape inside its size x size box (default: square)",
    )
    p.add_argument(
        "--image",
        default="logo",
        help="blend: 'logo', 'watermark' (drawn by nc-tf) or an image file (default: logo)",
    )
    p.add_argument(
        "--alpha", type=FRACTION, default=1.0, help="blend: transparency in (0, 1] (default: 1)"
    )
    p.add_argument(
        "--ratio",
        type=FRACTION,
        help="poisoned fraction per target label, r (default: 0.1; invisible-*: "
        "0.0526, i.e. 5%% of the data)",
    )
    p.add_argument(
        "--source",
        type=WHOLE,
        action="append",
        help="partial backdoor: only this source label is sent to the target when "
        "stamped; other labels are stamped and keep their label (repeatable)",
    )
    p.add_argument(
        "--pretrain-epochs",
        type=WHOLE,
        help="trojan-*/invisible-*: clean epochs before the trigger is optimised on "
        "the model (default: --epochs)",
    )


def _train_parser(sub, tables):
    """The `nc-tf train` sub-command."""
    p = sub.add_parser(
        "train",
        help="train a clean model (the infected model's twin)",
        description="Train a reference model on clean data; writes "
        "OUT/model.keras and OUT/train.json.",
    )
    _add_data_args(p)
    _add_training_args(p)


def _evaluate_parser(sub, tables):
    """The `nc-tf evaluate` sub-command."""
    p = sub.add_parser(
        "evaluate",
        help="clean accuracy and attack success rate of a model",
        description="Measure clean accuracy on the test split and, with "
        "--attack, the attack success rate of its triggers.",
    )
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--attack", help="attack.json written by `nc-tf inject`")


def _scan_parser(sub, tables):
    """The `nc-tf scan` sub-command."""
    p = sub.add_parser(
        "scan",
        help="Neural Cleanse (or GangSweep): reconstruct every label's "
        "trigger and test for outliers",
        description="Reverse-engineer the smallest trigger for every label, write "
        "mask/pattern/fusion PNGs and OUT/results.json, and run the "
        "MAD outlier test. --method gangsweep trains a perturbation "
        "generator per label instead. Rerun the same command to "
        "resume.",
    )
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--out", required=True, help="scan folder (resumed if it holds the same scan)")
    p.add_argument(
        "--method",
        choices=("neural-cleanse", "gangsweep"),
        default="neural-cleanse",
        help="neural-cleanse (default): mask/pattern reverse engineering; gangsweep: "
        "one perturbation generator per label (Zhu et al. MM'20)",
    )
    p.add_argument(
        "--labels", type=_label_list, help="comma-separated labels to scan (default: all)"
    )
    p.add_argument("--suspected", type=WHOLE, help="scan this label first")
    p.add_argument(
        "--preset",
        choices=("fast", "reference"),
        default="fast",
        help="'reference' = the published GTSRB configuration; 'fast' (default) "
        "uses fewer samples per step",
    )
    p.add_argument("--seed", type=WHOLE, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--slots",
        type=COUNT,
        default=8,
        help="labels optimised together in one graph (memory bound; default: 8)",
    )
    p.add_argument(
        "--low-cost",
        action="store_true",
        help="low-cost scan for many labels: a short pass over all labels, then full "
        "optimisation of the smallest candidates plus a random sample (NC §IV)",
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="search source-specific backdoors over (source, target) pairs (NC §VII-E)",
    )
    p.add_argument(
        "--divide-and-conquer",
        action="store_true",
        help="with --partial: split source groups recursively instead of all pairs",
    )
    p.add_argument(
        "--beam",
        type=COUNT,
        default=2,
        help="with --divide-and-conquer: groups kept per level (default: 2)",
    )
    p.add_argument(
        "--accept-low-accuracy",
        action="store_true",
        help="scan even when the model's clean accuracy on the scan data is below "
        "50%% (usually a wrong --intensity, channel order or label mapping)",
    )
    g = p.add_argument_group("optimisation (reference names; override the preset)")
    g.add_argument("--steps", type=COUNT, help="maximum steps per label")
    g.add_argument("--batch-size", type=COUNT, help="images per batch")
    g.add_argument(
        "--nb-sample", type=COUNT, help="images per step (mini_batch = nb_sample // batch_size)"
    )
    g.add_argument("--lr", type=POSITIVE, help="Adam learning rate")
    g.add_argument("--init-cost", type=NONNEG, help="first non-zero cost (lambda)")
    g.add_argument("--regularization", choices=("l1", "l2", "none"), help="mask norm")
    g.add_argument("--attack-succ-threshold", type=FRACTION, help="success rate of a valid trigger")
    g.add_argument("--patience", type=COUNT, help="steps before a cost move")
    g.add_argument("--cost-multiplier", type=POSITIVE, help="cost up factor (down: its power 1.5)")
    g.add_argument("--early-stop-threshold", type=FRACTION, help="stall ratio of the best norm")
    g.add_argument("--early-stop-patience", type=COUNT, help="stalled steps before stopping")
    g.add_argument("--upsample-size", type=COUNT, help="super-pixel side of the mask")
    g.add_argument(
        "--restarts",
        type=COUNT,
        help="runs per label from different random triggers; the smallest valid "
        "trigger is kept (nc-tf addition; default: 1)",
    )
    g.add_argument(
        "--mask-init",
        type=_mask_init,
        help="initial mask: 'random' (reference) or a constant in (0, 1) "
        "(nc-tf addition; fast preset: 0.1)",
    )
    g.add_argument(
        "--loss",
        choices=("ce", "reference"),
        help="attack loss: ce = -log p_t; reference = the reference code's effective "
        "16.12 (1 - p_t) (nc-tf addition; both presets: reference)",
    )
    g.add_argument(
        "--starts",
        type=COUNT,
        help="short starts per label; the one with the smallest mask after "
        "--start-steps steps continues (nc-tf addition; fast preset: 5)",
    )
    g.add_argument(
        "--start-steps", type=COUNT, help="steps of each start before the choice (fast preset: 40)"
    )
    g.add_argument(
        "--start-nb-sample", type=COUNT, help="images per step during the starts (fast preset: 128)"
    )
    g = p.add_argument_group(
        "gangsweep (with --method gangsweep; --batch-size, --lr and "
        "--patience apply too: defaults 64, 0.01, 3)"
    )
    g.add_argument("--epochs", type=WHOLE, help="most epochs per generator (default: 15)")
    g.add_argument("--k", type=NONNEG, help="confidence margin of L_adv (default: 0, the paper)")
    g.add_argument("--filters", type=COUNT, help="generator width (default: 32)")
    g.add_argument("--residual-blocks", type=WHOLE, help="generator residual blocks (default: 3)")
    g.add_argument(
        "--max-images",
        type=COUNT,
        help="train and measure on a random subset of this many images (default: all)",
    )
    g.add_argument(
        "--min-steps-per-epoch",
        type=WHOLE,
        help="fewest Adam steps per epoch; small image sets make several passes "
        "(nc-tf addition; default: 32; 0: one pass, the paper)",
    )
    g.add_argument(
        "--alpha-gate",
        type=FRACTION,
        help="share of images an epoch must send to the label before alpha may drop "
        "to 1/2 (nc-tf addition, e.g. 0.9; default: none, the paper's rule)",
    )
    g.add_argument(
        "--statistic",
        choices=("paper", "margin"),
        help="anomaly index: paper = (Z_V + Z_D) / 2 (default); margin = z-score of "
        "the target margin (nc-tf addition); rerun on a finished folder to "
        "judge it again without retraining",
    )
    g.add_argument(
        "--persistence-threshold",
        type=FRACTION,
        help="persistence a label needs to be flagged (default: 0.9, the paper); "
        "like --statistic, rerun on a finished folder to judge it again",
    )


def _mitigate_parser(sub, tables):
    """The `nc-tf mitigate` sub-command."""
    p = sub.add_parser(
        "mitigate",
        help="repair a model (or guard its inputs) and measure it",
        description="Run one mitigation method on a copy of MODEL; write "
        "OUT/model.keras (filter: OUT/filter.json), OUT/mitigation.json "
        "with accuracy and attack success before and after, and the "
        "method's PNG curves. The source model is never modified. "
        "A repaired model is then verified by a fresh scan "
        "(OUT/verification/); the exit status is 3 when a backdoor "
        "survives.",
    )
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument(
        "--method",
        required=True,
        choices=tables["methods"],
        help="filter/prune/unlearn/repair: Neural Cleanse; linf-prune: Cheng et al.; "
        "fine-prune, shrinkpad, flip: baselines; gym: GYM/DeepSweep; "
        "gangsweep: GangSweep patching",
    )
    p.add_argument(
        "--scan",
        help="scan folder (`nc-tf scan`): its flagged labels' reversed "
        "triggers (needed by filter, prune, unlearn, linf-prune), or "
        "generators (gangsweep, from `nc-tf scan --method gangsweep`)",
    )
    p.add_argument(
        "--labels",
        type=_label_list,
        help="with --scan: comma-separated labels to use instead of the flagged ones",
    )
    p.add_argument(
        "--attack",
        help="attack.json of `nc-tf inject`: also report the original "
        "trigger's attack success (never used to repair)",
    )
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--force", action="store_true", help="overwrite files in a non-empty --out")
    p.add_argument(
        "--no-peel",
        dest="peel",
        action="store_false",
        help="unlearn, prune, repair: remove only the scan's reversed triggers, not "
        "also the rest of each trigger found by peeling (the paper's method)",
    )
    p.add_argument(
        "--accept-low-accuracy",
        action="store_true",
        help="repair even when the model's clean accuracy on the test data is below "
        "50%% (usually a wrong --intensity, channel order or label mapping)",
    )
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the verification scan of the repaired model (the report then "
        "says the repair is unverified)",
    )
    p.add_argument("--seed", type=WHOLE, default=0, help="random seed (default: 0)")
    p.add_argument("--train-limit", type=COUNT, help="use only the first N training samples")
    p.add_argument(
        "--val-ratio",
        type=OPEN_FRACTION,
        default=0.05,
        help="share of the training split held out for ranking/calibration (default: 0.05)",
    )
    g = p.add_argument_group("method settings (default: each method's published setting)")
    g.add_argument(
        "--layer",
        help="filter/prune/linf-prune/fine-prune: layer name, 'penultimate' or 'last_conv'",
    )
    g.add_argument("--fpr", type=FRACTION, help="filter: false-positive rate (default: 0.05)")
    g.add_argument(
        "--stop-asr",
        type=SHARE,
        help="prune: stop when the reversed trigger's success is <= this (default: 0.01)",
    )
    g.add_argument("--ratio", type=FRACTION, help="prune: prune exactly this fraction instead")
    g.add_argument("--max-ratio", type=FRACTION, help="prune: never prune more (default: 0.3)")
    g.add_argument(
        "--epochs",
        type=WHOLE,
        help="unlearn: epochs (default: 1); gym: (default: 5); gangsweep: (default: 3)",
    )
    g.add_argument(
        "--data-ratio",
        type=FRACTION,
        help="unlearn, gangsweep: share of the training data used (default: 0.1)",
    )
    g.add_argument(
        "--rounds",
        type=COUNT,
        help="unlearn, repair: most unlearning rounds, each followed by a residue "
        "scan of the labels still flagged (default: 3; unlearn --rounds 1 is "
        "the paper's one-shot unlearning)",
    )
    g.add_argument("--preset", choices=("fast", "reference"), help="repair: scan preset")
    g.add_argument(
        "--restarts",
        type=COUNT,
        help="repair: starts per label in its scans, smallest trigger kept (default: 1)",
    )
    g.add_argument(
        "--scan-steps",
        type=COUNT,
        help="repair: maximum steps per label in its scans (default: the preset's)",
    )
    g.add_argument(
        "--no-focus",
        dest="focus",
        action="store_false",
        help="repair: rescan every label with a fresh MAD test each round instead of "
        "only the flagged labels against round 0's median and MAD",
    )
    g.add_argument(
        "--max-acc-loss",
        type=SHARE,
        help="linf-prune: accuracy budget of the threshold choice (default: 0.05)",
    )
    g.add_argument(
        "--acc-drop",
        type=SHARE,
        help="fine-prune: stop before validation accuracy drops more (default: 0.04)",
    )
    g.add_argument(
        "--finetune-epochs", type=WHOLE, help="fine-prune: fine-tuning epochs (default: 0)"
    )
    g.add_argument(
        "--n-samples", type=COUNT, help="gym: clean samples fine-tuned on (default: 1000)"
    )
    g.add_argument(
        "--gym-scaled",
        action="store_true",
        default=None,
        help="gym: scale the median aperture and downscale from the 224 px images "
        "they were tuned on to this data's image size (default: published sizes)",
    )


def _detect_parser(sub, tables):
    """The `nc-tf detect` sub-command."""
    p = sub.add_parser(
        "detect",
        help="MAD outlier test on a scan folder",
        description="Print the reference MAD report (median, MAD, anomaly index, "
        "flagged labels) of a scan folder's results.json, or of its "
        "mask PNGs as the reference code did.",
    )
    p.add_argument("scan_dir", help="folder written by `nc-tf scan`")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")


def _preview_parser(sub, tables):
    """The `nc-tf preview` sub-command."""
    p = sub.add_parser(
        "preview",
        help="picture of what GYM's augmentation does to images",
        description="Write a PNG grid: one row per image, the original first, "
        "then --variants augmented versions (GYM's intensive or "
        "lightweight pipeline), each enlarged for viewing.",
    )
    p.add_argument(
        "source",
        metavar="IMAGE_OR_DATASET",
        help="an image file (png/jpg/ppm, used at its own size), or anything "
        "--dataset accepts: 'mnist', 'gtsrb', or the path of an .h5/.npz file "
        "or image folder (its first test images are used)",
    )
    p.add_argument(
        "--pipeline",
        choices=("intensive", "lightweight"),
        default="intensive",
        help="'intensive' (GYM fine-tuning) or 'lightweight' (GYM inference) (default: intensive)",
    )
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument(
        "--n-images", type=COUNT, default=8, help="rows: the first N images (default: 8)"
    )
    p.add_argument(
        "--variants", type=COUNT, default=4, help="augmented versions per image (default: 4)"
    )
    p.add_argument("--seed", type=WHOLE, default=0, help="random seed (default: 0)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--x-key", help="image array name in an .h5/.npz file (default: X_test/x_test)")
    p.add_argument("--y-key", help="label array name in an .h5/.npz file (default: Y_test/y_test)")


def build_parser(attacks=(), methods=()):
    """The argument parser of `nc-tf`.

    Args:
        attacks: the attack names `--attack` of `inject` accepts
            (`injection.attacks.ATTACKS`). Defaults to `()`.
        methods: the method names `--method` of `mitigate` accepts
            (`mitigation.methods.METHODS`). Defaults to `()`.

    Returns:
        an `argparse.ArgumentParser` whose errors are one line (`Parser`).
    """
    tables = {"attacks": tuple(attacks), "methods": tuple(methods)}
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, show the Python traceback too",
    )
    parser = Parser(
        prog="nc-tf",
        description="Find, visualise and remove backdoors in Keras classifiers.",
        parents=[common],
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, parents=[common], **k)
    for add in (
        _inject_parser,
        _train_parser,
        _evaluate_parser,
        _scan_parser,
        _mitigate_parser,
        _detect_parser,
        _preview_parser,
    ):
        add(sub, tables)
    return parser
