"""Access tokens: which one a push uses, and how every message that leaves the package is scrubbed of it."""

from __future__ import annotations

import os
import re

#: What Hugging Face access tokens look like (used to refuse files that contain one and to redact messages).
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")


def resolve_token(token: str | None = None) -> str | None:
    """The token to use: the argument, else `HF_TOKEN`, else None (huggingface_hub then uses the stored login)."""
    return token or os.environ.get("HF_TOKEN") or None


def redact(text: str, token: str | None = None) -> str:
    """`text` with the token and anything token-like (hf_..., Bearer ...) replaced by `***`."""
    if token:
        text = text.replace(token, "***")
    text = _TOKEN_RE.sub("hf_***", text)
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)
