"""Every bad input gets its documented, typed error naming the item (README, "Bad input fails early")."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from modeling_e5omni import (
    E5OmniInputError,
    MediaDecodeError,
    MediaTooLargeError,
    RemoteMediaError,
    UnsupportedModalityError,
)
from tests.conftest import make_audio, make_image, make_video, tiny
from tests.helpers import write_mp4


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (None, "items is None"),
        ([], "items is empty"),
        ("just a string", "wrap it in a list"),
        (["ok", 42], "item 1: unsupported item type int"),
        (["ok", None], "item 1: got None"),
        ([{}], "item 0: dict has no content"),
        ([{"text": "x", "pictures": 1}], "item 0: unknown keys ['pictures']"),
        ([{"text": 3}], "item 0: 'text' must be a str"),
        ([{"video": np.zeros((4, 8, 8), dtype=np.uint8)}], "item 0: video array must be uint8 of shape"),
        ([{"video": np.zeros((4, 8, 8, 3), dtype=np.float32)}], "item 0: video array must be uint8"),
        ([{"audio": {"array": np.zeros(10)}}], "item 0: audio dict must have 'array' and 'sampling_rate'"),
        ([{"audio": np.zeros((2, 3, 4))}], "item 0: audio must be 1-D"),
        ([{"audio": np.array([], dtype=np.float32)}], "item 0: audio has no samples"),
    ],
)
def test_bad_items_are_named(omni_model, items, message):
    with pytest.raises(E5OmniInputError) as err:
        omni_model.encode_document(items)
    assert message in str(err.value)


def test_audio_on_a_backbone_without_audio(vl_model):
    with pytest.raises(UnsupportedModalityError, match=r"item 1: this checkpoint takes \['text', 'image', 'video'\]"):
        vl_model.encode_document(["fine", {"audio": make_audio()}])


def test_errors_come_before_any_backbone_work(omni_model, monkeypatch):
    calls = []
    monkeypatch.setattr(omni_model.backbone, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(E5OmniInputError, match="item 40"):
        omni_model.encode_document(["ok"] * 40 + [object()], batch_size=4)
    assert calls == []


def test_image_format_outside_allow_list(omni_model, tmp_path):
    path = tmp_path / "image.ppm"
    make_image(0).save(path)
    with pytest.raises(MediaDecodeError, match="item 0: image format PPM is not allowed"):
        omni_model.encode_document([{"image": str(path)}])


def test_truncated_image(omni_model, tmp_path):
    path = tmp_path / "cut.png"
    make_image(0, (120, 120)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(MediaDecodeError, match="item 0: image .* is truncated or corrupt"):
        omni_model.encode_document([{"image": str(path)}])


def test_missing_file(omni_model, tmp_path):
    with pytest.raises(MediaDecodeError, match="item 0: image file not found"):
        omni_model.encode_document([{"image": str(tmp_path / "nope.png")}])


def test_url_refused_unless_enabled(omni_model):
    with pytest.raises(RemoteMediaError, match="item 0: image 'https://example.com/a.png' is a URL"):
        omni_model.encode_document([{"image": "https://example.com/a.png"}])
    with pytest.raises(RemoteMediaError, match="item 0: video"):
        omni_model.encode_document([{"video": "http://example.com/v.mp4"}])


def test_image_bomb_refused_from_the_header_with_little_memory(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (9400, 9400)).save(path)  # ~60 KB on disk, 265 MB as RGB once decoded
    assert path.stat().st_size < 200_000
    script = textwrap.dedent(
        f"""
        import resource
        from modeling_e5omni import E5OmniConfig, MediaTooLargeError
        from modeling_e5omni.processing_e5omni import load_image
        config = E5OmniConfig(max_decode_pixels=40_000_000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_image({str(path)!r}, 0, config)
            raise SystemExit("not refused")
        except MediaTooLargeError as err:
            assert "9400x9400" in str(err) and "refused before decoding" in str(err), err
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    extra_mb = float(out.stdout.strip().splitlines()[-1])
    assert extra_mb < 50, f"refusing the bomb cost {extra_mb:.1f} MB"


def test_in_memory_image_over_the_cap(omni_model):
    omni_model.config.max_decode_pixels = 100
    try:
        with pytest.raises(MediaTooLargeError, match="item 0: image of 56x56"):
            omni_model.encode_document([make_image(0)])
    finally:
        omni_model.config.max_decode_pixels = 40_000_000


def test_tiny_and_blank_media_embed_finitely(omni_model):
    one = Image.new("RGB", (1, 1))
    black = Image.new("RGB", (56, 56))
    silence = {"array": np.zeros(1600, dtype=np.float32), "sampling_rate": 16000}
    emb = omni_model.encode_document([one, black, {"audio": silence}, {"video": np.zeros((1, 2, 2, 3), np.uint8)}])
    assert torch.isfinite(emb).all()


def test_audio_files_truncated_and_resampled(omni_model, tmp_path):
    good = tmp_path / "tone.wav"
    audio = make_audio(1, seconds=1.0, rate=44100)
    sf.write(good, audio["array"], 44100)
    from_file = omni_model.encode_document([{"audio": str(good)}])
    from_array = omni_model.encode_document([{"audio": audio}])
    assert (from_file - from_array).abs().max() < 1e-3  # file (16-bit PCM) vs float array
    cut = tmp_path / "cut.wav"
    cut.write_bytes(good.read_bytes()[:4000])
    with pytest.raises(MediaDecodeError, match="item 0: audio file .* is truncated"):
        omni_model.encode_document([{"audio": str(cut)}])
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(good.read_bytes()[:20])
    with pytest.raises(MediaDecodeError, match="item 0: cannot decode audio file"):
        omni_model.encode_document([{"audio": str(header_only)}])


def test_long_audio_truncated_with_a_warning(omni_model):
    long = make_audio(0, seconds=5.0)  # the tiny model's budget is 2 s
    with pytest.warns(UserWarning, match="truncated to max_audio_seconds=2.0"):
        a = omni_model.encode_document([{"audio": long}])
    short = {"array": long["array"][:32000], "sampling_rate": 16000}
    b = omni_model.encode_document([{"audio": short}])
    assert (a - b).abs().max() < 1e-6


def test_video_files_sampled_and_truncated_files_refused(omni_model, tmp_path):
    path = tmp_path / "clip.mp4"
    write_mp4(path, make_video(0, frames=12), fps=4)
    emb = omni_model.encode_document([{"video": str(path)}])
    assert torch.isfinite(emb).all()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(MediaDecodeError, match="item 0: cannot decode video"):
        omni_model.encode_document([{"video": str(cut)}])


def test_video_file_frames_are_sampled_at_fps(omni_model, tmp_path):
    from modeling_e5omni.processing_e5omni import load_video

    path = tmp_path / "clip.mp4"
    write_mp4(path, make_video(0, frames=12), fps=4)  # 3 s at 4 fps; config fps 2, max_frames 4
    frames = load_video(str(path), 0, omni_model.config)
    assert frames.shape[0] == 4 and frames.dtype == np.uint8


def test_over_long_text_is_truncated_keeping_template_tail(omni_model):
    processor = omni_model.processor
    text = "the quick brown fox " * 400
    with pytest.warns(UserWarning, match="truncated to max_length=512"):
        batch = processor([text])
    ids = batch["input_ids"][0]
    eos = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert int(ids[-1]) == eos
    tail = processor.tokenizer.decode(ids[-10:])
    assert tail.endswith("<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
    assert ids.shape[0] < 512 + 40
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(["short text"])  # no warning below the budget


def test_extreme_aspect_ratios_are_a_typed_error_naming_the_item(tmp_path):
    """The Qwen processors refuse a side over 200 times the other with a bare ValueError from smart_resize; every
    way an image or video arrives gets a MediaShapeError naming the item instead (decided from the header)."""
    from modeling_e5omni import MediaShapeError

    model = tiny("qwen2.5-omni")
    Image.new("RGB", (2, 600)).save(tmp_path / "tall.png")
    write_mp4(tmp_path / "strip.mp4", np.zeros((4, 2, 420, 3), np.uint8))
    cases = [
        Image.new("RGB", (600, 2)),
        np.zeros((2, 600, 3), np.uint8),
        {"image": str(tmp_path / "tall.png"), "text": "x"},
        {"video": np.zeros((4, 2, 600, 3), np.uint8)},
        {"video": str(tmp_path / "strip.mp4")},
    ]
    for case in cases:
        with pytest.raises(MediaShapeError, match=r"^item 1: .*has an aspect ratio of (300|210); the backbone takes"):
            model.encode_document(["fine", case])
    # 200 exactly is what the backbone still takes
    assert model.encode_document([Image.new("RGB", (400, 2))]).shape[0] == 1


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "image path is empty"),
        ("  ", "image path is empty"),
        ("/tmp/" + "a" * 300 + ".png", "cannot use image path '/tmp/aaa"),
        ("/tmp/" + "a/" * 3000 + "x.png", "cannot use image path '/tmp/a/a/"),
        ("/tmp", "image path '/tmp' is not a regular file"),
        ("/dev/null", "image path '/dev/null' is not a regular file"),
        ("/nonexistent/x.png", "image file not found: '/nonexistent/x.png'"),
    ],
)
def test_unusable_paths_are_named_decode_errors(path, message):
    """A name the OS refuses (too long), a directory, a device: a typed error naming the item, never an OSError."""
    with pytest.raises(MediaDecodeError, match="^item 0: " + re.escape(message)):
        tiny("qwen2.5-omni").encode_document([{"image": path}])
