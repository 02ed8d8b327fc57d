"""Plots: per-modality temperatures during training, query-candidate similarity histograms, covariance differences.

matplotlib's object API (``Figure`` with the Agg canvas): no pyplot, no global backend switch, safe inside notebooks
and servers. matplotlib is in the ``[train]`` extra. Training logs are transformers' ``trainer_state.json``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.data import MODALITIES, RetrievalCorpus
from e5omni.evaluation.diagnostics import _covariance, _positive_rows
from e5omni.evaluation.embeddings import CorpusEmbeddings
from e5omni.evaluation.errors import EvaluationError
from e5omni.evaluation.metrics import hit_at_k
from e5omni.evaluation.retrieval import pair_scores

PAPER_7B_TEMPERATURES: dict[str, float] = {"text": 0.0130, "image": 0.0127, "audio": 0.0219, "video": 0.0223}
"""Learned per-modality tau of the released e5-omni-7B (paper), drawn as reference lines in the temperature plot."""


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
