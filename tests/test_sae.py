"""The SAE: metrics on a case checked by hand, and training identical to the course's loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import reference
import torch

from tasks.config import SAE_FIELDS, Config
from tasks.precision import matmul_precision
from tasks.sae import course, fit, kernels


def hand_sae() -> course.TiedSAE:
    model = course.TiedSAE(2, 4, k=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    return model


def test_metrics_by_hand() -> None:
    # Token 1: x W^T = [2, 1, -2, -1] -> ReLU [2, 1, 0, 0] -> top-1 [2, 0, 0, 0] -> x̂ = [2, 0].
    # Token 2: [0, -3, 0, 3] -> [0, 0, 0, 3] -> x̂ = [0, -3].  Squared errors 0, 1, 0, 0.
    x = torch.tensor([[2.0, 1.0], [0.0, -3.0]])
    m = reference.metrics(hand_sae(), x)
    assert m["final_mse"] == pytest.approx(0.25)
    assert m["density_pct"] == pytest.approx(25.0)  # 2 of 8 latent entries
    assert m["l0"] == pytest.approx(1.0)
    assert m["dead_pct"] == pytest.approx(50.0)  # latents 1 and 2 never fire
    assert m["fvu"] == pytest.approx(0.25 / 2.5)  # var about mean [1, -1]: (1+4+1+4)/4
    # freq [.5, 0, 0, .5] -> [1, 0, 0, 1]; magnitude [2, 0, 0, 3] -> [2/3, 0, 0, 1].
    assert m["density_activation"] == pytest.approx((2 / 3 + 1) / 4)


def test_loss_by_hand() -> None:
    x = torch.tensor([[2.0, 1.0], [0.0, -3.0]])
    x_hat, z = hand_sae()(x)
    assert reference.sae_loss(x, x_hat, z, l1=1.0).item() == pytest.approx(0.25 + 5 / 8)


def test_topk_keeps_ties_and_zero_disables() -> None:
    model = hand_sae()
    model.k = 2
    z = model.encode(torch.tensor([[1.0, 1.0]]))  # ReLU [1, 1, 0, 0]: both tie at the 2nd
    assert z.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    model.k = 0
    assert model.encode(torch.tensor([[3.0, -1.0]])).tolist() == [[3.0, 0.0, 0.0, 1.0]]


@pytest.mark.parametrize("latent", [6, 512, 1536, 6144, 10240])
def test_k_is_the_course_third(latent: int) -> None:
    assert kernels.topk_k(latent, 1 / 3) == latent // 3


class CourseSAE(torch.nn.Module):
    """The course's SAE, written the straightforward way."""

    def __init__(self, d: int, m: int):
        super().__init__()
        self.encoder = torch.nn.Linear(d, m, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.relu(self.encoder(x))
        kth = torch.topk(z, z.shape[1] // 3, dim=1).values[:, -1:]
        z = torch.where(z >= kth, z, torch.zeros_like(z))
        return z @ self.encoder.weight, z


def test_training_matches_the_course_loop() -> None:
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    ours = fit.train(x, expansion=2, topk_frac=1 / 3, epochs=20, lr=1e-2, l1=1.0, seed=3)
    ref = CourseSAE(16, 32)
    with torch.no_grad():
        fresh = course.TiedSAE(16, 32, 10, torch.Generator().manual_seed(3))
        ref.encoder.weight.copy_(fresh.weight)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    ref_losses = []
    for _ in range(20):
        x_hat, z = ref(x)
        loss = torch.nn.functional.mse_loss(x_hat, x) + z.abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref_losses.append(loss.item())
    assert ours.losses == pytest.approx(ref_losses, rel=1e-5)
    assert ours.losses[-1] < ours.losses[0]
    with torch.no_grad():
        assert (ref(x)[1] != 0).float().mean().item() * 100 == pytest.approx(
            reference.metrics(ours.sae, x)["density_pct"], rel=1e-6
        )


def test_same_seed_same_sae() -> None:
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    a = fit.train(x, expansion=2, topk_frac=1 / 3, epochs=3, lr=1e-3, l1=1.0, seed=4)
    b = fit.train(x, expansion=2, topk_frac=1 / 3, epochs=3, lr=1e-3, l1=1.0, seed=4)
    c = fit.train(x, expansion=2, topk_frac=1 / 3, epochs=3, lr=1e-3, l1=1.0, seed=5)
    assert torch.equal(a.sae.weight, b.sae.weight) and not torch.equal(a.sae.weight, c.sae.weight)


@pytest.mark.parametrize("k", [0, 5, 32])
def test_hand_gradient_equals_autograd(k: int) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 16, generator=g)
    model = course.TiedSAE(16, 32, k, g)
    loss = course.loss_and_grad(model, x, l1=0.7)
    hand = model.weight.grad.clone()
    model.weight.grad = None
    ref = reference.autograd_loss(model, x, l1=0.7)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(hand, model.weight.grad, rtol=1e-5, atol=1e-7)


def test_saved_sae_reads_back_in_saelens_terms(tmp_path: Path) -> None:
    """The files `save` writes, read the way SAELens's TopK SAE reads them: encode is
    topk(x W_enc + b_enc) then ReLU on the kept values, decode z W_dec + b_dec. On data without
    ties at the k-th value (SAELens keeps exactly k, laminar every entry equal to the k-th)
    that gives laminar's latents and reconstruction."""
    from safetensors.torch import load_file

    from tasks.sae.files import CFG_FILE, WEIGHTS_FILE, load, save

    gen = torch.Generator().manual_seed(3)
    model = course.TiedSAE(8, 16, 5, gen)
    save(model, tmp_path / "sae", "blocks.2.mlp.hook_pre", "gpt2", {"layer": 2})
    cfg = json.loads((tmp_path / "sae" / CFG_FILE).read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("topk", 8, 16, 5)
    assert cfg["metadata"] == {
        "model_name": "gpt2",
        "hook_name": "blocks.2.mlp.hook_pre",
        "hook_head_index": None,
    }
    assert cfg["apply_b_dec_to_input"] is False and cfg["laminar"] == {"layer": 2}
    w = load_file(tmp_path / "sae" / WEIGHTS_FILE)
    assert w["W_enc"].shape == (8, 16) and w["W_dec"].shape == (16, 8)
    assert not w["b_enc"].any() and not w["b_dec"].any()

    x = torch.randn(50, 8, generator=gen)
    pre = x @ w["W_enc"] + w["b_enc"]
    top = pre.topk(cfg["k"], dim=-1)
    z = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
    x_hat, z_ours = model(x)
    assert torch.equal(z != 0, z_ours != 0)
    torch.testing.assert_close(z, z_ours, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z @ w["W_dec"] + w["b_dec"], x_hat, rtol=1e-5, atol=1e-6)
    assert torch.equal(load(tmp_path / "sae").weight, model.weight)


def test_bf16_training_stays_within_one_bf16_rounding_of_fp32() -> None:
    """bf16 operands round each matmul output to 8 significant bits: a relative error of at most
    2^-9 (about 2e-3) per element, and much less in a mean over many. So the tolerance: every
    epoch's loss, and the fp32-evaluated metrics of the trained SAE, within 2^-9 of fp32's (the
    measured worst here is about 2e-4), the same top-k density, and a curve that falls wherever
    fp32's falls."""
    rng = np.random.default_rng(2026)
    x = rng.standard_normal((1023, 128)) * rng.uniform(0.2, 2.0, 128) + rng.standard_normal(128)
    x = torch.from_numpy(x.astype(np.float32))
    settings = Config().subset(*SAE_FIELDS)  # the course's: 75 epochs, lr 1e-4, k = m/3
    fp32 = fit.train(x, **settings, seed=0)
    bf16 = fit.train(x, **settings, seed=0, precision="bf16")
    assert bf16.losses == pytest.approx(fp32.losses, rel=2**-9)
    # bf16 really ran: a difference of zero would pass every tolerance above
    assert not torch.equal(bf16.sae.weight, fp32.sae.weight) and bf16.losses != fp32.losses
    falls = np.diff(fp32.losses) < 0
    assert falls.all() and (np.diff(bf16.losses) < 0).all()
    want, got = reference.metrics(fp32.sae, x), reference.metrics(bf16.sae, x)
    for key in ("final_mse", "fvu", "l0"):
        assert got[key] == pytest.approx(want[key], rel=2**-9), key
    # density_activation scales by the most and least active latents (min-max), so one extreme
    # latent's small shift moves it more: 0.5% measured here
    assert got["density_activation"] == pytest.approx(want["density_activation"], rel=2e-2)
    assert got["density_pct"] == want["density_pct"] and got["dead_pct"] == want["dead_pct"]
    assert bf16.sae.weight.dtype == torch.float32  # weights, gradient and Adam stay fp32


def test_the_step_reuses_its_buffers_for_every_batch_size() -> None:
    """After the first step no buffer is made again, for the same batch or a smaller one (the
    last minibatch), and each step is still autograd's; the buffers are z, the mask and dL/dz
    (N, m), x̂ - x and its square (N, d), and the gradient (m, d): top-k's values and indices
    live inside dL/dz's buffer."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 16, generator=g)
    x[:3] = 0  # rows whose latents are all 0: the k-th largest is 0, nothing is kept
    model = course.TiedSAE(16, 48, 16, g)
    ws = course.Workspace()
    course.loss_and_grad(model, x, 1.0, ws)
    made = {name: (buf.data_ptr(), buf.numel()) for name, buf in reference.buffers(ws).items()}
    assert sum(size for _, size in made.values()) == 4 * (3 * 200 * 48 + 2 * 200 * 16 + 48 * 16)
    for batch in (x, x[:77]):
        loss = course.loss_and_grad(model, batch, 1.0, ws)
        hand = model.weight.grad.clone()
        assert {n: (b.data_ptr(), b.numel()) for n, b in reference.buffers(ws).items()} == made
        model.weight.grad = None
        ref = reference.autograd_loss(model, batch, l1=1.0)
        ref.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
        assert torch.allclose(hand, model.weight.grad, rtol=1e-5, atol=1e-7)


def topk_threshold(z: torch.Tensor, k: int) -> torch.Tensor:
    """The keep threshold the straightforward way: the k-th largest ReLU'd value by torch.topk,
    at least the smallest float > 0."""
    relu = z.clamp(min=0)
    kth = torch.topk(relu, k, dim=1).values[:, -1:] if 0 < k < z.shape[1] else relu[:, :1] * 0
    return kth.clamp(min=kernels.tiny(z.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_the_selection_keeps_what_topk_keeps(dtype: torch.dtype) -> None:
    """The threshold from the rows' bits (numpy's partition, rows split among threads) is the
    one torch.topk gives on the ReLU'd rows: negative rows, -0.0, ties at the k-th value, rows
    with fewer than k positives, a single row and rows too many for one thread's share."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(300, 96, generator=g).to(dtype)
    z[0] = -torch.rand(96, generator=g).to(dtype)  # no positive latent
    z[1] = 0.5  # every latent ties
    z[2, :50] = -0.0
    z[3] = torch.randint(-3, 4, (96,), generator=g).to(dtype)  # many ties
    z[4, :10] = 1e-40 if dtype == torch.float32 else 1e-39  # subnormal positives
    for k in (0, 1, 5, 32, 95, 96):
        for rows in (z, z[:1], z[:130]):
            got = kernels.threshold(rows, k, course.Workspace())
            assert got.dtype == dtype and torch.equal(got, topk_threshold(rows, k)), (k, len(rows))
            mask = kernels.keep_mask(rows.clone(), k, course.Workspace())
            assert torch.equal(mask != 0, rows >= got)
            kept = kernels.masked(rows.clone(), mask)
            assert torch.equal(kept, torch.where(rows >= got, rows, 0).to(dtype))


def topk_step(model: course.TiedSAE, x: torch.Tensor, l1: float) -> torch.Tensor:
    """The fp32 step as laminar computed it with torch.topk on the ReLU'd latents and a 0/1
    float mask: the reference the faster selection must match bit for bit."""
    w = model.weight.detach()
    n, d = x.shape
    z = torch.mm(x, w.t()).clamp_(min=0)
    mask = torch.ge(z, topk_threshold(z, model.k)).to(z.dtype)
    z.mul_(mask)
    err = torch.mm(z, w).sub_(x)
    loss = torch.pow(err, 2).mean() + l1 * z.mean()
    g_err = err.mul_(2.0 / (n * d))
    g_z = torch.mm(g_err, w.t()).add_(l1 / z.numel()).mul_(mask)
    model.weight.grad = torch.mm(g_z.t(), x).addmm_(z.t(), g_err)
    return loss


@pytest.mark.parametrize("k", [0, 16, 48])
def test_fp32_training_is_bit_for_bit_the_topk_step(k: int) -> None:
    """Ten Adam steps of laminar's fp32 step and of the topk reference from the same SAE, on
    rows with ties and all-zero rows, in full batch and in a smaller batch: the same weights
    and losses to the last bit."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(200, 16, generator=g)
    x[:3] = 0
    x[3:6] = x[6]  # repeated rows
    for batch in (x, x[:77]):
        ours = course.TiedSAE(16, 48, k, torch.Generator().manual_seed(1))
        ref = course.TiedSAE(16, 48, k, torch.Generator().manual_seed(1))
        opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (ours, ref)]
        ws = course.Workspace()
        for _ in range(10):
            with torch.no_grad():
                assert (
                    course.loss_and_grad(ours, batch, 1.0, ws).item()
                    == topk_step(ref, batch, 1.0).item()
                )
            for opt in opts:
                opt.step()
        assert torch.equal(ours.weight, ref.weight)


def test_tf32_stays_in_the_block_that_asked_for_it() -> None:
    """torch's float32 matmul precision is process-wide: while a TF32 block runs in one thread,
    a block that wants exact matmuls in another (an extraction) waits, and sees 'highest' when
    it runs; two TF32 blocks run together; a block cannot ask for the other setting inside."""
    import threading

    started, release = threading.Event(), threading.Event()
    seen: list[tuple[str, str]] = []

    def block(precision: str, hold: bool) -> None:
        with matmul_precision(precision):
            seen.append((precision, torch.get_float32_matmul_precision()))
            if hold:
                started.set()
                release.wait(10)

    tf32 = threading.Thread(target=block, args=("tf32", True))
    tf32.start()
    assert started.wait(10)
    exact = threading.Thread(target=block, args=("fp32", False))
    exact.start()
    other_tf32 = threading.Thread(target=block, args=("tf32", False))
    other_tf32.start()
    other_tf32.join(10)
    exact.join(0.5)
    assert exact.is_alive() and seen == [("tf32", "high"), ("tf32", "high")]
    release.set()
    tf32.join(10)
    exact.join(10)
    assert seen[2] == ("fp32", "highest")
    assert torch.get_float32_matmul_precision() == "highest"
    with (
        matmul_precision("tf32"),
        pytest.raises(RuntimeError, match="asked inside"),
        matmul_precision("fp32"),
    ):
        pass
    assert torch.get_float32_matmul_precision() == "highest"
