"""User text and instructions are tokenised literally: no string in them becomes a control or media token.

The processor renders each item's chat template with an empty text part (the backbone processor expands only the
template's own media placeholders), then splices the literal ids of the text part (`E5OmniProcessor.literal_ids`: the
backend normalizer, pre-tokenizer and BPE model, never the added-token matcher) in front of the template tail.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from e5omni.tiny import ALL_BACKBONES, BACKBONES, build_tiny_model
from modeling_e5omni.media_e5omni import normalize_item
from tests.conftest import make_audio, make_image, make_video, tiny

PLAIN_TEXTS = [
    "a red circle in the top left corner",
    "Query: what is shown?\nsecond line",
    "  leading spaces, trailing ones  ",
    "tabs\tand\r\nwindows newlines\n\n",
    "unicode: café, naïve, 東京, emoji 🐕, combining e\u0301",
    "<not a token> <| im_end |> <|imend|> |> <|",
    "numbers 1234567890 and punctuation !?.,;:'\"",
]


def _reserved(processor) -> set[int]:
    return set(processor.tokenizer.added_tokens_decoder) | set(processor.tokenizer.all_special_ids)


def _tokens(processor) -> list[str]:
    """Every added/special token string of the backbone's tokenizer, plus the eos suffix."""
    tokens = [t.content for t in processor.tokenizer.added_tokens_decoder.values()]
    return sorted({*tokens, processor.config.eos_suffix})


def _items(model, text: str) -> list:
    items = [text, {"text": text, "image": make_image(1)}, {"text": text, "video": make_video(1)}]
    items.append({"text": "plain", "instruction": text, "image": make_image(2)})
    if "audio" in model.config.modalities:
        items.append({"text": text, "audio": make_audio(1)})
        items.append({"text": text, "image": make_image(3), "audio": make_audio(3), "video": make_video(3)})
    return items


def _process(model, items, role="document"):
    decoded = [normalize_item(item, i, model.config) for i, item in enumerate(items)]
    return model.processor.process_decoded(decoded, role)


def _rows(batch) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


def _find(row: list[int], span: list[int]) -> int:
    """Start of the last occurrence of `span` in `row`."""
    for start in range(len(row) - len(span), -1, -1):
        if row[start : start + len(span)] == span:
            return start
    raise AssertionError(f"{span} not in {row}")


@pytest.mark.parametrize("backbone", ALL_BACKBONES)  # the Qwen3 kinds too
def test_literal_ids_equal_plain_tokenisation_for_plain_text(backbone):
    processor = tiny(backbone).processor
    for text in PLAIN_TEXTS:
        assert processor.literal_ids(text) == processor.tokenizer(text, add_special_tokens=False)["input_ids"], text


@pytest.mark.parametrize("backbone", BACKBONES)
def test_plain_text_batches_are_what_the_backbone_processor_made_before(backbone):
    """Without added-token strings, the spliced ids are exactly the old ones: the whole rendered string tokenised by
    the backbone processor (so embeddings of ordinary items, the golden file included, do not move)."""
    model = tiny(backbone)
    processor = model.processor
    items = PLAIN_TEXTS[:3] + _items(model, "a caption of medium length")
    decoded = [normalize_item(item, i, model.config) for i, item in enumerate(items)]
    for role in ("document", "query"):
        new = processor.process_decoded(decoded, role)
        kwargs = {"text": [processor.render(d, role) for d in decoded], "padding": True, "return_tensors": "pt"}
        images = [d.image for d in decoded if d.image is not None]
        videos = [d.video for d in decoded if d.video is not None]
        audio = [d.audio for d in decoded if d.audio is not None]
        kwargs["images"] = images
        kwargs["images_kwargs"] = {
            "size": {"shortest_edge": model.config.min_pixels, "longest_edge": model.config.max_pixels}
        }
        kwargs["videos"] = videos
        kwargs["videos_kwargs"] = {
            "size": {"shortest_edge": model.config.video_min_pixels, "longest_edge": model.config.video_max_pixels},
            "do_sample_frames": False,
            "fps": model.config.fps,
            "cap_pixels_per_frame": True,
        }
        if audio:
            kwargs["audio"] = audio
            kwargs["audio_kwargs"] = {"sampling_rate": 16000}
        old = processor.backbone_processor(**kwargs)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            if key in old:
                assert torch.equal(new[key], old[key]), (role, key)


@pytest.mark.parametrize("backbone", ALL_BACKBONES)  # the Qwen3 kinds too
def test_every_special_token_in_text_is_literal_in_every_kind_of_item(backbone):
    """Each added/special token of the tokenizer (and the eos suffix) inside the text of text, image, audio, video,
    mixed and instruction items, in one batch: the text span holds exactly `tokenizer(text, split_special_tokens=True)`
    ids, no reserved id, and the template around it is the one a plain text gets."""
    model = tiny(backbone)
    processor = model.processor
    reserved = _reserved(processor)
    benign = "x y z"
    prompt = model.config.query_prompt
    for token in _tokens(processor):
        text = f"a {token} b{token}"
        hostile = _rows(_process(model, _items(model, text), "query"))
        plain = _rows(_process(model, _items(model, benign), "query"))
        for j, (row, ref) in enumerate(zip(hostile, plain, strict=True)):
            # the text part: prompt + text, or prompt + instruction + "\n" + text for the instruction item
            part, benign_part = (
                (f"{prompt}{text}\nplain", f"{prompt}{benign}\nplain") if j == 3 else (prompt + text, prompt + benign)
            )
            expected = processor.tokenizer(part, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            assert not reserved & set(expected)
            assert processor.literal_ids(part) == expected
            benign_ids = processor.tokenizer(benign_part, add_special_tokens=False)["input_ids"]
            start = _find(ref, benign_ids)
            assert row == ref[:start] + expected + ref[start + len(benign_ids) :], (token, j)
            # outside the text span the row has exactly the reserved ids of the benign row
            assert [i for i in row if i in reserved] == [i for i in ref if i in reserved], (token, j)


@pytest.mark.parametrize("backbone", ALL_BACKBONES)  # the Qwen3 kinds too
def test_hostile_text_embeds_in_a_mixed_batch_without_crashing(backbone):
    """All tokens at once, in every kind of item and in an instruction, through encode (Qwen2.5-Omni's rope index
    code used to fail on `<|audio_bos|>` in an image caption): embeddings are finite and batch-independent."""
    model = tiny(backbone)
    text = "a " + " ".join(_tokens(model.processor)) + " b"
    items = _items(model, text) + ["plain text"]
    together = model.encode_query(items, batch_size=len(items))
    alone = torch.cat([model.encode_query([item]) for item in items])
    assert torch.isfinite(together).all()
    assert (together - alone).abs().max() < 1e-5


def test_audio_bos_in_an_image_caption_with_audio_in_the_batch():
    model = tiny("qwen2.5-omni")
    items = [{"text": "a <|audio_bos|> caption", "image": make_image(1)}, {"audio": make_audio(1)}]
    items.append({"text": "<|audio_bos|><|AUDIO|><|audio_eos|>", "video": make_video(1)})
    embeddings = model.encode_document(items)
    assert torch.isfinite(embeddings).all()


@pytest.mark.parametrize("backbone", ALL_BACKBONES)  # the Qwen3 kinds too
def test_placeholder_strings_in_text_do_not_change_media_expansion(backbone):
    """The backbone processors count placeholder strings in the text they get; user text never reaches them, so
    a literal `<|IMAGE|>` / `<|image_pad|>` in a caption adds no media token and takes no image's slots."""
    model = tiny(backbone)
    processor = model.processor
    bp = processor.backbone_processor
    media_ids = {processor.tokenizer.convert_tokens_to_ids(t) for t in (bp.image_token, bp.video_token)}
    placeholders = " ".join(t for t in (bp.image_token, getattr(bp, "audio_token", None), bp.video_token) if t)
    items = [{"text": f"see {placeholders} here", "image": make_image(1)}, {"text": "x", "image": make_image(2)}]
    rows = _rows(_process(model, items))
    counts = [sum(i in media_ids for i in row) for row in rows]
    assert counts[0] == counts[1] > 0


def test_added_tokens_that_are_not_special_are_literal_too():
    """`split_special_tokens=True` still matches added tokens not marked special (real Qwen tokenizers have some,
    e.g. `<tool_call>`); `literal_ids` matches no added token at all."""
    _, processor = build_tiny_model("qwen2-vl", seed=0)
    processor.tokenizer.add_tokens(["<tool_call>"])  # special=False
    added = processor.tokenizer.convert_tokens_to_ids("<tool_call>")
    text = "call <tool_call> now"
    split = processor.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert added in split  # why split_special_tokens alone is not enough
    processor._reserved = None
    literal = processor.literal_ids(text)
    assert added not in literal
    rows = _rows(processor([text, {"text": text, "image": make_image(0)}]))
    assert all(added not in row for row in rows)


def test_truncation_keeps_literal_ids_and_the_template_tail():
    model = tiny("qwen2.5-omni")
    processor = model.processor
    text = "<|im_end|> " * 400
    limit = model.config.max_length
    with pytest.warns(UserWarning, match=r"item 0: text of \d+ tokens truncated"):
        batch = _process(model, [text])
    row = _rows(batch)[0]
    literal = processor.literal_ids(text)[:limit]
    start = _find(row, literal)
    assert not _reserved(processor) & set(row[start : start + limit])
    tail = processor.tokenizer(
        f"<|im_end|>\n<|im_start|>assistant\n{model.config.eos_suffix}", add_special_tokens=False
    )["input_ids"]
    assert row[start + limit :] == tail


def test_render_shows_the_text_in_place():
    model = tiny("qwen2.5-omni")
    item = normalize_item({"text": "a <|im_end|> b", "image": make_image(0)}, 0, model.config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shown = model.processor.render(item, "document")
    assert shown.endswith("<|vision_eos|>a <|im_end|> b<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
