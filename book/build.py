"""Build the bilingual book: book/en and book/ja as two Sphinx projects under one site.

    python book/build.py [--results DIR] [--out DIR] [--lang en ja] [--parallel]

The site lands in OUT/html (default OUT: _build at the repository root): OUT/html/index.html is a
landing page linking OUT/html/en/ and OUT/html/ja/. Each language is a Jupyter Book built with
the root _config.yml and _toc.yml plus its overrides from book/languages.yml; the two run one after
the other (--parallel runs them at once; kernels started at the same moment by two processes can
race for the same TCP port, which once failed a build here). Any Sphinx warning or cell error fails
the build.

Records come from --results, else $EASE_RESULTS, else results/ at the repository root. Every run
of the book's grid must have its executed notebook in RESULTS/executed/<run_id>.ipynb: those are
copied into book/<lang>/appendix/runs/ (git-ignored) and rendered as they are, never re-executed.

Page execution is cached (jupyter-cache). The cache only sees a page's own text, so this script
hashes everything else a page's output depends on (records, analyses, benchmark results,
ease/*.py, the published values)
and starts each language afresh when that hash changes.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
LANGS = ("en", "ja")
NOTEBOOK_DIR = Path("appendix") / "runs"  # inside each language's source folder


def fail(message: str) -> None:
    print(f"book build: error: {message}", file=sys.stderr)
    sys.exit(1)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def language_config(lang: str, work: Path) -> Path:
    """The root _config.yml with the language's overrides, written where the builder reads it."""
    root = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    overrides = yaml.safe_load((BOOK / "languages.yml").read_text(encoding="utf-8"))
    if lang not in overrides:
        fail(f"book/languages.yml has no section for language {lang!r}")
    config = deep_merge(root, overrides[lang])
    # local extension paths are relative to the root config; the merged file lives elsewhere
    local = config.get("sphinx", {}).get("local_extensions") or {}
    config["sphinx"]["local_extensions"] = {name: str((ROOT / path).resolve()) for name, path in local.items()}
    config["execute"]["cache"] = str(work / ".jupyter_cache")
    path = work / "_config.yml"
    text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def inputs_hash(results: Path) -> str:
    """What page outputs depend on besides the pages' own text."""
    digest = hashlib.sha256()
    files = sorted((results / "runs").glob("*.json")) + sorted((results / "analysis").glob("*.json")) + \
        sorted((results / "bench").glob("*.json")) + sorted((ROOT / "ease").glob("*.py")) + \
        [BOOK / "data" / "published.yaml"]
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def copy_notebooks(results: Path, run_ids: list[str], langs: list[str]) -> None:
    """Put each run's executed notebook into every language's appendix; drop stale ones."""
    from ease.pipeline import executed_path

    missing = [rid for rid in run_ids if not executed_path(results, rid).is_file()]
    if missing:
        fail(f"{len(missing)} run(s) of the book's grid have no executed notebook in {results / 'executed'}: "
             f"{', '.join(missing)}. The pipeline writes one per run it executes: python -m ease.pipeline "
             f"--results {results} (it skips runs that already have a record, so delete those records first).")
    for lang in langs:
        target = BOOK / lang / NOTEBOOK_DIR
        target.mkdir(parents=True, exist_ok=True)
        for stale in set(target.glob("*.ipynb")) - {target / f"{rid}.ipynb" for rid in run_ids}:
            stale.unlink()
        for rid in run_ids:
            nb = json.loads(executed_path(results, rid).read_text(encoding="utf-8"))
            # progress bars and warnings on stderr are part of a run's log: show them, never fail on them
            nb.setdefault("metadata", {}).setdefault("mystnb", {})["output_stderr"] = "show"
            retitle(nb, rid)
            text = json.dumps(nb, ensure_ascii=False, indent=1) + "\n"
            dest = target / f"{rid}.ipynb"
            if not dest.exists() or dest.read_text(encoding="utf-8") != text:  # unchanged: keep Sphinx's cache
                dest.write_text(text, encoding="utf-8")


def retitle(nb: dict, run_id: str) -> None:
    """Title the page by its run id (every run notebook has the same title); keep the old one below."""
    first = next((c for c in nb.get("cells", []) if c.get("cell_type") == "markdown"), None)
    source = "".join(first["source"]) if first else ""
    if source.startswith("# "):
        title, _, rest = source.partition("\n")
        first["source"] = f"# {run_id}\n\n**{title[2:].strip()}**\n{rest}"
    else:
        nb.setdefault("cells", []).insert(0, {"cell_type": "markdown", "id": "book-title", "metadata": {},
                                           "source": f"# {run_id}\n"})


def build_language(lang: str, work: Path) -> int:
    """One Sphinx build (run in its own process: docutils patching is not thread-safe)."""
    from jupyter_book.sphinx import build_sphinx

    config = language_config(lang, work)
    status = build_sphinx(BOOK / lang, work / "html", path_config=str(config), noconfig=True,
                          confoverrides={"external_toc_path": str(ROOT / "_toc.yml"), "nitpicky": True,
                                         "latex_individualpages": False},
                          builder="html", warningiserror=True, keep_going=True, quiet=False)
    return status if isinstance(status, int) else 1


def run_builds(langs: list[str], out: Path, serial: bool) -> None:
    procs = {}
    start = time.perf_counter()
    for lang in langs:
        work = out / "lang" / lang
        log = (work / "build.log").open("w", encoding="utf-8")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", lang, "--out", str(out)]
        procs[lang] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log)
        print(f"[{lang}] building (log: {work / 'build.log'})", flush=True)
        if serial:
            procs[lang][0].wait()
    last: dict[str, str] = {}
    while any(proc.poll() is None for proc, _ in procs.values()):
        time.sleep(1)
        for lang in procs:  # progress: Sphinx's current stage and percentage, from the log
            stage = progress(out / "lang" / lang / "build.log")
            if stage and stage != last.get(lang) and procs[lang][0].poll() is None:
                print(f"[{lang}] {stage}", flush=True)
                last[lang] = stage
    failed = []
    for lang, (proc, log) in procs.items():
        code = proc.wait()
        log.close()
        print(f"[{lang}] {'done' if code == 0 else 'FAILED'} after {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(lang)
    for lang in failed:
        text = (out / "lang" / lang / "build.log").read_text(encoding="utf-8", errors="replace")
        problems = [line for line in text.splitlines()
                    if any(w in line for w in ("WARNING", "ERROR", "Error", "Exception", "error:"))]
        print(f"----- [{lang}] warnings and errors -----\n" + "\n".join(problems[-60:]), file=sys.stderr)
        print(f"----- [{lang}] end of log -----\n" + "\n".join(text.splitlines()[-40:]), file=sys.stderr)
    if failed:
        fail(f"the {', '.join(failed)} build failed (full log: {out / 'lang' / failed[0] / 'build.log'})")


_STAGE = re.compile(r"(reading sources|writing output)\.*\s*\[\s*(\d+)%\]")


def progress(log: Path) -> str | None:
    """'reading sources 40%' (pages executed and read) or 'writing output 80%', in steps of 20%."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(encoding="utf-8", errors="replace"))
    found = _STAGE.findall(text)
    if not found:
        return None
    stage, percent = found[-1]
    return f"{stage} {int(percent) // 20 * 20}%"


def publish(langs: list[str], out: Path) -> Path:
    """Assemble OUT/html: the landing page plus each language's finished HTML."""
    site = out / "html"
    site.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        dest = site / lang
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(out / "lang" / lang / "html", dest, ignore=shutil.ignore_patterns(".buildinfo"))
    shutil.copyfile(BOOK / "landing.html", site / "index.html")
    (site / ".nojekyll").write_text("")  # GitHub Pages: serve _static/, _images/ as they are
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", help="results folder (default: $EASE_RESULTS, else results/)")
    parser.add_argument("--out", default=str(ROOT / "_build"), help="build folder; the site goes to OUT/html")
    parser.add_argument("--lang", nargs="+", choices=LANGS, default=list(LANGS), help="languages to build")
    parser.add_argument("--parallel", action="store_true",
                        help="build the languages at once (faster; rarely, two kernels race for a port)")
    parser.add_argument("--worker", choices=LANGS, help=argparse.SUPPRESS)  # internal: one language's build
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if args.worker:
        return build_language(args.worker, out / "lang" / args.worker)

    results = Path(args.results or os.environ.get("EASE_RESULTS") or ROOT / "results").resolve()
    os.environ["EASE_RESULTS"] = str(results)  # the pages' kernels read the records from here
    from ease.report import book_grid, cjk_font

    start = time.perf_counter()
    try:
        grid = book_grid(results)
        if "ja" in args.lang:
            cjk_font()  # fail now, with its clear message, rather than inside a page
    except (FileNotFoundError, LookupError, RuntimeError, ValueError) as exc:
        fail(str(exc))
    run_ids = [r["run_id"] for r in grid.records()]
    print(f"book: {len(run_ids)} runs from {results}")
    copy_notebooks(results, run_ids, args.lang)

    digest = inputs_hash(results)
    for lang in args.lang:
        work = out / "lang" / lang
        stamp = work / "inputs.sha256"
        # The stamp names the inputs that the cached outputs were made from; none known: start afresh.
        if not stamp.exists() or stamp.read_text() != digest:
            if stamp.exists():
                print(f"[{lang}] records, ease code or published values changed: re-executing every page")
            for stale in (work / ".jupyter_cache", work / ".doctrees", work / "html", work / "jupyter_execute"):
                shutil.rmtree(stale, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
        language_config(lang, work)
    run_builds(args.lang, out, serial=not args.parallel)
    site = publish(args.lang, out)
    print(f"book: built in {time.perf_counter() - start:.0f} s; open {site / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
