"""Scrape: fetch the article (network, retried) and cut out its body (parsing, cached apart).

The fetch keeps the raw HTML with its URL, fetch time and MediaWiki revision id, so a run
records exactly which version of the article it measured."""

from __future__ import annotations

import hashlib
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from prefect import task
from requests.exceptions import ContentDecodingError
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError, SSLError

from tasks import cache, paths
from tasks.config import Config
from tasks.records import Batch, Page, Text
from tasks.settings import LaminarError
from tasks.store import file_record, write_bytes, write_json
from tasks.wikitext import body_text, html_slice

USER_AGENT = (
    f"laminar/0.1 (SAE laminar-profile research pipeline; python-requests {requests.__version__})"
)
_REVISION = re.compile(r'"wgRevisionId"\s*:\s*(\d+)')
RETRY_DELAYS = [2, 4, 8]  # seconds before the 1st, 2nd, 3rd retry of a transient failure
MAX_REDIRECTS = 5
HTML_TYPES = ("text/html", "application/xhtml+xml")


class TransientFetchError(LaminarError):
    """A failure a retry can cure: no connection, DNS, a timeout, a cut-off body, HTTP 429 or
    5xx. Still a LaminarError: once the retries are spent, the user gets its one sentence."""


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except TransientFetchError:
        return True
    except Exception:
        return False
    return False


def _chain(exc: BaseException) -> str:
    """Every exception type and message in exc's chain (requests wraps urllib3 wraps socket)."""
    parts, e = [], exc
    while e is not None and len(parts) < 10:
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return " | ".join(parts)


def network_error(url: str, exc: requests.RequestException) -> LaminarError:
    """One sentence for a request that failed below HTTP: what happened, where, the fix."""
    host = urlsplit(url).netloc or url
    chain = _chain(exc)
    cached = "a page fetched before stays cached under the artifacts dir"
    if isinstance(exc, requests.exceptions.SSLError):
        return LaminarError(
            f"--urls '{url}': the TLS handshake with {host} failed ({chain.split(' | ')[-1]}): "
            "check the scheme (https:// on a plain-HTTP server fails), the system clock and the "
            "CA certificates (REQUESTS_CA_BUNDLE)."
        )
    if isinstance(exc, requests.Timeout):
        why = f"{host} did not answer within --fetch-timeout"
    elif "NameResolutionError" in chain or "gaierror" in chain:
        why = f"the host name {host} could not be resolved (no network, or no DNS)"
    elif "ConnectionRefusedError" in chain:
        why = f"the connection to {host} was refused (nothing listens there)"
    elif isinstance(exc, requests.exceptions.ChunkedEncodingError | ContentDecodingError):
        why = f"{host} closed the connection before the whole page arrived"
    elif isinstance(exc, requests.ConnectionError):
        why = f"{host} could not be reached ({chain.split(' | ')[-1]})"
    else:
        return LaminarError(f"--urls '{url}' is not a fetchable URL ({exc}): check --urls.")
    return TransientFetchError(
        f"--urls '{url}' could not be fetched: {why}; check the network or the URL, then rerun "
        f"({cached})."
    )


def _same_site(url: str, target: str) -> bool:
    """Redirects stay on the URL's own host, or move between a Wikipedia site's desktop and
    mobile hosts (en.wikipedia.org <-> en.m.wikipedia.org)."""
    a, b = urlsplit(url).hostname or "", urlsplit(target).hostname or ""
    return a.replace(".m.", ".") == b.replace(".m.", ".")


def _port(url: str) -> int | None:
    parts = urlsplit(url)
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _refuse_redirect(url: str, current: str, target: str) -> None:
    """A redirect must stay on the site, keep https once it has it, and keep the port."""
    if not _same_site(url, target):
        raise LaminarError(
            f"--urls '{url}' redirects to another site ({target}); laminar follows redirects "
            "only within the article's own site: pass the final address in --urls."
        )
    if urlsplit(current).scheme == "https" and urlsplit(target).scheme != "https":
        raise LaminarError(
            f"--urls '{url}' redirects from https to {target}, unencrypted: laminar refuses the "
            "downgrade; pass an https address that stays https."
        )
    if _port(current) != _port(target):
        raise LaminarError(
            f"--urls '{url}' redirects to another port ({target}): laminar follows redirects "
            "only on the same port; pass the final address in --urls."
        )


def _get(session: requests.Session, url: str, timeout: float) -> requests.Response:
    """GET following at most MAX_REDIRECTS redirects, all on the same site."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        resp = session.get(current, timeout=timeout, stream=True, allow_redirects=False)
        if not resp.is_redirect:
            return resp
        target = urljoin(current, resp.headers["location"])
        resp.close()
        _refuse_redirect(url, current, target)
        current = target
    raise LaminarError(
        f"--urls '{url}' redirected more than {MAX_REDIRECTS} times: pass the final address."
    )


def _declared(resp: requests.Response, url: str) -> int:
    """The body's announced size (0 when none is announced)."""
    value = resp.headers.get("content-length") or "0"
    try:
        size = int(value)
    except ValueError:
        size = -1
    if size < 0:
        resp.close()
        raise LaminarError(
            f"--urls '{url}' answered with a malformed Content-Length header ({value!r}): the "
            "server is not speaking HTTP correctly; check --urls."
        )
    return size


def _read1(resp: requests.Response) -> bytes:
    """What has arrived of the body (at most 64 KiB), urllib3's errors turned into requests'
    as requests' own iter_content turns them."""
    try:
        return resp.raw.read1(1 << 16, decode_content=True)
    except ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except DecodeError as exc:
        raise ContentDecodingError(exc) from exc
    except ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    except SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc


def _read(resp: requests.Response, url: str, limit_mb: float, deadline: float) -> bytes:
    """The body, streamed, abandoned as soon as it passes `limit_mb` megabytes or the download
    outlasts `deadline` (time.monotonic()). It is read as it arrives (read1), so a server that
    drips a byte at a time is checked against the deadline at every byte."""
    limit = int(limit_mb * 1e6)
    declared = _declared(resp, url)
    chunks, size = [], 0
    while declared <= limit and size <= limit:
        if time.monotonic() > deadline:
            resp.close()
            raise TransientFetchError(
                f"--urls '{url}' was still downloading when --fetch-deadline ran out ({size} "
                "bytes so far): the server is too slow; try again later, or raise "
                "--fetch-deadline."
            )
        chunk = _read1(resp)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if declared > limit or size > limit:
        resp.close()
        raise LaminarError(
            f"--urls '{url}' sends more than --max-page-mb {limit_mb:g} MB; a Wikipedia article "
            "is well under 5 MB: check --urls, or raise --max-page-mb."
        )
    return b"".join(chunks)


def download(
    url: str, timeout: float = 30.0, limit_mb: float = 5.0, deadline_s: float = 120.0
) -> bytes:
    """GET `url`; transient failures raise TransientFetchError, the rest LaminarError. `timeout`
    bounds each wait for the server, `deadline_s` the whole download."""
    deadline = time.monotonic() + deadline_s
    with requests.Session() as session:
        session.headers["User-Agent"] = USER_AGENT
        try:
            resp = _get(session, url, timeout)
            status = resp.status_code
            if status == 429 or status >= 500:
                raise TransientFetchError(
                    f"--urls '{url}' answered HTTP {status}: the server is busy or down; try "
                    "again later, or raise --fetch-retries."
                )
            if status >= 400:
                raise LaminarError(
                    f"--urls '{url}' answered HTTP {status}: check the article's address."
                )
            kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind not in HTML_TYPES:
                raise LaminarError(
                    f"--urls '{url}' sends '{kind or 'no content type'}', not an HTML page: "
                    "pass the address of a Wikipedia article."
                )
            return _read(resp, url, limit_mb, deadline)
        except requests.RequestException as exc:
            raise network_error(url, exc) from None


@task(
    name="fetch",
    task_run_name="fetch {url}",
    retries=len(RETRY_DELAYS),  # the flow sets --fetch-retries
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=_retry_transient,
    # the download never parses: a change to the parser must not re-fetch every page
    cache_policy=cache.ContentKey(leave_out=("tasks.wikitext",)),
)
def fetch_page(cfg: Config, url: str) -> Page:
    """Download one article once; later runs replay this record (use --refresh to re-fetch)."""
    html = download(url, cfg.fetch_timeout, cfg.max_page_mb, cfg.fetch_deadline)
    sha = hashlib.sha256(html).hexdigest()
    path = paths.page_html(cfg.root, sha)
    write_bytes(path, html)
    match = _REVISION.search(html.decode("utf-8", "replace"))
    meta: Page = {
        "url": url,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "revision_id": int(match.group(1)) if match else None,
        "html": file_record(path),
    }
    write_json(paths.page_meta(cfg.root, sha), meta)
    return meta


@task(
    name="parse",
    task_run_name="parse {page[url]}",
    cache_policy=cache.ContentKey(fields=("text",)),
)
def parse_page(cfg: Config, page: Page) -> Text:
    """Cut the body out of the fetched HTML and store it as UTF-8 text."""
    html = Path(page["html"]["path"]).read_bytes().decode("utf-8", "replace")
    text = body_text(html, page["url"]) if cfg.text == "text" else html_slice(html, page["url"])
    path = paths.page_text(cfg.root, page["html"]["sha256"], cfg.text)
    write_bytes(path, text.encode())
    return {"text": file_record(path), "chars": len(text)}


TEXT_KEY = "laminar-text"
PREVIEW_LINES = 60


def publish_text(pages: list[Page], texts: list[Text], batches: list[Batch]) -> None:
    """What was fed to the models, as a markdown artifact of the flow run (`laminar-text`): each
    article's URL, revision, size in characters and tokens, and the first lines of the first."""
    from prefect.artifacts import create_markdown_artifact

    md = ["# The text fed to the models", ""]
    for i, (page, text) in enumerate(zip(pages, texts, strict=True)):
        path = Path(text["text"]["path"])
        n_lines = len(path.read_text().splitlines())
        counts = ", ".join(str(b["articles"][i]["tokens"]) for b in batches)
        md += [
            f"- article: {page['url']} (revision {page['revision_id']}, fetched "
            f"{page['fetched_at']}): {text['chars']} characters in {n_lines} lines, {counts} "
            f"tokens; saved as `{path}` (sha256 `{text['text']['sha256'][:16]}`)",
        ]
    lines = Path(texts[0]["text"]["path"]).read_text().splitlines()
    preview = "\n".join(lines[:PREVIEW_LINES]).replace("```", "` ` `")
    md += ["", f"First {min(PREVIEW_LINES, len(lines))} lines of {pages[0]['url']}:", ""]
    md += ["```text", preview, "```"]
    about = pages[0]["url"] if len(pages) == 1 else f"{len(pages)} articles"
    create_markdown_artifact(key=TEXT_KEY, markdown="\n".join(md), description=f"text of {about}")
