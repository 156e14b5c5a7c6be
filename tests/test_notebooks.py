"""Every notebook in notebooks/ is well formed and runs end to end under nbval in smoke mode.

Notebooks are the folder's *.py files; names starting with "_" are the package's own modules
(__init__.py, the shared plot in _plots.py).

The jupytext sources are converted to .ipynb in a temporary folder and run by nbval
(`pytest --nbval-lax`: every cell must run without error) in a child pytest, with
EASE_SMOKE=1 so the notebooks pick the tiny ease.grid.SMOKE sizes by themselves. The kernel
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
from ease.results import record_files, thresholds_path

NOTEBOOKS = sorted(p for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("*.py")
                   if not p.name.startswith("_"))
CONFIG_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
# besides RunConfig's fields, what each notebook's parameters cell may hold
OTHER_PARAMETERS = {"train_run": {"results_dir", "device", "smoke"},
                    "threshold_analysis": {"results_dir", "device", "smoke", "thresholds"}}


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
    assert set(declared) == CONFIG_FIELDS | OTHER_PARAMETERS[source.stem]


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_run_parameters_default_to_run_config(source):
    """RunConfig is the only place with defaults: every field's parameter is None (its default)."""
    declared = papermill.inspect_notebook(jupytext.read(source))
    assert {name: declared[name]["default"] for name in CONFIG_FIELDS} == dict.fromkeys(CONFIG_FIELDS, "None")


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_nbval(source, tmp_path):
    notebook = tmp_path / f"{source.stem}.ipynb"
    jupytext.write(jupytext.read(source), notebook)
    env = {**os.environ, "EASE_SMOKE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                           "-q", notebook.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nbval failed on {source.name}:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    # both notebooks leave a smoke-size run record behind (threshold_analysis trains it if missing)
    records = record_files(tmp_path / SMOKE_RESULTS)
    assert len(records) == 1
    config = json.loads(records[0].read_text())["config"]
    assert {k: config[k] for k in SMOKE} == SMOKE
    # None parameters gave RunConfig's defaults: the document's setup at smoke size
    assert RunConfig.from_dict(config) == RunConfig().replace(**SMOKE)
    if source.stem == "threshold_analysis":
        table = json.loads(thresholds_path(tmp_path / SMOKE_RESULTS, records[0].stem).read_text())
        assert table["run_id"] == records[0].stem and len(table["sweep"]) > 100  # the fine grid by default
