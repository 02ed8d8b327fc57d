"""Retrieval evaluation: score each pair's pool, average the metrics per pair and overall, report by benchmark.

- A query is ranked against **its pair's candidate pool** (``RetrievalCorpus.candidates[pair]``), as MMEB ranks each
  task separately: a text query of text->image is never scored against the captions of image->text.
- **overall** = macro average over pairs (each modality pair weighs the same, like MMEB's average over tasks; a pair
  with many queries cannot hide a weak one). **overall_micro** = average over all queries. Pair keys always contain
  ``"->"``; use :func:`pair_keys` to iterate them (the other keys are :data:`RESERVED_KEYS`).
- :func:`headline_metrics` reports each pair the way its benchmark does (AudioCaps R@k, MMEB-V2 Hit@1 / NDCG@5).

Scores are cosine similarities of the model's embeddings (what a user of the released checkpoints ranks by). With
``calibrated=True`` they are divided by the learned pair temperature tau(q, p) first; within one pool whose documents
share a modality set this changes no ranking, only the scale.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from e5omni.data import RetrievalCorpus, item_modalities
from e5omni.evaluation.embeddings import CorpusEmbeddings, _resolve
from e5omni.evaluation.errors import EvaluationError
from e5omni.evaluation.metrics import _check_k, metric_names, retrieval_metrics

RESERVED_KEYS = ("overall", "overall_micro")
_QUERY_CHUNK = 1024  # query rows scored at a time: bounds the (Q, N) matrices for large pools


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
