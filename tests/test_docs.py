"""The README and the docs site: the site builds with every link and anchor resolved, the options
page is the config model's, the README stays short, and no page or comment narrates how the
project was written instead of describing it."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

from conftest import ROOT

from tasks.cli import OPTIONS_PAGE, options_page
from tasks.config import Config


def test_the_options_page_is_the_config_model() -> None:
    """docs/options.md is made from Config (`make docs` rewrites it): a field added, renamed or
    redescribed without remaking the page fails here."""
    page = (ROOT / OPTIONS_PAGE).read_text()
    assert page == options_page(), "docs/options.md is stale: run `make docs-options`"
    for name, field in Config.model_fields.items():
        assert f"| `--{name.replace('_', '-')}` |" in page and field.description


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a link to a missing page or anchor, or a page left out of the
    navigation, is an error."""
    out = subprocess.run(
        [
            Path(sys.executable).parent / "mkdocs",
            "build",
            "--strict",
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--batch-tokens" in (tmp_path / "site" / "options.html").read_text()


def test_the_readme_is_short_and_links_only_what_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\(((?:docs|tests)/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target


# Narration: how the text came to be written, instead of what the software does. Machines are
# described by their specification ("a 2-core AMD EPYC"), never as "this session's machine".
NARRATION = [
    r"\b(this|that|these|those|previous|earlier|later|last|next) sessions?\b",
    r"\bsessions? (that|which) (wrote|produced|made|ran)\b",
    r"\blent\b",
    r"\b(this|last|next) week\b",
    r"\bthe week before\b",
    r"\b(the|a) previous run\b",
    r"\bearlier run of the day\b",
]


def prose_of(path: Path) -> str:
    """A file's prose: the whole of a Markdown or YAML file, a Python file's comments and
    docstrings (its code may say `session`, as requests and pytest do)."""
    text = path.read_text()
    if path.suffix != ".py":
        return text
    parts = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT or (
            tok.type == tokenize.STRING and tok.string.lstrip("rbuRBU").startswith(('"""', "'''"))
        ):
            parts.append(tok.string)
    return "\n".join(parts)


def test_no_page_or_comment_narrates_how_it_was_written() -> None:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "prefect.yaml", ROOT / "pyproject.toml"]
    files += sorted((ROOT / "docs").glob("*.md"))
    for folder in ("tasks", "flows", "benchmarks", "scripts", "tests"):
        files += sorted((ROOT / folder).glob("*.py"))
    files.remove(Path(__file__))
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)!r}"
        for path in files
        for pattern in NARRATION
        for match in re.finditer(pattern, prose_of(path), re.IGNORECASE)
    ]
    assert not found, found
