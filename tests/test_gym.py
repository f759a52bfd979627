"""Tests for mitigation.gym (GYM / DeepSweep) and mitigation.defended_inference."""

import albumentations as A
import keras
import numpy as np
import pytest

from mitigation import defended_inference, gym
from nc_tf.models import outputs_probabilities

SMALL_SHAPES = [(28, 28, 1), (32, 32, 3)]
ALL_SHAPES = SMALL_SHAPES + [(224, 224, 3)]
DTYPES = [np.uint8, np.float32]


def _images(shape, dtype, count=4, seed=0):
    """Random raw images in [0, 255] of the given dtype."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count,) + shape)
    return images.astype(dtype)


def _stamped(shape, count=8, seed=0):
    """Mid-grey noisy images with a 4x4 white square in the bottom right."""
    rng = np.random.default_rng(seed)
    images = rng.integers(60, 180, size=(count,) + shape).astype(np.uint8)
    images[:, -4:, -4:, :] = 255
    return images


def _tiny_model(shape=(28, 28, 1), classes=10, activation="softmax"):
    return keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Conv2D(2, 3, strides=2),
            keras.layers.Flatten(),
            keras.layers.Dense(classes, activation=activation),
        ]
    )


# -- custom transforms ------------------------------------------------------

TRANSFORMS = {
    # A ratio range so that the seed matters for this otherwise fixed step.
    "resize_median_resize": lambda: gym.ResizeMedianResize(ratio=(0.5, 0.9)),
    "random_shrink": lambda: gym.RandomShrink(ratio_range=(0.6, 0.95)),
    "shift_scale_rotate": lambda: gym.LegacyShiftScaleRotate(),
}


def _run(make_transform, image, seed, calls=3):
    pipeline = A.Compose([make_transform()], seed=seed)
    return [pipeline(image=image)["image"] for _ in range(calls)]


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_transform_keeps_shape_dtype_and_is_seeded(name, shape, dtype):
    image = _images(shape, dtype, count=1)[0]
    if dtype == np.float32:
        image = image / np.float32(255.0)  # albumentations' float range
    first = _run(TRANSFORMS[name], image, seed=1)
    again = _run(TRANSFORMS[name], image, seed=1)
    other = _run(TRANSFORMS[name], image, seed=2)
    for out in first:
        assert out.shape == shape
        assert out.dtype == dtype
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_resize_median_resize_fixed_ratio_is_deterministic():
    image = _images((28, 28, 1), np.uint8, count=1)[0]
    step = gym.ResizeMedianResize(ratio=0.8)  # 28 -> 22 -> 28
    a = A.Compose([step], seed=1)(image=image)["image"]
    b = A.Compose([step], seed=2)(image=image)["image"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, image)


def test_random_shrink_pastes_on_a_black_canvas():
    white = np.full((32, 32, 3), 255, np.uint8)
    pipeline = A.Compose([gym.RandomShrink(ratio_range=(0.5, 0.5))], seed=0)
    out = pipeline(image=white)["image"]
    lit = np.argwhere(out[..., 0] == 255)
    assert len(lit) == 16 * 16
    (top, left), (bottom, right) = lit.min(axis=0), lit.max(axis=0)
    assert (bottom - top, right - left) == (15, 15)
    assert out.sum() == 255 * 16 * 16 * 3  # everything else is zero


def test_sat_shifts_like_albumentations_04():
    # 0.4's ShiftScaleRotate: M = getRotationMatrix2D((w/2, h/2), a, s) plus
    # (dx * w, dy * h), sub-pixel; black border.
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:16, 8:16] = 255
    shift = A.Compose(
        [gym.LegacyShiftScaleRotate((0.25, 0.25), (0.0, 0.0), (0, 0))],
        seed=0,
    )
    out = shift(image=image)["image"]
    expected = np.zeros_like(image)
    expected[16:24, 16:24] = 255  # 0.25 * 32 = 8 pixels right and down
    np.testing.assert_array_equal(out, expected)
    # A shift of 0.32 pixels is kept (2.x's Affine truncates it to 0).
    tiny = A.Compose(
        [gym.LegacyShiftScaleRotate((0.01, 0.01), (0.0, 0.0), (0, 0))],
        seed=0,
    )
    assert not np.array_equal(tiny(image=image)["image"], image)
    grey = tiny(image=image[..., :1])["image"]
    assert grey.shape == (32, 32, 1)


def test_pipelines_follow_the_published_parameters():
    sat = gym.sat_transform()
    assert isinstance(sat, gym.LegacyShiftScaleRotate)
    assert sat.shift_limit == (-0.16, 0.16)
    assert sat.scale_limit == (-0.16, 0.16)
    assert sat.rotate_limit == (-4.0, 4.0)
    for make in (gym.intensive_pipeline, gym.lightweight_pipeline):
        steps = make(seed=0).transforms
        assert all(step.p == 1.0 for step in steps)  # p=1 in the notebook
        (resize,) = [s for s in steps if isinstance(s, gym.ResizeMedianResize)]
        assert resize.ratio == (180 / 224, 180 / 224)  # 224 -> 180 -> 224


def test_the_paper_variant_has_the_papers_sizes():
    def sizes(steps):
        (down,) = [s for s in steps if isinstance(s, A.Downscale)]
        (resize,) = [s for s in steps if isinstance(s, gym.ResizeMedianResize)]
        (shrink,) = [s for s in steps if isinstance(s, gym.RandomShrink)]
        return tuple(down.scale_range), tuple(resize.ratio), tuple(shrink.ratio_range)

    assert sizes(gym.intensive_pipeline(seed=0).transforms) == (
        (0.25, 0.25),
        (180 / 224, 180 / 224),
        (0.91, 1.0),
    )
    assert sizes(gym.intensive_pipeline(seed=0, variant="paper").transforms) == (
        (0.75, 0.75),
        (0.8, 0.8),
        (0.8, 1.0),
    )
    # the same steps in the same order otherwise
    notebook = [type(s) for s in gym.intensive_pipeline(seed=0).transforms]
    assert [type(s) for s in gym.intensive_pipeline(seed=0, variant="paper").transforms] == notebook
    with pytest.raises(ValueError, match="variant must be one of"):
        gym.intensive_pipeline(variant="blog")
    images = np.full((2, 32, 32, 3), 200, np.uint8)
    out = defended_inference.intensive(images, seed=0, variant="paper")
    assert out.shape == images.shape and not np.array_equal(
        out, defended_inference.intensive(images, seed=0)
    )


@pytest.mark.parametrize(
    "bad",
    [
        lambda: gym.ResizeMedianResize(ratio=0),
        lambda: gym.ResizeMedianResize(ksize=4),
        lambda: gym.RandomShrink(ratio_range=(0.9, 1.2)),
        lambda: gym.RandomShrink(ratio_range=0.9),
        lambda: gym.LegacyShiftScaleRotate(shift_limit=1.5),
        lambda: gym.LegacyShiftScaleRotate(scale_limit=(-1.0, 0.1)),
        lambda: gym.LegacyShiftScaleRotate(rotate_limit=(5, -5)),
    ],
)
def test_transform_arguments_are_validated(bad):
    with pytest.raises(ValueError):
        bad()


# -- pipelines and augment --------------------------------------------------

PIPELINES = {
    "intensive": gym.intensive_pipeline,
    "lightweight": gym.lightweight_pipeline,
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_pipelines_run_on_all_sizes(name, shape):
    for dtype in DTYPES:
        images = _images(shape, dtype, count=2)
        untouched = images.copy()
        out = gym.augment(images, PIPELINES[name](seed=0))
        np.testing.assert_array_equal(images, untouched)
        assert out.shape == images.shape
        assert out.dtype == images.dtype
        assert out.min() >= 0 and out.max() <= 255
        assert not np.array_equal(out, images)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_augment_is_reproducible_under_a_seed(name):
    images = _images((32, 32, 3), np.uint8)
    a = gym.augment(images, PIPELINES[name](), seed=3)
    b = gym.augment(images, PIPELINES[name](), seed=3)
    c = gym.augment(images, PIPELINES[name](), seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Images within one batch get different draws.
    same = np.repeat(images[:1], 4, axis=0)
    out = gym.augment(same, PIPELINES[name](seed=0))
    assert not np.array_equal(out[0], out[1])


def test_seed_pipeline_gives_transforms_distinct_draws():
    # albumentations' Compose(seed=...) alone would give both transforms the
    # same draw; one shared stream does not.
    pipeline = A.Compose(
        [gym.RandomShrink((0.5, 1.0)), gym.RandomShrink((0.5, 1.0))],
        save_applied_params=True,
    )
    gym.seed_pipeline(pipeline, 0)
    params = pipeline(image=np.zeros((32, 32, 3), np.uint8))
    first, second = (p for _, p in params["applied_transforms"])
    assert first["size"] != second["size"] or first["offset"] != second["offset"]


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize(
    "defence",
    [
        lambda x: gym.augment(x, gym.intensive_pipeline(seed=0)),
        lambda x: gym.augment(x, gym.lightweight_pipeline(seed=0)),
        lambda x: defended_inference.lightweight(x, seed=0),
        lambda x: defended_inference.shrink_pad(x, seed=0),
    ],
    ids=["intensive", "lightweight", "lightweight_fn", "shrink_pad"],
)
def test_defences_disturb_a_corner_trigger(shape, defence):
    images = _stamped(shape)
    out = defence(images)
    patch = np.abs(out[:, -4:, -4:, :].astype(np.float64) - 255.0)
    assert (patch.reshape(len(images), -1).max(axis=1) > 0).all()
    assert patch.mean() > 20


def test_augment_validates_its_input():
    pipeline = gym.lightweight_pipeline(seed=0)
    with pytest.raises(ValueError, match="channel axis"):
        gym.augment(np.zeros((2, 28, 28), np.uint8), pipeline)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        gym.augment(np.full((1, 8, 8, 1), -1.0, np.float32), pipeline)
    with pytest.raises(ValueError, match="uint8 or float"):
        gym.augment(np.zeros((1, 8, 8, 1), np.int64), pipeline)


# -- fine-tuning ------------------------------------------------------------


def test_finetune_dataset_batches_and_epochs():
    x = _images((28, 28, 1), np.uint8, count=25)
    y = np.arange(25) % 10
    data = gym.GymFineTuneDataset(x, y, batch_size=10, intensity="mnist")
    twin = gym.GymFineTuneDataset(x, y, batch_size=10, intensity="mnist")
    assert len(data) == 3
    xb, yb = data[2]
    assert xb.shape == (5, 28, 28, 1) and xb.dtype == np.float32
    assert 0.0 <= xb.min() and xb.max() <= 1.0  # mnist intensity
    assert yb.shape == (5,)
    np.testing.assert_array_equal(data[0][0], twin[0][0])
    before = data[0]
    data.on_epoch_end()
    after = data[0]
    assert not np.array_equal(before[0], after[0])
    with pytest.raises(IndexError):
        data[3]


def test_gym_finetune_tunes_a_copy():
    x = _images((28, 28, 1), np.uint8, count=20)
    y = np.arange(20) % 10
    model = _tiny_model()
    original = [w.copy() for w in model.get_weights()]
    tuned = gym.gym_finetune(model, x, y, epochs=1, batch_size=10, intensity="mnist", verbose=0)
    assert tuned is not model
    for before, now in zip(original, model.get_weights()):
        np.testing.assert_array_equal(before, now)
    assert any(not np.array_equal(a, b) for a, b in zip(original, tuned.get_weights()))
    assert isinstance(tuned.optimizer, keras.optimizers.Adadelta)
    # The notebook compiles with Adadelta(lr = 0.03) before fine-tuning.
    assert float(tuned.optimizer.learning_rate) == pytest.approx(0.03)
    assert tuned.loss.from_logits is False  # softmax output


def test_gym_finetune_uses_logits_loss_for_logit_models():
    x = _images((28, 28, 1), np.uint8, count=10)
    tuned = gym.gym_finetune(
        _tiny_model(activation=None),
        x,
        np.arange(10),
        epochs=1,
        batch_size=10,
        intensity="mnist",
        verbose=0,
    )
    assert tuned.loss.from_logits is True


def test_output_kind_detection():
    assert outputs_probabilities(_tiny_model())
    assert not outputs_probabilities(_tiny_model(activation=None))
    softmax_layer = keras.Sequential([_tiny_model(activation=None), keras.layers.Softmax()])
    assert outputs_probabilities(softmax_layer)


def test_gym_finetune_validates_labels():
    x = _images((28, 28, 1), np.uint8, count=4)
    with pytest.raises(ValueError, match="one label per image"):
        gym.gym_finetune(_tiny_model(), x, [0, 1], verbose=0)
    with pytest.raises(ValueError, match="outputs"):
        gym.gym_finetune(_tiny_model(classes=2), x, [0, 1, 2, 3], verbose=0)


# -- inference-time preprocessing -------------------------------------------


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_shrink_pad_shrinks_and_pads(shape, dtype):
    white = np.full((6,) + shape, 255, dtype)
    out = defended_inference.shrink_pad(white, pad=4, seed=0)
    assert out.shape == white.shape and out.dtype == white.dtype
    height, width = shape[:2]
    offsets = set()
    for image in out:
        lit = np.argwhere(image[..., 0] == 255)
        assert len(lit) == (height - 4) * (width - 4)
        top, left = lit.min(axis=0)
        assert 0 <= top <= 4 and 0 <= left <= 4
        assert image.sum() == 255 * (height - 4) * (width - 4) * shape[2]
        offsets.add((top, left))
    assert len(offsets) > 1  # random offsets
    np.testing.assert_array_equal(out, defended_inference.shrink_pad(white, pad=4, seed=0))
    with pytest.raises(ValueError, match="pad"):
        defended_inference.shrink_pad(white, pad=height)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_flip_mirrors_left_right(shape, dtype):
    images = _images(shape, dtype)
    out = defended_inference.flip(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(out, images[:, :, ::-1, :])
    np.testing.assert_array_equal(defended_inference.flip(out), images)


@pytest.mark.parametrize("method", ["lightweight", "shrinkpad", "flip"])
def test_defended_model_predicts(method):
    model = _tiny_model(shape=(32, 32, 3), classes=7)
    x = _images((32, 32, 3), np.uint8, count=9)
    guarded = defended_inference.defended(
        model, method, intensity="inception", batch_size=4, workers=2
    )
    out = guarded.predict(x)
    assert out.shape == (9, 7)
    # Seeded per batch, so the number of threads does not matter.
    serial = defended_inference.defended(
        model, method, intensity="inception", batch_size=4, workers=1
    )
    np.testing.assert_allclose(out, serial.predict(x), rtol=1e-5, atol=1e-6)
    accuracy = guarded.evaluate(x, out.argmax(axis=1))
    assert accuracy == pytest.approx(1.0)


def test_defended_model_applies_preprocessor_then_intensity():
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten()])
    x = np.arange(32, dtype=np.float32).reshape(2, 4, 4, 1)
    guarded = defended_inference.DefendedModel(model, defended_inference.flip, "mnist")
    expected = (x[:, :, ::-1, :] / 255.0).reshape(2, -1)
    np.testing.assert_allclose(guarded.predict(x), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown defence"):
        defended_inference.defended(model, "jpeg")


def test_scaled_pixel_sizes_match_the_published_ones_at_224_and_shrink_below():
    import numpy as np

    from mitigation.gym import augment, intensive_pipeline, lightweight_pipeline, scaled_sizes

    assert scaled_sizes() == scaled_sizes(224) == (5, 0.25)
    assert scaled_sizes(112) == (3, 0.5)
    assert scaled_sizes(32) == (None, None)  # 5 px -> 0.7 px: no median; 0.25 -> 1.75: none
    big = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.uint8)
    for build in (intensive_pipeline, lightweight_pipeline):
        np.testing.assert_array_equal(
            augment(big, build(seed=3, image_size=224)), augment(big, build(seed=3))
        )
    small = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    assert len(intensive_pipeline(0, image_size=32).transforms) < len(
        intensive_pipeline(0).transforms
    )
    import albumentations as A

    from mitigation.gym import ResizeMedianResize

    steps = lightweight_pipeline(0, image_size=32).transforms
    assert not any(isinstance(t, A.MedianBlur) for t in steps)
    assert [t.ksize for t in steps if isinstance(t, ResizeMedianResize)] == [None]
    out = augment(small, lightweight_pipeline(0, image_size=32))
    assert out.shape == small.shape and out.dtype == small.dtype
