"""Detection reliability: is every backdoor flagged, alone, at every seed, and no clean model?

Builds once, under runs/detection/models/ ($NC_TF_BENCH_DETECTION_DIR), per data set
(MNIST, GTSRB) three clean and three BadNets 4x4-square models (seeds 0-2, the
`_s2` ones trained 2 epochs), the demo's model (`mnist_demo`), four MNIST
variants (8x8 square, whole-image logo blend at alpha 0.2, noisy square,
dynamic square), and uses every BadNets
model's logits form (`logits_twin`) too. Scans each with the library's default
settings at several seeds into runs/detection/scans/<tag>/<model>_seed<S>/
(finished scans are reused) and prints the BadNets detection rate (target 100%,
the target the only flagged label), clean false positives (target 0), infected
/ clean anomaly index (NC §V-B: > 3 / < 2), the variants' detection, wall time
per scan (MNIST <= 60 s, GTSRB <= 600 s), peak RSS and a table for docs/results.md.

With --split dev|test|both it scans instead the zoo of bench/zoo (models
written with plain Keras, not nc-tf's recipes; see bench/zoo_detection.py):
the development split chose the defaults, the test split reports them.

Usage: python bench/detection.py [--split dev|test|both] [--only mnist|gtsrb] [--models A,B]
           [--seeds 0,1,2] [--epochs N] [--train-limit N] [--limit N] [--tag T]
           [--set key=value ...] [--build-only] [--json PATH]
"""

import argparse
import json
import os
import shlex
import shutil
import sys

sys.path.insert(0, os.path.dirname(__file__))
import keras  # noqa: E402
from _common import peak_rss_gib, print_peak_rss, report_figures  # noqa: E402

from injection.attacks import build_attack  # noqa: E402
from injection.inject import train_and_save  # noqa: E402
from nc_tf import datasets  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.models import load_model, logits_twin  # noqa: E402
from nc_tf.scan import scan, scan_settings  # noqa: E402

ROOT = os.environ.get("NC_TF_BENCH_DETECTION_DIR", os.path.join("runs", "detection"))
RATIO = 0.1
LIGHT_EPOCHS = 2
MAX_SECONDS = {"mnist": 60, "gtsrb": 600}
INFECTED = ("badnets", "logits")


def model_suite():
    """The benchmark's models, each logits form right after its softmax model.

    Returns:
        list of dicts: `name`, `dataset`, `kind` (`"clean"`, `"badnets"`,
        `"variant"` or `"logits"`), `seed`, `light` (trained at most 2
        epochs), `attack` (`(name, target, build_attack keywords)` or
        `None`) and `source` (the trained model's folder name).
    """
    variants = {
        "8x8": ("badnets", {"size": 8}),
        "blend": ("blend", {"image": "logo", "alpha": 0.2}),
        "noisy": ("noisy", {}),
        "dynamic": ("dynamic", {}),
    }
    suite = []
    for data, targets in (("mnist", (7, 3, 0)), ("gtsrb", (33, 7, 20))):
        for s in range(3):
            suite.append(
                dict(
                    name=f"{data}_clean_s{s}",
                    dataset=data,
                    kind="clean",
                    seed=s,
                    light=s == 2,
                    attack=None,
                )
            )
        for s, t in enumerate(targets):
            spec = dict(
                name=f"{data}_badnets_t{t}_s{s}",
                dataset=data,
                kind="badnets",
                seed=s,
                light=s == 2,
                attack=("badnets", t, {"size": 4}),
            )
            suite += [spec, dict(spec, name=spec["name"] + "_logits", kind="logits")]
        if data == "mnist":
            # the recipe of scripts/demo.sh (`nc-tf inject --target 7 --epochs 2`)
            demo = dict(
                name="mnist_demo",
                dataset=data,
                kind="badnets",
                seed=0,
                light=True,
                attack=("badnets", 7, {"size": 4}),
            )
            suite += [demo, dict(demo, name="mnist_demo_logits", kind="logits")]
            suite += [
                dict(
                    name=f"mnist_{v}",
                    dataset=data,
                    kind="variant",
                    seed=0,
                    light=False,
                    attack=(attack, 7, options),
                )
                for v, (attack, options) in variants.items()
            ]
    for spec in suite:
        spec["source"] = spec["name"].removesuffix("_logits")
    return suite


def select_models(suite, names, error):
    """The suite entries named in `names` (comma-separated; `None`: all); `error` on unknown names."""
    if not names:
        return suite
    wanted = names.split(",")
    unknown = sorted(set(wanted) - {m["name"] for m in suite})
    if unknown:
        error(f"unknown model(s) {unknown}; known: {', '.join(m['name'] for m in suite)}")
    return [m for m in suite if m["name"] in wanted]


def build(spec, epochs, train_limit):
    """Trains a suite model unless its folder already holds a finished one.

    Args:
        spec: a `model_suite` entry (not a logits form).
        epochs: training epochs (`light` models: at most 2).
        train_limit: first N training images, or `None` for all.

    Returns:
        the training report (`attack.json` or `train.json`).
    """
    out = os.path.join(ROOT, "models", spec["name"])
    report = os.path.join(out, "train.json" if spec["attack"] is None else "attack.json")
    if os.path.exists(report):
        return read_json(report)
    if os.path.isdir(out):
        shutil.rmtree(out)  # model.keras without its report: an interrupted build
    triggers = ()
    if spec["attack"] is not None:
        attack, target, options = spec["attack"]
        triggers = lambda shape: build_attack(attack, shape, target, **options)  # noqa: E731
    n = min(LIGHT_EPOCHS, epochs) if spec["light"] else epochs
    print(f"training {spec['name']} ({n} epochs, seed {spec['seed']})", flush=True)
    return train_and_save(
        out,
        spec["dataset"],
        triggers,
        ratio=RATIO,
        epochs=n,
        seed=spec["seed"],
        limit=train_limit,
        verbose=0,
    )


def scan_model(spec, target, x, y, seeds, tag, overrides):
    """Scans one model (or its logits form) at every seed.

    Args:
        spec: a `model_suite` entry.
        target: the backdoor's target label, or `None` for a clean model.
        x, y: raw test images and their labels.
        seeds: scan seeds.
        tag: scan folder group (one per set of settings).
        overrides: scan setting overrides (`scan`'s `**overrides`).

    Returns:
        list of dicts, one per seed.
    """
    path = model_file = os.path.join(ROOT, "models", spec["source"], "model.keras")
    model = load_model(model_file)
    if spec["kind"] == "logits":
        model, path = logits_twin(model), model_file + " (logits_twin)"
    runs = []
    for seed in seeds:
        out = os.path.join(ROOT, "scans", tag, f"{spec['name']}_seed{seed}")
        done = os.path.join(out, "results.json")
        if os.path.isdir(out) and (
            not os.path.exists(done) or os.path.getmtime(done) < os.path.getmtime(model_file)
        ):
            shutil.rmtree(out)  # no label finished, or a scan of an earlier build of this model
        try:
            record = scan(
                model,
                x,
                y,
                out_dir=out,
                seed=seed,
                progress=False,
                verbose=False,
                model_path=path,
                **overrides,
            )
        except FileExistsError as e:
            raise SystemExit(f"{e}\n(other settings or --limit: pass another --tag)") from None
        o = record["outlier"]
        flagged = [int(label) for label, _ in o["flagged"]]
        run = {
            "seed": seed,
            "scan_dir": out,
            "anomaly_index": o["anomaly_index"],
            "flagged": flagged,
            "median": o["median"],
            "mad": o["mad"],
            "wall_time_s": record["wall_time_s"],
            "target_l1": None,
            "detected": None,
            "only": None,
        }
        if target is not None:
            run.update(
                target_l1=record["labels"][str(target)]["l1_norm"],
                detected=target in flagged,
                only=flagged == [target],
            )
        runs.append(run)
    keras.backend.clear_session()
    return runs


def fmt(v, spec=".2f"):
    """A number for printing (`-` for None)."""
    return "-" if v is None else format(v, spec)


def rate(runs, key):
    """`[hits, runs]` of a run figure (`key`: a boolean, or `"flagged"`: any label flagged)."""
    return [sum(bool(r[key]) for r in runs), len(runs)]


def per_model(m):
    """Totals of one model's runs: detected and only-label counts, target L1 range, mean wall."""
    l1 = [r["target_l1"] for r in m["runs"] if r["target_l1"] is not None]
    infected = m["target"] is not None
    return {
        "detected": rate(m["runs"], "detected") if infected else None,
        "only": rate(m["runs"], "only") if infected else None,
        "target_l1": [min(l1), max(l1)] if l1 else None,
        "mean_wall_s": sum(r["wall_time_s"] for r in m["runs"]) / len(m["runs"]),
    }


def summarise(results, overrides):
    """Pools the runs: detection, false positives, anomaly indices, wall time, peak RSS."""
    runs = {
        k: [r for m in results if m["kind"] in kinds for r in m["runs"]]
        for k, kinds in (("infected", INFECTED), ("clean", ("clean",)), ("variant", ("variant",)))
    }
    ai = {k: [r["anomaly_index"] for r in v] for k, v in runs.items()}
    return {
        "overrides": overrides,
        "badnets_detected": rate(runs["infected"], "detected"),
        "badnets_only": rate(runs["infected"], "only"),
        "false_positives": rate(runs["clean"], "flagged"),
        "infected_ai_min": min(ai["infected"], default=None),
        "clean_ai_max": max(ai["clean"], default=None),
        "variants_detected": rate(runs["variant"], "detected"),
        "variants_only": rate(runs["variant"], "only"),
        "variants_ai_min": min(ai["variant"], default=None),
        "max_wall_s": {
            d: max(
                (r["wall_time_s"] for m in results if m["dataset"] == d for r in m["runs"]),
                default=None,
            )
            for d in MAX_SECONDS
        },
        "peak_rss_gib": round(peak_rss_gib(), 3),
    }


def print_model(m):
    """The per-seed lines and totals of one model."""
    asr = "" if m["asr"] is None else f", ASR {100 * m['asr']:.2f}%"
    print(
        f"\n{m['name']} ({m['kind']}, target {fmt(m['target'], 'd')}; {m['epochs']} epochs on "
        f"{m['n_train']} images, clean acc {100 * m['clean_accuracy']:.2f}%{asr})"
    )
    for r in m["runs"]:
        print(
            f"  seed {r['seed']}: AI {fmt(r['anomaly_index'])}  flagged {r['flagged']}  "
            f"target L1 {fmt(r['target_l1'], '.1f')}  wall {r['wall_time_s']:.0f} s"
        )
    t = m["totals"]
    if t["detected"]:
        print(
            f"  detected {'/'.join(map(str, t['detected']))}, only label "
            f"{'/'.join(map(str, t['only']))}, target L1 {t['target_l1'][0]:.1f}-"
            f"{t['target_l1'][1]:.1f}",
            end=";",
        )
    print(f"  mean wall {t['mean_wall_s']:.0f} s per scan")


def print_summary(s):
    """The pooled figures, each beside its target."""

    def pct(hits_runs):
        return f"{hits_runs[0]}/{hits_runs[1]} = {100 * hits_runs[0] / max(1, hits_runs[1]):.1f}%"

    def line(text, target, ok):
        print(f"{text} (target {target}): {'PASS' if ok else 'FAIL'}")

    det, only, fp = s["badnets_detected"], s["badnets_only"], s["false_positives"]
    print(f"\nOverall (scan setting overrides: {s['overrides'] or 'none'})")
    if det[1]:
        line(f"BadNets runs (incl. logits) detected: {pct(det)}", "100%", det[0] == det[1])
        line(f"  target the only flagged label: {pct(only)}", "100%", only[0] == only[1])
        line(
            f"infected anomaly index, min: {fmt(s['infected_ai_min'])}",
            "> 3",
            s["infected_ai_min"] > 3,
        )
    if fp[1]:
        line(f"false positives (clean runs with a label flagged): {pct(fp)}", "0", fp[0] == 0)
        line(f"clean anomaly index, max: {fmt(s['clean_ai_max'])}", "< 2", s["clean_ai_max"] < 2)
    if s["variants_detected"][1]:
        print(
            f"variants detected: {pct(s['variants_detected'])}; only label: "
            f"{pct(s['variants_only'])}; min AI {fmt(s['variants_ai_min'])} (reported)"
        )
    for d, limit in MAX_SECONDS.items():
        if s["max_wall_s"][d] is not None:
            line(
                f"max wall per scan, {d}: {s['max_wall_s'][d]:.0f} s",
                f"<= {limit} s",
                s["max_wall_s"][d] <= limit,
            )
    print_peak_rss()


def print_table(results):
    """The markdown table of docs/results.md."""
    print(
        "\n| model | kind | target | AI per seed | flagged per seed | target L1 min–max | detected "
        "| only | wall s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for m in results:
        t = m["totals"]
        l1 = "-" if t["target_l1"] is None else "{:.1f}–{:.1f}".format(*t["target_l1"])
        hits = ["-" if t[k] is None else "/".join(map(str, t[k])) for k in ("detected", "only")]
        print(
            f"| {m['name']} | {m['kind']} | {fmt(m['target'], 'd')} | "
            f"{', '.join(fmt(r['anomaly_index']) for r in m['runs'])} | "
            f"{', '.join(str(r['flagged']) for r in m['runs'])} | {l1} | {hits[0]} | {hits[1]} | "
            f"{t['mean_wall_s']:.0f} |"
        )


def parse_setting(text):
    """`"key=value"` -> `(key, value)`, the value as int, else float, else string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set needs key=value, got {text!r}")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--split",
        choices=("dev", "test", "both"),
        help="scan the bench/zoo split(s) instead of nc-tf's own suite",
    )
    ap.add_argument("--only", choices=tuple(MAX_SECONDS))
    ap.add_argument("--models", help="comma-separated model names (default: the whole suite)")
    ap.add_argument("--seeds", default="0,1,2", help="scan seeds (default: 0,1,2)")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs (the _s2 models: 2)")
    ap.add_argument("--train-limit", type=int, help="train on the first N images (default: all)")
    ap.add_argument("--limit", type=int, help="scan data: first N test images (default: all)")
    ap.add_argument("--tag", default="default", help="scan folder group, one per set of settings")
    ap.add_argument(
        "--set",
        type=parse_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="scan setting override (repeatable)",
    )
    ap.add_argument("--build-only", action="store_true", help="train the suite, no scans")
    ap.add_argument("--json", help="write every per-run figure to this JSON file")
    args = ap.parse_args()
    if args.split:
        from zoo_detection import main_zoo

        return main_zoo(args, ap.error)
    suite = select_models(
        [m for m in model_suite() if not args.only or m["dataset"] == args.only],
        args.models,
        ap.error,
    )
    seeds, overrides = [int(s) for s in args.seeds.split(",")], dict(args.set)
    try:
        scan_settings(**overrides)
    except ValueError as e:
        ap.error(str(e))
    reports = {}
    for m in suite:
        if m["source"] not in reports:
            base = next(s for s in model_suite() if s["name"] == m["source"])
            reports[m["source"]] = build(base, args.epochs, args.train_limit)
    if args.build_only:
        print(f"{len(reports)} models ready under {os.path.join(ROOT, 'models')}")
        return
    results, data = [], {}
    for m in suite:
        if m["dataset"] not in data:
            data = {m["dataset"]: datasets.load_data(m["dataset"], "test", limit=args.limit)}
        report = reports[m["source"]]
        target = report["targets"][0] if m["attack"] is not None else None
        result = dict(
            name=m["name"],
            dataset=m["dataset"],
            kind=m["kind"],
            target=target,
            epochs=report["training"]["epochs"],
            n_train=report["training"]["n_train"],
            clean_accuracy=report["clean_accuracy"],
            asr=report.get("attack_success_rate"),
            runs=scan_model(m, target, *data[m["dataset"]], seeds, args.tag, overrides),
        )
        result["totals"] = per_model(result)
        print_model(result)
        results.append(result)
    summary = summarise(results, overrides)
    print_summary(summary)
    report_figures(**summary)
    print_table(results)
    env = (
        f"NC_TF_BENCH_DETECTION_DIR={shlex.quote(ROOT)} "
        if "NC_TF_BENCH_DETECTION_DIR" in os.environ
        else ""
    )
    command = env + "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"\n(made by: {command})")
    if args.json:
        out = {
            "command": command,
            "tag": args.tag,
            "overrides": overrides,
            "seeds": seeds,
            "limit": args.limit,
            "summary": summary,
            "models": results,
        }
        out = json.loads(json.dumps(out), parse_constant=lambda _: None)  # NaN, inf -> null
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, allow_nan=False)


if __name__ == "__main__":
    main()
