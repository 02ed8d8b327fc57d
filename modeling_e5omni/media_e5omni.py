"""Media decoding under the model's budgets: images, audio and video from paths, bytes, PIL images and arrays.

`normalize_item(item, index, config)` turns one checked item into an `OmniItem` (PIL RGB image, float32 mono 16 kHz
audio, uint8 (T, H, W, 3) frames). Image headers are checked against a pixel cap and a format allow-list before
decoding, audio is read no further than the budget, videos are sampled by seeking. Every refusal is an
`E5OmniInputError` subclass naming the item index and what was expected.

The readers live in one module per medium, all shipped next to this one (transformers copies the relative imports
of the model code into a saved folder): `media_image_e5omni`, `media_audio_e5omni`, `media_video_e5omni`, and
`media_remote_e5omni` (where a value's bytes come from: a local file or, opt-in, an http(s) URL under the policy of
docs/remote-media.md). Their public names are re-exported here, the import path every caller uses.
"""

from __future__ import annotations

from PIL import Image

from .configuration_e5omni import E5OmniConfig
from .inputs_e5omni import _ARRAY, OmniItem
from .media_audio_e5omni import (
    MAX_AUDIO_MAGNITUDE,
    MAX_SAMPLING_RATE,
    MIN_SAMPLING_RATE,
    SAMPLING_RATE,
    load_audio,
)
from .media_image_e5omni import (
    MAX_ASPECT_RATIO,
    check_aspect,
    image_from_array,
    load_image,
    resize_frame,
    resize_image,
)
from .media_remote_e5omni import MAX_REMOTE_BYTES, RemotePolicy, fetch_remote, media_source
from .media_video_e5omni import (
    FRAME_FACTOR,
    MIN_FRAMES,
    FrameSize,
    load_video,
    load_video_audio,
    video_frame_count,
    video_frame_indices,
    video_frames_from_array,
)


def normalize_item(item, index: int, config: E5OmniConfig, frame_size: FrameSize | None = None) -> OmniItem:
    """Decode one (already checked) item into an `OmniItem` (`frame_size`: see `load_video`)."""
    if isinstance(item, str):
        return OmniItem(text=item)
    if isinstance(item, Image.Image | _ARRAY):  # a bare array is checked to be 3-D: an image
        return OmniItem(image=load_image(item, index, config))
    out = OmniItem(text=item.get("text"), instruction=item.get("instruction"))
    if item.get("image") is not None:
        out.image = load_image(item["image"], index, config)
    if item.get("audio") is not None:
        out.audio = load_audio(item["audio"], index, config.max_audio_seconds, config)
    if item.get("video") is not None:
        video = item["video"]
        source = None if isinstance(video, _ARRAY) else media_source(video, index, "video", config)
        out.video = load_video(video, index, config, source, frame_size)  # one fetch or open: frames and track
        if config.use_audio_in_video:
            out.video_audio = load_video_audio(video, index, config, source)
    return out


__all__ = [
    "FRAME_FACTOR",
    "MAX_ASPECT_RATIO",
    "MAX_AUDIO_MAGNITUDE",
    "MAX_REMOTE_BYTES",
    "MAX_SAMPLING_RATE",
    "MIN_FRAMES",
    "MIN_SAMPLING_RATE",
    "SAMPLING_RATE",
    "FrameSize",
    "RemotePolicy",
    "check_aspect",
    "fetch_remote",
    "image_from_array",
    "load_audio",
    "load_image",
    "load_video",
    "load_video_audio",
    "media_source",
    "normalize_item",
    "resize_frame",
    "resize_image",
    "video_frame_count",
    "video_frame_indices",
    "video_frames_from_array",
]
