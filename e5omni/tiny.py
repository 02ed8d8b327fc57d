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


def chat_template(backbone: str) -> str:
    """The chat template shipped with a tiny backbone of kind `backbone`."""
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

    media = _OMNI_TOKENS if backbone == "qwen2.5-omni" else _VL_TOKENS
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


def build_processor(backbone: str, tokenizer=None):
    """The real transformers processor for `backbone`, with small media budgets."""
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


def build_backbone_config(backbone: str, tokenizer, head_dim: int = 16):
    """A tiny backbone config whose special-token ids come from `tokenizer`; `head_dim` of its language model."""
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

    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    tokenizer = build_tokenizer(backbone)
    backbone_processor = build_processor(backbone, tokenizer)
    backbone_config = build_backbone_config(backbone, tokenizer, head_dim)
    embedding_kwargs.setdefault("max_pixels", 56 * 56)
    embedding_kwargs.setdefault("min_pixels", 28 * 28)
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
