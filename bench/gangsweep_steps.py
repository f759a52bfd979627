"""How many Adam steps a GangSweep generator needs to find a backdoor.

Trains one generator (`nc_tf.gangsweep.train_generator`, default width and
depth) for the target label of a `bench/gangsweep.py` model on the first
N test images, for each N and `min_steps_per_epoch` asked, then measures it
on the last 700 test images, which it never saw (`label_statistics`):
persistence, attack success and the perturbation's L2 norm. It prints the
epochs run, the epoch kept and the wall time beside them.

It is the measurement behind `MIN_STEPS_PER_EPOCH` (the two-trigger model
multi2, label 7).

Usage: python bench/gangsweep_steps.py [--case multi2] [--target 7]
       [--images 500,2000] [--min-steps 0,32]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_peak_rss  # noqa: E402

from nc_tf.datasets import load_data  # noqa: E402
from nc_tf.gangsweep import label_statistics, train_generator  # noqa: E402
from nc_tf.models import load_model  # noqa: E402

HELD_OUT = 700


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--case",
        default="multi2",
        help="a bench/gangsweep.py case already trained (default: multi2)",
    )
    ap.add_argument("--target", type=int, default=7)
    ap.add_argument("--images", default="500,2000", help="comma-separated training set sizes")
    ap.add_argument("--min-steps", default="0,32", help="comma-separated min_steps_per_epoch")
    args = ap.parse_args()
    path = os.path.join("runs", "bench_gangsweep", args.case, "model.keras")
    if not os.path.exists(path):
        ap.error(f"{path} not found: run `python bench/gangsweep.py --cases {args.case}` first")
    model = load_model(path)
    x, y = load_data("mnist", "test")
    held_x, held_y = x[-HELD_OUT:], y[-HELD_OUT:]
    print(
        f"{'images':>6} {'min steps':>9} {'epochs':>6} {'kept':>4} {'P held-out':>10} "
        f"{'ASR':>6} {'L2':>5} {'s':>5}"
    )
    for n in (int(v) for v in args.images.split(",")):
        if n > len(x) - HELD_OUT:
            ap.error(
                f"--images {n}: at most {len(x) - HELD_OUT} (the last {HELD_OUT} are held out)"
            )
        train_x = x[:n][y[:n] != args.target]
        for min_steps in (int(v) for v in args.min_steps.split(",")):
            began = time.time()
            generator, history = train_generator(
                model, train_x, args.target, min_steps_per_epoch=min_steps
            )
            stats = label_statistics(model, generator, held_x, held_y, args.target)
            print(
                f"{n:6d} {min_steps:9d} {len(history['l_pert']):6d} {history['kept_epoch']:4d} "
                f"{stats['persistence']:10.3f} {stats['attack_success_rate']:6.3f} "
                f"{stats['l2']:5.2f} {time.time() - began:5.0f}",
                flush=True,
            )
    print_peak_rss(4)


if __name__ == "__main__":
    main()
