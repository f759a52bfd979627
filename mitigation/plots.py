"""PNG charts for mitigation reports (matplotlib, headless)."""

import os

from nc_tf import io


def line_plot(path, x, series, xlabel, ylabel, title, xlog=False):
    """Writes a line chart with one line per named series.

    Args:
        path: output PNG path.
        x: the shared x values.
        series: dict `{name: y values}`.
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: chart title.
        xlog: logarithmic x axis. Defaults to `False`.

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, ys in series.items():
        ax.plot(x, ys, marker=".", label=name)
    if xlog:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with io.atomic_file(path, "wb") as f:
        fig.savefig(f, format=os.path.splitext(path)[1][1:] or "png")
    plt.close(fig)
    return path
