"""From training examples to the column-wise model inputs the sentence-transformers trainer expects.

`datasets` cannot hold a column that mixes strings, dicts of arrays and images, so the trainer's `datasets.Dataset` holds
only example indices (`examples_dataset`), and `E5OmniDataCollator` looks the examples up (or, for a streamed
`datasets.IterableDataset`, converts each arriving row with its `HFStream`), splits them into columns
(`query`, `positive`, `negative_1`, ...), runs the omni processor on each column (queries with the query prompt,
documents with the document prompt) and adds, per column, `modality_mask` (B, 4) and `content_hash` (B,) for the
loss's temperatures and duplicate masking. Output keys are `{column}_{key}`, which the trainer groups back into one
features dict per column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from e5omni.data import BadRowError, DataError, content_hash, validate_example


class TrainingDataError(ValueError):
    """An example the trainer cannot use (named by its index)."""


def examples_dataset(examples: Sequence[dict]):
    """A `datasets.Dataset` of example indices for the sentence-transformers trainer and its batch samplers."""
    from datasets import Dataset

    return Dataset.from_dict({"example": list(range(len(examples)))})


def check_examples(examples: Sequence[dict], num_negatives: int) -> None:
    """Every example is valid and has at least `num_negatives` hard negatives (the loss needs equal columns)."""
    if len(examples) == 0:
        raise TrainingDataError("no training examples")
    for index, example in enumerate(examples):
        validate_example(example, index)
        have = len(example.get("negatives") or [])
        if have < num_negatives:
            raise TrainingDataError(
                f"example {index} has {have} hard negatives, but num_negatives={num_negatives}; give every example at "
                "least that many or lower num_negatives"
            )


class E5OmniDataCollator:
    """Collates example indices into `{column}_{key}` tensors (see the module docstring)."""

    valid_label_columns: list[str] = []

    def __init__(
        self,
        examples: Sequence[dict],
        preprocess: Callable[..., dict[str, Any]],
        num_negatives: int,
        query_prompt: str,
        document_prompt: str,
        streams: dict[int, Any] | None = None,
    ):
        self.examples = examples
        self.preprocess = preprocess
        self.num_negatives = num_negatives
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.streams = dict(streams or {})  # stream id -> e5omni.data.HFStream (rows carry "__stream__")

    def example(self, row: dict) -> dict:
        """The example a DataLoader row stands for: looked up by index, or converted from a streamed row and checked
        (a streamed row is seen here first, so here is where it is validated; errors name the streamed row)."""
        if "__stream__" not in row:
            return self.examples[int(row["example"])]
        stream, index = self.streams[int(row["__stream__"])], int(row["__row__"])
        example = stream.convert(row)
        try:
            validate_example(example)
        except DataError as err:
            raise BadRowError(str(err), source="stream", row=index) from None
        have = len(example.get("negatives") or [])
        if have < self.num_negatives:
            raise BadRowError(
                f"{have} hard negatives, but num_negatives={self.num_negatives}", source="stream", row=index
            )
        return example

    def columns(self, rows: Sequence[dict]) -> dict[str, list]:
        examples = [self.example(row) for row in rows]
        columns = {"query": [e["query"] for e in examples], "positive": [e["positive"] for e in examples]}
        for j in range(self.num_negatives):
            columns[f"negative_{j + 1}"] = [e["negatives"][j] for e in examples]
        return columns

    def __call__(self, rows: Sequence[dict]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for name, items in self.columns(rows).items():
            prompt = self.query_prompt if name == "query" else self.document_prompt
            features = dict(self.preprocess(items, prompt=prompt))
            features["content_hash"] = torch.tensor([content_hash(item) for item in items], dtype=torch.int64)
            for key, value in features.items():
                batch[f"{name}_{key}"] = value
        return batch
