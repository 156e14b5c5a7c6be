"""Diff the text of every page of two built sites (e.g. before and after a change to the book layer).

    python book/diff_text.py OLD_SITE NEW_SITE [--numbers]

Each page's article text (no navigation, no scripts) is split into lines at block elements and
compared line by line; pages only in one site are listed. --numbers compares only the numbers each
page shows (in order), which is what a refactoring of the book layer must leave unchanged.
Exit status 1 when any page differs.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

from bs4 import BeautifulSoup

NUMBER = re.compile(r"[-+−]?\d[\d,]*(?:\.\d+)?%?")
SKIP = ("_static", "_sources", "_images", "appendix/runs", "genindex.html", "search.html")


def pages(site: Path) -> dict[str, Path]:
    return {p.relative_to(site).as_posix(): p for p in sorted(site.rglob("*.html"))
            if not any(s in p.relative_to(site).as_posix() for s in SKIP)}


def page_lines(path: Path) -> list[str]:
    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    body = soup.find("article") or soup.body or soup
    for tag in body.find_all(["script", "style"]):
        tag.decompose()
    for tag in body.find_all(["p", "li", "tr", "h1", "h2", "h3", "h4", "figcaption", "dt", "dd", "pre", "div"]):
        tag.insert_before("\n")
    text = body.get_text(" ")
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--numbers", action="store_true", help="compare only the numbers shown, in order")
    args = parser.parse_args(argv)
    old, new = pages(args.old), pages(args.new)
    changed = 0
    for name in sorted(set(old) | set(new)):
        if name not in new or name not in old:
            print(f"only in {'old' if name in old else 'new'}: {name}")
            changed += 1
            continue
        a, b = page_lines(old[name]), page_lines(new[name])
        if args.numbers:
            a = [n.replace("−", "-") for line in a for n in NUMBER.findall(line)]
            b = [n.replace("−", "-") for line in b for n in NUMBER.findall(line)]
        diff = list(difflib.unified_diff(a, b, f"old/{name}", f"new/{name}", n=0, lineterm=""))
        if diff:
            changed += 1
            print("\n".join(diff))
    print(f"{changed} of {len(set(old) | set(new))} pages differ")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
