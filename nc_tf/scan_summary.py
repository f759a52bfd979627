"""The summary of `nc_tf.scan_many`: `summary.json`, `summary.csv` and `index.html`.

One line per model: `model`, `sha256`, `status` (`"ok"`, `"pending"` or
`"failed"`), `flagged`, `anomaly_index`, `clean_accuracy`, `wall_s`,
`scan_dir`, and `error` or `report` when there is one. The index page links
each model's `results.json` and, once it exists, its `report.html`.
"""

import csv
import os

from nc_tf import io
from nc_tf.scan_folder import RESULTS

SUMMARY, SUMMARY_CSV, INDEX = "summary.json", "summary.csv", "index.html"
COLUMNS = (
    "model",
    "sha256",
    "status",
    "flagged",
    "anomaly_index",
    "clean_accuracy",
    "wall_s",
    "scan_dir",
)


def summary_row(path, sha256, scan_dir, result):
    """One model's line of `summary.json` from its task result (see `scan_many`)."""
    row = dict.fromkeys(COLUMNS)
    row.update(model=path, sha256=sha256, status=result["status"], scan_dir=scan_dir)
    row["wall_s"] = result.get("wall_s")
    if result["status"] != "ok":
        row["error"] = result.get("error")
        return row
    record = result["record"]
    outlier = record.get("outlier") or {}
    row["flagged"] = [int(label) for label, _ in outlier.get("flagged", [])]
    row["anomaly_index"] = outlier.get("anomaly_index")
    row["clean_accuracy"] = record.get("clean_accuracy")
    report = os.path.join(scan_dir, "report.html")
    if os.path.exists(report):
        row["report"] = report
    return row


def write_summary(out_dir, rows):
    """Writes `summary.json`, `summary.csv` and `index.html` of `rows` into `out_dir`."""
    io.write_json(os.path.join(out_dir, SUMMARY), {"models": rows})
    with io.atomic_file(os.path.join(out_dir, SUMMARY_CSV), newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS + ("error",))
        for row in rows:
            cells = dict(row, flagged=";".join(map(str, row.get("flagged") or [])))
            writer.writerow([_cell(cells.get(c)) for c in COLUMNS + ("error",)])
    _write_index(out_dir, rows)


def _cell(value):
    return "" if value is None else value


def _write_index(out_dir, rows):
    """The index page: one line per model, linking its results and, once it exists, its report."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("nc_tf", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
    )
    lines = []
    for row in rows:
        # "./" first: a relative link never reads as a scheme ("javascript:...")
        link = lambda p: "./" + os.path.relpath(p, out_dir) if p and os.path.exists(p) else None  # noqa: E731
        report = os.path.join(row["scan_dir"], "report.html") if row.get("scan_dir") else None
        lines.append(
            dict(
                row,
                name=os.path.basename(row["model"]),  # text only (escaped), never a link
                results=link(
                    os.path.join(row["scan_dir"], RESULTS) if row.get("scan_dir") else None
                ),
                report=link(report),
            )
        )
    page = env.get_template("scan_many_index.html.j2").render(rows=lines)
    with io.atomic_file(os.path.join(out_dir, INDEX), encoding="utf-8") as f:
        f.write(page)


def summary_lines(summary, out_dir):
    """The printout of a summary: one line per model, then where the files are."""
    lines = [
        f"{m['status']:7} {m['model']}: "
        + (f"flagged {m['flagged'] or 'none'}" if m["status"] == "ok" else str(m.get("error")))
        for m in summary["models"]
    ]
    lines.append(f"summary: {os.path.join(out_dir, SUMMARY)}")
    lines.append(f"index:   {os.path.join(out_dir, INDEX)}")
    return lines
