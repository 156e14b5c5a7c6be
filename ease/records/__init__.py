"""What a run record is: one versioned schema, its validation, its provenance, and the migration of older records.

A record (``<results>/runs/<run_id>.json``, written by ``ease.train.run``) follows
``ease/records/record.schema.json`` (JSON Schema, shipped with the package), at ``SCHEMA_VERSION``. Every
reader goes through `check_record`: it names the file of a bad record (not JSON, empty, a missing
or mistyped field, a config that does not hash to its ``run_id``, a file name that is not its
``run_id``), so a stray ``<run_id> (copy).json`` or a half-written record is an error, never a
second seed or a bare KeyError. ``ease.results`` reads folders through it (and refuses two files
holding one run).

Provenance. Since schema 2 a record says what it was made from: ``provenance.data`` is
``ease.data.data_provenance`` of the text the run used (SHA-256 of the exact train and
validation text, of the whole test split, a short fingerprint, and where the text came from), and
``provenance.code`` the package version and git commit (``git_dirty``: uncommitted changes to
the checkout; both null outside a git checkout).

Why the run id stays the config's hash, and the data fingerprint is checked beside it. The id
names what was asked (a configuration); the fingerprint names what was read (a text), known only
once the data is read (the hub resolves its revision at load time; EASE_DATA_DIR can point
anywhere). Ids computed from configs alone let a dry run, a grid file and the book name every
run without touching the data, and they keep every committed record, analysis and lab notebook
found under the name it has (hashing the text into the id would orphan all of them). So the
fingerprint is part of a run's identity at the one place where identity decides something:
``ease.results.find_record(config, results, fingerprint)`` refuses, with both fingerprints and the
file named, to call a record "finished" for text other than the one it was made on. One results
folder holds runs on one text; runs on other text need another folder.

Older records: `migrate` is the one way from an older schema to this one. Loading applies it in
memory (never writing): a schema-1 record then has provenance null, "unknown", and cannot count
as finished for a fingerprint. ``python -m ease.records migrate`` applies it with the provenance
it can establish (the data present now, the record file's last commit) and writes the result;
the evidence for that provenance is stored with it.

Command line (ease/records/__main__.py)::

    python -m ease.records check PATH ...                      # validate (PATH: a results folder or record files)
    python -m ease.records migrate [--evidence TEXT] PATH ...  # write schema-1 records at this schema
    python -m ease.records verify [--rel-tol R] FILE ...       # retrain each record, compare its numbers
"""
from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from ease.config import RunConfig

SCHEMA_VERSION = 2
SCHEMA_FILE = "record.schema.json"
PACKAGE = "ease-companion"  # the distribution name, for the version recorded in provenance.code
UNKNOWN_CODE = {"ease_version": None, "git_commit": None, "git_dirty": None}


class RecordError(ValueError):
    """A record file that cannot be trusted as it is; the message is one line naming the file."""


def schema() -> dict:
    return json.loads((resources.files("ease.records") / SCHEMA_FILE).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _validator():
    # fastjsonschema compiles the schema to Python once: every record is checked on every read, and
    # the book reads hundreds (about 1 ms each; the jsonschema package took 30 times longer)
    import fastjsonschema

    return fastjsonschema.compile(schema())


# --- reading and checking ---------------------------------------------------------------------
def read_json(path: str | Path) -> Any:
    """Any JSON file of a results folder, with errors that name it (empty, not UTF-8, not JSON)."""
    path = Path(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise RecordError(f"{path} is empty (a write was cut off?); delete it to re-run that run")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path} is not valid JSON ({exc}); delete it to re-run that run") from None


def migrate(record: dict, data: dict | None = None, code: dict | None = None,
            evidence: dict | None = None) -> dict:
    """The record at SCHEMA_VERSION; the one way from an older schema to this one. An older record
    gives a new dict (the argument is left as it is); one at SCHEMA_VERSION is returned as it is.

    Schema 1 (no ``schema_version``, before provenance) gains ``schema_version`` and
    ``provenance``; nothing it held changes. What it cannot say itself comes from the arguments:
    `data` (an ``ease.data.data_provenance`` dict), `code` (as `code_provenance` gives) and
    `evidence` (``{"data": how data was established, "code": how code was}``); left out, each is
    null, meaning unknown. Loading applies it without arguments, in memory; ``python -m
    ease.records migrate`` with what it established, and writes the result.
    """
    version = record.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        return record
    if version != 1:
        raise ValueError(f"schema_version {version!r} is not one this ease knows (1 to {SCHEMA_VERSION})")
    provenance = {"data": data, "code": code or dict(UNKNOWN_CODE),
                  "migrated": {"from_schema": 1, "evidence": {"data": None, "code": None, **(evidence or {})}}}
    return {"schema_version": SCHEMA_VERSION, **copy.deepcopy(record), "provenance": provenance}


def _schema_problem(record: dict) -> str | None:
    """The first way `record` breaks the schema, e.g. "record.metrics.ppl must be number", or None."""
    import fastjsonschema

    try:
        _validator()(record)
    except fastjsonschema.JsonSchemaValueException as exc:
        return "record" + exc.message[len("data"):] if exc.message.startswith("data") else exc.message
    return None


def check_record(record: Any, path: str | Path, check_name: bool = True) -> dict:
    """`record` (read from `path`) at SCHEMA_VERSION and valid, or a RecordError naming `path`.

    Checks, in order: a JSON object of a known schema_version (older ones go through `migrate`),
    a config that RunConfig accepts and whose hash is the run_id, the schema, and (`check_name`)
    a file name that is the run_id.
    """
    path = Path(path)

    def fail(problem: str, fix: str = "delete it to re-run that run") -> RecordError:
        return RecordError(f"run record {path} {problem}; {fix}")

    if not isinstance(record, dict):
        raise fail(f"is not a JSON object but {type(record).__name__}")
    version = record.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise fail(f"has schema_version {version!r}, not one this ease knows (1 to {SCHEMA_VERSION})",
                   "it was made by another version of ease")
    record = migrate(record)
    if isinstance(record.get("config"), dict) and isinstance(record.get("run_id"), str):
        try:
            config = RunConfig.from_dict(record["config"])
        except ValueError as exc:
            raise fail(f"has an invalid config ({exc})") from None
        if config.run_id != record["run_id"]:
            raise fail(f"holds a different config than its id says (it hashes to {config.run_id}, "
                       f"not {record['run_id']})")
        if config.calibrate != ("calibration" in record):
            raise fail(f"has {'no ' if 'calibration' not in record else ''}calibration, but its config has "
                       f"calibrate={config.calibrate}")
        if bool(config.test_chars) != ("test" in record):
            raise fail(f"has {'no ' if 'test' not in record else ''}test-text results, but its config has "
                       f"test_chars={config.test_chars}")
    problem = _schema_problem(record)
    if problem is not None:
        raise fail(f"does not follow the record schema ({problem})")
    if check_name:
        check_file_name(record, path)
    return record


def check_file_name(record: dict, path: str | Path) -> None:
    """A record's file must be named after its run: a stray "<run_id> (copy).json" is an error."""
    if Path(path).stem != record["run_id"]:
        raise RecordError(f"run record {path} holds run {record['run_id']}, so its name must be "
                          f"{record['run_id']}.json; rename it, or delete it if it is a copy")


def load_record(path: str | Path, check_name: bool = True) -> dict:
    """The record in `path`, checked (`check_record`) and at SCHEMA_VERSION."""
    return check_record(read_json(path), path, check_name)


# --- provenance of the code -------------------------------------------------------------------
def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git here
        return None
    return proc.stdout if proc.returncode == 0 else None


def code_provenance() -> dict:
    """{"ease_version", "git_commit", "git_dirty"} of the running ease. The git fields are null unless
    ease runs from a git checkout (the repository whose top folder holds this package), so an ease
    installed into a virtual environment that lies inside some other repository claims no commit."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parents[2]  # ease/records/__init__.py -> the folder holding ease/
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root:
        return {"ease_version": version, "git_commit": None, "git_dirty": None}
    commit = (_git(root, "rev-parse", "HEAD") or "").strip() or None
    status = _git(root, "status", "--porcelain")  # any change, untracked files included
    dirty = None if status is None else bool(status.strip())
    return {"ease_version": version, "git_commit": commit, "git_dirty": dirty}


def file_history(path: Path) -> tuple[dict, str]:
    """A committed record's code provenance from git: the last commit that changed the file."""
    commit = (_git(path.parent, "log", "-1", "--format=%H", "--", path.name) or "").strip()
    if not commit:
        return dict(UNKNOWN_CODE), "unknown: the record file has no git history"
    top = Path((_git(path.parent, "rev-parse", "--show-toplevel") or "").strip())
    pyproject = _git(top, "show", f"{commit}:pyproject.toml") or ""
    found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.M)
    return ({"ease_version": found.group(1) if found else None, "git_commit": commit, "git_dirty": None},
            "git_commit is the last commit that changed this record file before its migration (git log -1), "
            "so the code that made the run is that commit's or older; ease_version is that commit's "
            "pyproject.toml version; git_dirty is unknown")
