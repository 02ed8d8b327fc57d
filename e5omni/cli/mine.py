"""`e5omni mine MODEL --data SPEC --out FILE.jsonl`: hard negatives for a pairs-only dataset (`e5omni.mine`).

Exit status: 0 when every example got its negatives, 1 when some were left out (in FILE.errors.jsonl, counted in the
summary), 2 for a usage problem (bad options, unreadable data, an output in the way, a resume of another job).
The summary (FILE.summary.json) is also printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from e5omni.cli.common import load_inference_model, positive_int


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def cmd_mine(args: argparse.Namespace) -> int:
    from e5omni.data.specs import load_data_spec
    from e5omni.index import IndexBuildError
    from e5omni.mine import MineError, MineRules, mine

    if args.engine != "ray" and (args.ray_address is not None or args.ray_actors is not None):
        print("e5omni mine: --ray-address / --ray-actors need --engine ray", file=sys.stderr)
        return 2
    if args.engine == "ray" and args.num_workers:
        print("e5omni mine: --num-workers is for the local engine (ray decodes in its own tasks)", file=sys.stderr)
        return 2
    if args.corpus is None and (args.corpus_source is not None or args.corpus_media_root is not None):
        print("e5omni mine: --corpus-source / --corpus-media-root need --corpus", file=sys.stderr)
        return 2
    rules = MineRules(
        num_negatives=args.num_negatives,
        range_min=args.range_min,
        range_max=args.range_max,
        max_score=args.max_score,
        min_score=args.min_score,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin,
        same_modality=args.same_modality,
        max_candidates=args.max_candidates,
    )
    try:
        rules.check()
        examples = load_data_spec(
            args.data, media_root=args.media_root, limit=args.limit, synthetic_size=args.synthetic_size
        )
        model = load_inference_model(args.model)
        summary = mine(
            model,
            examples,
            args.out,
            rules=rules,
            corpus=args.corpus,
            corpus_source=args.corpus_source,
            corpus_media_root=args.corpus_media_root,
            model_path=args.model,
            engine=args.engine,
            ray_address=args.ray_address,
            num_actors=args.ray_actors,
            num_workers=args.num_workers,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            resume=args.resume,
            data_spec=args.data,
            show_progress_bar=not args.no_progress,
        )
    except (MineError, IndexBuildError, FileNotFoundError, ValueError) as err:  # DataError is a ValueError
        print(f"e5omni mine: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary.as_dict()))
    if summary.errors:
        from e5omni.mine import side_paths

        print(f"{summary.errors} example(s) left out: see {side_paths(args.out)['errors']}", file=sys.stderr)
    return 1 if summary.errors else 0


def add_mine_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "mine", help="add hard negatives to (query, positive) examples, keeping false negatives out"
    )
    p.add_argument("model", help="a saved e5-omni model folder or Hub id (the one that embeds queries and the pool)")
    p.add_argument("--data", required=True, help="the examples: a data spec (FILE.jsonl / .csv, hub:, synthetic:, ...)")
    p.add_argument("--out", required=True, help="the mined examples, FILE.jsonl (errors, summary, work next to it)")
    p.add_argument("--media-root", default=None, help="folder the data file's media paths are relative to")
    p.add_argument("--limit", type=positive_int, default=None, help="mine only the first N examples")
    p.add_argument("--synthetic-size", type=positive_int, default=None, help="examples of synthetic:train")
    p.add_argument(
        "--corpus",
        default=None,
        metavar="DIR",
        help="an `e5omni index` folder to take negatives from (default: the data's own positives)",
    )
    p.add_argument("--corpus-source", default=None, help="the corpus' source when its manifest records none")
    p.add_argument("--corpus-media-root", default=None, help="media root of --corpus-source (a table file)")
    p.add_argument("--num-negatives", type=positive_int, default=2, help="negatives per example (default 2)")
    p.add_argument("--range-min", type=_non_negative_int, default=0, help="skip the N most similar candidates left")
    p.add_argument("--range-max", type=positive_int, default=None, help="consider candidates up to rank N")
    p.add_argument("--max-score", type=float, default=None, help="drop candidates scoring above this cosine")
    p.add_argument("--min-score", type=float, default=None, help="drop candidates scoring below this cosine")
    p.add_argument(
        "--absolute-margin", type=float, default=None, help="drop candidates within this of the positive's score"
    )
    p.add_argument(
        "--relative-margin",
        type=float,
        default=None,
        help="drop candidates above positive - |positive| x this (0.05: NV-Retriever's TopK-PercPos)",
    )
    p.add_argument("--same-modality", action="store_true", help="only candidates with the positive's modalities")
    p.add_argument(
        "--max-candidates",
        type=positive_int,
        default=1024,
        help="a query whose candidates the rules use up retrieves more, up to this many (default 1024)",
    )
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--chunk-size", type=positive_int, default=512, help="examples per output chunk (the resume unit)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="how the pool is embedded (as e5omni index)"
    )
    p.add_argument("--num-workers", type=int, default=0, help="local engine: decoding worker processes")
    p.add_argument("--ray-address", default=None, help="the Ray cluster to join (default: start a local one)")
    p.add_argument("--ray-actors", type=positive_int, default=None, help="embedding actors (default: one per GPU)")
    p.set_defaults(func=cmd_mine)
    return p


def main(argv: list[str] | None = None) -> int:
    """`e5omni mine` on its own (tests; until the subcommand is registered in e5omni.cli)."""
    parser = argparse.ArgumentParser(prog="e5omni")
    add_mine_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["mine", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
