"""`CorpusIndex`: a faiss index over an `e5omni index` folder; build, load, search, add.

Kinds (`--index`), with what benchmarks/search_ann.py measured on 200k clustered vectors of D = 3584 (the 7B's
dimension; docs/benchmarks.md):

    flat    exact inner product (`IndexFlatIP`); on unit vectors that is cosine. The default, and right up to a few
            hundred thousand vectors on CPU (BLAS answers a batch of queries at once).
    ivf     `IndexIVFFlat` (inner product): nlist = 4 * sqrt(N) lists (at most N / 39, faiss' training minimum),
            nprobe = 16 at search; full vectors, so the flat index's memory; queries scan ~16 / nlist of the corpus.
            The large-corpus choice when the vectors fit in memory.
    ivfpq   `IndexIVFPQ` (inner product), the same lists, m = D / 8 sub-quantisers of 8 bits (m bytes a vector in
            memory: 32 x smaller than flat at any D), nprobe = 32; the codes pick 10 x k candidates and the full
            vectors, kept on disk in `exact.f32` and read memory-mapped (a few pages a query), rank them, so scores
            are exact cosines. For corpora whose full vectors do not fit in memory.
    hnsw    `IndexHNSWFlat` (inner product), M = 32, efConstruction = 200, efSearch = 128: a graph; builds slowly
            at large D on few cores (about 2 minutes for 20k x 3584 on 2 cores) and is not faster than flat below
            ~100k vectors at this D. About (1 + 2 * M * 4 / (4 * D)) times the flat index's memory.

The IVF kinds are trained on a seeded sample of at most 64 x nlist vectors (all of them when fewer).

A search embeds the query with the model's query prompt and the index's truncation, after checking that the model is
the one the index was built with (its fingerprint); a different model or dimension fails with a message that says so.
Scores are cosines; `calibrated=True` also reports cos / tau(q, d), the model's training logits (README, "Calibrated
scores"), with the modality masks the processor gives after decoding (the shards' `modality_mask`; the query's from
its own processing): a video with its audio track is calibrated as audio + video, as in training.

Damaged files give an `IndexDamagedError` naming the file and what is wrong (a truncated or foreign index.faiss, a
manifest missing keys, rows.json that does not parse); `verify_index` checks the sha256 of every shard and search file
against the manifest.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.index.build import (
    MANIFEST,
    SHARDS,
    IndexBuildError,
    IndexDamagedError,
    file_sha256,
    modality_names,
    read_manifest,
    write_json_atomic,
)

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.json"
#: ivfpq's exact re-rank store: the full vectors, float32, row after row (read memory-mapped, a page per hit).
EXACT_FILE = "exact.f32"
#: ivfpq asks its codes for this many times k candidates and re-ranks them with the exact vectors.
RERANK_FACTOR = 10
KINDS = ("flat", "ivf", "ivfpq", "hnsw")
#: Vectors the IVF kinds are trained on: at most this many per list (a seeded sample).
TRAIN_PER_LIST = 64


class TooFewVectorsError(ValueError):
    """An IVF index asked for over a corpus too small to train it (faiss needs 39 vectors a list; PQ 256)."""


class IndexMismatchError(IndexBuildError):
    """A search with a model (or dimension) other than the one the index was built with."""


@dataclass
class SearchResult:
    rank: int
    score: float
    id: str
    source: str
    modalities: list[str]
    calibrated: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"rank": self.rank, "score": round(self.score, 6), "id": self.id, "source": self.source}
        out["modalities"] = self.modalities
        if self.calibrated is not None:
            out["calibrated"] = round(self.calibrated, 4)
        return out


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - the [index] extra installs it
        raise ImportError("searching needs faiss: pip install 'e5-omni[index]'") from err
    return faiss


def read_shards(folder: str | os.PathLike) -> tuple[list[dict[str, Any]], np.ndarray]:
    """(rows without vectors, (N, D) float32 vectors) of every finished shard, in shard order."""
    import pyarrow.parquet as pq

    manifest = read_manifest(folder)
    rows: list[dict[str, Any]] = []
    blocks = []
    dim = manifest["contract"]["dimension"]
    for shard in manifest["shards"]:
        path = Path(folder) / SHARDS / shard["name"]
        try:
            table = pq.read_table(path)
            vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim)
        except (OSError, ValueError, KeyError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise IndexDamagedError(f"{path}: not a readable shard of {dim}-d vectors ({err})") from err
        blocks.append(vectors.astype(np.float32, copy=False))
        rows += table.drop(["vector"]).to_pylist()
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
    return rows, vectors


def _nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


def pq_subquantizers(dim: int) -> int:
    """m for `ivfpq`: D / 8 (8 dimensions a sub-quantiser), or the nearest divisor of D below it."""
    return next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)


def make_index(kind: str, dim: int, n: int):
    """An empty faiss index of `kind` for `n` vectors of `dim` (the IVF kinds still to be trained: `train_index`)."""
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200
        index.hnsw.efSearch = 128
        return index
    if kind == "ivf":
        nlist = _nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(16, nlist)
        return index
    if kind == "ivfpq":
        nlist = _nlist(n)
        m = pq_subquantizers(dim)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(32, nlist)
        return index
    raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")


def train_index(index, vectors: np.ndarray, kind: str) -> None:
    """Train an IVF index on a seeded sample of `vectors` (at most TRAIN_PER_LIST per list); others need none."""
    if index.is_trained:
        return
    least = 256 if kind == "ivfpq" else 39  # 2**8 codes a sub-quantiser; faiss' minimum per list
    if len(vectors) < least:
        raise TooFewVectorsError(
            f"{kind} needs at least {least} vectors to train, the corpus has {len(vectors)}: use flat"
        )
    limit = TRAIN_PER_LIST * index.nlist
    if len(vectors) > limit:
        pick = np.sort(np.random.default_rng(0).choice(len(vectors), limit, replace=False))
        vectors = vectors[pick]
    index.train(np.ascontiguousarray(vectors))


class CorpusIndex:
    """A loaded index folder: manifest, rows (id, source, modalities) and the faiss index over their vectors."""

    def __init__(self, folder: str | os.PathLike, manifest: dict, rows: list[dict], index: Any, kind: str, exact=None):
        self.folder, self.manifest, self.rows, self.index, self.kind = Path(folder), manifest, rows, index, kind
        # ivfpq: the full vectors for the re-rank (memory-mapped from EXACT_FILE), plus those added since the save
        self.exact, self._added = exact, []

    # --------------------------------------------------------------------------------------------- build / load
    @classmethod
    def build(cls, folder: str | os.PathLike, kind: str = "flat") -> CorpusIndex:
        """Index every finished shard of `folder` and write `index.faiss` + `rows.json` next to them."""
        manifest = read_manifest(folder)
        rows, vectors = read_shards(folder)
        index = make_index(kind, vectors.shape[1], len(vectors))
        train_index(index, vectors, kind)
        if len(vectors):
            index.add(vectors)
        out = cls(folder, manifest, rows, index, kind)
        if kind == "ivfpq":
            _write_exact(Path(folder) / EXACT_FILE, vectors)
            out.exact = _open_exact(Path(folder) / EXACT_FILE, vectors.shape[1], len(vectors))
        else:
            (Path(folder) / EXACT_FILE).unlink(missing_ok=True)
        out.save()
        return out

    def save(self) -> None:
        faiss = _faiss()
        if self._added:  # ivfpq: the vectors added since the last save go after the stored ones
            with open(self.folder / EXACT_FILE, "ab") as handle:
                for block in self._added:
                    handle.write(np.ascontiguousarray(block, np.float32).tobytes())
            self._added = []
            self.exact = _open_exact(self.folder / EXACT_FILE, self.index.d, self.index.ntotal)
        tmp = self.folder / (INDEX_FILE + ".tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, self.folder / INDEX_FILE)
        payload = {"kind": self.kind, "rows": self.rows}
        (self.folder / (ROWS_FILE + ".tmp")).write_text(json.dumps(payload))
        os.replace(self.folder / (ROWS_FILE + ".tmp"), self.folder / ROWS_FILE)
        manifest = read_manifest(self.folder)
        checksums = {name: file_sha256(self.folder / name) for name in (INDEX_FILE, ROWS_FILE)}
        if self.exact is not None:
            checksums[EXACT_FILE] = file_sha256(self.folder / EXACT_FILE)
        manifest["search_index"] = {"kind": self.kind, "vectors": int(self.index.ntotal), "sha256": checksums}
        write_json_atomic(self.folder / MANIFEST, manifest)
        self.manifest = manifest

    @classmethod
    def load(cls, folder: str | os.PathLike) -> CorpusIndex:
        faiss = _faiss()
        folder = Path(folder)
        manifest = read_manifest(folder)
        if not (folder / INDEX_FILE).is_file():
            raise IndexBuildError(f"{folder} has no {INDEX_FILE}; build it with CorpusIndex.build or e5omni index")
        payload = _read_rows(folder / ROWS_FILE)
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError as err:  # faiss' own error for a truncated or foreign file
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise IndexDamagedError(
                f"{folder / INDEX_FILE}: not a readable faiss index (truncated, damaged or another kind of file: "
                f"{first}); rebuild it (CorpusIndex.build, or e5omni index --resume)"
            ) from err
        dim = manifest["contract"]["dimension"]
        if index.d != dim:
            raise IndexDamagedError(f"{folder / INDEX_FILE}: holds {index.d}-d vectors, the manifest says {dim}")
        if index.ntotal != len(payload["rows"]):
            raise IndexDamagedError(
                f"{folder}: {INDEX_FILE} holds {index.ntotal} vectors for {len(payload['rows'])} rows"
            )
        exact = None
        if payload["kind"] == "ivfpq":
            exact = _open_exact(folder / EXACT_FILE, index.d, index.ntotal)
            if exact is None:
                import warnings

                warnings.warn(
                    f"{folder}: {EXACT_FILE} is missing or does not match {INDEX_FILE}; ivfpq results are ranked by "
                    "their compressed codes only (rebuild the index to restore the exact re-rank)",
                    stacklevel=2,
                )
        return cls(folder, manifest, payload["rows"], index, payload["kind"], exact)

    # ------------------------------------------------------------------------------------------------ search
    def check_model(self, model: Any) -> None:
        from e5omni.evaluation.embeddings import model_fingerprint

        built = self.manifest["model"]
        if model.config.hidden_size != self.manifest["contract"]["hidden_size"]:
            raise IndexMismatchError(
                f"this index holds {self.manifest['contract']['dimension']}-d vectors of a model with hidden size "
                f"{self.manifest['contract']['hidden_size']}; the model given has {model.config.hidden_size}"
            )
        if model_fingerprint(model) != built["fingerprint"]:
            raise IndexMismatchError(
                f"this index was built with another model ({built['path']}, fingerprint {built['fingerprint'][:12]}); "
                "search it with that model, or re-index with this one"
            )

    def embed_query(self, model: Any, query: Any, instruction: str | None = None) -> np.ndarray:
        return self._embed_query_with_mask(model, query, instruction)[0]

    def _embed_query_with_mask(self, model: Any, query: Any, instruction: str | None) -> tuple[np.ndarray, list]:
        """(1, D) query vector and its modality mask after decoding: `encode_query`'s path for one item (check,
        decode under the budgets, the processor with the query prompt, forward), keeping the processor's mask."""
        from e5omni.index.batches import embed_features
        from modeling_e5omni.processing_e5omni import check_items

        item = {"text": query} if isinstance(query, str) else dict(query) if isinstance(query, dict) else query
        if instruction is not None:
            if not isinstance(item, dict):
                item = {"image": item}
            item["instruction"] = instruction
        processor = model.processor
        (checked,) = check_items([item], model.config.modalities)
        features = processor.process_decoded([processor.decode(checked, 0)], "query", indices=[0])
        features = {key: value for key, value in features.items() if hasattr(value, "numpy")}
        was_training = model.training
        model.eval()
        try:
            vector = embed_features(model, features, self.manifest["contract"]["truncate_dim"])
        finally:
            model.train(was_training)
        return vector, [bool(m) for m in features["modality_mask"][0].tolist()]

    def search(
        self,
        model: Any,
        query: Any,
        k: int = 10,
        *,
        instruction: str | None = None,
        calibrated: bool = False,
        nprobe: int | None = None,
    ) -> list[SearchResult]:
        """The top `k` rows for one query item (text, an image, a dict of several modalities). `nprobe` (ivf and
        ivfpq kinds) sets how many lists this and later searches scan: more finds more of the exact top-k, slower."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if nprobe is not None:
            if not hasattr(self.index, "nprobe"):
                raise ValueError(f"nprobe is for the ivf and ivfpq kinds; this index is {self.kind}")
            if isinstance(nprobe, bool) or not isinstance(nprobe, int) or not 1 <= nprobe <= self.index.nlist:
                raise ValueError(f"nprobe must be an integer in [1, {self.index.nlist}] (the lists), got {nprobe!r}")
            self.index.nprobe = nprobe
        self.check_model(model)
        vector, query_mask = self._embed_query_with_mask(model, query, instruction)
        scores, ids = self.ranked(vector, k)
        results, masks = [], []
        for rank, (score, row_id) in enumerate(zip(scores[0], ids[0], strict=True), start=1):
            if row_id < 0:
                continue
            row = self.rows[row_id]
            results.append(SearchResult(rank, float(score), row["id"], row["source"], list(row["modalities"])))
            masks.append(row.get("modality_mask") or list(row["modalities"]))  # indexes before the mask: names
        if calibrated and results:
            import torch

            from modeling_e5omni.modeling_e5omni import modality_mask_of

            tau = model.pair_temperature(
                torch.tensor([query_mask], dtype=torch.bool), modality_mask_of(masks, len(results))
            )[0]
            for result, t in zip(results, tau.tolist(), strict=True):
                result.calibrated = result.score / t
        return results

    def ranked(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss' (scores, row ids) of the top k for each query vector. ivfpq with its exact store: the codes pick
        RERANK_FACTOR x k candidates and the exact vectors rank them, so scores are exact cosines."""
        k = min(k, max(1, self.index.ntotal))
        if self.exact is None:  # only ivfpq keeps an exact store
            return self.index.search(vectors, k)
        return rerank(self.index, self._exact_rows, vectors, k)

    def _exact_rows(self, rows: np.ndarray) -> np.ndarray:
        """The full vectors of `rows`: from the memory-mapped store, or added since the last save."""
        if self._added:
            stored, added = len(self.exact), np.concatenate(self._added)
            return np.stack([self.exact[r] if r < stored else added[r - stored] for r in rows])
        return np.asarray(self.exact[rows])

    def add(self, model: Any, items: list[Any], ids: list[str], sources: list[str] | None = None) -> None:
        """Embed `items` as documents and append them (rows and vectors) to the loaded index; `save()` to persist."""
        if len(items) != len(ids):
            raise ValueError(f"{len(items)} items but {len(ids)} ids")
        taken = {row["id"] for row in self.rows}
        duplicates = [i for i in ids if i in taken]
        if duplicates:
            raise ValueError(f"ids already in the index: {duplicates[:5]}")
        self.check_model(model)
        truncate = self.manifest["contract"]["truncate_dim"]
        vectors = model.encode_document(items, show_progress_bar=False, truncate_dim=truncate).numpy()
        self.index.add(vectors.astype(np.float32))
        if self.kind == "ivfpq" and self.exact is not None:
            self._added.append(vectors.astype(np.float32))
        masks = [processor_mask(model, item) for item in items]
        for item, rid, source, mask in zip(items, ids, sources or ids, masks, strict=True):
            row = {"id": rid, "source": source, "modalities": modality_names(item), "content_hash": None}
            self.rows.append({**row, "modality_mask": mask})


def processor_mask(model: Any, item: Any) -> list[bool]:
    """The processor's modality mask of one document item after decoding (a video with sound: audio + video)."""
    from modeling_e5omni.processing_e5omni import check_items

    (checked,) = check_items([item], model.config.modalities)
    return [bool(m) for m in model.processor.decode(checked, 0).modality_mask]


def _read_rows(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise IndexDamagedError(f"{path} is missing: rebuild the search index (CorpusIndex.build, e5omni index)")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexDamagedError(f"{path}: not valid JSON ({err}); rebuild the search index") from err
    if not isinstance(payload, dict) or payload.get("kind") not in KINDS or not isinstance(payload.get("rows"), list):
        raise IndexDamagedError(f"{path}: expected {{'kind': one of {KINDS}, 'rows': [...]}}; rebuild the search index")
    return payload


def verify_index(folder: str | os.PathLike) -> list[str]:
    """Problems found checking `folder` against its manifest: each shard's and search file's sha256 (recorded when
    they were written), files missing. Empty when everything matches. A manifest that cannot be read raises."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = []
    expected = [(folder / SHARDS / s["name"], s.get("sha256")) for s in manifest["shards"]]
    search_index = manifest.get("search_index") or {}
    expected += [(folder / name, digest) for name, digest in (search_index.get("sha256") or {}).items()]
    for path, digest in expected:
        shown = path.relative_to(folder)
        if not path.is_file():
            problems.append(f"{shown}: missing")
        elif digest is None:
            problems.append(f"{shown}: no checksum in the manifest (written before checksums were recorded)")
        elif (actual := file_sha256(path)) != digest:
            problems.append(
                f"{shown}: sha256 {actual[:12]}..., the manifest recorded {digest[:12]}... (changed or damaged)"
            )
    return problems


def _write_exact(path: Path, vectors: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        for start in range(0, len(vectors), 65536):
            handle.write(np.ascontiguousarray(vectors[start : start + 65536], np.float32).tobytes())
    os.replace(tmp, path)


def _open_exact(path: Path, dim: int, rows: int):
    """The exact store memory-mapped (pages read on demand), or None when it is missing or not `rows` x `dim`."""
    if not path.is_file() or path.stat().st_size != rows * dim * 4:
        return None
    if rows == 0:
        return np.zeros((0, dim), np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim))


def rerank(index: Any, exact_rows: Any, vectors: np.ndarray, k: int, factor: int = RERANK_FACTOR):
    """(scores, ids) of the top k: `index` picks factor x k candidates a query, `exact_rows(ids)` gives their full
    vectors, and the exact inner products rank them (what `CorpusIndex` does for ivfpq)."""
    _, candidates = index.search(vectors, min(index.ntotal, k * factor))
    out_scores = np.full((len(vectors), k), -np.inf, np.float32)
    out_ids = np.full((len(vectors), k), -1, np.int64)
    for q, (vector, found) in enumerate(zip(vectors, candidates, strict=True)):
        found = found[found >= 0]
        exact = exact_rows(found) @ vector
        order = np.argsort(-exact, kind="stable")[:k]
        out_scores[q, : len(order)], out_ids[q, : len(order)] = exact[order], found[order]
    return out_scores, out_ids
