"""Every error and warning names the item the caller gave: its position in the caller's list (`encode` sorts items by
length into batches), or, on the sentence-transformers path (which sorts before we see the batch and passes no
positions), its position in that batch and its kind, said as such. Structural failures are typed and named."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from modeling_e5omni.inputs_e5omni import E5OmniInputError, MediaDecodeError, check_item
from modeling_e5omni.sentence_e5omni import sentence_transformer
from tests.conftest import make_audio, make_image, make_video, tiny


@pytest.fixture
def short_max_length(omni_model):
    before = omni_model.config.max_length
    omni_model.config.max_length = 8
    omni_model.processor.config.max_length = 8
    yield omni_model
    omni_model.config.max_length = before
    omni_model.processor.config.max_length = before


# ----------------------------------------------------------------------------------------------------- encode
def test_truncation_warning_names_the_list_position(short_max_length):
    model = short_max_length
    items = ["short", "tiny", "a long text " * 20]  # sorted first into batch position 0
    with pytest.warns(UserWarning) as record:
        model.encode_document(items, batch_size=2)
    messages = [str(w.message) for w in record if "truncated" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("item 2: text of"), messages


def test_truncation_warnings_in_later_batches_name_their_list_positions(short_max_length):
    model = short_max_length
    items = ["x", "long text " * 10, "y", "other long text " * 12, {"image": make_image(0)}]
    with pytest.warns(UserWarning) as record:
        model.encode_query(items, batch_size=1)
    named = sorted(str(w.message).split(":")[0] for w in record if "truncated" in str(w.message))
    assert named == ["item 1", "item 3"]


def test_decode_error_names_the_list_position_after_sorting(omni_model, tmp_path):
    items = ["short", "a much longer text than the others " * 3, {"image": str(tmp_path / "missing.png")}]
    with pytest.raises(MediaDecodeError, match="^item 2: image file not found") as err:
        omni_model.encode_document(items, batch_size=1)
    assert err.value.index == 2


def test_process_decoded_names_given_indices(short_max_length):
    from modeling_e5omni.media_e5omni import normalize_item

    model = short_max_length
    decoded = [normalize_item("word " * 30, 7, model.config)]
    with pytest.warns(UserWarning, match="^item 7: text of"):
        model.processor.process_decoded(decoded, "document", indices=[7])


# -------------------------------------------------------------------------------------- sentence-transformers
@pytest.fixture
def st_model(omni_model):
    return sentence_transformer(omni_model)


def test_sentence_transformers_errors_name_the_callers_index(st_model, tmp_path):
    """sentence-transformers sorts by length and hands the module a batch; the module recovers each input's position
    in the caller's list from `encode`'s frame (checked by identity), so messages and `index` name the caller's item."""
    items = ["a long text item, longer than the others", "x", {"text": "a", "image": str(tmp_path / "none.png")}]
    with pytest.raises(MediaDecodeError, match=r"^item 2: image file not found") as err:
        st_model.encode(items, batch_size=8)
    assert err.value.index == 2 and "sentence-transformers batch" not in str(err.value)
    with pytest.raises(MediaDecodeError, match=r"^item 0: image file not found") as err:
        st_model.encode_document([{"image": str(tmp_path / "none.png")}, "a much longer text than the image's"])
    assert err.value.index == 0
    # one item a batch: the bad one is in the last batch, still named by its list position
    with pytest.raises(E5OmniInputError, match=r"^item 1: unknown keys") as err:
        st_model.encode_query(["y", {"text": "a long text with an unknown key", "pictures": 1}, "z"], batch_size=1)
    assert err.value.index == 1


def test_sentence_transformers_truncation_warning_names_the_callers_index(st_model):
    model = st_model[0].auto_model
    before = model.config.max_length
    model.config.max_length = 8
    try:
        with pytest.warns(UserWarning, match=r"^item 1: text of"):
            st_model.encode(["x", "word " * 30])  # sorted first by sentence-transformers, position 1 in the list
    finally:
        model.config.max_length = before


def test_sentence_transformers_module_called_directly_names_batch_positions(st_model, tmp_path):
    """Outside `SentenceTransformer.encode` (a pool worker's chunk, a direct call) no caller list is known: the
    message says the position is the batch's and names the input's kind."""
    module = st_model[0]
    with pytest.raises(MediaDecodeError) as err:
        module.preprocess(["x", {"text": "a", "image": str(tmp_path / "none.png")}])
    assert re.match(
        r"item 1: image file not found.*\[item 1 is position 1 in this sentence-transformers batch, "
        r"a text\+image input; .* not the position in your list\]$",
        str(err.value),
    ), str(err.value)
    assert err.value.index is None and err.value.batch_position == 1
    with pytest.raises(E5OmniInputError, match=r"^item 0: unknown keys .*\[item 0 is position 0 in this"):
        module.preprocess([{"text": "x", "pictures": 1}, "y"])


# ------------------------------------------------------------------------------------- structural checks
@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("bad \ud800 text", "text holds a lone surrogate '\\ud800' at character 4"),
        ({"text": "ok \udfff"}, "'text' holds a lone surrogate"),
        ({"text": "ok", "instruction": "\ud83d alone"}, "'instruction' holds a lone surrogate"),
        ({1: "x", "text": "y"}, "unknown keys [1]"),
        ({1: "x", "foo": "y", (2,): 3, "text": "z"}, "unknown keys ['foo', (2,), 1]"),
        ({"video": torch.zeros((4, 8, 8, 3), dtype=torch.bfloat16)}, "video is a torch.bfloat16 tensor"),
    ],
)
def test_untyped_failures_become_named_input_errors(omni_model, item, message):
    with pytest.raises(E5OmniInputError) as err:
        check_item(item, 3)
    assert str(err.value).startswith("item 3: ") and message in str(err.value), str(err.value)
    with pytest.raises(E5OmniInputError, match="^item 1: "):
        omni_model.encode_document(["fine", item])


@pytest.mark.parametrize("rate", [float("nan"), "16000", None], ids=["nan", "str", "none"])
def test_bad_sampling_rates_are_named(omni_model, rate):
    with pytest.raises(E5OmniInputError, match="^item 1: audio"):
        omni_model.encode_document(["fine", {"audio": {"array": np.zeros(1600, np.float32), "sampling_rate": rate}}])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn], ids=str)
def test_low_precision_audio_is_taken_exactly(omni_model, dtype):
    """float32 holds every bfloat16 / float16 / float8 value: such audio embeds as its float32 copy."""
    wave = torch.as_tensor(make_audio(3)["array"]).to(dtype)
    exact = wave.float()
    low = omni_model.encode_document([{"audio": wave}, {"audio": {"array": wave, "sampling_rate": 16000}}])
    full = omni_model.encode_document([{"audio": exact}, {"audio": {"array": exact, "sampling_rate": 16000}}])
    assert torch.equal(low, full)


def test_bf16_image_tensor_still_embeds(omni_model):
    image = torch.rand(3, 56, 56).to(torch.bfloat16)
    assert torch.isfinite(omni_model.encode_document([{"image": image}])).all()


def test_valid_items_still_pass_the_check():
    assert check_item({"text": "a", "audio": make_audio(0), "video": make_video(0)}, 0) == (True, False, True, True)
    assert check_item("plain ünïcode 🐕", 0) == (True, False, False, False)
    assert tiny("qwen2-vl") is not None


# ------------------------------------------------------------------ sentence-transformers: warnings agree with errors
@pytest.fixture
def short_audio_budget(omni_model):
    before = omni_model.config.max_audio_seconds
    omni_model.config.max_audio_seconds = 0.5
    omni_model.processor.config.max_audio_seconds = 0.5
    yield omni_model
    omni_model.config.max_audio_seconds = before
    omni_model.processor.config.max_audio_seconds = before


def _truncations(record) -> list[str]:
    return sorted(str(w.message) for w in record if "truncated to max_audio_seconds" in str(w.message))


def test_sentence_transformers_media_warnings_name_the_callers_index(short_audio_budget, tmp_path):
    """Issue #22: a media warning on the sentence-transformers path named the batch position (sentence-transformers
    sorts the long audio first: `item 0`) while the error of the same call named the caller's item."""
    st = sentence_transformer(short_audio_budget)
    items = ["short", "a somewhat longer text", {"audio": make_audio(2)}, {"image": str(tmp_path / "gone.png")}]
    with pytest.warns(UserWarning) as record, pytest.raises(MediaDecodeError) as err:
        st.encode(items, batch_size=8)
    assert err.value.index == 3 and str(err.value).startswith("item 3: image file not found")
    assert [m.split(":")[0] for m in _truncations(record)] == ["item 2"], _truncations(record)
    # and across batches (one item a batch), every warning names its own item
    items = [{"audio": make_audio(0)}, "x", "yy", {"text": "t", "audio": make_audio(4)}]
    with pytest.warns(UserWarning) as record:
        st.encode(items, batch_size=1)
    assert [m.split(":")[0] for m in _truncations(record)] == ["item 0", "item 3"], _truncations(record)


def test_sentence_transformers_direct_call_labels_warnings_like_errors(short_audio_budget):
    """Without the caller's list (a direct call, a pool worker's chunk) warnings carry the same batch-position
    label as errors, never a bare number that reads like the caller's index."""
    module = sentence_transformer(short_audio_budget)[0]
    with pytest.warns(UserWarning) as record:
        module.preprocess(["x", {"text": "t", "audio": make_audio(1)}])
    (message,) = _truncations(record)
    assert re.match(
        r"item 1: audio of .* \[item 1 is position 1 in this sentence-transformers batch, a text\+audio", message
    ), message


def test_caller_positions_fall_back_when_the_frame_is_not_this_batch(st_model):
    """The frame's locals are taken only for the very batch object sentence-transformers is working on: a list
    equal to it but not it (what a changed sentence-transformers that copies batches would pass) gives None."""
    from modeling_e5omni import sentence_e5omni

    seen = []
    original = sentence_e5omni.caller_positions

    def spy(batch):
        seen.append((original(batch), original(list(batch)) if isinstance(batch, list) else "not a list"))
        return original(batch)

    sentence_e5omni.caller_positions = spy
    try:
        st_model.encode(["a", "a much longer text", "bb"], batch_size=2)
    finally:
        sentence_e5omni.caller_positions = original
    assert [got for got, _ in seen] == [[1, 2], [0]]
    assert all(copy is None for _, copy in seen)
    assert sentence_e5omni.caller_positions(["a", "b"]) is None  # called from outside sentence-transformers
