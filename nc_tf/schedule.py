"""The reference cost (lambda) schedule and early stop, vectorised over labels.

Neural Cleanse moves the regularisation cost up while the trigger reaches
the attack success threshold for `patience` steps and down while it does
not, and stops a label whose best norm has stalled. `cost_schedule_update`
is that rule, step for step, for many labels at once inside the engine's
compiled step (`nc_tf.engine.ReverseEngine`).
"""

import numpy as np
import tensorflow as tf

# Per-slot schedule state, in the order of `cost_schedule_update`'s dict.
STATE_KEYS = (
    "cost",
    "cost_set_counter",
    "cost_up_counter",
    "cost_down_counter",
    "cost_up_flag",
    "cost_down_flag",
    "reg_best",
    "early_stop_counter",
    "early_stop_reg_best",
    "step",
    "done",
    "last_success",
)


def initial_state(n, init_cost, reset_cost_to_zero=True):
    """The schedule state of `n` fresh labels, as a dict of float32 arrays."""
    state = {k: np.zeros(n, np.float32) for k in STATE_KEYS}
    state["cost"][:] = 0.0 if reset_cost_to_zero else init_cost
    state["reg_best"][:] = np.inf
    state["early_stop_reg_best"][:] = np.inf
    return state


def cost_schedule_update(
    state,
    acc,
    reg,
    *,
    init_cost,
    steps,
    attack_succ_threshold=0.99,
    patience=10,
    cost_multiplier=1.5,
    early_stop=True,
    early_stop_threshold=0.99,
    early_stop_patience=20,
    confirm_success=False,
):
    """One end-of-step update of the reference cost schedule, for every slot.

    Follows the reference `Visualizer.visualize` loop exactly:

    1. keep the best trigger: `acc >= attack_succ_threshold` and
       `reg < reg_best` (returned as `improved`);
    2. early stop, once a valid trigger exists: count steps where
       `reg_best >= early_stop_threshold * early_stop_reg_best`; stop when
       the count reaches `early_stop_patience` and the cost has moved both
       up and down;
    3. cost schedule: at cost 0, `patience` successful steps set the cost to
       `init_cost` (and reset counters and flags); then `patience`
       consecutive successes multiply it by `cost_multiplier`, `patience`
       consecutive failures divide it by `cost_multiplier ** 1.5`;
    4. a slot is done after early stop or when its step count reaches
       `steps`.

    `confirm_success` (an nc-tf addition, off in the reference) keeps a
    trigger only when the step before it succeeded too.

    Args:
        state: dict of per-slot tensors (see `STATE_KEYS`).
        acc: per-slot attack success over the step's batches.
        reg: per-slot regularisation (mask norm) over the step's batches.
        init_cost, steps, attack_succ_threshold, patience, cost_multiplier,
        early_stop, early_stop_threshold, early_stop_patience: the reference
            `Visualizer` parameters.

    Returns:
        `(new_state, improved)`: the updated dict and a bool tensor of the
        slots whose best trigger must be replaced by the current one.
    """
    f32 = tf.float32
    s = {k: tf.cast(v, f32) for k, v in state.items()}
    acc, reg = tf.cast(acc, f32), tf.cast(reg, f32)
    one, zero = tf.ones_like(acc), tf.zeros_like(acc)
    success = acc >= attack_succ_threshold

    # 1. best trigger so far (with `confirm_success`, only after two successful
    # steps in a row: one step's estimate on a few batches is noisy, and the
    # smallest trigger that passed it once is biased to fall short)
    confirmed = success & (s["last_success"] > 0) if confirm_success else success
    improved = confirmed & (reg < s["reg_best"])
    reg_best = tf.where(improved, reg, s["reg_best"])

    # 2. early stop (only once a valid trigger exists)
    es_counter, es_best = s["early_stop_counter"], s["early_stop_reg_best"]
    stop = tf.zeros_like(success)
    if early_stop:
        valid = tf.math.is_finite(reg_best)
        stalled = reg_best >= early_stop_threshold * es_best
        es_counter = tf.where(valid, tf.where(stalled, es_counter + 1, zero), es_counter)
        es_best = tf.minimum(reg_best, es_best)
        stop = (
            (s["cost_down_flag"] > 0)
            & (s["cost_up_flag"] > 0)
            & (es_counter >= early_stop_patience)
        )

    # 3. cost schedule
    cost = s["cost"]
    up_counter, down_counter = s["cost_up_counter"], s["cost_down_counter"]
    up_flag, down_flag = s["cost_up_flag"], s["cost_down_flag"]
    at_zero = (cost == 0) & success
    set_counter = tf.where(at_zero, s["cost_set_counter"] + 1, zero)
    initialise = at_zero & (set_counter >= patience)
    cost = tf.where(initialise, init_cost * one, cost)
    up_counter = tf.where(initialise, zero, up_counter)
    down_counter = tf.where(initialise, zero, down_counter)
    up_flag = tf.where(initialise, zero, up_flag)
    down_flag = tf.where(initialise, zero, down_flag)

    up_counter = tf.where(success, up_counter + 1, zero)
    down_counter = tf.where(success, zero, down_counter + 1)
    go_up = up_counter >= patience
    go_down = ~go_up & (down_counter >= patience)
    cost = tf.where(go_up, cost * cost_multiplier, cost)
    cost = tf.where(go_down, cost / cost_multiplier**1.5, cost)
    up_counter = tf.where(go_up, zero, up_counter)
    down_counter = tf.where(go_down, zero, down_counter)
    up_flag = tf.where(go_up, one, up_flag)
    down_flag = tf.where(go_down, one, down_flag)

    # On early stop the reference breaks before touching the cost.
    keep = lambda new, old: tf.where(stop, old, new)  # noqa: E731
    step = s["step"] + 1
    new = {
        "cost": keep(cost, s["cost"]),
        "cost_set_counter": keep(set_counter, s["cost_set_counter"]),
        "cost_up_counter": keep(up_counter, s["cost_up_counter"]),
        "cost_down_counter": keep(down_counter, s["cost_down_counter"]),
        "cost_up_flag": keep(up_flag, s["cost_up_flag"]),
        "cost_down_flag": keep(down_flag, s["cost_down_flag"]),
        "reg_best": reg_best,
        "early_stop_counter": es_counter,
        "early_stop_reg_best": es_best,
        "step": step,
        "done": tf.where(stop | (step >= steps), one, s["done"]),
        "last_success": tf.cast(success, f32),
    }
    return new, improved
