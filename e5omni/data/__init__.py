"""Omni training data: the example schema, safe loading from files and `datasets`, and the retrieval view.

A training example is ``{"query": item, "positive": item, "negatives": [item, ...]}`` (negatives optional, the same
number k in every example of a dataset), where an *item* is exactly what ``E5OmniModel.encode_query`` /
``encode_document`` accept: items are checked by the model's own ``check_item`` (``modeling_e5omni``), so there is
one definition of a valid item. Examples may carry extra bookkeeping keys (``"pair"`` like ``"text->image"``,
``"id"``, and for the synthetic set ``"scene"``); consumers ignore keys they do not know.

Why this package exists separately from the processor: loading is where untrusted *dataset files* meet the file
system, so it is where media paths are confined to a media root and where bad rows are reported by line number, long
before a batch reaches the backbone. Nothing here decodes images or video files: paths are resolved and checked, and
the processor decodes them later under its media budgets. The one exception is audio stored as bytes in ``datasets``
(``datasets``' own decoding needs torchcodec, which does not load everywhere): decoded here, no further than
``max_audio_seconds``. Video bytes become content-addressed files in the media cache (``features``).

What lives where (everything public is re-exported here, so ``from e5omni.data import X`` works):

- ``errors``: DataError and its subclasses (InvalidItemError, BadRowError, UnsafeMediaPathError, MissingMediaError);
- ``items``: item inspection (item_modalities, modality_signature, pair_name, validate_example) and content_hash;
- ``paths``: resolve_media_path, the media-root confinement rules;
- ``features``: media_value_to_item, the one adapter from a ``datasets`` media value to an item field;
- ``tables``: table files (Parquet / JSON lines / JSON / CSV) whose rows know their file and line;
- ``columns``: the column naming shared by CSV files and ``datasets`` columns;
- ``files``: load_jsonl, load_csv;
- ``hf``: from_hf_dataset, stream_hf_dataset, load_hub_dataset, open_hf_dataset (also save_to_disk folders),
  HFExamples, HFStream, decode_audio_bytes;
- ``public``: the public training sets in their own schemas (MMEBExamples, TevatronExamples, CaptionExamples);
- ``mixture``: weighted mixtures of data specs (MixedExamples, load_mixture);
- ``corpus``: RetrievalCorpus, to_corpus (the retrieval view);
- ``specs``: load_data_spec, the one way a command turns a data spec string into examples;
- ``synthetic``: the bundled generated dataset.

Collation (examples -> model inputs) is ``e5omni.train.collator``.
"""

from __future__ import annotations

from e5omni.data.corpus import RetrievalCorpus, to_corpus
from e5omni.data.errors import (
    BadRowError,
    DataError,
    InvalidItemError,
    MissingMediaError,
    SymlinkLoopError,
    UnsafeMediaPathError,
)
from e5omni.data.features import media_value_to_item
from e5omni.data.files import load_csv, load_jsonl
from e5omni.data.hf import (
    HFExamples,
    HFStream,
    decode_audio_bytes,
    from_hf_dataset,
    load_hub_dataset,
    open_hf_dataset,
    stream_hf_dataset,
)
from e5omni.data.items import (
    AUDIO_SAMPLING_RATE,
    EXAMPLE_KEYS,
    ITEM_KEYS,
    MEDIA_KEYS,
    MODALITIES,
    PASSTHROUGH_KEYS,
    content_hash,
    item_modalities,
    modality_signature,
    pair_name,
    validate_example,
)
from e5omni.data.paths import resolve_media_path

__all__ = [
    "AUDIO_SAMPLING_RATE",
    "BadRowError",
    "DataError",
    "EXAMPLE_KEYS",
    "HFExamples",
    "HFStream",
    "InvalidItemError",
    "ITEM_KEYS",
    "MEDIA_KEYS",
    "MODALITIES",
    "MissingMediaError",
    "PASSTHROUGH_KEYS",
    "RetrievalCorpus",
    "UnsafeMediaPathError",
    "SymlinkLoopError",
    "content_hash",
    "decode_audio_bytes",
    "from_hf_dataset",
    "item_modalities",
    "load_csv",
    "load_hub_dataset",
    "load_jsonl",
    "media_value_to_item",
    "modality_signature",
    "open_hf_dataset",
    "pair_name",
    "resolve_media_path",
    "stream_hf_dataset",
    "to_corpus",
    "validate_example",
]
