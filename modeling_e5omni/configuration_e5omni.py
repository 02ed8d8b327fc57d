"""E5OmniConfig: the backbone config plus the embedding contract.

Everything that defines an embedding lives here and is saved with the weights, so users never repeat it at encode
time: pooling, normalisation, prompts, the eos suffix, the modality list, media budgets, the temperature
initialisation and whether whitening is applied.
"""

from __future__ import annotations

import ipaddress
import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

#: The base modalities, in the order used by every `modality_mask` and by `log_temperature`.
MODALITIES = ("text", "image", "audio", "video")

#: Backbone model types we serve, and the modalities each can take.
BACKBONE_MODALITIES = {
    "qwen2_5_omni_thinker": ("text", "image", "audio", "video"),
    "qwen2_vl": ("text", "image", "video"),
    "qwen2_5_vl": ("text", "image", "video"),
    "qwen3_vl": ("text", "image", "video"),
    "qwen3_omni_moe_thinker": ("text", "image", "audio", "video"),
}

#: Image container formats the processor decodes (Pillow format names). MPO is a multi-picture JPEG (camera
#: files): its first picture is decoded; a JPEG entry admits it in configs saved before it was listed.
DEFAULT_IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF")


@strict(accept_kwargs=True)
class E5OmniConfig(PreTrainedConfig):
    r"""
    backbone_config (`dict` or `PreTrainedConfig`):
        Config of the backbone (`qwen2_5_omni_thinker`, `qwen2_vl`, `qwen2_5_vl`, `qwen3_vl` or
        `qwen3_omni_moe_thinker`).
    pooling (`str`, defaults to `"last"`):
        Pooling over the backbone's final hidden states. Only `"last"` (the last non-padding position, found from the
        attention mask so that left and right padding both work) is used by e5-omni.
    normalize (`bool`, defaults to `True`):
        L2-normalise embeddings (cosine similarity = dot product).
    query_prompt / document_prompt (`str`):
        Text prefixes of queries (`"Query: "`) and documents (empty), as in the released checkpoints.
    eos_suffix (`str`, defaults to `"<|endoftext|>"`):
        Appended after the rendered chat template; its final hidden state is the embedding. `""` appends nothing:
        the template's own last token (the generation prompt's `"\n"`) is pooled, as Qwen3-VL-Embedding does.
    instruction_role (`str`, defaults to `"user"`):
        Where an item's `"instruction"` goes. `"user"`: in the user turn, after the prompt and before the text
        (e5-omni). `"system"`: as the text of a system message before the user turn, and `default_instruction` when the
        item has none (Qwen3-VL-Embedding). Either way the instruction is tokenised literally.
    default_instruction (`str`, *optional*):
        The system message of items without an instruction; required (non-empty) when `instruction_role="system"`.
    instruction_period (`bool`, defaults to `False`):
        Strip the instruction and end it with `"."` unless its last character is Unicode punctuation (category P*),
        as Qwen3-VL-Embedding's `format_model_input` does.
    media_order (`list[str]`, *optional*):
        Order of an item's media parts in its user turn; defaults to `["image", "audio", "video"]` (e5-omni).
        Qwen3-VL-Embedding puts the video before the image: `["video", "image", "audio"]`.
    modalities (`list[str]`):
        Modalities this checkpoint accepts; derived from the backbone when not given.
    max_pixels / min_pixels (`int`):
        Pixel budget of one image or one video frame after resizing. Images whose header declares more than
        `max_decode_pixels` are refused before decoding.
    max_decode_pixels (`int`, defaults to 40_000_000):
        Largest image (width x height, from the header) the processor agrees to decode at all.
    video_max_pixels / video_min_pixels (`int`, *optional*):
        Pixel budget of one video frame; defaults to `max_pixels` / `min_pixels`. Converted checkpoints record the
        backbone processor's own video defaults here so their embeddings do not change.
    max_frames (`int`) / fps (`float`):
        Video files give `duration * fps` frames (qwen-omni-utils' rule: clamped to [4, max_frames] and to the
        clip's frame count, floored to an even number), spread uniformly over the whole clip and fetched by
        seeking. Video arrays are taken as given, uniformly subsampled to `max_frames`.
    max_audio_seconds (`float`):
        Audio longer than this is truncated (with a warning) before feature extraction; so is a video's audio track.
    use_audio_in_video (`bool`, *optional*):
        Whether a video file's audio track is embedded with its frames (Qwen2.5-Omni interleaves them in 2-second
        chunks, as the model card's `process_mm_info(..., use_audio_in_video=True)` path does); the item's modality
        mask then shows audio too. Defaults to True where the backbone takes audio (what the released e5-omni models
        do) and False otherwise; True on a backbone without audio is refused. Videos without an audio track, and
        video arrays, are embedded from their frames alone.
    max_length (`int`, defaults to 512):
        Token budget of one item; longer text is truncated, keeping the template tail and the eos suffix.
    temperature_init (`float`, defaults to 0.02):
        Initial per-modality temperature tau_0 (the paper: robust in [0.015, 0.03]).
    temperature_min / temperature_max (`float`):
        Range tau is clamped to during training.
    whitening (`bool`, defaults to `False`):
        Whiten the unit embeddings with the stored transform, then renormalise. Off by default, like the released
        models; the statistics are still collected in training so a user can switch it on later.
    whitening_eps (`float`, defaults to 1e-3):
        Relative ridge of the ZCA transform: (C + eps * mean(eig C) * I)^(-1/2).
    whitening_momentum (`float`, defaults to 0.01) / track_whitening_stats (`bool`):
        Running statistics of training embeddings (exact average for the first 1/momentum updates, then EMA).
    image_formats (`list[str]`):
        Allow-list of image container formats.
    allow_remote_media (`bool`, defaults to `False`):
        Whether URL strings in media keys may be fetched. Off: nothing reaches the network. On: http(s) only, on
        every redirect hop too (other schemes are refused), at most `max_remote_bytes` per body (default 200 MB),
        failures typed (`RemoteMediaError`, its `rule` says which check refused). See docs/remote-media.md.
    allow_private_remote_media (`bool`, defaults to `False`):
        Whether hosts resolving to loopback, private, link-local, shared (100.64/10), site-local or reserved
        addresses may be fetched (a host is refused when ANY of its addresses is one). Unspecified (0.0.0.0, ::),
        multicast and broadcast addresses are never fetched.
    allowed_remote_networks (`list[str]`, *optional*):
        Networks (CIDR, e.g. `"10.20.0.0/16"`, or single addresses) fetched although they are not public: a narrower
        opt-in than `allow_private_remote_media` (an intranet media server, but not 169.254.169.254).
    remote_timeout_seconds (`float`, defaults to 30):
        Total time one fetch may take: name resolution, connection, TLS, every redirect hop and the whole body.
    max_remote_redirects (`int`, defaults to 5):
        Redirects followed for one URL; each hop passes the same scheme, address and size checks.
    matryoshka_dimensions (`list[int]`, *optional*):
        The embedding dimensions the model was trained to be truncated to (Matryoshka training, largest first, the
        full dimension included); written by the trainer. `truncate_dim` to any other dimension still works but
        warns. vLLM reads the same key (`matryoshka_dimensions` in config.json) to accept `dimensions`. None: the
        model records no Matryoshka training.
    """

    model_type = "e5omni"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_5_omni_thinker"),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    pooling: str = "last"
    normalize: bool = True
    query_prompt: str = "Query: "
    document_prompt: str = ""
    eos_suffix: str = "<|endoftext|>"
    instruction_role: str = "user"
    default_instruction: str | None = None
    instruction_period: bool = False
    media_order: list[str] | None = None
    modalities: list[str] | None = None
    max_pixels: int = 1280 * 28 * 28
    min_pixels: int = 4 * 28 * 28
    video_max_pixels: int | None = None
    video_min_pixels: int | None = None
    max_decode_pixels: int = 40_000_000
    max_frames: int = 32
    fps: float = 2.0
    max_audio_seconds: float = 30.0
    use_audio_in_video: bool | None = None
    max_length: int = 512
    temperature_init: float = 0.02
    temperature_min: float = 0.005
    temperature_max: float = 1.0
    whitening: bool = False
    whitening_eps: float = 1e-3
    whitening_momentum: float = 0.01
    track_whitening_stats: bool = True
    image_formats: list[str] | None = None
    allow_remote_media: bool = False
    max_remote_bytes: int = 200_000_000
    allow_private_remote_media: bool = False
    allowed_remote_networks: list[str] | None = None
    remote_timeout_seconds: float = 30.0
    max_remote_redirects: int = 5
    matryoshka_dimensions: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        backbone_type = self.backbone_config.model_type
        if backbone_type not in BACKBONE_MODALITIES:
            raise ValueError(
                f"backbone_config.model_type must be one of {sorted(BACKBONE_MODALITIES)}, got {backbone_type!r}"
            )
        if self.modalities is None:
            self.modalities = list(BACKBONE_MODALITIES[backbone_type])
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"modalities must be a subset of {MODALITIES}, got unknown {unknown}")
        if self.pooling != "last":
            raise ValueError(f"pooling must be 'last' (the e5-omni contract), got {self.pooling!r}")
        if self.image_formats is None:
            self.image_formats = list(DEFAULT_IMAGE_FORMATS)
        if self.instruction_role not in ("user", "system"):
            raise ValueError(f"instruction_role must be 'user' or 'system', got {self.instruction_role!r}")
        if self.instruction_role == "system" and not (
            isinstance(self.default_instruction, str) and self.default_instruction.strip()
        ):
            raise ValueError(
                "instruction_role='system' needs a non-empty default_instruction (the system message of items "
                f"without an instruction), got {self.default_instruction!r}"
            )
        if not isinstance(self.eos_suffix, str):
            raise ValueError(f"eos_suffix must be a string ('' for none), got {self.eos_suffix!r}")
        if self.media_order is None:
            self.media_order = ["image", "audio", "video"]
        if sorted(self.media_order) != ["audio", "image", "video"]:
            raise ValueError(f"media_order must list 'image', 'audio' and 'video' once each, got {self.media_order!r}")
        if not 0 < self.temperature_min <= self.temperature_init <= self.temperature_max:
            raise ValueError(
                "temperatures must satisfy 0 < temperature_min <= temperature_init <= temperature_max, got "
                f"{self.temperature_min}, {self.temperature_init}, {self.temperature_max}"
            )
        for name in ("max_pixels", "min_pixels", "max_frames", "max_length", "max_decode_pixels", "max_remote_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (isinstance(self.remote_timeout_seconds, int | float) and 0 < self.remote_timeout_seconds < math.inf):
            raise ValueError(f"remote_timeout_seconds must be a positive number, got {self.remote_timeout_seconds!r}")
        if isinstance(self.max_remote_redirects, bool) or not (
            isinstance(self.max_remote_redirects, int) and 0 <= self.max_remote_redirects <= 30
        ):
            raise ValueError(f"max_remote_redirects must be an integer in [0, 30], got {self.max_remote_redirects!r}")
        for position, network in enumerate(self.allowed_remote_networks or []):
            try:
                ipaddress.ip_network(network, strict=False)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"allowed_remote_networks[{position}] must be a network like '10.20.0.0/16' or an address, "
                    f"got {network!r}"
                ) from err
        if self.video_max_pixels is None:
            self.video_max_pixels = self.max_pixels
        if self.video_min_pixels is None:
            self.video_min_pixels = self.min_pixels
        if self.min_pixels > self.max_pixels or self.video_min_pixels > self.video_max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels (images and video frames)")
        if self.max_audio_seconds <= 0 or self.fps <= 0:
            raise ValueError("max_audio_seconds and fps must be positive")
        if self.matryoshka_dimensions is not None:
            dims = self.matryoshka_dimensions
            size = self.hidden_size
            for position, dim in enumerate(dims):
                if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= size:
                    raise ValueError(f"matryoshka_dimensions[{position}] must be an int in [1, {size}], got {dim!r}")
            if len(set(dims)) != len(dims):
                raise ValueError(f"matryoshka_dimensions must not repeat a dimension, got {dims}")
            self.matryoshka_dimensions = sorted(dims, reverse=True)
        takes_audio_video = "audio" in self.modalities and "video" in self.modalities
        if self.use_audio_in_video is None:
            self.use_audio_in_video = takes_audio_video
        elif self.use_audio_in_video and not takes_audio_video:
            raise ValueError(
                f"use_audio_in_video=True needs a backbone that takes audio and video; modalities are {self.modalities}"
            )

    @property
    def hidden_size(self) -> int:
        """Embedding dimension D: the backbone's text hidden size."""
        backbone = self.backbone_config
        text = getattr(backbone, "text_config", None)
        return int(text.hidden_size if text is not None else backbone.hidden_size)

    @property
    def log_temperature_bounds(self) -> tuple[float, float]:
        return math.log(self.temperature_min), math.log(self.temperature_max)

    def template_departures(self) -> list[str]:
        """The prompt-layout fields set away from e5-omni's own message (instruction in the user turn, media image /
        audio / video then text, an eos suffix, no added period): exports that re-render the message in another
        template (vLLM, stock sentence-transformers) refuse a model with any, rather than embed it differently."""
        departures = []
        if self.instruction_role != "user":
            departures.append(f"instruction_role={self.instruction_role!r}")
        if self.instruction_period:
            departures.append("instruction_period=True")
        if list(self.media_order) != ["image", "audio", "video"]:
            departures.append(f"media_order={list(self.media_order)!r}")
        if not self.eos_suffix:
            departures.append("eos_suffix=''")
        return departures

    def untrained_truncation(self, dim: int | None) -> str | None:
        """A warning text when `dim` is a truncation this model records no Matryoshka training for (None when it
        is untruncated, trained, or the model records no dimensions); callers warn with it, never refuse."""
        dims = self.matryoshka_dimensions
        if dim is None or not dims or dim in dims or dim == self.hidden_size:
            return None
        return (
            f"truncate_dim={dim}: this model was trained (Matryoshka) for dimensions {dims} only; vectors truncated "
            f"to {dim} were never trained to be cut and may retrieve worse than the nearest trained dimension"
        )


__all__ = ["E5OmniConfig", "MODALITIES", "BACKBONE_MODALITIES"]
