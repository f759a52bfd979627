import numpy as np
import pytest
import tensorflow as tf

from nc_tf.preprocess import INTENSITY_RANGES, preprocess, reverse_preprocess


@pytest.mark.parametrize("intensity", INTENSITY_RANGES)
def test_round_trip_numpy_and_tensor(intensity):
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    assert np.allclose(reverse_preprocess(preprocess(x, intensity), intensity), x, atol=1e-3)
    t = reverse_preprocess(preprocess(tf.constant(x), intensity), intensity)
    assert isinstance(t, tf.Tensor)
    assert np.allclose(t.numpy(), x, atol=1e-3)


def test_ranges():
    x = np.zeros((1, 1, 1, 3), np.float32)
    x[..., 0] = 255  # pure red
    assert preprocess(x, "mnist").max() == 1.0
    assert preprocess(x, "inception").min() == -1.0
    bgr = preprocess(x, "imagenet")[0, 0, 0]
    assert np.allclose(bgr, [-103.939, -116.779, 255 - 123.68])


def test_bad_intensity_and_grayscale_imagenet():
    with pytest.raises(ValueError, match="Unknown intensity"):
        preprocess(np.zeros((1, 2, 2, 1)), "caffe")
    with pytest.raises(ValueError, match="RGB"):
        preprocess(np.zeros((1, 2, 2, 1)), "imagenet")
