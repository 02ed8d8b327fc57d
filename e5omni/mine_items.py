"""What `e5omni mine` (e5omni/mine.py) compares and writes: `ContentKeys` (one key per content, media files
identified by their bytes) and `ItemWriter` (items -> JSON values that `load_jsonl` reads back as the same items,
in-memory media written once each under the output's media folder), with the errors of an item that cannot be
written. Importable from `e5omni.mine` as before."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.data.errors import DataError

MEDIA_KEYS = ("image", "audio", "video")


class UnwritableItemError(DataError):
    """An item that cannot be written into the output so that it reloads the same."""


class MediaOutsideOutputError(UnwritableItemError):
    """A media path outside the output's folder: a JSON-lines file names media under its own folder only."""


# ------------------------------------------------------------------------------------------------- content keys
def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


class ContentKeys:
    """`content_key(item)`: `content_hash`, except that media given as paths are identified by their files' bytes,
    so one file copied under two names is one content. File digests are cached by (path, size, mtime)."""

    def __init__(self):
        self._files: dict[tuple[str, int, int], bytes] = {}

    def _file(self, path: str) -> bytes:
        try:
            info = os.stat(path)
        except OSError:
            return b"missing:" + os.fsencode(path)  # it fails when embedded; the key only has to be stable
        cache = (path, info.st_size, info.st_mtime_ns)
        if cache not in self._files:
            digest = hashlib.blake2b(digest_size=16)
            try:
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
            except OSError:
                return b"unreadable:" + os.fsencode(path)
            self._files[cache] = digest.digest()
        return self._files[cache]

    def __call__(self, item: Any) -> int:
        from e5omni.data.items import content_hash

        if not isinstance(item, Mapping) or not any(_is_path(item.get(k)) for k in MEDIA_KEYS):
            return content_hash(item)
        content_hash(item)  # validates it, as for every other item
        digest = hashlib.blake2b(digest_size=8)
        for key in ("text", "instruction", *MEDIA_KEYS):
            value = item.get(key)
            if value is None:
                continue
            digest.update(key.encode() + b"\x00")
            if key in MEDIA_KEYS and _is_path(value):
                digest.update(b"f" + self._file(os.fspath(value)))
            elif key in MEDIA_KEYS:
                digest.update(b"h" + content_hash({key: value}).to_bytes(8, "little", signed=True))
            else:
                digest.update(b"s" + str(value).encode("utf-8"))
            digest.update(b"\x01")
        return int.from_bytes(digest.digest(), "little", signed=True)


# ------------------------------------------------------------------------------------------------- writing items
class ItemWriter:
    """Items -> JSON values that `load_jsonl` reads back as the same items, with `root` as the media root: media
    paths relative to `root`, media held in memory written once each under `media_dir` (see the module docstring)."""

    def __init__(self, root: Path, media_dir: Path, fps: float):
        self.root, self.media_dir, self.fps = root.resolve(), media_dir, fps

    def __call__(self, item: Any, role: str) -> Any:
        from PIL import Image

        if isinstance(item, str):
            return item
        if isinstance(item, Image.Image) or hasattr(item, "shape"):  # a bare image, as encode reads it
            item = {"image": item}
        if not isinstance(item, Mapping):
            raise UnwritableItemError(f"{role}: cannot write an item of type {type(item).__name__}")
        out: dict[str, Any] = {}
        for key in ("text", "image", "audio", "video", "instruction"):
            value = item.get(key)
            if value is None:
                continue
            if key in ("text", "instruction"):
                out[key] = value
            elif _is_path(value):
                out[key] = self._relative(Path(os.fspath(value)), f"{role}.{key}")
            else:
                out[key] = self._relative(self._materialise(key, value), f"{role}.{key}")
        return out

    def _relative(self, path: Path, where: str) -> str:
        resolved = path.resolve()
        if self.root not in resolved.parents:
            raise MediaOutsideOutputError(
                f"{where}: {resolved} is outside {self.root}, the output's folder: a JSON-lines file can only name "
                "media under its media root; write --out into a folder that holds the media (or a parent of it)"
            )
        return resolved.relative_to(self.root).as_posix()

    def _materialise(self, key: str, value: Any) -> Path:
        from e5omni.data.items import content_hash

        name = f"{content_hash({key: value}) & 0xFFFFFFFFFFFFFFFF:016x}"
        suffix = {"image": ".png", "audio": ".wav", "video": ".mkv"}[key]
        path = self.media_dir / key / (name + suffix)
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp" + suffix)
        if key == "image":
            self._write_image(tmp, value)
        elif key == "audio":
            self._write_audio(tmp, value)
        else:
            self._write_video(tmp, value)
        os.replace(tmp, path)
        return path

    @staticmethod
    def _write_image(path: Path, value: Any) -> None:
        from PIL import Image

        from modeling_e5omni.processing_e5omni import image_from_array

        image = value if isinstance(value, Image.Image) else image_from_array(value, None)
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
            raise UnwritableItemError(f"image mode {image.mode} has no lossless PNG form")
        image.save(path, format="PNG")

    @staticmethod
    def _write_audio(path: Path, value: Any) -> None:
        import soundfile as sf
        import torch

        array, rate = (value["array"], int(value["sampling_rate"])) if isinstance(value, Mapping) else (value, 16000)
        array = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
        if array.ndim == 2 and array.shape[0] < array.shape[1]:
            array = array.T  # soundfile writes (samples, channels); the model mixes either layout down the same way
        subtype = {"int16": "PCM_16", "int32": "PCM_32", "uint8": "PCM_U8"}.get(array.dtype.name)
        if subtype is None:
            if not np.issubdtype(array.dtype, np.floating):
                raise UnwritableItemError(f"audio samples of dtype {array.dtype} have no lossless WAV form")
            array, subtype = array.astype(np.float32), "FLOAT"
        sf.write(path, array, rate, subtype=subtype, format="WAV")

    def _write_video(self, path: Path, value: Any) -> None:
        from fractions import Fraction

        import av

        from modeling_e5omni.processing_e5omni import video_frames_from_array

        frames = video_frames_from_array(value, None)
        with av.open(str(path), "w", format="matroska") as container:
            stream = container.add_stream("ffv1", rate=Fraction(self.fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
