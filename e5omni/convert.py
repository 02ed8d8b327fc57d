"""Converting released and base checkpoints into our format.

`convert_checkpoint(src, out)` takes a released e5-omni checkpoint (`qwen2_5_omni_thinker`, saved as
`Qwen2_5OmniThinkerForConditionalGeneration`, in either the transformers 4.x or 5.x weight-key layout) or a base
backbone (Qwen2.5-Omni thinker, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-Omni thinker) and writes a folder in our format. The weights are loaded through
the backbone's own transformers class, so transformers' key conversion handles both layouts; the language-model head
is dropped (embeddings never use it). Media budgets are read from the source processor so that converting a released
checkpoint does not change a single embedding.

Qwen3-VL and Qwen3-Omni thinker checkpoints convert the same way, and so does Qwen3-VL-Embedding's head-less layout
(`model.*` keys only). `load_backbone(src)` reads any of them as the bare backbone + its processor.

`conventions` picks the embedding contract written into the converted config: `"e5-omni"` (ours: "Query: " prompt,
instruction in the user turn, media image/audio/video, `<|endoftext|>` suffix) or `"qwen3-vl-embedding"`
(`QWEN3_VL_EMBEDDING_CONVENTIONS`: the instruction as a system message, "Represent the user's input." by default,
video before image, no suffix, the generation prompt's last token pooled). `None` (the default) detects a
Qwen3-VL-Embedding checkpoint by the `Qwen3VLForEmbedding` architecture in its config.json and uses e5-omni's
conventions for everything else. See docs/backbones.md for which of these were verified and from where.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from e5omni.release import save_hub_folder
from modeling_e5omni import MODALITIES, E5OmniConfig, E5OmniModel, E5OmniProcessor

#: Temperatures published for the released e5-omni-7B (text, image, audio, video).
E5_OMNI_7B_TEMPERATURES = {"text": 0.0130, "image": 0.0127, "audio": 0.0219, "video": 0.0223}

_GENERATION_CLASSES = {
    "qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_omni_moe_thinker": "Qwen3OmniMoeThinkerForConditionalGeneration",
}


#: Qwen3-VL-Embedding's published embedding recipe as E5OmniConfig fields (docs/backbones.md says where each is from).
QWEN3_VL_EMBEDDING_CONVENTIONS = {
    "instruction_role": "system",
    "default_instruction": "Represent the user's input.",
    "instruction_period": True,
    "media_order": ["video", "image", "audio"],
    "eos_suffix": "",
    "query_prompt": "",
    "document_prompt": "",
    # its images are resized by qwen-vl-utils (factor 32) to 4 .. 1800 x 32 x 32 pixels before the processor
    # (called with do_resize=False): the same smart_resize rule as our pre-resize, with these budgets
    "min_pixels": 4 * 32 * 32,
    "max_pixels": 1800 * 32 * 32,
}

#: `convert_checkpoint(conventions=...)` values and the config fields each sets.
CONVENTIONS = {"e5-omni": {}, "qwen3-vl-embedding": QWEN3_VL_EMBEDDING_CONVENTIONS}


def detect_conventions(src: str | os.PathLike) -> str:
    """`"qwen3-vl-embedding"` when `src`'s config names the `Qwen3VLForEmbedding` architecture, else `"e5-omni"`."""
    from transformers import AutoConfig

    architectures = getattr(AutoConfig.from_pretrained(src), "architectures", None) or []
    return "qwen3-vl-embedding" if "Qwen3VLForEmbedding" in architectures else "e5-omni"


def parse_temperatures(spec: str | dict | None) -> dict[str, float] | None:
    """`"text=0.013,image=0.0127"` -> `{"text": 0.013, "image": 0.0127}`, validated."""
    if spec is None or isinstance(spec, dict):
        values = spec
    else:
        values = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"--temperatures entries look like name=value, got {part!r}")
            try:
                values[name.strip()] = float(value)
            except ValueError as err:
                raise ValueError(f"temperature for {name!r} is not a number: {value!r}") from err
    if values is None:
        return None
    unknown = set(values) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)} in temperatures; expected {MODALITIES}")
    bad = {k: v for k, v in values.items() if not (v > 0 and math.isfinite(v))}
    if bad:
        raise ValueError(f"temperatures must be positive and finite, got {bad}")
    return values


def _budgets(backbone_processor) -> dict:
    size = getattr(backbone_processor.image_processor, "size", None) or {}
    size = dict(size) if not isinstance(size, dict) else size
    out = {}
    if size.get("longest_edge"):
        out["max_pixels"] = int(size["longest_edge"])
    if size.get("shortest_edge"):
        out["min_pixels"] = int(size["shortest_edge"])
    # The Omni processor class overrides its video processor's size at call time; record what a plain call uses.
    video_size = (getattr(type(backbone_processor), "videos_kwargs", None) or {}).get("size")
    if video_size is None:
        video_size = dict(getattr(backbone_processor.video_processor, "size", None) or {})
    if video_size.get("longest_edge"):
        out["video_max_pixels"] = int(video_size["longest_edge"])
    if video_size.get("shortest_edge"):
        out["video_min_pixels"] = int(video_size["shortest_edge"])
    extractor = getattr(backbone_processor, "feature_extractor", None)
    if extractor is not None and getattr(extractor, "chunk_length", None):
        out["max_audio_seconds"] = float(extractor.chunk_length)
    return out


def _source_model_type(src) -> str:
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(src).model_type
    if model_type == "e5omni":
        raise ValueError(f"{src} is already in the e5-omni format")
    if model_type not in _GENERATION_CLASSES:
        raise ValueError(
            f"cannot convert a {model_type!r} checkpoint; expected one of {sorted(_GENERATION_CLASSES)} "
            "(a full qwen2_5_omni / qwen3_omni_moe checkpoint must be reduced to its thinker first)"
        )
    return model_type


def load_backbone(src: str | os.PathLike):
    """`(backbone, processor)` of a base checkpoint: the bare multimodal model (what our `E5OmniModel.backbone` is,
    no LM head) with the checkpoint's weights in float32, and its own processor.

    The weights are read through the backbone's generation class, so transformers' key conversion handles every
    layout it knows: `model.language_model.*` / `model.visual.*` (/ `model.audio_tower.*`), the transformers 4.x
    Qwen2.5 layouts, and checkpoints saved without `lm_head` (Qwen3-VL-Embedding's `Qwen3VLForEmbedding` holds
    `model.*` only; the head it lacks is left to transformers' init and dropped here)."""
    import transformers
    from transformers import AutoProcessor

    model_type = _source_model_type(src)
    generation_cls = getattr(transformers, _GENERATION_CLASSES[model_type])
    source = generation_cls.from_pretrained(src, dtype=torch.float32)
    backbone = source.model.eval()
    return backbone, AutoProcessor.from_pretrained(src)


def convert_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    temperatures: str | dict | None = None,
    conventions: str | None = None,
    **embedding_kwargs,
) -> Path:
    """Convert `src` (local folder or Hub id) into our format at `out`; returns `out`.

    `conventions`: `"e5-omni"`, `"qwen3-vl-embedding"`, or None to detect it from the checkpoint
    (`detect_conventions`); explicit `embedding_kwargs` override the fields a convention sets."""
    if conventions is None:
        conventions = detect_conventions(src)
    if conventions not in CONVENTIONS:
        raise ValueError(f"conventions must be one of {sorted(CONVENTIONS)} (or None to detect), got {conventions!r}")
    backbone, backbone_processor = load_backbone(src)
    if conventions == "qwen3-vl-embedding" and backbone.config.model_type != "qwen3_vl":
        raise ValueError(
            f"conventions='qwen3-vl-embedding' needs a qwen3_vl checkpoint, {src} is {backbone.config.model_type!r}"
        )

    kwargs = {**_budgets(backbone_processor), **CONVENTIONS[conventions], **embedding_kwargs}
    config = E5OmniConfig(backbone_config=backbone.config.to_dict(), **kwargs)
    model = E5OmniModel(config)
    model.backbone.load_state_dict(backbone.state_dict(), strict=True)  # everything but lm_head
    values = parse_temperatures(temperatures)
    if values:
        with torch.no_grad():
            for name, tau in values.items():
                model.log_temperature[MODALITIES.index(name)] = math.log(tau)
    return save_hub_folder(model, E5OmniProcessor(backbone_processor, config), out)
