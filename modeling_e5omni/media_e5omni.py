"""Media decoding under the model's budgets: images, audio and video from paths, bytes, PIL images and arrays.

`normalize_item(item, index, config)` turns one checked item into an `OmniItem` (PIL RGB image, float32 mono 16 kHz
audio, uint8 (T, H, W, 3) frames). Image headers are checked against a pixel cap and a format allow-list before
decoding, audio is read no further than the budget, videos are sampled by seeking. Every refusal is an
`E5OmniInputError` subclass naming the item index and what was expected.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .configuration_e5omni import E5OmniConfig
from .inputs_e5omni import (
    _ARRAY,
    IMAGE_LAYOUTS,
    VIDEO_LAYOUTS,
    E5OmniInputError,
    MediaDecodeError,
    MediaTooLargeError,
    OmniItem,
    RemoteMediaError,
    _is_numeric_array,
)

SAMPLING_RATE = 16_000
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


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
