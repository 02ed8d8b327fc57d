"""Items: what e5-omni embeds, the typed errors that name a bad item, and the structural check (`check_item`).

Nothing here decodes media; `media_e5omni` does that, `processing_e5omni` turns decoded items into backbone inputs.
Shipped inside every Hub repo with the other `*_e5omni.py` files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .configuration_e5omni import MODALITIES


# --------------------------------------------------------------------------------------------------------- errors
class E5OmniInputError(ValueError):
    """An item the processor cannot embed. `index` is the item's position in the input list (None for the list).

    On the sentence-transformers path the caller's positions are recovered when `encode` was called from user code;
    where they cannot be (a pool worker's chunk, a direct call), `index` is None and `batch_position` is the position
    in the batch sentence-transformers built (`at_batch_position`)."""

    batch_position: int | None = None

    def __init__(self, message: str, index: int | None = None):
        self.index = index
        self.reason = message  # what is wrong, without the position (batch jobs name the item by its id)
        super().__init__(message if index is None else f"item {index}: {message}")

    def at_batch_position(self, position: int, label: str) -> E5OmniInputError:
        """This error, of the same type, about position `position` of a batch whose positions are not the caller's
        (the sentence-transformers path when the caller's list is unknown): `index` None, `batch_position` set, and
        the message says so with `label` ("item 3: <reason> [<label>]")."""
        state = {**self.__dict__, "index": None, "batch_position": position}
        return _rebuild_input_error(type(self), (f"item {position}: {self.reason} [{label}]",), state)

    def __reduce__(self):
        """Pickles whole (worker processes send errors back): type, reason, index, message and attributes."""
        return _rebuild_input_error, (type(self), self.args, self.__dict__)


def _rebuild_input_error(cls, args, state):
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class UnsupportedModalityError(E5OmniInputError):
    """The item uses a modality this checkpoint's backbone cannot take (e.g. audio on Qwen2-VL)."""


class MediaTooLargeError(E5OmniInputError):
    """A media file declares more pixels than the configured cap (refused before decoding)."""


class MediaDecodeError(E5OmniInputError):
    """A media file is missing, truncated, corrupt or in a format outside the allow-list."""


class MediaShapeError(E5OmniInputError):
    """An image or video whose shape the backbone cannot take: a side more than `MAX_ASPECT_RATIO` (200) times the
    other (the Qwen processors' `smart_resize` refuses it)."""


class RemoteMediaError(E5OmniInputError):
    """A URL was given where a local path was expected and remote fetching is disabled."""


# ------------------------------------------------------------------------------------------------------ warnings
class ItemWarning(UserWarning):
    """A warning about one item (audio cut at max_audio_seconds, text truncated at max_length, a video stream that
    ended early), carrying the item as data: `index` its position in the caller's list, `reason` what happened
    without the position. Callers read these two attributes, never the message text.

    Like `E5OmniInputError`, where the caller's list is unknown (a sentence-transformers batch called directly)
    `index` is None and `batch_position` is the position in that batch (`at_batch_position`)."""

    batch_position: int | None = None

    def __init__(self, reason: str, index: int | None = None):
        self.index = index
        self.reason = reason
        super().__init__(reason if index is None else f"item {index}: {reason}")

    def at_batch_position(self, position: int, label: str) -> ItemWarning:
        """This warning about position `position` of a batch whose positions are not the caller's: `index` None,
        `batch_position` set, and the message worded as the error of that position is ("item 3: <reason>
        [<label>]")."""
        state = {**self.__dict__, "index": None, "batch_position": position}
        return _rebuild_input_error(type(self), (f"item {position}: {self.reason} [{label}]",), state)

    def __reduce__(self):
        """Pickles whole (worker processes send their warnings back): type, reason, index, message and attributes."""
        return _rebuild_input_error, (type(self), self.args, self.__dict__)


# ------------------------------------------------------------------------------------------------------- items
@dataclass
class OmniItem:
    """One normalised item: decoded media plus its text, ready for the chat template."""

    text: str | None = None
    image: Image.Image | None = None
    audio: np.ndarray | None = None  # float32 mono 16 kHz
    video: np.ndarray | None = None  # uint8 (T, H, W, 3)
    instruction: str | None = None
    video_audio: np.ndarray | None = None  # the video file's audio track, float32 mono 16 kHz (use_audio_in_video)

    @property
    def modality_mask(self) -> list[bool]:
        has_audio = self.audio is not None or self.video_audio is not None
        return [self.text is not None, self.image is not None, has_audio, self.video is not None]

    @property
    def audio_rows(self) -> int:
        """Audio inputs this item feeds the audio tower: its own audio and its video's track."""
        return int(self.audio is not None) + int(self.video_audio is not None)


_ITEM_KEYS = frozenset({"text", "image", "audio", "video", "instruction"})
_ARRAY = np.ndarray | torch.Tensor
IMAGE_LAYOUTS = "(H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4"
VIDEO_LAYOUTS = "(T, H, W, 3) or (T, 3, H, W)"
_NO_NUMPY_DTYPES = frozenset(
    getattr(torch, name)
    for name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
)


def _is_numeric_array(value: Any) -> bool:
    """A numpy array or torch tensor of numbers (numpy arrays of str/objects are containers, not media)."""
    return isinstance(value, torch.Tensor) or (isinstance(value, np.ndarray) and value.dtype.kind in "biuf")


def _check_text(value: str, key: str, index: int | None) -> None:
    """Refuse text that is not valid Unicode (lone surrogates, e.g. from a bad bytes/JSON decode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise E5OmniInputError(
            f"{key} holds a lone surrogate {value[err.start]!r} at character {err.start}: not valid Unicode text, "
            "so it cannot be tokenised (decode the source bytes with errors='replace', or drop the character)",
            index,
        ) from None


def _check_tensor_dtype(value: Any, key: str, index: int | None) -> None:
    """Video frames in dtypes numpy cannot hold (bfloat16, float8) are refused: frames are uint8. Audio in those
    dtypes is taken (float32 holds every such value exactly; `load_audio` converts)."""
    if key != "audio" and isinstance(value, torch.Tensor) and value.dtype in _NO_NUMPY_DTYPES:
        raise E5OmniInputError(
            f"{key} is a torch.{str(value.dtype).removeprefix('torch.')} tensor; pass uint8 frames (.to(torch.uint8))",
            index,
        )


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
        if isinstance(item, str):
            _check_text(item, "text", index)
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
        unknown = [key for key in item if not isinstance(key, str) or key not in _ITEM_KEYS]
        if unknown:
            listed = ", ".join(repr(key) for key in sorted(unknown, key=repr))  # keys of any types: never compared
            raise E5OmniInputError(
                f"unknown keys [{listed}]; expected any of 'text', 'image', 'audio', 'video', 'instruction'",
                index,
            )
        present = [m for m in MODALITIES if item.get(m) is not None]
        if not present:
            raise E5OmniInputError("dict has no content; expected at least one of text/image/audio/video", index)
        for key in ("text", "instruction"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise E5OmniInputError(f"{key!r} must be a str, got {type(item[key]).__name__}", index)
            if item.get(key) is not None:
                _check_text(item[key], repr(key), index)
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
        _check_tensor_dtype(audio.get("array") if isinstance(audio, dict) else audio, "audio", index)
        _check_tensor_dtype(video, "video", index)
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
