"""A video's audio track (`use_audio_in_video`): decoded like the reference, interleaved like the model card.

The model card embeds a video document with `process_mm_info(message, use_audio_in_video=True)`: the video's audio
track becomes an audio slot that the Qwen2.5-Omni processor interleaves with the frames in 2-second chunks, and the
thinker's position ids are computed with `use_audio_in_video=True`. Files are made here with PyAV: Matroska with
16-bit PCM (mono 16 kHz and stereo 44.1 kHz) and an MP4 with AAC; an MP4 without audio is the fallback case.

Measured when written (PyAV 18, librosa 0.11, soxr): the PCM tracks equal the reference's decode (audioread + ffmpeg
s16 output + librosa soxr HQ) exactly (max abs diff 0, 16 kHz mono and 44.1 kHz stereo); AAC differs by the decoder path (length
within 1%). Embeddings of our file path vs the card's path (the reference processor fed the reference's decoded
frames and track, `use_audio_in_video=True` in processor and forward) agree to < 1e-5.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch

from modeling_e5omni import E5OmniConfig
from modeling_e5omni.media_e5omni import load_video_audio
from tests.conftest import make_audio, make_image, tiny
from tests.helpers import write_clip
from tests.reference import reference_embed

os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
HAS_DECORD = importlib.util.find_spec("decord") is not None
HAS_FFMPEG = shutil.which("ffmpeg") is not None


def _skip(reason: str):
    print(f"SKIPPED: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def model():
    return tiny("qwen2.5-omni")


def _reference(path, fps: float, max_frames: int, config=None, in_video: bool = True):
    """The reference's decode of one video message (`process_mm_info`, use_audio_in_video as given)."""
    from qwen_omni_utils import process_mm_info

    element = {"type": "video", "video": str(path), "fps": fps, "max_frames": max_frames}
    element.update(resized_height=56, resized_width=56)  # the frames' own size: compare decoding, not resizing
    audios, _, videos = process_mm_info([{"role": "user", "content": [element]}], use_audio_in_video=in_video)
    return audios, videos


# ------------------------------------------------------------------------------------------------ configuration
def test_default_follows_the_backbone_and_is_saved(tmp_path, model):
    assert model.config.use_audio_in_video is True  # Qwen2.5-Omni: what the released models do
    vl = tiny("qwen2-vl")
    assert vl.config.use_audio_in_video is False  # no audio tower
    with pytest.raises(ValueError, match="use_audio_in_video=True needs a backbone that takes audio"):
        E5OmniConfig(backbone_config=vl.config.backbone_config.to_dict(), use_audio_in_video=True)
    model.config.save_pretrained(tmp_path)
    assert E5OmniConfig.from_pretrained(tmp_path).use_audio_in_video is True
    off = E5OmniConfig.from_pretrained(tmp_path, use_audio_in_video=False)
    off.save_pretrained(tmp_path / "off")
    assert E5OmniConfig.from_pretrained(tmp_path / "off").use_audio_in_video is False


# ------------------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize(("rate", "channels", "tolerance"), [(16000, 1, 0.0), (44100, 2, 1e-6)])
def test_pcm_track_matches_reference(model, tmp_path, rate, channels, tolerance):
    if not (HAS_DECORD and HAS_FFMPEG):
        _skip("the reference reads the video with decord and its audio track with the ffmpeg program")
    path = tmp_path / "clip.mkv"
    write_clip(path, rate=rate, channels=channels)
    ours = load_video_audio(str(path), 0, model.config)
    audios, _ = _reference(path, model.config.fps, model.config.max_frames)
    ref = audios[0]
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = float(np.abs(ours.astype(np.float64) - ref).max())
    print(f"PCM track {rate} Hz x{channels}: {ours.shape[0]} samples, max abs diff {diff:.2e}")
    assert diff <= tolerance


def test_aac_track_close_to_reference(model, tmp_path):
    if not (HAS_DECORD and HAS_FFMPEG):
        _skip("the reference reads the video with decord and its audio track with the ffmpeg program")
    path = tmp_path / "clip.mp4"
    write_clip(path, audio="aac", rate=44100)
    ours = load_video_audio(str(path), 0, model.config)
    audios, _ = _reference(path, model.config.fps, model.config.max_frames)
    ref = audios[0]
    assert abs(ours.shape[0] - ref.shape[0]) <= 0.01 * ref.shape[0], (ours.shape, ref.shape)


def test_track_is_bounded_by_max_audio_seconds(model, tmp_path):
    path = tmp_path / "long.mkv"
    write_clip(path, seconds=4.0)
    config = E5OmniConfig(**{**model.config.to_dict(), "max_audio_seconds": 1.5})
    with pytest.warns(UserWarning, match="audio track .* longer than max_audio_seconds=1.5"):
        track = load_video_audio(str(path), 3, config)
    assert track.shape == (24000,)


# ------------------------------------------------------------------------------------------------ embeddings
@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny checkpoint in the released format (what the card loads) and ours converted from it."""
    from transformers import AutoModel

    from e5omni.convert import convert_checkpoint
    from tests.helpers import write_released

    root = tmp_path_factory.mktemp("released")
    write_released(root / "src")
    convert_checkpoint(root / "src", root / "ours")
    return root / "src", AutoModel.from_pretrained(root / "ours", trust_remote_code=True)


def test_video_with_sound_embeds_like_the_model_card(released, tmp_path):
    if not (HAS_DECORD and HAS_FFMPEG):
        _skip("the reference reads the video with decord and its audio track with the ffmpeg program")
    src, model = released
    assert model.config.use_audio_in_video is True
    loud, silent = tmp_path / "loud.mkv", tmp_path / "silent.mp4"
    write_clip(loud)
    write_clip(silent, audio=None)
    audios, videos = _reference(loud, model.config.fps, model.config.max_frames, model.config)
    frames = videos[0].numpy().transpose(0, 2, 3, 1).astype(np.uint8)
    _, silent_videos = _reference(silent, model.config.fps, model.config.max_frames, model.config, in_video=False)
    silent_frames = silent_videos[0].numpy().transpose(0, 2, 3, 1).astype(np.uint8)

    ref_loud = reference_embed(src, [{"video": frames, "video_audio": audios[0]}])[0]
    ref_mixed = reference_embed(src, [{"text": "a clip", "video": frames, "video_audio": audios[0]}])[0]
    ref_silent = reference_embed(src, [{"video": silent_frames}])[0]

    ours = model.encode_document([{"video": str(loud)}, {"text": "a clip", "video": str(loud)}])
    diffs = [float((ours[0] - ref_loud).abs().max()), float((ours[1] - ref_mixed).abs().max())]
    print(f"video with sound vs the card's path: max abs diff {diffs}")
    assert max(diffs) < 1e-5
    # one batch mixing a sounded video, a silent one, an audio item and an image: each row as if alone
    items = [{"video": str(loud)}, {"video": str(silent)}, {"audio": make_audio(1)}, make_image(2)]
    batch = model.encode_document(items, batch_size=4)
    alone = torch.cat([model.encode_document([x]) for x in items])
    assert float((batch[0] - ref_loud).abs().max()) < 1e-5
    assert float((batch[1] - ref_silent).abs().max()) < 1e-5
    assert float((batch - alone).abs().max()) < 1e-5
    frames_only = model.encode_document([{"video": frames}])[0]  # an array has no track: the frames alone
    assert float((frames_only - reference_embed(src, [{"video": frames}])[0]).abs().max()) < 1e-5
    assert float((ours[0] - frames_only).abs().max()) > 1e-3  # the sound is really in the embedding


def test_modality_mask_shows_the_track(model, tmp_path):
    loud, silent = tmp_path / "loud.mkv", tmp_path / "silent.mp4"
    write_clip(loud)
    write_clip(silent, audio=None)
    batch = model.processor([{"video": str(loud)}, {"video": str(silent)}, {"audio": make_audio(0)}])
    assert batch["modality_mask"].tolist() == [
        [False, False, True, True],
        [False, False, False, True],
        [False, False, True, False],
    ]
    assert batch["video_audio"].tolist() == [True, False, False]
    assert batch["audio_rows"].tolist() == [1, 0, 1]
    assert batch["input_features"].shape[0] == 2
    model.config.use_audio_in_video = False  # the shared tiny model: switched back below
    try:
        plain = model.processor([{"video": str(loud)}])
    finally:
        model.config.use_audio_in_video = True
    assert plain["modality_mask"].tolist() == [[False, False, False, True]] and "video_audio" not in plain


def test_gradcache_slices_keep_the_track_rows(model, tmp_path):
    from modeling_e5omni.processing_e5omni import slice_features

    loud = tmp_path / "loud.mkv"
    write_clip(loud)
    items = [{"audio": make_audio(0), "video": str(loud)}, {"video": str(loud)}, {"audio": make_audio(2)}]
    batch = dict(model.processor(items))
    whole = model(**batch).embeddings
    parts = torch.cat([model(**slice_features(batch, i, i + 1)).embeddings for i in range(3)])
    assert [slice_features(batch, i, i + 1)["input_features"].shape[0] for i in range(3)] == [2, 1, 1]
    assert float((whole - parts).abs().max()) < 1e-5


@pytest.mark.parametrize("size", [900, 1010])
def test_frames_over_the_per_frame_budget_resize_like_the_card(released, tmp_path, size):
    """Frames larger than the per-frame budget: the reference resizes them itself (bicubic, antialiased, in float,
    per-frame cap from its total budget) before the processor; we leave that to the processor (the same rule:
    `cap_pixels_per_frame=True`, 128000 tokens in all). Measured: identical embeddings (max abs diff 0.0)."""
    if not HAS_DECORD:
        _skip("the reference reads video files with decord; not installed")
    src, model = released
    path = tmp_path / "big.mp4"
    write_clip(path, seconds=2.0, size=size, audio=None)
    element = {"type": "video", "video": str(path), "fps": model.config.fps, "max_frames": model.config.max_frames}
    element.update(min_pixels=model.config.video_min_pixels, max_pixels=model.config.video_max_pixels)
    from qwen_omni_utils import process_mm_info

    _, _, videos = process_mm_info([{"role": "user", "content": [element]}], use_audio_in_video=False)
    assert videos[0].shape[-1] < size  # the budget really resized the frames
    diff = float(
        (reference_embed(src, [{"video": videos[0]}]) - model.encode_document([{"video": str(path)}])).abs().max()
    )
    print(f"{size}x{size} frames -> {tuple(videos[0].shape[-2:])}: max abs diff {diff}")
    assert diff < 1e-5


@pytest.mark.parametrize("backbone", ["qwen2.5-omni", "qwen2-vl"])
def test_frames_are_resized_as_they_are_decoded(tmp_path, backbone):
    """Each frame is resized to the size the backbone processor would give it as soon as it is decoded, so one
    full-resolution frame is held at a time (a 4K clip at the card's budgets: decode peak RSS 1578 -> 288 MB,
    measured): the processor's tensors and the embeddings are exactly those of handing it the full frames."""
    import tracemalloc

    from modeling_e5omni.media_e5omni import normalize_item

    model = tiny(backbone)
    proc = model.processor
    path = tmp_path / "big.mp4"
    size = 512
    write_clip(path, seconds=2.0, size=size, audio=None)
    tracemalloc.start()
    full = normalize_item({"video": str(path)}, 0, proc.config)  # no frame_size: frames at decoded size
    full_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    small = proc.decode({"video": str(path)}, 0)
    small_peak = tracemalloc.get_traced_memory()[1] - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    frames = full.video.shape[0]
    height, width = proc.video_frame_size(frames, size, size)
    assert full.video.shape == (frames, size, size, 3) and small.video.shape == (frames, height, width, 3)
    assert height * width < size * size // 4  # the budget really shrinks these frames
    one_frame = size * size * 3
    assert full_peak >= frames * one_frame and small_peak < 3 * one_frame, (full_peak, small_peak)
    a, b = dict(proc.process_decoded([full], "document")), dict(proc.process_decoded([small], "document"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.inference_mode():
        assert torch.equal(model(**a).embeddings, model(**b).embeddings)
    # every path of the package decodes with the frame size: encode's vectors are these
    assert torch.equal(model.encode_document([{"video": str(path)}]), model(**b).embeddings)


def test_hostile_video_containers_are_named(model, tmp_path):
    """An audio-only file given as a video, and cut / garbage-tailed Matroska files with sound: a typed error that
    names the item, or an embedding; never an untyped exception or a hang."""
    from modeling_e5omni import E5OmniInputError, MediaDecodeError

    write_clip(tmp_path / "audio_only.mkv", video=False)
    with pytest.raises(MediaDecodeError, match=r"^item 1: video file has no video stream \(streams: audio\)"):
        model.encode_document(["x", {"video": str(tmp_path / "audio_only.mkv")}])
    write_clip(tmp_path / "full.mkv")
    data = (tmp_path / "full.mkv").read_bytes()
    cases = {
        "cut.mkv": data[: len(data) // 2],
        "tail.mkv": data[:3000] + b"\xff" * 5000,
        "head.mkv": data[:200],
        "zeros.mkv": b"\0" * 4096,
    }
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
        try:
            out = model.encode_document([{"video": str(tmp_path / name)}])
            assert torch.isfinite(out).all(), name
        except E5OmniInputError as err:
            assert err.index == 0 and str(err).startswith("item 0: "), (name, str(err))
