"""E5OmniProcessor: typed omni items -> one chat message each -> backbone processor tensors + `modality_mask`.

An *item* is one of

- a `str`: always text, never read as a path or a URL;
- a `PIL.Image.Image`, or a 3-D image array (numpy array or torch tensor), the same as ``{"image": array}``;
- a `dict` with any of the keys ``"text"``, ``"image"`` (PIL image, image array or path), ``"audio"``
  (``{"array", "sampling_rate"}``, a 1-D 16 kHz float array, or a path), ``"video"`` (uint8 frames ``(T, H, W, 3)`` or
  ``(T, 3, H, W)``, or a path), and ``"instruction"`` (query side; rendered after the query prompt, before the text).

Image arrays (numpy or torch) are ``(H, W)`` greyscale or ``(H, W, C)`` / ``(C, H, W)`` with C = 1 (greyscale), 3 (RGB)
or 4 (RGBA; alpha dropped, as for a PIL RGBA image), uint8, or float in [0, 1] scaled like torchvision's
``to_pil_image`` (``mul(255)`` then truncation to uint8). They become the PIL image ``Image.fromarray`` makes of the
channels-last uint8 pixels, so they embed exactly like that image. A layout whose channel axis cannot be told (both
ends, or neither, of size 1/3/4; for videos both or neither of dims 1 and 3 of size 3) is refused, never guessed.
Audio is never a bare array: a bare 1-D, 2-D or 4-D array is refused (wrap it as ``{"audio": ...}``, ``{"image": ...}``
or ``{"video": ...}``).

Paths are only ever taken from the media keys. Every item becomes one user message: its media parts (image, audio,
video, in that order) then one text part (prompt + instruction + text), rendered with the backbone chat template
(``add_generation_prompt=True``) and followed by the eos suffix, whose final hidden state is the embedding. The config
can move the instruction into a system message before the user turn (``instruction_role="system"``, with
``default_instruction`` when the item has none), reorder the media parts (``media_order``) and drop the suffix
(``eos_suffix=""``): Qwen3-VL-Embedding's conventions (docs/backbones.md).

The text part (and the system text) is tokenised literally: strings such as ``<|im_end|>``, ``<|endoftext|>``, ``<|IMAGE|>`` or
``<|vision_start|>`` in a text, an instruction or a prompt stay plain text, for every backbone kind. The backbone
processor only ever sees the template with the text part left empty (so it expands only the template's own media
placeholders), and the text's ids (`E5OmniProcessor.literal_ids`, which never matches an added token) are spliced in
before the template tail (see `E5OmniProcessor.process_decoded`).

Media are decoded defensively (see `docs/ARCHITECTURE.md`): image headers are checked against a pixel cap and a format
allow-list before decoding, audio is read no further than the budget, videos are sampled by seeking. Every refusal is an
`E5OmniInputError` subclass naming the item index and what was expected.
"""

from __future__ import annotations

import json
import logging
import sys
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import PILImageResampling

from .configuration_e5omni import MODALITIES, E5OmniConfig
from .inputs_e5omni import (
    IMAGE_LAYOUTS,
    VIDEO_LAYOUTS,
    BatchPreparer,
    E5OmniInputError,
    ItemWarning,
    MediaDecodeError,
    MediaShapeError,
    MediaTooLargeError,
    OmniItem,
    Prepared,
    RemoteMediaError,
    UnsupportedModalityError,
    check_item,
    check_items,
    in_order,
    prepare,
    prepared_batches,
)
from .media_e5omni import (
    SAMPLING_RATE,
    image_from_array,
    load_audio,
    load_image,
    load_video,
    normalize_item,
    resize_image,
    video_frames_from_array,
)

logger = logging.getLogger(__name__)

PROCESSOR_CONFIG = "processor_config.json"

# Keys of a processed batch that are indexed by item (first dimension = batch size).
ITEM_KEYS = (
    "input_ids",
    "attention_mask",
    "modality_mask",
    "content_hash",
    "mm_token_type_ids",
    "video_audio",
    "audio_rows",
)
# Media keys, grouped by the modality whose items they belong to, with the row-count rule of each.
_MEDIA_GROUPS = {
    "image": ("pixel_values", "image_grid_thw", ()),
    "video": ("pixel_values_videos", "video_grid_thw", ("video_second_per_grid",)),
}
_AUDIO_KEYS = ("input_features", "feature_attention_mask")


# Stands for the text part while the template is rendered (private-use characters no template produces itself).
_TEXT_MARK = "\ue000e5omni-text\ue001"
_SYSTEM_MARK = "\ue000e5omni-system\ue001"

#: The transformers processor classes a saved e5-omni folder may name as its backbone processor.
BACKBONE_PROCESSOR_CLASSES = (
    "Qwen2_5OmniProcessor",
    "Qwen2VLProcessor",
    "Qwen2_5_VLProcessor",
    "Qwen3VLProcessor",
    "Qwen3OmniMoeProcessor",
)
# Per-token keys of a backbone batch and what a spliced text token holds in each (None: the text's own ids).
_TOKEN_FILL = {"input_ids": None, "attention_mask": 1, "mm_token_type_ids": 0}


@dataclass
class _Rendered:
    template: str  # chat template + eos suffix with the text part left empty: what the backbone processor gets
    text_ids: list[int] | None  # literal ids of the text part (None: the item has no text part)
    tail_ids: list[int] | None  # ids of the template after the text part (<|im_end|> ... eos suffix)
    head_length: int = 0  # characters of `template` before the text part
    system_ids: list[int] | None = None  # literal ids of the system text (instruction_role="system"), else None
    system_head_ids: list[int] | None = None  # ids of the template before the system text
    system_length: int = 0  # characters of `template` before the system text


class ResizeRuleError(RuntimeError):
    """The backbone processor resized media to another size than e5-omni predicted (a changed transformers rule)."""


# ------------------------------------------------------------------------------------------------- the processor
def _smart_resize_of(processor: Any):
    """(smart_resize, factor) of a Qwen image / video processor that resizes with torchvision bicubic + antialias
    (`resize_frame`'s op), else None: a PIL-backend processor resizes with PIL, so nothing is resized ahead of it."""
    from transformers.image_processing_backends import TorchvisionBackend

    resample = getattr(processor, "resample", None)
    if not isinstance(processor, TorchvisionBackend) or resample is None:
        return None
    smart_resize = getattr(sys.modules.get(type(processor).__module__), "smart_resize", None)
    if smart_resize is None or int(resample) != int(PILImageResampling.BICUBIC):
        return None
    return smart_resize, processor.patch_size * processor.merge_size


def _splice_ids(row: dict, cut: int, ids: list[int]) -> None:
    """Insert the literal token `ids` into every per-token tensor of one processed `row` at position `cut`
    (input ids themselves; the other keys get their fill value, `_TOKEN_FILL`)."""
    for key, value in row.items():
        fill = _TOKEN_FILL[key]
        insert = (
            torch.tensor(ids, dtype=value.dtype) if fill is None else torch.full((len(ids),), fill, dtype=value.dtype)
        )
        row[key] = torch.cat([value[:cut], insert, value[cut:]])


class E5OmniProcessor:
    """Turns omni items into backbone inputs for `E5OmniModel`.

    Wraps the backbone's own transformers processor (`Qwen2_5OmniProcessor`, `Qwen2VLProcessor`,
    `Qwen2_5_VLProcessor`) and the embedding contract of `E5OmniConfig` (prompts, eos suffix, media budgets).
    Loadable with `AutoProcessor.from_pretrained(path, trust_remote_code=True)`.
    """

    def __init__(self, backbone_processor, config: E5OmniConfig, pre_resize: bool = True):
        self.backbone_processor = backbone_processor
        self._backbone_kind = type(backbone_processor).__name__
        self.config = config
        self.tokenizer = backbone_processor.tokenizer
        #: Resize images and video frames to the backbone processor's target size as they are decoded (`decode`);
        #: every batch then checks that the processor's grids are what that prediction said (`ResizeRuleError`).
        self.pre_resize = pre_resize

    # ------------------------------------------------------------------------------------------ persistence
    _auto_class = "AutoProcessor"

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoProcessor") -> None:
        """Called by `AutoProcessor` on remote-code classes; our save_pretrained always writes the auto_map."""
        cls._auto_class = auto_class

    def save_pretrained(self, save_directory, **kwargs):
        """Save the backbone processor files, then mark them loadable as `E5OmniProcessor` (auto_map)."""
        save_directory = Path(save_directory)
        self.backbone_processor.save_pretrained(save_directory, **kwargs)
        path = save_directory / PROCESSOR_CONFIG
        data = json.loads(path.read_text()) if path.exists() else {}
        data["backbone_processor_class"] = type(self.backbone_processor).__name__
        data["processor_class"] = "E5OmniProcessor"
        data["auto_map"] = {"AutoProcessor": "processing_e5omni.E5OmniProcessor"}
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return [str(path)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, config: E5OmniConfig | None = None, **kwargs):
        import transformers
        from transformers.utils import cached_file

        hub_kwargs = {
            k: kwargs[k]
            for k in ("revision", "token", "cache_dir", "local_files_only", "subfolder", "force_download")
            if k in kwargs
        }
        if config is None:  # our own config class: no Auto lookup, so no remote code is asked for
            config = E5OmniConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if not isinstance(config, E5OmniConfig) and getattr(config, "model_type", None) != "e5omni":
            raise ValueError(f"{pretrained_model_name_or_path} is not an e5-omni checkpoint (config.model_type)")
        resolved = cached_file(pretrained_model_name_or_path, PROCESSOR_CONFIG, **hub_kwargs)
        with open(resolved) as handle:
            class_name = json.load(handle).get("backbone_processor_class")
        if class_name not in BACKBONE_PROCESSOR_CLASSES:
            raise ValueError(f"unsupported backbone processor class {class_name!r} in {PROCESSOR_CONFIG}")
        # The backbone processor, tokenizer and media processors are stock transformers classes, loaded by class with
        # remote code off (the caller opted in, or not, for our own classes only). `config` is handed on so the
        # tokenizer does not look config.json up through AutoConfig, which cannot know "e5omni" when only the
        # remote code defines it (it asked "Do you wish to run the custom code?" on stdin, or warned).
        backbone = getattr(transformers, class_name).from_pretrained(
            pretrained_model_name_or_path, config=config, trust_remote_code=False, **hub_kwargs
        )
        return cls(backbone, config)

    # ---------------------------------------------------------------------------------------------- messages
    def _instruction(self, item: OmniItem) -> str | None:
        instruction = item.instruction
        if not instruction or not instruction.strip():
            return None
        instruction = instruction.strip()
        if self.config.instruction_period and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
        return instruction

    def _system_part(self, item: OmniItem) -> str | None:
        """The system message's text (`instruction_role="system"`): the item's instruction or the default one."""
        if self.config.instruction_role != "system":
            return None
        instruction = self._instruction(item)
        if instruction is None:
            instruction = self.config.default_instruction.strip()
        return instruction

    def _text_part(self, item: OmniItem, role: str, prompt: str | None = None) -> str | None:
        if prompt is None:
            prompt = self.config.query_prompt if role == "query" else self.config.document_prompt
        body = item.text or ""
        instruction = self._instruction(item) if self.config.instruction_role == "user" else None
        if instruction:
            body = f"{instruction}\n{body}" if body else instruction
        text = f"{prompt}{body}"
        return text if text else None

    def literal_ids(self, text: str) -> list[int]:
        """Token ids of `text` read as plain text: no added or special token (``<|im_end|>``, ``<|IMAGE|>``, ...) is
        ever matched, whether the tokenizer marks it special or not.

        Runs the backend tokenizer's own normalizer, pre-tokenizer and BPE model, i.e. exactly what
        ``tokenizer(text)`` does between added tokens, so text without added-token strings gets the same ids as a plain
        call (tests/test_text_security.py checks this). ``split_special_tokens=True`` alone is not enough: it still
        matches added tokens that are not marked special."""
        backend = self.tokenizer.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
        ids = [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]
        reserved = self._reserved_ids()
        leaked = sorted({i for i in ids if i in reserved})
        if leaked:  # a BPE vocabulary that itself holds an added token: never let it through silently
            raise RuntimeError(f"the tokenizer's BPE model produced reserved token ids {leaked} for plain text")
        return ids

    def _reserved_ids(self) -> frozenset[int]:
        reserved = getattr(self, "_reserved", None)
        if reserved is None:
            reserved = frozenset(self.tokenizer.added_tokens_decoder) | frozenset(self.tokenizer.all_special_ids)
            self._reserved = reserved
        return reserved

    def _truncate_ids(self, ids: list[int], index: int | None) -> list[int]:
        if len(ids) <= self.config.max_length:
            return ids
        reason = (
            f"text of {len(ids)} tokens truncated to max_length={self.config.max_length}; the chat template tail "
            "and the eos suffix are kept"
        )
        warnings.warn(ItemWarning(reason, index), stacklevel=5)
        return ids[: self.config.max_length]

    def _pieces(self, item: OmniItem, role: str, index: int | None, prompt: str | None = None) -> _Rendered:
        """The chat template of one item with its text cut out: `template` (what the backbone processor sees, the
        text part and the system text left empty), the literal ids of the text part, the template tail that follows
        the text, and (`instruction_role="system"`) the literal ids of the system text and the template ids before
        it."""
        present = {"image": item.image, "audio": item.audio, "video": item.video}
        parts: list[dict] = [{"type": kind} for kind in self.config.media_order if present[kind] is not None]
        messages: list[dict] = []
        system = self._system_part(item)
        if system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": _SYSTEM_MARK}]})
        text = self._text_part(item, role, prompt)
        if text is not None:
            parts.append({"type": "text", "text": _TEXT_MARK})
        messages.append({"role": "user", "content": parts})
        rendered = self.backbone_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rendered += self.config.eos_suffix
        system_ids = system_head_ids = None
        system_length = 0
        if system is not None:
            if rendered.count(_SYSTEM_MARK) != 1:
                raise RuntimeError("the backbone chat template does not render the system message exactly once")
            system_head, rendered = rendered.split(_SYSTEM_MARK)
            system_length = len(system_head)
            rendered = system_head + rendered
            system_head_ids = self.tokenizer(system_head, add_special_tokens=False)["input_ids"]
            system_ids = self._truncate_ids(self.literal_ids(system), index)
        if text is None:
            return _Rendered(rendered, None, None, 0, system_ids, system_head_ids, system_length)
        if rendered.count(_TEXT_MARK) != 1:
            raise RuntimeError("the backbone chat template does not render the text part exactly once")
        head, tail = rendered.split(_TEXT_MARK)
        tail_ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
        ids = self._truncate_ids(self.literal_ids(text), index)
        return _Rendered(head + tail, ids, tail_ids, len(head), system_ids, system_head_ids, system_length)

    def render(self, item: OmniItem, role: str, index: int = 0, prompt: str | None = None) -> str:
        """The string the backbone sees for one item, for display: chat template + eos suffix.

        The text part (prompt + instruction + text) and the system text (`instruction_role="system"`) are shown in
        place but never tokenised from this string: their ids are `literal_ids`, spliced into the template's ids (see
        `process_decoded`), so text can never become a control or media token. `prompt` overrides the role's prompt
        from the config (sentence-transformers passes its own prompts here)."""
        rendered = self._pieces(item, role, index, prompt)
        out = rendered.template
        if rendered.text_ids is not None:
            cut = rendered.head_length
            out = out[:cut] + self.tokenizer.decode(rendered.text_ids) + out[cut:]
        if rendered.system_ids is not None:
            cut = rendered.system_length
            out = out[:cut] + self.tokenizer.decode(rendered.system_ids) + out[cut:]
        return out

    # ----------------------------------------------------------------------------------------------- decode
    def video_frame_size(self, num_frames: int, height: int, width: int) -> tuple[int, int] | None:
        """(height, width) the backbone's video processor resizes the frames of a `num_frames`-frame video of
        `height` x `width` to, under this model's budgets: its own rule (`smart_resize` to multiples of patch x
        merge size between video_min_pixels and video_max_pixels, the per-frame cap an even share of
        `max_video_tokens`, as `cap_pixels_per_frame=True` asks). None for a video processor of another kind or
        resample (frames are then handed over at decoded size)."""
        video_processor = getattr(self.backbone_processor, "video_processor", None)
        found = _smart_resize_of(video_processor)
        if found is None:
            return None
        smart_resize, factor = found
        min_pixels, max_pixels = self.config.video_min_pixels, self.config.video_max_pixels
        if type(video_processor).__name__ == "Qwen3VLVideoProcessor":
            # Qwen3-VL's rule (transformers 5.25): num_frames first, the budget counts all frames of the clip, and
            # the per-frame cap is max(min(max_video_tokens * factor^2, longest_edge // T), 1.05 * shortest_edge)
            frame_cap = video_processor.max_video_tokens * factor * factor
            per_frame = max(min(frame_cap, max_pixels // num_frames), int(min_pixels * 1.05))
            return tuple(
                smart_resize(
                    num_frames,
                    height,
                    width,
                    temporal_factor=video_processor.temporal_patch_size,
                    factor=factor,
                    min_pixels=min_pixels,
                    max_pixels=per_frame * num_frames,
                )
            )
        total = int(video_processor.max_video_tokens * factor * factor * 0.9)
        max_pixels = max(
            min(max_pixels, total * video_processor.temporal_patch_size // num_frames), int(min_pixels * 1.05)
        )
        return tuple(smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels))

    def image_size(self, height: int, width: int) -> tuple[int, int] | None:
        """(height, width) the backbone's image processor resizes a `height` x `width` image to under this model's
        budgets (its own `smart_resize` between min_pixels and max_pixels); None for another kind of processor."""
        found = _smart_resize_of(getattr(self.backbone_processor, "image_processor", None))
        if found is None:
            return None
        smart_resize, factor = found
        return tuple(
            smart_resize(
                height, width, factor=factor, min_pixels=self.config.min_pixels, max_pixels=self.config.max_pixels
            )
        )

    def decode(self, item: Any, index: int) -> OmniItem:
        """One checked item -> `OmniItem` under this model's budgets (`normalize_item`): what every path of this
        package decodes items with. Video frames are resized as they are decoded (`video_frame_size`) and an image
        right after it is decoded (`image_size`), to the sizes the backbone processor would resize them to, with its
        resize (torchvision bicubic + antialias on uint8): the processor's own resize is then the identity, and a
        36 MP photo costs its decoded pixels once instead of the processor's copies of them (peak 620 -> ~250 MB)."""
        if not self.pre_resize:
            return normalize_item(item, index, self.config)
        out = normalize_item(item, index, self.config, frame_size=self.video_frame_size)
        if out.image is not None:
            size = self.image_size(out.image.height, out.image.width)
            if size is not None:
                out.image = resize_image(out.image, size)
        return out

    # ------------------------------------------------------------------------------------------------- call
    def __call__(self, items, role: str = "document", return_tensors: str = "pt") -> BatchFeature:
        """Process a batch of items for `role` ("query" or "document")."""
        if role not in ("query", "document"):
            raise ValueError(f"role must be 'query' or 'document', got {role!r}")
        items = check_items(items, self.config.modalities)
        decoded = [self.decode(item, i) for i, item in enumerate(items)]
        return self.process_decoded(decoded, role, return_tensors=return_tensors)

    def process_decoded(
        self,
        decoded: list[OmniItem],
        role: str,
        return_tensors: str = "pt",
        prompt: str | None = None,
        indices: list[int] | None = None,
        where: list[str] | None = None,
    ) -> BatchFeature:
        """Tensors for items that were already normalised (`normalize_item`).

        `indices` are the items' positions in the caller's list (`encode` sorts items into batches), used in every
        error and `ItemWarning` about an item; `where` replaces the labels of the other messages (a
        `ResizeRuleError`: "item 3" by default).

        Text is airtight against control tokens: the backbone processor gets each item's chat template with an empty
        text part (so it expands only the media placeholders the template itself holds), and the literal ids of the
        text part (`literal_ids`) are then spliced into every row just before the template tail
        (``<|im_end|>`` ... eos suffix), with `attention_mask` 1 and `mm_token_type_ids` 0, and the rows re-padded."""
        if return_tensors != "pt":
            raise ValueError(
                f"E5OmniProcessor returns torch tensors only (return_tensors='pt'), got {return_tensors!r}"
            )
        indices = list(range(len(decoded))) if indices is None else list(indices)
        if where is None:
            where = [f"item {i}" for i in indices]
        rendered = [self._pieces(item, role, i, prompt) for item, i in zip(decoded, indices, strict=True)]
        images = [d.image for d in decoded if d.image is not None]
        audio = [d.audio for d in decoded if d.audio is not None]
        videos = [d.video for d in decoded if d.video is not None]
        kwargs: dict[str, Any] = {"text": [r.template for r in rendered], "padding": True, "return_tensors": "pt"}
        size = {"shortest_edge": self.config.min_pixels, "longest_edge": self.config.max_pixels}
        if images:
            kwargs["images"] = images
            kwargs["images_kwargs"] = {"size": size}
        if videos:
            kwargs["videos"] = videos
            kwargs["videos_kwargs"] = {
                "size": {"shortest_edge": self.config.video_min_pixels, "longest_edge": self.config.video_max_pixels},
                "do_sample_frames": False,
                "fps": self.config.fps,
                "cap_pixels_per_frame": True,
            }
            if self._backbone_kind == "Qwen3VLProcessor":
                # its "<t seconds>" frame stamps come from the metadata (else it warns and assumes 24 fps): frames
                # are taken at the config's fps (arrays as given, files sampled uniformly at about that rate)
                kwargs["video_metadata"] = [
                    {"fps": self.config.fps, "frames_indices": list(range(len(v))), "total_num_frames": len(v)}
                    for v in videos
                ]
        with_track = any(d.video_audio is not None for d in decoded)
        if with_track:  # a video's audio track: an audio slot without a placeholder, interleaved with its frames
            audio, from_video, video_number = [], [], 0
            for d in decoded:
                if d.audio is not None:
                    audio.append(d.audio)
                    from_video.append(None)
                if d.video is not None:
                    if d.video_audio is not None:
                        audio.append(d.video_audio)
                        from_video.append(video_number)
                    video_number += 1
            kwargs["load_audio_from_video"] = True
            kwargs["audio_from_video_indices"] = from_video
        if audio:
            kwargs["audio"] = audio
            kwargs["audio_kwargs"] = {"sampling_rate": SAMPLING_RATE}
            if self._backbone_kind == "Qwen3OmniMoeProcessor":
                # its class default pads features to the batch's longest clip, which moves a shorter clip's last mel
                # frames with its batch (9.8e-05, docs/backbones.md): pad to the extractor's chunk_length instead
                # (what Qwen2.5-Omni's processor does); text padding moves to text_kwargs so the two do not collide
                kwargs["audio_kwargs"]["padding"] = "max_length"
                kwargs["audio_kwargs"]["truncation"] = False
                kwargs["text_kwargs"] = {"padding": kwargs.pop("padding")}
        batch = self.backbone_processor(**kwargs)
        if self.pre_resize:
            self._check_resize(batch, decoded, where)
        self._splice_text(batch, rendered)
        batch["modality_mask"] = torch.tensor([d.modality_mask for d in decoded], dtype=torch.bool)
        if with_track:  # which rows' videos carry their audio (the model's position ids), and audio rows per item
            batch["video_audio"] = torch.tensor([d.video_audio is not None for d in decoded], dtype=torch.bool)
            batch["audio_rows"] = torch.tensor([d.audio_rows for d in decoded], dtype=torch.long)
        return batch

    def _check_resize(self, batch, decoded: list[OmniItem], where: list[str]) -> None:
        """Images and frames are resized ahead of the backbone processor to the size its own rule gives
        (`image_size`, `video_frame_size`, which re-derive that rule), so its resize is the identity. If a transformers
        release changed the rule, the pixels would be resized twice, silently, and embeddings would drift: so every
        batch checks that the processor's grids (`image_grid_thw` / `video_grid_thw`, in patches) are exactly the
        predicted size of what it was given, and raises `ResizeRuleError` naming the item otherwise."""
        checks = (
            ("image", "image_grid_thw", "image_processor", lambda d: (d.image.height, d.image.width), self.image_size),
            (
                "video",
                "video_grid_thw",
                "video_processor",
                lambda d: tuple(d.video.shape[1:3]),
                lambda height, width, d: self.video_frame_size(len(d.video), height, width),
            ),
        )
        for kind, grid_key, processor_name, size_of, predict in checks:
            owners = [(d, label) for d, label in zip(decoded, where, strict=True) if getattr(d, kind) is not None]
            if not owners:
                continue
            patch = getattr(getattr(self.backbone_processor, processor_name, None), "patch_size", None)
            grids = batch.get(grid_key)
            if patch is None or grids is None or len(grids) != len(owners):
                continue  # not a Qwen grid: nothing was resized ahead (image_size / video_frame_size say None)
            for (d, label), grid in zip(owners, grids.tolist(), strict=True):
                height, width = size_of(d)
                expected = predict(height, width) if kind == "image" else predict(height, width, d)
                if expected is None:
                    continue
                got = (int(grid[1]) * patch, int(grid[2]) * patch)
                if got != tuple(expected):
                    raise ResizeRuleError(
                        f"{label}: the backbone's {processor_name} turned a {height}x{width} {kind} into "
                        f"{got[0]}x{got[1]} pixels ({grid_key}), but e5-omni predicted {expected[0]}x{expected[1]} "
                        "from its copy of the processor's resize rule: this transformers version resizes "
                        "differently, so pixels resized ahead of it would be resized twice and the embeddings "
                        "would drift. Set `processor.pre_resize = False` (the backbone processor then resizes "
                        "full-size media itself) or use a transformers version this model was tested with"
                    )

    def _pads_left(self, mask: torch.Tensor) -> bool:
        """The side the backbone processor padded on (Qwen2.5-Omni's pads left, the VL ones right), read from its
        output; for an unpadded batch, the side it declares."""
        if bool((mask[:, 0] == 0).any()):
            return True
        if bool((mask[:, -1] == 0).any()):
            return False
        declared = getattr(self.backbone_processor, "text_kwargs", None)
        side = declared.get("padding_side") if isinstance(declared, dict) else None
        return (side or self.tokenizer.padding_side) == "left"

    def _splice_text(self, batch, rendered: list[_Rendered]) -> None:
        """Insert each item's literal text ids before its template tail (and its system text's ids after the template
        head that precedes them), in place; re-pad on the processor's side."""
        if all(r.text_ids is None and r.system_ids is None for r in rendered):
            return
        ids, mask = batch["input_ids"], batch["attention_mask"]
        per_token = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.shape == ids.shape]
        unknown = sorted(set(per_token) - set(_TOKEN_FILL))
        if unknown:
            raise RuntimeError(f"the backbone processor returned per-token keys {unknown} that cannot be spliced")
        rows = []
        for r, piece in enumerate(rendered):
            real = mask[r].bool()
            row = {key: batch[key][r][real] for key in per_token}
            if piece.text_ids is not None:
                n = len(piece.tail_ids)
                if row["input_ids"][len(row["input_ids"]) - n :].tolist() != piece.tail_ids:
                    raise RuntimeError("the template tail after the text part does not tokenise on its own")
                _splice_ids(row, len(row["input_ids"]) - n, piece.text_ids)
            if piece.system_ids is not None:
                cut = len(piece.system_head_ids)
                if row["input_ids"][:cut].tolist() != piece.system_head_ids:
                    raise RuntimeError("the template head before the system text does not tokenise on its own")
                _splice_ids(row, cut, piece.system_ids)
            rows.append(row)
        length = max(len(row["input_ids"]) for row in rows)
        left = self._pads_left(mask)
        pad_id = self.tokenizer.pad_token_id
        for key in per_token:
            pad = pad_id if key == "input_ids" else 0
            out = torch.full((len(rows), length), pad, dtype=batch[key].dtype)
            for r, row in enumerate(rows):
                value = row[key]
                if left:
                    out[r, length - len(value) :] = value
                else:
                    out[r, : len(value)] = value
            batch[key] = out

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)


# ----------------------------------------------------------------------------------------------- mini-batching
def _counts_before(mask: torch.Tensor, start: int, end: int) -> tuple[int, int]:
    mask = mask.long()
    return int(mask[:start].sum()), int(mask[:end].sum())


def slice_features(features: dict, start: int, end: int) -> dict:
    """Items `start:end` of a processed batch, with their media rows (used by GradCache mini-batching).

    Text keys are batch-first. Media are not: images are flattened patch rows (`pixel_values`, one block of
    `prod(image_grid_thw[j])` rows per image), videos likewise, and audio rows exist only for items that have audio.
    Each item has at most one image, one audio and one video (the item format), so `modality_mask` says which items own
    which media rows.
    """
    if "modality_mask" not in features:
        raise KeyError("slice_features needs 'modality_mask' to map media rows to items")
    mask = features["modality_mask"]
    batch = mask.shape[0]
    out = {}
    for key, value in features.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch and key in ITEM_KEYS:
            out[key] = value[start:end]
    for modality, (pixels_key, grid_key, extra_keys) in _MEDIA_GROUPS.items():
        if pixels_key not in features:
            continue
        first, last = _counts_before(mask[:, MODALITIES.index(modality)], start, end)
        if first == last:
            continue
        grid = features[grid_key]
        rows = torch.cat([grid.new_zeros(1), grid.prod(-1).cumsum(0)])
        out[pixels_key] = features[pixels_key][int(rows[first]) : int(rows[last])]
        out[grid_key] = grid[first:last]
        for extra in extra_keys:
            if extra in features:
                out[extra] = features[extra][first:last]
    if _AUDIO_KEYS[0] in features:
        # audio rows per item: its own audio and its video's track (`audio_rows`), else one per audio item
        rows_per_item = features.get("audio_rows")
        if rows_per_item is None:
            rows_per_item = mask[:, MODALITIES.index("audio")]
        first, last = _counts_before(rows_per_item, start, end)
        if first != last:
            for key in _AUDIO_KEYS:
                if key in features:
                    out[key] = features[key][first:last]
    known = set(ITEM_KEYS) | set(_AUDIO_KEYS)
    for pixels_key, grid_key, extra_keys in _MEDIA_GROUPS.values():
        known |= {pixels_key, grid_key, *extra_keys}
    for key, value in features.items():
        if key in known:
            continue
        if isinstance(value, torch.Tensor):  # never drop what we cannot map to items
            raise KeyError(f"slice_features does not know how to slice the tensor {key!r}")
        out[key] = value  # scalars and flags are shared by every slice
    return out


__all__ = [
    "BatchPreparer",
    "in_order",
    "ItemWarning",
    "Prepared",
    "prepare",
    "ResizeRuleError",
    "prepared_batches",
    "IMAGE_LAYOUTS",
    "SAMPLING_RATE",
    "VIDEO_LAYOUTS",
    "E5OmniProcessor",
    "check_item",
    "load_audio",
    "load_image",
    "load_video",
    "video_frames_from_array",
    "E5OmniInputError",
    "UnsupportedModalityError",
    "MediaTooLargeError",
    "MediaDecodeError",
    "MediaShapeError",
    "RemoteMediaError",
    "OmniItem",
    "check_items",
    "image_from_array",
    "normalize_item",
    "slice_features",
]
