"""Fixed probes and their golden embeddings (tests/data/golden_embeddings.safetensors).

The golden file is regenerated only on purpose, with `make golden` (python tests/make_golden.py), after a change that
is meant to alter embeddings; the test compares exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GOLDEN = Path(__file__).parent / "data" / "golden_embeddings.safetensors"
BACKBONE = "qwen2.5-omni"
SEED = 0


def probes() -> dict[str, object]:
    rng = np.random.default_rng(1234)
    image = Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    t = np.arange(16000) / 16000
    audio = {"array": (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), "sampling_rate": 16000}
    video = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    return {
        "text": "a red circle in the top left corner",
        "image": image,
        "audio": {"audio": audio},
        "video": {"video": video},
        "mixed": {"text": "a dog barking in a park", "image": image, "audio": audio},
    }


def compute(model) -> dict:
    import torch

    items = probes()
    docs = model.encode_document(list(items.values()))
    out = {f"document/{name}": docs[i].contiguous() for i, name in enumerate(items)}
    out["query/text"] = model.encode_query([items["text"]])[0].contiguous()
    return {k: v.to(torch.float32) for k, v in out.items()}
