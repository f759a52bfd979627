"""Partial (source-specific) backdoor on MNIST: pair scan vs divide-and-conquer.

Trains (or reuses) runs/bench/mnist_partial_3to7: the NC MNIST model where a
4x4 white square sends only source 3 to target 7 (other labels are stamped
and keep their label; r = 0.3, 3 epochs). Then searches it with the pair scan
(all 90 source->target pairs, MAD over source-normalised norms) and with the
divide-and-conquer search, and prints for each: whether 3->7 is flagged, the
anomaly index, the flagged pairs, the optimisation jobs needed and wall time.

Usage: python bench/partial.py [--limit 3000] [--beam 2]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import MODELS_DIR, print_peak_rss  # noqa: E402

from injection import square_trigger  # noqa: E402
from injection.inject import train_and_save  # noqa: E402
from nc_tf import datasets  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.models import load_model  # noqa: E402
from nc_tf.partial import partial_scan  # noqa: E402


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--limit", type=int, default=3000, help="scan data: first N test images")
    ap.add_argument("--beam", type=int, default=2)
    args = ap.parse_args()
    folder = os.path.join(MODELS_DIR, "mnist_partial_3to7")
    if not os.path.exists(os.path.join(folder, "attack.json")):
        train_and_save(
            folder,
            "mnist",
            lambda s: [square_trigger(s, 7, 4, 1, sources=[3])],
            ratio=0.3,
            epochs=3,
            seed=0,
            verbose=2,
            force=True,
        )
    attack = read_json(os.path.join(folder, "attack.json"))
    print(
        f"model: clean acc {attack['clean_accuracy']:.4f}, ASR on source 3 "
        f"{attack['attack_success_rate']:.4f}"
    )
    model = load_model(os.path.join(folder, "model.keras"))
    x, y = datasets.load_data("mnist", "test", limit=args.limit)
    rows = []
    for mode in ("pairs", "divide-and-conquer"):
        out = os.path.join("runs", "bench_scans", f"mnist_partial_{mode}")
        t0 = time.time()
        record = partial_scan(
            model,
            x,
            y,
            out_dir=out,
            divide_and_conquer=mode != "pairs",
            beam=args.beam,
            prefix="mnist",
            model_path=folder,
        )
        flagged = [f[0] for f in record["outlier"]["flagged"]]
        rows.append(
            (
                mode,
                "3->7" in flagged,
                record["outlier"]["anomaly_index"],
                flagged,
                record["partial"]["jobs"],
                record.get("wall_time_s", time.time() - t0),
                record["partial"].get("reached"),
            )
        )
    print(
        f"\n{'search':20} {'3->7 flagged':>12} {'AI':>6} {'jobs':>5} {'wall s':>7}  flagged / reached"
    )
    for mode, hit, ai, flagged, jobs, wall, reached in rows:
        print(
            f"{mode:20} {str(hit):>12} {ai:6.2f} {jobs:5d} {wall:7.0f}  {flagged}"
            + (f" / reached {reached}" if reached else "")
        )
    print_peak_rss()


if __name__ == "__main__":
    main()
