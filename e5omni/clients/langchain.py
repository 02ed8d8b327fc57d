"""LangChain: `E5OmniEmbeddings`, a `langchain_core.embeddings.Embeddings` (needs only `langchain-core`).

`embed_query` -> `encode_query` (the query prompt), `embed_documents` -> `encode_document`, and `embed_image(uris)`
(the method LangChain's multi-modal vector stores call, e.g. `Chroma.add_images`) -> `encode_document` of
`{"image": uri}` items. `langchain_huggingface.HuggingFaceEmbeddings` also works when told the prompt
(`query_encode_kwargs={"prompt_name": "query"}`), but langchain-huggingface 1.2.3 requires `huggingface-hub<2`:
`pip install langchain-huggingface` next to e5-omni replaces huggingface-hub 2.4 by 1.33, exits 0, and transformers
5.25 then refuses to import (docs/use-with.md). This class avoids that package.

    from e5omni.clients.langchain import E5OmniEmbeddings
    from langchain_core.vectorstores import InMemoryVectorStore
    store = InMemoryVectorStore.from_texts(texts, embedding=E5OmniEmbeddings("path/or/hub-id"))
    store.similarity_search_with_score("a dog barking", k=5)
"""

from __future__ import annotations

import os
from typing import Any

from langchain_core.embeddings import Embeddings

from ._model import media_item, resolve_model


class E5OmniEmbeddings(Embeddings):
    """An e5-omni model as LangChain embeddings (see the module docstring)."""

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        *,
        model: Any = None,
        revision: str | None = None,
        trust_remote_code: bool = True,
        batch_size: int = 32,
    ):
        if (model_name_or_path is None) == (model is None):
            raise ValueError("give either a model folder / Hub id or model=E5OmniModel, not both and not neither")
        source = model if model is not None else model_name_or_path
        self.model = resolve_model(source, revision=revision, trust_remote_code=trust_remote_code)
        self.batch_size = batch_size

    def _encode(self, items: list, role: str) -> list[list[float]]:
        if not items:
            return []
        vectors = self.model.encode(items, role=role, batch_size=self.batch_size, show_progress_bar=False)
        return vectors.float().cpu().tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._encode([media_item(text, "text", i, self.model) for i, text in enumerate(texts)], "document")

    def embed_query(self, text: str) -> list[float]:
        return self._encode([media_item(text, "text", 0, self.model)], "query")[0]

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        return self._encode([media_item(uri, "image", i, self.model) for i, uri in enumerate(uris)], "document")
