"""Faults and bad inputs, on purpose: kill -9 at random points of a grid, two pipelines on one
results folder, every worker lost, an unreachable scheduler, inputs preflight must refuse, records
resume must not trust, a cut-off lab notebook, locks.

Smoke-size runs (ease.grid.SMOKE) on WikiText-2 (EASE_DATA_DIR or the hub). Nothing here is timed:
kills and barriers come from the pipeline's fault hook (tests/fault_hook.py) at named points of a
run, chosen by a seeded random generator where random.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch

import ease
import ease.pipeline
from ease.config import RunConfig
from ease.data import data_provenance, fingerprint
from ease.grid import SMOKE, expand_grid, load_grid
from ease.pipeline import RunLock, execute_run, main, run_files, run_grid, store_run
from ease.results import checkpoint_path, executed_path, find_record, notebook_complete, record_path
from fault_hook import hooked_env, read_log, wait_for_kernels

# The grid of the kill and lock tests: two smoke runs, one per worker.
GRID = {"seeds": 1, "base": SMOKE, "runs": [{"setting": "A"}, {"setting": "B"}]}
KILLS = 3  # kill -9 rounds before the final resume (each starts a cluster and two kernels: 30-50 s on 2 busy cores)
KILL_SEED = 11
# The fault points a run passes through the pipeline: locked, training, ran, received, wrote-checkpoint,
# wrote-notebook, wrote-record.
POINTS_PER_RUN = 7
DETERMINISTIC = ("metrics", "sweep", "history")  # what a run computes; env and timing describe the machine


def write_grid(folder: Path, grid: dict) -> Path:
    path = folder / "grid.json"
    path.write_text(json.dumps(grid))
    return path


def pipeline(grid: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ease.pipeline", "--grid", str(grid), "--results", str(results), *extra]


def text_of(config: RunConfig) -> str:
    return data_provenance(config.corpus, config.train_chars, config.val_chars)["fingerprint"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, tuple[RunConfig, Path]]:
    """The grid's runs trained without the pipeline (ease.run, in this process), uninterrupted:
    {run_id: (config, results folder)}."""
    folder = tmp_path_factory.mktemp("reference")
    configs = expand_grid(GRID)
    for config in configs:
        ease.run(config, folder, progress=False)
    return {config.run_id: (config, folder) for config in configs}


def copy_run(config: RunConfig, source: Path, results: Path) -> None:
    for kind in ("record", "checkpoint"):
        relative = run_files(config.run_id)[kind]
        (results / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, results / relative)


# --- kill -9 ------------------------------------------------------------------------------------
def test_kill_9_at_random_points_then_resume_gives_the_records_of_an_uninterrupted_run(tmp_path, reference):
    """The whole pipeline (client, workers, runs) is killed at a random one of the fault points its
    unfinished runs pass, KILLS times over; between kills, whatever is in place is whole; a last
    plain run finishes the grid with records whose results are bitwise those of runs never
    interrupted."""
    results = tmp_path / "results"
    grid = write_grid(tmp_path, GRID)
    configs = expand_grid(load_grid(grid))
    assert {c.run_id for c in configs} == set(reference)
    command = pipeline(grid, results, "--workers", "2")
    rng = random.Random(KILL_SEED)
    rounds = []
    for attempt in range(KILLS):
        unfinished = [c for c in configs if find_record(c, results, text_of(c)) is None]
        log = tmp_path / f"hook{attempt}.jsonl"
        # not the last point: a kill there would come after the grid is done
        at = rng.randint(1, POINTS_PER_RUN * len(unfinished) - 1)
        proc = subprocess.run(command, cwd=tmp_path, env=hooked_env(log, FAULT_KILL_AT=str(at)), capture_output=True,
                              text=True, timeout=300, start_new_session=True)
        events = [f"{e['event']} {e['run_id'][:6]}" for e in read_log(log)]
        rounds.append((at, proc.returncode, events))
        assert proc.returncode == -signal.SIGKILL, f"{rounds}\n{proc.stdout}\n{proc.stderr}"
        assert not wait_for_kernels(log), "processes outlived the kill"
        for config in configs:  # a record in place is valid, with its lab notebook and checkpoint beside it
            if find_record(config, results, text_of(config)) is not None:
                assert notebook_complete(executed_path(results, config.run_id)), rounds
                assert checkpoint_path(results, config.run_id).is_file(), rounds

    final = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, f"{rounds}\n{final.stdout}\n{final.stderr}"
    for config in configs:
        record = find_record(config, results, text_of(config))
        ref_config, ref_folder = reference[config.run_id]
        expected = find_record(ref_config, ref_folder)
        assert {k: record[k] for k in DETERMINISTIC} == {k: expected[k] for k in DETERMINISTIC}, rounds
        state = torch.load(checkpoint_path(results, config.run_id), weights_only=True)
        expected_state = torch.load(checkpoint_path(ref_folder, config.run_id), weights_only=True)
        assert state["vocab"] == expected_state["vocab"]
        assert all(torch.equal(state["model"][k], expected_state["model"][k]) for k in expected_state["model"])
        assert notebook_complete(executed_path(results, config.run_id))
        for relative in run_files(config.run_id).values():
            if (results / relative).exists():
                assert (results / relative).stat().st_mode & 0o777 == 0o644, relative
    leftovers = [p for p in (results / ".incoming").rglob("*") if p.is_file()] if (results / ".incoming").exists() else []
    assert not leftovers and not list(results.rglob("*.tmp"))


# --- locks --------------------------------------------------------------------------------------
def test_two_pipelines_on_one_folder_train_each_run_once(tmp_path):
    """Both start at once with one worker each; the hook holds each at its first lock until the other
    has one too, so they are known to overlap. Each trains one run; the other run it finds held,
    waits for, and then counts as finished."""
    results = tmp_path / "results"
    grid = write_grid(tmp_path, GRID)
    configs = expand_grid(load_grid(grid))
    log = tmp_path / "hook.jsonl"
    env = hooked_env(log, FAULT_BARRIER="locked:2")
    procs = [subprocess.Popen(pipeline(grid, results, "--workers", "1"), cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=400)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    trainings = [e for e in read_log(log) if e["event"] == "training"]
    assert Counter(e["run_id"] for e in trainings) == {c.run_id: 1 for c in configs}, trainings
    assert len({e["group"] for e in trainings}) == 2  # each pipeline trained one of them
    for output in outputs:
        assert "1 done, 1 skipped (already finished), 0 failed" in output, output
    for config in configs:
        assert find_record(config, results, text_of(config)) is not None


def test_a_run_lock_is_held_by_one_process_and_dies_with_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import pathlib, sys, time; from ease.pipeline import RunLock; "
         f"lock = RunLock.acquire(pathlib.Path({str(tmp_path)!r}), 'run-1'); print('held', flush=True); "
         "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert RunLock.acquire(tmp_path, "run-1") is None  # held elsewhere
        lock_file = tmp_path / ".locks" / "run-1.lock"
        assert json.loads(lock_file.read_text())["pid"] == holder.pid  # says who holds it
        other = RunLock.acquire(tmp_path, "run-2")  # other runs are free
        assert other is not None
        other.release()
    finally:
        holder.kill()  # kill -9: no chance to clean up
        holder.wait()
    assert lock_file.exists()  # the file is left behind, but not the lock
    lock = RunLock.acquire(tmp_path, "run-1")
    assert lock is not None and json.loads(lock_file.read_text())["pid"] != holder.pid
    lock.release()
    assert not lock_file.exists()


# --- lost workers, unreachable scheduler ---------------------------------------------------------
@contextlib.contextmanager
def external_cluster(folder: Path, env: dict, workers: int):
    """A Dask scheduler and a `dask worker` (a nanny process per worker process), each a process group
    of its own, as on a real cluster; yields (scheduler address, the worker's process group)."""
    folder.mkdir()
    dask, info = str(Path(sys.executable).parent / "dask"), folder / "scheduler.json"
    started = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(info)], cwd=folder, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        from distributed import Client

        with Client(scheduler_file=str(info), timeout=120) as client:  # waits for the file and the scheduler
            started.append(subprocess.Popen([dask, "worker", client.scheduler.address, "--nworkers", str(workers),
                                             "--nthreads", "1", "--no-dashboard"], cwd=folder, env=env,
                                            start_new_session=True, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
            client.wait_for_workers(workers, timeout=120)
            yield client.scheduler.address, started[-1].pid
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_losing_every_worker_is_said_at_once_and_ends_the_grid_keeping_finished_runs(tmp_path):
    """On an existing cluster of 2 workers, once the quick run's record is in place, the hook kills the
    whole `dask worker` (nannies, workers, the slow run). The pipeline says so at once, waits
    --worker-timeout for a worker to come back, then exits 3 with the quick run kept."""
    results = tmp_path / "results"
    grid = write_grid(tmp_path, {"seeds": 1, "base": SMOKE, "runs": [
        {"setting": "A"}, {"setting": "B", "max_epochs": 10, "patience": 10}]})
    quick, slow = expand_grid(load_grid(grid))
    log = tmp_path / "hook.jsonl"
    env = hooked_env(log)
    with external_cluster(tmp_path / "cluster", env, workers=2) as (address, worker_group):
        proc = subprocess.run(pipeline(grid, results, "--scheduler", address, "--worker-timeout", "5"), cwd=tmp_path,
                              env={**env, "FAULT_KILL_GROUP_WHEN": f"wrote-record {quick.run_id}",
                                   "FAULT_KILL_GROUP": str(worker_group)},
                              capture_output=True, text=True, timeout=300)
    assert not wait_for_kernels(log)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert {e["run_id"] for e in read_log(log) if e["event"] == "training"} == {quick.run_id, slow.run_id}
    assert "no Dask worker connected: waiting up to 5 s for one" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no Dask worker for 5 s" in errors[0] and "resume" in errors[0], proc.stderr
    assert "1 done, 0 skipped (already finished), 0 failed" in proc.stdout
    assert find_record(quick, results, text_of(quick)) is not None
    assert find_record(slow, results) is None


def test_an_unreachable_scheduler_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    grid = write_grid(tmp_path, {"seeds": 1, "base": SMOKE, "runs": [{"setting": "A"}]})
    proc = subprocess.run(pipeline(grid, tmp_path / "results", "--scheduler", f"tcp://127.0.0.1:{port}"),
                          cwd=tmp_path, env={**hooked_env(tmp_path / "hook.jsonl"), "EASE_CONNECT_TIMEOUT": "2"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: cannot reach the Dask scheduler tcp://127.0.0.1:{port}")
    assert not read_log(tmp_path / "hook.jsonl")  # no run was locked or started


# --- preflight ----------------------------------------------------------------------------------
def corpus_folder(folder: Path, train: bytes) -> Path:
    """A corpus folder whose train split is `train` and whose other splits are fine."""
    folder.mkdir()
    (folder / "train.txt").write_bytes(train)
    for split in ("valid", "test"):
        (folder / f"{split}.txt").write_text("a line of text\n" * 1000)
    return folder


def smoke_grid_on(tmp_path: Path, corpus: Path) -> str:
    return str(write_grid(tmp_path, {"seeds": 1, "base": {**SMOKE, "corpus": str(corpus)}, "runs": [{"setting": "A"}]}))


PREFLIGHT_CASES = {
    # name: (arguments given tmp_path, words the one error line holds)
    "results under a file": (lambda t: ["--grid", str(write_grid(t, GRID)), "--results", str(t / "a-file" / "results")],
                             ["not writable", "a-file"]),
    "empty train.txt": (lambda t: ["--grid", smoke_grid_on(t, corpus_folder(t / "c", b"")), "--results", str(t / "r")],
                        ["train.txt", "empty"]),
    "train.txt not UTF-8": (lambda t: ["--grid", smoke_grid_on(t, corpus_folder(t / "c", b"text \xff\xfe" * 5000)),
                                       "--results", str(t / "r")], ["train.txt", "UTF-8"]),
    "corpus too short": (lambda t: ["--grid", smoke_grid_on(t, corpus_folder(t / "c", b"short text\n")),
                                    "--results", str(t / "r")], ["shorter", "train_chars=20000"]),
    "no corpus folder": (lambda t: ["--grid", smoke_grid_on(t, t / "nowhere"), "--results", str(t / "r")],
                         ["nowhere", "does not exist"]),
    "unknown device": (lambda t: ["--grid", str(write_grid(t, GRID)), "--device", "tpu", "--results", str(t / "r")],
                       ["device", "tpu"]),
    "grid file not UTF-8": (lambda t: ["--grid", str(t / "latin1.yaml"), "--results", str(t / "r")],
                            ["latin1.yaml", "not UTF-8"]),
    "--book with --grid": (lambda t: ["--book", "--grid", "exp5-6", "--results", str(t / "r")], ["--book", "--grid"]),
}


@pytest.mark.parametrize("case", PREFLIGHT_CASES)
def test_preflight_refuses_a_bad_input_in_one_line_before_anything_starts(case, tmp_path, capsys, monkeypatch):
    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(ease.pipeline, "connect", no_cluster)
    (tmp_path / "a-file").write_text("a file, not a folder")
    (tmp_path / "latin1.yaml").write_bytes("description: caf\u00e9\nruns: [{setting: A}]\n".encode("latin-1"))
    arguments, words = PREFLIGHT_CASES[case]
    assert main(arguments(tmp_path)) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err
    assert "grid " not in out  # no grid was started
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_preflight_refuses_cuda_where_there_is_none(tmp_path, capsys):
    assert main(["--grid", str(write_grid(tmp_path, GRID)), "--device", "cuda", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err
    assert not (tmp_path / "r").exists()


# --- resume that checks -------------------------------------------------------------------------
def other_text(record: dict) -> dict:
    """The record as if made on another text: another train hash, and the fingerprint that goes with it."""
    data = record["provenance"]["data"]
    data["sha256"]["train"] = "0" * 64
    data["fingerprint"] = fingerprint(data["sha256"])
    return record


BAD_RECORDS = {  # name: (what becomes of a finished run's record, words its failure holds)
    "empty file": (lambda path: path.write_bytes(b""), ["empty"]),
    "no metrics": (lambda path: path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                                                            if k != "metrics"})), ["metrics"]),
    "made on other text": (lambda path: path.write_text(json.dumps(other_text(json.loads(path.read_text())))),
                           ["other text"]),
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_a_record_resume_cannot_trust_fails_its_run_naming_the_file(case, tmp_path, reference, capsys, monkeypatch):
    """Never skipped as finished, never overwritten, never a traceback: the run fails, naming the file."""
    monkeypatch.setattr(ease.pipeline, "connect", lambda *a, **k: pytest.fail("a cluster was started"))
    config, folder = next(iter(reference.values()))
    results = tmp_path / "results"
    copy_run(config, folder, results)
    path = record_path(results, config.run_id)
    spoil, words = BAD_RECORDS[case]
    spoil(path)
    before = path.read_bytes()
    grid = write_grid(tmp_path, {"seeds": 1, "base": SMOKE, "runs": [{"setting": config.setting}]})
    assert main(["--grid", str(grid), "--results", str(results)]) == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if line.startswith(f"FAILED {config.run_id}")]
    assert len(failed) == 1 and str(path) in failed[0], out
    for word in words:
        assert word in failed[0]
    assert path.read_bytes() == before


def test_a_record_its_worker_made_on_other_text_is_not_put_in_place(tmp_path, reference):
    """The client checks what comes back before it puts anything in place (here: files as a worker on
    other data would send them)."""
    config, folder = next(iter(reference.values()))
    files = run_files(config.run_id)
    good = {str(files["record"]): record_path(folder, config.run_id).read_bytes(),
            str(files["checkpoint"]): checkpoint_path(folder, config.run_id).read_bytes()}
    bad = {**good, str(files["record"]): json.dumps(other_text(json.loads(good[str(files["record"])]))).encode()}
    results = tmp_path / "results"
    refused = store_run({"run_id": config.run_id, "status": "done", "files": bad}, config, results, text_of(config))
    assert refused["status"] == "failed" and "other text" in refused["error"]
    assert not [p for p in results.rglob("*") if p.is_file()]  # nothing in place, nothing left staged
    stored = store_run({"run_id": config.run_id, "status": "done", "files": good}, config, results, text_of(config))
    assert stored["status"] == "done" and stored["notebook"] is None
    for relative, data in good.items():
        assert (results / relative).read_bytes() == data
        assert (results / relative).stat().st_mode & 0o777 == 0o644
    assert not [p for p in (results / ".incoming").rglob("*") if p.is_file()]


def test_a_cut_off_lab_notebook_is_rendered_again_from_its_record(tmp_path, reference, monkeypatch):
    config, folder = next(iter(reference.values()))
    results = tmp_path / "results"
    copy_run(config, folder, results)
    notebook = executed_path(results, config.run_id)
    notebook.parent.mkdir(parents=True)
    # as papermill leaves a notebook killed in its training cell: no end time, that cell "running"
    notebook.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {"papermill": {"start_time": "2025-01-01T00:00:00",
                                                                       "end_time": None, "exception": None}},
        "cells": [{"cell_type": "code", "id": "c1", "execution_count": None, "outputs": [],
                   "metadata": {"papermill": {"status": "running"}}, "source": "record = ease.run(config)"}]}))
    assert not notebook_complete(notebook)
    record = record_path(results, config.run_id)
    before = (record.stat().st_mtime_ns, record.read_bytes())
    log = tmp_path / "hook.jsonl"
    for name, value in hooked_env(log).items():
        monkeypatch.setenv(name, value)
    summary = run_grid([config], results, workers=1, progress=False)
    assert summary.ok and [run["notebook"] for run in summary.done] == [str(notebook)], summary.report()
    assert notebook_complete(notebook) and config.run_id in notebook.read_text()
    assert notebook.stat().st_mode & 0o777 == 0o644
    assert (record.stat().st_mtime_ns, record.read_bytes()) == before  # rendered from the record, not retrained
    assert "training" not in {e["event"] for e in read_log(log)}


def test_a_worker_needs_no_shared_folder(tmp_path, reference, monkeypatch):
    """execute_run (the Dask task) gets its inputs as bytes and returns what it made as bytes: here an
    analysis computed from a checkpoint it was sent, in a temporary folder it removes again."""
    config, folder = next(iter(reference.values()))
    files = run_files(config.run_id)
    inputs = {str(files[kind]): (folder / files[kind]).read_bytes() for kind in ("record", "checkpoint")}
    scratch, elsewhere = tmp_path / "tmp", tmp_path / "elsewhere"
    scratch.mkdir()
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the worker makes its run's folder
    monkeypatch.chdir(elsewhere)
    result = execute_run(config.to_dict(), inputs, None, str(elsewhere), analyse=True)
    assert result["status"] == "done", result
    assert list(result["files"]) == [str(files["analysis"])]  # only what it made; its inputs stay with the client
    analysis = json.loads(result["files"][str(files["analysis"])])
    assert analysis["run_id"] == config.run_id and analysis["real_exit"]
    assert not list(scratch.iterdir()) and not list(elsewhere.iterdir())
