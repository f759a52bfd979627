"""The reference codebases' names (docs/reference-names.md), one test each, on tiny synthetic data."""

import inspect
import os

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from injection.injection_utils import BackdoorCall, DataGenerator
from mitigation import deepsweep, defended_inference, gym
from nc_tf import gtsrb_visualize_example as example
from nc_tf import mad_outlier_detection as mad
from nc_tf import outlier, utils_backdoor
from nc_tf.visualizer import Visualizer

SHAPE = (8, 8, 1)


def _png(path):
    with Image.open(path) as image:
        return np.asarray(image)


def _constant_model(label, classes=3):
    """A classifier that predicts `label` for every input."""
    model = keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Flatten(),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    kernel, bias = model.layers[-1].get_weights()
    bias[:] = 0.0
    bias[label] = 5.0
    model.layers[-1].set_weights([np.zeros_like(kernel), bias])
    return model


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # below 200, so a stamped white square stands out
    return rng.integers(0, 200, (64,) + SHAPE).astype(np.float32), rng.integers(0, 3, 64)


@pytest.fixture(scope="module")
def viz(images):
    """A Visualizer on a tiny random model, run once (its engine is compiled once)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")]
    )
    v = Visualizer(
        model,
        "raw",
        "l1",
        SHAPE,
        1e-3,
        4,
        1,
        0.1,
        3,
        upsample_size=2,
        patience=3,
        img_color=1,
        batch_size=8,
        verbose=0,
    )
    rng = np.random.default_rng(1)
    v.visualize(images[0], 2, rng.random(SHAPE) * 255, rng.random((4, 4)))
    return v


# ------------------------------------------------------------ utils_backdoor
def test_dump_image_truncates_like_the_reference(tmp_path):
    utils_backdoor.dump_image(np.full((4, 4, 1), 254.9), str(tmp_path / "g.png"), "png")
    utils_backdoor.dump_image(np.full((4, 4, 3), 10.99), str(tmp_path / "c.png"), "png")
    assert np.all(_png(tmp_path / "g.png") == 254) and _png(tmp_path / "g.png").shape == (4, 4)
    assert np.all(_png(tmp_path / "c.png") == 10) and _png(tmp_path / "c.png").shape == (4, 4, 3)


def test_load_dataset_reads_the_requested_keys(tmp_path):
    path = str(tmp_path / "d.h5")
    x, y = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), np.eye(2)
    with h5py.File(path, "w") as f:
        f["X_test"], f["Y_test"], f["X_train"] = x, y, x
    data = utils_backdoor.load_dataset(path, keys=["X_test", "Y_test"])
    assert sorted(data) == ["X_test", "Y_test"]
    assert np.array_equal(data["X_test"], x) and np.array_equal(data["Y_test"], y)
    assert sorted(utils_backdoor.load_dataset(path)) == ["X_test", "X_train", "Y_test"]
    with pytest.raises(KeyError, match="Y_train"):
        utils_backdoor.load_dataset(path, keys=["Y_train"])


def test_fix_gpu_memory_sets_growth_on_every_gpu():
    import tensorflow as tf

    gpus = utils_backdoor.fix_gpu_memory()
    assert gpus == tf.config.list_physical_devices("GPU")
    assert all(tf.config.experimental.get_memory_growth(g) for g in gpus)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="mem_fraction"):
            utils_backdoor.fix_gpu_memory(bad)


# ---------------------------------------------------------------- Visualizer
def test_visualizer_class_constants_are_the_reference_defaults(viz):
    expected = dict(
        UPSAMPLE_SIZE=1,
        INTENSITY_RANGE="raw",
        REGULARIZATION="l1",
        ATTACK_SUCC_THRESHOLD=0.99,
        PATIENCE=10,
        COST_MULTIPLIER=1.5,
        RESET_COST_TO_ZERO=True,
        MASK_MIN=0,
        MASK_MAX=1,
        COLOR_MIN=0,
        COLOR_MAX=255,
        IMG_COLOR=3,
        SHUFFLE=True,
        BATCH_SIZE=32,
        VERBOSE=1,
        RETURN_LOGS=True,
        SAVE_LAST=False,
        EPSILON=1e-7,
        EARLY_STOP=True,
        EARLY_STOP_THRESHOLD=0.99,
        EARLY_STOP_PATIENCE=20,
        SAVE_TMP=False,
        TMP_DIR="tmp",
        RAW_INPUT_FLAG=False,
    )
    assert {k: getattr(Visualizer, k) for k in expected} == expected
    # every constant is its parameter's default (intensity_range and regularization are required)
    defaults = {
        name: p.default
        for name, p in inspect.signature(Visualizer).parameters.items()
        if name.upper() in expected and p.default is not p.empty
    }
    assert defaults == {name: expected[name.upper()] for name in defaults} and len(defaults) == 22
    # early stop patience stays 20 whatever patience is (3 here), as in the reference
    assert viz.engine_kwargs["early_stop_patience"] == 20 and viz.engine_kwargs["patience"] == 3


def test_reset_opt_zeroes_the_optimiser_state(viz):
    engine = viz._engine
    assert engine.adam_t.numpy().max() > 0 and np.abs(engine.adam["v_mask"].numpy()).max() > 0
    viz.reset_opt()
    for var in [*engine.adam.values(), engine.adam_t]:
        assert not np.any(var.numpy())


def test_reset_state_sets_cost_and_clips_the_initial_trigger(viz):
    viz.reset_state(np.full(SHAPE, 300.0), np.full(SHAPE[:2], 1.5))
    assert viz.cost == 0.0
    assert viz.mask.shape == (4, 4) and viz.mask_upsample.shape == (8, 8)  # upsample_size 2
    assert viz.mask_upsample.max() == 1.0 and viz.pattern_raw.max() == 255.0
    viz.reset_cost_to_zero = False
    try:
        viz.reset_state(np.zeros(SHAPE), np.full((4, 4), -1.0))
        assert viz.cost == viz.init_cost and viz.mask.min() == 0.0
    finally:
        viz.reset_cost_to_zero = True
    with pytest.raises(ValueError, match="mask_init"):
        viz.reset_state(np.zeros(SHAPE), np.zeros((5, 5)))


def test_save_tmp_func_writes_the_current_mask_and_fusion(viz, images, tmp_path):
    viz.tmp_dir = str(tmp_path / "tmp")
    mask = np.zeros((4, 4))
    mask[1, 2] = 0.999  # 254.7 -> 254, truncated as the reference
    viz.reset_state(np.full(SHAPE, 101.0), mask)
    viz.save_tmp_func(3)
    stored = _png(tmp_path / "tmp" / "tmp_mask_step_3.png")
    assert stored[2:4, 4:6].tolist() == [[254, 254], [254, 254]] and stored.sum() == 4 * 254
    assert _png(tmp_path / "tmp" / "tmp_fusion_step_3.png").max() == 100  # 101 * 0.999
    # visualize(save_tmp=True) writes the returned trigger under its last step;
    # without return_logs it returns three values, as the reference
    viz.save_tmp, viz.return_logs = True, False
    try:
        out = viz.visualize(images[0], 1, np.full(SHAPE, 50.0), np.full((4, 4), 0.5))
    finally:
        viz.save_tmp, viz.return_logs = False, True
    assert len(out) == 3
    assert os.path.exists(tmp_path / "tmp" / "tmp_mask_step_4.png")


# ------------------------------------------------------ gtsrb_visualize_example
def test_build_data_loader_yields_shuffled_batches_of_the_data():
    x = np.arange(70, dtype=np.float32).reshape(70, 1, 1, 1)
    loader = example.build_data_loader(x, np.eye(70), batch_size=32, seed=0)
    batches = [(np.asarray(a), np.asarray(b)) for a, b in loader]
    assert [len(a) for a, _ in batches] == [32, 32, 6]
    seen = np.concatenate([a for a, _ in batches]).ravel()
    assert sorted(seen) == list(range(70)) and seen.tolist() != list(range(70))
    for a, b in batches:  # labels travel with their images
        assert np.array_equal(a.ravel(), b.argmax(1))
    again = np.concatenate([np.asarray(a) for a, _ in loader]).ravel()
    assert again.tolist() != seen.tolist()  # reshuffled on every pass


def test_visualize_trigger_w_mask_runs_and_saves(viz, images, tmp_path):
    pattern, mask_upsample, logs = example.visualize_trigger_w_mask(
        viz, images[0], 2, result_dir=str(tmp_path), seed=0
    )
    assert pattern.shape == SHAPE and mask_upsample.shape == SHAPE[:2]
    assert len(logs) >= 1 and len(logs[0]) == 7
    stored = _png(tmp_path / "gtsrb_visualize_mask_label_2.png")
    assert np.array_equal(stored, (mask_upsample * 255).astype(np.float32).astype(np.uint8))


def test_save_pattern_writes_the_three_reference_pngs(tmp_path):
    pattern = np.full(SHAPE, 200.0)
    mask = np.zeros(SHAPE[:2])
    mask[5:7, 5:7] = 0.5
    example.save_pattern(pattern, mask, 7, str(tmp_path / "out"), "t_%s_%d.png")
    assert sorted(os.listdir(tmp_path / "out")) == [
        "t_fusion_7.png",
        "t_mask_7.png",
        "t_pattern_7.png",
    ]
    assert _png(tmp_path / "out" / "t_mask_7.png").sum() == 4 * 127  # 127.5 truncated
    assert _png(tmp_path / "out" / "t_fusion_7.png").max() == 100
    assert np.all(_png(tmp_path / "out" / "t_pattern_7.png") == 200)


# ------------------------------------------------------ mad_outlier_detection
def test_outlier_detection_is_the_one_implementation(capsys):
    assert mad.outlier_detection is outlier.outlier_detection
    result = mad.outlier_detection([16.1, 60.0, 64.0, 70.0, 66.0], {33: 0, 0: 1, 1: 2, 2: 3, 3: 4})
    assert result["flagged"] == [(33, 16.1)]
    assert capsys.readouterr().out.splitlines()[-1] == "flagged label list: 33: 16.100000"


def test_analyze_pattern_norm_dist_reads_the_mask_pngs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    expected = {}
    for label in range(10):
        mask = np.zeros(SHAPE[:2])
        mask.flat[rng.permutation(64)[: 4 if label == 3 else rng.integers(30, 40)]] = 0.999
        example.save_pattern(np.zeros(SHAPE), mask, label, str(tmp_path))
        expected[label] = (mask > 0).sum() * 254 / 255  # 0.999 * 255 stored as 254
    result = mad.analyze_pattern_norm_dist(str(tmp_path), num_classes=43, input_shape=SHAPE)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "10 labels found" and out[-1].startswith("flagged label list: 3: 3.98")
    norms, mapping = mad.mask_png_norms(str(tmp_path), input_shape=SHAPE)
    assert mapping == {k: k for k in range(10)}
    assert np.allclose(norms, [expected[k] for k in range(10)], atol=1e-5)
    assert [label for label, _ in result["flagged"]] == [3]
    with pytest.raises(FileNotFoundError, match="no mask PNG"):
        mad.analyze_pattern_norm_dist(str(tmp_path / "empty"), input_shape=SHAPE, verbose=False)


# ----------------------------------------------------------- injection_utils
def test_injection_utils_star_import_has_the_reference_names():
    namespace = {}
    exec("from injection.injection_utils import *", namespace)
    assert {
        "BackdoorCall",
        "construct_mask_box",
        "construct_mask_corner",
        "DataGenerator",
        "infect_X",
        "injection_func",
    } <= set(namespace)
    box = namespace["construct_mask_box"]([4], SHAPE)  # the reference default: a 3x3 square
    mask, pattern = box[4][0]
    assert mask[..., 0].sum() == 9 and mask[4:7, 4:7].all() and pattern.max() == 255


def test_reference_data_generator_stamps_every_sample(images):
    x, y = images
    gen = DataGenerator([2]).generate_data(x, np.eye(3)[y], 1)  # the reference call
    for _ in range(3):
        xb, yb = next(gen)
        assert xb.shape == (32,) + SHAPE and yb.shape == (32, 3)
        assert np.all(xb[:, 3:7, 3:7] == 255) and np.all(yb.argmax(1) == 2)  # the 4x4 square
    clean = next(DataGenerator([2]).generate_data(x, np.eye(3)[y], 0))[0]
    assert not np.any(clean == 255)
    with pytest.raises(ValueError, match="num_classes"):
        next(DataGenerator([2]).generate_data(x, y, 1))


def test_backdoor_call_evaluates_100_steps_of_the_reference_generator(images):
    x, y = images
    taken = []

    def counted(source):
        for batch in source:
            taken.append(1)
            yield batch

    adv_gen = counted(DataGenerator([2]).generate_data(x, np.eye(3)[y], 1))
    cb = BackdoorCall(x, np.eye(3)[y], adv_gen, verbose=0)  # the reference call, quiet
    for label, rate in ((2, 1.0), (0, 0.0)):
        cb.set_model(_constant_model(label))
        logs = {}
        cb.on_epoch_end(0, logs)
        assert logs["attack_success_rate"] == rate
        assert logs["clean_acc"] == pytest.approx(np.mean(y == label))
    assert len(taken) == 200  # 100 batches per epoch of the endless generator


# ------------------------------------------------------------------ deepsweep
def _texture(shape=(32, 32, 3)):
    return np.random.default_rng(0).random(shape)


def test_fastSAT_is_seeded_and_moves_the_image():
    img = _texture()
    a, b, c = (deepsweep.fastSAT(img, seed=s) for s in (1, 1, 2))
    assert a.shape == img.shape and np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0 <= a.min() and a.max() <= 1 and not np.allclose(a, img, atol=0.05)


def test_defend_OD_distorts_texture_but_not_a_flat_image():
    flat = np.full((32, 32, 3), 0.5)
    assert np.all(deepsweep.defend_OD(flat, seed=3) == 127 / 255)  # 0.5 -> 127, as the notebook
    assert np.abs(deepsweep.defend_OD(_texture(), seed=3) - _texture()).max() > 0.1


def test_defend_GAMMA_is_gamma_0_6():
    out = deepsweep.defend_GAMMA(np.full((8, 8, 3), 0.5)) * 255
    assert np.allclose(out, 255 * (127 / 255) ** 0.6, atol=1)


def test_defend_MED_removes_a_lone_pixel_and_keeps_a_block():
    img = np.zeros((16, 16, 1))
    img[2, 2] = 1.0
    img[8:14, 8:14] = 1.0
    out = deepsweep.defend_MED(img)
    assert out[2, 2, 0] == 0 and np.all(out[10:12, 10:12] == 1.0)


def test_defend_DOWN_leaves_4x4_blocks():
    out = deepsweep.defend_DOWN(_texture())
    blocks = out.reshape(8, 4, 8, 4, 3)
    assert np.all(blocks == blocks[:, :1, :, :1])
    assert not np.all(out == out[0, 0])


def test_defend_MPN_multiplies_by_1_53_and_clips():
    assert deepsweep.defend_MPN(np.full((4, 4, 3), 0.4))[0, 0, 0] * 255 == 156  # 102 * 1.53
    assert np.all(deepsweep.defend_MPN(np.full((4, 4, 3), 0.8)) == 1.0)


def test_defend_GAMMA2_is_gamma_2_6():
    out = deepsweep.defend_GAMMA2(np.full((8, 8, 3), 0.5)) * 255
    assert np.allclose(out, 255 * (127 / 255) ** 2.6, atol=1)


def test_defend_RAND_shrinks_onto_a_black_canvas():
    shown = [
        np.mean(deepsweep.defend_RAND(np.ones((32, 32, 3)), 1.1, seed=s)[..., 0] > 0)
        for s in range(5)
    ]
    # int(32 * 1.1) = 35: the image keeps a side of int(32 * r), r in [32 / 35, 34 / 35]
    assert all((29 / 32) ** 2 <= v <= (31 / 32) ** 2 for v in shown) and len(set(shown)) > 1
    with pytest.raises(ValueError, match="scalimit"):
        deepsweep.defend_RAND(np.ones((8, 8, 3)), 1.1)


def test_defending_runs_the_intensive_pipeline_in_the_notebook_convention():
    imgset = _texture((2, 32, 32, 3)).astype(np.float32)
    out = deepsweep.defending(imgset, seed=0)
    raw = defended_inference.intensive((imgset * 255).astype(np.uint8), seed=0)
    assert out.dtype == np.float32 and np.array_equal(out * 255, raw.astype(np.float32))
    assert np.array_equal(deepsweep.defending(imgset, seed=0), out)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        deepsweep.defending(imgset * 255)


def test_defending2_runs_the_lightweight_pipeline_in_the_notebook_convention():
    imgset = _texture((2, 32, 32, 3))
    out = deepsweep.defending2(imgset, seed=0)
    raw = gym.augment((imgset * 255).astype(np.uint8), gym.lightweight_pipeline(seed=0))
    assert out.dtype == np.float64 and np.allclose(out * 255, raw)
    assert 0 <= out.min() and out.max() <= 1
