"""Provenance: a tiny run's provenance.json names the installed versions, the checkout's commit,
the devices, the model and the hashes of the very files the run wrote; compare.py prints the
fields in which two runs differ."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ROOT, ArticleServer, quick_config

from flows.compare import main as compare
from tasks import provenance
from tasks.store import sha256_file


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, article_server: ArticleServer
) -> tuple[object, dict, Path]:
    from flows.laminar import laminar

    root = tmp_path_factory.mktemp("prov")
    cfg = quick_config(tiny_model, article_server, root, layers="0,1", epochs=2)
    summary = laminar(cfg)
    report = Path(summary["report"])
    return cfg, json.loads((report / "provenance.json").read_text()), report


def test_versions_and_commit_are_the_installed_ones(run: tuple) -> None:
    _, prov, _ = run
    sw = prov["software"]
    assert sw["python"] == platform.python_version()
    for lib in ["laminar", "torch", "transformer-lens", "transformers", "prefect", "pyarrow"]:
        assert sw[lib] == metadata.version(lib), lib
    assert sw["numpy"] == metadata.version("numpy")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    if head.returncode == 0:
        assert prov["laminar"]["commit"] == head.stdout.decode().strip()
        assert isinstance(prov["laminar"]["dirty"], bool)


def test_hashes_are_those_of_the_files_the_run_wrote(run: tuple, tiny_model: Path) -> None:
    cfg, prov, _ = run
    root = Path(cfg.artifacts_dir)
    [html] = (root / "pages").glob("*.html")
    [text] = (root / "pages").glob("*.text.txt")
    [tokens] = (p for p in (root / "tokens").glob("*.parquet") if "-streams" not in p.name)
    [art] = prov["articles"]
    assert art["html_sha256"] == sha256_file(html) and art["revision_id"] == 1234567
    assert art["text_sha256"] == sha256_file(text) and art["text_path"] == str(text)
    assert [t["sha256"] for t in prov["tokens"]] == [sha256_file(tokens)]
    assert prov["run"]["config_hash"] == cfg.digest()
    assert prov["run"]["started_at"] <= prov["run"]["finished_at"]
    [model] = prov["models"]
    assert model["folder"] == str(tiny_model.resolve()) and model["hub_revision"] is None
    from tasks.models import model_fingerprint

    assert model["fingerprint"] == model_fingerprint(str(tiny_model))
    assert model["extract_device"].startswith("cpu: ") and model["sae_devices"] == [
        model["extract_device"]
    ]


def test_report_has_a_provenance_section(run: tuple) -> None:
    _, prov, report = run
    md = (report / "report.md").read_text()
    assert "## Provenance" in md
    assert f"commit `{prov['laminar']['commit']}`" in md
    assert prov["articles"][0]["html_sha256"][:16] in md


def test_not_a_git_checkout(tmp_path: Path) -> None:
    assert provenance.git_state(tmp_path) == {"commit": "not a git checkout", "dirty": None}


def test_compare_prints_the_fields_that_differ(
    run: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, prov, report = run
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.csv").write_bytes((report / "metrics.csv").read_bytes())
    changed = json.loads(json.dumps(prov))
    changed["software"]["torch"] = "9.9.9"
    changed["models"][0]["hub_revision"] = "abc123"
    (other / "provenance.json").write_text(json.dumps(changed))
    assert compare([str(report), str(other), "--labels", "a", "b", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "provenance: 2 fields differ between a and b" in out
    assert f"  software.torch: {prov['software']['torch']!r} -> '9.9.9'" in out
    assert "  models.0.hub_revision: None -> 'abc123'" in out
    changed["models"][0]["hub_revision"] = prov["models"][0]["hub_revision"]
    (other / "provenance.json").write_text(json.dumps(changed))
    assert compare([str(report), str(other), "--labels", "a", "b", "--out", str(tmp_path)]) == 0
    assert "provenance: 1 field differs between a and b\n" in capsys.readouterr().out


def test_the_dirty_flag_is_the_checkouts(tmp_path: Path) -> None:
    """A clean checkout is not dirty; an uncommitted change to a tracked file makes it dirty
    (an untracked file does not: it cannot be what ran)."""
    import subprocess

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    git("init", "-q")
    (tmp_path / "run.py").write_text("print(1)\n")
    git("add", "run.py")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    (tmp_path / "notes.txt").write_text("untracked")
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "run.py").write_text("print(2)\n")
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": True}
