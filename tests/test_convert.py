"""Released-format checkpoints (both weight-key layouts) convert without changing a single embedding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

from e5omni.convert import convert_checkpoint, parse_temperatures
from e5omni.tiny import build_backbone_config, build_processor, build_tokenizer
from tests.conftest import make_image, make_video
from tests.helpers import write_released
from tests.reference import reference_embed


def _items():
    t = np.arange(16000) / 16000
    audio = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return [
        {"text": "a red circle"},
        {"image": make_image(3)},
        {"audio": audio},
        {"video": make_video(3)},
        {"text": "a caption", "image": make_image(4), "audio": audio},
    ]


@pytest.mark.parametrize("layout", ["5.x", "4.x"])
def test_converted_matches_reference_path(tmp_path, layout):
    src, out = tmp_path / "released", tmp_path / "ours"
    write_released(src, layout)
    convert_checkpoint(src, out, temperatures="text=0.0130,image=0.0127,audio=0.0219,video=0.0223")
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    items = _items()
    ours_docs = model.encode_document(items)
    ref_docs = reference_embed(src, items)
    diff_docs = (ours_docs - ref_docs).abs().max().item()
    ours_q = model.encode_query(["a red circle", "a dog"])
    ref_q = reference_embed(src, [{"text": "a red circle"}, {"text": "a dog"}], query=True)
    diff_q = (ours_q - ref_q).abs().max().item()
    print(f"layout {layout}: max abs diff documents {diff_docs:.2e}, queries {diff_q:.2e}")
    assert diff_docs < 1e-5 and diff_q < 1e-5
    st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    diff_st = (st.encode_document(items, convert_to_tensor=True) - ref_docs).abs().max().item()
    diff_st_q = (st.encode_query(["a red circle", "a dog"], convert_to_tensor=True) - ref_q).abs().max().item()
    print(f"layout {layout}: sentence-transformers vs reference: documents {diff_st:.2e}, queries {diff_st_q:.2e}")
    assert diff_st < 1e-5 and diff_st_q < 1e-5
    assert model.temperatures == pytest.approx({"text": 0.0130, "image": 0.0127, "audio": 0.0219, "video": 0.0223})
    names = {p.name for p in out.iterdir()}
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))}
    assert "--" not in json.dumps(json.loads((out / "config.json").read_text())["auto_map"])


def test_parse_temperatures_errors():
    assert parse_temperatures("text=0.5, image=0.25") == {"text": 0.5, "image": 0.25}
    with pytest.raises(ValueError, match="unknown modalities"):
        parse_temperatures("smell=0.1")
    with pytest.raises(ValueError, match="positive"):
        parse_temperatures("text=-1")
    with pytest.raises(ValueError, match="name=value"):
        parse_temperatures("text")


@pytest.mark.parametrize("backbone", ["qwen2-vl", "qwen2.5-vl"])
def test_base_vl_backbones_convert(tmp_path, backbone):
    import transformers

    tokenizer = build_tokenizer(backbone)
    config = build_backbone_config(backbone, tokenizer)
    cls = (
        transformers.Qwen2VLForConditionalGeneration
        if backbone == "qwen2-vl"
        else (transformers.Qwen2_5_VLForConditionalGeneration)
    )
    torch.manual_seed(11)
    src, out = tmp_path / "base", tmp_path / "ours"
    cls(config).eval().save_pretrained(src)
    build_processor(backbone, tokenizer).save_pretrained(src)
    convert_checkpoint(src, out)
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    items = [{"text": "a red circle"}, {"image": make_image(3)}, {"text": "cap", "image": make_image(4)}]
    items.append({"video": make_video(2)})
    diff = (model.encode_document(items) - reference_embed(src, items)).abs().max().item()
    print(f"{backbone} base conversion vs reference: {diff:.2e}")
    assert diff < 1e-5
    assert model.config.modalities == ["text", "image", "video"]


def _qwen3_items(kind):
    items = [
        {"text": "a red circle"},
        {"image": make_image(3, (64, 64))},
        {"text": "cap", "image": make_image(4, (64, 64))},
    ]
    if kind == "qwen3-omni":
        t = np.arange(16000) / 16000
        tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        items.append({"text": "tone", "audio": {"array": tone, "sampling_rate": 16000}})
    return items


@pytest.mark.parametrize("kind", ["qwen3-vl", "qwen3-omni"])
@pytest.mark.parametrize("layout", ["generation", "embedding"])
def test_qwen3_checkpoints_load_as_bare_backbones(tmp_path, kind, layout):
    """Qwen3-VL / Qwen3-Omni thinker checkpoints (the generation class, or Qwen3-VL-Embedding's head-less layout:
    `model.*` keys only) load as the bare backbone with the same weights, so the reference path on the loaded
    backbone equals the one on the source; `convert_checkpoint` writes our format with the same reference embedding
    (text, image, video, and audio for the Omni thinker), through AutoModel and sentence-transformers."""
    import transformers

    from e5omni.convert import load_backbone
    from e5omni.tiny import build_tiny_backbone
    from tests.reference import qwen3_reference_embed

    backbone, processor = build_tiny_backbone(kind, seed=5)
    cls = {
        "qwen3-vl": transformers.Qwen3VLForConditionalGeneration,
        "qwen3-omni": transformers.Qwen3OmniMoeThinkerForConditionalGeneration,
    }[kind]
    source = cls(backbone.config).eval()
    source.model.load_state_dict(backbone.state_dict())
    src = tmp_path / "src"
    source.save_pretrained(src)
    processor.save_pretrained(src)
    path = src / "model.safetensors"
    weights = load_file(str(path))
    # transformers writes Qwen3-VL in the model.language_model.* / model.visual.* layout, and the Qwen3-Omni thinker
    # back in its released one (model.layers.*, visual.*, audio_tower.*, lm_head)
    prefix = "model.language_model." if kind == "qwen3-vl" else "audio_tower."
    assert any(k.startswith(prefix) for k in weights) and "lm_head.weight" in weights
    if layout == "embedding":  # Qwen3-VL-Embedding's Qwen3VLForEmbedding: no lm_head at all
        save_file(
            {k: v for k, v in weights.items() if not k.startswith("lm_head.")}, str(path), metadata={"format": "pt"}
        )
    loaded, loaded_processor = load_backbone(src)
    assert type(loaded) is type(backbone)
    expected = backbone.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    items = _qwen3_items(kind)
    diff = (
        (
            qwen3_reference_embed(loaded, loaded_processor, kind, items)
            - qwen3_reference_embed(backbone, processor, kind, items)
        )
        .abs()
        .max()
        .item()
    )
    print(f"{kind} {layout} layout: loaded vs built, max abs diff {diff:.2e}")
    assert diff < 1e-6
    # converted: the processor's own budgets are recorded (Qwen3-Omni's processor class sizes videos itself, at
    # 128..768 x 32 x 32 pixels: the video budget is set to the tiny one that the reference path passes)
    overrides = {"video_max_pixels": 64 * 64, "video_min_pixels": 32 * 32} if kind == "qwen3-omni" else {}
    out = convert_checkpoint(src, tmp_path / "out", **overrides)
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert model.config.backbone_config.model_type == backbone.config.model_type
    items = _qwen3_items(kind) + [{"video": make_video(2, size=64)}]
    reference = qwen3_reference_embed(backbone, processor, kind, items)
    st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    diffs = {
        "auto": (model.encode_document(items) - reference).abs().max().item(),
        "st": (st.encode_document(items, convert_to_tensor=True).cpu() - reference).abs().max().item(),
    }
    print(f"{kind} {layout} layout: converted vs reference {diffs}")
    assert max(diffs.values()) < 1e-5, diffs
