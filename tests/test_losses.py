"""The alignment losses: functional pieces on hand-computed values, E5OmniLoss against a reference written from the
formulas of the paper (docs/losses.md), switches, duplicates, validation, precision, temperatures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from e5omni.train.losses import (
    MODALITIES,
    E5OmniLoss,
    clamp_temperatures_,
    curriculum_rho,
    debiased_contrastive_loss,
    find_log_temperature,
    hard_negative_mask,
    info_nce_loss,
    instance_temperature,
    pair_temperature,
)
from tests.helpers import LOSS_CONFIGS, TemperatureHolder, module_and_reference_kwargs, random_batch
from tests.linalg_reference import newton_schulz_inverse_sqrt

# One-modality rows of a modality mask (text, image, audio, video).
TXT, IMG, AUD, VID = (
    (True, False, False, False),
    (False, True, False, False),
    (False, False, True, False),
    (False,) * 3 + (True,),
)


def mask(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# ------------------------------------------------------------------------------------------------ component 1
def test_modality_order_matches_the_model_package():
    from modeling_e5omni.configuration_e5omni import MODALITIES as model_modalities

    assert MODALITIES == model_modalities == ("text", "image", "audio", "video")


def test_pair_temperature_hand_values():
    log_tau = torch.tensor([0.01, 0.02, 0.04, 0.08]).log()
    queries = mask(TXT, (True, True, False, False))  # text -> 0.01; text+image -> 0.015
    docs = mask(IMG, (False, True, True, False), (True, True, True, True))  # 0.02; 0.03; 0.0375
    expected = torch.tensor(
        [
            [(0.01 + 0.02) / 2, (0.01 + 0.03) / 2, (0.01 + 0.0375) / 2],
            [(0.015 + 0.02) / 2, (0.015 + 0.03) / 2, (0.015 + 0.0375) / 2],
        ]
    )
    got = pair_temperature(log_tau, queries, docs)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(instance_temperature(log_tau, docs), torch.tensor([0.02, 0.03, 0.0375]))


def test_pair_temperature_gradient_reaches_only_present_modalities():
    log_tau = torch.tensor([0.01, 0.02, 0.04, 0.08]).log().requires_grad_()
    pair_temperature(log_tau, mask(TXT), mask(IMG)).sum().backward()
    # d tau_pair / d log tau_m = tau_m / 2 for the two present modalities, 0 for audio and video.
    torch.testing.assert_close(log_tau.grad, torch.tensor([0.005, 0.01, 0.0, 0.0]))


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (torch.zeros(2, 4, dtype=torch.long), TypeError),
        (torch.ones(2, 3, dtype=torch.bool), ValueError),
        (mask(TXT, (False, False, False, False)), ValueError),
    ],
)
def test_pair_temperature_rejects_bad_masks(bad, error):
    with pytest.raises(error):
        pair_temperature(torch.zeros(4), bad, mask(TXT))


def test_empty_modality_error_names_the_item():
    with pytest.raises(ValueError, match=r"item\(s\) \[1\]"):
        instance_temperature(torch.zeros(4), mask(TXT, (False,) * 4, IMG))


# ------------------------------------------------------------------------------------------------ component 2
@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.1), (3999, 0.1), (4000, 0.1), (5500, 0.2), (7000, 0.3), (10000, 0.5), (25000, 0.5)],
)
def test_curriculum_rho_schedule(step, expected):
    rho = curriculum_rho(step, rho_init=0.1, rho_final=0.5, warmup_steps=4000, total_steps=10000)
    assert rho == pytest.approx(expected, abs=1e-12)


def test_curriculum_rho_without_ramp_and_validation():
    assert curriculum_rho(5, rho_init=0.1, rho_final=0.5, warmup_steps=10, total_steps=8) == 0.1
    assert curriculum_rho(10, rho_init=0.1, rho_final=0.5, warmup_steps=10, total_steps=8) == 0.5
    with pytest.raises(ValueError, match="step"):
        curriculum_rho(-1, rho_init=0.1, rho_final=0.5, warmup_steps=0, total_steps=8)
    with pytest.raises(ValueError, match="rho_final"):
        curriculum_rho(1, rho_init=0.1, rho_final=1.5, warmup_steps=0, total_steps=8)


def test_hard_negative_mask_hand_values_and_tie_rule():
    logits = torch.tensor([[5.0, 1.0, 3.0, 3.0, 2.0]])  # positive in column 0; negatives 1, 3, 3, 2
    positive = torch.tensor([0])
    keep = lambda rho: hard_negative_mask(logits, positive, rho)[0].tolist()  # noqa: E731
    assert keep(0.0) == [False, True, True, True, True]
    assert keep(0.5) == [False, False, True, True, False]  # k = ceil(0.5 * 4) = 2
    assert keep(0.6) == [False, False, True, True, False]  # k = ceil(1.6) = 2
    # k = 1 and a tie at 3.0 between columns 2 and 3: the lower column index is kept.
    assert keep(0.75) == [False, False, True, False, False]
    assert keep(1.0) == [False] * 5


def test_hard_negative_mask_counts_with_float_rounding():
    # (1 - 0.3) * 10 = 7.000000000000001 in floating point; ceil must still give 7.
    logits = torch.randn(3, 11)
    positive = torch.tensor([0, 5, 10])
    for rho, expected in ((0.3, 7), (0.1, 9), (0.7, 3), (0.45, 6)):
        kept = hard_negative_mask(logits, positive, rho).sum(dim=1)
        assert kept.tolist() == [expected] * 3, rho


def test_hard_negative_mask_keeps_the_largest_valid_logits():
    torch.manual_seed(0)
    logits = torch.randn(6, 20)
    positive = torch.arange(6)
    valid = torch.rand(6, 20) > 0.3
    keep = hard_negative_mask(logits, positive, 0.4, candidate_mask=valid)
    for i in range(6):
        negatives = [j for j in range(20) if valid[i, j] and j != i]
        k = math.ceil(0.6 * len(negatives) - 1e-9)
        expected = sorted(sorted(negatives, key=lambda j: (-logits[i, j].item(), j))[:k])
        assert keep[i].nonzero().flatten().tolist() == expected
        assert not keep[i, i]


def test_hard_negative_mask_ties_everywhere():
    logits = torch.zeros(2, 6)
    keep = hard_negative_mask(logits, torch.tensor([0, 3]), 0.5)  # 5 negatives each, k = 3, all tied
    assert keep[0].nonzero().flatten().tolist() == [1, 2, 3]
    assert keep[1].nonzero().flatten().tolist() == [0, 1, 2]


def test_dcl_hand_value():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    keep = torch.tensor([[False, True, True]])
    # N / e^{S_ii} = e^-1 + e^-2 - 0.1 = 0.40322...; loss = log(1 + 0.40322...)
    expected = math.log(1 + math.exp(-1) + math.exp(-2) - 0.1)
    got = debiased_contrastive_loss(logits, torch.tensor([0]), keep, gamma_plus=0.1, eps=1e-6)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # gamma_plus = 0 is InfoNCE
    got0 = debiased_contrastive_loss(logits, torch.tensor([0]), keep, gamma_plus=0.0, eps=1e-12)
    assert got0.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0])).item(), rel=1e-6)


def test_dcl_floor_and_rows_without_negatives_are_finite():
    logits = torch.tensor([[50.0, 10.0, -40.0], [3.0, 2.0, 1.0], [1.0, 1.0, 1.0]], requires_grad=True)
    keep = torch.tensor([[False, True, True], [False, False, False], [False, False, False]])
    loss = debiased_contrastive_loss(logits, torch.tensor([0, 0, 0]), keep, gamma_plus=0.2, eps=1e-6)
    loss.backward()
    # Row 0: sum of negatives e^-40 is far below gamma_plus -> floor log(1 + eps); rows 1, 2 keep nothing -> floor.
    assert loss.item() == pytest.approx(math.log1p(1e-6), rel=1e-6)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() == 0


def test_dcl_is_shift_invariant_and_stable_at_large_logits():
    torch.manual_seed(0)
    logits = torch.randn(4, 9) * 30
    keep = torch.ones(4, 9, dtype=torch.bool)
    positive = torch.tensor([0, 2, 4, 8])
    base = debiased_contrastive_loss(logits, positive, keep)
    shifted = debiased_contrastive_loss(logits + torch.tensor([[1e3], [-1e3], [80.0], [0.0]]), positive, keep)
    assert torch.isfinite(base) and torch.allclose(base, shifted, rtol=1e-5)


def test_info_nce_matches_cross_entropy_and_positive_is_never_a_negative():
    torch.manual_seed(0)
    logits = torch.randn(5, 8)
    positive = torch.tensor([0, 1, 2, 3, 7])
    expected = F.cross_entropy(logits, positive)
    torch.testing.assert_close(info_nce_loss(logits, positive), expected)
    # A keep mask that wrongly includes the positive changes nothing.
    torch.testing.assert_close(info_nce_loss(logits, positive, torch.ones(5, 8, dtype=torch.bool)), expected)


@pytest.mark.parametrize(("gamma", "eps"), [(-0.1, 1e-6), (1.0, 1e-6), (0.1, 0.0)])
def test_dcl_rejects_bad_options(gamma, eps):
    with pytest.raises(ValueError):
        debiased_contrastive_loss(torch.zeros(1, 2), torch.tensor([0]), torch.ones(1, 2, dtype=torch.bool), gamma, eps)


# ------------------------------------------------------------------------------------------------ reference
def reference_loss(
    q,
    docs,
    q_mod,
    doc_mods,
    log_tau,
    hashes=None,
    *,
    rho,
    gamma,
    eps,
    lam,
    w_eps,
    fixed_tau=None,
    on_whitened=False,
    use_dcl=True,
    whitening=True,
    symmetric=False,
    scope="batch",
):
    """E5-omni loss straight from the formulas, row by row, in float64."""
    bsz, dim = q.shape
    q = q / q.norm(dim=1, keepdim=True)
    docs = [d / d.norm(dim=1, keepdim=True) for d in docs]
    p = docs[0]
    coral = torch.zeros((), dtype=q.dtype)
    if whitening:
        x = torch.cat([q, p])
        mu = x.mean(0, keepdim=True)
        xc = x - mu
        cov = xc.T @ xc / (x.shape[0] - 1)
        jittered = cov + w_eps * cov.trace() * torch.eye(dim, dtype=q.dtype)  # delta = eps * tr(C)
        w = newton_schulz_inverse_sqrt(jittered)
        assert torch.allclose(w @ jittered @ w, torch.eye(dim, dtype=q.dtype), atol=1e-9)
        q_hat, p_hat = (q - mu) @ w, (p - mu) @ w

        def covariance(z):
            zc = z - z.mean(0, keepdim=True)
            return zc.T @ zc / (z.shape[0] - 1)

        coral = (covariance(q_hat) - covariance(p_hat)).pow(2).sum() / (4 * dim**2)
        if on_whitened:
            q = q_hat / q_hat.norm(dim=1, keepdim=True)
            docs = [((d - mu) @ w) for d in docs[1:]]
            p = p_hat / p_hat.norm(dim=1, keepdim=True)
            docs = [p] + [d / d.norm(dim=1, keepdim=True) for d in docs]
    cands = torch.cat(docs)
    n_cands = cands.shape[0]
    if fixed_tau is None:
        tau = log_tau.exp()
        inst = lambda m: (m.double() * tau).sum(1) / m.double().sum(1)  # noqa: E731
        tq, td, tp = inst(q_mod), inst(torch.cat(doc_mods)), inst(doc_mods[0])
    else:
        tq = torch.full((bsz,), fixed_tau, dtype=q.dtype)
        td, tp = torch.full((n_cands,), fixed_tau, dtype=q.dtype), tq
    h_q = hashes[0] if hashes else None
    h_c = torch.cat(hashes[1:]) if hashes else None

    def direction(rows, cols, t_rows, t_cols, is_negative):
        per_row = []
        for i in range(bsz):
            s = [(rows[i] @ cols[j]) / ((t_rows[i] + t_cols[j]) / 2) for j in range(cols.shape[0])]
            negatives = [j for j in range(cols.shape[0]) if j != i and is_negative(i, j)]
            k = math.ceil(round((1 - rho) * len(negatives), 9))
            kept = sorted(negatives, key=lambda j: (-s[j].item(), j))[:k]
            pos = torch.exp(s[i])
            neg = sum((torch.exp(s[j]) for j in kept), torch.zeros((), dtype=q.dtype))
            if use_dcl:
                neg = torch.maximum(neg - gamma * pos, eps * pos)
            per_row.append(-torch.log(pos / (pos + neg)))
        return torch.stack(per_row).mean()

    def forward_negative(i, j):
        if scope == "own" and j >= bsz and j % bsz != i:
            return False
        if hashes is None:
            return True
        return not (h_c[j] == h_c[i] or h_c[j] == h_q[i] or (j < bsz and h_q[j] == h_q[i]))

    def reverse_negative(i, j):
        if hashes is None:
            return True
        return not (h_q[j] == h_q[i] or h_q[j] == h_c[i] or h_c[j] == h_c[i])

    dcl = direction(q, cands, tq, td, forward_negative)
    if symmetric:
        dcl = (dcl + direction(p, q, tp, tq, reverse_negative)) / 2
    return dcl, lam * coral


@pytest.mark.parametrize("name", list(LOSS_CONFIGS))
@pytest.mark.parametrize("dim", [16, 5], ids=["gram_space", "feature_space"])
def test_loss_and_gradients_match_the_reference(name, dim):
    options, ref_kwargs = module_and_reference_kwargs(LOSS_CONFIGS[name])
    embeddings, masks, log_tau = random_batch(dim=dim)
    hashes = [
        torch.tensor([1, 2, 3, 1, 5, 6]),
        torch.tensor([11, 12, 13, 14, 11, 16]),
        torch.tensor([21, 12, 23, 24, 25, 26]),
        torch.tensor([31, 32, 3, 34, 35, 36]),
    ]

    model = TemperatureHolder().double()  # fp64 end to end: any gap is an error, not rounding
    with torch.no_grad():
        model.log_temperature.copy_(log_tau)
    loss = E5OmniLoss(model, **options)
    loss.set_step(15, 20)
    leaves = [e.clone().requires_grad_() for e in embeddings]
    out = loss.compute_loss_from_embeddings(leaves, masks, hashes)
    assert set(out) == {"dcl", "coral"}
    sum(out.values()).backward()

    ref_leaves = [e.clone().requires_grad_() for e in embeddings]
    ref_tau = log_tau.double().requires_grad_()
    dcl, coral = reference_loss(ref_leaves[0], ref_leaves[1:], masks[0], masks[1:], ref_tau, hashes, **ref_kwargs)
    (dcl + coral).backward()

    torch.testing.assert_close(out["dcl"], dcl, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out["coral"], coral, rtol=1e-8, atol=1e-14)
    for mine, theirs in zip(leaves, ref_leaves):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-7, atol=1e-10)
    if options.get("use_temperature", True):
        torch.testing.assert_close(model.log_temperature.grad, ref_tau.grad, rtol=1e-7, atol=1e-10)
    else:
        assert model.log_temperature.grad is None


def test_fp32_loss_matches_the_float64_reference_to_1e_5():
    embeddings, masks, log_tau = random_batch(bsz=8, dim=32, seed=3)
    options, ref_kwargs = module_and_reference_kwargs({})
    model = TemperatureHolder()
    with torch.no_grad():
        model.log_temperature.copy_(log_tau)
    loss = E5OmniLoss(model, **options)
    loss.set_step(15, 20)
    leaves = [e.float().requires_grad_() for e in embeddings]
    out = loss.compute_loss_from_embeddings(leaves, masks)
    sum(out.values()).backward()
    ref_leaves = [e.clone().requires_grad_() for e in embeddings]
    dcl, coral = reference_loss(ref_leaves[0], ref_leaves[1:], masks[0], masks[1:], log_tau.double(), **ref_kwargs)
    (dcl + coral).backward()
    assert out["dcl"].dtype == out["coral"].dtype == torch.float32
    assert abs(out["dcl"].item() - dcl.item()) < 1e-5
    assert abs(out["coral"].item() - coral.item()) < 1e-5
    for mine, theirs in zip(leaves, ref_leaves):
        scale = theirs.grad.abs().max().item()
        assert (mine.grad.double() - theirs.grad).abs().max().item() < 1e-5 * max(scale, 1.0)


def test_all_switches_off_is_plain_info_nce_at_fixed_temperature():
    torch.manual_seed(0)
    q, p, n1, n2 = (F.normalize(torch.randn(5, 12), dim=-1) for _ in range(4))
    loss = E5OmniLoss(
        None, use_temperature=False, temperature=0.05, use_curriculum=False, use_dcl=False, use_whitening_coral=False
    )
    out = loss.compute_loss_from_embeddings([q, p, n1, n2])
    # Hand-written InfoNCE (MultipleNegativesRankingLoss with scale 20): every document is a candidate of every query.
    logits = q @ torch.cat([p, n1, n2]).T / 0.05  # (5, 15)
    expected = F.cross_entropy(logits, torch.arange(5))
    torch.testing.assert_close(sum(out.values()), expected, rtol=1e-6, atol=1e-7)
    assert out["coral"].item() == 0.0


def test_duplicates_are_never_negatives():
    torch.manual_seed(0)
    q, p = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    p[2] = p[0]  # pair 2's positive is the same document as pair 0's
    q_hash, p_hash = torch.tensor([10, 11, 12, 13]), torch.tensor([20, 21, 20, 23])
    loss = E5OmniLoss(None, use_temperature=False, use_curriculum=False, use_dcl=False, use_whitening_coral=False)
    got = loss.compute_loss_from_embeddings([q, p], content_hashes=[q_hash, p_hash])
    logits = q @ p.T / 0.02
    logits[0, 2] = logits[2, 0] = -math.inf  # the duplicate is masked out of both rows
    torch.testing.assert_close(got["dcl"], F.cross_entropy(logits, torch.arange(4)))
    without = loss.compute_loss_from_embeddings([q, p])
    assert not torch.allclose(got["dcl"], without["dcl"])


def test_loss_is_finite_when_every_negative_is_masked():
    q = F.normalize(torch.randn(3, 8), dim=-1).requires_grad_()
    p = F.normalize(torch.randn(3, 8), dim=-1).requires_grad_()
    same = torch.tensor([7, 7, 7])  # all positives identical: nothing is a negative of anything
    loss = E5OmniLoss(TemperatureHolder())
    out = loss.compute_loss_from_embeddings([q, p], [mask(TXT, TXT, IMG)] * 2, [None, same])
    sum(out.values()).backward()
    assert out["dcl"].item() == pytest.approx(math.log1p(1e-6), rel=1e-6)
    assert torch.isfinite(q.grad).all() and torch.isfinite(p.grad).all()
    assert loss.last_diagnostics["negatives_kept_fraction"] == 0.0


def test_forward_reads_metadata_and_passes_features_unchanged():
    seen = []

    class Model(TemperatureHolder):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 8)

        def forward(self, features):
            seen.append(set(features))
            features.pop("content_hash", None)  # a model may consume keys: the loss read them before
            features["sentence_embedding"] = F.normalize(self.proj(features["x"]), dim=-1)
            return features

    torch.manual_seed(0)
    model = Model()
    loss = E5OmniLoss(model)
    cols = [
        {"x": torch.randn(4, 6), "modality_mask": mask(TXT, IMG, AUD, VID), "content_hash": torch.tensor([1, 2, 3, 4])}
        for _ in range(3)
    ]
    cols[2]["content_hash"] = torch.tensor([9, 9, 9, 2])  # hard negative 3 equals pair 1's query content
    out = loss(cols, None)
    assert seen == [{"x", "modality_mask", "content_hash"}] * 3
    embeddings = [model(dict(c, content_hash=None))["sentence_embedding"] for c in cols]
    expected = loss.compute_loss_from_embeddings(
        embeddings, [mask(TXT, IMG, AUD, VID)] * 3, [torch.tensor([1, 2, 3, 4])] * 2 + [torch.tensor([9, 9, 9, 2])]
    )
    torch.testing.assert_close(out["dcl"], expected["dcl"])
    sum(out.values()).backward()
    assert model.proj.weight.grad is not None and model.log_temperature.grad is not None


def test_modality_mask_is_required_with_temperature():
    class Model(TemperatureHolder):
        def forward(self, features):
            features["sentence_embedding"] = F.normalize(features["x"], dim=-1)
            return features

    loss = E5OmniLoss(Model())
    with pytest.raises(ValueError, match=r"column\(s\) \[1\].*modality_mask"):
        loss([{"x": torch.randn(2, 4), "modality_mask": mask(TXT, TXT)}, {"x": torch.randn(2, 4)}], None)


def test_bf16_autocast_keeps_the_loss_in_fp32():
    torch.manual_seed(0)
    model = TemperatureHolder()
    proj = nn.Linear(16, 24)
    x = [torch.randn(6, 16) for _ in range(3)]
    masks = [mask(TXT, IMG, AUD, VID, TXT, IMG)] * 3
    loss = E5OmniLoss(model)
    loss.set_step(15, 20)

    def run():
        for p in [*proj.parameters(), model.log_temperature]:
            p.grad = None
        out = loss.compute_loss_from_embeddings([proj(v) for v in x], masks)
        sum(out.values()).backward()
        return out, proj.weight.grad.clone()

    reference, ref_grad = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert proj(x[0]).dtype == torch.bfloat16  # the embeddings really are bf16
        out, grad = run()
    assert all(v.dtype == torch.float32 for v in out.values())
    assert torch.isfinite(grad).all()
    # The embeddings carry bf16 rounding (~3 significant digits); the loss math itself must not add more error.
    assert abs(out["dcl"].item() - reference["dcl"].item()) < 0.05 * reference["dcl"].item()
    assert torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > 0.95


# ------------------------------------------------------------------------------------------------ module API
def test_set_step_drives_rho_and_diagnostics():
    loss = E5OmniLoss(TemperatureHolder((0.01, 0.02, 0.03, 0.04)), curriculum_warmup_steps=100)
    loss.set_step(50, 300)
    assert loss.rho == pytest.approx(0.1)
    loss.set_step(200, 300)
    assert loss.rho == pytest.approx(0.3)
    embeddings, masks, _ = random_batch(bsz=6, dim=16, num_negatives=2, dtype=torch.float32)
    loss.compute_loss_from_embeddings(embeddings, masks)
    diag = loss.last_diagnostics
    assert diag["rho"] == pytest.approx(0.3)
    assert [diag[f"tau_{m}"] for m in MODALITIES] == pytest.approx([0.01, 0.02, 0.03, 0.04], rel=1e-6)
    # 17 admissible negatives per row (6 * 3 candidates - 1), keep ceil(0.7 * 17) = 12.
    assert diag["negatives_kept_fraction"] == pytest.approx(12 / 17)
    assert 0.0 <= diag["whitening_residual"] < 1.0 and diag["coral_unweighted"] > 0
    assert all(isinstance(v, float) for v in diag.values())


def test_rho_holds_rho_init_without_total_steps(caplog):
    loss = E5OmniLoss(None, use_temperature=False, curriculum_warmup_steps=10)
    loss.set_step(50)
    with caplog.at_level("WARNING"):
        assert loss.rho == 0.1
    assert "total_steps" in caplog.text
    assert E5OmniLoss(None, use_temperature=False, use_curriculum=False).rho == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be"),
        ({"rho_init": 1.0}, "rho_init must be in"),
        ({"rho_final": -0.1}, "rho_final must be in"),
        ({"curriculum_warmup_steps": -1}, "curriculum_warmup_steps must be >= 0"),
        ({"curriculum_warmup_steps": 1.5}, "curriculum_warmup_steps must be an int"),
        ({"gamma_plus": 1.0}, "gamma_plus must be in"),
        ({"dcl_eps": 0.0}, "dcl_eps must be"),
        ({"lambda_coral": -1.0}, "lambda_coral must be"),
        ({"whitening_eps": float("nan")}, "whitening_eps must be"),
        ({"use_whitening_coral": False, "logits_on_whitened": True}, "logits_on_whitened=True needs"),
        ({"hard_negative_scope": "rank"}, "hard_negative_scope must be"),
        ({"symmetric": "yes"}, "symmetric must be a bool"),
    ],
)
def test_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        E5OmniLoss(TemperatureHolder(), **kwargs)


def test_temperature_calibration_needs_the_parameter():
    with pytest.raises(ValueError, match="log_temperature"):
        E5OmniLoss(nn.Linear(2, 2))
    E5OmniLoss(nn.Linear(2, 2), use_temperature=False)  # fixed tau: fine
    with pytest.raises(ValueError, match="log_temperature"):
        E5OmniLoss(None).compute_loss_from_embeddings([torch.randn(2, 3)] * 2, [mask(TXT, TXT)] * 2)


def test_input_shapes_are_validated():
    loss = E5OmniLoss(None, use_temperature=False)
    with pytest.raises(ValueError, match="at least 2"):
        loss.compute_loss_from_embeddings([torch.randn(3, 4)])
    with pytest.raises(ValueError, match="column 1 has shape"):
        loss.compute_loss_from_embeddings([torch.randn(3, 4), torch.randn(2, 4)])
    with pytest.raises(ValueError, match="content_hash must be an integer"):
        loss.compute_loss_from_embeddings([torch.randn(3, 4)] * 2, content_hashes=[None, torch.zeros(3)])
    with pytest.raises(ValueError, match="at least 2 rows"):
        loss.compute_loss_from_embeddings([torch.randn(1, 4)] * 2)


def test_config_and_citation():
    loss = E5OmniLoss(TemperatureHolder(), lambda_coral=0.1, symmetric=True)
    config = loss.get_config_dict()
    assert config["lambda_coral"] == 0.1 and config["symmetric"] is True
    assert E5OmniLoss(TemperatureHolder(), **config).get_config_dict() == config
    assert "2601.03666" in loss.citation and "Debiased Contrastive Learning" in loss.citation


# ------------------------------------------------------------------------------------------------ temperatures
class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.alignment = TemperatureHolder()

    def forward(self, features):
        features["sentence_embedding"] = F.normalize(self.norm(self.proj(features["x"])), dim=-1)
        return features


def test_find_log_temperature_finds_the_models_parameter():
    model = TinyEncoder()
    assert find_log_temperature(model) is model.alignment.log_temperature


def _groups(model: nn.Module, weight_decay: float, temperature_lr: float) -> list[dict]:
    """What the trainer builds: weights with decay, log tau alone without decay and with its own lr."""
    tau = model.alignment.log_temperature
    rest = [p for p in model.parameters() if p is not tau]
    return [
        {"params": rest, "weight_decay": weight_decay},
        {"params": [tau], "weight_decay": 0.0, "lr": temperature_lr},
    ]


def test_temperatures_stay_in_range_under_an_absurd_learning_rate():
    def train(clamp: bool) -> list[float]:
        torch.manual_seed(0)
        model = TinyEncoder()
        optimizer = torch.optim.AdamW(_groups(model, weight_decay=0.5, temperature_lr=50.0), lr=1.0)
        loss = E5OmniLoss(model, curriculum_warmup_steps=0)
        seen = []
        for step in range(200):
            loss.set_step(step, 200)
            cols = [
                {"x": torch.randn(8, 8), "modality_mask": mask(TXT, IMG, AUD, VID, TXT, IMG, AUD, VID)}
                for _ in range(3)
            ]
            optimizer.zero_grad()
            sum(loss(cols, None).values()).backward()
            optimizer.step()
            if clamp:
                assert clamp_temperatures_(model) == 1
            seen += model.alignment.log_temperature.detach().exp().tolist()
            if not clamp and not 0.005 <= min(seen) <= max(seen) <= 1.0:
                break  # out of range: without the clamp it would go on to inf/NaN
        return seen

    unclamped = train(clamp=False)
    assert min(unclamped) < 0.005 or max(unclamped) > 1.0  # the learning rate really is absurd
    clamped = train(clamp=True)
    assert all(0.005 - 1e-9 <= tau <= 1.0 + 1e-9 for tau in clamped)


def test_clamp_validation_and_models_without_temperatures():
    assert clamp_temperatures_(nn.Linear(2, 2)) == 0
    with pytest.raises(ValueError):
        clamp_temperatures_(TemperatureHolder(), min_tau=0.5, max_tau=0.1)
    two = nn.ModuleDict({"a": TemperatureHolder(), "b": TemperatureHolder()})
    with pytest.raises(ValueError, match="expected one parameter"):
        find_log_temperature(two)
