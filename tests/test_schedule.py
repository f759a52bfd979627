"""The engine's cost schedule and early stop follow the reference loop step by step."""

import math

import numpy as np
import pytest

from nc_tf.schedule import cost_schedule_update, initial_state


class ReferenceSchedule:
    """A line-by-line transcription of the reference `Visualizer.visualize` bookkeeping."""

    def __init__(
        self,
        init_cost,
        patience,
        cost_multiplier,
        early_stop_threshold,
        early_stop_patience,
        attack_succ_threshold=0.99,
    ):
        self.init_cost, self.patience = init_cost, patience
        self.up, self.down = cost_multiplier, cost_multiplier**1.5
        self.es_threshold, self.es_patience = early_stop_threshold, early_stop_patience
        self.thr = attack_succ_threshold
        self.cost = 0.0
        self.cost_set_counter = self.cost_up_counter = self.cost_down_counter = 0
        self.cost_up_flag = self.cost_down_flag = False
        self.reg_best = math.inf
        self.early_stop_counter, self.early_stop_reg_best = 0, math.inf
        self.stopped = False

    def step(self, acc, reg):
        improved = False
        if acc >= self.thr and reg < self.reg_best:
            self.reg_best, improved = reg, True
        if self.reg_best < math.inf:
            if self.reg_best >= self.es_threshold * self.early_stop_reg_best:
                self.early_stop_counter += 1
            else:
                self.early_stop_counter = 0
        self.early_stop_reg_best = min(self.reg_best, self.early_stop_reg_best)
        if (
            self.cost_down_flag
            and self.cost_up_flag
            and self.early_stop_counter >= self.es_patience
        ):
            self.stopped = True
            return improved
        if self.cost == 0 and acc >= self.thr:
            self.cost_set_counter += 1
            if self.cost_set_counter >= self.patience:
                self.cost = self.init_cost
                self.cost_up_counter = self.cost_down_counter = 0
                self.cost_up_flag = self.cost_down_flag = False
        else:
            self.cost_set_counter = 0
        if acc >= self.thr:
            self.cost_up_counter += 1
            self.cost_down_counter = 0
        else:
            self.cost_up_counter = 0
            self.cost_down_counter += 1
        if self.cost_up_counter >= self.patience:
            self.cost_up_counter = 0
            self.cost *= self.up
            self.cost_up_flag = True
        elif self.cost_down_counter >= self.patience:
            self.cost_down_counter = 0
            self.cost /= self.down
            self.cost_down_flag = True
        return improved


def _stub_sequence(rng, n, patience):
    """Runs of successes and failures; the norm mostly shrinks, then stalls."""
    acc, ok = [], False
    while len(acc) < n:
        acc += [1.0 if ok else 0.5] * int(rng.integers(1, 3 * patience))
        ok = not ok if rng.random() < 0.8 else ok
    acc = np.array(acc[:n])
    reg = np.maximum(50 * np.exp(-np.arange(n) / 40.0) + rng.normal(0, 2, n), 1.0)
    reg[n // 2 :] = reg[n // 2]  # stall: triggers early stop
    return acc, reg


@pytest.mark.parametrize(
    "patience,multiplier,es_thr,es_pat", [(5, 2.0, 1.0, 25), (10, 1.5, 0.99, 20), (2, 3.0, 1.0, 4)]
)
def test_vectorised_schedule_matches_reference_step_by_step(patience, multiplier, es_thr, es_pat):
    n_slots, n_steps = 6, 400
    rng = np.random.default_rng(patience)
    seqs = [_stub_sequence(rng, n_steps, patience) for _ in range(n_slots)]
    refs = [ReferenceSchedule(1e-3, patience, multiplier, es_thr, es_pat) for _ in range(n_slots)]
    state = initial_state(n_slots, 1e-3)
    cfg = dict(
        init_cost=1e-3,
        steps=10_000,
        patience=patience,
        cost_multiplier=multiplier,
        early_stop_threshold=es_thr,
        early_stop_patience=es_pat,
    )
    stopped_any = moved_both = False
    for t in range(n_steps):
        active = [i for i in range(n_slots) if not refs[i].stopped]
        if not active:
            break
        acc = np.array([seqs[i][0][t] for i in active])
        reg = np.array([seqs[i][1][t] for i in active])
        sub = {k: v[active] for k, v in state.items()}
        new, improved = cost_schedule_update(sub, acc, reg, **cfg)
        for j, i in enumerate(active):
            assert bool(improved[j]) == refs[i].step(acc[j], reg[j])
            r = refs[i]
            assert new["cost"][j].numpy() == pytest.approx(r.cost, rel=1e-5), (t, i)
            assert new["cost_up_flag"][j] == r.cost_up_flag
            assert new["cost_down_flag"][j] == r.cost_down_flag
            assert new["early_stop_counter"][j] == r.early_stop_counter
            assert new["reg_best"][j].numpy() == pytest.approx(r.reg_best, rel=1e-6)
            assert bool(new["done"][j]) == r.stopped
            stopped_any |= r.stopped
            moved_both |= r.cost_up_flag and r.cost_down_flag
        for k in state:
            state[k][active] = new[k].numpy()
    assert moved_both and stopped_any  # the stub exercised every rule


def test_cost_starts_at_zero_and_initialises_after_patience():
    state = initial_state(1, 0.5)
    cfg = dict(init_cost=0.5, steps=100, patience=3, cost_multiplier=2.0)
    costs = []
    for _ in range(7):
        state, _ = cost_schedule_update(state, [1.0], [10.0], **cfg)
        state = {k: v.numpy() for k, v in state.items()}
        costs.append(float(state["cost"][0]))
    # 3 successes at cost 0 -> init_cost; the success counter keeps counting
    # through the initialisation step (as in the reference), so 2 more -> x2.
    assert costs == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0]


def test_step_budget_ends_a_label():
    state = initial_state(2, 0.1)
    state["step"][:] = [8, 2]
    new, _ = cost_schedule_update(state, [0.0, 0.0], [5.0, 5.0], init_cost=0.1, steps=9)
    assert new["done"].numpy().tolist() == [1.0, 0.0]
