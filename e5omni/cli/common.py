"""What several subcommands share: argument types and loading a model for inference."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type of every count option of the CLI."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def load_inference_model(name: str):
    """A saved model folder or Hub id through AutoModel (remote code), on the GPU when there is one."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(name, trust_remote_code=True)
    return model.to("cuda") if torch.cuda.is_available() else model
