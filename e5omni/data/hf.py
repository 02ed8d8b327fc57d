"""Hugging Face `datasets`: a `datasets.Dataset` viewed as omni examples (`from_hf_dataset`, `load_hub_dataset`).

Column kinds are decided once from the features; rows are converted lazily. ``datasets.Audio`` values are decoded
here (soundfile + soxr), because ``datasets``' own audio decoding needs torchcodec, which does not load everywhere.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.data.columns import _COLUMN, _ROLE_ALIASES, _Schema, _schema_from_columns
from e5omni.data.errors import BadRowError, DataError, Where
from e5omni.data.features import DEFAULT_MAX_AUDIO_SECONDS, media_value_to_item, read_audio_bytes, video_frames
from e5omni.data.items import (
    AUDIO_SAMPLING_RATE,
    ITEM_KEYS,
    MEDIA_KEYS,
    MODALITIES,
    PASSTHROUGH_KEYS,
    validate_example,
)


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


def _is_item_struct(feature: Any) -> bool:
    """A struct feature whose keys are item fields (one item with several modalities), not an audio struct."""
    return (
        isinstance(feature, dict)
        and bool(feature)
        and set(feature) <= set(ITEM_KEYS)
        and set(feature) != {"array", "sampling_rate"}
    )


def _struct_kinds(feature: dict, column: str) -> dict[str, str]:
    """The kind of each field of an item struct, keyed ``column.field``."""
    return {f"{column}.{key}": _column_kind(sub, key, f"{column}.{key}") for key, sub in feature.items()}


def _undecoded(feature: Any) -> Any:
    """The same feature with Image / Audio / Video (also inside an item struct) left undecoded: converted by
    `media_value_to_item` instead."""
    import datasets

    if isinstance(feature, datasets.Audio) and feature.decode:
        return datasets.Audio(decode=False)
    if isinstance(feature, datasets.Video) and feature.decode:
        return datasets.Video(decode=False)
    if isinstance(feature, datasets.Image) and feature.decode:
        return datasets.Image(decode=False)  # `datasets` would decode it whole (no pixel cap) and read paths from cwd
    if _is_item_struct(feature):
        return {key: _undecoded(sub) for key, sub in feature.items()}
    return feature


def _column_kind(feature: Any, fld: str, column: str) -> str:
    """Classify a column for field ``fld``; refuse feature types that cannot carry that field.

    Kinds: text, image, image_path, audio_feature, audio_struct, audio_array, audio_path, video_feature,
    video_array, video_path. Decided once from the features so a wrong column fails before training starts.
    """
    import datasets

    is_string = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
    if fld == "item" and _is_item_struct(feature):
        return "struct"
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


class _RowConverter:
    """Rows of a `datasets` table -> omni examples, by the column kinds decided once from the features."""

    _schema: _Schema
    _kinds: dict[str, str]
    _media_root: Path | None
    _max_audio_seconds: float | None = None
    _media_cache: Path | None = None
    source = "dataset"

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
                raise BadRowError(
                    f"{role}: column {column!r} is empty (None)", source=self.source, row=index, unit="row"
                )
            kind = self._kinds[column]
            if kind == "struct":
                return self._convert_struct(value, role, column, index)
            fld = kind.split("_")[0]
            converted = self._convert_value(value, kind, column, index)
            if fld == "text" and not converted.strip():
                raise BadRowError(
                    f"{role}: column {column!r} has empty text", source=self.source, row=index, unit="row"
                )
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
                f"{role} is empty; expected a value in one of {sorted(fields.values())}",
                source=self.source,
                row=index,
                unit="row",
            )
        if set(item) == {"text"}:
            return item["text"]
        return item

    def _convert_struct(self, value: Any, role: str, column: str, index: int) -> Any:
        """A struct column holding one item with several fields (``{"text": ..., "image": ..., "audio": ...}``)."""
        if not isinstance(value, Mapping):
            raise BadRowError(
                f"{role}: column {column!r} should hold a struct, got {type(value).__name__}",
                source=self.source,
                row=index,
                unit="row",
            )
        item: dict[str, Any] = {}
        for key, sub in value.items():
            if sub is None or (isinstance(sub, str) and sub == ""):
                continue  # absent field, as an empty CSV cell
            item[key] = self._convert_value(sub, self._kinds[f"{column}.{key}"], f"{column}.{key}", index)
        if not any(k in item for k in MODALITIES):
            raise BadRowError(
                f"{role}: struct column {column!r} holds no text or media", source=self.source, row=index, unit="row"
            )
        if isinstance(item.get("text"), str) and not item["text"].strip():
            raise BadRowError(
                f"{role}: column '{column}.text' has empty text", source=self.source, row=index, unit="row"
            )
        return item["text"] if set(item) == {"text"} else item

    def _convert_value(self, value: Any, kind: str, column: str, index: int) -> Any:
        where = Where(self.source, index, "row")
        if kind == "text":
            if not isinstance(value, str):
                raise where.error(f"expected a string, got {type(value).__name__}", column)
            return value
        if kind == "audio_struct":
            array = np.asarray(value["array"], dtype=np.float32)
            return {"array": array, "sampling_rate": int(value["sampling_rate"])}
        if kind == "audio_array":
            return np.asarray(value, dtype=np.float32)
        if kind == "video_array":
            return video_frames(value, where, column)
        modality = kind.split("_")[0]  # image, image_path, audio_feature, audio_path, video_feature, video_path
        if kind.endswith("_path") and self._media_root is None:
            raise DataError(f"column {column!r} holds media paths; pass media_root= to resolve them safely")
        return media_value_to_item(
            value,
            modality,
            where=where,
            column=column,
            media_root=self._media_root,
            max_audio_seconds=self._max_audio_seconds,
            media_cache=self._media_cache,
        )


class HFExamples(_RowConverter, Sequence):
    """A lazy, indexable view of a ``datasets.Dataset`` as omni training examples.

    Rows are converted on access (images decoded by ``datasets``/PIL, audio bytes decoded to 16 kHz float32), so a
    dataset of millions of images is not held in memory; a ``torch.utils.data.DataLoader`` can index it directly.
    Column kinds are checked when the view is built; per-row problems (a missing value, a bad path) raise BadRowError
    / UnsafeMediaPathError naming the 0-based row and column when the row is read. ``validate()`` reads every row
    once up front; ``list(view)`` materialises it.
    """

    def __init__(
        self,
        ds: Any,
        schema: _Schema,
        kinds: dict[str, str],
        media_root: Path | None,
        *,
        max_audio_seconds: float | None = None,
        media_cache: str | os.PathLike | None = None,
        source: str = "dataset",
    ):
        self._schema = schema
        self._kinds = kinds
        self._media_root = media_root
        self._max_audio_seconds, self._media_cache, self.source = max_audio_seconds, media_cache, source
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


def decode_audio_bytes(data: bytes, max_seconds: float | None = None) -> np.ndarray:
    """Decode an audio file's bytes to mono float32 at 16 kHz, read no further than ``max_seconds`` (default: the
    model config's default ``max_audio_seconds``); soundfile, else PyAV, then soxr (no torchcodec needed)."""
    import soxr

    budget = DEFAULT_MAX_AUDIO_SECONDS if max_seconds is None else float(max_seconds)
    array, rate, _ = read_audio_bytes(data, budget)
    if rate != AUDIO_SAMPLING_RATE:
        array = soxr.resample(array, rate, AUDIO_SAMPLING_RATE)
    return np.ascontiguousarray(array, dtype=np.float32)


def from_hf_dataset(
    ds: Any,
    column_map: Mapping[str, Any] | None = None,
    *,
    media_root: str | os.PathLike | None = None,
    max_audio_seconds: float | None = None,
    media_cache: str | os.PathLike | None = None,
    source: str = "dataset",
) -> HFExamples:
    """View a ``datasets.Dataset`` as omni training examples (lazy; see HFExamples).

    Without ``column_map`` the columns must follow the CSV naming (``query``, ``positive_image``, ``negative_1``, ...;
    ``anchor``/``negative`` accepted as in sentence-transformers), and unknown columns are an error so a typo cannot
    silently drop data. With ``column_map`` only the named columns are used, e.g.
    ``{"query": {"text": "caption"}, "positive": "image", "negatives": ["hard_image"]}``: a column name means "the
    whole item, typed by its feature", a dict maps item fields to columns.

    Feature handling (``Image`` / ``Audio`` / ``Video`` values by `e5omni.data.features.media_value_to_item`: bytes
    win over a stored path, a relative path is only resolved under ``media_root``): ``Image`` -> a lazily opened PIL
    image; ``Audio`` -> decoded here, no further than ``max_audio_seconds`` (pass the model's
    ``config.max_audio_seconds``; default 30), to ``{"array", "sampling_rate"}`` at the file's own rate (``datasets``'
    own audio decoding needs torchcodec); ``Video`` bytes -> a file in ``media_cache`` named by their hash, passed on
    as its path; 1-D float lists and ``{"array", "sampling_rate"}`` structs -> audio arrays (read through numpy format
    so they are ndarrays, not lists); 4-D uint8 lists -> video frames; string columns -> text, or, when mapped to
    image/audio/video, paths resolved under ``media_root`` with the same safety rules as files. A whole-item string
    column is always text. ``source`` names the dataset in errors ("dataset row 3").
    """
    import datasets

    if isinstance(ds, (datasets.IterableDataset, datasets.DatasetDict)):
        raise DataError(
            f"from_hf_dataset needs a datasets.Dataset (one split, not streaming); got {type(ds).__name__}. "
            "Select a split (ds['train']), load without streaming, or stream it with stream_hf_dataset."
        )
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"from_hf_dataset needs a datasets.Dataset, got {type(ds).__name__}")
    ds, schema, kinds = _prepare(ds, ds.features, column_map)
    root = Path(media_root) if media_root is not None else None
    return HFExamples(
        ds, schema, kinds, root, max_audio_seconds=max_audio_seconds, media_cache=media_cache, source=source
    )


def _prepare(ds: Any, features: Any, column_map: Mapping[str, Any] | None) -> tuple[Any, _Schema, dict[str, str]]:
    """Schema and column kinds from the features; Audio / Video cast to undecoded (decoded here), Image decoded."""
    columns = list(features)
    if column_map is None:
        schema = _schema_from_columns(columns, "dataset")
    else:
        schema = _normalise_column_map(column_map, columns)
    kinds: dict[str, str] = {}
    for fields in schema.roles.values():
        for fld, column in fields.items():
            kinds[column] = _column_kind(features[column], fld, column)
            if kinds[column] == "struct":
                kinds.update(_struct_kinds(features[column], column))
    for column in list(kinds):
        if "." in column and column not in features:
            continue  # a struct field, cast with its struct
        feature = features[column]
        cast = _undecoded(feature)
        if cast is not feature and cast != feature:
            ds = ds.cast_column(column, cast)
    return ds, schema, kinds


class HFStream(_RowConverter):
    """A streamed ``datasets.IterableDataset`` of omni examples: rows are converted one at a time as they arrive.

    ``dataset`` is what the trainer's DataLoader iterates: the user's stream with Audio / Video cast to undecoded and
    two bookkeeping columns, ``__row__`` (the row's 0-based position in the stream as this process reads it) and
    ``__stream__`` (which stream of the trainer the row belongs to). ``convert(row)`` turns one such row into an
    example, raising BadRowError naming the streamed row and the column. Nothing is read until iteration starts, and
    nothing read is kept.
    """

    source = "stream"

    def __init__(
        self,
        ds: Any,
        schema: _Schema,
        kinds: dict[str, str],
        media_root: Path | None,
        stream_id: int = 0,
        *,
        max_audio_seconds: float | None = None,
        media_cache: str | os.PathLike | None = None,
    ):
        import datasets

        self._schema, self._kinds, self._media_root = schema, kinds, media_root
        self._max_audio_seconds, self._media_cache = max_audio_seconds, media_cache
        self.stream_id = stream_id
        features = datasets.Features(
            {**ds.features, "__row__": datasets.Value("int64"), "__stream__": datasets.Value("int64")}
        )
        self.dataset = ds.map(
            lambda row, i: {"__row__": i, "__stream__": stream_id}, with_indices=True, features=features
        )

    @property
    def num_negatives(self) -> int:
        """Every row has exactly this many hard negatives: one per negative column."""
        return len(self._schema.negative_roles)

    def convert(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self._convert(row, int(row["__row__"]))


def stream_hf_dataset(
    ds: Any,
    column_map: Mapping[str, Any] | None = None,
    *,
    media_root: str | os.PathLike | None = None,
    stream_id: int = 0,
    max_audio_seconds: float | None = None,
    media_cache: str | os.PathLike | None = None,
) -> HFStream:
    """View a ``datasets.IterableDataset`` (streaming) as omni examples, with the columns rules of `from_hf_dataset`.

    The stream needs features (``IterableDataset.from_generator(..., features=...)`` or ``ds.cast(features)``): column
    kinds are decided from them before the first row is read, as for a ``Dataset``.
    """
    import datasets

    if not isinstance(ds, datasets.IterableDataset):
        raise DataError(f"stream_hf_dataset needs a datasets.IterableDataset, got {type(ds).__name__}")
    if ds.features is None:
        raise DataError(
            "the IterableDataset has no features, so its column types are unknown before reading; give them with "
            "IterableDataset.from_generator(..., features=Features(...)) or ds.cast(Features(...))"
        )
    reserved = [c for c in ("__row__", "__stream__") if c in ds.features]
    if reserved:
        raise DataError(f"the stream already has column(s) {reserved}, which the trainer reserves")
    ds, schema, kinds = _prepare(ds, ds.features, column_map)
    root = Path(media_root) if media_root is not None else None
    return HFStream(ds, schema, kinds, root, stream_id, max_audio_seconds=max_audio_seconds, media_cache=media_cache)


def open_hf_dataset(
    name: str,
    split: str | None = None,
    *,
    default_split: str = "train",
    revision: str | None = None,
    **load_kwargs: Any,
) -> Any:
    """The ``datasets.Dataset`` that ``name`` names: a Hub dataset, a local ``datasets`` folder, or a folder written
    by ``save_to_disk`` (of a ``Dataset`` or of a ``DatasetDict``), read with ``datasets.load_from_disk``.

    ``split`` picks the split (``default_split`` when None). A ``save_to_disk`` folder of one ``Dataset`` is that one
    split: an explicit ``split`` must then match the split it was saved with, when it recorded one.
    """
    import datasets

    folder = Path(name)
    if folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()):
        with _quiet_progress():
            loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            chosen = split or default_split
            if chosen not in loaded:
                raise DataError(f"{name}: no split {chosen!r} in this save_to_disk folder; it has {sorted(loaded)}")
            return loaded[chosen]
        saved = str(loaded.split) if loaded.split is not None else None
        if split is not None and saved is not None and split != saved:
            raise DataError(f"{name}: a save_to_disk folder of the {saved!r} split; asked for split {split!r}")
        return loaded
    return datasets.load_dataset(name, split=split or default_split, revision=revision, **load_kwargs)


class _quiet_progress:
    def __enter__(self):
        import datasets

        self.was_enabled = datasets.utils.logging.is_progress_bar_enabled()
        datasets.utils.logging.disable_progress_bar()

    def __exit__(self, *exc):
        import datasets

        if self.was_enabled:
            datasets.utils.logging.enable_progress_bar()


def load_hub_dataset(
    name: str,
    split: str | None = None,
    *,
    default_split: str = "train",
    revision: str | None = None,
    column_map: Mapping[str, Any] | None = None,
    media_root: str | os.PathLike | None = None,
    max_audio_seconds: float | None = None,
    media_cache: str | os.PathLike | None = None,
    **load_kwargs: Any,
) -> HFExamples:
    """Load a dataset from the Hugging Face Hub, a local ``datasets`` folder or a ``save_to_disk`` folder (see
    `open_hf_dataset`) and view it as omni examples (`from_hf_dataset`; a folder's errors name the folder).

    This is the one function here that may reach the network, and only because the caller names a dataset. Pin
    ``revision=`` (a commit sha) for reproducible training: a dataset repo can change under the same name.
    ``load_kwargs`` go to ``datasets.load_dataset`` unchanged (e.g. ``name=`` for a config, ``data_dir=``).
    """
    ds = open_hf_dataset(name, split, default_split=default_split, revision=revision, **load_kwargs)
    return from_hf_dataset(
        ds,
        column_map,
        media_root=media_root,
        max_audio_seconds=max_audio_seconds,
        media_cache=media_cache,
        source=name if Path(name).is_dir() else "dataset",
    )
