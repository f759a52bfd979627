"""GangSweep next to Neural Cleanse on the same backdoored models, ours next to the published.

Each case is a model trained with the attack catalogue (`injection.attacks`
through `injection.inject.train_and_save`) into runs/bench_gangsweep/<case>/,
then, on the first `--n-scan` test images:

- GangSweep: `nc_tf.gangsweep.gangsweep_scan` (folder gangsweep/), its
  verdict (anomaly index, flagged labels, the target's persistence) with
  the paper's statistic and with nc-tf's target margin (AI_M, flag_M), then
  patching (`mitigation.mitigate`, method "gangsweep", 3 epochs) with the
  flagged labels' generators (when nothing is flagged: the target's, and
  the row says "forced");
- Neural Cleanse: the fast-preset scan (`nc_tf.scan.scan`, folder nc/), its
  verdict, then unlearning (`mitigate`, method "unlearn") with the flagged
  labels' reversed triggers (the target's when nothing is flagged: "forced").

It prints clean accuracy and the original trigger's attack success (the
whole test set, the highest over the triggers) before and after each repair,
both anomaly indices, and each method's wall time (scan, repair), beside
the published figures (GangSweep paper, Tables 3-5 and Fig. 11):

- table5-mnist, table5-gtsrb: BadNets (4x4 white square, target 7 / 33);
  published patching 98.9 / 99.8 -> 99.1 / 0.24 (MNIST), 97.4 / 98.9 ->
  98.5 / 0.15 (GTSRB);
- table3-<s>: GTSRB, the nc-tf logo as an opaque s x s trigger, target 37,
  s = 4, 8, 12, 16; published AI GangSweep 8.66 / 5.91 / 8.47 / 2.55,
  NC 2.56 / 2.21 / 1.8 / 1.6;
- table4-<a>: GTSRB, the logo over the whole image at transparency a,
  target 10, a = 0.1, 0.2, 0.4, 0.6; published GangSweep 8.47 / 6.75 /
  3.35 / 2.10, NC 5.47 / 3.06 / 1.8 / 1.6;
- multi2, multi4, polymorphic: MNIST, two / four squares for one label (the
  first positions of `multi-trigger`) and the dynamic left-or-right
  trigger; published: GangSweep patches all to ASR < 1 %, NC does not.

Everything resumes (models, both scans per label, repairs): rerun to continue.
A GTSRB case costs far more than an MNIST one (43 generators).

Usage: python bench/gangsweep.py [--cases table5-mnist,multi2,...] [--n-scan N]
       [--min-steps-per-epoch N] [--alpha-gate 0.9] [--gs-labels 0,1,2,3,7]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_peak_rss, report_figures  # noqa: E402

from injection import load_triggers  # noqa: E402
from injection.attacks import build_attack  # noqa: E402
from injection.inject import train_and_save  # noqa: E402
from mitigation.mitigate import mitigate, split_data  # noqa: E402
from nc_tf import datasets  # noqa: E402
from nc_tf.gangsweep import MIN_STEPS_PER_EPOCH, gangsweep_scan, load_generators  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.models import load_model  # noqa: E402
from nc_tf.scan import scan, scan_triggers  # noqa: E402

OUT = os.path.join("runs", "bench_gangsweep")


def _case(dataset, attack, target, published, n=None, **kwargs):
    return {
        "dataset": dataset,
        "attack": attack,
        "target": target,
        "published": published,
        "first": n,
        "kwargs": kwargs,
    }


CASES = {
    "table5-mnist": _case("mnist", "badnets", 7, "patch 98.9/99.8 -> 99.1/0.24"),
    "table5-gtsrb": _case("gtsrb", "badnets", 33, "patch 97.4/98.9 -> 98.5/0.15"),
    "multi2": _case("mnist", "multi-trigger", 7, "GS patches to ASR < 1 %, NC not", n=2),
    "multi4": _case("mnist", "multi-trigger", 7, "GS patches to ASR < 1 %, NC not", n=4),
    "polymorphic": _case("mnist", "dynamic", 7, "GS patches to ASR < 1 %, NC not"),
}
for _size, _gs, _nc in ((4, 8.66, 2.56), (8, 5.91, 2.21), (12, 8.47, 1.8), (16, 2.55, 1.6)):
    CASES[f"table3-{_size}"] = _case(
        "gtsrb", "blend", 37, f"AI GS {_gs} / NC {_nc}", image="logo", size=_size, alpha=1.0
    )
for _alpha, _gs, _nc in ((0.1, 8.47, 5.47), (0.2, 6.75, 3.06), (0.4, 3.35, 1.8), (0.6, 2.10, 1.6)):
    CASES[f"table4-{_alpha}"] = _case(
        "gtsrb", "blend", 10, f"AI GS {_gs} / NC {_nc}", image="logo", alpha=_alpha
    )


def train(folder, case, epochs, limit):
    """The case's backdoored model (trained once, then reused)."""
    if not os.path.exists(os.path.join(folder, "attack.json")):

        def triggers(shape, num_classes):
            out = build_attack(
                case["attack"], shape, [case["target"]], num_classes=num_classes, **case["kwargs"]
            )
            return out[: case["first"]] if case["first"] else out

        ratio = 0.5 if case["attack"] == "multi-trigger" else 0.1
        train_and_save(
            folder,
            case["dataset"],
            triggers,
            ratio=ratio,
            epochs=epochs,
            limit=limit,
            force=True,
            verbose=0,
        )
    return (
        load_model(os.path.join(folder, "model.keras")),
        load_triggers(read_json(os.path.join(folder, "attack.json"))),
    )


def repair(folder, method, model, data, triggers, attack, suffix="", **options):
    """`mitigate` into folder/repair_<method><suffix>/, or its saved report when it already ran."""
    out = os.path.join(folder, f"repair_{method}{suffix}")
    path = os.path.join(out, "mitigation.json")
    if os.path.exists(path):
        return read_json(path)
    _, report = mitigate(
        method, model, data, triggers, attack, out_dir=out, verbose=False, **options
    )
    return report


def run_case(name, case, args):
    folder = os.path.join(OUT, name)
    model, attack = train(folder, case, args.epochs, args.train_limit)
    x_train, y_train = datasets.load_data(case["dataset"], "train", limit=args.train_limit)
    x_test, y_test = datasets.load_data(case["dataset"], "test")
    data = split_data(x_train, y_train, x_test, y_test)
    x_scan, y_scan = x_test[: args.n_scan], y_test[: args.n_scan]
    target = case["target"]
    row = {"case": name, "published": case["published"]}

    # Folders of a non-default step minimum or alpha gate get a suffix, so both can be kept.
    steps = args.min_steps_per_epoch
    suffix = "" if steps == MIN_STEPS_PER_EPOCH else f"_steps{steps}"
    suffix += "" if args.alpha_gate is None else f"_gate{args.alpha_gate:g}"
    gs_dir = os.path.join(folder, "gangsweep" + suffix)
    t0 = time.time()
    gs = gangsweep_scan(
        model,
        x_scan,
        y_scan,
        labels=args.gs_labels,
        out_dir=gs_dir,
        progress=True,
        verbose=False,
        min_steps_per_epoch=steps,
        alpha_gate=args.alpha_gate,
    )
    row["gs_scan_s"] = gs.get("wall_time_s", time.time() - t0)
    flagged = [t for t, _ in gs["outlier"]["flagged"]]
    margin = gs["outlier"]["other_statistic"]  # the scan judged with the paper's statistic
    row.update(
        gs_ai=gs["outlier"]["anomaly_index"],
        gs_flagged=flagged,
        gs_margin_ai=margin["anomaly_index"],
        gs_margin_flagged=[t for t, _ in margin["flagged"]],
        gs_persistence=gs["labels"][str(target)]["persistence"],
        gs_forced=not flagged,
    )
    generators = load_generators(gs_dir, flagged or [target])
    t0 = time.time()
    report = repair(
        folder, "gangsweep", model, data, [], attack, suffix=suffix, generators=generators
    )
    row["gs_patch_s"] = report.get("wall_time_s", time.time() - t0)
    row["before"], row["gs_after"] = report["before"], report["after"]

    t0 = time.time()
    nc = scan(
        model,
        x_scan,
        y_scan,
        out_dir=os.path.join(folder, "nc"),
        progress=False,
        verbose=False,
        prefix=case["dataset"],
    )
    row["nc_scan_s"] = nc.get("wall_time_s", time.time() - t0)
    nc_flagged = sorted(int(t) for t, _ in nc["outlier"]["flagged"])
    row.update(
        nc_ai=nc["outlier"]["anomaly_index"],
        nc_flagged=nc_flagged,
        nc_forced=target not in nc_flagged,
    )
    reversed_triggers = scan_triggers(
        os.path.join(folder, "nc"), nc_flagged if nc_flagged else [target]
    )
    t0 = time.time()
    report = repair(folder, "unlearn", model, data, reversed_triggers, attack)
    row["nc_unlearn_s"] = report.get("wall_time_s", time.time() - t0)
    row["nc_after"] = report["after"]
    return row


def _acc_asr(row):
    return f"{100 * row['accuracy']:5.1f}/{100 * max(row['asr_original']):5.1f}"


def _line(row):
    forced = lambda flag: "*" if flag else " "  # noqa: E731
    return (
        f"{row['case']:13} {_acc_asr(row['before']):>11} | "
        f"{row['gs_ai']:5.2f} {str(row['gs_flagged']):8} "
        f"{row['gs_margin_ai']:5.2f} {str(row['gs_margin_flagged']):8} "
        f"{row['gs_persistence']:4.2f} "
        f"{_acc_asr(row['gs_after'])}{forced(row['gs_forced'])} "
        f"{row['gs_scan_s']:5.0f}+{row['gs_patch_s']:3.0f} | "
        f"{row['nc_ai']:5.2f} {str(row['nc_flagged']):8} "
        f"{_acc_asr(row['nc_after'])}{forced(row['nc_forced'])} "
        f"{row['nc_scan_s']:4.0f}+{row['nc_unlearn_s']:3.0f} | {row['published']}"
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--cases",
        default="table5-mnist,multi2,multi4,polymorphic",
        help="comma-separated (default: the MNIST cases); all: " + ",".join(CASES),
    )
    ap.add_argument(
        "--n-scan", type=int, default=1000, help="test images both scans see (default: 1000)"
    )
    ap.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    ap.add_argument(
        "--train-limit",
        type=int,
        help="train on N images (the first N, or a subset of every class in a "
        "label-sorted split; default: all)",
    )
    ap.add_argument(
        "--min-steps-per-epoch",
        type=int,
        default=MIN_STEPS_PER_EPOCH,
        help=f"GangSweep's fewest generator steps per epoch (default: "
        f"{MIN_STEPS_PER_EPOCH}; 0: one pass, the paper; other values than the "
        "default write gangsweep_steps<N>/ and repair_gangsweep_steps<N>/)",
    )
    ap.add_argument(
        "--alpha-gate",
        type=float,
        help="GangSweep's alpha_gate (default: none, the paper's alpha rule; a value "
        "writes gangsweep_gate<G>/ and repair_gangsweep_gate<G>/)",
    )
    ap.add_argument(
        "--gs-labels",
        type=lambda v: [int(t) for t in v.split(",") if t],
        help="GangSweep scans only these labels (at least 3, the target among "
        "them): a cheaper, reduced verdict (default: every label)",
    )
    args = ap.parse_args()
    if args.gs_labels is not None and len(args.gs_labels) < 3:
        ap.error("--gs-labels needs at least 3 labels (GangSweep's MAD test)")
    names = [v for v in args.cases.split(",") if v]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown cases {unknown}; use {','.join(CASES)}")
    missing = [n for n in names if args.gs_labels and CASES[n]["target"] not in args.gs_labels]
    if missing:
        ap.error(f"--gs-labels must include the target label of {missing}")
    header = (
        f"{'case':13} {'before':>11} | GangSweep: {'AI':>5} {'flagged':8} "
        f"{'AI_M':>5} {'flag_M':8} {'P_t':4} "
        f"{'after':11} {'scan+patch s':>12} | NC: {'AI':>5} {'flagged':8} {'after':11} "
        f"{'scan+unl. s':>11} | published"
    )
    rows = []
    for name in names:
        rows.append(run_case(name, CASES[name], args))
        print(_line(rows[-1]), flush=True)
        report_figures(**{name: rows[-1]})
    print(
        f"\nGangSweep vs Neural Cleanse (acc/ASR %, full test set; ASR: the original "
        f"trigger, the highest over its triggers; scans on {args.n_scan} test images; * = nothing "
        "flagged, the target's generator / reversed trigger used anyway; GangSweep alpha_gate "
        f"{args.alpha_gate})"
    )
    print(header)
    for row in rows:
        print(_line(row))
    print(f"models, scans and repairs: {OUT}/<case>/")
    print_peak_rss(4)


if __name__ == "__main__":
    main()
