"""Media decoding under the model's budgets: images, audio and video from paths, bytes, PIL images and arrays.

`normalize_item(item, index, config)` turns one checked item into an `OmniItem` (PIL RGB image, float32 mono 16 kHz
audio, uint8 (T, H, W, 3) frames). Image headers are checked against a pixel cap and a format allow-list before
decoding, audio is read no further than the budget, videos are sampled by seeking. Every refusal is an
`E5OmniInputError` subclass naming the item index and what was expected.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Callable
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
    MediaShapeError,
    MediaTooLargeError,
    OmniItem,
    RemoteMediaError,
    _is_numeric_array,
)

SAMPLING_RATE = 16_000
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


#: Default cap on one fetched media body (config.max_remote_bytes overrides it).
MAX_REMOTE_BYTES = 200_000_000
_REMOTE_SCHEMES = ("http", "https")


def _local_path(value, index: int, kind: str, allow_remote: bool, max_bytes: int = MAX_REMOTE_BYTES) -> Path | bytes:
    """A local file's path, or (remote media switched on) the bytes of an http(s) URL, read no further than
    `max_bytes`. Other URL schemes (file:, ftp:, data:) are refused: a URL never reads a local path."""
    text = os.fspath(value)
    if _URL.match(text):
        if not allow_remote:
            raise RemoteMediaError(
                f"{kind} {text!r} is a URL; remote media is disabled. Download it yourself or set "
                "config.allow_remote_media=True to let the processor fetch it",
                index,
            )
        return _fetch(text, index, kind, max_bytes)
    if not text.strip():
        raise MediaDecodeError(f"{kind} path is empty", index)
    try:
        path = Path(text).expanduser()
        if path.is_file():
            return path
        exists = path.exists()
    except (OSError, ValueError, RuntimeError) as err:  # a name too long, an unknown ~user, a NUL byte
        raise MediaDecodeError(f"cannot use {kind} path {text[:200]!r}: {err.__class__.__name__}", index) from err
    if exists:  # a directory, a FIFO, a device: never opened
        raise MediaDecodeError(f"{kind} path {text!r} is not a regular file", index)
    raise MediaDecodeError(f"{kind} file not found: {text!r}", index)


def _fetch(url: str, index: int, kind: str, max_bytes: int) -> bytes:
    import urllib.error
    import urllib.parse
    import urllib.request

    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _REMOTE_SCHEMES:
        raise RemoteMediaError(f"{kind} URL scheme {scheme!r} is not fetched (only http and https)", index)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - opt-in, http(s) only
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise RemoteMediaError(
                    f"{kind} URL {url!r} declares {int(declared)} bytes, more than max_remote_bytes={max_bytes}",
                    index,
                )
            body = response.read(max_bytes + 1)  # never more than the cap (+1 to tell a body that is too long)
    except RemoteMediaError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as err:  # HTTPError is a URLError; timeouts are OSErrors
        raise RemoteMediaError(f"cannot fetch {kind} URL {url!r}: {err}", index) from err
    if len(body) > max_bytes:
        raise RemoteMediaError(f"{kind} URL {url!r} sent more than max_remote_bytes={max_bytes} bytes", index)
    return body


def _remote(config: E5OmniConfig | None) -> tuple[bool, int]:
    if config is None:
        return False, MAX_REMOTE_BYTES
    return bool(config.allow_remote_media), int(getattr(config, "max_remote_bytes", MAX_REMOTE_BYTES))


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


#: Image formats that are JPEG files underneath: a JPEG allow-list entry admits them (decoded as their first picture).
_JPEG_FAMILY = ("MPO",)


def _allowed_formats(config: E5OmniConfig) -> list[str]:
    allowed = [str(name).upper() for name in config.image_formats]
    if "JPEG" in allowed:
        allowed += [name for name in _JPEG_FAMILY if name not in allowed]
    return allowed


def _check_format(image: Image.Image, index: int, config: E5OmniConfig) -> None:
    """Refuse an image whose container format is outside the allow-list, before anything is decoded.

    In-memory images carry their format too: a lazily opened EPS/PS/PDF passed as a PIL image would run Ghostscript
    on `load()`, so its format (the instance's, or its plugin class's) is checked before any pixel is touched.
    Images built in memory (`Image.new`, `Image.fromarray`, ...) have no format and are taken as they are."""
    fmt = getattr(image, "format", None) or getattr(type(image), "format", None)
    if fmt is not None and str(fmt).upper() not in _allowed_formats(config):
        raise MediaDecodeError(
            f"image format {fmt} is not allowed; expected one of {list(config.image_formats)}", index
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels as the backbone processor and qwen-omni-utils see them.

    Transparency is composited on white (RGBA, LA, PA, La, RGBa, P/L/RGB with a transparency key), the way
    qwen-omni-utils' `to_rgb` does for RGBA (white background, alpha as paste mask); `convert("RGB")` would make
    transparent pixels black. 16-bit greyscale (I;16*, and I/F with 16-bit values) is scaled to 8 bits (x / 257,
    rounded): `convert("RGB")` clips it, turning almost every pixel white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 65535.0)
        if mode in ("I", "F") and values.max(initial=0.0) <= 255.0:
            grey = values  # already 8-bit values stored wide (e.g. Image.fromarray of int32 0..255)
        else:
            grey = values / 257.0
        return Image.fromarray(np.rint(grey).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.split()[3])
        return white
    return image.convert("RGB")


#: Largest ratio of an image's (or video frame's) long side to its short side: the Qwen processors' `smart_resize`
#: (and qwen-omni-utils') refuse anything beyond it with a bare ValueError, so it is checked here, from the header.
MAX_ASPECT_RATIO = 200


def check_aspect(width: int, height: int, index: int | None, what: str) -> None:
    if min(width, height) > 0 and max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise MediaShapeError(
            f"{what} of {width}x{height} has an aspect ratio of {max(width, height) / min(width, height):.0f}; the "
            f"backbone takes at most {MAX_ASPECT_RATIO}: crop or pad it",
            index,
        )


def load_image(value, index: int, config: E5OmniConfig) -> Image.Image:
    """Decode an image path (or take an in-memory image or array), refusing oversized headers before decoding.

    Paths, bytes and PIL images all pass the same format allow-list and `max_decode_pixels` cap before any pixel
    is decoded. Multi-frame files (GIF, TIFF, WEBP, MPO) give their first frame. EXIF orientation is NOT applied,
    like qwen-omni-utils (`Image.open` then `to_rgb`): a rotated-by-EXIF JPEG is embedded as stored."""
    if isinstance(value, Image.Image | _ARRAY):
        image = value if isinstance(value, Image.Image) else image_from_array(value, index)
        _check_format(image, index, config)
        width, height = image.size
        if width * height > config.max_decode_pixels:
            raise MediaTooLargeError(
                f"image of {width}x{height} pixels exceeds max_decode_pixels={config.max_decode_pixels}", index
            )
        check_aspect(width, height, index, "image")
        if getattr(image, "format", None) is not None:  # a lazily opened file: decode it under our error handling
            try:
                image.load()
            except (OSError, SyntaxError, ValueError) as err:
                raise MediaDecodeError(f"image is truncated or corrupt: {err}", index) from err
    else:
        source = _local_path(value, index, "image", *_remote(config))
        Image.init()
        plugins = [name for name in _allowed_formats(config) if name in Image.OPEN]
        try:  # only the allowed plugins may even look at the file
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=plugins)
        except Image.UnidentifiedImageError as err:
            try:  # name the format in the error when Pillow knows it
                with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as probe:
                    fmt = probe.format
            except Exception:
                fmt = None
            if fmt is not None:
                raise MediaDecodeError(
                    f"image format {fmt} is not allowed; expected one of {list(config.image_formats)}", index
                ) from err
            raise MediaDecodeError(f"cannot read image {value!s}: {err}", index) from err
        except (OSError, Image.DecompressionBombError) as err:  # unreadable header
            raise MediaDecodeError(f"cannot read image {value!s}: {err}", index) from err
        _check_format(image, index, config)
        width, height = image.size
        if width * height > config.max_decode_pixels:  # decided from the header alone: nothing decoded yet
            raise MediaTooLargeError(
                f"image {value!s} declares {width}x{height} pixels, more than max_decode_pixels="
                f"{config.max_decode_pixels}; refused before decoding",
                index,
            )
        check_aspect(width, height, index, f"image {value!s}")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise MediaDecodeError(f"image {value!s} is truncated or corrupt: {err}", index) from err
    if image.width < 1 or image.height < 1:
        raise MediaDecodeError(f"image has no pixels ({image.width}x{image.height})", index)
    return _to_rgb(image)


#: Sampling rates an audio dict may declare: 1 kHz (below any real recording) to 768 kHz (the fastest PCM a DAC
#: takes). Outside it, a rate is a mistake (a sample count, inf, NaN) and would overflow or hang the resampler.
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 1_000, 768_000
#: Largest sample magnitude float audio may have. Audio is expected in [-1, 1]; up to 2**16 also covers 16-bit PCM
#: passed as unscaled floats (embedded as given, as before). Beyond it the log-mel power spectrum overflows float32
#: (1e19 gives NaN embeddings), so such audio is refused rather than silently rescaled.
MAX_AUDIO_MAGNITUDE = 65536.0


def _resample(array: np.ndarray, rate: float) -> np.ndarray:
    if rate == SAMPLING_RATE:
        return array
    import soxr

    return soxr.resample(array, rate, SAMPLING_RATE).astype(np.float32)


def _sampling_rate(value, index: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise E5OmniInputError(f"audio sampling_rate must be a number, got {type(value).__name__}", index)
    rate = float(value)
    if not (MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE):  # also False for NaN
        raise E5OmniInputError(
            f"audio sampling_rate must lie in [{MIN_SAMPLING_RATE}, {MAX_SAMPLING_RATE}] Hz, got {value}", index
        )
    return int(rate) if rate.is_integer() else rate


def _pcm_to_float(array: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1), the way libsndfile reads PCM files: signed by 2**(bits-1); unsigned
    (uint8 WAV is offset binary) centred first: (x - 2**(bits-1)) / 2**(bits-1)."""
    bits = array.dtype.itemsize * 8
    scale = float(2 ** (bits - 1))
    if np.issubdtype(array.dtype, np.unsignedinteger):
        return ((array.astype(np.float64) - scale) / scale).astype(np.float32)
    return (array.astype(np.float64) / scale).astype(np.float32)


def load_audio(value, index: int, max_seconds: float, config: E5OmniConfig | None = None) -> np.ndarray:
    """Audio -> float32 mono 16 kHz, truncated to `max_seconds` (files are read no further than that).

    Integer arrays are PCM (scaled per channel before any mix-down); float arrays must be finite with magnitude at
    most `MAX_AUDIO_MAGNITUDE`; dict sampling rates must lie in [MIN_SAMPLING_RATE, MAX_SAMPLING_RATE]."""
    if isinstance(value, dict):
        if "array" not in value or "sampling_rate" not in value:
            raise E5OmniInputError("audio dict must have 'array' and 'sampling_rate'", index)
        raw = value["array"]
        rate = _sampling_rate(value["sampling_rate"], index)
    elif isinstance(value, np.ndarray | torch.Tensor):
        raw, rate = value, SAMPLING_RATE
    else:
        raw, rate = _read_audio_file(value, index, max_seconds, config)
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu()
        if raw.is_floating_point() and raw.dtype not in (torch.float32, torch.float64):
            raw = raw.float()  # bfloat16 / float16 / float8 audio: exact in float32
    array = np.asarray(raw)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise E5OmniInputError(f"audio array must be numeric, got dtype {array.dtype}", index)
    if array.ndim not in (1, 2):
        raise E5OmniInputError(f"audio must be 1-D (mono) or 2-D (multi-channel), got shape {array.shape}", index)
    if np.issubdtype(array.dtype, np.integer):  # scale first: mixing ints down would make floats of PCM counts
        array = _pcm_to_float(array)
    elif array.size:
        peak = float(np.max(np.abs(array)))
        if not np.isfinite(peak):
            raise E5OmniInputError("audio contains NaN or infinite samples", index)
        if peak > MAX_AUDIO_MAGNITUDE:
            raise E5OmniInputError(
                f"float audio must lie in [-1, 1] (at most {MAX_AUDIO_MAGNITUDE:g} in magnitude), got a sample of "
                f"magnitude {peak:g}; scale it first",
                index,
            )
    if array.ndim == 2:  # (samples, channels) or (channels, samples): mix down
        array = array.mean(axis=1 if array.shape[0] > array.shape[1] else 0, dtype=np.float64)
    if array.size == 0:
        raise E5OmniInputError("audio has no samples", index)
    limit = max(1, int(max_seconds * rate))
    if array.shape[0] > limit:
        warnings.warn(
            f"item {index}: audio of {array.shape[0] / rate:.1f} s truncated to max_audio_seconds={max_seconds}",
            stacklevel=3,
        )
        array = array[:limit]
    array = _resample(np.ascontiguousarray(array, dtype=np.float32), rate)
    if array.size == 0:
        raise E5OmniInputError(f"audio is too short: no samples left after resampling {rate} Hz to 16 kHz", index)
    if not np.isfinite(array).all():
        raise E5OmniInputError("audio contains NaN or infinite samples", index)
    return array


#: libsndfile's note for a chunk whose declared size the file does not hold: "data : 32000 (should be 19956)".
_SHOULD_BE = re.compile(r"^\s*(\S+)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
#: Declared sizes that mean "unknown length" (ffmpeg and other streaming writers cannot seek back to fill them in).
_STREAMED_SIZES = (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


def _declares_missing_data(extra_info: str) -> bool:
    """Whether a chunk declares more bytes than the file holds (truncated), not counting streamed placeholders."""
    for _chunk, declared, held in _SHOULD_BE.findall(extra_info):
        if int(declared) in _STREAMED_SIZES:
            continue
        if int(declared) > int(held):
            return True
    return False


def _read_audio_file(value, index: int, max_seconds: float, config: E5OmniConfig | None) -> tuple[np.ndarray, int]:
    source = _local_path(value, index, "audio", *_remote(config))
    try:
        import soundfile as sf

        with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source) as handle:
            rate = handle.samplerate
            limit = int(max_seconds * rate)  # what load_audio keeps: read no further (one warning, here)
            frames = min(handle.frames, limit) if handle.frames > 0 else limit
            array = handle.read(frames=frames, dtype="float32", always_2d=True)
            # libsndfile clamps a cut file's length to what is there and logs "(should be N)" for each chunk
            # whose declared size the file does not hold: a truncated file, not a short one. Streamed files
            # (ffmpeg to a pipe) declare 0xFFFFFFFF ("unknown") and are read to their end.
            if _declares_missing_data(handle.extra_info) or (
                handle.frames > 0 and array.shape[0] < min(handle.frames, frames)
            ):
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
    with av.open(io.BytesIO(path) if isinstance(path, bytes) else str(path)) as container:
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


#: qwen-omni-utils' frame-count rule (`smart_nframes`): frame counts are multiples of FRAME_FACTOR, at least
#: MIN_FRAMES (when the video has them), at most max_frames and the video's own frame count.
FRAME_FACTOR = 2
MIN_FRAMES = 4
#: Forward gaps up to this many seconds are decoded through rather than seeked over (a seek re-decodes from the
#: previous keyframe anyway).
_SEEK_GAP_SECONDS = 2.0


def video_frame_count(total_frames: int, video_fps: float, fps: float, max_frames: int) -> int:
    """How many frames to sample from a `total_frames`-frame video at `video_fps`: the reference rule.

    As qwen-omni-utils' `smart_nframes` with `fps` and `max_frames` given: `total / video_fps * fps` frames, clamped
    to [ceil2(MIN_FRAMES), floor2(max_frames)] and to `total`, then floored to a multiple of 2. Where the reference
    raises (fewer than 2 frames result: a 1-frame video or max_frames=1) we take that many frames instead."""
    if total_frames <= 0:
        return 0
    low = math.ceil(MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
    high = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
    wanted = total_frames / video_fps * fps if video_fps > 0 else float(total_frames)
    count = min(min(max(wanted, low), high), total_frames)
    count = math.floor(count / FRAME_FACTOR) * FRAME_FACTOR
    if count < FRAME_FACTOR:  # the reference refuses; a short clip or max_frames=1 still gives what it can
        count = min(total_frames, max_frames)
    return int(count)


def video_frame_indices(total_frames: int, count: int) -> list[int]:
    """Uniform over the whole clip, first and last frame included: `linspace(0, total - 1, count).round()`
    computed as the reference does (torch float32 linspace, round half to even)."""
    if count <= 0:
        return []
    return torch.linspace(0, total_frames - 1, count).round().long().tolist()


def load_video(
    value,
    index: int,
    config: E5OmniConfig,
    source: Path | bytes | None = None,
    frame_size: FrameSize | None = None,
) -> np.ndarray:
    """Video -> uint8 frames (T, H, W, 3), at most `max_frames`.

    Files: `video_frame_count` frames (the qwen-omni-utils rule at `fps`), uniformly spread over the whole clip,
    fetched by seeking so that memory stays bounded whatever the duration. Every decoded frame, not only the stream
    header, is checked against `max_decode_pixels`. With `frame_size` (the processor's
    `E5OmniProcessor.video_frame_size`), each frame is resized as soon as it is decoded to the size the backbone
    processor would resize it to, with the same resize, so only one full-resolution frame is held at a time (a 4K
    clip at the card's budgets: 32 x 24 MB otherwise) and the processor's own resize is then the identity.
    Arrays and tensors may also be channels-first (T, 3, H, W) (torchvision, mteb); (T, 3, H, 3) is refused; they
    are taken as given (subsampled uniformly to `max_frames`)."""
    if isinstance(value, _ARRAY):
        frames = video_frames_from_array(value, index)
        if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
            raise E5OmniInputError(f"video array is empty: shape {tuple(frames.shape)}", index)
        if frames.shape[1] * frames.shape[2] > config.max_decode_pixels:
            raise MediaTooLargeError(
                f"video frames of {frames.shape[2]}x{frames.shape[1]} exceed max_decode_pixels", index
            )
        check_aspect(frames.shape[2], frames.shape[1], index, "video frames")
        if frames.shape[0] > config.max_frames:  # uniformly subsample, keeping first and last
            keep = np.linspace(0, frames.shape[0] - 1, config.max_frames).round().astype(int)
            frames = frames[keep]
        return np.ascontiguousarray(frames)
    if source is None:
        source = _local_path(value, index, "video", *_remote(config))
    try:
        return _read_video_av(source, config, index, frame_size)
    except E5OmniInputError:
        raise
    except Exception as err:
        raise MediaDecodeError(f"cannot decode video {value!s} (truncated or corrupt?): {err}", index) from err


def _too_large(width: int, height: int, config: E5OmniConfig, index, where: str) -> MediaTooLargeError:
    return MediaTooLargeError(
        f"video {where} of {width}x{height} exceed max_decode_pixels={config.max_decode_pixels}", index
    )


def _open_video(source):
    import av

    return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))


def _count_video_frames(source) -> int:
    """Frame count of a stream whose header has none: count its packets (demuxing only, nothing decoded)."""
    with _open_video(source) as container:
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)


def _read_video_av(
    source, config: E5OmniConfig, index: int | None = None, frame_size: FrameSize | None = None
) -> np.ndarray:
    with _open_video(source) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise MediaDecodeError(f"video file has no video stream (streams: {', '.join(kinds)})", index)
        stream = container.streams.video[0]
        if stream.width * stream.height > config.max_decode_pixels:
            raise _too_large(stream.width, stream.height, config, index, "frames")
        check_aspect(stream.width, stream.height, index, "video frames")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        video_fps = float(rate) if rate else 0.0
        time_base = stream.time_base
        total = int(stream.frames or 0)
        if total <= 0:
            duration = None
            if stream.duration is not None and time_base:
                duration = float(stream.duration * time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            total = int(round(duration * video_fps)) if duration and video_fps > 0 else _count_video_frames(source)
        count = video_frame_count(total, video_fps, config.fps, config.max_frames)
        indices = video_frame_indices(total, count)
        if not indices:
            raise ValueError("no video frames")
        start = stream.start_time or 0
        if video_fps > 0 and time_base:
            frame_pts = 1.0 / (video_fps * float(time_base))  # one frame, in stream time-base units
            targets = [start + i * frame_pts for i in indices]
        else:  # no rate: fall back to decode order
            frame_pts, targets = None, None
        gap = _SEEK_GAP_SECONDS / float(time_base) if time_base else float("inf")

        frames: list[np.ndarray] = []
        size: tuple[int, int] | None = None
        resized: tuple[int, int] | None = None  # (height, width) every frame is resized to as it is decoded
        decoder = container.decode(stream)
        held, held_pts, position = None, None, -1  # the last decoded frame, its pts, its decode-order number

        def take(frame):
            nonlocal size, resized
            if size is None:
                size = (frame.width, frame.height)
                if frame_size is not None:
                    resized = frame_size(len(indices), frame.height, frame.width)
            if (frame.width, frame.height) != size:  # a mid-stream resolution change: keep one frame size
                array = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
            else:
                array = frame.to_ndarray(format="rgb24")
            return array if resized is None else resize_frame(array, resized)

        def next_frame():
            nonlocal held, held_pts, position
            frame = next(decoder, None)
            if frame is None:
                return False
            if frame.width * frame.height > config.max_decode_pixels:
                raise _too_large(frame.width, frame.height, config, index, "frame (decoded)")
            check_aspect(frame.width, frame.height, index, "video frame (decoded)")
            held, position = frame, position + 1
            held_pts = frame.pts if frame.pts is not None else position * (frame_pts or 1.0)
            return True

        for number, frame_index in enumerate(indices):
            if targets is None:  # decode order only
                while position < frame_index and next_frame():
                    pass
                if held is None:
                    break
                frames.append(take(held))
                continue
            target = targets[number]
            if held_pts is None or target - held_pts > gap:  # far ahead (or nothing decoded yet): seek
                if number > 0 or target - start > gap:
                    container.seek(int(target), stream=stream, backward=True, any_frame=False)
                    decoder = container.decode(stream)
                    held, held_pts = None, None
            while held_pts is None or held_pts < target - frame_pts / 2:
                if not next_frame():
                    break
            if held is None:
                break
            frames.append(take(held))
        if not frames:
            raise ValueError("no video frames decoded")
        if len(frames) < len(indices):  # the header promised more frames than the stream holds: repeat the last
            warnings.warn(
                f"item {index}: video stream ended early ({len(frames)} of {len(indices)} sampled frames decoded; "
                "truncated file?); the last frame is repeated",
                stacklevel=4,
            )
        while len(frames) < len(indices):
            frames.append(frames[-1])
    return np.stack(frames)


#: `frame_size(num_frames, height, width) -> (height, width)`: the size the backbone processor resizes the frames
#: of a video of `num_frames` frames of `height` x `width` to (`E5OmniProcessor.video_frame_size`).
FrameSize = Callable[[int, int, int], tuple[int, int]]


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One uint8 (H, W, 3) frame -> (size[0], size[1], 3), with the resize the Qwen video processors apply
    (torchvision bicubic with antialias on the uint8 tensor, per image: the same values as resizing the stack)."""
    if frame.shape[:2] == tuple(size):
        return frame
    from torchvision.transforms.v2 import functional as tvF

    # (1, 3, H, W) viewed channels-last over the (H, W, 3) pixels: torch's uint8 antialiased kernel takes that
    # layout without a contiguous copy of the full-size frame
    image = torch.from_numpy(frame).unsqueeze(0).permute(0, 3, 1, 2)
    resized = tvF.resize(image, list(size), interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    return np.ascontiguousarray(resized[0].permute(1, 2, 0).numpy())


def resize_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An RGB image resized to (height, width) = `size` with `resize_frame`'s op. Its pixels are copied strip by
    strip into one array (np.asarray of a whole PIL image holds two more copies: tobytes' chunks and their join)."""
    if (image.height, image.width) == tuple(size):
        return image
    pixels = np.empty((image.height, image.width, 3), np.uint8)
    for top in range(0, image.height, 256):
        pixels[top : top + 256] = np.asarray(image.crop((0, top, image.width, min(image.height, top + 256))))
    return Image.fromarray(resize_frame(pixels, size))


def load_video_audio(value, index: int, config: E5OmniConfig, source: Path | bytes | None = None) -> np.ndarray | None:
    """A video file's first audio track -> float32 mono 16 kHz (None when the file has none, or for arrays).

    Decoded as the model card's reference does (qwen-omni-utils: ffmpeg to PCM, channels averaged, soxr HQ to
    16 kHz), read no further than `max_audio_seconds` (with a warning, like audio files)."""
    if isinstance(value, _ARRAY):
        return None
    if source is None:
        source = _local_path(value, index, "video", *_remote(config))
    try:
        with _open_video(source) as container:
            if not container.streams.audio:
                return None
            array, rate, truncated = _decode_audio_stream(container, config.max_audio_seconds)
    except E5OmniInputError:
        raise
    except Exception as err:
        raise MediaDecodeError(f"cannot decode the audio track of video {value!s}: {err}", index) from err
    if truncated:
        warnings.warn(
            f"item {index}: the audio track of video {value!s} is longer than max_audio_seconds="
            f"{config.max_audio_seconds}; truncated",
            stacklevel=3,
        )
    if array.size == 0:
        return None  # an audio stream with no samples: the frames alone
    return load_audio({"array": array, "sampling_rate": rate}, index, config.max_audio_seconds)


def _decode_audio_stream(container, max_seconds: float) -> tuple[np.ndarray, int, bool]:
    """(samples, channels) float32 at the stream's own rate, at most `max_seconds` (+ whether it was cut)."""
    import av

    stream = container.streams.audio[0]
    rate = int(stream.rate or stream.sample_rate or 0)
    if rate <= 0:
        raise ValueError("the audio track declares no sample rate")
    limit = int(max_seconds * rate)
    # Format conversion only (same rate, same channels): integer PCM becomes x / 2**(bits-1), as ffmpeg's s16
    # output read by librosa does; the mix-down and the resampling stay ours (the reference's: mean, soxr HQ).
    converter = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
    chunks, total, truncated = [], 0, False
    for frame in container.decode(stream):
        for out in converter.resample(frame):
            data = out.to_ndarray()  # (channels, samples), planar float
            chunks.append(data)
            total += data.shape[1]
        if total > limit:
            truncated = True
            break
    for out in converter.resample(None):  # flush
        chunks.append(out.to_ndarray())
    if not chunks:
        return np.zeros((0, 1), np.float32), rate, False
    array = np.concatenate(chunks, axis=1).T
    if array.shape[0] > limit:
        array, truncated = array[:limit], True
    return np.ascontiguousarray(array, dtype=np.float32), rate, truncated


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
        source = None if isinstance(video, _ARRAY) else _local_path(video, index, "video", *_remote(config))
        out.video = load_video(video, index, config, source, frame_size)  # one fetch or open: frames and track
        if config.use_audio_in_video:
            out.video_audio = load_video_audio(video, index, config, source)
    return out
