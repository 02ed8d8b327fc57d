"""E5OmniProcessor: typed omni items -> one chat message each -> backbone processor tensors + `modality_mask`.

An *item* is one of

- a `str`: always text, never read as a path or a URL;
- a `PIL.Image.Image`, or a 3-D image array (numpy array or torch tensor), the same as ``{"image": array}``;
- a `dict` with any of the keys ``"text"``, ``"image"`` (PIL image, image array or path), ``"audio"``
  (``{"array", "sampling_rate"}``, a 1-D 16 kHz float array, or a path), ``"video"`` (uint8 frames ``(T, H, W, 3)`` or
  ``(T, 3, H, W)``, or a path), and ``"instruction"`` (query side; rendered after the query prompt, before the text).

Image arrays (numpy or torch) are ``(H, W)`` greyscale or ``(H, W, C)`` / ``(C, H, W)`` with C = 1 (greyscale), 3 (RGB)
or 4 (RGBA; alpha dropped, as for a PIL RGBA image), uint8, or float in [0, 1] scaled like torchvision's
``to_pil_image`` (``mul(255)`` then truncation to uint8). They become the PIL image ``Image.fromarray`` makes of the
channels-last uint8 pixels, so they embed exactly like that image. A layout whose channel axis cannot be told (both
ends, or neither, of size 1/3/4; for videos both or neither of dims 1 and 3 of size 3) is refused, never guessed.
Audio is never a bare array: a bare 1-D, 2-D or 4-D array is refused (wrap it as ``{"audio": ...}``, ``{"image": ...}``
or ``{"video": ...}``).

Paths are only ever taken from the media keys. Every item becomes one user message: its media parts (image, audio,
video, in that order) then one text part (prompt + instruction + text), rendered with the backbone chat template
(``add_generation_prompt=True``) and followed by the eos suffix, whose final hidden state is the embedding.

Media are decoded defensively (see `docs/ARCHITECTURE.md`): image headers are checked against a pixel cap and a format
allow-list before decoding, audio is read no further than the budget, videos are sampled by seeking. Every refusal is an
`E5OmniInputError` subclass naming the item index and what was expected.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig
from transformers.feature_extraction_utils import BatchFeature

from .configuration_e5omni import MODALITIES, E5OmniConfig

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16_000
PROCESSOR_CONFIG = "processor_config.json"

# Keys of a processed batch that are indexed by item (first dimension = batch size).
ITEM_KEYS = ("input_ids", "attention_mask", "modality_mask", "content_hash", "mm_token_type_ids")
# Media keys, grouped by the modality whose items they belong to, with the row-count rule of each.
_MEDIA_GROUPS = {
    "image": ("pixel_values", "image_grid_thw", ()),
    "video": ("pixel_values_videos", "video_grid_thw", ("video_second_per_grid",)),
}
_AUDIO_KEYS = ("input_features", "feature_attention_mask")

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


# --------------------------------------------------------------------------------------------------------- errors
class E5OmniInputError(ValueError):
    """An item the processor cannot embed. `index` is the item's position in the input list (None for the list)."""

    def __init__(self, message: str, index: int | None = None):
        self.index = index
        super().__init__(message if index is None else f"item {index}: {message}")


class UnsupportedModalityError(E5OmniInputError):
    """The item uses a modality this checkpoint's backbone cannot take (e.g. audio on Qwen2-VL)."""


class MediaTooLargeError(E5OmniInputError):
    """A media file declares more pixels than the configured cap (refused before decoding)."""


class MediaDecodeError(E5OmniInputError):
    """A media file is missing, truncated, corrupt or in a format outside the allow-list."""


class RemoteMediaError(E5OmniInputError):
    """A URL was given where a local path was expected and remote fetching is disabled."""


# ------------------------------------------------------------------------------------------------------- items
@dataclass
class OmniItem:
    """One normalised item: decoded media plus its text, ready for the chat template."""

    text: str | None = None
    image: Image.Image | None = None
    audio: np.ndarray | None = None  # float32 mono 16 kHz
    video: np.ndarray | None = None  # uint8 (T, H, W, 3)
    instruction: str | None = None

    @property
    def modality_mask(self) -> list[bool]:
        return [self.text is not None, self.image is not None, self.audio is not None, self.video is not None]


_ITEM_KEYS = frozenset({"text", "image", "audio", "video", "instruction"})
_ARRAY = np.ndarray | torch.Tensor
IMAGE_LAYOUTS = "(H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4"
VIDEO_LAYOUTS = "(T, H, W, 3) or (T, 3, H, W)"


def _is_numeric_array(value: Any) -> bool:
    """A numpy array or torch tensor of numbers (numpy arrays of str/objects are containers, not media)."""
    return isinstance(value, torch.Tensor) or (isinstance(value, np.ndarray) and value.dtype.kind in "biuf")


def check_item(
    item: Any, index: int | None, modalities: list[str] | tuple[str, ...] = MODALITIES
) -> tuple[bool, bool, bool, bool]:
    """Structural validation without decoding anything: types, keys, emptiness, modality support.

    Returns which of `MODALITIES` (text, image, audio, video) the item carries. This is the one item check: the
    training data loaders call it too, so training accepts exactly the items `encode` accepts. Array shapes, dtypes
    and file contents are checked when the item is decoded (`load_audio`, `load_video`, `load_image`).
    """
    if item is None:
        raise E5OmniInputError("got None; expected a str, a PIL image or a dict of text/image/audio/video", index)
    if isinstance(item, str | Image.Image):
        present = ["text"] if isinstance(item, str) else ["image"]
    elif isinstance(item, _ARRAY):
        if not _is_numeric_array(item) or item.ndim != 3:
            raise E5OmniInputError(
                f"a bare {type(item).__name__} of shape {tuple(item.shape)} is not an item: only a 3-D array is taken "
                "as an image, (H, W, C) or (C, H, W) with C = 1, 3 or 4; pass other arrays under their key: "
                f"{{'image': (H, W) greyscale}}, {{'audio': samples}} or {{'video': frames {VIDEO_LAYOUTS}}}",
                index,
            )
        present = ["image"]
    elif isinstance(item, dict):
        unknown = set(item) - _ITEM_KEYS
        if unknown:
            raise E5OmniInputError(
                f"unknown keys {sorted(unknown)}; expected any of 'text', 'image', 'audio', 'video', 'instruction'",
                index,
            )
        present = [m for m in MODALITIES if item.get(m) is not None]
        if not present:
            raise E5OmniInputError("dict has no content; expected at least one of text/image/audio/video", index)
        for key in ("text", "instruction"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise E5OmniInputError(f"{key!r} must be a str, got {type(item[key]).__name__}", index)
        if item.get("image") is not None and not isinstance(item["image"], Image.Image | str | os.PathLike | _ARRAY):
            raise E5OmniInputError(
                f"'image' must be a PIL image, an image array or a path, got {type(item['image']).__name__}", index
            )
        audio = item.get("audio")
        if audio is not None and not isinstance(audio, dict | np.ndarray | torch.Tensor | str | os.PathLike):
            raise E5OmniInputError(
                "'audio' must be {'array', 'sampling_rate'}, a 1-D 16 kHz array or a path, "
                f"got {type(audio).__name__}",
                index,
            )
        video = item.get("video")
        if video is not None and not isinstance(video, _ARRAY | str | os.PathLike):
            raise E5OmniInputError(
                f"'video' must be a uint8 array {VIDEO_LAYOUTS} or a path, got {type(video).__name__}", index
            )
    else:
        raise E5OmniInputError(
            f"unsupported item type {type(item).__name__}; expected a str (text), a PIL.Image.Image, a 3-D image "
            "array, or a dict with keys text/image/audio/video/instruction",
            index,
        )
    missing = [m for m in present if m not in modalities]
    if missing:
        raise UnsupportedModalityError(f"this checkpoint takes {list(modalities)}, but the item has {missing}", index)
    return tuple(m in present for m in MODALITIES)  # type: ignore[return-value]


def check_items(items: Any, modalities=MODALITIES) -> list:
    """Validate a list of items (cheap: nothing is decoded) and return it as a list."""
    if items is None:
        raise E5OmniInputError("items is None; expected a non-empty list of items")
    if isinstance(items, str | dict | Image.Image) or _is_numeric_array(items):
        raise E5OmniInputError(
            f"expected a list of items, got a single {type(items).__name__}; wrap it in a list: [item]"
        )
    items = list(items)
    if not items:
        raise E5OmniInputError("items is empty; expected at least one item")
    for i, item in enumerate(items):
        check_item(item, i, modalities)
    return items


# ------------------------------------------------------------------------------------------------ media decoding
def _local_path(value, index: int, kind: str, allow_remote: bool) -> Path | bytes:
    text = os.fspath(value)
    if _URL.match(text):
        if not allow_remote:
            raise RemoteMediaError(
                f"{kind} {text!r} is a URL; remote media is disabled. Download it yourself or set "
                "config.allow_remote_media=True to let the processor fetch it",
                index,
            )
        import urllib.request

        with urllib.request.urlopen(text, timeout=30) as response:  # noqa: S310 - opt-in only
            return response.read()
    path = Path(text).expanduser()
    if not path.is_file():
        raise MediaDecodeError(f"{kind} file not found: {text!r}", index)
    return path


def _channel_axis(shape: tuple[int, ...], axes: tuple[int, int], channels: tuple[int, ...]) -> int | None:
    """The one axis of `axes` whose size is a channel count, or None when both or neither are (ambiguous)."""
    hits = [axis for axis in axes if shape[axis] in channels]
    return hits[0] if len(hits) == 1 else None


def _ambiguous_layout(kind: str, shape: tuple[int, ...], axes: tuple[int, int], channels, layouts: str, index):
    sizes = "/".join(map(str, channels))
    first, last = axes
    if all(shape[axis] in channels for axis in axes):
        reason = f"dims {first} and {last} both have size {sizes}"
    else:
        reason = f"neither dim {first} nor dim {last} has size {sizes}"
    return E5OmniInputError(
        f"cannot tell the channel axis of {kind} array of shape {shape}: {reason}; accepted layouts: {layouts}", index
    )


def image_from_array(value, index: int) -> Image.Image:
    """An image array or tensor -> the PIL image of its channels-last uint8 pixels (see the module docstring)."""
    shape = tuple(value.shape)
    if not _is_numeric_array(value) or value.ndim not in (2, 3):
        raise E5OmniInputError(
            f"image array must be {IMAGE_LAYOUTS}, got {type(value).__name__} of shape {shape}", index
        )
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    floating = value.is_floating_point() if isinstance(value, torch.Tensor) else value.dtype.kind == "f"
    if not floating and value.dtype != (torch.uint8 if isinstance(value, torch.Tensor) else np.uint8):
        raise E5OmniInputError(f"image array must be uint8 or float in [0, 1], got {value.dtype}", index)
    if value.ndim == 3:
        axis = _channel_axis(shape, (0, 2), (1, 3, 4))
        if axis is None:
            raise _ambiguous_layout("image", shape, (0, 2), (1, 3, 4), IMAGE_LAYOUTS, index)
        if axis == 0:
            value = value.permute(1, 2, 0) if isinstance(value, torch.Tensor) else value.transpose(1, 2, 0)
        if value.shape[2] == 1:
            value = value[:, :, 0]
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise MediaDecodeError(f"image has no pixels ({value.shape[1]}x{value.shape[0]})", index)
    if floating:  # torchvision's to_pil_image: scale by 255 and truncate, which only means something on [0, 1]
        low, high = float(value.min()), float(value.max())
        if not (0.0 <= low and high <= 1.0):  # also False for NaN
            raise E5OmniInputError(f"float image array must lie in [0, 1], got values in [{low}, {high}]", index)
        value = value.mul(255).byte() if isinstance(value, torch.Tensor) else (value * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(value.numpy() if isinstance(value, torch.Tensor) else value))


def load_image(value, index: int, config: E5OmniConfig) -> Image.Image:
    """Decode an image path (or take an in-memory image or array), refusing oversized headers before decoding."""
    if isinstance(value, Image.Image | _ARRAY):
        image = value if isinstance(value, Image.Image) else image_from_array(value, index)
        width, height = image.size
        if width * height > config.max_decode_pixels:
            raise MediaTooLargeError(
                f"image of {width}x{height} pixels exceeds max_decode_pixels={config.max_decode_pixels}", index
            )
    else:
        source = _local_path(value, index, "image", config.allow_remote_media)
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except (OSError, Image.DecompressionBombError) as err:  # unreadable header
            raise MediaDecodeError(f"cannot read image {value!s}: {err}", index) from err
        if image.format not in config.image_formats:
            raise MediaDecodeError(
                f"image format {image.format} is not allowed; expected one of {config.image_formats}", index
            )
        width, height = image.size
        if width * height > config.max_decode_pixels:  # decided from the header alone: nothing decoded yet
            raise MediaTooLargeError(
                f"image {value!s} declares {width}x{height} pixels, more than max_decode_pixels="
                f"{config.max_decode_pixels}; refused before decoding",
                index,
            )
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise MediaDecodeError(f"image {value!s} is truncated or corrupt: {err}", index) from err
    if image.width < 1 or image.height < 1:
        raise MediaDecodeError(f"image has no pixels ({image.width}x{image.height})", index)
    return image.convert("RGB") if image.mode != "RGB" else image


def _resample(array: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLING_RATE:
        return array
    import soxr

    return soxr.resample(array, rate, SAMPLING_RATE).astype(np.float32)


def load_audio(value, index: int, max_seconds: float) -> np.ndarray:
    """Audio -> float32 mono 16 kHz, truncated to `max_seconds` (files are read no further than that)."""
    if isinstance(value, dict):
        if "array" not in value or "sampling_rate" not in value:
            raise E5OmniInputError("audio dict must have 'array' and 'sampling_rate'", index)
        array, rate = np.asarray(value["array"]), int(value["sampling_rate"])
    elif isinstance(value, np.ndarray | torch.Tensor):
        array, rate = np.asarray(value), SAMPLING_RATE
    else:
        array, rate = _read_audio_file(value, index, max_seconds)
    if array.ndim == 2:  # (samples, channels) or (channels, samples): mix down
        array = array.mean(axis=1 if array.shape[0] > array.shape[1] else 0)
    if array.ndim != 1:
        raise E5OmniInputError(f"audio must be 1-D (mono) or 2-D (multi-channel), got shape {array.shape}", index)
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise E5OmniInputError(f"audio array must be numeric, got dtype {array.dtype}", index)
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    if array.size == 0:
        raise E5OmniInputError("audio has no samples", index)
    if rate <= 0:
        raise E5OmniInputError(f"audio sampling_rate must be positive, got {rate}", index)
    limit = int(max_seconds * rate)
    if array.shape[0] > limit:
        warnings.warn(
            f"item {index}: audio of {array.shape[0] / rate:.1f} s truncated to max_audio_seconds={max_seconds}",
            stacklevel=3,
        )
        array = array[:limit]
    array = _resample(np.ascontiguousarray(array, dtype=np.float32), rate)
    if not np.isfinite(array).all():
        raise E5OmniInputError("audio contains NaN or infinite samples", index)
    return array


def _read_audio_file(value, index: int, max_seconds: float) -> tuple[np.ndarray, int]:
    source = _local_path(value, index, "audio", False)
    try:
        import soundfile as sf

        with sf.SoundFile(source) as handle:
            rate = handle.samplerate
            frames = min(handle.frames, int(max_seconds * rate) + 1) if handle.frames > 0 else int(max_seconds * rate)
            array = handle.read(frames=frames, dtype="float32", always_2d=True)
            # libsndfile clamps a cut file's length to what is there and logs "(should be N)" for each chunk
            # whose declared size the file does not hold: a truncated file, not a short one.
            if "(should be" in handle.extra_info or (handle.frames > 0 and array.shape[0] < min(handle.frames, frames)):
                raise MediaDecodeError(
                    f"audio file {value!s} is truncated: its header declares more data than the file holds",
                    index,
                )
            if handle.frames > frames:
                warnings.warn(
                    f"item {index}: audio file {value!s} is longer than max_audio_seconds={max_seconds}; truncated",
                    stacklevel=4,
                )
        if array.shape[0] == 0:
            raise MediaDecodeError(f"audio file {value!s} has no samples (truncated?)", index)
        return array.mean(axis=1), rate
    except MediaDecodeError:
        raise
    except Exception as sf_err:  # not a libsndfile format (or corrupt): try FFmpeg through PyAV
        try:
            return _read_audio_av(source, max_seconds)
        except Exception as av_err:
            raise MediaDecodeError(
                f"cannot decode audio file {value!s} (soundfile: {sf_err}; PyAV: {av_err})", index
            ) from av_err


def _read_audio_av(path: Path, max_seconds: float) -> tuple[np.ndarray, int]:
    import av

    chunks, rate, total = [], None, 0
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLING_RATE)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                data = out.to_ndarray().reshape(-1)
                chunks.append(data)
                total += data.shape[0]
            if total >= max_seconds * SAMPLING_RATE:
                break
        rate = SAMPLING_RATE
    if not chunks:
        raise ValueError("no audio frames decoded")
    return np.concatenate(chunks).astype(np.float32), rate


def video_frames_from_array(value, index: int | None) -> np.ndarray:
    """A uint8 video array or tensor, (T, H, W, 3) or channels-first (T, 3, H, W), as (T, H, W, 3) frames."""
    frames = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
    if frames.ndim != 4 or frames.dtype != np.uint8 or 3 not in (frames.shape[1], frames.shape[3]):
        raise E5OmniInputError(
            f"video array must be uint8 of shape {VIDEO_LAYOUTS}, got {frames.dtype} {tuple(frames.shape)}", index
        )
    axis = _channel_axis(frames.shape, (1, 3), (3,))
    if axis is None:
        raise _ambiguous_layout("video", tuple(frames.shape), (1, 3), (3,), VIDEO_LAYOUTS, index)
    return frames.transpose(0, 2, 3, 1) if axis == 1 else frames


def load_video(value, index: int, config: E5OmniConfig) -> np.ndarray:
    """Video -> uint8 frames (T, H, W, 3), at most `max_frames`, sampled at `fps` (files: by seeking).

    Arrays and tensors may also be channels-first (T, 3, H, W) (torchvision, mteb); (T, 3, H, 3) is refused."""
    if isinstance(value, _ARRAY):
        frames = video_frames_from_array(value, index)
        if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
            raise E5OmniInputError(f"video array is empty: shape {tuple(frames.shape)}", index)
        if frames.shape[1] * frames.shape[2] > config.max_decode_pixels:
            raise MediaTooLargeError(
                f"video frames of {frames.shape[2]}x{frames.shape[1]} exceed max_decode_pixels", index
            )
        if frames.shape[0] > config.max_frames:  # uniformly subsample, keeping first and last
            keep = np.linspace(0, frames.shape[0] - 1, config.max_frames).round().astype(int)
            frames = frames[keep]
        return np.ascontiguousarray(frames)
    source = _local_path(value, index, "video", config.allow_remote_media)
    try:
        return _read_video_av(source, config)
    except E5OmniInputError:
        raise
    except Exception as err:
        raise MediaDecodeError(f"cannot decode video {value!s} (truncated or corrupt?): {err}", index) from err


def _read_video_av(source, config: E5OmniConfig) -> np.ndarray:
    import av

    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        stream = container.streams.video[0]
        if stream.width * stream.height > config.max_decode_pixels:
            raise MediaTooLargeError(
                f"video frames of {stream.width}x{stream.height} exceed max_decode_pixels={config.max_decode_pixels}"
            )
        frames: list[np.ndarray] = []
        step = 1.0 / config.fps
        next_time = 0.0
        for frame in container.decode(stream):
            if frame.time is not None and frame.time + 1e-6 < next_time:
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            next_time += step
            if len(frames) >= config.max_frames:
                break
    if not frames:
        raise ValueError("no video frames decoded")
    return np.stack(frames)


def normalize_item(item, index: int, config: E5OmniConfig) -> OmniItem:
    """Decode one (already checked) item into an `OmniItem`."""
    if isinstance(item, str):
        return OmniItem(text=item)
    if isinstance(item, Image.Image | _ARRAY):  # a bare array is checked to be 3-D: an image
        return OmniItem(image=load_image(item, index, config))
    out = OmniItem(text=item.get("text"), instruction=item.get("instruction"))
    if item.get("image") is not None:
        out.image = load_image(item["image"], index, config)
    if item.get("audio") is not None:
        out.audio = load_audio(item["audio"], index, config.max_audio_seconds)
    if item.get("video") is not None:
        out.video = load_video(item["video"], index, config)
    return out


# ------------------------------------------------------------------------------------------------- the processor
class E5OmniProcessor:
    """Turns omni items into backbone inputs for `E5OmniModel`.

    Wraps the backbone's own transformers processor (`Qwen2_5OmniProcessor`, `Qwen2VLProcessor`,
    `Qwen2_5_VLProcessor`) and the embedding contract of `E5OmniConfig` (prompts, eos suffix, media budgets).
    Loadable with `AutoProcessor.from_pretrained(path, trust_remote_code=True)`.
    """

    def __init__(self, backbone_processor, config: E5OmniConfig):
        self.backbone_processor = backbone_processor
        self.config = config
        self.tokenizer = backbone_processor.tokenizer
        media = [getattr(backbone_processor, f"{m}_token", None) for m in ("image", "audio", "video")]
        self._placeholders = [t for t in media if t]

    # ------------------------------------------------------------------------------------------ persistence
    _auto_class = "AutoProcessor"

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoProcessor") -> None:
        """Called by `AutoProcessor` on remote-code classes; our save_pretrained always writes the auto_map."""
        cls._auto_class = auto_class

    def save_pretrained(self, save_directory, **kwargs):
        """Save the backbone processor files, then mark them loadable as `E5OmniProcessor` (auto_map)."""
        save_directory = Path(save_directory)
        self.backbone_processor.save_pretrained(save_directory, **kwargs)
        path = save_directory / PROCESSOR_CONFIG
        data = json.loads(path.read_text()) if path.exists() else {}
        data["backbone_processor_class"] = type(self.backbone_processor).__name__
        data["processor_class"] = "E5OmniProcessor"
        data["auto_map"] = {"AutoProcessor": "processing_e5omni.E5OmniProcessor"}
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return [str(path)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, config: E5OmniConfig | None = None, **kwargs):
        import transformers
        from transformers.utils import cached_file

        hub_kwargs = {
            k: kwargs[k]
            for k in ("revision", "token", "cache_dir", "local_files_only", "subfolder", "force_download")
            if k in kwargs
        }
        if config is None:
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, trust_remote_code=True, **hub_kwargs)
        if not isinstance(config, E5OmniConfig) and getattr(config, "model_type", None) != "e5omni":
            raise ValueError(f"{pretrained_model_name_or_path} is not an e5-omni checkpoint (config.model_type)")
        resolved = cached_file(pretrained_model_name_or_path, PROCESSOR_CONFIG, **hub_kwargs)
        with open(resolved) as handle:
            class_name = json.load(handle).get("backbone_processor_class")
        if class_name not in ("Qwen2_5OmniProcessor", "Qwen2VLProcessor", "Qwen2_5_VLProcessor"):
            raise ValueError(f"unsupported backbone processor class {class_name!r} in {PROCESSOR_CONFIG}")
        # The folder is an e5-omni repo the caller already chose to load; its tokenizer and processors are stock
        # transformers classes, so trusting its config here runs no code of the repo.
        backbone = getattr(transformers, class_name).from_pretrained(
            pretrained_model_name_or_path, trust_remote_code=True, **hub_kwargs
        )
        return cls(backbone, config)

    # ---------------------------------------------------------------------------------------------- messages
    def _text_part(self, item: OmniItem, role: str, prompt: str | None = None) -> str | None:
        if prompt is None:
            prompt = self.config.query_prompt if role == "query" else self.config.document_prompt
        body = item.text or ""
        if item.instruction:
            body = f"{item.instruction.strip()}\n{body}" if body else item.instruction.strip()
        text = f"{prompt}{body}"
        return text if text else None

    def _truncate_text(self, text: str, index: int) -> str:
        # Byte-level BPE (every Qwen tokenizer) never makes more tokens than UTF-8 bytes: short texts need no count.
        if len(text.encode("utf-8")) <= self.config.max_length:
            return text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.config.max_length:
            return text
        warnings.warn(
            f"item {index}: text of {len(ids)} tokens truncated to max_length={self.config.max_length}; the chat "
            "template tail and the eos suffix are kept",
            stacklevel=4,
        )
        return self.tokenizer.decode(ids[: self.config.max_length])

    def render(self, item: OmniItem, role: str, index: int = 0, prompt: str | None = None) -> str:
        """The exact string the backbone sees for one item: chat template + eos suffix.

        `prompt` overrides the role's prompt from the config (sentence-transformers passes its own prompts here)."""
        parts: list[dict] = []
        if item.image is not None:
            parts.append({"type": "image"})
        if item.audio is not None:
            parts.append({"type": "audio"})
        if item.video is not None:
            parts.append({"type": "video"})
        text = self._text_part(item, role, prompt)
        if text is not None:
            for token in self._placeholders:
                if token in text:
                    raise E5OmniInputError(f"text contains the reserved media placeholder {token!r}", index)
            parts.append({"type": "text", "text": self._truncate_text(text, index)})
        messages = [{"role": "user", "content": parts}]
        rendered = self.backbone_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return rendered + self.config.eos_suffix

    # ------------------------------------------------------------------------------------------------- call
    def __call__(self, items, role: str = "document", return_tensors: str = "pt") -> BatchFeature:
        """Process a batch of items for `role` ("query" or "document")."""
        if role not in ("query", "document"):
            raise ValueError(f"role must be 'query' or 'document', got {role!r}")
        items = check_items(items, self.config.modalities)
        decoded = [normalize_item(item, i, self.config) for i, item in enumerate(items)]
        return self.process_decoded(decoded, role, return_tensors=return_tensors)

    def process_decoded(
        self, decoded: list[OmniItem], role: str, return_tensors: str = "pt", prompt: str | None = None
    ) -> BatchFeature:
        """Tensors for items that were already normalised (`normalize_item`)."""
        texts = [self.render(item, role, i, prompt) for i, item in enumerate(decoded)]
        images = [d.image for d in decoded if d.image is not None]
        audio = [d.audio for d in decoded if d.audio is not None]
        videos = [d.video for d in decoded if d.video is not None]
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": return_tensors}
        size = {"shortest_edge": self.config.min_pixels, "longest_edge": self.config.max_pixels}
        if images:
            kwargs["images"] = images
            kwargs["images_kwargs"] = {"size": size}
        if videos:
            kwargs["videos"] = videos
            kwargs["videos_kwargs"] = {
                "size": {"shortest_edge": self.config.video_min_pixels, "longest_edge": self.config.video_max_pixels},
                "do_sample_frames": False,
                "fps": self.config.fps,
                "cap_pixels_per_frame": True,
            }
        if audio:
            kwargs["audio"] = audio
            kwargs["audio_kwargs"] = {"sampling_rate": SAMPLING_RATE}
        batch = self.backbone_processor(**kwargs)
        batch["modality_mask"] = torch.tensor([d.modality_mask for d in decoded], dtype=torch.bool)
        return batch

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)


# ----------------------------------------------------------------------------------------------- mini-batching
def _counts_before(mask: torch.Tensor, start: int, end: int) -> tuple[int, int]:
    mask = mask.long()
    return int(mask[:start].sum()), int(mask[:end].sum())


def slice_features(features: dict, start: int, end: int) -> dict:
    """Items `start:end` of a processed batch, with their media rows (used by GradCache mini-batching).

    Text keys are batch-first. Media are not: images are flattened patch rows (`pixel_values`, one block of
    `prod(image_grid_thw[j])` rows per image), videos likewise, and audio rows exist only for items that have audio.
    Each item has at most one image, one audio and one video (the item format), so `modality_mask` says which items own
    which media rows.
    """
    if "modality_mask" not in features:
        raise KeyError("slice_features needs 'modality_mask' to map media rows to items")
    mask = features["modality_mask"]
    batch = mask.shape[0]
    out = {}
    for key, value in features.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch and key in ITEM_KEYS:
            out[key] = value[start:end]
    for modality, (pixels_key, grid_key, extra_keys) in _MEDIA_GROUPS.items():
        if pixels_key not in features:
            continue
        first, last = _counts_before(mask[:, MODALITIES.index(modality)], start, end)
        if first == last:
            continue
        grid = features[grid_key]
        rows = torch.cat([grid.new_zeros(1), grid.prod(-1).cumsum(0)])
        out[pixels_key] = features[pixels_key][int(rows[first]) : int(rows[last])]
        out[grid_key] = grid[first:last]
        for extra in extra_keys:
            if extra in features:
                out[extra] = features[extra][first:last]
    if _AUDIO_KEYS[0] in features:
        first, last = _counts_before(mask[:, MODALITIES.index("audio")], start, end)
        if first != last:
            for key in _AUDIO_KEYS:
                if key in features:
                    out[key] = features[key][first:last]
    known = set(ITEM_KEYS) | set(_AUDIO_KEYS)
    for pixels_key, grid_key, extra_keys in _MEDIA_GROUPS.values():
        known |= {pixels_key, grid_key, *extra_keys}
    for key, value in features.items():
        if key in known:
            continue
        if isinstance(value, torch.Tensor):  # never drop what we cannot map to items
            raise KeyError(f"slice_features does not know how to slice the tensor {key!r}")
        out[key] = value  # scalars and flags are shared by every slice
    return out


__all__ = [
    "E5OmniProcessor",
    "E5OmniInputError",
    "UnsupportedModalityError",
    "MediaTooLargeError",
    "MediaDecodeError",
    "RemoteMediaError",
    "OmniItem",
    "check_items",
    "image_from_array",
    "normalize_item",
    "slice_features",
]
