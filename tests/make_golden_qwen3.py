"""Golden embeddings of the Qwen3 backbone kinds (tests/data/golden_qwen3.safetensors). Run on purpose only, after a
change meant to alter their embeddings: `python tests/make_golden_qwen3.py`. The released kinds' file
(tests/data/golden_embeddings.safetensors, tests/make_golden.py) is separate and untouched by this script."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOLDEN_QWEN3 = Path(__file__).parent / "data" / "golden_qwen3.safetensors"
KINDS = ("qwen3-vl", "qwen3-omni")
SEED = 0


def qwen3_probes(kind: str) -> dict[str, object]:
    """tests/golden.py's probes, less audio for Qwen3-VL (its mixed probe is text + image)."""
    from tests.golden import probes

    items = probes()
    if kind == "qwen3-vl":
        del items["audio"]
        items["mixed"] = {k: v for k, v in items["mixed"].items() if k != "audio"}
    return items


def golden_model(kind: str):
    from e5omni.tiny import build_tiny_model

    model, processor = build_tiny_model(kind, seed=SEED)
    model.set_processor(processor)
    return model


def compute(kind: str, model=None) -> dict:
    """`{kind}/document/{probe}` for every probe and `{kind}/query/text`, float32."""
    import torch

    model = model if model is not None else golden_model(kind)
    items = qwen3_probes(kind)
    docs = model.encode_document(list(items.values()))
    out = {f"{kind}/document/{name}": docs[i].contiguous() for i, name in enumerate(items)}
    out[f"{kind}/query/text"] = model.encode_query([items["text"]])[0].contiguous()
    return {k: v.to(torch.float32) for k, v in out.items()}


if __name__ == "__main__":
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)  # as in the test session (tests/conftest.py)
    tensors = {}
    for kind in KINDS:
        tensors.update(compute(kind))
    GOLDEN_QWEN3.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(GOLDEN_QWEN3))
    print(f"wrote {GOLDEN_QWEN3} ({len(tensors)} vectors)")
