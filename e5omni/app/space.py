"""What a published Space runs (its app.py calls `run_space`): load the model, index the bundled corpus, serve."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def run_space(
    model_id: str,
    revision: str = "main",
    *,
    corpus: str | os.PathLike = "corpus",
    index_dir: str | os.PathLike | None = None,
    title: str = "e5-omni search",
    host: str = "127.0.0.1",
    port: int = 7860,
) -> None:
    """Index `corpus` with `model_id`@`revision` (into `index_dir`, default a fresh temporary folder) and serve the
    page. A file of the corpus that cannot be embedded is reported and left out, as `e5omni index` does."""
    from e5omni.app.engine import SearchEngine
    from e5omni.app.media import MediaStore
    from e5omni.app.page import create_app, serve
    from e5omni.index import CorpusIndex, build_corpus
    from e5omni.loading import load_inference_model

    model = load_inference_model(model_id, revision=revision)
    out = Path(index_dir) if index_dir is not None else Path(tempfile.mkdtemp(prefix="e5omni-space-index-"))
    summary = build_corpus(model, corpus, out, model_path=model_id, show_progress_bar=True)
    if summary.failed:
        print(f"{summary.failed} corpus file(s) could not be embedded: see {out}/errors.jsonl")
    index = CorpusIndex.build(out)
    engine = SearchEngine(model, index, MediaStore.from_index(index.rows, corpus, model_config=model.config))
    serve(create_app(engine, title=title, model_name=f"{model_id}@{revision}"), host=host, port=port)
