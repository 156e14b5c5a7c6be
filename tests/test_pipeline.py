"""The grid pipeline: builtin grids, grid expansion and validation, the notebook's parameters, the
installed package, and real runs through Dask and papermill.

The real runs train smoke-size models (ease.grid.SMOKE) on WikiText-2, so they need the data
(EASE_DATA_DIR or the hub) and take about a minute on two cores. The faults (kills, lost workers,
locks, bad inputs) are tested in test_faults.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jupytext
import papermill
import pytest

from ease.config import DOC_THRESHOLDS, RunConfig
from ease.grid import BOOK_GRIDS, SMOKE_TEST_CHARS, builtin_grids
from ease.pipeline import (SMOKE, TRAIN_NOTEBOOK, GridError, executed_path, expand_grid,
                           load_grid, main, notebook_config, notebook_parameters, run_grid)
from ease.results import find_record, record_path, runs_dir
from fault_hook import hooked_env, wait_for_kernels

REPO = Path(__file__).resolve().parents[1]
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
ALL_DEFAULT = dict.fromkeys(CONFIG_FIELDS)  # a notebook's parameters left as they are: every field None


def smoke(**fields) -> RunConfig:
    return RunConfig(**fields).replace(**SMOKE)


# --- grid expansion ------------------------------------------------------------------------
def test_builtin_grid_is_the_documents_design():
    configs = expand_grid(load_grid("exp5-6"))
    cells = {(c.setting, c.alpha) for c in configs}
    assert cells == {("A", 0.3), ("A", 0.5), ("A", 0.7), ("B", 0.7)}  # Exp 5 (A at three alphas) + Exp 6 (B at 0.7)
    for cell in cells:
        assert sorted(c.seed for c in configs if (c.setting, c.alpha) == cell) == [0, 1, 2, 3, 4]
    assert len({c.run_id for c in configs}) == len(configs) == 20
    default = RunConfig().to_dict()
    for c in configs:
        # nothing but the cell and the seed differs from the default (document) setup, besides reading the
        # whole test split once after training (which trains nothing and chooses nothing)
        differing = {k for k, v in c.to_dict().items() if v != default[k]}
        assert differing <= {"setting", "alpha", "weights", "seed", "test_chars"} and c.test_chars == -1
        assert set(DOC_THRESHOLDS) <= set(c.sweep_thresholds)
    b = next(c for c in configs if c.setting == "B")
    assert b.weights == {1: 0.7, 2: 1.0, 3: 0.3}


# --- builtin grids: the YAML files of grids/ ------------------------------------------------------
def test_builtin_grids_are_the_yaml_files_of_grids():
    assert builtin_grids() == sorted(p.stem for p in (REPO / "grids").glob("*.yaml"))
    assert set(BOOK_GRIDS) <= set(builtin_grids()) and len(set(BOOK_GRIDS)) == len(BOOK_GRIDS)


@pytest.mark.parametrize("name", sorted((p.stem for p in (REPO / "grids").glob("*.yaml"))))
def test_a_grid_by_name_is_the_grid_by_path(name, monkeypatch):
    monkeypatch.chdir(REPO)
    by_name = expand_grid(load_grid(name))
    assert by_name == expand_grid(load_grid(f"grids/{name}.yaml"))


@pytest.mark.parametrize("name", BOOK_GRIDS)
def test_every_run_of_the_books_grids_has_its_committed_record(name):
    """The grids' run ids are those of the committed records: a changed grid file would orphan them."""
    configs = expand_grid(load_grid(name))
    missing = [c.run_id for c in configs if find_record(c, REPO / "results") is None]
    assert not missing, f"{len(missing)} of {len(configs)} runs of {name} have no record in results/runs"


def test_audit_grids_are_what_the_book_says():
    forensics = expand_grid(load_grid("forensics"))
    assert len(forensics) == 2 * 4 * 5
    assert {c.corpus for c in forensics} == {"wikitext-2", "placeholder"}
    assert {(c.train_chars, c.val_chars, c.sweep_weights, c.patience) for c in forensics} == {
        (100_000, 10_000, "last", 0)}
    dense = expand_grid(load_grid("dense"))
    assert {(c.n_layers, tuple(c.weights.items())) for c in dense} == {(1, ((1, 1.0),)), (2, ((2, 1.0),)),
                                                                      (3, ((3, 1.0),))}
    alpha = expand_grid(load_grid("alpha"))
    assert sorted({c.alpha for c in alpha}) == [i / 10 for i in range(11)]
    assert len(alpha) == 2 * 11 * 3
    regimes = expand_grid(load_grid("regimes"))
    assert {(c.lr_schedule, c.patience) for c in regimes} == {("cosine", 3)}
    # the document's-rule runs the alpha grid shares with exp5-6 are the same runs, not new ones
    shared = {c.run_id for c in alpha} & {c.run_id for c in expand_grid(load_grid("exp5-6"))}
    assert len(shared) == 4 * 3


def test_list_values_expand_as_a_product_ordered_seed_by_seed():
    grid = {"seeds": 2, "runs": [{"setting": "A", "alpha": [0.3, 0.5], "norm": ["post", "pre"]},
                                 {"setting": "custom", "alpha": None, "weights": {"1": 0.5, "3": 0.5}}]}
    configs = expand_grid(grid)
    assert len(configs) == 2 * (2 * 2 + 1)
    assert [c.seed for c in configs] == [0] * 5 + [1] * 5
    assert {(c.alpha, c.norm) for c in configs if c.setting == "A"} == {(0.3, "post"), (0.3, "pre"),
                                                                      (0.5, "post"), (0.5, "pre")}
    custom = [c for c in configs if c.setting == "custom"]
    assert [c.weights for c in custom] == [{1: 0.5, 3: 0.5}] * 2
    assert len({c.run_id for c in configs}) == len(configs)


def test_base_is_shared_and_entries_override_it():
    grid = {"base": {"max_epochs": 5, "lr": 0.002}, "runs": [{"setting": "A"}, {"setting": "B", "lr": 0.0005}]}
    a, b = expand_grid(grid, seeds=1)
    assert (a.max_epochs, a.lr) == (5, 0.002)
    assert (b.max_epochs, b.lr) == (5, 0.0005)


def test_seeds_count_list_and_override():
    grid = {"seeds": [3, 7], "runs": [{"setting": "A"}]}
    assert [c.seed for c in expand_grid(grid)] == [3, 7]
    assert [c.seed for c in expand_grid(grid, seeds=1)] == [0]  # --seeds N overrides the grid's seeds
    assert [c.seed for c in expand_grid({"runs": [{"setting": "A"}]})] == [0, 1, 2]  # default 3


def test_an_entry_may_set_its_own_seeds():
    grid = {"seeds": 2, "runs": [{"setting": "A"}, {"setting": "B", "seeds": 4}, {"setting": "custom", "alpha": None,
                                                                               "weights": {3: 1.0}, "seeds": [5]}]}
    configs = expand_grid(grid)
    assert [(c.setting, c.seed) for c in configs] == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("B", 2), ("B", 3),
                                                      ("custom", 5)]
    # the same config at the grid's seeds keeps its run ids: only runs are added
    assert {c.run_id for c in expand_grid({"seeds": 2, "runs": [{"setting": "B"}]})} < {c.run_id for c in configs}
    assert [c.seed for c in expand_grid(grid, seeds=1)] == [0, 0, 0]  # --seeds N overrides every entry's too
    with pytest.raises(GridError, match="seeds must be"):
        expand_grid({"runs": [{"setting": "A", "seeds": 0}]})


def test_an_entry_may_ask_for_its_own_analyses():
    from ease.grid import analyses_wanted

    grid = {"seeds": 2, "analyse": "validation",
            "runs": [{"setting": "A"}, {"setting": "B", "seeds": 3, "analyse": True}, {"setting": "A", "alpha": 0.3,
                                                                                  "analyse": False}]}
    wanted = analyses_wanted(grid)
    assert list(wanted) == [c.run_id for c in expand_grid(grid)]
    by = {(c.setting, c.alpha, c.seed): wanted[c.run_id] for c in expand_grid(grid)}
    assert by == {("A", 0.7, 0): "validation", ("A", 0.7, 1): "validation", ("A", 0.3, 0): False,
                  ("A", 0.3, 1): False, ("B", 0.7, 0): True, ("B", 0.7, 1): True, ("B", 0.7, 2): True}
    # `analyse` is not a run config field: the run ids are those of the grid without it
    plain = {"seeds": 2, "runs": [{"setting": "A"}, {"setting": "B", "seeds": 3}, {"setting": "A", "alpha": 0.3}]}
    assert [c.run_id for c in expand_grid(plain)] == list(wanted)


def test_a_config_listed_twice_runs_once():
    grid = {"runs": [{"setting": "A", "alpha": [0.5, 0.7]}, {"setting": "A", "alpha": 0.7}]}
    configs = expand_grid(grid, seeds=2)
    assert sorted((c.alpha, c.seed) for c in configs) == [(0.5, 0), (0.5, 1), (0.7, 0), (0.7, 1)]


def test_sweep_thresholds_list_is_one_value_and_list_of_lists_expands():
    one = expand_grid({"runs": [{"sweep_thresholds": [0.9, 0.5]}]}, seeds=1)
    assert [c.sweep_thresholds for c in one] == [(0.5, 0.9)]
    two = expand_grid({"runs": [{"sweep_thresholds": [[0.5], [0.6, 0.9]]}]}, seeds=1)
    assert [c.sweep_thresholds for c in two] == [(0.5,), (0.6, 0.9)]


def test_smoke_shrinks_sizes_only():
    full = expand_grid(load_grid("exp5-6"), seeds=1)
    small = expand_grid(load_grid("exp5-6"), seeds=1, smoke=True)
    assert len(full) == len(small)
    for f, s in zip(full, small):
        assert {k: getattr(s, k) for k in SMOKE} == SMOKE
        assert f.test_chars == -1  # the grid reads the whole test split; at smoke size a little of it
        assert f.replace(**SMOKE, test_chars=SMOKE_TEST_CHARS) == s


def test_yaml_and_json_grid_files_give_the_same_runs(tmp_path):
    yaml_file = tmp_path / "grid.yaml"
    yaml_file.write_text("seeds: 2\nbase: {max_epochs: 4}\nruns:\n  - {setting: A, alpha: [0.3, 0.7]}\n"
                         "  - setting: custom\n    alpha: null\n    weights: {1: 0.25, 3: 0.75}\n")
    json_file = tmp_path / "grid.json"
    json_file.write_text(json.dumps({"seeds": 2, "base": {"max_epochs": 4},
                                     "runs": [{"setting": "A", "alpha": [0.3, 0.7]},
                                              {"setting": "custom", "alpha": None, "weights": {"1": 0.25, "3": 0.75}}]}))
    from_yaml = expand_grid(load_grid(yaml_file))
    from_json = expand_grid(load_grid(json_file))
    assert [c.run_id for c in from_yaml] == [c.run_id for c in from_json]
    assert len(from_yaml) == 6 and all(c.max_epochs == 4 for c in from_yaml)


def test_shipped_example_grid_is_valid():
    configs = expand_grid(load_grid(REPO / "examples" / "grid.yaml"))
    assert len(configs) >= 2
    assert len({c.run_id for c in configs}) == len(configs)


@pytest.mark.parametrize("grid, words", [
    ({"runs": [{"setting": "A", "alhpa": 0.3}]}, ["entry 1", "alhpa"]),
    ({"runs": [{"setting": "A"}, {"setting": "A", "alpha": [0.5, 1.5]}]}, ["entry 2", "alpha", "1.5"]),
    ({"runs": [{"setting": "C"}]}, ["entry 1", "unknown setting"]),
    ({"runs": [{"setting": "A", "weights": {"1": 1.0}}]}, ["entry 1", "custom"]),
    ({"runs": [{"setting": "custom"}]}, ["entry 1", "weights"]),
    ({"runs": [{"setting": "custom", "weights": {"1": 0.5, "7": 0.5}}]}, ["entry 1", "layer 7"]),
    ({"runs": [{"n_layers": "3"}]}, ["entry 1", "n_layers"]),
    ({"runs": [{"sweep_thresholds": 5}]}, ["entry 1", "sweep_thresholds"]),
    ({"runs": [{"alpha": []}]}, ["entry 1", "alpha", "empty"]),
    ({"runs": [{"seed": 1}]}, ["entry 1", "seeds"]),
    ({"runs": ["A"]}, ["entry 1", "mapping"]),
    ({"base": {"dim": 30}, "runs": [{"setting": "A"}]}, ["entry 1", "dim"]),
    ({"seeds": 0, "runs": [{"setting": "A"}]}, ["seeds", "at least 1"]),
    ({"seeds": "3", "runs": [{"setting": "A"}]}, ["seeds"]),
    ({"seeds": [1, 1], "runs": [{"setting": "A"}]}, ["seeds", "repeats"]),
    ({"runs": []}, ["runs", "non-empty"]),
    ({"setting": "A"}, ["unknown grid key", "setting"]),
    ({"analyse": "yes", "runs": [{"setting": "A"}]}, ["analyse", "true, false or validation"]),
    ({"runs": [{"setting": "A", "analyse": 1}]}, ["entry 1", "analyse", "true, false or validation"]),
    ([{"setting": "A"}], ["mapping"]),
])
def test_bad_grids_are_rejected_with_a_clear_error(grid, words):
    with pytest.raises(GridError) as info:
        expand_grid(grid)
    for word in words:
        assert word in str(info.value)


def test_bad_grid_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("runs: [ {setting: A\n")
    with pytest.raises(GridError, match="could not be parsed"):
        load_grid(broken)
    text = tmp_path / "grid.txt"
    text.write_text("{}")
    with pytest.raises(GridError, match=r"\.yaml"):
        load_grid(text)
    with pytest.raises(GridError, match="exp5-6"):  # names the builtin grids
        load_grid("exp-nonexistent")


def test_cli_rejects_a_bad_entry_before_running_anything(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    # the first entry is fine; the bad third one must stop the whole grid before any run starts
    grid.write_text(json.dumps({"runs": [{"setting": "A"}, {"setting": "B"}, {"setting": "A", "alpha": 2}]}))
    results = tmp_path / "results"
    assert main(["--grid", str(grid), "--results", str(results), "--smoke"]) == 2
    err = capsys.readouterr().err
    assert "grid entry 3" in err and "alpha" in err
    assert not results.exists()


def test_cli_dry_run_lists_runs_without_running(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["--grid", "exp5-6", "--seeds", "1", "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for config in expand_grid(load_grid("exp5-6"), seeds=1):
        assert config.run_id in out
    assert not results.exists()


# --- the notebook's parameters --------------------------------------------------------------
@pytest.mark.parametrize("config", [
    RunConfig(),
    RunConfig(setting="B", alpha=0.3, seed=4, norm="pre", lr=5e-4, shuffle=True, sweep_thresholds=(0.5, 0.9)),
    RunConfig(setting="custom", alpha=None, weights={1: 0.2, 2: 0.3, 3: 0.5}, exit_layer=2, threshold=0.8),
    RunConfig(setting="custom", alpha=0.7, weights={1: 0.5, 3: 0.5}),  # alpha as a label of a custom loss
])
def test_injected_parameters_rebuild_the_same_config(config, monkeypatch):
    monkeypatch.setenv("EASE_SMOKE", "1")  # the injected smoke=False must win over the environment
    params = notebook_parameters(config, "/somewhere/results")
    declared = papermill.inspect_notebook(jupytext.read(TRAIN_NOTEBOOK))
    assert set(params) <= set(declared), "the notebook must declare every parameter the pipeline injects"
    assert set(CONFIG_FIELDS) <= set(params)
    rebuilt, results_dir, is_smoke = notebook_config(params, smoke=params["smoke"], results_dir=params["results_dir"])
    assert rebuilt == config and rebuilt.run_id == config.run_id
    assert results_dir == Path("/somewhere/results") and is_smoke is False


def test_none_parameters_take_run_configs_defaults(monkeypatch):
    monkeypatch.delenv("EASE_SMOKE", raising=False)
    config, _, _ = notebook_config(ALL_DEFAULT)
    assert config == RunConfig()
    config, _, _ = notebook_config({**ALL_DEFAULT, "setting": "B", "norm": "pre"})
    assert (config.setting, config.alpha, config.norm, config.max_epochs) == ("B", 0.7, "pre", 50)
    assert config == RunConfig(setting="B", norm="pre")


def test_a_custom_loss_keeps_alpha_none(monkeypatch):
    monkeypatch.delenv("EASE_SMOKE", raising=False)
    weights = {1: 0.5, 3: 0.5}
    config, _, _ = notebook_config({**ALL_DEFAULT, "setting": "custom", "weights": weights})
    assert config.alpha is None and config == RunConfig(setting="custom", alpha=None, weights=weights)
    labelled, _, _ = notebook_config({**ALL_DEFAULT, "setting": "custom", "weights": weights, "alpha": 0.25})
    assert labelled.alpha == 0.25 and labelled.run_id != config.run_id


def test_parameters_missing_a_field_are_an_error():
    with pytest.raises(ValueError, match="n_heads"):
        notebook_config({k: v for k, v in ALL_DEFAULT.items() if k != "n_heads"})


def test_notebook_config_smoke_from_environment(monkeypatch):
    fields = {**ALL_DEFAULT, "setting": "A", "alpha": 0.5}
    monkeypatch.setenv("EASE_SMOKE", "1")
    config, results_dir, is_smoke = notebook_config(fields)
    assert is_smoke and results_dir == Path("results/smoke")
    assert {k: getattr(config, k) for k in SMOKE} == SMOKE
    monkeypatch.delenv("EASE_SMOKE")
    config, results_dir, is_smoke = notebook_config(fields)
    assert not is_smoke and results_dir == Path("results") and config == RunConfig(alpha=0.5)


# --- the installed package -----------------------------------------------------------------------
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "ease", "grids", "notebooks", "book/companion")


def test_the_installed_package_finds_its_grids_and_notebook_from_any_folder(tmp_path):
    """After `pip install .` (here into a folder of its own) grid names and the training notebook
    resolve with no repository around: they are package data, not paths into the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for part in PACKAGE_SOURCES:  # a copy: building in the checkout would leave build/ behind
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / part, source / part)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import json, ease, ease.notebooks._plots; from ease.grid import BOOK_GRIDS, builtin_grids, expand_grid, "
             "load_grid; from ease.pipeline import TRAIN_NOTEBOOK; print(json.dumps({'ease': ease.__file__, "
             "'notebook': str(TRAIN_NOTEBOOK), 'grids': builtin_grids(), "
             "'ids': {n: [c.run_id for c in expand_grid(load_grid(n))] for n in BOOK_GRIDS}}))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, check=True,
                                    capture_output=True, text=True).stdout)
    assert Path(out["ease"]).is_relative_to(site) and Path(out["notebook"]).is_relative_to(site)
    assert Path(out["notebook"]).read_text() == TRAIN_NOTEBOOK.read_text()
    assert out["grids"] == builtin_grids()
    assert out["ids"] == {n: [c.run_id for c in expand_grid(load_grid(REPO / "grids" / f"{n}.yaml"))]
                          for n in BOOK_GRIDS}
    dry = subprocess.run([sys.executable, "-m", "ease.pipeline", "--grid", "dense", "--dry-run", "--results",
                          str(tmp_path / "results")], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert sum(run_id in dry.stdout for run_id in out["ids"]["dense"]) == 15


# --- real runs: Dask + papermill ------------------------------------------------------------
def test_a_record_that_does_not_match_its_id_is_reported_not_overwritten(tmp_path):
    config = smoke(setting="A")
    path = record_path(tmp_path, config.run_id)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"run_id": config.run_id, "config": smoke(setting="B").to_dict()}))
    summary = run_grid([config], tmp_path, workers=1, progress=False)
    assert [r["run_id"] for r in summary.failed] == [config.run_id] and not summary.done
    assert "different config" in summary.failed[0]["error"]
    assert json.loads(path.read_text())["config"]["setting"] == "B"


# Valid as a config and its data is there, so nothing stops it before it runs; it fails in training:
# 5,000 validation characters make 78 windows of 64, not one batch of 128.
FAILS_AT_RUN_TIME = {"batch_size": 128}
FAILURE_WORDS = "no full batch"


def test_run_grid_on_an_existing_cluster_reports_a_failing_run(tmp_path):
    from distributed import LocalCluster

    bad = smoke(setting="A", **FAILS_AT_RUN_TIME)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = run_grid([bad], tmp_path / "results", scheduler=cluster.scheduler_address, progress=False)
    assert not summary.ok and summary.done == [] and summary.skipped == []
    [failed] = summary.failed
    assert failed["run_id"] == bad.run_id and FAILURE_WORDS in failed["error"]
    notebook = Path(failed["notebook"])
    assert notebook == executed_path((tmp_path / "results").resolve(), bad.run_id)
    assert FAILURE_WORDS in notebook.read_text()  # the executed notebook, sent back by the worker, holds the traceback
    assert str(notebook) in summary.report()
    assert find_record(bad, tmp_path / "results") is None


def _stamp(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, path.read_bytes()


def test_pipeline_survives_a_kill_resumes_skips_finished_runs_and_reports_failures(tmp_path):
    """One grid through the command line, a local cluster of 2 workers and papermill, twice.

    Runs: `quick` (1 epoch), `slow` (10 epochs, killed mid-run the first time), and `broken`
    (a valid config on data that is there, failing at run time). The kill comes from the fault
    hook (tests/fault_hook.py) as soon as both have happened: quick's record is in place and slow's
    worker has started it (10 epochs: it is still training).
    """
    results = tmp_path / "results"
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"seeds": 1, "base": SMOKE, "runs": [
        {"setting": "A"},
        {"setting": "B", "max_epochs": 10, "patience": 10},
        {"setting": "A", **FAILS_AT_RUN_TIME}]}))
    quick, slow, broken = expand_grid(load_grid(grid))
    command = [sys.executable, "-m", "ease.pipeline", "--grid", str(grid), "--results", str(results), "--workers", "2"]

    # 1. quick and slow start together; once quick is recorded and slow has started, kill everything
    hook_log = tmp_path / "hook.jsonl"
    env = hooked_env(hook_log, FAULT_KILL_WHEN=f"wrote-record {quick.run_id};training {slow.run_id}")
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                           start_new_session=True)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    # the notebook kernels run in sessions of their own: they must notice and exit by themselves
    alive = wait_for_kernels(hook_log)
    assert not alive, f"processes left running after the pipeline was killed: {alive}"
    assert find_record(slow, results) is None  # the interrupted run left no record...
    assert not list(runs_dir(results).glob("*.tmp"))  # ...not even a half-written one
    quick_record = _stamp(record_path(results, quick.run_id))

    # 2. the same command again: quick is skipped, slow is run to the end, broken fails alone
    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # non-zero: a run failed
    assert "1 done, 1 skipped (already finished), 1 failed" in rerun.stdout
    assert _stamp(record_path(results, quick.run_id)) == quick_record  # not retrained, not rewritten
    record = find_record(slow, results)
    assert record is not None and record["metrics"]["epochs_run"] >= 1
    assert executed_path(results, slow.run_id).is_file()
    assert find_record(broken, results) is None
    notebook = executed_path(results.resolve(), broken.run_id)
    assert f"FAILED {broken.run_id}" in rerun.stdout and str(notebook) in rerun.stdout
    assert FAILURE_WORDS in notebook.read_text()  # the executed notebook holds the error


def test_analysis_stage_and_lab_notebooks_flag(tmp_path):
    """A grid asking for analyses gets one per run; a missing one is computed alone, from the checkpoint."""
    from ease.analysis import load_analysis
    from ease.results import analysis_path

    results = tmp_path / "results"
    config = smoke(setting="A")
    first = run_grid([config], results, workers=1, progress=False, analyse=True)
    assert first.ok and len(first.done) == 1, first.report()
    analysis = load_analysis(config, results)
    assert analysis["run_id"] == config.run_id and analysis["real_exit"] and analysis["samples"]
    record = _stamp(record_path(results, config.run_id))
    notebook = _stamp(executed_path(results, config.run_id))

    assert run_grid([config], results, workers=1, progress=False, analyse=True).skipped == [config.run_id]
    analysis_path(results, config.run_id).unlink()
    again = run_grid([config], results, workers=1, progress=False, analyse=True)
    assert again.ok and len(again.done) == 1 and again.done[0]["notebook"] is None  # the notebook did not run
    assert load_analysis(config, results) == analysis  # deterministic
    assert _stamp(record_path(results, config.run_id)) == record
    assert _stamp(executed_path(results, config.run_id)) == notebook

    # a grid that reads only the validation parts (`analyse: validation`) takes the analysis as it is, and
    # computes one without the held-out part where it is missing; a full analysis then computes that part again
    held = smoke(setting="A", test_chars=10_000)
    validation = run_grid([held], results, workers=1, progress=False, analyse={held.run_id: "validation"})
    assert validation.ok and "test" not in load_analysis(held, results, held_out=False)
    assert load_analysis(held, results) is None
    assert run_grid([held], results, workers=1, progress=False, analyse="validation").skipped == [held.run_id]
    full = run_grid([held], results, workers=1, progress=False, analyse=True)
    assert full.ok and full.done[0]["notebook"] is None and "test" in load_analysis(held, results)

    # without lab notebooks a record is enough; with them, a missing notebook is rendered again
    executed_path(results, config.run_id).unlink()
    assert run_grid([config], results, workers=1, progress=False, lab_notebooks=False).skipped == [config.run_id]
    assert not executed_path(results, config.run_id).exists()
