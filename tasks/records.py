"""The records tasks hand each other: what each task returns and the next one reads.

They are plain dicts at run time (Prefect stores them as JSON, and the cache replays them), so
these types only name the contract: which keys a record has and what each holds. A record that
names a file carries its size and sha256 (FileRecord): the cache checks it before replaying, and
the next task's key changes when the file does."""

from __future__ import annotations

from typing import TypedDict

from typing_extensions import NotRequired  # typing has it from Python 3.11


class FileRecord(TypedDict):
    """A file a task wrote (tasks.store.file_record)."""

    path: str
    size: int
    sha256: str


class Page(TypedDict):
    """scrape.fetch_page: the article's HTML as fetched."""

    url: str
    fetched_at: str  # ISO 8601, UTC
    revision_id: int | None  # MediaWiki's wgRevisionId, None if the page does not say
    html: FileRecord


class Text(TypedDict):
    """scrape.parse_page: what the models read."""

    text: FileRecord
    chars: int


class ArticleTokens(TypedDict):
    """One article's share of a token batch."""

    tokens: int  # tokens in the article's text
    windows: int  # windows of seq_len cut from it


class Batch(TypedDict):
    """tokens.tokenize: the token batch (n_seqs x seq_len ids) of one tokenizer."""

    tokens: FileRecord
    streams: FileRecord  # every article's token ids, one row, article after article
    n_article_tokens: int  # tokens in all the articles' texts, before sampling windows
    articles: list[ArticleTokens]  # in --urls order


class EvalBatch(TypedDict):
    """tokens.holdout: the held-out windows the SAEs are spliced in on (E x seq_len ids)."""

    tokens: FileRecord
    held_out: int  # windows disjoint from every training window
    in_sample: int  # windows that are training windows (the articles had no room for them)
    windows: list[list[int]]  # [article, start, held out (1) or in-sample (0)] of each window
    train_windows: list[list[int]]  # [article, start] of each training window


class Splice(TypedDict):
    """splice.splice_sae: what one SAE costs the model (SAELens's CE and KL scores)."""

    layer: int
    ce_clean: float
    ce_sae: float
    ce_ablation: float
    ce_delta: float  # ce_sae - ce_clean
    ce_loss_score: float | None  # None where undefined: the ablation's effect is noise
    ce_loss_score_undefined: str | None  # why it is undefined (splice.within_noise)
    kl_sae: float
    kl_ablation: float
    kl_div_score: float | None
    kl_div_score_undefined: str | None
    eval_tokens: int
    eval_held_out: int  # held-out windows (EvalBatch.held_out)
    eval_in_sample: int  # in-sample windows (EvalBatch.in_sample)
    splice_seconds: float


class Stability(TypedDict):
    """stability.seed_stability: one layer's first two SAE seeds compared (tasks.sae.stability)."""

    name: str
    layer: int
    stability_seeds: list[int]  # [first seed, second seed]
    stability_shared: float | None  # None: no live latent to compare
    stability_mmcs: float | None


class LayerFile(FileRecord):
    """One layer's activation file (extract)."""

    layer: int


class Extraction(TypedDict):
    """extract.extract_activations: one model's activation files."""

    model: str  # hub id or folder
    name: str  # short name (settings.short_name)
    n_layers: int  # blocks of the model (not only those extracted)
    files: list[LayerFile]
    ran_on: str  # host:pid
    hardware: str  # host.describe_device


class ModelFacts(TypedDict):
    """models.describe: checked before any heavy work (the flow's preflight)."""

    model: str
    name: str
    weights_fingerprint: str  # models.model_fingerprint: which weights
    tokenizer_fingerprint: str  # models.tokenizer_fingerprint: which vocabulary and merges
    layers: list[int]  # the layers this run profiles
    d: int  # width of the hooked activation
    vocab: int  # vocabulary size: the width of the model's next-token log-probs


class LayerResult(TypedDict):
    """train.train_sae / published.profile_sae: one SAE's metrics row (the report's per-seed
    row) and where it came from; the flow adds its Splice measures (every key but `layer`).
    Each key is a column declared, with its unit and meaning, in tasks.columns."""

    name: str
    layer: int
    sae_seed: int
    activations: LayerFile
    json: FileRecord  # the metrics JSON (paths.layer_json)
    sae_files: list[FileRecord]  # the SAE's weights and cfg.json (paths.sae_dir); [] if not kept
    density_pct: float
    final_loss: float
    final_mse: float
    fvu: float
    l0: float
    dead_pct: float
    density_activation: float
    explained_variance: float
    l2_ratio: float
    cossim: float
    dense_pct: float
    x_mean_norm: float
    x_var: float
    x_neg_frac: float
    freq_hist: list[int]  # latents per log10-frequency bin (stats.FREQ_BINS)
    loss_curve: list[float]  # [] for a published SAE
    seconds: float
    device: str
    hardware: str
    ran_on: str
    n_tokens: int
    d: int
    latent: int
    k: int
    sae_source: NotRequired[str]  # a published SAE's source (--saes)
    stability_seeds: NotRequired[list[int]]  # with 2+ seeds kept: the layer's Stability
    stability_shared: NotRequired[float | None]
    stability_mmcs: NotRequired[float | None]


class Report(TypedDict):
    """report.write_report: the report folder and every file in it."""

    dir: str
    files: list[FileRecord]
    failed: list[str]  # 'name: message' of each layer that failed
