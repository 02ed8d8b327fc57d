"""mteb for e5-omni: an encoder for any of our folders, Hub ids or in-memory models, and our data as an mteb task.

    import mteb
    from e5omni.evaluation import mteb_model
    results = mteb.evaluate(mteb_model("path/or/hub-id"), mteb.get_tasks(tasks=["MSRVTTT2V"]))

:func:`mteb_model` returns an :class:`E5OmniMTEBEncoder` (an ``mteb.models.AbsEncoder``) whose ``mteb_model_meta``
is filled from the model itself: modalities from ``config.modalities`` (so image, audio and video tasks are not
refused), embedding dimension, ``max_length``, parameter count, revision (the Hub commit, or the
:func:`~e5omni.evaluation.model_fingerprint` of a local or unsaved model), license / languages / base model from the
folder's model card, frameworks from the files the folder holds. What the encoder does with mteb's inputs:

- **prompts**: ``prompt_type`` query -> ``encode_query`` (the config's query prompt, ``"Query: "``), document or
  none -> ``encode_document``; nothing has to be put into ``model_prompts`` by hand.
- **instructions**: the task's own ``metadata.prompt`` becomes the query's ``instruction`` (a ``{"query",
  "document"}`` prompt maps per role; a plain string applies to queries only unless ``document_instructions=True``);
  a per-row ``instruction`` column (instruction-retrieval tasks) wins over it; ``instructions={"TaskName": ...,
  "Any2AnyRetrieval-query": ...}`` overrides both, with mteb's key rules (task name, task type, ``-query`` /
  ``-document`` suffixes). mteb's generic fallback ("Retrieve text based on user query.") is not used: it names the
  wrong modality for most omni tasks.
- **media**: audio and video columns are read undecoded and decoded by our own media code under the config's budgets
  (16 kHz resampling, ``max_audio_seconds``, ``fps`` / ``max_frames`` video sampling), exactly as ``e5omni eval``
  decodes files, so no torchcodec is needed. A row with both ``video`` and ``audio`` is one item: the frames with
  their soundtrack. Videos given as arrays or tensors may be ``(T, H, W, 3)`` or mteb's ``(T, 3, H, W)``.

:func:`retrieval_task` turns our own data (a :class:`~e5omni.data.RetrievalCorpus` or training-style examples) into
an mteb retrieval task with one subset per modality pair, each ranked against that pair's pool as
:func:`~e5omni.evaluation.evaluate_retrieval` ranks it; :func:`compare_with_mteb` states how the two sets of numbers
correspond and how far apart they are.
"""

from __future__ import annotations

import datetime
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.data import RetrievalCorpus, to_corpus
from e5omni.evaluation.embeddings import model_fingerprint
from e5omni.evaluation.errors import EvaluationError

logger = logging.getLogger(__name__)

try:  # the [mteb] extra; everything below needs it
    import mteb  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("e5omni.evaluation.mteb_model needs mteb: pip install 'e5-omni[mteb]'") from err
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.models import ModelMeta  # noqa: E402
from mteb.models.abs_encoder import AbsEncoder, get_prompt_name  # noqa: E402
from mteb.models.model_meta import ScoringFunction  # noqa: E402
from mteb.types import PromptType  # noqa: E402

__all__ = [
    "E5OmniMTEBEncoder",
    "E5OmniRetrievalTask",
    "MTEB_METRIC_MAP",
    "compare_with_mteb",
    "e5omni_model_meta",
    "mteb_model",
    "retrieval_task",
    "subset_name",
]

_MEDIA = ("image", "audio", "video")
#: ISO 639-1 codes of model cards -> mteb's ISO 639-3 + script codes (others are left out, with a warning).
_LANGUAGES = {
    "en": "eng-Latn", "zh": "zho-Hans", "de": "deu-Latn", "fr": "fra-Latn", "es": "spa-Latn", "it": "ita-Latn",
    "pt": "por-Latn", "ru": "rus-Cyrl", "ja": "jpn-Jpan", "ko": "kor-Hang", "ar": "ara-Arab", "nl": "nld-Latn",
}  # fmt: skip


# =====================================================================================================================
# The encoder
# =====================================================================================================================


def _load(source: str, revision: str | None, device: str | None):
    """A folder or Hub id through AutoModel (remote code), on `device` (default: CUDA when there is one)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source, trust_remote_code=True, revision=revision)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device)


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
        self.mteb_model_meta = e5omni_model_meta(
            self.model, source=source, name=name, revision=revision, overrides=meta,
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
        with tempfile.TemporaryDirectory(prefix="e5omni-mteb-") as tmp:
            for rows in _row_chunks(inputs, max(batch_size, 256)):
                items = [_to_item(row, role, instruction, Path(tmp)) for row in rows]
                chunks.append(self._encode_items(items, rows, role, batch_size, show, start, where))
                start += len(rows)
        if not chunks:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(chunks)

    def _encode_items(self, items, rows, role, batch_size, show, start, where) -> np.ndarray:
        from modeling_e5omni.inputs_e5omni import E5OmniInputError

        try:
            return np.asarray(
                self.model.encode(
                    items, role=role, batch_size=batch_size, show_progress_bar=show, convert_to_numpy=True
                ),
                dtype=np.float32,
            )
        except E5OmniInputError as err:
            if err.index is None:
                raise
            row = rows[err.index]
            row_id = row.get("id") if isinstance(row, Mapping) else None
            raise type(err)(
                f"{err.reason} [{where} row {start + err.index}, id {row_id!r}]", start + err.index
            ) from err

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
# ModelMeta
# =====================================================================================================================


def _card_metadata(source: str | None, revision: str | None) -> dict[str, Any]:
    """The YAML front matter of the folder's (or Hub repo's, from the local cache) README.md; {} if there is none."""
    if source is None:
        return {}
    from huggingface_hub import metadata_load

    path = Path(source) / "README.md"
    if not path.is_file() and not Path(source).exists():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "README.md", revision=revision))
        except Exception as err:  # noqa: BLE001 - a card is optional; say why it was not read
            logger.info("no model card read for %s: %s", source, err)
            return {}
    if not path.is_file():
        return {}
    try:
        return metadata_load(path) or {}
    except Exception as err:  # noqa: BLE001 - a malformed card must not stop an evaluation
        logger.warning("could not parse the model card front matter of %s: %s", path, err)
        return {}


def _languages(card: Mapping[str, Any]) -> list[str] | None:
    codes = card.get("language")
    codes = [codes] if isinstance(codes, str) else list(codes or [])
    known = [_LANGUAGES[c] for c in codes if c in _LANGUAGES]
    unknown = [c for c in codes if c not in _LANGUAGES]
    if unknown:
        logger.warning("model card languages %s have no mteb code here; pass meta={'languages': [...]}", unknown)
    return known or None


def _valid_license(value: Any) -> str | None:
    from typing import get_args

    from mteb.types import Licenses

    if value is None:
        return None
    allowed = {v for arg in get_args(Licenses) for v in (get_args(arg) or (arg,))}
    text = str(value).lower()
    if text in allowed or text.startswith(("http://", "https://")):
        return text
    logger.warning("license %r is not one mteb knows; recorded as 'not specified' (pass meta={'license': ...})", value)
    return "not specified"


def _folder_date(folder: Path) -> str | None:
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        return None
    stamp = max(w.stat().st_mtime for w in weights)
    return datetime.datetime.fromtimestamp(stamp, tz=datetime.timezone.utc).date().isoformat()


def e5omni_model_meta(
    model: Any,
    *,
    source: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    loader_kwargs: Mapping[str, Any] | None = None,
) -> ModelMeta:
    """The ``mteb.models.ModelMeta`` of an e5-omni model, from the model and (when ``source`` is a folder or Hub id)
    its files. ``overrides`` set any field; the result is validated by mteb."""
    config = model.config
    folder = Path(source) if source is not None and Path(source).is_dir() else None
    hub_id = source if source is not None and folder is None else None
    card = _card_metadata(source, revision)
    if name is None:
        if hub_id is not None:
            name = hub_id
        else:
            stem = folder.resolve().name if folder is not None else "unsaved"
            name = f"e5omni-local/{stem}"
    commit = getattr(config, "_commit_hash", None) if hub_id is not None else None
    frameworks = ["PyTorch", "Transformers"]
    if folder is not None and (folder / "modules.json").is_file():
        frameworks.append("Sentence Transformers")
    if folder is not None and any(folder.glob("*.safetensors")):
        frameworks.append("safetensors")
    parameters = list(model.parameters())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    kwargs = dict(loader_kwargs or {})
    if folder is not None:
        kwargs["path"] = str(folder.resolve())
    fields: dict[str, Any] = {
        "loader": E5OmniMTEBEncoder,
        "loader_kwargs": {k: v for k, v in kwargs.items() if v not in (None, False)},
        "name": name,
        "revision": commit or revision or model_fingerprint(model),
        "release_date": _folder_date(folder) if folder is not None else None,
        "languages": _languages(card),
        "n_parameters": int(sum(p.numel() for p in parameters)),
        "n_embedding_parameters": int(embeddings.weight.numel()) if embeddings is not None else None,
        "memory_usage_mb": round(sum(p.numel() * p.element_size() for p in parameters) / 2**20, 2),
        "max_tokens": float(config.max_length),
        "embed_dim": int(config.hidden_size),
        "license": _valid_license(card.get("license")),
        "open_weights": True,
        "public_training_code": None,
        "public_training_data": None,
        "framework": frameworks,
        "reference": f"https://huggingface.co/{hub_id}" if hub_id is not None else None,
        "similarity_fn_name": ScoringFunction.COSINE,
        "use_instructions": True,
        "training_datasets": None,
        "adapted_from": card.get("base_model") if isinstance(card.get("base_model"), str) else None,
        "modalities": list(config.modalities),
        "model_type": ["dense"],
    }
    fields.update(overrides or {})
    return ModelMeta(**fields)


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


def _media_file(value: Mapping[str, Any], tmp: Path, kind: str) -> str:
    """A path to the undecoded media ``{"bytes", "path"}``: its own file, or its bytes written under ``tmp``."""
    data, path = value.get("bytes"), value.get("path")
    if data is None:
        if path is None:
            raise EvaluationError(f"{kind} value has neither bytes nor a path: {sorted(value)}")
        return str(path)
    suffix = Path(str(path)).suffix if path else (".mp4" if kind == "video" else ".wav")
    fd, name = tempfile.mkstemp(suffix=suffix or ".bin", dir=tmp)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return name


def _audio(value: Any, tmp: Path) -> Any:
    if isinstance(value, Mapping) and "array" in value:
        return {"array": np.asarray(value["array"], dtype=np.float32), "sampling_rate": value["sampling_rate"]}
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        return _media_file(value, tmp, "audio")
    if hasattr(value, "get_all_samples"):  # a torchcodec AudioDecoder a custom collator handed over
        samples = value.get_all_samples()
        return {"array": samples.data.mean(0).numpy(), "sampling_rate": samples.sample_rate}
    return np.asarray(value, dtype=np.float32) if isinstance(value, list) else value


def _video(value: Any, tmp: Path) -> Any:
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        return _media_file(value, tmp, "video")
    if isinstance(value, list):
        return np.asarray(value, dtype=np.uint8)
    if hasattr(value, "get_frames_in_range"):  # a torchcodec VideoDecoder: all frames, (T, 3, H, W)
        return value.get_frames_in_range(0, value.metadata.num_frames).data
    return value  # an array or tensor: (T, H, W, 3) or (T, 3, H, W), both accepted by the model


def _image(value: Any) -> Any:
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        from PIL import Image

        return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") is not None else value["path"]
    return value


def _to_item(row: Mapping[str, Any], role: str, instruction: str | None, tmp: Path) -> dict[str, Any]:
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
    if row.get("image") is not None:
        item["image"] = _image(row["image"])
    if row.get("audio") is not None:
        item["audio"] = _audio(row["audio"], tmp)
    if row.get("video") is not None:
        item["video"] = _video(row["video"], tmp)
    own = row.get("instruction")
    chosen = own if isinstance(own, str) and own.strip() else instruction
    if chosen:
        item["instruction"] = chosen
    return item


# =====================================================================================================================
# Our data as an mteb task
# =====================================================================================================================


def subset_name(pair: str) -> str:
    """The mteb subset name of a modality pair, readable and reversible: ``text+image->video`` ->
    ``text_and_image_to_video`` (mteb writes subset names into result files and tables)."""
    return pair.replace("->", "_to_").replace("+", "_and_")


def _column(values: list[Any]) -> list[Any]:
    return [np.asarray(v) if isinstance(v, np.ndarray) else v for v in values]


def _rows(items: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Item dict -> dataset columns: id, text, instruction, image, audio ({"array", "sampling_rate"}), video."""
    columns: dict[str, list[Any]] = {"id": list(items)}
    keys = ("text", "instruction", *_MEDIA)
    values = {k: [] for k in keys}
    for item in items.values():
        parts = {"text": item} if isinstance(item, str) else {"image": item} if not isinstance(item, Mapping) else item
        for key in keys:
            value = parts.get(key)
            if key == "audio" and value is not None and not isinstance(value, Mapping):
                value = {"array": np.asarray(value, dtype=np.float32), "sampling_rate": 16_000}
            if key == "audio" and isinstance(value, Mapping):
                value = {"array": np.asarray(value["array"], dtype=np.float32), "sampling_rate": value["sampling_rate"]}
            values[key].append(value)
    for key in keys:
        if any(v is not None for v in values[key]):
            if any(v is None for v in values[key]) and key != "instruction":
                raise EvaluationError(f"items of one pair mix {key!r} and no {key!r}: cannot be one mteb column")
            columns[key] = _column(values[key])
    return columns


_LETTERS = {"image": "i", "video": "v", "audio": "a", "text": "t"}  # in mteb's order: it2t, va2t, at2t, vt2t


def _category(pair: str) -> str:
    """mteb's category code of a pair: text+image->video -> "it2v", audio+video->text -> "va2t"."""
    sides = [set(side.split("+")) for side in pair.split("->")]
    return "2".join("".join(_LETTERS[m] for m in _LETTERS if m in side) for side in sides)


def _pair_modalities(pairs: Sequence[str]) -> list[str]:
    found = {m for pair in pairs for side in pair.split("->") for m in side.split("+")}
    return [m for m in ("text", "image", "audio", "video") if m in found]


def _task_metadata(name: str, description: str, split: str, main_score: str, pairs: Sequence[str]) -> TaskMetadata:
    modalities = _pair_modalities(pairs)
    return TaskMetadata(
        name=name,
        description=description,
        dataset={"path": "e5omni/local", "revision": "local"},
        type="Any2AnyRetrieval",
        category=None,  # differs per subset; the columns present say what each side holds
        modalities=modalities,
        eval_splits=[split],
        eval_langs={subset_name(p): ["eng-Latn"] for p in pairs},
        main_score=main_score,
        reference=None,
        date=None,
        domains=None,
        task_subtypes=None,
        license=None,
        annotations_creators=None,
        dialect=None,
        sample_creation=None,
        bibtex_citation="",
        prompt=None,
    )


class E5OmniRetrievalTask(AbsTaskRetrieval):
    """Our retrieval data as an mteb ``AbsTaskRetrieval``: one subset per modality pair (see :func:`subset_name`),
    whose corpus is that pair's candidate pool, with our qrels. Built by :func:`retrieval_task`.

    Besides mteb's scores (which mteb rounds to 5 decimals), each subset reports ``e5omni_exact``: mteb's own
    per-query ``pytrec_eval`` values averaged without rounding (``hit_rate_at_k``, ``recall_at_k``, ``ndcg_at_k``)
    and mteb's MRR at the largest k, so agreement with :func:`~e5omni.evaluation.evaluate_retrieval` can be checked to
    1e-6 (:func:`compare_with_mteb`)."""

    #: Replaced per instance (the pairs of the data); a class-level value because mteb reads it from task classes.
    metadata = _task_metadata("E5OmniRetrieval", "e5-omni data (placeholder)", "test", "ndcg_at_5", ["text->text"])
    k_values = (1, 3, 5, 10, 20, 100, 1000)

    def __init__(self, corpus: RetrievalCorpus, metadata: TaskMetadata, **kwargs: Any) -> None:
        self.metadata = metadata
        self._corpus = corpus
        self._pairs = {subset_name(pair): pair for pair in corpus.pairs}
        super().__init__(**kwargs)
        largest_pool = max(len(pool) for pool in corpus.candidates.values())
        if largest_pool > max(self.k_values):
            self.k_values = (*self.k_values, largest_pool)
            self._top_k = largest_pool  # every candidate ranked: MRR without a cut-off, like ours

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        from datasets import Dataset
        from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

        corpus = self._corpus
        self.dataset = {}
        for pair in corpus.pairs:
            qids = [qid for qid, p in corpus.query_pair.items() if p == pair]
            if not qids:
                continue
            pool = corpus.candidates[pair]
            queries = Dataset.from_dict(_rows({qid: corpus.queries[qid] for qid in qids}))
            documents = Dataset.from_dict(_rows({did: corpus.corpus[did] for did in pool}))
            qrels = {qid: {did: int(g) for did, g in corpus.qrels[qid].items()} for qid in qids}
            split = RetrievalSplitData(queries=queries, corpus=documents, relevant_docs=qrels, top_ranked=None)
            self.dataset[subset_name(pair)] = {split_name: split for split_name in self.metadata.eval_splits}
        self.data_loaded = True

    def _evaluate_subset(self, model, data_split, *, hf_subset: str, **kwargs: Any):
        """Each subset is one modality pair: mteb reads a query's and a document's modalities from the task's
        category, so the category is that pair's ("it2v" for text+image->video) while the subset runs."""
        task_metadata = self.metadata
        pair = self._pairs[hf_subset]
        # model_copy does not validate: some pairs (audio->text+image = "a2it") have no category in mteb's list,
        # yet mteb's category parser maps every letter; the task's own metadata is restored right after.
        self.metadata = task_metadata.model_copy(
            update={"category": _category(pair), "modalities": _pair_modalities([pair])}
        )
        try:
            return super()._evaluate_subset(model, data_split, hf_subset=hf_subset, **kwargs)
        finally:
            self.metadata = task_metadata

    def task_specific_scores(self, scores, qrels, results, hf_split: str, hf_subset: str) -> dict[str, Any]:
        from mteb._evaluators.retrieval_metrics import mrr as mteb_mrr

        n = len(scores)
        exact: dict[str, float] = {}
        for k in self.k_values:
            for ours, theirs in (("hit_rate", "success"), ("recall", "recall"), ("ndcg", "ndcg_cut")):
                exact[f"{ours}_at_{k}"] = math.fsum(s[f"{theirs}_{k}"] for s in scores.values()) / n
        top = max(self.k_values)
        reciprocal = mteb_mrr(qrels, results, [top])[f"MRR@{top}"]
        exact[f"mrr_at_{top}"] = math.fsum(reciprocal) / len(reciprocal)
        return {"e5omni_exact": exact}


def retrieval_task(
    data: RetrievalCorpus | Sequence[Mapping[str, Any]],
    *,
    name: str = "E5OmniRetrieval",
    description: str = "Omni-modal retrieval on e5-omni data: one subset per query->document modality pair.",
    split: str = "test",
    main_score: str = "ndcg_at_5",
) -> E5OmniRetrievalTask:
    """An mteb retrieval task from our data (``to_corpus`` examples or a corpus), ready for ``mteb.evaluate``.

    The query's own ``instruction`` is a per-row column (as mteb's instruction-retrieval tasks have it); the task has
    no task-level prompt, so the encoder adds nothing else. Media stay in memory (images as PNG, audio as
    ``{"array", "sampling_rate"}``, videos as uint8 arrays): nothing is downloaded or decoded lossily.
    """
    corpus = data if isinstance(data, RetrievalCorpus) else to_corpus(data)
    if not corpus.queries:
        raise EvaluationError("nothing to evaluate: the data has no queries")
    pairs = [p for p in corpus.pairs if any(q == p for q in corpus.query_pair.values())]
    metadata = _task_metadata(name, description, split, main_score, pairs)
    return E5OmniRetrievalTask(corpus, metadata)


# =====================================================================================================================
# Our metrics vs mteb's
# =====================================================================================================================

#: Our metric -> mteb's, where the definitions match: hit@k = mteb's hit_rate_at_k (pytrec_eval success_k),
#: recall@k = recall_at_k (pytrec recall_k: found relevant / all relevant), ndcg@k = ndcg_at_k (pytrec ndcg_cut_k,
#: binary gains, log2 discount). Our mrr has no cut-off: mteb's mrr_at_k with k >= the pool size. mteb's map_at_k,
#: precision_at_k and nAUC have no counterpart here.
MTEB_METRIC_MAP = {"hit@{k}": "hit_rate_at_{k}", "recall@{k}": "recall_at_{k}", "ndcg@{k}": "ndcg_at_{k}"}


def compare_with_mteb(ours: Mapping[str, Any], task_result: Any, split: str = "test") -> dict[str, dict[str, Any]]:
    """Per pair, our :func:`~e5omni.evaluation.evaluate_retrieval` value next to mteb's, for every metric both define.

    ``task_result``: the ``TaskResult`` of an :class:`E5OmniRetrievalTask` run. Returns ``{pair: {metric: {"ours",
    "mteb" (mteb's rounded score), "mteb_exact" (unrounded), "abs_diff" (ours vs exact)}}}``. Ties: we rank
    pessimistically, pytrec_eval by document id; with distinct scores (any trained or random model) both agree.
    """
    by_subset = {entry["hf_subset"]: entry for entry in task_result.scores[split]}
    out: dict[str, dict[str, Any]] = {}
    for pair, values in ours.items():
        if "->" not in pair:
            continue
        entry = by_subset.get(subset_name(pair))
        if entry is None:
            raise EvaluationError(f"the mteb result has no subset for {pair!r} ({subset_name(pair)})")
        exact = entry["e5omni_exact"]
        top = max(int(key.rsplit("_", 1)[1]) for key in exact if key.startswith("mrr_at_"))
        rows: dict[str, Any] = {}
        for metric, value in values.items():
            if metric == "mrr":
                theirs = f"mrr_at_{top}"
            elif "@" in metric:
                kind, k = metric.split("@")
                theirs = MTEB_METRIC_MAP.get(f"{kind}@{{k}}", "").format(k=k)
                if not theirs or theirs not in exact:
                    continue
            else:
                continue
            rows[metric] = {
                "mteb_metric": theirs,
                "ours": float(value),
                "mteb": entry.get(theirs),
                "mteb_exact": exact[theirs],
                "abs_diff": abs(float(value) - exact[theirs]),
            }
        out[pair] = rows
    return out
