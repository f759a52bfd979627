"""Repairs you can trust: every model-changing method on the detection benchmark's backdoors.

For each backdoored model of bench/detection.py (MNIST and GTSRB BadNets 4x4
squares, the demo's model and the MNIST variants; built there, and scanned
there with the default settings at seed 0, which this benchmark reuses), runs
`mitigation.mitigate` with each method (unlearn, prune, repair, linf-prune,
fine-prune, gym), with the scan's flagged labels as the reference and the
default verification, and prints per run:

- the ORIGINAL trigger's attack success after the repair (full test set; the
  original trigger is read from the model's attack.json and used for
  reporting only), target < 5 % (NC Table IV: under 6.7 %);
- the clean-accuracy change, target a loss of at most 2 points;
- the wall time of the repair and its verification;
- `verified`, and whether it agreed with the original trigger: a verified
  model whose original trigger still fires above 5 % is a false
  verification (target 0);
- GYM on GTSRB beside its Table 4 (0.905 / 0.035).

Runs live in runs/repair/<model>/<method>/ ($NC_TF_BENCH_REPAIR_DIR); a run
with a mitigation.json is reused, so the benchmark resumes. A model whose
seed-0 scan does not exist yet is scanned first (bench/detection.py's folder).

Usage: python bench/repair.py [--only mnist|gtsrb] [--models A,B] [--methods unlearn,prune,...]
           [--json PATH]
"""

import argparse
import json
import os
import shlex
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import keras  # noqa: E402
from _common import peak_rss_gib, print_peak_rss, report_figures  # noqa: E402
from detection import ROOT as DETECTION_ROOT  # noqa: E402
from detection import build, model_suite, scan_model, select_models  # noqa: E402

from injection import load_triggers  # noqa: E402
from mitigation.mitigate import mitigate, split_data  # noqa: E402
from mitigation.verification import scan_reference  # noqa: E402
from nc_tf import datasets  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.models import load_model  # noqa: E402
from nc_tf.scan import scan_triggers  # noqa: E402

ROOT = os.environ.get("NC_TF_BENCH_REPAIR_DIR", os.path.join("runs", "repair"))
METHODS = ("unlearn", "prune", "repair", "linf-prune", "fine-prune", "gym")
MAX_ASR = 0.05
MAX_ACC_LOSS = 0.02
GYM_TABLE4 = (0.905, 0.035)
EPOCHS = 5  # bench/detection.py's default training epochs


def run(spec, method, data, model, triggers, attack, record, labels):
    """One repair (or its saved report); returns the benchmark's row."""
    out = os.path.join(ROOT, spec["name"], method)
    path = os.path.join(out, "mitigation.json")
    if not os.path.exists(path):
        if os.path.isdir(out) and method not in ("unlearn", "repair"):
            shutil.rmtree(out)  # an interrupted run of a method that does not resume
        print(f"\n== {spec['name']}: {method}", flush=True)
        mitigate(
            method,
            model,
            data,
            triggers if method != "repair" else (),
            attack,
            out_dir=out,
            scan_record=record,
            labels=labels,
            verbose=True,
            seed=0,
        )
        keras.backend.clear_session()
    report = read_json(path)
    before, after, check = report["before"], report["after"], report["verification"]
    asr = max(after["asr_original"])
    return {
        "model": spec["name"],
        "method": method,
        "dataset": spec["dataset"],
        "asr_before": max(before["asr_original"]),
        "asr_after": asr,
        "acc_before": before["accuracy"],
        "acc_after": after["accuracy"],
        "acc_change": after["accuracy"] - before["accuracy"],
        "wall_time_s": report["wall_time_s"],
        "verified": check["verified"],
        "surviving": check.get("surviving"),
        "false_verification": bool(check["verified"]) and asr > MAX_ASR,
        "missed_verification": check["verified"] is False and asr <= MAX_ASR,
        "asr_ok": asr < MAX_ASR,
        "acc_ok": before["accuracy"] - after["accuracy"] <= MAX_ACC_LOSS,
    }


def model_rows(spec, methods, data, report):
    """Every method's row for one model (scanned first if its seed-0 scan is missing)."""
    target = report["targets"][0]
    scan_dir = scan_model(spec, target, data.x_test, data.y_test, [0], "default", {})[0]["scan_dir"]
    record = read_json(os.path.join(scan_dir, "results.json"))
    labels = scan_reference(record)
    if not labels:
        print(f"\n{spec['name']}: the scan flagged nothing; its target's trigger stands in")
        labels = [target]
    triggers = scan_triggers(scan_dir, labels)
    model = load_model(os.path.join(DETECTION_ROOT, "models", spec["source"], "model.keras"))
    attack = load_triggers(os.path.join(DETECTION_ROOT, "models", spec["source"], "attack.json"))
    return [run(spec, m, data, model, triggers, attack, record, labels) for m in methods]


def pct(v):
    return f"{100 * v:.2f}%"


def print_table(rows):
    """The markdown table of docs/results.md."""
    print(
        "\n| model | method | original ASR before → after | accuracy change (points) | "
        "verified | agrees | wall s |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in rows:
        agrees = (
            "FALSE VERIFICATION"
            if r["false_verification"]
            else ("missed (ASR ok)" if r["missed_verification"] else "yes")
        )
        print(
            f"| {r['model']} | {r['method']} | {pct(r['asr_before'])} → {pct(r['asr_after'])} | "
            f"{100 * r['acc_change']:+.2f} | {r['verified']} | {agrees} | "
            f"{r['wall_time_s']:.0f} |"
        )


def print_summary(rows):
    """Per method: how many runs met each target; false verifications; GYM vs Table 4."""
    print("\nPer method (targets: ASR < 5 %, accuracy loss <= 2 points, 0 false verifications)")
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        n = len(mine)
        print(
            f"  {method:11s} ASR < 5 %: {sum(r['asr_ok'] for r in mine)}/{n}; accuracy: "
            f"{sum(r['acc_ok'] for r in mine)}/{n}; verified: "
            f"{sum(bool(r['verified']) for r in mine)}/{n}; false verifications: "
            f"{sum(r['false_verification'] for r in mine)}; mean wall "
            f"{sum(r['wall_time_s'] for r in mine) / n:.0f} s"
        )
    false = sum(r["false_verification"] for r in rows)
    print(f"false verifications: {false} (target 0): {'PASS' if false == 0 else 'FAIL'}")
    for r in rows:
        if r["method"] == "gym" and r["dataset"] == "gtsrb":
            ok = r["acc_after"] >= GYM_TABLE4[0] and r["asr_after"] <= GYM_TABLE4[1]
            print(
                f"GYM on {r['model']}: {r['acc_after']:.3f} / {r['asr_after']:.3f} (target "
                f"Table 4 {GYM_TABLE4[0]} / {GYM_TABLE4[1]}): {'PASS' if ok else 'FAIL'}"
            )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", choices=("mnist", "gtsrb"))
    ap.add_argument(
        "--models",
        help="comma-separated model names (default: every backdoored "
        "softmax model of bench/detection.py)",
    )
    ap.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated methods (default: {','.join(METHODS)})",
    )
    ap.add_argument("--json", help="write every row to this JSON file")
    args = ap.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    infected = [
        m
        for m in model_suite()
        if m["attack"] is not None
        and m["kind"] != "logits"
        and (not args.only or m["dataset"] == args.only)
    ]
    suite = select_models(infected, args.models, ap.error)
    t0, rows, data = time.time(), [], {}
    for spec in suite:
        report = build(spec, EPOCHS, None)
        if spec["dataset"] not in data:
            x_train, y_train = datasets.load_data(spec["dataset"], "train")
            x_test, y_test = datasets.load_data(spec["dataset"], "test")
            data = {spec["dataset"]: split_data(x_train, y_train, x_test, y_test)}
        rows += model_rows(spec, methods, data[spec["dataset"]], report)
    print_summary(rows)
    report_figures(runs=rows)
    print_table(rows)
    print_peak_rss()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"total wall {time.time() - t0:.0f} s\n(made by: {command})")
    if args.json:
        out = json.loads(
            json.dumps(
                {"command": command, "rows": rows, "peak_rss_gib": round(peak_rss_gib(), 3)}
            ),
            parse_constant=lambda _: None,
        )
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, allow_nan=False)


if __name__ == "__main__":
    main()
