"""Evaluation's errors: inputs that cannot give meaningful numbers, and embedding caches that cannot be used.

Both are ``ValueError`` subclasses; ``e5omni eval`` prints them as one line and exits with status 2.
"""

from __future__ import annotations

import os
from pathlib import Path


class EvaluationError(ValueError):
    """Evaluation inputs that cannot give meaningful numbers (bad shapes, NaN scores, a query with nothing relevant)."""


class EmbeddingCacheError(EvaluationError):
    """An embedding cache file that cannot be used: unreadable, another format, or written by a different model.

    Refused rather than overwritten: the caller named the file, and silently replacing (or worse, reusing) another
    model's embeddings would either destroy work or report the wrong model's numbers.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"embedding cache {self.path}: {reason}")
