"""The article's text as a reader sees it, from pages in the shapes MediaWiki serves (current
and legacy skin, tests/wikipages.py): exact small pieces, and whole-page checks."""

from __future__ import annotations

import re

import pytest
from bs4 import BeautifulSoup
from wikipages import (
    EXPECTED_INFOBOX,
    EXPECTED_LEAD,
    JUNK,
    SEE_ALSO,
    current_skin,
    expected_text,
    legacy_skin,
)

from tasks.settings import LaminarError
from tasks.wikitext import body_text, html_slice, pieces, tidy

SECTIONS = [
    ("History", ["Round saw a glow in 1907.", "Losev built the first LED in 1927."]),
    ("Physics", ["Electrons & holes recombine; photons leave."]),
]
SKINS = {"current": current_skin, "legacy": legacy_skin}


def text_of(fragment: str) -> str:
    """The reader's text of an HTML fragment, through the same walker as whole pages."""
    return tidy("".join(pieces(BeautifulSoup(fragment, "html.parser"))))


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("<b>HTML</b>'s tags", "HTML's tags"),
        ("H<sub>2</sub>O and 10<sup>6</sup>", "H2O and 106"),
        (
            'a <a href="/x">link</a>, <i>italic</i> and <span>span</span>.',
            "a link, italic and span.",
        ),
        (
            "<table><tr><th>Internet media type</th><td>text/html</td></tr>"
            "<tr><th>Type code</th><td>TEXT</td></tr></table>",
            "Internet media type text/html\nType code TEXT",
        ),
        (
            "<ul><li>one</li><li>two</li></ul><dl><dt>term</dt><dd>meaning</dd></dl>",
            "one\ntwo\nterm\nmeaning",
        ),
        ("<p>first</p><p>second<br>third</p>", "first\nsecond\nthird"),
        ("<h2>Title</h2><div>body</div><blockquote>quote</blockquote>", "Title\nbody\nquote"),
        (
            "<figure><img alt='x'><figcaption>A caption</figcaption></figure>after",
            "A caption\nafter",
        ),
        ("word\u00a0word\u200e and zero\u200bwidth", "word word and zerowidth"),
        ("<p>spread\n  over\n\tlines</p>", "spread over lines"),
        ("<!-- a comment -->kept", "kept"),
    ],
)
def test_blocks_separate_and_inline_elements_join(fragment: str, expected: str) -> None:
    assert text_of(fragment) == expected


@pytest.mark.parametrize("skin", SKINS)
def test_whole_page_is_the_article_as_a_reader_sees_it(skin: str) -> None:
    text = body_text(SKINS[skin](SECTIONS))
    assert text == expected_text(SECTIONS)
    assert text.startswith(EXPECTED_LEAD + "\n")  # the lead first, ahead of the infobox
    assert text.endswith("\n".join(["See also", *SEE_ALSO]))  # the last section before References
    for junk in JUNK:
        assert junk not in text, junk


@pytest.mark.parametrize("skin", SKINS)
def test_infobox_cells_never_fuse(skin: str) -> None:
    lines = body_text(SKINS[skin](SECTIONS)).split("\n")
    at = lines.index(EXPECTED_INFOBOX[0])
    assert lines[at : at + len(EXPECTED_INFOBOX)] == EXPECTED_INFOBOX
    words = set(re.findall(r"\w+", "\n".join(lines)))
    for fused in ["TypePassive", "principleElectroluminescence", "productionOctober", "1907Oleg"]:
        assert fused not in words


def test_legacy_skin_skips_the_site_notice_and_drops_the_body_toc() -> None:
    html = legacy_skin(SECTIONS)
    soup = BeautifulSoup(html, "html.parser")
    first = soup.select(".mw-body-content")[0]
    assert first["id"] == "siteNotice"  # the premise: the first mw-body-content is not the article
    assert soup.select_one("#toc") is not None  # and the contents sit inside the body
    text = body_text(html)
    assert "Contents" not in text and "1 History" not in text
    assert text.count("History") == 1


def test_current_skin_heading_with_sibling_edit_link() -> None:
    html = current_skin(SECTIONS)
    assert '<div class="mw-heading mw-heading2"><h2 id="References">' in html  # the premise
    text = body_text(html)
    assert "\nHistory\n" in text and "\nPhysics\n" in text and "edit" not in text


def test_references_heading_matches_case_insensitively() -> None:
    html = current_skin(SECTIONS).replace('id="References"', 'id="references"')
    text = body_text(html)
    assert "Losev built" in text and "Reference text" not in text and "Further" not in text


def test_page_without_body_or_references_is_rejected() -> None:
    with pytest.raises(LaminarError, match="has no mw-body-content element"):
        body_text("<html><body><p>hello</p></body></html>", "http://x/")
    no_refs = current_skin(SECTIONS).replace('id="References"', 'id="Notes"')
    with pytest.raises(LaminarError, match="no References heading in its mw-body-content"):
        body_text(no_refs, "http://x/")


def test_html_slice_is_the_course_cut() -> None:
    html = current_skin(SECTIONS)
    cut = html_slice(html)
    assert cut.startswith("mw-body-content") and cut.endswith("<h2 ")
    assert html.index(cut) == html.index("mw-body-content")


def test_a_page_nested_thousands_deep_reads_like_any_other() -> None:
    """2,000 nested <div>s inside the article body: read with laminar's own stack, not by
    recursion (which stopped at Python's limit with a RecursionError)."""
    from wikipages import current_skin

    deep = "<div>" * 2000 + "deep words" + "</div>" * 2000
    page = current_skin([("History", ["Before the nest."])], 1)
    page = page.replace("Before the nest.", f"Before the nest.</p>{deep}<p>After it.")
    lines = body_text(page).splitlines()
    at = lines.index("Before the nest.")
    assert lines[at : at + 3] == ["Before the nest.", "deep words", "After it."]
