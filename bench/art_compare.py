"""Neural Cleanse scan: nc-tf against IBM ART 1.20's KerasNeuralCleanse, same model, data and budget.

Scans runs/bench/mnist_badnets (target 7; `--only gtsrb`: runs/bench/gtsrb_badnets,
target 33) with our `nc_tf.scan.scan` and with ART's
`art.estimators.poison_mitigation.KerasNeuralCleanse` (adversarial-robustness-toolbox
1.20, `pip install -e ".[bench]"`), one after the other in this process, and prints:
both wall times, the ratio ART / ours (target >= 20x), both verdicts (anomaly index,
flagged labels, per-label L1 norms and attack success side by side) and the peak RSS
of the process (target < 4 GiB). Nothing is written to disk.

What is timed. Ours: the `scan(...)` call (graph build and tracing included, no
out_dir). ART: building `KerasNeuralCleanse`, `generate_backdoor` for every label and
the MAD verdict, i.e. what `KerasNeuralCleanse.outlier_detection` does (it is called
label by label, with ART's own MAD rule, so that `--labels` can cap the labels and each
label can be timed; `outlier_detection` itself scans every label and nothing else).

Same step budget. ART's `generate_backdoor` runs up to `steps` steps and ONE ART step
is one pass over all of `x_val`: `len(x_val) // batch_size` batches of `batch_size`
images (an endless shuffled `ImageDataGenerator.flow`). Ours runs up to `steps` steps
of `nb_sample // batch_size` batches. So both get the first `nb_sample` test images
(cut to a multiple of `batch_size`, so ART's generator never yields a short batch) as
their data, and per label both run at most `steps` x `nb_sample` images. The other
settings come from our preset (`--preset`, default "fast") under both names:

    ours (scan override)     ART 1.20 (KerasNeuralCleanse)
    steps                    steps
    nb_sample                len(x_val)             (images per step)
    batch_size               batch_size
    lr                       learning_rate          (Adam beta_1 0.5, beta_2 0.9 on both)
    init_cost                init_cost
    regularization="l1"      norm=1
    attack_succ_threshold    attack_success_threshold
    patience                 patience
    cost_multiplier          cost_multiplier        (up x m, down / m**1.5 on both)
    early_stop_threshold     early_stop_threshold
    early_stop_patience      early_stop_patience    (early_stop=True on both)
    restarts=1               -                      (ART: one run per label)

`--restarts N` lets ours run N restarts per label (the fast preset's 2) and counts
their batches. `--no-early-stop` turns early stopping off on both sides (ART
`early_stop=False`, ours `early_stop_patience` > `steps`), so both run exactly `steps`
steps per label. "ms per batch" / "per-batch ratio" compare the sides per batch of
`batch_size` images actually run, whatever early stopping did.

The model takes raw [0, 255] images; ART's mask and pattern live in [0, 1], so ART
gets the images / 255 and the same model behind a `Rescaling(255)` layer (same layer
objects, same weights): (1 - m) x/255 + m p, times 255, is exactly our (1 - m) x + m 255p.

Differences in ART's algorithm that remain (they are ART's, see the report notes):
- Keras 3: ART's `reset()` (called at the start of every `generate_backdoor`) zeroes
  all of `optimizer._variables`, which in Keras 3 include Adam's learning rate, so as
  shipped ART never moves the mask and every label gets the same norm. This bench
  restores the learning rate after `reset()` (a subclass; ART's optimisation is
  otherwise untouched) and says so; `--art-as-shipped` runs ART unpatched.
- ART's cost starts at `init_cost` (the reference starts at 0) and its cost schedule
  resets the cost to `init_cost` after every `patience` consecutive successes (the
  reference does that only while the cost is 0), so its cost never rises and its
  early stop (which needs the cost to have gone both up and down) never fires: ART
  always runs all `steps` steps.
- ART keeps one mask and pattern across labels (only cost and Adam are reset), so a
  label starts from the previous label's trigger and its result depends on the label
  order (MNIST, fast budget: label 7 gets l1 4.3 on a fresh estimator, 41 after
  labels 0, 1, 2); ours starts each label from its own random init.
  `--art-fresh-per-label` gives ART a new estimator per label. ART's mask is per
  channel (H, W, C), its norm sum|m| over H x W x C (as ours for 1-channel MNIST).
- ART's init and batch order are unseeded (its norms vary from run to run); ours are
  seeded and repeat exactly.
- ART optimises one label at a time, eagerly, one Python round trip per batch (and it
  prints the batch accuracy each batch: that output is discarded but still paid for);
  ours runs `slots` labels at once inside one compiled graph.

Usage: python bench/art_compare.py [--only mnist|gtsrb] [--preset fast|reference]
           [--steps N] [--nb-sample N] [--batch-size N] [--labels 0,7,...]
           [--slots N] [--restarts N] [--no-early-stop] [--art-fresh-per-label] [--art-as-shipped]
"""

import argparse
import contextlib
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np  # noqa: E402
from _common import MODELS_DIR, print_peak_rss  # noqa: E402

from nc_tf import datasets  # noqa: E402
from nc_tf.io import read_json  # noqa: E402
from nc_tf.metrics import attack_success_rate, predict_labels  # noqa: E402
from nc_tf.models import load_model  # noqa: E402
from nc_tf.outlier import median_mad  # noqa: E402
from nc_tf.scan import scan, scan_settings  # noqa: E402

TARGET_RATIO = 20.0
TARGET_RSS_GIB = 4


def versions():
    import keras
    import tensorflow as tf

    try:
        from importlib.metadata import version

        art = version("adversarial-robustness-toolbox")
    except Exception:  # noqa: BLE001 - not installed
        art = "not installed"
    return (
        f"python {platform.python_version()}, tensorflow {tf.__version__}, "
        f"keras {keras.__version__}, adversarial-robustness-toolbox {art}"
    )


def art_verdict(norms):
    """ART 1.20's `outlier_detection` rule on `{label: norm}`, plus the reference anomaly index."""
    labels = sorted(norms)
    values = np.array([norms[k] for k in labels], np.float64)
    median, mad = median_mad(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        index = np.abs(values - median) / mad
        anomaly_index = float(np.abs(values.min() - median) / mad)
    flagged = [k for k, v, a in zip(labels, values, index) if v <= median and a > 2]
    return {"median": median, "mad": mad, "anomaly_index": anomaly_index, "flagged": flagged}


def make_art(model, settings, early_stop, as_shipped):
    """ART's KerasNeuralCleanse on `model` with our settings under ART's names.

    Returns `(estimator, lr_bug)`: `lr_bug` tells whether ART's own `reset()`
    zeroes Adam's learning rate on this Keras; then, unless `as_shipped`, the
    estimator restores it after every reset (nothing else of ART is changed).
    """
    from art.estimators.poison_mitigation import KerasNeuralCleanse

    class LrRestoringNeuralCleanse(KerasNeuralCleanse):
        def reset(self):
            super().reset()
            if float(self.opt.learning_rate) != float(self.learning_rate):
                self.opt.learning_rate = float(self.learning_rate)

    cls = KerasNeuralCleanse if as_shipped else LrRestoringNeuralCleanse
    art = cls(
        model,
        clip_values=(0.0, 1.0),
        steps=settings["steps"],
        init_cost=settings["init_cost"],
        norm={"l1": 1, "l2": 2}[settings["regularization"]],
        learning_rate=settings["lr"],
        attack_success_threshold=settings["attack_succ_threshold"],
        patience=settings["patience"],
        early_stop=early_stop,
        early_stop_threshold=settings["early_stop_threshold"],
        early_stop_patience=settings["early_stop_patience"],
        cost_multiplier=settings["cost_multiplier"],
        batch_size=settings["batch_size"],
    )
    KerasNeuralCleanse.reset(art)  # ART's own reset, as generate_backdoor calls it
    lr_bug = float(art.opt.learning_rate) == 0.0
    art.reset()
    return art, lr_bug


def art_view(model, x):
    """`model` behind `Rescaling(255)`: takes [0, 1] images, as ART's mask and pattern.

    Shares `model`'s layers (and weights); checked to predict as `model` on `x`.
    """
    import keras

    wrapped = keras.Sequential(
        [keras.Input(x.shape[1:]), keras.layers.Rescaling(255.0)] + list(model.layers),
        name="art_view",
    )
    same = np.mean(
        np.argmax(wrapped.predict(x / 255.0, verbose=0), axis=1) == predict_labels(model, x)
    )
    if same < 1.0:
        raise RuntimeError(f"the [0, 1] view of the model disagrees on {1 - same:.1%} of images")
    return wrapped


def run_art(
    model, wrapped, x01, y, labels, num_classes, settings, early_stop, as_shipped, fresh=False
):
    """ART's scan of `labels`; returns a result dict (per-label norm, steps, seconds).

    One estimator for all labels, as `outlier_detection` does; `fresh`: a new
    estimator (new random mask and pattern) for each label.
    """
    start = time.time()
    calls = [0]

    def build():
        art, lr_bug = make_art(wrapped, settings, early_stop, as_shipped)
        train = art.train

        def counted(x_batch, y_batch):
            calls[0] += 1
            return train(x_batch, y_batch)

        art.train = counted
        return art, lr_bug

    art, lr_bug = build()
    mini_batch = len(x01) // settings["batch_size"]
    eye = np.eye(num_classes, dtype=np.float32)
    y_onehot = eye[y]
    per_label = {}
    with open(os.devnull, "w") as sink:
        for i, label in enumerate(labels):
            t0, c0 = time.time(), calls[0]
            if fresh and i:
                art, _ = build()
            # ART prints the batch accuracy every batch: discard it.
            with contextlib.redirect_stdout(sink):
                mask, pattern = art.generate_backdoor(x01, y_onehot, eye[label])
            seconds = time.time() - t0
            stamped = ((1 - mask) * x01 + mask * pattern) * 255.0
            asr = attack_success_rate(predict_labels(model, stamped), y, label)
            per_label[label] = {
                "l1_norm": float(np.sum(np.abs(mask))),
                "asr": asr,
                "steps": (calls[0] - c0) // mini_batch,
                "batches": calls[0] - c0,
                "seconds": seconds,
            }
            print(
                f"  ART label {label}: l1 {per_label[label]['l1_norm']:.2f}, asr {asr:.3f}, "
                f"{per_label[label]['steps']} steps, {seconds:.1f} s",
                flush=True,
            )
    verdict = art_verdict({k: v["l1_norm"] for k, v in per_label.items()})
    return {
        "wall": time.time() - start,
        "labels": per_label,
        "verdict": verdict,
        "lr_bug": lr_bug,
        "channels": x01.shape[-1],
    }


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only",
        default="mnist",
        choices=("mnist", "gtsrb"),
        help="benchmark model: runs/bench/<name>_badnets (default mnist)",
    )
    ap.add_argument(
        "--preset",
        default="fast",
        choices=("fast", "reference"),
        help="our preset the matched settings come from (default fast)",
    )
    ap.add_argument("--steps", type=int, help="max steps per label, both sides (default: preset)")
    ap.add_argument(
        "--nb-sample",
        type=int,
        help="images per step = ART's x_val size, both sides (default: preset)",
    )
    ap.add_argument("--batch-size", type=int, help="images per batch, both sides (default: preset)")
    ap.add_argument("--labels", help="comma-separated labels to scan on both sides (default: all)")
    ap.add_argument("--slots", type=int, default=8, help="our labels in flight (default 8)")
    ap.add_argument(
        "--restarts",
        type=int,
        default=1,
        help="our runs per label (default 1: ART has one; the fast preset has 2)",
    )
    ap.add_argument(
        "--no-early-stop",
        action="store_true",
        help="no early stop on either side: exactly --steps steps per label",
    )
    ap.add_argument(
        "--art-fresh-per-label",
        action="store_true",
        help="a new ART estimator (new random mask/pattern) for each label",
    )
    ap.add_argument(
        "--art-as-shipped",
        action="store_true",
        help="do not restore Adam's learning rate after ART's reset() (Keras 3 bug)",
    )
    args = ap.parse_args()

    folder = os.path.join(MODELS_DIR, f"{args.only}_badnets")
    model_path = os.path.join(folder, "model.keras")
    if not os.path.exists(model_path):
        sys.exit(f"no {model_path}: run bench/inject_table2.py first")
    attack = read_json(os.path.join(folder, "attack.json"))
    if attack.get("intensity", "raw") != "raw":
        sys.exit(f"{model_path} takes intensity {attack['intensity']!r}; this bench needs 'raw'")
    target = attack["targets"][0]

    settings = scan_settings(
        args.preset, steps=args.steps, nb_sample=args.nb_sample, batch_size=args.batch_size
    )
    if "restarts" in settings:
        settings["restarts"] = args.restarts
    elif args.restarts != 1:
        sys.exit("this nc_tf.scan has no restarts setting")
    bs = settings["batch_size"]
    n = settings["nb_sample"] // bs * bs
    settings["nb_sample"] = n
    if args.no_early_stop:
        settings["early_stop_patience"] = settings["steps"] + 1
    x, y = datasets.load_data(args.only, "test", limit=n)
    if len(x) < n:
        sys.exit(f"only {len(x)} test images, fewer than nb_sample {n}")
    model = load_model(model_path)
    num_classes = int(model.output_shape[-1])
    labels = (
        list(range(num_classes)) if not args.labels else [int(v) for v in args.labels.split(",")]
    )
    if len(labels) < 3:
        sys.exit("the MAD verdict needs at least 3 labels")
    overrides = {k: settings[k] for k in settings if k != "regularization"}

    print(
        f"Neural Cleanse: nc-tf scan vs IBM ART KerasNeuralCleanse on {args.only}_badnets "
        f"(target {target})"
    )
    print(versions())
    print(
        f"budget per label, both sides: <= {settings['steps']} steps x {n} images "
        f"({n // bs} batches of {bs}); labels {len(labels)} of {num_classes}"
        + ("" if len(labels) == num_classes else f" (capped: {labels})")
        + (f"; ours x {settings['restarts']} restarts" if settings.get("restarts", 1) > 1 else "")
    )
    print(
        "matched settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + f", early_stop={'off' if args.no_early_stop else 'on'} (preset {args.preset!r})"
    )
    sys.stdout.flush()

    # ---- ours
    t0 = time.time()
    record = scan(
        model,
        x,
        y,
        labels=labels,
        preset=args.preset,
        slots=args.slots,
        progress=False,
        verbose=False,
        **overrides,
    )
    ours_wall = time.time() - t0
    ours = {int(k): v for k, v in record["labels"].items()}
    for v in ours.values():  # steps of every restart (work done), not only the kept run's
        v["steps_run"] = sum(r["steps"] for r in v.get("restarts", [v]))
    o = record["outlier"]
    ours_flagged = sorted(int(f[0]) for f in o["flagged"])
    print(f"  ours: {ours_wall:.1f} s", flush=True)

    # ---- ART
    art, art_error = None, None
    try:
        wrapped = art_view(model, x)
        art = run_art(
            model,
            wrapped,
            (x / 255.0).astype(np.float32),
            y,
            labels,
            num_classes,
            settings,
            early_stop=not args.no_early_stop,
            as_shipped=args.art_as_shipped,
            fresh=args.art_fresh_per_label,
        )
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        import traceback

        art_error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()

    # ---- report
    print()
    if art is None:
        print(f"ART could not run here: {art_error}")
        print(f"  ({versions()})")
    if art is not None:
        print(
            "note: ART ran "
            + (
                "a new estimator per label (--art-fresh-per-label)."
                if args.art_fresh_per_label
                else "one estimator for all labels, as its outlier_detection does: "
                "each label starts from the previous label's mask and pattern."
            )
        )
    if art is not None and art["lr_bug"]:
        print(
            "note: ART 1.20's reset() zeroes Adam's learning rate on Keras 3 (it is in "
            "optimizer._variables); "
            + (
                "run AS SHIPPED: ART's masks never move."
                if args.art_as_shipped
                else "restored after each reset() for this run."
            )
        )
    ours_batches = sum(v["steps_run"] for v in ours.values()) * (n // bs)
    rows = [("wall s", f"{ours_wall:.1f}", f"{art['wall']:.1f}" if art else "-", "")]
    if art:
        art_batches = sum(v["batches"] for v in art["labels"].values())
        ratio = art["wall"] / ours_wall
        per_batch = (art["wall"] / art_batches) / (ours_wall / ours_batches)
        rows += [
            ("ratio ART / ours", "", f"{ratio:.1f}x", f">= {TARGET_RATIO:.0f}x"),
            ("batches run", str(ours_batches), str(art_batches), ""),
            (
                "ms per batch",
                f"{1000 * ours_wall / ours_batches:.2f}",
                f"{1000 * art['wall'] / art_batches:.2f}",
                "",
            ),
            ("per-batch ratio", "", f"{per_batch:.1f}x", ""),
        ]
    rows += [
        (
            "anomaly index",
            f"{o['anomaly_index']:.2f}",
            f"{art['verdict']['anomaly_index']:.2f}" if art else "-",
            "> 2",
        ),
        (
            "flagged",
            str(ours_flagged),
            str(art["verdict"]["flagged"]) if art else "-",
            f"[{target}]",
        ),
    ]
    print(f"{'':18} {'nc-tf':>10} {'ART':>10}  target")
    for name, a, b, t in rows:
        print(f"{name:18} {a:>10} {b:>10}  {t}")
    if art:
        print(
            "verdict: "
            + ", ".join(
                f"{side} {'correct' if flagged == [target] else 'WRONG'}"
                for side, flagged in (("nc-tf", ours_flagged), ("ART", art["verdict"]["flagged"]))
            )
        )
    print(
        f"\n{'label':>5} {'l1 ours':>9} {'l1 ART':>9} {'asr ours':>9} {'asr ART':>8} "
        f"{'steps ours':>10} {'steps ART':>9} {'s ART':>7}"
    )
    for label in labels:
        a = art["labels"][label] if art else None
        mark = " <- target" if label == target else ""
        print(
            f"{label:5d} {ours[label]['l1_norm']:9.2f} "
            f"{a['l1_norm'] if a else float('nan'):9.2f} "
            f"{ours[label]['attack_success_rate']:9.3f} {a['asr'] if a else float('nan'):8.3f} "
            f"{ours[label]['steps_run']:10d} {a['steps'] if a else 0:9d} "
            f"{a['seconds'] if a else float('nan'):7.1f}{mark}"
        )
    if art and art["channels"] > 1:
        print(
            f"(ART's mask is per channel: its l1 is over H x W x {art['channels']}, ours over H x W)"
        )
    print(
        "(ours: all labels in one scan call, per-label seconds not separable, steps of all "
        "restarts; "
        "asr = reversed trigger's attack success on the scan images, target-class images excluded)"
    )
    print_peak_rss(TARGET_RSS_GIB)


if __name__ == "__main__":
    main()
