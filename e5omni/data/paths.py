"""Media paths from dataset files, confined to a media root (`resolve_media_path`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from e5omni.data.errors import MissingMediaError, SymlinkLoopError, UnsafeMediaPathError

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
    unit: str | None = None,
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
        return UnsafeMediaPathError(text, reason, source=source, row=row, column=column, unit=unit)

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
    try:
        resolved = (real_root / text).resolve()
    except (RuntimeError, OSError) as err:  # Python 3.11: RuntimeError("Symlink loop from ..."); later: ELOOP
        raise SymlinkLoopError(
            text, f"it is a symlink loop ({err})", source=source, row=row, column=column, unit=unit
        ) from None
    if resolved != real_root and real_root not in resolved.parents:
        raise refuse(f"it resolves to {resolved}, outside the media root {real_root} (symlink escape)")
    if resolved == real_root:
        raise refuse("it names the media root itself, not a file")
    if must_exist and not resolved.is_file():
        raise MissingMediaError(text, resolved, source=source, row=row, column=column, unit=unit)
    return resolved
