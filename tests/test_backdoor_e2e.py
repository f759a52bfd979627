"""End to end: a tiny MNIST model trained on poisoned data learns a real backdoor."""

import hashlib

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


def test_train_and_save_fine_tunes_a_copy_of_a_base_model(tmp_path, mnist_small, tiny_backdoored):
    import pytest

    from injection import square_trigger
    from injection.inject import train_and_save
    from nc_tf.models import load_model, mnist_model

    model, old_trigger, _ = tiny_backdoored
    base = tmp_path / "base.keras"
    model.save(base)
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    new_trigger = square_trigger((28, 28, 1), 3, position="top-left")
    report = train_and_save(
        str(tmp_path / "ft"),
        "mnist",
        [new_trigger],
        epochs=1,
        limit=2000,
        ratio=0.25,
        base_model=str(base),
        verbose=0,
    )
    assert report["training"]["base_model"] == str(base) and report["arch"] == "base_model"
    tuned = load_model(str(tmp_path / "ft" / "model.keras"))
    _, _, xt, yt = mnist_small
    # The copy kept what the base had learnt: a fresh model trained one epoch
    # on 2000 images would not know label 7's trigger.
    kept = evaluate_backdoor(tuned, xt, yt, [old_trigger])["attack_success_rate"]
    assert kept >= 0.5, f"the base model's backdoor is gone (ASR {kept:.3f})"
    # and its accuracy: one epoch on 2000 images costs the base a little at most
    base_accuracy = evaluate_backdoor(model, xt, yt, [])["accuracy"]
    assert evaluate_backdoor(tuned, xt, yt, [])["accuracy"] >= base_accuracy - 0.05
    assert hashlib.sha256(base.read_bytes()).hexdigest() == digest  # the base file is untouched
    with pytest.raises(ValueError, match="base_model takes"):
        train_and_save(
            str(tmp_path / "bad"),
            "mnist",
            [new_trigger],
            epochs=1,
            limit=50,
            base_model=mnist_model(num_classes=5),
            verbose=0,
        )
