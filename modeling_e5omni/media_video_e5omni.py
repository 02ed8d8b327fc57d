"""Video: files sampled uniformly over the whole clip by seeking (the model card's frame-count rule), arrays and
tensors as frames, and a video file's audio track (`load_video_audio`).

Every decoded frame is checked against the pixel cap; with the processor's `frame_size` each frame is resized as it
is decoded. Part of `media_e5omni` (which re-exports everything here).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .configuration_e5omni import E5OmniConfig
from .inputs_e5omni import (
    _ARRAY,
    VIDEO_LAYOUTS,
    E5OmniInputError,
    ItemWarning,
    MediaDecodeError,
    MediaTooLargeError,
)
from .media_audio_e5omni import _decode_audio_stream, load_audio
from .media_image_e5omni import _ambiguous_layout, _channel_axis, check_aspect, resize_frame
from .media_remote_e5omni import media_source


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
        source = media_source(value, index, "video", config)
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
                ItemWarning(
                    f"video stream ended early ({len(frames)} of {len(indices)} sampled frames decoded; "
                    "truncated file?); the last frame is repeated",
                    index,
                ),
                stacklevel=4,
            )
        while len(frames) < len(indices):
            frames.append(frames[-1])
    return np.stack(frames)


#: `frame_size(num_frames, height, width) -> (height, width)`: the size the backbone processor resizes the frames
#: of a video of `num_frames` frames of `height` x `width` to (`E5OmniProcessor.video_frame_size`).
FrameSize = Callable[[int, int, int], tuple[int, int]]


def load_video_audio(value, index: int, config: E5OmniConfig, source: Path | bytes | None = None) -> np.ndarray | None:
    """A video file's first audio track -> float32 mono 16 kHz (None when the file has none, or for arrays).

    Decoded as the model card's reference does (qwen-omni-utils: ffmpeg to PCM, channels averaged, soxr HQ to
    16 kHz), read no further than `max_audio_seconds` (with a warning, like audio files)."""
    if isinstance(value, _ARRAY):
        return None
    if source is None:
        source = media_source(value, index, "video", config)
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
            ItemWarning(
                f"the audio track of video {value!s} is longer than max_audio_seconds={config.max_audio_seconds}; "
                "truncated",
                index,
            ),
            stacklevel=3,
        )
    if array.size == 0:
        return None  # an audio stream with no samples: the frames alone
    return load_audio({"array": array, "sampling_rate": rate}, index, config.max_audio_seconds)
