"""The retrieval view: training-style examples -> queries, corpus, qrels and per-pair candidate pools."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from e5omni.data.items import content_hash, pair_name, validate_example


@dataclass
class RetrievalCorpus:
    """Examples recast for retrieval evaluation, with every distinct item encoded once.

    - ``queries``: qid -> item (identical queries of the same pair are merged, their positives all relevant);
    - ``corpus``: did -> item (identical documents, by ``content_hash``, share one id across pairs);
    - ``qrels``: qid -> {did: 1} (BEIR / pytrec_eval convention);
    - ``query_pair``: qid -> pair name, e.g. ``"text->image"``;
    - ``candidates``: pair -> the doc ids a query of that pair is ranked against (that pair's positives and
      negatives). Per-pair pools keep a text query from being scored against text captions of the image->text task,
      as benchmarks like MMEB do.
    """

    queries: dict[str, Any]
    corpus: dict[str, Any]
    qrels: dict[str, dict[str, int]]
    query_pair: dict[str, str]
    candidates: dict[str, list[str]]

    @property
    def pairs(self) -> list[str]:
        return list(self.candidates)


def to_corpus(examples: Sequence[Mapping[str, Any]], *, include_negatives: bool = True) -> RetrievalCorpus:
    """Build queries / corpus / qrels from training-style examples for retrieval evaluation.

    Documents are deduplicated by content hash, so a document that is the positive of one query and a hard negative
    of another is one candidate; ids are stable for a given example order (``q00000``, ``d00000``). Hard negatives
    join the pair's candidate pool (``include_negatives``) as distractors, which makes the benchmark harder, not
    leakier: they are never relevant unless they are also some query's positive.
    """
    queries: dict[str, Any] = {}
    corpus: dict[str, Any] = {}
    qrels: dict[str, dict[str, int]] = {}
    query_pair: dict[str, str] = {}
    candidates: dict[str, dict[str, None]] = {}  # ordered sets
    doc_ids: dict[int, str] = {}
    query_ids: dict[tuple[str, int], str] = {}

    def doc_id(item: Any) -> str:
        key = content_hash(item)
        if key not in doc_ids:
            doc_ids[key] = f"d{len(doc_ids):05d}"
            corpus[doc_ids[key]] = item
        return doc_ids[key]

    for index, example in enumerate(examples):
        validate_example(example, index)
        pair = pair_name(example)
        pool = candidates.setdefault(pair, {})
        qkey = (pair, content_hash(example["query"]))
        if qkey not in query_ids:
            qid = query_ids[qkey] = f"q{len(query_ids):05d}"
            queries[qid] = example["query"]
            query_pair[qid] = pair
            qrels[qid] = {}
        qid = query_ids[qkey]
        positive = doc_id(example["positive"])
        qrels[qid][positive] = 1
        pool[positive] = None
        if include_negatives:
            for negative in example.get("negatives", []):
                pool[doc_id(negative)] = None
    return RetrievalCorpus(
        queries=queries,
        corpus=corpus,
        qrels=qrels,
        query_pair=query_pair,
        candidates={pair: list(pool) for pair, pool in candidates.items()},
    )
