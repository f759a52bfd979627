"""The `nc-tf` argument parser: one function per sub-command, and the option types.

The option types and shared option groups are in `nc_tf.cli_options`. The
tables of attacks and methods come from the caller
(`nc_tf.cli`), so this module imports neither `injection` nor `mitigation`.
"""

import argparse

from nc_tf.cli_options import (
    COUNT,
    FRACTION,
    OPEN_FRACTION,
    SHARE,
    WHOLE,
    Parser,
    add_data_args,
    add_model_args,
    add_training_args,
    label_list,
)
from nc_tf.cli_scan_parser import scan_many_parser, scan_parser
from nc_tf.preprocess import INTENSITY_RANGES


def _inject_parser(sub, tables):
    """The `nc-tf inject` sub-command."""
    p = sub.add_parser(
        "inject",
        help="train a model with a backdoor (BadNets and variants)",
        description="Train a reference model on data poisoned with an attack's "
        "triggers; writes OUT/model.keras and OUT/attack.json (the "
        "trigger specs that re-apply them exactly).",
    )
    add_data_args(p)
    add_training_args(p)
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
    add_data_args(p)
    add_training_args(p)


def _evaluate_parser(sub, tables):
    """The `nc-tf evaluate` sub-command."""
    p = sub.add_parser(
        "evaluate",
        help="clean accuracy and attack success rate of a model",
        description="Measure clean accuracy on the test split and, with "
        "--attack, the attack success rate of its triggers.",
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--attack", help="attack.json written by `nc-tf inject`")


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
    add_model_args(p)
    add_data_args(p)
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
        type=label_list,
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
        "--scan-starts",
        type=COUNT,
        help="repair, verification: short starts per label in their scans, the most "
        "promising continuing (default: the preset's; 1 is faster)",
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
    g.add_argument(
        "--gym-variant",
        choices=("notebook", "paper"),
        help="gym: the intensive pipeline's sizes, the published notebook's or the "
        "paper's text (downscale 0.75, resize 0.8, shrink to [0.8, 1]) (default: notebook)",
    )


def _detect_parser(sub, tables):
    """The `nc-tf detect` sub-command."""
    p = sub.add_parser(
        "detect",
        help="MAD outlier test on a scan folder",
        description="Print the reference MAD report (median, MAD, anomaly index, "
        "flagged labels) of a scan folder's results.json, or of its "
        "mask PNGs as the reference code did, then the verdict of the scan's "
        "rule (default scans: MAD of log norms over the labels whose trigger "
        "reached the success threshold; the labels left out are named).",
    )
    p.add_argument("scan_dir", help="folder written by `nc-tf scan`")
    p.add_argument(
        "--rule",
        choices=("log_mad", "reference"),
        help="verdict rule of a Neural Cleanse scan: log_mad = MAD of log norms over the "
        "labels whose trigger reached the success threshold; reference = the reference "
        "MAD test (default: the scan's own rule)",
    )
    p.add_argument(
        "--norm-source",
        choices=("float", "png"),
        help="Neural Cleanse norms: float = the exact sums in results.json; png = each mask "
        "read back from its 8-bit PNG, the reference's measurement (default: png for a "
        "--preset reference scan or a folder of PNGs only, else float)",
    )
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


def _report_parser(sub, tables):
    """The `nc-tf report` sub-command."""
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page: verdict, triggers, Grad-CAM, activations",
        description="Write one HTML page about a model from its scan and mitigation "
        "folders: the verdict banner, the trigger gallery, the norm plot, the Grad-CAM "
        "grid and the activation analysis of Cheng et al., and per folder kind the "
        "GangSweep statistics or the mitigation's before/after figures and curves. Images "
        "are inside the file, which reads offline.",
    )
    p.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="a folder written by `nc-tf scan` (Neural Cleanse, partial or GangSweep) or "
        "`nc-tf mitigate`; its kind is told by its files",
    )
    p.add_argument(
        "--model", required=True, help="the model the folders are about (.keras or Keras-2 .h5)"
    )
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="allow model files whose layers run code (Lambda, custom layers)",
    )
    add_data_args(p, intensity=False)
    p.add_argument(
        "--intensity",
        choices=INTENSITY_RANGES,
        help="the model's preprocessing of raw [0,255] pixels (default: the one the first "
        "folder recorded, else --attack's, else raw)",
    )
    p.add_argument(
        "--attack",
        help="attack.json of `nc-tf inject`: adds the original trigger to the Grad-CAM grid "
        "and the activation analysis",
    )
    p.add_argument(
        "--clean-model",
        help="a vanilla model trained on clean data: adds its rows to the Grad-CAM grid",
    )
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")


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
        scan_parser,
        scan_many_parser,
        _mitigate_parser,
        _detect_parser,
        _preview_parser,
        _report_parser,
    ):
        add(sub, tables)
    return parser
