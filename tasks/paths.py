"""Where every file of a run goes: the layout of the artifacts dir, in one place.

    <root>/
      pages/<html sha16>.html                 the fetched article (scrape: fetch)
      pages/<html sha16>.json                 its URL, revision and fetch time
      pages/<html sha16>.<text|html>.txt      what the models read (scrape: parse)
      tokens/<tokenizer fp12>-<text sha12>-<sampling>-s<seed>-<n_seqs>x<seq_len>.parquet
      activations/<model>-<weights fp8>/<hook>/<tokens sha16>[-pos0]/L03.parquet
      sae/<model>-<weights fp8>/<hook>/<tokens sha16>[-pos0]/L03/<settings hash16>.json
                                              a layer's metrics; .progress beside it while it trains
      sae/<...>/L03/<settings hash16>/cfg.json, sae_weights.safetensors   its SAE (SAELens format)
      reports/<config digest12>/              tables, figures, provenance.json, report.md
      .cache/results/  .cache/locks/          Prefect's results and locks (content keys)
      .cache/calibration.json                 measured matmul rates (the run's estimate)
      .cache/probe-*                          a Dask worker's read/write check (deleted after)

Every name that varies carries a hash of what the file depends on, so runs with other settings
never overwrite each other's files."""

from __future__ import annotations

from pathlib import Path

from tasks.config import RECIPE_FIELDS, RESULT_FIELDS, Config
from tasks.settings import stable_hash


def page_html(root: Path, html_sha: str) -> Path:
    return root / "pages" / f"{html_sha[:16]}.html"


def page_meta(root: Path, html_sha: str) -> Path:
    return page_html(root, html_sha).with_suffix(".json")


def page_text(root: Path, html_sha: str, kind: str) -> Path:
    """The text cut from a page: kind is cfg.text ('text' or 'html')."""
    return root / "pages" / f"{html_sha[:16]}.{kind}.txt"


def token_batch(cfg: Config, tokenizer_fingerprint: str, text_shas: list[str]) -> Path:
    """One batch per tokenizer and texts (one article: its text's sha; several: their hash)."""
    texts = text_shas[0] if len(text_shas) == 1 else stable_hash(text_shas)
    key = f"{tokenizer_fingerprint[:12]}-{texts[:12]}-{cfg.sampling}-s{cfg.seed}"
    return cfg.root / "tokens" / f"{key}-{cfg.n_seqs}x{cfg.seq_len}.parquet"


def activation_dir(cfg: Config, name: str, weights_fingerprint: str, tokens_sha: str) -> Path:
    """One folder per (model weights, hook, token batch); one file per layer inside."""
    pos0 = "-pos0" if cfg.keep_first_token else ""
    folder = f"{name}-{weights_fingerprint[:8]}"
    return cfg.root / "activations" / folder / cfg.hook / f"{tokens_sha[:16]}{pos0}"


def layer_file(folder: Path, layer: int) -> Path:
    return folder / f"L{layer:02d}.parquet"


def layer_settings(cfg: Config, seed: int) -> dict[str, object]:
    """What a layer's SAE numbers depend on besides its activations; and, for a run that does
    not keep its SAEs, that: its metrics file is its own, never one a run that keeps them
    points to (each names the other's file as changed otherwise, and retrains)."""
    kept = {} if cfg.save_saes else {"save_saes": False}
    if cfg.saes:  # a published SAE measured, not one trained: its source and the loss's l1
        return {"saes": cfg.saes, "l1": cfg.l1, "sae_seed": seed}
    settings = {**cfg.subset(*RESULT_FIELDS), "sae_seed": seed, **kept}
    if cfg.sae_arch != "course":  # the field's architectures: their own settings name them too
        settings |= cfg.subset(*RECIPE_FIELDS)
    if not cfg.batch_tokens:  # full batch, as before the option existed: the same file names
        del settings["batch_tokens"]
    return settings


def layer_json(cfg: Config, activations: Path, seed: int) -> Path:
    """A layer's metrics, mirroring its activation file's place under sae/; the file name hashes
    the SAE settings, so other settings never overwrite it."""
    rel = activations.relative_to(cfg.root / "activations")
    name = f"{stable_hash(layer_settings(cfg, seed))[:16]}.json"
    return cfg.root / "sae" / rel.parent / rel.stem / name


def sae_dir(layer_json_path: Path) -> Path:
    """The trained SAE beside its metrics: <settings hash16>/ with cfg.json and weights."""
    return layer_json_path.with_suffix("")


def epochs_file(layer_json_path: Path) -> Path:
    """Epochs done so far by the layer's training (read by the flow's progress bar)."""
    return layer_json_path.with_suffix(".progress")


def report_dir(cfg: Config) -> Path:
    return cfg.root / "reports" / cfg.digest()[:12]


def cache_dir(root: Path) -> Path:
    return root / ".cache"


def results_dir(root: Path) -> Path:
    return cache_dir(root) / "results"


def locks_dir(root: Path) -> Path:
    return cache_dir(root) / "locks"


def calibration(root: Path) -> Path:
    return cache_dir(root) / "calibration.json"


def worker_probe(root: Path, token: str) -> Path:
    return cache_dir(root) / f"probe-{token}"
