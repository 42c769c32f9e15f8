"""The command line built from the config model: every field is a flag, values are validated
with one clear sentence naming the flag, and a config round-trips through its arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.cli import build_parser, config_from_args, to_args
from tasks.config import READ_BY, Config
from tasks.settings import LaminarError


def test_every_field_is_a_flag_with_its_default_in_help() -> None:
    text = build_parser().format_help()
    for name, field in Config.model_fields.items():
        assert "--" + name.replace("_", "-") in text
        assert " ".join(field.description.split()[:3]) in " ".join(text.split())
    assert "gpt2-large" in text and "mlp.hook_pre" in text
    helps = {a.dest: a.help for a in build_parser()._actions}
    for name, archs in READ_BY.items():  # which SAEs read it, as Config.canonical has it
        assert f"Read only by --sae-arch {', '.join(archs)}." in helps[name], name


def test_flags_parse_into_typed_fields() -> None:
    cfg = config_from_args(
        [
            "--models",
            "a",
            "b",
            "--layers",
            "0,2-3",
            "--n-seqs",
            "3",
            "--lr",
            "0.01",
            "--keep-first-token",
            "--sampling",
            "first",
            "--topk-frac",
            "0",
        ]
    )
    assert cfg.models == ["a", "b"] and cfg.n_seqs == 3 and cfg.lr == 0.01
    assert cfg.keep_first_token and cfg.sampling == "first" and cfg.topk_frac == 0.0


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--layers", "3-1"], ["3-1", "backwards"]),
        (["--layers", "a,b"], ["malformed", "'a'"]),
        (["--epochs", "0"], ["--epochs", "0"]),
        (["--lr", "-1"], ["--lr", "-1"]),
        (["--n-seqs", "x"], ["--n-seqs x is invalid"]),
        (["--eval-seqs", "2", "--no-save-saes"], ["--no-save-saes keeps none to splice"]),
        (["--eval-seqs", "-1"], ["--eval-seqs", "-1"]),
    ],
)
def test_bad_values_name_the_flag(argv: list[str], words: list[str]) -> None:
    with pytest.raises(LaminarError) as err:
        config_from_args(argv)
    for word in words:
        assert word in str(err.value)


def test_args_round_trip() -> None:
    cfg = Config(
        models=["a", "b"],
        layers="1-3",
        keep_first_token=True,
        sae_seeds=[0, 2],
        topk_frac=1 / 3,
        lr=3e-5,
        refresh=True,
    )
    assert config_from_args([]) == Config()  # the CLI's defaults are the model's
    assert config_from_args(["--eval-seqs", "3"]).n_eval_seqs == 3
    assert Config().n_eval_seqs == 2 and Config(seq_len=100).n_eval_seqs == 21  # >= 2,048 tokens
    assert Config(save_saes=False).n_eval_seqs == 0  # nothing kept to splice
    assert config_from_args(["--hook", "mlp.hook_post"]).model_fields_set == {"hook"}
    assert config_from_args(to_args(cfg)) == cfg
    assert config_from_args([*to_args(cfg), "--epochs", "9"]).epochs == 9  # last flag wins


@pytest.mark.parametrize("command", ["laminar", "laminar-sweep", "laminar-compare", "laminar-ui"])
def test_help_into_a_reader_that_stops_early_is_quiet(command: str, tmp_path: Path) -> None:
    """`COMMAND --help | true`: the reader gone before the text was written (`true` reads
    none). laminar-sweep's and laminar-ui's help were BrokenPipeError's traceback and exit 1
    (the commands' other lines to stdout go through the same tasks.cli.print_out)."""
    script = str(Path(sys.executable).parent / command)
    out = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | true', "bash", script, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stderr) == (0, "")
