"""The one config model: it drives the CLI, the Prefect parameter form, the cache keys and the
metadata recorded with every output. Add a field to one of its bases (tasks.config_input,
config_sae, config_run: by topic) and it appears in all four."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    PrivateAttr,
    field_validator,
    model_validator,
)

from tasks.config_input import (
    MLP_INPUT,
    NOT_PER_TOKEN_HOOKS,
    OFF_HOOKS,
    InputSettings,
    not_per_token,
    off_hook,
)
from tasks.config_run import RunSettings
from tasks.config_sae import READ_BY, SAESettings
from tasks.settings import (
    ROLES,
    LaminarError,
    check_dask_address,
    check_models,
    check_urls,
    flag,
    once,
    parse_layer_spec,
    refuse,
    stable_hash,
)

EVAL_TOKENS = 2048  # held-out tokens of the downstream measures when --eval-seqs is not given


def _legacy_url_property(schema: dict[str, Any]) -> None:
    schema["properties"]["url"] = {
        "type": "string",
        "title": "Url (deprecated)",
        "description": "One article's address, as configs gave it before urls; use urls.",
        "deprecated": True,
    }


# The fields are declared by topic in the three bases (tasks/config_input.py, config_sae.py,
# config_run.py); pydantic takes the bases' fields from the last base to the first, so the CLI,
# the form and the docs show them input, SAE, run. The checks across topics live here.
class Config(RunSettings, SAESettings, InputSettings):
    """Settings of one laminar run. Every field is a CLI flag (`--n-seqs` for `n_seqs`) and a
    field of the Prefect parameter form."""

    # `url` (one article) is how configs were written before `urls`: still accepted, also in a
    # deployment's parameters, which Prefect's server checks against this schema
    model_config = ConfigDict(extra="forbid", json_schema_extra=_legacy_url_property)
    # What the CLI's preflight found for this exact config (its JSON, tasks.preflight.Checked),
    # handed to the flow run the CLI starts: never a field, never serialized or shown in the UI
    _preflight: tuple[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _url_is_urls(cls, data: Any) -> Any:
        if isinstance(data, dict) and "url" in data:
            data = dict(data)
            url = data.pop("url")
            if data.get("urls") not in (None, [url]):
                refuse(f"both url '{url}' and urls {data['urls']} are set: give urls alone.")
            data["urls"] = [url] if isinstance(url, str) else url
        return data

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: str) -> str:
        try:
            parse_layer_spec(value, n_layers=None)
        except LaminarError as exc:
            refuse(str(exc))
        return value.strip()

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[str]) -> list[str]:
        return check_models(value)

    @property
    def shown_seed(self) -> int:
        """The SAE seed drawn where one SAE a layer is shown (latent cards, loss curves, the
        frequency heatmaps): the first seed given in --sae-seeds. Tables and the claims use
        every seed (their mean, ± the sd)."""
        return self.sae_seeds[0]

    @field_validator("sae_seeds")
    @classmethod
    def _check_seeds(cls, value: list[int]) -> list[int]:
        once(value, "--sae-seeds", "seed")
        return value

    @field_validator("hook")
    @classmethod
    def _check_hook(cls, value: str) -> str:
        if not value.strip():
            refuse("--hook is empty: give the hook inside each block to read, e.g. mlp.hook_pre.")
        if value.startswith("blocks."):  # the full name of one block's hook, as in a hook_dict
            parts = value.split(".", 2)  # blocks, the layer, the hook inside the block
            inner = parts[2] if len(parts) == 3 and parts[2] else "mlp.hook_pre"
            refuse(
                f"--hook {value} names a block: give the hook inside each block, such as "
                f"{inner}, and pick the blocks with --layers."
            )
        if value in NOT_PER_TOKEN_HOOKS:
            fix = "pick a hook such as mlp.hook_pre, mlp.hook_post or hook_resid_post"
            refuse(not_per_token(f"--hook {value}", fix))
        if value in OFF_HOOKS:
            fix = f"use {MLP_INPUT}, the input of the LayerNorm before the MLP"
            refuse(off_hook(f"--hook {value}", fix))
        return value

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        return check_urls(value)

    @field_validator("artifacts_dir")
    @classmethod
    def _check_artifacts_dir(cls, value: str) -> str:
        if not value.strip():  # an unset shell variable or a cleared form field: not the cwd
            refuse(
                "--artifacts-dir is empty: give the folder every output is written in "
                "(the default is artifacts)."
            )
        return value

    @field_validator("dask_address")
    @classmethod
    def _check_dask_address(cls, value: str) -> str:
        return check_dask_address(value)

    @model_validator(mode="after")
    def _address_needs_dask(self) -> Config:
        if self.dask_address and self.task_runner != "dask":
            refuse(
                f"--dask-address {self.dask_address} is set but --task-runner is "
                f"'{self.task_runner}': add --task-runner dask to use that cluster."
            )
        tls = [f for f in ("dask_tls_ca", "dask_tls_cert", "dask_tls_key") if getattr(self, f)]
        if tls and not self.dask_address.startswith("tls://"):
            refuse(
                f"{flag(tls[0])} is set but --dask-address '{self.dask_address}' is not a "
                "tls:// address: give the scheduler's tls://HOST:PORT, or drop the certificates."
            )
        return self

    @model_validator(mode="after")
    def _recipe_fits(self) -> Config:
        if self.sae_arch == "course":
            return self
        if self.saes:
            refuse(
                f"--sae-arch {self.sae_arch} trains SAEs, but --saes '{self.saes}' measures "
                "published ones: drop one of the two."
            )
        if self.precision == "bf16":
            refuse(
                f"--precision bf16 is the course SAE's hand-written step; --sae-arch "
                f"{self.sae_arch} trains in fp32 or tf32: give --precision fp32."
            )
        return self

    @model_validator(mode="after")
    def _downstream_needs_saes(self) -> Config:
        if self.eval_seqs and not self.save_saes and not self.saes:
            refuse(
                f"--eval-seqs {self.eval_seqs} splices each trained SAE into the model, but "
                "--no-save-saes keeps none to splice: drop --no-save-saes, or give --eval-seqs 0."
            )
        if self.saes and len(self.models) > 1:
            refuse(
                f"--saes '{self.saes}' is one model's SAE family, but --models names "
                f"{len(self.models)} models: give the one model its SAEs were trained on."
            )
        return self

    @property
    def n_eval_seqs(self) -> int:
        """The held-out windows a run splices on: eval_seqs, or (unset) as many as make 2,048
        tokens; 0 where the SAEs are not kept (--no-save-saes: nothing to splice)."""
        if self.eval_seqs is not None:
            return self.eval_seqs
        if not self.save_saes and not self.saes:
            return 0
        return -(-EVAL_TOKENS // self.seq_len)

    def subset(self, *fields: str) -> dict[str, Any]:
        """The named fields, for a cache key: only what a task's output depends on."""
        return {f: getattr(self, f) for f in fields}

    def unread(self) -> tuple[str, ...]:
        """The SAE settings this run's SAE does not read (READ_BY); none with --saes, whose
        published SAEs are measured with --l1 alone."""
        if self.saes:
            return ()
        return tuple(f for f, archs in READ_BY.items() if self.sae_arch not in archs)

    def unread_defaults(self) -> dict[str, Any]:
        """The settings this run's SAE does not read (unread), each with its default."""
        return {f: Config.model_fields[f].default for f in self.unread()}

    def canonical(self) -> Config:
        """This config with the settings its SAE does not read at their defaults: configs that
        differ only in those are one run, with one set of keys, files and report."""
        unread = self.unread_defaults()
        return self.model_copy(update=unread) if unread else self

    def unread_given(self) -> str | None:
        """One sentence naming the settings given that this run's SAE does not read, or None."""
        default = self.unread_defaults()
        given = [f for f, v in default.items() if getattr(self, f) != v]
        if not given:
            return None
        them = "it at its default" if len(given) == 1 else "them at their defaults"
        return (
            f"--sae-arch {self.sae_arch} does not read "
            + " or ".join(f"{flag(f)} {getattr(self, f):g}" for f in given)
            + f", so the run records {them} ("
            + ", ".join(f"{default[f]:g}" for f in given)
            + ")."
        )

    def digest(self) -> str:
        """Hash of every field that changes results: not the EXECUTION_FIELDS, nor what the
        run's SAE does not read (canonical); for the course's SAE, not the RECIPE_FIELDS at all,
        so its runs keep their names."""
        course = set(RECIPE_FIELDS) if self.sae_arch == "course" else set()
        dump = self.canonical().model_dump(exclude=set(EXECUTION_FIELDS) | course)
        return stable_hash(dump)

    @property
    def root(self) -> Path:
        return Path(self.artifacts_dir).expanduser().resolve()


def fields_with(*roles: str) -> tuple[str, ...]:
    """Config's fields of the given roles, in declaration order."""
    return tuple(
        name
        for name, field in Config.model_fields.items()
        if field.json_schema_extra["role"] in roles  # type: ignore[index]
    )


def without_role(model: type[BaseModel]) -> list[str]:
    """The fields of `model` that declare no role (see ROLES)."""
    return [
        n
        for n, f in model.model_fields.items()
        if (f.json_schema_extra or {}).get("role") not in ROLES
    ]


if without_role(Config):  # a field without a role would fall out of the keys: refuse to import
    raise TypeError(f"Config fields without a role: {without_role(Config)}: add role(...)")
EXECUTION_FIELDS = frozenset(fields_with("execution"))
SAE_FIELDS = fields_with("sae")  # with the precision and the seed, what a layer's numbers
RESULT_FIELDS = fields_with("sae", "training")  # depend on besides its activations
RECIPE_FIELDS = fields_with("recipe")  # what the field's architectures depend on besides those
