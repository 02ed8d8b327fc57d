"""One model batch of an index job: decode + process (a bad item taken out, the rest kept), then embed.

Both engines cut a shard's good records into batches of `batch_size` in source order and run these two steps on
each; they differ only in where the steps run:

    local engine   `embed_chunk`: `decode_and_process` here (num_workers=0) or in DataLoader worker processes
                   (num_workers=N, in order, overlapped with the forward), `embed_features` here
    ray engine     `decode_and_process` in Ray CPU tasks, `embed_features` in the actor pool (ray_engine.py)

so every vector comes from the same padded batch whichever engine or worker count computed it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from e5omni.index.sources import Record


def decode_and_process(processor: Any, items: list[Any]) -> tuple[dict[str, Any] | None, list[int], dict, dict]:
    """(features as CPU tensors, positions kept, {position: (error type, reason)}, {position: [warning, ...]}) for
    one model batch.

    `modeling_e5omni.processing_e5omni.prepare` with ``keep_going=True`` (what `encode_document` does for a batch,
    except that a bad item is taken out and the rest go on), in the plain types both engines send between processes.
    The warnings an item raises (audio cut at max_audio_seconds, text truncated at max_length, a video stream that
    ended early) are `ItemWarning`s naming its position: they are returned as their `reason` under that position
    instead of printed, so an index job records them (warnings.jsonl) instead of flooding the terminal; a warning
    about no item is warned again here."""
    from modeling_e5omni.processing_e5omni import ItemWarning, prepare

    prepared = prepare(processor, items, "document", keep_going=True)
    notes: dict[int, list[str]] = {}
    for warning in prepared.warnings:
        if isinstance(warning, ItemWarning) and warning.index is not None and 0 <= warning.index < len(items):
            notes.setdefault(warning.index, []).append(warning.reason)
        else:
            warnings.warn(warning, stacklevel=2)
    failures = {p: (type(err).__name__, err.reason) for p, err in sorted(prepared.failures.items())}
    if prepared.features is None:
        return None, [], failures, notes
    features = {}
    for key, value in prepared.features.items():
        if not hasattr(value, "numpy"):
            raise TypeError(f"processor output {key!r} is a {type(value).__name__}, not a tensor")
        features[key] = value.detach().cpu()
    return features, prepared.kept, failures, notes


def embed_features(model: Any, features: dict[str, Any], truncate_dim: int | None) -> np.ndarray:
    """(B, D) float32 unit vectors of one processed batch (tensors or arrays; on the model's device;
    Matryoshka-truncated if asked)."""
    import torch

    from modeling_e5omni.modeling_e5omni import truncate_embeddings

    device = next(model.parameters()).device
    inputs = {key: torch.as_tensor(value).to(device) for key, value in features.items()}
    with torch.inference_mode():
        embeddings = model(**inputs).embeddings.float().cpu()
    if truncate_dim is not None:
        embeddings = truncate_embeddings(embeddings, truncate_dim)
    return embeddings.numpy().astype(np.float32)


class _Batches:
    """Map-style dataset over one shard's model batches: batch b -> decode_and_process of its items."""

    def __init__(self, processor: Any, batches: list[list[Any]]):
        self.processor, self.batches = processor, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int):
        return decode_and_process(self.processor, self.batches[b])


@dataclass
class ShardBatches:
    """One shard's records and what its model batches gave, by position among its good records: vectors, failures
    ((error type, reason)) and warnings. Both engines fill it batch by batch (`merge`); the writer reads it."""

    chunk: list[Record]
    good: list[Record] = field(init=False)
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    failures: dict[int, tuple[str, str]] = field(default_factory=dict)
    notes: dict[int, list[str]] = field(default_factory=dict)
    #: the processor's modality mask of each embedded record (a video with its audio track: audio + video)
    masks: dict[int, list[bool]] = field(default_factory=dict)

    def __post_init__(self):
        self.good = [r for r in self.chunk if r.error is None]

    def batches(self, batch_size: int) -> list[list[Any]]:
        """The items of the good records, `batch_size` at a time, in source order (the same cut for every engine)."""
        return [[r.item for r in self.good[s : s + batch_size]] for s in range(0, len(self.good), batch_size)]

    def merge(self, offset: int, kept: list[int], vectors, failures: dict, notes: dict, masks=()) -> None:
        """One batch's results, its positions shifted by `offset` (the batch's first good record); `masks` the
        processor's modality mask rows of the kept items, in their order."""
        for position, vector in zip(kept, vectors, strict=True):
            self.vectors[offset + position] = vector
        for position, mask in zip(kept, masks, strict=False):
            self.masks[offset + position] = [bool(m) for m in mask]
        for position, (kind, reason) in failures.items():
            self.failures[offset + int(position)] = (kind, reason)
        for position, messages in notes.items():
            self.notes[offset + int(position)] = list(messages)


def embed_chunk(
    model: Any, records: list[Record], batch_size: int, truncate_dim: int | None, num_workers: int = 0
) -> ShardBatches:
    """One shard embedded here: decoded and processed in this process or, with `num_workers` > 0, in that many
    worker processes, in order, while this process runs the forward of the batch before; the vectors are the same."""
    from modeling_e5omni.processing_e5omni import in_order

    shard = ShardBatches(records)
    batches = shard.batches(batch_size)
    for number, (features, kept, failed, noted) in enumerate(in_order(_Batches(model.processor, batches), num_workers)):
        vectors = embed_features(model, features, truncate_dim) if kept else []
        masks = features["modality_mask"].tolist() if kept else []
        shard.merge(number * batch_size, kept, vectors, failed, noted, masks)
    return shard
