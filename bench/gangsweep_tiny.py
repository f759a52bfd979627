"""How reliably a GangSweep generator finds a tiny model's backdoor.

Trains tiny backdoored MNIST models with the recipe of the test fixture
`tiny_backdoored` (tests/conftest.py: `mnist_model`, a 4x4 white square to
label 7, `inject_backdoor` with ratio 0.25 on the first `--images` training
images for `--epochs` epochs), one per `--seeds` value, then trains the
target label's generator on the first 300 test images as the GangSweep
tests do (`gangsweep_scan`, labels [7]) with the tests' fast settings
(`--generator fast`: 8 filters, 1 residual block, 10 epochs, batch 32, one
pass an epoch) or the library defaults (`--generator default`).

Per model it prints clean accuracy and trigger success, then the
generator's persistence (the 0.9 gate is the target), its own success,
target margin and L2 norm, and the wall times. Seed 1 with the default
recipe is the test fixture's model.

Usage: python bench/gangsweep_tiny.py [--seeds 1,2,3] [--images 4000]
       [--epochs 3] [--generator fast] [--alpha-gate 0.9]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import keras  # noqa: E402
from _common import print_peak_rss  # noqa: E402

from injection import inject_backdoor, square_trigger  # noqa: E402
from nc_tf.datasets import load_data  # noqa: E402
from nc_tf.gangsweep import PERSISTENCE_THRESHOLD, gangsweep_scan  # noqa: E402
from nc_tf.metrics import evaluate_backdoor  # noqa: E402
from nc_tf.models import mnist_model  # noqa: E402

GENERATORS = {
    "fast": dict(epochs=10, batch_size=32, filters=8, residual_blocks=1, min_steps_per_epoch=0),
    "default": {},
}
N_SCAN, TARGET = 300, 7


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", default="1,2,3", help="model seeds (default: 1,2,3)")
    ap.add_argument("--images", type=int, default=4000, help="training images (default: 4000)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    ap.add_argument(
        "--generator",
        choices=sorted(GENERATORS),
        default="fast",
        help="generator settings (default: fast, the tests')",
    )
    ap.add_argument(
        "--alpha-gate",
        type=float,
        help="gangsweep_scan's alpha_gate (default: none, the paper's alpha rule)",
    )
    args = ap.parse_args()
    seeds = [int(v) for v in args.seeds.split(",") if v]
    x, y = load_data("mnist", "train", limit=args.images)
    xt, yt = load_data("mnist", "test", limit=1000)
    trigger = square_trigger(x.shape[1:], target=TARGET, size=4, margin=1)
    print(
        f"{'seed':>4} {'acc':>6} {'ASR':>6} {'train s':>7} | generator {args.generator}: "
        f"{'P':>6} {'own ASR':>7} {'margin':>6} {'L2':>5} {'s':>5}"
    )
    found = 0
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        model = mnist_model()
        began = time.time()
        inject_backdoor(
            model, x, y, [trigger], ratio=0.25, epochs=args.epochs, seed=seed, verbose=0
        )
        train_s = time.time() - began
        backdoor = evaluate_backdoor(model, xt, yt, [trigger])
        began = time.time()
        record = gangsweep_scan(
            model,
            xt[:N_SCAN],
            yt[:N_SCAN],
            labels=[TARGET],
            progress=False,
            verbose=False,
            alpha_gate=args.alpha_gate,
            **GENERATORS[args.generator],
        )
        stats = record["labels"][str(TARGET)]
        found += stats["persistence"] >= PERSISTENCE_THRESHOLD
        print(
            f"{seed:4d} {backdoor['accuracy']:6.3f} "
            f"{backdoor['per_trigger'][0]['attack_success_rate']:6.3f} {train_s:7.0f} | "
            f"{'':>19}{stats['persistence']:6.3f} {stats['attack_success_rate']:7.3f} "
            f"{stats['margin']:6.2f} {stats['l2']:5.2f} {time.time() - began:5.0f}",
            flush=True,
        )
    print(
        f"generators above the {PERSISTENCE_THRESHOLD} persistence gate: {found} of "
        f"{len(seeds)} (target: all; alpha_gate {args.alpha_gate})"
    )
    print_peak_rss(3)


if __name__ == "__main__":
    main()
