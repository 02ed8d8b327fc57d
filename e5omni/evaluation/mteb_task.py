"""Our retrieval data as an mteb task (:class:`E5OmniRetrievalTask`, :func:`retrieval_task`): one subset per pair.

Part of the [mteb] integration; :mod:`e5omni.evaluation.mteb_model` re-exports the public names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from e5omni.data import RetrievalCorpus, to_corpus
from e5omni.evaluation.errors import EvaluationError

try:  # the [mteb] extra; everything below needs it
    import mteb  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("e5omni.evaluation.mteb_model needs mteb: pip install 'e5-omni[mteb]'") from err
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402

__all__ = ["E5OmniRetrievalTask", "retrieval_task", "subset_name"]

_MEDIA = ("image", "audio", "video")


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
