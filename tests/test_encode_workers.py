"""`encode(..., num_workers=N)`: decoding and the processor in worker processes, the same vectors and errors.

The speed-up is measured by benchmarks/encode_pipeline.py (ratios side by side); here: identical vectors in input
order, a bad item's typed error naming the caller's index (raised in a worker, re-raised here), truncation warnings
carried back, and bad `num_workers` refused.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from modeling_e5omni import MediaDecodeError
from modeling_e5omni.inputs_e5omni import MediaTooLargeError
from tests.conftest import make_audio, make_image, make_video, tiny
from tests.helpers import write_mp4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    items = []
    for i in range(6):
        make_image(i).save(root / f"img{i}.png")
        sf.write(root / f"a{i}.wav", make_audio(i)["array"], 16000)
        write_mp4(root / f"v{i}.mp4", make_video(i, frames=6))
        items += [
            f"caption number {i}",
            {"image": str(root / f"img{i}.png")},
            {"audio": str(root / f"a{i}.wav"), "text": f"sound {i}"},
            {"video": str(root / f"v{i}.mp4")},
        ]
    return root, items


def test_workers_give_the_serial_vectors_in_order(corpus):
    model = tiny("qwen2.5-omni")
    _, items = corpus
    serial = model.encode_document(items, batch_size=3)
    parallel = model.encode_document(items, batch_size=3, num_workers=2)
    assert torch.equal(serial, parallel)
    queries = model.encode_query(items[:8], batch_size=2, num_workers=1)
    assert torch.equal(queries, model.encode_query(items[:8], batch_size=2))


def test_a_bad_item_in_a_worker_names_the_callers_index(corpus, tmp_path):
    model = tiny("qwen2.5-omni")
    root, items = corpus
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    bad = [*items[:9], {"image": str(broken)}, *items[9:]]
    with pytest.raises(MediaDecodeError) as serial:
        model.encode_document(bad, batch_size=2)
    with pytest.raises(MediaDecodeError) as parallel:
        model.encode_document(bad, batch_size=2, num_workers=2)
    assert parallel.value.index == serial.value.index == 9
    assert str(parallel.value) == str(serial.value) and str(parallel.value).startswith("item 9: ")
    assert parallel.value.reason == serial.value.reason


def test_truncation_warnings_come_back_from_the_workers():
    model = tiny("qwen2.5-omni")
    long_text = "word " * (model.config.max_length + 50)
    with pytest.warns(UserWarning, match=r"item 2: text of \d+ tokens truncated"):
        model.encode_document(["a", "b", long_text, "c"], batch_size=1, num_workers=2)


def test_input_errors_pickle_whole():
    err = MediaTooLargeError("video frames of 9000x9000 exceed max_decode_pixels", 4)
    err.batch_position = 1
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is MediaTooLargeError
    assert (str(back), back.index, back.reason, back.batch_position) == (str(err), 4, err.reason, 1)


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_bad_num_workers_refused(value):
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        tiny("qwen2.5-omni").encode_document(["a"], num_workers=value)


def test_numpy_output_and_truncate_dim_unchanged_with_workers():
    model = tiny("qwen2.5-omni")
    items = ["x", make_image(1), {"audio": make_audio(2)}]
    a = model.encode_document(items, convert_to_numpy=True, truncate_dim=16, num_workers=2)
    b = model.encode_document(items, convert_to_numpy=True, truncate_dim=16)
    assert isinstance(a, np.ndarray) and a.shape == (3, 16) and np.array_equal(a, b)


@pytest.mark.slow
def test_sentence_transformers_multi_process_pool(tmp_path):
    """The sentence-transformers path parallelises with its own pool (one model per process, spawn start)."""
    from sentence_transformers import SentenceTransformer

    from modeling_e5omni.sentence_e5omni import sentence_transformer

    sentence_transformer(tiny("qwen2.5-omni")).save(str(tmp_path / "st"))
    st = SentenceTransformer(str(tmp_path / "st"), trust_remote_code=True, device="cpu")
    items = ["a cat", make_image(1), {"audio": make_audio(2)}, "a dog", {"text": "x", "image": make_image(3)}]
    reference = st.encode_document(items, convert_to_tensor=True)
    pool = st.start_multi_process_pool(["cpu", "cpu"])
    try:
        parallel = st.encode_document(items, pool=pool, convert_to_tensor=True, chunk_size=2)
        # a pool worker sees a chunk: its module cannot know the caller's positions and says the batch's
        bad = [*items[:3], {"image": str(tmp_path / "missing.png")}]
        with pytest.raises(Exception, match=r"is position \d in this sentence-transformers batch"):
            st.encode_document(bad, pool=pool, chunk_size=2)
    finally:
        st.stop_multi_process_pool(pool)
    # other batch compositions (chunks of 2): padding differs, measured 1.0e-7
    assert float((reference - parallel.to(reference)).abs().max()) < 1e-5
