"""Repeated GangSweep patching: does a new generator find the trigger the last patch left?

On the two-trigger model multi2, `bench/gangsweep.py` patches with label 7's
generator and one trigger survives (its generator reconstructed the other).
This benchmark continues that case round by round:

- round 1 is `bench/gangsweep.py`'s own: the generator of its scan folder
  (`<case>/gangsweep/`) and its patched model (`<case>/repair_gangsweep/`);
- round k > 1 trains a new generator for the target on the round k-1
  patched model (`gangsweep_scan`, default settings, the first `--n-scan`
  test images, folder `<case>/rounds/round_k/scan/`), then patches the
  original model with the generators of all rounds so far
  (`mitigation.gangsweep_patching.patch`, 3 epochs; saved as
  `<case>/rounds/round_k/model.keras`).

Per round it prints the new generator's persistence, own success and L2
norm, then clean accuracy and each original trigger's attack success after
patching, against the paper's target: every trigger below 1%. Rerun to
resume (scans and patched models are kept).

Usage: python bench/gangsweep_rounds.py [--case multi2] [--rounds 3]
       [--train-limit 20000] [--n-scan 500]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_peak_rss  # noqa: E402

from injection import load_triggers  # noqa: E402
from mitigation.gangsweep_patching import patch  # noqa: E402
from mitigation.mitigate import split_data  # noqa: E402
from nc_tf import datasets  # noqa: E402
from nc_tf.gangsweep import gangsweep_scan, load_generators  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.metrics import evaluate_backdoor  # noqa: E402
from nc_tf.models import load_model  # noqa: E402

OUT = os.path.join("runs", "bench_gangsweep")


def _row(k, stats, result):
    rates = " / ".join(f"{100 * r['attack_success_rate']:5.1f}" for r in result["per_trigger"])
    gen = (
        "(bench/gangsweep.py)"
        if stats is None
        else f"P {stats['persistence']:.3f} ASR {stats['attack_success_rate']:.3f} "
        f"L2 {stats['l2']:.2f} {stats['seconds']:4.0f} s"
    )
    return f"{k:5d} {gen:42} | acc {100 * result['accuracy']:5.1f}  ASR {rates}"


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--case", default="multi2", help="a bench/gangsweep.py case already run (default: multi2)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds in all (default: 3)")
    ap.add_argument(
        "--train-limit",
        type=int,
        default=20000,
        help="the --train-limit the case ran with (default: 20000)",
    )
    ap.add_argument(
        "--n-scan", type=int, default=500, help="the --n-scan the case ran with (default: 500)"
    )
    args = ap.parse_args()
    folder = os.path.join(OUT, args.case)
    needed = [
        os.path.join(folder, p)
        for p in (
            "model.keras",
            "attack.json",
            "gangsweep/results.json",
            "repair_gangsweep/model.keras",
        )
    ]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        ap.error(
            f"{missing[0]} not found: run `python bench/gangsweep.py --cases {args.case}` "
            "with its default generator steps first"
        )
    model = load_model(needed[0])
    triggers = load_triggers(read_json(needed[1]))
    target = triggers[0].target
    x_train, y_train = datasets.load_data("mnist", "train", limit=args.train_limit)
    x_test, y_test = datasets.load_data("mnist", "test")
    data = split_data(x_train, y_train, x_test, y_test)

    generators = [load_generators(os.path.join(folder, "gangsweep"), [target])[target]]
    patched = load_model(needed[3])
    print(
        f"{args.case}, target {target}; ASR per trigger (%) after patching with every "
        "round's generator; target: all below 1%"
    )
    print(f"{'round':>5} {'new generator on the last patched model':42} | after patching")
    print(_row(1, None, evaluate_backdoor(patched, data.x_test, data.y_test, triggers)), flush=True)
    for k in range(2, args.rounds + 1):
        out = os.path.join(folder, "rounds", f"round_{k}")
        record = gangsweep_scan(
            patched,
            x_test[: args.n_scan],
            y_test[: args.n_scan],
            labels=[target],
            out_dir=os.path.join(out, "scan"),
            progress=False,
            verbose=False,
        )
        generators.append(load_generators(os.path.join(out, "scan"), [target])[target])
        path = os.path.join(out, "model.keras")
        if os.path.exists(path):
            patched = load_model(path)
        else:
            patched, _ = patch(model, data.x_train, data.y_train, generators, seed=0)
            patched.save(path)
        result = evaluate_backdoor(patched, data.x_test, data.y_test, triggers)
        print(_row(k, record["labels"][str(target)], result), flush=True)
    print_peak_rss(3)


if __name__ == "__main__":
    main()
