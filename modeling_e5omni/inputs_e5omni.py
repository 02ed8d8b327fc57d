"""Items: what e5-omni embeds, the typed errors and warnings that name an item (`E5OmniInputError`, `ItemWarning`),
the structural check (`check_item`), and the one item pipeline (`prepare`: items -> features, failures, warnings;
`BatchPreparer` / `in_order` / `prepared_batches`: the same in DataLoader workers) every path embeds through.

Nothing here decodes media itself; `media_e5omni` does that, `processing_e5omni` turns decoded items into backbone
inputs (`prepare` calls both through the processor it is given).
Shipped inside every Hub repo with the other `*_e5omni.py` files.
"""

from __future__ import annotations

import os
import warnings
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


# ------------------------------------------------------------------------------------------- input pipeline
@dataclass
class Prepared:
    """What `prepare` made of a list of items.

    `features`: the processor's tensors of the items kept (None when none is), rows in the order of `kept` (their
    positions in the list given to `prepare`). `failures`: position -> the typed error of each item taken out (only
    with ``keep_going=True``). `error`: the error that stopped the work (``keep_going=False``: the first bad item, or
    a refusal of the whole batch), with its caller index. `warnings`: every warning raised on the way, in order; those
    about an item are `ItemWarning`s whose `index` is the caller's (`indices`), the others (a library's own) as
    raised."""

    features: dict[str, Any] | None
    kept: list[int]
    failures: dict[int, E5OmniInputError]
    warnings: list[Warning]
    error: E5OmniInputError | None = None

    def reraise(self, stacklevel: int = 2) -> dict[str, Any]:
        """Warn each warning again here (the caller's process and filters), then raise `error`, else return the
        features: what a caller that stops at the first bad item does with a prepared batch."""
        for warning in self.warnings:
            warnings.warn(warning, stacklevel=stacklevel + 1)
        if self.error is not None:
            raise self.error
        return self.features


def _item_warning(message: Warning, index: int | None) -> Warning:
    """A warning raised while one item (caller index `index`) was being decoded, as an `ItemWarning` about it.

    Our media decoders warn with `ItemWarning` themselves; a plain `UserWarning` raised (by a library) while item
    `index` alone was being decoded is about that item: it is typed here by where it was raised, never by parsing its
    text. Warnings of other categories (a library's DeprecationWarning, ...) are left as they are."""
    if isinstance(message, ItemWarning) or index is None or type(message) is not UserWarning:
        return message
    return ItemWarning(str(message), index)


def prepare(
    processor: Any,
    items: list,
    role: str = "document",
    *,
    indices: list[int] | None = None,
    prompt: str | None = None,
    where: list[str] | None = None,
    check: bool = True,
    keep_going: bool = False,
) -> Prepared:
    """Items -> features, failures, warnings: the one step from items to model inputs, used by `encode` (in this
    process or in DataLoader workers: `BatchPreparer`), the sentence-transformers module, both index engines and,
    through `encode`, mteb.

    Each item is checked (`check_item`, unless `check=False`: the caller checked the whole list already) and decoded
    under the model's budgets (`E5OmniProcessor.decode`), then the batch goes through the processor
    (`process_decoded`, with `role` and `prompt`). `indices` are the items' positions in the caller's list (default:
    their positions here): every error and `ItemWarning` names them. `where` labels the processor's other messages.

    Nothing is raised and nothing is printed: errors and warnings come back in the `Prepared`, so a worker process can
    send them to the caller whole. With ``keep_going=False`` the first bad item stops the work (`Prepared.error`);
    with ``keep_going=True`` (batch jobs) a bad item is taken out (`Prepared.failures`) and the rest go on: an item the
    processor refuses is found by the index it names, or one by one when it names none."""
    items = list(items)
    indices = list(range(len(items))) if indices is None else [int(i) for i in indices]
    if len(indices) != len(items):
        raise ValueError(f"prepare got {len(indices)} indices for {len(items)} items")
    found: list[Warning] = []
    seen: set = set()

    def collect(caught, index: int | None) -> None:
        for record in caught:
            warning = _item_warning(record.message, index)
            if isinstance(warning, ItemWarning):  # a retried batch raises an item's warnings again: once each
                key = (type(warning), warning.index, warning.reason)
                if key in seen:
                    continue
                seen.add(key)
            found.append(warning)

    failures: dict[int, E5OmniInputError] = {}
    decoded: dict[int, OmniItem] = {}
    modalities = processor.config.modalities
    for position, item in enumerate(items):
        index = indices[position]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if check:
                    check_item(item, index, modalities)
                decoded[position] = processor.decode(item, index)
            except E5OmniInputError as err:
                failures[position] = err
        collect(caught, index)
        if failures and not keep_going:
            return Prepared(None, [], {}, found, error=failures[position])

    def process(positions: list[int]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                batch = processor.process_decoded(
                    [decoded[p] for p in positions],
                    role,
                    prompt=prompt,
                    indices=[indices[p] for p in positions],
                    where=None if where is None else [where[p] for p in positions],
                )
                return dict(batch), None, caught
            except E5OmniInputError as err:
                return None, err, caught

    pending = sorted(decoded)
    while pending:
        features, err, caught = process(pending)
        collect(caught, None)
        if err is None:
            return Prepared(features, pending, failures, found)
        if not keep_going:
            return Prepared(None, [], failures, found, error=err)
        named = [p for p in pending if indices[p] == err.index]
        if named:
            failures[named[0]] = err
            pending.remove(named[0])
            continue
        before = len(pending)
        for p in list(pending):  # no usable index: find the bad items one by one
            _, one, caught = process([p])
            collect(caught, None)
            if one is not None:
                failures[p] = one
                pending.remove(p)
        if len(pending) == before:  # each item alone passes, together they do not: the batch is refused
            failures.update((p, err) for p in pending)
            pending = []
    return Prepared(None, [], failures, found)


class BatchPreparer(torch.utils.data.Dataset):
    """Batch `b` of an encode job -> its `Prepared` (`prepare` of its items, named by their caller indices).

    A map-style dataset over batches, so `torch.utils.data.DataLoader(..., batch_size=None, num_workers=N)` runs it
    in N worker processes, in order, overlapped with the forward. Nothing is raised inside a worker: the typed error
    and `ItemWarning`s come back whole, so the caller re-raises and re-warns in its own process with the caller's item
    indices intact. The items were checked by the caller (`check_items`), so they are not checked again."""

    def __init__(self, processor: Any, items: list, batches: list[list[int]], role: str):
        self.processor, self.items, self.batches, self.role = processor, items, batches, role

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> Prepared:
        index = self.batches[b]
        return prepare(self.processor, [self.items[i] for i in index], self.role, indices=index, check=False)


def _no_collate(batch):
    return batch


def in_order(dataset: Any, num_workers: int):
    """`dataset[0], dataset[1], ...` computed here (`num_workers` <= 0) or in that many DataLoader worker processes,
    in order, 2 items ahead a worker (each item is already a whole batch: batch_size=None, no collation)."""
    if num_workers <= 0 or len(dataset) < 2:
        return (dataset[b] for b in range(len(dataset)))
    return iter(
        torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=min(num_workers, len(dataset)),
            collate_fn=_no_collate,
            prefetch_factor=2,
            persistent_workers=False,
        )
    )


def prepared_batches(processor: Any, items: list, batches: list[list[int]], role: str, num_workers: int):
    """Yield each batch's features in order; `num_workers` > 0 prepares them in worker processes (DataLoader)."""
    for prepared in in_order(BatchPreparer(processor, items, batches, role), num_workers):
        yield prepared.reraise(stacklevel=2)
