"""`e5omni export MODEL OUT --format vllm | sentence-transformers`: a served form of a saved model.

`vllm`: the folder vLLM serves (e5omni.export, docs/serving.md). `sentence-transformers`: a release folder that also
loads with stock `SentenceTransformer(OUT)`, no remote code (e5omni.native, docs/use-with.md).

Exit status: 0 with the serve command printed; 2 when the model cannot be exported as asked (whitening, an unknown
backbone, a non-empty OUT without --overwrite), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys


def add_export_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="write a served form of a model: --format vllm (vLLM embedding model folder) or sentence-transformers "
        "(loads with stock SentenceTransformer(OUT), no remote code)",
    )
    p.add_argument("model", help="a saved e5-omni model folder or Hub id")
    p.add_argument("out", help="a fresh output folder")
    p.add_argument("--format", choices=("vllm", "sentence-transformers"), default="vllm", dest="export_format")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None, help="default: the model's")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    if args.export_format == "sentence-transformers":
        return _export_native(args)
    from e5omni.export import ExportError
    from e5omni.export.to_vllm import export_vllm_from

    try:
        out = export_vllm_from(args.model, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except ExportError as error:
        print(f"e5omni export: {error}", file=sys.stderr)
        return 2
    print(f"wrote a vLLM export of {args.model} to {out}; serve it with the command in {out / 'README.md'}")
    return 0


def _export_native(args: argparse.Namespace) -> int:
    """A release folder (save_hub_folder) plus the native files: stock SentenceTransformer(OUT) loads it."""
    from pathlib import Path

    from e5omni.native import NativeExportError, check_native_export, write_native_st_files
    from e5omni.release import save_hub_folder
    from modeling_e5omni import E5OmniModel, E5OmniProcessor

    if args.dtype is not None:
        print("e5omni export: --dtype is for --format vllm; this format keeps the model's dtype", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"e5omni export: {out} is not empty (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    model = E5OmniModel.from_pretrained(args.model)
    processor = E5OmniProcessor.from_pretrained(args.model, config=model.config)
    try:
        check_native_export(model)  # before anything is written
        save_hub_folder(model, processor, out, overwrite=True)
        write_native_st_files(model, processor, out)
    except NativeExportError as error:
        print(f"e5omni export: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {out}: SentenceTransformer({str(out)!r}) loads it without trust_remote_code (stock modules; media "
        "budgets and typed item errors are the AutoModel path's, see docs/use-with.md)"
    )
    return 0
