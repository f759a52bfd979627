"""The printed table of zoo models and the per-split counts."""

from collections import Counter

from .triggers import describe

COLUMNS = (
    ("name", 32),
    ("split", 5),
    ("family", 9),
    ("intensity", 9),
    ("output", 7),
    ("format", 6),
    ("trigger", 20),
    ("target", 6),
    ("clean acc", 9),
    ("ASR", 6),
    ("seconds", 7),
    ("gate", 6),
)


def _line(cells):
    return "  ".join(f"{cell:<{width}}" for cell, (_, width) in zip(cells, COLUMNS))


def print_header():
    """Prints the column names of the model table."""
    print(_line([name for name, _ in COLUMNS]), flush=True)


def print_row(meta, resumed=False):
    """Prints one model's row of the table and flushes.

    Args:
        meta: the model's meta dict.
        resumed: mark the row as built by an earlier run. Defaults to `False`.
    """
    asr = meta["attack_success_rate"]
    cells = [
        meta["name"],
        meta["split"],
        meta["family"],
        meta["intensity"],
        meta["output"],
        meta["format"],
        describe(meta["trigger"]),
        "-" if meta["target"] is None else str(meta["target"]),
        f"{meta['clean_accuracy']:.4f}",
        "-" if asr is None else f"{asr:.4f}",
        f"{meta['seconds']:.0f}",
        meta["gate"] + (" (resumed)" if resumed else ""),
    ]
    print(_line(cells), flush=True)


def print_counts(metas):
    """Prints how many backdoored and clean models each dataset's splits hold.

    Args:
        metas: the meta dicts of the zoo.
    """
    counts = Counter((m["dataset"], m["split"], m["backdoored"]) for m in metas)
    seconds = sum(m["seconds"] for m in metas)
    print(f"{'dataset':<8}{'split':<6}{'backdoored':>11}{'clean':>7}")
    for dataset in ("mnist", "gtsrb"):
        for split in ("dev", "test"):
            bad, clean = counts[(dataset, split, True)], counts[(dataset, split, False)]
            print(f"{dataset:<8}{split:<6}{bad:>11}{clean:>7}")
    print(f"total: {len(metas)} models, {seconds / 60:.1f} min of build time")
