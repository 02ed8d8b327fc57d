"""Retrieval evaluation, alignment diagnostics and plots: the numbers users choose a model by, and the ones that say why.

Pipeline (``e5omni eval MODEL --data ...`` runs exactly this)::

    corpus = to_corpus(examples)                         # queries, deduplicated documents, qrels, per-pair pools
    embeddings = encode_corpus(model, corpus)            # every distinct item encoded once (optionally .npz-cached)
    metrics = evaluate_retrieval(model, corpus, embeddings=embeddings)      # {pair: {...}, "overall": {...}}
    diagnostics = alignment_diagnostics(model, corpus, embeddings=embeddings)
    write_plots(corpus, embeddings, "plots/", log_history="out/trainer_state.json")

Conventions, chosen once here so every number in a card means the same thing:

- **Relevance is binary** (the ``qrels`` of ``to_corpus``: ``{did: 1}``). Metrics take a score matrix ``(Q, N)`` and a
  boolean relevance matrix ``(Q, N)``; higher score = better.
- **Ties are broken pessimistically**: among documents with exactly equal scores, non-relevant ones are ranked first.
  Why: a collapsed model (every embedding equal) must score *worst*, not best. ``to_corpus`` lists each positive before
  its hard negatives, so breaking ties by index (what ``argsort`` does) would reward a model that outputs constants.
- ``hit@k`` (a.k.a. success@k): 1 if *any* relevant document is in the top k. MMEB's Hit@1, and the "R@k" of
  AudioCaps / CLAP-style audio<->text retrieval (an audio is found if any of its captions is in the top k).
- ``recall@k``: the *fraction* of a query's relevant documents in the top k (BEIR / pytrec_eval ``recall_k``). Equal to
  ``hit@k`` when a query has a single relevant document.
- ``ndcg@k``: binary gains, discount ``1 / log2(rank + 1)``, ideal DCG from ``min(R, k)`` relevant documents at the top.
- ``mrr``: ``1 / rank`` of the first relevant document, no cut-off.
- A query is ranked against **its pair's candidate pool** (``RetrievalCorpus.candidates[pair]``), as MMEB ranks each
  task separately: a text query of text->image is never scored against the captions of image->text.
- **overall** = macro average over pairs (each modality pair weighs the same, like MMEB's average over tasks; a pair
  with many queries cannot hide a weak one). **overall_micro** = average over all queries. Pair keys always contain
  ``"->"``; use :func:`pair_keys` to iterate them.

Scores are cosine similarities of the model's embeddings (what a user of the released checkpoints ranks by). With
``calibrated=True`` they are divided by the learned pair temperature tau(q, p) first; within one pool whose documents
share a modality set this changes no ranking, only the scale.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e5omni.data import MODALITIES, RetrievalCorpus, content_hash, item_modalities, to_corpus

__all__ = [
    "CorpusEmbeddings",
    "EmbeddingCacheError",
    "EvaluationError",
    "PAPER_7B_TEMPERATURES",
    "PairScores",
    "add_eval_parser",
    "alignment_diagnostics",
    "benchmark_category",
    "diagnostics_markdown",
    "encode_corpus",
    "evaluate_retrieval",
    "headline_metrics",
    "hit_at_k",
    "load_eval_data",
    "load_log_history",
    "metric_names",
    "metrics_markdown",
    "model_fingerprint",
    "ndcg_at_k",
    "pair_keys",
    "pair_scores",
    "plot_covariance_difference",
    "plot_similarity_histograms",
    "plot_temperature_trajectories",
    "ranked_relevance",
    "recall_at_k",
    "reciprocal_rank",
    "retrieval_metrics",
    "run_eval",
    "temperature_history",
    "write_json",
    "write_markdown",
    "write_plots",
]

PAPER_7B_TEMPERATURES: dict[str, float] = {"text": 0.0130, "image": 0.0127, "audio": 0.0219, "video": 0.0223}
"""Learned per-modality tau of the released e5-omni-7B (paper), drawn as reference lines in the temperature plot."""

RESERVED_KEYS = ("overall", "overall_micro")
CACHE_FORMAT = 1
_QUERY_CHUNK = 1024  # query rows scored at a time: bounds the (Q, N) matrices for large pools

# =====================================================================================================================
# Errors
# =====================================================================================================================


class EvaluationError(ValueError):
    """Evaluation inputs that cannot give meaningful numbers (bad shapes, NaN scores, a query with nothing relevant)."""


class EmbeddingCacheError(EvaluationError):
    """An embedding cache file that cannot be used: unreadable, another format, or written by a different model.

    Refused rather than overwritten: the caller named the file, and silently replacing (or worse, reusing) another
    model's embeddings would either destroy work or report the wrong model's numbers.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"embedding cache {self.path}: {reason}")


# =====================================================================================================================
# Metrics (pure numpy; one row per query)
# =====================================================================================================================


def _as_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # noqa: BLE001 - any conversion failure is the caller's input problem
        raise EvaluationError(f"{name} must be array-like, got {type(value).__name__}: {err}") from None


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise EvaluationError(f"k must be a positive int, got {k!r}")
    return int(k)


def ranked_relevance(scores: Any, relevant: Any) -> np.ndarray:
    """Relevance flags in ranked order: row i is ``relevant[i]`` sorted by descending ``scores[i]``. (Q, N) bool.

    Ties: among exactly equal scores, non-relevant documents come first (pessimistic; see the module docstring).
    Every metric below reads this one array, so they all share the tie rule. Raises :class:`EvaluationError` for
    mismatched shapes, NaN scores, or a query without any relevant candidate (its metrics would be undefined, and
    silently skipping it would change the denominator).
    """
    scores = _as_numpy(scores, "scores").astype(np.float64, copy=False)
    relevant = _as_numpy(relevant, "relevant")
    if scores.ndim == 1:
        scores, relevant = scores[None], relevant[None]
    if scores.ndim != 2 or relevant.shape != scores.shape:
        raise EvaluationError(
            f"scores and relevant must both be (Q, N); got {tuple(scores.shape)} and {tuple(relevant.shape)}"
        )
    if relevant.dtype != np.bool_:
        if not np.isin(relevant, (0, 1)).all():
            raise EvaluationError("relevant must be boolean or 0/1 (binary relevance)")
        relevant = relevant.astype(bool)
    if np.isnan(scores).any():
        rows = np.flatnonzero(np.isnan(scores).any(axis=1))
        raise EvaluationError(f"scores contain NaN in query rows {rows[:10].tolist()}")
    empty = np.flatnonzero(~relevant.any(axis=1))
    if empty.size:
        raise EvaluationError(f"query rows {empty[:10].tolist()} have no relevant candidate; metrics are undefined")
    # lexsort: the LAST key is primary. Descending score, then relevant=False (0) before True (1): pessimistic ties.
    order = np.lexsort((relevant, -scores), axis=-1)  # (Q, N)
    return np.take_along_axis(relevant, order, axis=-1)


def _ranked(scores: Any, relevant: Any, ranked: np.ndarray | None) -> np.ndarray:
    return ranked if ranked is not None else ranked_relevance(scores, relevant)


def hit_at_k(scores: Any, relevant: Any, k: int, *, ranked: np.ndarray | None = None) -> np.ndarray:
    """1.0 where any relevant document is in the top k, else 0.0. (Q,) float.

    This is "success@k": MMEB-V2's Hit@1 and the AudioCaps / CLAP "R@k". Pass ``ranked`` (from
    :func:`ranked_relevance`) to skip re-sorting when computing several metrics.
    """
    ranked = _ranked(scores, relevant, ranked)
    return ranked[:, : _check_k(k)].any(axis=1).astype(np.float64)


def recall_at_k(scores: Any, relevant: Any, k: int, *, ranked: np.ndarray | None = None) -> np.ndarray:
    """Fraction of the query's relevant documents that are in the top k (BEIR's recall@k). (Q,) float."""
    ranked = _ranked(scores, relevant, ranked)
    return ranked[:, : _check_k(k)].sum(axis=1) / ranked.sum(axis=1)


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))  # rank r (1-based) -> 1 / log2(r + 1)


def ndcg_at_k(scores: Any, relevant: Any, k: int, *, ranked: np.ndarray | None = None) -> np.ndarray:
    """Normalised DCG at k with binary gains: DCG / ideal DCG, DCG = sum over relevant ranks r <= k of 1/log2(r + 1).

    The ideal ranking puts all R relevant documents first, so IDCG = sum_{r=1}^{min(R, k)} 1/log2(r + 1). (Q,) float.
    """
    ranked = _ranked(scores, relevant, ranked)
    k = _check_k(k)
    top = ranked[:, :k]
    discounts = _discounts(top.shape[1])
    dcg = (top * discounts).sum(axis=1)
    ideal_count = np.minimum(ranked.sum(axis=1), top.shape[1])  # (Q,) >= 1
    idcg = np.cumsum(discounts)[ideal_count - 1]
    return dcg / idcg


def reciprocal_rank(scores: Any, relevant: Any, *, ranked: np.ndarray | None = None) -> np.ndarray:
    """1 / (rank of the first relevant document), no cut-off; its mean is MRR. (Q,) float."""
    ranked = _ranked(scores, relevant, ranked)
    return 1.0 / (ranked.argmax(axis=1) + 1)


def metric_names(ks: Sequence[int] = (1, 5, 10)) -> list[str]:
    """The keys :func:`retrieval_metrics` returns, in table order: hit@k, recall@k, ndcg@k for each k, then mrr."""
    ks = [_check_k(k) for k in ks]
    return [f"{name}@{k}" for name in ("hit", "recall", "ndcg") for k in ks] + ["mrr"]


def retrieval_metrics(scores: Any, relevant: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[str, np.ndarray]:
    """Every metric for every query: ``{"hit@k", "recall@k", "ndcg@k" for k in ks, "mrr"}`` -> (Q,) arrays.

    Per-query values (not means) so callers can average them either way (macro over pairs, micro over queries).
    A k larger than the pool means "the whole pool".
    """
    ranked = ranked_relevance(scores, relevant)
    out: dict[str, np.ndarray] = {}
    for name, fn in (("hit", hit_at_k), ("recall", recall_at_k), ("ndcg", ndcg_at_k)):
        for k in ks:
            out[f"{name}@{k}"] = fn(None, None, k, ranked=ranked)
    out["mrr"] = reciprocal_rank(None, None, ranked=ranked)
    return {name: out[name] for name in metric_names(ks)}


# =====================================================================================================================
# Encoding: every distinct item once, optionally cached on disk
# =====================================================================================================================


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


# =====================================================================================================================
# Scoring one pair's pool
# =====================================================================================================================


@dataclass
class PairScores:
    """Scores of (a chunk of) one pair's queries against that pair's candidate pool.

    ``cosine`` (Q, N) raw cosine similarities; ``relevant`` (Q, N) bool; ``temperature`` (Q, N) the pair temperature
    tau(q, p) = (tau(q) + tau(p)) / 2 from the model's learned per-modality tau (None without a model).
    """

    pair: str
    query_ids: list[str]
    doc_ids: list[str]
    cosine: np.ndarray
    relevant: np.ndarray
    temperature: np.ndarray | None

    @property
    def logits(self) -> np.ndarray:
        """Calibrated logits cos / tau(q, p): the quantities the model was trained to softmax over. (Q, N)"""
        if self.temperature is None:
            raise EvaluationError("calibrated logits need the model's temperatures; pass the model")
        return self.cosine / self.temperature


def _modality_mask(items: Iterable[Any]) -> torch.Tensor:
    return torch.tensor([item_modalities(item) for item in items], dtype=torch.bool)  # (n, M)


def pair_scores(
    model: Any,
    corpus: RetrievalCorpus,
    embeddings: CorpusEmbeddings,
    pair: str,
    *,
    chunk_size: int = _QUERY_CHUNK,
) -> Iterator[PairScores]:
    """Yield :class:`PairScores` for ``pair``, ``chunk_size`` queries at a time (bounded memory for large pools).

    ``model`` may be None when no temperatures are needed. Raises :class:`EvaluationError` for an unknown pair or a
    relevant document that is missing from the pair's pool (it could never be retrieved: a mis-built corpus).
    """
    if pair not in corpus.candidates:
        raise EvaluationError(f"unknown pair {pair!r}; the corpus has {corpus.pairs}")
    doc_ids = list(corpus.candidates[pair])
    if not doc_ids:
        raise EvaluationError(f"pair {pair!r} has an empty candidate pool")
    column = {did: j for j, did in enumerate(doc_ids)}
    query_ids = [qid for qid, p in corpus.query_pair.items() if p == pair]
    docs = torch.from_numpy(embeddings.docs(doc_ids)).float()  # (N, D)
    docs = torch.nn.functional.normalize(docs, dim=-1)
    # Masks go where the temperatures live (the model may sit on a GPU; pair_temperature does mask @ tau there).
    device = model.log_temperature.device if model is not None else None
    doc_mask = _modality_mask(corpus.corpus[did] for did in doc_ids).to(device) if model is not None else None
    for start in range(0, len(query_ids), chunk_size):
        qids = query_ids[start : start + chunk_size]
        queries = torch.nn.functional.normalize(torch.from_numpy(embeddings.queries(qids)).float(), dim=-1)
        cosine = (queries.double() @ docs.double().T).numpy()  # (Q, N) fp64: exact ties stay ties, nothing rounds
        relevant = np.zeros(cosine.shape, dtype=bool)
        for i, qid in enumerate(qids):
            for did, grade in corpus.qrels.get(qid, {}).items():
                if grade <= 0:
                    continue
                if did not in column:
                    raise EvaluationError(
                        f"query {qid} ({pair}): relevant document {did} is not in the pair's candidate pool"
                    )
                relevant[i, column[did]] = True
        temperature = None
        if model is not None:
            query_mask = _modality_mask(corpus.queries[qid] for qid in qids).to(device)
            temperature = model.pair_temperature(query_mask, doc_mask).double().cpu().numpy()  # (Q, N)
        yield PairScores(pair, qids, doc_ids, cosine, relevant, temperature)


def _resolve(
    model: Any, data: RetrievalCorpus | Sequence[Mapping[str, Any]], embeddings: CorpusEmbeddings | None, **encode_kw
) -> tuple[RetrievalCorpus, CorpusEmbeddings]:
    corpus = data if isinstance(data, RetrievalCorpus) else to_corpus(data)
    if not corpus.queries:
        raise EvaluationError("nothing to evaluate: the data has no queries")
    if embeddings is None:
        if model is None:
            raise EvaluationError("pass a model, or precomputed embeddings")
        embeddings = encode_corpus(model, corpus, **encode_kw)
    return corpus, embeddings


# =====================================================================================================================
# Retrieval evaluation
# =====================================================================================================================


def pair_keys(result: Mapping[str, Any]) -> list[str]:
    """The modality-pair keys of an :func:`evaluate_retrieval` result (those containing "->"), in order."""
    return [key for key in result if "->" in key]


def evaluate_retrieval(
    model: Any,
    data: RetrievalCorpus | Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 32,
    ks: Sequence[int] = (1, 5, 10),
    embeddings: CorpusEmbeddings | None = None,
    cache_path: str | os.PathLike | None = None,
    calibrated: bool = False,
    show_progress_bar: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Rank every query against its pair's pool and average the metrics per pair and overall.

    ``data``: a :class:`~e5omni.data.RetrievalCorpus` or training-style examples (converted with ``to_corpus``).
    ``embeddings``: reuse an :func:`encode_corpus` result (nothing is encoded then; ``model`` is only needed for
    ``calibrated``). Returns, with values in [0, 1]::

        {"text->image": {"hit@1": ..., "recall@5": ..., "ndcg@5": ..., "mrr": ..., "num_queries": 29,
                         "num_candidates": 80},
         ...,
         "overall": {...macro average over pairs..., "num_queries": total, "num_pairs": P},
         "overall_micro": {...average over all queries..., "num_queries": total}}
    """
    ks = tuple(_check_k(k) for k in ks)
    corpus, embeddings = _resolve(
        model, data, embeddings, batch_size=batch_size, cache_path=cache_path, show_progress_bar=show_progress_bar
    )
    if calibrated and model is None:
        raise EvaluationError("calibrated=True needs the model (its temperatures)")
    names = metric_names(ks)
    result: dict[str, dict[str, float]] = {}
    per_query: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for pair in corpus.pairs:
        values: dict[str, list[np.ndarray]] = {name: [] for name in names}
        num_candidates = 0
        for chunk in pair_scores(model if calibrated else None, corpus, embeddings, pair):
            num_candidates = len(chunk.doc_ids)
            scores = chunk.logits if calibrated else chunk.cosine
            for name, array in retrieval_metrics(scores, chunk.relevant, ks).items():
                values[name].append(array)
        if not values[names[0]]:
            continue  # a pool with no queries (only possible in hand-built corpora): nothing to report
        merged = {name: np.concatenate(arrays) for name, arrays in values.items()}
        result[pair] = {name: float(array.mean()) for name, array in merged.items()}
        result[pair].update(num_queries=int(merged["mrr"].shape[0]), num_candidates=num_candidates)
        for name in names:
            per_query[name].append(merged[name])
    pairs = pair_keys(result)
    total = sum(result[p]["num_queries"] for p in pairs)
    result["overall"] = {name: float(np.mean([result[p][name] for p in pairs])) for name in names}
    result["overall"].update(num_queries=total, num_pairs=len(pairs))
    result["overall_micro"] = {name: float(np.concatenate(per_query[name]).mean()) for name in names}
    result["overall_micro"]["num_queries"] = total
    return result


# =====================================================================================================================
# Benchmark conventions
# =====================================================================================================================

_CONVENTIONS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    # category: (description, [(column label, metric key)])
    "audio-text": (
        "AudioCaps-style R@k (any correct in top k)",
        [("R@1", "hit@1"), ("R@5", "hit@5"), ("R@10", "hit@10")],
    ),
    "visdoc": ("MMEB-V2 visual document: NDCG@5", [("NDCG@5", "ndcg@5")]),
    "video": ("MMEB-V2 video: Hit@1", [("Hit@1", "hit@1")]),
    "image": ("MMEB-V2 image: Hit@1", [("Hit@1", "hit@1")]),
    "other": ("Hit@1", [("Hit@1", "hit@1")]),
}


def benchmark_category(pair: str, *, visual_document: bool = False) -> str:
    """Which benchmark convention a pair follows: "audio-text", "visdoc", "video", "image" or "other".

    text->audio and audio->text follow AudioCaps (R@k = success@k); MMEB-V2 scores image and video tasks by Hit@1 and
    visual documents by NDCG@5. Pair names cannot tell a document page from a photo (both are "image"), so visual
    documents are flagged by the caller.
    """
    if "->" not in pair:
        raise EvaluationError(f"not a pair name: {pair!r} (expected 'QUERY->TARGET', e.g. 'text->image')")
    query, target = (set(side.split("+")) for side in pair.split("->", 1))
    if {frozenset(query), frozenset(target)} == {frozenset({"text"}), frozenset({"audio"})}:
        return "audio-text"
    if visual_document:
        return "visdoc"
    if "video" in query | target:
        return "video"
    if "image" in query | target:
        return "image"
    return "other"


def headline_metrics(
    result: Mapping[str, Any], *, visual_document_pairs: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """The number each pair would be reported by under its benchmark's convention.

    Returns ``{pair: {"convention": "...", "R@1": x, ...}, "overall": {"score": mean of each pair's first headline
    metric}}``; the overall mirrors MMEB's score (an average over tasks of each task's own metric). Metrics the
    evaluation did not compute (a k not in ``ks``) are left out.
    """
    visdoc = set(visual_document_pairs)
    out: dict[str, dict[str, Any]] = {}
    firsts = []
    for pair in pair_keys(result):
        description, columns = _CONVENTIONS[benchmark_category(pair, visual_document=pair in visdoc)]
        row: dict[str, Any] = {"convention": description}
        for label, key in columns:
            if key in result[pair]:
                row[label] = result[pair][key]
        values = [v for k, v in row.items() if k != "convention"]
        if values:
            firsts.append(values[0])
        out[pair] = row
    out["overall"] = {"convention": "mean over pairs of each pair's first headline metric"}
    if firsts:
        out["overall"]["score"] = float(np.mean(firsts))
    return out


# =====================================================================================================================
# Alignment diagnostics
# =====================================================================================================================


def _covariance(x: np.ndarray) -> np.ndarray:
    """Unbiased (n - 1) covariance of the rows, as the training-time whitening estimates it. (D, D)"""
    centered = x - x.mean(axis=0, keepdims=True)
    return centered.T @ centered / (x.shape[0] - 1)


def _geometry(queries: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
    """Centroid distance and covariance gap between paired query rows and target rows (both (n, D), fp64)."""
    out: dict[str, float | None] = {
        "centroid_distance": float(np.linalg.norm(queries.mean(axis=0) - targets.mean(axis=0))),
        "covariance_gap": None,
        "coral": None,
    }
    if queries.shape[0] >= 2:
        diff = _covariance(queries) - _covariance(targets)
        gap = float(np.linalg.norm(diff))
        out["covariance_gap"] = gap
        out["coral"] = gap**2 / (4 * queries.shape[1] ** 2)
    return out


def _positive_rows(corpus: RetrievalCorpus, embeddings: CorpusEmbeddings, qids: Sequence[str]):
    """Paired rows (query, relevant target), one per qrel: the stacked batch the whitening/CORAL term sees."""
    pairs = [(qid, did) for qid in qids for did, grade in corpus.qrels.get(qid, {}).items() if grade > 0]
    queries = embeddings.queries([q for q, _ in pairs]).astype(np.float64)
    targets = embeddings.docs([d for _, d in pairs]).astype(np.float64)
    return queries, targets


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def alignment_diagnostics(
    model: Any,
    corpus: RetrievalCorpus | Sequence[Mapping[str, Any]],
    embeddings: CorpusEmbeddings | None = None,
    *,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
) -> dict[str, Any]:
    """The quantities the e5-omni paper argues about, per modality pair and overall.

    Per pair (``"pairs"``), over that pair's queries and pool:

    - ``pair_temperature``: mean tau(q, p) over the pair's (query, positive) couples;
    - sharpness of the calibrated distribution softmax(cos / tau(q, p)) over the pool: ``logit_entropy`` (nats, mean
      over queries), ``logit_entropy_normalized`` (divided by log N, so 1 = uniform whatever the pool size),
      ``logit_std`` (std of the calibrated logits within a query's row, mean over queries) and
      ``positive_probability`` (softmax mass on the relevant documents). A model whose temperatures are too high
      spreads its mass (entropy near 1); the temperature component exists to sharpen pairs that need it;
    - ``positive_cosine`` / ``negative_cosine`` (mean cosine to relevant / other candidates) and ``cosine_margin``;
    - modality-gap geometry over the paired rows (Q_i, P_i), one per (query, relevant target):
      ``centroid_distance`` = ||mean(Q) - mean(P)||_2 (the paper's 0.530 -> 0.477 on VOC2007),
      ``covariance_gap`` = ||Cov(Q) - Cov(P)||_F with unbiased covariances of the unit embeddings (the paper's
      0.085 -> 0.061 is, we believe, this raw Frobenius norm; unit rows give tr Cov <= 1, so it is comparable across
      dimensions), and ``coral`` = covariance_gap^2 / (4 D^2), the CORAL loss's own scale, computed on the
      embeddings the model outputs (the loss uses batch-whitened ones). Undefined (None) with fewer than 2 rows.

    ``"overall"``: the geometry on all pairs' rows stacked (one modality-gap figure for the whole set) and the macro
    average over pairs of the other quantities. ``"temperatures"``: the learned tau per modality.
    """
    corpus, embeddings = _resolve(model, corpus, embeddings, batch_size=batch_size, show_progress_bar=show_progress_bar)
    if model is None:
        raise EvaluationError("alignment_diagnostics needs the model (its temperatures)")
    pairs_out: dict[str, dict[str, Any]] = {}
    all_q, all_p = [], []
    for pair in corpus.pairs:
        sums = dict.fromkeys(("logit_entropy", "logit_entropy_normalized", "logit_std", "positive_probability"), 0.0)
        pos_sum = neg_sum = 0.0
        pos_n = neg_n = 0
        tau_sum, n_queries, n_candidates = 0.0, 0, 0
        qids: list[str] = []
        for chunk in pair_scores(model, corpus, embeddings, pair):
            logits = chunk.logits  # (Q, N) cos / tau(q, p)
            log_p = _log_softmax(logits)
            entropy = -(np.exp(log_p) * log_p).sum(axis=1)  # (Q,)
            n = logits.shape[1]
            sums["logit_entropy"] += entropy.sum()
            sums["logit_entropy_normalized"] += (entropy / math.log(n)).sum() if n > 1 else 0.0
            sums["logit_std"] += logits.std(axis=1).sum()
            sums["positive_probability"] += (np.exp(log_p) * chunk.relevant).sum()
            pos_sum += chunk.cosine[chunk.relevant].sum()
            pos_n += int(chunk.relevant.sum())
            neg_sum += chunk.cosine[~chunk.relevant].sum()
            neg_n += int((~chunk.relevant).sum())
            tau_sum += chunk.temperature[chunk.relevant].sum()
            n_queries += logits.shape[0]
            n_candidates = n
            qids += chunk.query_ids
        if not n_queries:
            continue
        row: dict[str, Any] = {"num_queries": n_queries, "num_candidates": n_candidates}
        row["pair_temperature"] = tau_sum / pos_n
        row.update({name: float(value) / n_queries for name, value in sums.items()})
        row["positive_cosine"] = pos_sum / pos_n
        row["negative_cosine"] = neg_sum / neg_n if neg_n else None
        row["cosine_margin"] = row["positive_cosine"] - row["negative_cosine"] if neg_n else None
        queries, targets = _positive_rows(corpus, embeddings, qids)
        row.update(_geometry(queries, targets))
        all_q.append(queries)
        all_p.append(targets)
        pairs_out[pair] = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()}
    if not pairs_out:
        raise EvaluationError("no pair has queries: nothing to diagnose")
    overall: dict[str, Any] = {"num_queries": sum(r["num_queries"] for r in pairs_out.values())}
    for name in (
        "pair_temperature",
        "logit_entropy",
        "logit_entropy_normalized",
        "logit_std",
        "positive_probability",
        "positive_cosine",
        "negative_cosine",
        "cosine_margin",
    ):
        values = [r[name] for r in pairs_out.values() if r.get(name) is not None]
        overall[name] = float(np.mean(values)) if values else None
    overall.update(_geometry(np.concatenate(all_q), np.concatenate(all_p)))
    return {"temperatures": dict(model.temperatures), "pairs": pairs_out, "overall": overall}


# =====================================================================================================================
# Writers
# =====================================================================================================================


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None  # strict JSON has no NaN / Infinity
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a result / diagnostics / report dict as strict JSON (NaN and inf become null), indented, UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _label(metric: str) -> str:
    name, _, k = metric.partition("@")
    return {"hit": "Hit", "recall": "Recall", "ndcg": "NDCG", "mrr": "MRR"}[name] + (f"@{k}" if k else "")


def _fmt(value: Any, percent: bool) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * value:.1f}" if percent else f"{value:.4f}"


def metrics_markdown(
    result: Mapping[str, Any],
    *,
    metrics: Sequence[str] | None = None,
    percent: bool = True,
    visual_document_pairs: Iterable[str] = (),
    headline: bool = True,
) -> str:
    """A Markdown report a model card can embed: all metrics per pair, then each pair under its benchmark convention.

    Rows = pairs, then "overall (macro)" and "overall (micro)"; columns = ``metrics`` (default: every metric in the
    result but ndcg@1, identical to hit@1 for binary relevance). Values in percent with one decimal (as papers report them) unless ``percent=False``.
    """
    pairs = pair_keys(result)
    if not pairs:
        raise EvaluationError(
            "the result has no pair entries (keys like 'text->image'); is it from evaluate_retrieval?"
        )
    if metrics is None:  # every metric except ndcg@1, which equals hit@1 under binary relevance
        metrics = [k for k in result[pairs[0]] if not k.startswith("num_") and k != "ndcg@1"]
    unit = " (%)" if percent else ""
    lines = [
        "| pair | queries | candidates | " + " | ".join(_label(m) + unit for m in metrics) + " |",
        "|---|---:|---:|" + "---:|" * len(metrics),
    ]
    for pair in pairs:
        row = result[pair]
        cells = [_fmt(row.get(m), percent) for m in metrics]
        lines.append(f"| {pair} | {row['num_queries']} | {row['num_candidates']} | " + " | ".join(cells) + " |")
    for key, name in (("overall", "**overall (macro over pairs)**"), ("overall_micro", "overall (micro over queries)")):
        if key in result:
            cells = [_fmt(result[key].get(m), percent) for m in metrics]
            lines.append(f"| {name} | {result[key]['num_queries']} | | " + " | ".join(cells) + " |")
    if headline:
        lines += ["", "| pair | convention | score" + unit + " |", "|---|---|---|"]
        heads = headline_metrics(result, visual_document_pairs=visual_document_pairs)
        for pair in pairs:
            row = heads[pair]
            scores = " / ".join(f"{k} {_fmt(v, percent)}" for k, v in row.items() if k != "convention")
            lines.append(f"| {pair} | {row['convention']} | {scores or 'n/a'} |")
        if "score" in heads["overall"]:
            lines.append(f"| overall | {heads['overall']['convention']} | {_fmt(heads['overall']['score'], percent)} |")
    return "\n".join(lines) + "\n"


_DIAGNOSTIC_COLUMNS = (
    ("pair_temperature", "tau(q,p)", 4),
    ("logit_entropy_normalized", "entropy / log N", 3),
    ("logit_std", "logit std", 2),
    ("positive_probability", "p(positive)", 3),
    ("positive_cosine", "cos pos", 3),
    ("negative_cosine", "cos neg", 3),
    ("centroid_distance", "centroid dist", 3),
    ("covariance_gap", "cov gap (F)", 4),
)


def diagnostics_markdown(diagnostics: Mapping[str, Any]) -> str:
    """Markdown of :func:`alignment_diagnostics`: the learned temperatures, then one row per pair and the overall."""
    temps = ", ".join(f"{m} {v:.4f}" for m, v in diagnostics["temperatures"].items())
    lines = [
        f"Learned temperatures tau: {temps}.",
        "",
        "| pair | " + " | ".join(label for _, label, _ in _DIAGNOSTIC_COLUMNS) + " |",
        "|---|" + "---:|" * len(_DIAGNOSTIC_COLUMNS),
    ]
    rows = list(diagnostics["pairs"].items()) + [("**overall**", diagnostics["overall"])]
    for name, row in rows:
        cells = []
        for key, _, digits in _DIAGNOSTIC_COLUMNS:
            value = row.get(key)
            cells.append("n/a" if value is None else f"{value:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(
    result: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    diagnostics: Mapping[str, Any] | None = None,
    title: str | None = None,
    visual_document_pairs: Iterable[str] = (),
) -> Path:
    """Write :func:`metrics_markdown` (and :func:`diagnostics_markdown` when given) to ``path``."""
    parts = [f"## {title}\n" if title else "", metrics_markdown(result, visual_document_pairs=visual_document_pairs)]
    if diagnostics is not None:
        parts += ["\n### Alignment diagnostics\n\n", diagnostics_markdown(diagnostics)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path


# =====================================================================================================================
# Plots (matplotlib's object API: no pyplot, no global backend switch, safe inside notebooks and servers)
# =====================================================================================================================

_MODALITY_COLOURS = {"text": "tab:blue", "image": "tab:orange", "audio": "tab:green", "video": "tab:red"}
_TAU_KEY = re.compile(r"(?:^|[/_])(?:tau|temperature)[/_](text|image|audio|video)$")


def _figure(**kwargs: Any) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # matplotlib is in the [train] extra
        raise ImportError("plots need matplotlib: pip install 'e5-omni[train]'") from err
    return Figure(**kwargs)  # a bare Figure renders with the Agg canvas on savefig


def load_log_history(source: str | os.PathLike | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict]:
    """Training logs as a list of dicts, from any of: such a list; a ``trainer_state.json`` dict (its
    ``log_history``); a path to ``trainer_state.json``; or a folder containing one (a checkpoint or output dir)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / "trainer_state.json"
        if not path.is_file():
            raise EvaluationError(f"no training log at {path} (expected a trainer_state.json)")
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise EvaluationError(f"{path} is not valid JSON: {err}") from None
    if isinstance(source, Mapping):
        if "log_history" not in source:
            raise EvaluationError(f"expected a trainer state with 'log_history', got keys {sorted(source)[:10]}")
        source = source["log_history"]
    if not isinstance(source, Sequence) or not all(isinstance(e, Mapping) for e in source):
        raise EvaluationError("a log history must be a list of dicts (transformers' trainer_state.json log_history)")
    return [dict(entry) for entry in source]


def temperature_history(log_history: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{modality: (steps, tau)} from log entries carrying ``tau_<modality>`` (also ``train/tau_text``,
    ``temperature/text``...). Entries without ``step`` use their position; one value per step (the last) is kept."""
    series: dict[str, dict[float, float]] = {}
    for index, entry in enumerate(load_log_history(log_history)):
        step = entry.get("step", entry.get("global_step", index))
        for key, value in entry.items():
            match = _TAU_KEY.search(str(key))
            if match and isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(match.group(1), {})[float(step)] = float(value)
    out = {}
    for modality in MODALITIES:
        if modality in series:
            steps = np.array(sorted(series[modality]))
            out[modality] = (steps, np.array([series[modality][s] for s in steps]))
    return out


def plot_temperature_trajectories(
    log_history: Any, path: str | os.PathLike, *, reference: Mapping[str, float] | None = PAPER_7B_TEMPERATURES
) -> Path:
    """Line plot of each modality's tau against the training step (log y axis: tau moves multiplicatively).

    Dotted lines mark ``reference`` values (default: the released 7B's learned tau) in the same colours.
    """
    history = temperature_history(log_history)
    if not history:
        raise EvaluationError(
            "no temperatures in the log history: expected entries with keys like 'tau_text', 'tau_image' and 'step'"
        )
    fig = _figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for modality, (steps, taus) in history.items():
        colour = _MODALITY_COLOURS[modality]
        ax.plot(steps, taus, color=colour, marker="o" if len(steps) < 30 else None, ms=3, label=f"tau {modality}")
        if reference and modality in reference:
            ax.axhline(reference[modality], color=colour, ls=":", lw=1)
    if reference:
        ax.plot([], [], color="grey", ls=":", label="e5-omni-7B (paper)")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_formatter(FormatStrFormatter("%.3g"))  # plain numbers (0.013), not 10^-2 with unlabelled minor ticks
    ax.set_xlabel("training step")
    ax.set_ylabel("temperature tau (log scale)")
    ax.set_title("Per-modality temperatures during training")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _grid(n: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(n)))  # 9 panels -> 3 x 3, 10 -> 3 x 4
    return math.ceil(n / cols), cols


def plot_similarity_histograms(
    corpus: RetrievalCorpus,
    embeddings: CorpusEmbeddings,
    path: str | os.PathLike,
    *,
    bins: int = 40,
) -> Path:
    """One panel per pair: cosine similarity of queries to their relevant documents vs to the other candidates.

    Densities, not counts (negatives outnumber positives by the pool size). Well-aligned pairs separate the two
    humps; the title gives the mean margin and Hit@1 so the panel reads on its own.
    """
    pairs = corpus.pairs
    rows, cols = _grid(len(pairs))
    fig = _figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, pair in zip(axes, pairs, strict=False):
        chunks = list(pair_scores(None, corpus, embeddings, pair))
        cos = np.concatenate([c.cosine.ravel() for c in chunks])
        rel = np.concatenate([c.relevant.ravel() for c in chunks])
        hit = np.concatenate([hit_at_k(c.cosine, c.relevant, 1) for c in chunks]).mean()
        lo, hi = float(cos.min()), float(cos.max())
        # Same range for both densities; the few relevant scores get fewer bins, or their histogram is all spikes.
        hi = hi if hi > lo else lo + 1e-6
        coarse = np.linspace(lo, hi, int(np.clip(2.5 * math.sqrt(rel.sum()), 8, bins)) + 1)
        fine = np.linspace(lo, hi, bins + 1)
        ax.hist(cos[~rel], bins=fine, density=True, alpha=0.5, color="tab:grey", label=f"other ({(~rel).sum()})")
        ax.hist(cos[rel], bins=coarse, density=True, alpha=0.45, color="tab:green", label=f"relevant ({rel.sum()})")
        ax.hist(cos[rel], bins=coarse, density=True, histtype="step", lw=1.5, color="darkgreen")
        margin = cos[rel].mean() - (cos[~rel].mean() if (~rel).any() else float("nan"))
        ax.set_title(f"{pair}\nmean margin {margin:+.3f}, Hit@1 {100 * hit:.1f}%", fontsize=10)
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    fig.suptitle("Query-candidate similarity per modality pair: relevant vs other candidates")
    return _save(fig, path)


def _covariance_differences(
    corpus: RetrievalCorpus, embeddings: CorpusEmbeddings, max_dims: int
) -> tuple[list[tuple[str, np.ndarray, float]], int, bool]:
    """Cov(Q) - Cov(P) per pair and for all pairs stacked, in a shared basis of at most ``max_dims`` dimensions."""
    rows: list[tuple[str, np.ndarray, np.ndarray]] = []
    for pair in corpus.pairs:
        qids = [qid for qid, p in corpus.query_pair.items() if p == pair]
        queries, targets = _positive_rows(corpus, embeddings, qids)
        if queries.shape[0] >= 2:
            rows.append((pair, queries, targets))
    if not rows:
        raise EvaluationError("covariances need at least 2 (query, target) rows in some pair")
    stacked_q = np.concatenate([q for _, q, _ in rows])
    stacked_p = np.concatenate([p for _, _, p in rows])
    dim = stacked_q.shape[1]
    projected = dim > max_dims
    basis = np.eye(dim)
    if projected:  # top principal directions of all paired rows: where the covariance mass (and its gap) lives
        pooled = np.concatenate([stacked_q, stacked_p])
        _, _, vt = np.linalg.svd(pooled - pooled.mean(axis=0), full_matrices=False)
        basis = vt[:max_dims].T  # (D, k)
    out = []
    for name, q, p in [("all pairs", stacked_q, stacked_p)] + rows:
        diff = _covariance(q) - _covariance(p)
        out.append((name, basis.T @ diff @ basis, float(np.linalg.norm(diff))))
    return out, dim, projected


def plot_covariance_difference(
    corpus: RetrievalCorpus, embeddings: CorpusEmbeddings, path: str | os.PathLike, *, max_dims: int = 64
) -> Path:
    """Heatmaps of Cov(Q) - Cov(P) (queries minus their targets): all pairs stacked, then each pair.

    Diverging colours centred on 0, one symmetric scale per panel (the stacked panel is several times larger than
    any single pair and would wash the others out); compare panels by the full ||Cov(Q) - Cov(P)||_F in each title. For D > ``max_dims`` the matrices are shown in the top ``max_dims`` principal directions of
    the embeddings (a 3584 x 3584 heatmap is unreadable); the Frobenius norms in the titles are always full-D.
    """
    panels, dim, projected = _covariance_differences(corpus, embeddings, max_dims)
    rows, cols = _grid(len(panels))
    fig = _figure(figsize=(4.0 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    label = "principal direction" if projected else "embedding dimension"
    for ax, (name, matrix, gap) in zip(axes, panels, strict=False):
        limit = float(np.abs(matrix).max()) or 1e-12  # own symmetric scale: the stacked panel would wash out the rest
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"{name}\n||Cov(Q)-Cov(P)||_F = {gap:.4f}", fontsize=10)
        ax.set_xlabel(label)
        ax.set_ylabel(label)
        fig.colorbar(image, ax=ax, shrink=0.85, format="%.0e")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    basis = f"top {max_dims} principal directions of D={dim}" if projected else f"all D={dim} dimensions"
    fig.suptitle(f"Cov(queries) - Cov(targets), red = queries vary more ({basis}; colour scale per panel)")
    return _save(fig, path)


def write_plots(
    corpus: RetrievalCorpus,
    embeddings: CorpusEmbeddings,
    out_dir: str | os.PathLike,
    *,
    log_history: Any = None,
) -> list[Path]:
    """Write ``similarity_histograms.png``, ``covariance_difference.png`` and, given a training log,
    ``temperatures.png`` into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    paths = [
        plot_similarity_histograms(corpus, embeddings, out / "similarity_histograms.png"),
        plot_covariance_difference(corpus, embeddings, out / "covariance_difference.png"),
    ]
    if log_history is not None:
        paths.append(plot_temperature_trajectories(log_history, out / "temperatures.png"))
    return paths


# =====================================================================================================================
# Command line: `e5omni eval`
# =====================================================================================================================


def load_eval_data(spec: str, *, media_root: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Examples from ``synthetic:test`` / ``synthetic:train`` (the bundled generated set, seed 0) or a ``.jsonl`` /
    ``.json`` / ``.csv`` file read by :func:`e5omni.data.load_jsonl` / :func:`e5omni.data.load_csv` (media paths
    confined to ``media_root``, default the file's folder). ``limit`` keeps the first examples."""
    if spec.startswith("synthetic:"):
        from e5omni.data.synthetic import build_synthetic

        split = spec.split(":", 1)[1]
        if split not in ("train", "test"):
            raise EvaluationError(
                f"unknown synthetic split {split!r} in {spec!r}; use synthetic:test or synthetic:train"
            )
        examples = build_synthetic(split, seed=0)
    else:
        from e5omni.data import load_csv, load_jsonl

        path = Path(spec)
        if not path.is_file():
            raise EvaluationError(f"--data {spec!r}: no such file (or use synthetic:test)")
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            examples = load_jsonl(path, media_root)
        elif suffix == ".csv":
            examples = load_csv(path, media_root)
        else:
            raise EvaluationError(f"--data {spec!r}: expected a .jsonl or .csv file, or synthetic:test")
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise EvaluationError(f"--data {spec!r} has no examples")
    return examples


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints like 1,5,10, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints like 1,5,10, got {text!r}")
    return ks


def run_eval(args: argparse.Namespace) -> int:
    """The ``eval`` subcommand: load, encode once, evaluate, diagnose, print the table, write what was asked.

    Data and cache problems (bad rows, unsafe media paths, a cache of another model) print one line naming what was
    wrong and return 2, like argparse errors, instead of a traceback.
    """
    from e5omni.data import DataError

    try:
        return _run_eval(args)
    except (DataError, EvaluationError) as err:  # EvaluationError is a ValueError; DataError covers file rows
        print(f"e5omni eval: {err}", file=sys.stderr)
        return 2


def _run_eval(args: argparse.Namespace) -> int:
    from transformers import AutoModel

    examples = load_eval_data(args.data, media_root=args.media_root, limit=args.limit)
    corpus = to_corpus(examples)
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True)
    if torch.cuda.is_available():
        model = model.to("cuda")
    embeddings = encode_corpus(model, corpus, batch_size=args.batch_size, cache_path=args.cache)
    metrics = evaluate_retrieval(model, corpus, ks=args.ks, embeddings=embeddings, calibrated=args.calibrated)
    diagnostics = alignment_diagnostics(model, corpus, embeddings)
    visdoc = [p for p in (args.visual_document_pairs or "").split(",") if p]
    report = {
        "model": str(args.model),
        "data": args.data,
        "num_queries": len(corpus.queries),
        "num_documents": len(corpus.corpus),
        "metrics": metrics,
        "headline": headline_metrics(metrics, visual_document_pairs=visdoc),
        "diagnostics": diagnostics,
    }
    print(metrics_markdown(metrics, visual_document_pairs=visdoc))
    print(diagnostics_markdown(diagnostics))
    if args.output:
        print(f"wrote {write_json(report, args.output)}")
    if args.markdown:
        title = f"Retrieval on {args.data}"
        print(
            f"wrote {write_markdown(metrics, args.markdown, diagnostics=diagnostics, title=title, visual_document_pairs=visdoc)}"
        )
    if args.plots:
        log = args.trainer_state
        if log is None and (Path(args.model) / "trainer_state.json").is_file():
            log = Path(args.model) / "trainer_state.json"
        if log is None:
            print("no trainer_state.json found (use --trainer-state): skipping the temperature plot", file=sys.stderr)
        for path in write_plots(corpus, embeddings, args.plots, log_history=log):
            print(f"wrote {path}")
    return 0


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to an ``argparse`` subparsers object (``e5omni eval MODEL --data ...``)."""
    p = subparsers.add_parser(
        "eval",
        help="retrieval metrics, alignment diagnostics and plots of a saved model on an omni dataset",
        description="Encode every distinct query and document once, rank each query against its modality pair's "
        "candidate pool, and report Hit@k, Recall@k, NDCG@k and MRR per pair and overall, plus alignment diagnostics.",
    )
    p.add_argument("model", help="a saved e5-omni model folder (or Hub id)")
    p.add_argument("--data", required=True, help="a .jsonl/.csv file (e5omni.data format), or synthetic:test")
    p.add_argument(
        "--media-root", default=None, help="folder media paths in --data are relative to (default: its folder)"
    )
    p.add_argument("--output", default=None, help="write the full report (metrics, headline, diagnostics) as JSON")
    p.add_argument("--markdown", default=None, help="write the metrics and diagnostics tables as Markdown")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots into DIR")
    p.add_argument("--trainer-state", default=None, help="trainer_state.json for the temperature plot")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--ks", type=_ks, default=(1, 5, 10), help="cut-offs, comma-separated (default 1,5,10)")
    p.add_argument("--cache", default=None, help="an .npz embedding cache (reused and extended; one per model)")
    p.add_argument("--calibrated", action="store_true", help="rank by cos / tau(q, p) instead of cosine")
    p.add_argument("--visual-document-pairs", default=None, help="comma-separated pairs scored by NDCG@5 (MMEB visdoc)")
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N examples")
    p.set_defaults(func=run_eval)
    return p
