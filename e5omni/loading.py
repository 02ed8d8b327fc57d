"""Loading a saved e5-omni model for inference: the one place that decides how and where (CLI, mteb, the Space)."""

from __future__ import annotations

import os

__all__ = ["load_inference_model"]


def load_inference_model(source: str | os.PathLike, *, revision: str | None = None, device: str | None = None):
    """A saved model folder or Hub id through `AutoModel` (its remote code: the folder's own modeling files), in
    eval mode, on `device` (default: the GPU when there is one, else the CPU).

    `revision` pins a Hub commit (docs show `revision=` pinning); it is ignored by a local folder."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), trust_remote_code=True, revision=revision)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()
