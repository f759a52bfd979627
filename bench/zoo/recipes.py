"""The zoo's table of recipes: clean base models and the backdoors trained from them.

Every row of `BASES` is a training recipe; it yields a clean model named
`<base>-clean` and, for each row of `BACKDOORS` naming it, a backdoored twin
`<base>-<tag>` trained the same way on a poisoned training set, or (with a
`finetune` dict, whose `epochs`, `lr`, `train_subset` and `augmentation`
replace the base's) fine-tuned from the clean model on a poisoned mix.
`RECIPES` is the expanded list, every clean model before the backdoors of
its base.
"""

from .triggers import blend_spec, random_patch_spec, square_spec

YELLOW, RED, CYAN = (255, 255, 0), (255, 0, 0), (0, 255, 255)

BASE_COLUMNS = (
    "name",
    "dataset",
    "family",
    "architecture",
    "scaling",
    "output",
    "format",
    "optimizer",
    "lr",
    "epochs",
    "batch_size",
    "augmentation",
    "label_smoothing",
    "train_subset",
    "seed",
)
# fmt: off
BASES = (
    ("mnist-nc-a", "mnist", "nc", {"width": 8}, "unit", "softmax", "h5", "sgd", 0.02, 5, 128, False, 0.0, 12000, 101),
    ("mnist-nc-b", "mnist", "nc", {"width": 8, "dense": 64}, "standardize", "logits", "keras", "adam", 2e-3, 5, 128, True, 0.1, 12000, 102),
    ("mnist-vgg-a", "mnist", "vgg", {"width": 8}, "raw", "softmax", "keras", "adam", 2e-3, 3, 128, False, 0.0, 20000, 103),
    ("mnist-vgg-b", "mnist", "vgg", {"width": 8, "dropout": 0.2}, "signed", "logits", "h5", "sgd", 0.05, 5, 128, True, 0.05, 12000, 104),
    ("mnist-mlp-a", "mnist", "mlp", {"units": (256, 128)}, "unit", "softmax", "keras", "sgd", 0.1, 10, 128, False, 0.0, 20000, 105),
    ("mnist-mlp-b", "mnist", "mlp", {"units": (512,), "dropout": 0.2}, "signed", "logits", "h5", "adam", 1e-3, 10, 128, False, 0.1, 30000, 106),
    ("mnist-resnet-a", "mnist", "resnet", {"width": 8, "stem_stride": 2}, "unit", "logits", "keras", "sgd", 0.05, 5, 128, True, 0.0, 12000, 107),
    ("mnist-resnet-b", "mnist", "resnet", {"width": 8, "stem_stride": 2}, "raw", "softmax", "h5", "adam", 2e-3, 5, 128, False, 0.1, 15000, 108),
    ("mnist-mobilenet-a", "mnist", "mobilenet", {"width": 16, "bn_momentum": 0.9}, "standardize", "softmax", "keras", "sgd", 0.05, 6, 128, False, 0.0, 12000, 109),
    ("mnist-mobilenet-b", "mnist", "mobilenet", {"width": 16, "bn_momentum": 0.9}, "signed", "logits", "h5", "adam", 2e-3, 8, 128, True, 0.05, 12000, 110),
    ("mnist-gap-a", "mnist", "gap", {"width": 16, "blocks": 3, "bn_momentum": 0.9}, "unit", "softmax", "h5", "sgd", 0.05, 5, 128, True, 0.0, 12000, 111),
    ("mnist-gap-b", "mnist", "gap", {"width": 16, "blocks": 3, "bn_momentum": 0.9}, "raw", "logits", "keras", "adam", 2e-3, 5, 128, False, 0.1, 12000, 112),
    ("gtsrb-nc-a", "gtsrb", "nc", {"width": 8, "dense": 256}, "standardize", "logits", "keras", "sgd", 0.02, 3, 128, False, 0.0, None, 201),
    ("gtsrb-nc-b", "gtsrb", "nc", {"width": 8, "dense": 256}, "signed", "softmax", "h5", "sgd", 0.03, 3, 128, False, 0.1, None, 202),
    ("gtsrb-vgg-a", "gtsrb", "vgg", {"width": 8, "dropout": 0.1}, "raw", "softmax", "keras", "adam", 2e-3, 4, 128, True, 0.1, None, 203),
    ("gtsrb-vgg-b", "gtsrb", "vgg", {"width": 8, "dropout": 0.1}, "unit", "logits", "h5", "sgd", 0.05, 2, 128, False, 0.0, None, 204),
    ("gtsrb-resnet-a", "gtsrb", "resnet", {"width": 16, "stem_stride": 2}, "unit", "logits", "keras", "sgd", 0.05, 4, 128, True, 0.0, None, 205),
    ("gtsrb-resnet-b", "gtsrb", "resnet", {"width": 16, "stem_stride": 2}, "raw", "softmax", "h5", "adam", 2e-3, 3, 128, False, 0.05, None, 206),
    ("gtsrb-mobilenet-a", "gtsrb", "mobilenet", {"width": 24, "dropout": 0.1, "bn_momentum": 0.9}, "standardize", "softmax", "keras", "sgd", 0.05, 5, 128, False, 0.0, None, 207),
    ("gtsrb-gap-a", "gtsrb", "gap", {"width": 16, "blocks": 3, "bn_momentum": 0.9}, "signed", "logits", "h5", "sgd", 0.05, 4, 128, False, 0.0, None, 208),
)

BACKDOOR_COLUMNS = ("base", "tag", "trigger", "target", "poison_rate", "finetune")
BACKDOORS = (
    ("mnist-nc-a", "sq4br-t3", square_spec(4, "bottom-right"), 3, 0.05, None),
    ("mnist-nc-a", "ft-pat5tl-t8", random_patch_spec(5, "top-left", seed=11), 8, 0.1, {"epochs": 2, "lr": 0.01, "train_subset": 6000}),
    ("mnist-nc-b", "pat4c-t1", random_patch_spec(4, "center", seed=18), 1, 0.1, None),
    ("mnist-nc-b", "blend20-t6", blend_spec(0.2, seed=12), 6, 0.1, None),
    ("mnist-vgg-a", "sq5tr-t2", square_spec(5, "top-right"), 2, 0.01, None),
    ("mnist-vgg-b", "sq6bl-t9", square_spec(6, "bottom-left"), 9, 0.15, None),
    ("mnist-vgg-b", "ft-pat4br-t4", random_patch_spec(4, "bottom-right", seed=13), 4, 0.15, {"epochs": 3, "lr": 0.02, "train_subset": 8000}),
    ("mnist-mlp-a", "sq4tl-t0", square_spec(4, "top-left"), 0, 0.05, None),
    ("mnist-mlp-a", "pat6br-t7", random_patch_spec(6, "bottom-right", seed=14), 7, 0.2, None),
    ("mnist-mlp-b", "sq8tr-t5", square_spec(8, "top-right"), 5, 0.1, None),
    ("mnist-resnet-a", "sq4br-t6", square_spec(4, "bottom-right"), 6, 0.05, None),
    ("mnist-resnet-a", "ft-sq3tl-t1", square_spec(3, "top-left"), 1, 0.15, {"epochs": 3, "lr": 0.02, "train_subset": 8000}),
    ("mnist-resnet-b", "pat5c-t2", random_patch_spec(5, "center", seed=15), 2, 0.1, None),
    ("mnist-mobilenet-a", "sq5bl-t7", square_spec(5, "bottom-left"), 7, 0.03, None),
    ("mnist-mobilenet-a", "blend15-t4", blend_spec(0.15, seed=16), 4, 0.1, None),
    ("mnist-mobilenet-b", "sq6c-t8", square_spec(6, "center"), 8, 0.15, None),
    ("mnist-gap-a", "pat4tr-t9", random_patch_spec(4, "top-right", seed=17), 9, 0.2, None),
    ("mnist-gap-a", "ft-sq4br-t0", square_spec(4, "bottom-right"), 0, 0.15, {"epochs": 3, "lr": 0.02, "train_subset": 8000}),
    ("mnist-gap-b", "sq7tl-t3", square_spec(7, "top-left"), 3, 0.01, None),
    ("gtsrb-nc-a", "ysq4br-t12", square_spec(4, "bottom-right", YELLOW), 12, 0.05, None),
    ("gtsrb-nc-a", "ft-cpat5tl-t25", random_patch_spec(5, "top-left", seed=21, colour="colour"), 25, 0.15, {"epochs": 2, "lr": 0.01, "train_subset": 10000}),
    ("gtsrb-nc-b", "rsq5c-t33", square_spec(5, "center", RED), 33, 0.1, None),
    ("gtsrb-vgg-a", "blend20-t8", blend_spec(0.2, seed=22), 8, 0.1, None),
    ("gtsrb-vgg-a", "ft-csq3bl-t38", square_spec(3, "bottom-left", CYAN), 38, 0.15, {"epochs": 2, "lr": 5e-4, "train_subset": 10000, "augmentation": False}),
    ("gtsrb-vgg-b", "wsq3bl-t40", square_spec(3, "bottom-left"), 40, 0.05, None),
    ("gtsrb-vgg-b", "ft-csq6tr-t1", square_spec(6, "top-right", CYAN), 1, 0.15, {"epochs": 2, "lr": 0.01, "train_subset": 10000}),
    ("gtsrb-resnet-a", "rsq4tl-t3", square_spec(4, "top-left", RED), 3, 0.1, None),
    ("gtsrb-resnet-a", "ft-wpat5br-t14", random_patch_spec(5, "bottom-right", seed=23), 14, 0.15, {"epochs": 2, "lr": 0.005, "train_subset": 10000, "augmentation": False}),
    ("gtsrb-resnet-b", "wsq5tr-t9", square_spec(5, "top-right"), 9, 0.04, None),
    ("gtsrb-resnet-b", "ft-cpat6br-t17", random_patch_spec(6, "bottom-right", seed=24, colour="colour"), 17, 0.15, {"epochs": 2, "lr": 1e-3, "train_subset": 10000}),
    ("gtsrb-mobilenet-a", "blend30-t30", blend_spec(0.3, seed=25), 30, 0.08, None),
    ("gtsrb-gap-a", "ysq8c-t21", square_spec(8, "center", YELLOW), 21, 0.2, None),
    ("gtsrb-gap-a", "ft-rsq4tr-t2", square_spec(4, "top-right", RED), 2, 0.2, {"epochs": 3, "lr": 0.003, "train_subset": 10000}),
)
# fmt: on


def _clean(base):
    """The clean twin's recipe of a base row."""
    return {
        **base,
        "name": f"{base['name']}-clean",
        "architecture": dict(base["architecture"]),
        "trigger": None,
        "target": None,
        "poison_rate": 0.0,
        "training": "from_scratch",
        "finetuned_from": None,
        "clean_twin": None,
    }


def _backdoor(base, row):
    """The recipe of one backdoor row, from scratch or fine-tuned from the clean twin."""
    twin = f"{base['name']}-clean"
    recipe = {
        **_clean(base),
        "name": f"{base['name']}-{row['tag']}",
        "trigger": row["trigger"],
        "target": row["target"],
        "poison_rate": row["poison_rate"],
        "clean_twin": twin,
    }
    if row["finetune"] is not None:
        recipe.update(row["finetune"], training="finetuned", finetuned_from=twin)
    return recipe


def expand(bases=BASES, backdoors=BACKDOORS):
    """Expands the base and backdoor tables into one recipe dict per model.

    Args:
        bases: rows of `BASE_COLUMNS`. Defaults to `BASES`.
        backdoors: rows of `BACKDOOR_COLUMNS`. Defaults to `BACKDOORS`.

    Returns:
        a list of recipe dicts: each base's clean model, then its backdoors.
    """
    recipes = []
    for base_row in bases:
        base = dict(zip(BASE_COLUMNS, base_row))
        recipes.append(_clean(base))
        for row in backdoors:
            row = dict(zip(BACKDOOR_COLUMNS, row))
            if row["base"] == base["name"]:
                recipes.append(_backdoor(base, row))
    return recipes


RECIPES = expand()
