"""The one all-gather helper the losses use (sentence-transformers' ``util.distributed`` underneath).

Convention, the same everywhere in :mod:`e5omni.train.losses`: every rank gathers all rows (rank-major order, so the union
batch has the same column order as a single process over it), computes the loss of *its own* query rows against all
gathered candidates (mean over its rows) plus the batch-level terms (whitening + CORAL) on the gathered batch, and
lets DDP average the gradients. ``torch.distributed.nn.all_gather`` sums the gradients that every rank's loss sends
to a rank's rows, so the DDP-averaged gradient equals the gradient of the union-batch loss, and the mean of the
per-rank losses equals the union-batch loss. Nothing is multiplied or divided by the world size anywhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from sentence_transformers.util import all_gather, get_rank, get_world_size
from torch import Tensor

__all__ = ["gather_rows", "is_distributed", "row_counts"]


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and get_world_size() > 1


def row_counts(num_rows: int, device: torch.device | str) -> list[int]:
    """The number of rows every rank contributes (one tiny all_gather); ``[num_rows]`` outside distributed."""
    if not is_distributed():
        return [num_rows]
    # all_gather (no grad) places the local tensor in its own slot, so a fresh tensor per call is fine.
    mine = torch.tensor([num_rows], dtype=torch.long, device=device)
    return [int(n) for n in all_gather(mine, with_grad=False).tolist()]


def gather_rows(tensor: Tensor, *, with_grad: bool, counts: list[int] | None = None) -> tuple[Tensor, int]:
    """Concatenate ``tensor`` ``(B_r, ...)`` from every rank along dim 0, in rank order.

    Args:
        tensor: this rank's rows.
        with_grad: keep the autograd graph through the gather (embeddings); masks and hashes use False.
        counts: rows per rank from :func:`row_counts` (computed here when omitted). Ranks may hold different numbers
            of rows (the last batch of an epoch): they are padded for the collective and trimmed afterwards.

    Returns:
        ``(gathered, offset)``: the ``(sum_r B_r, ...)`` union and the index of this rank's first row in it.
        Outside torch.distributed (or with one rank) ``(tensor, 0)``.
    """
    if not is_distributed():
        return tensor, 0
    if counts is None:
        counts = row_counts(tensor.shape[0], tensor.device)
    if counts[get_rank()] != tensor.shape[0]:
        raise ValueError(f"gather_rows: counts say {counts[get_rank()]} rows on this rank, got {tensor.shape[0]}")
    offset = sum(counts[: get_rank()])
    longest = max(counts)
    is_bool = tensor.dtype == torch.bool
    work = tensor.to(torch.uint8) if is_bool else tensor  # gloo has no bool collectives
    if work.shape[0] < longest:
        pad = work.new_zeros((longest - work.shape[0], *work.shape[1:]))
        work = torch.cat([work, pad], dim=0)
    gathered = all_gather(work.contiguous(), with_grad=with_grad)  # (world * longest, ...)
    if any(n != longest for n in counts):
        gathered = torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(counts)], dim=0)
    if is_bool:
        gathered = gathered.bool()
    return gathered, offset
