"""The sentence-transformers path agrees with the AutoModel path, loads only with trust_remote_code, offline."""

from __future__ import annotations

import json
import re

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from e5omni.release import save_hub_folder
from e5omni.tiny import BACKBONES
from tests.conftest import items_for, make_image, tiny


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for backbone in BACKBONES:
        model = tiny(backbone)
        out[backbone] = save_hub_folder(model, model.processor, tmp_path_factory.mktemp(backbone) / "model")
    return out


@pytest.mark.parametrize("backbone", BACKBONES)
def test_both_paths_agree_on_every_modality(folders, backbone):
    folder = folders[backbone]
    auto = AutoModel.from_pretrained(folder, trust_remote_code=True)
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    items = items_for(auto.config.modalities)
    docs_auto = auto.encode_document(items, batch_size=8)
    docs_st = st.encode_document(items, batch_size=8, convert_to_tensor=True)
    queries = ["a red circle", {"text": "find this picture", "image": make_image(9)}]
    q_auto = auto.encode_query(queries)
    q_st = st.encode_query(queries, convert_to_tensor=True)
    plain_st = st.encode(["a red circle"], convert_to_tensor=True)  # no prompt: a document
    diffs = {
        "documents": (docs_auto - docs_st).abs().max().item(),
        "queries": (q_auto - q_st).abs().max().item(),
        "encode": (plain_st - auto.encode_document(["a red circle"])).abs().max().item(),
    }
    print(backbone, {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) < 1e-5, diffs
    torch.testing.assert_close(st.similarity(q_st, docs_st), auto.similarity(q_auto, docs_auto), atol=1e-5, rtol=0)
    # every batch order / size gives the same vectors through sentence-transformers too
    one_by_one = torch.stack([st.encode_document([item], convert_to_tensor=True)[0] for item in items])
    assert (one_by_one - docs_st).abs().max() < 1e-5


def test_truncate_dim_in_both_paths(folders):
    folder = folders["qwen2.5-omni"]
    auto = AutoModel.from_pretrained(folder, trust_remote_code=True)
    items = ["a red circle", {"image": make_image(3)}, {"text": "x", "image": make_image(4)}]
    full = auto.encode_document(items)
    expected = torch.nn.functional.normalize(full[:, :16], dim=-1)
    torch.testing.assert_close(auto.encode_document(items, truncate_dim=16), expected, atol=1e-6, rtol=0)
    st = SentenceTransformer(str(folder), trust_remote_code=True, truncate_dim=16, device="cpu")
    # sentence-transformers truncates after its Normalize module: ask it to re-normalise
    got = st.encode_document(items, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    raw = st.encode_document(items, convert_to_tensor=True)
    torch.testing.assert_close(st.similarity(raw, raw), expected @ expected.T, atol=1e-5, rtol=0)


def test_refused_without_trust_remote_code(folders):
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(folders["qwen2.5-omni"]), device="cpu")


def test_folder_is_self_contained_and_pickle_free(folders):
    for folder in folders.values():
        names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
        assert {"model.safetensors", "config.json", "modules.json", "sentence_e5omni.py", "modeling_e5omni.py"} <= names
        for name in names:  # no "owner/repo--module" reference to code in another repo, anywhere
            if name.endswith((".json", ".py")):
                assert not re.search(r"[\w.-]+/[\w.-]+--\w", (folder / name).read_text()), name
        modules = json.loads((folder / "modules.json").read_text())
        assert [m["type"] for m in modules] == [
            "sentence_e5omni.E5OmniSTModule",
            "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
            "sentence_transformers.base.modules.normalize.Normalize",
        ]
        st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
        assert st_config["prompts"] == {"query": "Query: ", "document": ""}
        assert "transformers" in st_config["requirements"]
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        assert pooling["pooling_mode"] == "lasttoken"


def test_whitening_folder_skips_pooling(tmp_path):
    from e5omni.tiny import build_tiny_model

    model, processor = build_tiny_model("qwen2.5-omni", seed=5, whitening=True)
    model.set_processor(processor)
    d = model.config.hidden_size
    with torch.no_grad():
        model.alignment.whitening_matrix.copy_(torch.diag(torch.linspace(0.5, 2, d)))
    folder = save_hub_folder(model, processor, tmp_path / "w")
    modules = json.loads((folder / "modules.json").read_text())
    assert len(modules) == 2
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    items = ["a", {"image": make_image(1)}]
    assert (st.encode_document(items, convert_to_tensor=True) - model.encode_document(items)).abs().max() < 1e-5
