"""Omni training data: the example schema, safe loading from files and `datasets`, and the retrieval view.

A training example is ``{"query": item, "positive": item, "negatives": [item, ...]}`` (negatives optional, the same
number k in every example of a dataset), where an *item* is exactly what ``E5OmniModel.encode_query`` /
``encode_document`` accept:

- a ``str``: always text, never read as a path or URL;
- a ``PIL.Image.Image``;
- a ``dict`` with any of ``"text"`` (str), ``"image"`` (PIL image or path), ``"audio"`` (``{"array": float 1-D
  ndarray, "sampling_rate": int}``, a 1-D 16 kHz ndarray, or path), ``"video"`` (uint8 ndarray ``(T, H, W, 3)`` or
  path), plus ``"instruction"`` (str, query side only).

Examples may carry extra bookkeeping keys (``"pair"`` like ``"text->image"``, ``"id"``, and for the synthetic set
``"scene"``); consumers ignore keys they do not know.

Why this module exists separately from the processor: loading is where untrusted *dataset files* meet the file system,
so it is where media paths are confined to a media root and where bad rows are reported by line number, long before a
batch reaches the backbone. Nothing here decodes images or video files: paths are resolved and checked, and the
processor decodes them later under its media budgets. The one exception is ``datasets.Audio`` features, which cannot be
decoded by ``datasets`` in this environment (torchcodec does not load), so their bytes are decoded here with
soundfile and resampled to 16 kHz with soxr.

Sections: errors; item inspection (modalities, signatures, content hashes); media paths; JSONL/CSV loaders;
Hugging Face datasets; the retrieval view (``to_corpus``). Collation is appended at the end of this file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import operator
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "AUDIO_SAMPLING_RATE",
    "BadRowError",
    "DataError",
    "HFExamples",
    "InvalidItemError",
    "ITEM_KEYS",
    "MEDIA_KEYS",
    "MODALITIES",
    "MissingMediaError",
    "RetrievalCorpus",
    "UnsafeMediaPathError",
    "content_hash",
    "from_hf_dataset",
    "item_modalities",
    "load_csv",
    "load_hub_dataset",
    "load_jsonl",
    "modality_signature",
    "pair_name",
    "resolve_media_path",
    "to_corpus",
    "validate_example",
]

MODALITIES: tuple[str, ...] = ("text", "image", "audio", "video")
"""Order of the modality flags everywhere (``item_modalities``, the collator's ``modality_mask`` columns)."""
MEDIA_KEYS: tuple[str, ...] = ("image", "audio", "video")
ITEM_KEYS: tuple[str, ...] = ("text", "image", "audio", "video", "instruction")
AUDIO_SAMPLING_RATE = 16_000
"""A bare 1-D audio array is taken to be at this rate (the model API's convention)."""

EXAMPLE_KEYS: tuple[str, ...] = ("query", "positive", "negatives")
PASSTHROUGH_KEYS: tuple[str, ...] = ("pair", "id")
"""Bookkeeping keys the file loaders accept and copy through unchanged (strings only)."""

# =====================================================================================================================
# Errors
# =====================================================================================================================


class DataError(ValueError):
    """Base class of every dataset problem raised here, so callers can catch one type."""


class InvalidItemError(DataError, TypeError):
    """An item is not one of the accepted forms; also a TypeError because it usually is a wrong type."""


class BadRowError(DataError):
    """A row of a dataset file or `datasets.Dataset` does not follow the schema.

    ``source`` is the file (or "dataset"), ``row`` the 1-based line number for files or the 0-based index for
    datasets, so the message points at the exact place to fix.
    """

    def __init__(self, message: str, *, source: str | None = None, row: int | None = None):
        self.source = source
        self.row = row
        super().__init__(f"{_prefix(source, row)}{message}")


class UnsafeMediaPathError(DataError):
    """A media path from a dataset would read outside the media root (``..``, absolute, URL, escaping symlink)."""

    def __init__(self, path: str, reason: str, *, source: str | None = None, row: int | None = None, column=None):
        self.path, self.reason, self.source, self.row, self.column = path, reason, source, row, column
        super().__init__(f"{_prefix(source, row, column)}refusing media path {path!r}: {reason}")


class MissingMediaError(DataError, FileNotFoundError):
    """A (safe) media path points at nothing; caught at load time instead of in the middle of training."""

    def __init__(self, path: str, resolved: Path, *, source: str | None = None, row: int | None = None, column=None):
        self.path, self.resolved, self.source, self.row, self.column = path, resolved, source, row, column
        super().__init__(f"{_prefix(source, row, column)}media file {path!r} not found (looked for {resolved})")


def _where(source: str | None, row: int | None, column: str | None = None) -> str:
    """Human location of a problem: "data.jsonl line 3, column 'query.image'", "row 5" (datasets), or ""."""
    parts = []
    if source:
        parts.append(source)
    if row is not None:
        parts.append(f"line {row}" if source and source != "dataset" else f"row {row}")
    where = " ".join(parts)
    if column is not None:
        where = f"{where}, column {column!r}" if where else f"column {column!r}"
    return where


def _prefix(source: str | None, row: int | None, column: str | None = None) -> str:
    where = _where(source, row, column)
    return f"{where}: " if where else ""


# =====================================================================================================================
# Item inspection
# =====================================================================================================================

_ITEM_EXPECTED = (
    "a str (text), a PIL.Image.Image, or a dict with keys among "
    "'text', 'image', 'audio', 'video' (at least one) and optional 'instruction'"
)


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def item_modalities(item: Any, index: int | None = None) -> tuple[bool, bool, bool, bool]:
    """Which of (text, image, audio, video) an item carries, validating its shape on the way.

    The collator turns this into the ``modality_mask`` rows that the per-modality temperatures need
    (tau(x) = mean of tau over the modalities present). It checks types and array shapes only (cheap), never file
    contents: decoding belongs to the processor. ``index`` is only used to name the item in the error.
    """
    at = f"item {index}: " if index is not None else ""
    if isinstance(item, str):
        return (True, False, False, False)
    if isinstance(item, Image.Image):
        return (False, True, False, False)
    if not isinstance(item, Mapping):
        raise InvalidItemError(f"{at}expected {_ITEM_EXPECTED}; got {type(item).__name__}")
    unknown = [k for k in item if k not in ITEM_KEYS]
    if unknown:
        raise InvalidItemError(f"{at}unknown key(s) {unknown}; expected keys among {list(ITEM_KEYS)}")
    flags = tuple(item.get(m) is not None for m in MODALITIES)
    if not any(flags):
        raise InvalidItemError(f"{at}the dict has no content; expected at least one of {list(MODALITIES)}")
    for key in ("text", "instruction"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise InvalidItemError(f"{at}{key!r} must be a str, got {type(item[key]).__name__}")
    image = item.get("image")
    if image is not None and not (isinstance(image, Image.Image) or _is_path(image)):
        raise InvalidItemError(f"{at}'image' must be a PIL.Image.Image or a path, got {type(image).__name__}")
    audio = item.get("audio")
    if audio is not None:
        _check_audio(audio, at)
    video = item.get("video")
    if video is not None:
        _check_video(video, at)
    return flags  # type: ignore[return-value]


def _check_audio(audio: Any, at: str) -> None:
    expected = "'audio' must be {'array': float 1-D ndarray, 'sampling_rate': int}, a 1-D 16 kHz ndarray, or a path"
    if _is_path(audio):
        return
    if isinstance(audio, Mapping):
        if set(audio) != {"array", "sampling_rate"}:
            raise InvalidItemError(f"{at}{expected}; got a dict with keys {sorted(audio)}")
        array, rate = audio["array"], audio["sampling_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise InvalidItemError(f"{at}{expected}; sampling_rate={rate!r} is not a positive int")
    else:
        array = audio
    if not isinstance(array, np.ndarray) or array.ndim != 1 or not np.issubdtype(array.dtype, np.floating):
        got = f"ndarray {array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise InvalidItemError(f"{at}{expected}; got {got}")


def _check_video(video: Any, at: str) -> None:
    if _is_path(video):
        return
    ok = isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3
    if not ok:
        got = f"ndarray {video.dtype} {video.shape}" if isinstance(video, np.ndarray) else type(video).__name__
        raise InvalidItemError(f"{at}'video' must be a uint8 ndarray (T, H, W, 3) or a path; got {got}")


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
    ``img`` == ``{"image": img}``, a bare 1-D audio array == ``{"array": a, "sampling_rate": 16000}``, and audio arrays
    are compared as float32 (what the processor feeds the feature extractor). Images hash by mode, size and pixels;
    arrays by dtype, shape and bytes; paths by their string (identical files at different paths are *not* detected:
    deduplicate files when building a dataset). The instruction is included because it changes the embedding.
    The value fits in ``torch.long``.
    """
    item_modalities(item)  # validate first: a hash of garbage would silently never match
    if isinstance(item, str):
        item = {"text": item}
    elif isinstance(item, Image.Image):
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
    elif isinstance(value, Image.Image):
        digest.update(f"i{value.mode}:{value.size[0]}x{value.size[1]}:".encode())
        digest.update(value.tobytes())
    elif key == "audio":
        if isinstance(value, Mapping):
            array, rate = value["array"], int(value["sampling_rate"])
        else:
            array, rate = value, AUDIO_SAMPLING_RATE
        _hash_array(digest, np.asarray(array, dtype=np.float32), prefix=f"a{rate}:")
    else:  # video frames
        _hash_array(digest, value, prefix="v")


def _hash_array(digest: Any, array: np.ndarray, prefix: str) -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"{prefix}{array.dtype.str}:{array.shape}:".encode())
    digest.update(array.data if array.size else b"")


# =====================================================================================================================
# Media paths
# =====================================================================================================================

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def resolve_media_path(
    root: str | os.PathLike,
    rel: str | os.PathLike,
    *,
    must_exist: bool = True,
    source: str | None = None,
    row: int | None = None,
    column: str | None = None,
) -> Path:
    """Resolve a dataset's media path under ``root``, refusing anything that could read elsewhere.

    Dataset files are untrusted input: a row saying ``"image": "../../home/me/.ssh/id_rsa"`` must not make training
    read (and possibly log or push) an arbitrary file. Refused, with UnsafeMediaPathError naming row/column/path:
    empty paths, NUL bytes, URLs (``scheme://``; nothing is fetched), absolute paths (POSIX, ``\\``-rooted and
    ``C:``-style), any ``..`` component (even one that would land back inside: there is no honest use for it), and
    paths whose real location after following symlinks is outside the real root. Symlinks that stay inside the root
    are fine. With ``must_exist`` a missing file raises MissingMediaError at load time rather than mid-epoch.

    Returns the absolute, symlink-free path.
    """
    text = os.fspath(rel)
    if isinstance(text, bytes):
        text = os.fsdecode(text)

    def refuse(reason: str) -> UnsafeMediaPathError:
        return UnsafeMediaPathError(text, reason, source=source, row=row, column=column)

    if not text.strip():
        raise refuse("it is empty")
    if "\x00" in text:
        raise refuse("it contains a NUL byte")
    if _URL.match(text):
        raise refuse("URLs are never fetched from dataset files; download the media under the media root")
    if os.path.isabs(text) or text.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(text):
        raise refuse("absolute paths are not allowed; give a path relative to the media root")
    if ".." in re.split(r"[\\/]+", text):
        raise refuse("'..' components are not allowed")
    real_root = Path(root).resolve()
    resolved = (real_root / text).resolve()
    if resolved != real_root and real_root not in resolved.parents:
        raise refuse(f"it resolves to {resolved}, outside the media root {real_root} (symlink escape)")
    if resolved == real_root:
        raise refuse("it names the media root itself, not a file")
    if must_exist and not resolved.is_file():
        raise MissingMediaError(text, resolved, source=source, row=row, column=column)
    return resolved


# =====================================================================================================================
# JSONL and CSV loaders
# =====================================================================================================================


def _parse_file_item(
    value: Any, *, role: str, media_root: Path, source: str, row: int, must_exist: bool
) -> str | dict[str, Any]:
    """Turn one item from a JSON/CSV row into a model item; media strings become resolved absolute paths."""
    if isinstance(value, str):
        if not value.strip():
            raise BadRowError(f"{role}: empty text", source=source, row=row)
        return value
    if not isinstance(value, dict):
        raise BadRowError(
            f"{role}: expected a string (text) or an object with keys among {list(ITEM_KEYS)}, "
            f"got {type(value).__name__}",
            source=source,
            row=row,
        )
    unknown = [k for k in value if k not in ITEM_KEYS]
    if unknown:
        raise BadRowError(
            f"{role}: unknown key(s) {unknown}; expected keys among {list(ITEM_KEYS)}", source=source, row=row
        )
    item: dict[str, Any] = {}
    for key in ITEM_KEYS:
        if value.get(key) is None:
            continue
        entry = value[key]
        if not isinstance(entry, str):
            what = "text" if key in ("text", "instruction") else "a media path relative to the media root"
            raise BadRowError(
                f"{role}.{key}: expected a string ({what}), got {type(entry).__name__}", source=source, row=row
            )
        if key in ("text", "instruction"):
            if not entry.strip():
                raise BadRowError(f"{role}.{key}: empty string", source=source, row=row)
            item[key] = entry
        else:
            path = resolve_media_path(
                media_root, entry, must_exist=must_exist, source=source, row=row, column=f"{role}.{key}"
            )
            item[key] = str(path)
    if not any(k in item for k in MODALITIES):
        raise BadRowError(f"{role}: no content; expected at least one of {list(MODALITIES)}", source=source, row=row)
    if "instruction" in item and role != "query":
        raise BadRowError(f"{role}: 'instruction' belongs on the query side only", source=source, row=row)
    return item


def _check_negative_count(examples: list[dict], rows: list[int], num_negatives: int | None, source: str) -> None:
    """The loss builds a (B, B*(1+k)) candidate matrix, so every example needs the same number k of negatives."""
    if not examples:
        return
    expected = num_negatives if num_negatives is not None else len(examples[0].get("negatives", []))
    for example, row in zip(examples, rows):
        got = len(example.get("negatives", []))
        if got != expected:
            origin = "num_negatives" if num_negatives is not None else "the first row"
            raise BadRowError(f"expected {expected} negatives (as {origin}), got {got}", source=source, row=row)


def load_jsonl(
    path: str | os.PathLike,
    media_root: str | os.PathLike | None = None,
    *,
    num_negatives: int | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Read training examples from a JSON-lines file, one object per line.

    Each line: ``{"query": ITEM, "positive": ITEM, "negatives": [ITEM, ...]}`` (negatives optional) plus optional
    string ``"pair"`` / ``"id"``; ITEM is a string (text, never a path) or an object with keys among text, image,
    audio, video (paths relative to ``media_root``) and instruction (query only). ``media_root`` defaults to the
    file's folder. Blank lines are allowed; everything else that does not fit raises BadRowError /
    UnsafeMediaPathError / MissingMediaError with the line number. Every example has the same number of negatives
    (``num_negatives`` if given, else the first row's). ``check_files=False`` skips the existence check (not the
    safety checks) for datasets whose media are materialised later.
    """
    path = Path(path)
    root = Path(media_root) if media_root is not None else path.parent
    source = path.name
    examples: list[dict[str, Any]] = []
    rows: list[int] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise BadRowError(
                    f"not valid JSON ({err.msg} at column {err.colno})", source=source, row=line_no
                ) from None
            if not isinstance(record, dict):
                raise BadRowError(f"expected a JSON object, got {type(record).__name__}", source=source, row=line_no)
            examples.append(_parse_record(record, root=root, source=source, row=line_no, must_exist=check_files))
            rows.append(line_no)
    _check_negative_count(examples, rows, num_negatives, source)
    return examples


def _parse_record(record: dict, *, root: Path, source: str, row: int, must_exist: bool) -> dict[str, Any]:
    unknown = [k for k in record if k not in EXAMPLE_KEYS + PASSTHROUGH_KEYS]
    if unknown:
        raise BadRowError(
            f"unknown key(s) {unknown}; expected {list(EXAMPLE_KEYS)} (+ optional {list(PASSTHROUGH_KEYS)})",
            source=source,
            row=row,
        )
    for key in ("query", "positive"):
        if record.get(key) is None:
            raise BadRowError(f"missing {key!r}", source=source, row=row)
    kw = {"media_root": root, "source": source, "row": row, "must_exist": must_exist}
    example: dict[str, Any] = {
        "query": _parse_file_item(record["query"], role="query", **kw),
        "positive": _parse_file_item(record["positive"], role="positive", **kw),
    }
    negatives = record.get("negatives")
    if negatives is not None:
        if not isinstance(negatives, list):
            raise BadRowError(
                f"'negatives' must be a list of items, got {type(negatives).__name__}", source=source, row=row
            )
        example["negatives"] = [_parse_file_item(n, role=f"negatives[{j}]", **kw) for j, n in enumerate(negatives)]
    for key in PASSTHROUGH_KEYS:
        if key in record:
            if not isinstance(record[key], str):
                raise BadRowError(f"{key!r} must be a string, got {type(record[key]).__name__}", source=source, row=row)
            example[key] = record[key]
    return example


# Column naming shared by CSV files and `datasets` columns:
#   ROLE            the whole item (CSV: text; datasets: typed by the feature)
#   ROLE_FIELD      one field of the item, FIELD in text|image|audio|video|instruction (instruction: query only)
#   ROLE in query | positive | negative_1 .. negative_k (contiguous); aliases: anchor = query, negative = negative_1
_COLUMN = re.compile(
    r"^(?P<role>query|anchor|positive|negative(?:_(?P<k>[1-9][0-9]*))?)(?:_(?P<field>text|image|audio|video|instruction))?$"
)
_ROLE_ALIASES = {"anchor": "query", "negative": "negative_1"}


@dataclass
class _Schema:
    """Which column feeds which field of which role. Field ``"item"`` means the column holds the whole item."""

    roles: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> field -> column
    passthrough: dict[str, str] = field(default_factory=dict)  # example key ("pair", "id") -> column

    @property
    def negative_roles(self) -> list[str]:
        return sorted((r for r in self.roles if r.startswith("negative_")), key=lambda r: int(r.split("_")[1]))

    def check(self, source: str) -> None:
        for role in ("query", "positive"):
            if role not in self.roles:
                raise DataError(
                    f"{source}: no column for {role!r}; expected '{role}' or '{role}_text', '{role}_image', ..."
                )
        numbers = [int(r.split("_")[1]) for r in self.negative_roles]
        if numbers != list(range(1, len(numbers) + 1)):
            raise DataError(f"{source}: negative columns must be numbered 1..k without gaps, got {numbers}")
        for role, fields in self.roles.items():
            if "item" in fields and set(fields) - {"item", "instruction"}:
                raise DataError(
                    f"{source}: {role!r} has both a whole-item column {fields['item']!r} and per-field columns "
                    f"{sorted(c for f, c in fields.items() if f != 'item')}; use one or the other"
                )
            if "instruction" in fields and role != "query":
                raise DataError(f"{source}: 'instruction' columns are only allowed for the query, got {role!r}")
            if set(fields) == {"instruction"}:
                raise DataError(f"{source}: {role!r} has only an instruction column; add its text/media columns")


def _schema_from_columns(columns: Sequence[str], source: str, *, bare_is_text: bool = False) -> _Schema:
    """Parse column names by the shared convention; ``bare_is_text`` for CSV, where every cell is a string."""
    schema = _Schema()
    unknown = []
    for column in columns:
        if column in PASSTHROUGH_KEYS:
            schema.passthrough[column] = column
            continue
        match = _COLUMN.match(column)
        if match is None:
            unknown.append(column)
            continue
        role = _ROLE_ALIASES.get(match["role"], match["role"])
        fld = match["field"] or ("text" if bare_is_text else "item")
        fields = schema.roles.setdefault(role, {})
        if fld in fields:
            raise DataError(f"{source}: columns {fields[fld]!r} and {column!r} both give {role}.{fld}")
        fields[fld] = column
    if unknown:
        raise DataError(
            f"{source}: unknown column(s) {unknown}; expected query/positive/negative_<i> optionally suffixed with "
            f"_text, _image, _audio, _video (or _instruction for the query), plus optional {list(PASSTHROUGH_KEYS)}"
        )
    schema.check(source)
    return schema


def load_csv(
    path: str | os.PathLike,
    media_root: str | os.PathLike | None = None,
    *,
    num_negatives: int | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Read training examples from a CSV file with a header row (UTF-8, optional BOM).

    Columns are named ``ROLE`` or ``ROLE_FIELD``: ROLE is ``query``, ``positive`` or ``negative_1`` .. ``negative_k``
    (aliases ``anchor``, ``negative``); FIELD is ``text``, ``image``, ``audio``, ``video`` or (query only)
    ``instruction``; a bare ROLE column is text. Media cells are paths relative to ``media_root`` (default: the
    file's folder). An empty cell means "absent"; each item needs at least one non-empty text/media cell. An item
    with only text becomes a plain string, otherwise a dict. Optional ``pair`` and ``id`` columns are copied through.
    Unknown columns, short/long rows and empty items raise errors naming the line; nothing is skipped.
    """
    path = Path(path)
    root = Path(media_root) if media_root is not None else path.parent
    source = path.name
    examples: list[dict[str, Any]] = []
    rows: list[int] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{source}: empty file; expected a header row") from None
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise DataError(f"{source}: duplicate column names in header {header}")
        schema = _schema_from_columns(header, source, bare_is_text=True)
        for cells in reader:
            line_no = reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank line
            if len(cells) != len(header):
                raise BadRowError(
                    f"expected {len(header)} cells (one per column), got {len(cells)}", source=source, row=line_no
                )
            record = dict(zip(header, cells))
            example: dict[str, Any] = {}
            negatives = []
            for role, fields in schema.roles.items():
                raw = {f: record[c] for f, c in fields.items() if record[c] != ""}
                if not any(k in raw for k in MODALITIES):
                    raise BadRowError(
                        f"{role} is empty; expected a value in one of {sorted(fields.values())}",
                        source=source,
                        row=line_no,
                    )
                value: Any = raw["text"] if set(raw) == {"text"} else raw
                item = _parse_file_item(
                    value, role=role, media_root=root, source=source, row=line_no, must_exist=check_files
                )
                if role.startswith("negative_"):
                    negatives.append((int(role.split("_")[1]), item))
                else:
                    example[role] = item
            if negatives:
                example["negatives"] = [item for _, item in sorted(negatives, key=lambda p: p[0])]
            for key, column in schema.passthrough.items():
                if record[column] != "":
                    example[key] = record[column]
            examples.append(
                {k: example[k] for k in ("query", "positive", "negatives", *PASSTHROUGH_KEYS) if k in example}
            )
            rows.append(line_no)
    _check_negative_count(examples, rows, num_negatives, source)
    return examples


# =====================================================================================================================
# Hugging Face datasets
# =====================================================================================================================


def _normalise_column_map(column_map: Mapping[str, Any], columns: Sequence[str]) -> _Schema:
    """``{role: column | {field: column}}`` (+ ``"negatives": [column | {field: column}, ...]``) -> _Schema."""
    schema = _Schema()
    for role, spec in column_map.items():
        if role == "negatives":
            if not isinstance(spec, (list, tuple)):
                raise DataError(f"column_map['negatives'] must be a list of columns or field maps, got {spec!r}")
            targets = [(f"negative_{j}", s) for j, s in enumerate(spec, start=1)]
        elif role in PASSTHROUGH_KEYS:
            if not isinstance(spec, str):
                raise DataError(f"column_map[{role!r}] must be a column name, got {spec!r}")
            schema.passthrough[role] = spec
            continue
        else:
            match = _COLUMN.match(role)
            if match is None or match["field"] is not None:
                raise DataError(
                    f"column_map key {role!r} is not a role; expected query, positive, negative_<i>, negatives, "
                    f"{', '.join(PASSTHROUGH_KEYS)}"
                )
            targets = [(_ROLE_ALIASES.get(role, role), spec)]
        for target, target_spec in targets:
            if isinstance(target_spec, str):
                fields = {"item": target_spec}
            elif isinstance(target_spec, Mapping):
                bad = [f for f in target_spec if f not in ITEM_KEYS]
                if bad:
                    raise DataError(f"column_map[{role!r}]: unknown field(s) {bad}; expected among {list(ITEM_KEYS)}")
                fields = dict(target_spec)
            else:
                raise DataError(
                    f"column_map[{role!r}] must be a column name or a {{field: column}} dict, got {target_spec!r}"
                )
            schema.roles[target] = fields
    missing = [c for fields in schema.roles.values() for c in fields.values()] + list(schema.passthrough.values())
    missing = [c for c in missing if c not in columns]
    if missing:
        raise DataError(f"column_map names column(s) {missing} that the dataset does not have; it has {list(columns)}")
    schema.check("column_map")
    return schema


def _list_depth(feature: Any) -> int | None:
    """Nesting depth of a (possibly nested) List/Sequence/ArrayND of numbers; None if not a numeric array feature."""
    import datasets

    depth = 0
    while isinstance(feature, (datasets.List, datasets.LargeList, datasets.Sequence)):
        feature = feature.feature
        depth += 1
    array_types = (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)
    if isinstance(feature, array_types):
        return depth + len(feature.shape)
    if isinstance(feature, datasets.Value) and feature.dtype not in ("string", "large_string", "binary", "bool"):
        return depth
    return None


def _column_kind(feature: Any, fld: str, column: str) -> str:
    """Classify a column for field ``fld``; refuse feature types that cannot carry that field.

    Kinds: text, image, image_path, audio_feature, audio_struct, audio_array, audio_path, video_feature,
    video_array, video_path. Decided once from the features so a wrong column fails before training starts.
    """
    import datasets

    is_string = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
    if fld in ("text", "instruction"):
        if is_string:
            return "text"
    elif fld == "image":
        if isinstance(feature, datasets.Image):
            return "image"
        if is_string:
            return "image_path"
    elif fld == "audio":
        if isinstance(feature, datasets.Audio):
            return "audio_feature"
        if isinstance(feature, dict) and set(feature) == {"array", "sampling_rate"}:
            return "audio_struct"
        if _list_depth(feature) == 1:
            return "audio_array"
        if is_string:
            return "audio_path"
    elif fld == "video":
        if isinstance(feature, datasets.Video):
            return "video_feature"
        if _list_depth(feature) == 4:
            return "video_array"
        if is_string:
            return "video_path"
    elif fld == "item":
        for candidate in ("text", "image", "audio", "video"):
            try:
                kind = _column_kind(feature, candidate, column)
            except DataError:
                continue
            # a string column holding a whole item is text: strings are never paths unless the map says "image" etc.
            return kind
    expected = {
        "text": "a string Value",
        "instruction": "a string Value",
        "image": "an Image feature or a string path",
        "audio": "an Audio feature, {'array', 'sampling_rate'} struct, 1-D float list, or a string path",
        "video": "a Video feature, a 4-D uint8 list (T, H, W, 3), or a string path",
        "item": "a string (text), Image, Audio, Video, audio array/struct or 4-D video array column",
    }[fld]
    raise DataError(f"column {column!r} cannot provide {fld!r}: its feature is {feature!r}; expected {expected}")


class HFExamples(Sequence):
    """A lazy, indexable view of a ``datasets.Dataset`` as omni training examples.

    Rows are converted on access (images decoded by ``datasets``/PIL, audio bytes decoded to 16 kHz float32), so a
    dataset of millions of images is not held in memory; a ``torch.utils.data.DataLoader`` can index it directly.
    Column kinds are checked when the view is built; per-row problems (a missing value, a bad path) raise BadRowError
    / UnsafeMediaPathError naming the 0-based row and column when the row is read. ``validate()`` reads every row
    once up front; ``list(view)`` materialises it.
    """

    def __init__(self, ds: Any, schema: _Schema, kinds: dict[str, str], media_root: Path | None):
        self._schema = schema
        self._kinds = kinds
        self._media_root = media_root
        numpy_cols = [c for c, k in kinds.items() if k in ("audio_struct", "audio_array", "video_array")]
        # Audio/video list columns come back as Python lists by default; numpy format keeps float32 audio as is.
        # output_all_columns keeps the other columns in Python format (Image -> PIL).
        self._ds = ds.with_format("numpy", columns=numpy_cols, output_all_columns=True) if numpy_cols else ds

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]  # type: ignore[return-value]
        index = operator.index(index)  # numpy / torch integer indices from samplers work too
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"row {index} out of range for {n} rows")
        index %= n
        return self._convert(self._ds[index], index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def validate(self) -> None:
        """Read and check every row (decodes media; costs one pass over the data)."""
        for i in range(len(self)):
            validate_example(self[i], i)

    def _convert(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        example: dict[str, Any] = {}
        negatives = []
        for role, fields in self._schema.roles.items():
            item = self._convert_item(row, role, fields, index)
            if role.startswith("negative_"):
                negatives.append((int(role.split("_")[1]), item))
            else:
                example[role] = item
        if negatives:
            example["negatives"] = [item for _, item in sorted(negatives, key=lambda p: p[0])]
        for key, column in self._schema.passthrough.items():
            value = row[column]
            if value is not None:
                example[key] = value if isinstance(value, str) else str(value)
        return example

    def _convert_item(self, row: Mapping[str, Any], role: str, fields: dict[str, str], index: int) -> Any:
        if "item" in fields:
            column = fields["item"]
            value = row[column]
            if value is None:
                raise BadRowError(f"{role}: column {column!r} is empty (None)", source="dataset", row=index)
            kind = self._kinds[column]
            fld = kind.split("_")[0]
            converted = self._convert_value(value, kind, column, index)
            if fld == "text" and not converted.strip():
                raise BadRowError(f"{role}: column {column!r} has empty text", source="dataset", row=index)
            instruction = row[fields["instruction"]] if "instruction" in fields else None
            if instruction:
                return {fld: converted, "instruction": instruction}
            return converted if fld in ("text", "image") else {fld: converted}
        item: dict[str, Any] = {}
        for fld, column in fields.items():
            value = row[column]
            if value is None or (isinstance(value, str) and value == ""):
                continue  # absent, as an empty CSV cell
            item[fld] = self._convert_value(value, self._kinds[column], column, index)
        if not any(k in item for k in MODALITIES):
            raise BadRowError(
                f"{role} is empty; expected a value in one of {sorted(fields.values())}", source="dataset", row=index
            )
        if set(item) == {"text"}:
            return item["text"]
        return item

    def _convert_value(self, value: Any, kind: str, column: str, index: int) -> Any:
        if kind == "text":
            if not isinstance(value, str):
                raise BadRowError(
                    f"column {column!r}: expected a string, got {type(value).__name__}", source="dataset", row=index
                )
            return value
        if kind == "image":
            if not isinstance(value, Image.Image):
                raise BadRowError(
                    f"column {column!r}: expected an image, got {type(value).__name__}", source="dataset", row=index
                )
            return value
        if kind.endswith("_path"):
            if self._media_root is None:
                raise DataError(f"column {column!r} holds media paths; pass media_root= to resolve them safely")
            return str(resolve_media_path(self._media_root, value, source="dataset", row=index, column=column))
        if kind == "audio_struct":
            array = np.asarray(value["array"], dtype=np.float32)
            return {"array": array, "sampling_rate": int(value["sampling_rate"])}
        if kind == "audio_array":
            return np.asarray(value, dtype=np.float32)
        if kind == "audio_feature":
            return self._decode_audio_feature(value, column, index)
        if kind == "video_array":
            return _as_uint8_frames(value, column, index)
        if kind == "video_feature":
            return self._video_feature_path(value, column, index)
        raise AssertionError(kind)  # pragma: no cover - kinds come from _column_kind

    def _feature_path(self, value: Mapping[str, Any], column: str, index: int) -> str | None:
        path = value.get("path")
        if not path:
            return None
        if self._media_root is None:
            return str(path)  # written by `datasets` itself when the dataset was built from local files
        real_root = self._media_root.resolve()
        resolved = Path(path).resolve() if os.path.isabs(path) else None
        if resolved is not None:
            if real_root not in resolved.parents:
                raise UnsafeMediaPathError(
                    str(path), f"outside the media root {real_root}", source="dataset", row=index, column=column
                )
            return str(resolved)
        return str(resolve_media_path(real_root, path, source="dataset", row=index, column=column))

    def _decode_audio_feature(self, value: Mapping[str, Any], column: str, index: int) -> dict[str, Any]:
        data = value.get("bytes")
        if data is None:
            path = self._feature_path(value, column, index)
            if path is None:
                raise BadRowError(f"column {column!r}: audio has neither bytes nor path", source="dataset", row=index)
            with open(path, "rb") as handle:
                data = handle.read()
        try:
            return {"array": decode_audio_bytes(data), "sampling_rate": AUDIO_SAMPLING_RATE}
        except Exception as err:  # soundfile raises its own LibsndfileError
            raise BadRowError(f"column {column!r}: cannot decode audio ({err})", source="dataset", row=index) from None

    def _video_feature_path(self, value: Any, column: str, index: int) -> str:
        path = self._feature_path(value, column, index) if isinstance(value, Mapping) else None
        if path is None:
            raise BadRowError(
                f"column {column!r}: a Video feature without a local path cannot be passed on; store frames as a "
                "(T, H, W, 3) uint8 array column or files under media_root",
                source="dataset",
                row=index,
            )
        return path


def decode_audio_bytes(data: bytes) -> np.ndarray:
    """Decode an audio file's bytes to mono float32 at 16 kHz (soundfile + soxr; no torchcodec needed)."""
    import soundfile
    import soxr

    array, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = array.mean(axis=1)
    if rate != AUDIO_SAMPLING_RATE:
        mono = soxr.resample(mono, rate, AUDIO_SAMPLING_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _as_uint8_frames(value: Any, column: str, index: int) -> np.ndarray:
    """`datasets`' numpy format returns nested uint8 lists as int64; cast back, refusing out-of-range values."""
    frames = np.asarray(value)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise BadRowError(
            f"column {column!r}: expected video frames (T, H, W, 3), got shape {frames.shape}",
            source="dataset",
            row=index,
        )
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.integer) or frames.size and (frames.min() < 0 or frames.max() > 255):
            raise BadRowError(
                f"column {column!r}: video frames must be integers in 0..255", source="dataset", row=index
            )
        frames = frames.astype(np.uint8)
    return frames


def from_hf_dataset(
    ds: Any,
    column_map: Mapping[str, Any] | None = None,
    *,
    media_root: str | os.PathLike | None = None,
) -> HFExamples:
    """View a ``datasets.Dataset`` as omni training examples (lazy; see HFExamples).

    Without ``column_map`` the columns must follow the CSV naming (``query``, ``positive_image``, ``negative_1``, ...;
    ``anchor``/``negative`` accepted as in sentence-transformers), and unknown columns are an error so a typo cannot
    silently drop data. With ``column_map`` only the named columns are used, e.g.
    ``{"query": {"text": "caption"}, "positive": "image", "negatives": ["hard_image"]}``: a column name means "the
    whole item, typed by its feature", a dict maps item fields to columns.

    Feature handling: ``Image`` -> PIL image; ``Audio`` -> decoded here from its bytes/path to a 16 kHz float32 array
    (``datasets``' own audio decoding needs torchcodec); 1-D float lists and ``{"array", "sampling_rate"}`` structs ->
    audio arrays (read through numpy format so they are ndarrays, not lists); 4-D uint8 lists -> video frames; string
    columns -> text, or, when mapped to image/audio/video, paths resolved under ``media_root`` with the same safety
    rules as files. A whole-item string column is always text.
    """
    import datasets

    if isinstance(ds, (datasets.IterableDataset, datasets.DatasetDict)):
        raise DataError(
            f"from_hf_dataset needs a datasets.Dataset (one split, not streaming); got {type(ds).__name__}. "
            "Select a split (ds['train']) or load without streaming."
        )
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"from_hf_dataset needs a datasets.Dataset, got {type(ds).__name__}")
    columns = list(ds.column_names)
    if column_map is None:
        schema = _schema_from_columns(columns, "dataset")
    else:
        schema = _normalise_column_map(column_map, columns)
    kinds: dict[str, str] = {}
    for fields in schema.roles.values():
        for fld, column in fields.items():
            kinds[column] = _column_kind(ds.features[column], fld, column)
    for column, kind in list(kinds.items()):
        feature = ds.features[column]
        if kind == "audio_feature" and feature.decode:
            ds = ds.cast_column(column, datasets.Audio(decode=False))
        elif kind == "video_feature" and feature.decode:
            ds = ds.cast_column(column, datasets.Video(decode=False))
        elif kind == "image" and not feature.decode:
            ds = ds.cast_column(column, datasets.Image(decode=True))
    return HFExamples(ds, schema, kinds, Path(media_root) if media_root is not None else None)


def load_hub_dataset(
    name: str,
    split: str = "train",
    *,
    revision: str | None = None,
    column_map: Mapping[str, Any] | None = None,
    media_root: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> HFExamples:
    """Load a dataset from the Hugging Face Hub (or a local ``datasets`` folder) and view it as omni examples.

    This is the one function here that may reach the network, and only because the caller names a dataset. Pin
    ``revision=`` (a commit sha) for reproducible training: a dataset repo can change under the same name.
    ``load_kwargs`` go to ``datasets.load_dataset`` unchanged (e.g. ``name=`` for a config, ``data_dir=``).
    """
    import datasets

    ds = datasets.load_dataset(name, split=split, revision=revision, **load_kwargs)
    return from_hf_dataset(ds, column_map, media_root=media_root)


# =====================================================================================================================
# Retrieval view
# =====================================================================================================================


@dataclass
class RetrievalCorpus:
    """Examples recast for retrieval evaluation, with every distinct item encoded once.

    - ``queries``: qid -> item (identical queries of the same pair are merged, their positives all relevant);
    - ``corpus``: did -> item (identical documents, by ``content_hash``, share one id across pairs);
    - ``qrels``: qid -> {did: 1} (BEIR / pytrec_eval convention);
    - ``query_pair``: qid -> pair name, e.g. ``"text->image"``;
    - ``candidates``: pair -> the doc ids a query of that pair is ranked against (that pair's positives and
      negatives). Per-pair pools keep a text query from being scored against text captions of the image->text task,
      as benchmarks like MMEB do.
    """

    queries: dict[str, Any]
    corpus: dict[str, Any]
    qrels: dict[str, dict[str, int]]
    query_pair: dict[str, str]
    candidates: dict[str, list[str]]

    @property
    def pairs(self) -> list[str]:
        return list(self.candidates)


def to_corpus(examples: Sequence[Mapping[str, Any]], *, include_negatives: bool = True) -> RetrievalCorpus:
    """Build queries / corpus / qrels from training-style examples for retrieval evaluation.

    Documents are deduplicated by content hash, so a document that is the positive of one query and a hard negative
    of another is one candidate; ids are stable for a given example order (``q00000``, ``d00000``). Hard negatives
    join the pair's candidate pool (``include_negatives``) as distractors, which makes the benchmark harder, not
    leakier: they are never relevant unless they are also some query's positive.
    """
    queries: dict[str, Any] = {}
    corpus: dict[str, Any] = {}
    qrels: dict[str, dict[str, int]] = {}
    query_pair: dict[str, str] = {}
    candidates: dict[str, dict[str, None]] = {}  # ordered sets
    doc_ids: dict[int, str] = {}
    query_ids: dict[tuple[str, int], str] = {}

    def doc_id(item: Any) -> str:
        key = content_hash(item)
        if key not in doc_ids:
            doc_ids[key] = f"d{len(doc_ids):05d}"
            corpus[doc_ids[key]] = item
        return doc_ids[key]

    for index, example in enumerate(examples):
        validate_example(example, index)
        pair = pair_name(example)
        pool = candidates.setdefault(pair, {})
        qkey = (pair, content_hash(example["query"]))
        if qkey not in query_ids:
            qid = query_ids[qkey] = f"q{len(query_ids):05d}"
            queries[qid] = example["query"]
            query_pair[qid] = pair
            qrels[qid] = {}
        qid = query_ids[qkey]
        positive = doc_id(example["positive"])
        qrels[qid][positive] = 1
        pool[positive] = None
        if include_negatives:
            for negative in example.get("negatives", []):
                pool[doc_id(negative)] = None
    return RetrievalCorpus(
        queries=queries,
        corpus=corpus,
        qrels=qrels,
        query_pair=query_pair,
        candidates={pair: list(pool) for pair, pool in candidates.items()},
    )


# =====================================================================================================================
# Collation
# =====================================================================================================================
