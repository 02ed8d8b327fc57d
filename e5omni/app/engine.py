"""The page's search: one query (text, instruction, uploads, or a result clicked) -> the rows `e5omni search` gives.

`SearchEngine.search(query, k, modalities)` builds the query item exactly as `e5omni search` does (text alone is a
string, several parts one dict, the instruction passed apart), checks the uploads against the limits below, and calls
`CorpusIndex.search(..., calibrated=True)`: the page shows the same ids, in the same order, with the same scores.
A bad upload (corrupt, too large, too long, a format outside the allow-list) becomes an `Outcome` with the typed
error's name and its reason (the upload named by its file name, not the server's temporary path), never a traceback.

Upload limits, from the model's media budgets (`UploadLimits.from_config`):

    image   at most 4 * max_decode_pixels bytes (an uncompressed RGBA bitmap of the largest decodable size); the
            header's pixel count is then checked by the model's own `load_image` before any pixel is decoded
    audio   at most max_audio_seconds long (what the model hears; read from the header), and 64 MiB
    video   at most max_frames / fps seconds long (the span the model samples at its full rate), and 256 MiB
    text    text and instruction at most TEXT_CHARS_PER_TOKEN * max_length characters each (the model reads
            max_length tokens; a longer query is refused before it is tokenised)

A modality filter keeps the results that contain any of the chosen modalities. It searches deeper (k, 4k, 16k, ...
rows) until k of them pass or the whole index was ranked, and each result keeps its rank in the unfiltered ranking,
so a filtered page is exactly the matching rows of `e5omni search -k N` in order.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e5omni.app.media import MEDIA_KINDS, MediaStore

AUDIO_BYTES = 64 << 20
VIDEO_BYTES = 256 << 20
#: Characters of query text per token of the model's max_length (byte-level BPE tokens average under 5 characters).
TEXT_CHARS_PER_TOKEN = 8


class UploadError(ValueError):
    """An upload refused by the page before it reaches the model (too large, too long). `reason` is the message."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class UploadTooLargeError(UploadError):
    """An upload over the byte limit of its kind."""


class UploadTooLongError(UploadError):
    """An audio or video upload longer than the model's budget."""


class EmptyQueryError(UploadError):
    """A search with nothing to search for."""


class QueryTooLongError(UploadError):
    """Query text or instruction longer than the model can read."""


@dataclass(frozen=True)
class UploadLimits:
    image_bytes: int
    audio_bytes: int
    audio_seconds: float
    video_bytes: int
    video_seconds: float
    text_chars: int = TEXT_CHARS_PER_TOKEN * 512

    @classmethod
    def from_config(cls, config: Any) -> UploadLimits:
        return cls(
            image_bytes=4 * int(config.max_decode_pixels),
            audio_bytes=AUDIO_BYTES,
            audio_seconds=float(config.max_audio_seconds),
            video_bytes=VIDEO_BYTES,
            video_seconds=float(config.max_frames) / float(config.fps),
            text_chars=TEXT_CHARS_PER_TOKEN * int(getattr(config, "max_length", 512)),
        )

    @property
    def max_file_bytes(self) -> int:
        """The upload size the server accepts at all (gradio refuses larger uploads before they are stored)."""
        return max(self.image_bytes, self.audio_bytes, self.video_bytes)


@dataclass
class Query:
    """What the user asked: any of text / instruction / image / audio / video (paths), or a result's row."""

    text: str | None = None
    instruction: str | None = None
    image: str | None = None
    audio: str | None = None
    video: str | None = None
    row: int | None = None  # "more like this": the index row whose item is the query

    @property
    def modalities(self) -> list[str]:
        present = {"text": bool(self.text and self.text.strip())}
        present.update({kind: getattr(self, kind) is not None for kind in MEDIA_KINDS})
        return [m for m in ("text", *MEDIA_KINDS) if present[m]]


@dataclass
class Outcome:
    """One search as the page shows it."""

    results: list[Any] = field(default_factory=list)  # e5omni.index.SearchResult
    query_modalities: list[str] = field(default_factory=list)
    query_label: str = ""
    seconds: float = 0.0
    searched: int = 0  # rows ranked (k, or more when a filter searched deeper)
    error: str | None = None  # "MediaDecodeError: image photo.png is truncated or corrupt"


def _duration(path: str, kind: str) -> float | None:
    """Seconds of an audio / video file from its header, or None when the header cannot tell (decoding decides)."""
    try:
        if kind == "audio":
            try:
                import soundfile

                info = soundfile.info(path)
                return float(info.frames) / float(info.samplerate)
            except Exception:
                pass
        import av

        with av.open(path) as container:
            if container.duration is not None:
                return container.duration / 1_000_000
            stream = (container.streams.audio or container.streams.video or [None])[0]
            if stream is not None and stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
    except Exception:  # unreadable header: the model's decoder reports it with its typed error
        return None
    return None


def _input_error(err: BaseException) -> bool:
    """An item error of the model: E5OmniInputError of this package or of a checkpoint's remote code."""
    return isinstance(err, ValueError) and any(c.__name__ == "E5OmniInputError" for c in type(err).__mro__)


class SearchEngine:
    """The model, the index and its media: what the page (and the Space) searches with."""

    def __init__(self, model: Any, index: Any, store: MediaStore, limits: UploadLimits | None = None):
        self.model, self.index, self.store = model, index, store
        self.limits = limits or UploadLimits.from_config(model.config)
        index.check_model(model)  # a model the index was not built with fails at start-up, not at the first query

    @property
    def size(self) -> int:
        return int(self.index.index.ntotal)

    def modality_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("text", *MEDIA_KINDS), 0)
        for row in self.index.rows:
            for m in row["modalities"]:
                counts[m] = counts.get(m, 0) + 1
        return counts

    # ------------------------------------------------------------------------------------------------- query
    def check_upload(self, kind: str, path: str) -> None:
        """Size and duration limits of one upload (the model's decoder checks the rest)."""
        limit = {"image": self.limits.image_bytes, "audio": self.limits.audio_bytes, "video": self.limits.video_bytes}
        size = os.path.getsize(path)
        name = Path(path).name
        if size > limit[kind]:
            raise UploadTooLargeError(
                f"{kind} {name} is {size / 2**20:.1f} MiB; the limit is {limit[kind] / 2**20:.0f} MiB"
            )
        if kind in ("audio", "video"):
            seconds = _duration(path, kind)
            most = self.limits.audio_seconds if kind == "audio" else self.limits.video_seconds
            if seconds is not None and seconds > most + 0.05:
                raise UploadTooLongError(
                    f"{kind} {name} is {seconds:.1f} s long; this model takes at most {most:g} s of {kind}: trim it"
                )

    def item_of(self, query: Query) -> tuple[Any, str | None, list[str]]:
        """(item, instruction, modalities) as `e5omni search` builds them from the same options."""
        if query.row is not None:
            entry = self.store.entry(query.row)
            if not entry.available:
                raise EmptyQueryError(f"{entry.id} is not in the corpus source any more: nothing to search with")
            item = entry.query_item()
            mods = ["text"] if isinstance(item, str) else [m for m in ("text", *MEDIA_KINDS) if m in item]
            return item, None, mods
        for name in ("text", "instruction"):
            value = getattr(query, name)
            if value is not None and len(value) > self.limits.text_chars:
                raise QueryTooLongError(
                    f"the {name} is {len(value):,} characters; this model reads at most "
                    f"{self.limits.text_chars // TEXT_CHARS_PER_TOKEN} tokens, so the page takes at most "
                    f"{self.limits.text_chars:,} characters: shorten it"
                )
        parts: dict[str, Any] = {}
        if query.text is not None and query.text.strip():
            parts["text"] = query.text
        for kind in MEDIA_KINDS:
            path = getattr(query, kind)
            if path is not None:
                self.check_upload(kind, path)
                parts[kind] = path
        if not parts:
            raise EmptyQueryError("type some text or add an image, a sound or a clip to search with")
        instruction = query.instruction if query.instruction and query.instruction.strip() else None
        item = parts["text"] if list(parts) == ["text"] else parts
        return item, instruction, list(parts)

    def _label(self, query: Query) -> str:
        if query.row is not None:
            return f"more like {self.store.entry(query.row).id}"
        names = [Path(getattr(query, k)).name for k in MEDIA_KINDS if getattr(query, k) is not None]
        text = (query.text or "").strip()
        shown = [f"“{text[:60]}{'…' if len(text) > 60 else ''}”"] if text else []
        return " + ".join(shown + names)

    def search(self, query: Query, k: int = 12, modalities: list[str] | None = None) -> Outcome:
        """Search; never raises for a bad query (the outcome carries the message)."""
        start = time.perf_counter()
        outcome = Outcome(query_modalities=query.modalities)
        try:
            outcome.query_label = self._label(query)
            item, instruction, outcome.query_modalities = self.item_of(query)
            outcome.results, outcome.searched = self._ranked(item, instruction, k, modalities)
        except (UploadError, OSError) as err:
            outcome.error = f"{type(err).__name__}: {getattr(err, 'reason', None) or err}"
        except Exception as err:
            if not _input_error(err):
                raise
            outcome.error = f"{type(err).__name__}: {self._readable(getattr(err, 'reason', str(err)), query)}"
        outcome.seconds = time.perf_counter() - start
        return outcome

    @staticmethod
    def _readable(reason: str, query: Query) -> str:
        """The reason with each upload's temporary server path replaced by its file name."""
        for kind in MEDIA_KINDS:
            path = getattr(query, kind)
            if path:
                reason = reason.replace(str(path), Path(path).name)
        return reason

    def _ranked(self, item: Any, instruction: str | None, k: int, modalities: list[str] | None):
        wanted = set(modalities or ())
        if not wanted or wanted >= {"text", *MEDIA_KINDS}:
            return self.index.search(self.model, item, k=k, instruction=instruction, calibrated=True), k
        depth = max(1, min(4 * k, self.size))
        while True:
            ranked = self.index.search(self.model, item, k=depth, instruction=instruction, calibrated=True)
            kept = [r for r in ranked if wanted & set(r.modalities)]
            if len(kept) >= k or depth >= self.size:
                return kept[:k], depth
            depth = min(depth * 4, self.size)


def default_k(size: int) -> int:
    return max(1, min(12, size))


def slider_max(size: int) -> int:
    return max(1, min(100, size, 10 * math.ceil(size / 10)))
