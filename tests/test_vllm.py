"""`e5omni export --format vllm`: the folder's layout (fast), and real vLLM's vectors against ours (slow).

The slow tests need vLLM's CPU virtualenv (`bash scripts/vllm_venv.sh`, 3-5 min, 3.5 GB; path in E5OMNI_VLLM_VENV,
default .vllm-venv/ at the repository root) and are skipped with that reason where it is absent. They export a tiny
model with head_dim 32 (vLLM's CPU attention has no kernel for the default tiny model's 16) and compare in float32:
offline `LLM.embed` (run by the venv's python in a subprocess) and the OpenAI server's `/v1/embeddings` with chat
`messages` (started here on 127.0.0.1, stopped after).
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from e5omni.cli import main as cli_main
from e5omni.export import ExportError, export_vllm, vllm_weight_name
from e5omni.export.to_vllm import LAYOUTS
from e5omni.tiny import build_tiny, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("E5OMNI_VLLM_VENV", ROOT / ".vllm-venv"))
VLLM_PYTHON = VENV / "bin" / "python"
WORKER = ROOT / "e5omni" / "export" / "vllm_embed.py"
TOLERANCE = 1e-5  # float32 on both sides; measured 1e-7 .. 3e-7
needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON.exists(), reason=f"no vLLM virtualenv at {VENV}: run `bash scripts/vllm_venv.sh` to build it"
)

BACKBONES = {"qwen2.5-omni": "qwen2_5_omni_thinker", "qwen2-vl": "qwen2_vl", "qwen2.5-vl": "qwen2_5_vl"}


def _tiny(backbone: str, **kwargs):
    model, processor = build_tiny_model(backbone, seed=0, head_dim=32, **kwargs)
    model.set_processor(processor)
    return model, processor


# ------------------------------------------------------------------------------------------------------ fast
def test_tiny_head_dim_option_sets_heads_and_mrope():
    model, _ = build_tiny_model("qwen2.5-omni", seed=0, head_dim=32)
    text = model.config.backbone_config.text_config
    assert text.hidden_size // text.num_attention_heads == 32
    assert sum(text.rope_parameters["mrope_section"]) == 16
    default, _ = build_tiny_model("qwen2.5-omni", seed=0)
    assert default.config.backbone_config.text_config.num_attention_heads == 4  # the default is unchanged (16)
    with pytest.raises(ValueError, match="head_dim must be one of"):
        build_tiny_model("qwen2.5-omni", seed=0, head_dim=24)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_export_writes_vllm_layout(tmp_path, backbone):
    model, processor = _tiny(backbone)
    out = export_vllm(model, processor, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    backbone_type = BACKBONES[backbone]
    if backbone == "qwen2.5-omni":
        assert config["model_type"] == "qwen2_5_omni" and config["architectures"] == ["Qwen2_5OmniModel"]
        assert config["enable_audio_output"] is False
        assert config["thinker_config"]["architectures"] == ["Qwen2_5OmniThinkerForConditionalGeneration"]
        assert config["thinker_config"]["model_type"] == "qwen2_5_omni_thinker"
    else:
        assert config["model_type"] == backbone_type and config["architectures"] == [LAYOUTS[backbone_type][1]]
    weights = load_file(str(out / "model.safetensors"))
    ours = model.backbone.state_dict()
    assert len(weights) == len(ours)
    for name, tensor in ours.items():
        assert torch.equal(weights[vllm_weight_name(name, backbone_type)], tensor)
    assert not any(name.startswith(("alignment.", "backbone.")) for name in weights)
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"] for m in modules][1:] == [
        "sentence_transformers.models.Pooling",
        "sentence_transformers.models.Normalize",
    ]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "lasttoken"
    assert json.loads((out / "config_sentence_transformers.json").read_text())["prompts"] == {"query": "Query: "}
    processor_config = json.loads((out / "processor_config.json").read_text())
    size = {"shortest_edge": model.config.min_pixels, "longest_edge": model.config.max_pixels}
    assert processor_config["image_processor"]["size"] == size
    assert processor_config["video_processor"]["fps"] == model.config.fps
    export = json.loads((out / "e5omni_export.json").read_text())
    assert export["mm_processor_kwargs"]["videos_kwargs"]["size"]["longest_edge"] == model.config.video_max_pixels
    readme = (out / "README.md").read_text()
    assert "--chat-template" in readme and "--mm-processor-kwargs" in readme and "--dtype float32" in readme


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_chat_template_renders_what_our_processor_renders(tmp_path, backbone):
    """The export's template, given chat messages as a client sends them (query prompt as a system message), renders
    the string E5OmniProcessor renders (the eos suffix included)."""
    model, processor = _tiny(backbone)
    out = export_vllm(model, processor, tmp_path / "export")
    template = (out / "embedding_chat_template.jinja").read_text()
    tokenizer = processor.tokenizer
    image = Image.new("RGB", (56, 56))
    video = np.zeros((4, 56, 56, 3), dtype=np.uint8)
    cases = [
        ("document", "a red circle", [{"type": "text", "text": "a red circle"}]),
        ("query", "red circle", [{"type": "text", "text": "red circle"}]),
        ("document", {"image": image}, [{"type": "image_url", "image_url": {"url": "x"}}]),
        ("query", {"image": image}, [{"type": "image"}]),
        # parts in any order: media go first, then the text, as e5-omni renders them
        (
            "query",
            {"image": image, "video": video, "text": "t"},
            [{"type": "text", "text": "t"}, {"type": "video"}, {"type": "image"}],
        ),
    ]
    if backbone == "qwen2.5-omni":
        audio = np.zeros(1600, dtype=np.float32)
        cases.append(
            (
                "document",
                {"audio": audio, "text": "a tone"},
                [{"type": "input_audio"}, {"type": "text", "text": "a tone"}],
            )
        )
    for role, item, parts in cases:
        messages = [{"role": "user", "content": parts}]
        if role == "query":
            messages.insert(0, {"role": "system", "content": model.config.query_prompt})
        rendered = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
        expected = processor.render(processor.decode(item, 0), role)
        assert rendered == expected, (role, item if isinstance(item, str) else sorted(item))
        assert rendered.endswith(model.config.eos_suffix)
    # a plain string content renders like a text part
    plain = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a red circle"}], chat_template=template, tokenize=False
    )
    assert plain == processor.render(processor.decode("a red circle", 0), "document")


def test_chat_template_drops_the_audio_part_of_a_sounded_video_when_asked(tmp_path):
    """With `use_audio_in_video` in the request's chat_template_kwargs, the audio part sent for a video's own track
    gets no placeholder of its own (vLLM interleaves it inside the video's), so the prompt is the one E5OmniProcessor
    renders for a video with sound; without the flag an audio part stays a separate audio."""
    model, processor = _tiny("qwen2.5-omni")
    out = export_vllm(model, processor, tmp_path / "export")
    template = (out / "embedding_chat_template.jinja").read_text()
    parts = [{"type": "video_url", "video_url": {"url": "x"}}, {"type": "audio_url", "audio_url": {"url": "x"}}]
    messages = [{"role": "user", "content": parts}]
    sounded = processor.tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, use_audio_in_video=True
    )
    video_only = processor.render(processor.decode({"video": np.zeros((4, 56, 56, 3), np.uint8)}, 0), "document")
    assert sounded == video_only and "<|AUDIO|>" not in sounded
    plain = processor.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert plain.count("<|AUDIO|>") == 1 and plain.count("<|VIDEO|>") == 1


def test_export_refuses_whitening(tmp_path):
    model, processor = _tiny("qwen2.5-omni", whitening=True)
    with pytest.raises(ExportError, match="whitening"):
        export_vllm(model, processor, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_export_refuses_non_empty_folder_and_bad_dtype(tmp_path):
    model, processor = _tiny("qwen2-vl")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_vllm(model, processor, tmp_path / "export")
    assert (tmp_path / "export" / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="dtype must be one of"):
        export_vllm(model, processor, tmp_path / "other", dtype="int8")


def test_weight_name_refuses_unknown_prefix():
    with pytest.raises(ExportError, match="lm_head.weight"):
        vllm_weight_name("lm_head.weight", "qwen2_vl")
    with pytest.raises(ExportError, match="no vLLM layout"):
        vllm_weight_name("language_model.x", "llava")


def test_cli_export(tmp_path, capsys):
    folder = build_tiny(tmp_path / "model", backbone="qwen2.5-vl", seed=0, head_dim=32)
    assert cli_main(["export", str(folder), str(tmp_path / "out"), "--format", "vllm", "--dtype", "bfloat16"]) == 0
    assert "README.md" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(tmp_path / "out" / "model.safetensors")).values())
    assert cli_main(["export", str(folder), str(tmp_path / "out")]) == 2  # not empty, no --overwrite
    assert "not empty" in capsys.readouterr().err
    white = build_tiny(tmp_path / "white", seed=0, whitening=True)
    assert cli_main(["export", str(white), str(tmp_path / "out2")]) == 2
    assert "whitening" in capsys.readouterr().err


def test_cli_push_vllm_dry_run_stages_the_export_for_its_own_repo(tmp_path, capsys):
    """`e5omni push --vllm --dry-run DIR`: the model commit in DIR/model, the export's commit in DIR/vllm (repo
    REPO-vllm): its weights are the export's, e5omni_export.json names the model repo, the README downloads the repo
    and serves it, and no path of this machine is in any staged file."""
    folder = build_tiny(tmp_path / "model", backbone="qwen2-vl", seed=0, head_dim=32)
    dry = tmp_path / "dry"
    assert cli_main(["push", str(folder), "--repo-id", "me/tiny", "--vllm", "--dry-run", str(dry)]) == 0
    out = capsys.readouterr().out
    assert "create_commit(repo_id='me/tiny'" in out and "create_commit(repo_id='me/tiny-vllm'" in out
    assert (dry / "model" / "config.json").is_file() and (dry / "model" / "manifest.json").is_file()
    staged = dry / "vllm"
    names = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert {"config.json", "model.safetensors", "embedding_chat_template.jinja", "modules.json", "README.md"} <= set(
        names
    ) and "manifest.json" in names
    assert not any(name.endswith(".py") for name in names)
    export = json.loads((staged / "e5omni_export.json").read_text())
    assert export["format"] == "vllm" and export["source_repo"] == "me/tiny" and "source_revision" not in export
    readme = (staged / "README.md").read_text()
    assert "huggingface-cli download me/tiny-vllm" in readme and "https://huggingface.co/me/tiny" in readme
    assert "--chat-template exported/embedding_chat_template.jinja" in readme
    for name in names:
        if not name.endswith(".safetensors"):
            assert str(tmp_path) not in (staged / name).read_text(), name
    manifest = json.loads((staged / "manifest.json").read_text())
    assert {entry["path"] for entry in manifest["files"]} == set(names) - {"manifest.json"}
    model, processor = _tiny("qwen2-vl")
    ours = export_vllm(model, processor, tmp_path / "direct")
    assert load_file(str(staged / "model.safetensors")).keys() == load_file(str(ours / "model.safetensors")).keys()


def test_cli_push_vllm_refusals_send_nothing(tmp_path, capsys):
    white = build_tiny(tmp_path / "white", seed=0, whitening=True)
    dry = tmp_path / "dry"
    assert cli_main(["push", str(white), "--repo-id", "me/white", "--vllm", "--dry-run", str(dry)]) == 2
    assert "--vllm" in capsys.readouterr().err and not dry.exists()  # refused before the model was staged
    assert cli_main(["push", str(white), "--repo-id", "me/white", "--vllm-repo-id", "me/x", "--dry-run", str(dry)]) == 2
    assert "--vllm-repo-id needs --vllm" in capsys.readouterr().err


def test_stage_vllm_export_refuses_pickles_code_and_other_folders(tmp_path):
    from e5omni.publish.errors import DisallowedFileError, IncompleteFolderError, PickleFileError
    from e5omni.publish.push import stage_vllm_export

    model, processor = _tiny("qwen2-vl")
    out = export_vllm(model, processor, tmp_path / "export")
    (out / "training_args.bin").write_bytes(b"\x80\x04")
    with pytest.raises(PickleFileError, match="training_args.bin"):
        stage_vllm_export(out, repo_id="me/x-vllm")
    (out / "training_args.bin").unlink()
    (out / "loader.py").write_text("import os\n")
    with pytest.raises(DisallowedFileError, match="loader.py"):
        stage_vllm_export(out, repo_id="me/x-vllm")
    with pytest.raises(IncompleteFolderError, match="e5omni_export.json"):
        stage_vllm_export(tmp_path, repo_id="me/x-vllm")


def test_push_vllm_export_is_one_commit_pointing_at_the_model_commit(tmp_path):
    from e5omni.publish.push import push_vllm_export
    from tests.helpers import FakeHfApi

    model, processor = _tiny("qwen2-vl")
    out = export_vllm(model, processor, tmp_path / "export")
    api = FakeHfApi()
    result = push_vllm_export(
        out, "me/tiny-vllm", model_repo_id="me/tiny", model_revision="a" * 40, api=api, verbose=False
    )
    commits = [kwargs for name, kwargs in api.calls if name == "create_commit"]
    assert len(commits) == 1 and result.commit_oid
    files = api.commit_files("me/tiny-vllm")
    assert json.loads(files["e5omni_export.json"])["source_revision"] == "a" * 40
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert "me/tiny" in files["README.md"].decode() and str(out) not in files["README.md"].decode()


# ------------------------------------------------------------------------------------------------------ slow
def _items(backbone: str) -> list[tuple[str, object]]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    video = rng.integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)
    items = [
        ("document", "a red circle in the top left corner"),
        ("query", "red circle"),
        ("document", {"image": image}),
        ("query", {"image": image, "text": "a picture"}),
        ("document", {"video": video}),
        ("query", {"video": video, "text": "moving"}),
    ]
    if backbone == "qwen2.5-omni":
        audio = (0.1 * np.sin(np.linspace(0, 2000, 16000))).astype(np.float32)
        items += [("document", {"audio": audio}), ("query", {"audio": audio, "image": image, "text": "mixed"})]
    return items


def _job(model, processor, items, folder: Path) -> list[dict]:
    """Each item decoded by our processor (the media vLLM gets are the media we embed) as a worker job entry."""
    job = []
    for i, (role, item) in enumerate(items):
        decoded = processor.decode(item, i)
        entry: dict = {"text": decoded.text}
        prompt = model.config.query_prompt if role == "query" else model.config.document_prompt
        if prompt:
            entry["prompt"] = prompt
        if decoded.image is not None:
            decoded.image.save(folder / f"image{i}.png")
            entry["image"] = str(folder / f"image{i}.png")
        if decoded.audio is not None:
            np.save(folder / f"audio{i}.npy", decoded.audio)
            entry["audio"] = str(folder / f"audio{i}.npy")
        if decoded.video is not None:
            np.save(folder / f"video{i}.npy", np.asarray(decoded.video))
            entry["video"] = str(folder / f"video{i}.npy")
        job.append(entry)
    return job


def _ours(model, items) -> np.ndarray:
    return np.stack([model.encode([item], role=role)[0].numpy() for role, item in items])


def _vllm_env() -> dict:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


@pytest.mark.slow
@needs_vllm
@pytest.mark.parametrize(
    "backbone",
    [
        "qwen2.5-omni",
        "qwen2-vl",
        pytest.param(
            "qwen2.5-vl",
            marks=pytest.mark.xfail(
                reason="Qwen2.5-VL video differs (2.2e-2; text and image items 1.5e-7) by two inputs, each measured: "
                "(1) second_per_grid_ts: ours 0.083 (transformers 5's Qwen2.5-VL processor reads the fps of the "
                "videos' metadata, which E5OmniProcessor does not pass: VideoMetadata's default 24 fps, so 2 / 24), "
                "vLLM 1.0 (2 / the 2 fps it is given); (2) the position of the text after a video: transformers 5 "
                "continues at start + max(h, w) / merge, vLLM (the transformers 4 rule) at max(all positions) + 1. "
                "With both made vLLM's, ours equals vLLM to 1.9e-7 (docs/serving.md)",
                strict=True,
            ),
        ),
    ],
)
def test_vllm_offline_embed_equals_ours(tmp_path, backbone):
    """Text, a query, an image, an image query, a video (frames), a video query, and for Omni audio and a mixed
    audio + image + text query: vLLM's `LLM.embed` on the export equals `encode` to 1e-5 in float32."""
    model, processor = _tiny(backbone)
    out = export_vllm(model, processor, tmp_path / "export")
    items = _items(backbone)
    job = {"model": str(out), "dtype": "float32", "items": _job(model, processor, items, tmp_path)}
    (tmp_path / "job.json").write_text(json.dumps(job))
    run = subprocess.run(
        [str(VLLM_PYTHON), str(WORKER), str(tmp_path / "job.json"), str(tmp_path / "vllm.npy")],
        env=_vllm_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    # vLLM CPU 0.32's interpreter teardown sometimes aborts after the worker wrote its results (seen in 2 of 7
    # Qwen2-VL runs here: exit -6, "terminate called without an active exception"; vllm.npy.json is written last)
    aborted_at_exit = (
        run.returncode == -6
        and "terminate called without an active exception" in run.stderr[-2000:]
        and (tmp_path / "vllm.npy.json").is_file()
    )
    assert run.returncode == 0 or aborted_at_exit, run.stderr[-4000:]
    theirs = np.load(tmp_path / "vllm.npy")
    diff = np.abs(theirs - _ours(model, items)).max(axis=1)
    assert (diff < TOLERANCE).all(), {i: float(d) for i, d in enumerate(diff)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _wav_base64(samples: np.ndarray) -> str:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode()


def _jpeg_frames(frames: np.ndarray) -> tuple[str, np.ndarray]:
    """Frames as vLLM's `video/jpeg` data URL (comma-separated base64 JPEGs) and the pixels vLLM will decode from
    it (PIL, as vLLM's image loader), which are what we embed on our side: JPEG is lossy."""
    parts, decoded = [], []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
        parts.append(base64.b64encode(buffer.getvalue()).decode())
        with Image.open(io.BytesIO(buffer.getvalue())) as image:
            decoded.append(np.asarray(image.convert("RGB")))
    return "data:video/jpeg;base64," + ",".join(parts), np.stack(decoded)


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> Path:
    """An H.264 mp4 without sound (so `use_audio_in_video` has no track to use on either side)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _smooth_frames(count: int, height: int, width: int) -> np.ndarray:
    """Blocky moving frames (H.264 keeps them close to exact; random noise would not survive 4:2:0)."""
    base = np.random.default_rng(3).integers(0, 255, (8, 14, 3)).astype(np.uint8)
    frames = [
        np.kron(np.roll(base, i, axis=1), np.ones((height // 8 + 1, width // 14 + 1, 1), np.uint8))
        for i in range(count)
    ]
    return np.stack([f[:height, :width] for f in frames])


def start_vllm_server(out: Path, log_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """vLLM's OpenAI server on a free loopback port with the export's serve flags, its output in `log_path`;
    returns once /health answers 200 (or fails with the log's tail)."""
    export = json.loads((out / "e5omni_export.json").read_text())
    port = _free_port()
    command = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(out), "--host", "127.0.0.1",
        "--port", str(port), "--runner", "pooling", "--convert", "embed", "--dtype", "float32",
        "--chat-template", str(out / export["chat_template"]), "--chat-template-content-format", "openai",
        "--mm-processor-kwargs", json.dumps(export["mm_processor_kwargs"]), "--max-model-len", "4096",
        "--limit-mm-per-prompt", json.dumps({"image": 1, "audio": 1, "video": 1}), *extra,
    ]  # fmt: skip
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, env=_vllm_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            assert server.poll() is None, log_path.read_text()[-4000:]
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as response:
                    if response.status == 200:
                        return server, base
            except OSError:
                pass
            assert time.monotonic() < deadline, "vLLM server did not come up in 600 s: " + log_path.read_text()[-2000:]
            time.sleep(2)
    except BaseException:
        stop_vllm_server(server)
        raise


def stop_vllm_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, 15)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)
        server.wait()


@pytest.mark.slow
@needs_vllm
def test_vllm_server_embeddings_with_chat_messages_equal_ours(tmp_path):
    """The OpenAI server started with the export's serve flags: `/v1/embeddings` with chat `messages` equals `encode`
    of the same media to 1e-5: text, a query (prompt as a system message), an `image_url` data URL, an
    `input_audio` WAV, video frames as a `video/jpeg` data URL (document and query), a `video_url` mp4 (data URL;
    4 frames at the model's 2 fps, which vLLM's Qwen2-VL loader and e5-omni's sampling both take whole), and a
    mixed audio + image + text query. The server's log is kept in the test folder and shown on a failure."""
    model, processor = _tiny("qwen2.5-omni")
    out = export_vllm(model, processor, tmp_path / "export")
    log_path = tmp_path / "server.log"
    server, base = start_vllm_server(out, log_path)
    try:
        rng = np.random.default_rng(1)
        image = processor.decode({"image": Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))}, 0).image
        audio = (0.1 * np.sin(np.linspace(0, 3000, 16000))).astype(np.float32)
        frames = _smooth_frames(4, 56, 84)
        jpeg_url, jpeg_frames = _jpeg_frames(frames)
        mp4 = _write_mp4(tmp_path / "clip.mp4", frames, fps=int(model.config.fps))
        mp4_url = "data:video/mp4;base64," + base64.b64encode(mp4.read_bytes()).decode()
        query = {"role": "system", "content": model.config.query_prompt}
        image_part = {"type": "image_url", "image_url": {"url": _data_url(image)}}
        audio_part = {"type": "input_audio", "input_audio": {"data": _wav_base64(audio), "format": "wav"}}

        def user(*parts):
            return {"role": "user", "content": list(parts)}

        cases = [
            ("document", "a red circle", [user({"type": "text", "text": "a red circle"})]),
            ("query", "red circle", [query, {"role": "user", "content": "red circle"}]),
            ("document", {"image": image}, [user(image_part)]),
            ("document", {"audio": audio}, [user(audio_part)]),
            ("document", {"video": jpeg_frames}, [user({"type": "video_url", "video_url": {"url": jpeg_url}})]),
            ("query", {"video": jpeg_frames, "text": "moving"},
             [query, user({"type": "text", "text": "moving"}, {"type": "video_url", "video_url": {"url": jpeg_url}})]),
            ("document", {"video": str(mp4)}, [user({"type": "video_url", "video_url": {"url": mp4_url}})]),
            ("query", {"image": image, "audio": audio, "text": "both"},
             [query, user({"type": "text", "text": "both"}, audio_part, image_part)]),
        ]  # fmt: skip
        failures = {}
        for number, (role, item, messages) in enumerate(cases):
            body = {"model": str(out), "messages": messages, "encoding_format": "float"}
            try:
                theirs = np.asarray(_post(base + "/v1/embeddings", body)["data"][0]["embedding"], dtype=np.float32)
            except urllib.error.HTTPError as error:
                failures[number] = f"HTTP {error.code}: {error.read()[:300]!r}"
                continue
            ours = model.encode([item], role=role)[0].numpy()
            diff = float(np.abs(theirs - ours).max())
            if not diff < TOLERANCE:
                failures[number] = f"max |diff| {diff:.3g}"
        assert not failures, (failures, log_path.read_text()[-3000:])
    finally:
        stop_vllm_server(server)


def test_worker_script_imports_nothing_of_ours():
    """The worker runs under vLLM's python, where e5omni is not installed: it must stay self-contained."""
    source = WORKER.read_text()
    assert "e5omni" not in source.split('"""', 2)[2].replace("e5omni_export.json", "")
    assert sys.executable  # the test runs under the project's python; the worker never does


def test_export_lists_the_matryoshka_dimensions_vllm_accepts(tmp_path):
    """A model trained with --matryoshka_dims: config.json carries is_matryoshka / matryoshka_dimensions at its top
    level (where vLLM reads them to accept `dimensions`); a model without them carries neither."""
    model, processor = _tiny("qwen2.5-omni")
    plain = json.loads((export_vllm(model, processor, tmp_path / "plain") / "config.json").read_text())
    assert "is_matryoshka" not in plain and "matryoshka_dimensions" not in plain
    model.config.matryoshka_dimensions = [model.config.hidden_size, 32, 16]
    config = json.loads((export_vllm(model, processor, tmp_path / "mrl") / "config.json").read_text())
    assert config["is_matryoshka"] is True and config["matryoshka_dimensions"] == model.config.matryoshka_dimensions
