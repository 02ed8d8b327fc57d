"""Retrieval quality during training: a sentence-transformers evaluator that reports our per-pair metrics.

    from e5omni.evaluation import OmniRetrievalEvaluator
    evaluator = OmniRetrievalEvaluator(eval_examples)            # training-style examples or a RetrievalCorpus
    trainer = E5OmniTrainer(model, args, train_examples, evaluator=evaluator)
    # args: eval_strategy="steps", eval_steps=..., metric_for_best_model="eval_overall_hit@1",
    #       load_best_model_at_end=True (save_strategy "steps" with save_steps a multiple of eval_steps)

Each call runs :func:`~e5omni.evaluation.evaluate_retrieval` on the current model (every distinct item encoded once,
each query ranked against its pair's pool) and returns ``{"{pair}_{metric}": value}`` for every modality pair and
``"overall"`` (macro over pairs), e.g. ``text->image_hit@1`` and ``overall_ndcg@5``. The trainer prefixes them with
``eval_``; ``primary_metric`` (default ``overall_hit@1``) is the one the sentence-transformers model card and
``metric_for_best_model`` read. Metric names and definitions are those of :mod:`e5omni.evaluation.metrics`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sentence_transformers.evaluation import SentenceEvaluator

from e5omni.data import RetrievalCorpus, to_corpus
from e5omni.evaluation.errors import EvaluationError
from e5omni.evaluation.retrieval import evaluate_retrieval, pair_keys

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_EVALUATOR_METRICS", "OmniRetrievalEvaluator"]

#: What the evaluator reports per pair and overall unless told otherwise: Hit@1, Recall@5/10, NDCG@5, MRR.
DEFAULT_EVALUATOR_METRICS = ("hit@1", "recall@5", "recall@10", "ndcg@5", "mrr")


def _parse_metric(metric: str) -> int | None:
    """The k of "hit@5" (None for "mrr"); raises EvaluationError for anything else."""
    if metric == "mrr":
        return None
    kind, sep, k = metric.partition("@")
    if sep and kind in ("hit", "recall", "ndcg") and k.isdigit() and int(k) >= 1:
        return int(k)
    raise EvaluationError(f"unknown metric {metric!r}; expected mrr or hit@k / recall@k / ndcg@k with k >= 1")


def _e5omni_model(model: Any):
    """The E5OmniModel inside a SentenceTransformer built from ours (or the model itself)."""
    if hasattr(model, "encode_query") and hasattr(model, "pair_temperature"):
        return model
    try:
        inner = model[0].auto_model
    except (TypeError, IndexError, AttributeError, KeyError):
        inner = None
    if inner is None or not hasattr(inner, "pair_temperature"):
        raise EvaluationError(
            f"OmniRetrievalEvaluator needs an e5-omni model (E5OmniModel or its SentenceTransformer), got "
            f"{type(model).__name__}"
        )
    return inner


class OmniRetrievalEvaluator(SentenceEvaluator):
    """Per-modality-pair retrieval metrics (Hit@k, Recall@k, NDCG@k, MRR) of an e5-omni model on an eval set.

    Args:
        data: training-style examples (``{"query", "positive", "negatives"?}``) or a
            :class:`~e5omni.data.RetrievalCorpus`; converted with ``to_corpus`` once, here.
        metrics: what to report per pair and overall (see :data:`DEFAULT_EVALUATOR_METRICS`).
        primary_metric: the key ``metric_for_best_model`` should name (without the trainer's ``eval_`` prefix and
            without ``name``); default ``"overall_" + metrics[0]``.
        per_pair: also report every pair (False: only ``overall_*``, a shorter log).
        name: prefix of every key (``"{name}_overall_hit@1"``); empty by default.
        batch_size: encoding batch size. ``calibrated``: rank by cos / tau(q, p) (same ranking within a pool).
        write_json: with an ``output_path`` (the trainer passes ``OUTPUT_DIR/eval``), append one JSON line per call to
            ``{name or "omni"}_retrieval_results.jsonl``: ``{"epoch", "steps", "metrics": full result}``.
    """

    def __init__(
        self,
        data: RetrievalCorpus | Sequence[Mapping[str, Any]],
        *,
        metrics: Sequence[str] = DEFAULT_EVALUATOR_METRICS,
        primary_metric: str | None = None,
        per_pair: bool = True,
        name: str = "",
        batch_size: int = 32,
        calibrated: bool = False,
        write_json: bool = True,
        show_progress_bar: bool = False,
    ) -> None:
        super().__init__()
        self.corpus = data if isinstance(data, RetrievalCorpus) else to_corpus(data)
        if not self.corpus.queries:
            raise EvaluationError("the eval set has no queries")
        metrics = list(metrics)
        if not metrics:
            raise EvaluationError("metrics is empty; name at least one, e.g. hit@1")
        ks = sorted({k for k in map(_parse_metric, metrics) if k is not None})
        self.metrics = metrics
        self.ks = tuple(ks) or (1,)
        self.per_pair = per_pair
        self.name = name
        self.batch_size = batch_size
        self.calibrated = calibrated
        self.write_json = write_json
        self.show_progress_bar = show_progress_bar
        self.greater_is_better = True
        keys = [f"overall_{m}" for m in metrics]
        if per_pair:
            keys += [f"{pair}_{m}" for pair in self.corpus.pairs for m in metrics]
        primary = primary_metric or f"overall_{metrics[0]}"
        if primary not in keys:
            raise EvaluationError(f"primary_metric {primary!r} is not one of the reported keys, e.g. {keys[:4]}")
        self.primary_metric = primary
        self.json_file = f"{name or 'omni'}_retrieval_results.jsonl"
        self.last_result: dict[str, dict[str, float]] | None = None

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        e5 = _e5omni_model(model)
        if getattr(e5.config, "whitening", False):  # describe the model a save would write now
            e5.refresh_whitening()
        result = evaluate_retrieval(
            e5,
            self.corpus,
            batch_size=self.batch_size,
            ks=self.ks,
            calibrated=self.calibrated,
            show_progress_bar=self.show_progress_bar,
        )
        self.last_result = result
        rows = ["overall", *pair_keys(result)] if self.per_pair else ["overall"]
        metrics = {f"{row}_{m}": float(result[row][m]) for row in rows for m in self.metrics}
        where = f" after {steps} steps" if steps != -1 else (f" after epoch {epoch}" if epoch != -1 else "")
        logger.info(
            "omni retrieval%s: %s",
            where,
            ", ".join(f"{m} {result['overall'][m]:.4f}" for m in self.metrics),
        )
        if output_path is not None and self.write_json:
            os.makedirs(output_path, exist_ok=True)
            with open(os.path.join(output_path, self.json_file), "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"epoch": epoch, "steps": steps, "metrics": result}) + "\n")
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        if hasattr(model, "model_card_data"):
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    @property
    def description(self) -> str:
        return "Omni Retrieval"

    def get_config_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "pairs": self.corpus.pairs, "num_queries": len(self.corpus.queries)}
