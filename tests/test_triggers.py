import json

import numpy as np
import pytest

from injection import (
    Trigger,
    construct_mask_box,
    construct_mask_corner,
    infect_X,
    injection_func,
    load_triggers,
    square_trigger,
)


def test_construct_mask_corner_matches_reference_layout():
    mask, pattern = construct_mask_corner(32, 32, 4, 1, 3)
    assert mask.shape == pattern.shape == (32, 32, 3)
    rows, cols = np.nonzero(mask[..., 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (27, 30, 27, 30)
    assert pattern[27:31, 27:31].min() == 255 and pattern.sum() == 255 * 16 * 3


def test_construct_mask_box_and_infect_x():
    box = construct_mask_box([2, 5], (28, 28, 1), pattern_size=3, margin=2)
    assert sorted(box) == [2, 5] and box[5][0][0].sum() == 9
    img = np.zeros((28, 28, 1), np.float32)
    adv, y = infect_X(img, 5, box, num_classes=10)
    assert adv[23:26, 23:26].min() == 255 and adv.sum() == 9 * 255
    assert y.argmax() == 5 and y.sum() == 1
    m, p = box[2][0]
    assert np.array_equal(injection_func(m, p, img), adv)


def test_square_trigger_equals_reference_corner():
    t = square_trigger((32, 32, 3), 33, size=4, margin=1)
    mask, pattern = construct_mask_corner(32, 32, 4, 1, 3)
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.float32)
    assert np.array_equal(t.apply(x), injection_func(mask, pattern, x))


@pytest.mark.parametrize(
    "position,origin",
    [
        ("top-left", (1, 1)),
        ("bottom-left", (23, 1)),
        ("top-right", (1, 23)),
        ("center", (12, 12)),
        ("top", (1, 12)),
        ([3, 5], (3, 5)),
    ],
)
def test_positions(position, origin):
    t = square_trigger((28, 28, 1), 0, size=4, margin=1, position=position)
    rows, cols = np.nonzero(t.mask[..., 0])
    assert (rows.min(), cols.min()) == origin and t.mask.sum() == 16


@pytest.mark.parametrize(
    "make",
    [
        lambda: square_trigger(
            (32, 32, 3), 33, size=5, margin=2, position="top-left", color=[10, 200, 30]
        ),
        lambda: Trigger(
            np.random.default_rng(1).random((8, 8)),
            np.random.default_rng(2).uniform(0, 255, (8, 8, 3)),
            4,
        ),
    ],
)
def test_spec_round_trip_is_bit_identical(make):
    t = make()
    again = Trigger.from_spec(json.loads(json.dumps(t.spec)))
    assert again.target == t.target
    assert np.array_equal(again.mask, t.mask) and np.array_equal(again.pattern, t.pattern)
    x = np.random.default_rng(3).integers(0, 256, (4,) + t.image_shape).astype(np.uint8)
    assert np.array_equal(again.apply(x), t.apply(x))


def test_apply_keeps_dtype_and_shape():
    t = square_trigger((28, 28, 1), 7)
    x8 = np.zeros((3, 28, 28, 1), np.uint8)
    out = t.apply(x8)
    assert out.dtype == np.uint8 and out.shape == x8.shape and out.max() == 255
    assert t.apply(np.zeros((28, 28, 1), np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="images shaped"):
        t.apply(np.zeros((1, 32, 32, 3)))


def test_bad_triggers_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        square_trigger((28, 28, 1), 7, size=28, margin=1)
    with pytest.raises(ValueError, match="Unknown position"):
        square_trigger((28, 28, 1), 7, position="middle")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Trigger(np.full((4, 4), 2.0), np.zeros((4, 4, 1)), 0)
    with pytest.raises(ValueError, match="Unknown trigger kind"):
        Trigger.from_spec({"kind": "star"})


def test_load_triggers_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="attack file"):
        load_triggers(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_triggers(bad)
    with pytest.raises(ValueError, match="no 'triggers'"):
        load_triggers({"targets": [1]})


@pytest.mark.parametrize("shape", ["square", "triangle", "checkerboard"])
@pytest.mark.parametrize("color", [255, [10, 200, 30], "noisy"])
def test_shape_triggers_rebuild_exactly_from_json(shape, color):
    import json

    from injection.triggers import Trigger, shape_trigger

    t = shape_trigger(
        (32, 32, 3), 5, shape=shape, size=6, margin=2, position="top-left", color=color, seed=4
    )
    again = Trigger.from_spec(json.loads(json.dumps(t.spec)))
    np.testing.assert_array_equal(again.mask, t.mask)
    np.testing.assert_array_equal(again.pattern, t.pattern)
    area = {"square": 36, "triangle": 21, "checkerboard": 36}[shape]
    assert int(t.mask.sum()) == area
    box = t.pattern[2:8, 2:8]
    assert t.mask[:2].sum() == 0 and t.mask[8:].sum() == 0  # only the box is stamped
    if shape == "checkerboard":
        assert np.all(box[1::2, ::2] == 0) and np.all(box[::2, 1::2] == 0)
    if color == "noisy":
        other = shape_trigger(
            (32, 32, 3),
            5,
            shape=shape,
            size=6,
            margin=2,
            position="top-left",
            color="noisy",
            seed=5,
        )
        assert not np.array_equal(other.pattern, t.pattern)
        assert len(np.unique(box[t.mask[2:8, 2:8, 0] > 0])) > 10


def test_shape_trigger_rejects_bad_arguments():
    from injection.triggers import shape_trigger

    with pytest.raises(ValueError, match="Unknown trigger shape"):
        shape_trigger((28, 28, 1), 7, shape="circle")
    with pytest.raises(ValueError, match="noisy"):
        shape_trigger((28, 28, 1), 7, color="rainbow")
