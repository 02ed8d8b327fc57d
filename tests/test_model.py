"""The embedding contract of E5OmniModel on every backbone kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_e5omni import E5OmniConfig, E5OmniModel, last_token_pool
from tests.conftest import items_for, make_audio, make_image, make_video


def test_each_modality_alone_and_mixed_is_unit_norm(backbone_model):
    name, model = backbone_model
    items = items_for(model.config.modalities)
    emb = model.encode_document(items)
    assert emb.shape == (len(items), model.config.hidden_size)
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(items)), atol=1e-5, rtol=0)
    # different items give different vectors (the model is not collapsing inputs)
    assert torch.cdist(emb, emb).fill_diagonal_(1.0).min() > 1e-4


def test_batch_invariance_mixed_batch_of_8(backbone_model):
    name, model = backbone_model
    items = items_for(model.config.modalities)
    assert len(items) == 8
    batched = model.encode_document(items, batch_size=8)
    for i, item in enumerate(items):
        alone = model.encode_document([item])[0]
        assert (alone - batched[i]).abs().max() < 1e-5, f"{name} item {i} differs when batched"


def test_queries_get_the_prompt_and_differ_from_documents(omni_model):
    q = omni_model.encode_query(["a red circle"])
    d = omni_model.encode_document(["a red circle"])
    assert (q - d).abs().max() > 1e-4
    d_prompted = omni_model.encode_document(["Query: a red circle"])
    assert (q - d_prompted).abs().max() < 1e-6  # the query prompt is exactly a text prefix


def test_order_restored_and_numpy_output(omni_model):
    items = ["short", "a much longer text " * 10, {"image": make_image(1)}, "mid length text"]
    full = omni_model.encode_document(items, batch_size=2)
    rev = omni_model.encode_document(items[::-1], batch_size=3, convert_to_numpy=True)
    assert isinstance(rev, np.ndarray)
    np.testing.assert_allclose(rev[::-1], full.numpy(), atol=1e-5)


def test_last_token_pool_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert last_token_pool(hidden, left)[:, 0].tolist() == [3.0, 7.0]
    assert last_token_pool(hidden, right)[:, 0].tolist() == [1.0, 7.0]


def test_right_padding_gives_the_same_embeddings(vl_model):
    processor = vl_model.processor
    items = ["short", "a much longer text item " * 4, {"image": make_image(1), "text": "x"}]
    tokenizer = processor.tokenizer
    original = tokenizer.padding_side
    try:
        tokenizer.padding_side = "left"
        left = vl_model.encode_document(items, batch_size=3)
        tokenizer.padding_side = "right"
        right = vl_model.encode_document(items, batch_size=3)
    finally:
        tokenizer.padding_side = original
    assert (left - right).abs().max() < 1e-5


def test_whitening_applied_when_enabled(omni_model):
    d = omni_model.config.hidden_size
    raw = omni_model.encode_document(["a red circle", "a blue square"])
    state = omni_model.alignment
    with torch.no_grad():
        state.whitening_mean.fill_(0.01)
        state.whitening_matrix.copy_(torch.diag(torch.linspace(0.5, 2.0, d)))
    try:
        omni_model.config.whitening = True
        whitened = omni_model.encode_document(["a red circle", "a blue square"])
    finally:
        omni_model.config.whitening = False
        with torch.no_grad():
            state.whitening_mean.zero_()
            state.whitening_matrix.copy_(torch.eye(d))
    assert (raw - whitened).abs().max() > 1e-3
    torch.testing.assert_close(whitened.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)


def test_similarity_is_cosine_and_truncate_dim(omni_model):
    q = omni_model.encode_query(["a red circle", "a tone"])
    d = omni_model.encode_document(["a red circle", {"audio": make_audio(1)}, {"video": make_video(1)}])
    torch.testing.assert_close(omni_model.similarity(q, d), q @ d.T, atol=1e-6, rtol=0)
    small = omni_model.encode_document(["a red circle"], truncate_dim=16)
    full = omni_model.encode_document(["a red circle"])
    torch.testing.assert_close(small, torch.nn.functional.normalize(full[:, :16], dim=-1), atol=1e-6, rtol=0)


def test_calibrated_similarity_divides_by_pair_temperature(omni_model):
    q = omni_model.encode_query(["a"])
    d = omni_model.encode_document(["b", {"image": make_image(0)}])
    with torch.no_grad():
        omni_model.log_temperature.copy_(torch.log(torch.tensor([0.013, 0.0127, 0.0219, 0.0223])))
    try:
        got = omni_model.similarity(q, d, calibrated=True, query_modalities="text", doc_modalities=["text", "image"])
    finally:
        with torch.no_grad():
            omni_model.log_temperature.fill_(float(np.log(0.02)))
    cos = (q @ d.T)[0]
    expected = torch.stack([cos[0] / 0.013, cos[1] / ((0.013 + 0.0127) / 2)])
    torch.testing.assert_close(got[0], expected, atol=1e-4, rtol=1e-5)


def test_progress_bar_for_long_inputs(omni_model, capsys):
    omni_model.encode_document([f"item {i}" for i in range(10)], batch_size=2)
    assert "encode documents" in capsys.readouterr().err
    omni_model.encode_document([f"item {i}" for i in range(10)], batch_size=2, show_progress_bar=False)
    assert "encode documents" not in capsys.readouterr().err


@pytest.mark.parametrize("frames", [1, 3, 9])
def test_odd_and_long_videos(omni_model, frames):
    emb = omni_model.encode_document([{"video": make_video(0, frames=frames)}])
    assert torch.isfinite(emb).all()


def test_running_whitening_stats_update_only_in_training_with_grad():
    from e5omni.tiny import build_tiny_model

    model, processor = build_tiny_model("qwen2.5-omni", seed=4)
    model.set_processor(processor)
    state = model.alignment
    texts = [f"text number {i} about shapes and colours" for i in range(40)]
    model.encode_document(texts)  # inference: no update
    assert int(state.whitening_updates) == 0
    batch = {k: v for k, v in processor(texts, role="document").items()}
    model.train()
    with torch.no_grad():
        model(**batch)  # a GradCache pre-pass: not counted
    assert int(state.whitening_updates) == 0
    out = model(**batch)
    assert int(state.whitening_updates) == 1
    unit = out.embeddings.detach()
    torch.testing.assert_close(state.whitening_mean, unit.mean(0), atol=1e-6, rtol=0)  # first update = exact mean
    torch.testing.assert_close(state.whitening_covariance, torch.cov(unit.T), atol=1e-6, rtol=0)
    model.eval()
    model.refresh_whitening()
    white = (unit - state.whitening_mean) @ state.whitening_matrix
    # ZCA with a relative ridge: each data eigenvalue lam of C becomes lam / (lam + eps * mean(lam)), i.e. ~1 on the
    # well-determined directions of the span, damped on the weakest ones, 0 off the span.
    lam = torch.linalg.eigvalsh(torch.cov(unit.T).double()).clamp(min=0)
    ridge = model.config.whitening_eps * lam.mean()
    expected = (lam / (lam + ridge)).sort().values
    got = torch.linalg.eigvalsh(torch.cov(white.T).double()).sort().values
    assert (got - expected).abs().max() < 1e-3
    assert (got[-20:] > 0.5).all()


# ------------------------------------------------------------------------------- config options both paths honour
def _config_of(model, **changes) -> E5OmniConfig:
    import copy

    config = copy.deepcopy(model.config)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize(("key", "value"), [("normalize", False), ("pooling", "mean")])
def test_options_the_paths_would_disagree_on_are_refused_at_construction(omni_model, key, value):
    """`normalize=False` made AutoModel return raw pooled vectors while sentence-transformers' Normalize module still
    normalised them (and dropped whitening): refused when the model is built, naming the option."""
    with pytest.raises(ValueError, match=rf"config\.{key}={value!r} is not supported"):
        E5OmniModel(_config_of(omni_model, **{key: value}))


def test_options_changed_after_construction_are_refused_at_forward(omni_model):
    omni_model.config.normalize = False
    try:
        with pytest.raises(ValueError, match=r"config\.normalize=False is not supported"):
            omni_model.encode_document(["x"])
    finally:
        omni_model.config.normalize = True
    assert torch.isfinite(omni_model.encode_document(["x"])).all()


def test_base_model_prefix_names_the_backbone(omni_model, tmp_path):
    """`base_model_prefix` is the attribute holding the backbone: `base_model` is it, and a checkpoint saved from the
    bare backbone (keys without `backbone.`) loads into E5OmniModel's backbone, only the alignment state missing."""
    assert E5OmniModel.base_model_prefix == "backbone" and omni_model.base_model is omni_model.backbone
    omni_model.backbone.save_pretrained(tmp_path)  # bare backbone weights: language_model.*, visual.*, audio_tower.*
    omni_model.config.save_pretrained(tmp_path)  # our config.json over the backbone's
    loaded, info = E5OmniModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and all(key.startswith("alignment.") for key in info["missing_keys"])
    mine = omni_model.backbone.state_dict()
    theirs = loaded.backbone.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_encode_warns_on_a_truncation_the_model_was_not_trained_for(omni_model):
    """A Matryoshka-trained model records its dims; `encode(truncate_dim=)` outside them warns (never refuses) and
    still returns the truncated, re-normalised vectors; a trained dimension or an untrained model does not warn."""
    import warnings

    saved = omni_model.config.matryoshka_dimensions
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            omni_model.encode_document(["a red circle"], truncate_dim=16)  # no dims recorded: nothing to say
        omni_model.config.matryoshka_dimensions = [omni_model.config.hidden_size, 32]
        with pytest.warns(UserWarning, match="truncate_dim=16: this model was trained"):
            vectors = omni_model.encode_document(["a red circle"], truncate_dim=16)
        assert vectors.shape == (1, 16) and abs(float(vectors.norm()) - 1) < 1e-5
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            omni_model.encode_document(["a red circle"], truncate_dim=32)
    finally:
        omni_model.config.matryoshka_dimensions = saved
