"""Neural Cleanse detection on the benchmark models: wall time, anomaly index, flags.

Scans runs/bench/{mnist,gtsrb}_{badnets,clean} (made by bench/inject_table2.py)
with the chosen preset on the test set and prints, per model, the full-scan
wall time (target <= 10 min for GTSRB's 43 labels on this machine: the
authors' GPU time), the anomaly index (published: infected > 3, clean < 2;
GTSRB 3.65) and the flagged labels. Scan folders go to runs/bench_scans/.

With --low-cost it runs the low-cost scan instead and prints its wall time
against the full scan's (run the full scan first; target <= 1/4, same verdict).

Usage: python bench/scan.py [--preset fast|reference] [--only mnist|gtsrb] [--limit N] [--low-cost]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import MODELS_DIR, print_peak_rss, report_figures  # noqa: E402

from nc_tf import datasets  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.models import load_model  # noqa: E402
from nc_tf.scan import scan  # noqa: E402

PUBLISHED_AI = {
    "gtsrb_badnets": "3.65 (> 3)",
    "mnist_badnets": "> 3",
    "gtsrb_clean": "< 2",
    "mnist_clean": "< 2",
}
TARGET_SECONDS = 600


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="fast", choices=("fast", "reference"))
    ap.add_argument("--only", choices=("mnist", "gtsrb"))
    ap.add_argument("--limit", type=int, help="scan data: first N test images (default: all)")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--low-cost", action="store_true")
    args = ap.parse_args()
    rows = []
    for name in ("mnist", "gtsrb"):
        if args.only and name != args.only:
            continue
        x, y = datasets.load_data(name, "test", limit=args.limit)
        for kind in ("badnets", "clean"):
            folder = os.path.join(MODELS_DIR, f"{name}_{kind}")
            if not os.path.exists(os.path.join(folder, "model.keras")):
                print(f"skip {folder}: run bench/inject_table2.py first")
                continue
            target = (
                read_json(os.path.join(folder, "attack.json"))["targets"][0]
                if kind == "badnets"
                else None
            )
            full_dir = os.path.join("runs", "bench_scans", f"{name}_{kind}_{args.preset}")
            out = full_dir + ("_lowcost" if args.low_cost else "")
            t0 = time.time()
            record = scan(
                load_model(os.path.join(folder, "model.keras")),
                x,
                y,
                out_dir=out,
                preset=args.preset,
                slots=args.slots,
                prefix=name,
                model_path=os.path.join(folder, "model.keras"),
                low_cost=args.low_cost,
            )
            wall = time.time() - t0
            if args.low_cost:
                full = os.path.join(full_dir, "results.json")
                full_s = read_json(full)["wall_time_s"] if os.path.exists(full) else float("nan")
                info = record["low_cost"]
                print(
                    f"{name}_{kind}: low-cost {record['wall_time_s']:.0f} s (short pass "
                    f"{info['short_pass_seconds']:.0f} s, {info['iterations']} iterations, "
                    f"{len(record['labels'])} labels fully optimised) vs full {full_s:.0f} s: "
                    f"ratio {record['wall_time_s'] / full_s:.2f} (target <= 0.25)"
                )
            o = record["outlier"]
            flagged = [f[0] for f in o["flagged"]]
            ok = (
                (target in flagged and o["anomaly_index"] > 2)
                if target is not None
                else not flagged
            )
            rows.append(
                (
                    f"{name}_{kind}",
                    len(record["labels"]),
                    wall,
                    record.get("wall_time_s"),
                    o["anomaly_index"],
                    flagged,
                    target,
                    ok,
                )
            )
    print(f"\nNeural Cleanse {'low-cost ' if args.low_cost else ''}scan, preset {args.preset!r}")
    print(
        f"{'model':15} {'labels':>6} {'wall s':>8} {'target s':>9} {'AI':>6} {'published AI':>13}  flagged (target)  verdict"
    )
    for name, n, wall, scan_s, ai, flagged, target, ok in rows:
        print(
            f"{name:15} {n:6d} {wall:8.0f} {TARGET_SECONDS:9d} {ai:6.2f} {PUBLISHED_AI[name]:>13}  "
            f"{flagged} ({target})  {'correct' if ok else 'WRONG'}"
        )
        report_figures(
            **{name: dict(labels=n, wall_s=wall, anomaly_index=ai, flagged=flagged, correct=ok)}
        )
    print(
        "(wall s includes resumed labels' time only if scanned in this run: "
        "delete runs/bench_scans/ to rescan from scratch)"
    )
    print_peak_rss(4)


if __name__ == "__main__":
    main()
