"""Sphinx extension for the bilingual book; it serves `jupyter-book build book` and book/build.py alike.

1. Lab notebooks: before Sphinx looks for pages, the executed notebook of every run of the book's main
   grid (RESULTS/executed/<run_id>.ipynb, written by the pipeline) is copied into the edition's
   appendix/runs/ (git-ignored), titled by its run id; stale copies are removed.
2. The execution cache sees only a page's own text, so the pages' other inputs (records, analyses,
   benchmark results, ease and companion code, labels, published values, grids: `input_files`) are
   hashed; when the hash changes, the jupyter cache is cleared and every page is read and executed
   again.
3. Every page links to the same page in the other edition. The English pages are book/en/P (page name
   en/P) built into html/en/P.html, the Japanese edition into html/ja/P.html, so the counterpart is a
   plain relative link that works on a web server and from file:// alike.
4. In Japanese pages, a line break inside a paragraph next to a Japanese character is dropped
   instead of becoming a space (Japanese puts no spaces between words, nor between Japanese and
   Latin text or numbers: book/ja/STYLE.md; the sources wrap lines).

Records come from $EASE_RESULTS, else the repository's results/.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from docutils import nodes
from sphinx.util import logging

BOOK = Path(__file__).resolve().parents[1]
ROOT = BOOK.parent
RUNS_DIR = Path("appendix") / "runs"  # inside each edition's folder
SITE_PAGES = {"genindex", "search", "py-modindex"}  # pages Sphinx makes at a site's root
logger = logging.getLogger(__name__)


def results_dir() -> Path:
    return Path(os.environ.get("EASE_RESULTS") or ROOT / "results").resolve()


def input_files(results: Path) -> dict[str, list[Path]]:
    """Everything a page's output depends on besides the page's own text, by kind."""
    return {
        "records": sorted((results / "runs").glob("*.json")),
        "analyses": sorted((results / "analysis").glob("*.json")),
        "benchmarks": sorted((results / "bench").glob("*.json")),
        "ease code": sorted((ROOT / "ease").glob("*.py")),
        "companion code": sorted((BOOK / "companion").glob("*.py")),
        "labels": sorted(BOOK.glob("*/labels.yml")),
        "published values": [BOOK / "data" / "published.yaml"],
        "grids": sorted((ROOT / "grids").glob("*.yaml")),
    }


def inputs_hash(results: Path) -> str:
    digest = hashlib.sha256()
    for kind, files in input_files(results).items():
        digest.update(kind.encode() + b"\0")
        for path in files:
            digest.update(str(path.relative_to(path.parents[1])).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _edition_dir(app) -> Path:
    """book/<lang>: the English edition's pages sit in book/en under the source folder book/."""
    src = Path(app.srcdir)
    return src if src.name == app.config.language else src / app.config.language


def _copy_lab_notebooks(app, results: Path) -> None:
    from companion.core import book_grid
    from ease.results import executed_path

    run_ids = [r["run_id"] for r in book_grid(results).records()]
    target = _edition_dir(app) / RUNS_DIR
    target.mkdir(parents=True, exist_ok=True)
    for stale in set(target.glob("*.ipynb")) - {target / f"{rid}.ipynb" for rid in run_ids}:
        stale.unlink()
    missing = [rid for rid in run_ids if not executed_path(results, rid).is_file()]
    if missing:
        logger.warning(f"{len(missing)} of {len(run_ids)} runs have no lab notebook in {results / 'executed'} "
                       f"(e.g. {missing[0]}); the appendix lists them without one. `make book` (python -m "
                       f"ease.pipeline --book) renders them from the records in seconds each.")
    for rid in run_ids:
        if rid in missing:
            continue
        nb = json.loads(executed_path(results, rid).read_text(encoding="utf-8"))
        # progress bars and warnings on stderr are part of a run's log: show them, never fail on them
        nb.setdefault("metadata", {}).setdefault("mystnb", {})["output_stderr"] = "show"
        _retitle(nb, rid)
        text = json.dumps(nb, ensure_ascii=False, indent=1) + "\n"
        dest = target / f"{rid}.ipynb"
        if not dest.exists() or dest.read_text(encoding="utf-8") != text:  # unchanged: keep Sphinx's cache
            dest.write_text(text, encoding="utf-8")


def _retitle(nb: dict, run_id: str) -> None:
    """Title the page by its run id (every run notebook has the same title); keep the old one below."""
    first = next((c for c in nb.get("cells", []) if c.get("cell_type") == "markdown"), None)
    source = "".join(first["source"]) if first else ""
    if source.startswith("# "):
        title, _, rest = source.partition("\n")
        first["source"] = f"# {run_id}\n\n**{title[2:].strip()}**\n{rest}"
    else:
        nb.setdefault("cells", []).insert(0, {"cell_type": "markdown", "id": "book-title", "metadata": {},
                                           "source": f"# {run_id}\n"})


def _prepare(app, config) -> None:
    """Before any page is read: lab notebooks in place, and a stale execution cache cleared."""
    results = results_dir()
    if config.ease_book_lab_notebooks:
        _copy_lab_notebooks(app, results)
    digest = inputs_hash(results)
    stamp = Path(app.doctreedir).parent / f"ease-inputs-{config.language}.sha256"
    app.ease_inputs_changed = not stamp.is_file() or stamp.read_text() != digest
    if app.ease_inputs_changed:
        # myst-nb's cache: the configured folder, else .jupyter_cache beside the output folder
        cache = getattr(config, "nb_execution_cache_path", "") or Path(app.outdir).parent / ".jupyter_cache"
        if Path(cache).exists():
            logger.info(f"ease_book: records or code changed since the last build; clearing {cache}")
            shutil.rmtree(cache)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)


def _outdated(app, env, added, changed, removed):
    """Every page is out of date when its inputs changed (see _prepare)."""
    return sorted(env.found_docs) if getattr(app, "ease_inputs_changed", False) else []


def _say_where_other_edition_is(app, exception) -> None:
    other = app.config.ease_book_other_lang
    if exception is None and other and app.builder.name == "html":
        site = Path(app.outdir)
        if not (site / other["code"]).is_dir() and app.config.language == "en":
            logger.info(f"ease_book: English edition built in {site}. The Japanese edition (日本語) is "
                        f"built beside it, in {site}/ja, by `make book` (or python book/build.py).")

_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
_BREAK = re.compile(r"[ \t]*\n[ \t]*")
_SKIP = (nodes.literal_block, nodes.literal, nodes.raw, nodes.math, nodes.math_block, nodes.comment)
_BLOCKS = (nodes.paragraph, nodes.caption, nodes.term, nodes.title, nodes.line)


def _add_switch(app, pagename, templatename, context, doctree) -> None:
    other = app.config.ease_book_other_lang
    if not other:
        return
    # Chapters: "en/P" in the English edition (source book/, site root html/), "P" in the Japanese
    # (source book/ja, site root html/ja/). The site's own pages (search, index of terms) sit at each
    # edition's site root: html/search.html and html/ja/search.html.
    if app.config.language == "en":
        href = f"{other['code']}/{pagename}.html" if not pagename.startswith("en/") else \
            "../" * pagename.count("/") + f"{other['code']}/{pagename[len('en/'):]}.html"
    elif pagename in SITE_PAGES:
        href = f"../{pagename}.html"
    else:
        href = "../" * (pagename.count("/") + 1) + f"{other['code']}/{pagename}.html"
    context["ease_other_lang"] = {**other, "href": href}


def _join_japanese_lines(app, doctree) -> None:
    """Drop each soft line break between Japanese characters (also across inline markup)."""
    if app.config.language != "ja":
        return
    for block in list(doctree.findall(lambda n: isinstance(n, _BLOCKS))):
        texts = list(block.findall(nodes.Text))
        values = [str(t) for t in texts]
        for i, (text, value) in enumerate(zip(texts, values)):
            if "\n" not in value or any(isinstance(a, _SKIP) for a in _ancestors(text)):
                continue
            before_node = values[i - 1][-1:] if i else ""
            after_node = values[i + 1][:1] if i + 1 < len(values) else ""

            def join(m: re.Match, value: str = value, before_node: str = before_node,
                     after_node: str = after_node) -> str:
                before = value[m.start() - 1] if m.start() else before_node
                after = value[m.end()] if m.end() < len(value) else after_node
                # book/ja/STYLE.md: no space between Japanese and anything else, so a break next
                # to a Japanese character (or full-width punctuation) is dropped; between two
                # Latin words it stays a space
                if _CJK.match(before or " ") or _CJK.match(after or " ") or not before or not after:
                    return ""
                return " "

            joined = _BREAK.sub(join, value)
            if joined != value:
                text.parent.replace(text, nodes.Text(joined))


def _ancestors(node):
    while node.parent is not None:
        node = node.parent
        yield node


def setup(app):
    app.add_config_value("ease_book_other_lang", {}, "html", [dict])
    app.add_config_value("ease_book_lab_notebooks", True, "env", [bool])
    app.connect("config-inited", _prepare)
    app.connect("env-get-outdated", _outdated)
    app.connect("build-finished", _say_where_other_edition_is)
    app.connect("html-page-context", _add_switch)
    app.connect("doctree-read", _join_japanese_lines)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
