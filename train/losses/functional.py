"""Functional core of the e5-omni alignment losses (the paper's components 1-3, docs/losses.md).

Every function takes embeddings / logits, never raw inputs, so each piece is unit-tested on hand-computed values and
the modules in :mod:`e5omni.train.losses.e5omni` stay thin. Conventions (the docs and external checks rely on them):

- B queries (rows), N candidates (columns), D embedding dimension, M = 4 modalities in the order
  text, image, audio, video (:data:`MODALITIES`);
- modality masks are bool ``(B, M)`` / ``(N, M)``; ``log_temperature`` is ``(M,)`` holding log(tau);
- the positive of row i sits in column ``positive_index[i]``;
- all math runs in fp32 (fp64 inputs stay fp64, which the gradient checks use); bf16/fp16 inputs are promoted, and
  :func:`fp32_math` switches autocast off around the callers' matmuls.

Paper symbols next to code names: tau (``log_temperature.exp()``), rho_t (:func:`curriculum_rho`), Omega_i
(``keep_mask`` row i), gamma_plus (``gamma_plus``), W (:class:`BatchWhitening`), lambda_coral (in the module).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

from modeling_e5omni.configuration_e5omni import MODALITIES  # the one definition (order of log_temperature)
from modeling_e5omni.modeling_e5omni import instance_temperature, pair_temperature  # component 1: one definition

__all__ = [
    "MODALITIES",
    "BatchWhitening",
    "WhiteningStatistics",
    "batch_whiten",
    "coral_loss",
    "curriculum_rho",
    "debiased_contrastive_loss",
    "fp32_math",
    "hard_negative_mask",
    "info_nce_loss",
    "instance_temperature",
    "pair_temperature",
    "whitened_coral_loss",
    "whitening_jitter",
    "whitening_residual",
]


# ----------------------------------------------------------------------------------------------------------- precision
def _fp32(tensor: Tensor) -> Tensor:
    """Promote half precision to fp32; fp32 and fp64 pass unchanged (fp64 is what the gradient checks use)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


@contextmanager
def fp32_math(device: torch.device | str) -> Iterator[None]:
    """Switch autocast off on ``device`` so matmuls, eigh, Cholesky and softmax run in the inputs' (fp32) dtype.

    Under ``torch.autocast(dtype=torch.bfloat16)`` a plain ``q @ k.T`` runs in bf16 (8 mantissa bits): far too coarse
    for logits scaled by 1/tau = 50 and for a whitening transform. Callers cast their inputs with ``.float()`` first.
    """
    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, enabled=False):
        yield


# --------------------------------------------------------------------------------- component 1: temperature calibration
def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"Tensor(dtype={value.dtype}, shape={tuple(value.shape)})"
    return type(value).__name__


# ------------------------------------------------------------------------- component 2: curriculum + debiased loss
def curriculum_rho(step: int, *, rho_init: float, rho_final: float, warmup_steps: int, total_steps: int) -> float:
    """The masked fraction rho_t of each row's negatives at global step ``step``.

    rho_t = rho_init for t < warmup_steps (t0 in the paper), then rises linearly to rho_final, reached at
    ``total_steps`` and held after it. A pure function of the step, so a resumed run reproduces the schedule exactly.
    When ``total_steps <= warmup_steps`` there is no ramp: rho_init before warmup_steps, rho_final from it on.
    """
    for name, value in (("step", step), ("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    for name, value in (("rho_init", rho_init), ("rho_final", rho_final)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if step < warmup_steps:
        return float(rho_init)
    if total_steps <= warmup_steps:
        return float(rho_final)
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return float(rho_init + (rho_final - rho_init) * progress)


def _keep_counts(num_negatives: Tensor, rho: float) -> Tensor:
    """k_i = ceil((1 - rho) * n_i), computed in fp64 with a 1e-12 relative guard so (1 - 0.3) * 10 gives 7, not 8."""
    keep = (1.0 - rho) * num_negatives.double() * (1.0 - 1e-12)
    return torch.ceil(keep).long().clamp_(min=0)


def hard_negative_mask(
    logits: Tensor, positive_index: Tensor, rho: float, *, candidate_mask: Tensor | None = None
) -> Tensor:
    """The curriculum mask: row i keeps its k_i = ceil((1 - rho) * n_i) hardest negatives (largest logits).

    n_i is the number of valid negatives of row i: every column except the positive, restricted to
    ``candidate_mask`` when given (e.g. duplicates removed). The positive is never True.

    Tie rule: negatives with equal logits are ranked by column index, the lower index first, so exactly k_i are
    kept. Column order is the gathered (rank-major) order, identical on every process and in a single-process run
    over the union batch. The selection is not differentiable and runs on detached logits.

    Args:
        logits: ``(B, N)`` temperature-scaled logits S_ij.
        positive_index: ``(B,)`` column of each row's positive.
        rho: fraction of each row's negatives to mask out, in [0, 1].
        candidate_mask: optional ``(B, N)`` bool, True where column j may be a negative of row i.

    Returns:
        ``(B, N)`` bool, True for the kept negatives Omega_i.
    """
    if not 0.0 <= float(rho) <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho!r}")
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, N), got {tuple(logits.shape)}")
    num_rows, num_cols = logits.shape
    with torch.no_grad():
        rows = torch.arange(num_rows, device=logits.device)
        valid = torch.ones_like(logits, dtype=torch.bool) if candidate_mask is None else candidate_mask.clone()
        valid[rows, positive_index] = False  # (B, N)
        keep_count = _keep_counts(valid.sum(dim=1), float(rho))  # (B,) k_i
        if num_cols == 0 or not bool((keep_count > 0).any()):
            return torch.zeros_like(valid)
        finite = torch.finfo(logits.dtype)
        score = logits.detach().nan_to_num(nan=finite.min, posinf=finite.max, neginf=finite.min)
        # Invalid entries become +inf so that the k-th largest valid value is the (n_i - k_i + 1)-th smallest overall.
        score = score.masked_fill(~valid, math.inf)  # (B, N)
        rank_from_bottom = (valid.sum(dim=1) - keep_count + 1).clamp_(min=1)  # (B,)
        threshold = torch.full((num_rows,), math.inf, dtype=score.dtype, device=score.device)  # (B,)
        # kthvalue takes one k for all rows; rows sharing a k (usually all of them) go in one call.
        for k in rank_from_bottom[keep_count > 0].unique().tolist():
            selected = ((rank_from_bottom == k) & (keep_count > 0)).nonzero().flatten()
            threshold[selected] = torch.kthvalue(score[selected], int(k), dim=1).values
        above = valid & (score > threshold[:, None])  # (B, N) strictly harder than the k-th
        ties = valid & (score == threshold[:, None])  # (B, N) equal to the k-th: lowest column index first
        room = keep_count - above.sum(dim=1)  # (B,) how many ties still fit
        keep = above | (ties & (ties.cumsum(dim=1) <= room[:, None]))
    return keep


def _log_negative_ratio(logits: Tensor, positive_index: Tensor, keep_mask: Tensor) -> tuple[Tensor, Tensor]:
    """r_i = log sum_{j in Omega_i} exp(S_ij - S_ii); -inf for a row that keeps no negative. Returns (r, S_ii)."""
    num_rows = logits.shape[0]
    rows = torch.arange(num_rows, device=logits.device)
    positive = logits[rows, positive_index]  # (B,) S_ii
    keep = keep_mask.clone()
    keep[rows, positive_index] = False  # the positive is never its own negative
    has_negative = keep.any(dim=1)  # (B,)
    masked = logits.masked_fill(~keep, -math.inf)  # (B, N)
    # A row of only -inf gives NaN gradients in logsumexp: feed such rows zeros and drop the result below.
    masked = torch.where(has_negative[:, None], masked, torch.zeros_like(masked))
    log_sum = torch.logsumexp(masked, dim=1)  # (B,)
    log_sum = torch.where(has_negative, log_sum, torch.full_like(log_sum, -math.inf))
    return log_sum - positive, positive


def debiased_contrastive_loss(
    logits: Tensor, positive_index: Tensor, keep_mask: Tensor, gamma_plus: float = 0.1, eps: float = 1e-6
) -> Tensor:
    """Debiased contrastive loss (Chuang et al. 2020, as written in the e5-omni paper), mean over rows.

        L_DCL = -(1/B) sum_i log( exp(S_ii) / (exp(S_ii) + N_i) ),
        N_i   = max( sum_{j in Omega_i} exp(S_ij) - gamma_plus * exp(S_ii),  eps * exp(S_ii) ).

    Floor scaling: the paper's floor eps is applied relative to exp(S_ii). Dividing through by exp(S_ii),
    each row is l_i = log(1 + max(exp(r_i) - gamma_plus, eps)) with r_i = log sum_{Omega_i} exp(S_ij - S_ii), so the
    loss depends only on logit differences (adding a constant to a row changes nothing, as for InfoNCE) and an
    absolute eps would be meaningless at logits of 1/tau = 50. Computed in log space: above the floor,
    l_i = logaddexp(log(1 - gamma_plus), r_i), whose gradient exp(r_i) / (1 - gamma_plus + exp(r_i)) is bounded; at
    the floor l_i = log(1 + eps), a constant. A row that keeps no negative (r_i = -inf) sits at the floor: finite,
    zero gradient. gamma_plus = 0 and eps -> 0 give InfoNCE.

    Args:
        logits: ``(B, N)`` S_ij.
        positive_index: ``(B,)`` column of each row's positive.
        keep_mask: ``(B, N)`` bool Omega_i; its positive column is ignored.
        gamma_plus: debiasing weight in [0, 1) (paper: 0.1, robust in [0.1, 0.2]).
        eps: floor, relative to exp(S_ii), > 0.
    """
    if not 0.0 <= gamma_plus < 1.0:
        raise ValueError(f"gamma_plus must be in [0, 1), got {gamma_plus!r}")
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    log_ratio, _ = _log_negative_ratio(logits, positive_index, keep_mask)  # (B,) r_i
    body = torch.logaddexp(torch.full_like(log_ratio, math.log1p(-gamma_plus)), log_ratio)  # log(1 - g + e^r)
    floor = torch.full_like(log_ratio, math.log1p(eps))  # log(1 + eps)
    per_row = torch.where(log_ratio > math.log(gamma_plus + eps), body, floor)  # (B,)
    return per_row.mean()


def info_nce_loss(logits: Tensor, positive_index: Tensor, keep_mask: Tensor | None = None) -> Tensor:
    """InfoNCE: -(1/B) sum_i log( exp(S_ii) / (exp(S_ii) + sum_{j in Omega_i} exp(S_ij)) ).

    ``keep_mask=None`` uses every other column (plain cross-entropy over the row). Rows without negatives give 0.
    """
    if keep_mask is None:
        keep_mask = torch.ones_like(logits, dtype=torch.bool)
    log_ratio, _ = _log_negative_ratio(logits, positive_index, keep_mask)  # (B,)
    return torch.nn.functional.softplus(log_ratio).mean()  # log(1 + e^r); softplus(-inf) = 0


# ---------------------------------------------------------------------------- component 3: whitening + CORAL
#: Smallest total variance the jitter is scaled by, relative to the rows' mean squared norm (see whitening_jitter).
COLLAPSE_FLOOR = 1e-2


def whitening_jitter(trace: Tensor, eps: float, second_moment: Tensor | None = None) -> Tensor:
    """The diagonal jitter delta = eps * max(tr(C), COLLAPSE_FLOOR * E||x||^2), or eps when the batch has no scale.

    Relative to the total variance tr(C) so that cond(C + delta I) <= 1 + 1/eps whatever the scale of the inputs (fp32
    factorisations stay accurate: 1e4 for eps = 1e-4) and the whitening is scale-invariant. For unit-norm embeddings
    tr(C) = 1 - ||mu||^2 <= 1. delta is part of the function: gradients flow through it.

    The floor matters when a batch collapses (a diverging run, or every row nearly the same item): tr(C) then falls
    to the fp32 rounding level of centring rows of norm ~1 (measured here: Cholesky failed on finite, collapsed
    embeddings at step 8 of a run at lr 5e-3), and a jitter relative to tr(C) alone is smaller than the rounding
    error. Flooring at a fraction of the rows' raw second moment E||x||^2 keeps the factorisation well posed and only
    acts on batches whose variance is under 1% of their scale.
    """
    if second_moment is not None:
        trace = torch.maximum(trace, COLLAPSE_FLOOR * second_moment)
    return torch.where(trace > 0, eps * trace, torch.full_like(trace, eps))


class _InverseSqrtPSD(torch.autograd.Function):
    """Spectral functions of a symmetric PSD matrix S = U diag(lam) U^T, with a backward pass that stays finite.

    Forward returns (delta the jitter, a 0-d tensor; it gets a gradient too)
        R = (S + delta I)^(-1/2)            = U diag(f(lam)) U^T,   f(x) = (x + delta)^(-1/2)
        H = U diag(h(lam)) U^T  (optional),  h(x) = (f(x) - f(0)) / x    (out-of-sample whitening, see BatchWhitening)
        lam, clamped at 0 (no gradient).

    Why custom: autograd through ``torch.linalg.eigh`` divides by lam_i - lam_j, which is 0 for repeated eigenvalues.
    A centred batch always has a zero eigenvalue, N > D + 1 rows give several, and duplicate items give more, so the
    stock backward returns inf/NaN exactly in the cases the loss meets. The derivative of a spectral function is the
    Daleckii-Krein formula dF = U (K o (U^T dS U)) U^T with K_ij the divided difference f[lam_i, lam_j]; for these f
    the divided differences have closed forms without any lam_i - lam_j (s = sqrt(lam + delta), s0 = sqrt(delta)):
        f[a, b]    = -1 / (s_a s_b (s_a + s_b))
        h[a, b]    = f[a, b, 0] = (s_a + s_b + s0) / (s0 s_a s_b (s_a + s0) (s_b + s0) (s_a + s_b))
    so K is bounded by 1 / (2 delta^1.5) and equal eigenvalues are just the limit case. The jitter's derivatives are
    closed forms too: df/d delta = f'(lam) = -1 / (2 s^3) and dh/d delta = (s^2 + s s0 + s0^2) / (2 s^3 s0^3 (s + s0)).
    """

    @staticmethod
    def forward(ctx, sym: Tensor, jitter: Tensor, with_shift: bool):  # type: ignore[override]
        lam, basis = torch.linalg.eigh(sym)  # (n,), (n, n)
        lam = lam.clamp_min(0.0)
        s = torch.sqrt(lam + jitter)  # (n,)
        s0 = torch.sqrt(jitter)  # ()
        inv_sqrt = (basis / s) @ basis.mT  # (n, n)
        shift = None
        if with_shift:
            shift = (basis * (-1.0 / (s * s0 * (s + s0)))) @ basis.mT  # (n, n)
        ctx.save_for_backward(basis, s, s0)
        ctx.mark_non_differentiable(lam)
        return inv_sqrt, shift, lam

    @staticmethod
    def backward(ctx, grad_inv_sqrt: Tensor | None, grad_shift: Tensor | None, _grad_lam: Tensor | None):  # type: ignore[override]
        basis, s, s0 = ctx.saved_tensors
        si, sj = s[:, None], s[None, :]  # (n, 1), (1, n)
        inner = torch.zeros_like(basis)  # (n, n) in the eigenbasis
        grad_jitter = torch.zeros_like(s0)  # ()
        if grad_inv_sqrt is not None:
            projected = basis.mT @ _sym(grad_inv_sqrt) @ basis  # (n, n)
            divided = -1.0 / (si * sj * (si + sj))  # (n, n) f[lam_i, lam_j]; its diagonal is f'(lam) = df/d delta
            inner = inner + divided * projected
            grad_jitter = grad_jitter + (divided.diagonal() * projected.diagonal()).sum()
        if grad_shift is not None:
            projected = basis.mT @ _sym(grad_shift) @ basis  # (n, n)
            divided = (si + sj + s0) / (s0 * si * sj * (si + s0) * (sj + s0) * (si + sj))  # (n, n) h[lam_i, lam_j]
            inner = inner + divided * projected
            dh_djitter = (s * s + s * s0 + s0 * s0) / (2 * s**3 * s0**3 * (s + s0))  # (n,)
            grad_jitter = grad_jitter + (dh_djitter * projected.diagonal()).sum()
        return basis @ inner @ basis.mT, grad_jitter, None


def _sym(matrix: Tensor) -> Tensor:
    return (matrix + matrix.mT) / 2


class _Gram(torch.autograd.Function):
    """x x^T with the symmetric backward (g + g^T) x: one matmul instead of autograd's two."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x @ x.mT  # (n, n)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return (grad + grad.mT) @ x  # (n, D)


class WhiteningStatistics(NamedTuple):
    """What the residual diagnostic needs from a fit: the (detached) Gram ``(n, n)`` or covariance ``(D, D)`` matrix,
    both with the spectrum of C, and the jitter delta used with it."""

    matrix: Tensor
    jitter: Tensor

    def residual(self) -> float:
        return whitening_residual(torch.linalg.eigvalsh(self.matrix.double()), self.jitter)


class BatchWhitening:
    """ZCA batch whitening W fitted on the rows of x:  W(y) = (y - mu) (C + delta I)^(-1/2).

    C is the unbiased (n - 1) covariance of x and delta = eps * tr(C) the diagonal jitter (:func:`whitening_jitter`).
    The fitted rows come out zero-mean with covariance U diag(lam / (lam + delta)) U^T: the identity on the span of the
    data up to the jitter (exactly the identity on that span as eps -> 0) and zero off it. The transform is
    differentiable through mu and C (the statistics of the batch), as in decorrelated batch norm.

    Cost: with n <= D rows the work happens in the n x n Gram space,
        W(x) = (G + delta I)^(-1/2) Xc,   G = Xc Xc^T / (n - 1),   Xc = x - mu,
    which equals Xc (C + delta I)^(-1/2) exactly (push-through identity), in O(n^2 D + n^3) instead of O(D^3). With
    n > D it works in the D x D covariance space. Either way fp32 (fp64 inputs stay fp64), autocast off, and the
    eigen-decomposition uses :class:`_InverseSqrtPSD`, whose backward is finite for repeated eigenvalues.

    ``out_of_sample=True`` also prepares :meth:`transform` for rows that were not part of the fit (e.g. hard
    negatives, whitened with the W of the query/positive batch); in Gram space that uses
        (C + delta I)^(-1/2) = delta^(-1/2) I + Xc^T h(G) Xc / (n - 1),   h(x) = ((x + delta)^(-1/2) - delta^(-1/2)) / x.
    """

    def __init__(self, x: Tensor, eps: float = 1e-4, *, out_of_sample: bool = False) -> None:
        if x.ndim != 2:
            raise ValueError(f"whitening expects (N, D) rows, got shape {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise ValueError(f"whitening needs at least 2 rows to estimate a covariance, got {x.shape[0]}")
        if not eps > 0.0:
            raise ValueError(f"the whitening jitter eps must be > 0, got {eps!r}")
        self.eps = float(eps)
        self.num_rows, self.dim = x.shape
        with fp32_math(x.device):
            x = _fp32(x)
            self.mean = x.mean(dim=0, keepdim=True)  # (1, D) mu
            self.centered = x - self.mean  # (n, D) Xc
            self.space = "gram" if self.num_rows <= self.dim else "feature"
            n = self.num_rows
            if self.space == "gram":
                matrix = _Gram.apply(self.centered) / (n - 1)  # (n, n) G
            else:
                matrix = _Gram.apply(self.centered.mT) / (n - 1)  # (D, D) C
            second_moment = (x * x).sum(-1).mean()  # () E||x||^2
            self.jitter = whitening_jitter(matrix.diagonal().sum(), self.eps, second_moment)  # () delta
            self._inv_sqrt, self._shift, self.eigenvalues = _InverseSqrtPSD.apply(
                matrix, self.jitter, out_of_sample and self.space == "gram"
            )
            if self.space == "gram":
                self.whitened = self._inv_sqrt @ self.centered  # (n, D) (G + delta I)^(-1/2) Xc
            else:
                self.whitened = self.centered @ self._inv_sqrt  # (n, D) Xc (C + delta I)^(-1/2)
        self._out_of_sample = out_of_sample

    def transform(self, y: Tensor) -> Tensor:
        """W(y) for any rows y ``(m, D)`` -> ``(m, D)``, with this batch's mu and C."""
        with fp32_math(y.device):
            yc = _fp32(y) - self.mean  # (m, D)
            if self.space == "feature":
                return yc @ self._inv_sqrt  # (m, D)
            if not self._out_of_sample:
                raise RuntimeError("BatchWhitening.transform on new rows needs out_of_sample=True at fit time")
            n = self.num_rows
            coeff = (yc @ self.centered.mT) @ self._shift  # (m, n)
            return yc / self.jitter.sqrt() + coeff @ self.centered / (n - 1)  # (m, D)

    def residual(self) -> float:
        """:func:`whitening_residual` of this fit."""
        return whitening_residual(self.eigenvalues, self.jitter)


def batch_whiten(x: Tensor, eps: float = 1e-4) -> Tensor:
    """Whiten the rows of x with their own batch statistics: ``(N, D) -> (N, D)``, zero-mean, covariance = identity
    on the span of the data (up to the jitter eps * tr(C)). See :class:`BatchWhitening` for the algorithm and cost."""
    return BatchWhitening(x, eps).whitened


def whitening_residual(eigenvalues: Tensor, jitter: float | Tensor) -> float:
    """How far the whitened covariance is from the identity on the span of the data (a diagnostic, no gradient).

    With lam_i the eigenvalues of the batch covariance (equivalently of its Gram matrix) and delta the jitter, the
    whitened covariance has eigenvalues lam_i / (lam_i + delta), so
        residual = ||Cov(W(x)) - P_span||_F / ||P_span||_F = sqrt( mean_{i in span} (delta / (lam_i + delta))^2 ),
    where the span keeps lam_i > max(n, 1) * eps_fp32 * lam_max (the ``torch.linalg.matrix_rank`` convention).
    0 means perfectly white; it grows towards 1 when the jitter dominates the data's variance.
    """
    lam = eigenvalues.detach().double().clamp_min(0.0)
    delta = float(jitter.detach()) if isinstance(jitter, Tensor) else float(jitter)
    if lam.numel() == 0 or float(lam.max()) == 0.0:
        return 1.0
    tol = lam.max() * max(lam.numel(), 1) * torch.finfo(torch.float32).eps
    span = lam[lam > tol]
    return float(torch.sqrt(torch.mean((delta / (span + delta)) ** 2)))


def _double_center(block: Tensor) -> Tensor:
    """H_a K H_b for a Gram block K (a, b): subtract row means and column means, add back the grand mean."""
    return block - block.mean(dim=1, keepdim=True) - block.mean(dim=0, keepdim=True) + block.mean()


def _coral_from_gram(gram_qq: Tensor, gram_qp: Tensor, gram_pp: Tensor, dim: int) -> Tensor:
    """||Cov(Q) - Cov(P)||_F^2 / (4 D^2) from the Gram blocks of the rows (any common centring).

    ||Cov(Q)||_F^2 = ||H Q Q^T H||_F^2 / (nq - 1)^2 and <Cov(Q), Cov(P)> = ||H Q P^T H||_F^2 / ((nq - 1)(np - 1)),
    so the D x D covariances are never formed: O(n^2) given the Gram blocks.
    """
    nq, npos = gram_qp.shape
    qq = _double_center(gram_qq).square().sum() / (nq - 1) ** 2
    pp = _double_center(gram_pp).square().sum() / (npos - 1) ** 2
    qp = _double_center(gram_qp).square().sum() / ((nq - 1) * (npos - 1))
    return (qq - 2 * qp + pp) / (4 * dim**2)


def _check_pair(q: Tensor, p: Tensor, what: str) -> None:
    if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"{what} expects (nq, D) and (np, D), got {tuple(q.shape)} and {tuple(p.shape)}")
    if q.shape[0] < 2 or p.shape[0] < 2:
        raise ValueError(
            f"{what} needs at least 2 rows per side for an unbiased covariance, got {q.shape[0]}, {p.shape[0]}"
        )


def coral_loss(q_hat: Tensor, p_hat: Tensor) -> Tensor:
    """CORAL covariance regulariser L_coral = ||C_q - C_p||_F^2 / (4 D^2), C the unbiased (n - 1) covariance.

    Args:
        q_hat: ``(nq, D)`` (whitened) query embeddings.
        p_hat: ``(np, D)`` (whitened) positive embeddings.

    With nq + np <= D it works from the Gram blocks (O(n^2 D)), otherwise from the D x D covariances (O(n D^2)).
    """
    _check_pair(q_hat, p_hat, "coral_loss")
    dim = q_hat.shape[1]
    with fp32_math(q_hat.device):
        q, p = _fp32(q_hat), _fp32(p_hat)
        if q.shape[0] + p.shape[0] <= dim:
            return _coral_from_gram(_Gram.apply(q), q @ p.mT, _Gram.apply(p), dim)
        cov_q = torch.cov(q.mT)  # (D, D)
        cov_p = torch.cov(p.mT)  # (D, D)
        return (cov_q - cov_p).square().sum() / (4 * dim**2)


def whitened_coral_loss(
    q: Tensor, p: Tensor, eps: float = 1e-4, *, qp_gram: Tensor | None = None
) -> tuple[Tensor, WhiteningStatistics]:
    """``coral_loss(W(q), W(p))`` with W the batch whitening fitted on the stacked rows [q; p], without forming W.

    Used when the logits stay on the raw embeddings (the default), so the whitened embeddings are never needed:
    CORAL after whitening only needs the whitened Gram matrix, a *rational* function of the centred Gram matrix,
        W(X) W(X)^T = (n - 1) G (G + delta I)^(-1) = (n - 1) (I - delta (G + delta I)^(-1)),
    i.e. one Cholesky factorisation instead of an eigen-decomposition, with a well-conditioned backward
    (cond <= 1 + 1/eps). With n > D the same identity is used in D-space:
        ||S (C_q - C_p) S||_F^2 = tr(A^-1 Delta A^-1 Delta),  S = A^(-1/2),  A = C + delta I,  Delta = C_q - C_p.

    Args:
        q: ``(nq, D)`` query embeddings; p: ``(np, D)`` positive embeddings.
        eps: relative whitening jitter, delta = eps * tr(C).
        qp_gram: optional precomputed ``q @ p.T`` ``(nq, np)`` (the logits' positive block, shared to save a matmul).

    Returns:
        (L_coral, statistics): the loss and the :class:`WhiteningStatistics` for the residual diagnostic.
    """
    _check_pair(q, p, "whitened_coral_loss")
    if not eps > 0.0:
        raise ValueError(f"the whitening jitter eps must be > 0, got {eps!r}")
    nq, npos, dim = q.shape[0], p.shape[0], q.shape[1]
    n = nq + npos
    with fp32_math(q.device):
        q, p = _fp32(q), _fp32(p)
        if n <= dim:
            g_qp = q @ p.mT if qp_gram is None else _fp32(qp_gram)  # (nq, np)
            raw = torch.cat(
                [torch.cat([_Gram.apply(q), g_qp], dim=1), torch.cat([g_qp.mT, _Gram.apply(p)], dim=1)], dim=0
            )  # (n, n) X X^T
            gram = _double_center(raw) / (n - 1)  # (n, n) G = Xc Xc^T / (n - 1)
            jitter = whitening_jitter(gram.diagonal().sum(), eps, raw.diagonal().mean())  # () delta
            eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
            inv = _spd_inverse(gram + jitter * eye)  # (n, n) (G + delta I)^-1
            white = (n - 1) * (eye - jitter * inv)  # (n, n) W(X) W(X)^T
            loss = _coral_from_gram(white[:nq, :nq], white[:nq, nq:], white[nq:, nq:], dim)
            return loss, WhiteningStatistics(gram.detach(), jitter)
        x = torch.cat([q, p], dim=0)  # (n, D)
        cov = torch.cov(x.mT)  # (D, D) C
        jitter = whitening_jitter(cov.diagonal().sum(), eps, (x * x).sum(-1).mean())  # () delta
        delta = torch.cov(q.mT) - torch.cov(p.mT)  # (D, D) C_q - C_p
        inv = _spd_inverse(cov + jitter * torch.eye(dim, dtype=cov.dtype, device=cov.device))  # (D, D) A^-1
        half = inv @ delta  # (D, D)
        loss = (half * half.mT).sum() / (4 * dim**2)  # tr(A^-1 Delta A^-1 Delta)
        return loss, WhiteningStatistics(cov.detach(), jitter)


class _SPDInverse(torch.autograd.Function):
    """Inverse of a symmetric positive definite matrix: Cholesky forward, backward -A^-1 g A^-1 (two matmuls).

    The autograd backward of ``cholesky`` + ``cholesky_inverse`` costs about three times as much (triangular solves
    through both factorisations); this is the textbook derivative of the inverse, exact for any invertible A.
    """

    @staticmethod
    def forward(ctx, matrix: Tensor) -> Tensor:  # type: ignore[override]
        chol, info = torch.linalg.cholesky_ex(matrix)
        if int(info) != 0:
            raise ValueError(
                "whitening: the jittered covariance is not positive definite (non-finite embeddings?); "
                f"Cholesky failed at minor {int(info)}"
            )
        inverse = torch.cholesky_inverse(chol)  # (n, n)
        ctx.save_for_backward(inverse)
        return inverse

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (inverse,) = ctx.saved_tensors
        return -(inverse @ grad @ inverse)  # (n, n)


def _spd_inverse(matrix: Tensor) -> Tensor:
    """(A)^-1 for symmetric positive definite A, with a clear error if it is not SPD."""
    return _SPDInverse.apply(matrix)
