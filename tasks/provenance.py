"""Provenance: everything that produced a report's numbers, so each one can be traced.

Written by the report task as `provenance.json` beside report.md (and summarised in its
"Provenance" section): laminar's version and git commit, the versions of the libraries that
compute, the device of every step, each model's id with its hub revision or folder and weights
fingerprint, the article's revision and hashes, the token batches' hashes, the config hash and
the run's start and end. A rerun that replays the report from the cache keeps the provenance of
the run that computed it."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks import models
from tasks.config import Config
from tasks.host import describe_device
from tasks.records import Batch, EvalBatch, Extraction, LayerResult, Page, Text

LIBRARIES = ["torch", "transformer-lens", "transformers", "prefect", "pyarrow", "numpy"]
REPO = Path(__file__).resolve().parent.parent


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode != 0:
            raise OSError(commit.stderr)
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": "not a git checkout", "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def software() -> dict[str, str]:
    return {"laminar": version("laminar"), "python": platform.python_version()} | {
        lib: version(lib) for lib in LIBRARIES
    }


def collect(
    cfg: Config,
    pages: list[Page],
    texts: list[Text],
    tokens: list[Batch],
    extractions: list[Extraction],
    results: list[LayerResult],
    started_at: str,
    holdouts: list[EvalBatch] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """The provenance record of one report (see the module docstring)."""
    model_rows = []
    for e in extractions:
        sae = sorted({r["hardware"] for r in results if r["name"] == e["name"]})
        model_rows.append(
            {
                **models.identity(e["model"]),
                "n_layers": e["n_layers"],
                "extract_ran_on": e["ran_on"],
                "extract_device": e["hardware"],
                "sae_devices": sae,
            }
        )
    return {
        "laminar": {"version": version("laminar"), **git_state()},
        "software": software(),
        "run": {
            "config_hash": cfg.digest(),
            "started_at": started_at,
            "finished_at": now(),
            "report_device": describe_device("cpu"),
        },
        "articles": [
            {
                "url": page["url"],
                "revision_id": page["revision_id"],
                "fetched_at": page["fetched_at"],
                "html_sha256": page["html"]["sha256"],
                "text": cfg.text,
                "text_sha256": text["text"]["sha256"],
                "text_path": text["text"]["path"],
                "characters": text["chars"],
            }
            for page, text in zip(pages, texts, strict=True)
        ],
        "tokens": [
            {
                "sha256": t["tokens"]["sha256"],
                "article_tokens": t["n_article_tokens"],
                "per_article": t["articles"],
            }
            for t in tokens
        ],
        "models": model_rows,
        # the windows the SAEs were spliced in on: [article, start, held out (1) or in-sample (0)]
        "eval_windows": [
            {
                "sha256": h["tokens"]["sha256"],
                "held_out": h["held_out"],
                "in_sample": h["in_sample"],
                "windows": h["windows"],
            }
            for h in holdouts
        ],
    }


def markdown(prov: dict[str, Any]) -> list[str]:
    """The report's short "Provenance" section."""
    lam, run = prov["laminar"], prov["run"]
    dirty = {True: " (uncommitted changes)", False: "", None: ""}[lam["dirty"]]
    libs = ", ".join(f"{k} {v}" for k, v in prov["software"].items() if k != "laminar")
    lines = [
        "## Provenance",
        "",
        f"- laminar {lam['version']}, commit `{lam['commit']}`{dirty}; {libs}",
        f"- run {run['started_at']} to {run['finished_at']}, config hash "
        f"`{run['config_hash'][:12]}`",
        *(
            f"- article {art['url']} revision {art['revision_id']}, HTML sha256 "
            f"`{art['html_sha256'][:16]}`, text sha256 `{art['text_sha256'][:16]}`"
            for art in prov["articles"]
        ),
        *(
            f"- token batch sha256 `{t['sha256'][:16]}` ({t['article_tokens']} article tokens)"
            for t in prov["tokens"]
        ),
        *(
            f"- evaluation windows sha256 `{e['sha256'][:16]}`: {e['held_out']} held out, "
            f"{e['in_sample']} in-sample (each window's article and start: provenance.json)"
            for e in prov.get("eval_windows", [])
        ),
    ]
    for m in prov["models"]:
        where = m["folder"] or f"hub revision `{m['hub_revision'] or 'unknown'}`"
        lines.append(
            f"- {m['name']}: {m['model']} ({where}), weights fingerprint "
            f"`{m['fingerprint'][:16]}`; extraction on {m['extract_device']}; SAEs on "
            + "; ".join(m["sae_devices"])
        )
    return [*lines, "", "All of it, for scripts: `provenance.json`.", ""]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'c': [x, y]} -> {'a.b': 1, 'c.0': x, 'c.1': y}, for field-wise diffs."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in items:
        out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, value in a, value in b) for every field where two provenance records differ."""
    fa, fb = flatten(a), flatten(b)
    return [
        (k, fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)
    ]
