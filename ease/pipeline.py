"""Run a grid of configs through the training notebook, in parallel, resumably.

Usage::

    python -m ease.pipeline [--grid NAME_OR_PATH ... | --book] [--seeds N] [--smoke] [--results DIR]
                            [--scheduler ADDRESS] [--workers N] [--device DEV] [--dry-run]

Each run executes ``notebooks/train_run.py`` (read with jupytext, parameters injected by
papermill); the executed notebook is kept at ``DIR/executed/<run_id>.ipynb`` and the run's
record and checkpoint land in ``DIR/runs/`` (``ease.run`` writes them), then the checkpoint
analysis (``ease.analysis``) lands in ``DIR/analysis/``. A run whose record already exists is
not trained again, so an interrupted pipeline resumes where it stopped (if its executed
notebook is missing, the notebook runs from the record in seconds; a missing analysis is
computed from the checkpoint); a failed run is reported with its executed notebook and the
others still finish. The exit status is 0 only if no run failed.

Runs are scheduled on Dask distributed: by default on a local cluster of one single-threaded
worker process per CPU core (``--workers`` to change), with no dashboard; ``--scheduler
tcp://host:8786`` sends them to an existing cluster instead (its workers need ``ease``
installed, the data reachable, e.g. through ``EASE_DATA_DIR``, and the results folder on a
shared file system).

Grids
-----
``--grid`` takes builtin names or YAML/JSON files, run one after the other. Builtin grids:
``exp5-6`` (the default: the document's Experiments 5 and 6, five seeds), ``forensics`` (the
document's grid at the original code's sizes and rules, on WikiText-2 and on the original's
placeholder text), ``dense`` (1-, 2- and 3-layer models with the last layer's loss only),
``regimes`` (the document's configurations trained with cosine decay and patience) and
``alpha`` (α from 0 to 1 by 0.1 for A and B). ``--book`` runs every grid the book reads; only
``exp5-6``'s runs get lab notebooks there (the others need records and analyses). A grid file
looks like ``examples/grid.yaml``::

    description: any text            # optional
    seeds: 3                         # optional: seeds 0..N-1, or an explicit list [0, 4]; default 3
    base:                            # optional: RunConfig fields shared by every run
      max_epochs: 30
    analyse: false                   # optional: also compute each run's checkpoint analysis
    runs:                            # required: one entry per group of runs
      - {setting: A, alpha: [0.3, 0.5, 0.7]}           # a list means "each of these": 3 configs
      - {setting: B, alpha: 0.7, norm: [post, pre]}    # several lists: their product, 2 configs
      - {setting: custom, alpha: null, weights: {1: 0.5, 3: 0.5}}

Keys of ``base`` and of each entry are ``RunConfig`` fields (an entry overrides ``base``);
``seed`` is not one of them, since ``seeds`` sets it. Every config runs once per seed; runs
are ordered seed by seed (all of seed 0 first), so a stopped grid has whole seeds done, and a
config listed twice runs once. ``sweep_thresholds`` takes a list of numbers as its value; to
expand it give a list of such lists. ``--seeds N`` overrides the file's seeds, and ``--smoke``
replaces the sizes with the tiny ``SMOKE`` set and writes to ``results/smoke`` unless
``--results`` is given. Every entry is checked before anything runs; a bad one is an error
naming the entry.

Relative paths in configs (a ``corpus`` folder) are read from the folder the pipeline was
started in.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ease.config import DOC_THRESHOLDS, RunConfig
from ease.results import find_record

# The tiny sizes of a smoke run (tests, nbval, `--smoke`); defined once, here.
SMOKE = {"train_chars": 20_000, "val_chars": 5_000, "max_epochs": 1}
DEFAULT_RESULTS = "results"
SMOKE_RESULTS = "results/smoke"
SMOKE_ENV = "EASE_SMOKE"
DEFAULT_SEEDS = 3
NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
TRAIN_NOTEBOOK = NOTEBOOKS_DIR / "train_run.py"

BUILTIN_GRIDS: dict[str, dict] = {
    "exp5-6": {
        "description": "Experiment 5: setting A at alpha 0.3, 0.5, 0.7. Experiment 6: setting B at alpha 0.7, "
                       "compared with A at 0.7. Five seeds (the claims chapter compares them paired). Every "
                       "run sweeps thresholds (the default fine grid holds the document's 0.5, 0.7, 0.8, 0.9, "
                       "0.95).",
        "seeds": 5,
        "analyse": True,
        "runs": [{"setting": "A", "alpha": [0.3, 0.5, 0.7]},
                 {"setting": "B", "alpha": 0.7}],
    },
    # The audit of the document (book chapters "Forensics", "Claims" and "Beyond the document").
    "forensics": {
        "description": "The document's grid with the original code's sizes and rules (100K train and 10K "
                       "validation characters, stop at the first worse epoch, sweep the last epoch's weights) "
                       "on WikiText-2 and on the original code's placeholder text.",
        "seeds": 5,
        "analyse": True,
        "base": {"train_chars": 100_000, "val_chars": 10_000, "sweep_weights": "last",
                 "corpus": ["wikitext-2", "placeholder"]},
        "runs": [{"setting": "A", "alpha": [0.3, 0.5, 0.7]},
                 {"setting": "B", "alpha": 0.7}],
    },
    "dense": {
        "description": "Dense baselines: standard 1-, 2- and 3-layer models trained on the last layer's loss "
                       "only, same data and rules as the document's runs.",
        "seeds": 5,
        "runs": [{"setting": "custom", "alpha": None, "n_layers": n, "weights": {n: 1.0}} for n in (1, 2, 3)],
    },
    "alpha": {
        "description": "alpha from 0.0 to 1.0 in steps of 0.1 for settings A and B (three seeds).",
        "seeds": 3,
        "runs": [{"setting": ["A", "B"], "alpha": [round(0.1 * i, 1) for i in range(11)]}],
    },
    "regimes": {
        "description": "The claims' configurations trained well: cosine learning-rate decay over 20 epochs and "
                       "patience 3, instead of stopping at the first worse epoch with a constant rate.",
        "seeds": 5,
        "base": {"lr_schedule": "cosine", "max_epochs": 20, "patience": 3},
        "runs": [{"setting": "A", "alpha": [0.3, 0.5, 0.7]},
                 {"setting": "B", "alpha": 0.7}],
    },
}
# The grids the book reads, in the order `--book` runs them. Only the first one's runs get lab
# notebooks in the book's appendix; the others need their records and analyses.
BOOK_GRIDS = ("exp5-6", "forensics", "dense", "regimes", "alpha")
GRID_KEYS = {"description", "seeds", "base", "runs", "analyse"}


class GridError(ValueError):
    """A grid (builtin or file) is malformed or holds an invalid config."""


# --- configs -------------------------------------------------------------------------------
def smoke_config(config: RunConfig) -> RunConfig:
    """The same config at smoke size."""
    return config.replace(**SMOKE)


# --- grids ---------------------------------------------------------------------------------
def load_grid(name_or_path: str | Path) -> dict:
    """A builtin grid by name, or a grid read from a .yaml/.yml/.json file."""
    if str(name_or_path) in BUILTIN_GRIDS:
        return BUILTIN_GRIDS[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise GridError(f"grid {str(name_or_path)!r} is neither a builtin grid ({', '.join(BUILTIN_GRIDS)}) "
                        "nor an existing .yaml/.json file")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise GridError(f"grid file {path} must end in .yaml, .yml or .json")
    text = path.read_text(encoding="utf-8")
    try:
        grid = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise GridError(f"grid file {path} could not be parsed: {exc}") from None
    return grid


def _grid_seeds(value: Any) -> list[int]:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(value):
        if value < 1:
            raise GridError(f"seeds must be at least 1, got {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(is_int(v) and v >= 0 for v in value):
        if len(set(value)) != len(value):
            raise GridError(f"seeds list {value} repeats a seed")
        return list(value)
    raise GridError(f"seeds must be a count >= 1 or a non-empty list of seeds >= 0, got {value!r}")


def _expand_entry(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """The product of an entry's list values (a list of numbers for sweep_thresholds is one value)."""
    choices = {}
    for key, value in fields.items():
        is_choice = isinstance(value, list)
        if key == "sweep_thresholds":
            is_choice = isinstance(value, list) and bool(value) and all(isinstance(v, list) for v in value)
        if is_choice and not value:
            raise GridError(f"{key} is an empty list, which expands to no runs")
        choices[key] = value if is_choice else [value]
    return [dict(zip(choices, combo)) for combo in itertools.product(*choices.values())]


def expand_grid(grid: dict, seeds: int | None = None, smoke: bool = False) -> list[RunConfig]:
    """Every config of a grid, validated, duplicates dropped, ordered seed by seed.

    `seeds` (a count) overrides the grid's own; `smoke` shrinks every run to the `SMOKE` sizes.
    Raises GridError naming the first bad entry; nothing is run here.
    """
    if not isinstance(grid, dict):
        raise GridError(f"a grid must be a mapping with a 'runs' list, got {type(grid).__name__}")
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise GridError(f"unknown grid key(s) {unknown}; a grid has {sorted(GRID_KEYS)}")
    if not isinstance(grid.get("analyse", False), bool):
        raise GridError(f"grid 'analyse' must be true or false, got {grid['analyse']!r}")
    seed_list = _grid_seeds(grid.get("seeds", DEFAULT_SEEDS) if seeds is None else seeds)
    base = grid.get("base") or {}
    if not isinstance(base, dict):
        raise GridError(f"grid 'base' must be a mapping of RunConfig fields, got {base!r}")
    entries = grid.get("runs")
    if not isinstance(entries, list) or not entries:
        raise GridError("grid 'runs' must be a non-empty list of entries (mappings of RunConfig fields)")

    per_entry: list[list[dict[str, Any]]] = []
    for number, entry in enumerate(entries, start=1):
        where = f"grid entry {number} {entry!r}"
        if not isinstance(entry, dict):
            raise GridError(f"{where}: an entry must be a mapping of RunConfig fields")
        fields = {**base, **entry}
        if "seed" in fields:
            raise GridError(f"{where}: 'seed' is set by the grid's 'seeds', not per entry")
        try:
            combos = _expand_entry(fields)
            for combo in combos:  # validate every combination now, before anything runs
                config = RunConfig.from_dict({**combo, "seed": seed_list[0]})
                if smoke:
                    smoke_config(config)
        except (GridError, ValueError) as exc:
            raise GridError(f"{where}: {exc}") from None
        per_entry.append(combos)

    configs: dict[str, RunConfig] = {}
    for seed in seed_list:
        for combos in per_entry:
            for combo in combos:
                config = RunConfig.from_dict({**combo, "seed": seed})
                if smoke:
                    config = smoke_config(config)
                configs.setdefault(config.run_id, config)
    return list(configs.values())


def describe(config: RunConfig) -> str:
    """The fields that differ from RunConfig's defaults, e.g. "alpha=0.3 norm=pre" (seed and derived weights left out)."""
    default = RunConfig().to_dict()
    changed = {k: v for k, v in config.to_dict().items()
               if k != "seed" and v != default[k] and not (k == "weights" and config.setting != "custom")}
    return " ".join(f"{k}={v}" for k, v in changed.items()) or "(defaults)"


# --- running -------------------------------------------------------------------------------
def executed_path(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / "executed" / f"{run_id}.ipynb"


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
                                     epilog="Grid file format: python -m pydoc ease.pipeline, or examples/grid.yaml.")
    parser.add_argument("--grid", nargs="+", default=["exp5-6"], metavar="NAME_OR_PATH",
                        help=f"builtin grid(s) ({', '.join(BUILTIN_GRIDS)}) or .yaml/.json grid file(s) "
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
        grids = {name: expand_grid(load_grid(name), seeds=args.seeds, smoke=args.smoke) for name in names}
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
    for name, configs in grids.items():
        print(f"grid {name}: {len(configs)} runs, results in {Path(results).resolve()}")
        if args.dry_run:
            for config in configs:
                try:
                    state = "finished" if find_record(config, results) else "to run"
                    if state == "finished" and load_grid(name).get("analyse") and load_analysis(config, results) is None:
                        state = "to analyse"
                except ValueError as exc:
                    state = f"bad record: {exc}"
                print(f"  {config.run_id}  {state:10}  {describe(config)}")
            continue
        # The book's appendix shows the lab notebook of every run of its main grid only.
        lab = not args.book or name == BOOK_GRIDS[0]
        try:
            summary = run_grid(configs, results, scheduler=args.scheduler, workers=args.workers, device=args.device,
                               lab_notebooks=lab, analyse=bool(load_grid(name).get("analyse", False)))
        except KeyboardInterrupt:
            print("interrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
            return 130
        print(summary.report())
        failed = failed or not summary.ok
    return 1 if failed else 0


# --- helpers the notebooks share -------------------------------------------------------------
def notebook_config(fields: dict[str, Any], smoke: bool | None = None,
                    results_dir: str | Path | None = None) -> tuple[RunConfig, Path, bool]:
    """The config, results folder and smoke flag a notebook's parameters describe.

    `sweep_thresholds=None` means RunConfig's default sweep. `smoke=None` reads the environment
    variable EASE_SMOKE ("1": smoke), so nbval runs the notebooks small without edits. With
    smoke, sizes become `SMOKE` and the results folder, unless given, `SMOKE_RESULTS`.
    """
    if smoke is None:
        smoke = os.environ.get(SMOKE_ENV) == "1"
    fields = dict(fields)
    if fields.get("sweep_thresholds") is None:
        fields.pop("sweep_thresholds", None)
    config = RunConfig.from_dict(fields)
    if smoke:
        config = smoke_config(config)
    return config, Path(results_dir or (SMOKE_RESULTS if smoke else DEFAULT_RESULTS)), smoke


def analysis_thresholds(thresholds: Iterable[float] | None = None) -> list[float]:
    """The given thresholds, or a 0.01 grid over [0, 1] plus the document's thresholds."""
    if thresholds is None:
        thresholds = [i / 100 for i in range(101)] + list(DOC_THRESHOLDS)
    return sorted({float(t) for t in thresholds})


def thresholds_path(results_dir: str | Path, run_id: str) -> Path:
    """Where threshold_analysis writes a run's table.

    Not in runs/: ease.results reads every runs/*.json as a run record.
    """
    return Path(results_dir) / "thresholds" / f"{run_id}.json"


if __name__ == "__main__":
    sys.exit(main())
