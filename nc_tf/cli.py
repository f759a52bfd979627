"""The `nc-tf` command line: one library call per command.

    nc-tf inject   --dataset mnist --target 7 --out runs/mnist_badnets
    nc-tf train    --dataset mnist --out runs/mnist_clean
    nc-tf evaluate runs/mnist_badnets/model.keras --dataset mnist \\
                   --attack runs/mnist_badnets/attack.json

Run `nc-tf COMMAND --help` for every option.
"""

import argparse
import math
import os
import shutil
import sys

from injection.attacks import ATTACKS as ATTACK_NAMES
from mitigation.methods import METHODS
from nc_tf.preprocess import INTENSITY_RANGES


def _add_data_args(p, intensity=True):
    p.add_argument("--dataset", default="mnist",
                   help="'mnist' (embedded), 'gtsrb' (data/gtsrb_dataset.h5), or the path of an "
                        ".h5/.npz file, the official GTSRB folder, or a folder of class folders "
                        "(default: mnist)")
    p.add_argument("--x-key", help="image array name in an .h5/.npz file (default: X_test/x_test)")
    p.add_argument("--y-key", help="label array name in an .h5/.npz file (default: Y_test/y_test)")
    p.add_argument("--limit", type=COUNT, help="use only the first N samples")
    if intensity:
        p.add_argument("--intensity", choices=INTENSITY_RANGES,
                       help="the model's preprocessing of raw [0,255] pixels (default: the one "
                            "recorded in --attack, else raw)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")


def _add_model_args(p):
    p.add_argument("model", help="a .keras or Keras-2 .h5 model file (untrusted by default)")
    p.add_argument("--trust-model", action="store_true",
                   help="allow model files whose layers run code (Lambda, custom layers)")


def _add_training_args(p):
    p.add_argument("--arch", choices=("mnist", "gtsrb", "resnet"),
                   help="architecture (default: by data shape: mnist 28x28x1, gtsrb 32x32x3 with "
                        "43 classes, else resnet)")
    p.add_argument("--epochs", type=COUNT, default=10, help="training epochs (default: 10)")
    p.add_argument("--batch-size", type=COUNT, default=32, help="batch size (default: 32)")
    p.add_argument("--seed", type=WHOLE, default=0, help="random seed (default: 0)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--force", action="store_true", help="overwrite files in a non-empty --out")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong, and where to look."""

    def error(self, message):
        self.message = f"{message} (see {self.prog} --help)"
        _Parser.last_error = self.message
        self.exit(2, f"{self.prog}: error: {self.message}\n")


def _number(convert, test, requirement):
    """An argparse type: `convert` the text, then require `test` of the value."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if convert is int else 'a number'} "
                f"{requirement}, got {text!r}") from None
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
                f"expected comma-separated labels (whole numbers >= 0), got {item!r}")
    repeated = sorted({v for v in items if items.count(v) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"label(s) {', '.join(repeated)} given more than once")
    return items


def _inject_parser(sub):
    """The `nc-tf inject` sub-command."""
    p = sub.add_parser("inject", help="train a model with a backdoor (BadNets and variants)",
                       description="Train a reference model on data poisoned with an attack's "
                                   "triggers; writes OUT/model.keras and OUT/attack.json (the "
                                   "trigger specs that re-apply them exactly).")
    _add_data_args(p)
    _add_training_args(p)
    p.add_argument("--attack", default="badnets", choices=ATTACK_NAMES,
                   help="backdoor variant (default: badnets); see injection/attacks.py")
    p.add_argument("--target", type=WHOLE, action="append",
                   help="target label (repeat for several infected labels; not for all-to-all)")
    p.add_argument("--size", type=COUNT,
                   help="trigger side in pixels (default: 4; blend: the whole image; trojan: its "
                        "own default)")
    p.add_argument("--margin", type=WHOLE, default=1,
                   help="gap between the trigger and the borders it touches (default: 1)")
    p.add_argument("--position", default="bottom-right",
                   help="bottom-right, bottom-left, top-right, top-left, top, bottom, left, "
                        "right, center, or ROW,COL (default: bottom-right)")
    p.add_argument("--color", nargs="+", default=["255"],
                   help="trigger colour, one value or one per channel, or 'noisy' for a random "
                        "colour per pixel drawn from --seed (default: 255)")
    p.add_argument("--shape", choices=("square", "triangle", "checkerboard"), default="square",
                   help="trigger shape inside its size x size box (default: square)")
    p.add_argument("--image", default="logo",
                   help="blend: 'logo', 'watermark' (drawn by nc-tf) or an image file (default: "
                        "logo)")
    p.add_argument("--alpha", type=FRACTION, default=1.0,
                   help="blend: transparency in (0, 1] (default: 1)")
    p.add_argument("--ratio", type=FRACTION,
                   help="poisoned fraction per target label, r (default: 0.1; invisible-*: "
                        "0.0526, i.e. 5%% of the data)")
    p.add_argument("--source", type=WHOLE, action="append",
                   help="partial backdoor: only this source label is sent to the target when "
                        "stamped; other labels are stamped and keep their label (repeatable)")
    p.add_argument("--pretrain-epochs", type=WHOLE,
                   help="trojan-*/invisible-*: clean epochs before the trigger is optimised on "
                        "the model (default: --epochs)")
    p.set_defaults(func=cmd_inject)


def _train_parser(sub):
    """The `nc-tf train` sub-command."""
    p = sub.add_parser("train", help="train a clean model (the infected model's twin)",
                       description="Train a reference model on clean data; writes "
                                   "OUT/model.keras and OUT/train.json.")
    _add_data_args(p)
    _add_training_args(p)
    p.set_defaults(func=cmd_train)


def _evaluate_parser(sub):
    """The `nc-tf evaluate` sub-command."""
    p = sub.add_parser("evaluate", help="clean accuracy and attack success rate of a model",
                       description="Measure clean accuracy on the test split and, with "
                                   "--attack, the attack success rate of its triggers.")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--attack", help="attack.json written by `nc-tf inject`")
    p.set_defaults(func=cmd_evaluate)


def _scan_parser(sub):
    """The `nc-tf scan` sub-command."""
    p = sub.add_parser("scan", help="Neural Cleanse (or GangSweep): reconstruct every label's "
                                    "trigger and test for outliers",
                       description="Reverse-engineer the smallest trigger for every label, write "
                                   "mask/pattern/fusion PNGs and OUT/results.json, and run the "
                                   "MAD outlier test. --method gangsweep trains a perturbation "
                                   "generator per label instead. Rerun the same command to "
                                   "resume.")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--out", required=True, help="scan folder (resumed if it holds the same scan)")
    p.add_argument("--method", choices=("neural-cleanse", "gangsweep"), default="neural-cleanse",
                   help="neural-cleanse (default): mask/pattern reverse engineering; gangsweep: "
                        "one perturbation generator per label (Zhu et al. MM'20)")
    p.add_argument("--labels", type=_label_list,
                   help="comma-separated labels to scan (default: all)")
    p.add_argument("--suspected", type=WHOLE, help="scan this label first")
    p.add_argument("--preset", choices=("fast", "reference"), default="fast",
                   help="'reference' = the published GTSRB configuration; 'fast' (default) "
                        "uses fewer samples per step")
    p.add_argument("--seed", type=WHOLE, default=0, help="random seed (default: 0)")
    p.add_argument("--slots", type=COUNT, default=8,
                   help="labels optimised together in one graph (memory bound; default: 8)")
    p.add_argument("--low-cost", action="store_true",
                   help="low-cost scan for many labels: a short pass over all labels, then full "
                        "optimisation of the smallest candidates plus a random sample (NC §IV)")
    p.add_argument("--partial", action="store_true",
                   help="search source-specific backdoors over (source, target) pairs (NC §VII-E)")
    p.add_argument("--divide-and-conquer", action="store_true",
                   help="with --partial: split source groups recursively instead of all pairs")
    p.add_argument("--beam", type=COUNT, default=2,
                   help="with --divide-and-conquer: groups kept per level (default: 2)")
    p.add_argument("--accept-low-accuracy", action="store_true",
                   help="scan even when the model's clean accuracy on the scan data is below "
                        "50%% (usually a wrong --intensity, channel order or label mapping)")
    g = p.add_argument_group("optimisation (reference names; override the preset)")
    g.add_argument("--steps", type=COUNT, help="maximum steps per label")
    g.add_argument("--batch-size", type=COUNT, help="images per batch")
    g.add_argument("--nb-sample", type=COUNT, help="images per step (mini_batch = nb_sample // batch_size)")
    g.add_argument("--lr", type=POSITIVE, help="Adam learning rate")
    g.add_argument("--init-cost", type=NONNEG, help="first non-zero cost (lambda)")
    g.add_argument("--regularization", choices=("l1", "l2", "none"), help="mask norm")
    g.add_argument("--attack-succ-threshold", type=FRACTION, help="success rate of a valid trigger")
    g.add_argument("--patience", type=COUNT, help="steps before a cost move")
    g.add_argument("--cost-multiplier", type=POSITIVE, help="cost up factor (down: its power 1.5)")
    g.add_argument("--early-stop-threshold", type=FRACTION, help="stall ratio of the best norm")
    g.add_argument("--early-stop-patience", type=COUNT, help="stalled steps before stopping")
    g.add_argument("--upsample-size", type=COUNT, help="super-pixel side of the mask")
    g.add_argument("--restarts", type=COUNT,
                   help="runs per label from different random triggers; the smallest valid "
                        "trigger is kept (nc-tf addition; default: 1)")
    g.add_argument("--mask-init", type=_mask_init,
                   help="initial mask: 'random' (reference) or a constant in (0, 1) "
                        "(nc-tf addition; fast preset: 0.1)")
    g.add_argument("--loss", choices=("ce", "reference"),
                   help="attack loss: ce = -log p_t; reference = the reference code's effective "
                        "16.12 (1 - p_t) (nc-tf addition; both presets: reference)")
    g.add_argument("--starts", type=COUNT,
                   help="short starts per label; the one with the smallest mask after "
                        "--start-steps steps continues (nc-tf addition; fast preset: 5)")
    g.add_argument("--start-steps", type=COUNT,
                   help="steps of each start before the choice (fast preset: 40)")
    g.add_argument("--start-nb-sample", type=COUNT,
                   help="images per step during the starts (fast preset: 128)")
    g = p.add_argument_group("gangsweep (with --method gangsweep; --batch-size, --lr and "
                             "--patience apply too: defaults 64, 0.01, 3)")
    g.add_argument("--epochs", type=WHOLE, help="most epochs per generator (default: 15)")
    g.add_argument("--k", type=NONNEG, help="confidence margin of L_adv (default: 0, the paper)")
    g.add_argument("--filters", type=COUNT, help="generator width (default: 32)")
    g.add_argument("--residual-blocks", type=WHOLE, help="generator residual blocks (default: 3)")
    g.add_argument("--max-images", type=COUNT,
                   help="train and measure on a random subset of this many images (default: all)")
    g.add_argument("--min-steps-per-epoch", type=WHOLE,
                   help="fewest Adam steps per epoch; small image sets make several passes "
                        "(nc-tf addition; default: 32; 0: one pass, the paper)")
    g.add_argument("--alpha-gate", type=FRACTION,
                   help="share of images an epoch must send to the label before alpha may drop "
                        "to 1/2 (nc-tf addition, e.g. 0.9; default: none, the paper's rule)")
    g.add_argument("--statistic", choices=("paper", "margin"),
                   help="anomaly index: paper = (Z_V + Z_D) / 2 (default); margin = z-score of "
                        "the target margin (nc-tf addition); rerun on a finished folder to "
                        "judge it again without retraining")
    g.add_argument("--persistence-threshold", type=FRACTION,
                   help="persistence a label needs to be flagged (default: 0.9, the paper); "
                        "like --statistic, rerun on a finished folder to judge it again")
    p.set_defaults(func=cmd_scan)


def _mitigate_parser(sub):
    """The `nc-tf mitigate` sub-command."""
    p = sub.add_parser("mitigate", help="repair a model (or guard its inputs) and measure it",
                       description="Run one mitigation method on a copy of MODEL; write "
                                   "OUT/model.keras (filter: OUT/filter.json), OUT/mitigation.json "
                                   "with accuracy and attack success before and after, and the "
                                   "method's PNG curves. The source model is never modified. "
                                   "A repaired model is then verified by a fresh scan "
                                   "(OUT/verification/); the exit status is 3 when a backdoor "
                                   "survives.")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--method", required=True,
                   choices=tuple(METHODS),
                   help="filter/prune/unlearn/repair: Neural Cleanse; linf-prune: Cheng et al.; "
                        "fine-prune, shrinkpad, flip: baselines; gym: GYM/DeepSweep; "
                        "gangsweep: GangSweep patching")
    p.add_argument("--scan", help="scan folder (`nc-tf scan`): its flagged labels' reversed "
                                  "triggers (needed by filter, prune, unlearn, linf-prune), or "
                                  "generators (gangsweep, from `nc-tf scan --method gangsweep`)")
    p.add_argument("--labels", type=_label_list,
                   help="with --scan: comma-separated labels to use instead of the flagged ones")
    p.add_argument("--attack", help="attack.json of `nc-tf inject`: also report the original "
                                    "trigger's attack success (never used to repair)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--force", action="store_true", help="overwrite files in a non-empty --out")
    p.add_argument("--no-peel", dest="peel", action="store_false",
                   help="unlearn, prune, repair: remove only the scan's reversed triggers, not "
                        "also the rest of each trigger found by peeling (the paper's method)")
    p.add_argument("--accept-low-accuracy", action="store_true",
                   help="repair even when the model's clean accuracy on the test data is below "
                        "50%% (usually a wrong --intensity, channel order or label mapping)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the verification scan of the repaired model (the report then "
                        "says the repair is unverified)")
    p.add_argument("--seed", type=WHOLE, default=0, help="random seed (default: 0)")
    p.add_argument("--train-limit", type=COUNT, help="use only the first N training samples")
    p.add_argument("--val-ratio", type=OPEN_FRACTION, default=0.05,
                   help="share of the training split held out for ranking/calibration "
                        "(default: 0.05)")
    g = p.add_argument_group("method settings (default: each method's published setting)")
    g.add_argument("--layer", help="filter/prune/linf-prune/fine-prune: layer name, "
                                   "'penultimate' or 'last_conv'")
    g.add_argument("--fpr", type=FRACTION, help="filter: false-positive rate (default: 0.05)")
    g.add_argument("--stop-asr", type=SHARE,
                   help="prune: stop when the reversed trigger's success is <= this (default: 0.01)")
    g.add_argument("--ratio", type=FRACTION, help="prune: prune exactly this fraction instead")
    g.add_argument("--max-ratio", type=FRACTION, help="prune: never prune more (default: 0.3)")
    g.add_argument("--epochs", type=WHOLE, help="unlearn: epochs (default: 1); gym: (default: 5); "
                                              "gangsweep: (default: 3)")
    g.add_argument("--data-ratio", type=FRACTION,
                   help="unlearn, gangsweep: share of the training data used (default: 0.1)")
    g.add_argument("--rounds", type=COUNT,
                   help="unlearn, repair: most unlearning rounds, each followed by a residue "
                        "scan of the labels still flagged (default: 3; unlearn --rounds 1 is "
                        "the paper's one-shot unlearning)")
    g.add_argument("--preset", choices=("fast", "reference"), help="repair: scan preset")
    g.add_argument("--restarts", type=COUNT,
                   help="repair: starts per label in its scans, smallest trigger kept (default: 1)")
    g.add_argument("--scan-steps", type=COUNT,
                   help="repair: maximum steps per label in its scans (default: the preset's)")
    g.add_argument("--no-focus", dest="focus", action="store_false",
                   help="repair: rescan every label with a fresh MAD test each round instead of "
                        "only the flagged labels against round 0's median and MAD")
    g.add_argument("--max-acc-loss", type=SHARE,
                   help="linf-prune: accuracy budget of the threshold choice (default: 0.05)")
    g.add_argument("--acc-drop", type=SHARE,
                   help="fine-prune: stop before validation accuracy drops more (default: 0.04)")
    g.add_argument("--finetune-epochs", type=WHOLE, help="fine-prune: fine-tuning epochs (default: 0)")
    g.add_argument("--n-samples", type=COUNT, help="gym: clean samples fine-tuned on (default: 1000)")
    g.add_argument("--gym-scaled", action="store_true", default=None,
                   help="gym: scale the median aperture and downscale from the 224 px images "
                        "they were tuned on to this data's image size (default: published sizes)")
    p.set_defaults(func=cmd_mitigate)


def _detect_parser(sub):
    """The `nc-tf detect` sub-command."""
    p = sub.add_parser("detect", help="MAD outlier test on a scan folder",
                       description="Print the reference MAD report (median, MAD, anomaly index, "
                                   "flagged labels) of a scan folder's results.json, or of its "
                                   "mask PNGs as the reference code did.")
    p.add_argument("scan_dir", help="folder written by `nc-tf scan`")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    p.set_defaults(func=cmd_detect)


def _preview_parser(sub):
    """The `nc-tf preview` sub-command."""
    p = sub.add_parser("preview", help="picture of what GYM's augmentation does to images",
                       description="Write a PNG grid: one row per image, the original first, "
                                   "then --variants augmented versions (GYM's intensive or "
                                   "lightweight pipeline), each enlarged for viewing.")
    p.add_argument("source", metavar="IMAGE_OR_DATASET",
                   help="an image file (png/jpg/ppm, used at its own size), or anything "
                        "--dataset accepts: 'mnist', 'gtsrb', or the path of an .h5/.npz file "
                        "or image folder (its first test images are used)")
    p.add_argument("--pipeline", choices=("intensive", "lightweight"), default="intensive",
                   help="'intensive' (GYM fine-tuning) or 'lightweight' (GYM inference) "
                        "(default: intensive)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n-images", type=COUNT, default=8,
                   help="rows: the first N images (default: 8)")
    p.add_argument("--variants", type=COUNT, default=4,
                   help="augmented versions per image (default: 4)")
    p.add_argument("--seed", type=WHOLE, default=0, help="random seed (default: 0)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--x-key", help="image array name in an .h5/.npz file (default: X_test/x_test)")
    p.add_argument("--y-key", help="label array name in an .h5/.npz file (default: Y_test/y_test)")
    p.set_defaults(func=cmd_preview)


def build_parser():
    """The argument parser of `nc-tf` (exposed for documentation and tests)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, show the Python traceback too")
    parser = _Parser(
        prog="nc-tf", description="Find, visualise and remove backdoors in Keras classifiers.",
        parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, parents=[common], **k)
    for add in (_inject_parser, _train_parser, _evaluate_parser, _scan_parser,
                _mitigate_parser, _detect_parser, _preview_parser):
        add(sub)
    return parser


def main(argv=None):
    """Entry point of the `nc-tf` console script.

    Every error ends the command with exit status 2 and one line on stderr
    that says what is wrong and what to do (`--debug` adds the traceback);
    with `--json`, stdout then holds `{"error": ...}`. An `--out` folder
    the command created is removed again when it fails before writing
    anything into it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help exits; an invalid command line returns 2
        if stop.code != 2:
            raise
        if "--json" in argv:
            _print_json({"error": getattr(_Parser, "last_error", "invalid arguments")})
        return 2
    import warnings

    warnings.formatwarning = lambda message, *_, **__: f"nc-tf {args.command}: warning: {message}\n"
    _import_tensorflow_quietly()
    from nc_tf.memory import restore_malloc_threshold

    restore_malloc_threshold()
    out = getattr(args, "out", None) if args.command != "preview" else None
    created = out is not None and not os.path.exists(out)
    try:
        if out is not None:
            _check_out(args)
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"nc-tf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every failure becomes one line; --debug shows where
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        message = _error_text(error)
        print(f"nc-tf {args.command}: error: {message}", file=sys.stderr)
        if getattr(args, "json", False):
            _print_json({"error": message})
        if created and os.path.isdir(out) and set(os.listdir(out)) <= {"identity.json"}:
            shutil.rmtree(out)  # made by this command, and nothing but its identity in it
        return 2


def _import_tensorflow_quietly():
    """Imports TensorFlow with file descriptor 2 muted: its C++ start-up lines are not for users."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# Errors that nc-tf raises with a message for the user; other types are unexpected.
_USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError)


def _error_text(error):
    """One line for an exception: its message, or what happened and how to see more."""
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    elif isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.strerror}: {error.filename}"
    else:
        text = str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if len(text) > 400:
        text = text[:397] + "..."
    if not isinstance(error, _USER_ERRORS) or isinstance(error, UnicodeError):
        text = (f"unexpected {type(error).__name__}: {text}; rerun with --debug to see where, "
                "and report it")
    return text


def _check_out(args):
    """Refuses an --out folder that cannot take this command's files, before any work."""
    from nc_tf.io import check_out_dir

    if args.command == "scan":
        resume = os.path.exists(os.path.join(args.out, "results.json"))
        check_out_dir(args.out, resume=resume, hint="empty it")
    else:
        check_out_dir(args.out, force=args.force,
                      resume=getattr(args, "method", None) in ("repair", "unlearn"))


def _print_json(obj):
    from nc_tf.io import to_json

    print(to_json(obj))


def _print(args, report, lines):
    from nc_tf.io import to_json

    if args.json:
        print(to_json(report))
    else:
        print("\n".join(lines))


def _asr_text(value):
    return "n/a" if value is None else f"{value:.4f}"


def cmd_inject(args):
    from injection.attacks import build_attack, default_ratio, needs_model

    if args.color == ["noisy"]:
        color = "noisy"
    else:
        try:
            color = [float(v) for v in args.color]
        except ValueError:
            raise ValueError(f"--color takes numbers in [0, 255] or 'noisy', got {args.color}.") from None
    position = args.position
    if "," in position:
        parts = position.split(",")
        if len(parts) != 2 or not all(v.strip().isdigit() for v in parts):
            raise ValueError(f"--position takes a name (bottom-right, center, ...) or ROW,COL "
                             f"with two whole numbers, got {args.position!r}.")
        position = [int(v) for v in parts]
    for flag, values in (("--target", args.target), ("--source", args.source)):
        repeated = sorted({v for v in values or [] if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{flag} {', '.join(map(str, repeated))} given more than once.")
    image = args.image
    if image not in ("logo", "watermark"):
        image = _read_image(image)
    if args.attack == "badnets" and (color == "noisy" or args.shape != "square"):
        attack = "noisy" if args.shape == "square" else "shape"
    else:
        attack = args.attack
    if attack != "all-to-all" and not args.target:
        raise ValueError(f"--attack {attack} needs --target LABEL.")
    common = dict(size=args.size, margin=args.margin, position=position, color=color,
                  shape=args.shape, sources=args.source, image=image, alpha=args.alpha,
                  seed=args.seed, intensity=args.intensity or "raw")

    def check_color(shape):
        if isinstance(color, list) and len(color) not in (1, shape[-1]):
            raise ValueError(f"--color has {len(color)} values but the images have {shape[-1]} "
                             "channel(s); give one value, or one per channel.")

    if needs_model(attack):
        def triggers(shape, model):
            check_color(shape)
            return build_attack(attack, shape, args.target, model=model, **common)
    else:
        def triggers(shape, num_classes):
            check_color(shape)
            return build_attack(attack, shape, args.target, num_classes=num_classes, **common)

    args.ratio = default_ratio(attack) if args.ratio is None else args.ratio
    if args.pretrain_epochs is None:
        args.pretrain_epochs = args.epochs if needs_model(attack) else 0
    return _train(args, triggers)


def _read_image(path):
    import numpy as np
    from PIL import Image

    if not os.path.isfile(path):
        raise ValueError(f"--image {path!r} is not a file; pass 'logo', 'watermark' or an image "
                         "file (PNG, JPEG).")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGBA"), dtype=np.uint8)
    except Exception as error:  # PIL raises many types for damaged or hostile images
        raise ValueError(f"--image {path!r} is not a readable image "
                         f"({str(error).splitlines()[0][:200]}); pass a PNG or JPEG file.") \
            from None


def _trigger_text(spec):
    parts = [spec.get("attack") or spec.get("kind", "?")]
    if "position" in spec and spec.get("kind") != "arrays":
        parts.append(str(spec["position"]))
    if spec.get("sources"):
        parts.append(f"sources {spec['sources']}")
    return ", ".join(parts)


def cmd_train(args):
    return _train(args, ())


def _train(args, triggers):
    from injection.inject import train_and_save

    report = train_and_save(
        args.out, args.dataset, triggers, args.arch, getattr(args, "ratio", 0.1), args.epochs,
        args.batch_size, args.intensity or "raw", args.seed, args.limit, args.force,
        verbose=0 if args.json else 2, x_key=args.x_key, y_key=args.y_key,
        pretrain_epochs=getattr(args, "pretrain_epochs", 0) or 0,
        check_labels=(getattr(args, "target", None) or []) + (getattr(args, "source", None) or []))
    name = "attack.json" if report["triggers"] else "train.json"
    _print(args, report, [
        f"model:               {os.path.join(args.out, 'model.keras')}",
        f"report:              {os.path.join(args.out, name)}",
        f"clean accuracy:      {report['clean_accuracy']:.4f}",
        f"attack success rate: {_asr_text(report['attack_success_rate'])}",
        f"training time:       {report['training']['wall_time_s']:.1f} s",
    ])


def _read_attack(args):
    """`(attack dict, triggers, intensity)` of `--attack` (empty without it), checked."""
    from injection import load_triggers
    from nc_tf.io import read_json
    from nc_tf.preprocess import check_intensity

    if not args.attack:
        return {}, [], args.intensity or "raw"
    attack = read_json(args.attack, "attack file")
    if not isinstance(attack, dict):
        raise ValueError(f"{args.attack} is not an attack file (a JSON {type(attack).__name__}, "
                         "not an object); pass the attack.json written by `nc-tf inject`.")
    triggers = load_triggers(attack, name=args.attack)
    intensity = args.intensity or attack.get("intensity", "raw")
    check_intensity(intensity)
    return attack, triggers, intensity


def cmd_evaluate(args):
    from nc_tf import datasets
    from nc_tf.metrics import check_clean_accuracy, evaluate_backdoor
    from nc_tf.models import check_model_data, load_model

    attack, triggers, intensity = _read_attack(args)
    model = load_model(args.model, trust_model=args.trust_model)
    x, y = datasets.load_data(args.dataset, "test", args.x_key, args.y_key, limit=args.limit)
    check_model_data(model, x, y, name=f"data set {args.dataset!r}")
    for t in triggers:
        if t.image_shape != x.shape[1:]:
            raise ValueError(f"The attack's trigger is for images {t.image_shape}, the data set "
                             f"has {x.shape[1:]}.")
    report = evaluate_backdoor(model, x, y, triggers, intensity)
    check_clean_accuracy(report["accuracy"], accept_low_accuracy=True,
                         name=f"data set {args.dataset!r}")
    report.update(model=args.model, dataset=str(args.dataset), intensity=intensity,
                  n_samples=int(len(x)))
    lines = [f"clean accuracy:      {report['accuracy']:.4f}  ({len(x)} test images)"]
    if triggers:
        lines.append(f"attack success rate: {_asr_text(report['attack_success_rate'])}")
        if len(triggers) > 1:
            specs = attack.get("triggers", [])
            lines += [f"  trigger {i} ({_trigger_text(specs[i] if i < len(specs) else {})}) -> "
                      f"{p['target']}: {p['attack_success_rate']:.4f}"
                      for i, p in enumerate(report["per_trigger"])]
    _print(args, report, lines)


SCAN_SETTINGS = ("steps", "batch_size", "nb_sample", "lr", "init_cost", "regularization",
                 "attack_succ_threshold", "patience", "cost_multiplier", "early_stop_threshold",
                 "early_stop_patience", "upsample_size", "restarts", "mask_init", "loss",
                 "starts", "start_steps", "start_nb_sample")


# Scan flags of each method; the other method's flags are refused when set.
GANGSWEEP_SETTINGS = ("epochs", "batch_size", "lr", "patience", "k", "filters", "residual_blocks",
                      "max_images", "min_steps_per_epoch", "alpha_gate", "statistic",
                      "persistence_threshold")


def _flag(name):
    return "--" + name.replace("_", "-")


def cmd_scan(args):
    from nc_tf import datasets
    from nc_tf.models import load_model
    from nc_tf.scan import scan

    gangsweep = args.method == "gangsweep"
    mine = GANGSWEEP_SETTINGS if gangsweep else SCAN_SETTINGS
    theirs = [k for k in SCAN_SETTINGS + GANGSWEEP_SETTINGS if k not in mine]
    wrong = [_flag(k) for k in theirs if getattr(args, k) is not None]
    wrong += [f for f, on in (("--low-cost", args.low_cost), ("--partial", args.partial),
                              ("--suspected", args.suspected is not None)) if gangsweep and on]
    if wrong:
        other = "neural-cleanse" if gangsweep else "gangsweep"
        raise ValueError(f"{', '.join(wrong)} belong(s) to --method {other}, not --method "
                         f"{args.method}; drop them or change --method.")
    overrides = {k: getattr(args, k) for k in mine if getattr(args, k) is not None}
    labels = None
    if args.labels:
        if any("->" in v for v in args.labels):
            raise ValueError("--labels of a scan are labels such as 3,7; pairs such as 3->7 "
                             "name partial-scan results (mitigate --labels).")
        labels = [int(v) for v in args.labels]
    model = load_model(args.model, trust_model=args.trust_model)
    x, y = datasets.load_data(args.dataset, "test", args.x_key, args.y_key, limit=args.limit)
    if gangsweep:
        from nc_tf.gangsweep import gangsweep_scan

        record = gangsweep_scan(model, x, y, labels=labels, out_dir=args.out,
                                intensity=args.intensity or "raw", seed=args.seed,
                                progress=not args.json, verbose=not args.json,
                                model_path=args.model, **overrides)
        if args.json:
            _print(args, record, [])
        else:
            print(f"results: {os.path.join(args.out, 'results.json')}")
        return
    prefix = os.path.splitext(os.path.basename(str(args.dataset)))[0]
    common = dict(out_dir=args.out, preset=args.preset, intensity=args.intensity or "raw",
                  seed=args.seed, slots=args.slots, prefix=prefix, progress=not args.json,
                  verbose=not args.json, model_path=args.model, **overrides)
    if args.divide_and_conquer and not args.partial:
        raise ValueError("--divide-and-conquer is a mode of --partial; add --partial.")
    if args.partial:
        if args.low_cost or args.suspected is not None:
            raise ValueError("--partial cannot be combined with --low-cost or --suspected; "
                             "use --labels to restrict the targets.")
        from nc_tf.partial import partial_scan

        record = partial_scan(model, x, y, targets=labels,
                              divide_and_conquer=args.divide_and_conquer, beam=args.beam,
                              accept_low_accuracy=args.accept_low_accuracy, **common)
    else:
        record = scan(model, x, y, labels=labels, suspected=args.suspected,
                      low_cost=args.low_cost, accept_low_accuracy=args.accept_low_accuracy,
                      **common)
    record.pop("triggers")
    if args.json:
        _print(args, record, [])
    else:
        print(f"results: {os.path.join(args.out, 'results.json')}")


def cmd_mitigate(args):
    from mitigation.methods import needing
    from mitigation.mitigate import mitigate, split_data
    from mitigation.verification import scan_reference
    from nc_tf import datasets
    from nc_tf.identity import weights_sha256
    from nc_tf.layers import resolve_layer
    from nc_tf.models import check_model_data, load_model
    from nc_tf.scan import read_scan_record, scan_triggers

    _, attack_triggers, intensity = _read_attack(args)
    mine = set(METHODS[args.method].options)
    wrong = [_flag(flag) for flag in sorted({f for m in METHODS.values() for f in m.options})
             if flag not in mine and flag != "focus" and getattr(args, flag) is not None]
    wrong += ["--no-focus"] if args.method != "repair" and args.focus is False else []
    if wrong:
        users = sorted(name for name, m in METHODS.items()
                       if any(_flag(f) in wrong for f in m.options))
        raise ValueError(f"{', '.join(wrong)} belong(s) to --method {'/'.join(users) or 'repair'}, "
                         f"not --method {args.method}; drop them or change --method.")
    if args.method == "gangsweep" and args.labels and any("->" in v for v in args.labels):
        raise ValueError("--method gangsweep patches labels such as 3,7; pairs such as 3->7 "
                         "name partial-scan results.")
    if args.method in needing("scan") and not args.scan:
        raise ValueError(f"--method {args.method} removes the reversed triggers of a scan: add "
                         "--scan DIR (run `nc-tf scan MODEL --out DIR` first).")
    labels = args.labels
    if args.method in needing("generators"):
        if not args.scan:
            raise ValueError("--method gangsweep patches with a GangSweep scan's generators: add "
                             "--scan DIR (run `nc-tf scan MODEL --method gangsweep --out DIR`).")
        from nc_tf.gangsweep import load_generators

        generators = load_generators(args.scan, [int(v) for v in labels] if labels else None)
        if not generators:
            raise ValueError(f"The GangSweep scan in {args.scan} flags no label, so there is "
                             "nothing to patch; pass --labels to patch chosen labels anyway.")
        triggers = []
    else:
        generators = None
        triggers = scan_triggers(args.scan, labels, verbose=not args.json) if args.scan else []
        if args.method in needing("scan") and not triggers:
            raise ValueError(f"The scan in {args.scan} flags no label, so --method "
                             f"{args.method} has no trigger to remove; pass --labels to remove "
                             "chosen labels' triggers anyway.")
    record = read_scan_record(args.scan) if args.scan else None
    verified_labels = None
    if labels and scan_reference(record) is not None:
        verified_labels = [int(v) for v in labels]
    model = load_model(args.model, trust_model=args.trust_model)
    if getattr(args, "layer", None) is not None:
        resolve_layer(model, args.layer)  # a wrong --layer is refused before the data is read
    scanned = (record or {}).get("identity") or {}
    if scanned.get("weights_sha256") and scanned["weights_sha256"] != weights_sha256(model):
        raise ValueError(f"The scan in {args.scan} was made from another model (weights sha256 "
                         f"{scanned['weights_sha256'][:12]}), not {args.model}; scan this model "
                         "first and pass that folder.")
    x_train, y_train = datasets.load_data(args.dataset, "train", limit=args.train_limit)
    x_test, y_test = datasets.load_data(args.dataset, "test", args.x_key, args.y_key,
                                        limit=args.limit)
    check_model_data(model, x_test, y_test, name=f"data set {args.dataset!r}")
    data = split_data(x_train, y_train, x_test, y_test, args.val_ratio, args.seed)
    options = {kw: getattr(args, flag) for flag, kw in METHODS[args.method].options.items()
               if getattr(args, flag) is not None}
    scan_options = {k: getattr(args, flag) for flag, k in
                    (("preset", "preset"), ("restarts", "restarts"), ("scan_steps", "steps"))
                    if getattr(args, flag) is not None} or None
    _, report = mitigate(args.method, model, data, triggers, attack_triggers,
                         out_dir=args.out, force=args.force, intensity=intensity, seed=args.seed,
                         scan_options=scan_options, verbose=not args.json,
                         generators=generators, scan_record=record, labels=verified_labels,
                         peel=args.peel, verify=args.verify, model_path=args.model,
                         accept_low_accuracy=args.accept_low_accuracy, **options)
    if args.json:
        _print(args, report, [])
    else:
        print(f"report: {os.path.join(args.out, 'mitigation.json')}")
    if report["verification"]["verified"] is False:
        surviving = ", ".join(map(str, report["verification"]["surviving"]))
        print(f"nc-tf mitigate: warning: the repair is NOT verified: a fresh scan of the "
              f"repaired model still finds a small trigger for label(s) {surviving} "
              f"(see {os.path.join(args.out, 'mitigation.json')}); try --method repair or "
              "more --rounds", file=sys.stderr)
        return 3


def cmd_detect(args):
    from nc_tf.scan import detect_dir

    result = detect_dir(args.scan_dir, verbose=not args.json)
    if args.json:
        _print(args, result, [])


def cmd_preview(args):
    from mitigation.preview import check_out_path, load_images, preview_grid

    check_out_path(args.out, args.force)  # before reading the data: refuse at once
    images = load_images(args.source, limit=args.n_images, x_key=args.x_key, y_key=args.y_key)
    grid = preview_grid(images, pipeline=args.pipeline, n_images=args.n_images,
                        n_variants=args.variants, seed=args.seed, path=args.out,
                        force=args.force)
    rows = min(len(images), args.n_images)
    print(f"preview: {args.out} ({rows} images x {args.variants} {args.pipeline} variants, "
          f"{grid.shape[1]}x{grid.shape[0]} px)")


if __name__ == "__main__":
    sys.exit(main())
