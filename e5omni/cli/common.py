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
    """A saved model folder or Hub id, ready for inference (`e5omni.loading.load_inference_model`: AutoModel with
    remote code, eval mode, on the GPU when there is one)."""
    from e5omni.loading import load_inference_model as load

    return load(name)
