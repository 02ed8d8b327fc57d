"""`e5omni app DIR`: the search page over an index folder written by `e5omni index`.

Exit status: 2 for a usage problem (not an index folder, no corpus source, another model than the index's), else the
server runs until interrupted (0).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from e5omni.cli.common import load_inference_model


def load_engine(
    folder: str, model_name: str | None = None, source: str | None = None, media_root: str | None = None, model=None
):
    """(engine, model name) for an index folder: the model named in the manifest unless given, the corpus source
    recorded in the manifest unless given."""
    from e5omni.app.engine import SearchEngine
    from e5omni.app.media import MediaStore, corpus_source
    from e5omni.index import CorpusIndex

    index = CorpusIndex.load(folder)
    name = model_name or index.manifest["model"].get("path")
    if model is None:
        if not name:
            raise ValueError("the manifest names no model path: pass --model")
        model = load_inference_model(name)
    recorded, recorded_root = corpus_source(index.manifest)
    source = source or recorded
    if source is None:
        raise ValueError(
            f"{folder}'s manifest does not record the corpus it was built from: pass --source FOLDER_OR_TABLE "
            "(and --media-root for a table) so the page can show the items"
        )
    store = MediaStore.from_index(
        index.rows, source, media_root or (recorded_root if source == recorded else None), model_config=model.config
    )
    return SearchEngine(model, index, store), name or ""


def cmd_app(args: argparse.Namespace) -> int:
    from e5omni.app.page import create_app, serve
    from e5omni.index import IndexBuildError

    try:
        engine, name = load_engine(args.dir, args.model, args.source, args.media_root)
    except (IndexBuildError, FileNotFoundError, ValueError) as err:
        print(f"e5omni app: {err}", file=sys.stderr)
        return 2
    missing = engine.store.missing
    if missing:
        print(f"e5omni app: {missing} row(s) of the index are not in the source: shown by id only", file=sys.stderr)
    app = create_app(engine, title=args.title, model_name=name)
    print(f"e5omni app: {engine.size:,} items on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    serve(app, host=args.host, port=args.port)
    return 0


def add_app_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("app", help="a search page (gradio) over an index folder: text, image, audio, video")
    p.add_argument("dir", help="an index folder written by e5omni index")
    p.add_argument("--model", default=None, help="the model (default: the one named in the manifest)")
    p.add_argument(
        "--source", default=None, help="the folder or item table the index was built from (default: the manifest's)"
    )
    p.add_argument("--media-root", default=None, help="folder the table's media paths are relative to")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--title", default="e5-omni search")
    p.set_defaults(func=cmd_app)
    return p
