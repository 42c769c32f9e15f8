"""--sae-arch standard, topk and batchtopk (tasks/recipes.py, tasks/sae/recipes.py): each trains
through the flow on the same activations as the course's SAE, in full batch and in minibatches,
saves in SAELens's format as the architecture SAELens loads it as, and reports numbers that its
saved SAE reproduces. SAELens's own code agrees on the loss, the gradients and the saved SAE:
test_interop.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ArticleServer, quick_config
from reference import recipe_activate, recipe_gradient, recipe_loss

from flows.laminar import laminar
from tasks import store
from tasks.config import Config
from tasks.sae import files, measures, recipes


def rows(report: str) -> list[dict[str, str]]:
    with (Path(report) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("arch", "saved_as", "batch_tokens"),
    [("standard", "standard", 0), ("topk", "topk", 0), ("batchtopk", "jumprelu", 48)],
)
def test_each_architecture_trains_through_the_flow_and_its_saved_sae_gives_its_numbers(
    arch: str,
    saved_as: str,
    batch_tokens: int,
    tmp_path: Path,
    tiny_model: Path,
    article_server: ArticleServer,
) -> None:
    cfg = quick_config(
        tiny_model,
        article_server,
        tmp_path,
        layers="1",
        sae_arch=arch,
        k=16,
        epochs=4,
        lr=1e-3,
        batch_tokens=batch_tokens,
        eval_seqs=2 if arch == "topk" else 0,  # spliced into the model: loaded as SAELens's
    )
    first = laminar(cfg)
    assert set(first["tasks"].values()) == {"Completed"}
    [row] = rows(first["report"])
    [cfg_json] = (tmp_path / "sae").rglob("cfg.json")
    saved = json.loads(cfg_json.read_text())
    assert saved["architecture"] == saved_as and saved["apply_b_dec_to_input"] is True
    assert saved["laminar_recipe"]["sae_arch"] == arch and "laminar" not in saved
    sae = files.load(cfg_json.parent)
    assert type(sae).__name__ == {"standard": "Standard", "topk": "TopK"}.get(arch, "JumpReLU")
    [parquet] = (tmp_path / "activations").rglob("L01.parquet")
    x = torch.from_numpy(store.read_activations(store.file_record(parquet)).copy())
    stats = measures.input_stats([x])
    again = measures.metrics(sae, [x], stats["x_var"])
    for metric in ("l0", "fvu", "density_pct", "dead_pct", "explained_variance"):
        assert float(row[metric]) == pytest.approx(again[metric], rel=1e-5, abs=1e-9), metric
    assert row["latent"] == "512" and float(row["final_loss"]) > float(row["final_mse"]) > 0
    if arch == "topk":
        assert float(row["l0"]) == 16.0  # exactly k a token, by construction
        assert any(n.startswith("splice") for n in first["tasks"]) and row["ce_sae"] != ""
    rerun = laminar(cfg)
    assert set(rerun["tasks"].values()) == {"Cached"}


def test_the_course_and_each_recipe_keep_their_own_files(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """One artifacts dir, the course's SAE and two recipes on one layer: one extraction, three
    SAEs in three places, and the course's report folder named as before --sae-arch existed
    (its digest leaves out the settings only the recipes read)."""
    base = quick_config(tiny_model, article_server, tmp_path, layers="0", epochs=2)
    course = laminar(base)
    assert Path(course["report"]).name == base.digest()[:12]
    plain = Config.model_validate(base.model_dump(exclude={"sae_arch", "k"}) | {"k": 7})
    assert plain.digest() == base.digest()  # --k is not the course's: the name stays
    later = []
    for arch in ("standard", "topk"):
        summary = laminar(base.model_copy(update={"sae_arch": arch, "k": 8}))
        executed = sorted(n for n, s in summary["tasks"].items() if s != "Cached")
        assert executed == ["latents tiny-gpt2", "report", "sae tiny-gpt2 L0"], executed
        later.append(summary["report"])
    assert len({course["report"], *later}) == 3
    archs = sorted(
        json.loads(p.read_text()).get("architecture") for p in (tmp_path / "sae").rglob("cfg.json")
    )
    assert archs == ["standard", "topk", "topk"]  # the course's SAE is saved as topk too


def test_the_standard_loss_by_hand() -> None:
    """Σ_d (x̂ - x)² averaged over tokens, plus l1 · warm-up · mean Σ_i z_i ‖W_dec,i‖, in
    float64 numpy on a 2-token, 2-latent case; at step 1 of a 4-step warm-up the L1 weighs 1/4."""
    recipe = recipes.Recipe(
        "standard", l1=2.0, k=1, l1_warm_up_steps=4, aux_coefficient=0.0, dead_steps=10
    )
    sae = recipes.Standard(2, 2, recipe, torch.Generator().manual_seed(0))
    w_dec = np.array([[1.0, 0.0], [3.0, 4.0]])
    w_enc, b_enc, b_dec = (
        np.array([[1.0, 0.5], [-1.0, 0.25]]),
        np.array([0.1, -0.2]),
        np.array([0.5, -0.5]),
    )
    with torch.no_grad():
        for name, value in {"W_dec": w_dec, "W_enc": w_enc, "b_enc": b_enc, "b_dec": b_dec}.items():
            getattr(sae, name).copy_(torch.tensor(value))
    sae.steps = 1
    x = np.array([[1.0, 2.0], [-1.0, 0.5]])
    z = np.maximum((x - b_dec) @ w_enc + b_enc, 0)
    x_hat = z @ w_dec + b_dec
    mse = ((x_hat - x) ** 2).sum(axis=1).mean()
    l1 = 2.0 * (1 / 4) * (z * np.linalg.norm(w_dec, axis=1)).sum(axis=1).mean()
    loss, z_t = recipe_loss(sae, torch.tensor(x, dtype=torch.float32))
    assert float(loss.detach()) == pytest.approx(mse + l1, rel=1e-6)
    np.testing.assert_allclose(z_t.detach().numpy(), z, rtol=1e-6)


def test_the_encoder_is_saelenss_function_and_gradient_in_five_matmuls() -> None:
    """encode's x W + (b − b_dec W) against SAELens's (x − b_dec) W + b: the same values and
    gradients for W, b and b_dec to float tolerance, and a training step of each architecture
    runs five (N, d, m) matmuls, not six (no (N, d) gradient of x − b_dec)."""
    from torch.profiler import profile

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g) * 2 + 0.5
    ours = [torch.randn(s, generator=g, requires_grad=True) for s in ((8, 16), (16,), (8,))]
    theirs = [t.detach().clone().requires_grad_() for t in ours]
    w, b, b_dec = theirs
    a, want = recipes.encode(x, *ours), (x - b_dec) @ w + b
    torch.testing.assert_close(a, want, rtol=1e-6, atol=1e-5)
    (a * a.detach().sin()).sum().backward()
    (want * want.detach().sin()).sum().backward()
    for mine, saelens in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine.grad, saelens.grad, rtol=1e-5, atol=1e-4)

    n, d, m = 96, 16, 48
    for arch in ("standard", "topk", "batchtopk"):
        recipe = recipes.Recipe(arch, 1.0, 4, 0, 1 / 32, 1)
        sae, _ = recipes.fresh(d, m, recipe, seed=0, device="cpu", lr=1e-3)
        sae.since_fired += 5  # every latent dead: the aux loss (topk, batchtopk) runs too
        with profile(record_shapes=True) as prof:
            sae.step(torch.randn(n, d, generator=g))
        big = [
            e.input_shapes
            for e in prof.events()
            if e.name in ("aten::mm", "aten::addmm")
            and {s for shape in e.input_shapes if len(shape) == 2 for s in shape} == {n, d, m}
        ]
        # the dead latents' decode and its two gradients (the latents' and the decoder's)
        aux = 3 if arch != "standard" else 0
        assert len(big) == 5 + aux, (arch, big)


@pytest.mark.parametrize(
    ("arch", "n_dead"),
    [("standard", 0), *((a, n) for a in ("topk", "batchtopk") for n in (0, 5, 30))],
)
def test_each_gradient_by_hand_is_autograds(arch: str, n_dead: int) -> None:
    """Each architecture's hand-written gradient equals autograd's of its loss
    (tests/reference.py), with b_dec and b_enc away from 0, decoder rows of different norms and
    latents the activation zeroes; standard at a partial L1 warm-up, topk and batchtopk with
    no, a few (n_dead <= k_aux = d/2 = 8: all of them reconstruct) and many dead latents (each
    token's 8 largest of them); the loss and z as well."""
    g = torch.Generator().manual_seed(3)
    recipe = recipes.Recipe(arch, 0.7, 4, 10, 0.5, 1)
    sae, _ = recipes.fresh(16, 48, recipe, seed=0, device="cpu", lr=1e-3)
    with torch.no_grad():
        for p in (sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sae.W_dec.mul_(torch.rand(48, 1, generator=g) + 0.5)  # rows of different norms
    sae.steps = 4  # standard: the warm-up at 4 / 10
    sae.since_fired[torch.randperm(48, generator=g)[:n_dead]] = 2  # dead after 1 step
    assert int(sae.dead().sum()) == n_dead
    x = torch.randn(200, 16, generator=g) * 2 + 0.5
    loss, z = sae.gradient(x)
    mine = {n: p.grad for n, p in sae.named_parameters()}
    want, want_z = recipe_gradient(sae, x)
    assert 0.02 < float((z > 0).float().mean()) < 0.8  # the activation zeroes some latents
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=0)
    assert torch.equal(z, want_z)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(mine[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)


def saelens_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """SAELens's TopK activation: the row's k largest, then ReLU, scattered into zeros."""
    top = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


def saelens_batchtopk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """SAELens's BatchTopK activation: ReLU, then the k·N largest of the flattened batch."""
    acts = pre.relu().flatten()
    top = acts.topk(min(k * len(pre), acts.numel()))
    return torch.zeros_like(acts).scatter(-1, top.indices, top.values).reshape(pre.shape)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize(
    ("shift", "k"), [(0.0, 3), (0.0, 40), (-3.0, 3), (-30.0, 3), (0.0, 64)], ids=str
)
def test_the_selections_by_partition_are_saelenss_topk(arch: str, shift: float, k: int) -> None:
    """TopK's and BatchTopK's latents, picked by a partition of the values' bits, equal
    SAELens's topk-then-scatter on distinct values: many positives, fewer positives than the
    batch keeps (shift -3), none (shift -30), and k = m. Gradients pass only to kept latents.
    BatchTopK's threshold moves toward the smallest kept value, as SAELens's does."""
    pre = (torch.randn(50, 64, generator=torch.Generator().manual_seed(k)) + shift).requires_grad_()
    recipe = recipes.Recipe(arch, 1.0, k, 0, 1 / 32, 1)
    sae = recipes.ARCHITECTURES[arch](4, 64, recipe, torch.Generator().manual_seed(0))
    z = recipe_activate(sae, pre)
    want = (saelens_topk if arch == "topk" else saelens_batchtopk)(pre.detach(), k)
    assert torch.equal(z.detach(), want)
    z.sum().backward()
    assert torch.equal(pre.grad, (want != 0).float())
    if arch == "batchtopk":
        sae.after_step(z.detach())
        positive = want[want > 0]
        smallest = positive.min().item() if len(positive) else 0.0
        assert sae.threshold.item() == pytest.approx(recipes.THRESHOLD_LR * smallest)


def test_topk_aux_loss_by_hand() -> None:
    """Dead latents (here latent 2 of 3, d = 2 so k_aux = 1) reconstruct the residual through
    their decoder rows at unit norm; weight aux_coefficient · min(n_dead / k_aux, 1)."""
    recipe = recipes.Recipe(
        "topk", l1=0.0, k=1, l1_warm_up_steps=0, aux_coefficient=0.5, dead_steps=1
    )
    sae = recipes.TopK(2, 3, recipe, torch.Generator().manual_seed(0))
    w_dec = np.array([[2.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    w_enc = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor(w_dec))
        sae.W_enc.copy_(torch.tensor(w_enc))
        sae.since_fired.copy_(torch.tensor([0, 0, 5]))  # latent 2 dead
    x = np.array([[1.0, 0.2], [0.1, 2.0]])
    norms = np.linalg.norm(w_dec, axis=1)
    pre = (x @ w_enc) * norms
    z = np.zeros_like(pre)
    for i, j in enumerate(pre.argmax(axis=1)):
        z[i, j] = max(pre[i, j], 0)
    x_hat = (z / norms) @ w_dec
    mse = ((x_hat - x) ** 2).sum(axis=1).mean()
    aux_acts = np.zeros_like(pre)
    aux_acts[:, 2] = pre[:, 2]
    recons = (aux_acts / norms) @ w_dec
    aux = ((recons - (x - x_hat)) ** 2).sum(axis=1).mean()
    loss, _ = recipe_loss(sae, torch.tensor(x, dtype=torch.float32))
    assert float(loss.detach()) == pytest.approx(mse + 0.5 * 1.0 * aux, rel=1e-6)


def test_under_topk_density_is_not_judged_and_the_report_says_why() -> None:
    """Density that rises with depth holds under the course's SAE; under topk, where it is
    k/latent by construction, the same rows leave it undefined with the reason, and the loss's
    U rule is judged as before."""
    from tasks.report import FIXED_DENSITY, judged
    from tasks.stats import claims_markdown

    depth = [0.0, 0.25, 0.5, 0.75, 1.0]
    loss = [5.0, 2.0, 1.0, 2.0, 5.0]
    rows = [
        {"model": "m", "rel_depth": x, "density_pct": 10.0 + i, "final_loss": loss[i]}
        for i, x in enumerate(depth)
    ]
    course, topk = judged(rows, "course"), judged(rows, "topk")
    assert course["m"]["density"]["holds"] is True and course["m"]["loss"]["holds"] is True
    assert topk["m"]["density"] == {
        "rho": None,
        "p": None,
        "slope": None,
        "r2": None,
        "holds": None,
        "undefined": FIXED_DENSITY["topk"],
    }
    assert topk["m"]["loss"] == course["m"]["loss"]
    text = "\n".join(claims_markdown(topk))
    assert "density rises with depth: **undefined (under --sae-arch topk every token" in text


def test_settings_its_sae_does_not_read_are_said_and_make_no_new_run(
    tmp_path: Path, tiny_model: Path, article_server: ArticleServer
) -> None:
    """--k and --aux-coefficient given to the standard SAE, which reads neither: the command
    says so in one line, and its run is the run without them, every task replayed into the same
    report, whose recorded config has the defaults."""
    import subprocess
    import sys

    from conftest import ROOT

    from tasks.cli import to_args

    base = quick_config(
        tiny_model, article_server, tmp_path, layers="0", epochs=2, sae_arch="standard"
    )
    first = laminar(base)
    given = base.model_copy(update={"k": 8, "aux_coefficient": 0.5})
    command = [sys.executable, str(ROOT / "flows" / "laminar.py"), *to_args(given)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        "laminar: --sae-arch standard does not read --k 8 or --aux-coefficient 0.5, so the run "
        "records them at their defaults (100, 1).\n" in out.stderr
    )
    assert f"laminar: report in {first['report']}; tasks {{'Cached': 7}}" in out.stderr
    recorded = (Path(first["report"]) / "report.md").read_text()
    assert '"k": 100,' in recorded and '"aux_coefficient": 1.0,' in recorded


# A value other than the default for each setting READ_BY names, and a base whose topk and
# batchtopk SAEs have dead latents within six steps (dead after 2 steps without firing; 4 tokens
# of k = 3 fire at most 12 of the 48 latents a step), so the aux loss's settings act
CHANGED = {"l1": 0.3, "topk_frac": 0.5, "k": 5, "l1_warm_up_steps": 3, "aux_coefficient": 0.25}
CHANGED |= {"dead_steps": 1}


def trained_state(cfg: Config) -> dict[str, torch.Tensor]:
    """Six Adam steps of cfg's architecture on 4 seeded tokens of width 16, 48 latents, from the
    recipe the flow builds from cfg (tasks.recipes.recipe_of)."""
    from tasks.recipes import recipe_of

    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)) + 0.3
    sae, opt = recipes.fresh(16, 48, recipe_of(cfg), seed=0, device="cpu", lr=1e-2)
    for _ in range(6):
        sae.step(x)
        opt.step()
    return {n: p.detach().clone() for n, p in sae.state_dict().items()}


@pytest.mark.parametrize("arch", list(recipes.ARCHITECTURES))
def test_each_architecture_reads_exactly_the_settings_read_by_names(arch: str) -> None:
    """Config.canonical drops what READ_BY says an SAE does not read: each such setting changed
    leaves the SAE bit-identical, and each it reads changes it (a setting missing from READ_BY
    would split one run in two; one wrongly in it would merge two different runs into one)."""
    from tasks.config import READ_BY

    base = Config(sae_arch=arch, k=3, dead_steps=2)
    before = trained_state(base)
    assert base.dead_steps < 6 and arch in {a for archs in READ_BY.values() for a in archs}
    for field, value in CHANGED.items():
        after = trained_state(base.model_copy(update={field: value}))
        same = all(torch.equal(before[n], after[n]) for n in before)
        assert same == (arch not in READ_BY[field]), (arch, field)


def test_the_course_reads_the_sae_settings_read_by_gives_it_and_no_other() -> None:
    """The course's SAE is trained from the "sae" settings alone (tasks/train.py gives it
    cfg.subset(*SAE_FIELDS, "precision")): READ_BY's settings for it are among them, its
    others are not."""
    from tasks.config import READ_BY, SAE_FIELDS

    read = {f for f, archs in READ_BY.items() if "course" in archs}
    assert read == {"l1", "topk_frac"} and read <= set(SAE_FIELDS)
    assert not (set(READ_BY) - read) & set(SAE_FIELDS)
