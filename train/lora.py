"""LoRA on the language model only, through peft, injected in place so the model keeps its class and methods.

`apply_lora(model, ...)` wraps the matched linear layers of `E5OmniModel.backbone.language_model` with LoRA layers
(peft's `LoraModel`, in place): the vision and audio towers, the embeddings and everything else stay frozen, except
the alignment state (`log_temperature` stays trainable; the whitening buffers are statistics). The plain
`target_modules=["q_proj", ...]` of most recipes would also hit the audio tower and vision blocks, hence the default
regex below.

Checkpoints keep the LoRA layers in the weights and write `lora_config.json` next to them (a record of the run); a
resumed run continues exactly because the trainer loads the checkpoint's weights into the model that already carries
the same LoRA layers (`E5OmniTrainer._load_from_checkpoint`). Release folders are merged (`merge_lora`) and so are
self-contained; `save_adapter` writes a standard peft adapter folder for users who want one, which plain
`peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base, trust_remote_code=True), folder)` loads fully:
the LoRA weights under peft's own key names, and the alignment module (temperatures and whitening buffers) as
peft's `modules_to_save`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from torch import nn

#: Attention and MLP projections of the language model's decoder layers, for every backbone we serve.
DEFAULT_LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
#: Modules LoRA never wraps, whatever the targets say: the media towers. peft 0.21 wraps the Qwen3-Omni audio tower's
#: q/k/v with the regex above (12 extra tensors on the tiny model, cause not found; docs/backbones.md).
#: The Qwen3-Omni MoE experts are fused 3-D Parameters, not Linear modules: no `target_modules` reaches them, so LoRA
#: leaves them (and the router, `mlp.gate`) frozen by default.
LORA_EXCLUDE_MODULES = r"(.*\.)?(audio_tower|visual)\..*"
LORA_CONFIG_FILE = "lora_config.json"
#: The submodule holding the alignment state (`log_temperature` and the whitening buffers); an adapter folder names it
#: in `modules_to_save`, so peft restores all of it (peft saves a wrapped module's whole `state_dict()`, buffers too).
ALIGNMENT_MODULE = "alignment"
#: What peft puts in front of the base model's own key names (`PeftModel.base_model` is the LoraModel, `.model` ours).
PEFT_KEY_PREFIX = "base_model.model."


def lora_config(
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | list[str] | None = None,
    *,
    use_dora: bool = False,
    use_rslora: bool = False,
):
    """LoRA (or DoRA with `use_dora`; rank-stabilised scaling alpha / sqrt(r) with `use_rslora`) on the language
    model's attention and MLP projections; the media towers are excluded (`LORA_EXCLUDE_MODULES`) whatever the
    targets, and MoE experts (fused 3-D Parameters) are not LoRA targets."""
    from peft import LoraConfig

    if r < 1:
        raise ValueError(f"lora r must be >= 1, got {r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"lora dropout must be in [0, 1), got {dropout}")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or DEFAULT_LORA_TARGETS,
        exclude_modules=LORA_EXCLUDE_MODULES,
        bias="none",
        use_dora=use_dora,
        use_rslora=use_rslora,
    )


def apply_lora(model: nn.Module, config) -> nn.Module:
    """Inject LoRA layers into `model` in place; only they (and `log_temperature`) stay trainable."""
    from peft import LoraModel

    if getattr(model, "_e5omni_lora", None) is not None:
        raise ValueError("this model already carries LoRA layers")
    wrapper = LoraModel(model, config, adapter_name="default")
    targeted = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    if not targeted:
        raise ValueError(f"LoRA target_modules {config.target_modules!r} matched no layer of the model")
    outside = [name for name in targeted if ".language_model." not in f".{name}"]
    if outside:
        raise ValueError(f"LoRA must stay on the language model; these targets are outside it: {outside[:5]}")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name or name.endswith("log_temperature"))
    object.__setattr__(model, "_e5omni_lora", wrapper)  # not a submodule: state_dict stays the model's own
    object.__setattr__(model, "_e5omni_lora_config", config)
    return model


def has_lora(model: nn.Module) -> bool:
    return getattr(model, "_e5omni_lora", None) is not None


def lora_targets(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A")]


def save_lora_config(model: nn.Module, folder: str | os.PathLike) -> None:
    config = model._e5omni_lora_config.to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    Path(folder, LORA_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA weights into the base layers and remove them (in place); returns the plain model, trainable as
    a freshly loaded one: every parameter, except those no forward uses (`freeze_never_used_parameters`), which stay
    frozen so a later DDP run with `find_unused_parameters=False` still works."""
    wrapper = getattr(model, "_e5omni_lora", None)
    if wrapper is None:
        return model
    merged = wrapper.merge_and_unload()
    object.__setattr__(merged, "_e5omni_lora", None)
    object.__setattr__(merged, "_e5omni_lora_config", None)
    for parameter in merged.parameters():
        parameter.requires_grad_(True)
    if hasattr(merged, "freeze_never_used_parameters"):
        merged.freeze_never_used_parameters()
    return merged


def save_adapter(
    model: nn.Module, folder: str | os.PathLike, base_model_name_or_path: str | os.PathLike | None = None
) -> Path:
    """A standard peft adapter folder of a model that carries LoRA layers (`apply_lora`); returns the folder.

    `adapter_model.safetensors` holds what `PeftModel.save_pretrained` would write for the same model wrapped by
    `peft.get_peft_model(model, config)` with `modules_to_save=["alignment"]`: the LoRA weights as
    `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` and the alignment module's whole state (the learned
    `log_temperature` and the whitening buffers) as `base_model.model.alignment.<name>`. `adapter_config.json` is the
    run's LoraConfig with `modules_to_save`, `base_model_name_or_path` (the argument, else the folder or Hub id the
    model was loaded from; none for a model built in memory) and `inference_mode` set as peft's own save sets them.
    So `PeftModel.from_pretrained(AutoModel.from_pretrained(base, trust_remote_code=True), folder)` restores the
    trained model exactly, and `.merge_and_unload()` gives the merged release model. Whitening is refreshed first,
    as for a release. Written here rather than by wrapping a copy in a PeftModel, which would hold the weights twice.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if not has_lora(model):
        raise ValueError("the model has no LoRA layers to save")
    model.refresh_whitening()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {PEFT_KEY_PREFIX + k: v for k, v in get_peft_model_state_dict(model).items()}
    alignment = getattr(model, ALIGNMENT_MODULE).state_dict()
    state.update({f"{PEFT_KEY_PREFIX}{ALIGNMENT_MODULE}.{k}": v for k, v in alignment.items()})
    state = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model._e5omni_lora_config)
    config.modules_to_save = [ALIGNMENT_MODULE]
    config.base_model_name_or_path = str(base_model_name_or_path or model.config._name_or_path or "") or None
    config.inference_mode = True
    # what peft writes for a model without a task type, so AutoPeftModel can find the base class too
    # transformers' AutoModel (in peft's default import allowlist) reads the base folder's auto_map, so
    # AutoPeftModel.from_pretrained(adapter, trust_remote_code=True) works with the Hub repo alone; our own module
    # is outside the allowlist and absent where users only have the Hub repo
    auto_mapping = {"base_model_class": "AutoModel", "parent_library": "transformers"}
    config.save_pretrained(str(folder), auto_mapping_dict=auto_mapping)
    return folder
