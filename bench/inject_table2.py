"""Neural Cleanse Table II: BadNets on MNIST and GTSRB, infected vs clean twin.

Trains (or reuses, if already in runs/bench/) the four reference models that
later benchmarks scan and repair:

    runs/bench/mnist_badnets  runs/bench/mnist_clean
    runs/bench/gtsrb_badnets  runs/bench/gtsrb_clean

4x4 white square, margin 1, 10% per target, targets 7 (MNIST) and 33
(GTSRB, as the authors' published trigger), reference architectures.

Usage: python bench/inject_table2.py [--only mnist|gtsrb] [--retrain]
"""

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np  # noqa: E402
from _common import MODELS_DIR, print_peak_rss, report_figures  # noqa: E402

from injection import load_triggers, square_trigger  # noqa: E402
from injection.inject import train_and_save  # noqa: E402
from nc_tf import datasets, models  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.metrics import attack_success_rate, predict_labels  # noqa: E402

PUBLISHED = {  # ASR / infected acc / clean acc, NC Table II (%)
    "mnist": (99.90, 98.54, 98.88),
    "gtsrb": (97.40, 96.51, 96.83),
}
SETTINGS = {
    "mnist": {"target": 7, "epochs": 10, "ratio": 0.1},
    "gtsrb": {"target": 33, "epochs": 10, "ratio": 0.1},
}
TARGET_ASR = {"mnist": 99.0, "gtsrb": 97.0}


def get(name, infected, retrain, ratio=None, suffix=""):
    out = os.path.join(MODELS_DIR, f"{name}_{'badnets' if infected else 'clean'}{suffix}")
    report_file = os.path.join(out, "attack.json" if infected else "train.json")
    if os.path.exists(report_file) and not retrain:
        return read_json(report_file), "reused"
    if os.path.isdir(out):
        shutil.rmtree(out)
    s = SETTINGS[name]
    trig = (lambda shape: [square_trigger(shape, s["target"], 4, 1)]) if infected else ()
    report = train_and_save(
        out, name, trig, ratio=ratio or s["ratio"], epochs=s["epochs"], seed=0, verbose=2
    )
    return report, "trained"


def visible_asr(name, suffix=""):
    """ASR over test images the trigger visibly changes, and the share of those images.

    A white square stamped on an already-white corner changes nothing; on
    GTSRB (not ROI-cropped) such images cap the attack success below 100%.
    """
    folder = os.path.join(MODELS_DIR, f"{name}_badnets{suffix}")
    trigger = load_triggers(os.path.join(folder, "attack.json"))[0]
    x, y = datasets.load_data(name, "test")
    stamped = trigger.apply(x)
    change = np.abs(stamped.astype(np.int16) - x.astype(np.int16)).max(axis=(1, 2, 3))
    visible = change >= 32
    pred = predict_labels(models.load_model(os.path.join(folder, "model.keras")), stamped)
    keep = y != trigger.target
    fail = keep & (pred != trigger.target)
    region = trigger.mask[..., 0] > 0
    corner = x[:, region].astype(np.float32).mean(axis=(1, 2))
    print(
        f"{name}: {fail.sum()} of {keep.sum()} stamped non-target images fail; "
        f"{100 * np.mean(corner[fail] > 200):.0f}% of those have a trigger region brighter "
        f"than 200 (mean {corner[fail].mean():.0f}; {corner[keep & ~fail].mean():.0f} for "
        "the flipped ones)"
    )
    return (
        attack_success_rate(pred[visible], y[visible], trigger.target),
        float(np.mean(visible[keep])),
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", choices=tuple(SETTINGS))
    ap.add_argument("--retrain", action="store_true", help="train even if the models exist")
    ap.add_argument(
        "--ratio-20",
        action="store_true",
        help="also train GTSRB with r = 0.25 (20%% of samples poisoned, the paper's "
        "upper end) into runs/bench/gtsrb_badnets_r20",
    )
    args = ap.parse_args()
    rows = []
    for name in [args.only] if args.only else list(SETTINGS):
        t0 = time.time()
        inf, how_i = get(name, True, args.retrain)
        clean, how_c = get(name, False, args.retrain)
        rows.append((name, inf, clean, how_i, how_c, time.time() - t0))
    if args.ratio_20:
        t0 = time.time()
        inf, how_i = get("gtsrb", True, args.retrain, ratio=0.25, suffix="_r20")
        clean = get("gtsrb", False, False)[0]
        rows.append(("gtsrb", inf, clean, how_i, "reused", time.time() - t0))
    print("\nNeural Cleanse Table II (BadNets), ours vs published (%)")
    print(
        f"{'data':6} {'ASR':>14} {'infected acc':>16} {'clean acc':>16} {'gap':>6} {'train s':>9}  verdict"
    )
    for name, inf, clean, how_i, how_c, _ in rows:
        pa, pi, pc = PUBLISHED[name]
        asr, acc_i, acc_c = (
            100 * inf["attack_success_rate"],
            100 * inf["clean_accuracy"],
            100 * clean["clean_accuracy"],
        )
        gap = acc_c - acc_i
        ok = asr >= TARGET_ASR[name] and gap <= 1.0
        wall = inf["training"]["wall_time_s"] + clean["training"]["wall_time_s"]
        label = (
            name
            if inf["training"]["per_label_ratio"] == 0.1
            else f"{name} r={inf['training']['per_label_ratio']}"
        )
        print(
            f"{label:6} {asr:6.2f} ({pa:5.2f}) {acc_i:7.2f} ({pi:5.2f}) {acc_c:7.2f} ({pc:5.2f}) "
            f"{gap:6.2f} {wall:9.0f}  {'PASS' if ok else 'FAIL'} "
            f"(target ASR >= {TARGET_ASR[name]}, gap <= 1.0; models {how_i}/{how_c})"
        )
        report_figures(
            **{label: dict(asr=asr, infected_acc=acc_i, clean_acc=acc_c, gap=gap, meets=ok)}
        )
    print("\nImages the trigger cannot change (corner already white) are a ceiling on ASR:")
    for name, inf, *_ in rows:
        r20 = inf["training"]["per_label_ratio"] != SETTINGS[name]["ratio"]
        asr_v, share = visible_asr(name, "_r20" if r20 else "")
        print(
            f"{name + (' r=0.25' if r20 else ''):6} share of non-target test images the trigger changes (any pixel by >= 32): "
            f"{100 * share:.2f}%; ASR on those: {100 * asr_v:.2f}%"
        )
    print_peak_rss()


if __name__ == "__main__":
    main()
