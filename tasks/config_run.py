"""Config's settings of what a run measures beyond its profile (the downstream measures, the
published SAEs of --saes) and of how and where it runs: device, task runner and Dask, progress,
artifacts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tasks.settings import role


class RunSettings(BaseModel):
    """What a run adds and where it runs (fields of Config, in the order the CLI and the form
    show)."""

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
