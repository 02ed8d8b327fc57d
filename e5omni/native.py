"""Release folders that sentence-transformers loads without remote code (issue #22).

`write_native_st_files(model, processor, folder)` turns a folder written by `e5omni.release.save_hub_folder` into one
that serves both entry paths from one copy of the weights:

- ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` is unchanged: the root ``config.json`` (``e5omni``,
  ``auto_map``), the code files and our processor files stay where they were. The root
  ``model.safetensors.index.json`` points at the weights, which now live in ``backbone/``, and at
  ``alignment.safetensors`` (temperatures, whitening) next to it.
- ``SentenceTransformer(folder)`` with no remote code: ``modules.json`` lists only stock sentence-transformers
  modules, ``[Transformer(path="backbone"), Pooling(lasttoken), Normalize]`` (with whitening:
  ``[..., Normalize, Dense, Normalize]``). ``backbone/`` is a plain transformers checkpoint of the bare backbone
  (``Qwen2_5OmniThinkerModel`` / ``Qwen2VLModel`` / ``Qwen2_5_VLModel``): its ``config.json`` is the stock backbone
  config, its weights are ours without the ``backbone.`` prefix, its processor is the stock backbone processor with
  a chat template (``native_chat_template``) that renders every input the way `E5OmniProcessor` does.

Why a subfolder: one ``modules.json`` serves both ``SentenceTransformer(repo)`` and
``SentenceTransformer(repo, trust_remote_code=True)``, any class outside sentence-transformers in it needs
``trust_remote_code=True`` (sentence-transformers 6, ``import_module_class``), and sentence-transformers' own
``Transformer`` reads ``config.json`` in its module path with ``AutoConfig``, which cannot read our root
``config.json`` (``model_type: e5omni``) without our code. The root cannot hold the weights for both: the stock
backbone class (``base_model_prefix`` "model") does not strip our ``backbone.`` prefix, and a Hub index may point
into a subfolder but not out of one. So the weights move into ``backbone/`` without the prefix, and our model (whose
``base_model_prefix`` is "backbone") gets the prefix added back per key by transformers' loader.

Why the chat template: the stock module builds one chat message per input with the content parts in the caller's
dict order (``{"text", "image"}``: text first) and the sentence-transformers prompt as a system message, and
appends nothing after the generation prompt. `E5OmniProcessor` renders media parts first (image, audio, video),
then one text part "prompt + text", the backbone's default system turn, the generation prompt and the eos suffix
(``<|endoftext|>``), whose hidden state is the embedding. The native template rebuilds exactly that message from
whatever the stock module hands it, then renders the backbone's own template and the suffix.

The trust_remote_code sentence-transformers path loads the same stock modules (equal vectors); our own
`E5OmniSTModule` (item dicts with ``instruction``, media budgets, typed errors naming the caller's index) stays
available in memory through ``modeling_e5omni.sentence_e5omni.sentence_transformer(model)``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

#: The subfolder holding the stock backbone checkpoint (and the sentence-transformers Transformer module).
SUBFOLDER = "backbone"
#: The root file holding our own tensors (`alignment.*`): the stock checkpoint in `SUBFOLDER` has none of them.
ALIGNMENT_WEIGHTS = "alignment.safetensors"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
#: Our weights' prefix for the backbone (`E5OmniPreTrainedModel.base_model_prefix`).
BACKBONE_PREFIX = "backbone."
CHAT_TEMPLATE_FILE = "chat_template.jinja"

_TRANSFORMER = "sentence_transformers.base.modules.Transformer"
_POOLING = "sentence_transformers.sentence_transformer.modules.Pooling"
_NORMALIZE = "sentence_transformers.base.modules.Normalize"
_DENSE = "sentence_transformers.base.modules.Dense"


class NativeExportError(ValueError):
    """A folder or model the native sentence-transformers files cannot be written for; `path` names the file."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


# ------------------------------------------------------------------------------------------------ chat template
def _jinja_string(value: str) -> str:
    """A Jinja string literal holding `value` exactly (Jinja unescapes like Python's unicode-escape)."""
    return json.dumps(value, ensure_ascii=True)


def native_chat_template(backbone_template: str, eos_suffix: str, media: tuple[str, ...]) -> str:
    """The backbone chat template, preceded by a prologue that rebuilds the message `E5OmniProcessor` renders.

    The prologue reads what sentence-transformers' stock `Transformer` passes: an optional system message (its prompt,
    e.g. "Query: ") and one user message whose content is a string or a list of typed parts in the caller's order. It
    collects the media parts in our order (image, audio, video; at most one of each, like an item), concatenates the
    texts (the prompt first), and replaces `messages` with one user message: media parts, then one text part when
    the text is not empty. The backbone template then renders it (with its default system turn and the generation
    prompt), and `eos_suffix` follows. Anything else (an assistant turn, two user turns, an unknown part type, a
    repeated medium or one this backbone does not take) raises through transformers' `raise_exception`, naming it.
    """
    if not isinstance(backbone_template, str) or not backbone_template:
        raise NativeExportError("the backbone processor has no chat template to wrap", CHAT_TEMPLATE_FILE)
    known = "".join(
        "{%- elif part['type'] == KIND -%}{%- if e5omni.NAME -%}{{- raise_exception(TWICE) -}}{%- endif -%}"
        "{%- set e5omni.NAME = [part] -%}".replace("KIND", _jinja_string(kind))
        .replace("NAME", kind)
        .replace("TWICE", _jinja_string(f"a message takes at most one {kind} part (one item)"))
        for kind in media
    )
    prologue = (
        "{#- e5-omni: one item = one user message: media parts (image, audio, video), then prompt + text -#}"
        "{%- set e5omni = namespace(MEDIA, text='', users=0) -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' and loop.first -%}"
        "{%- elif message['role'] == 'user' and e5omni.users == 0 -%}{%- set e5omni.users = 1 -%}"
        "{%- else -%}{{- raise_exception('e5-omni embeds one user message, after at most one system message "
        "(the prompt); got a ' ~ message['role'] ~ ' message in this place') -}}"
        "{%- endif -%}"
        "{%- if message['content'] is string -%}{%- set e5omni.text = e5omni.text ~ message['content'] -%}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{%- set e5omni.text = e5omni.text ~ part['text'] -%}"
        "KNOWN"
        "{%- else -%}{{- raise_exception('unsupported content part type ' ~ part['type'] ~ ' for this checkpoint "
        "(expected text or one of EXPECTED)') -}}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if e5omni.users != 1 -%}{{- raise_exception('e5-omni embeds one user message; got none') -}}{%- endif -%}"
        "{%- set e5omni_parts = PARTS -%}"
        "{%- if e5omni.text -%}{%- set e5omni_parts = e5omni_parts + [{'type': 'text', 'text': e5omni.text}] -%}"
        "{%- endif -%}"
        "{%- set messages = [{'role': 'user', 'content': e5omni_parts}] %}"
    )
    prologue = (
        prologue.replace("MEDIA", ", ".join(f"{kind}=[]" for kind in media))
        .replace("KNOWN", known)
        .replace("EXPECTED", ", ".join(media))
        .replace("PARTS", " + ".join(f"e5omni.{kind}" for kind in media) or "[]")
    )
    return prologue + backbone_template + "{{- " + _jinja_string(eos_suffix) + " -}}"


# -------------------------------------------------------------------------------------------- module config
def native_module_config(model) -> dict[str, Any]:
    """`backbone/sentence_bert_config.json`: the stock `Transformer` reads every input as a chat message and returns
    the backbone's last hidden states, with our media budgets passed to the backbone processor at call time."""
    config = model.config
    modalities = list(config.modalities)
    forward = {"method": "forward", "method_output_name": "last_hidden_state"}
    modality_config: dict[str, Any] = {m: dict(forward) for m in modalities}
    modality_config["message"] = {**forward, "format": "structured"}
    processing: dict[str, Any] = {
        # One rendered item = template + text; the text budget is not a sequence budget (media tokens count there),
        # so the stock module must not truncate the sequence (E5OmniProcessor truncates the text alone).
        "text": {"truncation": False},
        # sanitize_control_tokens: special-token strings in the caller's text stay text (transformers 5.25), as our
        # processor's literal ids; a media placeholder string in text still makes the processor count a medium
        # that is not there (an error, never a silent vector).
        "chat_template": {"add_generation_prompt": True, "sanitize_control_tokens": True},
        "image": {"size": {"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels}},
        "video": {
            "size": {"shortest_edge": config.video_min_pixels, "longest_edge": config.video_max_pixels},
            "do_sample_frames": False,
            "fps": config.fps,
            "cap_pixels_per_frame": True,  # what E5OmniProcessor passes (qwen-vl-utils' per-frame cap)
        },
    }
    if "audio" in modalities:
        processing["audio"] = {"sampling_rate": 16000}
    return {
        "transformer_task": "feature-extraction",
        "modality_config": modality_config,
        "module_output_name": "token_embeddings",
        "processing_kwargs": processing,
        # Qwen2-VL style models do not run on flattened (unpadded) inputs.
        "unpad_inputs": False,
    }


# -------------------------------------------------------------------------------------------------- weights
def _root_weight_files(folder: Path) -> list[str]:
    index = folder / WEIGHTS_INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        files = sorted(set(weight_map.values()))
        if any("/" in name or name.startswith(".") for name in files):
            raise NativeExportError(
                f"{index} already points into a subfolder: native files were written for this folder before",
                WEIGHTS_INDEX_NAME,
            )
        return files
    if (folder / WEIGHTS_NAME).is_file():
        return [WEIGHTS_NAME]
    raise NativeExportError(
        f"{folder} has no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}: write it with e5omni.release.save_hub_folder first",
        WEIGHTS_NAME,
    )


def _points_into(folder: Path, subfolder: str) -> bool:
    index = folder / WEIGHTS_INDEX_NAME
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
    except (OSError, ValueError):
        return False
    return any(str(name).startswith(subfolder + "/") for name in weight_map.values())


def _move_weights(folder: Path, subfolder: str) -> dict[str, Any]:
    """Rewrite the root weights: backbone tensors (prefix stripped) into `subfolder`, keeping the shard names, our
    own tensors into `ALIGNMENT_WEIGHTS`; then the root index pointing at both. Returns the root index."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = _root_weight_files(folder)
    sub = folder / subfolder
    root_map: dict[str, str] = {}
    sub_map: dict[str, str] = {}
    ours: dict[str, Any] = {}
    total = 0
    for name in files:
        tensors: dict[str, Any] = {}
        with safe_open(str(folder / name), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                total += tensor.numel() * tensor.element_size()
                if key.startswith(BACKBONE_PREFIX):
                    tensors[key[len(BACKBONE_PREFIX) :]] = tensor
                    root_map[key] = f"{subfolder}/{name}"
                    sub_map[key[len(BACKBONE_PREFIX) :]] = name
                else:
                    ours[key] = tensor
                    root_map[key] = ALIGNMENT_WEIGHTS
        if tensors:
            save_file(tensors, str(sub / name), metadata={"format": "pt"})
        del tensors
    if not sub_map:
        raise NativeExportError(
            f"no tensor in {files} starts with {BACKBONE_PREFIX!r}: not an e5-omni folder", files[0]
        )
    save_file(ours, str(folder / ALIGNMENT_WEIGHTS), metadata={"format": "pt"})
    if len(set(sub_map.values())) > 1:  # a sharded checkpoint stays sharded in the subfolder, with its own index
        sub_total = total - sum(t.numel() * t.element_size() for t in ours.values())
        sub_index = {"metadata": {"total_size": sub_total}, "weight_map": dict(sorted(sub_map.items()))}
        (sub / WEIGHTS_INDEX_NAME).write_text(json.dumps(sub_index, indent=2) + "\n", encoding="utf-8")
    # The new root index replaces the old one in one rename, and only then are the old files removed: an
    # interruption leaves a folder that loads (old files are complete until the index stops naming them).
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(root_map.items()))}
    staged = folder / (WEIGHTS_INDEX_NAME + ".tmp")
    staged.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    os.replace(staged, folder / WEIGHTS_INDEX_NAME)
    for name in files:
        (folder / name).unlink()
    return index


# ------------------------------------------------------------------------------------------ module folders
def _write_modules(folder: Path, model, subfolder: str) -> list[dict[str, Any]]:
    """modules.json and the stock module folders after the Transformer: Pooling(lasttoken), Normalize and, when the
    model whitens, Dense(W^T, -mean @ W) + Normalize (= normalize((unit - mean) @ W), our whitening)."""
    import torch
    from sentence_transformers.base.modules import Dense, Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling

    config = model.config
    for old in folder.iterdir():  # the previous stack's module folders (1_Pooling, 2_Normalize, 1_Normalize, ...)
        if old.is_dir() and old.name[:1].isdigit() and "_" in old.name:
            shutil.rmtree(old)
    stack: list[tuple[str, str, Any]] = [
        ("Pooling", _POOLING, Pooling(config.hidden_size, pooling_mode="lasttoken")),
        ("Normalize", _NORMALIZE, Normalize()),
    ]
    if config.whitening:
        alignment = model.alignment
        matrix = alignment.whitening_matrix.detach().float().cpu()
        mean = alignment.whitening_mean.detach().float().cpu()
        dense = Dense(
            config.hidden_size,
            config.hidden_size,
            bias=True,
            activation_function=torch.nn.Identity(),
        )
        with torch.no_grad():
            dense.linear.weight.copy_(matrix.T)
            dense.linear.bias.copy_(-(mean @ matrix))
        stack += [("Dense", _DENSE, dense), ("Normalize", _NORMALIZE, Normalize())]
    modules = [{"idx": 0, "name": "0", "path": subfolder, "type": _TRANSFORMER}]
    for idx, (label, type_name, module) in enumerate(stack, start=1):
        path = f"{idx}_{label}"
        (folder / path).mkdir()
        module.save(str(folder / path))
        modules.append({"idx": idx, "name": str(idx), "path": path, "type": type_name})
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    return modules


# ------------------------------------------------------------------------------------------------- the writer
def check_native_export(model) -> None:
    """NativeExportError when `model` cannot be given native files: not an E5OmniModel, or a message layout
    (`E5OmniConfig.template_departures`) the native chat template does not render."""
    if getattr(model, "backbone", None) is None:
        raise NativeExportError(f"expected an E5OmniModel (with .backbone), got {type(model).__name__}")
    departures = model.config.template_departures() if hasattr(model.config, "template_departures") else []
    if departures:
        raise NativeExportError(
            f"this model's message layout ({', '.join(departures)}) is not what the native chat template renders; "
            "stock sentence-transformers would embed it differently, so no native files are written"
        )


def write_native_st_files(model, processor, folder: str | os.PathLike, *, subfolder: str = SUBFOLDER) -> Path:
    """Make a release folder load with stock `SentenceTransformer(folder)` (no remote code), same vectors as
    `AutoModel.from_pretrained(folder, trust_remote_code=True)`; see the module doc for the layout.

    `folder` is what `e5omni.release.save_hub_folder(model, processor, folder)` wrote for this `model` and
    `processor` (the hook is one line after it). Raises `NativeExportError` naming the file when the folder is not
    such a folder, or already has native files."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise NativeExportError(f"{folder} has no config.json: write it with save_hub_folder first", "config.json")
    if not subfolder or "/" in subfolder or subfolder.startswith("."):
        raise NativeExportError(f"subfolder must be one plain folder name, got {subfolder!r}", subfolder)
    sub = folder / subfolder
    if sub.exists():
        raise NativeExportError(f"{sub} exists: native files were written for this folder before", subfolder)
    check_native_export(model)
    backbone = model.backbone
    backbone_processor = processor.backbone_processor
    template = native_chat_template(
        backbone_processor.chat_template,
        model.config.eos_suffix,
        tuple(m for m in ("image", "audio", "video") if m in model.config.modalities),
    )
    sub.mkdir()
    try:
        config = backbone.config.__class__.from_dict(backbone.config.to_dict())
        config.architectures = [type(backbone).__name__]
        config.save_pretrained(str(sub))
        backbone_processor.save_pretrained(str(sub))
        # transformers writes the processor's template to chat_template.jinja (tokenizer and processor alike)
        (sub / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
        for name in ("tokenizer_config.json", "processor_config.json"):
            path = sub / name
            if path.is_file():
                data = json.loads(path.read_text(encoding="utf-8"))
                if "chat_template" in data:
                    data["chat_template"] = template
                    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        (sub / "sentence_bert_config.json").write_text(
            json.dumps(native_module_config(model), indent=2) + "\n", encoding="utf-8"
        )
        _move_weights(folder, subfolder)
    except BaseException:
        if not _points_into(folder, subfolder):  # the root index still names the old files: undo the rest
            shutil.rmtree(sub, ignore_errors=True)
            (folder / ALIGNMENT_WEIGHTS).unlink(missing_ok=True)
            (folder / (WEIGHTS_INDEX_NAME + ".tmp")).unlink(missing_ok=True)
        raise
    _write_modules(folder, model, subfolder)
    return folder


__all__ = [
    "ALIGNMENT_WEIGHTS",
    "NativeExportError",
    "SUBFOLDER",
    "native_chat_template",
    "native_module_config",
    "write_native_st_files",
]
