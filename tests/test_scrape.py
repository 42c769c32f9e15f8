"""Fetching the article: the raw page is kept with its revision; every way the network can fail
is one sentence naming the URL, the failure and the fix, retried only where a retry can help;
redirects stay on the article's site, the body is capped and must be HTML. (Parsing:
tests/test_wikitext.py.)"""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import ArticleServer, free_port, raw_response, wiki_page

from tasks.config import Config
from tasks.scrape import (
    RETRY_DELAYS,
    TransientFetchError,
    _refuse_redirect,
    download,
    fetch_page,
    parse_page,
)
from tasks.settings import LaminarError


def test_fetch_keeps_raw_html_and_revision(tmp_path: Path, article_server: ArticleServer) -> None:
    url = article_server.url("/wiki/Light-emitting_diode")
    cfg = Config(urls=[url], artifacts_dir=str(tmp_path))
    meta = fetch_page.fn(cfg, url)
    assert meta["revision_id"] == 1234567 and meta["url"] == cfg.urls[0]
    saved = Path(meta["html"]["path"])
    assert saved.read_bytes() == article_server.routes["/wiki/Light-emitting_diode"][1]
    assert saved.parent == tmp_path / "pages" and saved.with_suffix(".json").exists()
    text = parse_page.fn(cfg, meta)
    assert Path(text["text"]["path"]).read_text().startswith("A light-emitting diode (LED) is")


def test_retry_schedule_is_2_4_8_seconds() -> None:
    assert fetch_page.retries == 3 and fetch_page.retry_delay_seconds == RETRY_DELAYS == [2, 4, 8]


def test_http_errors(article_server: ArticleServer) -> None:
    article_server.routes["/boom"] = (503, b"busy")
    article_server.routes["/slow-down"] = (429, b"too many requests")
    with pytest.raises(TransientFetchError, match="answered HTTP 503"):
        download(article_server.url("/boom"))
    with pytest.raises(TransientFetchError, match="answered HTTP 429"):
        download(article_server.url("/slow-down"))
    with pytest.raises(LaminarError, match="HTTP 404: check the article's address") as e:
        download(article_server.url("/missing"))
    assert not isinstance(e.value, TransientFetchError)  # a 404 is never retried


def test_refused_connection() -> None:
    url = f"http://127.0.0.1:{free_port()}/wiki/x"
    with pytest.raises(TransientFetchError) as e:
        download(url)
    assert str(e.value) == (
        f"--urls '{url}' could not be fetched: the connection to {url.split('/')[2]} was refused "
        "(nothing listens there); check the network or the URL, then rerun (a page fetched "
        "before stays cached under the artifacts dir)."
    )


def test_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # No name is looked up for real (tests send nothing off this machine): the resolver raises
    # what glibc's does for an unknown host.
    def no_such_host(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(TransientFetchError, match=r"the host name en\.wikipedia\.org could not"):
        download("https://en.wikipedia.org/wiki/Light-emitting_diode")


def test_timeout(article_server: ArticleServer) -> None:
    article_server.routes["/stall"] = (200, b"late", 2.0)
    with pytest.raises(TransientFetchError, match="did not answer within --fetch-timeout"):
        download(article_server.url("/stall"), timeout=0.3)


def test_tls_error(article_server: ArticleServer) -> None:
    url = article_server.url("/wiki/Light-emitting_diode").replace("http://", "https://")
    with pytest.raises(LaminarError, match=r"the TLS handshake with 127\.0\.0\.1") as e:
        download(url)
    assert not isinstance(e.value, TransientFetchError)


def test_server_closing_mid_body(article_server: ArticleServer) -> None:
    page = wiki_page(["Prose."]).encode()
    headers = {"Content-Type": "text/html", "Content-Length": str(len(page))}
    article_server.routes["/cut"] = raw_response(200, headers, page, cut_after=1000)
    with pytest.raises(TransientFetchError, match="closed the connection before the whole page"):
        download(article_server.url("/cut"))


def test_redirects_stay_on_the_site(article_server: ArticleServer) -> None:
    page = wiki_page(["Prose."]).encode()
    article_server.routes["/wiki/Page"] = (200, page)
    article_server.routes["/wiki/LED"] = raw_response(301, {"Location": "/wiki/Page"})
    assert download(article_server.url("/wiki/LED")) == page  # same host: followed
    elsewhere = article_server.url("/wiki/Page").replace("127.0.0.1", "localhost")
    article_server.routes["/away"] = raw_response(302, {"Location": elsewhere})
    with pytest.raises(LaminarError, match=r"redirects to another site \(http://localhost") as e:
        download(article_server.url("/away"))
    assert type(e.value) is LaminarError  # never retried
    article_server.routes["/loop"] = raw_response(302, {"Location": "/loop"})
    with pytest.raises(LaminarError, match="redirected more than 5 times"):
        download(article_server.url("/loop"))
    assert article_server.hits["/loop"] == 6


def test_redirects_keep_https_and_the_port(article_server: ArticleServer) -> None:
    """Followed redirects stay https once https (no downgrade to plain http) and keep the port;
    refusals are not retried (a retry would get the same answer)."""
    from conftest import ArticleServer as Other

    other = Other()
    try:
        other.routes["/wiki/Page"] = (200, wiki_page(["Prose."]).encode())
        article_server.routes["/port"] = raw_response(302, {"Location": other.url("/wiki/Page")})
        with pytest.raises(LaminarError, match=r"redirects to another port \(http://127") as e:
            download(article_server.url("/port"))
        assert type(e.value) is LaminarError  # not a TransientFetchError: never retried
    finally:
        other.close()
    https = "https://en.wikipedia.org/wiki/LED"
    with pytest.raises(LaminarError, match=r"from https to http://en\.wikipedia\.org/wiki/Page"):
        _refuse_redirect(https, https, "http://en.wikipedia.org/wiki/Page")
    _refuse_redirect(https, https, "https://en.m.wikipedia.org/wiki/LED")  # mobile host: fine


def test_a_malformed_content_length_is_one_sentence(article_server: ArticleServer) -> None:
    headers = {"Content-Type": "text/html", "Content-Length": "lots"}
    article_server.routes["/liar"] = raw_response(200, headers, b"<p>x</p>")
    with pytest.raises(LaminarError, match=r"malformed Content-Length header \('lots'\)") as e:
        download(article_server.url("/liar"))
    assert type(e.value) is LaminarError


def test_a_dripping_server_meets_the_whole_download_deadline(
    article_server: ArticleServer,
) -> None:
    """A byte every 0.05 s never trips the per-read --fetch-timeout, but the whole download is
    bounded by --fetch-deadline (and that failure is retried: a slow network may recover)."""
    stop = threading.Event()

    def drip(handler: object) -> None:
        handler.send_response(200)  # type: ignore[attr-defined]
        handler.send_header("Content-Type", "text/html")  # type: ignore[attr-defined]
        handler.end_headers()  # type: ignore[attr-defined]
        try:
            for _ in range(2000):  # at most 100 s, and the test stops it sooner
                if stop.is_set():
                    return
                handler.wfile.write(b"x")  # type: ignore[attr-defined]
                handler.wfile.flush()  # type: ignore[attr-defined]
                time.sleep(0.05)
        except OSError:
            return

    article_server.routes["/drip"] = drip
    started = time.monotonic()
    try:
        with pytest.raises(TransientFetchError, match="still downloading when --fetch-deadline"):
            download(article_server.url("/drip"), timeout=5, deadline_s=1.0)
    finally:
        stop.set()
    assert time.monotonic() - started < 4


def test_not_html_is_refused(article_server: ArticleServer) -> None:
    headers = {"Content-Type": "application/octet-stream", "Content-Length": "3"}
    article_server.routes["/blob"] = raw_response(200, headers, b"\x00\x01\x02")
    with pytest.raises(
        LaminarError, match="sends 'application/octet-stream', not an HTML page"
    ) as e:
        download(article_server.url("/blob"))
    assert type(e.value) is LaminarError  # refused, never retried


def test_oversized_body_is_abandoned_unread(article_server: ArticleServer) -> None:
    sent = {"bytes": 0}
    done = threading.Event()

    def endless(handler: object) -> None:  # 50 MB with no Content-Length, 64 KiB at a time
        handler.send_response(200)  # type: ignore[attr-defined]
        handler.send_header("Content-Type", "text/html")  # type: ignore[attr-defined]
        handler.end_headers()  # type: ignore[attr-defined]
        block = b"<p>" + b"x" * (65536 - 3)
        try:
            while sent["bytes"] < 50_000_000:
                handler.wfile.write(block)  # type: ignore[attr-defined]
                sent["bytes"] += len(block)
        finally:
            done.set()

    article_server.routes["/huge"] = endless
    tracemalloc.start()
    try:
        with pytest.raises(LaminarError, match="sends more than --max-page-mb 1 MB"):
            download(article_server.url("/huge"), limit_mb=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    done.wait(10)
    assert peak < 4_000_000  # about the 1 MB cap, never the 50 MB body
    assert sent["bytes"] < 50_000_000  # the server was cut off: the body was not read to its end
    declared = {"Content-Type": "text/html", "Content-Length": "50000000"}
    article_server.routes["/declared"] = raw_response(200, declared, b"")
    with pytest.raises(LaminarError, match="more than --max-page-mb 5 MB") as e:
        download(article_server.url("/declared"))  # refused from its header alone
    assert type(e.value) is LaminarError  # never retried
