"""Build the bilingual book: book/en and book/ja as two Sphinx projects under one site.

    python book/build.py [--results DIR] [--out DIR] [--lang en ja] [--parallel]

The site lands in OUT/html (default OUT: _build at the repository root): OUT/html/index.html is a
landing page linking OUT/html/en/ and OUT/html/ja/. The English edition is exactly what
`jupyter-book build book` builds (the root _config.yml and _toc.yml; its pages are book/en/*), with
warnings as errors; the Japanese edition is book/ja built with book/languages.yml's overrides, into
OUT/html/ja as a site of its own (Sphinx has one language per project). The two run one after
the other (--parallel runs them at once; kernels started at the same moment by two processes can
race for the same TCP port, which once failed a build here). Any Sphinx warning or cell error fails
the build.

Records come from --results, else $EASE_RESULTS, else results/ at the repository root. Every run
of the book's grid must have its executed notebook in RESULTS/executed/<run_id>.ipynb (the pipeline
writes them). The ease_book extension (book/_ext/ease_book.py) copies them into the appendix and
clears the execution cache when the pages' inputs change, for this script and `jupyter-book build
book` alike.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ease.results import executed_path

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
LANGS = ("en", "ja")


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


def language_config(lang: str, work: Path) -> tuple[Path, Path]:
    """The edition's Jupyter Book config and table of contents, written where the builder reads them.

    English: the root _config.yml and _toc.yml as they are (what `jupyter-book build book` reads).
    Japanese: the root config with book/languages.yml's overrides, and the toc with `en/` dropped.
    """
    root = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    if lang != "en":
        overrides = yaml.safe_load((BOOK / "languages.yml").read_text(encoding="utf-8"))
        if lang not in overrides:
            fail(f"book/languages.yml has no section for language {lang!r}")
        root = deep_merge(root, overrides[lang])
        toc = json.loads(json.dumps(toc).replace('"en/', '"'))
    # local extension paths are relative to the root config; the merged file lives elsewhere
    local = root.get("sphinx", {}).get("local_extensions") or {}
    root["sphinx"]["local_extensions"] = {name: str((ROOT / path).resolve()) for name, path in local.items()}
    root["execute"]["cache"] = str(work / ".jupyter_cache")
    paths = []
    for name, data in (("_config.yml", root), ("_toc.yml", toc)):
        path = work / name
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def build_language(lang: str, work: Path) -> int:
    """One Sphinx build (run in its own process: docutils patching is not thread-safe)."""
    from jupyter_book.sphinx import build_sphinx

    config, toc = language_config(lang, work)
    source = BOOK if lang == "en" else BOOK / lang  # see _toc.yml: the English pages are book/en/*
    status = build_sphinx(source, work / "html", path_config=str(config), noconfig=True,
                          confoverrides={"external_toc_path": str(toc), "nitpicky": True,
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
        # English: its site root holds en/<page>.html (as `jupyter-book build book` writes it);
        # Japanese: a site of its own, put in ja/
        dest = site if lang == "en" else site / lang
        if lang == "en":
            for old in [p for p in site.iterdir() if p.name not in LANGS]:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            shutil.rmtree(site / "en", ignore_errors=True)
        elif dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(out / "lang" / lang / "html", dest, ignore=shutil.ignore_patterns(".buildinfo"),
                        dirs_exist_ok=True)
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
    os.environ["EASE_RESULTS"] = str(results)  # the pages' kernels and the ease_book extension read it
    from companion.core import book_grid, cjk_font

    start = time.perf_counter()
    try:
        grid = book_grid(results)
        if "ja" in args.lang:
            cjk_font()  # fail now, with its clear message, rather than inside a page
    except (FileNotFoundError, LookupError, RuntimeError, ValueError) as exc:
        fail(str(exc))
    missing = [r["run_id"] for r in grid.records() if not executed_path(results, r["run_id"]).is_file()]
    if missing:
        fail(f"{len(missing)} run(s) of the book's grid have no lab notebook in {executed_path(results, missing[0]).parent}: "
             f"{', '.join(missing)}. The pipeline renders them from the records: python -m ease.pipeline "
             f"--book --results {results}")
    print(f"book: {len(grid.records())} runs from {results}")
    for lang in args.lang:
        (out / "lang" / lang).mkdir(parents=True, exist_ok=True)
    run_builds(args.lang, out, serial=not args.parallel)
    site = publish(args.lang, out)
    print(f"book: built in {time.perf_counter() - start:.0f} s; open {site / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
