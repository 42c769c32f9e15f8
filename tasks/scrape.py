"""Scrape: fetch the article (network, retried) and cut out its body (parsing, cached apart).

The fetch keeps the raw HTML with its URL, fetch time and MediaWiki revision id, so a run
records exactly which version of the article it measured."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests
from bs4 import BeautifulSoup, Tag
from prefect import task
from prefect.tasks import exponential_backoff

from tasks import cache
from tasks.config import Config, LaminarError
from tasks.store import file_record, write_bytes, write_json

USER_AGENT = (
    f"laminar/0.1 (SAE laminar-profile research pipeline; python-requests {requests.__version__})"
)
_REVISION = re.compile(r'"wgRevisionId"\s*:\s*(\d+)')
_REFERENCES_ID = re.compile(r"^references$", re.IGNORECASE)


class TransientFetchError(Exception):
    """A failure a retry can cure: no connection, a timeout, HTTP 429 or 5xx."""


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except TransientFetchError:
        return True
    except Exception:
        return False
    return False


def download(url: str, timeout: float = 30.0) -> bytes:
    """GET `url`; transient failures raise TransientFetchError, the rest LaminarError."""
    try:
        resp = requests.get(url, headers={"User-Agent": USER_AGENT}, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientFetchError(
            f"--url '{url}' could not be fetched ({type(exc).__name__}): check the network "
            "or the URL; a page fetched before stays cached under the artifacts dir."
        ) from exc
    except requests.RequestException as exc:
        raise LaminarError(f"--url '{url}' is not a fetchable URL ({exc}).") from None
    if resp.status_code == 429 or resp.status_code >= 500:
        raise TransientFetchError(
            f"--url '{url}' answered HTTP {resp.status_code} after retries: try again later."
        )
    if resp.status_code >= 400:
        raise LaminarError(
            f"--url '{url}' answered HTTP {resp.status_code}: check the article's address."
        )
    return resp.content


@task(
    name="fetch",
    task_run_name="fetch {cfg.url}",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=_retry_transient,
    cache_policy=cache.ContentKey(fields=("url",)),
)
def fetch_page(cfg: Config) -> dict[str, Any]:
    """Download the article once; later runs replay this record (use --refresh to re-fetch)."""
    html = download(cfg.url, cfg.fetch_timeout)
    sha = hashlib.sha256(html).hexdigest()
    path = cfg.root / "pages" / f"{sha[:16]}.html"
    write_bytes(path, html)
    match = _REVISION.search(html.decode("utf-8", "replace"))
    meta = {
        "url": cfg.url,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "revision_id": int(match.group(1)) if match else None,
        "html": file_record(path),
    }
    write_json(path.with_suffix(".json"), meta)
    return meta


# --------------------------------------------------------------------------- parsing


def _body(soup: BeautifulSoup, url: str) -> tuple[Tag, Tag]:
    """The mw-body-content element that holds the References heading, and that heading."""
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
        "read: check --url."
    )


def body_text(html: str, url: str = "the page") -> str:
    """The article's prose: the body up to References, without chrome, CSS, JS, edit links,
    citation markers, navboxes or the reference list."""
    soup = BeautifulSoup(html, "html.parser")
    body, ref = _body(soup, url)
    # Cut the References heading and everything after it, at every level up to the body.
    heading: Tag = ref.find_parent(class_="mw-heading") or ref
    node: Tag | None = heading
    while node is not None and node is not body:
        for sibling in node.find_next_siblings():
            sibling.decompose()
        node = node.parent
    heading.decompose()
    junk = (
        "style, script, .mw-editsection, sup.reference, .reference, .navbox, .reflist, "
        ".mw-references-wrap, .noprint, .mw-jump-link"
    )
    for el in body.select(junk):
        el.decompose()
    text = body.get_text()
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    return re.sub(r"\s*\n\s*", "\n", text).strip()


def html_slice(html: str, url: str = "the page") -> str:
    """The course's cut: raw HTML from the mw-body-content marker to id="References"."""
    start = html.find("mw-body-content")
    end = re.search(r'id="references"', html, re.IGNORECASE)
    if start < 0 or end is None or end.start() <= start:
        raise LaminarError(
            f"the page at '{url}' lacks the mw-body-content marker or id=\"References\" after "
            "it: check --url or use --text text."
        )
    return html[start : end.start()]


@task(
    name="parse",
    task_run_name="parse {cfg.text}",
    cache_policy=cache.ContentKey(fields=("text",)),
)
def parse_page(cfg: Config, page: dict[str, Any]) -> dict[str, Any]:
    """Cut the body out of the fetched HTML and store it as UTF-8 text."""
    html = Path(page["html"]["path"]).read_bytes().decode("utf-8", "replace")
    text = body_text(html, page["url"]) if cfg.text == "text" else html_slice(html, page["url"])
    path = cfg.root / "pages" / f"{page['html']['sha256'][:16]}.{cfg.text}.txt"
    write_bytes(path, text.encode())
    return {"text": file_record(path), "chars": len(text)}
