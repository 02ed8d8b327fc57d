"""Qwen3-VL and the Qwen3-Omni thinker as e5-omni backbone kinds: both entry paths (AutoModel remote code from a
saved folder, SentenceTransformer(folder, trust_remote_code=True)) equal the independent reference path
(`qwen3_reference_embed`: chat template + eos, the last attended token, L2 norm) on every modality, batch-invariant;
errors name the item; text is literal (the text-security cases run on these kinds too)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from e5omni.release import save_hub_folder
from e5omni.tiny import ALL_BACKBONES, BACKBONE_MODEL_TYPES, QWEN3_BACKBONES, build_tiny_backbone
from tests.conftest import make_audio, tiny
from tests.reference import probe_items, qwen3_reference_embed


def _reference_backbone(model, kind: str):
    """The bare transformers backbone of `kind` holding exactly the e5-omni model's backbone weights."""
    backbone, processor = build_tiny_backbone(kind, seed=0)
    state = {k[len("backbone.") :]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    backbone.load_state_dict(state, strict=True)
    return backbone.eval(), processor


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {
        kind: save_hub_folder(tiny(kind), tiny(kind).processor, tmp_path_factory.mktemp(kind) / "model")
        for kind in QWEN3_BACKBONES
    }


@pytest.mark.parametrize("kind", QWEN3_BACKBONES)
def test_config_accepts_the_qwen3_model_types(kind):
    model = tiny(kind)
    assert model.config.backbone_config.model_type == BACKBONE_MODEL_TYPES[kind]
    expected = ["text", "image", "audio", "video"] if kind == "qwen3-omni" else ["text", "image", "video"]
    assert model.config.modalities == expected
    assert model.config.use_audio_in_video is (kind == "qwen3-omni")
    assert type(model.backbone).__name__ == {"qwen3-vl": "Qwen3VLModel", "qwen3-omni": "Qwen3OmniMoeThinkerModel"}[kind]


@pytest.mark.parametrize("kind", QWEN3_BACKBONES)
def test_both_entry_paths_equal_the_reference_on_every_modality(folders, kind):
    items = probe_items(kind)
    folder = folders[kind]
    auto = AutoModel.from_pretrained(folder, trust_remote_code=True)
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    backbone, processor = _reference_backbone(auto, kind)
    diffs = {}
    for role, query in (("document", False), ("query", True)):
        reference = qwen3_reference_embed(backbone, processor, kind, items, query=query)
        alone = torch.cat([qwen3_reference_embed(backbone, processor, kind, [item], query=query) for item in items])
        got_auto = getattr(auto, f"encode_{role}")(items, batch_size=16)
        got_st = getattr(st, f"encode_{role}")(items, batch_size=16, convert_to_tensor=True).cpu()
        one_by_one = torch.cat([getattr(auto, f"encode_{role}")([item]) for item in items])
        diffs[role] = {
            "auto": (got_auto - reference).abs().max().item(),
            "st": (got_st - reference).abs().max().item(),
            "auto alone": (one_by_one - reference).abs().max().item(),
            "reference alone": (alone - reference).abs().max().item(),
        }
    print(kind, diffs)
    assert max(v for d in diffs.values() for v in d.values()) < 1e-5, diffs


def test_qwen3_vl_videos_carry_time_stamps_from_the_config_fps():
    """Qwen3-VL's processor stamps each temporal patch with its time from the video metadata; without it it would
    assume 24 fps (and warn). At the tiny config's fps 2, 4 frames -> patches at 0.2 s and 1.2 s."""
    model = tiny("qwen3-vl")
    batch = model.processor([{"video": probe_items("qwen3-vl")[4]["video"]}])
    text = model.processor.tokenizer.decode(batch["input_ids"][0])
    assert "<0.2 seconds>" in text and "<1.2 seconds>" in text, text


def test_qwen3_omni_audio_does_not_depend_on_its_batch():
    """A 1.2 s clip beside a 2 s one: the Omni processor's default pads features to the longest clip (9.8e-05 off
    alone vs batched); e5-omni pads to the extractor's chunk_length."""
    model = tiny("qwen3-omni")
    short, long = {"audio": make_audio(1, seconds=1.2)}, {"audio": make_audio(2, seconds=2.0)}
    together = model.encode_document([short, long])
    alone = model.encode_document([short])
    assert (together[0] - alone[0]).abs().max() < 1e-6


@pytest.mark.parametrize("kind", QWEN3_BACKBONES)
def test_errors_name_the_item(kind):
    model = tiny(kind)
    with pytest.raises(Exception, match=r"item 2|\[2\]|index 2") as err:
        model.encode_document(["a", "b", 42])
    print(kind, err.value)
    if kind == "qwen3-vl":
        with pytest.raises(Exception, match=r"item 1|\[1\]|index 1") as err:
            model.encode_document(["a", {"audio": make_audio(1)}])
        assert "audio" in str(err.value)


@pytest.mark.parametrize("kind", QWEN3_BACKBONES)
def test_init_tiny_builds_a_qwen3_folder(kind, tmp_path):
    assert kind in ALL_BACKBONES
    out = tmp_path / kind
    done = subprocess.run(
        [sys.executable, "-m", "e5omni.cli", "init-tiny", str(out), "--backbone", kind],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert model.config.backbone_config.model_type == BACKBONE_MODEL_TYPES[kind]
    torch.testing.assert_close(model.encode_document(["a red circle"]), tiny(kind).encode_document(["a red circle"]))


def test_qwen3_omni_video_with_its_sound_track_equals_the_reference(tmp_path):
    """A video file with a sound track on the Qwen3-Omni thinker: the frames and track e5-omni decodes, embedded
    with the track interleaved (the processor's `load_audio_from_video`, the model's `use_audio_in_video`), equal
    the reference path on the same decoded media; alone and in a batch mixing it with a silent video and an audio
    clip (per-row position ids), the vectors agree."""
    from tests.helpers import write_clip

    model = tiny("qwen3-omni")
    path = tmp_path / "clip.mkv"
    write_clip(path, seconds=2.0, size=64)
    decoded = model.processor.decode({"video": str(path)}, 0)
    assert decoded.video_audio is not None and decoded.modality_mask[2]  # audio shows in the mask
    backbone, processor = _reference_backbone(model, "qwen3-omni")
    messages = [{"role": "user", "content": [{"type": "video"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "<|endoftext|>"
    inputs = processor(
        text=[text],
        videos=[decoded.video],
        audio=[decoded.video_audio],
        load_audio_from_video=True,
        audio_from_video_indices=[0],
        text_kwargs={"padding": True},
        audio_kwargs={"sampling_rate": 16000, "padding": "max_length", "truncation": False},
        videos_kwargs={
            "do_sample_frames": False,
            "size": {"shortest_edge": model.config.video_min_pixels, "longest_edge": model.config.video_max_pixels},
            "fps": model.config.fps,
            "cap_pixels_per_frame": True,
        },
        return_tensors="pt",
    )
    assert "<|audio_start|>" in processor.tokenizer.decode(inputs["input_ids"][0])
    with torch.no_grad():
        hidden = backbone(**inputs, use_audio_in_video=True).last_hidden_state
    reference = torch.nn.functional.normalize(hidden[0, -1].float(), dim=-1)  # left-padded, one row
    alone = model.encode_document([{"video": str(path)}])[0]
    items = [{"video": probe_items("qwen3-omni")[4]["video"]}, {"video": str(path)}, {"audio": make_audio(1)}]
    batched = model.encode_document(items)
    diffs = {"alone": (alone - reference).abs().max().item(), "batched": (batched[1] - reference).abs().max().item()}
    print("qwen3-omni video with sound", diffs)
    assert max(diffs.values()) < 1e-5, diffs
