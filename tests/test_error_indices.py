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


def test_sentence_transformers_decode_error_names_batch_position_and_kind(st_model, tmp_path):
    items = ["a long text item, longer than the others", "x", {"text": "a", "image": str(tmp_path / "none.png")}]
    with pytest.raises(MediaDecodeError) as err:
        st_model.encode(items, batch_size=8)
    message = str(err.value)
    # the batch sentence-transformers built: sorted by its own length measure, so the position is the batch's
    assert re.match(
        r"item (\d): image file not found.*\[item \1 is position \1 in this sentence-transformers batch, "
        r"a text\+image input; .* not the position in your list\]$",
        message,
    ), message
    assert err.value.index is None and isinstance(err.value.batch_position, int)


def test_sentence_transformers_truncation_warning_says_batch_position(st_model):
    model = st_model[0].auto_model
    before = model.config.max_length
    model.config.max_length = 8
    try:
        with pytest.warns(
            UserWarning,
            match=r"item (\d) \[item \1 is position \1 in this sentence-transformers batch, a text input; .*\]: text of",
        ):
            st_model.encode(["word " * 30, "x"])
    finally:
        model.config.max_length = before


def test_sentence_transformers_structural_error_is_relabelled(st_model):
    with pytest.raises(
        E5OmniInputError,
        match=r"^item (\d): unknown keys .*\[item \1 is position \1 in this sentence-transformers batch, a text input",
    ):
        st_model.encode([{"text": "x", "pictures": 1}, "y"])


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
