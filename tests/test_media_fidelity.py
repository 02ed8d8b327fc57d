"""Media decoding fidelity and budgets (media_e5omni): whole-clip video sampling, image colour handling, PCM scaling,
streamed WAVs, in-memory image allow-list, and typed refusals of hostile sizes, rates and magnitudes.

Every case runs under a few-second alarm (nothing may hang), starts no external program and stays small in memory.
"""

from __future__ import annotations

import copy
import io
import signal
import struct
import subprocess

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from modeling_e5omni import E5OmniInputError, MediaDecodeError, MediaTooLargeError
from modeling_e5omni.media_e5omni import (
    load_audio,
    load_image,
    load_video,
    video_frame_count,
    video_frame_indices,
)
from tests.conftest import tiny


@pytest.fixture(autouse=True)
def alarm():
    """Fail (rather than hang) any case that runs past 20 s."""

    def _timeout(signum, frame):
        raise TimeoutError("media case ran past its 20 s alarm")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def no_subprocess(monkeypatch):
    """Decoding media must never start a program (Ghostscript for EPS, ffmpeg, ...)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"media decoding started a program: {args[:1]}")

    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)


@pytest.fixture
def config():
    return copy.deepcopy(tiny("qwen2.5-omni").config)


# --------------------------------------------------------------------------------------------------- video files
def _code_frame(i: int, size: int = 32) -> np.ndarray:
    """A frame whose left half encodes i // 16 and right half i % 16 in grey levels robust to compression."""
    frame = np.empty((size, size, 3), np.uint8)
    frame[:, : size // 2] = 8 + (i // 16) * 6
    frame[:, size // 2 :] = 8 + (i % 16) * 15
    return frame


def _decode_code(frame: np.ndarray) -> int:
    size = frame.shape[1]
    left = float(frame[4:-4, 4 : size // 2 - 4].mean())
    right = float(frame[4:-4, size // 2 + 4 : -4].mean())
    return int(round((left - 8) / 6)) * 16 + int(round((right - 8) / 15))


def write_video(path, n: int, fps: int = 10, size: int = 32, fmt: str | None = None, gop: int = 12) -> None:
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.qmax = 2
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_code_frame(i, size), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_frame_count_rule_matches_reference_numbers():
    # smart_nframes(fps=2, max_frames=32): total / video_fps * 2, clamped to [4, 32] and total, floored to even
    assert video_frame_count(600, 10.0, 2.0, 32) == 32  # 60 s: capped
    assert video_frame_count(30, 10.0, 2.0, 32) == 6  # 3 s at 2 fps
    assert video_frame_count(12, 4.0, 2.0, 4) == 4
    assert video_frame_count(50, 25.0, 2.0, 32) == 4  # 2 s -> 4 frames, the minimum
    assert video_frame_count(7, 25.0, 2.0, 32) == 4
    assert video_frame_count(3, 25.0, 2.0, 32) == 2  # fewer frames than the minimum: floor to even
    assert video_frame_count(1, 25.0, 2.0, 32) == 1  # the reference raises; we keep the one frame
    assert video_frame_count(90, 10.0, 2.0, 7) == 6  # max_frames floored to even
    assert video_frame_indices(600, 4) == [0, 200, 399, 599]


def test_long_video_is_sampled_over_its_whole_duration(config, tmp_path):
    """A 60 s clip with a 3 s intro: frames come from all of it, not the first seconds."""
    config.max_frames, config.fps = 32, 2.0
    path = tmp_path / "long.mp4"
    write_video(path, 600, fps=10)
    frames = load_video(str(path), 0, config)
    assert frames.shape == (32, 32, 32, 3)
    assert [_decode_code(f) for f in frames] == video_frame_indices(600, 32)
    intro = sum(i < 30 for i in (_decode_code(f) for f in frames))
    assert intro == 2  # frames 0 and 19 of 600: the intro is 2 of 32 samples, as its share of the clip


def test_container_without_frame_count_is_sampled_uniformly(config, tmp_path):
    config.max_frames, config.fps = 8, 2.0
    path = tmp_path / "clip.mkv"
    write_video(path, 100, fps=10, fmt="matroska")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # the header has no count: estimated from the duration
    frames = load_video(str(path), 0, config)
    assert [_decode_code(f) for f in frames] == video_frame_indices(100, 8)


def test_raw_stream_without_timestamps_is_counted_then_sampled(config, tmp_path):
    config.max_frames, config.fps = 4, 2.0
    path = tmp_path / "clip.m4v"
    write_video(path, 40, fps=10, fmt="m4v")
    frames = load_video(str(path), 0, config)
    assert frames.shape[0] == 4 and frames.dtype == np.uint8


def _write_h264(path, size: tuple[int, int], n: int) -> None:
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 90, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_frames_are_checked_after_decoding_not_only_the_header(config, tmp_path):
    """A stream that starts small (the header) and switches to large frames later is refused, with its index."""
    if "libx264" not in av.codecs_available:
        pytest.skip("PyAV built without libx264")
    small, large = tmp_path / "a.h264", tmp_path / "b.h264"
    _write_h264(small, (32, 32), 10)
    _write_h264(large, (320, 240), 10)
    path = tmp_path / "switch.h264"
    path.write_bytes(small.read_bytes() + large.read_bytes())
    with av.open(str(path)) as container:
        assert container.streams.video[0].width == 32  # the header only sees the small frames
    config.max_decode_pixels = 64 * 64
    config.max_frames = 32
    with pytest.raises(MediaTooLargeError, match="item 3: video frame \\(decoded\\) of 320x240") as err:
        load_video(str(path), 3, config)
    assert err.value.index == 3
    config.max_decode_pixels = 40_000_000
    frames = load_video(str(path), 3, config)  # within the cap: one frame size throughout
    assert frames.shape[1:] == (32, 32, 3)


def test_video_header_over_cap_carries_the_item_index(config, tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, 10, size=32)
    config.max_decode_pixels = 100
    with pytest.raises(MediaTooLargeError, match="item 5: video frames of 32x32") as err:
        load_video(str(path), 5, config)
    assert err.value.index == 5


# --------------------------------------------------------------------------------------------------------- images
def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparent_pixels_become_white(config, mode):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (200, 30, 30, 255)  # opaque left half, transparent (black) right half
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    sources = [image] if mode == "PA" else [image, _png(image)]  # PNG cannot store PA
    for source in sources:
        out = load_image_bytes(source, config) if isinstance(source, bytes) else load_image(source, 0, config)
        pixels = np.asarray(out)
        assert out.mode == "RGB"
        assert (pixels[:, 4:] == 255).all()
        assert (pixels[:, :4] != 255).any()


def load_image_bytes(data: bytes, config):
    return load_image(Image.open(io.BytesIO(data)), 0, config)


def test_palette_transparency_and_rgba_arrays_composite_on_white(config):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.paste(1, (0, 0, 4, 8))
    palette.info["transparency"] = 0  # index 0 (black) is transparent
    pixels = np.asarray(load_image(Image.open(io.BytesIO(_png(palette))), 0, config))
    assert (pixels[:, 4:] == 255).all() and (pixels[:, :4] == (10, 200, 10)).all()
    array = np.zeros((8, 8, 4), np.uint8)
    array[..., 3] = 0
    assert (np.asarray(load_image(array, 0, config)) == 255).all()
    half = np.zeros((8, 8, 4), np.uint8)
    half[..., 3] = 128
    assert abs(int(np.asarray(load_image(half, 0, config)).mean()) - 127) <= 1  # alpha blend, not a threshold


def test_16_bit_greyscale_is_scaled_not_clipped(config, tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    out = np.asarray(load_image(str(path), 0, config))
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert (out[..., 0] == expected).all() and (out[..., 1] == expected).all()
    assert (out == 255).mean() < 0.01  # convert("RGB") made 99% of these pixels white
    tiff = tmp_path / "grey16.tif"
    Image.fromarray(ramp).save(tiff)
    assert (np.asarray(load_image(str(tiff), 0, config))[..., 0] == expected).all()


def test_mpo_camera_files_are_accepted_as_their_first_picture(config, tmp_path):
    first = Image.new("RGB", (16, 16), (250, 10, 10))
    second = Image.new("RGB", (16, 16), (10, 10, 250))
    path = tmp_path / "camera.mpo"
    first.save(path, "MPO", save_all=True, append_images=[second], quality=95)
    with Image.open(path) as probe:
        assert probe.format == "MPO"
    out = np.asarray(load_image(str(path), 0, config)).astype(int)
    assert abs(out[..., 0].mean() - 250) < 6 and out[..., 2].mean() < 20
    config.image_formats = ["PNG", "JPEG"]  # a config saved before MPO was listed: JPEG admits it
    load_image(str(path), 0, config)
    config.image_formats = ["PNG"]
    with pytest.raises(MediaDecodeError, match="image format MPO is not allowed"):
        load_image(str(path), 0, config)


# ------------------------------------------------------------------------------------------ in-memory images (7)
_EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 16 16
newpath 0 0 moveto 16 0 lineto 16 16 lineto closepath fill
showpage
"""


def test_lazily_opened_eps_is_refused_before_ghostscript_runs(config, tmp_path):
    from PIL import EpsImagePlugin

    calls = []
    original = EpsImagePlugin.EpsImageFile.load
    EpsImagePlugin.EpsImageFile.load = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    try:
        path = tmp_path / "figure.eps"
        path.write_bytes(_EPS)
        lazy = Image.open(path)
        assert lazy.format == "EPS"
        with pytest.raises(MediaDecodeError, match="item 2: image format EPS is not allowed"):
            load_image(lazy, 2, config)
        with pytest.raises(MediaDecodeError, match="image format EPS is not allowed"):
            load_image(str(path), 2, config)
        assert calls == []  # load() (which runs gs) was never reached
    finally:
        EpsImagePlugin.EpsImageFile.load = original


def test_pil_inputs_pass_the_same_allow_list_and_pixel_cap(config, tmp_path):
    path = tmp_path / "image.ppm"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(MediaDecodeError, match="image format PPM is not allowed"):
        load_image(Image.open(path), 0, config)
    big = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(big)
    config.max_decode_pixels = 200 * 200
    lazy = Image.open(big)
    with pytest.raises(MediaTooLargeError, match="image of 300x300"):
        load_image(lazy, 0, config)

    class Disguised(Image.Image):  # a plugin class whose instance format was cleared
        format = "EPS"

    fake = Disguised()
    fake.format = None
    with pytest.raises(MediaDecodeError, match="image format EPS is not allowed"):
        load_image(fake, 0, config)
    load_image(Image.new("RGB", (4, 4)), 0, config)  # images made in memory have no format: taken as they are


def test_lazily_opened_truncated_png_is_a_typed_error(config):
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)))
    with pytest.raises(MediaDecodeError, match="truncated or corrupt"):
        load_image(Image.open(io.BytesIO(data[: len(data) // 2])), 0, config)


# --------------------------------------------------------------------------------------------------------- audio
def _tone(n: int = 1600) -> np.ndarray:
    return (0.5 * np.sin(np.arange(n) / 7)).astype(np.float32)


@pytest.mark.parametrize("layout", ["samples_channels", "channels_samples"])
def test_stereo_int16_is_scaled_before_mixdown(layout):
    tone = _tone()
    pcm = np.round(tone * 32767).astype(np.int16)
    stereo = np.stack([pcm, pcm], axis=1 if layout == "samples_channels" else 0)
    out = load_audio({"array": stereo, "sampling_rate": 16000}, 0, 30.0)
    assert np.abs(out - tone).max() < 1e-4
    assert np.abs(load_audio({"array": torch.from_numpy(stereo), "sampling_rate": 16000}, 0, 30.0) - out).max() == 0


def test_int_pcm_matches_the_same_samples_read_from_a_wav(tmp_path):
    tone = _tone()
    pcm = np.round(tone * 32767).astype(np.int16)
    path = tmp_path / "tone.wav"
    sf.write(path, pcm, 16000, subtype="PCM_16")
    assert np.abs(load_audio(str(path), 0, 30.0) - load_audio(pcm, 0, 30.0)).max() == 0  # both /32768


def test_uint8_pcm_is_offset_binary():
    raw = np.array([0, 64, 128, 192, 255], np.uint8)
    out = load_audio({"array": raw, "sampling_rate": 16000}, 0, 30.0)
    assert np.allclose(out, (raw.astype(np.float64) - 128) / 128)
    assert load_audio(np.full(100, 128, np.uint8), 0, 30.0).max() == 0  # silence is silent


def _streamed(data: bytes) -> bytes:
    """The WAV as ffmpeg writes it to a pipe: RIFF and data sizes unknown (0xFFFFFFFF)."""
    wav = bytearray(data)
    wav[4:8] = b"\xff\xff\xff\xff"
    at = wav.index(b"data")
    wav[at + 4 : at + 8] = b"\xff\xff\xff\xff"
    return bytes(wav)


def test_streamed_wav_reads_and_truncated_wav_is_still_refused(tmp_path):
    tone = _tone(8000)
    buffer = io.BytesIO()
    sf.write(buffer, tone, 16000, format="WAV", subtype="PCM_16")
    path = tmp_path / "streamed.wav"
    path.write_bytes(_streamed(buffer.getvalue()))
    assert struct.unpack("<I", path.read_bytes()[4:8])[0] == 0xFFFFFFFF
    out = load_audio(str(path), 0, 30.0)
    assert out.shape == (8000,) and np.abs(out - tone).max() < 1e-4
    cut = tmp_path / "cut.wav"
    cut.write_bytes(buffer.getvalue()[:5000])
    with pytest.raises(MediaDecodeError, match="truncated"):
        load_audio(str(cut), 0, 30.0)
    streamed_cut = tmp_path / "streamed_cut.wav"  # a stream has no declared length: what is there is read
    streamed_cut.write_bytes(_streamed(buffer.getvalue())[:5000])
    assert load_audio(str(streamed_cut), 0, 30.0).shape[0] == (5000 - 44) // 2


@pytest.mark.parametrize(
    "rate", [float("inf"), float("-inf"), float("nan"), 1e12, 1e15, 0, -16000, 999, 10_000_000, True, "16000", None]
)
def test_absurd_sampling_rates_are_typed_errors(rate):
    with pytest.raises(E5OmniInputError, match="item 4: audio sampling_rate must"):
        load_audio({"array": _tone(), "sampling_rate": rate}, 4, 30.0)


def test_sane_sampling_rates_still_resample():
    for rate in (1000, 8000, 22050.0, 44100, np.int64(48000), 384_000, 768_000):
        out = load_audio({"array": _tone(4000), "sampling_rate": rate}, 0, 30.0)
        assert out.dtype == np.float32 and np.isfinite(out).all() and out.size == round(4000 * 16000 / float(rate))
    with pytest.raises(E5OmniInputError, match="too short"):
        load_audio({"array": np.zeros(1, np.float32), "sampling_rate": 768_000}, 0, 30.0)


@pytest.mark.parametrize("value", [1e19, -1e7, np.inf, np.nan, np.finfo(np.float64).max])
def test_non_finite_or_absurd_float_audio_is_refused(value):
    array = _tone().astype(np.float64)
    array[10] = value
    with pytest.raises(E5OmniInputError, match="item 1: (float audio must lie in|audio contains NaN)"):
        load_audio({"array": array, "sampling_rate": 16000}, 1, 30.0)


def test_float_audio_within_bounds_is_taken_as_given():
    loud = _tone() * 32767  # unscaled 16-bit PCM as floats: accepted, embedded as given (as before)
    assert np.array_equal(load_audio(loud, 0, 30.0), loud.astype(np.float32))


def test_hostile_audio_embeds_finitely_or_is_refused(omni_model_config_free=None):
    model = tiny("qwen2.5-omni")
    ok = [{"audio": {"array": np.full((2, 800), 32767, np.int16), "sampling_rate": 8000}}, {"audio": _tone() * 60000}]
    assert torch.isfinite(model.encode_document(ok)).all()
    with pytest.raises(E5OmniInputError, match="item 1"):
        model.encode_document([{"audio": _tone()}, {"audio": {"array": _tone() * 1e19, "sampling_rate": 16000}}])


@pytest.mark.parametrize("backbone", ["qwen2.5-omni", "qwen2-vl"])
def test_images_are_resized_right_after_decoding(tmp_path, backbone):
    """`E5OmniProcessor.decode` resizes a decoded image to the size the backbone's image processor would give it,
    with its resize, so a large photo's pixels are held once (a 36 MP PNG at the card's budgets: peak RSS 620 ->
    261 MB, measured): the processor's tensors and the embeddings are exactly those of the full-size image."""
    from modeling_e5omni.media_e5omni import normalize_item

    model = tiny(backbone)
    proc = model.processor
    rng = np.random.default_rng(0)
    for name, mode in (("big.png", "RGB"), ("alpha.png", "RGBA"), ("grey.png", "L")):
        pixels = rng.integers(0, 256, (300, 420, {"RGB": 3, "RGBA": 4, "L": 1}[mode]), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(tmp_path / name)
        item = {"image": str(tmp_path / name), "text": "a caption"}
        full = normalize_item(item, 0, proc.config)  # the decoded image, at its own size
        small = proc.decode(item, 0)
        height, width = proc.image_size(300, 420)
        assert full.image.size == (420, 300) and small.image.size == (width, height), name
        assert height * width < 300 * 420 // 4  # the budget really shrinks it
        a, b = dict(proc.process_decoded([full], "document")), dict(proc.process_decoded([small], "document"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        with torch.inference_mode():
            assert torch.equal(model(**a).embeddings, model(**b).embeddings), name
        assert torch.equal(model.encode_document([item]), model(**b).embeddings), name
    # a PIL-backend image processor resizes with PIL: nothing is resized ahead of it
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pil = copy.copy(proc)
    pil.backbone_processor = copy.copy(proc.backbone_processor)
    pil.backbone_processor.image_processor = Qwen2VLImageProcessorPil()
    assert pil.image_size(300, 420) is None and pil.decode({"image": str(tmp_path / "big.png")}, 0).image.size == (
        420,
        300,
    )
