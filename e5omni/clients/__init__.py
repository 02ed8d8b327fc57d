"""Adapters for retrieval clients that do not know about e5-omni's query prompt or its media items.

Each submodule imports its client library at import time, so import only the one you use:

- `e5omni.clients.llama_index`: `E5OmniEmbedding`, a LlamaIndex `MultiModalEmbedding` (queries with the query prompt,
  image paths and bytes as images). LlamaIndex's `HuggingFaceEmbedding` overrides the saved prompts with its own
  (`""` for queries) and embeds an image path as text.
- `e5omni.clients.langchain`: `E5OmniEmbeddings`, a LangChain `Embeddings` (needs only `langchain-core`; the
  `langchain-huggingface` package pins `huggingface-hub<2`, which e5-omni's transformers cannot run with).
- `e5omni.clients.lancedb`: `E5OmniEmbeddings`, registered in LanceDB's embedding registry as `"e5-omni"`: the table's
  source column is embedded as documents of one modality, search strings as queries. LanceDB's own
  `"sentence-transformers"` function embeds search strings without the query prompt.

All three take a saved folder or Hub id (loaded with `AutoModel.from_pretrained(..., trust_remote_code=True)`) or an
`E5OmniModel` in memory, and give exactly `model.encode_query` / `model.encode_document`'s vectors (docs/use-with.md).
"""
