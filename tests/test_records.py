"""Run records you can trust: the schema, validation with errors that name the file, one run counted
once, the data fingerprint as part of a run's identity, migration of older records, the committed
records' provenance, and detection of a lab notebook cut off by a kill.

Records here are written by hand (a tiny designed record, values chosen, not computed by ease), so
no training is needed except where a test says so.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import ease
import ease.records as records
import ease.train as train
from ease.config import RunConfig
from ease.data import DATA_ENV
from ease.records import SCHEMA_VERSION, RecordError, check_record, code_provenance, migrate
from ease.records.__main__ import main as records_cli
from ease.results import (find_record, load_records, load_results, notebook_complete, record_files, record_path,
                          write_json)

REPO = Path(__file__).resolve().parents[1]
COMMITTED = [REPO / "results", REPO / "results" / "reference", REPO / "results" / "bench"]
# The small text every hand-made record "was trained on" (the hashes are of these exact strings).
TEXT = {"train": "the cat sat on the mat\n" * 40, "valid": "a dog ran\n" * 30, "test": "test text\n"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short_fingerprint(hashes: dict) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]


def data_of(train: str, valid: str, test: str | None, location: str = "/data") -> dict:
    hashes = {"train": sha(train), "valid": sha(valid), "test": None if test is None else sha(test)}
    return {"source": "local", "location": location, "sha256": hashes, "fingerprint": short_fingerprint(hashes)}


def schema1_record(config: RunConfig, ppl: float = 10.0) -> dict:
    """A record as ease wrote them before provenance (schema 1): every value designed by hand."""
    return {
        "run_id": config.run_id, "config": json.loads(json.dumps(config.to_dict())),
        "metrics": {"ppl": ppl, "shallow_frac": 0.25, "compute_frac": 0.75, "ppl_shallow": ppl + 2,
                    "ppl_deep": ppl - 1, "best_epoch": 2, "epochs_run": 3, "eval_tokens": 64},
        "sweep": [{"threshold": 0.5, "ppl": ppl + 1, "shallow_frac": 0.5, "compute_frac": 0.5},
                  {"threshold": 0.95, "ppl": ppl, "shallow_frac": 0.25, "compute_frac": 0.75}],
        "history": [{"epoch": e, "train_loss": 3.0 / e, "val_ppl": ppl + 3 - e, "val_ppl_shallow": ppl + 4 - e,
                     "val_ppl_deep": ppl + 2 - e, "val_shallow_frac": 0.1 * e} for e in (1, 2, 3)],
        "env": {"python": "3.11", "torch": "2", "platform": "x", "device": "cpu", "threads": 1},
        "timing": {"train_s": 2.0, "eval_s": 0.5, "tokens_per_s": 100.0},
    }


def make_record(config: RunConfig, ppl: float = 10.0, data: dict | None = None) -> dict:
    """The same at the current schema, with provenance."""
    return {"schema_version": SCHEMA_VERSION, **schema1_record(config, ppl),
            "provenance": {"data": data or data_of(TEXT["train"], TEXT["valid"], TEXT["test"]),
                           "code": {"ease_version": "0.1.0", "git_commit": "a" * 40, "git_dirty": False}}}


A = RunConfig(setting="A", alpha=0.7, seed=0)
B = RunConfig(setting="B", alpha=0.7, seed=1)


@pytest.fixture
def results(tmp_path):
    """A results folder with two good records."""
    for config, ppl in ((A, 10.0), (B, 12.0)):
        write_json(record_path(tmp_path, config.run_id), make_record(config, ppl))
    return tmp_path


def write_raw(results: Path, name: str, content: str | bytes) -> Path:
    path = results / "runs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# --- the schema --------------------------------------------------------------------------------------
def test_designed_records_of_both_schemas_are_valid(tmp_path):
    assert check_record(make_record(A), record_path(tmp_path, A.run_id))["metrics"]["ppl"] == 10.0
    assert check_record(schema1_record(A), record_path(tmp_path, A.run_id))["schema_version"] == SCHEMA_VERSION


def test_the_schema_file_is_the_version_the_code_writes():
    assert records.schema()["properties"]["schema_version"] == {"const": SCHEMA_VERSION}


# --- bad files: each an error that names the file -----------------------------------------------------
def test_a_stray_copy_is_not_a_second_run(results):
    """Finding 1: "<run_id> (copy).json" made load_results count a sixth seed."""
    original = record_path(results, A.run_id)
    copy_path = original.with_name(f"{A.run_id} (copy).json")
    shutil.copy(original, copy_path)
    for read in (load_records, load_results):
        with pytest.raises(RecordError) as err:
            read(results)
        assert str(original) in str(err.value) and str(copy_path) in str(err.value), err.value
        assert "both hold run" in str(err.value)


def test_a_file_named_after_another_run_is_refused(results):
    original = record_path(results, A.run_id)
    renamed = original.with_name("best-run.json")
    original.rename(renamed)
    with pytest.raises(RecordError, match=f"{renamed}.*name must be {A.run_id}.json"):
        load_records(results)


@pytest.mark.parametrize("content, problem", [
    ("", "is empty"),
    ("\n  \n", "is empty"),
    ('{"run_id": "trunc', "is not valid JSON"),
    (b"\xff\xfe{}", "is not valid JSON"),
    ("[1, 2]", "is not a JSON object"),
])
def test_unreadable_record_names_the_file(results, content, problem):
    """Finding 3: an empty or cut-off record is an error naming the file, for resume and for readers."""
    path = write_raw(results, f"{A.run_id}.json", content)
    with pytest.raises(RecordError) as err:
        find_record(A, results)
    assert str(path) in str(err.value) and problem in str(err.value)
    with pytest.raises(RecordError, match=problem):
        load_results(results)


def test_a_record_without_metrics_is_not_finished(results):
    """Finding 3: a record without metrics was skipped as finished, then every page failed with KeyError."""
    record = make_record(A)
    del record["metrics"]
    path = record_path(results, A.run_id)
    write_json(path, record)
    for read in (lambda: find_record(A, results), lambda: load_results(results)):
        with pytest.raises(RecordError) as err:
            read()
        assert str(path) in str(err.value) and "record must contain ['metrics']" in str(err.value)


@pytest.mark.parametrize("change, where", [
    (lambda r: r["metrics"].update(ppl="7.5"), "metrics.ppl"),
    (lambda r: r["metrics"].update(best_epoch=2.5), "metrics.best_epoch"),
    (lambda r: r["sweep"][1].update(shallow_frac=1.5), "sweep[1].shallow_frac"),
    (lambda r: r["history"][2].pop("val_ppl"), "history[2]"),
    (lambda r: r.update(sweep={"0.5": 1.0}), "sweep"),
    (lambda r: r["provenance"]["data"].update(fingerprint="short"), "provenance.data"),
    (lambda r: r.update(extra=1), "extra"),
])
def test_a_wrongly_typed_field_names_the_file_and_the_field(results, change, where):
    record = make_record(A)
    change(record)
    path = record_path(results, A.run_id)
    write_json(path, record)
    with pytest.raises(RecordError) as err:
        find_record(A, results)
    assert str(path) in str(err.value) and where in str(err.value), err.value


def test_an_edited_config_no_longer_matches_its_id(results):
    record = make_record(A)
    record["config"]["lr"] = 0.01  # the hash of the config is the run id: this is now another run
    write_json(record_path(results, A.run_id), record)
    with pytest.raises(RecordError, match="different config than its id says"):
        load_records(results)


def test_an_unknown_schema_version_is_refused(results):
    record = {**make_record(A), "schema_version": SCHEMA_VERSION + 1}
    write_json(record_path(results, A.run_id), record)
    with pytest.raises(RecordError, match=f"schema_version {SCHEMA_VERSION + 1}"):
        find_record(A, results)


def test_good_records_load(results):
    df = load_results(results).set_index("run_id")
    assert sorted(df.index) == sorted([A.run_id, B.run_id])
    assert df.loc[B.run_id, "ppl"] == 12.0


# --- the data fingerprint is part of a run's identity ----------------------------------------------------
def test_find_record_with_the_same_fingerprint(results):
    fingerprint = data_of(TEXT["train"], TEXT["valid"], TEXT["test"])["fingerprint"]
    assert find_record(A, results, fingerprint)["metrics"]["ppl"] == 10.0


def test_a_record_from_other_text_is_not_finished_for_this_text(results):
    path = record_path(results, A.run_id)
    ours = make_record(A)["provenance"]["data"]["fingerprint"]
    other = data_of("ascii garbage " * 50, TEXT["valid"], TEXT["test"])["fingerprint"]
    with pytest.raises(RecordError) as err:
        find_record(A, results, other)
    message = str(err.value)
    assert str(path) in message and ours in message and other in message
    assert "--results" in message and "delete" in message


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split, text in TEXT.items():
        (folder / f"{split}.txt").write_bytes(text.encode())
    return folder


def test_run_refuses_a_finished_record_made_on_other_text(tmp_path, corpus, monkeypatch):
    """Finding 2: a run on other text got the same id as the finished one and was skipped for ever."""
    config = RunConfig(corpus=str(corpus), train_chars=500, val_chars=200)
    made_on = data_of(TEXT["train"][:500], TEXT["valid"][:200], TEXT["test"], str(corpus))
    write_json(record_path(tmp_path / "results", config.run_id), make_record(config, data=made_on))

    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(train, "train_model", no_training)
    assert ease.run(config, tmp_path / "results", progress=False)["provenance"]["data"] == made_on  # same text
    (corpus / "valid.txt").write_bytes(("another text\n" * 30).encode())
    now = data_of(TEXT["train"][:500], ("another text\n" * 30)[:200], TEXT["test"], str(corpus))
    with pytest.raises(RecordError) as err:
        ease.run(config, tmp_path / "results", progress=False)
    assert made_on["fingerprint"] in str(err.value) and now["fingerprint"] in str(err.value)


def test_a_schema1_record_loads_but_is_not_finished_for_a_fingerprint(results):
    path = record_path(results, A.run_id)
    write_json(path, schema1_record(A))
    before = path.read_bytes()
    record = find_record(A, results)  # readers (the book) still read it, in memory at this schema
    assert record["schema_version"] == SCHEMA_VERSION and record["provenance"]["data"] is None
    assert record["metrics"] == schema1_record(A)["metrics"]
    with pytest.raises(RecordError, match="does not say which text.*python -m ease.records migrate"):
        find_record(A, results, "0" * 16)
    load_records(results)
    assert path.read_bytes() == before  # loading never writes


# --- migration -------------------------------------------------------------------------------------------
def test_migrate_adds_provenance_and_changes_nothing_else():
    old = schema1_record(B)
    kept = copy.deepcopy(old)
    data = data_of(TEXT["train"], TEXT["valid"], None)
    code = {"ease_version": "0.1.0", "git_commit": "b" * 40, "git_dirty": None}
    new = migrate(old, data, code, {"data": "retrained bitwise", "code": "git log"})
    assert old == kept  # the argument is left as it is
    assert {k: v for k, v in new.items() if k not in ("schema_version", "provenance")} == kept
    assert new["schema_version"] == SCHEMA_VERSION
    assert new["provenance"] == {"data": data, "code": code, "migrated": {
        "from_schema": 1, "evidence": {"data": "retrained bitwise", "code": "git log"}}}
    assert list(new)[:2] == ["schema_version", "run_id"]
    assert migrate(new) is new  # already current
    unknown = migrate(old)["provenance"]
    assert unknown["data"] is None and set(unknown["code"].values()) == {None}
    with pytest.raises(ValueError, match="schema_version 7"):
        migrate({**old, "schema_version": 7})


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=folder,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_migrate_command_writes_provenance_from_the_data_and_the_files_history(tmp_path, corpus, monkeypatch):
    repo = tmp_path / "repo"
    config = RunConfig(corpus=str(corpus), train_chars=600, val_chars=250, seed=3)
    path = record_path(repo / "results", config.run_id)
    write_json(path, schema1_record(config))
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "9.8.7"\n')
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "a record")
    commit = _git(repo, "rev-parse", "HEAD")
    (repo / "later.txt").write_text("a later commit that does not touch the record")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "later")
    unchanged = json.loads(path.read_text(encoding="utf-8"))

    assert records_cli(["migrate", "--evidence", "checked by hand", str(repo / "results")]) == 0
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert {k: v for k, v in on_disk.items() if k not in ("schema_version", "provenance")} == unchanged
    expected = data_of(TEXT["train"][:600], TEXT["valid"][:250], TEXT["test"], str(corpus.resolve()))
    provenance = on_disk["provenance"]
    assert provenance["data"] == expected
    assert provenance["code"] == {"ease_version": "9.8.7", "git_commit": commit, "git_dirty": None}
    assert provenance["migrated"]["from_schema"] == 1
    assert provenance["migrated"]["evidence"]["data"] == "checked by hand"
    assert "last commit that changed this record file" in provenance["migrated"]["evidence"]["code"]
    # written as ease writes every record, and read back as finished for exactly that text
    assert path.read_text(encoding="utf-8") == json.dumps(on_disk, indent=1, ensure_ascii=False) + "\n"
    assert find_record(config, repo / "results", expected["fingerprint"]) is not None
    before = path.read_bytes()
    assert records_cli(["migrate", str(repo / "results")]) == 0  # nothing left to migrate
    assert path.read_bytes() == before


def test_check_command_reports_each_bad_file(results, capsys):
    bad = write_raw(results, f"{A.run_id} (copy).json", record_path(results, A.run_id).read_text())
    assert records_cli(["check", str(results)]) == 1
    out = capsys.readouterr().out
    assert str(bad) in out and "2 of 3 record(s) valid" in out


# --- the committed records ----------------------------------------------------------------------------
def test_committed_records_are_valid_and_carry_provenance():
    files = [p for folder in COMMITTED for p in record_files(folder)]
    assert len(files) >= 150
    for folder in COMMITTED:
        for record in load_records(folder):
            data = record["provenance"]["data"]
            assert data is not None, record["run_id"]
            assert data["source"] == ("placeholder" if record["config"]["corpus"] == "placeholder" else "local")
            assert record["provenance"]["code"]["git_commit"] is not None, record["run_id"]
            if "migrated" in record["provenance"]:  # made before provenance existed: how it was recovered
                assert record["provenance"]["migrated"]["evidence"]["data"], record["run_id"]
            else:  # made by committed code, not by a working tree with changes
                assert record["provenance"]["code"]["git_dirty"] is False, record["run_id"]


@pytest.mark.skipif(not os.environ.get(DATA_ENV), reason="needs WikiText-2 via EASE_DATA_DIR")
def test_committed_records_fingerprints_are_the_present_datas():
    """Each record's text hashes, recomputed from the files with hashlib (not with ease.data)."""
    folder = Path(os.environ[DATA_ENV])
    whole = {split: (folder / f"{split}.txt").read_bytes().decode("utf-8") for split in ("train", "valid", "test")}
    for results in COMMITTED:
        for record in load_records(results):
            c = record["config"]
            if c["corpus"] == "placeholder":
                continue
            expected = data_of(whole["train"][:c["train_chars"]], whole["valid"][:c["val_chars"]], whole["test"])
            data = record["provenance"]["data"]
            assert (data["sha256"], data["fingerprint"]) == (expected["sha256"], expected["fingerprint"]), \
                record["run_id"]


def test_committed_placeholder_records_hash_the_original_codes_text():
    """The placeholder text is the original code's sentences repeated chars // 45 and chars // 35 times."""
    placeholder = [r for r in load_records(REPO / "results") if r["config"]["corpus"] == "placeholder"]
    assert placeholder
    for record in placeholder:
        c = record["config"]
        train = "The quick brown fox jumps over the lazy dog. " * (c["train_chars"] // 45)
        valid = "A quick brown dog runs in the park. " * (c["val_chars"] // 35)
        assert record["provenance"]["data"]["sha256"] == {"train": sha(train), "valid": sha(valid), "test": None}


# --- code provenance ----------------------------------------------------------------------------------
def test_code_provenance_in_this_checkout():
    code = code_provenance()
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=REPO, capture_output=True, text=True)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != REPO:
        pytest.skip("not a git checkout")
    assert code["git_commit"] == _git(REPO, "rev-parse", "HEAD")
    assert code["git_dirty"] == bool(_git(REPO, "status", "--porcelain"))


def test_code_provenance_claims_no_commit_of_another_repository(monkeypatch):
    """ease installed into a virtual environment inside another repository: that one's commit is not ease's."""
    def git(root, *args):
        return "/somewhere/else\n" if "--show-toplevel" in args else "f" * 40

    monkeypatch.setattr(records, "_git", git)
    code = code_provenance()
    assert code["git_commit"] is None and code["git_dirty"] is None


# --- an interrupted lab notebook ----------------------------------------------------------------------
def _notebook(tmp_path: Path, last_cell: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_markdown_cell("text"),
                                         nbformat.v4.new_code_cell(last_cell)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "in.ipynb"
    nbformat.write(nb, path)
    return path


def _papermill(source: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "papermill", str(source), str(out), "--no-progress-bar"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_notebook_complete_after_a_clean_run_and_not_after_an_error(tmp_path):
    done, failed = tmp_path / "done.ipynb", tmp_path / "failed.ipynb"
    assert _papermill(_notebook(tmp_path, "y = x + 1"), done).wait(timeout=300) == 0
    assert notebook_complete(done)
    assert _papermill(_notebook(tmp_path, "raise RuntimeError('boom')"), failed).wait(timeout=300) != 0
    assert failed.exists() and not notebook_complete(failed)


def test_notebook_cut_off_by_a_kill_is_not_complete(tmp_path):
    """Finding 3: a lab notebook killed in its last cells stayed partial for ever."""
    marker, out = tmp_path / "kernel-pid", tmp_path / "killed.ipynb"
    # the last cell says it is running (papermill saved the notebook before it) and which process runs it
    source = _notebook(tmp_path, "import os, pathlib, time\n"
                                 f"pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\ntime.sleep(300)")
    proc = _papermill(source, out)
    kernel = None
    try:
        deadline = time.monotonic() + 300
        while not (marker.exists() and marker.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "papermill ended before the last cell"
            time.sleep(0.1)
        kernel = int(marker.read_text())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # papermill, as a kill -9 of the pipeline would
        proc.wait()
        if kernel is not None:
            try:
                os.kill(kernel, signal.SIGKILL)  # and its kernel, which may run in a session of its own
            except ProcessLookupError:
                pass
    assert out.exists() and not notebook_complete(out)


@pytest.mark.parametrize("content", [None, "", "{not json", '{"cells": []}', '{"metadata": {}, "cells": []}'])
def test_notebook_complete_of_a_missing_or_broken_file(tmp_path, content):
    path = tmp_path / "nb.ipynb"
    if content is not None:
        path.write_text(content)
    assert not notebook_complete(path)
