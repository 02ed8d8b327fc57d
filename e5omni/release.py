"""Release folders: the one way a model of ours is written for the Hub.

`save_hub_folder(model, processor, out)` writes a self-contained folder (safetensors weights with temperatures and
whitening, config with `auto_map`, the code files, processor/tokenizer/chat template, sentence-transformers files).
`write_release(model, processor, out)` is what the trainer, the demo and `push_to_hub` call: whitening refreshed from
the running statistics, LoRA merged, eval mode, then `save_hub_folder`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from functools import cache
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "e5-omni"
#: The dependencies a Hub repo of ours needs at load time (checked by sentence-transformers before loading); their
#: version ranges are read from this distribution's own metadata (pyproject.toml), never repeated here.
RUNTIME_REQUIREMENTS = ("transformers", "sentence-transformers", "torchvision")


@cache
def requirements() -> dict[str, str]:
    """`{"transformers": ">=5.23,<6", ...}`: the pins of RUNTIME_REQUIREMENTS in the installed e5-omni metadata."""
    pins: dict[str, str] = {}
    for line in metadata.requires(DISTRIBUTION) or []:
        if ";" in line:  # an extra's requirement ("peft>=0.21; extra == 'train'")
            continue
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$", line)
        name = match.group(1).lower().replace("_", "-")
        if name in RUNTIME_REQUIREMENTS:
            spec = match.group(2).replace(" ", "")
            # An exact build pin (torchvision==0.29.1 matches this project's torch) becomes a floor for Hub users,
            # whose torch may be newer.
            pins[name] = ">=" + spec[2:] if spec.startswith("==") else spec
    missing = [name for name in RUNTIME_REQUIREMENTS if name not in pins]
    if missing:
        raise RuntimeError(f"the installed {DISTRIBUTION} metadata has no requirement for {missing}")
    return {name: pins[name] for name in RUNTIME_REQUIREMENTS}


def sentence_module_file() -> Path:
    """The sentence-transformers module file that ships next to the weights (wherever modeling_e5omni is installed)."""
    from modeling_e5omni import sentence_e5omni

    return Path(sentence_e5omni.__file__).resolve()


def save_hub_folder(model, processor, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a self-contained, Hub-ready folder: safetensors weights (temperatures and whitening included), config
    with `auto_map`, the code files, processor/tokenizer/chat template, and the sentence-transformers files.

    Always writes into a fresh folder (saving over an old model can leave stale files that reload wrongly).
    """
    from modeling_e5omni.sentence_e5omni import sentence_transformer

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; save into a fresh folder (or pass overwrite=True)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    st = sentence_transformer(model, processor, requirements=requirements())
    st.save(str(out), create_model_card=False)
    # The first module was saved from our pip package; a Hub repo must name the file that ships next to the weights.
    modules_path = out / "modules.json"
    modules = json.loads(modules_path.read_text())
    modules[0]["type"] = "sentence_e5omni.E5OmniSTModule"
    modules_path.write_text(json.dumps(modules, indent=2) + "\n")
    module_file = sentence_module_file()
    shutil.copy(module_file, out / module_file.name)
    return out


def prepare_release(model, *, in_place: bool = False):
    """The model a release of `model`'s current state holds: whitening refreshed from the running statistics, LoRA
    layers merged (on a copy unless `in_place`), eval mode. With `in_place=False` the caller's model keeps its LoRA
    layers (its whitening matrix is refreshed either way, as before every save)."""
    from e5omni.train.lora import has_lora, merge_lora

    model.refresh_whitening()
    released = model
    if has_lora(model):
        released = merge_lora(model if in_place else copy.deepcopy(model))
    released.eval()
    return released


def write_release(model, processor, out: str | os.PathLike, *, overwrite: bool = False, in_place: bool = False):
    """A release folder of `model`'s current state; returns `(folder, model_released)`.

    Whitening is refreshed from the running statistics and LoRA layers are merged (`prepare_release`). With
    `in_place=False` (what pushes during training use) the merge happens on a copy and the caller's model is left
    exactly as it was, training mode included; `in_place=True` (end of training) merges the caller's model itself, so
    no second copy of the weights is ever held; the merged model is returned for the caller to keep.
    """
    was_training = model.training
    released = prepare_release(model, in_place=in_place)
    try:
        folder = save_hub_folder(released, processor, out, overwrite=overwrite)
    finally:
        if not in_place:
            model.train(was_training)
    return folder, released
