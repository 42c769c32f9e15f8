"""The config model: the course's defaults, layer specs parsed as documented, the digest, every
option and every deployment a valid config (the CLI is tests/test_cli.py)."""

from __future__ import annotations

import pytest

from tasks.config import Config
from tasks.settings import LaminarError, parse_layer_spec, short_name


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


def test_the_settings_an_sae_does_not_read_are_no_part_of_its_run() -> None:
    """canonical puts them at their defaults, so the digest leaves them out; what the SAE reads
    stays in it, and --saes (a published family, measured with --l1) has none."""
    topk = Config(sae_arch="topk", k=8)
    assert topk.model_copy(update={"l1": 3.0, "topk_frac": 0.5}).digest() == topk.digest()
    assert topk.model_copy(update={"k": 9}).digest() != topk.digest()
    standard = Config(sae_arch="standard", k=8, dead_steps=5, l1_warm_up_steps=2)
    assert standard.canonical() == Config(sae_arch="standard", l1_warm_up_steps=2)
    assert standard.unread_given() == (
        "--sae-arch standard does not read --k 8 or --dead-steps 5, so the run records them at "
        "their defaults (100, 1000)."
    )
    course = Config(topk_frac=0.5, aux_coefficient=0.25)
    assert course.unread() == ("k", "l1_warm_up_steps", "aux_coefficient", "dead_steps")
    assert course.unread_given() == (
        "--sae-arch course does not read --aux-coefficient 0.25, so the run records it at its "
        "default (1)."
    )
    assert (
        Config().unread_given() is None and Config(models=["gpt2"], saes="/x", k=8).unread() == ()
    )


def test_short_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert short_name("openai-community/gpt2-large") == "gpt2-large"
    (tmp_path / "my-model").mkdir()
    assert short_name(str(tmp_path / "my-model") + "/") == "my-model"


def test_every_deployment_in_prefect_yaml_is_a_valid_config() -> None:
    import yaml
    from conftest import ROOT

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    configs = {
        d["name"]: Config(**(d.get("parameters") or {}).get("config", {}))
        for d in spec["deployments"]
    }
    assert configs["full"] == Config()
    robust = configs["robustness"]  # docs/experiment.md "Does the profile hold?"
    assert robust.models == ["gpt2", "EleutherAI/pythia-160m"]
    assert (robust.n_seqs, robust.seq_len, robust.batch_tokens) == (100, 1024, 4096)
    assert robust.urls[0] == Config().urls[0] and len(robust.urls) > 10
    from flows.sweep import Sweep

    [recipes] = [d for d in spec["deployments"] if d["entrypoint"] == "flows/sweep.py:sweep"]
    sweep = Sweep(**recipes["parameters"]["sweep"])
    assert sweep.base.models == ["gpt2"] and sweep.grid == {
        "sae_arch": ["course", "standard", "topk", "batchtopk"]
    }


def test_every_field_declares_its_role_and_the_sets_follow() -> None:
    """Each field's role sits on its own declaration; the cache keys' field sets are derived
    from them (the sets laminar always had), and a field without a role is refused at import."""
    from pydantic import Field

    from tasks import config

    assert {f.json_schema_extra["role"] for f in Config.model_fields.values()} == set(config.ROLES)
    assert config.SAE_FIELDS == ("epochs", "lr", "l1", "expansion", "topk_frac")
    assert set(config.RESULT_FIELDS) == {*config.SAE_FIELDS, "precision", "batch_tokens"}
    assert {
        "refresh", "artifacts_dir", "fetch_timeout", "fetch_deadline", "fetch_retries",
        "max_page_mb", "extract_batch", "task_runner", "dask_address", "dask_workers",
        "dask_tls_ca", "dask_tls_cert", "dask_tls_key", "progress_every", "quiet",
    } == config.EXECUTION_FIELDS  # fmt: skip

    class Grown(Config):
        new_knob: int = Field(default=1, description="A field someone forgot to give a role.")

    assert config.without_role(Grown) == ["new_knob"] and config.without_role(Config) == []


def test_a_config_with_the_old_url_field_is_accepted_by_prefects_schema_check() -> None:
    """A deployment's parameters are checked by Prefect's server against the flow's schema,
    with the same function used here (prefect.utilities.schema_tools.validate): `url`, the
    single-article field of older configs, passes and becomes `urls`."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from flows.laminar import laminar

    schema = parameter_schema(laminar).model_dump_for_openapi()
    old = {"config": {"url": "https://en.wikipedia.org/wiki/LED", "epochs": 3}}
    validate(old, schema, raise_on_error=True)
    assert Config(**old["config"]).urls == ["https://en.wikipedia.org/wiki/LED"]
    assert Config(url="https://a.org/x", urls=["https://a.org/x"]).urls == ["https://a.org/x"]
    with pytest.raises(ValueError, match=r"both url 'https://b\.org/y' and urls"):
        Config(url="https://b.org/y", urls=["https://a.org/x"])
