"""`e5omni index`: embed a corpus into sharded Parquet with a manifest and an errors file, resumably.

Layout of an index folder:

    manifest.json          format, model (path, fingerprint), the embedding contract, dimension, counts, the
                           finished shards (rewritten atomically after every shard)
    shards/00000.parquet   id, source, modalities, content_hash, vector (float32, unit norm) per embedded item
    errors.jsonl           one line per item that could not be embedded: id, source, error type, message, shard
    index.faiss            the search index over every shard (written by `CorpusIndex.build`)

Records are cut into shards of `shard_size` in the source's fixed order, so shard k always holds the same records:
a killed run resumed with `resume=True` skips the finished shards, drops the error lines of the unfinished one, and
redoes it, so every id ends up exactly once (in a shard or in errors.jsonl) with the same vector as an uninterrupted
run. A bad item never stops the run; `max_errors` stops it early (with what was finished kept).

Engines: `local` embeds the shards one after the other in this process (decoding in `num_workers` worker processes
when asked); `ray` (`e5omni.index.ray_engine`) runs the
same batches on Ray Data (decoding in CPU tasks, embedding in an actor pool) and finishes shards in any order, so
the finished shards are a set (listed in shard order) and errors.jsonl is put back in shard order at the end. Both
feed the same writer: the shard files, the manifest and errors.jsonl are the same whichever engine wrote them.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.index.sources import Record, count_source, iter_source

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
WARNINGS = "warnings.jsonl"
SHARDS = "shards"
MANIFEST_FORMAT = "e5omni-index/1"


class IndexBuildError(RuntimeError):
    """An index folder that cannot be written or resumed as asked (another model, another contract, not empty)."""


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


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise IndexBuildError(f"{out_dir} has no {MANIFEST}: not an e5omni index folder")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise IndexBuildError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(records)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _error_line(record: Record, error_type: str, message: str, shard: int) -> dict[str, Any]:
    return {"id": record.id, "source": record.source, "error": error_type, "message": message, "shard": shard}


def modality_names(item: Any) -> list[str]:
    """["text", "image"] for a text+image item (the data layer's check, so the same rules as encode)."""
    from e5omni.data.items import item_modalities
    from modeling_e5omni.configuration_e5omni import MODALITIES

    return [m for m, present in zip(MODALITIES, item_modalities(item), strict=True) if present]


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_shard(path: Path, rows: list[dict[str, Any]], dim: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.stack([r["vector"] for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    table = pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "source": pa.array([r["source"] for r in rows], pa.string()),
            "modalities": pa.array([r["modalities"] for r in rows], pa.list_(pa.string())),
            "content_hash": pa.array([r["content_hash"] for r in rows], pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        }
    )
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


ENGINES = ("local", "ray")


def _shard_entries(number: int, shard) -> tuple[list, list, list]:
    """(rows, error lines, warning lines) of shard `number` (a `batches.ShardBatches`): the same for every engine,
    so their files are identical. An embedded item that raised warnings (truncated audio or text, ...) has one
    warning line each."""
    from e5omni.data.items import content_hash

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
            rows.append(
                {
                    "id": record.id,
                    "source": record.source,
                    "modalities": modality_names(record.item),
                    "content_hash": content_hash(record.item),
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
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    if truncate_dim is not None and not 0 < truncate_dim <= model.config.hidden_size:
        raise ValueError(f"truncate_dim must be in [1, {model.config.hidden_size}], got {truncate_dim}")
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
    out = Path(out_dir)
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    wanted = {
        "format": MANIFEST_FORMAT,
        "model": _model_entry(model, model_path),
        "contract": contract(model, truncate_dim),
    }
    wanted["shard_size"] = shard_size
    finished: list[dict[str, Any]] = []
    if (out / MANIFEST).exists():
        if not resume:
            raise IndexBuildError(f"{out} already holds an index; pass resume=True (--resume) to continue it")
        old = read_manifest(out)
        for key in ("contract", "shard_size"):
            if old[key] != wanted[key]:
                raise IndexBuildError(
                    f"cannot resume {out}: its {key} {old[key]} differs from this run's {wanted[key]}"
                )
        if old["model"]["fingerprint"] != wanted["model"]["fingerprint"]:
            raise IndexBuildError(f"cannot resume {out}: it was built with another model ({old['model']['path']})")
        finished = old["shards"]
    elif any(p for p in out.iterdir() if p.name != SHARDS) or any((out / SHARDS).iterdir()):
        raise IndexBuildError(f"{out} is not empty and holds no manifest: index into a fresh folder")
    # the ray engine finishes shards out of order: the finished ones are a set, listed in shard order
    done = {_shard_number(s) for s in finished}
    # error and warning lines of the shards that finished stay; those of an interrupted shard are dropped (redone)
    kept = {name: _keep_lines(out / name, done) for name in (ERRORS, WARNINGS)}
    summary = BuildSummary(out, embedded=sum(s["rows"] for s in finished), failed=len(kept[ERRORS]))
    summary.warned = len({entry["id"] for entry in kept[WARNINGS]})
    summary.errors_by_type.update(entry["error"] for entry in kept[ERRORS])

    is_path = isinstance(source, (str, os.PathLike))
    records = iter_source(source, media_root) if is_path else iter(source)
    # a cheap first pass (file names or rows, nothing decoded) gives the progress bar its total and ETA
    total = count_source(source, media_root) if is_path and show_progress_bar else None
    dim = wanted["contract"]["dimension"]
    start = time.perf_counter()
    manifest = {**wanted, "shards": finished, "finished": False, "engine": engine}
    if is_path:  # what `e5omni app DIR` shows the media of (an iterable of records has no such source)
        manifest["source"] = {
            "path": source if str(source).startswith("hub:") else str(Path(source).resolve()),
            "media_root": None if media_root is None else str(Path(media_root).resolve()),
        }
    bar = tqdm(total=total, unit="item", desc=f"index ({engine})", disable=not show_progress_bar, dynamic_ncols=True)

    def todo() -> Iterator[tuple[int, list[Record]]]:
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
            address=ray_address,
            num_actors=num_actors,
        )
    else:
        results = _local_engine(model, todo(), batch_size, truncate_dim, num_workers)
    with bar:
        try:
            for number, shard in results:
                rows, errors, warned = _shard_entries(number, shard)
                name = f"{number:05d}.parquet"
                _write_shard(out / SHARDS / name, rows, dim)
                for file, entries in ((ERRORS, errors), (WARNINGS, warned)):
                    with open(out / file, "a") as handle:  # before the manifest names the shard: a crash redoes it
                        for entry in entries:
                            handle.write(json.dumps(entry) + "\n")
                finished.append({"name": name, "rows": len(rows), "errors": len(errors)})
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
            results.close()  # the ray engine stops its pipeline (and the local cluster it started)
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


def _keep_lines(path: Path, done: set[int]) -> list[dict[str, Any]]:
    """Rewrite errors.jsonl / warnings.jsonl with only the lines of the shards in `done`; those lines, parsed."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [(line, entry) for line in lines if line.strip() and (entry := json.loads(line))["shard"] in done]
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
