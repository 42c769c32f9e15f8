"""Config's settings of what is measured: the models, their layers and hook, the articles and
how they are fetched, the token windows and the seeds. tasks.config puts them together with
tasks.config_sae's and tasks.config_run's into the one Config."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tasks.settings import role

LED_URL = "https://en.wikipedia.org/wiki/Light-emitting_diode"
# An SAE seed's range: NumPy's generators (the minibatch shuffle) take no negative seed, and the
# report's sae_seed column is a 64-bit signed integer (torch's generator would take up to 2**64-1).
SAE_SEED_MAX = 2**63 - 1
# Hooks whose activation is not one vector per token, in TransformerLens 4's names (with the
# block-level aliases): per attention head (batch, pos, head, d), per pair of positions (batch,
# head, pos, pos), a rotary table (batch, pos, rotary dim) or a norm's scale (batch, pos, 1).
# laminar's SAEs, its own and published ones, read one d-vector per token.
NOT_PER_TOKEN_HOOKS = frozenset(
    {
        *(f"attn.hook_{x}" for x in ("q", "k", "v", "z", "rot_q", "rot_k", "result")),
        *(f"attn.{x}.hook_out" for x in ("q", "k", "v")),
        *(f"{at}hook_{x}_input" for at in ("", "attn.") for x in ("q", "k", "v")),
        *(f"{at}hook_attn_in" for at in ("", "attn.")),
        "attn.o.hook_in",
        "attn.hook_attn_scores",
        "attn.hook_pattern",
        "attn.hook_cos",
        "attn.hook_sin",
        "ln1.hook_scale",
        "ln2.hook_scale",
    }
)

# A hook of one vector per token that the bridge leaves off unless switched on (extraction does
# not switch it on): the MLP's input, which ln2.hook_in gives before the LayerNorm.
OFF_HOOKS = frozenset({"hook_mlp_in"})
MLP_INPUT = "ln2.hook_in"  # the input of the LayerNorm before the MLP: hook_mlp_in's values


def not_per_token(what: str, fix: str) -> str:
    """The sentence for a hook of NOT_PER_TOKEN_HOOKS: `what` names it, `fix` says what to do."""
    return (
        f"{what} is not one vector per token (it is per attention head, per pair of positions, a "
        f"rotary table or a norm's scale), and laminar's SAEs read one vector per token: {fix}."
    )


def off_hook(what: str, fix: str) -> str:
    """The sentence for a hook of OFF_HOOKS: `what` names it, `fix` says what to do."""
    return (
        f"{what} is a hook TransformerLens's bridge leaves off, and laminar does not switch it "
        f"on: {fix}."
    )


class InputSettings(BaseModel):
    """What a profile is measured on (fields of Config, in the order the CLI and the form show)."""

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
    sae_seeds: list[Annotated[int, Field(ge=0, le=SAE_SEED_MAX)]] = Field(
        json_schema_extra=role("result"),
        default=[0],
        min_length=1,
        description="SAE initialisation seeds, each from 0 to 2^63 - 1: each layer's SAE is "
        "trained once per seed and the report shows mean ± sd.",
    )
