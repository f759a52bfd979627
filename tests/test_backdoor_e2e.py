"""End to end: a tiny MNIST model trained on poisoned data learns a real backdoor."""

import numpy as np

from nc_tf.metrics import attack_success_rate, evaluate_backdoor, predict_labels


def test_backdoor_is_learned(mnist_small, tiny_backdoored):
    _, _, xt, yt = mnist_small
    model, trigger, history = tiny_backdoored
    result = evaluate_backdoor(model, xt, yt, [trigger])
    assert result["attack_success_rate"] >= 0.9
    assert result["accuracy"] >= 0.9
    # Clean images are (almost) never sent to the target.
    clean_to_target = attack_success_rate(predict_labels(model, xt), yt, trigger.target)
    assert clean_to_target <= 0.1
    # BackdoorCall wrote its figures into the History.
    assert len(history.history["attack_success_rate"]) == 3
    assert np.isclose(history.history["attack_success_rate"][-1], result["attack_success_rate"])
    assert np.isclose(history.history["clean_acc"][-1], result["accuracy"])
