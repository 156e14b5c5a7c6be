"""The built book in a real browser: headless Chromium loads pages over file://, takes screenshots
and dumps the DOM after its scripts ran. Skipped (with the reason) where Chromium is not installed,
except in CI (CI=true), where a skip fails the run.

Screenshots are kept next to the built site (OUT/screenshots/) for a person to look at.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
                                shutil.which("google-chrome"))
                 if p and Path(p).is_file()), None)
pytestmark = [pytest.mark.ci_required,
              pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                 "(/usr/bin/chromium; on Debian: apt-get install chromium)")]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2000"]
TIMEOUT_S = 120


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def screenshot(page: Path, png: Path) -> Image.Image:
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    chromium(f"--screenshot={png}", page.resolve().as_uri())
    assert png.is_file(), f"no screenshot of {page}"
    assert png.stat().st_size > 20_000, f"screenshot of {page} is suspiciously small ({png.stat().st_size} B)"
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1_000_000) or []
    assert len(colours) > 50, f"screenshot of {page} is (almost) a single colour: a blank page"
    return image


@pytest.mark.parametrize("page", ["index.html", "en/exp6.html", "ja/exp5.html"])
def test_pages_render_in_a_browser(built_book: Path, page: str):
    name = page.replace("/", "_").replace(".html", ".png")
    image = screenshot(built_book / page, built_book.parent / "screenshots" / name)
    # the page is not just the white background: a good share of it is drawn (text, tables, figures)
    grey = image.convert("L")
    dark = sum(grey.histogram()[:200])  # pixels darker than light grey
    assert dark > 0.005 * grey.width * grey.height, f"{page} looks empty"


def test_japanese_chapter_dom(built_book: Path):
    dom = chromium("--dump-dom", (built_book / "ja" / "exp5.html").resolve().as_uri()).stdout
    assert '<html lang="ja"' in dom
    title = dom[dom.index("<title>") + 7:dom.index("</title>")]
    assert "実験5" in title
    assert "<table" in dom
    assert "ease-lang-switch" in dom and 'href="../en/exp5.html"' in dom


def test_landing_page_dom_links_both_languages(built_book: Path):
    dom = chromium("--dump-dom", (built_book / "index.html").resolve().as_uri()).stdout
    assert 'href="en/index.html"' in dom and 'href="ja/index.html"' in dom
    assert "日本語" in dom


# Checks, in the page as the browser laid it out, that no table runs past the text column: a table
# either fits, or sits in a box that scrolls sideways and itself fits. Its verdict is written into the
# DOM, which --dump-dom returns.
_TABLE_CHECK = """
<script>
(() => {  // at the end of <body>: styles applied; no wait for network fonts or scripts
  const column = (document.querySelector('article') || document.body).getBoundingClientRect();
  const bad = [];
  document.querySelectorAll('article table').forEach((table, i) => {
    const right = table.getBoundingClientRect().right;
    if (right <= column.right + 1) return;
    let box = table.parentElement;
    while (box && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX)) box = box.parentElement;
    if (!box || box.getBoundingClientRect().right > column.right + 1) bad.push(i + ':' + Math.round(right - column.right));
  });
  // a header squeezed to about one character per line (Japanese headers wrap anywhere)
  const squeezed = [];
  document.querySelectorAll('article table th').forEach((th) => {
    const text = th.textContent.trim();
    const em = parseFloat(getComputedStyle(th).fontSize);
    if (text.length >= 3 && th.getBoundingClientRect().width < 2.5 * em) squeezed.push(text);
  });
  const out = document.createElement('pre');
  out.id = 'ease-table-check';
  out.textContent = 'tables=' + document.querySelectorAll('article table').length + ' overflow=' + bad.join(',') +
                    ' squeezed=' + squeezed.join('|');
  document.body.appendChild(out);
})();
</script>
"""
WIDE_PAGES = ["en/beyond.html", "en/claims.html", "en/forensics.html", "ja/beyond.html", "ja/claims.html",
              "ja/forensics.html", "ja/setup.html", "en/real_exit.html"]


@pytest.mark.parametrize("page", WIDE_PAGES)
def test_wide_tables_stay_inside_the_column(built_book: Path, page: str):
    source = built_book / page
    probe = source.with_name(f"_probe_{source.name}")  # beside the page, so its relative links still work
    html = source.read_text(encoding="utf-8")
    probe.write_text(html.replace("</body>", _TABLE_CHECK + "</body>"), encoding="utf-8")
    try:
        proc = subprocess.run([CHROMIUM, *[f for f in FLAGS if not f.startswith("--window-size")],
                               "--window-size=1300,1000", f"--user-data-dir={tempfile.mkdtemp()}",
                               "--virtual-time-budget=5000", "--dump-dom", probe.resolve().as_uri()],
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        probe.unlink()
    found = re.search(r'id="ease-table-check"[^>]*>tables=(\d+) overflow=(\S*) squeezed=([^<]*)<', proc.stdout)
    assert found, f"the table check did not run in {page}: {proc.stderr[-1000:]}"
    assert int(found.group(1)) > 0, f"{page} has no table to check"
    assert found.group(2) == "", f"{page}: tables (index:pixels past the column) overflow: {found.group(2)}"
    assert found.group(3) == "", f"{page}: table headers squeezed to a character per line: {found.group(3)}"
