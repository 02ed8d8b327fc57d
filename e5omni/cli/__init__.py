"""The `e5omni` command line.

    e5omni train --config configs/X.yaml [--key value ...]
    e5omni eval MODEL [--data synthetic:test|FILE|hub:NAME[:split]] [--mteb TASK,...] [--benchmark NAME] [--output metrics.json]
    e5omni push FOLDER --repo-id ID [--revision BRANCH] [--private] [--create-pr] [--dry-run DIR]
    e5omni init-tiny OUT [--backbone qwen2.5-omni|qwen2-vl|qwen2.5-vl|qwen3-vl|qwen3-omni] [--seed N]
    e5omni encode MODEL [--text STR | --image PATH | --audio PATH | --video PATH | --item JSON | --items FILE.jsonl]... [--query] [--batch-size N] [--output FILE.npy]
    e5omni convert SRC OUT [--temperatures text=0.0130,image=0.0127,audio=0.0219,video=0.0223]
                           [--conventions auto|e5-omni|qwen3-vl-embedding]
    e5omni demo [--output-dir DIR]
    e5omni index MODEL SOURCE --out DIR [--resume] [--max-errors N] [--truncate-dim D] [--index flat|ivf|ivfpq|hnsw]
    e5omni search DIR [--text STR] [--image PATH] [--audio PATH] [--video PATH] [--instruction STR] [-k N] [--json]
    e5omni mine MODEL --data SPEC --out FILE.jsonl [--corpus DIR] [--num-negatives K] [--range-min N] [--range-max N]
        [--max-score S] [--min-score S] [--absolute-margin M] [--relative-margin R] [--same-modality] [--resume]
        [--engine local|ray]
    e5omni export MODEL OUT [--format vllm] [--dtype float32|bfloat16|float16] [--overwrite]
    e5omni app DIR [--model M] [--source FOLDER|TABLE] [--media-root DIR] [--host 127.0.0.1] [--port 7860]

Each subcommand's code lives in a module of this package (model.py: init-tiny, encode, convert, demo; evaluate.py;
publish.py); `train` is dispatched to `e5omni.train.run` before argparse, because trl's TrlParser owns its flags.
"""

from __future__ import annotations

import argparse
import sys

from e5omni.cli.model import E5_OMNI_7B_TEMPERATURES, cmd_convert, cmd_demo, cmd_encode, cmd_init_tiny
from e5omni.tiny import ALL_BACKBONES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e5omni", description="e5-omni: omni-modal embeddings")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("train", help="fine-tune: e5omni train --config configs/demo.yaml [--key value ...]", add_help=False)

    p = sub.add_parser("init-tiny", help="write a tiny random e5-omni model folder (offline, seeded)")
    p.add_argument("out")
    p.add_argument("--backbone", choices=ALL_BACKBONES, default="qwen2.5-omni")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init_tiny)

    from e5omni.cli.model import add_encode_parser

    # several items: one per --text/--image/--audio/--video flag, --item JSON (modalities combined), --items FILE.jsonl
    add_encode_parser(sub).set_defaults(func=cmd_encode)

    p = sub.add_parser("convert", help="convert a released e5-omni checkpoint or a base backbone to our format")
    p.add_argument("src", help="local folder or Hub id")
    p.add_argument("out", help="a fresh output folder")
    p.add_argument(
        "--temperatures",
        help="seed the calibration, e.g. "
        + ",".join(f"{m}={t}" for m, t in E5_OMNI_7B_TEMPERATURES.items())
        + " (the values published for e5-omni-7B)",
    )
    p.add_argument(
        "--conventions",
        choices=["auto", "e5-omni", "qwen3-vl-embedding"],
        default="auto",
        help="embedding contract of the converted model: e5-omni's, or Qwen3-VL-Embedding's (instruction as a system "
        "message, no eos suffix); auto picks qwen3-vl-embedding for a Qwen3VLForEmbedding checkpoint",
    )
    p.set_defaults(func=cmd_convert)

    from e5omni.cli.app import add_app_parser
    from e5omni.cli.evaluate import add_eval_parser
    from e5omni.cli.export import add_export_parser
    from e5omni.cli.index import add_index_parsers
    from e5omni.cli.mine import add_mine_parser
    from e5omni.cli.publish import add_push_parser

    add_eval_parser(sub)
    add_index_parsers(sub)
    add_mine_parser(sub)
    add_app_parser(sub)
    add_push_parser(sub)
    add_export_parser(sub)

    p = sub.add_parser("demo", help="tiny model: evaluate, fine-tune with the full recipe, evaluate, save, reload")
    p.add_argument("--output-dir", default="demo-output")
    p.add_argument(
        "--config", default=None, help="recipe YAML (default: the packaged demo recipe, e5omni.demo.DEMO_RECIPE)"
    )
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. -- --num_train_epochs 2")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":  # YAML + overrides over dataclasses: trl's TrlParser owns these flags
        from e5omni.train.run import train_main

        train_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
