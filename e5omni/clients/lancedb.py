"""LanceDB: `E5OmniEmbeddings`, registered in LanceDB's embedding registry as `"e5-omni"`.

LanceDB's own `"sentence-transformers"` function (lancedb 0.40.0, read from its source) embeds both the source column
and search strings with `SentenceTransformer.encode(texts)`, no prompt: `table.search("a dog")` compares a document
vector with documents, so e5-omni's query prompt is never applied. This function embeds the source column with
`encode_document` and search strings with `encode_query`:

    import lancedb
    from lancedb.pydantic import LanceModel, Vector
    from lancedb.embeddings import get_registry
    import e5omni.clients.lancedb  # registers "e5-omni"

    e5 = get_registry().get("e5-omni").create(name="path/or/hub-id")            # text documents
    # e5 = get_registry().get("e5-omni").create(name=..., modality="image")     # a column of image paths

    class Docs(LanceModel):
        text: str = e5.SourceField()
        vector: Vector(e5.ndims()) = e5.VectorField()

    table = lancedb.connect("db").create_table("docs", schema=Docs)
    table.add([{"text": "..."}])
    table.search("a dog").distance_type("cosine").limit(5).to_list()

The table stores the function's name and arguments, not code: a process that opens the table again must
`import e5omni.clients.lancedb` first (LanceDB looks "e5-omni" up in its registry). `modality` says what the source
column holds ("text", or "image" / "audio" / "video": paths a value); search strings are always text queries.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from lancedb.embeddings import EmbeddingFunction, register
from lancedb.embeddings.utils import TEXT

from ._model import MEDIA, media_item, resolve_model

_MODELS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def _model(name: str, revision: str | None, trust_remote_code: bool):
    """One loaded model per (name, revision) in a process, as LanceDB's own functions cache theirs: a table calls its
    function for every add and search."""
    key = (name, revision, trust_remote_code)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = resolve_model(name, revision=revision, trust_remote_code=trust_remote_code)
        return _MODELS[key]


@register("e5-omni")
class E5OmniEmbeddings(EmbeddingFunction):
    """e5-omni for a LanceDB table: source values as documents of `modality`, search strings as queries."""

    name: str
    revision: str | None = None
    modality: str = "text"
    trust_remote_code: bool = True
    batch_size: int = 32

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.modality != "text" and self.modality not in MEDIA:
            raise ValueError(f"modality must be 'text' or one of {MEDIA}, got {self.modality!r}")
        self._ndims = None

    @property
    def model(self):
        return _model(self.name, self.revision, self.trust_remote_code)

    def ndims(self) -> int:
        if self._ndims is None:
            self._ndims = int(self.model.config.hidden_size)
        return self._ndims

    def _encode(self, items: list, role: str) -> list[np.ndarray]:
        vectors = self.model.encode(items, role=role, batch_size=self.batch_size, show_progress_bar=False)
        return list(vectors.float().cpu().numpy())

    def compute_query_embeddings(self, query: str, *args, **kwargs) -> list[np.ndarray]:
        if not isinstance(query, str):
            raise TypeError(f"an e5-omni search query is a text string, got {type(query).__name__}")
        return self._encode([query], "query")

    def compute_source_embeddings(self, inputs: TEXT, *args, **kwargs) -> list[np.ndarray]:
        values = self.sanitize_input(inputs)
        items = [media_item(value, self.modality, i, self.model) for i, value in enumerate(values)]
        return self._encode(items, "document")
