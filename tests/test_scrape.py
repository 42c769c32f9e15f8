"""Scrape: the body is cut out without chrome, CSS, JS, edit links or references; the fetch
keeps the raw page with its revision; HTTP failures give one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ArticleServer, article_prose, wiki_page

from tasks.config import Config, LaminarError
from tasks.scrape import TransientFetchError, body_text, download, fetch_page, html_slice


def test_body_text_keeps_prose_and_drops_everything_else() -> None:
    prose = article_prose(3)
    text = body_text(wiki_page(prose))
    for p in prose:
        assert p in text  # citation markers between sentences are gone, so prose is intact
    for junk in [
        "Main menu",
        "Navigation",
        "From Wikipedia",
        "hatnote",
        "font-style",
        "console.log",
        "[edit]",
        "edit",
        "[0]",
        "References",
        "Reference text ONE",
        "Navbox",
        "last edited",
        "wgRevisionId",
        "Light-emitting diode - Wikipedia",
    ]:
        assert junk not in text, junk
    assert text.startswith("History\n")


def test_references_heading_matches_case_insensitively_and_old_markup() -> None:
    html = wiki_page(article_prose(2)).replace(
        '<div class="mw-heading mw-heading2"><h2 id="References">',
        '<div><h2><span class="mw-headline" id="references">',
    )
    text = body_text(html)
    assert "Paragraph 1." in text and "Reference text ONE" not in text


def test_page_without_body_or_references_is_rejected() -> None:
    with pytest.raises(LaminarError, match="mw-body-content"):
        body_text("<html><body><p>hello</p></body></html>", "http://x/")
    no_refs = wiki_page(article_prose(1)).replace('id="References"', 'id="Notes"')
    with pytest.raises(LaminarError, match="no References heading in its mw-body-content"):
        body_text(no_refs, "http://x/")


def test_html_slice_is_the_course_cut() -> None:
    html = wiki_page(article_prose(2))
    cut = html_slice(html)
    assert cut.startswith("mw-body-content") and cut.endswith("<h2 ")
    assert html.index(cut) == html.index("mw-body-content")


def test_fetch_keeps_raw_html_and_revision(tmp_path: Path, article_server: ArticleServer) -> None:
    cfg = Config(url=article_server.url("/wiki/Light-emitting_diode"), artifacts_dir=str(tmp_path))
    meta = fetch_page.fn(cfg)
    assert meta["revision_id"] == 1234567 and meta["url"] == cfg.url
    saved = Path(meta["html"]["path"])
    assert saved.read_bytes() == article_server.routes["/wiki/Light-emitting_diode"][1]
    assert saved.parent == tmp_path / "pages" and saved.with_suffix(".json").exists()


def test_http_errors(article_server: ArticleServer) -> None:
    article_server.routes["/boom"] = (503, b"busy")
    with pytest.raises(TransientFetchError, match="HTTP 503"):
        download(article_server.url("/boom"))
    with pytest.raises(LaminarError, match="HTTP 404"):
        download(article_server.url("/missing"))
    with pytest.raises(TransientFetchError, match="could not be fetched"):
        download("http://127.0.0.1:9/closed-port")
