"""The processor's coupling to transformers: no remote code asked for its stock parts, and a run-time check that the
backbone processor resizes media to exactly the size e5-omni resized them to ahead of it."""

from __future__ import annotations

import pytest
import torch
import transformers

from e5omni.tiny import build_tiny
from modeling_e5omni.processing_e5omni import E5OmniProcessor, ResizeRuleError
from tests.conftest import make_image, make_video, tiny


def _calls_of(monkeypatch, owner, name: str) -> list[dict]:
    """Record the keyword arguments of every call of `owner.name` (a classmethod), calling the real one."""
    calls: list[dict] = []
    real = getattr(owner, name).__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(owner, name, classmethod(spy))
    return calls


@pytest.mark.parametrize("backbone", ["qwen2.5-omni", "qwen2-vl"])
def test_processor_loads_without_asking_for_remote_code(tmp_path, monkeypatch, backbone):
    """The backbone processor, its tokenizer and the config are stock classes: loading them never passes
    trust_remote_code=True on the user's behalf (it was forced before, even on the pip path)."""
    folder = build_tiny(tmp_path / "m", backbone=backbone)
    backbone_class = type(tiny(backbone).processor.backbone_processor)
    auto_calls = _calls_of(monkeypatch, transformers.AutoConfig, "from_pretrained")
    processor_calls = _calls_of(monkeypatch, backbone_class, "from_pretrained")
    processor = E5OmniProcessor.from_pretrained(folder)
    assert type(processor.backbone_processor) is backbone_class
    assert processor.config.model_type == "e5omni"
    assert processor_calls and all(call.get("trust_remote_code") is False for call in processor_calls)
    assert not any(call.get("trust_remote_code") for call in auto_calls)
    features = processor([{"text": "a cat", "image": make_image(0)}])
    assert features["input_ids"].shape[0] == 1


def _wrong_by_one_patch(predict, factor: int = 28):
    def wrong(*args):
        size = predict(*args)
        return None if size is None else (size[0] + factor, size[1])

    return wrong


@pytest.mark.parametrize(
    ("method", "item", "grid"),
    [("video_frame_size", {"video": make_video(1)}, "video_grid_thw"), ("image_size", make_image(2), "image_grid_thw")],
)
def test_a_changed_resize_rule_is_caught(omni_model, monkeypatch, method, item, grid):
    """If transformers' resize rule no longer matches e5-omni's copy of it, media resized ahead of the processor
    would be resized twice and the embeddings drift without an error: the grid check turns that into an error naming
    the item (shown here by making the prediction wrong)."""
    processor = omni_model.processor
    monkeypatch.setattr(processor, method, _wrong_by_one_patch(getattr(processor, method)))
    with pytest.raises(ResizeRuleError, match=rf"^item 1: the backbone's .*\({grid}\), but e5-omni predicted"):
        omni_model.encode_document(["a caption", item])
    # with pre-resizing off, the backbone processor resizes the full-size media itself: no check, no error
    monkeypatch.setattr(processor, "pre_resize", False)
    assert torch.isfinite(omni_model.encode_document(["a caption", item])).all()


def test_pre_resize_off_embeds_like_pre_resize_on(omni_model):
    """Pre-resizing is an optimisation only: the backbone processor's own resize of the full-size media gives the
    same vectors (the check above is what keeps it that way)."""
    items = [{"video": make_video(3, size=90)}, make_image(4, size=(130, 70)), {"text": "x", "image": make_image(5)}]
    processor = omni_model.processor
    ahead = omni_model.encode_document(items)
    processor.pre_resize = False
    try:
        itself = omni_model.encode_document(items)
    finally:
        processor.pre_resize = True
    assert float((ahead - itself).abs().max()) < 1e-5
