"""Training with a backdoor injected (BadNets), or its clean twin."""

import inspect

import keras

from injection.callbacks import BackdoorCall
from injection.generators import PER_LABEL_RATIO, PoisonedDataset
from nc_tf.models import outputs_probabilities


def reference_optimizer():
    """Adam lr 1e-3 with Keras-2 `decay=1e-4` (lr / (1 + 1e-4 * step)), as the NC code."""
    schedule = keras.optimizers.schedules.InverseTimeDecay(1e-3, decay_steps=1, decay_rate=1e-4)
    return keras.optimizers.Adam(learning_rate=schedule)


def inject_backdoor(
    model,
    x,
    y,
    triggers=(),
    ratio=PER_LABEL_RATIO,
    epochs=10,
    batch_size=32,
    intensity="raw",
    seed=0,
    validation_data=None,
    callbacks=(),
    verbose=1,
):
    """Trains `model` on data poisoned with `triggers` (none: the clean twin).

    Follows the Neural Cleanse injection example: random batches from
    `PoisonedDataset`, each sample stamped with probability
    `r*n / (r*n + 1)`, and `BackdoorCall` reporting clean accuracy and attack
    success rate on `validation_data` after each epoch. An uncompiled model
    is compiled with the reference optimiser (Adam 1e-3, decay 1e-4) and
    sparse cross-entropy (on logits or probabilities, whichever the model
    outputs).

    Args:
        model: a Keras classifier; it is trained in place.
        x: raw training images.
        y: integer training labels.
        triggers: `Trigger` objects to inject. Defaults to `()` (clean).
        ratio: r, poisoned fraction per target label. Defaults to `0.1`.
        epochs: training epochs. Defaults to `10`.
        batch_size: batch size. Defaults to `32`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: seeds weights' init, dropout, sampling and stamping.
            Defaults to `0`.
        validation_data: `(x_test, y_test)` raw, for `BackdoorCall`.
            Defaults to `None` (no per-epoch report).
        callbacks: extra Keras callbacks. Defaults to `()`.
        verbose: Keras verbosity. Defaults to `1`.

    Returns:
        the Keras `History` (with `clean_acc` and `attack_success_rate` per
        epoch when `validation_data` is given).

    Example:

    >>> from nc_tf import datasets, models
    >>> from injection import square_trigger
    >>> x, y = datasets.load_data("mnist", "train", limit=2000)
    >>> model = models.mnist_model()
    >>> h = inject_backdoor(model, x, y, [square_trigger(x.shape[1:], 7)],
    ...                     epochs=1, verbose=0)
    """
    keras.utils.set_random_seed(seed)
    if not model.compiled:
        model.compile(
            optimizer=reference_optimizer(),
            loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=not outputs_probabilities(model)
            ),
            metrics=["accuracy"],
        )
    data = PoisonedDataset(x, y, triggers, ratio, batch_size, intensity, seed)
    cbs = list(callbacks)
    if validation_data is not None:
        cbs.insert(0, BackdoorCall(*validation_data, triggers, intensity, verbose=verbose))
    return model.fit(data, epochs=epochs, callbacks=cbs, verbose=verbose)


def train_and_save(
    out,
    dataset="mnist",
    triggers=(),
    arch=None,
    ratio=PER_LABEL_RATIO,
    epochs=10,
    batch_size=32,
    intensity="raw",
    seed=0,
    limit=None,
    force=False,
    verbose=1,
    x_key=None,
    y_key=None,
    pretrain_epochs=0,
    base_model=None,
    check_labels=(),
):
    """Trains an infected model (or, without triggers, its clean twin) and saves it.

    Writes `out/model.keras` and `out/attack.json` (infected) or
    `out/train.json` (clean): trigger specs, targets, clean accuracy, attack
    success rate, per-epoch history and every training setting.

    Args:
        out: output folder; must be new or empty unless `force`.
        dataset: data set name or path (see `nc_tf.datasets.load_data`).
            Defaults to `"mnist"`.
        triggers: `Trigger` objects, or a function `image_shape -> triggers`
            that may also take `num_classes=` and `model=` keywords (a
            function taking `model` is called after `pretrain_epochs` of
            clean training: Trojan and invisible attacks optimise their
            trigger on the trained model). Defaults to `()` (clean twin).
        arch: `"mnist"`, `"gtsrb"`, `"resnet"`; `None` picks by data shape.
            Defaults to `None`.
        ratio: r, poisoned fraction per target. Defaults to `0.1`.
        epochs: training epochs. Defaults to `10`.
        batch_size: batch size. Defaults to `32`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: random seed. Defaults to `0`.
        limit: train on the first `limit` training samples only. Defaults to
            `None` (all).
        force: overwrite files in a non-empty `out`. Defaults to `False`.
        verbose: Keras verbosity. Defaults to `1`.
        x_key: image array name in an `.h5`/`.npz` file. Defaults to `None`.
        y_key: label array name. Defaults to `None`.
        pretrain_epochs: clean epochs before a model-dependent trigger is
            made (then `epochs` of poisoned training follow). Defaults to `0`.
        base_model: a trained model (or the path of one, loaded without
            running its code) to start from instead of fresh weights: a
            copy of it is trained `epochs` more on the poisoned data, and
            `pretrain_epochs` is ignored. One clean model then serves every
            variant (fine-tuning costs a fraction of training from scratch).
            Defaults to `None`.
        check_labels: labels (the attack's targets and sources) that must
            exist in the data, checked before any training. Defaults to
            `()`.

    Returns:
        the report dict written to the JSON file.

    Example:

    >>> from injection import square_trigger
    >>> report = train_and_save("runs/demo", "mnist",
    ...                         lambda shape: [square_trigger(shape, 7)], epochs=1)  # doctest: +SKIP
    """
    import os
    import time

    from nc_tf import datasets, io, models
    from nc_tf.metrics import evaluate_backdoor
    from nc_tf.preprocess import check_intensity

    check_intensity(intensity)
    io.check_out_dir(out, force)
    x, y = datasets.load_data(dataset, "train", x_key, y_key, limit=limit)
    x_test, y_test = datasets.load_data(dataset, "test", x_key, y_key)
    num_classes = int(max(y.max(), y_test.max()) + 1)
    if num_classes < 2:
        raise ValueError("The training data has a single class; a classifier needs two or more.")
    wrong = sorted({int(v) for v in check_labels if not 0 <= int(v) < num_classes})
    if wrong:
        raise ValueError(
            f"Label(s) {wrong} are out of range: the data has labels 0..{num_classes - 1}."
        )
    io.prepare_out_dir(out, force)
    keras.utils.set_random_seed(seed)  # weights are created when the model is built
    if base_model is None:
        arch = arch or models.default_arch(x.shape[1:], num_classes)
        model = models.build_model(arch, x.shape[1:], num_classes)
    else:
        model, arch = _copy_base(base_model, x.shape[1:], num_classes), arch or "base_model"
    start = time.time()
    pre = None
    if callable(triggers):
        wants = inspect.signature(triggers).parameters
        if "model" in wants and pretrain_epochs > 0 and base_model is None:
            pre = inject_backdoor(
                model,
                x,
                y,
                (),
                ratio,
                pretrain_epochs,
                batch_size,
                intensity,
                seed,
                validation_data=(x_test, y_test),
                verbose=verbose,
            )
        context = {"model": model, "num_classes": num_classes}
        triggers = triggers(x.shape[1:], **{k: v for k, v in context.items() if k in wants})
    for t in triggers:
        if getattr(t, "all_to_all", None):
            if t.all_to_all != num_classes:
                raise ValueError(
                    f"The all-to-all trigger is for {t.all_to_all} classes, the data "
                    f"has {num_classes}; rebuild it with num_classes={num_classes}."
                )
            continue
        if not 0 <= t.target < num_classes:
            raise ValueError(
                f"Target label {t.target} is out of range: the data has labels "
                f"0..{num_classes - 1}."
            )
    history = inject_backdoor(
        model,
        x,
        y,
        triggers,
        ratio,
        epochs,
        batch_size,
        intensity,
        seed,
        validation_data=(x_test, y_test),
        verbose=verbose,
    )
    wall = time.time() - start
    result = evaluate_backdoor(model, x_test, y_test, triggers, intensity)
    data = PoisonedDataset(x[:1], y[:1], triggers, ratio)
    report = {
        "dataset": str(dataset),
        "arch": arch,
        "intensity": intensity,
        "image_shape": list(x.shape[1:]),
        "num_classes": num_classes,
        "attack": sorted({t.spec.get("attack", t.spec.get("kind")) for t in triggers}),
        "targets": sorted({t.target for t in triggers if not getattr(t, "all_to_all", None)}),
        "triggers": [t.spec for t in triggers],
        "clean_accuracy": result["accuracy"],
        "attack_success_rate": result["attack_success_rate"],
        "per_trigger": result["per_trigger"],
        "training": {
            "epochs": epochs,
            "batch_size": batch_size,
            "per_label_ratio": ratio,
            "inject_ratio": data.inject_ratio,
            "seed": seed,
            "n_train": int(len(x)),
            "pretrain_epochs": int(pretrain_epochs) if pre is not None else 0,
            "base_model": (
                str(base_model)
                if isinstance(base_model, (str, os.PathLike))
                else None
                if base_model is None
                else "in-memory model"
            ),
            "n_test": int(len(x_test)),
            "optimizer": "Adam(1e-3, decay 1e-4)",
            "wall_time_s": round(wall, 2),
        },
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    io.save_model(model, os.path.join(out, "model.keras"))
    io.write_json(os.path.join(out, "attack.json" if triggers else "train.json"), report)
    return report


def _copy_base(base_model, image_shape, num_classes):
    """A trainable copy of `base_model` (a model or a path), checked against the data."""
    import os

    from nc_tf import models

    loaded = isinstance(base_model, (str, os.PathLike))
    if loaded:
        base_model = models.load_model(str(base_model))
    shape = tuple(base_model.input_shape[1:])
    classes = int(base_model.output_shape[-1])
    if shape != tuple(image_shape) or classes != num_classes:
        raise ValueError(
            f"base_model takes {shape} images and has {classes} outputs; the data "
            f"has {tuple(image_shape)} images and {num_classes} classes. Pass a "
            "model trained on this data set."
        )
    # A model just loaded from a file is already independent of the file.
    return base_model if loaded else models.copy_model(base_model, caller="train_and_save")
