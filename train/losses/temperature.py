"""The learned per-modality temperatures live on the model; these helpers find, clamp and group them for the trainer.

The parameter is an fp32 ``nn.Parameter`` of shape (M,) holding log(tau) whose name ends with ``log_temperature``
(``E5OmniModel.log_temperature``; inside a SentenceTransformer or DDP wrapper the name gains prefixes, the suffix
stays). Learning log tau keeps tau positive and makes multiplicative changes additive. After every optimizer step
the trainer calls :func:`clamp_temperatures_`; the optimizer gets the groups of :func:`build_param_groups`, which put
log_temperature in its own group without weight decay (decay would pull log tau towards 0, i.e. tau towards 1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers.trainer_pt_utils import get_parameter_names

__all__ = [
    "DEFAULT_MAX_TAU",
    "DEFAULT_MIN_TAU",
    "LOG_TEMPERATURE_SUFFIX",
    "build_param_groups",
    "clamp_temperatures_",
    "find_log_temperature",
]

LOG_TEMPERATURE_SUFFIX = "log_temperature"
#: Documented clamp range for tau (PAPER.md, inferred): the released 7B learned 0.0127-0.0223.
DEFAULT_MIN_TAU = 0.005
DEFAULT_MAX_TAU = 1.0

# The patterns transformers' Trainer.get_decay_parameter_names excludes from weight decay.
_NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def _temperature_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if name.endswith(LOG_TEMPERATURE_SUFFIX)]


def find_log_temperature(model: nn.Module | None) -> nn.Parameter | None:
    """The model's ``*log_temperature`` parameter, or None if it has none. More than one is an error."""
    if model is None:
        return None
    found = _temperature_parameters(model)
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise ValueError(f"expected one parameter named '*{LOG_TEMPERATURE_SUFFIX}', found {len(found)}: {names}")
    return found[0][1] if found else None


def clamp_temperatures_(model: nn.Module, min_tau: float = DEFAULT_MIN_TAU, max_tau: float = DEFAULT_MAX_TAU) -> int:
    """Clamp tau = exp(log_temperature) into [min_tau, max_tau] in place; call after every optimizer step.

    Returns the number of temperature parameters clamped (0 when the model has none).
    """
    if not 0.0 < min_tau < max_tau:
        raise ValueError(f"need 0 < min_tau < max_tau, got min_tau={min_tau!r}, max_tau={max_tau!r}")
    found = _temperature_parameters(model)
    with torch.no_grad():
        for _, param in found:
            param.clamp_(math.log(min_tau), math.log(max_tau))
    return len(found)


def build_param_groups(
    model: nn.Module, *, weight_decay: float, temperature_lr: float | None = None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: decayed weights, non-decayed weights (biases, norms), and the temperatures.

    The first two follow transformers' ``Trainer`` rule (LayerNorm modules and names matching bias / layernorm /
    rmsnorm / norm get no decay); the temperature group has ``weight_decay=0.0`` and, when ``temperature_lr`` is
    given, its own ``lr`` (otherwise the optimizer's lr; the paper does not state one). Only trainable parameters are
    included; empty groups are left out.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if temperature_lr is not None and not temperature_lr > 0:
        raise ValueError(f"temperature_lr must be > 0 or None, got {temperature_lr!r}")
    decay_names = set(get_parameter_names(model, [nn.LayerNorm], _NO_DECAY_PATTERNS))
    decay, no_decay, temperature = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(LOG_TEMPERATURE_SUFFIX):
            temperature.append(param)
        elif name in decay_names:
            decay.append(param)
        else:
            no_decay.append(param)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if temperature:
        group: dict[str, Any] = {"params": temperature, "weight_decay": 0.0}
        if temperature_lr is not None:
            group["lr"] = temperature_lr
        groups.append(group)
    return groups
