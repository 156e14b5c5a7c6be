"""Every notebook in notebooks/ is well formed and runs end to end under nbval in smoke mode.

The jupytext sources are converted to .ipynb in a temporary folder and run by nbval
(`pytest --nbval-lax`: every cell must run without error) in a child pytest, with
EASE_SMOKE=1 so the notebooks pick the tiny ease.pipeline.SMOKE sizes by themselves. The kernel
runs in that folder, so the smoke results land there too. Needs WikiText-2 (EASE_DATA_DIR).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import papermill
import pytest

from ease.config import RunConfig
from ease.pipeline import SMOKE, SMOKE_RESULTS, TRAIN_NOTEBOOK

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))
KNOBS = {f.name for f in dataclasses.fields(RunConfig)} | {"results_dir", "device", "smoke"}


def test_the_expected_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert {"train_run", "threshold_analysis"} <= names
    assert TRAIN_NOTEBOOK in NOTEBOOKS  # the pipeline runs this one


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_parameterised(source):
    nb = jupytext.read(source)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    declared = papermill.inspect_notebook(nb)
    assert KNOBS <= set(declared), f"parameters missing: {sorted(KNOBS - set(declared))}"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_nbval(source, tmp_path):
    notebook = tmp_path / f"{source.stem}.ipynb"
    jupytext.write(jupytext.read(source), notebook)
    env = {**os.environ, "EASE_SMOKE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                           "-q", notebook.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nbval failed on {source.name}:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    # both notebooks leave a smoke-size run record behind (threshold_analysis trains it if missing)
    records = list((tmp_path / SMOKE_RESULTS / "runs").glob("*.json"))
    assert len(records) == 1
    config = json.loads(records[0].read_text())["config"]
    assert {k: config[k] for k in SMOKE} == SMOKE
    if source.stem == "threshold_analysis":
        table = json.loads(next((tmp_path / SMOKE_RESULTS / "thresholds").glob("*.json")).read_text())
        assert table["run_id"] == records[0].stem and len(table["sweep"]) > 100  # the fine grid by default
