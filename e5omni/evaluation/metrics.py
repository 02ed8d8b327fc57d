"""Retrieval metrics on a score matrix (pure numpy; one row per query): hit@k, recall@k, ndcg@k and MRR.

Metrics take a score matrix ``(Q, N)`` and a boolean relevance matrix ``(Q, N)``; higher score = better. Conventions,
chosen once here so every number in a card means the same thing:

- **Relevance is binary** (the ``qrels`` of ``to_corpus``: ``{did: 1}``).
- **Ties are broken pessimistically**: among documents with exactly equal scores, non-relevant ones are ranked first.
  Why: a collapsed model (every embedding equal) must score *worst*, not best. ``to_corpus`` lists each positive before
  its hard negatives, so breaking ties by index (what ``argsort`` does) would reward a model that outputs constants.
- ``hit@k`` (a.k.a. success@k): 1 if *any* relevant document is in the top k. MMEB's Hit@1, and the "R@k" of
  AudioCaps / CLAP-style audio<->text retrieval (an audio is found if any of its captions is in the top k).
- ``recall@k``: the *fraction* of a query's relevant documents in the top k (BEIR / pytrec_eval ``recall_k``). Equal to
  ``hit@k`` when a query has a single relevant document.
- ``ndcg@k``: binary gains, discount ``1 / log2(rank + 1)``, ideal DCG from ``min(R, k)`` relevant documents at the top.
- ``mrr``: ``1 / rank`` of the first relevant document, no cut-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from e5omni.evaluation.errors import EvaluationError


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
