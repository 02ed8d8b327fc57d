"""`datasets` media values as users have them: bytes win over a bare stored name, never a file of the working
directory; `hub:` save_to_disk folders (Dataset and DatasetDict); audio bytes read no further than the budget."""

from __future__ import annotations

import ast
import io
import warnings
from pathlib import Path

import av
import datasets
import numpy as np
import pytest
import soundfile
from PIL import Image

from e5omni.data import BadRowError, DataError, from_hf_dataset, load_hub_dataset, media_value_to_item
from e5omni.data.errors import Where
from e5omni.data.features import cache_media_bytes, read_audio_bytes
from e5omni.data.specs import load_data_spec

datasets.utils.logging.disable_progress_bar()
MEDIA = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}


def _mp4(seed: int, frames: int = 4, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for frame in pixels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _png(value: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, 255 - value, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(seconds: float, rate: int = 8_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def _saved(tmp_path: Path, column: str, feature, values: list[dict], *, name="saved", dict_splits=None) -> Path:
    """A dataset with a `caption` query and a media positive, cast to `feature`, written with save_to_disk."""
    ds = datasets.Dataset.from_dict(
        {"query": [f"caption {i}" for i in range(len(values))], column: values},
        features=datasets.Features({"query": datasets.Value("string"), column: MEDIA}),
    ).cast_column(column, feature)
    folder = tmp_path / name
    if dict_splits:
        datasets.DatasetDict({split: ds for split in dict_splits}).save_to_disk(str(folder))
    else:
        ds.save_to_disk(str(folder))
    return folder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "media-cache"
    monkeypatch.setenv("E5OMNI_MEDIA_CACHE", str(folder))
    return folder


def test_save_to_disk_keeps_the_bytes_and_only_a_base_name():
    """The premise: what `datasets` really stores, so the rules below are about real values."""
    ds = datasets.Dataset.from_dict(
        {"video": [{"bytes": b"\x00video", "path": "/somewhere/else/clip.mp4"}]},
        features=datasets.Features({"video": MEDIA}),
    ).cast_column("video", datasets.Video(decode=False))
    assert ds[0]["video"]["path"] == "/somewhere/else/clip.mp4"


def test_video_bytes_win_over_a_file_of_the_same_name_in_the_cwd(tmp_path, cache, monkeypatch, omni_model):
    real, decoy = _mp4(1), _mp4(2)
    folder = _saved(tmp_path, "positive", datasets.Video(decode=False), [{"bytes": real, "path": "/data/clip.mp4"}])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "clip.mp4").write_bytes(decoy)  # what the base name used to resolve to
    monkeypatch.chdir(cwd)
    assert datasets.load_from_disk(str(folder))[0]["positive"]["path"] == "clip.mp4"

    example = load_data_spec(f"hub:{folder}")[0]
    path = Path(example["positive"]["video"])
    assert path.parent == cache and path.read_bytes() == real  # the row's bytes, in the cache, named by their hash
    direct = tmp_path / "direct.mp4"
    direct.write_bytes(real)
    got, want, wrong = omni_model.encode_document(
        [example["positive"], {"video": str(direct)}, {"video": str(cwd / "clip.mp4")}]
    )
    np.testing.assert_array_equal(got, want)
    assert not np.allclose(got, wrong)
    assert load_data_spec(f"hub:{folder}")[0]["positive"]["video"] == str(path)  # written once


def test_image_bytes_win_over_a_file_of_the_same_name_in_the_cwd(tmp_path, cache, monkeypatch):
    folder = _saved(tmp_path, "positive", datasets.Image(decode=False), [{"bytes": _png(10), "path": "/x/pic.png"}])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pic.png").write_bytes(_png(200))
    image = from_hf_dataset(datasets.load_from_disk(str(folder)))[0]["positive"]
    assert isinstance(image, Image.Image)
    assert np.asarray(image.convert("RGB"))[0, 0].tolist() == [10, 245, 7]


def test_a_relative_path_without_bytes_is_never_resolved_against_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clip.mp4").write_bytes(_mp4(3))
    ds = datasets.Dataset.from_dict(
        {"query": ["q"], "positive": [{"bytes": None, "path": "clip.mp4"}]},
        features=datasets.Features({"query": datasets.Value("string"), "positive": MEDIA}),
    ).cast_column("positive", datasets.Video(decode=False))
    with pytest.raises(BadRowError, match="row 0, column 'positive'.*never resolved against the working directory"):
        from_hf_dataset(ds)[0]
    root = tmp_path / "root"
    root.mkdir()
    (root / "clip.mp4").write_bytes(_mp4(4))
    assert from_hf_dataset(ds, media_root=root)[0]["positive"] == {"video": str((root / "clip.mp4").resolve())}


def test_media_value_to_item_rules(tmp_path, cache):
    where = Where("t.parquet", 4, "row")
    assert media_value_to_item(None, "image") is None and media_value_to_item("  ", "video") is None
    with pytest.raises(BadRowError, match=r"t\.parquet row 4, column 'v': video path 'a\.mp4' is relative"):
        media_value_to_item("a.mp4", "video", where=where, column="v")
    with pytest.raises(BadRowError, match="neither bytes nor a path"):
        media_value_to_item({"bytes": None, "path": None}, "audio", where=where, column="a")
    with pytest.raises(BadRowError, match="cannot decode the audio bytes"):
        media_value_to_item({"bytes": b"not audio", "path": "x.wav"}, "audio", where=where, column="a")
    with pytest.raises(BadRowError, match="cannot read the image bytes"):
        media_value_to_item(b"not an image", "image", where=where, column="i")
    video = media_value_to_item(b"raw video bytes", "video")  # raw bytes: the same as {"bytes": ...}
    assert Path(video).read_bytes() == b"raw video bytes" and Path(video).parent == cache
    with pytest.raises(ValueError, match="kind must be one of"):
        media_value_to_item("x", "text")


def test_cache_media_bytes_is_content_addressed_and_rewrites_a_wrong_file(tmp_path):
    first = cache_media_bytes(b"abc", suffix=".mp4", cache=tmp_path)
    assert first == cache_media_bytes(b"abc", suffix=".mp4", cache=tmp_path) and first.read_bytes() == b"abc"
    assert cache_media_bytes(b"abc", suffix="/../../x", cache=tmp_path).parent == tmp_path  # a name from data: dropped
    first.write_bytes(b"abcd")  # a damaged entry (wrong size) is written again, not used
    assert cache_media_bytes(b"abc", suffix=".mp4", cache=tmp_path).read_bytes() == b"abc"
    assert not list(tmp_path.glob(".partial-*"))


def test_audio_bytes_are_read_no_further_than_the_budget(tmp_path, omni_model):
    """A 60 s WAV in a dataset, budget 2 s: 2 s decoded (not 60), a warning naming the place, and the embedding the
    model gives the same file under the same budget."""
    data = _wav(60.0, rate=8_000)
    folder = _saved(tmp_path, "positive", datasets.Audio(decode=False), [{"bytes": data, "path": "long.wav"}])
    with pytest.warns(
        UserWarning, match=r"row 0, column 'positive': audio of 60\.0 s truncated to max_audio_seconds=2"
    ):
        example = load_data_spec(f"hub:{folder}", max_audio_seconds=2)[0]
    audio = example["positive"]["audio"]
    assert audio["sampling_rate"] == 8_000 and audio["array"].shape == (16_000,)  # 2 s at the file's own rate
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the budget: no warning
        array, rate, total = read_audio_bytes(_wav(1.0), 2.0)
    assert (array.shape, rate, total) == ((8_000,), 8_000, 8_000)

    wav = tmp_path / "long.wav"
    wav.write_bytes(data)
    budget = omni_model.config.max_audio_seconds
    omni_model.config.max_audio_seconds = 2.0
    try:
        with pytest.warns(UserWarning):
            got, want = omni_model.encode_document([example["positive"], {"audio": str(wav)}])
    finally:
        omni_model.config.max_audio_seconds = budget
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_audio_bytes_default_budget_is_the_models_default(tmp_path):
    data = _wav(31.0, rate=1_000)
    ds = datasets.Dataset.from_dict(
        {"query": ["q"], "positive": [{"bytes": data, "path": None}]},
        features=datasets.Features({"query": datasets.Value("string"), "positive": MEDIA}),
    ).cast_column("positive", datasets.Audio())
    with pytest.warns(UserWarning, match="max_audio_seconds=30"):
        audio = from_hf_dataset(ds)[0]["positive"]["audio"]
    assert audio["array"].shape == (30_000,)


def test_hub_accepts_save_to_disk_folders_of_a_dataset_and_of_a_dataset_dict(tmp_path, cache):
    values = [{"bytes": _mp4(i), "path": f"v{i}.mp4"} for i in range(2)]
    single = _saved(tmp_path, "positive", datasets.Video(decode=False), values, name="one")
    both = _saved(tmp_path, "positive", datasets.Video(decode=False), values, name="two", dict_splits=("train", "test"))
    for spec in (f"hub:{single}", f"hub:{both}", f"hub:{both}:test"):
        examples = load_data_spec(spec)
        assert len(examples) == 2 and Path(examples[1]["positive"]["video"]).read_bytes() == values[1]["bytes"]
    assert len(load_data_spec(f"hub:{both}", split="test")) == 2  # the command's default split
    assert len(load_hub_dataset(str(single), media_root=tmp_path)) == 2
    with pytest.raises(DataError, match=r"no split 'dev'.*\['test', 'train'\]"):
        load_data_spec(f"hub:{both}:dev")


def test_hub_folder_of_one_split_refuses_another_split(tmp_path):
    ds = datasets.Dataset.from_dict({"query": ["q"], "positive": ["p"]}, split=datasets.Split.TRAIN)
    ds.save_to_disk(str(tmp_path / "f"))
    assert load_data_spec(f"hub:{tmp_path / 'f'}", split="test")[0] == {"query": "q", "positive": "p"}
    with pytest.raises(DataError, match="save_to_disk folder of the 'train' split; asked for split 'test'"):
        load_data_spec(f"hub:{tmp_path / 'f'}:test")


def test_hub_folder_errors_name_the_folder_and_row(tmp_path):
    datasets.Dataset.from_dict({"query": ["q", None], "positive": ["p", "p"]}).save_to_disk(str(tmp_path / "f"))
    with pytest.raises(BadRowError, match=rf"{tmp_path / 'f'} row 1: query: column 'query' is empty"):
        load_data_spec(f"hub:{tmp_path / 'f'}")[1]


def test_caption_table_with_video_bytes(tmp_path, cache):
    """A caption Parquet with a Video column of bytes (what `push_to_hub` / `to_parquet` embed) now trains."""
    ds = datasets.Dataset.from_dict(
        {"caption": ["a clip"], "video": [{"bytes": _mp4(5), "path": "clip.mp4"}]},
        features=datasets.Features({"caption": datasets.Value("string"), "video": MEDIA}),
    ).cast_column("video", datasets.Video(decode=False))
    ds.to_parquet(str(tmp_path / "captions.parquet"))
    example = load_data_spec(f"caption:{tmp_path / 'captions.parquet'}")[0]
    assert Path(example["positive"]["video"]).read_bytes() == _mp4(5)


def test_mixture_does_not_import_specs():
    """specs -> mixture only: the spec loader is passed in (no import cycle)."""
    source = Path(__file__).parents[1] / "e5omni" / "data" / "mixture.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert "e5omni.data.specs" not in imported and "e5omni.data" not in imported
