"""CachedE5OmniLoss (GradCache) against E5OmniLoss: equal loss and gradients on a fake omni model whose inputs are
not all batch-first (flattened image/video patch rows with grids, audio rows only for items with audio)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from e5omni.train.losses import CachedE5OmniLoss, E5OmniLoss
from tests.helpers import FakeOmniModel, fake_slicer, make_batch


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def run(loss, model, batch, scale=1.0):
    model.zero_grad()
    out = loss(batch, None)
    (torch.stack(list(out.values())).sum() * scale).backward()  # what the sentence-transformers trainer does
    return {k: v.detach() for k, v in out.items()}, grads(model)


CONFIGS = {
    "full": {},
    "full_on_whitened_symmetric": {"logits_on_whitened": True, "symmetric": True},
    "plain_info_nce": {
        "use_temperature": False,
        "use_curriculum": False,
        "use_dcl": False,
        "use_whitening_coral": False,
    },
}


def as_dtype(batch, dtype):
    media = ("pixel_values", "pixel_values_videos", "input_features")
    return [{k: v.to(dtype) if k in media else v for k, v in column.items()} for column in batch]


# dtype -> tolerance of the loss and of each gradient, relative to that gradient's largest entry. float64 shows the
# cached and uncached computations are identical (measured <= 2.1e-14 over every case below); in fp32 the mini-batched
# matmuls leave rounding-level differences (measured <= 1.7e-6 of the scale, log tau included), which the whitening's
# conditioning (jitter 1e-3) amplifies (<= 1.35e-5) when the logits are computed on whitened embeddings.
TOLERANCES = {torch.float64: 1e-10, torch.float32: 3e-6}


@pytest.mark.parametrize("layout", ["mixed", "one_modality_per_column"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("mini_batch_size", [1, 2, 3, 9], ids=lambda m: f"mini{m}")  # 9 > the batch of 8
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cached_equals_uncached(config, mini_batch_size, dtype, layout):
    torch.manual_seed(0)
    model = FakeOmniModel().to(dtype)
    batch = as_dtype(make_batch(layout=layout), dtype)
    options = {"curriculum_warmup_steps": 0, "whitening_eps": 1e-3} | CONFIGS[config]
    plain = E5OmniLoss(model, **options)
    cached = CachedE5OmniLoss(model, mini_batch_size=mini_batch_size, slicer=fake_slicer, **options)
    for loss in (plain, cached):
        loss.set_step(5, 10)
    expected_out, expected_grads = run(plain, model, batch)
    out, got_grads = run(cached, model, batch)
    tol = TOLERANCES[dtype] * (10 if dtype == torch.float32 and options.get("logits_on_whitened") else 1)
    assert set(out) == {"dcl", "coral"}
    for key in out:
        torch.testing.assert_close(out[key], expected_out[key], rtol=tol, atol=tol)
    assert set(got_grads) == set(expected_grads)
    if options.get("use_temperature", True):
        assert "log_temperature" in got_grads
    for name, expected in expected_grads.items():
        scale = expected.abs().max().item()
        error = (got_grads[name] - expected).abs().max().item()
        assert error <= tol * scale, f"{name}: max error {error:.3g} at scale {scale:.3g}"
    assert cached.last_diagnostics == pytest.approx(plain.last_diagnostics, rel=1e-5)


def test_cached_with_the_project_slicer():
    """The default slicer (modeling_e5omni.processing_e5omni.slice_features) on the same media layout."""
    pytest.importorskip("modeling_e5omni.processing_e5omni")
    torch.manual_seed(0)
    model = FakeOmniModel()
    batch = make_batch(seed=3)
    plain = E5OmniLoss(model, curriculum_warmup_steps=0)
    cached = CachedE5OmniLoss(model, mini_batch_size=3, curriculum_warmup_steps=0)  # default slicer
    expected_out, expected_grads = run(plain, model, batch)
    out, got_grads = run(cached, model, batch)
    torch.testing.assert_close(sum(out.values()), sum(expected_out.values()), rtol=1e-5, atol=1e-6)
    for name in expected_grads:
        torch.testing.assert_close(got_grads[name], expected_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_outer_gradient_scale_reaches_every_parameter_including_the_temperature():
    torch.manual_seed(0)
    model = FakeOmniModel()
    batch = make_batch()
    cached = CachedE5OmniLoss(model, mini_batch_size=3, slicer=fake_slicer)
    _, full = run(cached, model, batch)
    _, quarter = run(cached, model, batch, scale=0.25)  # gradient accumulation / loss scaling
    assert full["log_temperature"].abs().sum() > 0
    for name in full:
        torch.testing.assert_close(quarter[name], full[name] * 0.25, rtol=1e-5, atol=1e-7, msg=name)


def test_frozen_encoder_still_trains_the_temperature():
    torch.manual_seed(0)
    model = FakeOmniModel()
    for name, p in model.named_parameters():
        p.requires_grad_(name == "log_temperature")
    batch = make_batch()
    _, expected = run(E5OmniLoss(model), model, batch)
    _, got = run(CachedE5OmniLoss(model, mini_batch_size=3, slicer=fake_slicer), model, batch)
    assert set(got) == {"log_temperature"}
    torch.testing.assert_close(got["log_temperature"], expected["log_temperature"], rtol=1e-5, atol=1e-7)


def test_replayed_forward_reproduces_the_dropout_of_the_first_pass():
    torch.manual_seed(0)
    model = FakeOmniModel(dropout=0.3).train()
    batch = make_batch()
    cached = CachedE5OmniLoss(model, mini_batch_size=3, slicer=fake_slicer)
    model.outputs.clear()
    out = cached(batch, None)
    first_pass = list(model.outputs)
    assert len(first_pass) == 9  # 3 columns x 3 mini-batches (3 + 3 + 2 items)
    model.outputs.clear()
    sum(out.values()).backward()
    assert len(model.outputs) == 9
    for before, replayed in zip(first_pass, model.outputs):
        assert torch.equal(before, replayed)  # same dropout masks (RandContext), so the cached gradients apply
    # Without the replayed RNG state the dropout masks would differ: the test can tell.
    torch.manual_seed(1)
    assert not torch.equal(model(fake_slicer(batch[0], 0, 3))["sentence_embedding"], first_pass[0])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_evaluation_mode_returns_the_loss_without_a_graph():
    torch.manual_seed(0)
    model = FakeOmniModel()
    batch = make_batch()
    with torch.no_grad():
        expected = E5OmniLoss(model)(batch, None)
        got = CachedE5OmniLoss(model, mini_batch_size=3, slicer=fake_slicer)(batch, None)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
        assert not got[key].requires_grad


def test_a_slicer_that_drops_items_is_caught():
    model = FakeOmniModel()
    broken = lambda features, start, end: fake_slicer(features, start, max(start + 1, end - 1))  # noqa: E731
    cached = CachedE5OmniLoss(model, mini_batch_size=3, slicer=broken)
    with pytest.raises(ValueError, match="slicer returned features for 2 items"):
        cached(make_batch(), None)


def test_options_and_delegation():
    model = FakeOmniModel()
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedE5OmniLoss(model, mini_batch_size=0, slicer=fake_slicer)
    with pytest.raises(ValueError, match="slicer must be callable"):
        CachedE5OmniLoss(model, slicer="slice_features")
    with pytest.raises(ValueError, match="gamma_plus"):
        CachedE5OmniLoss(model, slicer=fake_slicer, gamma_plus=2.0)
    cached = CachedE5OmniLoss(model, mini_batch_size=4, slicer=fake_slicer, lambda_coral=0.1, curriculum_warmup_steps=0)
    cached.set_step(50, 100)
    assert cached.rho == pytest.approx(0.3)
    config = cached.get_config_dict()
    assert config["mini_batch_size"] == 4 and config["lambda_coral"] == 0.1
    assert "2101.06983" in cached.citation and "2601.03666" in cached.citation
    batch = make_batch()
    batch[1] = {k: v for k, v in batch[1].items() if k != "modality_mask"}
    with pytest.raises(ValueError, match="modality_mask"):
        cached(batch, None)


def test_token_budget_mini_batches_equal_uncached_and_respect_the_budget():
    torch.manual_seed(0)
    model = FakeOmniModel().double()
    batch = as_dtype(make_batch(), torch.float64)
    cached = CachedE5OmniLoss(model, mini_batch_size=100, mini_batch_num_tokens=10, slicer=fake_slicer)
    counts = batch[0]["attention_mask"].sum(1).tolist()
    ranges = cached._ranges(batch[0], 8)
    assert ranges[0][0] == 0 and ranges[-1][1] == 8 and len(ranges) > 1
    assert all(b == a for (_, a), (b, _) in zip(ranges, ranges[1:]))  # contiguous, in order
    for begin, end in ranges:  # within the budget, or one item alone
        assert sum(counts[begin:end]) <= 10 or end - begin == 1
    expected_out, expected = run(E5OmniLoss(model), model, batch)
    out, got = run(cached, model, batch)
    torch.testing.assert_close(sum(out.values()), sum(expected_out.values()), rtol=1e-10, atol=1e-10)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-10, msg=name)
    no_mask = [{k: v for k, v in column.items() if k != "attention_mask"} for column in batch]
    with pytest.raises(ValueError, match="mini_batch_num_tokens needs a"):
        cached._ranges(no_mask[0], 8)
    with pytest.raises(ValueError, match="mini_batch_num_tokens must be a positive int"):
        CachedE5OmniLoss(model, mini_batch_num_tokens=0, slicer=fake_slicer)


def test_gradcache_uses_no_private_helpers_of_other_packages():
    """The GradCache steps are our own (public torch API): no `_private` name imported from another package, nothing
    from sentence-transformers' gradcache module, whose hooks and dot-product surrogate are internals."""
    import ast
    import inspect

    from e5omni.train.losses import cached

    tree = ast.parse(inspect.getsource(cached))
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    foreign = [n for n in imports if isinstance(n, ast.ImportFrom) and n.level == 0]
    private = [(n.module, a.name) for n in foreign for a in n.names if a.name.startswith("_")]
    assert private == []
    modules = [n.module for n in foreign] + [a.name for n in imports if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m.startswith("sentence_transformers")], modules
