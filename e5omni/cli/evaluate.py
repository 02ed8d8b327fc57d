"""`e5omni eval MODEL --data SPEC [--mteb TASK,...] [--benchmark NAME]`: our retrieval report, and mteb's.

The numbers come from :mod:`e5omni.evaluation`; ``--data`` is read by :func:`e5omni.data.specs.load_data_spec`, the
one loader of data specs (the same one ``e5omni train`` uses). ``--mteb`` / ``--benchmark`` run ``mteb.evaluate`` with
:func:`e5omni.evaluation.mteb_model` on the same loaded model; ``--mteb local`` is ``--data`` itself as an mteb task
(:func:`e5omni.evaluation.retrieval_task`), reported next to ours with the largest difference between the two.
"""

from __future__ import annotations

import argparse
import sys
import warnings
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


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated mteb task names, got {text!r}")
    return names


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
    if args.data is None and not (args.mteb or args.benchmark):
        print("e5omni eval: give --data, --mteb TASK[,TASK...] or --benchmark NAME", file=sys.stderr)
        return 2
    if args.data is None and "local" in (args.mteb or []):
        print("e5omni eval: --mteb local is the --data set as an mteb task; give --data", file=sys.stderr)
        return 2
    if args.data is None:
        return _run_mteb(args, load_inference_model(args.model), None, None)
    log = _trainer_state(args) if args.plots else None  # a wrong --trainer-state fails before any encoding
    examples = load_data_spec(args.data, split="test", media_root=args.media_root, limit=args.limit)
    corpus = to_corpus(examples)
    model = load_inference_model(args.model)
    embeddings = encode_corpus(model, corpus, batch_size=args.batch_size, cache_path=args.cache)
    if args.truncate_dim is not None:
        if args.truncate_dim > embeddings.query_embeddings.shape[1]:
            print(
                f"e5omni eval: --truncate-dim {args.truncate_dim} is over the model's {embeddings.query_embeddings.shape[1]} "
                "dimensions",
                file=sys.stderr,
            )
            return 2
        untrained = getattr(model.config, "untrained_truncation", lambda dim: None)(args.truncate_dim)
        if untrained:
            warnings.warn(f"e5omni eval: {untrained}", UserWarning, stacklevel=1)
        embeddings = embeddings.truncated(args.truncate_dim)
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
    status = 0
    if args.mteb or args.benchmark:
        status = _run_mteb(args, model, corpus, report)
    if args.output:
        print(f"wrote {write_json(report, args.output)}")
    if args.markdown:
        title = f"Retrieval on {args.data}"
        print(
            f"wrote {write_markdown(metrics, args.markdown, diagnostics=diagnostics, title=title, visual_document_pairs=visdoc)}"
        )
    if args.plots:
        if log is None:
            print(
                f"no trainer_state.json in {args.model}: skipping the temperature plot. `e5omni train` writes it into "
                "its --output_dir (configs/demo.yaml: demo-output/checkpoints), not into --release_dir; pass "
                "--trainer-state with that folder or file",
                file=sys.stderr,
            )
        for path in write_plots(corpus, embeddings, args.plots, log_history=log):
            print(f"wrote {path}")
    return status


def _trainer_state(args: argparse.Namespace) -> Path | None:
    """The training log of the temperature plot: --trainer-state (a trainer_state.json, or the folder holding one:
    the training run's --output_dir or a checkpoint), else MODEL/trainer_state.json when the model folder has one,
    else None. A --trainer-state that names nothing readable is an error (exit 2), found before anything is encoded."""
    if args.trainer_state is not None:
        path = Path(args.trainer_state)
        path = path / "trainer_state.json" if path.is_dir() else path
        if not path.is_file():
            raise EvaluationError(
                f"--trainer-state {args.trainer_state}: no trainer_state.json there (expected the file, or the "
                "folder `e5omni train` wrote it to: its --output_dir)"
            )
        return path
    beside = Path(args.model) / "trainer_state.json"
    return beside if beside.is_file() else None


def _mteb_output(args: argparse.Namespace) -> Path:
    """Where mteb's result files go: --mteb-output, else an ``mteb`` folder next to --output, else ./mteb-results."""
    if args.mteb_output:
        return Path(args.mteb_output)
    if args.output:
        return Path(args.output).resolve().parent / "mteb"
    return Path("mteb-results")


def _mteb_tasks(names: list[str], corpus) -> list:
    """mteb tasks by name: "local" (our --data), mteb's mock tasks (offline smoke tests), else mteb's registry."""
    import mteb
    from mteb.mocks import ALL_MOCK_TASK_REGISTRY, MOCK_MULTIMODAL_TASKS

    from e5omni.evaluation.mteb_model import retrieval_task

    mocks = {**ALL_MOCK_TASK_REGISTRY, **{t.metadata.name: type(t) for t in MOCK_MULTIMODAL_TASKS}}
    tasks = []
    for name in names:
        if name == "local":
            tasks.append(retrieval_task(corpus))
        elif name in mocks:
            tasks.append(mocks[name]())
        else:
            try:
                tasks.extend(mteb.get_tasks(tasks=[name]))
            except KeyError as err:
                raise EvaluationError(f"--mteb: {err.args[0] if err.args else name}") from None
    return tasks


def _run_mteb(args: argparse.Namespace, model, corpus, report: dict | None) -> int:
    """Run mteb on the loaded model; its result files go to `_mteb_output`, a summary into the report."""
    import mteb

    from e5omni.evaluation.mteb_model import E5OmniRetrievalTask, compare_with_mteb, mteb_model

    tasks = _mteb_tasks(args.mteb or [], corpus)
    if args.benchmark:
        try:
            benchmark = mteb.get_benchmark(args.benchmark)
        except (KeyError, ValueError) as err:
            raise EvaluationError(f"--benchmark: {err}") from None
        tasks.extend(benchmark.tasks)
    encoder = mteb_model(model, source=args.model)
    out = _mteb_output(args)
    results = mteb.evaluate(
        encoder,
        tasks,
        cache=mteb.ResultCache(cache_path=out),
        raise_error=False,
        encode_kwargs={"batch_size": args.batch_size},
        overwrite_strategy="always",
    )
    summary: dict[str, Any] = {"output": str(out), "model_meta": {"name": encoder.mteb_model_meta.name,
                                                                  "revision": encoder.mteb_model_meta.revision},
                               "tasks": {}, "errors": {}}  # fmt: skip
    print(f"\nmteb {mteb.__version__} on {encoder.mteb_model_meta.name} (results in {out})")
    print("| task | subset | split | main score |\n| --- | --- | --- | --- |")
    for result in results.task_results:
        task_summary = {}
        for split, entries in result.scores.items():
            for entry in entries:
                task_summary[f"{entry['hf_subset']}/{split}"] = {"main_score": entry["main_score"]}
                print(f"| {result.task_name} | {entry['hf_subset']} | {split} | {entry['main_score']:.5f} |")
        summary["tasks"][result.task_name] = task_summary
        local = [t for t in tasks if isinstance(t, E5OmniRetrievalTask) and t.metadata.name == result.task_name]
        if local and report is not None:
            agreement = compare_with_mteb(report["metrics"], result)
            worst = max((row["abs_diff"] for rows in agreement.values() for row in rows.values()), default=0.0)
            summary["agreement_with_ours"] = {"max_abs_diff": worst, "pairs": agreement}
            print(f"e5omni eval vs mteb on the same data: largest difference {worst:.2e} (hit/recall/ndcg@k, mrr)")
    for error in results.exceptions or []:
        summary["errors"][error.task_name] = error.exception
        print(f"mteb task {error.task_name} failed: {error.exception.strip().splitlines()[-1]}", file=sys.stderr)
    if report is not None:
        report["mteb"] = summary
    else:
        path = out / "e5omni_mteb_summary.json"
        print(f"wrote {write_json(summary, path)}")
    return 1 if summary["errors"] else 0


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to an ``argparse`` subparsers object (``e5omni eval MODEL --data ...``)."""
    p = subparsers.add_parser(
        "eval",
        help="retrieval metrics, alignment diagnostics and plots of a saved model on an omni dataset",
        description="Encode every distinct query and document once, rank each query against its modality pair's "
        "candidate pool, and report Hit@k, Recall@k, NDCG@k and MRR per pair and overall, plus alignment diagnostics.",
    )
    p.add_argument("model", help="a saved e5-omni model folder (or Hub id)")
    p.add_argument("--data", default=None, help=f"what to evaluate on: {SPEC_FORMS} (a hub split defaults to test)")
    p.add_argument(
        "--media-root", default=None, help="folder media paths in --data are relative to (default: its folder)"
    )
    p.add_argument("--output", default=None, help="write the full report (metrics, headline, diagnostics) as JSON")
    p.add_argument("--markdown", default=None, help="write the metrics and diagnostics tables as Markdown")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots into DIR")
    p.add_argument(
        "--trainer-state",
        default=None,
        metavar="PATH",
        help="the training log for the temperature plot: a trainer_state.json or the folder holding it (e5omni "
        "train's --output_dir); default MODEL/trainer_state.json when present",
    )
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--ks", type=_ks, default=(1, 5, 10), help="cut-offs, comma-separated (default 1,5,10)")
    p.add_argument("--cache", default=None, help="an .npz embedding cache (reused and extended; one per model)")
    p.add_argument("--calibrated", action="store_true", help="rank by cos / tau(q, p) instead of cosine")
    p.add_argument(
        "--truncate-dim",
        type=positive_int,
        default=None,
        help="evaluate the first D components, re-normalised (Matryoshka; warns for a dimension the model records no "
        "training for)",
    )
    p.add_argument("--visual-document-pairs", default=None, help="comma-separated pairs scored by NDCG@5 (MMEB visdoc)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N examples")
    p.add_argument(
        "--mteb",
        type=_names,
        default=None,
        metavar="TASK[,TASK...]",
        help="also run mteb.evaluate on these tasks: mteb task names, mteb mock task names (offline), or 'local' "
        "(the --data set as an mteb task, compared with ours)",
    )
    p.add_argument("--benchmark", default=None, help="also run the tasks of this mteb benchmark, e.g. 'MTEB(eng, v2)'")
    p.add_argument(
        "--mteb-output",
        default=None,
        metavar="DIR",
        help="mteb's result files (default: an 'mteb' folder next to --output, else ./mteb-results)",
    )
    p.set_defaults(func=run_eval)
    return p
