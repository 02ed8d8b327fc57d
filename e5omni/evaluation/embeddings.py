"""Encoding a retrieval corpus once: :class:`CorpusEmbeddings`, :func:`encode_corpus` and its ``.npz`` cache.

Every distinct query and document is encoded once (keyed by :func:`~e5omni.data.content_hash`) and the result is handed
to evaluation, diagnostics and plots, so a full report costs one encoding pass. A cache file carries the
:func:`model_fingerprint` of the model that wrote it; one written by another model raises :class:`EmbeddingCacheError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e5omni.data import RetrievalCorpus, content_hash, to_corpus
from e5omni.evaluation.errors import EmbeddingCacheError, EvaluationError

CACHE_FORMAT = 1


@dataclass
class CorpusEmbeddings:
    """Embeddings of a :class:`~e5omni.data.RetrievalCorpus`: rows aligned with ``query_ids`` / ``doc_ids``.

    Computed once by :func:`encode_corpus` and handed to evaluation, diagnostics and plots, so a full report costs one
    encoding pass. float32, as the model returns them (L2-normalised, whitened when the model's config says so).
    """

    query_ids: list[str]
    query_embeddings: np.ndarray  # (Q, D)
    doc_ids: list[str]
    doc_embeddings: np.ndarray  # (N, D)

    def __post_init__(self) -> None:
        self._query_row = {qid: i for i, qid in enumerate(self.query_ids)}
        self._doc_row = {did: i for i, did in enumerate(self.doc_ids)}
        for name, ids, array in (
            ("query", self.query_ids, self.query_embeddings),
            ("doc", self.doc_ids, self.doc_embeddings),
        ):
            if array.ndim != 2 or array.shape[0] != len(ids):
                raise EvaluationError(f"{name}_embeddings must be ({len(ids)}, D), got {tuple(array.shape)}")
        if self.query_embeddings.shape[1] != self.doc_embeddings.shape[1]:
            raise EvaluationError(
                f"query and doc embeddings differ in dimension: {self.query_embeddings.shape[1]} vs "
                f"{self.doc_embeddings.shape[1]}"
            )

    def truncated(self, dim: int) -> CorpusEmbeddings:
        """Matryoshka-style: the first `dim` components of every row, re-normalised (what `encode(truncate_dim=)`
        returns), so one encoding pass (and its cache) serves every dimension."""
        from modeling_e5omni.modeling_e5omni import truncate_embeddings

        def cut(array: np.ndarray) -> np.ndarray:
            return truncate_embeddings(torch.from_numpy(np.ascontiguousarray(array)), dim).numpy()

        return CorpusEmbeddings(
            list(self.query_ids), cut(self.query_embeddings), list(self.doc_ids), cut(self.doc_embeddings)
        )

    def queries(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of the given query ids. (len(ids), D)"""
        return self.query_embeddings[self._rows(self._query_row, ids, "query")]

    def docs(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of the given document ids. (len(ids), D)"""
        return self.doc_embeddings[self._rows(self._doc_row, ids, "document")]

    @staticmethod
    def _rows(index: dict[str, int], ids: Sequence[str], what: str) -> list[int]:
        missing = [i for i in ids if i not in index]
        if missing:
            raise EvaluationError(f"no embedding for {what} id(s) {missing[:5]}: embeddings of another corpus?")
        return [index[i] for i in ids]


def model_fingerprint(model: Any) -> str:
    """A cheap identity of a model's embedding function, stored in embedding caches.

    Hashes the config (minus private keys and the library version) and, for every parameter and buffer, its name,
    shape, dtype and its first and last 1,024 values. Fine-tuning (a merged LoRA changes whole matrices), new
    temperatures or whitening statistics all change it; reading a few KB per tensor keeps it instant even for 7B.
    """
    digest = hashlib.blake2b(digest_size=16)
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:1024], flat[-1024:]]).float().cpu().numpy()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()


def _load_cache(path: Path, fingerprint: str) -> dict[str, dict[int, np.ndarray]]:
    """Read an embedding cache written by :func:`_save_cache` -> {"query": {hash: vec}, "document": {...}}."""
    empty: dict[str, dict[int, np.ndarray]] = {"query": {}, "document": {}}
    if not path.exists():
        return empty
    try:
        with np.load(path, allow_pickle=False) as data:  # never unpickle: the file may come from anywhere
            arrays = {key: data[key] for key in data.files}
    except Exception as err:  # noqa: BLE001 - any read failure means the same thing to the user
        raise EmbeddingCacheError(path, f"not a readable .npz file ({err}); delete it or pick another path") from None
    needed = {"format", "fingerprint"} | {f"{r}_{f}" for r in ("query", "document") for f in ("hash", "embeddings")}
    if not needed <= set(arrays):
        raise EmbeddingCacheError(path, f"missing arrays {sorted(needed - set(arrays))}; not an e5omni embedding cache")
    if int(arrays["format"]) != CACHE_FORMAT:
        raise EmbeddingCacheError(path, f"cache format {int(arrays['format'])}, this code reads {CACHE_FORMAT}")
    if str(arrays["fingerprint"]) != fingerprint:
        raise EmbeddingCacheError(
            path, "written by a different model (or different weights/config); use one cache file per model"
        )
    for role in ("query", "document"):
        hashes, vectors = arrays[f"{role}_hash"], arrays[f"{role}_embeddings"]
        if vectors.ndim != 2 or hashes.shape != (vectors.shape[0],):
            raise EmbeddingCacheError(path, f"{role} arrays have inconsistent shapes {hashes.shape}, {vectors.shape}")
        empty[role] = {int(h): v for h, v in zip(hashes, vectors, strict=True)}
    return empty


def _save_cache(path: Path, fingerprint: str, cache: dict[str, dict[int, np.ndarray]], dim: int) -> None:
    """Write atomically (temp file + rename), so an interrupted run never leaves a truncated cache behind."""
    arrays: dict[str, np.ndarray] = {"format": np.array(CACHE_FORMAT), "fingerprint": np.array(fingerprint)}
    for role in ("query", "document"):
        entries = cache[role]
        arrays[f"{role}_hash"] = np.array(list(entries), dtype=np.int64)
        vectors = list(entries.values())
        arrays[f"{role}_embeddings"] = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), "f4")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_corpus(
    model: Any,
    corpus: RetrievalCorpus,
    *,
    batch_size: int = 32,
    cache_path: str | os.PathLike | None = None,
    show_progress_bar: bool | None = None,
) -> CorpusEmbeddings:
    """Embed every distinct query (``encode_query``) and document (``encode_document``) of ``corpus`` exactly once.

    Items are keyed by :func:`~e5omni.data.content_hash`: ``to_corpus`` already merges identical documents, and here
    identical queries of different pairs share one encoding too. With ``cache_path`` (an ``.npz`` file), embeddings
    found there are reused and new ones added, keyed by (role, content hash) and guarded by
    :func:`model_fingerprint`; a cache from another model raises :class:`EmbeddingCacheError`.
    """
    path = Path(cache_path) if cache_path is not None else None
    fingerprint = model_fingerprint(model) if path is not None else ""
    cache = _load_cache(path, fingerprint) if path is not None else {"query": {}, "document": {}}
    query_ids, doc_ids = list(corpus.queries), list(corpus.corpus)
    query_hashes = [content_hash(corpus.queries[qid]) for qid in query_ids]
    doc_hashes = [content_hash(corpus.corpus[did]) for did in doc_ids]
    encoded_any = False
    for role, hashes, items, encode in (
        ("query", query_hashes, corpus.queries, model.encode_query),
        ("document", doc_hashes, corpus.corpus, model.encode_document),
    ):
        todo: dict[int, Any] = {}
        for key, item in zip(hashes, items.values(), strict=True):
            if key not in cache[role] and key not in todo:
                todo[key] = item
        if todo:
            vectors = encode(
                list(todo.values()), batch_size=batch_size, show_progress_bar=show_progress_bar, convert_to_numpy=True
            )
            cache[role].update(zip(todo, np.asarray(vectors, dtype=np.float32), strict=True))
            encoded_any = True
    dim = next(iter(cache["query"].values()), next(iter(cache["document"].values()), np.zeros(0))).shape[-1]
    if path is not None and (encoded_any or not path.exists()):
        _save_cache(path, fingerprint, cache, dim)

    def stack(role: str, hashes: list[int]) -> np.ndarray:
        return np.stack([cache[role][h] for h in hashes]) if hashes else np.zeros((0, dim), np.float32)

    return CorpusEmbeddings(query_ids, stack("query", query_hashes), doc_ids, stack("document", doc_hashes))


def _resolve(
    model: Any, data: RetrievalCorpus | Sequence[Mapping[str, Any]], embeddings: CorpusEmbeddings | None, **encode_kw
) -> tuple[RetrievalCorpus, CorpusEmbeddings]:
    """The corpus (``data`` itself, or ``to_corpus(data)``) and its embeddings (given, or encoded with ``model``)."""
    corpus = data if isinstance(data, RetrievalCorpus) else to_corpus(data)
    if not corpus.queries:
        raise EvaluationError("nothing to evaluate: the data has no queries")
    if embeddings is None:
        if model is None:
            raise EvaluationError("pass a model, or precomputed embeddings")
        embeddings = encode_corpus(model, corpus, **encode_kw)
    return corpus, embeddings
