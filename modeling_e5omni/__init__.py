"""e5-omni: omni-modal embeddings (text, image, audio, video) in one vector space.

This package is what ships inside every Hub repo (as remote code); it imports only torch, transformers, numpy and PIL
(soundfile / soxr / PyAV are imported lazily, only to decode audio and video files).
"""

from .configuration_e5omni import MODALITIES, E5OmniConfig
from .modeling_e5omni import E5OmniModel, E5OmniOutput, last_token_pool, register, truncate_embeddings
from .processing_e5omni import (
    E5OmniInputError,
    E5OmniProcessor,
    ItemWarning,
    MediaDecodeError,
    MediaShapeError,
    MediaTooLargeError,
    RemoteMediaError,
    UnsupportedModalityError,
    slice_features,
)

register()

__all__ = [
    "MODALITIES",
    "E5OmniConfig",
    "E5OmniModel",
    "E5OmniOutput",
    "E5OmniProcessor",
    "E5OmniInputError",
    "ItemWarning",
    "MediaDecodeError",
    "MediaShapeError",
    "MediaTooLargeError",
    "RemoteMediaError",
    "UnsupportedModalityError",
    "last_token_pool",
    "slice_features",
    "truncate_embeddings",
]
