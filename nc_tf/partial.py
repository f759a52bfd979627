"""Partial (source-specific) backdoors: triggers that only fire for some source labels.

Neural Cleanse §VII-E: a backdoor that sends only source label `s` to target
`t` is invisible to the all-label scan (its trigger must flip every label).
`partial_scan` reverse-engineers one trigger per (source, target) pair using
only source-class samples and runs the MAD outlier test over the pairs:
N·(N-1) jobs; each pair's norm is divided by the median norm of its source's
pairs before the test (see `_source_normalised`). With `divide_and_conquer=True` it runs the search the paper
proposes but never evaluated:

1. for every target, split the other labels into two halves and reverse a
   trigger for each half (2·N jobs); a group's trigger must flip one
   source's share of the group's samples (`group_threshold`), so a backdoor
   that fires for one source only still makes its group's trigger small;
2. score each group by the log-ratio of its norm to its sibling's (a group
   holding the infected source needs a smaller trigger than its sibling);
   keep the `beam` lowest-scoring groups, split them, repeat until groups
   are single sources (2·beam jobs per level, log2 N levels);
3. reverse triggers from each reached source towards random other targets
   (`reference` pairs in all), divide every pair's norm by its source's
   median, and run the MAD outlier test over these scores.

Cost: 2·N + 2·beam·log2(N) + reference jobs instead of N·(N-1).
Jobs are keyed `"3->7"` (source 3, target 7) or `"0,1,2->7"` (a group).
"""

import math

import numpy as np

from nc_tf.scan import (
    check_scan_inputs,
    check_scan_model,
    detect,
    make_engine,
    new_record,
    open_scan_folder,
    run_jobs,
    scan_identity,
    scan_settings,
)

# A single source class gives few samples per step: partial scans sample more
# per step and stop later than the "fast" preset (overridable as usual).
PARTIAL_DEFAULTS = dict(nb_sample=256, steps=600, early_stop_patience=20, restarts=1, starts=1)


def job_key(sources, target):
    """`"3->7"` for source 3 and target 7; `"0,1,2->7"` for a group."""
    return f"{','.join(str(int(s)) for s in sorted(sources))}->{int(target)}"


def partial_scan(
    model,
    x,
    y,
    targets=None,
    sources=None,
    out_dir=None,
    divide_and_conquer=False,
    beam=2,
    reference=None,
    preset="fast",
    intensity="raw",
    seed=0,
    slots=None,
    prefix="nc",
    progress=True,
    verbose=True,
    model_path=None,
    accept_low_accuracy=False,
    **overrides,
):
    """Searches for source-specific backdoors over (source, target) pairs.

    Args:
        model: the Keras classifier under test.
        x: clean raw images in [0, 255], with samples of every source label.
        y: their integer labels (required: they select source samples).
        targets: candidate target labels. Defaults to `None` (all).
        sources: candidate source labels. Defaults to `None` (all).
        out_dir: scan folder (resumable, as `nc_tf.scan.scan`). Defaults to
            `None`.
        divide_and_conquer: use the group-splitting search instead of all
            pairs. Defaults to `False`.
        beam: groups kept per level by the search. Defaults to `2`.
        reference: divide-and-conquer only: how many reference pairs, split
            between the sources the search reached (each towards random other
            targets, at least 3 per source); each pair is scored against its
            source's median. Defaults to `None`: 4 per reached source.
        preset: `"fast"` (with `PARTIAL_DEFAULTS`: 256 samples per step,
            up to 600 steps, early-stop patience 20) or `"reference"`.
            Defaults to `"fast"`.
        intensity: the model's intensity range. Defaults to `"raw"`.
        seed: random seed. Defaults to `0`.
        slots: jobs optimised together. Defaults to `None`
            (`nc_tf.scan.default_slots`).
        prefix: PNG file name prefix. Defaults to `"nc"`.
        progress: show progress bars. Defaults to `True`.
        verbose: print the MAD report. Defaults to `True`.
        model_path: the model file's path, recorded in `results.json`
            (see `nc_tf.scan.scan`). Defaults to `None`.
        accept_low_accuracy: scan even when the model's clean accuracy on
            `(x, y)` is below 50% (see `nc_tf.scan.scan`). Defaults to `False`.
        **overrides: optimisation settings under their reference names.

    Returns:
        the record (as in `results.json`): `labels` (job key -> norm, attack
        success on the source samples, ...), `partial` (mode, jobs run,
        levels of the search) and `outlier` over the pairs (`flagged`:
        `[[job_key, l1_norm], ...]`).

    Example:

    >>> r = partial_scan(model, x_test, y_test, divide_and_conquer=True)  # doctest: +SKIP
    >>> r["outlier"]["flagged"]  # doctest: +SKIP
    [['3->7', 6.1]]
    """
    if y is None:
        raise ValueError("A partial-backdoor scan needs the labels y of the scan data.")
    if preset == "fast":
        overrides = {
            k: overrides[k] if overrides.get(k) is not None else PARTIAL_DEFAULTS.get(k)
            for k in set(overrides) | set(PARTIAL_DEFAULTS)
        }
    settings = scan_settings(preset, **overrides)
    x, y, num_classes = check_scan_inputs(model, x, y, settings, intensity)
    clean_accuracy, output_form = check_scan_model(model, x, y, intensity, accept_low_accuracy)
    present = set(int(v) for v in np.unique(y))
    targets = list(range(num_classes)) if targets is None else [int(t) for t in targets]
    sources = sorted(present) if sources is None else sorted(int(s) for s in sources)
    for label in targets + sources:
        if not 0 <= label < num_classes:
            raise ValueError(
                f"Label {label} is out of range: the model has labels 0..{num_classes - 1}."
            )
    missing = [s for s in sources if s not in present]
    if missing:
        raise ValueError(f"The scan data has no samples of source label(s) {missing}.")
    record = new_record(
        settings,
        preset,
        intensity,
        seed,
        x,
        num_classes,
        prefix,
        scan_identity(model, x, y, model_path, out_dir),
        partial="divide-and-conquer" if divide_and_conquer else "pairs",
        beam=beam if divide_and_conquer else None,
    )
    folder, triggers = open_scan_folder(out_dir, record)
    record = folder.record
    record.update(clean_accuracy=clean_accuracy, output=output_form)
    engine = make_engine(model, x, y, settings, intensity, seed, slots)

    def run(jobs):
        todo = [j for j in jobs if j[0] not in record["labels"]]
        run_jobs(
            engine,
            todo,
            folder,
            triggers,
            model,
            x,
            y,
            intensity,
            prefix,
            progress=progress,
            restarts=settings["restarts"],
            starts=settings["starts"],
            start_steps=settings["start_steps"],
        )
        return {job[0]: record["labels"][job[0]]["l1_norm"] for job in jobs}

    if not divide_and_conquer:
        pairs = [(job_key([s], t), t, [s]) for t in targets for s in sources if s != t]
        norms = run(pairs)
        info = {"mode": "pairs", "jobs": len(pairs)}
    else:
        counts = {int(c): int(n) for c, n in zip(*np.unique(y, return_counts=True))}
        norms, info = _divide_and_conquer(
            run, targets, sources, beam, reference, seed, counts, settings["attack_succ_threshold"]
        )
    scores = _source_normalised(norms)
    for k, v in scores.items():
        record["labels"][k]["score"] = v
    record["partial"] = info
    record["outlier"] = detect(record, verbose=verbose)
    record["outlier"]["score"] = "l1 / median l1 of the source's pairs"
    folder.save()
    record["triggers"] = triggers
    return record


def _source_normalised(norms):
    """Each pair's norm over the median norm of its source's pairs.

    Some sources are intrinsically easy to flip (a thin "1" needs few
    pixels to become anything); dividing by the source's median keeps those
    rows from crowding out the one pair a backdoor makes small.
    """
    rows = {}
    for key, value in norms.items():
        rows.setdefault(key.split("->")[0], []).append(value)
    medians = {src: float(np.median(v)) for src, v in rows.items()}
    return {k: v / max(medians[k.split("->")[0]], 1e-9) for k, v in norms.items()}


def _split(group):
    half = len(group) // 2
    return group[:half], group[half:]


GROUP_SLACK = 0.8


def group_threshold(group, counts, threshold):
    """The attack success a group's trigger needs: one source's worth of the group.

    A backdoor from one source makes a small trigger flip that source only.
    Asking a group trigger to flip the whole group would hide it behind the
    other sources it must also flip; asking it to flip the share of the
    group's samples that its smallest source holds (times the usual
    threshold and a slack of 0.8 for sampling noise) lets the backdoor's
    small trigger qualify while a group without it still needs a natural,
    larger trigger for its easiest source.
    """
    total = sum(counts[s] for s in group)
    return threshold * GROUP_SLACK * min(counts[s] for s in group) / total


def _divide_and_conquer(run, targets, sources, beam, reference, seed, counts, threshold):
    """The group-splitting search; returns (pair norms for the MAD test, info)."""
    levels, jobs_run = [], 0
    frontier = []  # (group, target) to split next
    for t in targets:
        group = [s for s in sources if s != t]
        if len(group) >= 1:
            frontier.append((group, t))
    reached = set()  # (source, target) pairs the search descended to
    while frontier:
        reached |= {(g[0], t) for g, t in frontier if len(g) == 1}
        children = [(_split(g), t) for g, t in frontier if len(g) > 1]
        if not children:
            break
        jobs = [
            (job_key(h, t), t, h, group_threshold(h, counts, threshold) if len(h) > 1 else None)
            for (a, b), t in children
            for h in (a, b)
        ]
        norms = run(jobs)
        jobs_run += len(jobs)
        scored = []
        for (a, b), t in children:
            na, nb = (max(norms[job_key(h, t)], 1e-6) for h in (a, b))
            scored += [(math.log(na / nb), a, t), (math.log(nb / na), b, t)]
        scored.sort(key=lambda item: item[0])
        keep = scored[:beam]
        levels.append(
            {"jobs": len(jobs), "kept": [[job_key(g, t), round(s, 3)] for s, g, t in keep]}
        )
        frontier = [(g, t) for _, g, t in keep]
    # Reference pairs: each reached source towards random other targets, so every
    # reached pair is scored against its own source (a thin "1" flips to anything
    # cheaply; see _source_normalised). `reference` bounds the total.
    rng = np.random.default_rng(seed)
    reached_sources = sorted({s for s, _ in reached})
    per_source = max(3, -(-(reference or 4 * len(reached_sources)) // max(len(reached_sources), 1)))
    ref_jobs = []
    for s in reached_sources:
        others = [t for t in targets if t != s and (s, t) not in reached]
        pick = rng.permutation(len(others))[:per_source]
        ref_jobs += [(job_key([s], others[i]), others[i], [s]) for i in sorted(pick)]
    ref_norms = run(ref_jobs)
    jobs_run += len(ref_jobs)
    leaf_norms = run([(job_key([s], t), t, [s]) for s, t in sorted(reached)])  # already run
    norms = dict(ref_norms, **leaf_norms)
    all_pairs = [(s, t) for t in targets for s in sources if s != t]
    info = {
        "mode": "divide-and-conquer",
        "jobs": jobs_run,
        "beam": beam,
        "levels": levels,
        "reached": sorted(leaf_norms),
        "reference_pairs": [j[0] for j in ref_jobs],
        "pair_scan_jobs": len(all_pairs),
    }
    return norms, info
