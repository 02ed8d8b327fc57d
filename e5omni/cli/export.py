"""`e5omni export MODEL OUT --format vllm`: a served form of a saved model (see e5omni.export, docs/serving.md).

Exit status: 0 with the serve command printed; 2 when the model cannot be exported as asked (whitening, an unknown
backbone, a non-empty OUT without --overwrite), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys


def add_export_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="write a served form of a model: --format vllm (vLLM embedding model folder)")
    p.add_argument("model", help="a saved e5-omni model folder or Hub id")
    p.add_argument("out", help="a fresh output folder")
    p.add_argument("--format", choices=("vllm",), default="vllm", dest="export_format")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None, help="default: the model's")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from e5omni.export import ExportError
    from e5omni.export.to_vllm import export_vllm_from

    try:
        out = export_vllm_from(args.model, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except ExportError as error:
        print(f"e5omni export: {error}", file=sys.stderr)
        return 2
    print(f"wrote a vLLM export of {args.model} to {out}; serve it with the command in {out / 'README.md'}")
    return 0
