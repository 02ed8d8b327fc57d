"""CachedE5OmniLoss on the real tiny Qwen2.5-Omni model and the trainer's own batches (real processor features: text,
image, audio, video and mixed items, sliced by `slice_features`): the same loss and gradients, every backbone
parameter and the temperatures, as the plain loss."""

from __future__ import annotations

import pytest
import torch

from e5omni.data.synthetic import build_synthetic
from e5omni.tiny import build_tiny_model
from e5omni.train.losses import CachedE5OmniLoss, E5OmniLoss
from e5omni.train.trainer import E5OmniTrainer, E5OmniTrainingArguments

BATCH = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    args = E5OmniTrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("gradcache")),
        per_device_train_batch_size=BATCH,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = E5OmniTrainer(model, args, build_synthetic("train", n=2 * BATCH, seed=0))
    features, _ = trainer.collect_features(next(iter(trainer.get_train_dataloader())))
    masks = torch.cat([f["modality_mask"] for f in features])
    assert masks.any(0).all(), "the batch should hold every modality"
    assert (masks.sum(1) > 1).any(), "the batch should hold a mixed item"
    st = trainer.model
    st.train()
    return st, model, features


def _run(st, model, loss, features):
    st.zero_grad(set_to_none=True)
    loss.set_step(3, 10)
    out = loss([dict(f) for f in features], None)  # sentence-transformers modules write into the dicts they get
    total = torch.stack(list(out.values())).sum()
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mini_batch_size", [1, 2, BATCH + 1])
def test_cached_loss_equals_plain_on_the_tiny_model(setup, mini_batch_size):
    st, model, features = setup
    options = {"curriculum_warmup_steps": 0}
    expected_loss, expected = _run(st, model, E5OmniLoss(st, **options), features)
    loss, got = _run(st, model, CachedE5OmniLoss(st, mini_batch_size=mini_batch_size, **options), features)
    assert "alignment.log_temperature" in expected
    assert set(got) == set(expected)
    # Measured: loss within 5e-6, every gradient within 3.5e-6 of its own scale (mini-batches pad to other widths,
    # so matmuls round differently); a mini-batch holding the whole column: 1.8e-7.
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for name, grad in expected.items():
        scale = grad.abs().max().item()
        error = (got[name] - grad).abs().max().item()
        assert error <= 1e-5 * scale + 1e-9, f"{name}: max error {error:.3g} at scale {scale:.3g}"
