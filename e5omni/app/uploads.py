"""What the page may open as a query: only files it received itself, in its own upload folder. Nothing else.

A gradio request names an uploaded file by its server path (a `FileData` whose `path` the client sends back), so a
hand-written request can name any path at all. gradio refuses paths outside its upload folder only for a Blocks that
was `launch()`ed; the page is mounted on FastAPI instead, so the check is done here, on every file a component of the
page is about to open, before a byte of it is read:

    - the path is a plain local path (no URL: the page fetches nothing for a client);
    - it is not a symlink, and it is a regular file (`lstat`: devices such as /dev/zero, FIFOs, sockets and folders are
      refused without opening them);
    - it resolves (`realpath`) inside the upload folder: `..` and symlinked folders lead nowhere else;
    - it is at most the byte limit of its kind.

The upload folder is private to this process: unless GRADIO_TEMP_DIR is already set, `upload_folder()` creates a
fresh 0700 folder (removed when the process exits) and points gradio at it, so files of other gradio apps on the same
machine are not "uploads" of this page either.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
from pathlib import Path

ENV = "GRADIO_TEMP_DIR"
_created: list[str] = []


class UploadRefusedError(ValueError):
    """A file a request named that is not an upload of this page (or too large). `reason` is the message."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def upload_folder() -> Path:
    """The folder gradio stores uploads in: GRADIO_TEMP_DIR, set here to a fresh private folder when unset. Call it
    before any gradio component is built (each component reads the folder when it is constructed)."""
    folder = os.environ.get(ENV)
    if not folder:
        folder = tempfile.mkdtemp(prefix="e5omni-uploads-")  # mode 0700
        os.environ[ENV] = folder
        _created.append(folder)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(os.path.realpath(folder))


def checked_upload(path: object, kind: str, max_bytes: int, folder: Path | None = None) -> str:
    """`path` if it is a regular file of at most `max_bytes` inside the upload folder, else UploadRefusedError.
    Only metadata is consulted (lstat, realpath): the file is never opened here."""
    shown = Path(str(path)).name or str(path)
    if not isinstance(path, (str, os.PathLike)):
        raise UploadRefusedError(f"the {kind} is not a file path")
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\x00" in text or "://" in text:
        raise UploadRefusedError(f"the {kind} {shown!r} is not a file uploaded to this page")
    root = folder if folder is not None else upload_folder()
    candidate = Path(text)
    try:
        info = os.lstat(candidate)
        real = Path(os.path.realpath(candidate))
    except (OSError, ValueError):
        raise UploadRefusedError(f"the {kind} {shown!r} is not a file uploaded to this page") from None
    if not candidate.is_absolute() or not real.is_relative_to(root) or real == root:
        raise UploadRefusedError(f"the {kind} {shown!r} is not a file uploaded to this page")
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise UploadRefusedError(f"the {kind} {shown!r} is not a regular file")
    if info.st_size > max_bytes:
        raise UploadRefusedError(
            f"{kind} {shown} is {info.st_size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB"
        )
    return str(real)
