"""`e5omni init-tiny | encode | convert | demo`: the subcommands that make, embed with and convert model folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from e5omni.convert import E5_OMNI_7B_TEMPERATURES

__all__ = ["E5_OMNI_7B_TEMPERATURES", "add_encode_parser", "cmd_convert", "cmd_demo", "cmd_encode", "cmd_init_tiny"]


def cmd_init_tiny(args: argparse.Namespace) -> int:
    from e5omni.tiny import build_tiny

    out = build_tiny(args.out, backbone=args.backbone, seed=args.seed)
    print(f"wrote a tiny {args.backbone} e5-omni model (seed {args.seed}) to {out}")
    return 0


_ENCODE_EPILOG = """\
Items, in the order given (one output row each):
  --text STR / --image PATH / --audio PATH / --video PATH   one single-modality item per flag
  --item JSON        one item that may combine modalities, e.g. '{"text": "a cat", "image": "cat.jpg"}'
                     (keys text/image/audio/video/instruction; media paths as given, like --image)
  --items FILE.jsonl one item per line (a JSON string or object as for --item); media paths are relative to the
                     file's folder and must stay inside it
Output: one JSON line per item ({"index", "dim", "embedding"}), or an (N, D) float32 .npy with --output FILE.npy.
A bad item stops the run with one line naming its index, exit status 2.
"""


_SINGLE_FLAGS = (("text", "STR"), ("image", "PATH"), ("audio", "PATH"), ("video", "PATH"))


def _tagged(kind: str):
    """argparse `type` that tags a flag's value with its kind, so every item flag appends to one ordered list."""

    def tag(value: str) -> tuple[str, str]:
        return kind, value

    tag.__name__ = kind
    return tag


def add_encode_parser(sub) -> argparse.ArgumentParser:
    """The `encode` subparser (the caller sets its `func`)."""
    p = sub.add_parser(
        "encode",
        help="embed items with a saved model: one JSON line (or one .npy row) per item",
        epilog=_ENCODE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model")
    flags = [(kind, metavar, f"one {kind} item (repeat for more)") for kind, metavar in _SINGLE_FLAGS]
    flags += [
        ("item", "JSON", "one item as a JSON string or object, which may combine modalities (repeatable)"),
        ("items", "FILE.jsonl", "a JSON-lines file of items, media paths relative to (and confined to) its folder"),
    ]
    for kind, metavar, help_text in flags:  # one ordered list of (kind, value), whatever the flag
        p.add_argument(
            f"--{kind}", dest="sources", action="append", type=_tagged(kind), metavar=metavar, help=help_text
        )
    p.add_argument("--query", action="store_true", help="encode as queries (adds the query prompt)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="items per forward pass (default 32)")
    p.add_argument(
        "--num-workers",
        type=int,
        default=0,
        metavar="N",
        help="decode media and run the processor in N worker processes, overlapped with the forward (default 0)",
    )
    p.add_argument("--output", metavar="FILE.npy", help="write the (N, D) float32 embeddings here instead")
    return p


class _BadItem(ValueError):
    pass


def _items_from_file(path: str, role: str, first_index: int) -> list:
    from e5omni.data.errors import DataError
    from e5omni.data.files import _parse_file_item

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise _BadItem(f"--items {path}: cannot read it ({err})") from err
    items: list = []
    root = Path(path).resolve().parent
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        index = first_index + len(items)
        try:
            value = json.loads(line)
            items.append(_parse_file_item(value, role=role, media_root=root, source=path, row=row, must_exist=True))
        except json.JSONDecodeError as err:
            raise _BadItem(f"item {index}: {path} line {row}: invalid JSON ({err})") from err
        except DataError as err:
            raise _BadItem(f"item {index}: {err}") from err
    if not items:
        raise _BadItem(f"--items {path}: no items in the file")
    return items


def _collect_items(sources: list[tuple[str, str]], role: str) -> list:
    items: list = []
    for kind, value in sources:
        index = len(items)
        if kind == "items":
            items += _items_from_file(value, role, index)
        elif kind == "item":
            try:
                item = json.loads(value)
            except json.JSONDecodeError as err:
                raise _BadItem(f"item {index} (--item): invalid JSON ({err})") from err
            if not isinstance(item, str | dict):
                raise _BadItem(f"item {index} (--item): expected a JSON string or object, got {type(item).__name__}")
            items.append(item)
        elif not value.strip():
            raise _BadItem(f"item {index} (--{kind}): empty value")
        else:
            items.append(value if kind == "text" else {kind: value})
    return items


def cmd_encode(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print("encode: " + " ".join(message.split()), file=sys.stderr)
        return 2

    if not args.sources:
        return fail("give at least one item: --text/--image/--audio/--video, --item JSON or --items FILE.jsonl")
    if args.batch_size < 1:
        return fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        return fail(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.output is not None and not args.output.endswith(".npy"):
        return fail(f"--output must name a .npy file, got {args.output!r}")
    role = "query" if args.query else "document"
    try:
        items = _collect_items(args.sources, role)
    except _BadItem as err:
        return fail(str(err))

    from transformers import AutoConfig, AutoModel

    from modeling_e5omni.processing_e5omni import E5OmniInputError, check_items

    config = AutoConfig.from_pretrained(args.model, trust_remote_code=True)
    try:  # structure and modalities, before the weights load
        check_items(items, config.modalities)
    except E5OmniInputError as err:
        return fail(str(err))
    model = AutoModel.from_pretrained(args.model, config=config, trust_remote_code=True)
    embed = model.encode_query if args.query else model.encode_document
    try:
        vectors = embed(items, batch_size=args.batch_size, show_progress_bar=False, num_workers=args.num_workers)
    except ValueError as err:
        if getattr(err, "index", None) is None:  # not an item error (the checkpoint's own E5OmniInputError class)
            raise
        return fail(str(err))
    vectors = vectors.float().numpy()
    if args.output is not None:
        np.save(args.output, vectors)
        print(f"wrote {vectors.shape[0]} embeddings of dim {vectors.shape[1]} to {args.output}")
        return 0
    for index, vector in enumerate(vectors):
        row = {"index": index, "dim": int(vector.shape[0]), "embedding": [round(float(x), 6) for x in vector]}
        print(json.dumps(row))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from e5omni.convert import convert_checkpoint

    conventions = getattr(args, "conventions", "auto")
    out = convert_checkpoint(
        args.src, args.out, temperatures=args.temperatures, conventions=None if conventions == "auto" else conventions
    )
    print(f"converted {args.src} -> {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from e5omni.demo import run_demo

    run_demo(args.output_dir, config=args.config, overrides=args.overrides)
    return 0
