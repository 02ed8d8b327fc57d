"""Shared fixtures: tiny seeded models of each backbone kind and seeded media items. No network."""

from __future__ import annotations

import os
import tempfile

# No test reaches the network, and remote-code modules are copied into a throwaway HF_HOME, not the user's cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="e5omni-test-hf-"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# On a shared 2-core machine, intra-op threads cost far more than they give for tiny models (10x measured).
torch.set_num_threads(1)
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from e5omni.tiny import BACKBONES, build_tiny_model  # noqa: E402


def make_image(seed: int = 0, size: tuple[int, int] = (56, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_audio(seed: int = 0, seconds: float = 1.0, rate: int = 16000) -> dict:
    t = np.arange(int(seconds * rate)) / rate
    freq = 220 * (1 + seed % 5)
    return {"array": (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), "sampling_rate": rate}


def make_video(seed: int = 0, frames: int = 4, size: int = 56) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    return rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def items_for(modalities) -> list:
    """One item per modality the backbone has, plus mixed items, 8 in all (a mixed batch)."""
    items = ["a red circle in the top left", make_image(1), {"text": "a caption", "image": make_image(2)}]
    items += [{"video": make_video(1)}, {"text": "a blue square moving right", "video": make_video(2)}]
    if "audio" in modalities:
        items += [{"audio": make_audio(1)}, {"text": "a rising tone", "audio": make_audio(2)}]
        items += [{"text": "everything", "image": make_image(3), "audio": make_audio(3), "video": make_video(3)}]
    else:
        items += ["a much longer text item " * 5, {"image": make_image(4), "video": make_video(4)}]
        items += [{"text": "short", "image": make_image(5)}]
    return items


_MODELS: dict = {}


def tiny(backbone: str):
    if backbone not in _MODELS:
        model, processor = build_tiny_model(backbone, seed=0)
        model.set_processor(processor)
        _MODELS[backbone] = model
    return _MODELS[backbone]


@pytest.fixture(params=BACKBONES)
def backbone_model(request):
    return request.param, tiny(request.param)


@pytest.fixture
def omni_model():
    return tiny("qwen2.5-omni")


@pytest.fixture
def vl_model():
    return tiny("qwen2-vl")
