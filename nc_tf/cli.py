"""The `nc-tf` command line: one library call per command.

    nc-tf inject   --dataset mnist --target 7 --out runs/mnist_badnets
    nc-tf train    --dataset mnist --out runs/mnist_clean
    nc-tf evaluate runs/mnist_badnets/model.keras --dataset mnist \\
                   --attack runs/mnist_badnets/attack.json

Run `nc-tf COMMAND --help` for every option.
"""

import os
import sys

from injection.attacks import ATTACKS
from mitigation.methods import METHODS
from nc_tf import cli_parser
from nc_tf.cli_options import option_flag, read_image_option, scan_labels, scan_overrides
from nc_tf.cli_output import (
    check_out,
    error_text,
    import_tensorflow_quietly,
    print_json,
    print_report,
)
from nc_tf.cli_parser import Parser
from nc_tf.io import folder_entries, out_lock


def build_parser():
    """The argument parser of `nc-tf`, with today's attacks and methods (for docs and tests)."""
    return cli_parser.build_parser(attacks=tuple(ATTACKS), methods=tuple(METHODS))


def main(argv=None):
    """Entry point of the `nc-tf` console script.

    Every error ends the command with exit status 2 and one line on stderr
    that says what is wrong and what to do (`--debug` adds the traceback);
    with `--json`, stdout then holds `{"error": ...}`. An `--out` folder
    the command created is removed again when it fails before writing
    anything into it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help exits; an invalid command line returns 2
        if stop.code != 2:
            raise
        if "--json" in argv:
            print_json({"error": getattr(Parser, "last_error", "invalid arguments")})
        return 2
    import warnings

    warnings.formatwarning = lambda message, *_, **__: f"nc-tf {args.command}: warning: {message}\n"
    import_tensorflow_quietly()
    from nc_tf.memory import restore_malloc_threshold

    restore_malloc_threshold()
    out = getattr(args, "out", None) if args.command not in ("preview", "report") else None
    created = out is not None and not os.path.exists(out)
    try:
        if out is None:
            return COMMANDS[args.command](args) or 0
        check_out(args)
        with out_lock(out):
            return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print(f"nc-tf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every failure becomes one line; --debug shows where
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        message = error_text(error)
        print(f"nc-tf {args.command}: error: {message}", file=sys.stderr)
        if getattr(args, "json", False):
            print_json({"error": message})
        if created and os.path.isdir(out) and not folder_entries(out):
            os.rmdir(out)  # made by this command, and nothing written into it
        return 2


def _asr_text(value):
    return "n/a" if value is None else f"{value:.4f}"


def cmd_inject(args):
    from injection.attacks import build_attack, default_ratio, needs_model

    if args.color == ["noisy"]:
        color = "noisy"
    else:
        try:
            color = [float(v) for v in args.color]
        except ValueError:
            raise ValueError(
                f"--color takes numbers in [0, 255] or 'noisy', got {args.color}."
            ) from None
    position = args.position
    if "," in position:
        parts = position.split(",")
        if len(parts) != 2 or not all(v.strip().isascii() and v.strip().isdigit() for v in parts):
            raise ValueError(
                f"--position takes a name (bottom-right, center, ...) or ROW,COL "
                f"with two whole numbers, got {args.position!r}."
            )
        position = [int(v) for v in parts]
    for flag, values in (("--target", args.target), ("--source", args.source)):
        repeated = sorted({v for v in values or [] if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{flag} {', '.join(map(str, repeated))} given more than once.")
    image = args.image
    if image not in ("logo", "watermark"):
        image = read_image_option(image)
    if args.attack == "badnets" and (color == "noisy" or args.shape != "square"):
        attack = "noisy" if args.shape == "square" else "shape"
    else:
        attack = args.attack
    if attack != "all-to-all" and not args.target:
        raise ValueError(f"--attack {attack} needs --target LABEL.")
    common = dict(
        size=args.size,
        margin=args.margin,
        position=position,
        color=color,
        shape=args.shape,
        sources=args.source,
        image=image,
        alpha=args.alpha,
        seed=args.seed,
        intensity=args.intensity or "raw",
    )

    def check_color(shape):
        if isinstance(color, list) and len(color) not in (1, shape[-1]):
            raise ValueError(
                f"--color has {len(color)} values but the images have {shape[-1]} "
                "channel(s); give one value, or one per channel."
            )

    if needs_model(attack):

        def triggers(shape, model):
            check_color(shape)
            return build_attack(attack, shape, args.target, model=model, **common)
    else:

        def triggers(shape, num_classes):
            check_color(shape)
            return build_attack(attack, shape, args.target, num_classes=num_classes, **common)

    args.ratio = default_ratio(attack) if args.ratio is None else args.ratio
    if args.pretrain_epochs is None:
        args.pretrain_epochs = args.epochs if needs_model(attack) else 0
    return _train(args, triggers)


def _trigger_text(spec):
    parts = [spec.get("attack") or spec.get("kind", "?")]
    if "position" in spec and spec.get("kind") != "arrays":
        parts.append(str(spec["position"]))
    if spec.get("sources"):
        parts.append(f"sources {spec['sources']}")
    return ", ".join(parts)


def cmd_train(args):
    return _train(args, ())


def _train(args, triggers):
    from injection.inject import train_and_save

    report = train_and_save(
        args.out,
        args.dataset,
        triggers,
        args.arch,
        getattr(args, "ratio", 0.1),
        args.epochs,
        args.batch_size,
        args.intensity or "raw",
        args.seed,
        args.limit,
        args.force,
        verbose=0 if args.json else 2,
        x_key=args.x_key,
        y_key=args.y_key,
        pretrain_epochs=getattr(args, "pretrain_epochs", 0) or 0,
        check_labels=(getattr(args, "target", None) or []) + (getattr(args, "source", None) or []),
    )
    name = "attack.json" if report["triggers"] else "train.json"
    print_report(
        args,
        report,
        [
            f"model:               {os.path.join(args.out, 'model.keras')}",
            f"report:              {os.path.join(args.out, name)}",
            f"clean accuracy:      {report['clean_accuracy']:.4f}",
            f"attack success rate: {_asr_text(report['attack_success_rate'])}",
            f"training time:       {report['training']['wall_time_s']:.1f} s",
        ],
    )


def _read_attack(args):
    """`(attack dict, triggers, intensity)` of `--attack` (empty without it), checked."""
    from injection import load_triggers
    from nc_tf.io import read_json
    from nc_tf.preprocess import check_intensity

    if not args.attack:
        return {}, [], args.intensity or "raw"
    attack = read_json(args.attack, "attack file")
    if not isinstance(attack, dict):
        raise ValueError(
            f"{args.attack} is not an attack file (a JSON {type(attack).__name__}, "
            "not an object); pass the attack.json written by `nc-tf inject`."
        )
    triggers = load_triggers(attack, name=args.attack)
    intensity = args.intensity or attack.get("intensity", "raw")
    check_intensity(intensity)
    return attack, triggers, intensity


def cmd_evaluate(args):
    from nc_tf import datasets
    from nc_tf.metrics import check_clean_accuracy, evaluate_backdoor
    from nc_tf.models import check_model_data, load_model

    attack, triggers, intensity = _read_attack(args)
    model = load_model(args.model, trust_model=args.trust_model)
    x, y = datasets.load_data(args.dataset, "test", args.x_key, args.y_key, limit=args.limit)
    check_model_data(model, x, y, name=f"data set {args.dataset!r}")
    for t in triggers:
        if t.image_shape != x.shape[1:]:
            raise ValueError(
                f"The attack's trigger is for images {t.image_shape}, the data set "
                f"has {x.shape[1:]}."
            )
    report = evaluate_backdoor(model, x, y, triggers, intensity)
    check_clean_accuracy(
        report["accuracy"], accept_low_accuracy=True, name=f"data set {args.dataset!r}"
    )
    report.update(
        model=args.model, dataset=str(args.dataset), intensity=intensity, n_samples=int(len(x))
    )
    lines = [f"clean accuracy:      {report['accuracy']:.4f}  ({len(x)} test images)"]
    if triggers:
        lines.append(f"attack success rate: {_asr_text(report['attack_success_rate'])}")
        if len(triggers) > 1:
            specs = attack.get("triggers", [])
            lines += [
                f"  trigger {i} ({_trigger_text(specs[i] if i < len(specs) else {})}) -> "
                f"{p['target']}: {p['attack_success_rate']:.4f}"
                for i, p in enumerate(report["per_trigger"])
            ]
    print_report(args, report, lines)


def cmd_scan(args):
    from nc_tf import datasets
    from nc_tf.models import load_model
    from nc_tf.scan import scan

    gangsweep = args.method == "gangsweep"
    overrides, labels = scan_overrides(args), scan_labels(args)
    if args.report:
        from mitigation.report import check_report_path

        check_report_path(os.path.join(args.out, "report.html"), own=True)
    model = load_model(args.model, trust_model=args.trust_model)
    x, y = datasets.load_data(args.dataset, "test", args.x_key, args.y_key, limit=args.limit)
    if gangsweep:
        from nc_tf.gangsweep import gangsweep_scan

        record = gangsweep_scan(
            model,
            x,
            y,
            labels=labels,
            out_dir=args.out,
            intensity=args.intensity or "raw",
            seed=args.seed,
            progress=not args.json,
            verbose=not args.json,
            model_path=args.model,
            **overrides,
        )
        _scan_report(args, record, model, x, y)
        return
    prefix = os.path.splitext(os.path.basename(str(args.dataset)))[0]
    common = dict(
        out_dir=args.out,
        preset=args.preset,
        intensity=args.intensity or "raw",
        seed=args.seed,
        slots=args.slots,
        prefix=prefix,
        progress=not args.json,
        verbose=not args.json,
        model_path=args.model,
        **overrides,
    )
    if args.divide_and_conquer and not args.partial:
        raise ValueError("--divide-and-conquer is a mode of --partial; add --partial.")
    if args.partial:
        if args.low_cost or args.suspected is not None:
            raise ValueError(
                "--partial cannot be combined with --low-cost or --suspected; "
                "use --labels to restrict the targets."
            )
        from nc_tf.partial import partial_scan

        record = partial_scan(
            model,
            x,
            y,
            targets=labels,
            divide_and_conquer=args.divide_and_conquer,
            beam=args.beam,
            accept_low_accuracy=args.accept_low_accuracy,
            **common,
        )
    else:
        record = scan(
            model,
            x,
            y,
            labels=labels,
            suspected=args.suspected,
            low_cost=args.low_cost,
            accept_low_accuracy=args.accept_low_accuracy,
            **common,
        )
    record.pop("triggers")
    _scan_report(args, record, model, x, y)


def _scan_report(args, record, model, x, y):
    """Prints where the scan's results are; with --report, writes and names OUT/report.html."""
    lines = [f"results: {os.path.join(args.out, 'results.json')}"]
    if args.report:
        from mitigation.report import write_report

        path = os.path.join(args.out, "report.html")
        where = dict(dataset=str(args.dataset), model_path=args.model, own=True)
        write_report([args.out], model, x, y, path, args.intensity, **where)
        record["report"] = path
        lines.append(f"report:  {path}")
    print_report(args, record, lines)


def cmd_scan_many(args):
    """Scans every model; exit status 1 when a model failed (its error is in the summary)."""
    from functools import partial

    from nc_tf import datasets
    from nc_tf.scan_many import check_engine, model_files, scan_many
    from nc_tf.scan_summary import summary_lines

    options = dict(split_labels=args.split_labels, max_retries=args.max_retries)
    options.update(cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task)
    check_engine(args.engine, **options)
    models = model_files(args.models)
    overrides, labels = scan_overrides(args), scan_labels(args)
    x, y = datasets.load_data(args.dataset, "test", args.x_key, args.y_key, limit=args.limit)
    intensity = args.intensity or "raw"
    report = partial(_model_report, dataset=str(args.dataset), intensity=intensity)
    summary = scan_many(
        models,
        x,
        y,
        args.out,
        engine=args.engine,
        ray_address=args.ray_address,
        trust_model=args.trust_model,
        after_scan=report if args.report else None,
        progress=not args.json,
        labels=labels,
        preset=args.preset,
        intensity=intensity,
        seed=args.seed,
        slots=args.slots,
        prefix=os.path.splitext(os.path.basename(str(args.dataset)))[0],
        accept_low_accuracy=args.accept_low_accuracy,
        **options,
        **overrides,
    )
    lines = summary_lines(summary, args.out)
    print_report(args, summary, lines)
    return 1 if any(m["status"] != "ok" for m in summary["models"]) else 0


def _model_report(scan_dir, model, x, y, path, dataset, intensity):
    """Writes `scan_dir/report.html` (the `after_scan` of `nc-tf scan-many --report`)."""
    from mitigation.report import write_report

    where = dict(dataset=dataset, model_path=path, own=True)
    write_report([scan_dir], model, x, y, os.path.join(scan_dir, "report.html"), intensity, **where)


def cmd_mitigate(args):
    from mitigation.methods import needing
    from mitigation.mitigate import mitigate, split_data
    from mitigation.verification import scan_reference
    from nc_tf import datasets
    from nc_tf.identity import weights_sha256
    from nc_tf.layers import resolve_layer
    from nc_tf.models import check_model_data, load_model
    from nc_tf.scan import read_scan_record, scan_triggers

    _, attack_triggers, intensity = _read_attack(args)
    mine = set(METHODS[args.method].options)
    wrong = [
        option_flag(flag)
        for flag in sorted({f for m in METHODS.values() for f in m.options})
        if flag not in mine and flag != "focus" and getattr(args, flag) is not None
    ]
    wrong += ["--no-focus"] if args.method != "repair" and args.focus is False else []
    if wrong:
        users = sorted(
            name for name, m in METHODS.items() if any(option_flag(f) in wrong for f in m.options)
        )
        raise ValueError(
            f"{', '.join(wrong)} belong(s) to --method {'/'.join(users) or 'repair'}, "
            f"not --method {args.method}; drop them or change --method."
        )
    if args.method == "gangsweep" and args.labels and any("->" in v for v in args.labels):
        raise ValueError(
            "--method gangsweep patches labels such as 3,7; pairs such as 3->7 "
            "name partial-scan results."
        )
    if args.method in needing("scan") and not args.scan:
        raise ValueError(
            f"--method {args.method} removes the reversed triggers of a scan: add "
            "--scan DIR (run `nc-tf scan MODEL --out DIR` first)."
        )
    labels = args.labels
    record = read_scan_record(args.scan) if args.scan else None
    if args.method in needing("generators"):
        if not args.scan:
            raise ValueError(
                "--method gangsweep patches with a GangSweep scan's generators: add "
                "--scan DIR (run `nc-tf scan MODEL --method gangsweep --out DIR`)."
            )
        from nc_tf.gangsweep import load_generators

        generators = load_generators(args.scan, [int(v) for v in labels] if labels else None)
        if not generators:
            raise ValueError(
                f"The GangSweep scan in {args.scan} flags no label, so there is "
                "nothing to patch; pass --labels to patch chosen labels anyway."
            )
        triggers = []
    else:
        generators = None
        triggers = (
            scan_triggers(args.scan, labels, verbose=not args.json, record=record)
            if args.scan
            else []
        )
        if args.method in needing("scan") and not triggers:
            raise ValueError(
                f"The scan in {args.scan} flags no label, so --method "
                f"{args.method} has no trigger to remove; pass --labels to remove "
                "chosen labels' triggers anyway."
            )
    verified_labels = None
    if labels and scan_reference(record) is not None:
        verified_labels = [int(v) for v in labels]
    model = load_model(args.model, trust_model=args.trust_model)
    if getattr(args, "layer", None) is not None:
        resolve_layer(model, args.layer)  # a wrong --layer is refused before the data is read
    scanned = (record or {}).get("identity") or {}
    if scanned.get("weights_sha256") and scanned["weights_sha256"] != weights_sha256(model):
        raise ValueError(
            f"The scan in {args.scan} was made from another model (weights sha256 "
            f"{scanned['weights_sha256'][:12]}), not {args.model}; scan this model "
            "first and pass that folder."
        )
    x_train, y_train = datasets.load_data(args.dataset, "train", limit=args.train_limit)
    x_test, y_test = datasets.load_data(
        args.dataset, "test", args.x_key, args.y_key, limit=args.limit
    )
    check_model_data(model, x_test, y_test, name=f"data set {args.dataset!r}")
    data = split_data(x_train, y_train, x_test, y_test, args.val_ratio, args.seed)
    options = {
        kw: getattr(args, flag)
        for flag, kw in METHODS[args.method].options.items()
        if getattr(args, flag) is not None
    }
    scan_options = {
        k: getattr(args, flag)
        for flag, k in (
            ("preset", "preset"),
            ("restarts", "restarts"),
            ("scan_steps", "steps"),
            ("scan_starts", "starts"),
        )
        if getattr(args, flag) is not None
    } or None
    _, report = mitigate(
        args.method,
        model,
        data,
        triggers,
        attack_triggers,
        out_dir=args.out,
        force=args.force,
        intensity=intensity,
        seed=args.seed,
        scan_options=scan_options,
        verbose=not args.json,
        generators=generators,
        scan_record=record,
        labels=verified_labels,
        peel=args.peel,
        verify=args.verify,
        model_path=args.model,
        accept_low_accuracy=args.accept_low_accuracy,
        **options,
    )
    if args.json:
        print_report(args, report, [])
    else:
        print(f"report: {os.path.join(args.out, 'mitigation.json')}")
    if report["verification"]["verified"] is False:
        surviving = ", ".join(map(str, report["verification"]["surviving"]))
        print(
            f"nc-tf mitigate: warning: the repair is NOT verified: a fresh scan of the "
            f"repaired model still finds a small trigger for label(s) {surviving} "
            f"(see {os.path.join(args.out, 'mitigation.json')}); try --method repair or "
            "more --rounds",
            file=sys.stderr,
        )
        return 3


def cmd_detect(args):
    from nc_tf.scan import detect_dir

    result = detect_dir(
        args.scan_dir, verbose=not args.json, norm_source=args.norm_source, rule=args.rule
    )
    if args.json:
        print_report(args, result, [])


def cmd_report(args):
    from mitigation.report import REPORT_OPTIONS, make_report

    options = {name: getattr(args, name) for name in REPORT_OPTIONS}
    summary = make_report(args.dirs, args.model, args.dataset, args.out, **options)
    print_report(args, summary, [f"report: {args.out} ({summary['bytes'] / 1e6:.2f} MB)"])


def cmd_preview(args):
    from mitigation.preview import check_out_path, load_images, preview_grid

    check_out_path(args.out, args.force)  # before reading the data: refuse at once
    images = load_images(args.source, limit=args.n_images, x_key=args.x_key, y_key=args.y_key)
    grid = preview_grid(
        images,
        pipeline=args.pipeline,
        n_images=args.n_images,
        n_variants=args.variants,
        seed=args.seed,
        path=args.out,
        force=args.force,
    )
    rows = min(len(images), args.n_images)
    print(
        f"preview: {args.out} ({rows} images x {args.variants} {args.pipeline} variants, "
        f"{grid.shape[1]}x{grid.shape[0]} px)"
    )


if __name__ == "__main__":
    sys.exit(main())


# Sub-command -> the function that runs it (the parsers live in nc_tf.cli_parser).
COMMANDS = {
    "inject": cmd_inject,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "scan": cmd_scan,
    "scan-many": cmd_scan_many,
    "mitigate": cmd_mitigate,
    "detect": cmd_detect,
    "preview": cmd_preview,
    "report": cmd_report,
}
