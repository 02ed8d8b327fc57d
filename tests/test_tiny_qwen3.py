"""Tiny seeded Qwen3-VL and Qwen3-Omni thinker backbones (bare transformers models + real processors), and the
reference embedding path on them: chat template with add_generation_prompt, "<|endoftext|>", the last attended
position, L2 norm. `qwen3_reference_embed` is written independently of modeling_e5omni: tests/test_qwen3_backbones.py
checks both e5-omni entry paths against it."""

from __future__ import annotations

import re
import time

import pytest
import torch

from e5omni.tiny import (
    BACKBONES,
    QWEN3_BACKBONES,
    build_tiny_backbone,
    build_tiny_model,
    chat_template,
)
from tests.conftest import make_audio, make_video
from tests.reference import (
    EOS,
    FPS,
    probe_items,
    qwen3_inputs,
    qwen3_reference_embed,
    qwen3_video_kwargs,
)

#: Every language-model Linear of the Qwen3 backbones and nothing of the towers (docs/backbones.md, LoRA).
LM_LINEAR_REGEX = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
TOWER_EXCLUDE_REGEX = r"(.*\.)?(audio_tower|visual)\..*"


_BUILT: dict = {}


def tiny_backbone(kind: str):
    if kind not in _BUILT:
        _BUILT[kind] = build_tiny_backbone(kind, seed=0)
    return _BUILT[kind]


@pytest.mark.parametrize("kind", QWEN3_BACKBONES)
def test_tiny_backbone_is_seeded_and_fast(kind):
    tiny_backbone(kind)  # imports and the BPE training once
    start = time.perf_counter()
    a, _ = build_tiny_backbone(kind, seed=0)
    elapsed = time.perf_counter() - start
    b, _ = build_tiny_backbone(kind, seed=0)
    c, _ = build_tiny_backbone(kind, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point() and sa[k].numel() > 16)
    print(f"{kind}: built in {elapsed:.3f} s, {sum(p.numel() for p in a.parameters())} parameters")
    assert elapsed < 1.0


@pytest.mark.parametrize("kind", QWEN3_BACKBONES)
def test_forward_each_modality_is_finite(kind):
    model, processor = tiny_backbone(kind)
    expected = {"qwen3-vl": "Qwen3VLModel", "qwen3-omni": "Qwen3OmniMoeThinkerModel"}[kind]
    assert type(model).__name__ == expected
    for item in probe_items(kind):
        inputs = qwen3_inputs(processor, kind, [item])
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state
        assert hidden.shape == (1, inputs["input_ids"].shape[1], 64), item.keys()
        assert torch.isfinite(hidden).all(), item.keys()
        ids = inputs["input_ids"][0].tolist()
        tokens = processor.tokenizer
        for key, token in (("image", "<|image_pad|>"), ("video", "<|video_pad|>"), ("audio", "<|audio_pad|>")):
            assert (tokens.convert_tokens_to_ids(token) in ids) == (key in item), (key, item.keys())


def test_padding_sides_of_the_processors():
    """Recorded in docs/backbones.md: Qwen3-VL's processor pads on the tokenizer's side (right, like Qwen2-VL);
    Qwen3OmniMoeProcessor pads left (its class text_kwargs), like Qwen2.5-Omni."""
    sides = {}
    for kind in QWEN3_BACKBONES:
        _, processor = tiny_backbone(kind)
        mask = qwen3_inputs(processor, kind, [{"text": "a much longer text than the other one"}, {"text": "x"}])[
            "attention_mask"
        ]
        sides[kind] = "left" if mask[1, 0] == 0 else "right"
    assert sides == {"qwen3-vl": "right", "qwen3-omni": "left"}


@pytest.mark.parametrize("kind", QWEN3_BACKBONES)
def test_qwen3_vl_video_frames_get_time_stamps(kind):
    """Qwen3-VL writes "<t seconds>" before each temporal patch (2 frames), from the video metadata; Qwen3-Omni
    places its video tokens in one block and times them by video_second_per_grid (temporal_patch_size / fps)."""
    model, processor = tiny_backbone(kind)
    inputs = qwen3_inputs(processor, kind, [{"video": make_video(1, frames=4, size=64)}])
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    stamps = re.findall(r"<([0-9.]+) seconds>", text)
    if kind == "qwen3-vl":
        # frames 0,1 at 2 fps -> mean 0.25 s, printed with one decimal; frames 2,3 -> 1.25 s
        assert stamps == ["0.2", "1.2"] and text.count("<|vision_start|>") == 2
        assert "mm_token_type_ids" in inputs
    else:
        assert stamps == [] and text.count("<|vision_start|>") == 1
        assert inputs["video_second_per_grid"].tolist() == [2 / FPS]


@pytest.mark.parametrize("kind", QWEN3_BACKBONES)
def test_reference_path_is_batch_invariant(kind):
    """Each item embedded alone equals its row in one padded batch of every probe (within 1e-5), on the processor's
    own padding side and on the other side."""
    model, processor = tiny_backbone(kind)
    items = probe_items(kind)
    alone = torch.cat([qwen3_reference_embed(model, processor, kind, [item]) for item in items])
    assert torch.allclose(alone.norm(dim=-1), torch.ones(len(items)), atol=1e-5)
    for side in (None, "left", "right"):
        batch = qwen3_reference_embed(model, processor, kind, items, padding_side=side)
        diff = (batch - alone).abs().max().item()
        print(f"{kind} padding {side or 'processor default'}: max |alone - batched| = {diff:.2e}")
        assert diff < 1e-5
    queries = qwen3_reference_embed(model, processor, kind, items[:2], query=True)
    assert (queries - alone[:2]).abs().max() > 1e-3  # the query prompt changes the embedding
    cos = alone @ alone.T
    assert cos[~torch.eye(len(items), dtype=torch.bool)].max() < 0.9999  # distinct items stay distinct


def test_omni_audio_embedding_and_its_batch():
    """Two ways a Qwen3-Omni audio embedding depends on its batch (measured on the tiny model):
    1. Qwen3OmniMoeProcessor pads audio to the longest clip (class audio_kwargs padding=True): the STFT window over
       a shorter clip's end sees zeros instead of its reflection, so its last mel frame changes. Padding to
       max_length (the extractor's chunk_length) removes it.
    2. The audio tower cuts features into chunks of 2 * n_window frames (1 s) and zero-pads every chunk of the
       batch to the longest one; its stride-2 convolutions turn that padding into gelu(bias), which the next
       convolution reads at a chunk's end. A clip shorter than one chunk is therefore embedded differently alone
       than beside a longer clip, whatever the feature padding; clips of 1 s or more are not (their last partial
       chunk is padded to a full one alone as well)."""
    model, processor = tiny_backbone("qwen3-omni")

    def moved(seconds, beside, padding):
        item = {"text": "a rising tone", "audio": make_audio(2, seconds=seconds)}
        alone = qwen3_reference_embed(model, processor, "qwen3-omni", [item], audio_padding=padding)
        other = {"audio": make_audio(1, seconds=beside)}
        batched = qwen3_reference_embed(model, processor, "qwen3-omni", [item, other], audio_padding=padding)[:1]
        return (alone - batched).abs().max().item()

    longest, max_length = moved(1.2, 2.0, True), moved(1.2, 2.0, "max_length")
    sub_second = moved(0.5, 1.0, "max_length")
    print(
        f"qwen3-omni audio beside a longer clip: 1.2 s padded to longest {longest:.1e}, to max_length "
        f"{max_length:.1e}; 0.5 s (max_length) {sub_second:.1e}"
    )
    assert longest > 1e-5 and max_length < 1e-6 and sub_second > 1e-5


def test_omni_audio_in_video_forward_is_finite():
    """A video with its audio track: the processor interleaves audio and video tokens between <|audio_start|> and
    <|audio_end|> inside the vision markers, and the model positions them with use_audio_in_video=True."""
    model, processor = tiny_backbone("qwen3-omni")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "x"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = processor(
        text=[text + EOS],
        videos=[make_video(3, frames=4, size=64)],
        audio=[make_audio(3)["array"]],
        load_audio_from_video=True,
        audio_from_video_indices=[0],
        padding=True,
        return_tensors="pt",
        **qwen3_video_kwargs("qwen3-omni", [4]),
    )
    decoded = processor.tokenizer.decode(inputs["input_ids"][0])
    assert "<|vision_start|><|audio_start|><|video_pad|>" in decoded and "<|audio_end|><|vision_end|>" in decoded
    with torch.no_grad():
        hidden = model(**inputs, use_audio_in_video=True).last_hidden_state
    assert torch.isfinite(hidden).all()


def test_omni_moe_layout_and_language_model_regex():
    """The thinker's MoE: experts are two fused 3-D Parameters per layer (mlp.experts.gate_up_proj / down_proj),
    the router a Linear-like `mlp.gate.weight`; the LM-only LoRA regex hits attention projections and no tower."""
    model, _ = tiny_backbone("qwen3-omni")
    names = dict(model.named_parameters())
    experts = names["language_model.layers.0.mlp.experts.gate_up_proj"]
    assert experts.shape == (4, 2 * 32, 64) and names["language_model.layers.0.mlp.experts.down_proj"].shape == (
        4,
        64,
        32,
    )
    assert names["language_model.layers.0.mlp.gate.weight"].shape == (4, 64)
    linear = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(LM_LINEAR_REGEX, n)
    ]
    assert sorted({n.split(".")[-1] for n in linear}) == ["k_proj", "o_proj", "q_proj", "v_proj"]  # no dense MLP
    assert not any(n.startswith(("visual", "audio_tower")) for n in linear)
    vl_model, _ = tiny_backbone("qwen3-vl")
    vl_linear = [
        n for n, m in vl_model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(LM_LINEAR_REGEX, n)
    ]
    assert len(vl_linear) == 2 * 7 and not any(n.startswith("visual") for n in vl_linear)


def test_omni_lora_language_model_only_needs_exclude_modules():
    """Measured with peft 0.21: the LM-only regex alone also wraps the Qwen3-Omni audio tower's q/k/v projections
    (not on Qwen2.5-Omni or Qwen3-VL); `exclude_modules` for the towers stops it. The fused expert Parameters are
    reached only through `target_parameters` (LoRA on nn.Parameter). If the first assertion fails, peft no longer
    leaks into the tower and docs/backbones.md can drop the exclude_modules line."""
    peft = pytest.importorskip("peft")

    def trainable(**config):
        model, processor = build_tiny_backbone("qwen3-omni", seed=0)
        peft_model = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, **config))
        return peft_model, processor, [n for n, p in peft_model.named_parameters() if p.requires_grad]

    _, _, names = trainable(target_modules=LM_LINEAR_REGEX)
    assert any(".audio_tower." in n for n in names)  # the leak
    peft_model, processor, names = trainable(
        target_modules=LM_LINEAR_REGEX,
        exclude_modules=TOWER_EXCLUDE_REGEX,
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    )
    assert not any(".visual." in n or ".audio_tower." in n for n in names)
    assert any("mlp.experts" in n for n in names) and any("self_attn.q_proj" in n for n in names)
    inputs = qwen3_inputs(processor, "qwen3-omni", [{"text": "a red circle", "audio": make_audio(1)}])
    with torch.no_grad(), peft_model.disable_adapter():
        before = peft_model(**inputs).last_hidden_state
    out = peft_model(**inputs).last_hidden_state
    assert torch.allclose(before, out.detach(), atol=1e-6)  # LoRA B starts at zero
    out[:, -1].sum().backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())


def test_qwen3_chat_templates_have_no_default_system_turn():
    for kind in QWEN3_BACKBONES:
        template = chat_template(kind)
        assert "You are a helpful assistant." not in template
        assert "<|vision_start|><|image_pad|><|vision_end|>" in template
        assert ("<|audio_start|><|audio_pad|><|audio_end|>" in template) == (kind == "qwen3-omni")
    for kind in BACKBONES:  # the released kinds keep the Qwen2 templates' default system turn
        assert "You are a helpful assistant." in chat_template(kind)


def test_unknown_kinds_are_refused_by_name():
    with pytest.raises(ValueError, match="backbone must be one of.*'qwen4'"):
        build_tiny_model("qwen4")
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_tiny_backbone("qwen4")
