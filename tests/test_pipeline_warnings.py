"""Issue #21, "one item pipeline": `prepare` is the one step from items to model inputs, and the warnings every path
reports about an item are typed (`ItemWarning`: `index`, `reason`), so no caller reads an index out of message text."""

from __future__ import annotations

import ast
import json
import pickle
import warnings
from pathlib import Path

import pytest

from e5omni.index.batches import decode_and_process
from e5omni.index.sources import Record
from e5omni.tiny import build_tiny_model
from modeling_e5omni.inputs_e5omni import ItemWarning, MediaDecodeError
from modeling_e5omni.processing_e5omni import E5OmniProcessor, prepare
from modeling_e5omni.sentence_e5omni import sentence_transformer
from tests.conftest import make_audio, make_image


@pytest.fixture(scope="module")
def model():
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)  # its own: the budget below is changed
    model.set_processor(processor)
    model.config.max_audio_seconds = 0.5
    model.processor.config.max_audio_seconds = 0.5
    return model


def _items(model):
    """Caller index 2: audio cut at max_audio_seconds; 4: text cut at max_length; the others clean."""
    return [
        "a short caption",
        {"image": make_image(0)},
        {"text": "a dog barking", "audio": make_audio(1, seconds=2.0)},
        "another caption",
        "word " * (model.config.max_length * 2),
    ]


def _about_items(caught) -> set[tuple[int, str]]:
    found = {(w.message.index, w.message.reason) for w in caught if isinstance(w.message, ItemWarning)}
    untyped = [str(w.message) for w in caught if not isinstance(w.message, ItemWarning) and "item " in str(w.message)]
    assert not untyped, untyped  # every warning about an item is typed
    return found


def _recorded(call) -> set[tuple[int, str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return _about_items(caught)


def test_every_path_names_the_same_caller_index_for_a_truncated_item(model, tmp_path):
    items = _items(model)
    serial = _recorded(lambda: model.encode_document(items, batch_size=2))
    assert sorted(i for i, _ in serial) == [2, 4], serial
    reasons = dict(serial)
    assert "max_audio_seconds" in reasons[2] and "max_length" in reasons[4]
    assert not any(reason.startswith("item ") for reason in reasons.values())
    # DataLoader workers send the warnings back whole (pickled), still typed, still the caller's index
    assert _recorded(lambda: model.encode_document(items, batch_size=2, num_workers=1)) == serial
    # the sentence-transformers module sorts inputs by length, yet names the caller's index
    st = sentence_transformer(model)
    assert _recorded(lambda: st.encode(items, batch_size=2)) == serial
    # an index job records them per item instead of warning (ids are the caller's indices here)
    from e5omni.index import build_corpus

    records = [Record(id=str(i), source="list", item=item) for i, item in enumerate(items)]
    out = tmp_path / "index"
    printed = _recorded(lambda: build_corpus(model, records, out, batch_size=2, show_progress_bar=False))
    assert printed == set()
    lines = [json.loads(line) for line in (out / "warnings.jsonl").read_text().splitlines()]
    assert {(int(e["id"]), e["warning"]) for e in lines} == serial


def test_direct_st_call_warns_with_batch_positions_typed_like_errors(model):
    module = sentence_transformer(model)[0]
    with pytest.warns(ItemWarning) as caught:
        module.preprocess(["x", {"text": "t", "audio": make_audio(1, seconds=2.0)}])
    (warning,) = [w.message for w in caught if isinstance(w.message, ItemWarning)]
    assert (warning.index, warning.batch_position) == (None, 1)
    assert "max_audio_seconds" in warning.reason and "sentence-transformers batch" in str(warning)


class _Labelling(E5OmniProcessor):
    """A real processor whose decoder warns, about the item it decodes, with a reason that itself reads like another
    item's label: only the typed index can tell which item it is about."""

    def decode(self, item, index):
        if isinstance(item, str) and item.startswith("odd"):
            warnings.warn(ItemWarning("item 9: looks like a label, is a reason", index), stacklevel=2)
        return super().decode(item, index)


def test_a_reason_that_reads_like_a_label_stays_with_its_item(model):
    processor = _Labelling(model.processor.backbone_processor, model.config)
    features, kept, failures, notes = decode_and_process(processor, ["a", "odd one", "c"])
    assert kept == [0, 1, 2] and failures == {}
    assert notes == {1: ["item 9: looks like a label, is a reason"]}
    prepared = prepare(processor, ["a", "odd one"], indices=[7, 3])
    (warning,) = prepared.warnings
    assert (warning.index, warning.reason) == (3, "item 9: looks like a label, is a reason")


def test_prepare_takes_bad_items_out_or_stops_at_the_first(model, tmp_path):
    items = ["a", {"image": str(tmp_path / "gone.png")}, "c", {"image": str(tmp_path / "gone2.png")}]
    going = prepare(model.processor, items, indices=[10, 11, 12, 13], keep_going=True)
    assert going.kept == [0, 2] and going.error is None
    assert sorted(going.failures) == [1, 3]
    assert all(isinstance(e, MediaDecodeError) for e in going.failures.values())
    assert [e.index for e in going.failures.values()] == [11, 13]
    assert going.features["input_ids"].shape[0] == 2
    stopped = prepare(model.processor, items, indices=[10, 11, 12, 13])
    assert stopped.features is None and stopped.error.index == 11 and stopped.failures == {}
    with pytest.raises(MediaDecodeError, match="item 11: image file not found"):
        stopped.reraise()
    with pytest.raises(ValueError, match="2 indices for 4 items"):
        prepare(model.processor, items, indices=[0, 1])


def test_item_warning_pickles_whole():
    warning = ItemWarning("audio cut", 4).at_batch_position(1, "label")
    back = pickle.loads(pickle.dumps(warning))
    assert type(back) is ItemWarning and str(back) == str(warning) == "item 1: audio cut [label]"
    assert (back.index, back.reason, back.batch_position) == (None, "audio cut", 1)


def test_mteb_warnings_name_the_task_row_past_the_first_chunk(model):
    """mteb rows are encoded 256 at a time: a warning of the second chunk names its task row, not its chunk index."""
    pytest.importorskip("mteb")
    from datasets import Dataset
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.mocks import ALL_MOCK_TASK_REGISTRY
    from torch.utils.data import DataLoader

    from e5omni.evaluation.mteb_model import mteb_model

    texts = [f"caption {i}" for i in range(260)]
    texts[258] = "word " * (model.config.max_length * 2)
    data = Dataset.from_dict({"id": [f"r{i}" for i in range(260)], "text": texts})
    metadata = TaskMetadata(**ALL_MOCK_TASK_REGISTRY["MockRetrievalTask"].metadata.model_dump())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mteb_model(model).encode(
            DataLoader(data, batch_size=64), task_metadata=metadata, hf_split="test", hf_subset="default"
        )
    ((index, reason),) = _about_items(caught)
    assert index == 258 and "max_length" in reason and "row 258, id 'r258'" in reason


def test_model_meta_loads_the_encoder_without_an_import_cycle(model):
    """mteb_meta no longer imports mteb_encoder: the encoder's public e5omni_model_meta supplies itself as loader."""
    pytest.importorskip("mteb")
    from e5omni.evaluation import mteb_encoder, mteb_meta

    assert mteb_encoder.e5omni_model_meta(model).loader is mteb_encoder.E5OmniMTEBEncoder
    assert mteb_meta.e5omni_model_meta(model, loader=mteb_encoder.E5OmniMTEBEncoder).loader is not None
    tree = ast.parse(Path(mteb_meta.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any("mteb_encoder" in name for name in imported if name), imported
