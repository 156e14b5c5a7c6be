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
    from ease.results import record_files, runs_dir

    results = Path(os.environ.get("EASE_RESULTS") or REPO / "results").resolve()
    if not record_files(results):
        pytest.fail(f"no run records in {runs_dir(results)}: the book cannot be built. Run the grid first "
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
    # The book reads every run of its grids and the lab notebook of every run of its main grid. On a
    # fresh clone the records and analyses are committed but the executed notebooks are not: the
    # pipeline renders them from the records (no training). It must never train here, so a missing
    # record or analysis fails the test instead.
    from ease.analysis import load_analysis
    from ease.grid import BOOK_GRIDS, analyses_wanted, expand_grid, load_grid
    from ease.pipeline import run_grid
    from ease.results import find_record

    missing = []
    for name in BOOK_GRIDS:
        grid = load_grid(name)
        wanted = analyses_wanted(grid)  # per entry: an entry may ask for analyses the rest of its grid lacks
        for config in expand_grid(grid):
            if find_record(config, book_results) is None:
                missing.append(f"{config.run_id} (record)")
            elif wanted[config.run_id] and load_analysis(config, book_results,
                                                       held_out=wanted[config.run_id] is True) is None:
                missing.append(f"{config.run_id} (analysis)")
    if missing:
        pytest.fail(f"{len(missing)} run(s) of the book's grids are incomplete in {book_results}: {missing[:10]}; "
                    f"run `make book` (python -m ease.pipeline --book) first")
    summary = run_grid(expand_grid(load_grid(BOOK_GRIDS[0])), book_results, progress=False)
    if not summary.ok:
        pytest.fail("rendering the lab notebooks failed:\n" + summary.report())
    proc = subprocess.run([sys.executable, str(REPO / "book" / "build.py"), "--results", str(book_results),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"book build failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return out / "html"


# --- CI notices what it did not check ----------------------------------------------------------------
# Tests marked `ci_required` may skip on a developer's machine that lacks what they need (Chromium, the
# WikiText-2 copy), but in CI (CI=true) such a skip is a failure: a green CI must mean they ran.
def pytest_configure(config):
    config.addinivalue_line("markers", "ci_required: skipping this test fails the run when CI=true")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("ci_required") and os.environ.get("CI", "").lower() == "true":
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {reason}"
