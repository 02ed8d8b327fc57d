"""The errors of `e5omni.data`: one base class (`DataError`), and where a problem is (file, row, column)."""

from __future__ import annotations

from pathlib import Path

from modeling_e5omni.processing_e5omni import E5OmniInputError


class DataError(ValueError):
    """Base class of every dataset problem raised here, so callers can catch one type."""


class InvalidItemError(DataError, E5OmniInputError):
    """An item that ``model.encode`` refuses too: raised from the model's own ``check_item``, with its message.

    Both a DataError (one ``except`` for every dataset problem) and the model's E5OmniInputError (``.index`` is the
    item's position, when one was given).
    """

    @classmethod
    def from_input_error(cls, err: E5OmniInputError) -> InvalidItemError:
        """The same message and index as ``err``, raised as a data problem."""
        invalid = cls(str(err))
        invalid.index = err.index
        return invalid


class BadRowError(DataError):
    """A row of a dataset file or `datasets.Dataset` does not follow the schema.

    ``source`` is the file (or "dataset"), ``row`` the 1-based line number for JSON-lines / CSV files or the 0-based
    index for datasets and Parquet tables (``unit="row"``), ``column`` the column (or field) at fault when one is, so
    the message points at the exact place to fix.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        row: int | None = None,
        column: str | None = None,
        unit: str | None = None,
    ):
        self.source, self.row, self.column, self.unit = source, row, column, unit
        super().__init__(f"{_prefix(source, row, column, unit)}{message}")


class UnsafeMediaPathError(DataError):
    """A media path from a dataset would read outside the media root (``..``, absolute, URL, escaping symlink)."""

    def __init__(
        self, path: str, reason: str, *, source: str | None = None, row: int | None = None, column=None, unit=None
    ):
        self.path, self.reason, self.source, self.row, self.column = path, reason, source, row, column
        super().__init__(f"{_prefix(source, row, column, unit)}refusing media path {path!r}: {reason}")


class SymlinkLoopError(UnsafeMediaPathError):
    """A media path runs into a symlink loop (pathlib raises a bare RuntimeError for it)."""


class MissingMediaError(DataError, FileNotFoundError):
    """A (safe) media path points at nothing; caught at load time instead of in the middle of training."""

    def __init__(
        self, path: str, resolved: Path, *, source: str | None = None, row: int | None = None, column=None, unit=None
    ):
        self.path, self.resolved, self.source, self.row, self.column = path, resolved, source, row, column
        super().__init__(f"{_prefix(source, row, column, unit)}media file {path!r} not found (looked for {resolved})")


def _where(source: str | None, row: int | None, column: str | None = None, unit: str | None = None) -> str:
    """Human location of a problem: "data.jsonl line 3, column 'query.image'", "row 5" (datasets), or "".

    ``unit`` names what ``row`` counts when it is not the default (lines of a named file, rows of "dataset"), e.g.
    "row" for a Parquet table's 0-based rows."""
    parts = []
    if source:
        parts.append(source)
    if row is not None:
        if unit is None:
            unit = "line" if source and source not in ("dataset", "stream") else "row"
        parts.append(f"{unit} {row}")
    where = " ".join(parts)
    if column is not None:
        where = f"{where}, column {column!r}" if where else f"column {column!r}"
    return where


def _prefix(source: str | None, row: int | None, column: str | None = None, unit: str | None = None) -> str:
    where = _where(source, row, column, unit)
    return f"{where}: " if where else ""


class Where:
    """Where a value was read (file or "dataset", the 1-based line or the 0-based row, its unit), for error messages.

    ``unit`` is "line" for JSON-lines / CSV files (a line number the user can jump to) and "row" for Arrow / Parquet
    tables and `datasets` rows (0-based); ``None`` lets `_where` pick from the source.
    """

    __slots__ = ("source", "row", "unit")

    def __init__(self, source: str | None, row: int | None, unit: str | None = None):
        self.source, self.row, self.unit = source, row, unit

    def __repr__(self) -> str:
        return f"Where({_where(self.source, self.row, None, self.unit)!r})"

    def __str__(self) -> str:
        return _where(self.source, self.row, None, self.unit)

    def error(self, message: str, column: str | None = None) -> BadRowError:
        return BadRowError(message, source=self.source, row=self.row, column=column, unit=self.unit)

    def place(self, column: str | None = None) -> dict:
        """Keyword arguments naming this place (and ``column``) for the located errors and `resolve_media_path`."""
        return {"source": self.source, "row": self.row, "column": column, "unit": self.unit}
