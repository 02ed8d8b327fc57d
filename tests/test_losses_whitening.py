"""Batch whitening and CORAL (docs/paper.md component 3): hand values, an independent Newton-Schulz reference, Gram vs
feature space, finite forward/backward for N in {2, D-1, D, D+1, 2D} incl. repeated eigenvalues, precision."""

from __future__ import annotations

import math
import time

import pytest
import torch

from e5omni.train.losses import BatchWhitening, batch_whiten, coral_loss, whitened_coral_loss, whitening_residual
from tests.linalg_reference import newton_schulz_inverse_sqrt


def reference_whitening(x: torch.Tensor, eps: float):
    """D-space ZCA: (mu, W) with W = (C + delta I)^(-1/2), C the unbiased covariance, delta = eps tr(C)."""
    mu = x.mean(0, keepdim=True)
    xc = x - mu
    cov = xc.T @ xc / (x.shape[0] - 1)
    delta = eps * cov.trace()
    return mu, newton_schulz_inverse_sqrt(cov + delta * torch.eye(x.shape[1], dtype=x.dtype))


def degenerate_inputs(n: int, dim: int) -> dict[str, torch.Tensor]:
    """Inputs whose covariance / Gram matrix has exactly repeated eigenvalues, the case stock eigh autograd fails."""
    gen = torch.Generator().manual_seed(n * 100 + dim)
    base = torch.randn(max(n // 2, 1), dim, generator=gen)
    duplicated = torch.cat([base, base])[:n] if n > 1 else base
    if duplicated.shape[0] < n:
        duplicated = torch.cat([duplicated, base[:1]])
    signs = torch.cat([torch.eye(dim), -torch.eye(dim)])  # covariance proportional to I: all eigenvalues equal
    symmetric = signs[torch.arange(n) % (2 * dim)]
    return {
        "random": torch.randn(n, dim, generator=gen),
        "duplicated_rows": duplicated,
        "equal_eigenvalues": symmetric,
        "unit_norm": torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=-1),
    }


# --------------------------------------------------------------------------------------------- hand values
def test_whitening_hand_value_feature_space():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])  # C = diag(2/3, 8/3), tr C = 10/3
    eps = 1e-4
    delta = eps * 10 / 3
    fit = BatchWhitening(x, eps)
    assert fit.space == "feature" and fit.jitter.item() == pytest.approx(delta)
    expected = torch.tensor(
        [
            [1 / math.sqrt(2 / 3 + delta), 0],
            [-1 / math.sqrt(2 / 3 + delta), 0],
            [0, 2 / math.sqrt(8 / 3 + delta)],
            [0, -2 / math.sqrt(8 / 3 + delta)],
        ]
    )
    torch.testing.assert_close(fit.whitened, expected)


def test_whitening_hand_value_gram_space():
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # centred rows +-(0.5, -0.5, 0): variance 1, tr C = 1
    eps = 1e-4
    fit = BatchWhitening(x, eps)
    assert fit.space == "gram"
    expected = torch.tensor([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0]]) / math.sqrt(1 + eps)
    torch.testing.assert_close(fit.whitened, expected)
    assert fit.residual() == pytest.approx(eps / (1 + eps), rel=1e-4)


def test_coral_hand_value():
    q_hat = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # C_q = [[2, 0], [0, 0]]
    p_hat = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # C_p = [[0, 0], [0, 2]]
    assert coral_loss(q_hat, p_hat).item() == pytest.approx(8 / (4 * 2**2))


# --------------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize(("n", "dim"), [(5, 12), (12, 5), (8, 8)])
def test_whitened_rows_are_zero_mean_and_white_on_their_span(n, dim):
    x = torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    # Tiny jitter: the null direction of the centred Gram then amplifies rounding by delta^-1/2 ~ 1e5.
    x_hat = batch_whiten(x, eps=1e-11)
    torch.testing.assert_close(x_hat.mean(0), torch.zeros(dim, dtype=torch.float64), atol=1e-9, rtol=0)
    xc = x - x.mean(0)
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    span = vh[s > 1e-9 * s.max()]
    projector = span.T @ span  # (D, D) onto the rows' span
    torch.testing.assert_close(x_hat.T @ x_hat / (n - 1), projector, atol=1e-7, rtol=0)


@pytest.mark.parametrize(("n", "dim"), [(6, 10), (10, 4), (7, 7)])
def test_whitening_matches_the_newton_schulz_reference(n, dim):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, dim, dtype=torch.float64, generator=gen).requires_grad_()
    y = torch.randn(3, dim, dtype=torch.float64, generator=gen).requires_grad_()
    weights = torch.randn(n + 3, dim, dtype=torch.float64, generator=gen)
    eps = 1e-2
    fit = BatchWhitening(x, eps, out_of_sample=True)
    mine = torch.cat([fit.whitened, fit.transform(y)])
    (mine * weights).sum().backward()
    grads = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None
    mu, w = reference_whitening(x, eps)
    ref = torch.cat([(x - mu) @ w, (y - mu) @ w])
    (ref * weights).sum().backward()
    torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads[0], x.grad, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(grads[1], y.grad, rtol=1e-7, atol=1e-8)
    # Out-of-sample transform of the fitted rows is the fitted whitening itself.
    torch.testing.assert_close(fit.transform(x), fit.whitened, rtol=1e-9, atol=1e-9)


def test_gradcheck_with_repeated_eigenvalues():
    eps = 0.05
    pair = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    for x in (
        torch.cat([torch.eye(3), -torch.eye(3)]),  # feature space, covariance ~ I: all eigenvalues equal
        torch.cat([pair, pair]),  # Gram space, rank 1: three equal (zero) eigenvalues
        torch.randn(4, 6),  # Gram space, generic
    ):
        x = x.double().requires_grad_()
        assert torch.autograd.gradcheck(lambda v: batch_whiten(v, eps), (x,))
    y = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: BatchWhitening(a, eps, out_of_sample=True).transform(b), (x, y))


def test_stock_eigh_autograd_fails_where_ours_does_not():
    """The control: naive eigh-based whitening gives NaN gradients on equal eigenvalues."""
    dim = 4
    x = torch.cat([torch.eye(dim), -torch.eye(dim)]).requires_grad_()
    xc = x - x.mean(0)
    lam, basis = torch.linalg.eigh(xc.T @ xc / (2 * dim - 1) + 1e-4 * torch.eye(dim))
    weights = torch.randn(2 * dim, dim, generator=torch.Generator().manual_seed(0))
    ((xc @ basis @ torch.diag(lam.rsqrt()) @ basis.T) * weights).sum().backward()
    assert not torch.isfinite(x.grad).all()
    x.grad = None
    (batch_whiten(x, 1e-4) * weights).sum().backward()
    assert torch.isfinite(x.grad).all()
    # Here C = 2/7 I (tr C = 8/7) and W = (2/7 + 1e-4 * 8/7)^(-1/2) I exactly.
    variance = 2 / (2 * dim - 1)
    scale = (variance + 1e-4 * dim * variance) ** -0.5
    expected_forward = (x - x.mean(0)).detach() * scale
    torch.testing.assert_close(batch_whiten(x.detach(), 1e-4), expected_forward)


DIM = 8


@pytest.mark.parametrize("n", [2, DIM - 1, DIM, DIM + 1, 2 * DIM])
@pytest.mark.parametrize("kind", ["random", "duplicated_rows", "equal_eigenvalues", "unit_norm"])
@pytest.mark.parametrize("precision", ["fp32", "bf16_autocast"])
def test_whitening_and_coral_are_finite_in_forward_and_backward(n, kind, precision):
    x = degenerate_inputs(n, DIM)[kind].clone()
    if precision == "bf16_autocast":
        x = x.bfloat16()
    x.requires_grad_()
    weights = torch.randn(n, DIM, generator=torch.Generator().manual_seed(1))
    context = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16_autocast"
        else torch.autocast("cpu", enabled=False)
    )
    with context:
        fit = BatchWhitening(x, 1e-4, out_of_sample=True)
        out = fit.whitened
        extra = fit.transform(x[:1])
        loss = (out.float() * weights).sum() + extra.sum()
        if n >= 4:  # CORAL needs 2 rows per side
            half = n // 2
            loss = (
                loss
                + coral_loss(out[:half], out[half : 2 * half])
                + whitened_coral_loss(x[:half], x[half : 2 * half])[0]
            )
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad.float()).all()
    assert 0.0 <= fit.residual() <= 1.0


def test_bf16_autocast_whitening_runs_in_fp32():
    x = torch.nn.functional.normalize(torch.randn(12, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    reference = batch_whiten(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ x.T).dtype == torch.bfloat16  # autocast is really on
        got = batch_whiten(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- CORAL
@pytest.mark.parametrize(("nq", "np_", "dim"), [(3, 4, 10), (6, 5, 4)])
def test_coral_gram_and_covariance_forms_agree(nq, np_, dim):
    gen = torch.Generator().manual_seed(nq)
    q = torch.randn(nq, dim, dtype=torch.float64, generator=gen)
    p = torch.randn(np_, dim, dtype=torch.float64, generator=gen) * 2
    expected = (torch.cov(q.T) - torch.cov(p.T)).pow(2).sum() / (4 * dim**2)
    torch.testing.assert_close(coral_loss(q, p), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize(("nq", "dim"), [(4, 12), (6, 5), (5, 10)])
def test_whitened_coral_equals_coral_of_the_whitened_batch(nq, dim):
    gen = torch.Generator().manual_seed(dim)
    q = torch.randn(nq, dim, dtype=torch.float64, generator=gen).requires_grad_()
    p = (
        torch.randn(nq, dim, dtype=torch.float64, generator=gen) * torch.linspace(0.5, 2, dim, dtype=torch.float64)
    ).requires_grad_()
    eps = 1e-3
    fast, stats = whitened_coral_loss(q, p, eps)
    stats_matrix = stats.matrix
    fast.backward()
    grads = q.grad.clone(), p.grad.clone()
    q.grad = p.grad = None
    mu, w = reference_whitening(torch.cat([q, p]), eps)
    reference = coral_loss((q - mu) @ w, (p - mu) @ w)
    reference.backward()
    torch.testing.assert_close(fast, reference, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(grads[0], q.grad, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(grads[1], p.grad, rtol=1e-7, atol=1e-12)
    # The statistics returned for the diagnostic have the batch covariance's spectrum.
    x = torch.cat([q, p]).detach()
    top = torch.linalg.eigvalsh(torch.cov(x.T))[-3:]
    torch.testing.assert_close(torch.linalg.eigvalsh(stats_matrix)[-3:], top, rtol=1e-8, atol=1e-12)
    assert stats.jitter.item() == pytest.approx(eps * torch.cov(x.T).trace().item())


def test_shared_qp_block_gives_the_same_coral():
    q, p = torch.randn(5, 16, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    plain, _ = whitened_coral_loss(q, p, 1e-3)
    shared, _ = whitened_coral_loss(q, p, 1e-3, qp_gram=q @ p.T)
    torch.testing.assert_close(plain, shared)


def test_coral_needs_two_rows_per_side():
    with pytest.raises(ValueError, match="at least 2 rows"):
        coral_loss(torch.randn(1, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        batch_whiten(torch.randn(1, 4))
    with pytest.raises(ValueError, match="eps"):
        batch_whiten(torch.randn(3, 4), eps=0.0)


def test_non_finite_embeddings_give_a_clear_error():
    q = torch.randn(3, 8)
    q[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not positive definite"):
        whitened_coral_loss(q, torch.randn(3, 8))


# --------------------------------------------------------------------------------------------- residual, cost
def test_residual_matches_a_direct_measurement():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, dtype=torch.float64, generator=gen) * torch.tensor(
        [3.0, 1.0, 0.3, 0.1, 0.03, 0.01], dtype=torch.float64
    )
    eps = 1e-3
    fit = BatchWhitening(x, eps)
    x_hat = fit.whitened
    cov = x_hat.T @ x_hat / (x.shape[0] - 1)
    _, s, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    span = vh[s > 1e-9 * s.max()]
    projector = span.T @ span
    measured = ((cov - projector).norm() / projector.norm()).item()
    assert fit.residual() == pytest.approx(measured, rel=1e-6)
    cov = torch.cov(x.T)
    assert whitening_residual(torch.linalg.eigvalsh(cov), eps * cov.trace()) == pytest.approx(measured, rel=1e-6)
    assert 0.1 < measured < 1  # the smallest directions (variance ~1e-4) are visibly under-whitened at eps=1e-3


def test_gram_space_never_forms_the_d_by_d_covariance():
    # D = 200k: a D x D fp32 matrix would be 160 GB. In the Gram space this is a 6 x 6 problem. Not normalised
    # (tr C = 2e5): the relative jitter keeps the fp32 Cholesky well conditioned at any scale.
    x = torch.randn(6, 200_000, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    fit = BatchWhitening(x.requires_grad_(), 1e-4)
    fit.whitened.sum().backward()
    loss, stats = whitened_coral_loss(x[:3], x[3:])
    loss.backward()
    assert fit.space == "gram" and stats.matrix.shape == (6, 6)
    assert time.perf_counter() - start < 10


def test_collapsed_batch_stays_finite_in_fp32():
    """A diverged run's batch: unit rows that differ only at the fp32 rounding level (seen at lr 5e-3 in training)."""
    from e5omni.train.losses.functional import whitened_coral_loss

    torch.manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(1, 64), dim=-1)
    for rows in (16, 128):  # Gram space (n <= D) and feature space (n > D)
        noise = 1e-7 * torch.randn(rows, 64)
        x = torch.nn.functional.normalize(base + noise, dim=-1).requires_grad_(True)
        q, p = x[: rows // 2], x[rows // 2 :]
        loss, _ = whitened_coral_loss(q, p, eps=1e-4)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
