"""What the search page may show: the media of the index's own items, found by row number, never by a request's path.

`MediaStore.from_index(index, source)` walks the corpus source the index was built from (`e5omni.index.iter_source`:
the same records, the same confinement of media paths to the folder or media root) and keeps, for every row of the
index, its text and the resolved paths of its image / audio / video files. The page's URLs name a row number and a
kind (`e5omni/media/17/video`), so a request can only ever reach a file that is one of those items: there is no path
in a URL to traverse. Each file is checked again when it is served (still a regular file, still resolving to the path
recorded at start-up, still inside the root), so a file swapped for a symlink after start-up is refused too.

Thumbnails and video poster frames are decoded with the model's own media functions and budgets
(`modeling_e5omni.media_e5omni`), so a header bomb placed in the folder later is refused like it is by `encode`.
At most `DECODE_WORKERS` decodes run at once, and concurrent requests for the same thumbnail share one decode (the
others wait for its result, or its error), so memory stays flat however many first requests arrive together.

Rows are told apart by (id, source): a table may hold one id twice, and each row shows its own item.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEDIA_KINDS = ("image", "audio", "video")
#: Longest side of a thumbnail / poster frame, in pixels.
THUMBNAIL_SIDE = 320
#: How many thumbnails and posters are kept in memory (JPEG bytes, a few KB each).
CACHE_ENTRIES = 512
#: Thumbnails / posters decoded at the same time (each holds one decoded image or a video's sampled frames).
DECODE_WORKERS = 2


class MediaNotFoundError(LookupError):
    """A request for media that is not one of the index's items (unknown row, a kind the item lacks, a moved file)."""


@dataclass(frozen=True)
class MediaEntry:
    """One row of the index as the page shows it: its text and its media files (resolved, confined paths)."""

    row: int
    id: str
    text: str | None = None
    files: dict[str, Path] = field(default_factory=dict)
    source: str | None = None  # where the row came from (a file, "table.jsonl line 3"): ids may repeat, this not

    @property
    def available(self) -> bool:
        return self.text is not None or bool(self.files)

    def query_item(self) -> Any:
        """The item as a query ("more like this"): what `e5omni search` gets for the same file or text."""
        parts: dict[str, Any] = {kind: str(path) for kind, path in self.files.items()}
        if self.text is not None:
            if not parts:
                return self.text
            parts["text"] = self.text
        return parts


def corpus_source(manifest: dict[str, Any]) -> tuple[str | None, str | None]:
    """(source, media_root) the manifest records, if it records them (a str, or {"path": ..., "media_root": ...})."""
    source = manifest.get("source")
    if isinstance(source, str):
        return source, None
    if isinstance(source, dict):
        return source.get("path"), source.get("media_root")
    return None, None


class MediaStore:
    """Row number -> `MediaEntry` for every row of one index, and safe access to their files."""

    def __init__(self, entries: list[MediaEntry], roots: list[Path], model_config: Any = None):
        self.entries = entries
        self.roots = [Path(r).resolve() for r in roots]
        self.model_config = model_config
        self._cache: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[tuple[int, str], Future] = {}
        self._decoders = ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="e5omni-decode")
        self._active = 0
        self.decodes = 0  # thumbnails / posters decoded so far (cache misses that ran)
        self.peak_decodes = 0  # most decodes seen running at the same time
        self._rows: dict[tuple[str, str | None], int] = {}
        self._first: dict[str, int] = {}
        for entry in entries:
            self._rows.setdefault((entry.id, entry.source), entry.row)
            self._first.setdefault(entry.id, entry.row)

    # --------------------------------------------------------------------------------------------------- build
    @classmethod
    def from_index(
        cls,
        rows: list[dict[str, Any]],
        source: str | os.PathLike | None,
        media_root: str | os.PathLike | None = None,
        model_config: Any = None,
    ) -> MediaStore:
        """Entries for `rows` (an index's rows) from the corpus `source` it was built from (None: ids only)."""
        from e5omni.index import iter_source

        items: dict[tuple[str, str], Any] = {}
        roots: list[Path] = []
        if source is not None and str(source).startswith("hub:"):
            # a datasets dataset: its text is shown; media only where a column held paths under the media root
            # (decoded Image / Audio / Video features have no file to serve)
            if media_root is not None:
                roots.append(Path(media_root))
            for record in iter_source(str(source), media_root):
                if record.error is None:
                    items[(record.id, record.source)] = record.item
        elif source is not None:
            path = Path(source)
            roots.append(path if path.is_dir() else Path(media_root) if media_root is not None else path.parent)
            for record in iter_source(path, media_root):
                if record.error is None:
                    items[(record.id, record.source)] = record.item
        entries = []
        for number, row in enumerate(rows):
            item = items.get((row["id"], row.get("source")))
            text, files = None, {}
            if isinstance(item, str):
                text = item
            elif isinstance(item, dict):
                text = item.get("text")
                files = {kind: Path(item[kind]) for kind in MEDIA_KINDS if isinstance(item.get(kind), str)}
            entries.append(MediaEntry(number, row["id"], text, files, row.get("source")))
        return cls(entries, roots, model_config)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def missing(self) -> int:
        """Rows of the index whose item the source no longer holds (shown by id, without a preview)."""
        return sum(1 for entry in self.entries if not entry.available)

    # -------------------------------------------------------------------------------------------------- access
    def row_of(self, rid: str, source: str | None = None) -> int | None:
        """The row number of id `rid` from `source` (a search result's pair); by id alone, its first row."""
        if source is not None and (rid, source) in self._rows:
            return self._rows[(rid, source)]
        return self._first.get(rid)

    def entry(self, row: int) -> MediaEntry:
        if not isinstance(row, int) or not 0 <= row < len(self.entries):
            raise MediaNotFoundError(f"no row {row!r} in this index ({len(self.entries)} rows)")
        return self.entries[row]

    def file(self, row: int, kind: str) -> Path:
        """The path of row `row`'s `kind` file, checked now: a regular file, the same one, inside the root."""
        entry = self.entry(row)
        if kind not in MEDIA_KINDS or kind not in entry.files:
            raise MediaNotFoundError(f"row {row} ({entry.id}) has no {kind!r} file")
        recorded = entry.files[kind]
        try:
            now = recorded.resolve(strict=True)
            mode = os.stat(now).st_mode
        except OSError as err:
            raise MediaNotFoundError(f"row {row} ({entry.id}): {kind} file is gone ({type(err).__name__})") from None
        inside = any(now.is_relative_to(root) for root in self.roots)
        if now != recorded or not inside or not stat.S_ISREG(mode):
            raise MediaNotFoundError(f"row {row} ({entry.id}): {kind} file changed since start-up; not served")
        return now

    def _cached(self, key: tuple[int, str], make) -> bytes:
        """`make()`'s bytes for `key`: from the cache, from the decode already running for it, or decoded now by
        the store's DECODE_WORKERS threads (only they hold decoded pixels, so memory does not grow with the number
        of request threads: each thread that allocates big buffers keeps its own malloc arena)."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            running = self._inflight.get(key)
            if running is None:
                running = self._inflight[key] = self._decoders.submit(self._decode, key, make)
        return running.result()  # the same bytes, or the same error, for every request that waited

    def _decode(self, key: tuple[int, str], make) -> bytes:
        with self._lock:
            self._active += 1
            self.decodes += 1
            self.peak_decodes = max(self.peak_decodes, self._active)
        try:
            data = make()
        except BaseException:
            with self._lock:
                self._inflight.pop(key, None)
            raise
        finally:
            with self._lock:
                self._active -= 1
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
            self._inflight.pop(key, None)
        return data

    def thumbnail(self, row: int) -> bytes:
        """A JPEG of row `row`'s image, at most THUMBNAIL_SIDE px a side, decoded under the model's budgets."""
        path = self.file(row, "image")

        def make() -> bytes:
            from modeling_e5omni.media_e5omni import load_image

            return _jpeg(load_image(str(path), 0, self._config()))

        return self._cached((row, "thumb"), make)

    def poster(self, row: int) -> bytes:
        """A JPEG of the middle sampled frame of row `row`'s video (the model's own frame sampling)."""
        path = self.file(row, "video")

        def make() -> bytes:
            from PIL import Image

            from modeling_e5omni.media_e5omni import load_video

            frames = load_video(str(path), 0, self._config())
            return _jpeg(Image.fromarray(frames[len(frames) // 2]))

        return self._cached((row, "poster"), make)

    def _config(self):
        if self.model_config is None:
            from modeling_e5omni.configuration_e5omni import E5OmniConfig

            self.model_config = E5OmniConfig()
        return self.model_config


def _jpeg(image) -> bytes:
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    if max(image.size) < 160:  # tiny corpus images: scale up so the card is not a speck (nearest keeps them crisp)
        from PIL import Image

        factor = max(1, 160 // max(image.size))
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()
