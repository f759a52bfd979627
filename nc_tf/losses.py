"""The attack losses a trigger is optimised with, on the target's probability p_t.

`"crossentropy"` is Keras's `-log p_t` (p_t clipped to [1e-7, 1 - 1e-7]).
`"reference"` is what the Neural Cleanse code effectively minimised: it
passes `categorical_crossentropy` its arguments swapped, which under Keras
2.2 computes `-log(1e-7) * (1 - p_t)`, about `16.12 (1 - p_t)`
(docs/reference-names.md).
"""

import math

import tensorflow as tf

LOSSES = {
    "crossentropy": lambda p: -tf.math.log(tf.clip_by_value(p, 1e-7, 1 - 1e-7)),
    "reference": lambda p: -math.log(1e-7) * (1 - p),
}
LOSS_ALIASES = {"ce": "crossentropy"}


def check_loss(loss):
    """The canonical name of an attack loss (`"ce"` is `"crossentropy"`), or a ValueError."""
    loss = LOSS_ALIASES.get(loss, loss)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}.")
    return loss
