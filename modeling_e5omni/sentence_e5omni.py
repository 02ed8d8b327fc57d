"""The sentence-transformers input module of e5-omni (shipped next to the weights, used via modules.json).

`SentenceTransformer(folder, trust_remote_code=True)` builds [E5OmniSTModule, Pooling(D, "lasttoken"), Normalize()]:
this module turns omni items into backbone inputs with `E5OmniProcessor` and returns the backbone's
`token_embeddings`; sentence-transformers' own last-token pooling and normalisation then give exactly the vectors of
`E5OmniModel.encode_*`. Prompts come from config_sentence_transformers.json ("query": "Query: ", "document": "").
When whitening is enabled in the config the folder lists [E5OmniSTModule, Normalize()] instead and this module emits
the whitened `sentence_embedding` itself.

What sentence-transformers 6.2 asks of a first module, and how this one answers:

- inputs: our items (str, PIL image, dicts of text/image/audio/video/instruction) and chat messages
  (`{"role": "user", "content": [{"type": "image", "image": ...}, {"type": "text", "text": ...}]}`, or a list holding
  one such message): sentence-transformers accepts a dict that combines modalities, or a batch that mixes them, only
  when `modalities` lists "message", and then hands the raw inputs to `preprocess`, which turns each message into an
  item (`message_to_item`; one user turn, no system prompt: anything else is an `E5OmniMessageError`).
- `max_seq_length` is the text-token budget `config.max_length` (user text is truncated to it before the chat
  template); setting it changes the truncation.
- `token_embeddings` come back with the real tokens first in every row (the Omni processor pads on the left), so
  `encode(..., output_value="token_embeddings")`, which cuts each row after its last real token, holds no padding.
- `save` adds the model's `requirements` to config_sentence_transformers.json, and the model card that
  `SentenceTransformer.save` writes loads the model with `trust_remote_code=True`.

This file imports sentence_transformers; `modeling_e5omni` itself never imports it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from typing import Any

import sentence_transformers
import torch
from sentence_transformers.base.modules.input_module import InputModule
from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

from .configuration_e5omni import MODALITIES
from .modeling_e5omni import E5OmniModel
from .processing_e5omni import (
    E5OmniInputError,
    E5OmniProcessor,
    ItemWarning,
    Prepared,
    check_item,
    check_items,
    prepare,
)

ST_CONFIG = "config_sentence_transformers.json"
#: Per-token keys that are reordered together with the hidden states (real tokens first).
_TOKEN_KEYS = ("input_ids", "mm_token_type_ids")


# --------------------------------------------------------------------------------------------- chat messages
class E5OmniMessageError(E5OmniInputError):
    """A chat-message input this model cannot embed (several turns, a system prompt, an unknown part type...)."""


#: Where a media part may hold its value besides its own key ({"type": "image", "image": x}).
_PART_SOURCES = ("path", "url")


def is_message(value: Any) -> bool:
    """A chat-style input: one message dict (`role` + `content`) or a list of them (a conversation)."""
    if isinstance(value, dict):
        return "role" in value and "content" in value
    return isinstance(value, list | tuple) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def _part_value(part: dict, kind: str, index: int) -> Any:
    keys = (kind,) if kind == "text" else (kind, *_PART_SOURCES)
    unknown = sorted(set(part) - {"type", *keys})
    if unknown:
        raise E5OmniMessageError(
            f"{kind} part has unsupported keys {unknown}; expected 'type' and one of {keys}", index
        )
    given = [key for key in keys if part.get(key) is not None]
    if len(given) != 1:
        raise E5OmniMessageError(f"{kind} part must hold its value under exactly one of {list(keys)}", index)
    return part[given[0]]


def message_to_item(message: Any, index: int, modalities=MODALITIES) -> dict[str, Any]:
    """One chat-message input -> our item dict (then checked and decoded like any item).

    Accepted: one `{"role": "user", "content": ...}` message, alone or as a one-message list. `content` is a str
    (text) or a list of parts `{"type": "text", "text": str}` / `{"type": "image"|"audio"|"video", <type>: value}`
    (the value may also sit under "path" or "url"), at most one part of each type. Media parts are placed before the
    text whatever their order, as for every item. Refused with `E5OmniMessageError`: system or assistant turns, several
    turns, other keys, other part types and repeated parts.
    """
    turns = [message] if isinstance(message, dict) else list(message)
    if not all(isinstance(turn, dict) and "role" in turn and "content" in turn for turn in turns):
        raise E5OmniMessageError("a conversation must be a list of {'role', 'content'} message dicts", index)
    roles = [turn["role"] for turn in turns]
    if "system" in roles:
        raise E5OmniMessageError(
            "system messages are not supported: e5-omni takes its prompt from sentence-transformers' prompts "
            "(prompt_name='query' or prompt=...) and a query instruction from the item key 'instruction'",
            index,
        )
    if roles != ["user"]:
        raise E5OmniMessageError(
            f"expected exactly one 'user' message (one item is one user turn), got roles {roles}", index
        )
    turn = turns[0]
    extra = sorted(set(turn) - {"role", "content"})
    if extra:
        raise E5OmniMessageError(f"message has unsupported keys {extra}; expected only 'role' and 'content'", index)
    content = turn["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list | tuple) or not content:
        raise E5OmniMessageError(
            "message content must be a str or a non-empty list of {'type': ..., ...} parts, "
            f"got {type(content).__name__ if content else 'nothing'}",
            index,
        )
    item: dict[str, Any] = {}
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in MODALITIES:
            raise E5OmniMessageError(
                f"content parts must be dicts with 'type' in {list(MODALITIES)}, got {part!r:.80}", index
            )
        if kind in item:
            raise E5OmniMessageError(f"a message takes at most one {kind} part (one item), got several", index)
        if kind not in modalities:
            raise E5OmniMessageError(f"this checkpoint takes {list(modalities)}, but the message has {kind}", index)
        item[kind] = _part_value(part, kind, index)
    return item


_ST_DIR = os.path.dirname(os.path.abspath(sentence_transformers.__file__)) + os.sep
_ENCODE_NAMES = ("encode", "encode_query", "encode_document")


def _in_st(frame) -> bool:
    return os.path.abspath(frame.f_code.co_filename).startswith(_ST_DIR)


#: Decorator frames between sentence-transformers' methods (torch.inference_mode's, its deprecated-kwargs wrapper).
_WRAPPERS = ("decorate_context", "wrapper")


def _skip_wrappers(frame):
    while frame is not None and frame.f_code.co_name in _WRAPPERS:
        frame = frame.f_back
    return frame


def caller_positions(batch: Any) -> list[int] | None:
    """Where each input of this sentence-transformers batch sits in the list the caller gave `encode`, or None.

    sentence-transformers (6.2, 6.3) hands a module only the batch, and nothing public says where its inputs came
    from: `_inference` sorts the caller's inputs by length (`length_sorted_idx`) and slices batches from
    `start_index`. This reads those private locals, and takes them only when every assumption is checked:

    - the frame is sentence-transformers' own `_inference`, reached through `encode` / `encode_query` /
      `encode_document` called from outside sentence-transformers (not a multi-process pool's or distributed
      worker's chunk, whose positions are the chunk's);
    - its `inputs_batch` is this very batch object (so `start_index` is this batch's start);
    - every position is verified by identity (`inputs[position] is batch[i]`).

    Any miss gives None, and messages fall back to batch positions, said as such (`batch_label`): a changed
    sentence-transformers can cost the caller's index, never give a wrong one."""
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        if frame.f_code.co_name == "_inference" and _in_st(frame) and "length_sorted_idx" in frame.f_locals:
            break
        frame = frame.f_back
    else:
        return None
    local = frame.f_locals
    order, start, inputs = local.get("length_sorted_idx"), local.get("start_index"), local.get("inputs")
    if local.get("inputs_batch") is not batch or not isinstance(batch, list):
        return None  # not the batch this frame is working on
    caller = _skip_wrappers(frame.f_back)
    if caller is None or caller.f_code.co_name != "encode" or not _in_st(caller):
        return None  # _inference reached another way (distributed inference): its inputs are a shard
    while caller is not None and caller.f_code.co_name in _ENCODE_NAMES and _in_st(caller):
        caller = _skip_wrappers(caller.f_back)
    if caller is None or _in_st(caller):
        return None  # encode called by sentence-transformers itself (a pool worker's chunk)
    if order is None or isinstance(start, bool) or not isinstance(start, int) or not isinstance(inputs, list | tuple):
        return None
    if len(order) != len(inputs) or start < 0 or start + len(batch) > len(order):
        return None
    try:
        positions = [int(order[start + i]) for i in range(len(batch))]
    except (TypeError, ValueError, IndexError):
        return None
    if any(not 0 <= p < len(inputs) or inputs[p] is not value for p, value in zip(positions, batch, strict=True)):
        return None
    return positions


def batch_label(value: Any, position: int) -> str:
    """How errors and warnings name an input of a sentence-transformers batch (whose order is not the caller's)."""
    if is_message(value):
        kind = "chat message"
    elif isinstance(value, str):
        kind = "text"
    elif isinstance(value, dict):
        kind = "+".join(m for m in (*MODALITIES, "instruction") if value.get(m) is not None) or "empty dict"
    elif value is None:
        kind = "None"
    else:
        kind = type(value).__name__
    return (
        f"item {position} is position {position} in this sentence-transformers batch, a {kind} input; "
        "sentence-transformers sorts inputs by length, so this is not the position in your list"
    )


# ---------------------------------------------------------------------------------------------- model card
class E5OmniModelCardData(SentenceTransformerModelCardData):
    """The stock sentence-transformers card, with a usage snippet that loads the model with trust_remote_code=True."""

    def generate_usage_snippet(self) -> str:
        return with_trust_remote_code(super().generate_usage_snippet())


def with_trust_remote_code(snippet: str) -> str:
    """`model = SentenceTransformer("id")` -> `model = SentenceTransformer("id", trust_remote_code=True)`."""
    return re.sub(r'(\bmodel = \w+\("[^"\n]*")\)', r"\1, trust_remote_code=True)", snippet)


def _declared_requirements(source: str | None) -> dict[str, str] | None:
    """The `requirements` of the config_sentence_transformers.json in a local folder, if it has one."""
    path = os.path.join(source, ST_CONFIG) if source and os.path.isdir(source) else None
    if path is None or not os.path.isfile(path):
        return None
    with open(path, encoding="utf8") as handle:
        return json.load(handle).get("requirements")


# ------------------------------------------------------------------------------------------------- the module
class E5OmniSTModule(InputModule):
    """Omni-modal input module: items or chat messages -> token embeddings (real tokens first in every row).

    `requirements` (`{"transformers": ">=...", ...}`) are written to config_sentence_transformers.json on save; by
    default they are the model config's `requirements`, else those of the folder the model was loaded from.
    """

    save_in_root = True
    config_keys: list[str] = []

    def __init__(
        self,
        model: E5OmniModel,
        processor: E5OmniProcessor | None = None,
        requirements: dict[str, str] | None = None,
    ):
        super().__init__()
        self.auto_model = model
        self.processor = processor if processor is not None else model.processor
        self.auto_model.set_processor(self.processor)
        self.tokenizer = self.processor.tokenizer
        config = model.config
        self.requirements = dict(
            requirements
            or getattr(config, "requirements", None)
            or _declared_requirements(getattr(config, "_name_or_path", None))
            or {}
        )

    @property
    def modalities(self) -> list[str]:
        # "message": sentence-transformers then passes dicts combining modalities, mixed batches and chat messages to
        # `preprocess`, which takes them all (messages through `message_to_item`).
        return [*self.auto_model.config.modalities, "message"]

    def get_embedding_dimension(self) -> int:
        return self.auto_model.config.hidden_size

    # --------------------------------------------------------------------------------- text budget
    @property
    def max_seq_length(self) -> int:
        """The text-token budget (`config.max_length`): user text is truncated to it before the chat template."""
        return self.auto_model.config.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_seq_length is the text-token budget: a positive int, got {value!r}")
        self.auto_model.config.max_length = value
        self.processor.config.max_length = value  # the same object unless the processor was built apart

    def get_max_seq_length(self) -> int:
        return self.max_seq_length

    # ------------------------------------------------------------------------------------- inputs
    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, Any]:
        """One sentence-transformers batch -> features.

        sentence-transformers sorts the inputs by length before it calls this and passes no original positions
        (6.2, 6.3). When `SentenceTransformer.encode` (or encode_query / encode_document) was called from user code,
        the caller's positions are recovered from its frame (`caller_positions`, verified by identity) and every
        check, decode and template step runs with them: errors, warnings and `E5OmniInputError.index` then name the
        position in the caller's list, as for `E5OmniModel.encode`. Otherwise (a multi-process pool's chunk, a direct
        call, another sentence-transformers version) a position is one in this batch, and errors and warnings alike
        say so and name the input's kind ("item 3: ... [item 3 is position 3 in this sentence-transformers batch, a
        text+image input; ...]"); such an error has `index` None and `batch_position` set."""
        positions = caller_positions(inputs)
        raw = list(inputs) if isinstance(inputs, list | tuple) else None
        config = self.auto_model.config
        if raw is None:
            check_items(inputs, config.modalities)  # not a list: the typed "expected a list of items" error
            raw = list(inputs)
        if not raw:
            check_items(raw)  # the typed "items is empty" error
        index = positions if positions is not None else list(range(len(raw)))
        prepared: Prepared | None = None
        try:
            items = [message_to_item(x, index[i], config.modalities) if is_message(x) else x for i, x in enumerate(raw)]
            for i, item in enumerate(items):  # the whole batch is checked before anything is decoded, as in encode
                check_item(item, index[i], config.modalities)
        except E5OmniInputError as err:
            error: E5OmniInputError | None = err
        else:
            if positions is not None:
                where = [f"item {p}" for p in positions]
            else:
                where = [f"item {i} [{batch_label(raw[i], i)}]" for i in range(len(raw))]
            prepared = prepare(
                self.processor, items, "document", indices=index, prompt=prompt, where=where, check=False
            )
            error = prepared.error
        for warning in prepared.warnings if prepared is not None else ():
            if positions is None and isinstance(warning, ItemWarning) and warning.index is not None:
                # an item named by its batch position: said so, as its error would be (`batch_label`)
                warning = warning.at_batch_position(warning.index, batch_label(raw[warning.index], warning.index))
            warnings.warn(warning, stacklevel=4)
        if error is None:
            return prepared.features
        if positions is not None or error.index is None or not 0 <= error.index < len(raw):
            raise error  # named by the caller's index already (or about the whole batch)
        raise error.at_batch_position(error.index, batch_label(raw[error.index], error.index)) from None

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        output = self.auto_model(**features)
        hidden, mask = output.last_hidden_state, features["attention_mask"]
        if bool((mask[:, 1:] > mask[:, :-1]).any()):  # some row is padded on the left: move real tokens first
            order = torch.sort((mask == 0).to(torch.int32), dim=1, stable=True).indices
            hidden = hidden.gather(1, order.unsqueeze(-1).expand_as(hidden))
            features["attention_mask"] = mask.gather(1, order)
            for key in _TOKEN_KEYS:
                value = features.get(key)
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    features[key] = value.gather(1, order)
        features["token_embeddings"] = hidden
        if self.auto_model.config.whitening:
            features["sentence_embedding"] = output.embeddings
        return features

    def on_model_ready(self, model) -> None:
        # The stock card shows `SentenceTransformer("id")`, which cannot load this repo's code: add trust_remote_code.
        if type(model.model_card_data) is SentenceTransformerModelCardData:
            model.model_card_data.__class__ = E5OmniModelCardData

    def __repr__(self) -> str:
        config = self.auto_model.config
        info = {"max_seq_length": self.max_seq_length, "modalities": list(config.modalities)}
        return f"E5OmniSTModule({info!r}) with {type(self.auto_model).__name__} ({config.backbone_config.model_type})"

    # ---------------------------------------------------------------------------------- persistence
    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.auto_model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.processor.save_pretrained(output_path)
        # SentenceTransformer.save writes its config before saving the modules; this module saves in the root.
        st_config = os.path.join(output_path, ST_CONFIG)
        if self.requirements and os.path.isfile(st_config):
            with open(st_config, encoding="utf8") as handle:
                data = json.load(handle)
            data["requirements"] = dict(self.requirements)
            with open(st_config, "w", encoding="utf8") as handle:
                json.dump(data, handle, indent=2, sort_keys=True)
                handle.write("\n")

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> E5OmniSTModule:
        hub = {"token": token, "cache_dir": cache_folder, "revision": revision, "local_files_only": local_files_only}
        if subfolder:
            hub["subfolder"] = subfolder
        model_kwargs = dict(model_kwargs or {})
        model = E5OmniModel.from_pretrained(model_name_or_path, **hub, **model_kwargs)
        processor = E5OmniProcessor.from_pretrained(model_name_or_path, config=model.config, **hub)
        st_config = cls.load_file_path(
            model_name_or_path,
            ST_CONFIG,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        requirements = None
        if st_config is not None:
            with open(st_config, encoding="utf8") as handle:
                requirements = json.load(handle).get("requirements")
        return cls(model, processor, requirements=requirements)


def sentence_transformer(
    model: E5OmniModel,
    processor: E5OmniProcessor | None = None,
    device: str | None = None,
    requirements: dict[str, str] | None = None,
):
    """Build the `SentenceTransformer` for an in-memory model (same modules and prompts as a saved folder).

    `requirements` go to config_sentence_transformers.json when it is saved (see `E5OmniSTModule`)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    config = model.config
    modules: list[torch.nn.Module] = [E5OmniSTModule(model, processor, requirements=requirements)]
    if not config.whitening:
        modules.append(Pooling(config.hidden_size, pooling_mode="lasttoken"))
    modules.append(Normalize())
    return SentenceTransformer(
        modules=modules,
        device=device or "cpu",
        prompts={"query": config.query_prompt, "document": config.document_prompt},
        default_prompt_name=None,
        similarity_fn_name="cosine",
    )


__all__ = [
    "E5OmniMessageError",
    "E5OmniModelCardData",
    "E5OmniSTModule",
    "batch_label",
    "message_to_item",
    "sentence_transformer",
]
