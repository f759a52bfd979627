"""bench/reproduce.py keeps what docs/results.md shows when the figures are gone."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import reproduce  # noqa: E402

ROW = next(row for row in reproduce.ROWS if row.id == "t2-mnist-asr")


def _measure(runs, asr, date):
    """Writes the figures and printed output of ROW's command under `runs`."""
    files = reproduce.Files(str(runs), ROW.command)
    os.makedirs(runs, exist_ok=True)
    figures = {"mnist": {"asr": asr}, "_run": {"date": date, "wall_s": 3}}
    reproduce.write_json(files.figures, figures)
    with open(files.out, "w") as f:
        f.write(f"mnist ASR {asr}\n")


def _row_line(text):
    return next(line for line in text.splitlines() if line.startswith(f"| {ROW.id} |"))


@pytest.fixture
def results(tmp_path):
    """A results file written from one measured row, with a kept section below the marker."""
    path = tmp_path / "results.md"
    path.write_text(f"# Results\n\n{reproduce.MARKER}\nkept text\n")
    _measure(tmp_path / "first", 99.5, "2026-01-02")
    reproduce.write_results(str(path), str(tmp_path / "first"))
    return path


def test_fresh_checkout_keeps_rows_outputs_and_kept_part(results, tmp_path):
    before = results.read_text()
    assert "| 99.50 |" in _row_line(before) and "2026-01-02" in _row_line(before)
    reproduce.write_results(str(results), str(tmp_path / "empty"))
    after = results.read_text()
    assert after == before
    assert "mnist ASR 99.5" in after and after.endswith("kept text\n")


def test_new_figures_replace_the_kept_row(results, tmp_path):
    _measure(tmp_path / "second", 90.0, "2026-02-03")
    reproduce.write_results(str(results), str(tmp_path / "second"))
    line = _row_line(results.read_text())
    assert "| 90.00 |" in line and "MISS" in line and "2026-02-03" in line
    assert "mnist ASR 99.5" not in results.read_text()


def test_unmeasured_rows_are_not_kept(tmp_path):
    path = tmp_path / "results.md"
    reproduce.write_results(str(path), str(tmp_path / "empty"))
    assert reproduce.previous_results(str(path)) == ({}, {})
    assert "not run yet" in _row_line(path.read_text())
