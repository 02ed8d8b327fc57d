"""The public model card's embedding path, written independently of our classes.

chat template with add_generation_prompt=True, "<|endoftext|>" appended, left padding, the thinker
ForConditionalGeneration forward with output_hidden_states=True, hidden_states[-1][:, -1], L2 norm. Queries are text
"Query: " + text; documents carry no prefix.
"""

from __future__ import annotations

import torch
import transformers
from transformers import AutoConfig, AutoProcessor


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
