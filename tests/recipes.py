"""How the test fixtures' tiny models are made, shared by `conftest.py` and
`bench/fixture_spread.py` (which trains them at other seeds to measure how
far each tested quantity moves)."""

import keras


def tiny_backdoored_model(x, y, x_test, y_test, seed=1):
    """A small MNIST model with a 4x4 white-square backdoor to label 7, 20% poisoned.

    Returns `(model, trigger, history)`.
    """
    from injection import inject_backdoor, square_trigger
    from nc_tf.models import mnist_model

    trigger = square_trigger(x.shape[1:], target=7, size=4, margin=1)
    keras.utils.set_random_seed(seed)
    model = mnist_model()
    # ratio 0.25 (20% of the images poisoned, the paper's upper end), so the
    # tiny model's backdoor clears the scan's success threshold.
    history = inject_backdoor(
        model,
        x,
        y,
        [trigger],
        ratio=0.25,
        epochs=3,
        seed=seed,
        validation_data=(x_test, y_test),
        verbose=0,
    )
    return model, trigger, history


def tiny_clean_model(x, y, seed=1):
    """The clean twin of `tiny_backdoored_model`: same data and training, no trigger."""
    from injection import inject_backdoor
    from nc_tf.models import mnist_model

    keras.utils.set_random_seed(seed)
    model = mnist_model()
    inject_backdoor(model, x, y, (), epochs=3, seed=seed, verbose=0)
    return model
