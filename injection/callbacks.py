"""`BackdoorCall`: clean accuracy and attack success rate at every epoch end."""

import keras

from nc_tf.metrics import evaluate_backdoor


class BackdoorCall(keras.callbacks.Callback):
    """Reports clean accuracy and attack success rate after each epoch.

    The values are written into the epoch's `logs` (`clean_acc`,
    `attack_success_rate`, and `asr_<target>` per target when there are
    several triggers), so `History` and other callbacks see them.

    Args:
        clean_X: raw clean images used for both measurements.
        clean_Y: their integer labels.
        triggers: `Trigger` objects of the attack.
        intensity: the model's intensity range. Defaults to `"raw"`.
        batch_size: images per forward pass. Defaults to `256`.
        verbose: print one line per epoch. Defaults to `1`.

    Example:

    >>> cb = BackdoorCall(x_test, y_test, [trigger])  # doctest: +SKIP
    >>> history = model.fit(ds, epochs=3, callbacks=[cb])  # doctest: +SKIP
    >>> history.history["attack_success_rate"]  # doctest: +SKIP
    """

    def __init__(self, clean_X, clean_Y, triggers, intensity="raw", batch_size=256, verbose=1):
        super().__init__()
        self.clean_X, self.clean_Y = clean_X, clean_Y
        self.triggers, self.intensity = list(triggers), intensity
        self.batch_size, self.verbose = batch_size, verbose

    def on_epoch_end(self, epoch, logs=None):
        result = evaluate_backdoor(self.model, self.clean_X, self.clean_Y, self.triggers,
                                   self.intensity, self.batch_size)
        values = {"clean_acc": result["accuracy"]}
        if self.triggers:
            values["attack_success_rate"] = result["attack_success_rate"]
            if len(self.triggers) > 1:
                for i, p in enumerate(result["per_trigger"]):
                    values[f"asr_{i}_target_{p['target']}"] = p["attack_success_rate"]
        if logs is not None:
            logs.update(values)
        if self.verbose:
            print(f"\nepoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
