"""`e5omni index MODEL SOURCE --out DIR` and `e5omni search DIR --text ...`: embed a corpus, search it.

Exit status of `index`: 0 when every item was embedded, 1 when some failed (they are in DIR/errors.jsonl, counted in
the summary), 3 when `--max-errors` stopped the run early, 2 for a usage problem (a changed source on --resume, a
Ray cluster that cannot be reached, a damaged index folder). `--engine ray` runs the same job on Ray Data
(`e5omni.index.ray_engine`); Ray is imported only then. `e5omni index --verify DIR` and `e5omni search --verify`
check the index files against the sha256 sums in the manifest (exit 2 naming each file that does not match).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from e5omni.cli.common import load_inference_model, positive_int


def non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {number}")
    return number


def _verify(folder: str, command: str) -> int:
    """0 when every file of the index matches the manifest's checksums; 2 (each problem printed) otherwise."""
    from e5omni.index import IndexBuildError
    from e5omni.index.search import verify_index

    try:
        problems = verify_index(folder)
    except IndexBuildError as err:
        print(f"e5omni {command}: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"e5omni {command}: {folder}/{problem}", file=sys.stderr)
    return 2 if problems else 0


def cmd_index(args: argparse.Namespace) -> int:
    from e5omni.index import CorpusIndex, IndexBuildError, build_corpus
    from e5omni.index.search import TooFewVectorsError

    if args.verify is not None:
        if args.model is not None or args.source is not None:
            print("e5omni index: --verify DIR takes no MODEL or SOURCE", file=sys.stderr)
            return 2
        status = _verify(args.verify, "index")
        if status == 0:
            print(f"{args.verify}: every file matches the manifest's sha256")
        return status
    if args.model is None or args.source is None or args.out is None:
        print("e5omni index: give MODEL SOURCE --out DIR (or --verify DIR)", file=sys.stderr)
        return 2
    if args.rebuild_changed and not args.resume:
        print("e5omni index: --rebuild-changed goes with --resume (it updates an existing index)", file=sys.stderr)
        return 2
    if args.engine != "ray" and (args.ray_address is not None or args.ray_actors is not None):
        print("e5omni index: --ray-address / --ray-actors need --engine ray", file=sys.stderr)
        return 2
    if args.engine == "ray" and args.num_workers:
        print("e5omni index: --num-workers is for the local engine (ray decodes in its own tasks)", file=sys.stderr)
        return 2
    try:
        model = load_inference_model(args.model)
        summary = build_corpus(
            model,
            args.source,
            args.out,
            model_path=args.model,
            media_root=args.media_root,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            truncate_dim=args.truncate_dim,
            resume=args.resume,
            rebuild_changed=args.rebuild_changed,
            max_errors=args.max_errors,
            show_progress_bar=not args.no_progress,
            engine=args.engine,
            ray_address=args.ray_address,
            num_actors=args.ray_actors,
            num_workers=args.num_workers,
        )
        if not summary.stopped_early:
            try:
                CorpusIndex.build(args.out, kind=args.index)
            except TooFewVectorsError as err:  # a corpus too small to train an IVF index: exact search is better
                print(f"e5omni index: {err}; built a flat (exact) index instead", file=sys.stderr)
                CorpusIndex.build(args.out, kind="flat")
    except (IndexBuildError, FileNotFoundError, ValueError) as err:  # DataError is a ValueError
        print(f"e5omni index: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary.as_dict()))
    if summary.failed:
        print(f"{summary.failed} item(s) failed: see {args.out}/errors.jsonl", file=sys.stderr)
    if summary.warned:
        print(f"{summary.warned} item(s) embedded with warnings: see {args.out}/warnings.jsonl", file=sys.stderr)
    return 3 if summary.stopped_early else (1 if summary.failed else 0)


def _query(args: argparse.Namespace) -> Any:
    parts = {k: getattr(args, k) for k in ("text", "image", "audio", "video") if getattr(args, k) is not None}
    if not parts:
        raise ValueError("give at least one of --text / --image / --audio / --video (several make one mixed query)")
    return parts["text"] if list(parts) == ["text"] else parts


def _table(results) -> str:
    header = ("rank", "score", "calibrated", "id", "modalities", "source")
    lines = [header]
    for r in results:
        calibrated = "" if r.calibrated is None else f"{r.calibrated:.2f}"
        lines.append((str(r.rank), f"{r.score:.4f}", calibrated, r.id, "+".join(r.modalities), r.source))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines)


def cmd_search(args: argparse.Namespace) -> int:
    from e5omni.index import CorpusIndex, IndexBuildError
    from modeling_e5omni.inputs_e5omni import E5OmniInputError

    if args.verify and _verify(args.dir, "search"):
        return 2
    try:
        index = CorpusIndex.load(args.dir)
        name = args.model or index.manifest["model"].get("path")
        if not name:
            raise ValueError("the manifest names no model path: pass --model")
        try:
            model = load_inference_model(name)
        except (OSError, ValueError) as err:  # a folder that moved, a Hub id offline: transformers' OSError
            where = "--model" if args.model else f"{args.dir}/manifest.json"
            raise ValueError(
                f"cannot load the model {name!r} (from {where}): {str(err).splitlines()[0] if str(err) else err}; "
                "if it moved, pass --model NEW_PATH"
            ) from err
        results = index.search(
            model,
            _query(args),
            k=args.k,
            instruction=args.instruction,
            calibrated=args.calibrated,
            nprobe=args.nprobe,
        )
    except (IndexBuildError, FileNotFoundError, ValueError, E5OmniInputError) as err:  # a bad query item too
        print(f"e5omni search: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_dict() for r in results]))
    else:
        print(_table(results))
    return 0


def add_index_parsers(subparsers: Any) -> None:
    from e5omni.index import KINDS

    p = subparsers.add_parser("index", help="embed a folder or an item table into a searchable index folder")
    p.add_argument("model", nargs="?", help="a saved e5-omni model folder or Hub id")
    p.add_argument(
        "source",
        nargs="?",
        help="a folder (walked recursively), a .jsonl / .csv / .parquet file of items, or hub:NAME[:SPLIT] "
        "(a Hugging Face dataset with text/image/audio/video columns)",
    )
    p.add_argument("--out", help="the index folder (fresh, or an unfinished one with --resume)")
    p.add_argument(
        "--verify",
        metavar="DIR",
        default=None,
        help="check the shards and search files of index DIR against the manifest's sha256 sums (no MODEL, SOURCE)",
    )
    p.add_argument("--media-root", default=None, help="folder media paths in a table are relative to")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--shard-size", type=positive_int, default=1024, help="items per Parquet shard (the resume unit)")
    p.add_argument("--truncate-dim", type=positive_int, default=None, help="Matryoshka: keep the first D components")
    p.add_argument("--index", choices=KINDS, default="flat", help="faiss index kind (default: exact inner product)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--rebuild-changed",
        action="store_true",
        help="with --resume, when the source changed since: embed only new and modified items, drop deleted ones",
    )
    p.add_argument("--max-errors", type=non_negative_int, default=None, help="stop once more than N items have failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: Ray Data (decode in CPU tasks, embed in an actor pool; the [index] extra)",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="local engine: decode media and run the processor in N worker processes, overlapped with the forward",
    )
    p.add_argument("--ray-address", default=None, help="the Ray cluster to join (default: start a local one)")
    p.add_argument(
        "--ray-actors", type=positive_int, default=None, help="embedding actors (default: one per GPU, or one)"
    )
    p.set_defaults(func=cmd_index)

    p = subparsers.add_parser("search", help="search an index folder; the options combine into one mixed query")
    p.add_argument("dir", help="an index folder written by e5omni index")
    p.add_argument("--model", default=None, help="the model (default: the one named in the manifest)")
    p.add_argument(
        "--nprobe",
        type=positive_int,
        default=None,
        help="ivf / ivfpq indexes: lists to scan (default: the kind's preset; more is slower and finds more)",
    )
    p.add_argument("--text")
    p.add_argument("--image")
    p.add_argument("--audio")
    p.add_argument("--video")
    p.add_argument("--instruction", default=None, help="a query-side instruction")
    p.add_argument("-k", type=positive_int, default=10)
    p.add_argument("--calibrated", action="store_true", help="also report cos / tau(q, d)")
    p.add_argument("--verify", action="store_true", help="first check the index files against the manifest's sha256")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_search)
