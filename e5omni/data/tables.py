"""Table files (Parquet, JSON lines, JSON, CSV) as `datasets.Dataset`s whose rows know their place in the file.

A problem in a row is reported where the user can find it: the file and the 1-based line of a JSON-lines / JSON / CSV
file (the line the record starts on), the 0-based row of a Parquet file. Text files are read once first, line by
line, so undecodable bytes (not UTF-8), malformed JSON, a value whose JSON type differs from the same field's on an
earlier line (which `datasets` reports only as "Expected object or value") and CSV records with the wrong number of
cells all raise BadRowError naming the file and the line, instead of an error from deep inside pyarrow or pandas.
"""

from __future__ import annotations

import bisect
import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.data.errors import BadRowError, DataError, Where

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def decoded_lines(path: str | os.PathLike, source: str | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text with its line ending) of a UTF-8 file; a leading BOM is dropped. Bytes that are
    not UTF-8 raise BadRowError naming the file, the line and the byte's position in it."""
    source = source if source is not None else str(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise BadRowError(
                    f"not valid UTF-8: byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line ({err.reason}); "
                    "save the file as UTF-8",
                    source=source,
                    row=number,
                    unit="line",
                ) from None
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield number, text


_JSON_TYPES = {
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "a list",
    dict: "an object",
}


class _TypeCheck:
    """The JSON type of every field (nested fields and list elements too) must stay what it first was: pyarrow
    builds one column type per field and fails on a change without saying where."""

    def __init__(self, source: str):
        self.source = source
        self.seen: dict[str, tuple[str, int]] = {}

    def check(self, value: Any, line: int, field: str = "") -> None:
        if value is None:
            return
        kind = _JSON_TYPES.get(type(value), type(value).__name__)
        first = self.seen.setdefault(field, (kind, line))
        if first[0] != kind:
            raise BadRowError(
                f"expected {first[0]} as on line {first[1]}, got {kind}; a field keeps one type in every record",
                source=self.source,
                row=line,
                column=field,
                unit="line",
            )
        if isinstance(value, dict):
            for key, sub in value.items():
                self.check(sub, line, f"{field}.{key}" if field else str(key))
        elif isinstance(value, list):
            for sub in value:
                self.check(sub, line, f"{field}[]")


def json_records(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    """(1-based line, object) of each record of a JSON-lines file (blank lines skipped, as `datasets` skips them);
    a line that is not a JSON object is a BadRowError naming the file and line."""
    for number, text in decoded_lines(path, source):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise BadRowError(f"not valid JSON ({err.msg} at column {err.colno})", source=source, row=number) from None
        if not isinstance(record, dict):
            raise BadRowError(f"expected a JSON object, got {type(record).__name__}", source=source, row=number)
        yield number, record


def jsonl_row_lines(path: Path, source: str) -> np.ndarray:
    """Line numbers of the records of a JSON-lines file (blank lines skipped, as `datasets` skips them)."""
    rows: list[int] = []
    types = _TypeCheck(source)
    for number, record in json_records(path, source):
        types.check(record, number)
        rows.append(number)
    return np.asarray(rows, dtype=np.int64)


def json_array_row_lines(path: Path, source: str) -> np.ndarray:
    """Line numbers of the records of a JSON file holding one array of objects."""
    text = "".join(line for _, line in decoded_lines(path, source))
    decoder = json.JSONDecoder()
    types = _TypeCheck(source)
    rows: list[int] = []
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def fail(pos: int, message: str) -> BadRowError:
        return BadRowError(message, source=source, row=line_at(pos))

    pos = skip(0) + 1  # past "["
    while True:
        pos = skip(pos)
        if pos < len(text) and text[pos] == "]" and not rows:
            break
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise BadRowError(f"not valid JSON ({err.msg})", source=source, row=err.lineno) from None
        if not isinstance(record, dict):
            raise fail(pos, f"expected a JSON object, got {type(record).__name__}")
        number = line_at(pos)
        types.check(record, number)
        rows.append(number)
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            break
        raise fail(pos, "not valid JSON (expected ',' or ']' after a record)")
    if skip(pos + 1) != len(text):
        raise fail(skip(pos + 1), "not valid JSON (extra data after the array)")
    return np.asarray(rows, dtype=np.int64)


def csv_row_lines(path: Path, source: str) -> np.ndarray:
    """Line numbers (where each record starts) of a CSV file with a header; every record has one cell per column."""
    lines = (text for _, text in decoded_lines(path, source))
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{source}: empty file; expected a header row") from None
    except csv.Error as err:
        raise BadRowError(f"not valid CSV ({err})", source=source, row=1, unit="line") from None
    rows: list[int] = []
    end = reader.line_num
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise BadRowError(f"not valid CSV ({err})", source=source, row=start, unit="line") from None
        end = reader.line_num
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line, which pandas skips
        if len(cells) != len(header):
            raise BadRowError(
                f"expected {len(header)} cells (one per column of the header), got {len(cells)}",
                source=source,
                row=start,
                unit="line",
            )
        rows.append(start)
    return np.asarray(rows, dtype=np.int64)


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def read_table_file(path: Path) -> tuple[Any, np.ndarray | None]:
    """One table file -> (`datasets.Dataset` with Audio / Video undecoded, line number of each row or None for
    Parquet). Errors name the file given (`str(path)`)."""
    import datasets

    source = str(path)
    suffix = path.suffix.lower()
    lines = None
    if suffix == ".csv":
        lines = csv_row_lines(path, source)
    elif suffix == ".jsonl" or (suffix == ".json" and not _is_json_array(path)):
        lines = jsonl_row_lines(path, source)
    elif suffix == ".json":
        lines = json_array_row_lines(path, source)
    try:
        with quiet_datasets():
            if suffix == ".parquet":
                ds = datasets.Dataset.from_parquet(str(path))
            elif suffix == ".csv":
                ds = datasets.Dataset.from_csv(str(path), keep_default_na=False)
            else:
                ds = datasets.Dataset.from_json(str(path))
    except DataError:
        raise
    except Exception as err:
        cause = err.__cause__ or err
        raise DataError(f"{source}: cannot be read as a table ({type(cause).__name__}: {cause})") from None
    if lines is not None and len(lines) != len(ds):
        lines = None  # the reader split records differently from ours: report 0-based rows rather than wrong lines
    for column, feature in ds.features.items():
        if isinstance(feature, datasets.Audio | datasets.Video | datasets.Image) and feature.decode:
            ds = ds.cast_column(column, type(feature)(decode=False))
    return ds, lines


class quiet_datasets:
    """`datasets` prints a progress bar per file it converts; a folder of 100 Parquet shards would print 100."""

    def __enter__(self):
        import datasets

        self.was_enabled = datasets.utils.logging.is_progress_bar_enabled()
        datasets.utils.logging.disable_progress_bar()

    def __exit__(self, *exc):
        import datasets

        if self.was_enabled:
            datasets.utils.logging.enable_progress_bar()


def table_files(path: Path, what: str, split: str | None) -> list[Path]:
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


class Table:
    """One or more table files as `datasets.Dataset`s, addressed by one 0-based index across the files.

    ``where(i)`` is the place of row ``i`` (file, line or row) that every error message names. Image, audio and video
    features are read undecoded (``{"bytes", "path"}``), for `e5omni.data.features.media_value_to_item`.
    """

    def __init__(self, path: str | os.PathLike, *, what: str, split: str | None = None):
        path = Path(path)
        self.what = what
        self.files = table_files(path, what, split)
        read = [read_table_file(f) for f in self.files]
        self.parts = [ds for ds, _ in read]
        self.lines = [lines for _, lines in read]
        first = self.parts[0].column_names
        for f, part in zip(self.files, self.parts):
            if sorted(part.column_names) != sorted(first):
                raise DataError(
                    f"{f}: columns {sorted(part.column_names)} differ from {self.files[0]}'s {sorted(first)}; "
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
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        part = bisect.bisect_right(self.offsets, index) - 1
        return part, index - self.offsets[part]

    def place(self, part: int, local: int) -> Where:
        lines = self.lines[part]
        if lines is None:
            return Where(str(self.files[part]), local, "row")
        return Where(str(self.files[part]), int(lines[local]), "line")

    def where(self, index: int) -> Where:
        return self.place(*self.locate(index))

    def row(self, index: int) -> tuple[dict[str, Any], Where]:
        part, local = self.locate(index)
        return self.parts[part][local], self.place(part, local)

    def feature(self, column: str) -> Any:
        return self.parts[0].features.get(column)

    def column_lengths(self, column: str) -> Iterator[tuple[Where, int | None]]:
        """(place, length) of a list column, read from Arrow without converting rows (None for a null cell)."""
        import pyarrow.compute as pc

        for part, data in enumerate(self.parts):
            lengths = pc.list_value_length(data.data.column(column)).to_pylist()
            for local, length in enumerate(lengths):
                yield self.place(part, local), length

    def column_values(self, column: str) -> Iterator[tuple[Where, Any]]:
        for part, data in enumerate(self.parts):
            for local, value in enumerate(data.data.column(column).to_pylist()):
                yield self.place(part, local), value
