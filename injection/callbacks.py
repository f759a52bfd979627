"""`BackdoorCall`: clean accuracy and attack success rate at every epoch end."""

import keras
import numpy as np

from nc_tf.datasets import labels_to_int
from nc_tf.metrics import evaluate_backdoor, predict_labels

REFERENCE_STEPS = 100  # batches of the attack generator the reference evaluates per epoch


class BackdoorCall(keras.callbacks.Callback):
    """Reports clean accuracy and attack success rate after each epoch.

    The values are written into the epoch's `logs` (`clean_acc`,
    `attack_success_rate`, and `asr_<target>` per target when there are
    several triggers), so `History` and other callbacks see them.

    The third argument is either nc-tf's list of triggers, stamped on
    `clean_X`, or, as in the reference injection example, a source of
    attack batches such as `DataGenerator(target_ls).generate_data(X, Y, 1)`.
    Of an endless source `steps` batches are evaluated per epoch (the
    reference's 100), as the model takes them, and the attack success rate
    is the fraction predicted as the batch labels (the reference's
    "Backdoor Success Rate": inputs whose true label is the target count
    too).

    Args:
        clean_X: raw clean images used for the clean accuracy (and, with
            triggers, for the attack success rate).
        clean_Y: their labels, integers or one-hot rows.
        triggers: `Trigger` objects of the attack, or a source of attack
            batches `(x, y_one_hot)`: a generator, a `keras.utils.PyDataset`
            or a `tf.data.Dataset`.
        intensity: the model's intensity range, applied to `clean_X` (and
            to the stamped images). Defaults to `"raw"`.
        batch_size: images per forward pass. Defaults to `256`.
        verbose: print one line per epoch. Defaults to `1`.
        steps: batches taken from a source of attack batches per epoch.
            Defaults to `100`, as in the reference.

    Example:

    >>> cb = BackdoorCall(x_test, y_test, [trigger])  # doctest: +SKIP
    >>> history = model.fit(ds, epochs=3, callbacks=[cb])  # doctest: +SKIP
    >>> history.history["attack_success_rate"]  # doctest: +SKIP
    >>> adv_gen = DataGenerator([7]).generate_data(x_test, y_test_one_hot, 1)  # doctest: +SKIP
    >>> cb = BackdoorCall(x_test, y_test_one_hot, adv_gen)  # the reference call  # doctest: +SKIP
    """

    def __init__(
        self,
        clean_X,
        clean_Y,
        triggers,
        intensity="raw",
        batch_size=256,
        verbose=1,
        steps=REFERENCE_STEPS,
    ):
        super().__init__()
        self.clean_X, self.clean_Y = clean_X, labels_to_int(clean_Y, "clean_Y")
        if is_batch_source(triggers):
            self.adv_gen, self.triggers = triggers, []
        else:
            self.adv_gen, self.triggers = None, list(triggers)
        self.intensity, self.batch_size, self.verbose = intensity, batch_size, verbose
        self.steps = int(steps)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}.")
        self._batches = None

    def _attack_batches(self):
        """The next `steps` batches of the attack source (fewer if it ends)."""
        if self._batches is None:
            self._batches = endless_batches(self.adv_gen)
        for _ in range(self.steps):
            batch = next(self._batches, None)
            if batch is None:
                return
            yield batch

    def on_epoch_end(self, epoch, logs=None):
        result = evaluate_backdoor(
            self.model, self.clean_X, self.clean_Y, self.triggers, self.intensity, self.batch_size
        )
        values = {"clean_acc": result["accuracy"]}
        if self.adv_gen is not None:
            hits = []
            for batch in self._attack_batches():
                xb, yb = batch[0], batch[1]
                # the batches are model inputs already: "raw" leaves them as they are
                pred = predict_labels(self.model, np.asarray(xb), "raw", self.batch_size)
                hits.append(pred == labels_to_int(np.asarray(yb), "attack batch labels"))
            if not hits:
                raise ValueError("The attack batch source yielded no batches.")
            values["attack_success_rate"] = float(np.mean(np.concatenate(hits)))
        elif self.triggers:
            values["attack_success_rate"] = result["attack_success_rate"]
            if len(self.triggers) > 1:
                for i, p in enumerate(result["per_trigger"]):
                    values[f"asr_{i}_target_{p['target']}"] = p["attack_success_rate"]
        if logs is not None:
            logs.update(values)
        if self.verbose:
            print(f"\nepoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))


def is_batch_source(obj):
    """Whether `obj` is a source of batches (generator, `PyDataset`, `tf.data`), not a trigger list.

    Example:

    >>> is_batch_source(iter([])), is_batch_source([])
    (True, False)
    """
    if isinstance(obj, (list, tuple)):
        return False
    if hasattr(obj, "__next__") or isinstance(obj, keras.utils.PyDataset):
        return True
    import tensorflow as tf

    return isinstance(obj, tf.data.Dataset)


def endless_batches(source):
    """`(x, y)` batches of a generator, `PyDataset` or `tf.data.Dataset`, cycling the finite ones.

    A generator is read as it is (an endless one never ends; a finite one
    ends when it is exhausted); a `PyDataset` or `tf.data.Dataset` starts
    over after its last batch.
    """
    if hasattr(source, "__next__"):
        yield from source
        return
    if isinstance(source, keras.utils.PyDataset):
        while True:
            if len(source) == 0:
                return
            for i in range(len(source)):
                yield source[i]
            source.on_epoch_end()
    while True:  # tf.data.Dataset
        empty = True
        for batch in source.as_numpy_iterator():
            empty = False
            yield batch
        if empty:
            return
