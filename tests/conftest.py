"""Shared fixtures. `built_book`: the whole book, built once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def book_results() -> Path:
    """The results folder the book is built from: $EASE_RESULTS, else the committed results/."""
    results = Path(os.environ.get("EASE_RESULTS") or REPO / "results").resolve()
    if not list((results / "runs").glob("*.json")):
        pytest.fail(f"no run records in {results / 'runs'}: the book cannot be built. Run the grid first "
                    f"(python -m ease.pipeline --grid exp5-6 --results {results}) or set EASE_RESULTS "
                    "to a results folder that has records and executed notebooks.")
    return results


@pytest.fixture(scope="session")
def built_book(book_results: Path, tmp_path_factory) -> Path:
    """Build the book with book/build.py and return its site folder (OUT/html).

    OUT is a fresh temporary folder (a cold build), or $EASE_BOOK_OUT to reuse a build folder
    and its execution cache (e.g. _build after `make book`).
    """
    out = Path(os.environ.get("EASE_BOOK_OUT") or tmp_path_factory.mktemp("book")).resolve()
    # The book needs every run's lab notebook. On a fresh clone the records are committed but their
    # executed notebooks are not: the pipeline renders them from the records (no training). It must
    # never train here, so a missing record fails the test instead.
    from ease.pipeline import expand_grid, load_grid, run_grid
    from ease.report import BOOK_GRID
    from ease.results import find_record

    configs = expand_grid(load_grid(BOOK_GRID))
    missing = [c.run_id for c in configs if find_record(c, book_results) is None]
    if missing:
        pytest.fail(f"{len(missing)} record(s) of the book's grid are missing in {book_results}: {missing}; "
                    f"run `make book` (or python -m ease.pipeline --grid {BOOK_GRID}) first")
    summary = run_grid(configs, book_results, progress=False)
    if not summary.ok:
        pytest.fail("rendering the lab notebooks failed:\n" + summary.report())
    proc = subprocess.run([sys.executable, str(REPO / "book" / "build.py"), "--results", str(book_results),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"book build failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return out / "html"
