"""Every attack variant: clean accuracy, attack success and the Neural Cleanse verdict.

For each variant of `injection.attacks` it trains (or reuses) a model with
`injection.inject.train_and_save` into runs/bench_attacks/<dataset>_<variant>/,
then scans it with the fast preset (`nc_tf.scan.scan`, test set) and prints
clean accuracy, attack success per trigger, the anomaly index and the flagged
labels, as the NC paper's Figures 11, 13, 15 and 17 do for its variants. The
verdict counts as right when the targets are flagged (all-to-all: when
anything is flagged; every label is a target).

Settings: `--epochs` (default 4) on the first `--train-limit` training images
(default: all); each variant's parameters are those of the papers (see
injection/attacks.py): 4x4 squares (trigger-size rows 4, 8, 12, 16 on GTSRB,
as GangSweep Table 3), three labels for multi-label (NC used 3 on MNIST), 9
positions for multi-trigger, source 3 for partial, blend of the nc-tf logo at
alpha 0.2 over the whole image, r = 0.1 per target (0.5 for partial and
multi-trigger, which the tiny models otherwise learn poorly; invisible: 5 %).
Everything resumes: rerun to continue.

Usage: python bench/attacks.py [--dataset mnist|gtsrb] [--variants a,b,...] [--epochs N]
       [--train-limit N] [--from-clean EPOCHS [--ft-limit N]] [--low-cost]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_peak_rss  # noqa: E402

from injection import load_triggers  # noqa: E402
from injection.attacks import build_attack, default_ratio, needs_model  # noqa: E402
from injection.inject import train_and_save  # noqa: E402
from nc_tf import datasets  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.metrics import evaluate_backdoor  # noqa: E402
from nc_tf.models import load_model  # noqa: E402
from nc_tf.scan import scan  # noqa: E402

OUT = os.path.join("runs", "bench_attacks")
TARGET = {"mnist": 7, "gtsrb": 33}
MULTI_LABEL = {"mnist": [7, 3, 5], "gtsrb": [33, 1, 12]}
# name -> (attack, build_attack keywords, r or None for the attack's default)
VARIANTS = {
    "badnets": ("badnets", {}, None),
    "noisy": ("noisy", {}, None),
    "triangle": ("shape", {"shape": "triangle"}, None),
    "checkerboard": ("shape", {"shape": "checkerboard"}, None),
    "size8": ("badnets", {"size": 8}, None),
    "size12": ("badnets", {"size": 12}, None),
    "size16": ("badnets", {"size": 16}, None),
    "all-to-all": ("all-to-all", {}, None),
    "multi-trigger": ("multi-trigger", {}, 0.5),
    "multi-label": ("multi-label", {}, None),
    "dynamic": ("dynamic", {}, None),
    "partial": ("partial", {"sources": [3]}, 0.5),
    "blend": ("blend", {"image": "logo", "alpha": 0.2}, None),
    "trojan-square": ("trojan-square", {}, None),
    "trojan-watermark": ("trojan-watermark", {}, None),
    "invisible-l2": ("invisible-l2", {}, None),
    "invisible-l0": ("invisible-l0", {}, None),
}


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", default="mnist", choices=("mnist", "gtsrb"))
    ap.add_argument("--variants", help="comma-separated (default: all): " + ",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-limit", type=int)
    ap.add_argument("--no-scan", action="store_true", help="train and evaluate only")
    ap.add_argument(
        "--from-clean",
        type=int,
        metavar="EPOCHS",
        help="train one clean model for EPOCHS epochs (<dataset>_clean/) and make "
        "each variant by fine-tuning a copy of it for --epochs "
        "(<dataset>_<variant>_ft/): GTSRB needs 10 epochs on all its images "
        "to reach the published accuracy, about 55 min per model on 2 cores",
    )
    ap.add_argument(
        "--ft-limit",
        type=int,
        metavar="N",
        help="with --from-clean: fine-tune each variant on N training images (a "
        "subset of every class; default: --train-limit)",
    )
    ap.add_argument(
        "--low-cost",
        action="store_true",
        help="NC's low-cost scan (short pass over every label, full scan of the "
        "candidates) into scan_lowcost/: about 0.4 of the full scan's time "
        "on 43 GTSRB labels (bench/scan.py --low-cost)",
    )
    args = ap.parse_args()
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = set(names) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; use {','.join(VARIANTS)}")
    xt, yt = datasets.load_data(args.dataset, "test")
    base = None
    if args.from_clean:
        clean_dir = os.path.join(OUT, f"{args.dataset}_clean")
        base = os.path.join(clean_dir, "model.keras")
        if not os.path.exists(base):
            train_and_save(
                clean_dir,
                args.dataset,
                (),
                epochs=args.from_clean,
                limit=args.train_limit,
                force=True,
                verbose=0,
            )
        print(
            f"base: {base}, clean accuracy "
            f"{read_json(os.path.join(clean_dir, 'train.json'))['clean_accuracy']:.4f}",
            flush=True,
        )
    ft_limit = args.ft_limit if base and args.ft_limit else args.train_limit
    rows = []
    for name in names:
        attack, kwargs, ratio = VARIANTS[name]
        folder = os.path.join(OUT, f"{args.dataset}_{name}" + ("_ft" if base else ""))
        targets = MULTI_LABEL[args.dataset] if attack == "multi-label" else [TARGET[args.dataset]]
        t0 = time.time()
        if not os.path.exists(os.path.join(folder, "attack.json")):
            if needs_model(attack):

                def triggers(shape, model, attack=attack, kwargs=kwargs, targets=targets):
                    return build_attack(attack, shape, targets, model=model, **kwargs)
            else:

                def triggers(shape, num_classes, attack=attack, kwargs=kwargs, targets=targets):
                    return build_attack(attack, shape, targets, num_classes=num_classes, **kwargs)

            train_and_save(
                folder,
                args.dataset,
                triggers,
                ratio=ratio or default_ratio(attack),
                epochs=args.epochs,
                limit=ft_limit,
                force=True,
                verbose=0,
                pretrain_epochs=args.epochs if needs_model(attack) else 0,
                base_model=base,
            )
        train_s = time.time() - t0
        model = load_model(os.path.join(folder, "model.keras"))
        report = read_json(os.path.join(folder, "attack.json"))
        result = evaluate_backdoor(model, xt, yt, load_triggers(report))
        per = [p["attack_success_rate"] for p in result["per_trigger"]]
        row = {
            "variant": name,
            "accuracy": result["accuracy"],
            "asr_mean": float(sum(per) / len(per)),
            "asr_min": min(per),
            "train_s": train_s,
            "targets": report["targets"],
        }
        if not args.no_scan:
            scan_dir = os.path.join(folder, "scan_lowcost" if args.low_cost else "scan")
            record = scan(
                model,
                xt,
                yt,
                out_dir=scan_dir,
                progress=False,
                verbose=False,
                prefix=args.dataset,
                low_cost=args.low_cost,
            )
            outlier = record["outlier"]
            flagged = sorted(int(label) for label, _ in outlier["flagged"])
            wanted = set(report["targets"])
            right = bool(flagged) if attack == "all-to-all" else wanted <= set(flagged)
            row.update(
                ai=outlier["anomaly_index"],
                flagged=flagged,
                scan_s=record.get("wall_time_s", float("nan")),
                verdict="detected" if right else "missed",
            )
        rows.append(row)
        print(_line(row), flush=True)
    kind = "low-cost" if args.low_cost else "fast-preset"
    how = (
        f"fine-tuned {args.epochs} epochs on {ft_limit or 'all'} images from {base}"
        if base
        else f"{args.epochs} epochs"
    )
    print(
        f"\nAttack variants on {args.dataset} ({how}; ASR mean / min over "
        f"triggers; NC {kind} scan of the test set)"
    )
    print(
        f"{'variant':17} {'acc':>6} {'ASR mean':>9} {'ASR min':>8} {'AI':>6}  {'flagged':18} "
        f"{'verdict':9} {'targets':12} {'scan s':>6}"
    )
    for row in rows:
        print(_line(row))
    print(f"models and scans: {OUT}/{args.dataset}_<variant>{'_ft' if base else ''}/")
    print_peak_rss(4)


def _line(row):
    ai = f"{row['ai']:6.2f}" if "ai" in row else "     -"
    return (
        f"{row['variant']:17} {row['accuracy']:6.4f} {row['asr_mean']:9.4f} "
        f"{row['asr_min']:8.4f} {ai}  {str(row.get('flagged', '-')):18} "
        f"{row.get('verdict', '-'):9} {str(row['targets'] or 'i+1'):12} "
        f"{row.get('scan_s', 0):6.0f}"
    )


if __name__ == "__main__":
    main()
