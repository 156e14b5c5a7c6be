"""How the book is built: the promised `jupyter-book build book`, the execution cache's key, and a
failing cell failing the build. The small builds here use a throw-away book of one page."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def extension():
    spec = importlib.util.spec_from_file_location("ease_book_ext", REPO / "book" / "_ext" / "ease_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cache_key_covers_every_input_of_the_pages():
    """Every kind of file a page's output depends on is in the key (dropping one fails here)."""
    files = extension().input_files(REPO / "results")
    expected = {"records": "results/runs", "analyses": "results/analysis", "benchmarks": "results/bench",
                "ease code": "ease", "companion code": "book/companion", "labels": "book/",
                "published values": "book/data", "grids": "grids"}
    assert set(files) == set(expected)
    for kind, folder in expected.items():
        assert files[kind], f"no {kind} in the cache key"
        assert all(p.is_file() and str(p.relative_to(REPO)).startswith(folder) for p in files[kind]), kind
    assert {p.parent.name for p in files["labels"]} == {"en", "ja"}


def test_cache_key_changes_with_any_record(tmp_path):
    ext = extension()
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "runs", results / "runs", ignore=shutil.ignore_patterns("*.pt"))
    before = ext.inputs_hash(results)
    record = sorted((results / "runs").glob("*.json"))[0]
    record.write_text(record.read_text(encoding="utf-8").replace('"ppl": ', '"ppl":  ', 1), encoding="utf-8")
    assert ext.inputs_hash(results) != before


def tiny_book(root: Path, code: str) -> Path:
    """A one-page book with the project's own config and extension (no lab notebooks)."""
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    config["sphinx"]["local_extensions"] = {"ease_book": str(REPO / "book" / "_ext")}
    config["sphinx"]["config"]["ease_book_lab_notebooks"] = False
    config["bibtex_bibfiles"] = [str(REPO / "book" / "references.bib")]
    config["sphinx"]["config"].update(templates_path=[str(REPO / "book" / "_templates")],
                                      html_static_path=[str(REPO / "book" / "_static")])
    (root / "_config.yml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    book = root / "book"
    (book / "en").mkdir(parents=True)
    (book / "_toc.yml").write_text("format: jb-book\nroot: en/probe\n", encoding="utf-8")
    (book / "en" / "probe.md").write_text(
        "---\njupytext:\n  text_representation:\n    format_name: myst\nkernelspec:\n  name: python3\n"
        "  display_name: Python 3\n---\n# Probe\n\n```{code-cell} ipython3\n" + code + "\n```\n", encoding="utf-8")
    return book


def jb_build(root: Path, results: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EASE_RESULTS": str(results), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["jupyter-book", "build", "book"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_failing_cell_fails_the_build(tmp_path):
    tiny_book(tmp_path, 'raise RuntimeError("a page cell failed on purpose")')
    proc = jb_build(tmp_path, REPO / "results")
    assert proc.returncode != 0
    assert "a page cell failed on purpose" in proc.stdout + proc.stderr


def test_changed_inputs_re_execute_cached_pages(tmp_path):
    """A page's cached output is not reused once a record it reads has changed."""
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    record = results / "runs" / "probe.json"
    record.write_text('{"value": "first"}', encoding="utf-8")
    tiny_book(tmp_path, "import json, os, pathlib\n"
                        "print('VALUE=' + json.loads((pathlib.Path(os.environ['EASE_RESULTS']) / 'runs' / "
                        "'probe.json').read_text())['value'])")
    page = tmp_path / "_build" / "html" / "en" / "probe.html"
    for value in ("first", "second"):
        record.write_text('{"value": "%s"}' % value, encoding="utf-8")
        proc = jb_build(tmp_path, results)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"VALUE={value}" in page.read_text(encoding="utf-8")


def test_jupyter_book_build_book_as_typed(built_book: Path, book_results: Path):
    """The README's `jupyter-book build book`, from the repository root: the English edition, complete."""
    from test_book import EXPECTED  # the chapters every edition has

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "\njupyter-book build book\n" in readme, "the README no longer prints the command tested here"
    # the records the fixture built the book from ($EASE_RESULTS, else results/), as a user's shell would hold
    env = {**os.environ, "EASE_RESULTS": str(book_results), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["jupyter-book", "build", "book"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    warnings = [line for line in output.splitlines() if "WARNING: " in line]  # Sphinx's, not the kernel's log
    assert not warnings, warnings[:10]
    site = REPO / "_build" / "html"
    for page in EXPECTED:
        assert (site / "en" / f"{page}.html").is_file(), f"en/{page}.html not built"
    assert "Japanese edition" in output and "make book" in output
