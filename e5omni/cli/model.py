"""`e5omni init-tiny | encode | convert | demo`: the subcommands that make, embed with and convert model folders."""

from __future__ import annotations

import argparse
import json
import sys

from e5omni.convert import E5_OMNI_7B_TEMPERATURES

__all__ = ["E5_OMNI_7B_TEMPERATURES", "cmd_convert", "cmd_demo", "cmd_encode", "cmd_init_tiny"]


def cmd_init_tiny(args: argparse.Namespace) -> int:
    from e5omni.tiny import build_tiny

    out = build_tiny(args.out, backbone=args.backbone, seed=args.seed)
    print(f"wrote a tiny {args.backbone} e5-omni model (seed {args.seed}) to {out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True)
    given = {"text": args.text, "image": args.image, "audio": args.audio, "video": args.video}
    item = {k: v for k, v in given.items() if v is not None}
    if not item:
        print("encode: give at least one of --text/--image/--audio/--video", file=sys.stderr)
        return 2
    embed = model.encode_query if args.query else model.encode_document
    vector = embed([item])[0]
    print(json.dumps({"dim": int(vector.shape[0]), "embedding": [round(float(x), 6) for x in vector]}))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from e5omni.convert import convert_checkpoint

    out = convert_checkpoint(args.src, args.out, temperatures=args.temperatures)
    print(f"converted {args.src} -> {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from e5omni.demo import run_demo

    run_demo(args.output_dir, config=args.config, overrides=args.overrides)
    return 0
