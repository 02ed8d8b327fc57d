"""One adapter from a `datasets` media value (or a table cell) to an item field: `media_value_to_item`.

Every reader of media that `datasets` stores (``from_hf_dataset``, the public sets, the mteb adapter) goes through
it, so one value means the same item everywhere. The rules:

- ``None`` or an empty / blank string: absent.
- A string is a media path relative to ``media_root``, under the confinement rules of `resolve_media_path`. Without a
  media root it is refused: a relative path is never resolved against the working directory.
- A ``{"bytes", "path"}`` value (an undecoded ``Image`` / ``Audio`` / ``Video``, also a raw ``bytes`` value): the
  bytes win. ``Dataset.save_to_disk`` keeps a value's bytes and only the base name of its path; resolving that name
  would read whatever file of that name the working directory holds, so the path is then only a name. Image bytes
  become a lazily opened PIL image (nothing decoded: the model checks the header against its pixel cap and format
  allow-list first); audio bytes are decoded here, read no further than ``max_audio_seconds`` (a warning names the
  place when cut, as encode's reader does), and kept at their own sampling rate so the model resamples them as it
  resamples a file; video bytes are written once to a content-addressed file in the media cache
  (`default_media_cache`) and passed on as that path, so the model decodes them with its own budgets (frames, fps,
  pixel caps, the soundtrack) exactly as it decodes a file.
- Without bytes, the path: absolute ones (what `datasets` writes for local files) are used as they are, and must lie
  under ``media_root`` when one is given; relative ones only under ``media_root``.
- Already decoded values: a PIL image; an ``{"array", "sampling_rate"}`` audio dict or a 1-D array; (T, H, W, 3)
  integer video frames.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.data.errors import MissingMediaError, UnsafeMediaPathError, Where
from e5omni.data.items import AUDIO_SAMPLING_RATE
from e5omni.data.paths import resolve_media_path
from modeling_e5omni.configuration_e5omni import E5OmniConfig

MEDIA_KINDS = ("image", "audio", "video")

DEFAULT_MAX_AUDIO_SECONDS = float(E5OmniConfig.max_audio_seconds)
"""The budget of audio bytes decoded here when the caller gives none: the model config's default
``max_audio_seconds``. Pass the model's own value (``model.config.max_audio_seconds``) where it is known."""

MEDIA_CACHE_ENV = "E5OMNI_MEDIA_CACHE"
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def default_media_cache() -> Path:
    """Where video bytes are written to be decoded as files: ``$E5OMNI_MEDIA_CACHE``, else
    ``$XDG_CACHE_HOME/e5omni/media``, else ``~/.cache/e5omni/media``. Files are named by the SHA-256 of their bytes,
    so a video stored in many rows (or read again next epoch) is written once; delete the folder to reclaim space."""
    if os.environ.get(MEDIA_CACHE_ENV):
        return Path(os.environ[MEDIA_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "e5omni" / "media"


def media_value_to_item(
    value: Any,
    kind: str,
    *,
    where: Where | None = None,
    column: str | None = None,
    media_root: str | os.PathLike | None = None,
    max_audio_seconds: float | None = None,
    media_cache: str | os.PathLike | None = None,
) -> Any:
    """The item field (``item[kind]``) for one media value, or None when the value is absent (module docstring).

    ``kind`` is "image", "audio" or "video"; ``where`` and ``column`` name the place in every error (BadRowError,
    UnsafeMediaPathError, MissingMediaError, all DataErrors); ``max_audio_seconds`` bounds the decoding of audio
    bytes (default `DEFAULT_MAX_AUDIO_SECONDS`); ``media_cache`` is where video bytes become files (default
    `default_media_cache`).
    """
    from PIL import Image

    if kind not in MEDIA_KINDS:
        raise ValueError(f"kind must be one of {MEDIA_KINDS}, got {kind!r}")
    where = where if where is not None else Where("dataset", None)
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        if media_root is None:
            raise where.error(
                f"{kind} path {value!r} is relative and no media_root was given; paths are never resolved against "
                "the working directory: pass media_root= (the folder the paths are relative to)",
                column,
            )
        return str(resolve_media_path(media_root, value, **where.place(column)))
    if isinstance(value, bytes | bytearray | memoryview):
        value = {"bytes": bytes(value), "path": None}
    if kind == "image" and isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):
        if kind == "audio" and value.get("array") is not None:
            rate = value.get("sampling_rate") or AUDIO_SAMPLING_RATE
            return {"array": np.asarray(value["array"], dtype=np.float32), "sampling_rate": int(rate)}
        data, path = value.get("bytes"), value.get("path")
        if data:
            return _from_bytes(bytes(data), kind, path, where, column, max_audio_seconds, media_cache)
        if path:
            return str(_feature_path(media_root, str(path), kind, where, column))
        raise where.error(f"the {kind} has neither bytes nor a path", column)
    if kind == "audio" and isinstance(value, np.ndarray | list) and np.ndim(value) == 1:
        return np.asarray(value, dtype=np.float32)
    if kind == "video" and isinstance(value, np.ndarray | list):
        return video_frames(value, where, column)
    raise where.error(
        f"expected a {kind}: a path relative to the media root, a datasets {kind.capitalize()} value "
        f"({{'bytes', 'path'}}){' or a PIL image' if kind == 'image' else ''}, got {type(value).__name__}",
        column,
    )


def _from_bytes(
    data: bytes,
    kind: str,
    path: Any,
    where: Where,
    column: str | None,
    max_audio_seconds: float | None,
    media_cache: str | os.PathLike | None,
) -> Any:
    if kind == "image":
        from PIL import Image

        try:
            return Image.open(io.BytesIO(data))  # lazy: only the header is read; the model checks it first
        except Exception as err:
            raise where.error(f"cannot read the image bytes ({err})", column) from None
    if kind == "audio":
        budget = DEFAULT_MAX_AUDIO_SECONDS if max_audio_seconds is None else float(max_audio_seconds)
        try:
            array, rate, total = read_audio_bytes(data, budget)
        except Exception as err:  # soundfile's LibsndfileError, PyAV's errors
            raise where.error(f"cannot decode the audio bytes ({err})", column) from None
        if total is None or total > array.shape[0]:
            seconds = f"{total / rate:.1f} s" if total is not None else "more than the budget"
            place = f"{where}, column {column!r}" if column else str(where)
            warnings.warn(f"{place}: audio of {seconds} truncated to max_audio_seconds={budget:g}", stacklevel=3)
        return {"array": array, "sampling_rate": rate}
    suffix = Path(str(path)).suffix if path else ""
    try:
        return str(cache_media_bytes(data, suffix=suffix, cache=media_cache))
    except OSError as err:
        raise where.error(f"cannot write the video bytes to the media cache ({err})", column) from None


def read_audio_bytes(data: bytes, max_seconds: float) -> tuple[np.ndarray, int, int | None]:
    """An audio file's bytes -> (mono float32 samples at the file's own rate, that rate, the file's length in
    samples or None when unknown), read no further than ``max_seconds``: the model's file reader, on bytes
    (libsndfile, then FFmpeg through PyAV for the formats it lacks)."""
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as handle:
            rate = handle.samplerate
            limit = max(1, int(max_seconds * rate))
            frames = min(handle.frames, limit) if handle.frames > 0 else limit
            array = handle.read(frames=frames, dtype="float32", always_2d=True)
            total = handle.frames if handle.frames > 0 else None
    except soundfile.LibsndfileError:
        return _read_audio_av(data, max_seconds)
    if array.shape[0] == 0:
        raise ValueError("no samples")
    return np.ascontiguousarray(array.mean(axis=1), dtype=np.float32), int(rate), total


def _read_audio_av(data: bytes, max_seconds: float) -> tuple[np.ndarray, int, int | None]:
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLING_RATE)
        limit = max(1, int(max_seconds * AUDIO_SAMPLING_RATE))
        chunks, total, cut = [], 0, False
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1)
                chunks.append(chunk)
                total += chunk.shape[0]
            if total > limit:
                cut = True
                break
    if not chunks or total == 0:
        raise ValueError("no audio frames decoded")
    array = np.concatenate(chunks)[:limit]
    return np.ascontiguousarray(array, dtype=np.float32), AUDIO_SAMPLING_RATE, (None if cut else total)


def cache_media_bytes(data: bytes, *, suffix: str = "", cache: str | os.PathLike | None = None) -> Path:
    """The path of a file holding ``data`` in the media cache, written once (atomically) and named by its SHA-256
    (plus ``suffix`` when it is a plain extension such as ".mp4"); never a name taken from the data."""
    folder = Path(cache) if cache is not None else default_media_cache()
    suffix = suffix if _SUFFIX.match(suffix or "") else ""
    target = folder / f"{hashlib.sha256(data).hexdigest()}{suffix.lower()}"
    try:
        stat = os.lstat(target)
        if stat.st_size == len(data) and os.path.isfile(target) and not os.path.islink(target):
            return target
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, partial = tempfile.mkstemp(dir=folder, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(partial, target)  # atomic: a concurrent reader sees the whole file or none
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return target


def _feature_path(media_root: str | os.PathLike | None, path: str, kind: str, where: Where, column: str | None):
    """A path a `datasets` value stored (no bytes): absolute ones as they are (under the media root when one is
    given), relative ones only under the media root."""
    if os.path.isabs(path):
        resolved = Path(path).resolve()
        if media_root is not None:
            real_root = Path(media_root).resolve()
            if real_root not in resolved.parents:
                raise UnsafeMediaPathError(path, f"outside the media root {real_root}", **where.place(column))
        if not resolved.is_file():
            raise MissingMediaError(path, resolved, **where.place(column))
        return resolved
    if media_root is None:
        raise where.error(
            f"the {kind} has no bytes and only the relative path {path!r}; paths are never resolved against the "
            "working directory: pass media_root= (the folder it is relative to), or store the bytes",
            column,
        )
    return resolve_media_path(media_root, path, **where.place(column))


def video_frames(value: Any, where: Where, column: str | None) -> np.ndarray:
    """(T, H, W, 3) frames as uint8; `datasets`' numpy format returns nested uint8 lists as int64 (cast back,
    refusing values outside 0..255)."""
    frames = np.asarray(value)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise where.error(f"expected video frames (T, H, W, 3), got shape {frames.shape}", column)
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.integer) or frames.size and (frames.min() < 0 or frames.max() > 255):
            raise where.error("video frames must be integers in 0..255", column)
        frames = frames.astype(np.uint8)
    return frames


__all__ = [
    "DEFAULT_MAX_AUDIO_SECONDS",
    "MEDIA_CACHE_ENV",
    "cache_media_bytes",
    "default_media_cache",
    "media_value_to_item",
    "read_audio_bytes",
    "video_frames",
]
