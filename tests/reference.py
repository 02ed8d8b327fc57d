"""The public model card's embedding path, written independently of our classes.

chat template with add_generation_prompt=True, "<|endoftext|>" appended, left padding, the thinker
ForConditionalGeneration forward with output_hidden_states=True, hidden_states[-1][:, -1], L2 norm. Queries are text
"Query: " + text; documents carry no prefix.
"""

from __future__ import annotations

import torch
import transformers
from transformers import AutoConfig, AutoProcessor

from e5omni.tiny import QWEN3_IMAGE_SIZE
from tests.conftest import make_audio, make_image, make_video


def reference_embed(folder, items: list[dict], query: bool = False) -> torch.Tensor:
    """Items: {"text", "image", "audio", "video", "video_audio"} with decoded media; "video_audio" is the video's
    audio track (the card's `use_audio_in_video=True`: an audio slot taken from the video, no placeholder)."""
    config = AutoConfig.from_pretrained(folder)
    cls = {
        "qwen2_5_omni_thinker": transformers.Qwen2_5OmniThinkerForConditionalGeneration,
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
    }[config.model_type]
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    texts, images, audio, videos, from_video = [], [], [], [], []
    for item in items:
        content = []
        if "image" in item:
            content.append({"type": "image"})
            images.append(item["image"])
        if "audio" in item:
            content.append({"type": "audio"})
            audio.append(item["audio"])
            from_video.append(None)
        if "video" in item:
            content.append({"type": "video"})
            if item.get("video_audio") is not None:
                audio.append(item["video_audio"])
                from_video.append(len(videos))
            videos.append(item["video"])
        text = ("Query: " if query else "") + item.get("text", "")
        if text:
            content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        texts.append(
            processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "<|endoftext|>"
        )
    kwargs = {"text": texts, "padding": True, "return_tensors": "pt"}
    if images:
        kwargs["images"] = images
    if audio:
        kwargs["audio"] = audio
    if videos:
        kwargs["videos"] = videos
        kwargs["videos_kwargs"] = {"do_sample_frames": False, "cap_pixels_per_frame": True}
    in_video = any(index is not None for index in from_video)
    if in_video:
        kwargs.update(use_audio_in_video=True, audio_from_video_indices=from_video)
    inputs = processor(**kwargs)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, **({"use_audio_in_video": True} if in_video else {}))
    return torch.nn.functional.normalize(out.hidden_states[-1][:, -1].float(), dim=-1)


# ------------------------------------------------------------------------------ Qwen3-VL / Qwen3-Omni thinker
# The reference path of the Qwen3 kinds, on the bare transformers backbone (`e5omni.tiny.build_tiny_backbone` or
# `e5omni.convert.load_backbone`), written independently of modeling_e5omni.

EOS = "<|endoftext|>"
FPS = 2.0


def qwen3_video_kwargs(kind: str, frames: list[int]) -> dict:
    # What E5OmniProcessor passes today (frames already sampled, size from the config, capped per frame), plus, for
    # Qwen3-VL, the metadata its processor turns into "<t seconds>" stamps: frame k of a clip sampled at FPS.
    kwargs = {
        "videos_kwargs": {
            "do_sample_frames": False,
            "size": dict(QWEN3_IMAGE_SIZE),
            "fps": FPS,
            "cap_pixels_per_frame": True,
        }
    }
    if kind == "qwen3-vl":
        kwargs["video_metadata"] = [
            {"fps": FPS, "frames_indices": list(range(n)), "total_num_frames": n} for n in frames
        ]
    return kwargs


def qwen3_inputs(
    processor,
    kind: str,
    items: list[dict],
    query: bool = False,
    padding_side: str | None = None,
    audio_padding: str | bool = "max_length",
):
    """One user message per item: media parts (image, audio, video), then the text ("Query: " + text for queries);
    the chat template with add_generation_prompt=True, then EOS; the backbone processor pads the batch.

    Audio features are padded to the feature extractor's chunk_length ("max_length", Qwen2.5-Omni's processor
    default): Qwen3OmniMoeProcessor's own default (padding=True, to the longest clip of the batch) changes the last
    mel frame of a shorter clip with its batch (test_omni_audio_embedding_and_its_batch)."""
    texts, images, audio, videos = [], [], [], []
    for item in items:
        content = []
        if "image" in item:
            content.append({"type": "image"})
            images.append(item["image"])
        if "audio" in item:
            content.append({"type": "audio"})
            audio.append(item["audio"]["array"])
        if "video" in item:
            content.append({"type": "video"})
            videos.append(item["video"])
        text = ("Query: " if query else "") + item.get("text", "")
        if text:
            content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + EOS)
    text_kwargs = {"padding": True} if padding_side is None else {"padding": True, "padding_side": padding_side}
    # per-modality kwargs: "padding" at the top level would collide with the audio one
    kwargs = {"text": texts, "text_kwargs": text_kwargs, "return_tensors": "pt"}
    if images:
        kwargs["images"] = images
    if audio:
        kwargs["audio"] = audio
        kwargs["audio_kwargs"] = {"padding": audio_padding}
    if videos:
        kwargs["videos"] = videos
        kwargs.update(qwen3_video_kwargs(kind, [len(v) for v in videos]))
    return processor(**kwargs)


def last_attended(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden[b, last position whose mask is 1]: the same index under left and right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.bool() * positions).amax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def qwen3_reference_embed(model, processor, kind: str, items: list[dict], **kwargs) -> torch.Tensor:
    inputs = qwen3_inputs(processor, kind, items, **kwargs)
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    return torch.nn.functional.normalize(last_attended(hidden, inputs["attention_mask"]).float(), dim=-1)


def probe_items(kind: str) -> list[dict]:
    """Each modality alone and mixed, with different lengths so a batch pads (4-frame 64 x 64 videos)."""
    items = [
        {"text": "a red circle in the top left"},
        {"text": "short"},
        {"image": make_image(1, (64, 64))},
        {"text": "a caption", "image": make_image(2, (96, 64))},
        {"video": make_video(1, frames=4, size=64)},
        {"text": "a blue square moving right", "video": make_video(2, frames=4, size=64)},
    ]
    if kind == "qwen3-omni":
        items += [
            {"audio": make_audio(1, seconds=1.0)},
            {"text": "a rising tone", "audio": make_audio(2, seconds=1.5)},  # >= 1 s: see the sub-second test
            {"text": "all", "image": make_image(3, (64, 64)), "audio": make_audio(3), "video": make_video(3, 4, 64)},
        ]
    return items
