"""Our media decoding against the reference, qwen-omni-utils 0.0.9's `process_mm_info` (a test-only dependency).

Files are made in the test: a PNG with alpha, an EXIF-rotated JPEG, WAVs (16 kHz PCM, 44.1 kHz float stereo), an
AAC .m4a and an MP4 of a few seconds whose content changes every frame. Decoded inputs are compared (frame counts
and pixels, audio samples, with the tolerances measured when this was written and stated per case), then embeddings
through the tiny model to 1e-5 where the decoded inputs agree.

Measured (PyAV 18.1, Pillow 13.0, librosa 0.11, decord 0.6): images and MP4 frames identical (max abs diff 0, same
frame counts); WAVs (16 kHz PCM_16, 44.1 kHz float stereo, 8 kHz PCM_24) identical sample for sample (both mix down
by the mean and resample with soxr HQ); the AAC .m4a differs: 24133 vs 24149 samples (PyAV's resampler vs ffmpeg's
decode + soxr), max abs diff 0.014 over the common length, so only its length and a 0.05 bound are checked. The reference reads video files with decord
(torchvision 0.29 has no `read_video`) and non-libsndfile audio with the ffmpeg program (audioread); those cases are
skipped, with the reason printed, where either is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from modeling_e5omni.media_e5omni import load_audio, load_image, load_video
from tests.conftest import tiny

os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")  # read at import: torchcodec would need system FFmpeg
qwen_omni_utils = pytest.importorskip("qwen_omni_utils", reason="qwen-omni-utils (the `test` extra) is not installed")
from qwen_omni_utils import process_mm_info  # noqa: E402

HAS_DECORD = importlib.util.find_spec("decord") is not None
HAS_FFMPEG = shutil.which("ffmpeg") is not None


def _skip(reason: str):
    print(f"SKIPPED: {reason}")
    pytest.skip(reason)


def reference(element: dict):
    """One user message holding one media element, through the reference's `process_mm_info`."""
    audios, images, videos = process_mm_info([{"role": "user", "content": [element]}], use_audio_in_video=False)
    return audios, images, videos


@pytest.fixture
def model():
    return tiny("qwen2.5-omni")


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# --------------------------------------------------------------------------------------------------------- images
def test_png_with_alpha_matches_reference(model, tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (56, 56, 4), dtype=np.uint8)
    rgba[:20, :, 3] = 0  # fully transparent band
    rgba[20:30, :, 3] = 128  # half transparent band
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    _, images, _ = reference({"type": "image", "image": str(path)})
    ours = load_image(str(path), 0, model.config)
    assert ours.size == images[0].size  # 56x56: the reference's smart_resize keeps it
    assert _max_diff(ours, images[0]) == 0
    assert (np.asarray(ours)[:20] == 255).all()  # transparent -> white, as the reference
    emb_ours = model.encode_document([{"image": str(path)}])
    emb_ref = model.encode_document([images[0]])
    assert float((emb_ours - emb_ref).abs().max()) <= 1e-5


def test_exif_rotated_jpeg_is_taken_as_stored_like_the_reference(model, tmp_path):
    """Neither side applies EXIF orientation (the reference does Image.open then to_rgb)."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (84, 56, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    _, images, _ = reference({"type": "image", "image": str(path)})
    ours = load_image(str(path), 0, model.config)
    assert ours.size == images[0].size == (56, 84)  # stored orientation, not the displayed one
    assert _max_diff(ours, images[0]) == 0


# ---------------------------------------------------------------------------------------------------------- audio
def _tone(rate: int, seconds: float = 1.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t * (1 + t))
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono, 0.5 * mono[::-1]], axis=1).astype(np.float32)


@pytest.mark.parametrize(
    ("rate", "channels", "subtype", "tolerance"),
    [(16000, 1, "PCM_16", 0.0), (44100, 2, "FLOAT", 1e-6), (8000, 1, "PCM_24", 1e-6)],
)
def test_wav_matches_reference(model, tmp_path, rate, channels, subtype, tolerance):
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, _tone(rate, channels=channels), rate, subtype=subtype)
    audios, _, _ = reference({"type": "audio", "audio": str(path)})
    ours = load_audio(str(path), 0, model.config.max_audio_seconds)
    ref = audios[0]
    assert ours.shape == ref.shape
    diff = _max_diff(ours, ref)
    print(f"wav {rate} Hz x{channels} {subtype}: {ours.shape[0]} samples, max abs diff {diff:.3g}")
    assert diff <= tolerance
    emb_ours = model.encode_document([{"audio": str(path)}])
    emb_ref = model.encode_document([{"audio": {"array": ref, "sampling_rate": 16000}}])
    assert float((emb_ours - emb_ref).abs().max()) <= 1e-5


def test_aac_m4a_matches_reference(model, tmp_path):
    if not HAS_FFMPEG:
        _skip("the reference reads AAC through audioread, which needs the ffmpeg program (apt-get install ffmpeg)")
    rate = 44100
    path = tmp_path / "tone.m4a"
    samples = _tone(rate, seconds=1.5)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    audios, _, _ = reference({"type": "audio", "audio": str(path)})
    ours, ref = load_audio(str(path), 0, model.config.max_audio_seconds), audios[0]
    n = min(ours.shape[0], ref.shape[0])
    diff = _max_diff(ours[:n], ref[:n])
    print(f"m4a (AAC 44.1 kHz): ours {ours.shape[0]}, reference {ref.shape[0]} samples, max abs diff {diff:.3g}")
    assert abs(ours.shape[0] - ref.shape[0]) <= 0.01 * ref.shape[0]
    assert diff <= 0.05  # lossy decode + two different resamplers: close, not identical


# ---------------------------------------------------------------------------------------------------------- video
def _write_mp4(path, n: int, fps: int, size: int = 56) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            frame = np.zeros((size, size, 3), np.uint8)
            frame[:] = (i * 6 % 256, 255 - i * 6 % 256, i * 37 % 256)
            frame[(i % 7) * 8 : (i % 7) * 8 + 8] = 255  # a bar that moves every frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize(("frames", "fps", "max_frames"), [(40, 10, 4), (40, 10, 32), (75, 25, 32), (130, 10, 8)])
def test_mp4_frames_match_reference(model, tmp_path, frames, fps, max_frames):
    if not HAS_DECORD:
        _skip("the reference reads video files with decord (torchvision 0.29 has no read_video); not installed")
    path = tmp_path / "clip.mp4"
    _write_mp4(path, frames, fps)
    config = model.config
    saved = config.max_frames
    config.max_frames = max_frames
    try:
        ours = load_video(str(path), 0, config)
    finally:
        config.max_frames = saved
    element = {"type": "video", "video": str(path), "fps": config.fps, "max_frames": max_frames}
    element.update(resized_height=56, resized_width=56)  # the frames' own size: compare decoding, not resizing
    _, _, videos = reference(element)
    ref = videos[0].numpy()  # (T, C, H, W) float
    assert ours.shape[0] == ref.shape[0]
    diff = _max_diff(ours.transpose(0, 3, 1, 2), ref)
    print(f"mp4 {frames} frames @ {fps} fps, max_frames {max_frames}: {ours.shape[0]} frames, max abs diff {diff}")
    assert diff == 0
    if max_frames <= model.config.max_frames:
        emb_ours = model.encode_document([{"video": str(path)}])
        emb_ref = model.encode_document([{"video": ref.transpose(0, 2, 3, 1).astype(np.uint8)}])
        assert float((emb_ours - emb_ref).abs().max()) <= 1e-5
