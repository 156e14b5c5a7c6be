"""Run a grid of configs through the training notebook, in parallel, resumably.

Usage::

    python -m ease.pipeline [--grid NAME_OR_PATH ... | --book] [--seeds N] [--smoke] [--results DIR]
                            [--scheduler ADDRESS] [--workers N] [--device DEV] [--worker-timeout S]
                            [--dry-run]

Each run executes the training notebook ``notebooks/train_run.py`` (shipped with the package as
``ease.notebooks``; read with jupytext, parameters injected by papermill). Where its files go is
``ease.results``'s layout: the executed notebook (the run's lab notebook) at
``executed_path(DIR, run_id)``, the record and checkpoint (``ease.run`` writes them) at
``record_path`` and ``checkpoint_path``, and the checkpoint analysis (``ease.analysis``) at
``analysis_path``. A run whose record is there and valid (for its config and for the text the
data gives now) is not trained again, so an interrupted pipeline resumes where it stopped: a
missing or incomplete lab notebook is rendered from the record in seconds, a missing analysis is
computed from the checkpoint. A record that is not valid (broken, made on other text, ...) is
reported as that run's failure, naming the file; it is never skipped as finished nor
overwritten. A failed run is reported with its executed notebook and the others still finish.

Runs are scheduled on Dask distributed: by default on a local cluster of one single-threaded
worker process per CPU core (``--workers`` to change), with no dashboard; ``--scheduler
tcp://host:8786`` sends them to an existing cluster instead (its workers need ``ease``
installed and the data reachable, e.g. through ``EASE_DATA_DIR``).

Shared nothing: a run executes in a temporary folder of its worker, and its files (record,
checkpoint, executed notebook, analysis) travel back to this process as the Dask task's result;
only this process writes the results folder. It puts each run's files in place by rename (the
record last: a record means a finished run), with mode 0644, after checking the record the worker
made is valid here (made on the text this machine's data gives). A run whose record exists goes
to its worker with its record (and its checkpoint when an analysis is to be computed).

Two pipelines on one results folder never train the same run twice: each run is locked while
it is being worked on (``DIR/.locks/<run_id>.lock``, an ``flock`` on a file naming the owner's
pid and host), and a pipeline takes the next run nobody holds. Per-run locks rather than one
lock on the folder, because then both pipelines make progress (and a second grid sharing some
runs with a running one is useful at once); ``flock`` rather than a pid check, because the
kernel drops the lock when its owner dies however it dies (kill -9 included), so a stale lock
needs no reclaiming and a reused pid cannot keep one alive (on NFS, Linux maps it to a lease
the server drops when the owner's machine goes away). A run another pipeline holds is retried
when it lets go: finished by then, it counts as skipped; failed there, it runs here.

If every worker of a ``--scheduler`` is lost (killed, nannies included), the pipeline says so at
once, waits up to ``--worker-timeout`` seconds (default $EASE_WORKER_TIMEOUT, else 120) for one
to come back, then gives up: the finished runs are kept, exit status 3. (A local cluster's
nannies live in the pipeline's own process and start a killed worker again; the same wait covers
them failing to.) An unreachable ``--scheduler`` is a one-line error after $EASE_CONNECT_TIMEOUT
seconds (default 10), exit status 2. The runs themselves are the Dask tasks, so a task whose
worker died while running it goes to another worker (Dask's rule: after 3 such deaths it fails).

Before any cluster starts (preflight), every input is checked: the arguments, the grid files
(readable, UTF-8, valid), the device (``cuda`` asked for where there is none; with
``--scheduler`` only the name is checked here, the workers' devices per run), the data of every
corpus of the grids (present, UTF-8, non-empty: ``ease.data.check_data``; its fingerprint is
printed) and the results folder (writable). Each failure is one line on stderr, exit status 2,
nothing started. Exit status: 0 all runs finished, 1 a run failed, 2 bad input, 3 workers lost,
130 interrupted.

``--grid`` takes builtin grid names (the YAML files of ``grids/``: ``exp5-6``, the default,
``forensics``, ``dense``, ``regimes``, ``alpha``) or YAML/JSON grid files, run one after the
other; ``--book`` runs every grid the book reads (``ease.grid.BOOK_GRIDS``), and only the first
one's runs get lab notebooks there (the others need records and analyses). The grid format is
in ``ease.grid`` (``python -m pydoc ease.grid``) and ``examples/grid.yaml``.

Relative paths in configs (a ``corpus`` folder) are read from the folder the pipeline was
started in.

Fault injection (tests only): $EASE_FAULT_HOOK names a function ("module:function") called as
``hook(event, run_id)`` at these points: ``locked`` (this process took a run's lock),
``training`` (a worker starts a run's notebook without a record: it trains), ``ran`` (a worker
has the run's files ready to send), ``received`` (this process got them), then ``wrote-checkpoint``,
``wrote-analysis``, ``wrote-notebook`` and ``wrote-record`` as each is put in place. Unset, nothing
happens.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import importlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ease.config import DOC_THRESHOLDS, RunConfig
from ease.grid import (ANALYSE_VALIDATION, BOOK_GRIDS, SMOKE, GridError, analyses_wanted, builtin_grids, expand_grid,
                       load_grid, smoke_config)
from ease.results import analysis_path, checkpoint_path, executed_path, find_record, record_path

DEFAULT_RESULTS = "results"
SMOKE_RESULTS = "results/smoke"
SMOKE_ENV = "EASE_SMOKE"
# notebooks/ of the repository, installed as the package ease.notebooks (found from any folder)
TRAIN_NOTEBOOK = Path(str(resources.files("ease.notebooks") / "train_run.py"))
# The notebooks' parameters cells name every RunConfig field; RunConfig alone holds the defaults.
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))

# Seconds without any worker before giving up, and to reach a --scheduler (tests shorten both).
WORKER_TIMEOUT_ENV, DEFAULT_WORKER_TIMEOUT = "EASE_WORKER_TIMEOUT", 120.0
CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT = "EASE_CONNECT_TIMEOUT", 10.0
POLL_S = 1.0  # how often the client looks at its workers and at the runs other pipelines hold
FILE_MODE = 0o644  # results are meant to be read by others (the book build, a web server)
LOCKS_DIR = ".locks"  # DIR/.locks/<run_id>.lock while a pipeline works on a run
INCOMING_DIR = ".incoming"  # DIR/.incoming/<run_id>/: a run's files between arriving and being put in place
FAULT_HOOK_ENV = "EASE_FAULT_HOOK"
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_WORKERS_LOST, EXIT_INTERRUPTED = 1, 2, 3, 130


class PreflightError(ValueError):
    """An input the grid needs is unusable; found before anything starts. One line."""


class SchedulerUnreachable(RuntimeError):
    """--scheduler could not be reached. One line."""


class WorkersLost(RuntimeError):
    """No Dask worker for longer than the worker timeout. `summary` holds what was finished."""

    summary: GridSummary | None = None


def describe(config: RunConfig) -> str:
    """The fields that differ from RunConfig's defaults, e.g. "alpha=0.3 norm=pre" (seed and derived weights left out)."""
    default = RunConfig().to_dict()
    changed = {k: v for k, v in config.to_dict().items()
               if k != "seed" and v != default[k] and not (k == "weights" and config.setting != "custom")}
    return " ".join(f"{k}={v}" for k, v in changed.items()) or "(defaults)"


def fault_point(event: str, run_id: str) -> None:
    """Call the fault-injection hook $EASE_FAULT_HOOK names, if any (see the module docstring)."""
    spec = os.environ.get(FAULT_HOOK_ENV)
    if spec:
        module, _, name = spec.partition(":")
        getattr(importlib.import_module(module), name)(event, run_id)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def say(message: str) -> None:
    """A line on stderr that leaves the progress bar whole."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


# --- a run's files ----------------------------------------------------------------------------
def run_files(run_id: str) -> dict[str, Path]:
    """A run's files relative to a results folder, in the order they are put in place: the record
    last, since a record on disk means a finished run."""
    here = Path()
    return {"checkpoint": checkpoint_path(here, run_id), "analysis": analysis_path(here, run_id),
            "notebook": executed_path(here, run_id), "record": record_path(here, run_id)}


@dataclass
class RunWork:
    """What a run still needs. `trained`: it has a valid record (its notebook then renders the record
    instead of training); `notebook`: its notebook must run; `analysis`: its checkpoint analysis."""
    trained: bool
    notebook: bool
    analysis: bool
    held_out: bool = True  # the analysis has its held-out part (False: `analyse: validation`)

    @property
    def state(self) -> str:
        return "to run" if not self.trained else "to render" if self.notebook else "to analyse"


def text_key(config: RunConfig) -> tuple[str, int, int]:
    """What decides the text a run reads: its corpus and sizes."""
    return config.corpus, config.train_chars, config.val_chars


def text_fingerprint(key: tuple[str, int, int]) -> str:
    """The data fingerprint (``ease.data.data_provenance``) of the text of a `text_key`. Raises
    ease.data.DataError (one line, naming the file) when that text cannot be had."""
    from ease.data import data_provenance

    return data_provenance(*key)["fingerprint"]


def run_work(config: RunConfig, results_dir: str | Path, lab_notebooks: bool = True, analyse: bool | str = False,
             fingerprint: str | None = None) -> RunWork | None:
    """What `config` still needs in `results_dir`; None when it is finished.

    A record that is not valid for this config, or (given `fingerprint`) not made on that text, raises
    ValueError naming its file (``ease.results.find_record``): reported as the run's failure, never
    skipped, never overwritten. A lab notebook that is missing or was cut off
    (``ease.results.notebook_complete``) is rendered again.
    """
    from ease.analysis import load_analysis
    from ease.results import notebook_complete

    trained = find_record(config, results_dir, fingerprint) is not None
    notebook = not trained or (lab_notebooks and not notebook_complete(executed_path(results_dir, config.run_id)))
    held_out = analyse != ANALYSE_VALIDATION
    analysis = bool(analyse) and (not trained or load_analysis(config, results_dir, held_out) is None)
    return RunWork(trained, notebook, analysis, held_out) if notebook or analysis else None


def run_inputs(config: RunConfig, results_dir: Path, work: RunWork) -> dict[str, bytes]:
    """The files a run's worker needs from the results folder: the record of a trained run, and its
    checkpoint when the analysis is to be computed (a missing checkpoint is the analysis's error)."""
    files = run_files(config.run_id)
    wanted = ["record", "checkpoint"] if work.trained and work.analysis else ["record"] if work.trained else []
    return {str(files[kind]): (results_dir / files[kind]).read_bytes() for kind in wanted
            if (results_dir / files[kind]).is_file()}


# --- running (on a Dask worker) ----------------------------------------------------------------
def notebook_parameters(config: RunConfig, results_dir: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The papermill parameters that make train_run.py run exactly `config`."""
    params = config.to_dict()
    if config.setting != "custom":
        params["weights"] = None  # derived from setting and alpha inside RunConfig
    return {**params, "results_dir": str(results_dir), "device": device, "smoke": False}


def execute_run(config_dict: dict, inputs: dict[str, bytes], notebook_json: str | None, cwd: str | None,
                device: str = "cpu", analyse: bool = True, held_out: bool = True) -> dict:
    """One run's work on a Dask worker, in a temporary folder of its own: `inputs` ({path relative to a
    results folder: bytes}, see `run_inputs`) are put there, the notebook (unless `notebook_json` is
    None) and the analysis run there, and the run's new files come back as the result's "files"
    (same form) for the client to put in place. Never raises, reports instead.

    The work runs in a child process whose environment drops MALLOC_TRIM_THRESHOLD_: Dask's
    nanny sets it for its workers (65536), and a kernel inheriting it spends its time returning
    memory to the system (measured: training at 13,800 instead of 31,500 tokens/s).
    """
    run_id = RunConfig.from_dict(config_dict).run_id
    files = run_files(run_id)
    with tempfile.TemporaryDirectory(prefix=f"ease-run-{run_id}-") as tmp:
        for relative, data in inputs.items():
            (Path(tmp) / relative).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / relative).write_bytes(data)
        if notebook_json is not None and str(files["record"]) not in inputs:
            fault_point("training", run_id)
        result = _run_in_child({"config_dict": config_dict, "results_dir": tmp, "notebook_json": notebook_json,
                                "cwd": cwd, "device": device, "analyse": analyse, "held_out": held_out}, run_id)
        made = {kind: Path(tmp) / relative for kind, relative in files.items()
                if str(relative) not in inputs and (Path(tmp) / relative).is_file()}
        if "record" not in made:  # a checkpoint without its record belongs to a run that did not finish
            made.pop("checkpoint", None)
        result["files"] = {str(files[kind]): path.read_bytes() for kind, path in made.items()}
        fault_point("ran", run_id)
    return result


def _run_in_child(args: dict, run_id: str) -> dict:
    child = ("import json, sys; from ease.pipeline import run_task; "
             "print(json.dumps(run_task(**json.load(sys.stdin))))")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", child], input=json.dumps(args), capture_output=True,
                              text=True, env=env)
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):  # the child itself died: report its last words
            result = {"run_id": run_id, "status": "failed",
                      "error": f"runner exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
        # Two kernels starting at once in different processes can pick the same free TCP port; the
        # loser never starts. That is no fault of the run: start it once more.
        if result["status"] == "done" or "Kernel didn't respond" not in result.get("error", ""):
            break
    return result


def run_task(config_dict: dict, results_dir: str, notebook_json: str | None, cwd: str | None,
             device: str = "cpu", analyse: bool = True, held_out: bool = True) -> dict:
    """The body of `execute_run`, in the child process."""
    if notebook_json is not None:
        result = execute_notebook(config_dict, results_dir, notebook_json, cwd, device)
    else:
        result = {"run_id": RunConfig.from_dict(config_dict).run_id, "status": "done", "seconds": 0.0}
    if analyse and result["status"] == "done":
        from ease.analysis import ensure_analysis

        start = time.perf_counter()
        try:
            ensure_analysis(RunConfig.from_dict(config_dict), results_dir, device, held_out)
        except Exception as exc:  # the record stands; the analysis is reported as what failed
            result.update(status="failed", error=f"analysis: {type(exc).__name__}: {exc}")
        result["seconds"] = round(result["seconds"] + time.perf_counter() - start, 1)
    return result


def execute_notebook(config_dict: dict, results_dir: str, notebook_json: str, cwd: str | None,
                     device: str = "cpu") -> dict:
    """Execute the training notebook for one config with papermill; never raises, reports instead."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    config = RunConfig.from_dict(config_dict)
    out = executed_path(results_dir, config.run_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"run_id": config.run_id}
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            nbformat.reads(notebook_json, as_version=4), str(out),
            parameters=notebook_parameters(config, results_dir, device), kernel_name="python3",
            progress_bar=False, cwd=cwd if cwd and Path(cwd).is_dir() else None,
            # the kernel's start-up warnings would print once per run between progress-bar updates
            extra_arguments=["--IPKernelApp.log_level=ERROR"])
        if find_record(config, results_dir) is None:
            raise RuntimeError(f"the notebook finished but wrote no record for {config.run_id}; "
                               "do its parameters still cover every RunConfig field?")
        result.update(status="done")
    except PapermillExecutionError as exc:
        result.update(status="failed", error=f"{exc.ename}: {exc.evalue}")
    except Exception as exc:  # kernel died, notebook unreadable, ...: reported, the grid goes on
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# --- the client: locks, storing what comes back, watching workers --------------------------------
class RunLock:
    """This process's hold on one run of a results folder (see the module docstring for why per run
    and why flock). The file names the holder, for messages; it is removed on release."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, results_dir: Path, run_id: str) -> RunLock | None:
        """The run's lock, or None while another process holds it."""
        path = results_dir / LOCKS_DIR / f"{run_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            # The previous holder may have removed the file between our open and our lock: then we
            # hold a lock on a file nobody else will look at. Only the file at the path counts.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        return cls(path, fd)

    @staticmethod
    def holder(results_dir: Path, run_id: str) -> str:
        """Who holds a run's lock, as its file says (for messages)."""
        try:
            owner = json.loads((results_dir / LOCKS_DIR / f"{run_id}.lock").read_text())
            return f"pid {owner['pid']} on {owner['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still held, so nobody is using this file
            os.close(self.fd)
            self.fd = None


def _write_new_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        os.fchmod(f.fileno(), FILE_MODE)  # whatever the umask (mkstemp-style 0600 hid results from others)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def store_run(result: dict, config: RunConfig, results_dir: Path, fingerprint: str | None = None) -> dict:
    """Put the files a run's worker sent back into the results folder (this process holds the run's
    lock): each is written whole into DIR/.incoming/<run_id>/, a record is checked there (made for
    this config, on the text of `fingerprint`), then each is renamed into place, the record
    last. Returns `result` without its files, "notebook" set to the lab notebook's path, or None."""
    files = result.pop("files", {})
    layout = run_files(config.run_id)
    staging = results_dir / INCOMING_DIR / config.run_id
    shutil.rmtree(staging, ignore_errors=True)  # left by a pipeline killed while storing this run
    result["notebook"] = None
    try:
        arrived = [kind for kind, relative in layout.items() if str(relative) in files]
        for kind in arrived:
            _write_new_file(staging / layout[kind], files[str(layout[kind])])
        if "record" in arrived:
            try:
                find_record(config, staging, fingerprint)
            except ValueError as exc:
                result.update(status="failed", error=f"the record its worker made is not valid here: {one_line(exc)}")
                return result
        for kind in arrived:
            (results_dir / layout[kind]).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / layout[kind], results_dir / layout[kind])
            fault_point(f"wrote-{kind}", config.run_id)
        if "notebook" in arrived:
            result["notebook"] = str(results_dir / layout["notebook"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


class WorkerWatch:
    """The client's view of its Dask workers: how many threads they offer now; once there are none,
    one line saying so, and WorkersLost when none has come back within `timeout` seconds."""

    def __init__(self, client, timeout: float):
        self.client, self.timeout, self.since = client, timeout, None

    def threads(self) -> int:
        try:
            n = sum(self.client.nthreads().values())
        except Exception:  # the scheduler itself is gone: no workers either
            n = 0
        if n:
            self.since = None
            return n
        if self.since is None:
            self.since = time.monotonic()
            say(f"no Dask worker connected: waiting up to {self.timeout:g} s for one (--worker-timeout)")
        elif time.monotonic() - self.since >= self.timeout:
            raise WorkersLost(f"no Dask worker for {self.timeout:g} s (all lost or killed?); finished runs are "
                              "kept: run the same command again to resume")
        return 0


def connect(scheduler: str | None, workers: int | None, n_runs: int):
    """(cluster, client): a client of `scheduler`, or of a new local cluster (cluster then not None)."""
    from distributed import Client, LocalCluster

    if scheduler:
        timeout = env_seconds(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT)
        try:
            return None, Client(scheduler, timeout=timeout)
        except (OSError, ValueError, TimeoutError) as exc:
            raise SchedulerUnreachable(f"cannot reach the Dask scheduler {scheduler}: {one_line(exc)}") from None
    n = min(workers or default_workers(), n_runs)
    # silence_logs: Dask's own warnings (a worker died, restarting it, ...) would only repeat what the
    # pipeline reports itself, in several lines each
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    return cluster, Client(cluster)


@dataclass
class GridSummary:
    done: list[dict] = field(default_factory=list)  # {run_id, notebook, seconds}
    skipped: list[str] = field(default_factory=list)  # run ids already finished (here or by another pipeline)
    failed: list[dict] = field(default_factory=list)  # {run_id, notebook, error}

    @property
    def ok(self) -> bool:
        return not self.failed

    def report(self) -> str:
        lines = [f"{len(self.done)} done, {len(self.skipped)} skipped (already finished), {len(self.failed)} failed"]
        for run in self.failed:
            lines.append(f"FAILED {run['run_id']}: {run['error']}")
            if run.get("notebook"):
                lines.append(f"       executed notebook: {run['notebook']}")
        return "\n".join(lines)


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        seconds = float(value) if value else default
    except ValueError:
        raise PreflightError(f"{name}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise PreflightError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


def run_grid(configs: Sequence[RunConfig], results_dir: str | Path = DEFAULT_RESULTS, scheduler: str | None = None,
             workers: int | None = None, device: str = "cpu", notebook: str | Path = TRAIN_NOTEBOOK,
             progress: bool = True, lab_notebooks: bool = True,
             analyse: bool | str | Mapping[str, bool | str] = False, worker_timeout: float | None = None) -> GridSummary:
    """Run every config not finished yet through `notebook` on Dask; return what happened.

    `scheduler`: address of an existing Dask scheduler; None starts a local cluster of `workers`
    single-threaded worker processes (default: one per core), closed when the grid is done.
    `lab_notebooks`: a finished run also needs its complete executed notebook (rendered from the
    record when missing or cut off); False: the record is enough. `analyse`: each run also needs its
    checkpoint analysis (ease.analysis), computed where missing (a grid asks for it with `analyse: true`;
    "validation", from `analyse: validation`: the analysis without its held-out part; a mapping gives it per run
    id, as ease.grid.analyses_wanted does).
    `worker_timeout`: seconds without any worker before WorkersLost (default $EASE_WORKER_TIMEOUT or 120).
    Raises SchedulerUnreachable when `scheduler` cannot be reached.
    """
    import jupytext
    import nbformat
    from tqdm.auto import tqdm

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    if scheduler and workers is not None:
        raise ValueError("workers sizes the local cluster only; an existing scheduler brings its own workers")
    results_dir = Path(results_dir).resolve()
    summary = GridSummary()
    configs = list({config.run_id: config for config in configs}.values())  # one run per config
    fingerprints: dict[tuple, str | Exception] = {}  # by text_key; the error where the text cannot be had
    for key in {text_key(config) for config in configs}:
        try:
            fingerprints[key] = text_fingerprint(key)
        except (ValueError, OSError) as exc:  # its runs fail with that message; the others go on
            fingerprints[key] = exc
    pending = [config for config in configs
               if _triage(config, summary, results_dir, lab_notebooks, analyse, fingerprints[text_key(config)])]
    if not pending:
        return summary
    timeout = worker_timeout or env_seconds(WORKER_TIMEOUT_ENV, DEFAULT_WORKER_TIMEOUT)
    cluster, client = connect(scheduler, workers, len(pending))
    bar = tqdm(total=len(configs), desc="grid", unit="run", disable=not progress)
    bar.update(len(configs) - len(pending))
    try:
        _run_pending(pending, client, summary, bar, results_dir, nbformat.writes(jupytext.read(notebook)),
                     device, lab_notebooks, analyse, fingerprints, timeout)
    except WorkersLost as exc:
        exc.summary = summary
        raise
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
    return summary


def _run_pending(pending: list[RunConfig], client, summary: GridSummary, bar, results_dir: Path, notebook_json: str,
                 device: str, lab_notebooks: bool, analyse: bool | str | Mapping[str, bool | str], fingerprints: dict,
                 worker_timeout: float) -> None:
    """Keep the workers busy with pending runs, one lock per run in flight, until none is left."""
    from distributed import wait

    watch = WorkerWatch(client, worker_timeout)
    running: dict = {}  # future -> (config, lock)
    waiting_for: set[str] = set()  # runs another pipeline holds, said once each
    cwd = os.getcwd()
    try:
        while pending or running:
            capacity = watch.threads()
            held_elsewhere = 0
            for config in list(pending):
                if len(running) >= capacity:
                    break
                lock = RunLock.acquire(results_dir, config.run_id)
                if lock is None:  # another pipeline works on it; looked at again next time round
                    held_elsewhere += 1
                    if config.run_id not in waiting_for:
                        waiting_for.add(config.run_id)
                        say(f"{config.run_id}: another pipeline ({RunLock.holder(results_dir, config.run_id)}) "
                            "is running it; waiting for it")
                    continue
                pending.remove(config)
                fault_point("locked", config.run_id)
                # again, now that the run is ours: another pipeline may have finished it meanwhile
                work = _triage(config, summary, results_dir, lab_notebooks, analyse, fingerprints[text_key(config)])
                if work is None:
                    lock.release()
                    bar.update(1)
                    continue
                future = client.submit(execute_run, config.to_dict(), run_inputs(config, results_dir, work),
                                       notebook_json if work.notebook else None, cwd, device, work.analysis,
                                       work.held_out, key=f"ease-run-{config.run_id}-{time.time_ns()}", pure=False)
                running[future] = (config, lock)
            if held_elsewhere:
                bar.set_postfix(done=len(summary.done), failed=len(summary.failed), elsewhere=held_elsewhere)
            if not running:
                time.sleep(POLL_S)  # waiting for a worker, or for runs other pipelines hold
                continue
            try:
                finished = wait(list(running), timeout=POLL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                continue
            for future in finished:
                config, lock = running.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # the worker itself died (repeatedly), the task was lost, ...
                    result = {"run_id": config.run_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                # Let Dask forget it now: a result still wanted when its worker dies is computed again elsewhere
                future.release()
                fault_point("received", config.run_id)
                try:
                    result = store_run(result, config, results_dir, fingerprints[text_key(config)])
                finally:
                    lock.release()
                status = result.pop("status")
                (summary.done if status == "done" else summary.failed).append(result)
                bar.update(1)
                bar.set_postfix(done=len(summary.done), failed=len(summary.failed))
    finally:
        for _, lock in running.values():
            lock.release()


def _triage(config: RunConfig, summary: GridSummary, results_dir: Path, lab_notebooks: bool,
            analyse: bool | str | Mapping[str, bool | str], fingerprint: str | Exception) -> RunWork | None:
    """The run's work, or None when there is none: finished (counted as skipped), or failed: its text
    cannot be had (`fingerprint` is that error) or its record is not valid here (the message names the
    file, which is never overwritten). `analyse`: as run_grid's."""
    error, work = (fingerprint, None) if isinstance(fingerprint, Exception) else (None, None)
    if isinstance(analyse, Mapping):
        analyse = analyse.get(config.run_id, False)
    if error is None:
        try:
            work = run_work(config, results_dir, lab_notebooks, analyse, fingerprint)
        except (ValueError, OSError) as exc:
            error = exc
    if error is not None:
        summary.failed.append({"run_id": config.run_id, "notebook": None, "error": one_line(error)})
    elif work is None:
        summary.skipped.append(config.run_id)
    return work


# --- preflight ---------------------------------------------------------------------------------
def preflight(configs: Sequence[RunConfig], results: str | Path, device: str = "cpu", scheduler: str | None = None,
              results_needed: bool = True) -> tuple[dict[str, dict], dict[tuple[str, int, int], str]]:
    """Check what the runs need before anything starts; PreflightError (one line) on the first problem.

    The device; the data of every corpus (``ease.data.check_data``: present, UTF-8, non-empty) and
    long enough for every run; and, when `results_needed`, that the results folder can be written (it
    is created if missing). Returns what check_data found by corpus (its fingerprint among it), and
    the runs' `text_fingerprint` by `text_key`.
    """
    from ease.data import check_data
    from ease.train import pick_device

    try:
        pick_device(device)
    except ValueError as exc:
        raise PreflightError(one_line(exc)) from None
    except RuntimeError as exc:  # asked for CUDA where there is none; a scheduler's workers may have it
        if not scheduler:
            raise PreflightError(one_line(exc)) from None
    data = {}
    for corpus in sorted({config.corpus for config in configs}):
        try:
            data[corpus] = check_data(corpus)
        except (ValueError, OSError) as exc:  # ease.data.DataError (a ValueError) names the file
            raise PreflightError(one_line(exc)) from None
    try:  # each run's text: a corpus shorter than a run asks fails here
        fingerprints = {key: text_fingerprint(key) for key in sorted({text_key(c) for c in configs})}
    except (ValueError, OSError) as exc:
        raise PreflightError(one_line(exc)) from None
    if results_needed:
        _check_writable(Path(results))
    return data, fingerprints


def describe_data(corpus: str, found: dict) -> str:
    """One line on a corpus as ease.data.check_data found it."""
    if found.get("fingerprint") is None:
        return f"data {corpus}: {found.get('location')} (no files)"
    chars = ", ".join(f"{split} {n:,}" for split, n in found.get("chars", {}).items() if n is not None)
    return f"data {corpus}: fingerprint {found['fingerprint']}, {found.get('source')} {found.get('location')} " \
           f"({chars} characters)"


def _check_writable(results: Path) -> None:
    """The results folder and every folder of it this process writes can take a new file."""
    folders = {results, results / LOCKS_DIR, results / INCOMING_DIR}
    folders |= {results / relative.parent for relative in run_files("probe").values()}
    try:
        results.mkdir(parents=True, exist_ok=True)
        for folder in sorted(folders):
            if folder.is_dir():
                with tempfile.TemporaryFile(dir=folder):
                    pass
    except OSError as exc:
        where = exc.filename or results
        raise PreflightError(f"results folder {results} is not writable: {where}: {exc.strerror or exc}") from None


# --- command line --------------------------------------------------------------------------
def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ease.pipeline", description=__doc__.split("\n\n")[0],
                                     epilog="Grid file format: python -m pydoc ease.grid, or examples/grid.yaml. "
                                            "Exit status: 0 done, 1 a run failed, 2 bad input, 3 workers lost.")
    parser.add_argument("--grid", nargs="+", metavar="NAME_OR_PATH",
                        help=f"builtin grid(s) ({', '.join(builtin_grids())}) or .yaml/.json grid file(s) "
                             "(default exp5-6)")
    parser.add_argument("--book", action="store_true",
                        help=f"every grid the book reads ({', '.join(BOOK_GRIDS)}), instead of --grid")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 for every config (default: the grid's, else 3)")
    parser.add_argument("--smoke", action="store_true", help=f"tiny runs ({SMOKE}) into {SMOKE_RESULTS}")
    parser.add_argument("--results", help=f"results folder (default {DEFAULT_RESULTS}, or {SMOKE_RESULTS} with --smoke)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler (default: a local cluster)")
    parser.add_argument("--workers", type=int, help="local cluster size (default: one per CPU core)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--worker-timeout", type=float, metavar="SECONDS",
                        help=f"with no Dask worker left, give up after this long, finished runs kept "
                             f"(default ${WORKER_TIMEOUT_ENV}, else {DEFAULT_WORKER_TIMEOUT:g})")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether each is finished; run nothing")
    args = parser.parse_args(None if argv is None else list(argv))

    results = args.results or (SMOKE_RESULTS if args.smoke else DEFAULT_RESULTS)
    try:
        worker_timeout = _check_arguments(args)
        names = list(BOOK_GRIDS) if args.book else args.grid or ["exp5-6"]
        grids = {name: load_grid(name) for name in names}
        configs_of = {name: expand_grid(grid, seeds=args.seeds, smoke=args.smoke) for name, grid in grids.items()}
        analyses_of = {name: analyses_wanted(grid, seeds=args.seeds, smoke=args.smoke) for name, grid in grids.items()}
        data, fingerprints = preflight([c for configs in configs_of.values() for c in configs], results,
                                       args.device, args.scheduler, results_needed=not args.dry_run)
    except (GridError, PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for corpus, found in data.items():
        print(describe_data(corpus, found))

    failed = False
    for name, configs in configs_of.items():
        analyse = analyses_of[name]  # per run id: the entry's `analyse`, else the grid's
        # The book's appendix shows the lab notebook of every run of its main grid only.
        lab = not args.book or name == BOOK_GRIDS[0]
        print(f"grid {name}: {len(configs)} runs, results in {Path(results).resolve()}")
        if args.dry_run:
            for config in configs:
                try:
                    work = run_work(config, results, lab, analyse[config.run_id], fingerprints[text_key(config)])
                    state = "finished" if work is None else work.state
                except ValueError as exc:
                    state = f"bad record: {one_line(exc)}"
                print(f"  {config.run_id}  {state:10}  {describe(config)}")
            continue
        try:
            summary = run_grid(configs, results, scheduler=args.scheduler, workers=args.workers, device=args.device,
                               lab_notebooks=lab, analyse=analyse, worker_timeout=worker_timeout)
        except KeyboardInterrupt:
            print("interrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        except SchedulerUnreachable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except WorkersLost as exc:
            print(exc.summary.report())
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_WORKERS_LOST
        print(summary.report())
        failed = failed or not summary.ok
    return EXIT_FAILED if failed else 0


def _check_arguments(args: argparse.Namespace) -> float:
    """Arguments that argparse cannot check alone; returns the worker timeout."""
    if args.book and args.grid:
        raise PreflightError("--book runs every grid the book reads; it cannot be combined with --grid")
    if args.scheduler and args.workers is not None:
        raise PreflightError("--workers sizes the local cluster; it cannot be combined with --scheduler")
    if args.workers is not None and args.workers < 1:
        raise PreflightError(f"--workers must be at least 1, got {args.workers}")
    if args.worker_timeout is None:
        return env_seconds(WORKER_TIMEOUT_ENV, DEFAULT_WORKER_TIMEOUT)
    if not args.worker_timeout > 0:
        raise PreflightError(f"--worker-timeout must be a positive number of seconds, got {args.worker_timeout:g}")
    return args.worker_timeout


# --- helpers the notebooks share -------------------------------------------------------------
def notebook_config(parameters: dict[str, Any], smoke: bool | None = None,
                    results_dir: str | Path | None = None) -> tuple[RunConfig, Path, bool]:
    """The config, results folder and smoke flag a notebook's parameters describe.

    `parameters` holds a value for every RunConfig field (a notebook passes its `globals()`; other
    names in it are ignored). None means RunConfig's default, except `alpha` with setting
    "custom": a custom loss needs no alpha, so None stays None there. `smoke=None` reads the
    environment variable EASE_SMOKE ("1": smoke), so nbval runs the notebooks small without
    edits. With smoke, sizes become `SMOKE` and the results folder, unless given, `SMOKE_RESULTS`.
    """
    missing = [name for name in CONFIG_FIELDS if name not in parameters]
    if missing:
        raise ValueError(f"the notebook's parameters lack RunConfig field(s) {missing}; "
                         "add each to its parameters cell as `name = None`")
    if smoke is None:
        smoke = os.environ.get(SMOKE_ENV) == "1"
    custom = parameters["setting"] == "custom"
    fields = {name: parameters[name] for name in CONFIG_FIELDS
              if parameters[name] is not None or (name == "alpha" and custom)}
    config = RunConfig.from_dict(fields)
    if smoke:
        config = smoke_config(config)
    return config, Path(results_dir or (SMOKE_RESULTS if smoke else DEFAULT_RESULTS)), smoke


def analysis_thresholds(thresholds: Iterable[float] | None = None) -> list[float]:
    """The given thresholds, or a 0.01 grid over [0, 1] plus the document's thresholds."""
    if thresholds is None:
        thresholds = [i / 100 for i in range(101)] + list(DOC_THRESHOLDS)
    return sorted({float(t) for t in thresholds})


if __name__ == "__main__":
    sys.exit(main())
