"""How far the tested quantities move when the test fixture is trained at other seeds.

The suite trains its tiny backdoored MNIST model (and its clean twin) once,
deterministically, at seed 1 (`tests/recipes.py`). Each statistical
assertion of the suite has a bar the method must reach; this benchmark
trains the same recipe at several seeds and prints, per quantity, its value
at each seed beside the bar, and at how many seeds the bar is reached. A bar
missed at some seed is a finding about the method, not a threshold to move.

Quantities (test -> assertion):
- tiny scan (tests/test_scan.py): label 7 flagged alone, anomaly index > 2,
  the reversed trigger's success >= 0.9 and > 30% of its mask on the real
  trigger; the clean twin: anomaly index < 2, nothing flagged;
- input filter (tests/test_mitigation.py): clean FPR < 0.1, FNR < 0.1;
- pruning: the real trigger's success < 0.2 after, accuracy loss <= 0.05;
- unlearning: the real trigger's success < 0.2 after.

Usage: python bench/fixture_spread.py [--seeds 1,2,3,4,5]
"""

import argparse
import os
import sys
import tempfile
import time

# The suite's configuration (tests/conftest.py), so the seed-1 row is the suite's fixture.
os.environ["TF_DETERMINISTIC_OPS"] = "1"
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import numpy as np  # noqa: E402
from _common import print_peak_rss  # noqa: E402
from recipes import tiny_backdoored_model, tiny_clean_model  # noqa: E402

from mitigation.filter import fit_filter  # noqa: E402
from mitigation.pruning import prune  # noqa: E402
from mitigation.unlearning import unlearn  # noqa: E402
from nc_tf.datasets import load_data  # noqa: E402
from nc_tf.metrics import evaluate_backdoor  # noqa: E402
from nc_tf.scan import load_reversed, scan, scan_triggers  # noqa: E402

# quantity -> (bar text, test: value -> bool)
BARS = {
    "asr_before": ("> 0.9", lambda v: v > 0.9),
    "flagged_alone": ("[7]", lambda v: v == [7]),
    "anomaly_index": ("> 2", lambda v: v > 2),
    "reversed_asr": (">= 0.9", lambda v: v >= 0.9),
    "mask_on_trigger": ("> 0.3", lambda v: v > 0.3),
    "clean_anomaly_index": ("< 2", lambda v: v < 2),
    "clean_flagged": ("[]", lambda v: v == []),
    "filter_fpr": ("< 0.1", lambda v: v < 0.1),
    "filter_fnr": ("< 0.1", lambda v: v < 0.1),
    "prune_asr": ("< 0.2", lambda v: v < 0.2),
    "prune_acc_loss": ("<= 0.05", lambda v: v <= 0.05),
    "unlearn_asr": ("< 0.2", lambda v: v < 0.2),
}


def measure(seed, data, folder):
    """Every tested quantity for the fixture recipe trained at `seed`."""
    x, y, xt, yt = data
    model, trigger, _ = tiny_backdoored_model(x, y, xt, yt, seed=seed)
    before = evaluate_backdoor(model, xt, yt, [trigger])
    out = os.path.join(folder, f"scan_{seed}")
    record = scan(model, xt, yt, out_dir=out, progress=False, verbose=False)
    mask, _ = load_reversed(out, 7)
    real = trigger.mask[..., 0] > 0
    clean = scan(tiny_clean_model(x, y, seed=seed), xt, yt, progress=False, verbose=False)
    found = scan_triggers(out, labels=[7])
    flt = fit_filter(model, x[:1000], found, fpr=0.05)
    pruned, _ = prune(
        model,
        xt[:500],
        yt[:500],
        found,
        layer="last_conv",
        stop_asr=0.1,
        max_ratio=0.5,
        step=1 / 32,
    )
    after_prune = evaluate_backdoor(pruned, xt[500:], yt[500:], [trigger])
    before_half = evaluate_backdoor(model, xt[500:], yt[500:], [trigger])
    tuned, _ = unlearn(model, x, y, found, data_ratio=1.0, seed=0)
    return {
        "asr_before": before["attack_success_rate"],
        "flagged_alone": [f[0] for f in record["outlier"]["flagged"]],
        "anomaly_index": record["outlier"]["anomaly_index"],
        "reversed_asr": record["labels"]["7"]["attack_success_rate"],
        "mask_on_trigger": float(mask[real].sum() / mask.sum()),
        "clean_anomaly_index": clean["outlier"]["anomaly_index"],
        "clean_flagged": [f[0] for f in clean["outlier"]["flagged"]],
        "filter_fpr": float(np.mean(flt.flag(xt))),
        "filter_fnr": float(np.mean(~flt.flag(trigger.apply(xt[yt != 7])))),
        "prune_asr": after_prune["attack_success_rate"],
        "prune_acc_loss": before_half["accuracy"] - after_prune["accuracy"],
        "unlearn_asr": evaluate_backdoor(tuned, xt, yt, [trigger])["attack_success_rate"],
    }


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", default="1,2,3,4,5", help="fixture seeds (default: 1,2,3,4,5)")
    args = ap.parse_args()
    seeds = [int(v) for v in args.seeds.split(",")]
    x, y = load_data("mnist", "train", limit=4000)
    xt, yt = load_data("mnist", "test", limit=1000)
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            start = time.time()
            rows[seed] = measure(seed, (x, y, xt, yt), folder)
            print(f"seed {seed}: {time.time() - start:.0f} s", flush=True)
    print(f"\nTest fixture recipe at seeds {seeds} (the suite uses seed 1)")
    print(f"| quantity | bar | {' | '.join(f'seed {s}' for s in seeds)} | reached |")
    print(f"|---|---|{'---|' * len(seeds)}---|")
    for key, (bar, ok) in BARS.items():
        values = [rows[s][key] for s in seeds]
        cells = [str(v) if isinstance(v, list) else f"{v:.3f}" for v in values]
        print(
            f"| {key} | {bar} | {' | '.join(cells)} | {sum(ok(v) for v in values)}/{len(seeds)} |"
        )
    print_peak_rss()


if __name__ == "__main__":
    main()
