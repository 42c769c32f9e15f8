"""The one config model: it drives the CLI, the Prefect parameter form, the cache keys and the
metadata recorded with every output. Add a field here and it appears in all four."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

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
    role,
    stable_hash,
)

LED_URL = "https://en.wikipedia.org/wiki/Light-emitting_diode"
EVAL_TOKENS = 2048  # held-out tokens of the downstream measures when --eval-seqs is not given


def _legacy_url_property(schema: dict[str, Any]) -> None:
    schema["properties"]["url"] = {
        "type": "string",
        "title": "Url (deprecated)",
        "description": "One article's address, as configs gave it before urls; use urls.",
        "deprecated": True,
    }


class Config(BaseModel):
    """Settings of one laminar run. Every field is a CLI flag (`--n-seqs` for `n_seqs`) and a
    field of the Prefect parameter form."""

    # `url` (one article) is how configs were written before `urls`: still accepted, also in a
    # deployment's parameters, which Prefect's server checks against this schema
    model_config = ConfigDict(extra="forbid", json_schema_extra=_legacy_url_property)
    # What the CLI's preflight found for this exact config (its JSON, tasks.preflight.Checked),
    # handed to the flow run the CLI starts: never a field, never serialized or shown in the UI
    _preflight: tuple[str, Any] | None = PrivateAttr(default=None)

    models: list[str] = Field(
        json_schema_extra=role("result"),
        default=["gpt2", "gpt2-large"],
        min_length=1,
        description="Hugging Face model ids or local model folders, one profile each.",
    )
    layers: str = Field(
        json_schema_extra=role("result"),
        default="all",
        description="Layers to profile: 'all' or a list such as '0,3,5-7' (checked per model).",
    )
    urls: list[str] = Field(
        json_schema_extra=role("result"),
        default=[LED_URL],
        min_length=1,
        description="Articles to scrape (Wikipedia pages), each fetched and parsed by its own "
        "task; token windows never cross from one article into the next.",
    )
    text: Literal["text", "html"] = Field(
        json_schema_extra=role("result"),
        default="text",
        description="'text': the article body's text; 'html': the raw HTML slice from the "
        'mw-body-content marker to id="References", as the original course tokenized it.',
    )
    hook: str = Field(
        json_schema_extra=role("result"),
        default="mlp.hook_pre",
        description="Hook inside each block to read (mlp.hook_pre = MLP first linear output, "
        "before GELU).",
    )
    fetch_timeout: float = Field(
        json_schema_extra=role("execution"),
        le=3600,
        allow_inf_nan=False,
        default=30.0,
        gt=0,
        description="Seconds to wait for the article server to answer.",
    )
    fetch_retries: int = Field(
        json_schema_extra=role("execution"),
        default=3,
        ge=0,
        le=3,
        description="Retries of a fetch that failed in a way a retry can cure (no connection, "
        "timeout, HTTP 429/5xx), 2, 4 and 8 s apart.",
    )
    max_page_mb: float = Field(
        json_schema_extra=role("execution"),
        le=1024,
        allow_inf_nan=False,
        default=5.0,
        gt=0,
        description="Largest article download in MB; a bigger body is abandoned unread (a "
        "Wikipedia article's HTML is well under it; parsing takes a multiple of the page's size "
        "in memory).",
    )
    fetch_deadline: float = Field(
        json_schema_extra=role("execution"),
        default=120.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Seconds one article's whole download may take, however slowly the server "
        "sends it (--fetch-timeout bounds each wait for the next bytes).",
    )
    n_seqs: int = Field(
        json_schema_extra=role("result"), default=10, gt=0, description="Sequences per batch."
    )
    seq_len: int = Field(
        json_schema_extra=role("result"), default=1024, gt=1, description="Tokens per sequence."
    )
    sampling: Literal["random", "first"] = Field(
        json_schema_extra=role("result"),
        default="random",
        description="'random': seeded non-overlapping windows; 'first': the first "
        "n_seqs*seq_len tokens, as the course did.",
    )
    keep_first_token: bool = Field(
        json_schema_extra=role("result"),
        default=False,
        description="Keep position 0 of each sequence (an attention-sink outlier; dropped by "
        "default).",
    )
    seed: int = Field(
        json_schema_extra=role("result"),
        default=0,
        ge=0,
        description="Seed for sampling the token windows.",
    )
    sae_seeds: list[int] = Field(
        json_schema_extra=role("result"),
        default=[0],
        min_length=1,
        description="SAE initialisation seeds: each layer's SAE is trained once per seed and "
        "the report shows mean ± sd.",
    )
    epochs: int = Field(
        json_schema_extra=role("sae"),
        le=1_000_000,
        default=75,
        gt=0,
        description="SAE training steps (each full-batch).",
    )
    lr: float = Field(
        json_schema_extra=role("sae"),
        allow_inf_nan=False,
        default=1e-4,
        gt=0,
        description="Adam learning rate.",
    )
    l1: float = Field(
        json_schema_extra=role("sae"),
        allow_inf_nan=False,
        default=1.0,
        ge=0,
        description="Weight of mean|z| in the loss.",
    )
    expansion: int = Field(
        json_schema_extra=role("sae"),
        le=64,
        default=2,
        gt=0,
        description="Latent width as a multiple of d.",
    )
    topk_frac: float = Field(
        json_schema_extra=role("sae"),
        allow_inf_nan=False,
        default=1 / 3,
        ge=0,
        le=1,
        description="Per-token top-k with k = floor(latent * topk_frac); 0 disables top-k.",
    )
    sae_arch: Literal["course", "standard", "topk", "batchtopk"] = Field(
        json_schema_extra=role("recipe"),
        default="course",
        description="The SAE trained per layer. 'course': the course's tied, bias-free ReLU + "
        "top-k SAE (--topk-frac, --l1). The field's, trained as SAELens 6 trains them "
        "(docs/experiment.md, architectures): 'standard' (untied, biases, ReLU, --l1 on "
        "z·‖W_dec‖ with --l1-warm-up-steps), 'topk' (k per token, --k) and 'batchtopk' (k·N "
        "per batch of N tokens, saved as JumpReLU), the last two with the dead-latent "
        "auxiliary loss (--aux-coefficient). Each is saved in SAELens's format.",
    )
    k: int = Field(
        json_schema_extra=role("recipe"),
        default=100,
        gt=0,
        le=1_000_000,
        description="topk: latents per token; batchtopk: their mean over a batch (SAELens's "
        "default 100). At most the latent width.",
    )
    l1_warm_up_steps: int = Field(
        json_schema_extra=role("recipe"),
        default=0,
        ge=0,
        le=10_000_000,
        description="standard: steps over which --l1 rises linearly from 0 (SAELens's "
        "l1_warm_up_steps; default 0).",
    )
    aux_coefficient: float = Field(
        json_schema_extra=role("recipe"),
        allow_inf_nan=False,
        default=1.0,
        ge=0,
        description="topk, batchtopk: weight of the auxiliary loss in which the top d/2 dead "
        "latents reconstruct the residual (SAELens's aux_loss_coefficient; default 1).",
    )
    dead_steps: int = Field(
        json_schema_extra=role("recipe"),
        default=1000,
        gt=0,
        le=10_000_000,
        description="topk, batchtopk: a latent is dead for the auxiliary loss once it has not "
        "fired for this many steps (SAELens's dead_feature_window; default 1000, so a "
        "75-step training never uses it).",
    )
    batch_tokens: int = Field(
        json_schema_extra=role("training"),
        default=0,
        ge=0,
        description="Tokens per SAE minibatch. 0: each epoch is one step on all of a layer's "
        "tokens (the course's full batch). B > 0: each epoch is a seeded, shuffled pass in "
        "minibatches of B tokens, an Adam step each, read from the layer's file as it goes, so "
        "memory stays bounded however many tokens there are.",
    )
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        json_schema_extra=role("training"),
        default="fp32",
        description="SAE matmuls: 'fp32' exact (default); 'tf32' lets CUDA use TF32 tensor "
        "cores; 'bf16' multiplies bf16 operands with fp32 accumulation on CPU (native with "
        "avx512_bf16/AMX) and CUDA, weights, gradients, loss and metrics staying fp32 (faster, "
        "small measured differences: docs/performance.md, bf16).",
    )
    eval_seqs: int | None = Field(
        json_schema_extra=role("result"),
        default=None,
        ge=0,
        le=10_000,
        description="Held-out windows (of --seq-len tokens, seeded, disjoint from the training "
        "windows) on which each SAE is spliced into the model for the downstream measures (CE "
        "loss score, KL score: docs/measures.md). Unset: as many as make 2,048 tokens. 0: no "
        "downstream measures. The windows laid out after the training ones; where the articles "
        "hold too few, as many as fit, the rest training windows, counted as in-sample in the "
        "report and the estimate line.",
    )
    saes: str = Field(
        json_schema_extra=role("result"),
        default="",
        description="Profile published SAEs instead of training new ones: a local folder or a "
        "Hugging Face repo id (optionally repo:subfolder) holding one SAELens-format SAE per "
        "layer (cfg.json + sae_weights.safetensors; standard, topk or jumprelu). Their hook "
        "is read from the files; empty: train the course's SAE per layer.",
    )
    save_saes: bool = Field(
        json_schema_extra=role("result"),
        default=True,
        description="Keep every trained SAE beside its metrics, in SAELens's on-disk format "
        "(cfg.json + sae_weights.safetensors: 151 MB a GPT-2-small layer, 419 MB a "
        "GPT-2-large one); --no-save-saes keeps only the metrics.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        json_schema_extra=role("result"),
        default="auto",
        description="Where to run: 'auto' takes CUDA when present.",
    )
    extract_batch: int = Field(
        json_schema_extra=role("execution"),
        default=1,
        gt=0,
        description="Sequences per forward pass during extraction (memory grows with it).",
    )
    task_runner: Literal["thread", "dask"] = Field(
        json_schema_extra=role("execution"),
        default="thread",
        description="Where the per-layer work runs: 'thread' in this process, one SAE at a "
        "time; 'dask' on a Dask cluster (a local one of --dask-workers processes, or the one at "
        "--dask-address), which also runs each model's extraction.",
    )
    dask_address: str = Field(
        json_schema_extra=role("execution"),
        default="",
        description="Scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786 (with "
        "--task-runner dask); empty: start a local cluster for the run.",
    )
    dask_workers: int = Field(
        json_schema_extra=role("execution"),
        le=256,
        default=2,
        gt=0,
        description="Worker processes of the local Dask cluster, each training one SAE at a "
        "time with its share of the CPU cores.",
    )
    dask_tls_ca: str = Field(
        json_schema_extra=role("execution"),
        default="",
        description="With a tls:// --dask-address: the CA certificate (PEM file) the cluster's "
        "certificates are signed with; empty: Dask's own setting distributed.comm.tls.ca-file.",
    )
    dask_tls_cert: str = Field(
        json_schema_extra=role("execution"),
        default="",
        description="With a tls:// --dask-address: this client's certificate (PEM file); "
        "empty: Dask's setting distributed.comm.tls.client.cert.",
    )
    dask_tls_key: str = Field(
        json_schema_extra=role("execution"),
        default="",
        description="With a tls:// --dask-address: this client's private key (PEM file); "
        "empty: Dask's setting distributed.comm.tls.client.key (or the key in the cert file).",
    )
    progress_every: float = Field(
        json_schema_extra=role("execution"),
        le=86400,
        allow_inf_nan=False,
        default=15.0,
        ge=0,
        description="Seconds between progress lines inside a layer (epoch k of n, loss, time "
        "left) and inside an extraction; 0: every epoch.",
    )
    quiet: bool = Field(
        json_schema_extra=role("execution"),
        default=False,
        description="No progress lines inside layers and no terminal bar (the estimate and a "
        "line per finished layer remain).",
    )
    artifacts_dir: str = Field(
        json_schema_extra=role("execution"),
        default="artifacts",
        description="Where every output and cache record is written.",
    )
    refresh: bool = Field(
        json_schema_extra=role("execution"),
        default=False,
        description="Ignore caches and recompute everything.",
    )

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

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        return check_urls(value)

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

    def digest(self) -> str:
        """Hash of every field that changes results (not the EXECUTION_FIELDS; for the course's
        SAE, not the RECIPE_FIELDS either, which it does not read: its runs keep their names)."""
        course = set(RECIPE_FIELDS) if self.sae_arch == "course" else set()
        return stable_hash(self.model_dump(exclude=set(EXECUTION_FIELDS) | course))

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
