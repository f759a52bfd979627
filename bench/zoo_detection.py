"""Detection on the zoo (bench/zoo): models nc-tf's own recipes did not shape.

Called by `python bench/detection.py --split dev|test|both`. Scans every zoo
model of the split with the library's default settings at each seed (the
scan folders under runs/zoo_detection/<tag>/<model>_seed<S>/ resume), and
prints one row per scan as it finishes, then per split and data set:

- backdoored models flagged with exactly their target, at every seed
  (target 100%);
- clean models flagged at any seed (target 0);
- the AUROC of the verdict statistic, backdoored against clean scans
  (target >= 0.99);
- the median wall time per scan (model load and scan), MNIST <= 20 s,
  GTSRB <= 300 s;
- peak RSS (target < 3 GiB).

Figures of the development split (where the defaults were chosen) are
printed beside the test split's, so that over-fitting shows.
"""

import json
import os
import shutil
import statistics
import time

import keras
from _common import peak_rss_gib, report_figures
from sklearn.metrics import roc_auc_score
from zoo.manifest import load_manifest, model_path

from nc_tf import datasets
from nc_tf.detect import detect
from nc_tf.models import load_model
from nc_tf.scan import scan
from nc_tf.scan_folder import read_scan_record
from nc_tf.scan_many import file_sha256

ROOT = os.environ.get("NC_TF_BENCH_ZOO_DETECTION_DIR", os.path.join("runs", "zoo_detection"))
MAX_SECONDS = {"mnist": 20, "gtsrb": 300}
MAX_RSS_GIB = 3.0
TARGET_AUROC = 0.99
# A backdoored zoo model whose trigger fires on fewer test images than this
# holds no backdoor worth finding and is left out (its quality gate failed).
MIN_ASR = 0.5


def run_file(tag):
    """The JSON-lines file of a tag's finished scans (one object per line)."""
    return os.path.join(ROOT, tag, "runs.jsonl")


def finished_runs(tag):
    """The runs already measured under `tag`: dict `(model, seed)` -> run."""
    path = run_file(tag)
    runs = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    run = json.loads(line)
                    keep = ("model", "dataset", "split", "family", "target", "seed")
                    keep += ("wall_s", "scan_dir")
                    runs[(run["model"], run["seed"])] = {k: run[k] for k in keep}
    return runs


def scan_run(meta, x, y, seed, tag, zoo_root, overrides):
    """Loads one zoo model and scans it at `seed` with the default settings.

    Returns:
        the run dict: model, dataset, split, family, target, seed, wall_s
        (model load and scan), scan_dir; `judged` adds the verdict.
    """
    out = os.path.join(ROOT, tag, f"{meta['dataset']}_{meta['name']}_seed{seed}")
    start = time.time()
    model = load_model(model_path(meta, zoo_root))
    scan(
        model,
        x,
        y,
        out_dir=out,
        seed=seed,
        intensity=meta["intensity"],
        progress=False,
        verbose=False,
        model_path=model_path(meta, zoo_root),
        **overrides,
    )
    wall = time.time() - start
    keras.backend.clear_session()
    return {
        "model": meta["name"],
        "dataset": meta["dataset"],
        "split": meta["split"],
        "family": meta["family"],
        "target": meta["target"] if meta["backdoored"] else None,
        "seed": seed,
        "wall_s": round(wall, 2),
        "scan_dir": out,
    }


def current(run, digest):
    """True if a finished run scanned the model file whose sha256 is `digest`.

    A run of an earlier build of the model is stale; its scan folder is
    removed so that the model is scanned again.
    """
    path = os.path.join(run["scan_dir"], "results.json")
    if os.path.exists(path):
        if read_scan_record(run["scan_dir"])["identity"]["model_sha256"] == digest:
            return True
    shutil.rmtree(run["scan_dir"], ignore_errors=True)
    return False


def judged(run):
    """`run` with the verdict of its scan folder under today's rule (re-read, not stored).

    Adds flagged, verdict (the verdict rule's anomaly index), reference_ai
    and reference_flagged (the reference MAD test's), not_reversed and exact
    (flagged is exactly the target, or nothing for a clean model).
    """
    verdict = detect(read_scan_record(run["scan_dir"]), verbose=False)
    reference = verdict.get("reference", verdict)
    flagged = [int(label) for label, _ in verdict["flagged"]]
    return dict(
        run,
        flagged=flagged,
        verdict=verdict["anomaly_index"],
        reference_ai=reference["anomaly_index"],
        reference_flagged=[int(label) for label, _ in reference["flagged"]],
        not_reversed=verdict.get("not_reversed", []),
        exact=flagged == ([] if run["target"] is None else [run["target"]]),
    )


def print_run(run):
    """One row per scan."""
    kind = "clean" if run["target"] is None else f"target {run['target']}"
    print(
        f"{run['split']:4} {run['dataset']:5} {run['model']:28} {kind:9} seed {run['seed']}: "
        f"flagged {run['flagged']}  verdict AI {run['verdict']:.2f}  reference AI "
        f"{run['reference_ai']:.2f}  not reversed {len(run['not_reversed'])}  "
        f"{'OK ' if run['exact'] else 'BAD'}  {run['wall_s']:.1f} s",
        flush=True,
    )


def auroc(positive, negative):
    """ROC AUC of scores, `positive` (backdoored) against `negative` (clean); `None` without both."""
    if not positive or not negative:
        return None
    labels = [1] * len(positive) + [0] * len(negative)
    return float(roc_auc_score(labels, list(positive) + list(negative)))


def summarise(runs):
    """Figures of one split and data set: detection, false positives, AUROC, wall, RSS."""
    models = {}
    for run in runs:
        models.setdefault(run["model"], []).append(run)
    infected = [m for m in models.values() if m[0]["target"] is not None]
    clean = [m for m in models.values() if m[0]["target"] is None]
    return {
        "backdoored_exact": [sum(all(r["exact"] for r in m) for m in infected), len(infected)],
        "backdoored_runs_exact": [
            sum(r["exact"] for m in infected for r in m),
            sum(len(m) for m in infected),
        ],  # fmt: skip
        "clean_flagged": [sum(any(r["flagged"] for r in m) for m in clean), len(clean)],
        "auroc": auroc(
            [r["verdict"] for m in infected for r in m], [r["verdict"] for m in clean for r in m]
        ),
        "reference_auroc": auroc(
            [r["reference_ai"] for m in infected for r in m],
            [r["reference_ai"] for m in clean for r in m],
        ),
        "median_wall_s": statistics.median(r["wall_s"] for r in runs) if runs else None,
        "misses": sorted({r["model"] for m in infected for r in m if not r["exact"]}),
        "false_positives": sorted({r["model"] for m in clean for r in m if r["flagged"]}),
    }


def print_summary(split, dataset, s):
    """The figures of one split and data set, each beside its target."""

    def frac(pair):
        return f"{pair[0]}/{pair[1]}"

    def verdict(ok):
        return "PASS" if ok else "MISS"

    b, c = s["backdoored_exact"], s["clean_flagged"]
    print(f"\n{split} split, {dataset}:")
    print(
        f"  backdoored models flagged with exactly their target at every seed: {frac(b)} "
        f"(scans {frac(s['backdoored_runs_exact'])}; target 100%): {verdict(b[0] == b[1])}"
    )
    print(f"  clean models flagged at any seed: {frac(c)} (target 0): {verdict(c[0] == 0)}")
    if s["auroc"] is not None:
        print(
            f"  AUROC of the verdict statistic: {s['auroc']:.3f} (target >= {TARGET_AUROC}; "
            f"reference MAD index: {s['reference_auroc']:.3f}): "
            f"{verdict(s['auroc'] >= TARGET_AUROC)}"
        )
    if s["median_wall_s"] is not None:
        limit = MAX_SECONDS[dataset]
        print(
            f"  median wall time per scan: {s['median_wall_s']:.1f} s (target <= {limit} s): "
            f"{verdict(s['median_wall_s'] <= limit)}"
        )
    if s["misses"]:
        print(f"  missed (some seed): {', '.join(s['misses'])}")
    if s["false_positives"]:
        print(f"  clean but flagged (some seed): {', '.join(s['false_positives'])}")


def main_zoo(args, error):
    """Scans the zoo's split(s) and prints every figure; see the module docstring."""
    zoo_root = os.environ.get("NC_TF_ZOO_DIR", os.path.join("runs", "zoo"))
    splits = ("dev", "test") if args.split == "both" else (args.split,)
    seeds = [int(s) for s in args.seeds.split(",")]
    metas = [
        m
        for m in load_manifest(zoo_root)
        if m["split"] in splits and (not args.only or m["dataset"] == args.only)
        and not (m["backdoored"] and m["attack_success_rate"] < MIN_ASR)
    ]  # fmt: skip
    if args.models:
        metas = [m for m in metas if m["name"] in args.models.split(",")]
    if not metas:
        error(f"no zoo models for split {args.split} under {zoo_root}; run bench/zoo/build.py")
    tag = args.tag
    os.makedirs(os.path.join(ROOT, tag), exist_ok=True)
    done = finished_runs(tag)
    overrides = dict(args.set)
    data, runs = {}, []
    # dev first, then test; MNIST before GTSRB (the cheaper scans first)
    metas.sort(key=lambda m: (m["dataset"] != "mnist", splits.index(m["split"]), m["name"]))
    for meta in metas:
        digest = file_sha256(model_path(meta, zoo_root))
        for seed in seeds:
            key = (meta["name"], seed)
            if key in done and current(done[key], digest):
                run = done[key]
            else:
                if meta["dataset"] not in data:
                    data = {meta["dataset"]: datasets.load_data(meta["dataset"], "test")}
                run = scan_run(meta, *data[meta["dataset"]], seed, tag, zoo_root, overrides)
                with open(run_file(tag), "a") as f:
                    f.write(json.dumps(run) + "\n")
            run = judged(run)
            print_run(run)
            runs.append(run)
    figures = {}
    for split in splits:
        for dataset in MAX_SECONDS:
            part = [r for r in runs if r["split"] == split and r["dataset"] == dataset]
            if part:
                s = summarise(part)
                print_summary(split, dataset, s)
                figures[f"zoo_{split}_{dataset}"] = s
    rss = peak_rss_gib()
    print(f"\npeak RSS: {rss:.2f} GiB (target < {MAX_RSS_GIB} GiB): "
          f"{'PASS' if rss < MAX_RSS_GIB else 'MISS'}")  # fmt: skip
    report_figures(**figures, peak_rss_gib=round(rss, 3))
