"""`e5omni export MODEL OUT --format vllm`: a folder that vLLM serves as an embedding (pooling) model.

vLLM has no e5-omni class and runs no remote code for us, so the export is written in the layout of a stock
checkpoint whose vLLM implementation computes the same last hidden state as our backbone:

- Qwen2.5-Omni thinker: config.json is a full ``qwen2_5_omni`` config (architectures ``["Qwen2_5OmniModel"]``,
  ``enable_audio_output: false``) whose ``thinker_config`` is our backbone config; vLLM maps that architecture to its
  thinker implementation. Weights ``backbone.language_model.*`` -> ``thinker.model.*``, ``backbone.visual.*`` ->
  ``thinker.visual.*``, ``backbone.audio_tower.*`` -> ``thinker.audio_tower.*``.
- Qwen2-VL / Qwen2.5-VL: config.json is our backbone config (architectures ``Qwen2VLForConditionalGeneration`` /
  ``Qwen2_5_VLForConditionalGeneration``); weights ``backbone.language_model.*`` -> ``model.language_model.*``,
  ``backbone.visual.*`` -> ``model.visual.*`` (the names transformers >= 4.52 saves, which vLLM's mapper reads).
- No LM head: vLLM's pooling adapter never builds one.
- Pooling from sentence-transformers files (modules.json: Pooling ``lasttoken`` + Normalize), which vLLM reads.
- The embedding contract: `embedding_chat_template` renders exactly what `E5OmniProcessor` renders (one user turn:
  media parts, then prompt + text, the backbone's template with the generation prompt, then the eos suffix).
- Media budgets (min/max pixels of images and video frames, fps) written into the processor files vLLM loads.

What cannot be expressed is refused with `ExportError`: whitening (a D x D transform after pooling; vLLM's pooler
normalises and stops).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

VLLM_VERSION = "0.32.0"

#: our backbone model_type -> (weight prefix map, architecture in config.json)
LAYOUTS: dict[str, tuple[dict[str, str], str]] = {
    "qwen2_5_omni_thinker": (
        {"language_model.": "thinker.model.", "visual.": "thinker.visual.", "audio_tower.": "thinker.audio_tower."},
        "Qwen2_5OmniModel",
    ),
    "qwen2_vl": (
        {"language_model.": "model.language_model.", "visual.": "model.visual."},
        "Qwen2VLForConditionalGeneration",
    ),
    "qwen2_5_vl": (
        {"language_model.": "model.language_model.", "visual.": "model.visual."},
        "Qwen2_5_VLForConditionalGeneration",
    ),
}

CHAT_TEMPLATE_FILE = "embedding_chat_template.jinja"


class ExportError(ValueError):
    """A model that cannot be exported as asked; names what and why."""


def vllm_weight_name(name: str, backbone_type: str) -> str:
    """The checkpoint name vLLM reads for our backbone parameter `name` (``language_model.layers.0...``, without
    the ``backbone.`` prefix)."""
    if backbone_type not in LAYOUTS:
        raise ExportError(f"backbone model_type {backbone_type!r} has no vLLM layout; supported: {sorted(LAYOUTS)}")
    prefixes, _ = LAYOUTS[backbone_type]
    for ours, theirs in prefixes.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    raise ExportError(
        f"backbone weight {name!r} has no vLLM name for {backbone_type}: expected a prefix in {sorted(prefixes)}"
    )


# The prelude turns any chat request into the one message E5OmniProcessor renders: a user turn with the image,
# audio and video parts (each kind in request order), then one text part = the system messages' text (the prompt,
# e.g. the query prompt; vLLM's /v2/embed sends `input_type` prompts as a system message) + the user text. Then the
# backbone's own template runs on it with the generation prompt, and the eos suffix closes it: its hidden state is
# the embedding. Part types are those vLLM hands templates (image / audio / video) and the OpenAI request names.
_PRELUDE = """{#- e5-omni embedding template (e5omni export --format vllm): one user turn, media first, then the
    prompt (system messages' text) and the text; the backbone template with the generation prompt; the eos suffix. -#}
{%- set ns = namespace(images=[], audios=[], videos=[], prefix='', text='') -%}
{%- for message in messages -%}
{%- if message['content'] is string -%}
{%- if message['role'] == 'system' -%}{%- set ns.prefix = ns.prefix + message['content'] -%}
{%- else -%}{%- set ns.text = ns.text + message['content'] -%}{%- endif -%}
{%- else -%}
{%- for part in message['content'] -%}
{%- set kind = part['type'] if part['type'] is defined else '' -%}
{%- if kind in ['image', 'image_url', 'image_pil', 'image_embeds'] -%}
{%- set ns.images = ns.images + [{'type': 'image'}] -%}
{%- elif kind in ['audio', 'input_audio', 'audio_url', 'audio_embeds'] -%}
{%- set ns.audios = ns.audios + [{'type': 'audio'}] -%}
{%- elif kind in ['video', 'video_url', 'video_embeds'] -%}
{%- set ns.videos = ns.videos + [{'type': 'video'}] -%}
{%- elif part['text'] is defined -%}
{%- if message['role'] == 'system' -%}{%- set ns.prefix = ns.prefix + part['text'] -%}
{%- else -%}{%- set ns.text = ns.text + part['text'] -%}{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endfor -%}
{#- a video's own sound track (Qwen2.5-Omni, request `"chat_template_kwargs": {"use_audio_in_video": true}` with the
    same `mm_processor_kwargs`): vLLM interleaves that audio inside the video placeholder, so it gets none of its own -#}
{%- if use_audio_in_video is defined and use_audio_in_video and ns.videos -%}
{%- set ns.audios = ns.audios[ns.videos | length:] -%}
{%- endif -%}
{%- set parts = ns.images + ns.audios + ns.videos -%}
{%- if ns.prefix ~ ns.text -%}{%- set parts = parts + [{'type': 'text', 'text': ns.prefix ~ ns.text}] -%}{%- endif -%}
{%- set messages = [{'role': 'user', 'content': parts}] -%}
{%- set add_generation_prompt = true -%}
"""


def embedding_chat_template(backbone_template: str, eos_suffix: str) -> str:
    """The chat template vLLM serves the export with (`--chat-template`): `_PRELUDE`, the backbone's template, then
    the eos suffix as a Jinja string literal (so no character of it is read as Jinja)."""
    if not backbone_template:
        raise ExportError("the backbone processor has no chat template; e5-omni renders every item through one")
    return _PRELUDE + backbone_template + "{{ " + json.dumps(eos_suffix) + " }}"


def _state_dict(model, backbone_type: str, dtype) -> dict:
    tensors = {}
    for name, tensor in model.backbone.state_dict().items():
        value = tensor.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[vllm_weight_name(name, backbone_type)] = value.contiguous().clone()
    return tensors


def _config_dict(config, backbone_type: str, dtype_name: str) -> dict[str, Any]:
    _, architecture = LAYOUTS[backbone_type]
    backbone = config.backbone_config.to_dict()
    backbone["dtype"] = dtype_name
    # vLLM accepts `dimensions` only for the Matryoshka dims listed here (top level of config.json), refusing others
    dims = getattr(config, "matryoshka_dimensions", None)
    matryoshka = {"is_matryoshka": True, "matryoshka_dimensions": list(dims)} if dims else {}
    if backbone_type == "qwen2_5_omni_thinker":
        backbone["architectures"] = ["Qwen2_5OmniThinkerForConditionalGeneration"]
        return {
            "model_type": "qwen2_5_omni",
            "architectures": [architecture],
            "enable_audio_output": False,
            "thinker_config": backbone,
            "dtype": dtype_name,
            **matryoshka,
        }
    backbone["architectures"] = [architecture]
    return {**backbone, **matryoshka}


def _budgeted_processor(processor, template: str):
    """A copy of the backbone processor with the model's media budgets as its defaults (what vLLM loads) and the
    embedding chat template."""
    config = processor.config
    backbone = copy.deepcopy(processor.backbone_processor)
    image = getattr(backbone, "image_processor", None)
    if image is not None:
        image.size = {"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels}
        for key, value in (("min_pixels", config.min_pixels), ("max_pixels", config.max_pixels)):
            if hasattr(image, key):
                setattr(image, key, value)
    video = getattr(backbone, "video_processor", None)
    if video is not None:
        video.size = {"shortest_edge": config.video_min_pixels, "longest_edge": config.video_max_pixels}
        for key, value in (("min_pixels", config.video_min_pixels), ("max_pixels", config.video_max_pixels)):
            if hasattr(video, key):
                setattr(video, key, value)
        video.fps = config.fps
        video.do_sample_frames = False  # frames arrive sampled: by the client, or by vLLM's loader (num_frames)
    backbone.chat_template = template
    backbone.tokenizer.chat_template = template
    return backbone


def mm_processor_kwargs(config) -> dict[str, Any]:
    """The media budgets as call-time processor kwargs. The Qwen processors' class defaults (Qwen2.5-Omni: video
    frames of 128-768 x 28 x 28 pixels) override the video processor's saved size, so the budgets in the processor
    files alone are not enough for video (measured: a 4-frame 56 x 84 clip became 560 patches instead of 24 and its
    vector differed by 0.30); vLLM passes `mm_processor_kwargs` to every processor call."""
    return {
        "videos_kwargs": {
            "size": {"shortest_edge": config.video_min_pixels, "longest_edge": config.video_max_pixels},
            "fps": config.fps,
            "do_sample_frames": False,
            "cap_pixels_per_frame": True,  # the per-frame cap e5-omni applies (E5OmniProcessor passes it too)
        }
    }


def _serve_command(model: str, export: dict[str, Any]) -> str:
    """The server command for an export folder at `model`, from its e5omni_export.json `export`."""
    lines = [
        "VLLM_CPU_KVCACHE_SPACE=1 python -m vllm.entrypoints.openai.api_server \\",
        f"    --model {model} --runner pooling --convert embed --dtype {export['dtype']} \\",
        f"    --chat-template {model.rstrip('/')}/{export['chat_template']} --chat-template-content-format openai \\",
        f"    --mm-processor-kwargs '{json.dumps(export['mm_processor_kwargs'])}'",
    ]
    if export["backbone_type"] == "qwen2_5_omni_thinker":
        lines[-1] += " \\"
        lines.append('    --limit-mm-per-prompt \'{"image": 1, "audio": 1, "video": 1}\'')
    return "\n".join(lines)


def export_readme(export: dict[str, Any], model: str, *, repo_id: str | None = None) -> str:
    """README.md of an export: how to serve and query it. `model` is the folder vLLM is started on; with `repo_id`
    (a pushed export, `e5omni push --vllm`), the README first downloads the repo to that folder, pinned to a commit
    (vLLM's `--chat-template` takes a local file)."""
    query = json.dumps(export["query_prompt"])
    source = export.get("source_repo")
    lines = ["# vLLM export of an e5-omni model", ""]
    if source:
        pin = f" at commit `{export['source_revision']}`" if export.get("source_revision") else ""
        lines += [f"The served form of [{source}](https://huggingface.co/{source}){pin}.", ""]
    lines += [
        f"Written by `e5omni export --format vllm` (tested against vllm-cpu=={export['vllm_version']}). Serve it with:",
        "",
        "```bash",
    ]
    if repo_id:
        lines.append(f"huggingface-cli download {repo_id} --revision COMMIT --local-dir {model}")
    lines += [_serve_command(model, export), "```", ""]
    normalized = "L2-normalised" if export.get("normalize", True) else "not normalised"
    lines += [
        "Embed with `POST /v1/embeddings` and chat `messages` (one item per request), e.g. with the OpenAI client:",
        "",
        "```python",
        "import openai",
        "",
        'client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")',
        f'document = {{"model": "{model}", "messages": [{{"role": "user", "content": [{{"type": "text", "text": "a red circle"}}]}}]}}',
        f'query = {{"model": "{model}", "messages": [',
        f'    {{"role": "system", "content": {query}}},  # the query prompt: a system message\'s text goes before the text',
        '    {"role": "user", "content": [{"type": "text", "text": "red circle"}]},',
        "]}",
        'vectors = [client.post("/embeddings", body=body, cast_to=object)["data"][0]["embedding"] for body in (document, query)]',
        "```",
        "",
        "Images, audio and video go in as `image_url`, `input_audio` and `video_url` parts (video frames also as a",
        f"`data:video/jpeg;base64,...` URL). The query prompt is {query}; documents have "
        f"{json.dumps(export['document_prompt'])}. Pooling: last token, {normalized}, dimension "
        f"{export.get('dimension', '?')}. See docs/serving.md in the e5-omni repository for what differs from "
        "`encode` (sampling of video files, a video's own sound track, tokenisation of control-token strings).",
        "",
    ]
    return "\n".join(lines)


def export_vllm(model, processor, out: str | os.PathLike, *, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write `model` (an `E5OmniModel`) and `processor` (its `E5OmniProcessor`) to `out` in the layout vLLM serves
    as an embedding model. `dtype` ("float32", "bfloat16", "float16") casts the weights; default: the model's."""
    import torch
    from safetensors.torch import save_file

    config = model.config
    backbone_type = config.backbone_config.model_type
    if backbone_type not in LAYOUTS:
        raise ExportError(
            f"backbone model_type {backbone_type!r} cannot be exported for vLLM; supported: {sorted(LAYOUTS)}"
        )
    if config.whitening:
        raise ExportError(
            "this model applies whitening (config.whitening=True: a D x D transform and renormalisation after "
            "pooling), which vLLM's pooler cannot express; export a model trained without whitening, or serve it "
            "with `e5omni encode` / AutoModel"
        )
    if config.pooling != "last":
        raise ExportError(f"pooling {config.pooling!r} has no vLLM export; only 'last' is supported")
    departures = config.template_departures() if hasattr(config, "template_departures") else []
    if departures:
        raise ExportError(
            f"this model's message layout ({', '.join(departures)}) is not what the exported chat template renders; "
            "vLLM would embed it differently, so it is not exported"
        )
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype is not None and dtype not in dtypes:
        raise ExportError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    torch_dtype = dtypes[dtype] if dtype is not None else next(model.backbone.parameters()).dtype
    dtype_name = {v: k for k, v in dtypes.items()}.get(torch_dtype)
    if dtype_name is None:
        raise ExportError(f"the model's weights are {torch_dtype}; pass dtype= one of {sorted(dtypes)}")

    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} exists and is not empty; pass a fresh folder (or overwrite=True)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    template = embedding_chat_template(processor.backbone_processor.chat_template, config.eos_suffix)
    save_file(_state_dict(model, backbone_type, torch_dtype), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(_config_dict(config, backbone_type, dtype_name), indent=2) + "\n")
    _budgeted_processor(processor, template).save_pretrained(str(out))
    (out / CHAT_TEMPLATE_FILE).write_text(template)

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if config.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir()
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (out / "1_Pooling").mkdir()
    pooling = {"embedding_dimension": config.hidden_size, "pooling_mode": "lasttoken", "include_prompt": True}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    prompts = {"query": config.query_prompt}
    if config.document_prompt:
        prompts["document"] = config.document_prompt
    st_config = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (out / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
    e5 = {
        "format": "vllm",
        "vllm_version": VLLM_VERSION,
        "backbone_type": backbone_type,
        "dtype": dtype_name,
        "query_prompt": config.query_prompt,
        "document_prompt": config.document_prompt,
        "eos_suffix": config.eos_suffix,
        "fps": config.fps,
        "max_frames": config.max_frames,
        "max_audio_seconds": config.max_audio_seconds,
        "use_audio_in_video": config.use_audio_in_video,
        "chat_template": CHAT_TEMPLATE_FILE,
        "mm_processor_kwargs": mm_processor_kwargs(config),
        "dimension": config.hidden_size,
        "normalize": config.normalize,
    }
    (out / "e5omni_export.json").write_text(json.dumps(e5, indent=2) + "\n")
    (out / "README.md").write_text(export_readme(e5, str(out)))
    return out


def export_vllm_from(name: str, out: str | os.PathLike, *, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Load a saved e5-omni model (folder or Hub id, through our own classes) and export it for vLLM."""
    from modeling_e5omni import E5OmniModel, E5OmniProcessor

    model = E5OmniModel.from_pretrained(name)
    processor = E5OmniProcessor.from_pretrained(name, config=model.config)
    return export_vllm(model, processor, out, dtype=dtype, overwrite=overwrite)
