"""The attack catalogue: every backdoor variant the four papers evaluate, by name.

`build_attack(name, image_shape, targets, ...)` returns the list of
`Trigger`s an attack poisons with; `nc-tf inject --attack NAME` calls it, the
poisoning `PyDataset` stamps them, and `attack.json` keeps their specs so any
later command re-applies them exactly.

| name | what is stamped | label of a stamped input |
| --- | --- | --- |
| `badnets` | a solid square (size, margin, position, colour) | the target |
| `noisy` | a square of random colours (NC robustness) | the target |
| `shape` | a triangle or checkerboard (`shape=`) | the target |
| `all-to-all` | a square | label i -> (i + 1) mod K |
| `multi-trigger` | one of 9 squares (corners, edges, centre) | the target |
| `multi-label` | each target its own random-colour square | that target |
| `dynamic` | the left or the right square, at random | the target |
| `partial` | a square on every label | the target for `sources`, else unchanged |
| `blend` | a logo/watermark, whole image or a square, transparency `alpha` | the target |
| `trojan-square`, `trojan-watermark` | a pattern optimised on the model inside a square / watermark mask (Liu et al.) | the target |
| `invisible-l2`, `invisible-l0` | a small additive full-image perturbation (Li et al.) | the target |

The last four need the (clean-trained) model: `needs_model(name)`.
"""

from injection.blend import blend_trigger
from injection.triggers import POSITIONS, shape_trigger, square_trigger

ATTACKS = (
    "badnets",
    "noisy",
    "shape",
    "all-to-all",
    "multi-trigger",
    "multi-label",
    "dynamic",
    "partial",
    "blend",
    "trojan-square",
    "trojan-watermark",
    "invisible-l2",
    "invisible-l0",
)
MODEL_ATTACKS = ("trojan-square", "trojan-watermark", "invisible-l2", "invisible-l0")
# Poisoned fraction per target label, r (inject ratio r / (r + 1)). BadNets
# in Neural Cleanse: 10%; invisible backdoors in GYM's setup: 5% of the data.
DEFAULT_RATIO = {"invisible-l2": 0.05 / 0.95, "invisible-l0": 0.05 / 0.95}


def needs_model(name):
    """Whether the attack optimises its trigger on a trained model (Trojan, invisible)."""
    _check_name(name)
    return name in MODEL_ATTACKS


def default_ratio(name):
    """r of `PoisonedDataset` for the attack: 0.1, or 0.05/0.95 (5% poisoned) for invisible."""
    _check_name(name)
    return DEFAULT_RATIO.get(name, 0.1)


def build_attack(
    name,
    image_shape,
    targets,
    num_classes=None,
    size=None,
    margin=1,
    position="bottom-right",
    color=255,
    shape="square",
    sources=None,
    image="logo",
    alpha=1.0,
    seed=0,
    model=None,
    intensity="raw",
    **options,
):
    """The triggers of a named attack, each spec tagged with `"attack": name`.

    Args:
        name: one of `ATTACKS`.
        image_shape: `(H, W, C)` of the images.
        targets: target label(s); `multi-label` needs two or more; ignored
            by `all-to-all`.
        num_classes: number of classes; required by `all-to-all`.
            Defaults to `None`.
        size: trigger side in pixels. Defaults to `None`: 4 for the squares,
            the whole image for `blend`, the attack's own default for
            Trojan/invisible.
        margin: gap to the borders. Defaults to `1`.
        position: as in `square_trigger` (not used by `multi-trigger` or
            `dynamic`, which place their own). Defaults to `"bottom-right"`.
        color: square colour (raw values), or `"noisy"`. Defaults to `255`.
        shape: for `shape`: `"triangle"`, `"checkerboard"` or `"square"`.
            Defaults to `"square"`.
        sources: source labels, required by `partial`. Defaults to `None`.
        image: for `blend`: `"logo"`, `"watermark"` or an array. Defaults
            to `"logo"`.
        alpha: for `blend`: transparency in (0, 1]. Defaults to `1.0`.
        seed: seed of random colours and optimisations. Defaults to `0`.
        model: the trained model Trojan and invisible attacks optimise on.
            Defaults to `None`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        **options: passed to `trojan_trigger` / `invisible_trigger`.

    Returns:
        list of `Trigger`.

    Example:

    >>> ts = build_attack("multi-trigger", (28, 28, 1), 7)
    >>> len(ts), {t.target for t in ts}
    (9, {7})
    >>> build_attack("all-to-all", (28, 28, 1), None, num_classes=10)[0].poison_labels([9]).tolist()
    [0]
    """
    _check_name(name)
    targets = (
        []
        if targets is None
        else [int(t) for t in ([targets] if isinstance(targets, int) else targets)]
    )
    if name != "all-to-all" and not targets:
        raise ValueError(f"Attack {name!r} needs a target label (--target).")
    if name == "partial" and not sources:
        raise ValueError("Attack 'partial' needs source labels (--source S, repeatable).")
    if name != "partial" and sources and name not in ("badnets", "noisy", "shape", "blend"):
        raise ValueError(f"Attack {name!r} does not take source labels; use --attack partial.")
    if name == "multi-label" and len(targets) < 2:
        raise ValueError("Attack 'multi-label' needs two or more targets (--target repeated).")
    if needs_model(name) and model is None:
        raise ValueError(f"Attack {name!r} optimises its trigger on a trained model; pass model=.")
    sq = 4 if size is None else int(size)

    def square(target, pos=position, col=color, k=0, src=sources):
        if isinstance(col, str) or shape != "square":
            return shape_trigger(image_shape, target, shape, sq, margin, pos, col, seed + k, src)
        return square_trigger(image_shape, target, sq, margin, pos, col, src)

    if name in ("badnets", "shape", "partial"):
        out = [square(t, k=i) for i, t in enumerate(targets)]
    elif name == "noisy":
        out = [square(t, col="noisy", k=i) for i, t in enumerate(targets)]
    elif name == "all-to-all":
        if not num_classes:
            raise ValueError("Attack 'all-to-all' needs num_classes (label i goes to i + 1 mod K).")
        out = [square(0).to_all_to_all(int(num_classes))]
    elif name == "multi-trigger":
        out = [square(t, pos, k=j) for t in targets for j, pos in enumerate(POSITIONS)]
    elif name == "multi-label":
        # mutually exclusive patterns: every target a different random colour pattern
        out = [square(t, col="noisy", k=i) for i, t in enumerate(targets)]
    elif name == "dynamic":
        out = [
            square(t, pos, k=j)
            for t in targets
            for j, pos in enumerate(("bottom-left", "bottom-right"))
        ]
    elif name == "blend":
        out = [
            blend_trigger(image_shape, t, image, alpha, size, margin, position, sources)
            for t in targets
        ]
    elif name.startswith("trojan"):
        from injection.trojan import trojan_trigger

        extra = {} if size is None else {"size": int(size)}
        out = [
            trojan_trigger(
                model,
                t,
                image_shape,
                mask=name.split("-")[1],
                margin=margin,
                position=position,
                intensity=intensity,
                seed=seed + i,
                **extra,
                **options,
            )
            for i, t in enumerate(targets)
        ]
    else:
        from injection.invisible import invisible_trigger

        out = [
            invisible_trigger(
                model,
                t,
                image_shape,
                norm=name.split("-")[1],
                intensity=intensity,
                seed=seed + i,
                **options,
            )
            for i, t in enumerate(targets)
        ]
    for t in out:
        t.spec["attack"] = name
    return out


def _check_name(name):
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; use one of: {', '.join(ATTACKS)}.")
