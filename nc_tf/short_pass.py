"""Short passes that choose what to optimise fully.

Both run every candidate for a few steps on the engine
(`ReverseEngine.advance`) and keep the most promising by the L1 norm of its
current mask: `best_starts` picks one of several random starts per job (the
scan's `starts` setting); `low_cost_selection` picks the labels worth a full
optimisation (the Neural Cleanse paper's low-cost scan, §IV).
"""

import numpy as np


def best_starts(engine, labels, starts, start_steps, sources=None, restarts=None, thresholds=None):
    """Runs several starts of each job for a few steps and keeps the most promising.

    Every job is started `starts` times from different random triggers
    (restart indices `restart * starts + k`); each start advances
    `start_steps` steps of the engine's `start_mini_batch` batches, and
    the start whose current mask has the smallest L1 norm is kept: a start
    caught in a large local minimum is already far larger than a good one
    after a few dozen steps.

    Args:
        labels: target label of each job.
        starts: starts per job (>= 1).
        start_steps: steps each start runs before the choice.
        sources: per job, source classes, as in `run`. Defaults to `None`.
        restarts: per job, its restart index, as in `run`. Defaults to
            `None` (all 0).
        thresholds: per job, its success threshold, as in `run`.
            Defaults to `None`.

    Returns:
        `(states, norms)`: per job, the kept start's state (to pass to
        `run(states=...)`) and the L1 norms of all its starts at the
        choice.
    """
    n, starts = len(labels), int(starts)
    sources = sources or [None] * n
    restarts = restarts or [0] * n
    thresholds = thresholds or [None] * n
    arms = [(j, k) for j in range(n) for k in range(starts)]
    out = engine.advance(
        [labels[j] for j, _ in arms],
        start_steps,
        sources=[sources[j] for j, _ in arms],
        restarts=[restarts[j] * starts + k for j, k in arms],
        thresholds=[thresholds[j] for j, _ in arms],
        mini_batch=engine.start_mini_batch,
    )
    states, norms = [None] * n, [[] for _ in range(n)]
    best = [None] * n
    for (j, _), (state, l1, _) in zip(arms, out):
        norms[j].append(round(l1, 2))
        if best[j] is None or l1 < best[j]:
            best[j], states[j] = l1, state
    return states, norms


def low_cost_selection(
    engine,
    labels,
    seed=0,
    top_k=None,
    overlap_patience=None,
    random_sample=None,
    short_steps=2,
    max_iterations=100,
    progress=True,
    states=None,
):
    """The low-cost scan's short pass (NC paper §IV): which labels to optimise fully.

    All labels advance `short_steps` steps per iteration (swapped through the
    engine's slots); after each iteration they are ranked by the L1 norm of
    their current mask. The pass stops when the `top_k` smallest overlap by
    more than half with the previous iteration's for `overlap_patience`
    iterations in a row (paper: top 100, overlap > 50, 10 iterations). The
    top `top_k` plus `random_sample` other labels (to estimate the MAD) are
    returned, with their states so the full optimisation continues them.

    Args:
        engine: a `nc_tf.engine.ReverseEngine`.
        labels: all labels.
        seed: seed of the random sample. Defaults to `0`.
        top_k: candidates kept. Defaults to `None`: `min(100, max(3, n // 10))`.
        overlap_patience: stable iterations needed. Defaults to `None`:
            `min(10, top_k)`.
        random_sample: random other labels whose norms set the median and
            MAD the candidates are tested against. Defaults to `None`:
            `min(100, max(top_k, 10))` (the paper: 100).
        short_steps: steps per iteration. Defaults to `2`.
        max_iterations: upper bound on iterations. Defaults to `100`.
        progress: show a progress bar. Defaults to `True`.
        states: label -> a state to start from (e.g. the kept start of
            `best_starts`). Defaults to `None` (fresh starts).

    Returns:
        `(chosen_labels, states_by_label, info)`.
    """
    n = len(labels)
    top_k = top_k or min(100, max(3, n // 10))
    overlap_patience = overlap_patience or min(10, top_k)
    random_sample = min(random_sample or min(100, max(top_k, 10)), n - min(top_k, n))
    states = {label: (states or {}).get(label) for label in labels}
    previous, stable, it = None, 0, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=overlap_patience, desc="low-cost short pass", unit="stable it")
    norms = {}
    for it in range(1, max_iterations + 1):
        out = engine.advance(labels, short_steps, states=[states[v] for v in labels])
        for label, (state, l1, _) in zip(labels, out):
            states[label], norms[label] = state, l1
        top = set(sorted(labels, key=lambda v: norms[v])[:top_k])
        stable = stable + 1 if previous is not None and len(top & previous) > top_k / 2 else 0
        previous = top
        if bar is not None:
            bar.n = stable
            bar.refresh()
        if stable >= overlap_patience:
            break
    if bar is not None:
        bar.close()
    rest = [v for v in labels if v not in previous]
    rng = np.random.default_rng(seed)
    sample = (
        sorted(int(v) for v in rng.choice(rest, size=random_sample, replace=False)) if rest else []
    )
    ranked = sorted(previous, key=lambda v: norms[v])
    info = {
        "iterations": it,
        "short_steps": short_steps,
        "top_k": top_k,
        "overlap_patience": overlap_patience,
        "top": [int(v) for v in ranked],
        "random": sample,
    }
    return ranked + sample, {v: states[v] for v in ranked + sample}, info
