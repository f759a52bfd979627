"""The attack catalogue: specs re-apply exactly, and every variant implants a backdoor."""

import json

import numpy as np
import pytest

from injection import Trigger
from injection.attacks import ATTACKS, build_attack, default_ratio, needs_model
from injection.blend import blend_trigger, draw_logo, draw_watermark

SHAPE = (28, 28, 1)
# name -> (build_attack keywords, targets, train images, epochs, r)
# dynamic gets 8000 images: at 4000 its clean accuracy sat at the 0.9 bar
# (0.893 seen once). r is raised above the paper's 0.1 where a tiny 3-4 epoch model needs more
# poisoned samples per trigger: partial (only the sources' stamped samples
# carry the backdoor) and multi-trigger (9 triggers share the poisoned samples).
# badnets and partial are not trained again here: their triggers are exactly
# those of the session models `tiny_backdoored` (r 0.25, 4000 images, 3
# epochs) and `tiny_partial` (conftest.py), which the other tests train anyway.
SHARED = {"badnets": "tiny_backdoored", "partial": "tiny_partial"}
VARIANTS = {
    "badnets": ({}, [7], 4000, 3, 0.2),
    "noisy": ({}, [7], 4000, 3, 0.2),
    "shape": ({"shape": "triangle"}, [7], 4000, 3, 0.2),
    "all-to-all": ({"num_classes": 10}, None, 8000, 4, 0.2),
    "multi-trigger": ({}, [7], 8000, 4, 0.5),
    "multi-label": ({}, [7, 3, 5], 4000, 3, 0.2),
    "dynamic": ({}, [7], 8000, 4, 0.2),
    "partial": ({"sources": [3]}, [7], 8000, 4, 0.5),
    "blend": ({"image": "logo", "alpha": 0.3}, [7], 4000, 3, 0.2),
}


@pytest.fixture(scope="module")
def mnist_8k():
    from nc_tf.datasets import load_data

    x, y = load_data("mnist", "train", limit=8000)
    xt, yt = load_data("mnist", "test", limit=1000)
    return x, y, xt, yt


def test_catalogue_covers_the_issue():
    assert set(ATTACKS) == {
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
    }
    assert needs_model("trojan-square") and not needs_model("blend")
    assert abs(default_ratio("invisible-l2") / (1 + default_ratio("invisible-l2")) - 0.05) < 1e-9


@pytest.mark.parametrize("name", list(VARIANTS))
def test_specs_round_trip_bit_identically(name):
    kwargs, targets, *_ = VARIANTS[name]
    triggers = build_attack(name, SHAPE, targets, **kwargs)
    images = np.random.default_rng(0).integers(0, 256, (5,) + SHAPE).astype(np.uint8)
    for t in triggers:
        again = Trigger.from_spec(json.loads(json.dumps(t.spec)))
        assert again.spec["attack"] == name
        np.testing.assert_array_equal(again.apply(images), t.apply(images))
        np.testing.assert_array_equal(
            again.apply(images.astype(np.float32)), t.apply(images.astype(np.float32))
        )
        np.testing.assert_array_equal(
            again.poison_labels(np.arange(10)), t.poison_labels(np.arange(10))
        )


def test_variant_structure():
    multi = build_attack("multi-trigger", SHAPE, 7)
    corners = {tuple(np.argwhere(t.mask[..., 0] > 0).min(0)) for t in multi}
    assert len(corners) == 9, "nine distinct positions"
    dyn = build_attack("dynamic", SHAPE, 7)
    cols = sorted(int(np.argwhere(t.mask[..., 0] > 0)[:, 1].mean()) for t in dyn)
    assert cols[0] < 14 < cols[1], "one trigger on the left, one on the right"
    labels = build_attack("multi-label", SHAPE, [7, 3, 5])
    assert [t.target for t in labels] == [7, 3, 5]
    patterns = [t.pattern[t.mask[..., 0] > 0] for t in labels]
    assert not np.array_equal(patterns[0], patterns[1]), "each label its own colour pattern"
    a2a = build_attack("all-to-all", SHAPE, None, num_classes=10)[0]
    assert a2a.poison_labels([0, 8, 9]).tolist() == [1, 9, 0]
    assert a2a.attack_samples([0, 9]).all()
    part = build_attack("partial", SHAPE, 7, sources=[3])[0]
    assert part.poison_labels([3, 4, 7]).tolist() == [7, 4, 7]


def test_bad_attack_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown attack"):
        build_attack("badnet", SHAPE, 7)
    with pytest.raises(ValueError, match="num_classes"):
        build_attack("all-to-all", SHAPE, None)
    with pytest.raises(ValueError, match="source"):
        build_attack("partial", SHAPE, 7)
    with pytest.raises(ValueError, match="two or more"):
        build_attack("multi-label", SHAPE, 7)
    with pytest.raises(ValueError, match="model="):
        build_attack("trojan-square", SHAPE, 7)


def test_blend_images_and_transparency():
    logo, wm = draw_logo(32), draw_watermark(32)
    assert logo.shape == wm.shape == (32, 32, 4)
    assert logo[0, 0, 3] == 0 and logo[16, 16, 3] == 255
    assert 0.05 < (wm[..., 3] > 0).mean() < 0.6
    whole = blend_trigger((32, 32, 3), 10, "logo", alpha=0.2)
    assert whole.mask.max() == pytest.approx(0.2)
    assert (whole.mask > 0).mean() > 0.5, "a whole-image logo covers most of the image"
    x = np.full((1, 32, 32, 3), 100, np.uint8)
    changed = np.abs(whole.apply(x).astype(int) - 100).max()
    assert 0 < changed <= 0.2 * 255 + 1, "alpha bounds how far a pixel moves"
    small = blend_trigger((32, 32, 3), 37, "logo", size=8)
    assert (small.mask > 0).sum() <= 64 and small.mask[-2, -2, 0] > 0
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[:, :, 0] = 200
    own = blend_trigger((28, 28, 1), 1, rgb, size=6)
    again = Trigger.from_spec(json.loads(json.dumps(own.spec)))
    np.testing.assert_array_equal(again.mask, own.mask)


def test_additive_delta_is_clipped_and_serialised():
    delta = np.zeros(SHAPE, np.float32)
    delta[0, 0] = 10
    delta[0, 1] = -10
    t = Trigger(np.zeros(SHAPE[:2]), np.zeros(SHAPE), 7, delta=delta)
    x = np.full((2,) + SHAPE, 250, np.uint8)
    out = t.apply(x)
    assert out[0, 0, 0, 0] == 255 and out[0, 0, 1, 0] == 240 and out[0, 5, 5, 0] == 250
    again = Trigger.from_spec(json.loads(json.dumps(t.spec)))
    np.testing.assert_array_equal(again.apply(x), out)
    with pytest.raises(ValueError, match="delta"):
        Trigger(np.zeros(SHAPE[:2]), np.zeros(SHAPE), 7, delta=np.zeros((3, 3, 1)))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_implants_a_backdoor(name, mnist_8k, request):
    """ASR >= 0.9 per trigger with clean accuracy >= 0.9 on a tiny 3-4 epoch model.

    One documented ceiling: multi-trigger's centre square sits on the digit
    strokes; on images whose centre is already mostly white the stamp changes
    little, so its rate is required on the images it visibly changes (mean
    change of the square >= 64 grey levels), as bench/inject_table2.py does for
    GTSRB's white corners.
    """
    import keras

    from injection.inject import inject_backdoor
    from nc_tf.metrics import evaluate_backdoor, predict_labels
    from nc_tf.models import mnist_model

    kwargs, targets, n, epochs, ratio = VARIANTS[name]
    x, y, xt, yt = mnist_8k
    triggers = build_attack(name, SHAPE, targets, **kwargs)
    if name in SHARED:
        model, trained = request.getfixturevalue(SHARED[name])[:2]
        assert dict(trained.spec, attack=name) == triggers[0].spec, "same trigger as trained"
    else:
        keras.utils.set_random_seed(0)
        model = mnist_model()
        inject_backdoor(model, x[:n], y[:n], triggers, ratio=ratio, epochs=epochs, verbose=0)
    result = evaluate_backdoor(model, xt, yt, triggers)
    assert result["accuracy"] >= 0.9
    for t, row in zip(triggers, result["per_trigger"]):
        rate = row["attack_success_rate"]
        if name == "multi-trigger" and t.spec["position"] == "center":
            region = t.mask[..., 0] > 0
            change = np.abs(t.apply(xt).astype(int) - xt)[:, region].mean(axis=(1, 2))
            keep = (change >= 64) & t.attack_samples(yt)
            pred = predict_labels(model, t.apply(xt[keep]))
            rate = float(np.mean(pred == t.target))
        assert rate >= 0.9, f"{name} trigger {t.spec.get('position')}: ASR {rate:.3f}"
    if name == "partial":
        others = (yt != 3) & (yt != 7)
        kept = predict_labels(model, triggers[0].apply(xt[others]))
        assert np.mean(kept == yt[others]) >= 0.85, (
            "non-source labels keep their label when stamped"
        )
