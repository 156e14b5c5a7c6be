"""Run a grid of configs through the training notebook, in parallel, resumably.

Usage::

    python -m ease.pipeline [--grid NAME_OR_PATH ... | --book] [--seeds N] [--smoke] [--results DIR]
                            [--scheduler ADDRESS] [--workers N] [--device DEV] [--dry-run]

Each run executes the training notebook ``notebooks/train_run.py`` (shipped with the package as
``ease.notebooks``; read with jupytext, parameters injected by papermill). Where its files go is
``ease.results``'s layout: the executed notebook (the run's lab notebook) at
``executed_path(DIR, run_id)``, the record and checkpoint (``ease.run`` writes them) at
``record_path`` and ``checkpoint_path``, and the checkpoint analysis (``ease.analysis``) at
``analysis_path``. A run whose record already exists is not trained again, so an interrupted
pipeline resumes where it stopped (if its executed notebook is missing, the notebook runs from
the record in seconds; a missing analysis is computed from the checkpoint); a failed run is
reported with its executed notebook and the others still finish. The exit status is 0 only if
no run failed.

Runs are scheduled on Dask distributed: by default on a local cluster of one single-threaded
worker process per CPU core (``--workers`` to change), with no dashboard; ``--scheduler
tcp://host:8786`` sends them to an existing cluster instead (its workers need ``ease``
installed, the data reachable, e.g. through ``EASE_DATA_DIR``, and the results folder on a
shared file system).

``--grid`` takes builtin grid names (the YAML files of ``grids/``: ``exp5-6``, the default,
``forensics``, ``dense``, ``regimes``, ``alpha``) or YAML/JSON grid files, run one after the
other; ``--book`` runs every grid the book reads (``ease.grid.BOOK_GRIDS``), and only the first
one's runs get lab notebooks there (the others need records and analyses). The grid format is
in ``ease.grid`` (``python -m pydoc ease.grid``) and ``examples/grid.yaml``.

Relative paths in configs (a ``corpus`` folder) are read from the folder the pipeline was
started in.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from ease.config import DOC_THRESHOLDS, RunConfig
from ease.grid import (BOOK_GRIDS, SMOKE, GridError, builtin_grids, expand_grid, load_grid,
                       smoke_config)
from ease.results import executed_path, find_record

DEFAULT_RESULTS = "results"
SMOKE_RESULTS = "results/smoke"
SMOKE_ENV = "EASE_SMOKE"
# notebooks/ of the repository, installed as the package ease.notebooks (found from any folder)
TRAIN_NOTEBOOK = Path(str(resources.files("ease.notebooks") / "train_run.py"))
# The notebooks' parameters cells name every RunConfig field; RunConfig alone holds the defaults.
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


def describe(config: RunConfig) -> str:
    """The fields that differ from RunConfig's defaults, e.g. "alpha=0.3 norm=pre" (seed and derived weights left out)."""
    default = RunConfig().to_dict()
    changed = {k: v for k, v in config.to_dict().items()
               if k != "seed" and v != default[k] and not (k == "weights" and config.setting != "custom")}
    return " ".join(f"{k}={v}" for k, v in changed.items()) or "(defaults)"


# --- running -------------------------------------------------------------------------------
def notebook_parameters(config: RunConfig, results_dir: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The papermill parameters that make train_run.py run exactly `config`."""
    params = config.to_dict()
    if config.setting != "custom":
        params["weights"] = None  # derived from setting and alpha inside RunConfig
    return {**params, "results_dir": str(results_dir), "device": device, "smoke": False}


def execute_run(config_dict: dict, results_dir: str, notebook_json: str | None, cwd: str | None,
                device: str = "cpu", analyse: bool = True) -> dict:
    """One run's work (on a Dask worker): the notebook (unless `notebook_json` is None), then the
    checkpoint analysis (ease.analysis). Never raises, reports instead.

    The work runs in a child process whose environment drops MALLOC_TRIM_THRESHOLD_: Dask's
    nanny sets it for its workers (65536), and a kernel inheriting it spends its time returning
    memory to the system (measured: training at 13,800 instead of 31,500 tokens/s).
    """
    args = {"config_dict": config_dict, "results_dir": results_dir, "notebook_json": notebook_json,
            "cwd": cwd, "device": device, "analyse": analyse}
    child = ("import json, sys; from ease.pipeline import run_task; "
             "print(json.dumps(run_task(**json.load(sys.stdin))))")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", child], input=json.dumps(args), capture_output=True,
                              text=True, env=env)
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):  # the child itself died: report its last words
            run_id = RunConfig.from_dict(config_dict).run_id
            result = {"run_id": run_id, "notebook": str(executed_path(results_dir, run_id)), "status": "failed",
                      "error": f"runner exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
        # Two kernels starting at once in different processes can pick the same free TCP port; the
        # loser never starts. That is no fault of the run: start it once more.
        if result["status"] == "done" or "Kernel didn't respond" not in result.get("error", ""):
            break
    return result


def run_task(config_dict: dict, results_dir: str, notebook_json: str | None, cwd: str | None,
             device: str = "cpu", analyse: bool = True) -> dict:
    """The body of `execute_run`, in the child process."""
    if notebook_json is not None:
        result = execute_notebook(config_dict, results_dir, notebook_json, cwd, device)
    else:
        result = {"run_id": RunConfig.from_dict(config_dict).run_id, "notebook": None, "status": "done",
                  "seconds": 0.0}
    if analyse and result["status"] == "done":
        from ease.analysis import ensure_analysis

        start = time.perf_counter()
        try:
            ensure_analysis(RunConfig.from_dict(config_dict), results_dir, device)
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
    result = {"run_id": config.run_id, "notebook": str(out)}
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


@dataclass
class GridSummary:
    done: list[dict] = field(default_factory=list)  # {run_id, notebook, seconds}
    skipped: list[str] = field(default_factory=list)  # run ids whose record and notebook already existed
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


def run_grid(configs: Sequence[RunConfig], results_dir: str | Path = DEFAULT_RESULTS, scheduler: str | None = None,
             workers: int | None = None, device: str = "cpu", notebook: str | Path = TRAIN_NOTEBOOK,
             progress: bool = True, lab_notebooks: bool = True, analyse: bool = False) -> GridSummary:
    """Run every config not finished yet through `notebook` on Dask; return what happened.

    `scheduler`: address of an existing Dask scheduler; None starts a local cluster of `workers`
    single-threaded worker processes (default: one per core), closed when the grid is done.
    `lab_notebooks`: a finished run also needs its executed notebook (rendered from the record
    when missing); False: the record is enough. `analyse`: each run also needs its checkpoint
    analysis (ease.analysis), computed where missing (a grid asks for it with `analyse: true`).
    """
    from ease.analysis import load_analysis

    import jupytext
    import nbformat
    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    if scheduler and workers is not None:
        raise ValueError("workers sizes the local cluster only; an existing scheduler brings its own workers")
    results_dir = Path(results_dir).resolve()  # absolute: workers may run elsewhere
    summary = GridSummary()
    configs = list({config.run_id: config for config in configs}.values())  # one run per config
    todo: list[tuple[RunConfig, bool]] = []  # (config, whether its notebook must run)
    for config in configs:
        try:
            finished = find_record(config, results_dir) is not None
        except ValueError as exc:  # a record that does not match its id: say so, do not overwrite it
            summary.failed.append({"run_id": config.run_id, "notebook": None, "error": str(exc)})
            continue
        # A record without its lab notebook (committed records on a fresh clone) still goes through
        # the notebook when lab notebooks are wanted: it loads the record instead of training.
        needs_notebook = not finished or (lab_notebooks and not executed_path(results_dir, config.run_id).exists())
        needs_analysis = analyse and (needs_notebook or load_analysis(config, results_dir) is None)
        if needs_notebook or needs_analysis:
            todo.append((config, needs_notebook))
        else:
            summary.skipped.append(config.run_id)

    bar = tqdm(total=len(configs), desc="grid", unit="run", disable=not progress)
    bar.update(len(configs) - len(todo))
    if todo:
        notebook_json = nbformat.writes(jupytext.read(notebook))
        cwd = os.getcwd()
        if scheduler:
            cluster, client = None, Client(scheduler)
        else:
            n = min(workers or default_workers(), len(todo))
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
        try:
            futures = {client.submit(execute_run, config.to_dict(), str(results_dir),
                                     notebook_json if needs_notebook else None, cwd, device, analyse,
                                     key=f"ease-run-{config.run_id}-{time.time_ns()}", pure=False): config
                       for config, needs_notebook in todo}
            for future in as_completed(futures):
                config = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # the worker itself died
                    result = {"run_id": config.run_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                              "notebook": str(executed_path(results_dir, config.run_id))}
                status = result.pop("status")
                (summary.done if status == "done" else summary.failed).append(result)
                bar.update(1)
                bar.set_postfix(done=len(summary.done), failed=len(summary.failed))
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    bar.close()
    return summary


# --- command line --------------------------------------------------------------------------
def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ease.pipeline", description=__doc__.split("\n\n")[0],
                                     epilog="Grid file format: python -m pydoc ease.grid, or examples/grid.yaml.")
    parser.add_argument("--grid", nargs="+", default=["exp5-6"], metavar="NAME_OR_PATH",
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
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether each is finished; run nothing")
    args = parser.parse_args(None if argv is None else list(argv))

    results = args.results or (SMOKE_RESULTS if args.smoke else DEFAULT_RESULTS)
    names = list(BOOK_GRIDS) if args.book else args.grid
    try:
        grids = {name: load_grid(name) for name in names}
        configs_of = {name: expand_grid(grid, seeds=args.seeds, smoke=args.smoke) for name, grid in grids.items()}
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.scheduler and args.workers is not None:
        print("error: --workers sizes the local cluster; it cannot be combined with --scheduler", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2

    from ease.analysis import load_analysis

    failed = False
    for name, configs in configs_of.items():
        analyse = bool(grids[name].get("analyse", False))
        print(f"grid {name}: {len(configs)} runs, results in {Path(results).resolve()}")
        if args.dry_run:
            for config in configs:
                try:
                    state = "finished" if find_record(config, results) else "to run"
                    if state == "finished" and analyse and load_analysis(config, results) is None:
                        state = "to analyse"
                except ValueError as exc:
                    state = f"bad record: {exc}"
                print(f"  {config.run_id}  {state:10}  {describe(config)}")
            continue
        # The book's appendix shows the lab notebook of every run of its main grid only.
        lab = not args.book or name == BOOK_GRIDS[0]
        try:
            summary = run_grid(configs, results, scheduler=args.scheduler, workers=args.workers, device=args.device,
                               lab_notebooks=lab, analyse=analyse)
        except KeyboardInterrupt:
            print("interrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
            return 130
        print(summary.report())
        failed = failed or not summary.ok
    return 1 if failed else 0


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
