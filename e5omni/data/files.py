"""JSON-lines and CSV loaders: rows of untrusted files -> examples, media paths resolved under a media root."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from e5omni.data.columns import _schema_from_columns
from e5omni.data.errors import BadRowError, DataError
from e5omni.data.items import EXAMPLE_KEYS, ITEM_KEYS, MODALITIES, PASSTHROUGH_KEYS
from e5omni.data.paths import resolve_media_path
from e5omni.data.tables import decoded_lines, json_records


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
    source = str(path)
    examples: list[dict[str, Any]] = []
    rows: list[int] = []
    for line_no, record in json_records(path, source):
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
    source = str(path)
    examples: list[dict[str, Any]] = []
    rows: list[int] = []
    # decoded line by line (undecodable bytes name their line); the csv module joins quoted multi-line cells
    reader = csv.reader(text for _, text in decoded_lines(path, source))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{source}: empty file; expected a header row") from None
    except csv.Error as err:
        raise BadRowError(f"not valid CSV ({err})", source=source, row=1) from None
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise DataError(f"{source}: duplicate column names in header {header}")
    schema = _schema_from_columns(header, source, bare_is_text=True)
    end = reader.line_num
    while True:
        line_no = end + 1  # the line the record starts on (a quoted cell may span several)
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise BadRowError(f"not valid CSV ({err})", source=source, row=line_no) from None
        end = reader.line_num
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(header):
            raise BadRowError(
                f"expected {len(header)} cells (one per column), got {len(cells)}", source=source, row=line_no
            )
        record = dict(zip(header, cells))
        items: dict[str, Any] = {}
        for role, fields in schema.roles.items():
            raw = {f: record[c] for f, c in fields.items() if record[c] != ""}
            if not any(k in raw for k in MODALITIES):
                raise BadRowError(
                    f"{role} is empty; expected a value in one of {sorted(fields.values())}",
                    source=source,
                    row=line_no,
                )
            value: Any = raw["text"] if set(raw) == {"text"} else raw
            items[role] = _parse_file_item(
                value, role=role, media_root=root, source=source, row=line_no, must_exist=check_files
            )
        example = schema.example(items)
        for key, column in schema.passthrough.items():
            if record[column] != "":
                example[key] = record[column]
        examples.append({k: example[k] for k in ("query", "positive", "negatives", *PASSTHROUGH_KEYS) if k in example})
        rows.append(line_no)
    _check_negative_count(examples, rows, num_negatives, source)
    return examples
