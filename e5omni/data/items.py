"""Items and examples: which modalities an item carries (the model's own check), pair names, content hashes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from e5omni.data.errors import BadRowError, InvalidItemError
from modeling_e5omni.configuration_e5omni import MODALITIES
from modeling_e5omni.processing_e5omni import (
    SAMPLING_RATE,
    E5OmniInputError,
    check_item,
    image_from_array,
    video_frames_from_array,
)

MEDIA_KEYS: tuple[str, ...] = MODALITIES[1:]
ITEM_KEYS: tuple[str, ...] = (*MODALITIES, "instruction")
AUDIO_SAMPLING_RATE = SAMPLING_RATE
"""A bare 1-D audio array is taken to be at this rate (the model API's convention)."""

EXAMPLE_KEYS: tuple[str, ...] = ("query", "positive", "negatives")
PASSTHROUGH_KEYS: tuple[str, ...] = ("pair", "id")
"""Bookkeeping keys the file loaders accept and copy through unchanged (strings only)."""


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def item_modalities(item: Any, index: int | None = None) -> tuple[bool, bool, bool, bool]:
    """Which of (text, image, audio, video) an item carries, checked by the model's own ``check_item``.

    So training accepts exactly the items ``model.encode`` accepts (torch tensors, integer and multi-channel audio
    arrays included) and refuses the others with encode's message, raised as InvalidItemError. It checks types and
    keys only (cheap): array shapes, dtypes and file contents are checked by the processor when it decodes the item
    (in the collator, as in encode). The collator turns the flags into the ``modality_mask`` rows that the
    per-modality temperatures need (tau(x) = mean of tau over the modalities present). ``index`` is only used to
    name the item in the error.
    """
    try:
        return check_item(item, index)
    except E5OmniInputError as err:
        raise InvalidItemError.from_input_error(err) from None


def modality_signature(item: Any, index: int | None = None) -> str:
    """Canonical name of an item's modality set, e.g. ``"text"``, ``"text+image"``, ``"audio+video"``.

    Always in MODALITIES order so that the same set has one name; used for pair names and per-pair evaluation.
    """
    flags = item_modalities(item, index)
    return "+".join(m for m, present in zip(MODALITIES, flags) if present)


def pair_name(example: Mapping[str, Any]) -> str:
    """The example's modality pair, e.g. ``"text->image"``: its ``"pair"`` key if set, else derived from the items."""
    pair = example.get("pair")
    if isinstance(pair, str) and pair:
        return pair
    return f"{modality_signature(example['query'])}->{modality_signature(example['positive'])}"


def validate_example(example: Any, index: int | None = None) -> None:
    """Check one training example's structure (query, positive, optional negatives list) and every item in it.

    Raises BadRowError naming the index and the offending field; item problems are re-raised with their role.
    """
    if not isinstance(example, Mapping):
        raise BadRowError(f"expected a dict with 'query' and 'positive', got {type(example).__name__}", row=index)
    for key in ("query", "positive"):
        if key not in example:
            raise BadRowError(f"missing {key!r}", row=index)
    negatives = example.get("negatives", [])
    if not isinstance(negatives, (list, tuple)):
        raise BadRowError(f"'negatives' must be a list of items, got {type(negatives).__name__}", row=index)
    roles = [("query", example["query"]), ("positive", example["positive"])]
    roles += [(f"negatives[{j}]", neg) for j, neg in enumerate(negatives)]
    for role, item in roles:
        try:
            item_modalities(item)
        except InvalidItemError as err:
            raise BadRowError(f"{role}: {err}", row=index) from None
        if role != "query" and isinstance(item, Mapping) and item.get("instruction") is not None:
            raise BadRowError(f"{role}: 'instruction' belongs on the query side only", row=index)


def content_hash(item: Any) -> int:
    """A signed 64-bit hash of an item's content, equal across processes and runs (no Python ``hash``).

    Used by the collator to mask duplicates as negatives of each other: two items that would embed identically must
    hash equally, so the forms the model treats as the same are canonicalised first: ``"x"`` == ``{"text": "x"}``,
    ``img`` == ``{"image": img}`` (and an image array hashes like the PIL image it becomes; a channels-first video like
    its channels-last frames), a bare audio array == ``{"array": a, "sampling_rate": 16000}``, float audio arrays
    are compared as float32 (what the processor feeds the feature extractor), and a torch tensor hashes like the
    ndarray it holds. Images hash by mode, size and pixels; arrays by dtype, shape and bytes (integer audio keeps its
    dtype, so it never collides with float audio of the same values, which embeds differently); paths by their string
    (identical files at different paths are *not* detected: deduplicate files when building a dataset). The
    instruction is included because it changes the embedding. The value fits in ``torch.long``.
    """
    item_modalities(item)  # validate first: a hash of garbage would silently never match
    if isinstance(item, str):
        item = {"text": item}
    elif isinstance(item, Image.Image | np.ndarray | torch.Tensor):  # a bare array is an image, as for encode
        item = {"image": item}
    digest = hashlib.blake2b(digest_size=8)
    for key in ITEM_KEYS:  # fixed order, independent of dict insertion order
        value = item.get(key)
        if value is None:
            continue
        digest.update(key.encode() + b"\x00")
        _hash_value(digest, key, value)
        digest.update(b"\x01")
    return int.from_bytes(digest.digest(), "little", signed=True)


def _hash_value(digest: Any, key: str, value: Any) -> None:
    if isinstance(value, str) and key in ("text", "instruction"):
        digest.update(b"s" + value.encode("utf-8"))
    elif _is_path(value):
        digest.update(b"p" + os.fsencode(os.fspath(value)))
    elif key == "image" and isinstance(value, np.ndarray | torch.Tensor):  # the pixels the model sees, any layout
        _hash_value(digest, key, image_from_array(value, None))
    elif isinstance(value, Image.Image):
        digest.update(f"i{value.mode}:{value.size[0]}x{value.size[1]}:".encode())
        digest.update(value.tobytes())
    elif key == "audio":
        if isinstance(value, Mapping):
            array, rate = value["array"], int(value["sampling_rate"])
        else:
            array, rate = value, AUDIO_SAMPLING_RATE
        _hash_array(digest, _audio_samples(array), prefix=f"a{rate}:")
    else:  # video frames, channels-last whatever layout they came in
        _hash_array(digest, video_frames_from_array(value, None), prefix="v")


def _audio_samples(array: Any) -> np.ndarray:
    """Float samples as float32, the processor's working dtype; integer samples as they are (the processor rescales)."""
    array = np.asarray(array)
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


def _hash_array(digest: Any, array: np.ndarray, prefix: str) -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"{prefix}{array.dtype.str}:{array.shape}:".encode())
    digest.update(array.data if array.size else b"")
