"""`e5omni eval MODEL --data SPEC`: load, encode once, evaluate, diagnose, print the tables, write what was asked.

The numbers come from :mod:`e5omni.evaluation`; ``--data`` is read by :func:`e5omni.data.specs.load_data_spec`, the
one loader of data specs (the same one ``e5omni train`` uses).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from e5omni.cli.common import load_inference_model, positive_int
from e5omni.data import DataError, to_corpus
from e5omni.data.specs import SPEC_FORMS, load_data_spec
from e5omni.evaluation import (
    EvaluationError,
    alignment_diagnostics,
    diagnostics_markdown,
    encode_corpus,
    evaluate_retrieval,
    headline_metrics,
    metrics_markdown,
    write_json,
    write_markdown,
    write_plots,
)

__all__ = ["add_eval_parser", "run_eval"]


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

    Data and cache problems (a spec that names nothing readable, bad rows, unsafe media paths, a cache of another
    model) print one line naming what was wrong and return 2, like argparse errors, instead of a traceback.
    """
    try:
        return _run_eval(args)
    except (DataError, EvaluationError) as err:  # EvaluationError is a ValueError; DataError: specs and file rows
        print(f"e5omni eval: {err}", file=sys.stderr)
        return 2


def _run_eval(args: argparse.Namespace) -> int:
    examples = load_data_spec(args.data, split="test", media_root=args.media_root, limit=args.limit)
    corpus = to_corpus(examples)
    model = load_inference_model(args.model)
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
    p.add_argument("--data", required=True, help=f"what to evaluate on: {SPEC_FORMS} (a hub split defaults to test)")
    p.add_argument(
        "--media-root", default=None, help="folder media paths in --data are relative to (default: its folder)"
    )
    p.add_argument("--output", default=None, help="write the full report (metrics, headline, diagnostics) as JSON")
    p.add_argument("--markdown", default=None, help="write the metrics and diagnostics tables as Markdown")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots into DIR")
    p.add_argument("--trainer-state", default=None, help="trainer_state.json for the temperature plot")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--ks", type=_ks, default=(1, 5, 10), help="cut-offs, comma-separated (default 1,5,10)")
    p.add_argument("--cache", default=None, help="an .npz embedding cache (reused and extended; one per model)")
    p.add_argument("--calibrated", action="store_true", help="rank by cos / tau(q, p) instead of cosine")
    p.add_argument("--visual-document-pairs", default=None, help="comma-separated pairs scored by NDCG@5 (MMEB visdoc)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N examples")
    p.set_defaults(func=run_eval)
    return p
