"""Run records: one JSON file per run under <results>/runs/, written atomically, read validated.

A record is {"schema_version", "run_id", "config", "metrics", "sweep", "history", "env", "timing",
"provenance"}: its schema, validation and migration are ease.records'. Records are written last,
after the checkpoint, through a temporary file and a rename, so a record on disk always belongs to
a finished run; an interrupted run leaves no record and is simply run again. Every reader here
checks every record it reads and names the file of a bad one; `load_records` also refuses two
files holding one run. `find_record` with a data fingerprint refuses a record made on other text.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ease.config import RunConfig
from ease.records import RecordError, check_file_name, load_record, read_json

if TYPE_CHECKING:  # pandas is imported where tables are made: a training process never pays its import
    import pandas as pd

FILE_MODE = 0o644  # readable by all, as files written by a plain open() are (mkstemp makes 0600)


# The results folder's layout, defined here only:
#   runs/<run_id>.json      records          runs/<run_id>.pt   checkpoints
#   executed/<run_id>.ipynb lab notebooks    analysis/<run_id>.json  checkpoint analyses
#   thresholds/<run_id>.json  threshold tables of notebooks/threshold_analysis.py
#   bench/decode.json       the decoding benchmark (and its models' records)
# (ease.pipeline also keeps .locks/<run_id>.lock, a run's lock, and .incoming/<run_id>/, files arriving
#  from a worker before they are renamed into place)
def runs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "runs"


def executed_path(results_dir: str | Path, run_id: str) -> Path:
    """A run's executed training notebook (its lab notebook)."""
    return Path(results_dir) / "executed" / f"{run_id}.ipynb"


def bench_dir(results_dir: str | Path) -> Path:
    """The decoding benchmark's models and results (kept apart from the canonical runs)."""
    return Path(results_dir) / "bench"


def bench_path(results_dir: str | Path) -> Path:
    return bench_dir(results_dir) / "decode.json"


def record_path(results_dir: str | Path, run_id: str) -> Path:
    return runs_dir(results_dir) / f"{run_id}.json"


def checkpoint_path(results_dir: str | Path, run_id: str) -> Path:
    return runs_dir(results_dir) / f"{run_id}.pt"


def analysis_path(results_dir: str | Path, run_id: str) -> Path:
    """Where ease.analysis keeps a run's checkpoint analyses (not in runs/: those are all records)."""
    return Path(results_dir) / "analysis" / f"{run_id}.json"


def thresholds_path(results_dir: str | Path, run_id: str) -> Path:
    """Where notebooks/threshold_analysis.py writes a run's threshold table (not in runs/: those are all records)."""
    return Path(results_dir) / "thresholds" / f"{run_id}.json"


def atomic_write(path: str | Path, write) -> None:
    """Call write(file_object) on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()))


# Any JSON file of a results folder, read with errors that name it (ease.analysis reads its files with it).
read_record = read_json


def find_record(config: RunConfig, results_dir: str | Path, fingerprint: str | None = None) -> dict | None:
    """The finished record of exactly this config, or None when there is none.

    A record there that is bad (see ease.records.check_record) or holds another config is a
    RecordError (a ValueError) naming the file. With `fingerprint` (``ease.data.data_provenance(...)
    ["fingerprint"]`` of the text this run would use), a record made on other text, or one that does
    not say which text it was made on, is not "finished" for this text: a RecordError naming the file
    and both fingerprints.
    """
    path = record_path(results_dir, config.run_id)
    if not path.exists():
        return None
    record = load_record(path)
    if RunConfig.from_dict(record["config"]) != config:
        raise RecordError(f"run record {path} holds a different config than its id says; delete it to re-run")
    data = record["provenance"]["data"]
    if fingerprint is not None and data is None:
        raise RecordError(
            f"run record {path} does not say which text it was made on (schema 1, before provenance), so it "
            f"cannot count as finished for this text (fingerprint {fingerprint}). If it was made on this text, "
            f"record that with python -m ease.records migrate {results_dir}; else delete it or use another "
            "--results folder")
    if fingerprint is not None and data["fingerprint"] != fingerprint:
        raise RecordError(
            f"run record {path} was made on other text (data fingerprint {data['fingerprint']}, from "
            f"{data['location']}) than this run's (fingerprint {fingerprint}): use another --results folder "
            "for runs on this text, or delete that record to re-run it here")
    return record


def record_files(results_dir: str | Path) -> list[Path]:
    return sorted(runs_dir(results_dir).glob("*.json"))


def load_records(results_dir: str | Path) -> list[dict]:
    """Every record of a results folder, checked (ease.records.check_record: a bad one is a
    RecordError naming its file; two files holding one run are an error naming both), at the current
    schema, with its config completed with today's fields (records made before a field existed get
    its default, as `find_record` and the run ids read them)."""
    records, seen = [], {}
    for path in record_files(results_dir):
        record = load_record(path, check_name=False)
        if record["run_id"] in seen:
            raise RecordError(f"run records {seen[record['run_id']]} and {path} both hold run {record['run_id']}; "
                              "delete the copy (a run counted twice would count as two seeds)")
        seen[record["run_id"]] = path
        records.append((path, record))
    for path, record in records:
        check_file_name(record, path)  # checked once no other file holds the run: a copy is named as one
        record["config"] = RunConfig.from_dict(record["config"]).to_dict()
    return [record for _, record in records]


def notebook_complete(path: str | Path) -> bool:
    """Whether `path` is a notebook papermill executed to the end without error (a run's lab notebook).

    False when the file is missing or not a notebook, when papermill never finished it (no end time: a
    kill cut it off, or it is still running), when it recorded an exception, or when any code cell's
    papermill status is not "completed" (cells left "pending" or "running" by a kill, or "failed").
    """
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
        run = nb["metadata"]["papermill"]
        code_cells = [c for c in nb["cells"] if c.get("cell_type") == "code"]
        statuses = [c["metadata"]["papermill"]["status"] for c in code_cells]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return bool(code_cells) and run.get("end_time") is not None and not run.get("exception") \
        and all(status == "completed" for status in statuses)


def load_results(results_dir: str | Path = "results") -> pd.DataFrame:
    """All records as one DataFrame: a row per run, config and metrics fields as columns.

    The `weights` column holds a readable string such as "1:0.7 2:0 3:0.3"; `sweep` and
    `history` stay as lists (see `load_sweeps` and `load_histories` for long tables).
    """
    rows = []
    for record in load_records(results_dir):
        config = dict(record["config"])
        config["weights"] = " ".join(f"{k}:{v:g}" for k, v in config["weights"].items())
        config["sweep_thresholds"] = len(config["sweep_thresholds"])
        rows.append({"run_id": record["run_id"], **config, **record["metrics"],
                     **{f"{k}": v for k, v in record["timing"].items()},
                     "sweep": record["sweep"], "history": record["history"]})
    return _frame(rows)


def _long(results_dir: str | Path, key: str) -> pd.DataFrame:
    rows = []
    for record in load_records(results_dir):
        c = record["config"]
        ident = {"run_id": record["run_id"], "setting": c["setting"], "alpha": c["alpha"], "seed": c["seed"],
                 "n_layers": c["n_layers"], "corpus": c["corpus"], "train_chars": c["train_chars"]}
        rows += [{**ident, **entry} for entry in record[key]]
    return _frame(rows)


def _frame(rows: list[dict]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows)


def load_sweeps(results_dir: str | Path = "results") -> pd.DataFrame:
    """Every run's threshold sweep as a long table (one row per run and threshold)."""
    return _long(results_dir, "sweep")


def load_histories(results_dir: str | Path = "results") -> pd.DataFrame:
    """Every run's per-epoch history as a long table (one row per run and epoch)."""
    return _long(results_dir, "history")


def kept_val_objective(record: dict) -> float:
    """The validation loss of the run's own objective at its kept epoch (runs with select_on="objective")."""
    epoch = record["metrics"]["best_epoch"]
    row = record["history"][epoch - 1]
    if "val_objective" not in row:
        raise ValueError(f"run {record['run_id']} was not kept by its own objective (select_on='objective'), "
                         "so its records cannot choose a budget")
    return row["val_objective"]


def choose_budget(by_budget: dict[int, list[dict]]) -> int:
    """The training budget (a key, e.g. epochs) chosen on validation text, never on test text: starting from the
    smallest, move to the next larger budget while its runs' mean validation loss of their own objective at the
    kept epoch is lower, each step compared over the seeds both budgets have (a larger budget often has fewer
    seeds finished; the step that decides uses every seed it can)."""
    budgets = sorted(by_budget)
    chosen = budgets[0]
    for larger in budgets[1:]:
        seeds = set.intersection(*({r["config"]["seed"] for r in by_budget[b]} for b in (chosen, larger)))
        if not seeds:
            raise ValueError(f"the budgets {chosen} and {larger} have no seed in common; nothing to compare")

        def mean_loss(budget: int) -> float:
            return sum(kept_val_objective(r) for r in by_budget[budget] if r["config"]["seed"] in seeds) / len(seeds)
        if mean_loss(larger) >= mean_loss(chosen):
            break
        chosen = larger
    return chosen
