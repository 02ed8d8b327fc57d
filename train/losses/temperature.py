"""The learned per-modality temperatures live on the model; these helpers find, clamp and group them for the trainer.

The parameter is an fp32 ``nn.Parameter`` of shape (M,) holding log(tau) whose name ends with ``log_temperature``
(``E5OmniModel.log_temperature``; inside a SentenceTransformer or DDP wrapper the name gains prefixes, the suffix
stays). Learning log tau keeps tau positive and makes multiplicative changes additive. After every optimizer step
the trainer calls :func:`clamp_temperatures_`. The trainer (`E5OmniTrainer.create_optimizer`) keeps log_temperature
out of weight decay (decay would pull log tau towards 0, i.e. tau towards 1) and gives it its own learning rate when
`temperature_lr` is set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "DEFAULT_MAX_TAU",
    "DEFAULT_MIN_TAU",
    "LOG_TEMPERATURE_SUFFIX",
    "clamp_temperatures_",
    "find_log_temperature",
]

LOG_TEMPERATURE_SUFFIX = "log_temperature"
#: Documented clamp range for tau (docs/paper.md, inferred): the released 7B learned 0.0127-0.0223.
DEFAULT_MIN_TAU = 0.005
DEFAULT_MAX_TAU = 1.0

# The patterns transformers' Trainer.get_decay_parameter_names excludes from weight decay.


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
