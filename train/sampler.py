"""Homogeneous sub-batches: every batch holds examples of one modality pair (e.g. all "text->audio").

VLM2Vec-style training groups batches by task so in-batch negatives are of the query's own kind; mixing pairs gives
easy cross-modal negatives (an audio clip is trivially not the answer to an image query). Off by default
(`group_by_pair`), as the e5-omni paper does not state it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler


class PairGroupedBatchSampler(BatchSampler):
    """Shuffles within each pair, cuts each pair into batches, then shuffles the batch order; reseeded per epoch."""

    def __init__(self, pairs: Sequence[str], batch_size: int, drop_last: bool = False, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.pairs = list(pairs)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups: dict[str, list[int]] = {}
        for index, pair in enumerate(self.pairs):
            groups.setdefault(pair, []).append(index)
        batches = []
        for pair in sorted(groups):
            members = groups[pair]
            order = torch.randperm(len(members), generator=generator).tolist()
            shuffled = [members[i] for i in order]
            for start in range(0, len(shuffled), self.batch_size):
                batch = shuffled[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        order = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())
