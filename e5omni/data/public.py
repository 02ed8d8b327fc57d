"""Public training sets in the schemas they ship in: MMEB-train (`mmeb:`), Tevatron OmniEmbed (`tevatron:`), captions.

Each reader views a table (one Parquet / JSON-lines / CSV file, or a folder of them) as omni training examples,
lazily: rows are converted on access, so a set of millions of rows is not held in memory (the files are read as
memory-mapped Arrow through `datasets`). Every problem names the file, the place in it (the 1-based line of a
JSON-lines / JSON / CSV file, the 0-based row of a Parquet file; see `e5omni.data.tables`) and the column, and nothing
is skipped: a row the source project would drop (VLM2Vec silently skips rows with an empty
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

Media cells go through `e5omni.data.features.media_value_to_item`, the adapter `from_hf_dataset` uses too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from e5omni.data.errors import BadRowError, DataError, Where
from e5omni.data.features import media_value_to_item
from e5omni.data.paths import resolve_media_path
from e5omni.data.tables import Table

PHI3V_IMAGE_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
"""VLM2Vec writes MMEB-train text with Phi-3-V's image placeholders (``<|image_1|>``) and swaps them for the backbone's
image token at load time. Our processor puts the item's media before its text itself, so the placeholder is removed:
kept, it would be literal text the model never saw at inference."""


def _text(value: Any, where: Where, column: str) -> str | None:
    """A text cell: None / "" (after stripping) -> absent; anything but a string is refused."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {type(value).__name__}", column)
    value = value.strip()
    return value or None


def _resolve(root: Path, path: str, where: Where, column: str) -> Path:
    return resolve_media_path(root, path, **where.place(column))


def _item(parts: Mapping[str, Any]) -> Any:
    """{"text": t} -> t; {"image": img} -> {"image": img}; several fields -> the dict (None fields dropped)."""
    item = {k: v for k, v in parts.items() if v is not None}
    if set(item) == {"text"}:
        return item["text"]
    return item


def _require(item: Any, role: str, columns: Sequence[str], where: Where) -> Any:
    if item is None or item == {}:
        raise where.error(f"{role} is empty: none of {list(columns)} holds text or media", columns[0])
    return item


def _check_columns(table: Table, required: Sequence[str], schema: str) -> None:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataError(
            f"{table.files[0]}: not the {schema} layout: missing column(s) {missing}; it has {table.column_names}"
        )


class _Examples(Sequence):
    """The common part of the public-set views: lazy rows, ``validate()``, negatives capped on request."""

    max_negatives: int | None = None
    max_audio_seconds: float | None = None
    media_cache: str | os.PathLike | None = None

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        import operator

        index = operator.index(index)
        if index < 0:
            index += len(self)
        row, where = self._table.row(index)
        return self._example(row, where)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def validate(self) -> None:
        """Read every row once (resolves and checks every media path); raises on the first bad row."""
        from e5omni.data.items import validate_example

        for i in range(len(self)):
            example = self[i]
            try:
                validate_example(example)
            except BadRowError as err:
                raise self._table.where(i).error(str(err)) from None

    def with_max_negatives(self, k: int):
        """The same view building at most ``k`` negatives per example (the trainer uses the first k)."""
        import copy

        view = copy.copy(self)
        view.max_negatives = k
        return view

    def _media(self, value: Any, modality: str, where: Where, column: str) -> Any:
        """A media cell (a path under the media root, or a `datasets` value) -> the item field, or None if absent."""
        return media_value_to_item(
            value,
            modality,
            where=where,
            column=column,
            media_root=self._root,
            max_audio_seconds=self.max_audio_seconds,
            media_cache=self.media_cache,
        )

    def with_media_budget(self, max_audio_seconds: float | None = None, media_cache: str | os.PathLike | None = None):
        """The same view decoding audio bytes no further than ``max_audio_seconds`` (the model's budget) and writing
        video bytes under ``media_cache`` (see `e5omni.data.features`)."""
        import copy

        view = copy.copy(self)
        view.max_audio_seconds, view.media_cache = max_audio_seconds, media_cache
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
        self._table = Table(path, what="MMEB-train table", split=split)
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
            where = (t or m)[0]
            row = {"neg_text": t[1] if t else None, "neg_image_path": m[1] if m else None}
            n = len(self._negatives(row, where, build=False))
            low = n if low is None else min(low, n)
            if low == 0:
                break
        return low or 0

    def _example(self, row: Mapping[str, Any], where: Where) -> dict[str, Any]:
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

    def _side(self, text: Any, image: Any, text_col: str, image_col: str, where: Where) -> Any:
        text = _text(text, where, text_col)
        if text is not None:
            text = PHI3V_IMAGE_PLACEHOLDER.sub("", text).strip() or None
        if image is not None and not isinstance(image, str):
            raise where.error(f"expected an image path (a string), got {type(image).__name__}", image_col)
        image = str(_resolve(self._root, image, where, image_col)) if image and image.strip() else None
        if text is None and image is None:
            return None
        return _item({"text": text, "image": image})

    def _negatives(self, row: Mapping[str, Any], where: Where, build: bool) -> list:
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
        self._table = Table(path, what="Tevatron query table")
        cols = self._table.column_names
        self.legacy = "positive_passages" in cols
        if self.legacy:
            _check_columns(self._table, self.LEGACY, "Tevatron (legacy text)")
            if corpus is not None:
                raise DataError(f"{self._table.files[0]}: rows carry their passages inline; drop corpus=")
        else:
            _check_columns(self._table, ("positive_document_ids",), "Tevatron")
            if corpus is None:
                raise DataError(
                    f"{self._table.files[0]}: rows name documents by id (positive_document_ids); give the corpus "
                    "(tevatron:QUERIES?corpus=CORPUS)"
                )
        self._corpus = Table(corpus, what="Tevatron corpus") if corpus is not None else None
        if self._corpus is not None:
            _check_columns(self._corpus, ("docid",), "Tevatron corpus")
            self._docs: dict[str, int] = {}
            for i, (where, docid) in enumerate(self._corpus.column_values("docid")):
                key = str(docid)
                if key in self._docs:
                    raise where.error(
                        f"duplicate docid {key!r} (first at {self._corpus.where(self._docs[key])})", "docid"
                    )
                self._docs[key] = i
        base = Path(corpus) if corpus is not None else path
        self._root = Path(assets_root) if assets_root is not None else (base if base.is_dir() else base.parent)

    def min_negatives(self) -> int:
        column = "negative_passages" if self.legacy else "negative_document_ids"
        if column not in self._table.column_names:
            return 0
        return min((length or 0 for _, length in self._table.column_lengths(column)), default=0)

    def _example(self, row: Mapping[str, Any], where: Where) -> dict[str, Any]:
        if self.legacy:
            return self._legacy(row, where)
        fields = {m: f"query_{m}" for m in ("text", "image", "video", "audio")}
        query = _item(
            {
                "text": _text(row.get("query_text"), where, "query_text"),
                **{m: self._media(row.get(c), m, where, c) for m, c in fields.items() if m != "text"},
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
    def _ids(value: Any, column: str, where: Where) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise where.error(f"expected a list of document ids, got {type(value).__name__}", column)
        return [str(v) for v in value]

    def _doc(self, docid: str, column: str, where: Where) -> Any:
        index = self._docs.get(docid)
        if index is None:
            raise where.error(f"document id {docid!r} is not in the corpus ({self._corpus.files[0]}...)", column)
        row, at = self._corpus.row(index)
        title = _text(row.get("title"), at, "title")
        text = _text(row.get("text"), at, "text")
        item = _item(
            {
                "text": f"{title} {text}" if title and text else (title or text),
                **{m: self._media(row.get(m), m, at, m) for m in ("image", "video", "audio")},
            }
        )
        if item == {} or item is None:
            raise at.error(f"document {docid!r} is empty: none of text, image, video, audio holds content", "text")
        return item

    def _legacy(self, row: Mapping[str, Any], where: Where) -> dict[str, Any]:
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
    def _passages(value: Any, column: str, where: Where) -> list[str]:
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
        self._table = Table(path, what="caption table")
        _check_columns(self._table, ("caption",), "caption (caption + media)")
        self._media_columns = [c for c in self.MEDIA if c in self._table.column_names]
        if not self._media_columns:
            raise DataError(
                f"{self._table.files[0]}: a caption table needs a media column among {list(self.MEDIA)}; "
                f"it has {self._table.column_names}"
            )
        self._root = Path(media_root) if media_root is not None else (path if path.is_dir() else path.parent)

    def min_negatives(self) -> int:
        return 0

    def _example(self, row: Mapping[str, Any], where: Where) -> dict[str, Any]:
        caption = row.get("caption")
        if isinstance(caption, list):
            raise where.error("expected one caption (a string), got a list; give one row per caption", "caption")
        caption = _text(caption, where, "caption")
        if caption is None:
            raise where.error("the caption is empty", "caption")
        media = {c: self._media(row.get(c), c, where, c) for c in self._media_columns}
        if all(v is None for v in media.values()):
            raise where.error(f"no media: {self._media_columns} are all empty", self._media_columns[0])
        return {"query": caption, "positive": _item(media)}


__all__ = ["CaptionExamples", "MMEBExamples", "PHI3V_IMAGE_PLACEHOLDER", "TevatronExamples"]
