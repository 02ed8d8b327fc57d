"""The search page: gradio Blocks over a `SearchEngine`, mounted on a FastAPI app that also serves the index's media.

    app = create_app(engine, model_name="me/e5-omni")      # a FastAPI app (uvicorn runs it)
    serve(app, host="127.0.0.1", port=7860)                 # what `e5omni app DIR` does

Safe by default: `serve` binds 127.0.0.1 unless told otherwise; gradio's analytics are off, no share link, no run
history, no SSR node server, no MCP server, and the theme's fonts are gradio's bundled ones (nothing is fetched from
the internet: the browser test records every request the page makes). gradio's own file route serves only its upload
cache (`allowed_paths` is empty); the corpus is served by the routes below, by row number (`e5omni.app.media`).
Uploads are capped at `UploadLimits.max_file_bytes` by gradio before they are stored, then checked per kind.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: it reads it at import too

from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from e5omni.app.engine import Outcome, Query, SearchEngine, default_k  # noqa: E402
from e5omni.app.media import MEDIA_KINDS, MediaNotFoundError  # noqa: E402
from e5omni.app.render import CSS, GRID_JS, header_html, results_html, status_html  # noqa: E402

ALL_MODALITIES = ["text", *MEDIA_KINDS]
WELCOME = '<div class="e5-empty">Results appear here.</div>'


class RawImageUpload(gr.Image):
    """`gr.Image` whose upload reaches the search as the file itself: gradio's own preprocessing opens it with PIL,
    which would fail on a corrupt upload with PIL's message before the model's validation could name the problem."""

    is_template = True  # the frontend component stays gradio's image

    def preprocess(self, payload: Any) -> str | None:
        if payload is None:
            return None
        if payload.path is None:
            raise gr.Error("the image did not arrive as a file; upload it again")
        return str(payload.path)


def _status_idle(engine: SearchEngine) -> str:
    return (
        status_html(Outcome(query_label="none yet"), engine.size)
        .replace("0 results from", "search")
        .replace(" in 0 ms", "")
    )


def build_blocks(engine: SearchEngine, *, title: str = "e5-omni search", model_name: str = "") -> gr.Blocks:
    """The page. Every search goes through `engine.search`, so the page shows what `e5omni search` prints."""
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

    with gr.Blocks(analytics_enabled=False, title=title) as blocks:
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
                text = gr.Textbox(label="Text", placeholder="a red circle at the top", lines=2, elem_id="e5-text")
                instruction = gr.Textbox(
                    label="Instruction (optional)",
                    placeholder="Retrieve the image that matches the caption",
                    elem_id="e5-instruction",
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
                        audio = gr.Audio(
                            label="Audio",
                            type="filepath",
                            format=None,
                            sources=["upload", "microphone"],
                            elem_id="e5-audio",
                        )
                    with gr.Tab("Video", id="video", visible="video" in model_modalities):
                        video = gr.Video(label="Video", format=None, sources=["upload"], height=190, elem_id="e5-video")
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


def create_app(engine: SearchEngine, *, title: str = "e5-omni search", model_name: str = ""):
    """A FastAPI app: the media routes, then the page mounted at /."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, Response

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    store = engine.store
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}

    def refuse(err: MediaNotFoundError):
        raise HTTPException(status_code=404, detail=str(err))

    @app.get("/e5omni/media/{row}/{kind}")
    def media(row: int, kind: str):
        try:
            path = store.file(row, kind)
        except MediaNotFoundError as err:
            refuse(err)
        return FileResponse(path, headers=headers, content_disposition_type="inline")

    @app.get("/e5omni/thumb/{row}")
    def thumb(row: int):
        try:
            return Response(store.thumbnail(row), media_type="image/jpeg", headers=headers)
        except MediaNotFoundError as err:
            refuse(err)
        except ValueError as err:  # the model's decoder refused the file (it changed since it was indexed)
            raise HTTPException(status_code=422, detail=getattr(err, "reason", str(err))) from None

    @app.get("/e5omni/poster/{row}")
    def poster(row: int):
        try:
            return Response(store.poster(row), media_type="image/jpeg", headers=headers)
        except MediaNotFoundError as err:
            refuse(err)
        except ValueError as err:
            raise HTTPException(status_code=422, detail=getattr(err, "reason", str(err))) from None

    blocks = build_blocks(engine, title=title, model_name=model_name)
    return gr.mount_gradio_app(
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


def serve(app: Any, host: str = "127.0.0.1", port: int = 7860, log_level: str = "warning") -> None:
    """Run `app` with uvicorn until interrupted (binds 127.0.0.1 unless `host` says otherwise)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
