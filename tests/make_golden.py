"""Regenerate the golden embeddings. Run on purpose only: `make golden`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save_file  # noqa: E402

from e5omni.tiny import build_tiny_model  # noqa: E402
from tests.golden import BACKBONE, GOLDEN, SEED, compute  # noqa: E402

if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # as in the test session (tests/conftest.py)
    model, processor = build_tiny_model(BACKBONE, seed=SEED)
    model.set_processor(processor)
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    save_file(compute(model), str(GOLDEN))
    print(f"wrote {GOLDEN}")
