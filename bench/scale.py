"""Scaling `nc-tf scan-many`: models per hour with the local engine and with Ray.

Scans four MNIST models of the detection suite (bench/detection.py trains
them when missing) with the fast preset on the MNIST test set, three times,
each into a fresh folder under runs/scale/:

- the local engine (one model after another in this process);
- Ray with 1 worker (a local Ray instance with 1 CPU);
- Ray with 2 workers (2 CPUs; this machine has 2 cores).

It prints each run's wall time and models per hour, checks that the three
give the same flags and norms, and measures Ray's overhead per task two
ways: the round trip of an empty task, and the Ray run with 1 worker minus
the scan time its tasks measured, per model. Targets: Ray with 2 workers
scans at least as many models per hour as the local engine, and the
overhead per task stays below 5% of a model's scan time.

With --plan it prints instead the arithmetic of docs/scale.md: the work of
a GTSRB-sized scan (image-gradient evaluations, from a finished scan
folder), the share of the bare forward+backward throughput (measured here
as bench/engine_efficiency.py does) that the whole scan achieved on this
machine, its time on one GPU at an assumed bare GPU throughput (at the
engine's efficiency, and at that whole-scan share), and the GPUs 1,000 such
models need for a 24-hour turnaround.

Usage: python bench/scale.py [--limit N] [--keep]
       python bench/scale.py --plan [--scan DIR] [--gpu-throughput IMG_PER_S]
                             [--efficiency E] [--models N] [--hours H] [--utilisation U]
"""

import argparse
import math
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import print_peak_rss, report_figures  # noqa: E402

from nc_tf import datasets  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.scan_many import scan_many  # noqa: E402

MODELS = ("mnist_badnets_t7_s0", "mnist_badnets_t3_s1", "mnist_clean_s0", "mnist_clean_s1")
OUT = os.path.join("runs", "scale")
OVERHEAD_SHARE = 0.05  # target: Ray's overhead per task below 5% of a model's scan
GTSRB_SCAN = os.path.join("runs", "detection", "scans", "default", "gtsrb_badnets_t33_s0_seed0")


def zoo():
    """A folder of links named after the four models (scan-many names folders by file)."""
    import detection

    suite = {m["name"]: m for m in detection.model_suite()}
    folder = os.path.join(OUT, "zoo")
    os.makedirs(folder, exist_ok=True)
    for name in MODELS:
        detection.build(suite[name], epochs=5, train_limit=None)
        link = os.path.join(folder, f"{name}.keras")
        target = os.path.abspath(os.path.join(detection.ROOT, "models", name, "model.keras"))
        if not os.path.exists(link):
            os.symlink(target, link)
    return folder


def timed_run(name, models, x, y, **engine):
    """One scan-many into a fresh runs/scale/<name>; returns `(seconds, summary)`."""
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    summary = scan_many([models], x, y, out, progress=False, prefix="mnist", **engine)
    return time.time() - start, summary


def empty_task_seconds(ray, n=50):
    """Mean round trip of an empty Ray task (submit, run on a warm worker, get)."""

    def empty():
        return None

    remote = ray.remote(empty).options(num_cpus=1)
    ray.get([remote.remote() for _ in range(4)])  # warm the workers
    start = time.time()
    for _ in range(n):
        ray.get(remote.remote())
    return (time.time() - start) / n


def norms(summary):
    """Label norms per model file, to compare engines."""
    out = {}
    for row in summary["models"]:
        labels = read_json(os.path.join(row["scan_dir"], "results.json"))["labels"]
        out[os.path.basename(row["model"])] = {k: v["l1_norm"] for k, v in labels.items()}
    return out


def measure(args):
    import ray

    models = zoo()
    x, y = datasets.load_data("mnist", "test", limit=args.limit)
    runs = {}
    runs["local"] = timed_run("local", models, x, y, engine="local")
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            runs[f"ray, {workers} worker{'s' * (workers > 1)}"] = timed_run(
                f"ray{workers}", models, x, y, engine="ray"
            )
            if workers == 1:
                empty = empty_task_seconds(ray)
        finally:
            ray.shutdown()
    n = len(MODELS)
    local_seconds = runs["local"][0]
    print(
        f"{n} MNIST models, fast preset, {len(x)} test images, this machine ({os.cpu_count()} cores)"
    )
    print(f"{'engine':<18} {'wall s':>8} {'models/hour':>12}  flags")
    figures = {}
    for name, (seconds, summary) in runs.items():
        per_hour = n * 3600 / seconds
        flags = {os.path.basename(r["model"]): r["flagged"] for r in summary["models"]}
        print(f"{name:<18} {seconds:8.1f} {per_hour:12.1f}  {flags}")
        figures[name.replace(", ", "_").replace(" ", "_")] = {
            "wall_s": seconds,
            "models_per_hour": per_hour,
        }
    same = all(norms(s) == norms(runs["local"][1]) for _, s in runs.values())
    print(f"same norms and flags on every engine: {same} (target: True)")
    seconds1, summary1 = runs["ray, 1 worker"]
    task_seconds = sum(r["wall_s"] or 0 for r in summary1["models"])
    overhead = (seconds1 - task_seconds) / n
    per_model = local_seconds / n
    print(
        f"Ray overhead per task: empty task round trip {empty * 1000:.1f} ms; ray with 1 worker "
        f"minus its tasks' scan time: {overhead:.1f} s per model = "
        f"{100 * overhead / per_model:.1f}% of a model's local scan ({per_model:.1f} s) "
        f"(target < {100 * OVERHEAD_SHARE:.0f}%)"
    )
    ratio = runs["ray, 2 workers"][0] and local_seconds / runs["ray, 2 workers"][0]
    print(f"Ray with 2 workers / local models per hour: {ratio:.2f} (target >= 1.00)")
    report_figures(
        scale=dict(
            figures,
            engines_differing=sum(norms(s) != norms(runs["local"][1]) for _, s in runs.values()),
            empty_task_ms=empty * 1000,
            overhead_per_task_s=overhead,
            overhead_share=overhead / per_model,
            ray2_over_local=ratio,
        )
    )
    if not args.keep:
        for name in ("local", "ray1", "ray2"):
            shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
    print_peak_rss()


def image_gradients(record):
    """Image-gradient evaluations a finished scan made: its steps and its short starts."""
    s = record["settings"]
    labels = record["labels"].values()
    steps = sum(entry["steps"] for entry in labels) * s["nb_sample"]
    starts = len(labels) * max(0, s.get("starts", 1) - 1) * s.get("start_steps", 0)
    return steps + starts * s.get("start_nb_sample", s["nb_sample"])


def plan(args):
    from engine_efficiency import bare_throughput

    from nc_tf.models import gtsrb_model
    from nc_tf.scan import default_slots

    record = read_json(os.path.join(args.scan, "results.json"))
    work = image_gradients(record)
    wall = record["wall_time_s"]
    batch = record["settings"]["batch_size"] * default_slots(record["settings"])
    bare_cpu = bare_throughput(gtsrb_model(), batch, repeats=80)
    scan_share = work / wall / bare_cpu  # the whole scan's share of the bare throughput
    engine_only = work / (args.gpu_throughput * args.efficiency)
    seconds = work / (args.gpu_throughput * scan_share)
    gpus = math.ceil(args.models * seconds / (args.hours * 3600 * args.utilisation))
    print(
        f"scan folder: {args.scan} ({len(record['labels'])} labels, "
        f"preset {record['settings']['preset']})"
    )
    print(
        f"work per model: {work:,} image-gradient evaluations, {wall:.0f} s on this machine "
        f"= {work / wall:,.0f} img/s"
    )
    print(
        f"bare forward+backward-to-input here (NC GTSRB model, batch {batch}): "
        f"{bare_cpu:,.0f} img/s, so the whole scan runs at {scan_share:.2f} of it"
    )
    print(f"assumed bare throughput of one GPU: {args.gpu_throughput:,.0f} img/s")
    print(
        f"per model on one GPU: {engine_only:.0f} s at the engine's efficiency "
        f"{args.efficiency:.2f}; {seconds:.0f} s at the whole scan's {scan_share:.2f} (planned)"
    )
    print(
        f"{args.models:,} models in {args.hours:g} h at {args.utilisation:.0%} utilisation: "
        f"{args.models * seconds / 3600:.0f} GPU-hours, {gpus} GPUs"
    )
    report_figures(
        plan=dict(
            work=work,
            bare_cpu=bare_cpu,
            scan_share=scan_share,
            gpu_seconds_engine=engine_only,
            gpu_seconds_planned=seconds,
            gpu_hours=args.models * seconds / 3600,
            gpus=gpus,
        )
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--limit", type=int, help="scan data: first N test images (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the scan folders under runs/scale/")
    ap.add_argument("--plan", action="store_true", help="print the GPU-cluster plan instead")
    ap.add_argument("--scan", default=GTSRB_SCAN, help="a finished GTSRB scan folder (--plan)")
    ap.add_argument(
        "--gpu-throughput",
        type=float,
        default=50_000.0,
        help="assumed bare img/s of one GPU (--plan; default: 50000)",
    )
    ap.add_argument(
        "--efficiency",
        type=float,
        default=0.9,
        help="engine / bare throughput (--plan; default: 0.9, the target of "
        "bench/engine_efficiency.py)",
    )
    ap.add_argument("--models", type=int, default=1000, help="models to scan (--plan)")
    ap.add_argument("--hours", type=float, default=24.0, help="turnaround (--plan)")
    ap.add_argument(
        "--utilisation",
        type=float,
        default=0.8,
        help="share of GPU time spent scanning (--plan; default: 0.8)",
    )
    args = ap.parse_args()
    if args.plan:
        if not os.path.exists(os.path.join(args.scan, "results.json")):
            ap.error(
                f"--scan {args.scan} holds no results.json; run a GTSRB scan first "
                "(python bench/detection.py --only gtsrb --models gtsrb_badnets_t33_s0 --seeds 0)"
            )
        plan(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
