"""Our metrics next to mteb's on the same data (:data:`MTEB_METRIC_MAP`, :func:`compare_with_mteb`).

Part of the [mteb] integration; :mod:`e5omni.evaluation.mteb_model` re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e5omni.evaluation.errors import EvaluationError
from e5omni.evaluation.mteb_task import subset_name

__all__ = ["MTEB_METRIC_MAP", "compare_with_mteb"]


#: Our metric -> mteb's, where the definitions match: hit@k = mteb's hit_rate_at_k (pytrec_eval success_k),
#: recall@k = recall_at_k (pytrec recall_k: found relevant / all relevant), ndcg@k = ndcg_at_k (pytrec ndcg_cut_k,
#: binary gains, log2 discount). Our mrr has no cut-off: mteb's mrr_at_k with k >= the pool size. mteb's map_at_k,
#: precision_at_k and nAUC have no counterpart here.
MTEB_METRIC_MAP = {"hit@{k}": "hit_rate_at_{k}", "recall@{k}": "recall_at_{k}", "ndcg@{k}": "ndcg_at_{k}"}


def compare_with_mteb(ours: Mapping[str, Any], task_result: Any, split: str = "test") -> dict[str, dict[str, Any]]:
    """Per pair, our :func:`~e5omni.evaluation.evaluate_retrieval` value next to mteb's, for every metric both define.

    ``task_result``: the ``TaskResult`` of an :class:`E5OmniRetrievalTask` run. Returns ``{pair: {metric: {"ours",
    "mteb" (mteb's rounded score), "mteb_exact" (unrounded), "abs_diff" (ours vs exact)}}}``. Ties: we rank
    pessimistically, pytrec_eval by document id; with distinct scores (any trained or random model) both agree.
    """
    by_subset = {entry["hf_subset"]: entry for entry in task_result.scores[split]}
    out: dict[str, dict[str, Any]] = {}
    for pair, values in ours.items():
        if "->" not in pair:
            continue
        entry = by_subset.get(subset_name(pair))
        if entry is None:
            raise EvaluationError(f"the mteb result has no subset for {pair!r} ({subset_name(pair)})")
        exact = entry["e5omni_exact"]
        top = max(int(key.rsplit("_", 1)[1]) for key in exact if key.startswith("mrr_at_"))
        rows: dict[str, Any] = {}
        for metric, value in values.items():
            if metric == "mrr":
                theirs = f"mrr_at_{top}"
            elif "@" in metric:
                kind, k = metric.split("@")
                theirs = MTEB_METRIC_MAP.get(f"{kind}@{{k}}", "").format(k=k)
                if not theirs or theirs not in exact:
                    continue
            else:
                continue
            rows[metric] = {
                "mteb_metric": theirs,
                "ours": float(value),
                "mteb": entry.get(theirs),
                "mteb_exact": exact[theirs],
                "abs_diff": abs(float(value) - exact[theirs]),
            }
        out[pair] = rows
    return out
