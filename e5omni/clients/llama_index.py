"""LlamaIndex: `E5OmniEmbedding`, a `MultiModalEmbedding` that embeds queries as queries and images as images.

Why an adapter and not LlamaIndex's `HuggingFaceEmbedding` (llama-index-embeddings-huggingface 0.8.0, read from its
source): it builds `SentenceTransformer(model_name, prompts={"query": query_instruction or "", "text": ...})`, and
sentence-transformers lets constructor prompts win over the saved ones, so our `"Query: "` becomes `""` without a
word and `get_query_embedding` returns a document vector. Our sentence-transformers module cannot notice: it is
handed the resolved prompt string, never its name, and `""` is also the correct document prompt. Its
`get_image_embedding(path)` passes the path string to `encode`, and a string is text to e5-omni by design (media are
marked by a key), so the file name is embedded as text. `HuggingFaceEmbedding(..., query_instruction="Query: ")` fixes
text queries; images need this class.

    from e5omni.clients.llama_index import E5OmniEmbedding
    embed = E5OmniEmbedding("path/or/hub-id")       # or E5OmniEmbedding(model=model_in_memory)
    index = MultiModalVectorStoreIndex(nodes, embed_model=embed, image_embed_model=embed)

`get_query_embedding` / `get_agg_embedding_from_queries` -> `encode_query`; `get_text_embedding(s)` ->
`encode_document`; `get_image_embedding(s)` -> `encode_document([{"image": ...}])` for a path or `BytesIO` (bytes are
decoded by the model's image loader: same allow-list and pixel cap as files). LlamaIndex's image-to-image retrieval
embeds the query image with `get_image_embedding`, i.e. as a document.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from llama_index.core.base.embeddings.base import DEFAULT_EMBED_BATCH_SIZE
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings.multi_modal_base import MultiModalEmbedding

from ._model import media_item, model_name, resolve_model


class E5OmniEmbedding(MultiModalEmbedding):
    """An e5-omni model as a LlamaIndex text + image embedding (see the module docstring)."""

    _model: Any = PrivateAttr()

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        *,
        model: Any = None,
        revision: str | None = None,
        trust_remote_code: bool = True,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        **kwargs: Any,
    ):
        if (model_name_or_path is None) == (model is None):
            raise ValueError("give either a model folder / Hub id or model=E5OmniModel, not both and not neither")
        source = model if model is not None else model_name_or_path
        loaded = resolve_model(source, revision=revision, trust_remote_code=trust_remote_code)
        super().__init__(model_name=model_name(source), embed_batch_size=embed_batch_size, **kwargs)
        self._model = loaded

    @classmethod
    def class_name(cls) -> str:
        return "E5OmniEmbedding"

    @property
    def e5omni_model(self):
        return self._model

    def _encode(self, items: list, role: str) -> list[list[float]]:
        vectors = self._model.encode(items, role=role, batch_size=self.embed_batch_size, show_progress_bar=False)
        return vectors.float().cpu().tolist()

    def _images(self, values: list) -> list:
        return [media_item(value, "image", i, self._model) for i, value in enumerate(values)]

    # text
    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encode([query], "query")[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encode([text], "document")[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encode(list(texts), "document")

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    # images
    def _get_image_embedding(self, img_file_path) -> list[float]:
        return self._encode(self._images([img_file_path]), "document")[0]

    def _get_image_embeddings(self, img_file_paths: list) -> list[list[float]]:
        return self._encode(self._images(list(img_file_paths)), "document")

    async def _aget_image_embedding(self, img_file_path) -> list[float]:
        return await asyncio.to_thread(self._get_image_embedding, img_file_path)

    async def _aget_image_embeddings(self, img_file_paths: list) -> list[list[float]]:
        return await asyncio.to_thread(self._get_image_embeddings, img_file_paths)
