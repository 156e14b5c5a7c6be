"""The bilingual book: the built HTML (structure, links, images, tables, language, search) and the
companion functions behind its pages.

The build tests use the session fixture `built_book` (tests/conftest.py), which builds the whole
book once from $EASE_RESULTS or the committed results/ and fails when there are no records.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import yaml
from bs4 import BeautifulSoup
from scipy import stats

from companion import core
from ease import RunConfig
from ease.stats import mean_ci

REPO = Path(__file__).resolve().parents[1]
LANGS = ("en", "ja")
CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
# Chapters and the least each must show (from the book's design: tables and figures per page).
EXPECTED = {"index": (0, 0), "goal": (0, 0), "setup": (3, 1), "architecture": (0, 1), "exp5": (2, 2),
            "exp6": (2, 1), "discussion": (1, 0), "caveats": (1, 0), "references": (0, 0),
            "forensics": (6, 1), "claims": (3, 0), "held_out": (10, 3), "calibration": (1, 1), "beyond": (3, 3), "real_exit": (2, 1),
            "multi_exit": (3, 1),
            "appendix/notebooks": (1, 0)}
BAD_CELLS = {"", "nan", "none", "inf", "-inf", "null"}


def toc_pages() -> list[str]:
    """Page names listed in the root _toc.yml (globs excluded), without the English folder."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    walk(toc.get("chapters"))
    assert all(p.startswith("en/") for p in pages), "the toc names the English pages, book/en/*"
    return [p[len("en/"):] for p in pages]


def soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def article(page: BeautifulSoup):
    return page.find("article") or page


def html_files(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)


# --- the built site --------------------------------------------------------------------------------
def test_toc_lists_the_expected_chapters():
    assert set(toc_pages()) == set(EXPECTED)


def test_both_languages_and_landing_page(built_book: Path):
    landing = soup(built_book / "index.html")
    hrefs = {a["href"] for a in landing.find_all("a", href=True)}
    assert {"en/index.html", "ja/index.html"} <= hrefs
    for lang in LANGS:
        for page in EXPECTED:
            assert (built_book / lang / f"{page}.html").is_file(), f"{lang}/{page}.html was not built"


def test_every_chapter_has_its_tables_and_figures(built_book: Path):
    for lang in LANGS:
        for page, (n_tables, n_images) in EXPECTED.items():
            body = article(soup(built_book / lang / f"{page}.html"))
            tables = body.find_all("table")
            images = body.find_all("img")
            assert len(tables) >= n_tables, f"{lang}/{page}: {len(tables)} tables, expected {n_tables}"
            assert len(images) >= n_images, f"{lang}/{page}: {len(images)} images, expected {n_images}"
            # no chapter is half-empty: real prose beyond the title
            assert len(body.get_text(" ", strip=True)) > 200, f"{lang}/{page} has almost no text"


def test_run_notebooks_are_rendered_with_outputs(built_book: Path, book_results: Path):
    for lang in LANGS:
        rendered = sorted((built_book / lang / "appendix" / "runs").glob("*.html"))
        assert rendered, f"{lang}: no run notebook pages"
        for page in rendered:
            assert (book_results / "executed" / f"{page.stem}.ipynb").is_file()
            body = article(soup(page))
            assert body.select(".cell_output, .output"), f"{page} shows no cell outputs"


def test_every_image_exists(built_book: Path):
    count = 0
    for page in html_files(built_book):
        for img in soup(page).find_all("img"):
            src = img.get("src", "")
            if not src or src.startswith(("data:", "http://", "https://")):
                continue
            target = (page.parent / unquote(urlparse(src).path)).resolve()
            assert target.is_file() and target.stat().st_size > 0, f"{page}: missing image {src}"
            count += 1
    assert count >= 2 * sum(n for _, n in EXPECTED.values())


def test_every_internal_link_resolves(built_book: Path):
    ids: dict[Path, set[str]] = {}

    def anchors(path: Path) -> set[str]:
        if path not in ids:
            page = soup(path)
            ids[path] = {el["id"] for el in page.find_all(id=True)} | \
                        {el["name"] for el in page.find_all("a", attrs={"name": True})}
        return ids[path]

    checked = 0
    for page in html_files(built_book):
        for a in soup(page).find_all("a", href=True):
            href = a["href"]
            url = urlparse(href)
            if url.scheme or href.startswith(("mailto:", "javascript:")):
                continue
            target = page if not url.path else (page.parent / unquote(url.path)).resolve()
            assert built_book.resolve() in target.parents or target == built_book.resolve(), \
                f"{page}: link {href} leaves the site"
            if target.is_dir():
                target = target / "index.html"
            assert target.is_file(), f"{page}: broken link {href}"
            if url.fragment and target.suffix == ".html":
                assert unquote(url.fragment) in anchors(target), f"{page}: link {href} names a missing anchor"
            checked += 1
    assert checked > 100


def test_language_switch_on_every_page(built_book: Path):
    """Each chapter links to itself in the other edition; the search and index pages to theirs. The
    English edition's site root is the site's (chapters in en/), the Japanese one's is ja/."""
    site_pages = {"genindex.html", "search.html"}
    english = html_files(built_book / "en") + [built_book / name for name in site_pages]
    japanese = html_files(built_book / "ja")
    for page in english + japanese:
        switch = soup(page).select_one("a.ease-lang-switch")
        assert switch is not None, f"{page} has no language switch"
        rel = page.relative_to(built_book)
        if rel.name in site_pages and len(rel.parts) <= 2:
            expected = built_book / ("ja" if page in english else "") / rel.name
        else:
            expected = built_book / ("ja" if page in english else "en") / Path(*rel.parts[1:])
        target = (page.parent / switch["href"]).resolve()
        assert target == expected.resolve(), f"{page}: switch points to {switch['href']}"
        assert target.is_file(), f"{page}: switch points to a missing page {switch['href']}"


def test_pages_declare_their_language(built_book: Path):
    for lang in LANGS:
        for page in html_files(built_book / lang):
            assert soup(page).html.get("lang") == lang, f"{page} lacks lang={lang!r}"
        body = article(soup(built_book / lang / "exp5.html")).get_text(" ", strip=True)
        assert bool(CJK.search(body)) == (lang == "ja")


def test_result_tables_have_no_empty_or_nan_cells(built_book: Path):
    for lang in LANGS:
        for page in EXPECTED:
            for table in article(soup(built_book / lang / f"{page}.html")).find_all("table"):
                for cell in table.find_all(["td", "th"]):
                    text = cell.get_text(" ", strip=True)
                    assert text.lower() not in BAD_CELLS, f"{lang}/{page}: table cell {text!r}"
                    assert not re.search(r"\bnan\b", text, re.I), f"{lang}/{page}: table cell {text!r}"


def test_japanese_search_index_has_japanese_terms(built_book: Path):
    def index(lang: str) -> dict:  # the English edition's site root is the site's (its pages are in en/)
        text = (built_book / ("" if lang == "en" else lang) / "searchindex.js").read_text(encoding="utf-8")
        return json.loads(text[text.index("(") + 1:text.rindex(")")])

    ja = index("ja")
    exp5 = ja["docnames"].index("exp5")
    for word in ("閾値", "退出"):  # words of the Japanese Experiment 5 page
        assert word in article(soup(built_book / "ja" / "exp5.html")).get_text()
        docs = set()
        for key in ("terms", "titleterms"):  # Sphinx's search looks a word up in both
            found = ja[key].get(word, [])
            docs |= {found} if isinstance(found, int) else set(found)
        assert exp5 in docs, f"searching '{word}' does not find the Japanese Experiment 5 page"
    assert not any(CJK.search(term) for term in index("en")["terms"])


def _table_rows(table) -> list[dict[str, str]]:
    head = [th.get_text(" ", strip=True) for th in table.find("thead").find_all("th")]
    return [dict(zip(head, (td.get_text(" ", strip=True) for td in tr.find_all("td"))))
            for tr in table.find("tbody").find_all("tr")]


def test_numbers_come_from_the_records_and_published_file(built_book: Path, book_results: Path):
    """Recompute Experiment 5's α table from the records the appendix lists, independently of companion."""
    runs_page = article(soup(built_book / "en" / "appendix" / "notebooks.html"))
    run_ids = [row["run"] for row in _table_rows(runs_page.find("table"))]
    records = [json.loads((book_results / "runs" / f"{rid}.json").read_text()) for rid in run_ids]
    published = yaml.safe_load((REPO / "book" / "data" / "published.yaml").read_text(encoding="utf-8"))
    doc_ppl = {row["alpha"]: row["ppl"] for row in published["exp5_alpha"]["rows"]}
    table = article(soup(built_book / "en" / "exp5.html")).find("table")
    rows = _table_rows(table)
    assert [float(r["α"]) for r in rows] == sorted(doc_ppl)
    for row in rows:
        alpha = float(row["α"])
        ppl = [r["metrics"]["ppl"] for r in records if r["config"]["setting"] == "A"
               and r["config"]["alpha"] == alpha]
        assert ppl and row["n"] == str(len(ppl))
        shown = [float(x) for x in re.findall(r"[\d.]+", row["PPL repro"])]
        assert shown[0] == pytest.approx(np.mean(ppl), abs=0.006)
        if len(ppl) > 1:
            half = stats.t.ppf(0.975, len(ppl) - 1) * np.std(ppl, ddof=1) / math.sqrt(len(ppl))
            assert shown[1] == pytest.approx(half, abs=0.006)
        assert float(row["PPL doc"]) == doc_ppl[alpha]


def test_citation_names_the_configured_repository():
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["repository-code"] == config["repository"]["url"]
    assert citation["cff-version"].startswith("1.2")


# --- the build script ------------------------------------------------------------------------------
def _build_module():
    spec = importlib.util.spec_from_file_location("book_build", REPO / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_executed_notebook_fails_clearly(tmp_path: Path, capsys, monkeypatch):
    build = _build_module()
    monkeypatch.delenv("EASE_RESULTS", raising=False)  # build.main sets it for its kernels: restored after
    shutil.copytree(REPO / "results" / "runs", tmp_path / "runs", ignore=shutil.ignore_patterns("*.pt"))
    with pytest.raises(SystemExit):
        build.main(["--results", str(tmp_path), "--out", str(tmp_path / "_build")])
    err = capsys.readouterr().err
    assert "have no lab notebook" in err and "python -m ease.pipeline" in err
    assert re.search(r"A-a0\.7-\S+", err), err  # names the runs


# --- companion.core ---------------------------------------------------------------------------------
def _record(setting: str, alpha: float, seed: int, ppl: float, **changes) -> dict:
    config = RunConfig(setting=setting, alpha=alpha, seed=seed, **changes)
    sweep = [{"threshold": t, "ppl": ppl + t, "shallow_frac": 1 - t, "compute_frac": 1 - 2 * (1 - t) / 3}
             for t in config.sweep_thresholds]
    return {"run_id": config.run_id, "config": json.loads(json.dumps(config.to_dict())),
            "metrics": {"ppl": ppl, "shallow_frac": 0.5, "compute_frac": 2 / 3, "ppl_shallow": ppl + 1,
                        "ppl_deep": ppl - 1, "best_epoch": 1, "epochs_run": 2, "eval_tokens": 100},
            "sweep": sweep, "history": [{"epoch": 1, "train_loss": 3.0, "val_ppl": ppl, "val_ppl_shallow": ppl,
                                         "val_ppl_deep": ppl, "val_shallow_frac": 0.5}],
            "env": {"python": "3", "torch": "2", "platform": "x", "device": "cpu", "threads": 1},
            "timing": {"train_s": 1.0, "eval_s": 0.1, "tokens_per_s": 10.0}}


CELLS = [("A", 0.3), ("A", 0.5), ("A", 0.7), ("B", 0.7)]
REFERENCES = [RunConfig(setting=s, alpha=a, seed=k) for k in range(3) for s, a in CELLS]


def test_select_grid_prefers_the_reference_configuration():
    small = dict(train_chars=20_000, val_chars=5_000, max_epochs=2)
    records = [_record(s, a, k, 10.0 + k) for s, a in CELLS for k in (0, 1)]
    records += [_record(s, a, k, 50.0, **small) for s, a in CELLS for k in (0, 1, 2)]
    records.append(_record("A", 0.9, 0, 1.0))  # not a cell of the grid
    grid = core.select_grid(records, REFERENCES)
    assert grid.deviations == {}
    assert grid.cells == CELLS
    assert all(len(grid.cell(s, a)) == 2 for s, a in CELLS)
    assert grid.values("A", 0.7, "ppl") == [10.0, 11.0]


def test_select_grid_falls_back_to_one_complete_configuration_and_names_differences():
    small = dict(train_chars=20_000, val_chars=5_000, max_epochs=2)
    records = [_record(s, a, 0, 5.0, **small) for s, a in CELLS]
    records.append(_record("A", 0.3, 0, 9.0))  # reference size, but only one cell: incomplete
    grid = core.select_grid(records, REFERENCES)
    assert set(grid.deviations) == {"train_chars", "val_chars", "max_epochs"}
    assert grid.deviations["train_chars"] == (20_000, 200_000)
    assert grid.values("A", 0.3, "ppl") == [5.0]


def test_select_grid_errors_name_what_is_missing_or_ambiguous():
    with pytest.raises(LookupError, match="no complete set"):
        core.select_grid([_record("A", 0.3, 0, 5.0)], REFERENCES)
    two = [_record(s, a, 0, 5.0, max_epochs=2) for s, a in CELLS] + \
          [_record(s, a, 0, 5.0, max_epochs=3) for s, a in CELLS]
    with pytest.raises(LookupError, match="max_epochs"):
        core.select_grid(two, REFERENCES)


def test_mean_ci_is_the_student_t_interval():
    values = [10.0, 12.0, 11.0, 15.0]
    stat = mean_ci(values)
    half = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert stat.mean == pytest.approx(np.mean(values))
    assert (stat.lo, stat.hi) == pytest.approx(half)
    single = mean_ci([3.0])
    assert single.half is None and core.fmt_stat(single, "ppl") == "3.00"
    assert core.fmt_stat(mean_ci([0.5, 0.7]), "shallow_frac").endswith("%")
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([1.0, float("nan")])


def test_markdown_table_rejects_empty_cells():
    import pandas as pd

    with pytest.raises(ValueError, match="empty"):
        core.markdown_table(pd.DataFrame({"a": ["1", ""]}))
    with pytest.raises(ValueError, match="empty or non-text"):
        core.markdown_table(pd.DataFrame({"a": [float("nan")]}))


def test_exp6_verdict_follows_the_data_not_the_document():
    """Swap which setting is better in the records: the paired verdict must swap too."""
    from companion import experiments, judge
    from ease.stats import NOT_REPRODUCED, REPRODUCED

    published = core.load_published()
    assert published["exp6_settings"]["claim_better_ppl"] == "A"
    for better, (pa, pb) in (("A", (5.0, 9.0)), ("B", (9.0, 5.0))):
        records = [_record(s, a, k, (pa if s == "A" else pb) + 0.1 * k) for s, a in CELLS for k in range(3)]
        r = experiments.settings_results(core.select_grid(records, REFERENCES), published)
        assert r.ppl_comparison.verdict == (REPRODUCED if better == "A" else NOT_REPRODUCED)
        assert judge.verdict_word(r.ppl_comparison.verdict, "en").strip("*") in ("reproduced", "not reproduced")


def test_cjk_font_missing_is_a_clear_error(monkeypatch):
    from matplotlib import font_manager

    monkeypatch.setattr(font_manager.fontManager, "ttflist", [])
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    with pytest.raises(RuntimeError, match="fonts-noto-cjk"):
        core.cjk_font()


def test_japanese_figure_draws_without_missing_glyphs():
    import matplotlib

    matplotlib.use("Agg")
    from companion.architecture import fig_architecture

    fig = fig_architecture("ja")  # raises if a glyph is missing from the chosen font
    assert any(CJK.search(t.get_text()) for ax in fig.axes for t in ax.texts)
