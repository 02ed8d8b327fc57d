"""Reference linear algebra for the whitening tests, independent of the code under test."""

from __future__ import annotations

import torch


def newton_schulz_inverse_sqrt(matrix: torch.Tensor, iterations: int = 80) -> torch.Tensor:
    """A^(-1/2) for SPD A with plain matmuls (coupled Newton-Schulz), independent of eigh and Cholesky."""
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype)
    norm = matrix.norm()
    y, z = matrix / norm, eye
    for _ in range(iterations):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
    return z / norm.sqrt()
