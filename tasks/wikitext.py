"""A Wikipedia article's prose as a reader sees it, from the HTML MediaWiki serves.

Works on both skins seen in the wild (shapes in tests/test_wikitext.py):
- current (Vector 2022): `div#mw-content-text.mw-body-content > div.mw-parser-output`, headings
  as `div.mw-heading > h2#Id` + a sibling `span.mw-editsection`, the contents in a sidebar;
- legacy (Vector): `div#siteNotice.mw-body-content` comes first, then
  `div#bodyContent.mw-body-content`, headings as `h2 > span.mw-headline#Id` with the edit link
  inside the `h2`, and the contents (`div#toc`) inside the body.

What is kept: the body from the lead up to the References heading, with block elements (p, li,
table rows, headings, captions, ...) on lines of their own and table cells separated by a space,
so no two words fuse; inline markup (links, bold, sub/sup) joins without a space (`H2O`).
What is dropped: everything a reader skips (DROP below). The infobox stays, as separated text,
after the lead's first paragraph (where the mobile site puts it): the text opens with the lead."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from bs4 import BeautifulSoup, Comment, Doctype, NavigableString, Tag

from tasks.settings import LaminarError

# Non-prose parts of an article body: code and styles, page chrome, edit links, the table of
# contents, hatnotes and the short description, maintenance boxes, hidden and empty elements,
# citation markers and backlinks, reference lists, navboxes, coordinates, sister-project boxes.
DROP = ", ".join(
    [
        "style, script, noscript, link, meta, template",
        "#siteSub, #contentSub, #contentSub2, #jump-to-nav, .mw-jump-link, .mw-indicators",
        ".mw-editsection, #toc, .toc, .vector-toc, .hatnote, .shortdescription",
        ".ambox, .metadata, .mw-empty-elt, .noprint",
        "sup.reference, .reference, .mw-cite-backlink, .reflist, .mw-references-wrap",
        "ol.references, .navbox, .navbox-styles, .authority-control, .printfooter, #catlinks",
        "#coordinates, .geo-nondefault, .sistersitebox, .side-box, .portalbox",
        ".gallery .thumb, .mw-gallery-traditional .thumb, .infobox-image a, .mw-kartographer-map",
    ]
)
_HIDDEN = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_REFERENCES_ID = re.compile(r"^references$", re.IGNORECASE)
_HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
# Elements that start a new line: nothing on either side of them joins their text.
BLOCKS = frozenset(
    {
        *_HEADINGS,
        *("p", "div", "section", "article", "aside", "header", "footer", "main", "nav"),
        *("ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr"),
        *("caption", "figure", "figcaption", "blockquote", "pre", "hr", "center", "details"),
    }
)
CELLS = frozenset({"th", "td"})  # separated by a space within their row
# Invisible characters a reader never sees: zero-width spaces and (non-)joiners, direction marks,
# word joiners, byte-order marks, soft hyphens.
_INVISIBLE = re.compile("[\u00ad\u200b\u200c\u200d\u200e\u200f\u202a-\u202e\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u2002-\u200a\u202f\u205f\u3000]+")


def article_body(soup: BeautifulSoup, url: str) -> tuple[Tag, Tag]:
    """The mw-body-content element that holds the References heading, and that heading. On the
    legacy skin the first such element is the site notice, so each one is tried in turn."""
    for body in soup.select(".mw-body-content"):
        ref = body.find(id=_REFERENCES_ID)
        if ref is not None:
            return body, ref
    what = (
        "References heading in its mw-body-content element"
        if soup.select(".mw-body-content")
        else "mw-body-content element"
    )
    raise LaminarError(
        f"the page at '{url}' has no {what}, so it is not a Wikipedia article laminar can "
        "read: check --urls."
    )


def cut_at(body: Tag, ref: Tag) -> None:
    """Remove the References heading and everything after it, at every level up to the body."""
    heading = ref.find_parent(class_="mw-heading")  # current skin: div.mw-heading > h2#References
    if heading is None:  # legacy skin: h2 > span.mw-headline#References
        heading = ref if ref.name in _HEADINGS else (ref.find_parent(_HEADINGS) or ref)
    node: Tag | None = heading
    while node is not None and node is not body:
        for sibling in node.find_next_siblings():
            sibling.decompose()
        node = node.parent
    heading.decompose()


def drop_non_prose(body: Tag) -> None:
    for el in body.select(DROP):
        el.decompose()
    for el in body.find_all(style=_HIDDEN):
        el.decompose()
    for math in body.find_all("math"):  # MathML: its TeX source reads better than its parts
        tex = re.sub(r"^\{\\displaystyle\s*(.*)\}$", r"\1", math.get("alttext", "").strip())
        math.replace_with(tex)


def lead_first(body: Tag) -> None:
    """Move the lead's first paragraph ahead of the infobox and images that precede it."""
    first = next(
        (
            p
            for p in body.find_all("p")
            if p.get_text(strip=True) and p.find_parent(["table", "figure"]) is None
        ),
        None,
    )
    if first is None:
        return
    ahead = [el for el in first.find_previous_siblings() if isinstance(el, Tag)]
    if ahead:  # find_previous_siblings runs backwards: the last is the earliest
        ahead[-1].insert_before(first.extract())


def pieces(node: Tag, pre: bool = False) -> Iterator[str]:
    """The text under `node`, with "\n" around blocks and " " between table cells. Walked with
    a stack of its own, not by recursion: a page that nests thousands of elements deep reads as
    any other (recursion stopped at Python's limit of about a thousand)."""
    stack: list[tuple[Iterator[Any], bool, str]] = [(iter(node.children), pre, "")]
    while stack:
        children, in_pre, closing = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            if closing:
                yield closing
        elif isinstance(child, Comment | Doctype) or not isinstance(child, NavigableString | Tag):
            continue
        elif isinstance(child, NavigableString):
            yield str(child) if in_pre else re.sub(r"[\n]+", " ", str(child))
        elif child.name == "br":
            yield "\n"
        elif child.name in BLOCKS:
            yield "\n"
            stack.append((iter(child.children), in_pre or child.name == "pre", "\n"))
        elif child.name in CELLS:
            yield " "
            stack.append((iter(child.children), in_pre, " "))
        else:
            stack.append((iter(child.children), in_pre, ""))


def tidy(text: str) -> str:
    """One space between words, one line per block, no blank lines, no invisible characters."""
    text = _SPACES.sub(" ", _INVISIBLE.sub("", text))
    lines = (line.strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def body_text(html: str, url: str = "the page") -> str:
    """The article's prose: the body up to References, as a reader sees it (module docstring)."""
    soup = BeautifulSoup(html, "html.parser")
    body, ref = article_body(soup, url)
    cut_at(body, ref)
    drop_non_prose(body)
    lead_first(body)
    return tidy("".join(pieces(body)))


def html_slice(html: str, url: str = "the page") -> str:
    """The course's cut: raw HTML from the mw-body-content marker to id="References"."""
    start = html.find("mw-body-content")
    end = re.search(r'id="references"', html, re.IGNORECASE)
    if start < 0 or end is None or end.start() <= start:
        raise LaminarError(
            f"the page at '{url}' lacks the mw-body-content marker or id=\"References\" after "
            "it: check --urls or use --text text."
        )
    return html[start : end.start()]
