"""Reports: results as strict JSON, and the metrics, benchmark-convention and diagnostics tables as Markdown.

The Markdown is what a model card embeds: values in percent with one decimal, as papers report them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.evaluation.errors import EvaluationError
from e5omni.evaluation.retrieval import headline_metrics, pair_keys


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
