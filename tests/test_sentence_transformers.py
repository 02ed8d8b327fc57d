"""The sentence-transformers path agrees with the AutoModel path, loads only with trust_remote_code, offline."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from e5omni.release import save_hub_folder
from e5omni.tiny import BACKBONES
from tests.conftest import items_for, make_audio, make_image, make_video, tiny


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


def _hub_module(st):
    """The module sentence-transformers loaded the Hub file as (transformers_modules...sentence_e5omni)."""
    return sys.modules[type(st[0]).__module__]


@pytest.mark.parametrize("backbone", ["qwen2.5-omni", "qwen2-vl"])
def test_combined_dicts_and_chat_messages(folders, backbone):
    folder = folders[backbone]
    auto = AutoModel.from_pretrained(folder, trust_remote_code=True)
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    assert "message" in st.modalities and st.supports(("image", "text"))
    image, video = make_image(2), make_video(1)
    items = [{"text": "a caption", "image": image}, {"text": "moving", "video": video}, "plain text"]
    messages = [
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "a caption"}]}],
        # part order does not matter (media always go first), and one message may stand alone, not in a list
        {"role": "user", "content": [{"type": "text", "text": "moving"}, {"type": "video", "video": video}]},
        [{"role": "user", "content": "plain text"}],
    ]
    expected = auto.encode_document(items)
    combined = st.encode(items[:1], convert_to_tensor=True)  # one dict that combines two modalities, alone
    assert (combined - expected[:1]).abs().max() < 1e-5
    assert (st.encode(items, convert_to_tensor=True) - expected).abs().max() < 1e-5
    assert (st.encode(messages, convert_to_tensor=True) - expected).abs().max() < 1e-5
    # a conversation (a list of message dicts) is one input to sentence-transformers: one vector back
    single = st.encode(messages[0], convert_to_tensor=True)
    assert single.shape == expected[0].shape and (single - expected[0]).abs().max() < 1e-5
    # prompts reach the text of messages as they reach items; messages and items mix in one batch
    mixed = [messages[0], items[1], messages[2]]
    assert (st.encode_query(mixed, convert_to_tensor=True) - auto.encode_query(items)).abs().max() < 1e-5


def test_chat_messages_we_cannot_take_are_refused(folders):
    st = SentenceTransformer(str(folders["qwen2-vl"]), trust_remote_code=True, device="cpu")
    error = _hub_module(st).E5OmniMessageError
    user = {"role": "user", "content": "hello"}
    cases = {
        "system messages are not supported": [{"role": "system", "content": "be brief"}, user],
        "exactly one 'user' message": [user, {"role": "assistant", "content": "hi"}, user],
        "content parts must be dicts with 'type'": {"role": "user", "content": [{"type": "image_url", "url": "x"}]},
        "at most one image part": {
            "role": "user",
            "content": [{"type": "image", "image": make_image(1)}, {"type": "image", "image": make_image(2)}],
        },
        "this checkpoint takes": {"role": "user", "content": [{"type": "audio", "audio": make_audio(1)}]},
        "unsupported keys": {"role": "user", "content": [{"type": "image", "image": make_image(1), "min_pixels": 4}]},
        "non-empty list": {"role": "user", "content": []},
    }
    for match, message in cases.items():
        with pytest.raises(error, match=match) as info:
            st.encode(["first", [message] if isinstance(message, dict) else message])
        assert isinstance(info.value, ValueError) and "item " in str(info.value)


def test_max_seq_length_is_the_text_budget(folders):
    folder = folders["qwen2.5-omni"]
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    auto = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert st.max_seq_length == st[0].get_max_seq_length() == auto.config.max_length == 512
    long_text = " ".join(f"word{i}" for i in range(200))
    with pytest.warns(UserWarning, match="max_length=512"):
        full = st.encode([long_text], convert_to_tensor=True)
    st.max_seq_length = 8
    assert st.max_seq_length == 8 and st[0].auto_model.config.max_length == 8
    auto.config.max_length = 8
    with pytest.warns(UserWarning, match="max_length=8"):
        short = st.encode([long_text], convert_to_tensor=True)
    with pytest.warns(UserWarning, match="max_length=8"):
        expected = auto.encode_document([long_text])
    assert (short - expected).abs().max() < 1e-5
    assert (short - full).abs().max() > 1e-3  # the budget really cut the text
    for bad in (0, -3, None, 2.5):
        with pytest.raises(ValueError, match="max_seq_length"):
            st.max_seq_length = bad
    assert st.max_seq_length == 8


@pytest.mark.parametrize("backbone", ["qwen2.5-omni", "qwen2-vl"])  # left- and right-padding processors
def test_token_embeddings_hold_only_real_tokens(folders, backbone):
    folder = folders[backbone]
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    processor = st[0].processor
    items = [
        "a",
        "a much longer text item with many more tokens than the first one",
        {"text": "x", "image": make_image(3)},
    ]
    batch = st.encode(items, output_value="token_embeddings", batch_size=8)
    sentence = st.encode(items, convert_to_tensor=True, batch_size=8)
    for i, item in enumerate(items):
        alone = st.encode([item], output_value="token_embeddings")[0]
        n_real = int(processor([item])["attention_mask"].sum())
        assert batch[i].shape == alone.shape == (n_real, st.get_embedding_dimension())
        assert (batch[i] - alone).abs().max() < 1e-5
        # the last real token is the embedding
        last = torch.nn.functional.normalize(batch[i][-1].float(), dim=-1)
        assert (last - sentence[i]).abs().max() < 1e-5


def _usage_lines(folder) -> list[str]:
    return [line for line in (folder / "README.md").read_text().splitlines() if line.startswith("model = ")]


def test_plain_save_writes_trust_remote_code_card_and_requirements(folders, tmp_path):
    from modeling_e5omni.sentence_e5omni import sentence_transformer

    folder = folders["qwen2.5-omni"]
    declared = json.loads((folder / "config_sentence_transformers.json").read_text())["requirements"]
    assert declared["transformers"]
    # 1. reloaded from a release folder, then saved with the stock card
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    st.save(str(tmp_path / "reloaded"))
    # 2. built in memory around a model loaded with AutoModel (requirements from the folder it came from)
    auto = AutoModel.from_pretrained(folder, trust_remote_code=True)
    sentence_transformer(auto).save(str(tmp_path / "from_auto"))
    # 3. built in memory around a fresh model, requirements given
    pins = {"transformers": ">=5.23,<6"}
    sentence_transformer(tiny("qwen2-vl"), requirements=pins).save(str(tmp_path / "fresh"))
    for name, expected in {"reloaded": declared, "from_auto": declared, "fresh": pins}.items():
        out = tmp_path / name
        lines = _usage_lines(out)
        assert lines and all(line.endswith(", trust_remote_code=True)") for line in lines), (name, lines)
        assert json.loads((out / "config_sentence_transformers.json").read_text())["requirements"] == expected, name
    # the re-saved folder reloads and keeps both across a second round trip
    again = SentenceTransformer(str(tmp_path / "reloaded"), trust_remote_code=True, device="cpu")
    again.save(str(tmp_path / "again"))
    assert (
        json.loads((tmp_path / "again" / "config_sentence_transformers.json").read_text())["requirements"] == declared
    )
    assert _usage_lines(tmp_path / "again")[0].endswith("trust_remote_code=True)")
