"""Corpus sources: what `e5omni index` embeds, as a deterministic stream of records.

    a folder        walked recursively in sorted order; images, audio and video by extension, `.txt` as text; the id
                    is the path relative to the folder; symlinks that leave the folder, FIFOs, devices are recorded
                    as errors, never opened
    FILE.jsonl / FILE.csv / FILE.parquet
                    one item per row: `id` plus any of `text`, `image`, `audio`, `video` (media paths relative to the
                    media root, default the file's folder, and confined to it: docs/data.md)
    hub:NAME[:SPLIT]
                    a Hugging Face dataset (`datasets.load_dataset(NAME, split=SPLIT or "train")`; NAME may be a
                    local dataset folder): its `text`, `image`, `audio`, `video` columns make the item, typed by
                    their features as docs/data.md says (string media columns are paths under --media-root); the
                    id is the `id` column when there is one, else the 0-based row number; other columns are ignored

Every record is either an item to embed or an error with its reason; a bad row or file never stops the stream and is
never dropped. The order is fixed, so a resumed run sees the same records in the same shards.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5omni.data.errors import DataError
from e5omni.data.paths import resolve_media_path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
TEXT_EXTENSIONS = frozenset({".txt"})
TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
ITEM_COLUMNS = ("text", "image", "audio", "video")
#: A `.txt` file larger than this is recorded as an error instead of being read (the text budget is far smaller).
MAX_TEXT_BYTES = 1 << 20


@dataclass(frozen=True)
class Record:
    """One entry of a corpus: `item` to embed, or `error` = (type name, message) saying why it cannot be."""

    id: str
    source: str
    item: Any = None
    error: tuple[str, str] | None = None


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    for kind, extensions in (
        ("image", IMAGE_EXTENSIONS),
        ("audio", AUDIO_EXTENSIONS),
        ("video", VIDEO_EXTENSIONS),
        ("text", TEXT_EXTENSIONS),
    ):
        if suffix in extensions:
            return kind
    return None


def _folder_record(root: Path, path: Path) -> Record | None:
    rel = path.relative_to(root).as_posix()
    kind = _kind(path)
    if kind is None:
        return None  # not a medium we embed (README.md, .DS_Store, ...): not part of the corpus
    try:
        if not (stat.S_ISREG(os.lstat(path).st_mode) or path.is_symlink()):
            return Record(rel, rel, error=("UnsafeMediaPathError", f"{rel} is not a regular file (FIFO, device, ...)"))
        resolved = resolve_media_path(root, rel)  # refuses symlinks out of the folder
        mode = os.stat(resolved).st_mode
        if not stat.S_ISREG(mode):
            return Record(rel, rel, error=("UnsafeMediaPathError", f"{rel} is not a regular file (FIFO, device, ...)"))
        if kind != "text":
            return Record(rel, rel, item={kind: str(resolved)})
        if os.path.getsize(resolved) > MAX_TEXT_BYTES:
            return Record(rel, rel, error=("TextTooLargeError", f"{rel} is over {MAX_TEXT_BYTES} bytes"))
        with open(resolved, encoding="utf-8") as handle:
            text = handle.read()
        if not text.strip():
            return Record(rel, rel, error=("EmptyTextError", f"{rel} holds no text"))
        return Record(rel, rel, item=text)
    except (DataError, OSError, UnicodeDecodeError) as err:
        return Record(rel, rel, error=(type(err).__name__, str(err)))


def iter_folder(root: str | os.PathLike) -> Iterator[Record]:
    """Records of every file under `root` with a known extension, in sorted path order."""
    root = Path(root).resolve()
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            record = _folder_record(root, Path(folder) / name)
            if record is not None:
                yield record


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(row number, row, problem) for each row of a table file (1-based line numbers for JSONL/CSV)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        row = 0
        for batch in table.iter_batches(batch_size=1024):
            for entry in batch.to_pylist():
                row += 1
                yield row, entry, None
        return
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if suffix == ".csv":
            for line, entry in enumerate(csv.DictReader(handle), start=2):
                yield line, {k: v for k, v in entry.items() if v not in (None, "")}, None
            return
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
            except json.JSONDecodeError as err:
                yield line, None, f"not valid JSON ({err.msg})"
                continue
            yield line, entry, (None if isinstance(entry, dict) else f"expected an object, got {type(entry).__name__}")


def _table_record(entry: dict[str, Any], where: str, root: Path, source: str, line: int) -> Record:
    raw_id = entry.get("id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return Record(where, where, error=("BadRowError", f"{where}: missing 'id'"))
    rid = str(raw_id)
    unknown = sorted(str(k) for k in entry if k not in ("id", *ITEM_COLUMNS))
    if unknown:
        return Record(rid, where, error=("BadRowError", f"{where}: unknown column(s) {unknown}"))
    item: dict[str, Any] = {}
    try:
        for key in ITEM_COLUMNS:
            value = entry.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
            if key == "text":
                item["text"] = value
            else:
                item[key] = str(resolve_media_path(root, value, source=source, row=line, column=key))
    except DataError as err:
        return Record(rid, where, error=(type(err).__name__, str(err)))
    if not item:
        return Record(rid, where, error=("BadRowError", f"{where}: no text, image, audio or video"))
    return Record(rid, where, item=item["text"] if list(item) == ["text"] else item)


def iter_table(path: str | os.PathLike, media_root: str | os.PathLike | None = None) -> Iterator[Record]:
    """Records of a JSONL / CSV / Parquet file of items."""
    path = Path(path)
    root = Path(media_root) if media_root is not None else path.parent
    source = path.name
    for line, entry, problem in _rows(path):
        where = f"{source} line {line}" if path.suffix.lower() != ".parquet" else f"{source} row {line}"
        if problem is not None or entry is None:
            yield Record(where, where, error=("BadRowError", f"{where}: {problem}"))
            continue
        yield _table_record(entry, where, root, source, line)


HUB_PREFIX = "hub:"


def parse_hub(source: str) -> tuple[str, str]:
    """`hub:NAME[:SPLIT]` -> (NAME, SPLIT); the split may hold colons itself (`train[:100]`)."""
    name, _, split = source[len(HUB_PREFIX) :].partition(":")
    if not name:
        raise ValueError(f"{source!r}: expected hub:NAME or hub:NAME:SPLIT")
    return name, split or "train"


def iter_hub(
    source: str, media_root: str | os.PathLike | None = None, *, load_kwargs: dict[str, Any] | None = None
) -> Iterator[Record]:
    """Records of a `hub:NAME[:SPLIT]` dataset (see the module docstring); a row that cannot be read is an error."""
    import datasets

    from e5omni.data.hf import from_hf_dataset

    name, split = parse_hub(source)
    ds = datasets.load_dataset(name, split=split, **(load_kwargs or {}))
    if isinstance(ds, datasets.DatasetDict):  # pragma: no cover - split= always gives one Dataset
        raise DataError(f"{source}: expected one split, got {list(ds)}")
    columns = [c for c in ITEM_COLUMNS if c in ds.column_names]
    if not columns:
        raise DataError(
            f"{source}: no {', '.join(ITEM_COLUMNS)} column to embed; its columns are {list(ds.column_names)}"
        )
    fields = {c: c for c in columns}
    # the data layer's view wants a query and a positive: both are the row's item (converted twice, a cost only
    # for Audio features, which it decodes)
    view = from_hf_dataset(ds, {"query": fields, "positive": fields}, media_root=media_root)
    ids = ds["id"] if "id" in ds.column_names else None
    for row in range(len(ds)):
        where = f"{source} row {row}"
        rid = str(row) if ids is None else ids[row]
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            yield Record(where, where, error=("BadRowError", f"{where}: missing 'id'"))
            continue
        rid = str(rid)
        try:
            item = view[row]["query"]
        except (DataError, OSError) as err:
            yield Record(rid, where, error=(type(err).__name__, str(err)))
            continue
        yield Record(rid, where, item=item)


def count_source(source: str | os.PathLike, media_root: str | os.PathLike | None = None) -> int:
    """How many records `iter_source` yields, without decoding anything (a progress bar's total)."""
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        import datasets

        name, split = parse_hub(source)
        return len(datasets.load_dataset(name, split=split))
    return sum(1 for _ in iter_source(source, media_root))


def iter_source(source: str | os.PathLike, media_root: str | os.PathLike | None = None) -> Iterator[Record]:
    """Records of a folder, a table file or a `hub:` dataset (see the module docstring)."""
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        return iter_hub(source, media_root)
    path = Path(source)
    if path.is_dir():
        if media_root is not None:
            raise ValueError("--media-root applies to table files; a folder is its own media root")
        return iter_folder(path)
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return iter_table(path, media_root)
    raise FileNotFoundError(f"{source}: expected a folder, a {', '.join(TABLE_SUFFIXES)} file or hub:NAME[:SPLIT]")
