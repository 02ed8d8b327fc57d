"""Retrieval evaluation, alignment diagnostics and plots: the numbers users choose a model by, and the ones that say why.

Pipeline (``e5omni eval MODEL --data ...`` runs exactly this)::

    corpus = to_corpus(examples)                         # queries, deduplicated documents, qrels, per-pair pools
    embeddings = encode_corpus(model, corpus)            # every distinct item encoded once (optionally .npz-cached)
    metrics = evaluate_retrieval(model, corpus, embeddings=embeddings)      # {pair: {...}, "overall": {...}}
    diagnostics = alignment_diagnostics(model, corpus, embeddings=embeddings)
    write_plots(corpus, embeddings, "plots/", log_history="out/trainer_state.json")

Where things live (every public name is also importable from ``e5omni.evaluation``):

- ``errors``: :class:`EvaluationError` (a ``ValueError``) and :class:`EmbeddingCacheError`.
- ``metrics``: hit@k, recall@k, ndcg@k, MRR on a score matrix, and the tie rule they share (pessimistic).
- ``embeddings``: :class:`CorpusEmbeddings`, :func:`encode_corpus`, the ``.npz`` cache and :func:`model_fingerprint`.
- ``retrieval``: scoring a pair's pool (:func:`pair_scores`), :func:`evaluate_retrieval` (per pair, macro and micro
  overall), and the benchmark conventions (:func:`benchmark_category`, :func:`headline_metrics`).
- ``diagnostics``: :func:`alignment_diagnostics` (temperatures, logit sharpness, modality gap, covariance gap).
- ``report``: :func:`write_json`, :func:`metrics_markdown`, :func:`diagnostics_markdown`, :func:`write_markdown`.
- ``plots``: training logs (:func:`load_log_history`, :func:`temperature_history`) and the PNG plots.
- ``evaluator``: :class:`OmniRetrievalEvaluator`, the sentence-transformers evaluator the trainer runs every
  ``eval_steps`` (per-pair Hit@1, Recall@k, NDCG@5, MRR; ``metric_for_best_model`` / ``load_best_model_at_end``).
- ``mteb_model`` (needs the ``[mteb]`` extra): :func:`mteb_model` (an mteb encoder with the right ``ModelMeta`` for
  any folder, Hub id or in-memory model), :func:`retrieval_task` (our data as an mteb task), :func:`compare_with_mteb`.

The evaluator and the mteb names are imported on first use (``import e5omni.evaluation`` stays light; mteb is heavy).

The ``e5omni eval`` command itself is :mod:`e5omni.cli.evaluate`.
"""

from __future__ import annotations

from e5omni.evaluation.diagnostics import alignment_diagnostics
from e5omni.evaluation.embeddings import CACHE_FORMAT, CorpusEmbeddings, encode_corpus, model_fingerprint
from e5omni.evaluation.errors import EmbeddingCacheError, EvaluationError
from e5omni.evaluation.metrics import (
    hit_at_k,
    metric_names,
    ndcg_at_k,
    ranked_relevance,
    recall_at_k,
    reciprocal_rank,
    retrieval_metrics,
)
from e5omni.evaluation.plots import (
    PAPER_7B_TEMPERATURES,
    load_log_history,
    plot_covariance_difference,
    plot_similarity_histograms,
    plot_temperature_trajectories,
    temperature_history,
    write_plots,
)
from e5omni.evaluation.report import diagnostics_markdown, metrics_markdown, write_json, write_markdown
from e5omni.evaluation.retrieval import (
    RESERVED_KEYS,
    PairScores,
    benchmark_category,
    evaluate_retrieval,
    headline_metrics,
    pair_keys,
    pair_scores,
)

_LAZY = {
    "DEFAULT_EVALUATOR_METRICS": "e5omni.evaluation.evaluator",
    "OmniRetrievalEvaluator": "e5omni.evaluation.evaluator",
    "E5OmniMTEBEncoder": "e5omni.evaluation.mteb_model",
    "E5OmniRetrievalTask": "e5omni.evaluation.mteb_model",
    "MTEB_METRIC_MAP": "e5omni.evaluation.mteb_model",
    "compare_with_mteb": "e5omni.evaluation.mteb_model",
    "e5omni_model_meta": "e5omni.evaluation.mteb_model",
    "mteb_model": "e5omni.evaluation.mteb_model",
    "retrieval_task": "e5omni.evaluation.mteb_model",
}


def __getattr__(name: str):
    """The evaluator (sentence-transformers) and the mteb integration, imported when first asked for."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_EVALUATOR_METRICS",
    "E5OmniMTEBEncoder",
    "E5OmniRetrievalTask",
    "MTEB_METRIC_MAP",
    "OmniRetrievalEvaluator",
    "compare_with_mteb",
    "e5omni_model_meta",
    "mteb_model",
    "retrieval_task",
    "CorpusEmbeddings",
    "EmbeddingCacheError",
    "EvaluationError",
    "PAPER_7B_TEMPERATURES",
    "PairScores",
    "RESERVED_KEYS",
    "alignment_diagnostics",
    "benchmark_category",
    "diagnostics_markdown",
    "encode_corpus",
    "evaluate_retrieval",
    "headline_metrics",
    "hit_at_k",
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
    "temperature_history",
    "write_json",
    "write_markdown",
    "write_plots",
]
