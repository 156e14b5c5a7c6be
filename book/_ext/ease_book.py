"""Sphinx extension for the bilingual book.

1. Every page links to the same page in the other language. Both languages are built from the
   same _toc.yml into sibling folders (html/en, html/ja), so the counterpart of page P is
   ../<other>/P.html from the language root: a plain relative link that works on a web server
   and from file:// alike.
2. In Japanese pages, a line break inside a paragraph between two Japanese characters is dropped
   instead of becoming a space (Japanese puts no spaces between words; the sources wrap lines).
"""
from __future__ import annotations

import re

from docutils import nodes

_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
_CJK_PUNCT = re.compile(r"[\u3000-\u303f\uff00-\uffef]")  # 、。「」（）： and other full-width forms
_BREAK = re.compile(r"[ \t]*\n[ \t]*")
_SKIP = (nodes.literal_block, nodes.literal, nodes.raw, nodes.math, nodes.math_block, nodes.comment)
_BLOCKS = (nodes.paragraph, nodes.caption, nodes.term, nodes.title, nodes.line)


def _add_switch(app, pagename, templatename, context, doctree) -> None:
    other = app.config.ease_book_other_lang
    if not other:
        return
    up = "../" * (pagename.count("/") + 1)  # from this page to the site root (above html/<lang>/)
    context["ease_other_lang"] = {**other, "href": f"{up}{other['code']}/{pagename}.html"}


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
                # join Japanese to Japanese and drop breaks at full-width punctuation; keep the
                # space between other Japanese text and a Latin word or number
                if _CJK_PUNCT.match(before or " ") or _CJK_PUNCT.match(after or " "):
                    return ""
                cjk_before, cjk_after = bool(_CJK.match(before or " ")), bool(_CJK.match(after or " "))
                if (cjk_before and (cjk_after or not after)) or (cjk_after and not before):
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
    app.connect("html-page-context", _add_switch)
    app.connect("doctree-read", _join_japanese_lines)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
