"""The config model: the course's defaults, layer specs parsed as documented, the digest, every
option in the README and every deployment a valid config (the CLI is tests/test_cli.py)."""

from __future__ import annotations

import pytest

from tasks.config import Config, LaminarError, parse_layer_spec, short_name


def test_defaults_are_the_course_experiment() -> None:
    cfg = Config()
    assert cfg.models == ["gpt2", "gpt2-large"]
    assert (cfg.n_seqs, cfg.seq_len, cfg.epochs, cfg.lr, cfg.l1) == (10, 1024, 75, 1e-4, 1.0)
    assert (cfg.expansion, cfg.topk_frac, cfg.hook) == (2, 1 / 3, "mlp.hook_pre")
    assert cfg.urls == ["https://en.wikipedia.org/wiki/Light-emitting_diode"]


@pytest.mark.parametrize(
    ("spec", "n", "expected"),
    [("all", 4, [0, 1, 2, 3]), ("0,3,5-7", 12, [0, 3, 5, 6, 7]), (" 2 , 1 ", 3, [1, 2])],
)
def test_layer_spec(spec: str, n: int, expected: list[int]) -> None:
    assert parse_layer_spec(spec, n) == expected


def test_layer_out_of_range_names_the_count() -> None:
    with pytest.raises(LaminarError, match="has 12 layers"):
        parse_layer_spec("40", 12)


def test_digest_ignores_refresh_and_location_only() -> None:
    a = Config()
    assert a.digest() == Config(refresh=True, artifacts_dir="/elsewhere").digest()
    assert a.digest() != Config(epochs=5).digest()


def test_short_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert short_name("openai-community/gpt2-large") == "gpt2-large"
    (tmp_path / "my-model").mkdir()
    assert short_name(str(tmp_path / "my-model") + "/") == "my-model"


def test_readme_documents_every_option() -> None:
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    for name in Config.model_fields:
        assert f"`--{name.replace('_', '-')}`" in readme, name


def test_every_deployment_in_prefect_yaml_is_a_valid_config() -> None:
    import yaml
    from conftest import ROOT

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    configs = {
        d["name"]: Config(**(d.get("parameters") or {}).get("config", {}))
        for d in spec["deployments"]
    }
    assert configs["full"] == Config()
    robust = configs["robustness"]  # README "Does the profile hold?"
    assert robust.models == ["gpt2", "EleutherAI/pythia-160m"]
    assert (robust.n_seqs, robust.seq_len, robust.batch_tokens) == (100, 1024, 4096)
    assert robust.urls[0] == Config().urls[0] and len(robust.urls) > 10
