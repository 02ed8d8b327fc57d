"""Golden embeddings of fixed probes on the seeded tiny model, compared exactly (regenerate with `make golden`)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from e5omni.tiny import build_tiny_model
from tests.golden import BACKBONE, GOLDEN, SEED, compute


def test_tiny_model_is_deterministic_for_a_seed():
    a, _ = build_tiny_model(BACKBONE, seed=SEED)
    b, _ = build_tiny_model(BACKBONE, seed=SEED)
    c, _ = build_tiny_model(BACKBONE, seed=SEED + 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point() and sa[k].numel() > 16)


def test_golden_embeddings_exact():
    assert GOLDEN.exists(), "tests/data/golden_embeddings.safetensors is missing: run `make golden`"
    model, processor = build_tiny_model(BACKBONE, seed=SEED)
    model.set_processor(processor)
    expected = load_file(str(GOLDEN))
    got = compute(model)
    assert sorted(got) == sorted(expected)
    for name in expected:
        diff = (got[name] - expected[name]).abs().max().item()
        assert torch.equal(got[name], expected[name]), (
            f"{name} changed (max abs diff {diff:.3g}); if intended, make golden"
        )
