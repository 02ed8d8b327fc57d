"""Audio: arrays, dicts and files -> float32 mono 16 kHz, no longer than the budget (files are read no further).

Also `_decode_audio_stream`, the reader of a video file's audio track (`media_video_e5omni.load_video_audio`).
Part of `media_e5omni` (which re-exports everything here).
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .configuration_e5omni import E5OmniConfig
from .inputs_e5omni import E5OmniInputError, ItemWarning, MediaDecodeError
from .media_remote_e5omni import media_source

SAMPLING_RATE = 16_000


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
            ItemWarning(f"audio of {array.shape[0] / rate:.1f} s truncated to max_audio_seconds={max_seconds}", index),
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
    source = media_source(value, index, "audio", config)
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
                    ItemWarning(
                        f"audio file {value!s} is longer than max_audio_seconds={max_seconds}; truncated", index
                    ),
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
