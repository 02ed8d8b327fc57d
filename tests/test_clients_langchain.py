"""LangChain with an e5-omni folder: `e5omni.clients.langchain.E5OmniEmbeddings` in LangChain's own vector store, and
(where langchain-huggingface is importable: it cannot be installed beside e5-omni's huggingface-hub without
--no-deps) `HuggingFaceEmbeddings`, which skips the query prompt unless told it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("langchain_core", reason="needs langchain-core (pip install langchain-core)")

from e5omni.release import save_hub_folder  # noqa: E402
from tests.conftest import make_image, tiny  # noqa: E402

QUERY = "a red circle in the top left"
DOCS = ["a red circle in the top left corner", "a blue square moving right", "a rising tone"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("langchain")
    model = tiny("qwen2.5-omni")
    save_hub_folder(model, model.processor, root / "model")
    make_image(30).save(root / "img0.png")
    return root


def _close(a, b, tol=1e-5):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max()) < tol


def test_adapter_in_langchains_vector_store_ranks_with_the_model_scores(folder):
    from langchain_core.vectorstores import InMemoryVectorStore

    from e5omni.clients.langchain import E5OmniEmbeddings

    model = tiny("qwen2.5-omni")
    embeddings = E5OmniEmbeddings(folder / "model")
    assert _close(embeddings.embed_query(QUERY), model.encode_query([QUERY])[0])
    assert _close(embeddings.embed_documents(DOCS), model.encode_document(DOCS))
    assert embeddings.embed_documents([]) == []
    path = str(folder / "img0.png")
    assert _close(embeddings.embed_image(uris=[path]), model.encode_document([{"image": path}]))

    store = InMemoryVectorStore.from_texts(DOCS, embedding=embeddings)
    hits = store.similarity_search_with_score(QUERY, k=3)
    scores = (model.encode_query([QUERY]) @ model.encode_document(DOCS).T)[0].tolist()
    assert [doc.page_content for doc, _ in hits] == [DOCS[i] for i in np.argsort(scores)[::-1]]
    assert _close([score for _, score in hits], sorted(scores, reverse=True))


def test_adapter_in_memory_model_and_bad_input(folder):
    from e5omni.clients.langchain import E5OmniEmbeddings

    model = tiny("qwen2.5-omni")
    embeddings = E5OmniEmbeddings(model=model)
    assert _close(embeddings.embed_query(QUERY), model.encode_query([QUERY])[0])
    with pytest.raises(TypeError, match="item 1: expected a text string, got dict"):
        embeddings.embed_documents(["fine", {"image": "x.png"}])
    with pytest.raises(ValueError, match="either"):
        E5OmniEmbeddings(folder / "model", model=model)


def test_huggingface_embeddings_needs_the_query_prompt_name(folder):
    hf = pytest.importorskip(
        "langchain_huggingface",
        reason="langchain-huggingface 1.2.3 pins huggingface-hub<2: install it with --no-deps to run this test",
    )
    model = tiny("qwen2.5-omni")
    common = {"model_name": str(folder / "model"), "model_kwargs": {"trust_remote_code": True, "device": "cpu"}}
    plain = hf.HuggingFaceEmbeddings(**common)
    assert _close(plain.embed_query(QUERY), model.encode_document([QUERY])[0])  # the query prompt is skipped
    fixed = hf.HuggingFaceEmbeddings(
        **common,
        encode_kwargs={"normalize_embeddings": True},
        query_encode_kwargs={"prompt_name": "query", "normalize_embeddings": True},
    )
    assert _close(fixed.embed_query(QUERY), model.encode_query([QUERY])[0])
    assert _close(fixed.embed_documents(DOCS), model.encode_document(DOCS))
