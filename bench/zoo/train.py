"""Trains, measures and saves one zoo model from its recipe."""

import os
import time

import keras
import numpy as np

from .architectures import SPLITS, build_model
from .augment import augment
from .data import NUM_CLASSES
from .manifest import model_dir, model_path, write_json_atomic
from .scaling import SCALINGS, scale_input
from .triggers import make_trigger, poison, stamp

OPTIMIZERS = {
    "sgd": lambda schedule: keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
    "adam": lambda schedule: keras.optimizers.Adam(schedule),
}
ACCURACY_GATES = {"mnist": 0.97, "gtsrb": 0.90}
ASR_GATE = 0.90
RECIPE_KEYS = (
    "optimizer",
    "lr",
    "epochs",
    "batch_size",
    "augmentation",
    "label_smoothing",
    "poison_rate",
    "training",
    "finetuned_from",
    "train_subset",
    "seed",
)


def _subset(x, y, size, rng):
    """`size` random training images (all of them when `size` is None)."""
    if size is None or size >= len(y):
        return x, y
    index = rng.permutation(len(y))[:size]
    return x[index], y[index]


def _compile(model, recipe, steps):
    """Compiles with the recipe's optimizer, a cosine-decayed learning rate and its loss."""
    schedule = keras.optimizers.schedules.CosineDecay(recipe["lr"], steps, alpha=0.05)
    loss = keras.losses.CategoricalCrossentropy(
        from_logits=recipe["output"] == "logits", label_smoothing=recipe["label_smoothing"]
    )
    model.compile(optimizer=OPTIMIZERS[recipe["optimizer"]](schedule), loss=loss)


def _fit(model, x, y, recipe, rng):
    """Trains for the recipe's epochs, augmenting the raw images anew each epoch if asked."""
    num_classes = model.output_shape[-1]
    targets = keras.utils.to_categorical(y, num_classes)
    batch_size, epochs = recipe["batch_size"], recipe["epochs"]
    _compile(model, recipe, epochs * -(-len(y) // batch_size))
    scaling = recipe["scaling"]
    if not recipe["augmentation"]:
        model.fit(scale_input(x, scaling), targets, batch_size=batch_size, epochs=epochs, verbose=0)
        return
    for epoch in range(epochs):
        model.fit(
            scale_input(augment(x, rng), scaling),
            targets,
            batch_size=batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=0,
        )


def _predict(model, x, scaling):
    """Predicted labels of raw uint8 images."""
    return np.argmax(model.predict(scale_input(x, scaling), batch_size=512, verbose=0), axis=1)


def _measure(model, x_test, y_test, recipe, trigger):
    """Clean accuracy and, with a trigger, the attack success rate on the test set."""
    accuracy = float(np.mean(_predict(model, x_test, recipe["scaling"]) == y_test))
    if trigger is None:
        return accuracy, None
    target = recipe["target"]
    stamped = stamp(x_test[y_test != target], *trigger)
    return accuracy, float(np.mean(_predict(model, stamped, recipe["scaling"]) == target))


def _gate(dataset, accuracy, asr):
    """`"passed"` when the clean accuracy and, for a backdoor, its success rate reach the gates."""
    ok = accuracy >= ACCURACY_GATES[dataset] and (asr is None or asr >= ASR_GATE)
    return "passed" if ok else "failed"


def _initial_model(recipe, x, root):
    """The clean twin to fine-tune, or a freshly built model of the recipe's family."""
    if recipe["training"] == "finetuned":
        twin = {"dataset": recipe["dataset"], "name": recipe["finetuned_from"]}
        path = model_path({**twin, "format": recipe["format"]}, root)
        return keras.saving.load_model(path, compile=False)
    standardize = SCALINGS[recipe["scaling"]]["standardize"]
    return build_model(
        recipe["family"],
        x.shape[1:],
        NUM_CLASSES[recipe["dataset"]],
        logits=recipe["output"] == "logits",
        standardize_data=x.astype(np.float32) if standardize else None,
        **recipe["architecture"],
    )


def _save(model, recipe, trigger, folder):
    """Writes the model file, then the trigger, each through a temporary file and a rename."""
    ext = recipe["format"]
    tmp = os.path.join(folder, f".model.tmp.{ext}")
    model.save(tmp, include_optimizer=False)
    os.replace(tmp, os.path.join(folder, f"model.{ext}"))
    if trigger is not None:
        tmp = os.path.join(folder, ".trigger.tmp.npz")
        np.savez(tmp, mask=trigger[0], pattern=trigger[1])
        os.replace(tmp, os.path.join(folder, "trigger.npz"))


def _meta(recipe, accuracy, asr, seconds):
    """The JSON-able description of a built model."""
    backdoored = recipe["trigger"] is not None
    return {
        "name": recipe["name"],
        "dataset": recipe["dataset"],
        "family": recipe["family"],
        "split": SPLITS[recipe["family"]],
        "architecture": recipe["architecture"],
        "recipe": {key: recipe[key] for key in RECIPE_KEYS},
        "scaling": recipe["scaling"],
        "intensity": SCALINGS[recipe["scaling"]]["intensity"],
        "output": recipe["output"],
        "format": recipe["format"],
        "backdoored": backdoored,
        "target": recipe["target"] if backdoored else None,
        "trigger": recipe["trigger"],
        "clean_twin": recipe["clean_twin"],
        "clean_accuracy": round(accuracy, 4),
        "attack_success_rate": None if asr is None else round(asr, 4),
        "seconds": round(seconds, 1),
        "gate": _gate(recipe["dataset"], accuracy, asr),
    }


def build_zoo_model(recipe, data, root=None):
    """Trains one recipe's model, measures it on the test set and saves it with its meta.

    A backdoored recipe poisons `poison_rate` of its training images (drawn
    from the non-target classes) with its trigger and relabels them to its
    target; a `"finetuned"` one loads its clean twin and trains it on such a
    poisoned mix instead of starting from scratch.

    Args:
        recipe: one row of `recipes.RECIPES`.
        data: `(x_train, y_train, x_test, y_test)` of the recipe's dataset,
            raw uint8 images and int labels.
        root: the zoo root (see `manifest.zoo_root`). Defaults to `None`.

    Returns:
        the meta dict, also written to `<root>/<dataset>/<name>/meta.json`.
    """
    start = time.time()
    seed = recipe["seed"]
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x_train, y_train, x_test, y_test = data
    x, y = _subset(x_train, y_train, recipe["train_subset"], rng)
    trigger = None
    if recipe["trigger"] is not None:
        trigger = make_trigger(recipe["trigger"], x.shape[1:])
        x, y, _ = poison(x, y, *trigger, recipe["target"], recipe["poison_rate"], rng)
    model = _initial_model(recipe, x, root)
    _fit(model, x, y, recipe, rng)
    accuracy, asr = _measure(model, x_test, y_test, recipe, trigger)
    folder = model_dir(recipe["dataset"], recipe["name"], root)
    os.makedirs(folder, exist_ok=True)
    _save(model, recipe, trigger, folder)
    meta = _meta(recipe, accuracy, asr, time.time() - start)
    write_json_atomic(os.path.join(folder, "meta.json"), meta)
    keras.backend.clear_session()
    return meta
