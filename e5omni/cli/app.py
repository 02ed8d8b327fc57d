"""`e5omni app DIR`: the search page over an index folder written by `e5omni index`.

Exit status: 2 for a usage problem (not an index folder, no corpus source, another model than the index's, an
unreadable token file), else the server runs until interrupted (0).

Access: the page binds 127.0.0.1 (this machine only). `--host` with any other address prints a warning: whoever can
reach it can search the corpus, see its media and upload files; `--token-file FILE` (or E5OMNI_APP_TOKEN) puts every
route behind a token (open http://HOST:PORT/?token=TOKEN once; scripts send `Authorization: Bearer TOKEN`).
"""

from __future__ import annotations

import argparse
import os
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


TOKEN_ENV = "E5OMNI_APP_TOKEN"
MIN_TOKEN_CHARS = 16


def read_token(token_file: str | None) -> str | None:
    """The access token: the first line of `token_file`, else $E5OMNI_APP_TOKEN, else None. ValueError when the
    file cannot be read or the token is shorter than MIN_TOKEN_CHARS."""
    if token_file is not None:
        try:
            lines = open(token_file, encoding="utf-8").read().splitlines()  # noqa: SIM115
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--token-file {token_file}: cannot read it ({type(err).__name__})") from None
        token, where = (lines[0].strip() if lines else ""), f"--token-file {token_file}"
    else:
        token, where = os.environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{where}: the token must be at least {MIN_TOKEN_CHARS} characters (got {len(token)})")
    return token


def host_warning(host: str, token: str | None) -> str | None:
    """The warning printed for a host other than loopback (None for 127.0.0.1, ::1, localhost)."""
    from e5omni.app.page import is_loopback

    if is_loopback(host):
        return None
    if token:
        return (
            f"e5omni app: WARNING: listening on {host}, reachable from other machines; every request needs the "
            "token (plain HTTP: use it only on a network you trust, or behind an HTTPS proxy)"
        )
    return (
        f"e5omni app: WARNING: listening on {host} with no access control: anyone who can reach this port can "
        "search the corpus, see its media and upload files. Pass --token-file FILE (or set E5OMNI_APP_TOKEN), or "
        "bind 127.0.0.1 and tunnel."
    )


def cmd_app(args: argparse.Namespace) -> int:
    from e5omni.app.page import create_app, serve
    from e5omni.index import IndexBuildError

    try:
        token = read_token(args.token_file)
    except ValueError as err:
        print(f"e5omni app: {err}", file=sys.stderr)
        return 2
    warning = host_warning(args.host, token)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    try:
        engine, name = load_engine(args.dir, args.model, args.source, args.media_root)
    except (IndexBuildError, FileNotFoundError, ValueError) as err:
        print(f"e5omni app: {err}", file=sys.stderr)
        return 2
    missing = engine.store.missing
    if missing:
        print(f"e5omni app: {missing} row(s) of the index are not in the source: shown by id only", file=sys.stderr)
    app = create_app(engine, title=args.title, model_name=name, token=token)
    suffix = "/?token=..." if token else ""
    print(f"e5omni app: {engine.size:,} items on http://{args.host}:{args.port}{suffix}", file=sys.stderr, flush=True)
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
    p.add_argument(
        "--token-file",
        default=None,
        help=f"file whose first line is the access token every request needs (default: ${TOKEN_ENV}, else none)",
    )
    p.add_argument("--title", default="e5-omni search")
    p.set_defaults(func=cmd_app)
    return p
