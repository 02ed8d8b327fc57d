"""Hugging Face `datasets`: a `datasets.Dataset` viewed as omni examples (`from_hf_dataset`, `load_hub_dataset`).

Column kinds are decided once from the features; rows are converted lazily. ``datasets.Audio`` values are decoded
here (soundfile + soxr), because ``datasets``' own audio decoding needs torchcodec, which does not load everywhere.
"""

from __future__ import annotations

import io
import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from e5omni.data.columns import _COLUMN, _ROLE_ALIASES, _Schema, _schema_from_columns
from e5omni.data.errors import BadRowError, DataError, UnsafeMediaPathError
from e5omni.data.items import (
    AUDIO_SAMPLING_RATE,
    ITEM_KEYS,
    MEDIA_KEYS,
    MODALITIES,
    PASSTHROUGH_KEYS,
    validate_example,
)
from e5omni.data.paths import resolve_media_path


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
    if fld == "item":
        for candidate in ("text", "image", "audio", "video"):
            try:
                kind = _column_kind(feature, candidate, column)
            except DataError:
                continue
            # a string column holding a whole item is text: strings are never paths unless the map says "image" etc.
            return kind
    # (kind, whether the feature can carry it), in order of preference; a string names a media file by its path
    candidates = {
        "text": [("text", is_string)],
        "instruction": [("text", is_string)],
        "image": [("image", isinstance(feature, datasets.Image))],
        "audio": [
            ("audio_feature", isinstance(feature, datasets.Audio)),
            ("audio_struct", isinstance(feature, dict) and set(feature) == {"array", "sampling_rate"}),
            ("audio_array", _list_depth(feature) == 1),
        ],
        "video": [("video_feature", isinstance(feature, datasets.Video)), ("video_array", _list_depth(feature) == 4)],
    }.get(fld, [])
    if fld in MEDIA_KEYS:
        candidates.append((f"{fld}_path", is_string))
    for kind, fits in candidates:
        if fits:
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
        roles = self._schema.roles
        example = self._schema.example({role: self._convert_item(row, role, roles[role], index) for role in roles})
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
