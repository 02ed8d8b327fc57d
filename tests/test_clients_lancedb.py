"""LanceDB with an e5-omni folder: its "sentence-transformers" registry function searches without the query prompt;
the "e5-omni" function (e5omni.clients.lancedb) and a query vector from `encode_query` both apply it."""

from __future__ import annotations

import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb", reason="needs lancedb (pip install lancedb)")

from e5omni.release import save_hub_folder  # noqa: E402
from tests.conftest import make_image, tiny  # noqa: E402

QUERY = "a red circle in the top left"
DOCS = ["a red circle in the top left corner", "a blue square moving right", "a rising tone", "a green triangle"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("lancedb")
    model = tiny("qwen2.5-omni")
    save_hub_folder(model, model.processor, root / "model")
    for i in range(3):
        make_image(20 + i).save(root / f"img{i}.png")
    return root


def _table(db, name, function, column="text"):
    from lancedb.pydantic import LanceModel, Vector

    fields = {column: (str, function.SourceField()), "vector": (Vector(function.ndims()), function.VectorField())}
    schema = type(
        name,
        (LanceModel,),
        {"__annotations__": {k: v[0] for k, v in fields.items()}} | {k: v[1] for k, v in fields.items()},
    )
    return db.create_table(name, schema=schema)


def _cosine_ranking(query_vector, doc_vectors):
    scores = (np.asarray(doc_vectors) @ np.asarray(query_vector)).tolist()
    return list(np.argsort(scores)[::-1]), sorted(scores, reverse=True)


def test_sentence_transformers_function_searches_with_document_vectors(folder, tmp_path):
    """Pins the client behaviour docs/use-with.md warns about, and the documented fix (search by vector)."""
    from lancedb.embeddings import get_registry

    model = tiny("qwen2.5-omni")
    st = get_registry().get("sentence-transformers").create(name=str(folder / "model"), device="cpu")
    table = _table(lancedb.connect(tmp_path / "db"), "plain", st)
    table.add([{"text": t} for t in DOCS])
    assert np.allclose(st.compute_query_embeddings(QUERY)[0], model.encode_document([QUERY])[0], atol=1e-5)

    query = model.encode_query([QUERY])[0].numpy()
    hits = table.search(query).distance_type("cosine").limit(4).to_list()
    order, scores = _cosine_ranking(query, model.encode_document(DOCS))
    assert [h["text"] for h in hits] == [DOCS[i] for i in order]
    assert np.allclose([1 - h["_distance"] for h in hits], scores, atol=1e-5)


def test_e5omni_function_searches_text_with_the_query_prompt(folder, tmp_path):
    from lancedb.embeddings import get_registry

    import e5omni.clients.lancedb  # noqa: F401  registers "e5-omni"

    model = tiny("qwen2.5-omni")
    e5 = get_registry().get("e5-omni").create(name=str(folder / "model"))
    assert e5.ndims() == model.config.hidden_size
    db = lancedb.connect(tmp_path / "db")
    table = _table(db, "docs", e5)
    table.add([{"text": t} for t in DOCS])
    hits = table.search(QUERY).distance_type("cosine").limit(4).to_list()
    order, scores = _cosine_ranking(model.encode_query([QUERY])[0], model.encode_document(DOCS))
    assert [h["text"] for h in hits] == [DOCS[i] for i in order]
    assert np.allclose([1 - h["_distance"] for h in hits], scores, atol=1e-5)
    stored = np.stack([np.asarray(v, dtype=np.float32) for v in table.to_arrow()["vector"].to_pylist()])
    assert np.allclose(stored, model.encode_document(DOCS).numpy(), atol=1e-5)

    # the table records the function by name and arguments: reopened, it embeds new rows and searches the same way
    reopened = lancedb.connect(tmp_path / "db").open_table("docs")
    reopened.add([{"text": "a red circle, top left"}])
    again = reopened.search(QUERY).distance_type("cosine").limit(5).to_list()
    assert {h["text"] for h in again} == {*DOCS, "a red circle, top left"}


def test_e5omni_function_embeds_an_image_column_as_images(folder, tmp_path):
    from lancedb.embeddings import get_registry

    import e5omni.clients.lancedb  # noqa: F401

    model = tiny("qwen2.5-omni")
    e5 = get_registry().get("e5-omni").create(name=str(folder / "model"), modality="image")
    table = _table(lancedb.connect(tmp_path / "db"), "images", e5, column="path")
    paths = [str(folder / f"img{i}.png") for i in range(3)]
    table.add([{"path": p} for p in paths])
    hits = table.search(QUERY).distance_type("cosine").limit(3).to_list()
    order, scores = _cosine_ranking(
        model.encode_query([QUERY])[0], model.encode_document([{"image": p} for p in paths])
    )
    assert [h["path"] for h in hits] == [paths[i] for i in order]
    assert np.allclose([1 - h["_distance"] for h in hits], scores, atol=1e-5)


def test_e5omni_function_refuses_an_unknown_modality(folder):
    from lancedb.embeddings import get_registry

    import e5omni.clients.lancedb  # noqa: F401

    with pytest.raises(ValueError, match="modality must be 'text' or one of"):
        get_registry().get("e5-omni").create(name=str(folder / "model"), modality="pdf")
