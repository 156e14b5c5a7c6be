"""python -m ease.records: check, migrate and verify run records (see ease.records)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from ease.config import RunConfig
from ease.data import DATA_ENV, DataError, data_provenance
from ease.records import (SCHEMA_VERSION, RecordError, check_record, file_history, load_record, migrate,
                          read_json)
from ease.results import record_files, write_json
from ease.train import run


def _record_paths(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out += [p] if p.is_file() else record_files(p)
    return out


def _check(paths: list[str]) -> int:
    bad = files = 0
    for path in _record_paths(paths):
        files += 1
        try:
            load_record(path)
        except (RecordError, OSError) as exc:
            bad += 1
            print(f"BAD {exc}")
    print(f"{files - bad} of {files} record(s) valid")
    return 1 if bad else 0


def _migrate(paths: list[str], evidence: str | None) -> int:
    data_evidence = evidence or (f"assumed, not checked: the text present at migration ({DATA_ENV}="
                                 f"{os.environ.get(DATA_ENV) or 'unset: the hub'}) is taken to be the text the run "
                                 "was trained on")
    failed = migrated = 0
    for path in _record_paths(paths):
        try:
            raw = read_json(path)
            current = check_record(raw, path)  # valid once migrated in memory
            if raw.get("schema_version", 1) == SCHEMA_VERSION:
                continue
            config = current["config"]
            data = data_provenance(config["corpus"], config["train_chars"], config["val_chars"])
            code, code_evidence = file_history(path.resolve())
            new = check_record(migrate(raw, data, code, {"data": data_evidence, "code": code_evidence}), path)
        except (RecordError, DataError, OSError) as exc:
            failed += 1
            print(f"not migrated: {exc}")
            continue
        write_json(path, new)
        migrated += 1
        print(f"migrated {path} (data fingerprint {data['fingerprint']}, commit {code['git_commit']})")
    print(f"{migrated} record(s) migrated to schema {SCHEMA_VERSION}, {failed} failed")
    return 1 if failed else 0


def _compare(stored, fresh, where: str = "") -> tuple[list[str], float, str]:
    """Where integers, strings or lengths differ, and the worst relative difference of floats (and its place)."""
    if isinstance(stored, dict) or isinstance(stored, list):
        keys = list(stored) if isinstance(stored, dict) else range(len(stored))
        if type(stored) is not type(fresh) or len(stored) != len(fresh) or \
                (isinstance(stored, dict) and set(stored) != set(fresh)):
            return [where or "record"], 0.0, ""
        exact, worst, at = [], 0.0, ""
        for k in keys:
            e, w, a = _compare(stored[k], fresh[k], f"{where}.{k}" if isinstance(k, str) else f"{where}[{k}]")
            exact += e
            if w > worst:
                worst, at = w, a
        return exact, worst, at
    if isinstance(stored, float) and isinstance(fresh, float):
        rel = 0.0 if stored == fresh else abs(stored - fresh) / max(abs(stored), abs(fresh))
        return [], rel, where
    return ([] if stored == fresh else [where]), 0.0, ""


def _verify(paths: list[str], rel_tol: float) -> int:
    """Retrain each record's config on the data present now and compare every number with the record's."""
    failed = 0
    for path in map(Path, paths):
        stored = load_record(path)
        with tempfile.TemporaryDirectory() as tmp:
            fresh = run(RunConfig.from_dict(stored["config"]), tmp, progress=False)
        data = fresh["provenance"]["data"]
        exact, worst, at = _compare({k: stored[k] for k in ("metrics", "sweep", "history")},
                                    {k: fresh[k] for k in ("metrics", "sweep", "history")})
        recorded = stored["provenance"]["data"]
        if recorded is not None and recorded["fingerprint"] != data["fingerprint"]:
            exact.append(f"data fingerprint (recorded {recorded['fingerprint']})")
        ok = not exact and worst <= rel_tol
        failed += not ok
        found = "equal bitwise" if not exact and worst == 0 else (
            f"worst relative difference {worst:.1e} at {at.lstrip('.')}" if worst else "floats equal bitwise")
        print(f"{'same' if ok else 'DIFFERENT'} {path}: retrained on data {data['fingerprint']} ({data['location']}): "
              f"{found}" + (f"; differs exactly in {', '.join(e.lstrip('.') for e in exact)}" if exact else
                            "; integers equal"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ease.records", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate records").add_argument("paths", nargs="+")
    mig = sub.add_parser("migrate", help="write schema-1 records at the current schema, with provenance")
    mig.add_argument("paths", nargs="+")
    mig.add_argument("--evidence", help="how you know the present data is the text those runs were trained on")
    ver = sub.add_parser("verify", help="retrain records and compare their numbers")
    ver.add_argument("paths", nargs="+")
    ver.add_argument("--rel-tol", type=float, default=1e-6,
                     help="largest relative difference of a float accepted (float sums differ across machines)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.paths)
    if args.command == "migrate":
        return _migrate(args.paths, args.evidence)
    return _verify(args.paths, args.rel_tol)


if __name__ == "__main__":
    sys.exit(main())
