"""The paper's alpha rule next to nc-tf's `alpha_gate`, epoch by epoch.

Scans the given labels of a `bench/gangsweep.py` model (`gangsweep_scan`,
library defaults, the first `--n-scan` test images, as that benchmark does)
once per `--alpha-gate` value (`none`: the paper's rule, alpha 1/2 whenever
L_pert > L_adv), into runs/bench_gangsweep/<case>/alpha/gate_<G>/, and
prints every epoch (alpha, L_pert, L_adv, the share sent to the label, the
alpha-free objective; `*` marks the epoch kept), then the generator's
persistence, own attack success, target margin and L2 norm. An epoch that
ends with L_pert < 0.05 and fewer than half the images sent is marked
"collapsed" (G(x) = 0; `nc_tf.gangsweep.collapsed_epochs`).

Meant for models whose generators collapse under the paper's rule, such as
the GTSRB BadNets model (table5-gtsrb, target 33).

Usage: python bench/gangsweep_alpha.py [--case table5-gtsrb] [--labels 33,1]
       [--alpha-gate none,0.9] [--n-scan 500]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_peak_rss  # noqa: E402

from nc_tf.datasets import load_data  # noqa: E402
from nc_tf.gangsweep import collapsed_epochs, gangsweep_scan  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.models import load_model  # noqa: E402


def _gate(value):
    return None if value.lower() == "none" else float(value)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--case",
        default="table5-gtsrb",
        help="a bench/gangsweep.py case already trained (default: table5-gtsrb)",
    )
    ap.add_argument("--labels", default="33,1", help="comma-separated labels (default: 33,1)")
    ap.add_argument(
        "--alpha-gate",
        default="none,0.9",
        help="comma-separated alpha_gate values, none = the paper's rule (default: none,0.9)",
    )
    ap.add_argument("--n-scan", type=int, default=500, help="test images (default: 500)")
    args = ap.parse_args()
    folder = os.path.join("runs", "bench_gangsweep", args.case)
    if not os.path.exists(os.path.join(folder, "model.keras")):
        ap.error(
            f"{folder}/model.keras not found: run `python bench/gangsweep.py --cases "
            f"{args.case}` first"
        )
    model = load_model(os.path.join(folder, "model.keras"))
    dataset = read_json(os.path.join(folder, "attack.json")).get("dataset", "gtsrb")
    x, y = load_data(dataset, "test", limit=args.n_scan)
    labels = [int(v) for v in args.labels.split(",") if v]
    summary = []
    for gate in (_gate(v) for v in args.alpha_gate.split(",") if v):
        out = os.path.join(folder, "alpha", f"gate_{gate}")
        record = gangsweep_scan(
            model, x, y, labels=labels, out_dir=out, alpha_gate=gate, progress=True, verbose=False
        )
        for label in labels:
            entry = record["labels"][str(label)]
            h = entry["history"]
            print(f"\nlabel {label}, alpha_gate {gate}:")
            print(
                f"{'epoch':>5} {'alpha':>5} {'L_pert':>7} {'L_adv':>7} {'sent':>6} {'objective':>9}"
            )
            dead = collapsed_epochs(h)
            for i, (a, p, d, s, c) in enumerate(
                zip(h["alpha"], h["l_pert"], h["l_adv"], h["success"], dead), start=1
            ):
                mark = "*" if i == h.get("kept_epoch") else " "
                note = "  collapsed" if c else ""
                print(f"{i:5d} {a:5.1f} {p:7.3f} {d:7.3f} {s:6.3f} {p + d:9.3f}{mark}{note}")
            summary.append((label, gate, entry, any(dead)))
    print(
        f"\n{args.case} ({args.n_scan} test images): label, alpha_gate -> persistence, "
        "own ASR, margin, L2, epochs, seconds, collapsed"
    )
    for label, gate, e, dead in summary:
        print(
            f"{label:3d} {str(gate):>5}  P {e['persistence']:.3f}  ASR "
            f"{e['attack_success_rate']:.3f}  margin {e['margin']:6.2f}  L2 {e['l2']:.2f}  "
            f"{e['epochs']:2d} ep  {e['seconds']:5.0f} s  {'yes' if dead else 'no'}"
        )
    print("(the paper's gate: persistence >= 0.9)")
    print_peak_rss(4)


if __name__ == "__main__":
    main()
