"""Config's settings of the SAEs trained on each layer: the course's recipe, the field's
architectures (--sae-arch) and their settings, minibatches and precision."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tasks.settings import role

# The SAEs (--sae-arch values) that read each SAE setting not all of them read; every other SAE
# setting they all read. A run's settings its SAE does not read are no part of what it computes,
# so Config.canonical puts them at their defaults. tests/test_recipes.py checks this against the
# code: each SAE trained with a setting it does not read changed is bit-identical.
READ_BY: dict[str, tuple[str, ...]] = {
    "l1": ("course", "standard"),
    "topk_frac": ("course",),
    "k": ("topk", "batchtopk"),
    "l1_warm_up_steps": ("standard",),
    "aux_coefficient": ("topk", "batchtopk"),
    "dead_steps": ("topk", "batchtopk"),
}


def read_by(field: str, text: str) -> str:
    """A setting's description, ending with the SAEs that read it (READ_BY): --help, the
    deployment form and docs/options.md say it as the runs do."""
    return f"{text} Read only by --sae-arch {', '.join(READ_BY[field])}."


class SAESettings(BaseModel):
    """How each layer's SAE is trained (fields of Config, in the order the CLI and the form
    show)."""

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
        description=read_by(
            "l1",
            "Weight of the L1 term in the loss: mean|z| (the course's, and the published SAEs' "
            "of --saes), z·‖W_dec‖ (standard).",
        ),
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
        description=read_by(
            "topk_frac", "Per-token top-k with k = floor(latent * topk_frac); 0 disables top-k."
        ),
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
        description=read_by(
            "k",
            "topk: latents per token; batchtopk: their mean over a batch (SAELens's default "
            "100). At most the latent width.",
        ),
    )
    l1_warm_up_steps: int = Field(
        json_schema_extra=role("recipe"),
        default=0,
        ge=0,
        le=10_000_000,
        description=read_by(
            "l1_warm_up_steps",
            "Steps over which --l1 rises linearly from 0 (SAELens's l1_warm_up_steps; default 0).",
        ),
    )
    aux_coefficient: float = Field(
        json_schema_extra=role("recipe"),
        allow_inf_nan=False,
        default=1.0,
        ge=0,
        description=read_by(
            "aux_coefficient",
            "Weight of the auxiliary loss in which the top d/2 dead latents reconstruct the "
            "residual (SAELens's aux_loss_coefficient; default 1).",
        ),
    )
    dead_steps: int = Field(
        json_schema_extra=role("recipe"),
        default=1000,
        gt=0,
        le=10_000_000,
        description=read_by(
            "dead_steps",
            "A latent is dead for the auxiliary loss once it has not fired for this many steps "
            "(SAELens's dead_feature_window; default 1000, so a 75-step training never uses it).",
        ),
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
        "cores; 'bf16' multiplies bf16 operands with fp32 accumulation on CPU and CUDA, "
        "weights, gradients, loss and metrics staying fp32 (faster with avx512_bf16/AMX or CUDA, "
        "small measured differences; a CPU without them emulates bf16, which trained about 100x "
        "slower than fp32: docs/performance.md, bf16).",
    )
