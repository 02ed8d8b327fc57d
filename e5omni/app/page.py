"""The search page: gradio Blocks over a `SearchEngine`, mounted on a FastAPI app that also serves the index's media.

    app = create_app(engine, model_name="me/e5-omni")      # a FastAPI app (uvicorn runs it)
    serve(app, host="127.0.0.1", port=7860)                 # what `e5omni app DIR` does

Safe by default: `serve` binds 127.0.0.1 unless told otherwise; gradio's analytics are off, no share link, no run
history, no SSR node server, no MCP server, and the theme's fonts are gradio's bundled ones (nothing is fetched from
the internet: the browser test records every request the page makes). gradio's own file route serves only its upload
cache (`allowed_paths` is empty); the corpus is served by the routes below, by row number (`e5omni.app.media`).
Uploads are capped at `UploadLimits.max_file_bytes` by gradio before they are stored, then checked per kind.

Only files the page received as uploads are opened: the upload components check every path a request names
(`e5omni.app.uploads.checked_upload`: a regular file inside this process's private upload folder, not a symlink, not
a device or FIFO, under the byte limit of its kind) before gradio copies, hashes or preprocesses it, and gradio's own
upload-folder check is switched on as `launch()` would (a mounted Blocks skips it). Request bodies other than uploads
are capped (`MAX_BODY_BYTES`), uploads are deleted `upload_ttl` seconds after they arrive (and all of them when the
server stops), thumbnails and posters are decoded by at most `DECODE_WORKERS` threads, once per file however many
requests ask at the same time. `create_app(..., token=...)` puts the whole app (page, API, uploads, media) behind a
token: `?token=...` once in the browser (kept as an HttpOnly cookie) or `Authorization: Bearer ...`.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: it reads it at import too

import hmac  # noqa: E402
import ipaddress  # noqa: E402
from functools import partial  # noqa: E402
from html import escape  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from e5omni.app.engine import Outcome, Query, SearchEngine, default_k  # noqa: E402
from e5omni.app.media import MEDIA_KINDS, MediaNotFoundError  # noqa: E402
from e5omni.app.render import CSS, GRID_JS, header_html, results_html, status_html  # noqa: E402
from e5omni.app.uploads import UploadRefusedError, checked_upload, upload_folder  # noqa: E402

#: Largest request body the page takes outside the upload route (a query's text and instruction are far smaller).
MAX_BODY_BYTES = 1 << 20
#: Threads that decode thumbnails and poster frames (requests beyond them wait, holding no thread).
DECODE_WORKERS = 2
#: Seconds an upload is kept (a search re-run with another k or filter reuses it); all are deleted at shutdown.
UPLOAD_TTL_SECONDS = 3600
TOKEN_COOKIE = "e5omni_token"

ALL_MODALITIES = ["text", *MEDIA_KINDS]
WELCOME = '<div class="e5-empty">Results appear here.</div>'


class _UploadsOnly:
    """Mixin of the page's upload components: every path a request names is checked (`checked_upload`) before
    gradio copies, hashes or preprocesses the file; anything else is refused with a message, nothing is read."""

    e5_kind = "file"
    e5_max_bytes = 0

    def get_block_name(self) -> str:  # gradio names a template's frontend by its first base: this mixin
        return self.e5_kind

    def get_block_class(self) -> str:
        return self.e5_kind

    def _e5_checked(self, path: Any) -> str:
        try:
            return checked_upload(path, self.e5_kind, self.e5_max_bytes)
        except UploadRefusedError as err:
            raise gr.Error(escape(err.reason), print_exception=False) from None

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        if url_or_file_path is None:
            return None
        return await super().async_move_resource_to_block_cache(self._e5_checked(url_or_file_path))  # type: ignore[misc]

    def move_resource_to_block_cache(self, url_or_file_path):
        if url_or_file_path is None:
            return None
        return super().move_resource_to_block_cache(self._e5_checked(url_or_file_path))  # type: ignore[misc]

    def preprocess(self, payload: Any) -> Any:
        if payload is None:
            return None
        if getattr(payload, "path", None) is None:
            raise gr.Error(f"the {self.e5_kind} did not arrive as a file; upload it again", print_exception=False)
        payload.path = self._e5_checked(payload.path)
        return super().preprocess(payload)  # type: ignore[misc]


class RawImageUpload(_UploadsOnly, gr.Image):
    """`gr.Image` whose upload reaches the search as the file itself: gradio's own preprocessing opens it with PIL,
    which would fail on a corrupt upload with PIL's message before the model's validation could name the problem."""

    is_template = True  # the frontend component stays gradio's image
    e5_kind = "image"

    def preprocess(self, payload: Any) -> str | None:
        if payload is None:
            return None
        if payload.path is None:
            raise gr.Error("the image did not arrive as a file; upload it again", print_exception=False)
        return self._e5_checked(payload.path)


class AudioUpload(_UploadsOnly, gr.Audio):
    """`gr.Audio` taking only this page's uploads."""

    is_template = True
    e5_kind = "audio"


class VideoUpload(_UploadsOnly, gr.Video):
    """`gr.Video` taking only this page's uploads."""

    is_template = True
    e5_kind = "video"


def _status_idle(engine: SearchEngine) -> str:
    return (
        status_html(Outcome(query_label="none yet"), engine.size)
        .replace("0 results from", "search")
        .replace(" in 0 ms", "")
    )


def build_blocks(
    engine: SearchEngine,
    *,
    title: str = "e5-omni search",
    model_name: str = "",
    upload_ttl: int = UPLOAD_TTL_SECONDS,
) -> gr.Blocks:
    """The page. Every search goes through `engine.search`, so the page shows what `e5omni search` prints.
    Uploads are deleted `upload_ttl` seconds after they arrive."""
    upload_folder()  # before any component exists: each one reads the folder when it is built
    limits = engine.limits
    size = engine.size
    manifest = engine.index.manifest
    counts = engine.modality_counts()
    present = [m for m in ALL_MODALITIES if counts.get(m)] or ALL_MODALITIES
    model_modalities = list(getattr(engine.model.config, "modalities", ALL_MODALITIES))

    def show(outcome: Outcome, query: Query | None):
        return status_html(outcome, size), results_html(outcome, engine.store), query

    def run(text, instruction, image, audio, video, k, kinds):
        query = Query(text=text or None, instruction=instruction or None, image=image, audio=audio, video=video)
        return show(engine.search(query, int(k), list(kinds or [])), query)

    def more_like_this(k, kinds, evt: gr.EventData):
        row = evt._data.get("row") if isinstance(evt._data, dict) else None
        if not isinstance(row, int):
            return gr.skip(), gr.skip(), gr.skip()
        query = Query(row=row)
        return show(engine.search(query, int(k), list(kinds or [])), query)

    def rerun(query, k, kinds):
        if query is None:
            return gr.skip(), gr.skip(), gr.skip()
        return show(engine.search(query, int(k), list(kinds or [])), query)

    sweep = max(1, min(int(upload_ttl), 300))
    with gr.Blocks(analytics_enabled=False, title=title, delete_cache=(sweep, int(upload_ttl))) as blocks:
        gr.HTML(
            header_html(
                title,
                model_name or manifest["model"].get("path") or "",
                size,
                counts,
                manifest["contract"]["dimension"],
                engine.index.kind,
            ),
            js_on_load=None,
            apply_default_css=False,
        )
        last = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=330):
                text = gr.Textbox(
                    label="Text",
                    placeholder="a red circle at the top",
                    lines=2,
                    elem_id="e5-text",
                    max_length=limits.text_chars,
                )
                instruction = gr.Textbox(
                    label="Instruction (optional)",
                    placeholder="Retrieve the image that matches the caption",
                    elem_id="e5-instruction",
                    max_length=limits.text_chars,
                )
                with gr.Tabs():
                    with gr.Tab("Image", id="image", visible="image" in model_modalities):
                        image = RawImageUpload(
                            label="Image",
                            type="filepath",
                            sources=["upload", "clipboard"],
                            height=190,
                            elem_id="e5-image",
                        )
                    with gr.Tab("Audio", id="audio", visible="audio" in model_modalities):
                        audio = AudioUpload(
                            label="Audio",
                            type="filepath",
                            format=None,
                            sources=["upload", "microphone"],
                            elem_id="e5-audio",
                        )
                    with gr.Tab("Video", id="video", visible="video" in model_modalities):
                        video = VideoUpload(
                            label="Video", format=None, sources=["upload"], height=190, elem_id="e5-video"
                        )
                image.e5_max_bytes = limits.image_bytes
                audio.e5_max_bytes = limits.audio_bytes
                video.e5_max_bytes = limits.video_bytes
                with gr.Row():
                    clear = gr.Button("Clear", variant="secondary", elem_id="e5-clear")
                    search = gr.Button("Search", variant="primary", elem_id="e5-search")
                k = gr.Slider(
                    1, max(1, min(100, size)), value=default_k(size), step=1, label="Results (k)", elem_id="e5-k"
                )
                kinds = gr.CheckboxGroup(
                    ALL_MODALITIES, value=present, label="Show results containing", elem_id="e5-filter"
                )
            with gr.Column(scale=3):
                status = gr.HTML(_status_idle(engine), js_on_load=None, elem_id="e5-status", apply_default_css=False)
                grid = gr.HTML(
                    WELCOME, js_on_load=GRID_JS, elem_id="e5-results", min_height=400, apply_default_css=False
                )

        inputs = [text, instruction, image, audio, video, k, kinds]
        outputs = [status, grid, last]
        search.click(run, inputs, outputs, concurrency_id="search", show_progress="minimal")
        text.submit(run, inputs, outputs, concurrency_id="search", show_progress="minimal")
        grid.click(more_like_this, [k, kinds], outputs, concurrency_id="search", show_progress="minimal")
        k.release(rerun, [last, k, kinds], outputs, concurrency_id="search", show_progress="minimal")
        kinds.input(rerun, [last, k, kinds], outputs, concurrency_id="search", show_progress="minimal")
        clear.click(
            lambda: (None, None, None, None, None, _status_idle(engine), WELCOME, None),
            None,
            [text, instruction, image, audio, video, status, grid, last],
        )
    return blocks


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app parses it (gradio's upload route,
    which enforces its own `max_file_size` as it streams, is left to gradio)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or _is_upload(scope["path"]):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _plain(send, 413, f"request body over {self.limit} bytes")
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await _plain(send, 413, f"request body over {self.limit} bytes")


class _TooLarge(Exception):
    pass


def _is_upload(path: str) -> bool:
    return path.rstrip("/").endswith("/gradio_api/upload")


async def _plain(send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    head = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class _TokenGate:
    """ASGI middleware: every request (page, gradio API, uploads, media) needs the token, sent once as `?token=`
    (then kept in an HttpOnly, SameSite=Strict cookie), or as `Authorization: Bearer TOKEN`, or in the cookie."""

    def __init__(self, app: Any, token: str):
        self.app, self.token = app, token.encode()

    def _ok(self, value: str | bytes | None) -> bool:
        if value is None:
            return False
        value = value.encode() if isinstance(value, str) else value
        return hmac.compare_digest(value, self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        from http.cookies import SimpleCookie
        from urllib.parse import parse_qs

        headers = dict(scope["headers"])
        bearer = headers.get(b"authorization", b"")
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get(b"cookie", b"").decode("latin-1"))
        except Exception:
            cookies = SimpleCookie()
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
        if self._ok(bearer[7:] if bearer.startswith(b"Bearer ") else None) or (
            TOKEN_COOKIE in cookies and self._ok(cookies[TOKEN_COOKIE].value)
        ):
            return await self.app(scope, receive, send)
        if self._ok(query):
            cookie = f"{TOKEN_COOKIE}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict".encode()

            async def with_cookie(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
                await send(message)

            return await self.app(scope, receive, with_cookie)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await _plain(send, 401, "this page needs its access token: open it as http://HOST:PORT/?token=...")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(
    engine: SearchEngine,
    *,
    title: str = "e5-omni search",
    model_name: str = "",
    token: str | None = None,
    upload_ttl: int = UPLOAD_TTL_SECONDS,
):
    """A FastAPI app: the media routes, then the page mounted at /. With `token`, every route needs it."""
    import anyio
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, Response

    upload_folder()
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    store = engine.store
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}
    decoders = anyio.CapacityLimiter(DECODE_WORKERS + 2)  # the store itself decodes DECODE_WORKERS at a time

    def refuse(err: MediaNotFoundError):
        raise HTTPException(status_code=404, detail=str(err))

    @app.get("/e5omni/media/{row}/{kind}")
    def media(row: int, kind: str):
        try:
            path = store.file(row, kind)
        except MediaNotFoundError as err:
            refuse(err)
        return FileResponse(path, headers=headers, content_disposition_type="inline")

    async def decoded(make, row: int):
        try:
            data = await anyio.to_thread.run_sync(partial(make, row), limiter=decoders)
        except MediaNotFoundError as err:
            refuse(err)
        except ValueError as err:  # the model's decoder refused the file (it changed since it was indexed)
            raise HTTPException(status_code=422, detail=getattr(err, "reason", str(err))) from None
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/e5omni/thumb/{row}")
    async def thumb(row: int):
        return await decoded(store.thumbnail, row)

    @app.get("/e5omni/poster/{row}")
    async def poster(row: int):
        return await decoded(store.poster, row)

    blocks = build_blocks(engine, title=title, model_name=model_name, upload_ttl=upload_ttl)
    app = gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        footer_links=[],
        run_history=False,
        allowed_paths=[],
        show_error=False,
        max_file_size=engine.limits.max_file_bytes,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        theme=gr.themes.Soft(primary_hue="indigo"),
        css=CSS,
    )
    # gradio checks that an upload's path lies in its upload folder only for a Blocks that has been launched; this
    # one is mounted, so say so (the components above check more, this keeps gradio's own check on too)
    blocks.has_launched = True
    app.add_middleware(_BodyLimit, limit=max(MAX_BODY_BYTES, 16 * engine.limits.text_chars))
    if token:
        app.add_middleware(_TokenGate, token=token)
    return app


def serve(app: Any, host: str = "127.0.0.1", port: int = 7860, log_level: str = "warning") -> None:
    """Run `app` with uvicorn until interrupted (binds 127.0.0.1 unless `host` says otherwise)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
