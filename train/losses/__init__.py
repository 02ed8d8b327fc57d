"""The e5-omni alignment losses (the paper's components 1-3, docs/losses.md): functional core, modules, GradCache variant.

- :mod:`e5omni.train.losses.functional`: pair temperatures, rho_t curriculum, hard-negative mask, DCL, batch whitening, CORAL.
- :mod:`e5omni.train.losses.e5omni`: :class:`E5OmniLoss`, the sentence-transformers loss module (dict of components).
- :mod:`e5omni.train.losses.cached`: :class:`CachedE5OmniLoss`, the same loss with GradCache mini-batching.
- :mod:`e5omni.train.losses.temperature`: find / clamp the model's log_temperature.
- :mod:`e5omni.train.losses.distributed`: the one all-gather helper.

See docs/losses.md for the symbols, defaults and the choices made where the paper is silent.
"""

from .cached import CachedE5OmniLoss
from .distributed import gather_rows
from .e5omni import E5OmniLoss
from .functional import (
    MODALITIES,
    BatchWhitening,
    WhiteningStatistics,
    batch_whiten,
    coral_loss,
    curriculum_rho,
    debiased_contrastive_loss,
    hard_negative_mask,
    info_nce_loss,
    instance_temperature,
    pair_temperature,
    whitened_coral_loss,
    whitening_jitter,
    whitening_residual,
)
from .temperature import clamp_temperatures_, find_log_temperature

__all__ = [
    "MODALITIES",
    "BatchWhitening",
    "CachedE5OmniLoss",
    "E5OmniLoss",
    "WhiteningStatistics",
    "batch_whiten",
    "clamp_temperatures_",
    "coral_loss",
    "curriculum_rho",
    "debiased_contrastive_loss",
    "find_log_temperature",
    "gather_rows",
    "hard_negative_mask",
    "info_nce_loss",
    "instance_temperature",
    "pair_temperature",
    "whitened_coral_loss",
    "whitening_jitter",
    "whitening_residual",
]
