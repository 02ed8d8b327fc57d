"""LLaVA-OneVision against e5-omni's item contract (issue #23 part 3; docs/backbones.md, section "LLaVA-OneVision").

LLaVA-OneVision is NOT a backbone kind yet. These tests pin, on a tiny seeded LLaVA-OneVision built here from
transformers' own classes, the facts that decision rests on, so that a transformers release that changes one of them
fails here and the decision is revisited:
- what fits: one user message (media, then text) through a chat template + `<|endoftext|>`, pooled at the last
  attended token, is batch invariant with either padding side (1-D RoPE positions, no 3-D position ids);
- what does not: a batch of videos with different frame counts cannot be processed, the processor takes no pixel
  budget of the kind `E5OmniProcessor` passes, and the model needs `image_sizes` / `batch_num_images`, which
  `E5OmniModel` does not forward;
- and that `E5OmniConfig` refuses the backbone by name instead of half-serving it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionModel,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Tokenizer,
)

from e5omni.tiny import _train_bpe
from modeling_e5omni.configuration_e5omni import E5OmniConfig
from modeling_e5omni.modeling_e5omni import BACKBONE_INPUTS

# Tiles of 32 x 32 pixels (released: 384), 8-pixel patches -> 16 tokens per tile (released: 27 x 27 = 729).
TILE = 32
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'video' %}<video>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def llava():
    torch.manual_seed(0)
    vocab, merges = _train_bpe()
    vocab = dict(vocab)
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"):
        vocab.setdefault(token, len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]})
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS
        ),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": TILE, "width": TILE}),
        tokenizer=tokenizer,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaOnevisionConfig(
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "image_size": TILE,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    model = LlavaOnevisionModel(config).eval()
    return processor, model


def _template(processor, parts: list[str], text: str) -> str:
    message = [{"role": "user", "content": [{"type": p} for p in parts] + [{"type": "text", "text": text}]}]
    return processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False) + EOS


def _reference_embed(processor, model, texts, side: str, **media) -> torch.Tensor:
    """Chat template + eos, the backbone processor, last attended token (by attention mask), L2 norm."""
    processor.tokenizer.padding_side = side
    try:
        batch = processor(text=texts, padding=True, return_tensors="pt", **media)
    finally:
        processor.tokenizer.padding_side = "right"
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"]
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values
    return torch.nn.functional.normalize(hidden[torch.arange(len(hidden)), last], dim=-1)


def _image(rng, height: int, width: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("side", ["right", "left"])
def test_template_eos_last_token_is_batch_invariant(llava, side):
    """The part of the contract that fits: a mixed batch (image, text, video items) equals each item alone."""
    processor, model = llava
    rng = np.random.default_rng(0)
    image = _image(rng, 40, 90)
    video = rng.integers(0, 255, (4, 40, 50, 3), dtype=np.uint8)
    texts = [
        _template(processor, ["image"], "a"),
        _template(processor, [], "a longer text"),
        _template(processor, ["video"], "v"),
    ]
    batched = _reference_embed(processor, model, texts, side, images=[image], videos=[video])
    alone = torch.cat(
        [
            _reference_embed(processor, model, texts[:1], side, images=[image]),
            _reference_embed(processor, model, texts[1:2], side),
            _reference_embed(processor, model, texts[2:], side, videos=[video]),
        ]
    )
    assert (batched - alone).abs().max().item() < 1e-5


def test_videos_of_different_lengths_cannot_share_a_batch(llava):
    """e5-omni samples a clip's frames by its duration (4..max_frames), so a batch holds clips of different lengths:
    the LLaVA-OneVision processor cannot stack them (and the model's get_video_features takes one 5-D tensor)."""
    processor, _ = llava
    rng = np.random.default_rng(1)
    videos = [rng.integers(0, 255, (n, 40, 50, 3), dtype=np.uint8) for n in (4, 6)]
    texts = [_template(processor, ["video"], "v")] * 2
    with pytest.raises(ValueError, match="pixel_values_videos"):
        processor(text=texts, videos=videos, padding=True, return_tensors="pt")


def test_processor_takes_no_pixel_budget_of_e5omni_kind(llava):
    """Images are tiled onto fixed grid pinpoints (`anyres_max_9`), frames resized to one fixed tile: the
    min/max-pixels `size` E5OmniProcessor passes breaks the image path, and its video kwargs are unknown."""
    processor, _ = llava
    rng = np.random.default_rng(2)
    text = [_template(processor, ["image"], "a")]
    budget = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        processor(text=text, images=[_image(rng, 40, 90)], images_kwargs={"size": budget}, return_tensors="pt")
    video = rng.integers(0, 255, (4, 40, 50, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match="cap_pixels_per_frame"):
        processor(
            text=[_template(processor, ["video"], "v")],
            videos=[video],
            videos_kwargs={"size": budget, "do_sample_frames": False, "fps": 2.0, "cap_pixels_per_frame": True},
            return_tensors="pt",
        )


def test_image_cost_is_set_by_tiling_not_pixels(llava):
    """Token count per image follows the pinpoint grid (+ newline tokens), not its pixel count: a 500 x 2000 image costs
    fewer tokens than a 64 x 64 one here, so max_pixels cannot bound an item's cost."""
    processor, model = llava
    rng = np.random.default_rng(3)
    image_token = model.config.image_token_id
    counts = {}
    for size in [(20, 20), (64, 64), (500, 2000)]:
        batch = processor(text=[_template(processor, ["image"], "a")], images=[_image(rng, *size)], return_tensors="pt")
        counts[size] = int((batch["input_ids"] == image_token).sum())
    assert counts == {(20, 20): 36, (64, 64): 88, (500, 2000): 34}


def test_model_needs_inputs_e5omni_model_does_not_forward(llava):
    processor, model = llava
    rng = np.random.default_rng(4)
    batch = processor(text=[_template(processor, ["image"], "a")], images=[_image(rng, 40, 90)], return_tensors="pt")
    assert {"image_sizes", "batch_num_images"} <= set(batch) and not {"image_sizes", "batch_num_images"} & set(
        BACKBONE_INPUTS
    )
    with torch.no_grad(), pytest.raises(TypeError):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"])


def test_e5omni_config_refuses_llava_onevision_by_name(llava):
    _, model = llava
    with pytest.raises(ValueError, match="llava_onevision"):
        E5OmniConfig(backbone_config=model.config.to_dict())
