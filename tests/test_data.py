"""Loading omni training data: item inspection, content hashes, safe media paths, JSONL/CSV/`datasets` loaders.

Media are real files written into tmp_path with PIL, soundfile and PyAV, and the `datasets` tests use real
`datasets.Dataset` objects; nothing touches the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import datasets
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from e5omni.data import (
    BadRowError,
    DataError,
    HFExamples,
    InvalidItemError,
    MissingMediaError,
    SymlinkLoopError,
    UnsafeMediaPathError,
    content_hash,
    from_hf_dataset,
    item_modalities,
    load_csv,
    load_hub_dataset,
    load_jsonl,
    modality_signature,
    pair_name,
    resolve_media_path,
    to_corpus,
    validate_example,
)
from modeling_e5omni.processing_e5omni import E5OmniInputError, check_item

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# helpers: real media files
# ---------------------------------------------------------------------------------------------------------------------


def _image(value: int = 0, size: int = 8) -> Image.Image:
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[..., 0] = value
    return Image.fromarray(array)


def _tone(seconds: float = 0.25, rate: int = 16_000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write_mp4(path: Path, frames: np.ndarray) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A media root with a PNG, a WAV (8 kHz, to exercise resampling) and an MP4 in sub-folders."""
    root = tmp_path / "media"
    (root / "img").mkdir(parents=True)
    (root / "aud").mkdir()
    (root / "vid").mkdir()
    _image(200, 16).save(root / "img" / "a.png")
    _image(50, 16).save(root / "img" / "b.png")
    soundfile.write(root / "aud" / "a.wav", _tone(rate=8_000), 8_000)
    _write_mp4(root / "vid" / "a.mp4", np.full((4, 32, 32, 3), 90, dtype=np.uint8))
    return root


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# item inspection
# ---------------------------------------------------------------------------------------------------------------------


def test_item_modalities_accepts_every_form_of_the_model_api():
    audio = {"array": _tone(), "sampling_rate": 16_000}
    video = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    assert item_modalities("img.png") == (True, False, False, False)  # a str is text, even if it looks like a path
    assert item_modalities(_image()) == (False, True, False, False)
    assert item_modalities({"image": "x.png"}) == (False, True, False, False)
    assert item_modalities({"image": Path("x.png")}) == (False, True, False, False)
    assert item_modalities({"audio": audio}) == (False, False, True, False)
    assert item_modalities({"audio": _tone()}) == (False, False, True, False)
    assert item_modalities({"audio": "a.wav"}) == (False, False, True, False)
    assert item_modalities({"video": video, "instruction": "find"}) == (False, False, False, True)
    everything = {"text": "t", "image": _image(), "audio": audio, "video": video}
    assert item_modalities(everything) == (True, True, True, True)
    assert modality_signature(everything) == "text+image+audio+video"
    assert modality_signature({"video": video, "text": "t"}) == "text+video"  # canonical order, not dict order
    assert pair_name({"query": "q", "positive": {"text": "c", "image": _image()}}) == "text->text+image"
    assert pair_name({"query": "q", "positive": "p", "pair": "custom"}) == "custom"


def _encode_forms() -> list:
    """Item forms `encode` accepts that the data module used to refuse: tensors, integer and 2-D audio."""
    tone = _tone()
    frames = np.full((2, 32, 32, 3), 90, dtype=np.uint8)
    return [
        {"video": torch.from_numpy(frames)},
        {"audio": torch.from_numpy(tone)},
        {"audio": {"array": torch.from_numpy(tone), "sampling_rate": 16_000}},
        {"audio": (tone * 32767).astype(np.int16)},
        {"audio": {"array": (tone * 32767).astype(np.int32), "sampling_rate": np.int64(8_000)}},
        {"audio": np.stack([tone, tone], axis=1)},  # (samples, channels)
        {"audio": np.stack([tone, tone]).astype(np.float64), "text": "stereo"},  # (channels, samples)
        {"text": "mixed", "image": _image(9, 32), "video": torch.from_numpy(frames), "audio": tone},
    ]


def test_every_item_form_encode_accepts_passes_validation(omni_model):
    """Training and encode share one item check: what encode embeds, validate_example and content_hash accept."""
    forms = _encode_forms()
    embeddings = omni_model.encode_document(forms)
    assert embeddings.shape[0] == len(forms) and torch.isfinite(embeddings).all()
    mask = omni_model.processor(forms)["modality_mask"]
    for i, form in enumerate(forms):
        validate_example({"query": "q", "positive": form, "negatives": [form]}, i)
        assert item_modalities(form, i) == tuple(mask[i].tolist())
        assert check_item(form, i) == item_modalities(form, i)
        content_hash(form)
    assert content_hash(forms[1]) == content_hash(forms[2])  # a bare 16 kHz tensor == the same in a dict


@pytest.mark.parametrize(
    "item",
    [
        None,
        ["a", "b"],
        3,
        np.zeros(3, dtype=np.float32),
        {},
        {"instruction": "only"},
        {"txt": "typo"},
        {"text": 5},
        {"instruction": 5, "text": "t"},
        {"image": 5},
        {"image": [[0]]},
        {"audio": [0.0, 0.1]},
        {"video": [[0]]},
    ],
)
def test_item_modalities_refuses_what_encode_refuses_with_the_same_message(item):
    with pytest.raises(E5OmniInputError) as model_error:
        check_item(item, 7)
    with pytest.raises(InvalidItemError, match="item 7") as data_error:
        item_modalities(item, index=7)
    assert str(data_error.value) == str(model_error.value)
    assert data_error.value.index == 7
    assert isinstance(data_error.value, DataError) and isinstance(data_error.value, E5OmniInputError)
    with pytest.raises(BadRowError) as row_error:
        validate_example({"query": "q", "positive": "p", "negatives": [item]}, 4)
    assert str(row_error.value) == f"row 4: negatives[0]: {_message_without_index(item)}"


def _message_without_index(item) -> str:
    try:
        check_item(item, None)
    except E5OmniInputError as err:
        return str(err)
    raise AssertionError("expected a refusal")


def test_array_contents_are_checked_when_decoded_as_in_encode(omni_model):
    """item_modalities checks types and keys (cheap); shapes, dtypes and sample rates are the decoder's, for both."""
    odd = [
        ({"video": np.zeros((4, 8, 8, 3), dtype=np.float32)}, "video array must be uint8"),
        ({"video": np.zeros((8, 8, 3), dtype=np.uint8)}, "video array must be uint8"),
        ({"audio": {"array": _tone()}}, "audio dict must have 'array' and 'sampling_rate'"),
        ({"audio": np.zeros((2, 3, 4), dtype=np.float32)}, "audio must be 1-D"),
    ]
    for item, message in odd:
        validate_example({"query": "q", "positive": item}, 0)
        with pytest.raises(E5OmniInputError, match=message):
            omni_model.encode_document([item])


def test_validate_example_names_role_and_index():
    validate_example({"query": "q", "positive": "p", "negatives": ["n1", _image()]}, 0)
    with pytest.raises(BadRowError, match=r"row 3: negatives\[1\]"):
        validate_example({"query": "q", "positive": "p", "negatives": ["n", None]}, 3)
    with pytest.raises(BadRowError, match="missing 'positive'"):
        validate_example({"query": "q"}, 0)
    with pytest.raises(BadRowError, match="query side only"):
        validate_example({"query": "q", "positive": {"text": "p", "instruction": "i"}}, 0)


# ---------------------------------------------------------------------------------------------------------------------
# content hashes
# ---------------------------------------------------------------------------------------------------------------------


def test_content_hash_equal_for_equal_content():
    tone = _tone()
    video = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
    assert content_hash("a cat") == content_hash({"text": "a cat"})
    assert content_hash(_image(3)) == content_hash({"image": _image(3)})  # separate objects, same pixels
    assert content_hash({"audio": tone}) == content_hash({"audio": {"array": tone.copy(), "sampling_rate": 16_000}})
    assert content_hash({"audio": tone}) == content_hash({"audio": tone.astype(np.float64)})  # compared as float32
    assert content_hash({"video": video}) == content_hash({"video": video.copy()})
    assert content_hash({"video": video}) == content_hash({"video": torch.from_numpy(video)})  # a tensor = its array
    assert content_hash({"audio": tone}) == content_hash({"audio": torch.from_numpy(tone)})
    samples = (tone * 32767).astype(np.int16)
    assert content_hash({"audio": samples}) == content_hash(
        {"audio": {"array": samples.copy(), "sampling_rate": 16_000}}
    )
    assert content_hash({"image": "/m/a.png"}) == content_hash({"image": Path("/m/a.png")})
    assert content_hash({"text": "t", "image": _image(1)}) == content_hash({"image": _image(1), "text": "t"})


def test_content_hash_differs_for_different_content():
    video = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    changed_video = video.copy()
    changed_video[3, 7, 7, 2] = 1
    one_pixel = np.zeros((8, 8, 3), dtype=np.uint8)
    one_pixel[0, 0, 0] = 1
    items = [
        "a cat",
        "a cat ",
        {"text": "a cat", "instruction": "Find the image."},
        _image(0),
        Image.fromarray(one_pixel),
        _image(0).convert("RGBA"),
        _image(0, size=9),
        {"audio": _tone()},
        {"audio": {"array": _tone(), "sampling_rate": 8_000}},
        {"audio": _tone(freq=441.0)},
        {"audio": np.arange(8, dtype=np.int16)},  # integer samples are rescaled by the processor: not == float ones
        {"audio": np.arange(8, dtype=np.float32)},
        {"audio": np.arange(8, dtype=np.float32).reshape(4, 2)},  # 2-D (mixed down by the processor)
        {"video": video},
        {"video": changed_video},
        {"video": video[:3]},
        {"image": "a.png"},
        {"image": "b.png"},
        {"audio": "a.png"},
        {"text": "a.png"},
        {"text": "a cat", "image": _image(0)},
    ]
    hashes = [content_hash(item) for item in items]
    assert len(set(hashes)) == len(items)
    assert all(-(2**63) <= h < 2**63 for h in hashes)  # fits torch.long


def test_content_hash_refuses_invalid_items():
    with pytest.raises(InvalidItemError):
        content_hash(None)
    with pytest.raises(InvalidItemError):
        content_hash({"image": 3})


def test_content_hash_is_stable_across_processes():
    """Python's hash() is salted per process; ours must not be, or DDP ranks would disagree on duplicates."""
    code = (
        "import numpy as np; from PIL import Image; from e5omni.data import content_hash;"
        "items=['a cat', Image.new('RGB', (4, 4), (1, 2, 3)), {'audio': np.linspace(0, 1, 50, dtype=np.float32)},"
        "{'video': np.ones((2, 4, 4, 3), np.uint8), 'text': 'x', 'instruction': 'i'}];"
        "print([content_hash(i) for i in items])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    items = [
        "a cat",
        Image.new("RGB", (4, 4), (1, 2, 3)),
        {"audio": np.linspace(0, 1, 50, dtype=np.float32)},
        {"video": np.ones((2, 4, 4, 3), np.uint8), "text": "x", "instruction": "i"},
    ]
    assert out.stdout.strip() == str([content_hash(i) for i in items])


# ---------------------------------------------------------------------------------------------------------------------
# media paths
# ---------------------------------------------------------------------------------------------------------------------


def test_resolve_media_path_accepts_relative_paths_and_inner_symlinks(media: Path):
    assert resolve_media_path(media, "img/a.png") == (media / "img" / "a.png").resolve()
    assert resolve_media_path(media, "./img/./a.png") == (media / "img" / "a.png").resolve()
    (media / "link.png").symlink_to(media / "img" / "a.png")
    assert resolve_media_path(media, "link.png") == (media / "img" / "a.png").resolve()
    assert resolve_media_path(media, "not/yet.png", must_exist=False) == (media / "not" / "yet.png").resolve()


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("../secret.txt", "'..'"),
        ("img/../../secret.txt", "'..'"),
        ("img/../a.png", "'..'"),  # even when it would land inside: no honest use
        ("img\\..\\..\\secret.txt", "'..'"),
        ("/etc/passwd", "absolute"),
        ("\\\\server\\share\\x.png", "absolute"),
        ("C:\\Windows\\x.png", "absolute"),
        ("c:x.png", "absolute"),
        ("http://example.com/a.png", "URLs"),
        ("file:///etc/passwd", "URLs"),
        ("", "empty"),
        ("   ", "empty"),
        ("img/a.png\x00.txt", "NUL"),
        (".", "media root itself"),
    ],
)
def test_resolve_media_path_refuses_unsafe_paths(media: Path, bad: str, reason: str):
    with pytest.raises(UnsafeMediaPathError) as info:
        resolve_media_path(media, bad, source="train.jsonl", row=4, column="positive.image")
    err = info.value
    assert reason in str(err)
    assert (err.row, err.column, err.path) == (4, "positive.image", bad)
    assert "train.jsonl line 4, column 'positive.image'" in str(err) and repr(bad) in str(err)


def test_resolve_media_path_refuses_symlinks_that_escape(media: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"not yours")
    (media / "leak.png").symlink_to(outside / "secret.png")  # file symlink
    (media / "img" / "elsewhere").symlink_to(outside, target_is_directory=True)  # directory symlink
    for rel in ("leak.png", "img/elsewhere/secret.png"):
        with pytest.raises(UnsafeMediaPathError, match="outside the media root") as info:
            resolve_media_path(media, rel, row=2, column="query.image")
        assert info.value.path == rel and info.value.row == 2


def test_resolve_media_path_reports_missing_files(media: Path):
    with pytest.raises(MissingMediaError, match="line 9, column 'query.audio': media file 'aud/none.wav' not found"):
        resolve_media_path(media, "aud/none.wav", source="d.csv", row=9, column="query.audio")
    assert issubclass(MissingMediaError, FileNotFoundError) and issubclass(MissingMediaError, DataError)


# ---------------------------------------------------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------------------------------------------------


def test_load_jsonl_reads_every_item_form(media: Path, tmp_path: Path):
    rows = [
        {"query": "img/a.png", "positive": {"image": "img/a.png"}, "negatives": [{"image": "img/b.png"}], "pair": "p"},
        {
            "query": {"text": "a tone", "instruction": "Find the sound."},
            "positive": {"audio": "aud/a.wav"},
            "negatives": ["plain text negative"],
            "id": "row-2",
        },
        "",
        {"query": {"video": "vid/a.mp4", "text": "clip"}, "positive": "caption", "negatives": [{"text": "n"}]},
    ]
    path = _write_jsonl(media / "train.jsonl", rows)
    examples = load_jsonl(path)  # media_root defaults to the file's folder
    assert len(examples) == 3
    first, second, third = examples
    assert first["query"] == "img/a.png"  # text stays text even when a file of that name exists
    assert first["positive"] == {"image": str((media / "img" / "a.png").resolve())}
    assert first["pair"] == "p" and second["id"] == "row-2"
    assert second["query"] == {"text": "a tone", "instruction": "Find the sound."}
    assert Path(second["positive"]["audio"]).is_absolute() and Path(second["positive"]["audio"]).is_file()
    assert third["query"]["video"] == str((media / "vid" / "a.mp4").resolve())
    for i, example in enumerate(examples):
        validate_example(example, i)
    # explicit media root elsewhere
    moved = _write_jsonl(tmp_path / "elsewhere.jsonl", [rows[0]])
    assert load_jsonl(moved, media_root=media)[0]["positive"]["image"].endswith("a.png")


@pytest.mark.parametrize(
    "row, error, fragment",
    [
        ("{not json", BadRowError, "not valid JSON"),
        ('["query", "positive"]', BadRowError, "expected a JSON object, got list"),
        ({"query": "q"}, BadRowError, "missing 'positive'"),
        ({"query": "q", "positive": "p", "negative": ["n"]}, BadRowError, "unknown key(s) ['negative']"),
        ({"query": "q", "positive": 5}, BadRowError, "positive: expected a string (text) or an object"),
        ({"query": "q", "positive": {"image": ["img/a.png"]}}, BadRowError, "positive.image: expected a string"),
        ({"query": "q", "positive": {"img": "img/a.png"}}, BadRowError, "unknown key(s) ['img']"),
        ({"query": "", "positive": "p"}, BadRowError, "query: empty text"),
        ({"query": {"instruction": "i"}, "positive": "p"}, BadRowError, "query: no content"),
        ({"query": "q", "positive": {"text": "p", "instruction": "i"}}, BadRowError, "query side only"),
        ({"query": "q", "positive": "p", "negatives": "n"}, BadRowError, "'negatives' must be a list"),
        ({"query": "q", "positive": "p", "negatives": ["a", "b"]}, BadRowError, "expected 1 negatives"),
        ({"query": "q", "positive": {"image": "../a.png"}}, UnsafeMediaPathError, "'..'"),
        ({"query": "q", "positive": {"image": "/etc/passwd"}}, UnsafeMediaPathError, "absolute"),
        ({"query": "q", "positive": {"audio": "aud/missing.wav"}}, MissingMediaError, "not found"),
    ],
)
def test_load_jsonl_bad_rows_name_the_line(media: Path, row, error, fragment):
    good = {"query": "q", "positive": "p", "negatives": ["n"]}
    path = _write_jsonl(media / "bad.jsonl", [good, good, row])
    with pytest.raises(error) as info:
        load_jsonl(path)
    assert "bad.jsonl line 3" in str(info.value)
    assert fragment in str(info.value)


def test_load_jsonl_negative_count_and_check_files(media: Path):
    path = _write_jsonl(media / "n.jsonl", [{"query": "q", "positive": {"image": "img/later.png"}}])
    with pytest.raises(MissingMediaError):
        load_jsonl(path)
    assert load_jsonl(path, check_files=False)[0]["positive"]["image"].endswith("later.png")
    path = _write_jsonl(media / "k.jsonl", [{"query": "q", "positive": "p", "negatives": ["a"]}])
    with pytest.raises(BadRowError, match="line 1: expected 2 negatives \\(as num_negatives\\), got 1"):
        load_jsonl(path, num_negatives=2)


def test_unsafe_path_in_a_file_names_row_column_and_path(media: Path, tmp_path: Path):
    outside = tmp_path / "secret.png"
    _image().save(outside)
    (media / "sneaky.png").symlink_to(outside)
    path = _write_jsonl(
        media / "s.jsonl", [{"query": "q", "positive": "p"}, {"query": {"image": "sneaky.png"}, "positive": "p"}]
    )
    with pytest.raises(UnsafeMediaPathError) as info:
        load_jsonl(path)
    assert (info.value.row, info.value.column, info.value.path) == (2, "query.image", "sneaky.png")


# ---------------------------------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------------------------------


def test_load_csv_column_convention(media: Path):
    (media / "train.csv").write_text(
        "query_text,query_instruction,query_image,positive_image,positive_text,negative_1_image,negative_2,pair\n"
        "a red square,Find the picture.,,img/a.png,,img/b.png,a text negative,text->image\n"
        'what is "this"?,,img/b.png,,"a caption, with a comma",img/a.png,another,\n',
        encoding="utf-8",
    )
    first, second = load_csv(media / "train.csv")
    assert first["query"] == {"text": "a red square", "instruction": "Find the picture."}
    assert first["positive"] == {"image": str((media / "img" / "a.png").resolve())}
    assert first["negatives"] == [{"image": str((media / "img" / "b.png").resolve())}, "a text negative"]
    assert first["pair"] == "text->image" and "pair" not in second
    assert second["query"] == {"text": 'what is "this"?', "image": str((media / "img" / "b.png").resolve())}
    assert second["positive"] == "a caption, with a comma"  # text only -> a plain string


def test_load_csv_plain_text_pairs_and_aliases(media: Path):
    (media / "pairs.csv").write_text(
        "\ufeffanchor,query_instruction,positive,negative\nq1,Find it.,p1,n1\n\nq2,,p2,n2\n", encoding="utf-8"
    )
    examples = load_csv(media / "pairs.csv")  # a bare role column is text; the BOM and the blank line are fine
    assert examples == [
        {"query": {"text": "q1", "instruction": "Find it."}, "positive": "p1", "negatives": ["n1"]},
        {"query": "q2", "positive": "p2", "negatives": ["n2"]},
    ]


@pytest.mark.parametrize(
    "text, error, fragment",
    [
        ("query,positive,score\nq,p,1\n", DataError, "unknown column(s) ['score']"),
        ("query,positive_image,negative_2_text\nq,img/a.png,n\n", DataError, "numbered 1..k without gaps"),
        ("query,query_text,positive\nq,q,p\n", DataError, "both give query.text"),
        ("anchor,query,positive\nq,q,p\n", DataError, "both give query.text"),
        ("query,positive_instruction,positive_text\nq,i,p\n", DataError, "only allowed for the query"),
        ("query_image\nimg/a.png\n", DataError, "no column for 'positive'"),
        ("", DataError, "empty file"),
    ],
)
def test_load_csv_bad_headers(media: Path, text, error, fragment):
    (media / "h.csv").write_text(text, encoding="utf-8")
    with pytest.raises(error) as info:
        load_csv(media / "h.csv")
    assert "h.csv" in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize(
    "line, error, fragment",
    [
        ("q,img/a.png", BadRowError, "expected 3 cells"),
        ("q,img/a.png,n,extra", BadRowError, "expected 3 cells"),
        (",,n", BadRowError, "query is empty"),
        ("q,../etc/passwd,n", UnsafeMediaPathError, "column 'positive.image'"),
        ("q,img/nope.png,n", MissingMediaError, "not found"),
    ],
)
def test_load_csv_bad_rows_name_the_line(media: Path, line, error, fragment):
    (media / "r.csv").write_text(f"query,positive_image,negative_1\nq,img/a.png,n\n{line}\n", encoding="utf-8")
    with pytest.raises(error) as info:
        load_csv(media / "r.csv")
    assert "r.csv line 3" in str(info.value) and fragment in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------------------------------


def test_from_hf_dataset_by_column_names():
    tone = _tone()
    frames = np.full((2, 8, 8, 3), 7, dtype=np.uint8)
    ds = datasets.Dataset.from_dict(
        {
            "query_text": ["a tone", "a clip"],
            "query_instruction": ["Find it.", None],
            "positive_audio": [tone, tone[:100]],
            "negative_1_video": [frames, frames[:1]],
            "negative_2": ["text negative", "another"],
            "id": ["a", "b"],
        }
    )
    examples = from_hf_dataset(ds)
    assert isinstance(examples, HFExamples) and len(examples) == 2
    first = examples[0]
    assert first["query"] == {"text": "a tone", "instruction": "Find it."}
    assert examples[1]["query"] == "a clip"  # a None instruction is absent; text alone is a plain string
    audio = first["positive"]["audio"]
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and np.array_equal(audio, tone)
    video = first["negatives"][0]["video"]
    assert video.dtype == np.uint8 and video.shape == (2, 8, 8, 3)  # numpy format gives int64; cast back
    assert first["negatives"][1] == "text negative" and first["id"] == "a"
    assert examples[-1]["id"] == "b" and len(list(examples)) == 2
    examples.validate()


def test_from_hf_dataset_with_column_map_and_features(media: Path):
    ds = datasets.Dataset.from_dict(
        {
            "caption": ["a red square", "a blue square"],
            "picture": [_image(1), _image(2)],
            "hard": [_image(3), _image(4)],
            "sound": [{"array": _tone(), "sampling_rate": 16_000}] * 2,
            "wav": [str(media / "aud" / "a.wav")] * 2,
            "unused": [1, 2],
        }
    ).cast_column("wav", datasets.Audio())  # decoding it needs torchcodec; we decode the bytes ourselves
    column_map = {
        "query": {"text": "caption", "audio": "sound"},
        "positive": "picture",
        "negatives": ["hard", "wav"],
    }
    example = from_hf_dataset(ds, column_map)[1]
    assert example["query"]["text"] == "a blue square"
    assert example["query"]["audio"]["sampling_rate"] == 16_000
    assert example["query"]["audio"]["array"].dtype == np.float32
    assert isinstance(example["positive"], Image.Image)
    assert np.array_equal(np.asarray(example["positive"]), np.asarray(_image(2)))
    # an Audio value with a path and no bytes: the file, read by the model's own bounded reader
    assert example["negatives"][1] == {"audio": str((media / "aud" / "a.wav").resolve())}
    validate_example(example)


def test_from_hf_dataset_media_paths_are_resolved_safely(media: Path):
    ds = datasets.Dataset.from_dict(
        {"query": ["q0", "q1", "q2"], "positive_image": ["img/a.png", "img/b.png", "../../etc/passwd"]}
    )
    with pytest.raises(DataError, match="pass media_root"):
        from_hf_dataset(ds)[0]
    examples = from_hf_dataset(ds, media_root=media)
    assert examples[1]["positive"] == {"image": str((media / "img" / "b.png").resolve())}
    with pytest.raises(UnsafeMediaPathError) as info:
        examples[2]
    assert (info.value.row, info.value.column, info.value.path) == (2, "positive_image", "../../etc/passwd")
    assert "row 2, column 'positive_image'" in str(info.value)


def test_from_hf_dataset_a_whole_item_string_column_is_text(media: Path):
    ds = datasets.Dataset.from_dict({"query": ["img/a.png"], "positive": ["p"]})
    assert from_hf_dataset(ds, media_root=media)[0]["query"] == "img/a.png"


def test_from_hf_dataset_whole_item_columns_with_instruction_and_video_feature(media: Path, tmp_path: Path):
    ds = datasets.Dataset.from_dict(
        {
            "query": [_image(5), _image(6)],
            "query_instruction": ["Find the caption.", None],
            "positive": ["caption", "other"],
            "negative": [str(media / "vid" / "a.mp4")] * 2,
        }
    ).cast_column("negative", datasets.Video())  # decoding needs torchcodec: the path is passed on instead
    first, second = from_hf_dataset(ds)
    assert set(first["query"]) == {"image", "instruction"} and isinstance(first["query"]["image"], Image.Image)
    assert isinstance(second["query"], Image.Image)
    assert first["negatives"] == [{"video": str(media / "vid" / "a.mp4")}]
    assert from_hf_dataset(ds, media_root=media)[0]["negatives"][0]["video"] == str((media / "vid" / "a.mp4").resolve())
    with pytest.raises(UnsafeMediaPathError, match="outside the media root"):
        from_hf_dataset(ds, media_root=tmp_path / "elsewhere")[0]


def test_from_hf_dataset_errors():
    ds = datasets.Dataset.from_dict({"query": ["q", None], "positive": ["p", "p"], "label": [1, 0]})
    with pytest.raises(DataError, match=r"unknown column\(s\) \['label'\]"):
        from_hf_dataset(ds)
    examples = from_hf_dataset(ds, {"query": "query", "positive": "positive"})
    assert examples[0] == {"query": "q", "positive": "p"}
    with pytest.raises(BadRowError, match="row 1: query: column 'query' is empty"):
        examples[1]
    with pytest.raises(DataError, match="does not have"):
        from_hf_dataset(ds, {"query": "question", "positive": "positive"})
    with pytest.raises(DataError, match="cannot provide 'image'"):
        from_hf_dataset(ds, {"query": "query", "positive": {"image": "label"}})
    with pytest.raises(DataError, match="not a role"):
        from_hf_dataset(ds, {"query_text": "query", "positive": "positive"})
    with pytest.raises(DataError, match="one split, not streaming"):
        from_hf_dataset(ds.to_iterable_dataset())
    with pytest.raises(DataError, match="needs a datasets.Dataset"):
        from_hf_dataset([{"query": "q", "positive": "p"}])


def test_load_hub_dataset_passes_revision_and_converts(monkeypatch):
    calls = []
    local = datasets.Dataset.from_dict({"anchor": ["q"], "positive": ["p"]})

    def fake_load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_hub_dataset("org/pairs", "test", revision="abc123", data_dir="x")
    assert calls == [("org/pairs", {"split": "test", "revision": "abc123", "data_dir": "x"})]
    assert list(examples) == [{"query": "q", "positive": "p"}]


# ---------------------------------------------------------------------------------------------------------------------
# retrieval view
# ---------------------------------------------------------------------------------------------------------------------


def test_to_corpus_dedups_documents_and_merges_queries():
    cat, dog = _image(1), _image(2)
    examples = [
        {"query": "a cat", "positive": cat, "negatives": [dog]},
        {"query": "a dog", "positive": _image(2), "negatives": [cat]},  # same pixels as `dog`: one document
        {"query": "a cat", "positive": _image(3), "negatives": [dog]},  # same query again: two relevant docs
        {"query": "a cat", "positive": "a cat caption", "pair": "text->text"},
    ]
    rc = to_corpus(examples)
    assert len(rc.corpus) == 4  # cat, dog, image 3, the caption
    assert list(rc.queries) == ["q00000", "q00001", "q00002"]  # the text->text query is separate
    assert rc.qrels["q00000"] == {"d00000": 1, "d00002": 1}
    assert rc.qrels["q00001"] == {"d00001": 1}
    assert rc.query_pair == {"q00000": "text->image", "q00001": "text->image", "q00002": "text->text"}
    assert rc.candidates == {"text->image": ["d00000", "d00001", "d00002"], "text->text": ["d00003"]}
    assert rc.pairs == ["text->image", "text->text"]
    only_positives = to_corpus(examples[:1], include_negatives=False)
    assert list(only_positives.corpus) == ["d00000"] and only_positives.candidates == {"text->image": ["d00000"]}


def test_content_hash_treats_equivalent_array_layouts_as_one_item():
    """The collator masks duplicates by hash: forms that embed identically must hash identically."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    pil = Image.fromarray(pixels)
    same_image = [pil, {"image": pil}, pixels, {"image": pixels}, torch.from_numpy(pixels).permute(2, 0, 1)]
    assert len({content_hash(form) for form in same_image}) == 1
    frames = rng.integers(0, 256, (2, 8, 10, 3), dtype=np.uint8)
    first = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
    same_video = [{"video": frames}, {"video": first}, {"video": torch.from_numpy(first)}]
    assert len({content_hash(form) for form in same_video}) == 1
    assert content_hash({"video": frames}) != content_hash({"video": frames[::-1].copy()})


def test_resolve_media_path_names_a_symlink_loop(media: Path):
    """A loop under the media root is a typed refusal (an UnsafeMediaPathError) naming the path, not a bare
    RuntimeError from pathlib."""
    (media / "loop_a").symlink_to(media / "loop_b")
    (media / "loop_b").symlink_to(media / "loop_a")
    with pytest.raises(SymlinkLoopError, match="loop_a.*symlink loop"):
        resolve_media_path(media, "loop_a")
