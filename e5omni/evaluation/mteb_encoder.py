"""The mteb encoder of e5-omni (:class:`E5OmniMTEBEncoder`, :func:`mteb_model`) and how mteb's rows become our items.

Part of the [mteb] integration; :mod:`e5omni.evaluation.mteb_model` re-exports the public names (see its docstring).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from e5omni.data.errors import Where
from e5omni.evaluation.errors import EvaluationError

try:  # the [mteb] extra; everything below needs it
    import mteb  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("e5omni.evaluation.mteb_model needs mteb: pip install 'e5-omni[mteb]'") from err
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.models.abs_encoder import AbsEncoder, get_prompt_name  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from e5omni.evaluation import mteb_meta  # noqa: E402

__all__ = ["E5OmniMTEBEncoder", "e5omni_model_meta", "mteb_model"]


def e5omni_model_meta(model: Any, **kwargs: Any):
    """The ``mteb.models.ModelMeta`` of an e5-omni model (:func:`e5omni.evaluation.mteb_meta.e5omni_model_meta`, same
    arguments) whose ``load_model()`` builds an :class:`E5OmniMTEBEncoder` unless ``loader`` says otherwise."""
    kwargs.setdefault("loader", E5OmniMTEBEncoder)
    return mteb_meta.e5omni_model_meta(model, **kwargs)


def _load(source: str, revision: str | None, device: str | None):
    """A folder or Hub id through the one inference loader (`e5omni.loading.load_inference_model`)."""
    from e5omni.loading import load_inference_model

    return load_inference_model(source, revision=revision, device=device)


class E5OmniMTEBEncoder(AbsEncoder):
    """An mteb encoder around an ``E5OmniModel``; build it with :func:`mteb_model`.

    Also the ``loader`` of its own ``ModelMeta``: ``E5OmniMTEBEncoder(name, revision, path=FOLDER)`` reloads it, so
    ``meta.load_model()`` works.
    """

    def __init__(
        self,
        model_name: Any,
        revision: str | None = None,
        device: str | None = None,
        *,
        path: str | os.PathLike | None = None,
        source: str | os.PathLike | None = None,
        instructions: Mapping[str, str] | None = None,
        document_instructions: bool = False,
        meta: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(f"E5OmniMTEBEncoder got unexpected arguments {sorted(kwargs)}")
        if isinstance(model_name, str | os.PathLike):
            source = str(path if path is not None else model_name)
            self.model = _load(source, revision, device)
            name = str(model_name) if path is not None else None
        else:  # an in-memory model; `source`: the folder / Hub id it was loaded from, for its ModelMeta
            self.model, name = model_name, None
            source = str(source) if source is not None else None
            if device is not None:
                self.model.to(device)
        if not hasattr(self.model, "encode_query") or not hasattr(self.model.config, "modalities"):
            raise EvaluationError(f"expected an e5-omni model (E5OmniModel), got {type(self.model).__name__}")
        self.instructions = dict(instructions) if instructions else None
        self.document_instructions = document_instructions
        self.source = source
        self.mteb_model_meta = mteb_meta.e5omni_model_meta(
            self.model, source=source, name=name, revision=revision, overrides=meta, loader=E5OmniMTEBEncoder,
            loader_kwargs={"instructions": self.instructions, "document_instructions": document_instructions},
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------- instructions
    def task_instruction(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """The ``instruction`` items of this task and role get (None: none). See the module docstring for the rules."""
        if self.instructions:
            key = get_prompt_name(self.instructions, task_metadata, prompt_type)
            if key is not None:
                return self.instructions[key] or None
        prompt = task_metadata.prompt
        if isinstance(prompt, Mapping):
            return (prompt.get(prompt_type.value) if prompt_type is not None else None) or None
        if prompt_type is PromptType.query or (prompt_type is PromptType.document and self.document_instructions):
            return prompt or None
        return None

    # ------------------------------------------------------------------------------------------------ encode
    def encode(
        self,
        inputs,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed an mteb DataLoader: (N, D) float32, rows in the DataLoader's order."""
        role = "query" if prompt_type is PromptType.query else "document"
        instruction = self.task_instruction(task_metadata, prompt_type)
        batch_size = int(kwargs.get("batch_size") or getattr(inputs, "batch_size", None) or 32)
        show = kwargs.get("show_progress_bar")
        where = f"mteb task {task_metadata.name} ({hf_subset}/{hf_split}), {role}"
        chunks: list[np.ndarray] = []
        start = 0
        budget = self.model.config.max_audio_seconds
        for rows in _row_chunks(inputs, max(batch_size, 256)):
            items = [
                _to_item(row, role, instruction, Where(where, start + i, "row"), budget) for i, row in enumerate(rows)
            ]
            chunks.append(self._encode_items(items, rows, role, batch_size, show, start, where))
            start += len(rows)
        if not chunks:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(chunks)

    def _encode_items(self, items, rows, role, batch_size, show, start, where) -> np.ndarray:
        """One chunk of rows through `E5OmniModel.encode` (the one item pipeline); its typed errors and
        `ItemWarning`s, which name the chunk's items, are re-issued naming the task's row (`start` + index) and id."""
        from modeling_e5omni.inputs_e5omni import E5OmniInputError, ItemWarning

        def located(reason: str, index: int) -> tuple[str, int]:
            row = rows[index]
            row_id = row.get("id") if isinstance(row, Mapping) else None
            return f"{reason} [{where} row {start + index}, id {row_id!r}]", start + index

        error: E5OmniInputError | None = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                vectors = self.model.encode(
                    items, role=role, batch_size=batch_size, show_progress_bar=show, convert_to_numpy=True
                )
            except E5OmniInputError as err:
                error = err
        for record in caught:  # re-issued outside the recording block, so the caller's filters apply
            message = record.message
            if isinstance(message, ItemWarning) and message.index is not None and 0 <= message.index < len(rows):
                message = ItemWarning(*located(message.reason, message.index))
            warnings.warn(message, stacklevel=3)
        if error is None:
            return np.asarray(vectors, dtype=np.float32)
        if error.index is None or not 0 <= error.index < len(rows):
            raise error
        raise type(error)(*located(error.reason, error.index)) from error

    def similarity(self, embeddings1, embeddings2):
        """Cosine similarity, as ``evaluate_retrieval`` ranks (mteb's own ``cos_sim``)."""
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)


def mteb_model(
    model: Any,
    *,
    revision: str | None = None,
    device: str | None = None,
    instructions: Mapping[str, str] | None = None,
    document_instructions: bool = False,
    meta: Mapping[str, Any] | None = None,
    source: str | os.PathLike | None = None,
) -> E5OmniMTEBEncoder:
    """An mteb encoder for an e5-omni folder, Hub id or in-memory ``E5OmniModel``: ``mteb.evaluate(mteb_model(X), tasks)``.

    ``instructions``: per-task / per-task-type / per-role instructions (mteb's key rules), overriding the tasks' own.
    ``document_instructions``: also give documents a task's plain-string instruction (default: queries only, as
    e5-omni was trained). ``meta``: ``ModelMeta`` fields to set or correct (e.g. ``{"license": "apache-2.0",
    "training_datasets": {...}}``); they are validated by mteb. ``source``: for an in-memory ``model``, the folder or
    Hub id it was loaded from (its card, files and name then go into the meta; the revision stays the fingerprint of
    the weights in memory unless ``revision`` is given).
    """
    return E5OmniMTEBEncoder(
        model,
        revision,
        device,
        source=source,
        instructions=instructions,
        document_instructions=document_instructions,
        meta=meta,
    )


# =====================================================================================================================
# mteb rows -> our items
# =====================================================================================================================


def _undecoded(dataset):
    """The dataset with its Audio / Video columns left undecoded (bytes / path), so torchcodec is never needed."""
    from datasets import Audio, Video

    for column, feature in dataset.features.items():
        if isinstance(feature, Audio | Video) and feature.decode:
            dataset = dataset.cast_column(column, type(feature)(decode=False))
    return dataset


def _row_chunks(inputs, size: int) -> Iterator[list[dict[str, Any]]]:
    """Rows of an mteb DataLoader, ``size`` at a time, in order: read from its ``datasets.Dataset`` directly
    (undecoded media), or, for any other dataset, from the DataLoader's own batches."""
    from datasets import Dataset

    dataset = getattr(inputs, "dataset", None)
    if isinstance(dataset, Dataset):
        dataset = _undecoded(dataset)
        for begin in range(0, len(dataset), size):
            batch = dataset[begin : begin + size]
            yield _batch_rows(batch)
        return
    for batch in inputs:
        yield _batch_rows(batch)


def _batch_rows(batch: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    columns = list(batch)
    n = len(batch[columns[0]]) if columns else 0
    return [{column: batch[column][i] for column in columns} for i in range(n)]


def _media(value: Any, kind: str, where: Where, max_audio_seconds: float) -> Any:
    """One mteb media value -> the item's field. What `datasets` stores (undecoded ``{"bytes", "path"}`` values, raw
    bytes, paths, PIL images, ``{"array", "sampling_rate"}`` audio, frame lists) goes through the one datasets media
    adapter, `e5omni.data.features.media_value_to_item` (bytes win over a stored path, audio bytes read no further
    than the budget, video bytes handed on as a content-addressed file our media code decodes); what only mteb's
    collators hand over is converted here: torchcodec decoders, and arrays / tensors, which the model takes as they
    are (videos ``(T, H, W, 3)`` or mteb's ``(T, 3, H, W)``; the model checks the layout)."""
    from e5omni.data.features import media_value_to_item

    if kind == "audio" and hasattr(value, "get_all_samples"):  # a torchcodec AudioDecoder
        samples = value.get_all_samples()
        return {"array": samples.data.mean(0).numpy(), "sampling_rate": samples.sample_rate}
    if kind == "video" and hasattr(value, "get_frames_in_range"):  # a torchcodec VideoDecoder: (T, 3, H, W)
        return value.get_frames_in_range(0, value.metadata.num_frames).data
    import torch

    if isinstance(value, np.ndarray | torch.Tensor):
        return value  # an array or tensor: the model checks its shape and dtype
    if kind == "audio" and isinstance(value, list):
        return np.asarray(value, dtype=np.float32)
    if kind == "video" and isinstance(value, list):  # datasets' numpy format: nested lists, maybe mteb's (T, 3, H, W)
        frames = np.asarray(value)
        if frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
            frames = frames.transpose(0, 2, 3, 1)
        value = frames  # the adapter checks the layout and the 0..255 range, and casts to uint8
    return media_value_to_item(value, kind, where=where, column=kind, max_audio_seconds=max_audio_seconds)


def _to_item(
    row: Mapping[str, Any], role: str, instruction: str | None, where: Where, max_audio_seconds: float
) -> dict[str, Any]:
    """One mteb row -> one e5-omni item dict (what the model's ``check_item`` then validates)."""
    item: dict[str, Any] = {}
    text = row.get("text")
    if role == "query" and row.get("query") is not None:
        text = row["query"]  # mteb's "text" has the instruction appended; "query" is the query itself
    elif row.get("body") is not None and not row.get("title"):
        text = row["body"]  # mteb's "text" is the title + body, stripped; without a title, "body" is the text as given
    if isinstance(text, str):
        item["text"] = text
    elif isinstance(text, list) and text and all(isinstance(t, str) for t in text):
        item["text"] = "; ".join(text)  # a conversation given as a list of turns
    elif text is not None:
        item["text"] = text  # the model's check names what is wrong with it
    for kind in ("image", "audio", "video"):
        if row.get(kind) is not None:
            value = _media(row[kind], kind, where, max_audio_seconds)
            if value is not None:
                item[kind] = value
    own = row.get("instruction")
    chosen = own if isinstance(own, str) and own.strip() else instruction
    if chosen:
        item["instruction"] = chosen
    return item
