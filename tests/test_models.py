import h5py
import keras
import numpy as np
import pytest

from nc_tf.models import (
    UntrustedModelError,
    build_model,
    check_model_data,
    default_arch,
    load_model,
    outputs_probabilities,
)


def _tiny(last="softmax", lambda_layer=False):
    layers = [keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten()]
    if lambda_layer:
        layers.insert(1, keras.layers.Lambda(lambda t: t * 2.0, name="evil_lambda"))
    layers.append(keras.layers.Dense(3, activation=last))
    return keras.Sequential(layers)


def test_reference_architectures():
    m = build_model("mnist", (28, 28, 1), 10)
    assert [type(layer).__name__ for layer in m.layers][:2] == ["Conv2D", "MaxPooling2D"]
    assert m.layers[0].kernel_size == (5, 5) and m.layers[0].filters == 16
    g = build_model("gtsrb", (32, 32, 3), 43)
    convs = [layer for layer in g.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 32, 64, 64, 128, 128] and g.output_shape == (None, 43)
    r = build_model("resnet", (32, 32, 3), 10)
    assert any(isinstance(layer, keras.layers.Add) for layer in r.layers)
    assert default_arch((28, 28, 1), 10) == "mnist" and default_arch((32, 32, 3), 43) == "gtsrb"
    with pytest.raises(ValueError, match="Unknown architecture"):
        build_model("vgg", (32, 32, 3), 10)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_save_and_load_both_formats(tmp_path, suffix):
    m = _tiny()
    path = str(tmp_path / f"m{suffix}")
    m.save(path)
    loaded = load_model(path)
    x = np.random.default_rng(0).random((2, 6, 6, 1)).astype(np.float32)
    assert np.allclose(loaded(x), m(x), atol=1e-6)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layer_is_refused_unless_trusted(tmp_path, suffix):
    path = str(tmp_path / f"evil{suffix}")
    _tiny(lambda_layer=True).save(path)
    with pytest.raises(UntrustedModelError, match="evil_lambda") as e:
        load_model(path)
    assert "trust_model=True" in str(e.value) and "--trust-model" in str(e.value)
    assert load_model(path, trust_model=True).output_shape == (None, 3)


def test_custom_layer_is_refused(tmp_path):
    @keras.saving.register_keras_serializable(package="attacker")
    class Sneaky(keras.layers.Layer):
        def call(self, x):
            return x

    m = keras.Sequential([keras.Input((4,)), Sneaky(name="sneaky"), keras.layers.Dense(2)])
    path = str(tmp_path / "c.keras")
    m.save(path)
    with pytest.raises(UntrustedModelError, match="Sneaky"):
        load_model(path)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such model file"):
        load_model(tmp_path / "missing.keras")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_model(corrupt)
    weights_only = tmp_path / "w.h5"
    with h5py.File(weights_only, "w") as f:
        f["X_test"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="load_weights"):
        load_model(weights_only)


def test_softmax_or_logits_detection():
    assert outputs_probabilities(_tiny("softmax"))
    assert not outputs_probabilities(_tiny(None))
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Softmax()])
    assert outputs_probabilities(m)
    inner = _tiny(None)
    outer = keras.Sequential([keras.Input((6, 6, 1)), inner])
    assert not outputs_probabilities(outer)


def test_check_model_data():
    m = _tiny()
    assert check_model_data(m, np.zeros((1, 6, 6, 1)), np.array([0, 2])) == 3
    with pytest.raises(ValueError, match=r"expects images shaped \(6, 6, 1\)"):
        check_model_data(m, np.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="only 3 outputs"):
        check_model_data(m, np.zeros((1, 6, 6, 1)), np.array([5]))
