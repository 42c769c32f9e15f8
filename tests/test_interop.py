"""laminar's saved SAEs read by SAELens itself, in an environment of its own (.venv-interop,
built by `make interop`: sae-lens 6 needs TransformerLens < 4, laminar needs 4): the latents and
the reconstruction SAELens computes from a layer's Parquet file equal laminar's, and
tasks.sae.files.load reproduces the layer's reported metrics."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
from conftest import ROOT, ArticleServer, quick_config

from flows.laminar import laminar
from tasks import store
from tasks.sae import files

pytestmark = pytest.mark.interop
INTEROP_PYTHON = ROOT / ".venv-interop" / "bin" / "python"

# Run in .venv-interop: SAELens loads the SAE, encodes the layer's activations (read with
# pyarrow from laminar's Parquet file) and decodes them; both go back as .npy files.
SAELENS = """
import sys
import numpy as np, pyarrow.parquet as pq, torch
from sae_lens import SAE
folder, parquet, out = sys.argv[1:]
col = pq.read_table(parquet, columns=["activation"]).column("activation").combine_chunks()
x = torch.from_numpy(col.values.to_numpy().reshape(len(col), -1).copy())
model = SAE.load_from_disk(folder, device="cpu")
with torch.no_grad():
    z = model.encode(x)
    x_hat = model.decode(z)
np.save(out + "/z.npy", z.numpy()); np.save(out + "/x_hat.npy", x_hat.numpy())
print(type(model).__name__, model.cfg.k)
"""


@pytest.fixture(scope="module")
def interop_python() -> Path:
    if not INTEROP_PYTHON.exists():
        pytest.skip("no .venv-interop: `make interop` builds it (make test does)")
    return INTEROP_PYTHON


def test_saelens_reads_laminars_sae_and_gets_its_numbers(
    interop_python: Path, tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    summary = laminar(quick_config(tiny_model, article_server, tmp_path / "art", layers="1"))
    [cfg_json] = (tmp_path / "art" / "sae").rglob("cfg.json")
    folder = cfg_json.parent
    [parquet] = (tmp_path / "art" / "activations").rglob("L01.parquet")
    out = subprocess.run(
        [str(interop_python), "-c", SAELENS, str(folder), str(parquet), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the repo: nothing of laminar is importable there
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ours = files.load(folder)
    assert out.stdout.split() == ["TopKSAE", str(ours.k)]

    x = torch.from_numpy(store.read_activations(store.file_record(parquet)).copy())
    with torch.no_grad():
        x_hat, z = ours(x)
        pre = (x @ ours.weight.T).clamp(min=0)
    # The one difference: at a tie with the k-th value laminar keeps every tied entry and
    # SAELens exactly k. The data here has none, so the latents must agree exactly in support.
    kth = pre.topk(ours.k, dim=1).values[:, -1:]  # (N, 1)
    ties = ((pre == kth).sum(dim=1) > 1) & (kth[:, 0] > 0)
    assert not ties.any(), "a tie at the k-th value: the comparison below would not hold"
    z_lens, x_hat_lens = (np.load(tmp_path / f) for f in ("z.npy", "x_hat.npy"))
    assert np.array_equal(z_lens != 0, z.numpy() != 0)
    np.testing.assert_allclose(z_lens, z.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x_hat_lens, x_hat.numpy(), rtol=1e-5, atol=1e-6)

    with open(Path(summary["report"]) / "metrics.csv") as f:
        [row] = list(csv.DictReader(f))
    again = reference.metrics(ours, x)
    assert again["density_pct"] == pytest.approx(float(row["density_pct"]), rel=1e-9)
    assert again["final_mse"] == pytest.approx(float(row["final_mse"]), rel=1e-6)


# Run in .venv-interop, in two steps. "make": SAELens builds one family per architecture at a
# hook of its own, random weights, and saves each SAE (save_model). "eval": for every SAE,
# SAELens's own evals code on laminar's tokens and activations: L0 and explained variance
# (sae_lens.evals.ExplainedVarianceCalculator) on the layer's Parquet file, and the CE loss
# score from sae_lens.evals.get_recons_loss (the function run_evals calls; it runs offline) on
# laminar's held-out windows, with the model as TransformerLens 3 builds it from the same
# Hugging Face weights.
FAMILIES = {"standard": "hook_resid_pre", "topk": "mlp.hook_pre", "jumprelu": "hook_mlp_out"}
SAELENS_EVALS = """
import json, sys
import numpy as np, pyarrow.parquet as pq, torch
from sae_lens import (JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE,
    TopKSAEConfig)
from sae_lens.saes.sae import SAEMetadata
from sae_lens.evals import ExplainedVarianceCalculator, get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens import SAE
step, folder, out = sys.argv[1:4]
families = json.loads(sys.argv[4])
widths = {"hook_resid_pre": 64, "mlp.hook_pre": 256, "hook_mlp_out": 64}
if step == "make":
    torch.manual_seed(0)
    kinds = {"standard": (StandardSAE, StandardSAEConfig, {}),
             "topk": (TopKSAE, TopKSAEConfig, {"k": 24}),
             "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {})}
    for arch, hook in families.items():
        cls, config, extra = kinds[arch]
        for layer in range(3):
            d = widths[hook]
            meta = SAEMetadata(hook_name=f"blocks.{layer}.{hook}", model_name="tiny-gpt2")
            model = cls(config(d_in=d, d_sae=2 * d, metadata=meta, **extra))
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.randn_like(p) * 0.3)
                if arch == "jumprelu":
                    model.threshold.copy_(torch.rand_like(model.threshold) * 0.3)
            model.save_model(f"{out}/{arch}/blocks.{layer}.{hook}")
    sys.exit(0)
import transformers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
c = hf.config
cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions,
    d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=4 * c.n_embd, d_vocab=c.vocab_size,
    act_fn="gelu_new", normalization_type="LN", default_prepend_bos=False)
model = HookedTransformer(cfg)
model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
model.eval()
runs = json.loads(sys.argv[5])
got = {}
for arch, run in runs.items():
    tokens = torch.from_numpy(pq.read_table(run["eval"]).column("token_id").to_numpy()
        .reshape(-1, run["seq_len"]).astype(np.int64))
    for layer, parquet in run["layers"].items():
        sae = SAE.load_from_disk(run["saes"][layer], device="cpu")
        col = pq.read_table(parquet, columns=["activation"]).column("activation").combine_chunks()
        x = torch.from_numpy(col.values.to_numpy().reshape(len(col), -1).copy())
        with torch.no_grad():
            z = sae.encode(x)
            ev = ExplainedVarianceCalculator()
            ev.add_batch(sae.decode(z), x)
            m = get_recons_loss(sae, model, ActivationScaler(), tokens, compute_kl=True,
                compute_ce_loss=True, hook_name=f"blocks.{layer}.{run['hook']}")
        m = {k: v.mean().item() for k, v in m.items()}
        score = (m["ce_loss_with_ablation"] - m["ce_loss_with_sae"]) / (
            m["ce_loss_with_ablation"] - m["ce_loss_without_sae"])
        kl = (m["kl_div_with_ablation"] - m["kl_div_with_sae"]) / m["kl_div_with_ablation"]
        got[f"{arch} {layer}"] = {"l0": (z != 0).sum(-1).float().mean().item(),
            "explained_variance": ev.compute(), "ce_loss_score": score, "kl_div_score": kl,
            "ce_clean": m["ce_loss_without_sae"], "ce_sae": m["ce_loss_with_sae"],
            "ce_ablation": m["ce_loss_with_ablation"], "kl_sae": m["kl_div_with_sae"],
            "kl_ablation": m["kl_div_with_ablation"]}
print(json.dumps(got))
"""


def metrics_of(summary: dict) -> dict[int, dict[str, str]]:
    """A run's metrics.csv rows by layer."""
    with open(Path(summary["report"]) / "metrics.csv") as f:
        return {int(r["layer"]): r for r in csv.DictReader(f)}


def in_interop(python: Path, *args: str, cwd: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", SAELENS_EVALS, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,  # not the repo: nothing of laminar is importable there
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_published_families_give_saelenss_own_numbers(
    interop_python: Path,
    tmp_path: Path,
    tokenizer_dir: Path,
    article_server: ArticleServer,
) -> None:
    """SAEs SAELens built and saved (standard, topk, jumprelu, each at its own hook), profiled by
    laminar's --saes: L0, explained variance and the CE and KL scores equal what SAELens's
    evals compute on the same tokens, to 1e-4. So do laminar's own trained SAEs, read by
    SAELens and profiled again by --saes (which also gives the training run's numbers).
    Position 0 is kept, so laminar splices every position, as get_recons_loss does. The model's
    weights are drawn wider than GPT-2's (initializer_range 0.3), so zeroing a hook moves its
    loss well away from the clean one."""
    import json

    from conftest import make_model

    model = make_model(tmp_path / "tiny-wide", tokenizer_dir, initializer_range=0.3)  # type: ignore[arg-type]
    saes = tmp_path / "saes"
    in_interop(interop_python, "make", str(model), str(saes), json.dumps(FAMILIES), cwd=tmp_path)
    base = quick_config(model, article_server, tmp_path / "own", eval_seqs=32, epochs=5)
    base = base.model_copy(update={"keep_first_token": True})
    trained = metrics_of(laminar(base))
    [own] = {p.parent.parent.parent for p in (tmp_path / "own" / "sae").rglob("cfg.json")}
    sources = {**{arch: saes / arch for arch in FAMILIES}, "laminar": own}
    hooks = {**FAMILIES, "laminar": "mlp.hook_pre"}
    runs, ours = {}, {}
    for arch, source in sources.items():
        root = tmp_path / arch
        cfg = base.model_copy(update={"saes": str(source), "artifacts_dir": str(root)})
        ours |= {f"{arch} {la}": r for la, r in metrics_of(laminar(cfg)).items()}
        [eval_file] = (root / "tokens").glob("*-eval32+0.parquet")  # 32 held out
        acts = {
            la: next((root / "activations").rglob(f"{hooks[arch]}/*/L0{la}.parquet"))
            for la in range(3)
        }
        pattern = "L{:02d}/*/cfg.json" if arch == "laminar" else "blocks.{}.*/cfg.json"
        folders = {la: next(source.glob(pattern.format(la))).parent for la in range(3)}
        runs[arch] = {
            "eval": str(eval_file),
            "seq_len": cfg.seq_len,
            "hook": hooks[arch],
            "layers": {la: str(p) for la, p in acts.items()},
            "saes": {la: str(p) for la, p in folders.items()},
        }
    for la, row in trained.items():  # laminar's SAEs, trained and profiled: the same numbers
        for metric in ("l0", "explained_variance", "ce_loss_score", "kl_div_score", "density_pct"):
            mine = ours[f"laminar {la}"][metric]
            assert mine == row[metric] == "" or float(mine) == pytest.approx(
                float(row[metric]), abs=1e-6
            ), (la, metric)
    out = in_interop(
        interop_python,
        "eval",
        str(model),
        str(saes),
        json.dumps(FAMILIES),
        json.dumps(runs),
        cwd=tmp_path,
    )
    theirs = json.loads(out.strip().splitlines()[-1])
    assert sorted(theirs) == sorted(ours) and len(theirs) == 12
    defined = 0
    for key, want in theirs.items():
        for part in ("ce_clean", "ce_sae", "ce_ablation", "kl_sae", "kl_ablation"):
            assert float(ours[key][part]) == pytest.approx(want[part], abs=1e-4), (key, part)
        for metric in ("l0", "explained_variance"):
            assert float(ours[key][metric]) == pytest.approx(want[metric], abs=1e-4), (key, metric)
        for score in ("ce_loss_score", "kl_div_score"):
            # laminar's score is SAELens's where the ablation's effect clears its noise; else
            # it is undefined with the reason (SAELens divides by the noise regardless)
            if ours[key][score]:
                assert float(ours[key][score]) == pytest.approx(want[score], abs=1e-4), key
                defined += 1
            else:
                assert ours[key][f"{score}_undefined"].startswith("the zero ablation "), key
    assert defined >= 12  # the KL scores at least: zeroing a hook moves KL well past noise


# Run in .venv-interop: for each architecture, SAELens's own training SAE from laminar's weights
# computes the training loss, the latents, the gradients and (batchtopk) the threshold's update
# on the same batch and dead latents; and SAELens loads the SAE laminar saved and encodes and
# decodes the batch. Everything goes back in one safetensors file per architecture.
SAELENS_TRAINING = """
import json, sys
import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.training.optim import CoefficientScheduler
for arch, spec in json.loads(sys.argv[1]).items():
    t = load_file(spec["inputs"])
    m, d = t["W_dec"].shape
    common = dict(d_in=d, d_sae=m)
    if arch == "standard":
        cfg = StandardTrainingSAEConfig(
            **common, l1_coefficient=spec["l1"], l1_warm_up_steps=spec["warm"])
        sae = StandardTrainingSAE(cfg)
        schedule = CoefficientScheduler(spec["warm"], spec["l1"])
        for _ in range(spec["steps"]):
            schedule.step()
        coefficients = {"l1": schedule.value}
    elif arch == "topk":
        cfg = TopKTrainingSAEConfig(**common, k=spec["k"], aux_loss_coefficient=spec["aux"])
        sae, coefficients = TopKTrainingSAE(cfg), {}
    else:
        cfg = BatchTopKTrainingSAEConfig(**common, k=spec["k"], aux_loss_coefficient=spec["aux"])
        sae, coefficients = BatchTopKTrainingSAE(cfg), {}
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(t[name])
        if arch == "batchtopk":
            sae.topk_threshold.fill_(float(t["threshold"]))
    step = TrainStepInput(sae_in=t["x"], coefficients=coefficients,
                          dead_neuron_mask=t["dead"], n_training_steps=spec["steps"],
                          is_logging_step=False)
    out = sae.training_forward_pass(step)
    out.loss.backward()
    got = {"loss": out.loss.detach().reshape(1), "z": out.feature_acts.detach()}
    got |= {f"grad_{n}": getattr(sae, n).grad for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if arch == "batchtopk":
        got["threshold"] = sae.topk_threshold.detach().reshape(1).float()
    loaded = SAE.load_from_disk(spec["saved"], device="cpu")
    with torch.no_grad():
        got["saved_z"] = loaded.encode(t["x"])
        got["saved_x_hat"] = loaded.decode(got["saved_z"])
    got = {k: v.contiguous() for k, v in got.items()}
    save_file(got, spec["out"], metadata={"class": type(loaded).__name__})
    print(arch, type(loaded).__name__)
"""


def test_the_fields_architectures_train_and_save_as_saelenss_own_code_does(
    interop_python: Path, tmp_path: Path
) -> None:
    """standard, topk and batchtopk: from the same weights, batch, dead latents and (standard)
    L1 warm-up step, laminar's training loss, latents and gradients equal those of SAELens's
    TrainingSAE of that architecture, and batchtopk's threshold moves as SAELens's does. The
    SAE laminar saves loads in SAELens as standard, topk and jumprelu, and SAELens's encode and
    decode equal laminar's inference form (what laminar measures and splices)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from tasks import recipes as task
    from tasks.sae import recipes

    torch.manual_seed(0)
    x = torch.randn(96, 16) * 2 + 0.5  # (N, d), off-centre so b_dec matters
    specs, ours = {}, {}
    for arch in ("standard", "topk", "batchtopk"):
        recipe = recipes.Recipe(
            arch, l1=0.3, k=4, l1_warm_up_steps=5, aux_coefficient=0.5, dead_steps=2
        )
        sae, opt = recipes.fresh(16, 64, recipe, seed=1, device="cpu", lr=1e-2)
        for _ in range(3):  # biases away from 0, some latents dead (k=4 of 64 per token)
            sae.step(x[:32])
            opt.step()
        dead = sae.dead()
        assert arch == "standard" or 0 < int(dead.sum()) < 64, arch  # the aux loss is live
        inputs = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        threshold = sae.threshold.clone() if arch == "batchtopk" else torch.zeros(())
        save_file(
            {**inputs, "x": x, "dead": dead, "threshold": threshold.float().reshape(1)},
            tmp_path / f"{arch}-in.safetensors",
        )
        for p in sae.parameters():
            p.grad = None
        loss, z = sae.gradient(x)  # the step's gradient (standard's is written by hand)
        sae.after_step(z)  # batchtopk: the threshold's update
        mine = {"loss": loss.reshape(1), "z": z}
        mine |= {f"grad_{n}": getattr(sae, n).grad for n in inputs}
        if arch == "batchtopk":
            mine["threshold"] = sae.threshold.reshape(1).float()
        saved = tmp_path / f"{arch}-sae"
        task.save(sae.inference(), saved, {"hook": "blocks.0.mlp.hook_pre", "model": "tiny"})
        inference = files.load(saved)
        mine["saved_z"] = inference.encode(x)
        mine["saved_x_hat"] = inference.decode(mine["saved_z"])
        ours[arch] = mine
        specs[arch] = {
            "inputs": str(tmp_path / f"{arch}-in.safetensors"),
            "l1": 0.3,
            "warm": 5,
            "steps": 3,
            "k": 4,
            "aux": 0.5,
            "saved": str(saved),
            "out": str(tmp_path / f"{arch}-out.safetensors"),
        }
    import json

    out = subprocess.run(
        [str(interop_python), "-c", SAELENS_TRAINING, json.dumps(specs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [
        "standard",
        "StandardSAE",
        "topk",
        "TopKSAE",
        "batchtopk",
        "JumpReLUSAE",
    ]
    for arch, mine in ours.items():
        theirs = load_file(specs[arch]["out"])
        with safe_open(specs[arch]["out"], "pt") as f:
            assert f.metadata()["class"] in out.stdout
        assert sorted(theirs) == sorted(mine), arch
        for key, value in mine.items():
            torch.testing.assert_close(
                value, theirs[key], rtol=1e-5, atol=1e-6, msg=f"{arch} {key}"
            )
