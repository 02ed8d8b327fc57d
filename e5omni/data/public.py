"""Public training sets in the schemas they ship in: MMEB-train (`mmeb:`), Tevatron OmniEmbed (`tevatron:`), captions.

Each reader views a table (one Parquet / JSON-lines / CSV file, or a folder of them) as omni training examples,
lazily: rows are converted on access, so a set of millions of rows is not held in memory (the files are read as
memory-mapped Arrow through `datasets`). Every problem names the file, the row (0-based within that file) and the
column, and nothing is skipped: a row the source project would drop (VLM2Vec silently skips rows with an empty
query or target) raises here, so the data that trains is the data that was read.

- `MMEBExamples`: VLM2Vec's MMEB-train (`qry`, `qry_image_path`, `pos_text`, `pos_image_path`, optional `neg_text`,
  `neg_image_path`; strings, or lists of strings in the hard-negative variant). The Phi-3-V image placeholder
  `<|image_1|>` that VLM2Vec swaps for the backbone's image token is removed from the text (our processor places the
  media itself; user text is data, never a placeholder). Empty strings mean "no image"; image paths are relative to
  the media root (VLM2Vec's `image_dir`).
- `TevatronExamples`: Tevatron's OmniEmbed training format: queries (`query_id`, `query_text`, `query_image`,
  `query_video`, `query_audio`, `positive_document_ids`, `negative_document_ids`) and a corpus (`docid`, `text`,
  `image`, `video`, `audio`, optional `title`) whose video / audio paths are relative to the assets path; also the
  text-only legacy form (`query`, `positive_passages`, `negative_passages` with `docid` / `title` / `text`) that
  BGE-M3's pairs ship in (Tevatron/bge-ir).
- `CaptionExamples`: caption tables (AudioCaps, MSR-VTT): a `caption` column and the media (`audio`, `video`,
  `image`: paths or `datasets` features); several media columns make one item (a video with its audio track).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from e5omni.data.errors import BadRowError, DataError, UnsafeMediaPathError
from e5omni.data.items import AUDIO_SAMPLING_RATE
from e5omni.data.paths import resolve_media_path

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")

PHI3V_IMAGE_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
"""VLM2Vec writes MMEB-train text with Phi-3-V's image placeholders (``<|image_1|>``) and swaps them for the backbone's
image token at load time. Our processor puts the item's media before its text itself, so the placeholder is removed:
kept, it would be literal text the model never saw at inference."""


class _Table:
    """One or more table files as `datasets.Dataset`s, addressed by one 0-based index across the files.

    ``locate(i)`` gives the file name and the row within that file, which every error message names. Audio and video
    features are read undecoded (``{"bytes", "path"}``): audio is decoded here (soundfile + soxr), video is passed on
    as a path; images decode to PIL lazily.
    """

    def __init__(self, path: str | os.PathLike, *, what: str, split: str | None = None):
        path = Path(path)
        self.what = what
        self.files = _table_files(path, what, split)
        self.parts = [_read_file(f) for f in self.files]
        first = self.parts[0].column_names
        for f, part in zip(self.files, self.parts):
            if sorted(part.column_names) != sorted(first):
                raise DataError(
                    f"{f.name}: columns {sorted(part.column_names)} differ from {self.files[0].name}'s {sorted(first)}; "
                    f"every file of one {what} needs the same columns"
                )
        self.column_names = list(first)
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(part, row within that part's file) of a global row index."""
        import bisect

        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        part = bisect.bisect_right(self.offsets, index) - 1
        return part, index - self.offsets[part]

    def row(self, index: int) -> tuple[dict[str, Any], str, int]:
        part, local = self.locate(index)
        return self.parts[part][local], self.files[part].name, local

    def feature(self, column: str) -> Any:
        return self.parts[0].features.get(column)

    def column_lengths(self, column: str) -> Iterator[tuple[str, int, int | None]]:
        """(file, row, length) of a list column, read from Arrow without converting rows (None for a null cell)."""
        import pyarrow.compute as pc

        for f, part in zip(self.files, self.parts):
            lengths = pc.list_value_length(part.data.column(column)).to_pylist()
            for local, length in enumerate(lengths):
                yield f.name, local, length

    def column_values(self, column: str) -> Iterator[tuple[str, int, Any]]:
        for f, part in zip(self.files, self.parts):
            for local, value in enumerate(part.data.column(column).to_pylist()):
                yield f.name, local, value


def _table_files(path: Path, what: str, split: str | None) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise DataError(f"{what} file {str(path)!r}: expected one of {list(TABLE_SUFFIXES)}")
        return [path]
    if not path.is_dir():
        raise DataError(f"{what} {str(path)!r} not found (expected a file or a folder of {list(TABLE_SUFFIXES)})")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
    if split is not None:
        named = [p for p in files if p.name.startswith(split)]
        if not named:
            raise DataError(f"{what} folder {str(path)!r} has no file whose name starts with split {split!r}")
        files = named
    if not files:
        raise DataError(f"{what} folder {str(path)!r} holds no {list(TABLE_SUFFIXES)} files")
    suffixes = {p.suffix.lower() for p in files}
    if len(suffixes) > 1:
        raise DataError(f"{what} folder {str(path)!r} mixes {sorted(suffixes)} files; keep one format per folder")
    return files


def _read_file(path: Path):
    import datasets

    suffix = path.suffix.lower()
    with _quiet_datasets():
        if suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(path))
        elif suffix == ".csv":
            ds = datasets.Dataset.from_csv(str(path), keep_default_na=False)
        else:
            ds = datasets.Dataset.from_json(str(path))
    for column, feature in ds.features.items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            ds = ds.cast_column(column, datasets.Audio(decode=False))
        elif isinstance(feature, datasets.Video) and feature.decode:
            ds = ds.cast_column(column, datasets.Video(decode=False))
    return ds


class _quiet_datasets:
    """`datasets` prints a progress bar per file it converts; a folder of 100 Parquet shards would print 100."""

    def __enter__(self):
        import datasets

        self.was_enabled = datasets.utils.logging.is_progress_bar_enabled()
        datasets.utils.logging.disable_progress_bar()

    def __exit__(self, *exc):
        import datasets

        if self.was_enabled:
            datasets.utils.logging.enable_progress_bar()


class _Where:
    """A row's location (file, 0-based row) for error messages."""

    def __init__(self, source: str, row: int):
        self.source, self.row = source, row

    def error(self, message: str, column: str | None = None) -> BadRowError:
        return BadRowError(message, source=self.source, row=self.row, column=column, unit="row")


def _text(value: Any, where: _Where, column: str) -> str | None:
    """A text cell: None / "" (after stripping) -> absent; anything but a string is refused."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {type(value).__name__}", column)
    value = value.strip()
    return value or None


def _media(value: Any, modality: str, root: Path, where: _Where, column: str) -> Any:
    """A media cell -> what the model accepts (PIL image, path string, audio dict), or None when absent.

    Strings are paths relative to ``root`` (empty: absent) under the media-root rules; `datasets` Image values are
    PIL images already; undecoded Image / Audio / Video structs carry bytes or a path; Audio arrays stay arrays.
    """
    from PIL import Image

    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        return str(_resolve(root, value, where, column))
    if modality == "image" and isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):
        if modality == "audio" and value.get("array") is not None:
            import numpy as np

            rate = value.get("sampling_rate") or AUDIO_SAMPLING_RATE
            return {"array": np.asarray(value["array"], dtype=np.float32), "sampling_rate": int(rate)}
        data, path = value.get("bytes"), value.get("path")
        if data:
            if modality == "image":
                try:
                    return Image.open(io.BytesIO(data))
                except Exception as err:
                    raise where.error(f"cannot read the image bytes ({err})", column) from None
            if modality == "audio":
                from e5omni.data.hf import decode_audio_bytes

                try:
                    return {"array": decode_audio_bytes(data), "sampling_rate": AUDIO_SAMPLING_RATE}
                except Exception as err:
                    raise where.error(f"cannot decode the audio bytes ({err})", column) from None
        if path:
            return str(_feature_path(root, str(path), where, column))
        if modality == "video" and data:
            raise where.error(
                "a video stored as bytes cannot be passed on; store videos as files under the media root", column
            )
        raise where.error(f"the {modality} has neither bytes nor a path", column)
    raise where.error(
        f"expected a {modality} (a path relative to the media root or a datasets feature), got {type(value).__name__}",
        column,
    )


def _resolve(root: Path, path: str, where: _Where, column: str) -> Path:
    return resolve_media_path(root, path, source=where.source, row=where.row, column=column, unit="row")


def _feature_path(root: Path, path: str, where: _Where, column: str) -> Path:
    """A path a `datasets` feature stored: absolute ones (written by `datasets` for local files) must be under root."""
    if os.path.isabs(path):
        real_root, resolved = root.resolve(), Path(path).resolve()
        if real_root not in resolved.parents:
            raise UnsafeMediaPathError(
                path,
                f"outside the media root {real_root}",
                source=where.source,
                row=where.row,
                column=column,
                unit="row",
            )
        if not resolved.is_file():
            return _resolve(real_root, str(resolved.relative_to(real_root)), where, column)
        return resolved
    return _resolve(root, path, where, column)


def _item(parts: Mapping[str, Any]) -> Any:
    """{"text": t} -> t; {"image": img} -> {"image": img}; several fields -> the dict (None fields dropped)."""
    item = {k: v for k, v in parts.items() if v is not None}
    if set(item) == {"text"}:
        return item["text"]
    return item


def _require(item: Any, role: str, columns: Sequence[str], where: _Where) -> Any:
    if item is None or item == {}:
        raise where.error(f"{role} is empty: none of {list(columns)} holds text or media", columns[0])
    return item


def _check_columns(table: _Table, required: Sequence[str], schema: str) -> None:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataError(
            f"{table.files[0].name}: not the {schema} layout: missing column(s) {missing}; it has {table.column_names}"
        )


class _Examples(Sequence):
    """The common part of the public-set views: lazy rows, ``validate()``, negatives capped on request."""

    max_negatives: int | None = None

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        import operator

        index = operator.index(index)
        if index < 0:
            index += len(self)
        row, source, local = self._table.row(index)
        return self._example(row, _Where(source, local))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def validate(self) -> None:
        """Read every row once (resolves and checks every media path); raises on the first bad row."""
        from e5omni.data.items import validate_example

        for i in range(len(self)):
            example = self[i]
            part, local = self._table.locate(i)
            try:
                validate_example(example)
            except BadRowError as err:
                raise BadRowError(str(err), source=self._table.files[part].name, row=local, unit="row") from None

    def with_max_negatives(self, k: int):
        """The same view building at most ``k`` negatives per example (the trainer uses the first k)."""
        import copy

        view = copy.copy(self)
        view.max_negatives = k
        return view

    def _cap(self, negatives: list) -> list:
        return negatives if self.max_negatives is None else negatives[: self.max_negatives]


class MMEBExamples(_Examples):
    """VLM2Vec's MMEB-train, as it ships (see the module docstring). Raises DataError for a table of another layout."""

    REQUIRED = ("qry", "qry_image_path", "pos_text", "pos_image_path")

    def __init__(
        self, path: str | os.PathLike, media_root: str | os.PathLike | None = None, *, split: str | None = None
    ):
        path = Path(path)
        self._table = _Table(path, what="MMEB-train table", split=split)
        _check_columns(self._table, self.REQUIRED, "MMEB-train")
        self._root = Path(media_root) if media_root is not None else (path if path.is_dir() else path.parent)
        cols = self._table.column_names
        self._neg = [c for c in ("neg_text", "neg_image_path") if c in cols]

    def min_negatives(self) -> int:
        """The fewest hard negatives any row has (read from the Arrow columns, rows are not converted)."""
        if not self._neg:
            return 0
        texts = self._table.column_values("neg_text") if "neg_text" in self._neg else None
        images = self._table.column_values("neg_image_path") if "neg_image_path" in self._neg else None
        low = None
        for _ in range(len(self)):
            t = next(texts) if texts is not None else None
            m = next(images) if images is not None else None
            source, local = (t or m)[0], (t or m)[1]
            row = {"neg_text": t[2] if t else None, "neg_image_path": m[2] if m else None}
            n = len(self._negatives(row, _Where(source, local), build=False))
            low = n if low is None else min(low, n)
            if low == 0:
                break
        return low or 0

    def _example(self, row: Mapping[str, Any], where: _Where) -> dict[str, Any]:
        query = self._side(row.get("qry"), row.get("qry_image_path"), "qry", "qry_image_path", where)
        positive = self._side(row.get("pos_text"), row.get("pos_image_path"), "pos_text", "pos_image_path", where)
        example = {
            "query": _require(query, "the query", ("qry", "qry_image_path"), where),
            "positive": _require(positive, "the positive", ("pos_text", "pos_image_path"), where),
        }
        negatives = self._cap(self._negatives(row, where, build=True))
        if negatives:
            example["negatives"] = negatives
        return example

    def _side(self, text: Any, image: Any, text_col: str, image_col: str, where: _Where) -> Any:
        text = _text(text, where, text_col)
        if text is not None:
            text = PHI3V_IMAGE_PLACEHOLDER.sub("", text).strip() or None
        if image is not None and not isinstance(image, str):
            raise where.error(f"expected an image path (a string), got {type(image).__name__}", image_col)
        image = str(_resolve(self._root, image, where, image_col)) if image and image.strip() else None
        if text is None and image is None:
            return None
        return _item({"text": text, "image": image})

    def _negatives(self, row: Mapping[str, Any], where: _Where, build: bool) -> list:
        if not self._neg:
            return []
        texts, images = row.get("neg_text"), row.get("neg_image_path")
        if isinstance(texts, list) or isinstance(images, list):  # the hard-negative variant: parallel lists
            texts = texts if isinstance(texts, list) else [None] * len(images or [])
            images = images if isinstance(images, list) else [None] * len(texts)
            if len(texts) != len(images):
                raise where.error(
                    f"'neg_text' has {len(texts)} entries but 'neg_image_path' has {len(images)}", "neg_text"
                )
            pairs = list(zip(texts, images))
        else:
            pairs = [(texts, images)]
        negatives = []
        for text, image in pairs:
            if not (isinstance(text, str) and text.strip()) and not (isinstance(image, str) and image.strip()):
                if text not in (None, "") or image not in (None, ""):
                    self._side(text, image, "neg_text", "neg_image_path", where)  # raises on a wrong type
                continue  # an empty negative slot: the row ships no negative (VLM2Vec's convention)
            if not build:
                negatives.append(None)
                continue
            item = self._side(text, image, "neg_text", "neg_image_path", where)
            if item is None:
                raise where.error("the negative is empty once the <|image_1|> placeholder is removed", "neg_text")
            negatives.append(item)
        return negatives


class TevatronExamples(_Examples):
    """Tevatron's training format (OmniEmbed; see the module docstring): a query table and, unless the rows carry
    their passages inline (the legacy text form), a corpus table. The first positive id is the positive (Tevatron
    rotates through them per epoch); negatives follow ``negative_document_ids`` in order. ``assets_root`` is
    Tevatron's ``assets_path`` (video / audio paths of the corpus and the queries are relative to it)."""

    NEW = ("positive_document_ids", "negative_document_ids")
    LEGACY = ("query", "positive_passages")

    def __init__(
        self,
        path: str | os.PathLike,
        corpus: str | os.PathLike | None = None,
        assets_root: str | os.PathLike | None = None,
    ):
        path = Path(path)
        self._table = _Table(path, what="Tevatron query table")
        cols = self._table.column_names
        self.legacy = "positive_passages" in cols
        if self.legacy:
            _check_columns(self._table, self.LEGACY, "Tevatron (legacy text)")
            if corpus is not None:
                raise DataError(f"{self._table.files[0].name}: rows carry their passages inline; drop corpus=")
        else:
            _check_columns(self._table, ("positive_document_ids",), "Tevatron")
            if corpus is None:
                raise DataError(
                    f"{self._table.files[0].name}: rows name documents by id (positive_document_ids); give the corpus "
                    "(tevatron:QUERIES?corpus=CORPUS)"
                )
        self._corpus = _Table(corpus, what="Tevatron corpus") if corpus is not None else None
        if self._corpus is not None:
            _check_columns(self._corpus, ("docid",), "Tevatron corpus")
            self._docs: dict[str, int] = {}
            for i, (source, local, docid) in enumerate(self._corpus.column_values("docid")):
                key = str(docid)
                if key in self._docs:
                    first_part, first_local = self._corpus.locate(self._docs[key])
                    raise BadRowError(
                        f"duplicate docid {key!r} (first at {self._corpus.files[first_part].name} row {first_local})",
                        source=source,
                        row=local,
                        column="docid",
                        unit="row",
                    )
                self._docs[key] = i
        base = Path(corpus) if corpus is not None else path
        self._root = Path(assets_root) if assets_root is not None else (base if base.is_dir() else base.parent)

    def min_negatives(self) -> int:
        column = "negative_passages" if self.legacy else "negative_document_ids"
        if column not in self._table.column_names:
            return 0
        return min((length or 0 for _, _, length in self._table.column_lengths(column)), default=0)

    def _example(self, row: Mapping[str, Any], where: _Where) -> dict[str, Any]:
        if self.legacy:
            return self._legacy(row, where)
        fields = {m: f"query_{m}" for m in ("text", "image", "video", "audio")}
        query = _item(
            {
                "text": _text(row.get("query_text"), where, "query_text"),
                **{m: _media(row.get(c), m, self._root, where, c) for m, c in fields.items() if m != "text"},
            }
        )
        if query == {} or query is None:
            raise where.error(f"the query is empty: none of {list(fields.values())} holds text or media", "query_text")
        positives = self._ids(row.get("positive_document_ids"), "positive_document_ids", where)
        if not positives:
            raise where.error("no positive document id", "positive_document_ids")
        example = {"query": query, "positive": self._doc(positives[0], "positive_document_ids", where)}
        negatives = self._cap(self._ids(row.get("negative_document_ids"), "negative_document_ids", where))
        if negatives:
            example["negatives"] = [self._doc(d, "negative_document_ids", where) for d in negatives]
        return example

    @staticmethod
    def _ids(value: Any, column: str, where: _Where) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise where.error(f"expected a list of document ids, got {type(value).__name__}", column)
        return [str(v) for v in value]

    def _doc(self, docid: str, column: str, where: _Where) -> Any:
        index = self._docs.get(docid)
        if index is None:
            raise where.error(f"document id {docid!r} is not in the corpus ({self._corpus.files[0].name}...)", column)
        row, source, local = self._corpus.row(index)
        at = _Where(source, local)
        title = _text(row.get("title"), at, "title")
        text = _text(row.get("text"), at, "text")
        item = _item(
            {
                "text": f"{title} {text}" if title and text else (title or text),
                **{m: _media(row.get(m), m, self._root, at, m) for m in ("image", "video", "audio")},
            }
        )
        if item == {} or item is None:
            raise at.error(f"document {docid!r} is empty: none of text, image, video, audio holds content", "text")
        return item

    def _legacy(self, row: Mapping[str, Any], where: _Where) -> dict[str, Any]:
        query = _text(row.get("query"), where, "query")
        if query is None:
            raise where.error("the query is empty", "query")
        positives = self._passages(row.get("positive_passages"), "positive_passages", where)
        if not positives:
            raise where.error("no positive passage", "positive_passages")
        example: dict[str, Any] = {"query": query, "positive": positives[0]}
        negatives = self._cap(self._passages(row.get("negative_passages"), "negative_passages", where))
        if negatives:
            example["negatives"] = negatives
        return example

    @staticmethod
    def _passages(value: Any, column: str, where: _Where) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise where.error(f"expected a list of passages, got {type(value).__name__}", column)
        passages = []
        for j, passage in enumerate(value):
            if not isinstance(passage, Mapping):
                raise where.error(f"passage {j}: expected an object with 'text', got {type(passage).__name__}", column)
            title = _text(passage.get("title"), where, f"{column}[{j}].title")
            text = _text(passage.get("text"), where, f"{column}[{j}].text")
            joined = f"{title} {text}" if title and text else (title or text)
            if joined is None:
                raise where.error(f"passage {j} has no text", column)
            passages.append(joined)
        return passages


class CaptionExamples(_Examples):
    """A caption table (AudioCaps, MSR-VTT): query = the caption, positive = the media of the row (``audio``,
    ``video``, ``image`` columns: paths relative to the media root or `datasets` features; several make one item)."""

    MEDIA = ("image", "audio", "video")

    def __init__(self, path: str | os.PathLike, media_root: str | os.PathLike | None = None):
        path = Path(path)
        self._table = _Table(path, what="caption table")
        _check_columns(self._table, ("caption",), "caption (caption + media)")
        self._media_columns = [c for c in self.MEDIA if c in self._table.column_names]
        if not self._media_columns:
            raise DataError(
                f"{self._table.files[0].name}: a caption table needs a media column among {list(self.MEDIA)}; "
                f"it has {self._table.column_names}"
            )
        self._root = Path(media_root) if media_root is not None else (path if path.is_dir() else path.parent)

    def min_negatives(self) -> int:
        return 0

    def _example(self, row: Mapping[str, Any], where: _Where) -> dict[str, Any]:
        caption = row.get("caption")
        if isinstance(caption, list):
            raise where.error("expected one caption (a string), got a list; give one row per caption", "caption")
        caption = _text(caption, where, "caption")
        if caption is None:
            raise where.error("the caption is empty", "caption")
        media = {c: _media(row.get(c), c, self._root, where, c) for c in self._media_columns}
        if all(v is None for v in media.values()):
            raise where.error(f"no media: {self._media_columns} are all empty", self._media_columns[0])
        return {"query": caption, "positive": _item(media)}


__all__ = ["CaptionExamples", "MMEBExamples", "PHI3V_IMAGE_PLACEHOLDER", "TevatronExamples"]
