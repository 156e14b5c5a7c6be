"""Run records: one JSON file per run under <results>/runs/, written atomically.

A record is {"run_id", "config", "metrics", "sweep", "history", "env", "timing"}. Records are
written last, after the checkpoint, through a temporary file and a rename, so a record on disk
always belongs to a finished run; an interrupted run leaves no record and is simply run again.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from ease.config import RunConfig


# The results folder's layout, defined here only:
#   runs/<run_id>.json      records          runs/<run_id>.pt   checkpoints
#   executed/<run_id>.ipynb lab notebooks    analysis/<run_id>.json  checkpoint analyses
#   thresholds/<run_id>.json  threshold tables of notebooks/threshold_analysis.py
#   bench/decode.json       the decoding benchmark (and its models' records)
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


def read_record(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"run record {path} is not valid JSON ({exc}); delete it to re-run that run") from exc


def find_record(config: RunConfig, results_dir: str | Path) -> dict | None:
    """The finished record of exactly this config, or None."""
    path = record_path(results_dir, config.run_id)
    if not path.exists():
        return None
    record = read_record(path)
    try:  # through RunConfig, so records made before a field existed read it as its default
        same = RunConfig.from_dict(record["config"]) == config
    except (KeyError, TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(f"run record {path} holds a different config than its id says; delete it to re-run")
    return record


def record_files(results_dir: str | Path) -> list[Path]:
    return sorted(runs_dir(results_dir).glob("*.json"))


def load_records(results_dir: str | Path) -> list[dict]:
    """Every record, its config completed with today's fields (records made before a field
    existed get its default, as `find_record` and the run ids read them)."""
    records = []
    for path in record_files(results_dir):
        record = read_record(path)
        record["config"] = RunConfig.from_dict(record["config"]).to_dict()
        records.append(record)
    return records


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
    return pd.DataFrame(rows)


def _long(results_dir: str | Path, key: str) -> pd.DataFrame:
    rows = []
    for record in load_records(results_dir):
        c = record["config"]
        ident = {"run_id": record["run_id"], "setting": c["setting"], "alpha": c["alpha"], "seed": c["seed"],
                 "n_layers": c["n_layers"], "corpus": c["corpus"], "train_chars": c["train_chars"]}
        rows += [{**ident, **entry} for entry in record[key]]
    return pd.DataFrame(rows)


def load_sweeps(results_dir: str | Path = "results") -> pd.DataFrame:
    """Every run's threshold sweep as a long table (one row per run and threshold)."""
    return _long(results_dir, "sweep")


def load_histories(results_dir: str | Path = "results") -> pd.DataFrame:
    """Every run's per-epoch history as a long table (one row per run and epoch)."""
    return _long(results_dir, "history")
