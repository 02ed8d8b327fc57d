"""`e5omni index`: embed a corpus into sharded Parquet with a manifest and an errors file, resumably.

Layout of an index folder:

    manifest.json          format, model (path, fingerprint), the embedding contract, dimension, counts, the
                           finished shards (rewritten atomically after every shard)
    shards/00000.parquet   id, source, modalities, content_hash, vector (float32, unit norm) per embedded item
    errors.jsonl           one line per item that could not be embedded: id, source, error type, message, shard
    source.jsonl           the source's records as the run found them: id and stamp (a file's size:mtime, a row's
                           hash), in order; with the manifest's `source.fingerprint` it tells a resume what changed
    index.faiss            the search index over every shard (written by `CorpusIndex.build`)

The manifest holds the sha256 of every shard (and `CorpusIndex.save` those of the search files): `verify_index`
(`e5omni index --verify DIR`, `e5omni search --verify`) checks them.

Records are cut into shards of `shard_size` in the source's fixed order, so shard k always holds the same records:
a killed run resumed with `resume=True` skips the finished shards, drops the error lines of the unfinished one, and
redoes it, so every id ends up exactly once (in a shard or in errors.jsonl) with the same vector as an uninterrupted
run. A bad item never stops the run; `max_errors` stops it early (with what was finished kept).

A resume first compares the source's fingerprint (`sources.survey_source`) with the one the manifest holds: an edited
source (rows inserted or deleted shift every later shard) is refused with `SourceChangedError`, which says what
changed. `rebuild_changed=True` (`--resume --rebuild-changed`) then resumes by id instead of by shard position: the
finished shards keep the rows whose id and stamp are still in the source, lose the deleted and modified ones, and
every other record of the source (new, modified, never reached) is embedded into new shards after them. The manifest
then says `"layout": "by-id"`, and later resumes of that folder work by id too.

Engines: `local` embeds the shards one after the other in this process (decoding in `num_workers` worker processes
when asked); `ray` (`e5omni.index.ray_engine`) runs the
same batches on Ray Data (decoding in CPU tasks, embedding in an actor pool) and finishes shards in any order, so
the finished shards are a set (listed in shard order) and errors.jsonl is put back in shard order at the end. Both
feed the same writer: the shard files, the manifest and errors.jsonl are the same whichever engine wrote them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.index.errors import IndexBuildError, IndexDamagedError, SourceChangedError  # defined there, importable here
from e5omni.index.sources import Record, iter_source

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
SOURCE_LIST = "source.jsonl"
WARNINGS = "warnings.jsonl"
SHARDS = "shards"
MANIFEST_FORMAT = "e5omni-index/1"


@dataclass
class BuildSummary:
    out_dir: Path
    embedded: int = 0
    failed: int = 0
    warned: int = 0
    shards: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    errors_by_type: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "embedded": self.embedded,
            "failed": self.failed,
            "warned": self.warned,
            "shards": self.shards,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 2),
            "errors_by_type": dict(sorted(self.errors_by_type.items())),
        }


def contract(model: Any, truncate_dim: int | None) -> dict[str, Any]:
    """What defines the vectors of an index: a search must embed its queries the same way."""
    config = model.config
    dim = int(truncate_dim or config.hidden_size)
    return {
        "dimension": dim,
        "truncate_dim": truncate_dim,
        "hidden_size": int(config.hidden_size),
        "normalize": bool(config.normalize),
        "whitening": bool(config.whitening),
        "query_prompt": config.query_prompt,
        "document_prompt": config.document_prompt,
        "modalities": list(config.modalities),
    }


def _model_entry(model: Any, model_path: str | None) -> dict[str, Any]:
    from e5omni.evaluation.embeddings import model_fingerprint

    return {
        "path": model_path or getattr(model.config, "_name_or_path", None) or None,
        "fingerprint": model_fingerprint(model),
        "revision": getattr(model.config, "_commit_hash", None),
    }


#: Keys every manifest has, and what they are.
MANIFEST_KEYS = {"model": dict, "contract": dict, "shards": list, "shard_size": int}


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise IndexBuildError(f"{out_dir} has no {MANIFEST}: not an e5omni index folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexDamagedError(f"{path}: not valid JSON ({err}); the index folder is damaged") from err
    if not isinstance(manifest, dict):
        raise IndexDamagedError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise IndexBuildError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            got = "missing" if key not in manifest else f"a {type(manifest[key]).__name__}"
            raise IndexDamagedError(
                f"{path}: key {key!r} is {got}, expected a {kind.__name__}; the manifest is damaged"
            )
    for number, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict) or not isinstance(shard.get("name"), str) or "/" in shard["name"]:
            raise IndexDamagedError(f"{path}: shards[{number}] is {shard!r}, expected {{'name': 'NNNNN.parquet', ...}}")
    for key in ("dimension", "hidden_size"):
        if not isinstance(manifest["contract"].get(key), int):
            raise IndexDamagedError(f"{path}: contract.{key} is missing or not an integer; the manifest is damaged")
    return manifest


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(records)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _error_line(record: Record, error_type: str, message: str, shard: int) -> dict[str, Any]:
    line = {"id": record.id, "source": record.source, "error": error_type, "message": message, "shard": shard}
    line["stamp"] = record.stamp
    if record.raw_path is not None:
        line["raw_path"] = record.raw_path
    return line


def modality_names(item: Any) -> list[str]:
    """["text", "image"] for a text+image item (the data layer's check, so the same rules as encode)."""
    from e5omni.data.items import item_modalities
    from modeling_e5omni.configuration_e5omni import MODALITIES

    return [m for m, present in zip(MODALITIES, item_modalities(item), strict=True) if present]


def _mask_of(names: list[str]) -> list[bool]:
    from modeling_e5omni.configuration_e5omni import MODALITIES

    return [m in names for m in MODALITIES]


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_shard(path: Path, rows: list[dict[str, Any]], dim: int) -> str:
    """Write one shard atomically; its sha256."""
    import pyarrow as pa

    vectors = np.stack([r["vector"] for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    table = pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "source": pa.array([r["source"] for r in rows], pa.string()),
            "modalities": pa.array([r["modalities"] for r in rows], pa.list_(pa.string())),
            # the processor's modality mask (text, image, audio, video) after decoding: a video with its audio track
            # is audio + video here; calibrated search scores use it (the training logits do)
            "modality_mask": pa.array([r["modality_mask"] for r in rows], pa.list_(pa.bool_())),
            "content_hash": pa.array([r["content_hash"] for r in rows], pa.int64()),
            "stamp": pa.array([r["stamp"] for r in rows], pa.string()),
            "raw_path": pa.array([r["raw_path"] for r in rows], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        }
    )
    return _write_table(path, table)


def _write_table(path: Path, table) -> str:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    return digest


def _content_hash(item: Any) -> int:
    """content_hash of an item; a path that is not UTF-8 (surrogate-escaped) hashes by its readable form."""
    from e5omni.data.items import content_hash
    from e5omni.index.sources import readable

    try:
        return content_hash(item)
    except UnicodeEncodeError:
        if isinstance(item, dict):
            item = {k: readable(v) if isinstance(v, str) else v for k, v in item.items()}
        return content_hash(item)


ENGINES = ("local", "ray")


def _shard_entries(number: int, shard) -> tuple[list, list, list]:
    """(rows, error lines, warning lines) of shard `number` (a `batches.ShardBatches`): the same for every engine,
    so their files are identical. An embedded item that raised warnings (truncated audio or text, ...) has one
    warning line each."""
    rows, errors, warned = [], [], []
    for record in shard.chunk:
        if record.error is not None:
            errors.append(_error_line(record, *record.error, number))
    for i, record in enumerate(shard.good):
        if i in shard.failures:
            errors.append(_error_line(record, *shard.failures[i], number))
        else:
            for message in shard.notes.get(i, ()):
                warned.append({"id": record.id, "source": record.source, "warning": message, "shard": number})
            names = modality_names(record.item)
            mask = shard.masks.get(i)
            rows.append(
                {
                    "id": record.id,
                    "source": record.source,
                    "modalities": names,
                    "modality_mask": list(mask) if mask is not None else _mask_of(names),
                    "content_hash": _content_hash(record.item),
                    "stamp": record.stamp,
                    "raw_path": record.raw_path,
                    "vector": shard.vectors[i],
                }
            )
    return rows, errors, warned


def _local_engine(
    model, chunks: Iterator[tuple[int, list[Record]]], batch_size: int, truncate_dim: int | None, num_workers: int
):
    """(number, `batches.ShardBatches`) per shard, embedded in this process (decoded in `num_workers` worker
    processes when > 0), in shard order."""
    from e5omni.index.batches import embed_chunk

    was_training = model.training
    model.eval()
    try:
        for number, chunk in chunks:
            yield number, embed_chunk(model, chunk, batch_size, truncate_dim, num_workers)
    finally:
        model.train(was_training)


def _shard_number(entry: dict[str, Any]) -> int:
    return int(entry["name"].split(".")[0])


def build_corpus(
    model: Any,
    source: str | os.PathLike | Iterable[Record],
    out_dir: str | os.PathLike,
    *,
    model_path: str | None = None,
    media_root: str | os.PathLike | None = None,
    batch_size: int = 32,
    shard_size: int = 1024,
    truncate_dim: int | None = None,
    resume: bool = False,
    rebuild_changed: bool = False,
    max_errors: int | None = None,
    show_progress_bar: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
    num_actors: int | None = None,
    num_workers: int = 0,
) -> BuildSummary:
    """Embed every record of `source` into `out_dir` (see the module docstring); returns the summary.

    `engine="ray"` runs the decoding and the embedding on Ray Data (`e5omni.index.ray_engine`; `model_path` is then
    required: its actors load the model from there), on the cluster at `ray_address` or a local one, with
    `num_actors` embedding actors (default: one per GPU of the cluster, or one). The shards, their vectors and
    errors.jsonl are the same as the local engine's, and a run of one engine can be resumed by the other.
    `num_workers` > 0 (local engine) decodes media and runs the processor in that many worker processes, overlapped
    with the forward (`e5omni.index.batches.embed_chunk`); the vectors are the same.
    `resume=True` continues an unfinished index of the same source; `rebuild_changed=True` (with it) brings an index
    of a source edited since up to date by id (the module docstring). Nothing is written to `out_dir` before every
    check has passed (a Ray cluster that cannot be reached leaves it as it was).
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    if truncate_dim is not None and not 0 < truncate_dim <= model.config.hidden_size:
        raise ValueError(f"truncate_dim must be in [1, {model.config.hidden_size}], got {truncate_dim}")
    check = getattr(model.config, "untrained_truncation", None)  # remote-code configs of older repos lack it
    untrained = check(truncate_dim) if check is not None and truncate_dim is not None else None
    if untrained:
        warnings.warn(f"e5omni index: {untrained}", UserWarning, stacklevel=2)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if engine == "ray" and not model_path:
        raise ValueError("engine='ray' needs model_path: its actors load the model from that folder or Hub id")
    if num_actors is not None and num_actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {num_actors}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if engine == "ray" and num_workers:
        raise ValueError("num_workers is for the local engine: the ray engine decodes in Ray tasks (one per CPU)")
    if max_errors is not None and (isinstance(max_errors, bool) or not isinstance(max_errors, int) or max_errors < 0):
        raise ValueError(f"max_errors must be an integer >= 0 (stop once more than N items failed), got {max_errors!r}")
    if rebuild_changed and not resume:
        raise ValueError("rebuild_changed (--rebuild-changed) goes with resume (--resume): it updates an index")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IndexBuildError(f"{out} is a file, not an index folder")
    wanted = {
        "format": MANIFEST_FORMAT,
        "model": _model_entry(model, model_path),
        "contract": contract(model, truncate_dim),
    }
    wanted["shard_size"] = shard_size
    is_path = isinstance(source, (str, os.PathLike))
    # the source's fingerprint and record list (a listing for folders, row hashes for tables): nothing decoded
    fingerprint, entries = (None, None)
    if is_path:
        from e5omni.index.sources import survey_source

        fingerprint, entries = survey_source(source, media_root)
    finished: list[dict[str, Any]] = []
    old: dict[str, Any] | None = None
    if (out / MANIFEST).exists():
        if not resume:
            raise IndexBuildError(f"{out} already holds an index; pass resume=True (--resume) to continue it")
        old = read_manifest(out)
        for key in ("contract", "shard_size"):
            if old[key] != wanted[key]:
                raise IndexBuildError(
                    f"cannot resume {out}: its {key} {old[key]} differs from this run's {wanted[key]}"
                )
        if old["model"].get("fingerprint") != wanted["model"]["fingerprint"]:
            raise IndexBuildError(f"cannot resume {out}: it was built with another model ({old['model'].get('path')})")
        finished = old["shards"]
    elif out.is_dir() and any(p for p in out.iterdir() if p.name != SHARDS or any(p.iterdir())):
        raise IndexBuildError(f"{out} is not empty and holds no manifest: index into a fresh folder")
    changed = None
    if old is not None and fingerprint is not None:
        changed = _source_change(out, old, source, fingerprint, entries)
        if changed is not None and not rebuild_changed:
            raise SourceChangedError(
                f"cannot resume {out}: {changed}. Resuming by shard would duplicate, miss or keep deleted items. "
                "Run again with --resume --rebuild-changed (rebuild_changed=True) to embed only what changed and "
                "drop what was deleted, or index into a fresh folder."
            )
    by_id = rebuild_changed or (old is not None and old.get("layout") == "by-id")
    started_ray = False
    if engine == "ray":  # reach the cluster before anything is written: a bad --ray-address leaves --out untouched
        from e5omni.index.ray_engine import connect

        started_ray = connect(ray_address)
    plan = _Plan(out, wanted, finished, fingerprint, entries, by_id, is_path)
    options = {"model_path": model_path, "media_root": media_root, "batch_size": batch_size, "shard_size": shard_size}
    options.update(truncate_dim=truncate_dim, max_errors=max_errors, show_progress_bar=show_progress_bar)
    options.update(engine=engine, num_actors=num_actors, num_workers=num_workers)
    try:
        return _build(model, source, plan, **options)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


@dataclass
class _Plan:
    """What the checks of `build_corpus` established, for `_build` to carry out."""

    out: Path
    wanted: dict[str, Any]
    finished: list[dict[str, Any]]
    fingerprint: dict[str, Any] | None
    entries: list[tuple[str, str | None]] | None
    by_id: bool
    is_path: bool


def _build(
    model,
    source,
    plan: _Plan,
    *,
    model_path,
    media_root,
    batch_size,
    shard_size,
    truncate_dim,
    max_errors,
    show_progress_bar,
    engine,
    num_actors,
    num_workers,
) -> BuildSummary:
    """The run itself (`build_corpus` after its checks): the only place that writes into the index folder."""
    from tqdm.auto import tqdm

    out, wanted, finished, fingerprint, entries = plan.out, plan.wanted, plan.finished, plan.fingerprint, plan.entries
    by_id, is_path = plan.by_id, plan.is_path
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    # the ray engine finishes shards out of order: the finished ones are a set, listed in shard order
    done = {_shard_number(s) for s in finished}
    keep_ids: set[str] | None = None
    keep = {ERRORS: None, WARNINGS: None}
    if by_id:  # resume by id: finished shards keep the rows whose (id, stamp) the source still has
        current = dict(entries) if entries is not None else {r.id: r.stamp for r in iter_source(source, media_root)}
        keep_ids = _prune_by_id(out, finished, current)
        keep[ERRORS] = lambda e: e.get("stamp") is not None and current.get(e["id"], ...) == e["stamp"]
        keep[WARNINGS] = lambda e: e["id"] in keep_ids
    # error and warning lines of the shards that finished stay; those of an interrupted shard are dropped (redone)
    kept = {name: _keep_lines(out / name, done, keep[name]) for name in (ERRORS, WARNINGS)}
    summary = BuildSummary(out, embedded=sum(s["rows"] for s in finished), failed=len(kept[ERRORS]))
    summary.warned = len({entry["id"] for entry in kept[WARNINGS]})
    summary.errors_by_type.update(entry["error"] for entry in kept[ERRORS])
    if keep_ids is not None:
        keep_ids |= {entry["id"] for entry in kept[ERRORS]}

    records = iter_source(source, media_root) if is_path else iter(source)
    total = fingerprint["records"] if fingerprint is not None and show_progress_bar else None
    dim = wanted["contract"]["dimension"]
    start = time.perf_counter()
    manifest = {**wanted, "shards": finished, "finished": False, "engine": engine}
    if by_id:
        manifest["layout"] = "by-id"
    if is_path:  # what `e5omni app DIR` shows the media of (an iterable of records has no such source)
        manifest["source"] = {
            "path": source if str(source).startswith("hub:") else str(Path(source).resolve()),
            "media_root": None if media_root is None else str(Path(media_root).resolve()),
            "fingerprint": fingerprint,
        }
        if entries is not None:
            _write_source_list(out / SOURCE_LIST, entries)
    write_json_atomic(out / MANIFEST, manifest)  # the source's fingerprint is known from the first shard on
    bar = tqdm(total=total, unit="item", desc=f"index ({engine})", disable=not show_progress_bar, dynamic_ncols=True)

    def todo() -> Iterator[tuple[int, list[Record]]]:
        if keep_ids is not None:  # by id: what is not kept goes into new shards after the last finished one
            first = max(done, default=-1) + 1
            fresh = (r for r in records if r.id not in keep_ids or bar.update(1))
            for offset, chunk in enumerate(_chunks(fresh, shard_size)):
                yield first + offset, chunk
            return
        for number, chunk in enumerate(_chunks(records, shard_size)):
            if number in done:
                bar.update(len(chunk))
                continue
            yield number, chunk

    if engine == "ray":
        from e5omni.index.ray_engine import ray_engine

        results = ray_engine(
            model_path,
            todo(),
            batch_size=batch_size,
            truncate_dim=truncate_dim,
            fingerprint=wanted["model"]["fingerprint"],
            num_actors=num_actors,
        )
    else:
        results = _local_engine(model, todo(), batch_size, truncate_dim, num_workers)
    with bar:
        try:
            for number, shard in results:
                rows, errors, warned = _shard_entries(number, shard)
                name = f"{number:05d}.parquet"
                digest = _write_shard(out / SHARDS / name, rows, dim)
                for file, entries_ in ((ERRORS, errors), (WARNINGS, warned)):
                    with open(out / file, "a") as handle:  # before the manifest names the shard: a crash redoes it
                        for entry in entries_:
                            handle.write(json.dumps(entry) + "\n")
                finished.append({"name": name, "rows": len(rows), "errors": len(errors), "sha256": digest})
                finished.sort(key=_shard_number)
                done.add(number)
                write_json_atomic(out / MANIFEST, manifest)
                summary.embedded += len(rows)
                summary.failed += len(errors)
                summary.warned += len({entry["id"] for entry in warned})
                summary.errors_by_type.update(entry["error"] for entry in errors)
                bar.update(len(shard.chunk))
                bar.set_postfix(failed=summary.failed)
                if max_errors is not None and summary.failed > max_errors:
                    summary.stopped_early = True
                    break
        finally:
            results.close()  # the ray engine stops its pipeline
    for name in (ERRORS, WARNINGS):
        _sort_by_shard(out / name)
    summary.shards = len(finished)
    summary.seconds = time.perf_counter() - start
    manifest["finished"] = not summary.stopped_early
    manifest["counts"] = {
        "embedded": summary.embedded,
        "failed": summary.failed,
        "warned": summary.warned,
        "shards": summary.shards,
    }
    write_json_atomic(out / MANIFEST, manifest)
    return summary


def _write_source_list(path: Path, entries: list[tuple[str, str | None]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        for rid, stamp in entries:
            handle.write(json.dumps({"id": rid, "stamp": stamp}) + "\n")
    os.replace(tmp, path)


def _read_source_list(path: Path) -> list[tuple[str, str | None]] | None:
    if not path.is_file():
        return None
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return None  # damaged: the change is then described by the digests only
        out.append((entry["id"], entry["stamp"]))
    return out


def _examples(ids: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _source_change(out: Path, old: dict, source, fingerprint: dict, entries) -> str | None:
    """None when the source is the one the index was started on; else what changed, in words."""
    recorded = old.get("source") or {}
    before = recorded.get("fingerprint")
    path = source if str(source).startswith("hub:") else str(Path(source).resolve())
    if recorded.get("path") not in (None, path):
        return f"it was built from {recorded['path']}, this run's source is {path}"
    if before is None:  # an index written before fingerprints: nothing to compare with
        return None
    if before.get("digest") == fingerprint["digest"]:
        return None
    old_entries = _read_source_list(out / SOURCE_LIST)
    if entries is None or old_entries is None:
        return (
            f"its source changed since the run started (fingerprint {str(before.get('digest'))[:12]} -> "
            f"{fingerprint['digest'][:12]}, {before.get('records')} -> {fingerprint['records']} records)"
        )
    was, now = dict(old_entries), dict(entries)
    added = [i for i, _ in entries if i not in was]
    removed = [i for i, _ in old_entries if i not in now]
    modified = [i for i, s in entries if i in was and was[i] != s]
    parts = []
    for label, ids in (("added", added), ("removed", removed), ("modified", modified)):
        if ids:
            parts.append(f"{len(ids)} {label} ({_examples(ids)})")
    if not parts:
        return "its source changed since the run started: the same records in another order"
    return "its source changed since the run started: " + ", ".join(parts)


def _prune_by_id(out: Path, finished: list[dict], current: dict[str, str | None]) -> set[str]:
    """Keep, in each finished shard, the rows whose id the source still has with the same stamp (rewriting the shard
    without the others: deleted or modified); the ids kept."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    keep: set[str] = set()
    for entry in finished:
        path = out / SHARDS / entry["name"]
        table = pq.read_table(path)
        ids = table.column("id").to_pylist()
        stamps = table.column("stamp").to_pylist() if "stamp" in table.column_names else [None] * len(ids)
        mask = [s is not None and i in current and current[i] == s for i, s in zip(ids, stamps, strict=True)]
        keep.update(i for i, m in zip(ids, mask, strict=True) if m)
        if not all(mask):
            entry["sha256"] = _write_table(path, table.filter(pc.equal(pa.array(mask), True)))
            entry["rows"] = sum(mask)
    return keep


def _keep_lines(path: Path, done: set[int], keep: Any = None) -> list[dict[str, Any]]:
    """Rewrite errors.jsonl / warnings.jsonl with only the lines of the shards in `done` (and, resuming by id, of the
    records `keep(line)` says are unchanged); those lines, parsed. A last line cut short (a kill while it was appended, before the
    manifest named its shard) is dropped; a damaged line before it is an IndexDamagedError naming it."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n") if path.exists() else []
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            shard = entry["shard"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            if number == len(lines) or all(not rest.strip() for rest in lines[number:]):
                break  # torn by a kill: its shard was never finished
            raise IndexDamagedError(f"{path} line {number}: not an error line ({err}); the file is damaged") from err
        if shard not in done:
            continue
        if keep is not None and not keep(entry):
            continue
        kept.append((line, entry))
    path.write_text("".join(line + "\n" for line, _ in kept))
    return [entry for _, entry in kept]


def _sort_by_shard(path: Path) -> None:
    """errors.jsonl / warnings.jsonl in shard order (stable within a shard), as an uninterrupted local run writes
    them."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    ordered = sorted(lines, key=lambda line: json.loads(line)["shard"])
    if ordered != lines:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in ordered))
        os.replace(tmp, path)
