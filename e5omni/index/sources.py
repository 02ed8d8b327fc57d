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
never dropped. The order is fixed, so a resumed run sees the same records in the same shards. What is recorded
instead of raised: a directory that cannot be listed (one record for it), a symlink loop, a symlink to a directory
(not followed), a `.txt` or a table line that is not UTF-8, a JSONL / CSV line over MAX_ROW_BYTES (read with a
bounded reader: a 1 GB line is skipped in 1 MB chunks), a CSV cell over csv's field limit, a Parquet row group that
cannot be read (one record per row it holds), a second row with an id already used. A file name that is not UTF-8
gets a readable id (`\\xNN` for its undecodable bytes) and keeps its bytes in `Record.raw_path`.

`survey_source` gives a source's fingerprint and its (id, stamp) list without decoding anything: what a resume
compares to tell an edited source from the one it started on (build.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from e5omni.data.errors import DataError, SymlinkLoopError
from e5omni.data.paths import resolve_media_path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
TEXT_EXTENSIONS = frozenset({".txt"})
TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
ITEM_COLUMNS = ("text", "image", "audio", "video")
#: A `.txt` file larger than this is recorded as an error instead of being read (the text budget is far smaller).
MAX_TEXT_BYTES = 1 << 20
#: A table row (a JSONL / CSV line, a Parquet row's cells) larger than this is an error line; a JSONL line is read
#: with a bounded reader, so a longer one is skipped in chunks, never held whole.
MAX_ROW_BYTES = 1 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Record:
    """One entry of a corpus: `item` to embed, or `error` = (type name, message) saying why it cannot be.

    `id` is readable text (a file name that is not UTF-8 shows its undecodable bytes as `\\xNN`); `raw_path` then
    holds the name's bytes in hex, so nothing is lost. `stamp` says which version of the record this is (a file's size
    and mtime, a hash of a table row), so a resumed run can tell an edited source from the one it started on."""

    id: str
    source: str
    item: Any = None
    error: tuple[str, str] | None = None
    stamp: str | None = None
    raw_path: str | None = None


def readable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (surrogate-escaped by the OS layer) shown as `\\xNN`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _raw(name: str) -> str | None:
    """The hex of a name's bytes when it is not valid UTF-8 (None when the readable form is the name)."""
    data = name.encode("utf-8", "surrogateescape")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()
    return None


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


def _stamp(path: Path) -> str | None:
    """size:mtime_ns of what `path` names (its target for a symlink), or of the link itself when that fails."""
    for follow in (True, False):
        try:
            info = os.stat(path, follow_symlinks=follow)
        except (OSError, ValueError):
            continue
        return f"{info.st_size}:{info.st_mtime_ns}"
    return None


def _folder_record(root: Path, path: Path, rel_raw: str) -> Record | None:
    rel, raw = readable(rel_raw), _raw(rel_raw)
    kind = _kind(path)
    if kind is None:
        return None  # not a medium we embed (README.md, .DS_Store, ...): not part of the corpus
    stamp = _stamp(path)

    def error(kind_: str, message: str) -> Record:
        return Record(rel, rel, error=(kind_, message), stamp=stamp, raw_path=raw)

    try:
        if not (stat.S_ISREG(os.lstat(path).st_mode) or path.is_symlink()):
            return error("UnsafeMediaPathError", f"{rel} is not a regular file (FIFO, device, ...)")
        try:
            resolved = resolve_media_path(root, rel_raw)  # refuses symlinks out of the folder
        except SymlinkLoopError as err:
            return error("SymlinkLoopError", f"{rel} is a symlink loop ({readable(err.reason)})")
        mode = os.stat(resolved).st_mode
        if not stat.S_ISREG(mode):
            return error("UnsafeMediaPathError", f"{rel} is not a regular file (FIFO, device, ...)")
        if kind != "text":
            return Record(rel, rel, item={kind: str(resolved)}, stamp=stamp, raw_path=raw)
        if os.path.getsize(resolved) > MAX_TEXT_BYTES:
            return error("TextTooLargeError", f"{rel} is over {MAX_TEXT_BYTES} bytes")
        with open(resolved, "rb") as handle:
            data = handle.read(MAX_TEXT_BYTES + 1)
        if len(data) > MAX_TEXT_BYTES:  # grew since the size check
            return error("TextTooLargeError", f"{rel} is over {MAX_TEXT_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            return error("BadEncodingError", f"{rel} is not UTF-8 text (byte {err.start}: {err.reason})")
        if not text.strip():
            return error("EmptyTextError", f"{rel} holds no text")
        return Record(rel, rel, item=text, stamp=stamp, raw_path=raw)
    except (DataError, OSError, UnicodeError) as err:
        return error(type(err).__name__, readable(str(err)))


def _walk(root: Path, rel: str = "") -> Iterator[tuple[str, Path | None, tuple[str, str] | None]]:
    """(relative path, path, None) for each non-directory entry under `root`, in os.walk's top-down sorted order (a
    folder's files, then its sub-folders one by one); (relative path, None, (error type, reason)) for a directory that
    cannot be listed (its files are then unknown: that line says so) and for a symlink to a directory (not followed:
    it could loop or leave the folder). Never raises for what it finds on disk."""
    folder = root / rel if rel else root
    try:
        with os.scandir(folder) as scan:
            entries = list(scan)
    except OSError as err:
        shown = readable(rel or ".")
        reason = f"the directory {shown} cannot be listed ({err.strerror or type(err).__name__}): its files are unknown"
        yield rel or ".", None, ("UnreadableDirectoryError", reason)
        return
    files, dirs = [], []
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            linked_dir = not is_dir and entry.is_symlink() and os.path.isdir(entry.path)
        except OSError:
            is_dir = linked_dir = False
        if is_dir:
            dirs.append(entry.name)
        elif linked_dir:
            files.append((entry.name, True))
        else:
            files.append((entry.name, False))
    for name, linked_dir in sorted(files):
        child = f"{rel}/{name}" if rel else name
        if linked_dir:
            reason = f"{readable(child)} is a symlink to a directory: not followed (it could loop or leave the folder)"
            yield child, None, ("SymlinkedDirectoryError", reason)
        else:
            yield child, folder / name, None
    for name in sorted(dirs):
        yield from _walk(root, f"{rel}/{name}" if rel else name)


def iter_folder(root: str | os.PathLike) -> Iterator[Record]:
    """Records of every file under `root` with a known extension, in sorted path order; a directory that cannot be
    listed and a symlinked directory are error records (nothing under them is silently lost)."""
    root = Path(root).resolve()
    for rel, path, problem in _walk(root):
        if problem is not None:
            shown = readable(rel)
            yield Record(shown + "/", shown + "/", error=problem, stamp=None, raw_path=_raw(rel))
            continue
        record = _folder_record(root, path, rel)
        if record is not None:
            yield record


def _folder_stamps(root: Path) -> Iterator[tuple[str, str | None]]:
    """(id, stamp) of every record `iter_folder` yields, from the listing and stat alone (nothing read)."""
    for rel, path, problem in _walk(root):
        if problem is not None:
            yield readable(rel) + "/", None
        elif _kind(path) is not None:
            yield readable(rel), _stamp(path)


def _bounded_lines(handle: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, bytes) of each line; bytes None for a line over MAX_ROW_BYTES, which is skipped in
    chunks (memory stays bounded by the cap whatever the line's length)."""
    number = 0
    while True:
        line = handle.readline(MAX_ROW_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_ROW_BYTES and not line.endswith(b"\n"):
            while chunk := handle.readline(_CHUNK):
                if chunk.endswith(b"\n"):
                    break
            yield number, None
            continue
        yield number, line


def _row_stamp(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


#: (row number, row, problem, stamp): problem = (error type, reason) when the row cannot be read.
_Row = tuple[int, dict[str, Any] | None, tuple[str, str] | None, str | None]


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    with open(path, "rb") as handle:
        for line, data in _bounded_lines(handle):
            if data is None:
                yield line, None, ("RowTooLargeError", f"over {MAX_ROW_BYTES} bytes (skipped unread)"), None
                continue
            if line == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
            stamp = _row_stamp(data)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                yield line, None, ("BadEncodingError", f"not UTF-8 (byte {err.start}: {err.reason})"), stamp
                continue
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
            except json.JSONDecodeError as err:
                yield line, None, ("BadRowError", f"not valid JSON ({err.msg})"), stamp
                continue
            if not isinstance(entry, dict):
                yield line, None, ("BadRowError", f"expected an object, got {type(entry).__name__}"), stamp
                continue
            yield line, entry, None, stamp


def _csv_rows(path: Path) -> Iterator[_Row]:
    """CSV rows by their first line; a cell over csv's field limit (128 KB), a line over MAX_ROW_BYTES (fed to the
    parser cut at the cap) or bytes that are not UTF-8 make that row an error line and the next row is read as
    usual (csv's reader starts afresh after an error)."""
    oversized: set[int] = set()
    raw: dict[int, bytes] = {}

    def lines() -> Iterator[str]:
        with open(path, "rb") as handle:
            for number, data in _bounded_lines(handle):
                if number == 1 and data is not None and data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
                if data is None:
                    oversized.add(number)
                    data = b"\n"  # the row holding it is an error; its bytes are never held
                raw[number] = data
                yield data.decode("utf-8", "surrogateescape")

    reader = csv.reader(lines())
    header: list[str] | None = None
    last = 0
    while True:
        try:
            cells = next(reader)
            problem = None
        except StopIteration:
            return
        except csv.Error as err:
            cells, problem = None, ("RowTooLargeError", str(err))
        first, last = last + 1, reader.line_num
        data = b"".join(raw.pop(n, b"") for n in range(first, last + 1))
        stamp = _row_stamp(data)
        if any(n in oversized for n in range(first, last + 1)):
            problem = ("RowTooLargeError", f"over {MAX_ROW_BYTES} bytes (skipped unread)")
        elif cells is not None and any(_raw(c) for c in cells):
            problem = ("BadEncodingError", "not UTF-8")
        if header is None:
            if problem is not None:
                raise DataError(f"{path.name} line {first}: the header row cannot be read: {problem[1]}")
            header = cells
            continue
        if problem is not None:
            yield first, None, problem, stamp
            continue
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            yield first, None, ("BadRowError", f"{len(cells)} cells for {len(header)} columns"), stamp
            continue
        yield first, {k: v for k, v in zip(header, cells, strict=False) if v != ""}, None, stamp


def _parquet_rows(path: Path) -> Iterator[_Row]:
    """Row group by row group: a group that cannot be read (a corrupt page) becomes one error line per row it holds,
    named by its id when the id column still reads, and the next group is read."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises OSError / ArrowInvalid for a damaged footer
        raise DataError(f"{path.name}: not a readable Parquet file ({type(err).__name__}: {err})") from err
    row = 0
    for group in range(table.num_row_groups):
        size = table.metadata.row_group(group).num_rows
        try:
            entries = table.read_row_group(group).to_pylist()
        except Exception as err:  # noqa: BLE001 - pyarrow's page errors: OSError, ArrowInvalid, ArrowException
            reason = f"row group {group} cannot be read ({type(err).__name__}: {' '.join(str(err).split())})"
            try:
                ids = table.read_row_group(group, columns=["id"]).column("id").to_pylist()
            except Exception:  # noqa: BLE001 - the id column is damaged too: rows are named by number
                ids = [None] * size
            for rid in ids:
                row += 1
                yield row, ({"id": rid} if rid is not None else None), ("CorruptTableError", reason), None
            continue
        for entry in entries:
            row += 1
            data = json.dumps(entry, sort_keys=True, default=str).encode()
            yield row, entry, None, _row_stamp(data)


def _rows(path: Path) -> Iterator[_Row]:
    """(row number, row, problem, stamp) for each row of a table file (1-based line numbers for JSONL/CSV)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path)
    if suffix == ".csv":
        return _csv_rows(path)
    return _jsonl_rows(path)


def _row_size(entry: dict[str, Any]) -> int:
    return sum(len(v.encode("utf-8", "surrogatepass")) if isinstance(v, str) else 0 for v in entry.values())


def _table_record(entry: dict[str, Any], where: str, root: Path, source: str, line: int, stamp: str | None) -> Record:
    raw_id = entry.get("id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return Record(where, where, error=("BadRowError", f"{where}: missing 'id'"), stamp=stamp)
    rid = str(raw_id)
    unknown = sorted(str(k) for k in entry if k not in ("id", *ITEM_COLUMNS))
    if unknown:
        return Record(rid, where, error=("BadRowError", f"{where}: unknown column(s) {unknown}"), stamp=stamp)
    if _row_size(entry) > MAX_ROW_BYTES:
        return Record(rid, where, error=("RowTooLargeError", f"{where}: over {MAX_ROW_BYTES} bytes"), stamp=stamp)
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
    except (DataError, OSError) as err:  # a symlink loop is a DataError too (SymlinkLoopError)
        return Record(rid, where, error=(type(err).__name__, str(err)), stamp=stamp)
    if not item:
        return Record(rid, where, error=("BadRowError", f"{where}: no text, image, audio or video"), stamp=stamp)
    return Record(rid, where, item=item["text"] if list(item) == ["text"] else item, stamp=stamp)


def iter_table(path: str | os.PathLike, media_root: str | os.PathLike | None = None) -> Iterator[Record]:
    """Records of a JSONL / CSV / Parquet file of items; a row that cannot be read is an error record naming it."""
    path = Path(path)
    root = Path(media_root) if media_root is not None else path.parent
    source = path.name
    unit = "row" if path.suffix.lower() == ".parquet" else "line"
    seen: dict[str, str] = {}  # id -> where: the first row with an id keeps it, a later one is an error
    for line, entry, problem, stamp in _rows(path):
        where = f"{source} {unit} {line}"
        if problem is not None:
            rid = str(entry["id"]) if entry is not None and entry.get("id") is not None else where
            record = Record(rid, where, error=(problem[0], f"{where}: {problem[1]}"), stamp=stamp)
        else:
            record = _table_record(entry, where, root, source, line, stamp)
        if record.id != where:
            if record.id in seen:
                message = f"{where}: id {record.id!r} is already the id of {seen[record.id]}"
                record = Record(where, where, error=("DuplicateIdError", message), stamp=stamp)
            else:
                seen[record.id] = where
        yield record


HUB_PREFIX = "hub:"


def _split_hub(source: str) -> tuple[str, str | None]:
    """`hub:NAME[:SPLIT]` -> (NAME, SPLIT or None); the split may hold colons itself (`train[:100]`)."""
    name, _, split = source[len(HUB_PREFIX) :].partition(":")
    if not name:
        raise ValueError(f"{source!r}: expected hub:NAME or hub:NAME:SPLIT")
    return name, split or None


def parse_hub(source: str) -> tuple[str, str]:
    """`hub:NAME[:SPLIT]` -> (NAME, SPLIT), the split "train" when none is named."""
    name, split = _split_hub(source)
    return name, split or "train"


def _load_hub(source: str, load_kwargs: dict[str, Any] | None = None):
    from e5omni.data.hf import open_hf_dataset

    # a Hub dataset, a datasets folder, or a save_to_disk folder of a Dataset (its own split) or a DatasetDict
    return open_hf_dataset(*_split_hub(source), **(load_kwargs or {}))


def iter_hub(
    source: str, media_root: str | os.PathLike | None = None, *, load_kwargs: dict[str, Any] | None = None
) -> Iterator[Record]:
    """Records of a `hub:NAME[:SPLIT]` dataset (see the module docstring); a row that cannot be read is an error."""
    from e5omni.data.hf import from_hf_dataset
    from e5omni.data.items import content_hash

    ds = _load_hub(source, load_kwargs)
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
    seen: dict[str, int] = {}
    for row in range(len(ds)):
        where = f"{source} row {row}"
        rid = str(row) if ids is None else ids[row]
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            yield Record(where, where, error=("BadRowError", f"{where}: missing 'id'"))
            continue
        rid = str(rid)
        if rid in seen:
            message = f"{where}: id {rid!r} is already the id of row {seen[rid]}"
            yield Record(where, where, error=("DuplicateIdError", message))
            continue
        seen[rid] = row
        try:
            item = view[row]["query"]
            stamp = str(content_hash(item))
        except (DataError, OSError) as err:
            yield Record(rid, where, error=(type(err).__name__, str(err)))
            continue
        yield Record(rid, where, item=item, stamp=stamp)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def survey_source(
    source: str | os.PathLike, media_root: str | os.PathLike | None = None
) -> tuple[dict[str, Any], list[tuple[str, str | None]] | None]:
    """(fingerprint, [(id, stamp), ...] in source order) of a source, without decoding media:

    - a folder: its listing (relative paths, size and mtime of each file; nothing read); the digest hashes that list
    - a table: the file's size, mtime and sha256 (the digest); the list from its rows (each row's stamp a hash of it)
    - `hub:`: the dataset's fingerprint (datasets' own, which changes with its data files) and length; no list

    A resumed run compares the digest with the one its manifest holds (`build_corpus`)."""
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        ds = _load_hub(source)
        fingerprint = getattr(ds, "_fingerprint", None) or "unknown"
        return {"kind": "hub", "digest": fingerprint, "records": len(ds)}, None
    path = Path(source)
    if path.is_dir():
        entries = list(_folder_stamps(path.resolve()))
        digest = hashlib.sha256()
        for rid, stamp in entries:
            digest.update(f"{rid}\t{stamp}\n".encode("utf-8", "surrogatepass"))
        return {"kind": "folder", "digest": digest.hexdigest(), "records": len(entries)}, entries
    entries = [(r.id, r.stamp) for r in iter_source(source, media_root)]
    info = path.stat()
    fingerprint = {"kind": "table", "digest": _file_sha256(path), "records": len(entries)}
    fingerprint.update(size=info.st_size, mtime_ns=info.st_mtime_ns)
    return fingerprint, entries


def count_source(source: str | os.PathLike, media_root: str | os.PathLike | None = None) -> int:
    """How many records `iter_source` yields, without decoding anything (a progress bar's total)."""
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        return len(_load_hub(source))
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
