"""The embedded default: a tiny, random, fully offline backbone in our model format.

`build_tiny(out_dir, backbone="qwen2.5-omni", seed=0)` writes a folder that loads with
`AutoModel.from_pretrained(out_dir, trust_remote_code=True)` exactly like a released checkpoint, but is built in well
under a second from nothing but this file:

- a byte-level BPE tokenizer trained with `tokenizers` on a small built-in corpus, wrapped in `Qwen2Tokenizer` with the
  backbone's special tokens (Omni: ``<|IMAGE|> <|AUDIO|> <|VIDEO|> <|vision_bos|> ...``; Qwen2-VL / Qwen2.5-VL:
  ``<|image_pad|> <|video_pad|> <|vision_start|> ...``) and a chat template in the backbone's style;
- the real transformers processor classes (`Qwen2_5OmniProcessor`, `Qwen2VLProcessor`, `Qwen2_5_VLProcessor`) with
  small media budgets (images of 56 x 56 pixels become 4 tokens, 2 s audio chunks);
- a backbone config with text hidden 64, 2 layers, and tiny vision / audio towers, initialised from `seed`.

Everything is deterministic for a seed: the same seed gives byte-identical weights and tokenizer files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

BACKBONES = ("qwen2.5-omni", "qwen2-vl", "qwen2.5-vl")

#: Qwen3 backbone kinds (Qwen3-VL, the Qwen3-Omni thinker). They are e5-omni kinds (`build_tiny_model`,
#: `build_tiny`, `e5omni init-tiny`) but not in `BACKBONES`, which the released-kind suites are parametrized over.
QWEN3_BACKBONES = ("qwen3-vl", "qwen3-omni")

#: Every kind `build_tiny_model` / `e5omni init-tiny --backbone` builds.
ALL_BACKBONES = BACKBONES + QWEN3_BACKBONES

#: The transformers `model_type` of each kind's backbone config (what AutoModel builds: the bare model, no LM head).
BACKBONE_MODEL_TYPES = {
    "qwen2.5-omni": "qwen2_5_omni_thinker",
    "qwen2-vl": "qwen2_vl",
    "qwen2.5-vl": "qwen2_5_vl",
    "qwen3-vl": "qwen3_vl",
    "qwen3-omni": "qwen3_omni_moe_thinker",
}

TEXT_HIDDEN = 64

# Weight init std of every tiny tower. Transformers' default 0.02 suits hidden sizes in the thousands; at hidden 64
# it makes attention nearly uniform, so the last token is an average dominated by the shared chat template and all
# images (or audio clips) embed at cosine > 0.99 to each other (measured: audio 1.0000, image 0.993). At 0.1 they
# start distinguishable (0.95) and the demo's recipe learns the synthetic task within minutes on CPU.
INIT_STD = 0.1

_OMNI_TOKENS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
_VL_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
# Qwen3-Omni renamed the Omni placeholders to the Qwen-VL names and added audio ones (its tokenizer_config.json).
_QWEN3_OMNI_TOKENS = {
    "image_token": "<|image_pad|>",
    "audio_token": "<|audio_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}


def _media_tokens(backbone: str) -> dict[str, str]:
    if backbone == "qwen2.5-omni":
        return _OMNI_TOKENS
    if backbone == "qwen3-omni":
        return _QWEN3_OMNI_TOKENS
    return _VL_TOKENS


# Chat templates in the style of the real backbones: one system turn (default prompt), user turns whose content is a
# string or a list of typed parts, and the assistant header when `add_generation_prompt=True`.
_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}{IMAGE}"
    "{% elif part['type'] == 'audio' or 'audio' in part or 'audio_url' in part %}{AUDIO}"
    "{% elif part['type'] == 'video' or 'video' in part %}{VIDEO}"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Qwen3 templates open with the system turn only when the conversation has one (no default system prompt).
_QWEN3_TEMPLATE = _TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}",
    "",
)


def chat_template(backbone: str) -> str:
    """The chat template shipped with a tiny backbone of kind `backbone`."""
    if backbone in QWEN3_BACKBONES:
        image = "<|vision_start|><|image_pad|><|vision_end|>"
        video = "<|vision_start|><|video_pad|><|vision_end|>"  # Qwen3-VL's processor re-wraps every frame itself
        audio = "<|audio_start|><|audio_pad|><|audio_end|>" if backbone == "qwen3-omni" else ""
        return _QWEN3_TEMPLATE.replace("{IMAGE}", image).replace("{AUDIO}", audio).replace("{VIDEO}", video)
    if backbone == "qwen2.5-omni":
        image = "<|vision_bos|><|IMAGE|><|vision_eos|>"
        audio = "<|audio_bos|><|AUDIO|><|audio_eos|>"
        video = "<|vision_bos|><|VIDEO|><|vision_eos|>"
    else:
        image = "<|vision_start|><|image_pad|><|vision_end|>"
        audio = ""  # no audio tower: the processor refuses audio before it reaches the template
        video = "<|vision_start|><|video_pad|><|vision_end|>"
    return _TEMPLATE.replace("{IMAGE}", image).replace("{AUDIO}", audio).replace("{VIDEO}", video)


_CORPUS = [
    "Query: a red circle in the top left corner of the picture",
    "a blue square moving to the right; a green triangle at the bottom",
    "a low tone, a high chirp, a rising sweep and three short beeps",
    "Represent the given image for retrieval. Find the video that matches the caption.",
    "the quick brown fox jumps over the lazy dog 0123456789 .,;:!?'\"()[]{}<>-_/\\|@#$%^&*+=~`",
    "yellow purple orange cyan magenta white black grey small large centre middle left right top bottom",
    "system user assistant You are a helpful assistant.",
]


def _train_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a small byte-level BPE trained on the built-in corpus (deterministic)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def build_tokenizer(backbone: str):
    """A small byte-level BPE `Qwen2Tokenizer` with the backbone's special tokens and chat template."""
    from transformers import Qwen2Tokenizer

    media = _media_tokens(backbone)
    vocab, merges = _train_bpe()
    vocab = dict(vocab)
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *media.values()):
        vocab.setdefault(token, len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(media),
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]})
    tokenizer.chat_template = chat_template(backbone)
    return tokenizer


def _image_processor_kwargs() -> dict:
    # 56 x 56 pixels -> a 4 x 4 grid of 14-pixel patches -> 4 tokens after the 2 x 2 merge.
    return {
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "size": {"shortest_edge": 28 * 28, "longest_edge": 56 * 56},
    }


#: Qwen3 vision towers cut 16-pixel patches (merged 2 x 2: 32-pixel units): 64 x 64 pixels -> 4 tokens.
QWEN3_IMAGE_SIZE = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}


def _qwen3_image_processor_kwargs() -> dict:
    # Qwen3-VL normalises with mean = std = 0.5 (its preprocessor_config.json), not the CLIP values of Qwen2-VL.
    return {
        "patch_size": 16,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "size": dict(QWEN3_IMAGE_SIZE),
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def _build_qwen3_processor(backbone: str, tokenizer):
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3OmniMoeProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    image_processor = Qwen2VLImageProcessor(**_qwen3_image_processor_kwargs())
    if backbone == "qwen3-vl":
        # Qwen3VLVideoProcessor: frames get "<t seconds>" text stamps from the video metadata (fps, frame indices).
        video_processor = Qwen3VLVideoProcessor(
            **_qwen3_image_processor_kwargs(), do_sample_frames=False, cap_pixels_per_frame=True
        )
        return Qwen3VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=tokenizer.chat_template,
        )
    # Qwen3-Omni's video processor is Qwen2-VL's (transformers' auto mapping); its processor overrides the video
    # size at call time (class videos_kwargs: 128..768 x 32 x 32 pixels), so callers pass their own videos_kwargs.
    video_processor = Qwen2VLVideoProcessor(**_qwen3_image_processor_kwargs(), do_sample_frames=False)
    feature_extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=2, sampling_rate=16000)
    return Qwen3OmniMoeProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def build_processor(backbone: str, tokenizer=None):
    """The real transformers processor for `backbone`, with small media budgets."""
    if backbone in QWEN3_BACKBONES:
        return _build_qwen3_processor(backbone, tokenizer if tokenizer is not None else build_tokenizer(backbone))
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(backbone)
    image_processor = Qwen2VLImageProcessor(**_image_processor_kwargs())
    video_processor = Qwen2VLVideoProcessor(**_image_processor_kwargs(), do_sample_frames=False)
    if backbone == "qwen2.5-omni":
        feature_extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=2, sampling_rate=16000)
        return Qwen2_5OmniProcessor(
            image_processor=image_processor,
            video_processor=video_processor,
            feature_extractor=feature_extractor,
            tokenizer=tokenizer,
            chat_template=tokenizer.chat_template,
        )
    cls = Qwen2VLProcessor if backbone == "qwen2-vl" else Qwen2_5_VLProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )


#: Attention head size of the tiny language model. 16 is the default (4 heads over hidden 64); vLLM's CPU attention has
#: no kernel for 16, so models served by vLLM in tests use head_dim=32 (2 heads).
HEAD_DIMS = (16, 32, 64)


def _text_kwargs(tokenizer, vocab_size: int, head_dim: int = 16) -> dict:
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {HEAD_DIMS}, got {head_dim!r}")
    heads = TEXT_HIDDEN // head_dim
    eighth = head_dim // 8  # mrope_section (temporal, height, width) sums to head_dim / 2: [2, 3, 3] at 16
    return {
        "vocab_size": vocab_size,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [eighth, 3 * eighth // 2, 3 * eighth // 2],
        },
        "bos_token_id": None,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "tie_word_embeddings": False,
        "initializer_range": INIT_STD,
    }


#: The Qwen2.5 vision tower (windowed attention, shared by the Omni thinker and Qwen2.5-VL), tiny.
_QWEN2_5_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 56,
    "out_hidden_size": TEXT_HIDDEN,
    "fullatt_block_indexes": [1],
    "initializer_range": INIT_STD,
}


#: Interleaved M-RoPE sections (temporal, height, width) of the Qwen3 language models, per head_dim: they sum to
#: head_dim / 2 and height / width take every third frequency from index 1 / 2 (3 * section <= head_dim / 2), the
#: proportions of the real [24, 20, 20] at head_dim 128.
_QWEN3_MROPE = {16: [4, 2, 2], 32: [6, 5, 5], 64: [12, 10, 10]}

#: The Qwen3 vision tower (SigLIP-2 style: learned position grid + 2D rope, DeepStack taps), tiny. Shared by
#: Qwen3-VL and the Qwen3-Omni thinker; one DeepStack tap (layer 0) so its path into the language model runs.
_QWEN3_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "out_hidden_size": TEXT_HIDDEN,
    "num_position_embeddings": 64,  # an 8 x 8 learned grid, interpolated to each image's grid
    "deepstack_visual_indexes": [0],
    "initializer_range": INIT_STD,
}

#: Tiny MoE of the Qwen3-Omni thinker's language model: every layer sparse (decoder_sparse_step 1, as released).
QWEN3_OMNI_EXPERTS = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}


def _qwen3_text_kwargs(tokenizer, vocab_size: int, head_dim: int) -> dict:
    kwargs = _text_kwargs(tokenizer, vocab_size, head_dim)
    kwargs["head_dim"] = head_dim  # Qwen3 text configs carry head_dim (Qwen3-VL's defaults to 128)
    kwargs["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": list(_QWEN3_MROPE[head_dim]),
        "mrope_interleaved": True,
    }
    return kwargs


def _build_qwen3_config(backbone: str, tokenizer, head_dim: int):
    vocab_size = len(tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    text = _qwen3_text_kwargs(tokenizer, vocab_size, head_dim)
    if backbone == "qwen3-vl":
        from transformers import Qwen3VLConfig

        return Qwen3VLConfig(
            text_config=text,
            vision_config=dict(_QWEN3_VISION),
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            initializer_range=INIT_STD,
        )
    from transformers import Qwen3OmniMoeThinkerConfig

    text.update(QWEN3_OMNI_EXPERTS, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
    return Qwen3OmniMoeThinkerConfig(
        text_config=text,
        vision_config=dict(_QWEN3_VISION),
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            "max_source_positions": 1500,
            # n_window must equal the processor's (Qwen3OmniMoeProcessor.n_window = 50): both count audio tokens
            "n_window": 50,
            "n_window_infer": 800,
            "output_dim": TEXT_HIDDEN,
            "downsample_hidden_size": 16,
            "initializer_range": INIT_STD,
        },
        audio_token_id=ids("<|audio_pad|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        audio_start_token_id=ids("<|audio_start|>"),
        # not dataclass fields of Qwen3OmniMoeThinkerConfig, but get_rope_index reads vision_start_token_id (the
        # released config.json carries all three)
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        audio_end_token_id=ids("<|audio_end|>"),
        user_token_id=tokenizer.encode("user", add_special_tokens=False)[0],
        # the processor interleaves a video's audio at 13 position ids per second (its class default); the model's
        # get_rope_index must use the same rate (the config default is 25)
        position_id_per_seconds=13,
        initializer_range=INIT_STD,
    )


def build_backbone_config(backbone: str, tokenizer, head_dim: int = 16):
    """A tiny backbone config whose special-token ids come from `tokenizer`; `head_dim` of its language model."""
    if backbone in QWEN3_BACKBONES:
        if head_dim not in HEAD_DIMS:
            raise ValueError(f"head_dim must be one of {HEAD_DIMS}, got {head_dim!r}")
        return _build_qwen3_config(backbone, tokenizer, head_dim)
    vocab_size = len(tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    if backbone == "qwen2.5-omni":
        from transformers import Qwen2_5OmniThinkerConfig

        return Qwen2_5OmniThinkerConfig(
            text_config=_text_kwargs(tokenizer, vocab_size, head_dim),
            vision_config=dict(_QWEN2_5_VISION),
            audio_config={
                "num_mel_bins": 128,
                "encoder_layers": 2,
                "encoder_attention_heads": 2,
                "encoder_ffn_dim": 64,
                "d_model": 32,
                "max_source_positions": 1500,
                "n_window": 100,
                "output_dim": TEXT_HIDDEN,
                "initializer_range": INIT_STD,
            },
            audio_token_index=ids("<|AUDIO|>"),
            image_token_index=ids("<|IMAGE|>"),
            video_token_index=ids("<|VIDEO|>"),
            audio_start_token_id=ids("<|audio_bos|>"),
            audio_end_token_id=ids("<|audio_eos|>"),
            vision_start_token_id=ids("<|vision_bos|>"),
            vision_end_token_id=ids("<|vision_eos|>"),
            user_token_id=tokenizer.encode("user", add_special_tokens=False)[0],
            initializer_range=INIT_STD,
        )
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    vision = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": 32,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "initializer_range": INIT_STD,
    }
    cls = Qwen2VLConfig
    if backbone == "qwen2.5-vl":
        cls = Qwen2_5_VLConfig
        vision = dict(_QWEN2_5_VISION)
    else:
        vision["hidden_size"] = TEXT_HIDDEN  # Qwen2-VL's merger projects to vision_config.hidden_size
    return cls(
        text_config=_text_kwargs(tokenizer, vocab_size, head_dim),
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        initializer_range=INIT_STD,
    )


def build_tiny_model(backbone: str = "qwen2.5-omni", seed: int = 0, head_dim: int = 16, **embedding_kwargs):
    """Build `(model, processor)` in memory: a tiny random `E5OmniModel` and its `E5OmniProcessor`. `head_dim`:
    the language model's attention head size (16, or 32 / 64 for vLLM, whose CPU attention has no 16)."""
    from modeling_e5omni import E5OmniConfig, E5OmniModel, E5OmniProcessor

    if backbone not in ALL_BACKBONES:
        raise ValueError(f"backbone must be one of {ALL_BACKBONES}, got {backbone!r}")
    tokenizer = build_tokenizer(backbone)
    backbone_processor = build_processor(backbone, tokenizer)
    backbone_config = build_backbone_config(backbone, tokenizer, head_dim)
    qwen3 = backbone in QWEN3_BACKBONES  # 32-pixel merge units: 64 x 64 pixels -> 4 tokens
    embedding_kwargs.setdefault("max_pixels", 64 * 64 if qwen3 else 56 * 56)
    embedding_kwargs.setdefault("min_pixels", 32 * 32 if qwen3 else 28 * 28)
    embedding_kwargs.setdefault("max_frames", 4)
    embedding_kwargs.setdefault("max_audio_seconds", 2.0)
    embedding_kwargs.setdefault("max_length", 512)
    config = E5OmniConfig(backbone_config=backbone_config.to_dict(), **embedding_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = E5OmniModel(config)
    model.eval()
    processor = E5OmniProcessor(backbone_processor, config=config)
    return model, processor


def build_tiny(
    out_dir: str | os.PathLike, backbone: str = "qwen2.5-omni", seed: int = 0, head_dim: int = 16, **embedding_kwargs
) -> Path:
    """Write a tiny model folder in our released format (weights, config with auto_map, code, processor files,
    sentence-transformers files): it loads through AutoModel and SentenceTransformer like a Hub repo."""
    from e5omni.release import save_hub_folder

    model, processor = build_tiny_model(backbone, seed, head_dim, **embedding_kwargs)
    return save_hub_folder(model, processor, out_dir)


def build_tiny_backbone(backbone: str, seed: int = 0, head_dim: int = 16):
    """Build `(backbone_model, backbone_processor)` in memory: the bare transformers model that AutoModel makes of the
    kind's backbone config (no LM head; `forward(...).last_hidden_state`), seeded, in eval mode, and the real
    transformers processor with the tiny media budgets. Every kind of `BACKBONE_MODEL_TYPES`, the Qwen3 ones included
    (for those this is the only builder until E5OmniConfig accepts them)."""
    from transformers import AutoModel

    if backbone not in BACKBONE_MODEL_TYPES:
        raise ValueError(f"backbone must be one of {tuple(BACKBONE_MODEL_TYPES)}, got {backbone!r}")
    tokenizer = build_tokenizer(backbone)
    processor = build_processor(backbone, tokenizer)
    config = build_backbone_config(backbone, tokenizer, head_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    model.eval()
    return model, processor
