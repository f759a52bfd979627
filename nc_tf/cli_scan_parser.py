"""The `nc-tf scan` and `nc-tf scan-many` sub-commands, which share the scan options."""

from nc_tf.cli_options import (
    COUNT,
    FRACTION,
    NONNEG,
    POSITIVE,
    WHOLE,
    add_data_args,
    add_model_args,
    add_trust_arg,
    label_list,
    mask_init_type,
)


def scan_parser(sub, tables):
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
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, help="scan folder (resumed if it holds the same scan)")
    p.add_argument(
        "--method",
        choices=("neural-cleanse", "gangsweep"),
        default="neural-cleanse",
        help="neural-cleanse (default): mask/pattern reverse engineering; gangsweep: "
        "one perturbation generator per label (Zhu et al. MM'20)",
    )
    p.add_argument(
        "--labels", type=label_list, help="comma-separated labels to scan (default: all)"
    )
    p.add_argument("--suspected", type=WHOLE, help="scan this label first")
    add_nc_options(p)
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
        "--report",
        action="store_true",
        help="when the scan ends, write OUT/report.html, the one-page report of `nc-tf report` "
        "(replacing only a report nc-tf wrote there before)",
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


def add_nc_options(p):
    """The Neural Cleanse options that `scan` and `scan-many` share."""
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
        help="labels (or starts) optimised together in one graph (memory bound; default: "
        "as many as make 256 images per forward pass: 32 for the fast preset, 8 for the "
        "reference preset)",
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
        type=mask_init_type,
        help="initial mask: 'random' (reference) or a constant in (0, 1) "
        "(nc-tf addition; fast preset: 0.1)",
    )
    g.add_argument(
        "--loss",
        choices=("crossentropy", "reference"),
        help="attack loss: crossentropy = -log p_t; reference = the reference code's "
        "effective 16.12 (1 - p_t) (both presets: reference; see docs/cli.md)",
    )
    g.add_argument(
        "--starts",
        type=COUNT,
        help="short starts per label; the one with the smallest mask after "
        "--start-steps steps continues (nc-tf addition; fast preset: 5)",
    )
    g.add_argument(
        "--rule",
        choices=("log_mad", "reference"),
        help="verdict rule: log_mad = MAD of log norms over the labels whose trigger "
        "reached the success threshold; reference = MAD of raw norms over every label "
        "(the reference printout is shown either way; fast preset: log_mad, reference "
        "preset: reference)",
    )
    g.add_argument(
        "--start-steps", type=COUNT, help="steps of each start before the choice (fast preset: 40)"
    )
    g.add_argument(
        "--start-nb-sample", type=COUNT, help="images per step during the starts (fast preset: 128)"
    )


def scan_many_parser(sub, tables):
    """The `nc-tf scan-many` sub-command."""
    p = sub.add_parser(
        "scan-many",
        help="scan many models (files or folders of them), locally or on a Ray cluster",
        description="Run `nc-tf scan` on every model into OUT/<name>-<short sha256>/, and "
        "keep OUT/summary.json, OUT/summary.csv and OUT/index.html up to date. A "
        "folder argument stands for its .keras, .h5 and .hdf5 files. A model that "
        "fails is recorded with its error and the others go on. Rerun the same "
        "command to resume: finished models are kept, the others resume from "
        "their scan folders.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL_OR_DIR", help="model files or folders")
    add_trust_arg(p)
    add_data_args(p)
    p.add_argument("--out", required=True, help="output folder (resumed if it holds a scan-many)")
    p.add_argument(
        "--labels", type=label_list, help="comma-separated labels to scan (default: all)"
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="write each model's report.html into its scan folder (linked from the index)",
    )
    g = p.add_argument_group("engine")
    g.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (default): one model after another in this process; ray: one Ray "
        "task per model (pip install 'nc-tf[ray]')",
    )
    g.add_argument(
        "--ray-address",
        help="with --engine ray: the cluster to join, e.g. ray://head:10001 or auto "
        "(default: start Ray on this machine)",
    )
    g.add_argument(
        "--cpus-per-task", type=POSITIVE, default=1, help="CPUs per Ray task (default: 1)"
    )
    g.add_argument(
        "--gpus-per-task",
        type=NONNEG,
        default=0,
        help="GPUs per Ray task, fractions allowed (default: 0)",
    )
    g.add_argument(
        "--max-retries",
        type=WHOLE,
        default=3,
        help="retries of a Ray task whose worker died (default: 3)",
    )
    g.add_argument(
        "--split-labels",
        type=COUNT,
        default=1,
        help="with --engine ray: run each model's labels as K tasks; the outlier test "
        "runs once after them, with the single scan's results (default: 1)",
    )
    add_nc_options(p)
